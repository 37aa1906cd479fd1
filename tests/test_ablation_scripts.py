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
        # every printed line carries what _sweep.sh exports, so that it runs the same when pasted into a new shell
        assert env["RECIPE"] == recipe and env["DATA_ROOT"], argv
        if cmd[:2] == ["bash", "scripts/pretrain.sh"] or cmd[:2] == ["bash", "scripts/finetune.sh"]:
            printed = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PRINT_ARGS_ONLY="1", **env),
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


@pytest.mark.parametrize("env,message", [
    ({"ONLY": "nonexistent"}, "ONLY: 'nonexistent' is no setting of the exit study"),
    ({"ONLY": "exit-5,exit-55"}, "ONLY: 'exit-55' is no setting"),
    ({"BENCHES": "gqa bogus"}, "BENCHES: no benchmark 'bogus'"),
    ({"SEEDS": "1 abc"}, "SEEDS: 'abc' is not a whole number"),
])
def test_selection_that_matches_nothing_is_refused_before_any_command(env, message):
    """Checked up front in both modes: a real run (DRY_RUN=0) stops before training, printing and running nothing."""
    for dry in ("1", "0"):
        out = subprocess.run(["bash", str(REPO / "scripts" / "ablations" / "exit.sh")], cwd=REPO,
                             env=dict(os.environ, RECIPE="tiny", DRY_RUN=dry, CKPT_ROOT="/nonexistent/ckpts", **env),
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and message in out.stderr, out.stderr
        assert out.stdout == "" and "==" not in out.stderr  # no command printed, nothing started


def test_a_printed_line_reproduces_the_run_in_a_fresh_shell():
    """A DRY_RUN=1 line pasted into an environment without RECIPE, DATA_ROOT or the caller's pass-through settings
    (MAX_STEPS here) runs what the sweep would have run: the tiny recipe, 3 steps."""
    line = next(c for c in _dry_run("exit", RECIPE="tiny", ONLY="exit-5", SEEDS="1", MAX_STEPS="3")
                if "scripts/pretrain.sh" in c)
    env, cmd = _split_env(line)
    assert env["MAX_STEPS"] == "3"
    fresh = {k: v for k, v in os.environ.items() if k not in ("RECIPE", "DATA_ROOT", "MAX_STEPS")}
    printed = subprocess.run(line[:1] + [f"{k}={v}" for k, v in env.items()] + cmd, cwd=REPO,
                             env=dict(fresh, PRINT_ARGS_ONLY="1"), capture_output=True, text=True)
    assert printed.returncode == 0, printed.stderr
    args = train_parser().parse_args([*printed.stdout.splitlines(), *cmd[2:]])
    assert "demo" in args.model_name_or_path, args.model_name_or_path  # the tiny recipe's model, not Vicuna-7B
    assert args.max_steps == 3
