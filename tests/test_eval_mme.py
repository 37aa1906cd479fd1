"""MME: the 4-character parser, acc and acc+ per subtask (grouped by image), perception and cognition totals."""

from __future__ import annotations

import os

import pytest

from llava.eval.benchmarks import ScoreInputs, get_benchmark
from llava.eval.scorers.mme import parse_mme

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "eval", "mme")


@pytest.mark.parametrize(
    "text, label",
    [
        ("Yes", "yes"),
        ("No.", "no"),
        ("not really", "no"),  # "no" inside the first 4 characters
        ("none", "no"),
        ("There is a painting", "other"),  # neither in "ther": always wrong
        ("Yes, it is", "yes"),
    ],
)
def test_parser(text: str, label: str) -> None:
    assert parse_mme(text) == label


def test_fixture_totals() -> None:
    bench = get_benchmark("mme")
    answers = bench.read_answers(os.path.join(FIX, "answers.jsonl"))
    result = bench.score(answers, ScoreInputs(answers_file="a", annotation_dir=os.path.join(FIX, "MME_Benchmark_release_version")))
    # existence (answers deliberately out of order; pairs are formed by image):
    #   img1: dog Yes/Yes ok, cat No/No ok      -> both right
    #   img2: bird Yes/Yes ok, fish No/"Yes" x  -> only one right
    #   acc 3/4 = 75, acc+ 1/2 = 50 -> 125
    # artwork (images/ + questions_answers_YN/ layout):
    #   a1: Monet Yes/"There is..." -> other x, Picasso No/"not really" -> no ok
    #   acc 1/2 = 50, acc+ 0/1 = 0 -> 50
    # code_reasoning (cognition): c1 yes/yes ok, no/"No." ok -> 100 + 100 = 200
    # perception = 125 + 50 = 175; cognition = 200; one "other" output
    subtasks = result.details["subtasks"]
    assert subtasks["existence"]["acc"] == pytest.approx(75.0)
    assert subtasks["existence"]["acc_plus"] == pytest.approx(50.0)
    assert subtasks["artwork"]["score"] == pytest.approx(50.0)
    assert result.score == pytest.approx(175.0)
    assert result.details["cognition_total"] == pytest.approx(200.0)
    assert result.num_unparsed == 1


def test_repeated_question_ids_get_uids() -> None:
    qs = get_benchmark("mme").load_questions(os.path.join(FIX, "llava_mme.jsonl"))
    assert [q.key for q in qs] == ["existence/img1.jpg#0", "existence/img1.jpg#1"]
