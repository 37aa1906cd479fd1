"""Tiny local base checkpoints and LLaVA-format data for the training and loading tests (built in seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from llava.conversation import get_template
from llava.demo.tokenizer import train_tokenizer

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _digit_images(n: int) -> tuple[list[Image.Image], list[int]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = []
    for i in range(n):
        a = (d.images[i] * 15).astype(np.uint8)
        imgs.append(Image.fromarray(np.kron(a, np.ones((4, 4), dtype=np.uint8))).convert("RGB"))
    return imgs, [int(x) for x in d.target[:n]]


def build_tiny_assets(root: Path, num_samples: int = 48, layers: int = 4) -> dict[str, str]:
    """Writes llm/ (tiny Llama + tokenizer), clip/ (tiny CLIP + processor), images and two JSON files."""
    root = Path(root)
    imgs, labels = _digit_images(num_samples)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    pretrain, finetune = [], []
    for i, (img, y) in enumerate(zip(imgs, labels)):
        name = f"{i:04d}.png"
        img.save(img_dir / name)
        pretrain.append({"id": f"p{i}", "image": name, "conversations": [
            {"from": "human", "value": "Render a short caption.\n<image>"},
            {"from": "gpt", "value": f"a handwritten {WORDS[y]}"}]})
        conv = [{"from": "human", "value": "<image>\nWhat digit is this?"}, {"from": "gpt", "value": WORDS[y]}]
        if i % 3 == 0:
            conv += [{"from": "human", "value": "Is it even?"}, {"from": "gpt", "value": "yes" if y % 2 == 0 else "no"}]
        finetune.append({"id": f"f{i}", "image": name, "conversations": conv})
        if i % 8 == 0:
            finetune.append({"id": f"t{i}", "conversations": [
                {"from": "human", "value": f"What comes after {WORDS[y % 9]}?"}, {"from": "gpt", "value": WORDS[y % 9 + 1]}]})
    (root / "pretrain.json").write_text(json.dumps(pretrain))
    (root / "finetune.json").write_text(json.dumps(finetune))

    corpus = [get_template("vicuna_v1").system, "USER: ASSISTANT: </s> Render a short caption. What digit is this?",
              "Is it even? yes no What comes after a handwritten", " ".join(WORDS)] * 4
    tok = train_tokenizer(corpus, root / "llm", vocab_size=400)
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    llm.save_pretrained(root / "llm")
    clip = CLIPVisionModel(CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=2))
    clip.save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    return {"llm": str(root / "llm"), "clip": str(root / "clip"), "images": str(img_dir),
            "pretrain": str(root / "pretrain.json"), "finetune": str(root / "finetune.json")}
