"""SEED-IMG exact-letter accuracy and MMStar's official first-character rule."""

from __future__ import annotations

import os

import pytest

from llava.eval.benchmarks import ScoreInputs, get_benchmark
from llava.eval.scorers.mmstar import mmstar_correct

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "eval")


def test_seed_skips_video_questions() -> None:
    qs = get_benchmark("seed").load_questions(os.path.join(FIX, "seed", "llava-seed-bench.jsonl"))
    assert [q.qid for q in qs] == [101, 102, 103, 104]


def test_seed_fixture() -> None:
    bench = get_benchmark("seed")
    answers = bench.read_answers(os.path.join(FIX, "seed", "answers.jsonl"))
    result = bench.score(answers, ScoreInputs(answers_file="a", annotation_file=os.path.join(FIX, "seed", "SEED-Bench.json")))
    # 101 "A" = A ok; 102 "B." != "B" (whole-string equality) wrong, unparsed; 103 "C" != D wrong; 104 "D" ok
    # image accuracy 2/4 = 50; Scene Understanding (101, 104) 100; Instances Counting (102, 103) 0
    assert result.score == pytest.approx(50.0)
    assert result.num_unparsed == 1
    assert result.details["per_question_type"] == {"Instances Counting": 0.0, "Scene Understanding": 100.0}


@pytest.mark.parametrize(
    "pred, answer, ok",
    [
        ("A", "A", True),
        ("(B) cat", "B", True),
        ("The answer is C", "C", True),
        ("Option b", "B", True),
        ("a cat", "A", True),  # the official quirk: any output starting with the letter
        ("Answer: D", "D", False),  # first character is "a"
        ("", "A", False),
    ],
)
def test_mmstar_rule(pred: str, answer: str, ok: bool) -> None:
    assert mmstar_correct(pred, answer) is ok


def test_mmstar_fixture() -> None:
    bench = get_benchmark("mmstar")
    tsv = os.path.join(FIX, "mmstar", "MMStar.tsv")
    qs = bench.load_questions(tsv)
    # options are already in the question text, so none are appended
    assert qs[0].text == (
        "What is shown? Options: A: a cat, B: a dog, C: a car, D: a tree\n"
        "Answer with the option's letter from the given choices directly."
    )
    answers = bench.read_answers(os.path.join(FIX, "mmstar", "answers.jsonl"))
    result = bench.score(answers, ScoreInputs(answers_file="a", question_file=tsv))
    # 0 "A" ok; 1 "(B) cat" ok; 2 "The answer is C" ok; 3 "Answer: D" wrong; 4 "a cat" ok (quirk);
    # 5 "Option b" ok; 6 "I don't know" wrong and unparsed -> 5/7 = 71.43
    # coarse perception: 0, 1, 4 all ok -> 100; math: 2 ok, 3 x, 5 ok, 6 x -> 50
    assert result.score == pytest.approx(500 / 7)
    assert result.num_unparsed == 1
    assert result.details["per_category"] == pytest.approx({"coarse perception": 100.0, "math": 50.0})
