"""Every shipped scripts/eval/*.sh: bash syntax, conventions, and every `python -m llava.eval.X` command line
parsed by that module's own argparse parser (after substituting dummy values for the shell variables)."""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess

import pytest

SCRIPTS_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "eval")
BENCH_SCRIPTS = ("gqa", "vqav2", "vizwiz", "sqa", "textvqa", "pope", "mme", "mmbench", "mmbench_cn", "seed", "mmstar")
ENV_VARS = ("MODEL_PATH", "MODEL_BASE", "VISION_TOWER_PATH", "ON_MISMATCH", "CKPT", "LABEL", "DATA_ROOT", "RESULTS_DIR", "CHUNKS", "CUDA_VISIBLE_DEVICES", "REDUCTION", "REDUCTION_OVERRIDES", "BATCH_SIZE", "MAX_NEW_TOKENS", "SPECULATIVE", "PYTHON")
COMMAND = re.compile(r"\$\{?PYTHON\}?\s+-m\s+llava\.eval\.(\w+)(.*)")
# Values a variable takes in the dummy substitution: numeric flags need numbers, and _common.sh's run_chunks
# receives the benchmark name as $bench. Anything else becomes "dummy_<NAME>".
DUMMY = {"CHUNKS": "2", "idx": "1", "IDX": "1", "BATCH_SIZE": "4", "MAX_NEW_TOKENS": "16", "bench": "gqa", "ON_MISMATCH": "error",
         # flag arrays expanded as "${NAME[@]}": their words when set
         "LIMIT_FLAG": "--limit 3", "REUSE_FLAG": "--reuse-image-cache", "SPECULATIVE_FLAG": "--speculative twig"}
# Optional variables are empty by default; the commands must also parse that way.
EMPTY_BY_DEFAULT = ("MODEL_BASE", "VISION_TOWER_PATH", "REDUCTION", "REDUCTION_OVERRIDES", "MAX_NEW_TOKENS", "JUDGE",
                    "LIMIT_FLAG", "REUSE_FLAG", "SPECULATIVE_FLAG")


def _script_paths() -> list[str]:
    return sorted(os.path.join(SCRIPTS_DIR, f) for f in os.listdir(SCRIPTS_DIR) if f.endswith(".sh"))


def _substitute(text: str, values: dict[str, str]) -> str:
    """Replaces ${VAR:+word} (word if VAR is non-empty, else nothing), ${VAR:-default}, ${VAR}, $VAR (and
    ${ARR[...]}) with dummy values."""

    def alternate(m: re.Match) -> str:
        return _substitute(m.group(2), values) if values.get(m.group(1), f"dummy_{m.group(1)}") else ""

    # "${ARR[@]}": the array's words (several arguments, or none), not one quoted argument
    text = re.sub(r'"\$\{(\w+)\[@\]\}"', lambda m: values.get(m.group(1), f"dummy_{m.group(1)}"), text)
    text = re.sub(r"\$\{(\w+):?\+([^}]*)\}", alternate, text)
    text = re.sub(r"\$\{(\w+)(?:\[[^]]*\])?(?::?[-=+][^}]*)?\}", lambda m: values.get(m.group(1), f"dummy_{m.group(1)}"), text)
    return re.sub(r"\$(\w+)", lambda m: values.get(m.group(1), f"dummy_{m.group(1)}"), text)


def python_commands(path: str, empty_optional: bool = False) -> list[tuple[str, list[str]]]:
    """(module, argv) for each `$PYTHON -m llava.eval.<module> ...` line, continuation lines joined."""
    with open(path, encoding="utf-8") as f:
        joined = re.sub(r"\\\n\s*", " ", f.read())
    commands = []
    for line in joined.splitlines():
        if line.lstrip().startswith("#"):
            continue
        m = COMMAND.search(line)
        if m:
            values = {**DUMMY, **dict.fromkeys(EMPTY_BY_DEFAULT, "")} if empty_optional else DUMMY
            commands.append((m.group(1), shlex.split(_substitute(m.group(2), values))))
    return commands


def test_all_benchmark_scripts_exist() -> None:
    names = {os.path.basename(p)[:-3] for p in _script_paths()}
    assert set(BENCH_SCRIPTS) <= names


@pytest.mark.parametrize("path", _script_paths(), ids=os.path.basename)
def test_bash_syntax(path: str) -> None:
    subprocess.run(["bash", "-n", path], check=True)


@pytest.mark.parametrize("name", BENCH_SCRIPTS)
def test_conventions(name: str) -> None:
    path = os.path.join(SCRIPTS_DIR, f"{name}.sh")
    text = open(path, encoding="utf-8").read()
    header = text.split("set -euo pipefail")[0]
    assert "set -euo pipefail" in text
    for var in ENV_VARS:
        assert re.search(rf"^#\s+{var}\b", header, re.M), f"{name}.sh header does not document {var}"
    assert "_common.sh" in text
    assert "run_chunks " in text  # the shared runner launch (one process per chunk, then merge)
    modules = [m for m, _ in python_commands(path)]
    assert "score" in modules or "convert" in modules


