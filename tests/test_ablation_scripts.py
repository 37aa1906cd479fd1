"""Every scripts/ablations/*.sh, at both scales: DRY_RUN=1 prints real commands whose flags parse (training flags
through the scripts' own PRINT_ARGS_ONLY, schedules validated for the model's depth), and the report line parses."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from llava.eval.report import build_parser as report_parser
from llava.model.reduction.config import resolve_reduction
from llava.train.arguments import build_parser as train_parser

REPO = Path(__file__).resolve().parents[1]
STUDIES = sorted(p.stem for p in (REPO / "scripts" / "ablations").glob("*.sh") if not p.stem.startswith("_"))
SHAPES = {"paper": (32, 576), "tiny": (8, 64)}  # layers, vision tokens of each recipe's model


def _dry_run(study: str, **env: str) -> list[list[str]]:
    out = subprocess.run(["bash", str(REPO / "scripts" / "ablations" / f"{study}.sh")], cwd=REPO,
                         env=dict(os.environ, DRY_RUN="1", **env), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in out.stdout.splitlines() if line.strip()]


def _split_env(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    assert argv[0] == "env"
    env, i = {}, 1
    while "=" in argv[i] and not argv[i].startswith("-"):
        k, v = argv[i].split("=", 1)
        env[k] = v
        i += 1
    return env, argv[i:]


def test_every_study_of_the_paper_has_a_script():
    assert set(STUDIES) == {"scoring", "position_encoding", "topk", "injection", "exit", "window", "filter_layers"}


@pytest.mark.parametrize("recipe", ["paper", "tiny"])
@pytest.mark.parametrize("study", STUDIES)
def test_dry_run_commands_parse(study, recipe):
    commands = _dry_run(study, RECIPE=recipe)
    layers, tokens = SHAPES[recipe]
    trained, evaluated, schedules = set(), set(), {}
    for argv in commands:
        env, cmd = _split_env(argv)
        if cmd[:2] == ["bash", "scripts/pretrain.sh"] or cmd[:2] == ["bash", "scripts/finetune.sh"]:
            printed = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, RECIPE=recipe, PRINT_ARGS_ONLY="1", **env),
                                     capture_output=True, text=True)
            assert printed.returncode == 0, printed.stderr
            args = train_parser().parse_args([*printed.stdout.splitlines(), *cmd[2:]])
            red = resolve_reduction(args.reduction, args.reduction_overrides).validate_for(layers, tokens)
            assert args.seed in {42, 1, 2} and args.output_dir == env["OUTPUT_DIR"]
            if cmd[1].endswith("finetune.sh"):
                trained.add(env["OUTPUT_DIR"])
                stages = "ft" if "shared-off-pretrain" in env["PROJECTOR"] else "pt+ft"
                schedules.setdefault((repr(red.to_dict()), stages), set()).add(env["OUTPUT_DIR"].rsplit("-s", 1)[0])
                assert Path(env["PROJECTOR"]).name == "mm_projector.bin"
        elif cmd[0] == "bash" and cmd[1].startswith("scripts/eval/"):
            assert (REPO / cmd[1]).is_file()
            assert env["MODEL_PATH"] in trained, "evaluates a checkpoint the sweep trains"
            evaluated.add(env["MODEL_PATH"])
        else:
            assert cmd[1:3] == ["-m", "llava.eval.report"]
            ns = report_parser().parse_args(cmd[3:])
            assert ns.name == study and ns.baseline.startswith("baseline-s")
    assert trained and evaluated == trained
    # every setting trains a different schedule or recipe (a copy-paste slip would run one twice)
    assert all(len(names) == 1 for names in schedules.values()), schedules


def test_only_and_bad_settings():
    commands = _dry_run("topk", RECIPE="tiny", ONLY="diff-ft", SEEDS="7")
    outputs = [_split_env(c)[0].get("OUTPUT_DIR") for c in commands]
    assert "./checkpoints/ablations/shared-off-pretrain-s7" in outputs  # FT only: a shared plain-LLaVA projector
    assert "./checkpoints/ablations/topk/diff-ft-s7" in outputs and len([o for o in outputs if o]) == 2
    bad = subprocess.run(["bash", str(REPO / "scripts" / "ablations" / "topk.sh")], cwd=REPO,
                         env=dict(os.environ, DRY_RUN="1", RECIPE="huge"), capture_output=True, text=True)
    assert bad.returncode == 2 and "RECIPE" in bad.stderr
