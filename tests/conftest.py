"""Shared test setup: keep everything offline and local."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    """Tiny LLM, CLIP, digit images and LLaVA-format data, shared by the multi-process training tests."""
    from train_fixtures import build_tiny_assets

    return build_tiny_assets(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_pretrained(tiny_assets, tmp_path_factory):
    """Stage 1 through scripts/pretrain.sh (ZeRO-2, 2 CPU ranks, 2 steps): the projector the finetunes start from."""
    from train_fixtures import run_script

    out = tmp_path_factory.mktemp("pt")
    run_script("pretrain.sh", {"MODEL_BASE": tiny_assets["llm"], "VISION_TOWER": tiny_assets["clip"],
                               "DATA_PATH": tiny_assets["pretrain"], "IMAGE_FOLDER": tiny_assets["images"],
                               "OUTPUT_DIR": str(out), "MAX_STEPS": "2", "OVERWRITE": "1"})
    return out


@pytest.fixture(scope="session")
def upstream_checkpoints(tiny_assets, tmp_path_factory):
    """The tiny model in upstream LLaVA's layout and in ours (tests/upstream_fixtures.py), for the drop-in tests."""
    from upstream_fixtures import build_upstream_checkpoints

    return build_upstream_checkpoints(tiny_assets, tmp_path_factory.mktemp("upstream_ckpts"))


@pytest.fixture(autouse=True)
def _models_load_on_the_cpu_in_cpu_tests(request, monkeypatch):
    """``load_pretrained_model`` puts a model on the GPU when there is one (upstream's default), while these tests
    build their inputs on the CPU: on a GPU machine they load on the CPU too, unless they name a device.
    tests/test_gpu.py picks its devices itself. A no-op without CUDA."""
    import torch

    if request.node.path.name == "test_gpu.py" or not torch.cuda.is_available():
        return
    from llava.model import builder

    resolve = builder._resolve_device
    monkeypatch.setattr(builder, "_resolve_device", lambda device, device_map: resolve(
        "cpu" if device is None and device_map in (None, "auto") else device, device_map))
