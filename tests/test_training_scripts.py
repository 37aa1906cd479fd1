"""Every shipped training script's flags parse against the argument dataclasses (a renamed flag fails CI), and
bad flags give the documented errors."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from llava.train.arguments import build_parser
from llava.train.train import TrainingSetupError, parse_args

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPTS = ["pretrain.sh", "finetune.sh"]


def script_args(script: str, **env) -> list[str]:
    out = subprocess.run(["bash", str(REPO / "scripts" / script)], env=dict(os.environ, PRINT_ARGS_ONLY="1", **env),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


@pytest.mark.parametrize("script", TRAIN_SCRIPTS)
@pytest.mark.parametrize("env", [{}, {"RECIPE": "tiny"}, {"LORA": "1"}, {"PRECISION": "fp16"}, {"REDUCTION": "off"}])
def test_script_flags_parse(script, env):
    args = script_args(script, **env)
    ns = build_parser().parse_args(args)  # argparse: unknown flags or bad types raise SystemExit
    assert ns.reduction == env.get("REDUCTION", "tiny" if env.get("RECIPE") == "tiny" else "tok64")


def test_paper_recipe_defaults():
    pt = dict(zip(*[iter(script_args("pretrain.sh"))] * 2))
    assert pt["--learning_rate"] == "1e-3" and pt["--per_device_train_batch_size"] == "32"
    assert pt["--deepspeed"].endswith("zero2.json") and pt["--version"] == "plain" and pt["--model_max_length"] == "2048"
    ft = script_args("finetune.sh")
    ftd = {ft[i]: ft[i + 1] for i in range(0, len(ft) - 1) if ft[i].startswith("--")}
    assert ftd["--learning_rate"] == "2e-5" and ftd["--per_device_train_batch_size"] == "16"
    assert ftd["--deepspeed"].endswith("zero3.json") and ftd["--image_aspect_ratio"] == "pad"
    assert ftd["--group_by_modality_length"] == "True" and ftd["--model_name_or_path"] == "lmsys/vicuna-7b-v1.5"
    lora = script_args("finetune.sh", LORA="1")
    assert "--lora_enable" in lora and lora[lora.index("--lora_r") + 1] == "128" and lora[lora.index("--mm_projector_lr") + 1] == "2e-5"
    assert lora[lora.index("--learning_rate") + 1] == "2e-4"


@pytest.mark.parametrize("script", TRAIN_SCRIPTS)
def test_bad_sample_policy_and_overwrite_reach_the_trainer(script):
    args = script_args(script, ON_BAD_SAMPLE="skip", OVERWRITE="1")
    assert args[args.index("--on_bad_sample") + 1] == "skip"  # pretrain.sh used to drop ON_BAD_SAMPLE
    assert args[args.index("--overwrite_output_dir") + 1] == "True"
    ns = build_parser().parse_args(args)
    assert ns.on_bad_sample == "skip" and ns.overwrite_output_dir is True
    assert "--overwrite_output_dir" not in script_args(script)


def test_bad_recipe_and_precision_are_rejected():
    for env in ({"RECIPE": "huge"}, {"PRECISION": "fp8"}, {"OVERWRITE": "yes"}):
        out = subprocess.run(["bash", str(REPO / "scripts" / "pretrain.sh")], env=dict(os.environ, PRINT_ARGS_ONLY="1", **env),
                             capture_output=True, text=True)
        assert out.returncode == 2 and next(iter(env)) in out.stderr


def test_unknown_flag_is_an_error():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--output_dir", "x", "--mm_projectr_type", "linear"])
    with pytest.raises(ValueError, match="not used by the HfArgumentParser"):
        parse_args(["--output_dir", "/tmp/x", "--no_such_flag", "1"])


@pytest.mark.parametrize("flags,msg", [
    (["--bits", "4"], "--bits"),
    (["--mm_use_im_start_end", "True"], "mm_use_im_start_end"),
    (["--version", "v7"], "--version"),
    (["--on_bad_sample", "ignore"], "--on_bad_sample"),
    (["--warmup_ratio", "1.5"], "--warmup_ratio"),
])
def test_unsupported_settings_name_the_flag(flags, msg):
    with pytest.raises(TrainingSetupError, match=msg):
        parse_args(["--output_dir", "/tmp/x", *flags])


def test_offload_config_keeps_our_optimizer_and_schedule():
    import json

    cfg = json.loads((REPO / "scripts" / "zero3_offload.json").read_text())
    # An optimizer/scheduler block would make transformers bypass our parameter groups (projector LR) and
    # replace the cosine schedule with WarmupLR (upstream's trap).
    assert "optimizer" not in cfg and "scheduler" not in cfg
    assert cfg["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
