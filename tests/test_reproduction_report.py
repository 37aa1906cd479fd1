"""docs/Reproduction.md is computed from result files: numbers, ratios and the paired statistics' verdicts."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from llava.demo.reproduction import main as reproduction_main

REPO = Path(__file__).resolve().parents[1]
# Accuracies in percent of QUESTIONS questions; a setting's correct answers are its first n questions (so two
# settings' correct sets are nested, which fixes McNemar's counts: only the larger one has answers the other lacks).
QUESTIONS = 200
SCORES = {"off": (40.0, 42.0), "hidrop": (45.0, 44.0), "hidrop-hard": (41.0, 44.5), "fastv-26": (30.0, 31.0)}
TFLOPS = {"off": 1e-4, "hidrop": 4e-5, "hidrop-hard": 4e-5, "fastv-26": 3.9e-5}
TOKENS = {"off": 64.0, "hidrop": 26.0, "hidrop-hard": 26.0, "fastv-26": 25.75}


def _fake_run(tmp_path: Path, scores: dict[str, tuple[float, ...]] = SCORES) -> tuple[Path, Path]:
    """Result files as `llava.eval.score` writes them, with the predictions and annotation files they name."""
    results, ckpts = tmp_path / "results", tmp_path / "ckpts"
    annotation = tmp_path / "testdev_balanced_questions.json"
    annotation.write_text(json.dumps({str(i): {"answer": "yes", "isBalanced": True} for i in range(QUESTIONS)}))
    for name, per_seed in scores.items():
        for seed, score in zip(("1", "2", "3"), per_seed):
            label = f"{name}-s{seed}"
            out = results / f"reproduce-{label}"
            out.mkdir(parents=True)
            correct = round(score * QUESTIONS / 100)
            predictions = out / "testdev_balanced_predictions.json"
            predictions.write_text(json.dumps([{"questionId": str(i), "prediction": "yes" if i < correct else "no"}
                                               for i in range(QUESTIONS)]))
            run = {"avg_vision_tokens": TOKENS[name], "vision_tflops": TFLOPS[name],
                   "reduction": {"inject_layer": 1, "prune_layers": [], "keep_counts": [], "exit_layer": -1}}
            (out / "gqa.json").write_text(json.dumps({"bench": "gqa", "label": label, "score": score, "run": run,
                                                      "inputs": {"answers_file": str(predictions),
                                                                 "annotation_file": str(annotation)}}))
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
    # hidrop vs fastv-26: 14 points on 200 nested questions and both seeds: decided. McNemar: 28 and 26 questions
    # only hidrop answers, none only fastv.
    row = next(line for line in text.splitlines() if "hidrop - fastv-26" in line)
    assert "| +14.00 |" in row and "s1: 30/0, p=1.86e-09; s2: 26/0" in row and row.endswith("| hidrop better |")
    # hidrop vs hidrop-hard: +1.75 with a seed that goes the other way: undecided
    row = next(line for line in text.splitlines() if "hidrop - hidrop-hard" in line)
    assert "| +1.75 |" in row and "s2: 0/1" in row and row.endswith("| undecided |")
    assert "Only 2 seed(s) were run" in text
    assert "Wall time of the whole run: 10.0 min" in text
    # the settings ONLY left out are named, so that a missing row does not read as a silent omission
    not_run = next(line for line in text.splitlines() if line.startswith("Not run this time"))
    assert "pdrop-26, voco-26, twigvlm-26, hidrop-compacted" in not_run and "fastv-26" not in not_run


def test_a_rewritten_answer_file_is_refused(tmp_path, capsys):
    results, ckpts = _fake_run(tmp_path)
    predictions = results / "reproduce-off-s1" / "testdev_balanced_predictions.json"
    predictions.write_text(predictions.read_text().replace('"no"', '"yes"', 3))
    assert reproduction_main(["--checkpoints", str(ckpts), "--results", str(results), "--seeds", "1 2",
                              "--output", str(tmp_path / "x.md")]) == 2
    assert "not the recorded 40.0" in capsys.readouterr().err


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
    assert len(finetunes) == 11 * len(seeds.split())  # 10 settings + VoCo (voco-26)
    assert any("compress_tokens=26" in line for line in finetunes)
    assert all("shared-off-pretrain" in line for line in finetunes)  # FT only, from one projector per seed
    assert any("llava.analysis.ilvas" in line for line in lines)
    assert "python -m llava.demo.reproduction" in lines[-1] and "RECIPE=tiny" in lines[-1]
    assert shlex.split(lines[-1])[shlex.split(lines[-1]).index("--seeds") + 1] == seeds


def test_a_subset_without_hidrop_skips_the_analysis_and_says_so():
    out = subprocess.run(["bash", str(REPO / "scripts" / "reproduce.sh")], cwd=REPO,
                         env=dict(os.environ, DRY_RUN="1", SEEDS="1 2 3", ONLY="off,fastv-26"),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert not any("llava.analysis" in line for line in out.stdout.splitlines())
    assert "analysis tools (which read its checkpoint) are skipped" in out.stderr
    assert "python -m llava.demo.reproduction" in out.stdout.splitlines()[-1]