@pytest.mark.parametrize("empty_optional", [False, True], ids=["set", "defaults"])
@pytest.mark.parametrize("path", _script_paths(), ids=os.path.basename)
def test_python_commands_parse(path: str, empty_optional: bool) -> None:
    commands = python_commands(path, empty_optional)
    if os.path.basename(path) == "_common.sh":
        assert {m for m, _ in commands} == {"run_benchmark", "merge"}
    assert commands, f"{path} has no python -m llava.eval command"
    for module, argv in commands:
        parser = importlib.import_module(f"llava.eval.{module}").build_parser()
        try:
            parser.parse_args(argv)
        except SystemExit as e:
            pytest.fail(f"{os.path.basename(path)}: `python -m llava.eval.{module} {' '.join(argv)}` does not parse ({e})")


@pytest.mark.parametrize("empty_optional", [False, True], ids=["set", "defaults"])
def test_common_forwards_model_base_and_on_mismatch(empty_optional: bool) -> None:
    """--model-base reaches the runner only when MODEL_BASE is set; --on-mismatch always does."""
    (module, argv), _merge = python_commands(os.path.join(SCRIPTS_DIR, "_common.sh"), empty_optional)
    assert module == "run_benchmark"
    args = importlib.import_module("llava.eval.run_benchmark").build_parser().parse_args(argv)
    assert args.model_base == (None if empty_optional else "dummy_MODEL_BASE")
    assert args.vision_tower_path == (None if empty_optional else "dummy_VISION_TOWER_PATH")
    assert args.on_mismatch == "error"


def test_run_chunks_passes_model_base_to_the_runner(tmp_path) -> None:
    """Runs _common.sh's run_chunks with a PYTHON that records its arguments instead of running anything."""
    record = tmp_path / "argv.txt"
    fake_python = tmp_path / "fake_python.sh"
    fake_python.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" >> "{record}"\necho "--" >> "{record}"\n')
    fake_python.chmod(0o755)
    script = tmp_path / "probe.sh"
    script.write_text(
        f'set -euo pipefail\nsource "{os.path.join(SCRIPTS_DIR, "_common.sh")}"\n'
        f'run_chunks gqa q.jsonl images "{tmp_path / "answers"}"\n'
    )
    base_env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "CHUNKS", "MODEL_BASE", "VISION_TOWER_PATH", "ON_MISMATCH")}
    base_env["PYTHON"] = str(fake_python)

    def runner_argv(**env: str) -> list[str]:
        record.write_text("")
        subprocess.run(["bash", str(script)], env={**base_env, **env}, check=True, capture_output=True)
        calls = record.read_text().split("--\n")
        runner = [c.splitlines() for c in calls if "llava.eval.run_benchmark" in c]
        assert len(runner) == 1
        return runner[0]

    argv = runner_argv(MODEL_BASE="/models/vicuna 7b", ON_MISMATCH="error", VISION_TOWER_PATH="/models/clip l")
    assert argv[argv.index("--model-base") + 1] == "/models/vicuna 7b"  # one argument, spaces kept
    assert argv[argv.index("--vision-tower-path") + 1] == "/models/clip l"
    assert argv[argv.index("--on-mismatch") + 1] == "error"
    argv = runner_argv()
    assert "--model-base" not in argv and "--vision-tower-path" not in argv
    assert argv[argv.index("--on-mismatch") + 1] == "restart"


def test_bench_names_in_scripts_are_registered() -> None:
    from llava.eval.benchmarks import BENCHMARK_NAMES

    for path in _script_paths():
        for _, argv in python_commands(path):
            if "--bench" in argv:
                bench = argv[argv.index("--bench") + 1]
                assert bench in BENCHMARK_NAMES, (path, bench)


def test_common_defaults_on_cpu(tmp_path) -> None:
    """Sourcing _common.sh without GPUs gives one chunk and the documented defaults."""
    script = tmp_path / "probe.sh"
    script.write_text(
        f'set -euo pipefail\nsource "{os.path.join(SCRIPTS_DIR, "_common.sh")}"\n'
        'echo "$CHUNKS|$CKPT|$DATA_ROOT|$BATCH_SIZE|$PYTHON|$RESULTS_DIR|$LABEL"\n'
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "CHUNKS", "CKPT", "MODEL_PATH", "REDUCTION", "REDUCTION_OVERRIDES", "DATA_ROOT", "LABEL", "RESULTS_DIR", "BATCH_SIZE", "PYTHON")}
    out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out == (
        "1|llava-v1.5-7b-hidrop-tok64|./playground/data/eval|1|python|./playground/data/eval/results|llava-v1.5-7b-hidrop-tok64"
    )
    # two GPUs -> two chunks; a schedule override gets its own answers folder name
    env.update(CUDA_VISIBLE_DEVICES="0,3", REDUCTION="tok48", REDUCTION_OVERRIDES="exit_layer=24 topk=hard")
    out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out.split("|")[:2] == ["2", "llava-v1.5-7b-hidrop-tok64-tok48-exit_layer-24_topk-hard"]
