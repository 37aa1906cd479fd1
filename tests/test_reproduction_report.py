"""docs/Reproduction.md is computed from result files: numbers, ratios and the spread verdicts."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from llava.demo.reproduction import main as reproduction_main

REPO = Path(__file__).resolve().parents[1]
SCORES = {"off": (40.0, 42.0), "hidrop": (45.0, 44.0), "hidrop-hard": (41.0, 44.5), "fastv-26": (30.0, 31.0)}
TFLOPS = {"off": 1e-4, "hidrop": 4e-5, "hidrop-hard": 4e-5, "fastv-26": 3.9e-5}
TOKENS = {"off": 64.0, "hidrop": 26.0, "hidrop-hard": 26.0, "fastv-26": 25.75}


def _fake_run(tmp_path: Path) -> tuple[Path, Path]:
    results, ckpts = tmp_path / "results", tmp_path / "ckpts"
    for name, scores in SCORES.items():
        for seed, score in zip(("1", "2"), scores):
            label = f"{name}-s{seed}"
            out = results / f"reproduce-{label}"
            out.mkdir(parents=True)
            run = {"avg_vision_tokens": TOKENS[name], "vision_tflops": TFLOPS[name],
                   "reduction": {"inject_layer": 1, "prune_layers": [], "keep_counts": [], "exit_layer": -1}}
            (out / "gqa.json").write_text(json.dumps({"bench": "gqa", "label": label, "score": score, "run": run}))
            (ckpts / label).mkdir(parents=True)
            runtime = 100.0 if name == "off" else 60.0
            (ckpts / label / "trainer_state.json").write_text(json.dumps({"log_history": [{"loss": 1.0},
                                                                                          {"train_runtime": runtime}]}))
    return results, ckpts


def test_document_numbers_and_verdicts(tmp_path):
    results, ckpts = _fake_run(tmp_path)
    doc = tmp_path / "Reproduction.md"
    assert reproduction_main(["--checkpoints", str(ckpts), "--results", str(results), "--seeds", "1 2",
                              "--output", str(doc), "--wall-seconds", "600"]) == 0
    text = doc.read_text()
    assert "| off | all layers, nothing pruned | 64.00 | 40.00 | 42.00 | 41.00 | 2.00 | 100.0 |" in text
    assert "| hidrop |" in text and "| 44.50 | 1.00 | 108.5 |" in text  # 100 * 44.5 / 41
    assert "| hidrop | 0.400 | 60.0 | 0.600 |" in text  # FLOPs and time ratios to off
    # hidrop - off = +3.50 > max(1.0, 2.0): exceeds; hidrop - hidrop-hard = +1.75 < 3.5: within
    assert "HiDrop (40% of the vision tokens) vs plain LLaVA (Table 1): hidrop - off | +3.50 | 2.00 | exceeds" in text
    assert "differentiable vs hard top-k (Table 3): hidrop - hidrop-hard | +1.75 | 3.50 | within the spread" in text
    assert "Wall time of the whole run: 10.0 min" in text


def test_missing_measurements_are_named(tmp_path, capsys):
    results, ckpts = _fake_run(tmp_path)
    os.remove(ckpts / "hidrop-s2" / "trainer_state.json")
    assert reproduction_main(["--checkpoints", str(ckpts), "--results", str(results), "--seeds", "1 2",
                              "--output", str(tmp_path / "x.md")]) == 2
    assert "hidrop-s2" in capsys.readouterr().err
    assert reproduction_main(["--checkpoints", str(ckpts), "--results", str(results), "--seeds", "1 3",
                              "--output", str(tmp_path / "x.md")]) == 2
    assert "no result for seed(s) ['3']" in capsys.readouterr().err


@pytest.mark.parametrize("seeds", ["1 2", "5"])
def test_reproduce_script_dry_run(seeds):
    out = subprocess.run(["bash", str(REPO / "scripts" / "reproduce.sh")], cwd=REPO,
                         env=dict(os.environ, DRY_RUN="1", SEEDS=seeds), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    finetunes = [line for line in lines if "scripts/finetune.sh" in line]
    assert len(finetunes) == 10 * len(seeds.split())
    assert all("shared-off-pretrain" in line for line in finetunes)  # FT only, from one projector per seed
    assert any("llava.analysis.ilvas" in line for line in lines)
    assert lines[-1].split()[1:4] == ["python", "-m", "llava.demo.reproduction"]
