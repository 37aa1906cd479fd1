"""Tiny local base checkpoints and LLaVA-format data for the training and loading tests (built in seconds)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
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


REPO = Path(__file__).resolve().parents[1]
# A small schedule for the 4-layer tiny LLM: inject at 2, prune after 2 and 3, exit before 4.
TINY_SCHEDULE = "inject_layer=2 prune_layers=2,3 keep_counts=8,4 exit_layer=4"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def script_env(**env: str) -> dict[str, str]:
    """The environment of a 2-rank CPU run of the tiny recipe; ``env`` overrides any of it."""
    full = dict(os.environ, RECIPE="tiny", PYTHON=sys.executable, MASTER_PORT=str(free_port()), NPROC="2",
                DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", REDUCTION_OVERRIDES=TINY_SCHEDULE, BATCH_PER_DEVICE="4")
    full.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "hidrop_torch_ext"))
    full.update(env)
    return full


def run_script(script: str, env: dict[str, str], *extra: str, check: bool = True,
               timeout: int = 900) -> subprocess.CompletedProcess:
    """Runs ``scripts/<script>`` (a training or eval script) and, with ``check``, asserts it succeeded."""
    proc = subprocess.run(["bash", str(REPO / "scripts" / script), *extra], env=script_env(**env),
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def logged_losses(output_dir: Path) -> dict[int, float]:
    state = json.loads((Path(output_dir) / "trainer_state.json").read_text())
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


def finetune_env(assets: dict[str, str], pretrained: Path, **env: str) -> dict[str, str]:
    return {"MODEL_BASE": assets["llm"], "VISION_TOWER": assets["clip"], "DATA_PATH": assets["finetune"],
            "IMAGE_FOLDER": assets["images"], "PROJECTOR": str(Path(pretrained) / "mm_projector.bin"), **env}


def build_gqa_eval(root: Path) -> Path:
    """A DATA_ROOT in upstream's layout holding the GQA fixture's six questions and digit images named after
    them, so that ``scripts/eval/gqa.sh`` runs end to end on a tiny checkpoint."""
    import shutil

    fix = REPO / "tests" / "fixtures" / "eval" / "gqa"
    gqa = Path(root) / "gqa"
    (gqa / "data" / "images").mkdir(parents=True)
    shutil.copy(fix / "llava_gqa_testdev_balanced.jsonl", gqa)
    shutil.copy(fix / "data" / "testdev_balanced_questions.json", gqa / "data")
    names = {json.loads(line)["image"] for line in (fix / "llava_gqa_testdev_balanced.jsonl").read_text().splitlines()}
    images, _ = _digit_images(len(names))
    for name, img in zip(sorted(names), images):
        img.save(gqa / "data" / "images" / name)
    return Path(root)


def eval_gqa(data_root: Path, model_path: Path, **env: str) -> subprocess.CompletedProcess:
    """``scripts/eval/gqa.sh`` on ``model_path``; asserts it printed an accuracy."""
    proc = run_script("eval/gqa.sh", {"MODEL_PATH": str(model_path), "DATA_ROOT": str(data_root),
                                      "REDUCTION_OVERRIDES": "", "MAX_NEW_TOKENS": "4", **env})
    assert "GQA accuracy:" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc
