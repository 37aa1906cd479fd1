"""Parity with transformers' own LLaVA (LlavaForConditionalGeneration), an implementation we did not write:
a tiny llava-hf checkpoint converted to ours, and ours converted to llava-hf, give the same logits (fp32)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)
from transformers import LlavaConfig as HFLlavaConfig

from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.model.convert import main as convert_main
from llava.train.train import build_model, parse_args

PROMPT = "USER: <image>\nWhat digit is this? ASSISTANT: a handwritten"


def _hf_ids(tokenizer, image_token_id: int, n_image: int) -> torch.Tensor:
    """transformers' LLaVA prompt: the <image> placeholder expanded to n_image image tokens."""
    ours = tokenizer_image_token(PROMPT, tokenizer, return_tensors="pt")
    parts = []
    for t in ours.tolist():
        parts.extend([image_token_id] * n_image if t == IMAGE_TOKEN_INDEX else [t])
    return torch.tensor([parts])


def _valid_logits(out) -> torch.Tensor:
    """Our logits in sequence order, without the padding slots of the final token set."""
    order = out.positions[0][out.token_valid[0]].argsort()
    return out.logits[0][out.token_valid[0]][order].unsqueeze(0)


def _pixels(processor) -> torch.Tensor:
    return process_images([Image.new("RGB", (40, 28), (20, 160, 90))], processor, "pad")


@pytest.fixture(scope="module")
def hf_checkpoint(tiny_assets, tmp_path_factory) -> Path:
    """A tiny LlavaForConditionalGeneration with its processor, built and saved by transformers itself."""
    out = tmp_path_factory.mktemp("llava-hf")
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets["llm"])
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    text = LlamaConfig(vocab_size=len(tokenizer) + 3, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    vision = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                              num_attention_heads=2)
    config = HFLlavaConfig(text_config=text, vision_config=vision, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                           vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=16)
    torch.manual_seed(5)
    model = LlavaForConditionalGeneration(config)
    for p in model.model.multi_modal_projector.parameters():
        torch.nn.init.normal_(p, std=0.3)
    model.save_pretrained(out)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    LlavaProcessor(image_processor=processor, tokenizer=tokenizer, patch_size=8,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1).save_pretrained(out)
    return out


def test_llava_hf_checkpoint_converts_with_the_same_logits(hf_checkpoint, tmp_path):
    out = tmp_path / "ours"
    assert convert_main(["--from-hf", str(hf_checkpoint), "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llava_llama" and cfg["reduction"]["name"] == "off"
    tokenizer, ours, processor, _ = load_pretrained_model(str(out))
    hf = LlavaForConditionalGeneration.from_pretrained(hf_checkpoint, dtype=torch.float32).eval()
    pixels = _pixels(processor)
    ids = tokenizer_image_token(PROMPT, tokenizer, return_tensors="pt").unsqueeze(0)
    hf_ids = _hf_ids(tokenizer, hf.config.image_token_index, 16)
    with torch.no_grad():
        got = _valid_logits(ours(ids, images=pixels))
        want = hf(input_ids=hf_ids, pixel_values=pixels, attention_mask=torch.ones_like(hf_ids)).logits
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # and generation: the same greedy continuation
    with torch.no_grad():
        ours_gen = ours.generate(ids, images=pixels, max_new_tokens=5, eos_token_id=-1)
        hf_gen = hf.generate(input_ids=hf_ids, pixel_values=pixels, attention_mask=torch.ones_like(hf_ids),
                             max_new_tokens=5, do_sample=False, eos_token_id=None)[:, hf_ids.shape[1]:]
    assert torch.equal(ours_gen, hf_gen)


@pytest.fixture(scope="module")
def our_checkpoint(tiny_assets, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ours")
    args = parse_args(["--model_name_or_path", tiny_assets["llm"], "--vision_tower", tiny_assets["clip"],
                       "--output_dir", str(out), "--report_to", "none", "--image_aspect_ratio", "pad"])
    torch.manual_seed(9)
    model = build_model(*args).eval()
    for p in model.model.mm_projector.parameters():
        torch.nn.init.normal_(p, std=0.3)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_assets["llm"]).save_pretrained(out)
    CLIPImageProcessor.from_pretrained(tiny_assets["clip"]).save_pretrained(out)
    return out


def test_our_checkpoint_exports_to_llava_hf_with_the_same_logits(our_checkpoint, tmp_path):
    out = tmp_path / "hf"
    assert convert_main(["--to-hf", str(our_checkpoint), "--out", str(out)]) == 0
    tokenizer, ours, processor, _ = load_pretrained_model(str(our_checkpoint))
    hf = LlavaForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    hf_processor = LlavaProcessor.from_pretrained(out)
    assert hf_processor.tokenizer.convert_tokens_to_ids("<image>") == hf.config.image_token_index
    n_image = ours.config.num_vision_tokens
    ids = tokenizer_image_token(PROMPT, tokenizer, return_tensors="pt").unsqueeze(0)
    hf_ids = _hf_ids(tokenizer, hf.config.image_token_index, n_image)
    # transformers' own processor expands <image> to the same number of image tokens. (Its text ids may differ from
    # upstream's: upstream tokenizes the text after the image as a new segment, with its own prefix space.)
    processed = hf_processor(text=PROMPT, images=Image.new("RGB", (8, 8)), return_tensors="pt")["input_ids"]
    assert int((processed == hf.config.image_token_index).sum()) == n_image
    pixels = _pixels(processor)
    with torch.no_grad():
        got = _valid_logits(ours(ids, images=pixels))
        want = hf(input_ids=hf_ids, pixel_values=pixels, attention_mask=torch.ones_like(hf_ids)).logits
    vocab = got.shape[-1]  # the exported model has one more row, for the added <image> token
    torch.testing.assert_close(want[..., :vocab], got, rtol=1e-5, atol=1e-5)


def test_export_refuses_a_reduction_schedule_unless_told(our_checkpoint, tmp_path, capsys):
    cfg_path = our_checkpoint / "config.json"
    cfg = json.loads(cfg_path.read_text())
    pruned = tmp_path / "pruned"
    pruned.mkdir()
    for f in our_checkpoint.iterdir():
        (pruned / f.name).write_bytes(f.read_bytes())
    cfg["reduction"] = {**cfg["reduction"], "name": "x", "inject_layer": 2, "prune_layers": [2], "keep_counts": [4],
                        "exit_layer": 4}
    (pruned / "config.json").write_text(json.dumps(cfg))
    assert convert_main(["--to-hf", str(pruned), "--out", str(tmp_path / "a")]) == 2
    assert "--drop-schedule" in capsys.readouterr().err
    assert convert_main(["--to-hf", str(pruned), "--out", str(tmp_path / "b"), "--drop-schedule"]) == 0
    assert convert_main(["--to-hf", str(pruned), "--out", str(tmp_path / "b"), "--drop-schedule"]) == 2  # not over it
