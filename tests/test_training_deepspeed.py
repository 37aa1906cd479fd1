"""Two-rank DeepSpeed training on CPU through the real scripts (torchrun over gloo), then loading and resuming.

Slow by nature (each launch imports DeepSpeed on two ranks); the whole module is one end-to-end scenario.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from train_fixtures import (
    REPO,
    build_gqa_eval,
    eval_gqa,
    finetune_env,
    free_port,
    logged_losses,
    run_script,
    script_env,
)

pytestmark = pytest.mark.slow


def test_zero2_pretrain_saves_projector_only(tiny_pretrained):
    pretrained = tiny_pretrained
    files = set(os.listdir(pretrained))
    assert "mm_projector.bin" in files and "config.json" in files
    assert not files & {"model.safetensors", "pytorch_model.bin"}
    state = torch.load(pretrained / "mm_projector.bin", weights_only=True)
    assert all(k.startswith("model.mm_projector.") for k in state)
    cfg = json.loads((pretrained / "config.json").read_text())
    assert cfg["model_type"] == "llava_llama" and cfg["reduction"]["keep_counts"] == [8, 4]


def test_zero3_finetune_resume_and_load(tiny_assets, tiny_pretrained, tmp_path):
    env = finetune_env(tiny_assets, tiny_pretrained, MAX_STEPS="4", SAVE_STEPS="2")
    full_run = tmp_path / "full"
    run_script("finetune.sh", dict(env, OUTPUT_DIR=str(full_run)), "--save_total_limit", "3")
    resumed = tmp_path / "resumed"
    run_script("finetune.sh", dict(env, OUTPUT_DIR=str(resumed)), "--resume_from_checkpoint",
               str(full_run / "checkpoint-2"))
    a, b = logged_losses(full_run), logged_losses(resumed)
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

    # an intermediate trainer checkpoint evaluates through the eval scripts on its own (tokenizer included)
    ckpt = full_run / "checkpoint-2"
    assert {"tokenizer.json", "preprocessor_config.json", "config.json", "model.safetensors"} <= set(os.listdir(ckpt))
    eval_gqa(build_gqa_eval(tmp_path / "eval"), ckpt)


def test_projector_only_checkpoint_evaluates_with_model_base(tiny_assets, tiny_pretrained, tmp_path):
    eval_gqa(build_gqa_eval(tmp_path / "eval"), tiny_pretrained, MODEL_BASE=tiny_assets["llm"])


def test_two_nodes_of_one_rank_train_like_one_node_of_two(tiny_assets, tiny_pretrained, tmp_path):
    """NNODES/NODE_RANK/MASTER_ADDR/MASTER_PORT through the real script: 2 "machines" on localhost, 1 rank each."""
    env = finetune_env(tiny_assets, tiny_pretrained, MAX_STEPS="3")
    run_script("finetune.sh", dict(env, OUTPUT_DIR=str(tmp_path / "one")))
    port = str(free_port())
    nodes = [
        subprocess.Popen(["bash", str(REPO / "scripts" / "finetune.sh")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=script_env(**env, OUTPUT_DIR=str(tmp_path / "two"), NNODES="2",
                                                   NODE_RANK=str(rank), NPROC="1", MASTER_PORT=port))
        for rank in (0, 1)
    ]
    for node in nodes:
        out, err = node.communicate(timeout=600)
        assert node.returncode == 0, out[-2000:] + err[-4000:]
    assert "global batch = BATCH_PER_DEVICE 4 x GRAD_ACCUM 1 x NPROC 1 x NNODES 2 = 8" in err
    one, two = logged_losses(tmp_path / "one"), logged_losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6), (step, one, two)


def test_a_seed_reproduces_a_run_and_decides_the_initialisation(tiny_assets, tiny_pretrained, tmp_path):
    """On one machine a seed gives the same weights bit for bit (ZeRO-3, two gloo ranks, data order, projector
    init); another seed gives another projector (the README's demo spread comes from seeds, not from noise)."""
    from safetensors.torch import load_file

    other = tmp_path / "pt-seed5"
    run_script("pretrain.sh", {"MODEL_BASE": tiny_assets["llm"], "VISION_TOWER": tiny_assets["clip"],
                               "DATA_PATH": tiny_assets["pretrain"], "IMAGE_FOLDER": tiny_assets["images"],
                               "OUTPUT_DIR": str(other), "MAX_STEPS": "2", "OVERWRITE": "1"}, "--seed", "5")
    a = torch.load(tiny_pretrained / "mm_projector.bin", weights_only=True)
    b = torch.load(other / "mm_projector.bin", weights_only=True)
    assert a.keys() == b.keys() and not all(torch.equal(a[k], b[k]) for k in a)
    env = finetune_env(tiny_assets, tiny_pretrained, MAX_STEPS="2")
    runs = [tmp_path / "ft-a", tmp_path / "ft-b"]
    for run in runs:
        run_script("finetune.sh", dict(env, OUTPUT_DIR=str(run)), "--seed", "5")
    first, second = (load_file(str(run / "model.safetensors")) for run in runs)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first), "same seed, different weights"
    assert logged_losses(runs[0]) == logged_losses(runs[1])
