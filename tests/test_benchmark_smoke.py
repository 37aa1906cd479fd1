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
    for needle in ("average vision tokens 64.0", "train ", "prefill ", "FLOPs-ideal", "measured/ideal",
                   "forward only (timers)", "forward+backward (ablation"):
        assert needle in text, needle
