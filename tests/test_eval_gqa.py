"""GQA: upstream conversion, exact-match scoring against the official questions format, and the baselines."""

from __future__ import annotations

import json
import os

import pytest

from llava.eval import convert, score
from llava.eval.files import EvalDataError
from llava.eval.scorers.gqa import answer_baselines, convert_prediction, score_gqa

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "eval", "gqa")
QUESTIONS = os.path.join(FIX, "data", "testdev_balanced_questions.json")


def test_convert_prediction_is_only_strip_and_lower() -> None:
    assert convert_prediction("Yes.") == "yes"
    # No VQA normalization: the article stays, so "The table." cannot match "table".
    assert convert_prediction("The table.") == "the table"
    assert convert_prediction("Two") == "two"


def test_pipeline_convert_then_score(tmp_path, capsys) -> None:
    preds = tmp_path / "testdev_balanced_predictions.json"
    convert.main(["--bench", "gqa", "--answers-file", os.path.join(FIX, "answers.jsonl"), "--output", str(preds)])
    data = json.loads(preds.read_text())
    assert data[0] == {"questionId": "201", "prediction": "yes"}  # string ids, as eval.py needs
    result_file = tmp_path / "res" / "gqa.json"
    score.main(
        [
            "--bench", "gqa",
            "--answers-file", str(preds),
            "--question-file", os.path.join(FIX, "llava_gqa_testdev_balanced.jsonl"),
            "--annotation-file", QUESTIONS,
            "--result-file", str(result_file),
            "--label", "demo",
        ]
    )
    # 201 "Yes." -> "yes" == yes        correct (binary, verify)
    # 202 "The table." -> "the table"   wrong   (open)
    # 203 "white"                       correct (open)
    # 204 ""                            wrong, unparsed (open)
    # 205 "No" -> "no"                  correct (binary, logical)
    # 206 "no" vs "yes"                 wrong   (binary, verify)
    # accuracy 3/6 = 50.00; binary 2/3 = 66.67; open 1/3 = 33.33
    out = capsys.readouterr().out
    assert "GQA accuracy: 50.00" in out
    assert "GQA unparsed outputs: 1/6" in out
    rec = json.loads(result_file.read_text())
    assert rec["score"] == pytest.approx(50.0)
    assert rec["details"]["binary"] == pytest.approx(200 / 3)
    assert rec["details"]["open"] == pytest.approx(100 / 3)
    assert rec["label"] == "demo"


def test_missing_prediction_is_an_error() -> None:
    questions = json.load(open(QUESTIONS))
    with pytest.raises(ValueError, match="missing predictions"):
        score_gqa({"201": "yes"}, questions)


def test_scoring_merged_answers_directly_converts_them() -> None:
    from llava.eval.benchmarks import ScoreInputs, get_benchmark

    bench = get_benchmark("gqa")
    answers = bench.read_answers(os.path.join(FIX, "answers.jsonl"))
    result = bench.score(answers, ScoreInputs(answers_file="a", annotation_file=QUESTIONS))
    assert result.score == pytest.approx(50.0)


def test_answer_baselines() -> None:
    questions = json.load(open(QUESTIONS))
    chance, majority = answer_baselines(questions)
    # Gold answers: yes, table, white, left, no, yes -> vocabulary {yes, table, white, left, no} = 5 answers,
    # so uniform guessing is right 1/5 of the time: 20%. The majority answer "yes" covers 2 of 6: 33.33%.
    assert chance == pytest.approx(20.0)
    assert majority == pytest.approx(100 * 2 / 6)


def test_score_rejects_incomplete_answers(tmp_path) -> None:
    partial = tmp_path / "partial.jsonl"
    partial.write_text('{"question_id": "201", "text": "yes"}\n', encoding="utf-8")
    with pytest.raises(EvalDataError, match="5 question\\(s\\) unanswered"):
        score.main(
            [
                "--bench", "gqa", "--answers-file", str(partial),
                "--question-file", os.path.join(FIX, "llava_gqa_testdev_balanced.jsonl"),
                "--annotation-file", QUESTIONS,
            ]
        )
