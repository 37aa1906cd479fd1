"""Two-rank DeepSpeed training on CPU through the real scripts (torchrun over gloo), then loading and resuming.

Slow by nature (each launch imports DeepSpeed on two ranks); the whole module is one end-to-end scenario.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_fixtures import build_tiny_assets

REPO = Path(__file__).resolve().parents[1]
SCHEDULE = "inject_layer=2 prune_layers=2,3 keep_counts=8,4 exit_layer=4"
pytestmark = pytest.mark.slow


def _run(script: str, env: dict, *extra: str, port: int) -> subprocess.CompletedProcess:
    full = dict(os.environ, RECIPE="tiny", PYTHON=sys.executable, MASTER_PORT=str(port), NPROC="2",
                DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", REDUCTION_OVERRIDES=SCHEDULE, BATCH_PER_DEVICE="4", **env)
    full.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "hidrop_torch_ext"))
    proc = subprocess.run(["bash", str(REPO / "scripts" / script), *extra], env=full, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _losses(output_dir: Path) -> dict[int, float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_tiny_assets(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def pretrained(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("pt")
    _run("pretrain.sh", {"MODEL_BASE": assets["llm"], "VISION_TOWER": assets["clip"], "DATA_PATH": assets["pretrain"],
                         "IMAGE_FOLDER": assets["images"], "OUTPUT_DIR": str(out), "MAX_STEPS": "2"}, port=29611)
    return out


def test_zero2_pretrain_saves_projector_only(pretrained):
    files = set(os.listdir(pretrained))
    assert "mm_projector.bin" in files and "config.json" in files
    assert not files & {"model.safetensors", "pytorch_model.bin"}
    state = torch.load(pretrained / "mm_projector.bin", weights_only=True)
    assert all(k.startswith("model.mm_projector.") for k in state)
    cfg = json.loads((pretrained / "config.json").read_text())
    assert cfg["model_type"] == "llava_llama" and cfg["reduction"]["keep_counts"] == [8, 4]


def test_zero3_finetune_resume_and_load(assets, pretrained, tmp_path):
    env = {"MODEL_BASE": assets["llm"], "VISION_TOWER": assets["clip"], "DATA_PATH": assets["finetune"],
           "IMAGE_FOLDER": assets["images"], "PROJECTOR": str(pretrained / "mm_projector.bin"),
           "MAX_STEPS": "4", "SAVE_STEPS": "2"}
    full_run = tmp_path / "full"
    _run("finetune.sh", dict(env, OUTPUT_DIR=str(full_run)), "--save_total_limit", "3", port=29612)
    resumed = tmp_path / "resumed"
    _run("finetune.sh", dict(env, OUTPUT_DIR=str(resumed)), "--resume_from_checkpoint",
         str(full_run / "checkpoint-2"), port=29613)
    a, b = _losses(full_run), _losses(resumed)
    assert set(a) == {1, 2, 3, 4} and {3, 4} <= set(b)
    for step in (3, 4):
        assert b[step] == pytest.approx(a[step], rel=1e-4, abs=1e-4), (step, a, b)

    # the saved checkpoint is complete: config, weights, tokenizer and processor, and it generates
    from llava.model.builder import load_pretrained_model

    tok, model, proc, ctx = load_pretrained_model(str(full_run))
    assert model.config.reduction["keep_counts"] == [8, 4]
    ids = tok("USER: hi ASSISTANT:", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, eos_token_id=-1)
    assert out.shape == (1, 3)
