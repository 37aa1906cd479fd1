"""The speed benchmark still runs (tiny shape, one repetition). It asserts no timing: speed is measured by
running the benchmark itself, not by tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_runs_and_reports_every_figure():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_hidrop_step.py"), "--hidden", "64",
                          "--text", "64", "--batch", "1", "--reps", "1", "--vocab", "128"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    for needle in ("average vision tokens 64.00", "train ", "prefill ", "FLOPs-ideal", "measured/ideal",
                   "forward only (timers)", "keep-gather forward+backward (4 stages, timed alone"):
        assert needle in text, needle


def _bench(*argv: str) -> str:
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


def test_generation_benchmark_reports_kv_against_the_ideal():
    text = _bench(str(REPO / "benchmarks" / "bench_generation.py"), "--hidden", "64", "--text", "64", "--new", "2",
                  "--batches", "1,2", "--reps", "1", "--vocab", "128")
    rows = [line for line in text.splitlines() if line.startswith("| 2 | tok64")]
    assert rows and rows[0].split("|")[6].strip() == "1.000"  # KV bytes equal the schedule's ideal exactly
    assert "RESULT | decode tokens/s, batch 1" in text and "interleaved" in text


def test_generation_benchmark_speculative_runs():
    text = _bench(str(REPO / "benchmarks" / "bench_generation.py"), "--speculative", "--hidden", "64", "--text", "64",
                  "--new", "6", "--batches", "1,2", "--reps", "1", "--vocab", "128", "--layers", "8")
    # the twig agrees with the base by construction: every drafted token is kept
    assert "RESULT | speculative decode tokens/s, batch 1" in text and "acceptance 1.000" in text
    assert "| 2 |" in text and "interleaved" in text


def test_parallel_vision_benchmark_runs():
    text = _bench(str(REPO / "benchmarks" / "bench_parallel_vision.py"), "--hidden", "64", "--text", "64", "--batch",
                  "1", "--reps", "1", "--tower", "1,32,64", "--vocab", "128")
    assert "| plain | decoupled | gain | tower alone | shallow layers 1-8 alone |" in text
    assert "RESULT | parallel vision" in text and "shallow" in text.split("RESULT")[-1]


def test_train_step_benchmark_runs_through_the_trainer():
    text = _bench(str(REPO / "benchmarks" / "bench_train_step.py"), "--hidden", "64", "--text", "30", "--tower",
                  "1,32,64", "--batch", "1", "--steps", "3", "--reps", "1", "--zero", "2")
    assert "| 2 |" in text and "ideal with tower" in text and "Vicuna-7B" in text and "1.72x" in text


def test_gpu_suite_parses_and_refuses_without_a_gpu(tmp_path):
    subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_suite.sh")], check=True)
    import shutil

    if shutil.which("nvidia-smi"):
        return  # a GPU machine runs the suite itself
    out = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_suite.sh")], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path)})
    assert out.returncode == 2 and "no NVIDIA GPU" in out.stderr


def test_tok64_scaled_to_fewer_layers_keeps_its_shape():
    import pytest

    sys.path.insert(0, str(REPO / "benchmarks"))
    from timing import tok64_for_depth

    from llava.model import PRESETS

    assert tok64_for_depth(32) is PRESETS["tok64"]
    for layers in (24, 16, 11):
        red = tok64_for_depth(layers)  # validated for the depth
        marks = (red.inject_layer, *red.prune_layers, red.exit_layer)
        assert list(marks) == sorted(set(marks)) and red.exit_layer <= layers
        assert red.keep_counts == PRESETS["tok64"].keep_counts
    with pytest.raises(SystemExit, match="at least 11 layers"):
        tok64_for_depth(10)


def test_peer_benchmark_checks_tokens_through_transformers_llava(monkeypatch, capsys):
    """bench_vs_transformers.py on a tiny shape, one repetition: off's tokens and first logits are checked against
    transformers' own LlavaForConditionalGeneration (same weights through the converter's functions) before any
    timing, at two batch sizes, and every figure is printed. In-process: a subprocess would spend most of the
    test importing torch and transformers again."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_vs_transformers import main

    monkeypatch.setattr(sys, "argv", ["bench_vs_transformers.py", "--hidden", "64", "--layers", "11", "--text", "40",
                                      "--new", "3", "--batches", "1,2", "--reps", "1", "--vocab", "128", "--device",
                                      "cpu"])
    main()
    text = capsys.readouterr().out
    for batch in (1, 2):
        assert f"batch {batch}: off generates transformers' 3 tokens exactly" in text
        assert f"RESULT | vs transformers (prefill / generate), batch {batch} | off " in text
    assert text.count("| 2 | generate 3 |") == 1 and "| 1 | prefill |" in text


def test_peer_benchmark_refuses_to_time_different_tokens():
    import pytest
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_vs_transformers import check_same_tokens

    ref = torch.tensor([[5, 6, 7], [5, 6, 7]])
    wrong = ref.clone()
    wrong[1, 2] = 9
    same = {"transformers": lambda n: ref, "off": lambda n: ref, "tok64": lambda n: wrong}
    assert check_same_tokens(same, 2, 3) == pytest.approx(5 / 6)
    with pytest.raises(SystemExit, match="batch 2: off generates different tokens from transformers \\(first "
                                         "difference at new token 2: \\[7, 7\\] vs \\[7, 9\\]\\); no timings reported"):
        check_same_tokens({**same, "off": lambda n: wrong}, 2, 3)
