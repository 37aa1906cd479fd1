"""Tiny checkpoints for the upstream drop-in tests (tests/test_upstream_*.py), built once per session.

* ``upstream``: upstream LLaVA-1.5's on-disk layout (tests/upstream_layout.py), in a folder named like the released
  model (``llava-v1.5-7b``): no vision config, fp16 weights, the CLIP tower named by path, no image processor.
* ``ours``: the same weights (fp32) in our layout, with a pruning schedule, in a folder whose name says nothing of
  LLaVA (``my-run``): how a checkpoint loads must come from its files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from train_fixtures import TINY_SCHEDULE
from upstream_layout import write_upstream_checkpoint


def build_upstream_checkpoints(assets: dict[str, str], root: Path) -> dict[str, str]:
    from transformers import AutoTokenizer, CLIPImageProcessor

    from llava.train.train import build_model, parse_args

    args = parse_args(["--model_name_or_path", assets["llm"], "--vision_tower", assets["clip"], "--output_dir",
                       str(root / "unused"), "--reduction", "tiny", "--reduction_overrides", TINY_SCHEDULE,
                       "--report_to", "none"])
    torch.manual_seed(7)
    model = build_model(*args).eval()
    for p in model.model.mm_projector.parameters():  # a projector that passes the image on
        torch.nn.init.normal_(p, std=0.2)
    ours = root / "my-run"
    model.save_pretrained(ours)
    AutoTokenizer.from_pretrained(assets["llm"]).save_pretrained(ours)
    CLIPImageProcessor.from_pretrained(assets["clip"]).save_pretrained(ours)
    upstream = write_upstream_checkpoint(model, root / "llava-v1.5-7b", assets["clip"], with_tower=False)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(assets["llm"]) / name, upstream / name)
    return {"upstream": str(upstream), "ours": str(ours), "images": assets["images"], "clip": assets["clip"],
            "llm": assets["llm"], "root": str(root)}
