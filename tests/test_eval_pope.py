"""POPE: the yes/no parser, per-split metrics, mean F1, and joining labels on real keys."""

from __future__ import annotations

import os

import pytest

from llava.eval import score
from llava.eval.benchmarks import ScoreInputs, get_benchmark
from llava.eval.files import EvalDataError
from llava.eval.scorers.pope import binary_metrics, parse_pope

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "eval", "pope")


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("Yes", ("yes", True)),
        ("No, there is not.", ("no", True)),
        ("I think not.", ("no", True)),  # "not" is a no-token
        ("There is a dog.", ("yes", False)),  # neither yes nor no: defaults to yes, reported as unparsed
        ("", ("yes", False)),
        ("NO", ("yes", False)),  # only "No", "no" and "not" count: upper-case NO reads as yes
        ("Yes. No.", ("yes", True)),  # only the first sentence counts
    ],
)
def test_parser(text: str, parsed: tuple[str, bool]) -> None:
    assert parse_pope(text) == parsed


def test_metrics_by_hand() -> None:
    m = binary_metrics(["yes", "no", "yes", "yes"], ["yes", "no", "yes", "no"])
    # TP=2 FP=1 TN=1 FN=0: precision 2/3, recall 1, F1 = 2*(2/3)/(5/3) = 0.8, acc 3/4, yes-ratio 3/4
    assert (m["TP"], m["FP"], m["TN"], m["FN"]) == (2, 1, 1, 0)
    assert m["f1"] == pytest.approx(0.8)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["yes_ratio"] == pytest.approx(0.75)


def test_fixture_mean_f1(capsys) -> None:
    score.main(
        [
            "--bench", "pope",
            "--answers-file", os.path.join(FIX, "answers.jsonl"),
            "--question-file", os.path.join(FIX, "llava_pope_test.jsonl"),
            "--annotation-dir", os.path.join(FIX, "coco"),
        ]
    )
    # The question file lists the adversarial questions in a different order than the annotation file, so a
    # positional join would misalign them; the key join gives:
    # adversarial: horse(no) "Yes, there is a horse" -> yes FP; dog@1(yes) "Yes" -> TP;
    #              dog@2(yes) "There is a dog." -> yes (unparsed) TP; cat(no) "No, there is not." -> TN
    #              -> P 2/3, R 1, F1 0.8, acc 0.75
    # random:      kite(no) "I think not." -> no TN; bus(yes) "Yes." -> TP -> F1 1.0
    # mean F1 = (0.8 + 1.0) / 2 = 0.9
    out = capsys.readouterr().out
    assert "POPE mean F1: 90.00" in out
    assert "POPE adversarial: F1 80.00  acc 75.00  precision 66.67  recall 100.00  yes-ratio 75.00" in out
    assert "POPE unparsed outputs: 1/6" in out


def test_question_without_label_is_an_error(tmp_path) -> None:
    bench = get_benchmark("pope")
    answers = [{"question_id": 9, "prompt": "Is there a zebra in the image?", "text": "no", "image": "x.jpg", "category": "random"}]
    with pytest.raises(EvalDataError, match="no label"):
        bench.score(answers, ScoreInputs(answers_file="a", annotation_dir=os.path.join(FIX, "coco")))
