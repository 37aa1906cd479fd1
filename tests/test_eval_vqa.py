"""The three VQA normalizers and the leave-one-out accuracy, on hand-made data in the official file formats."""

from __future__ import annotations

import json
import os

import pytest

from llava.eval import convert, score
from llava.eval.benchmarks import ScoreInputs, get_benchmark
from llava.eval.scorers.vqa import (
    evalai_normalize,
    leave_one_out_accuracy,
    official_normalize,
    process_punctuation,
    textvqa_accuracy,
    vizwiz_accuracy,
    vizwiz_normalize,
    vqav2_accuracy,
)

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "eval")


# ------------------------------------------------------------------------------------------- normalizers
@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two dogs.", "2 dogs"),  # number word -> digit, trailing period dropped
        ("none", "0"),  # the official map sends "none" to "0"
        ("3.5", "3.5"),  # a period before a digit survives
        ("yes.", "yes"),
        ("The red one", "red 1"),  # article dropped, "one" -> "1"
        ("dont", "don't"),  # contraction table (straight apostrophe)
        ("x-ray", "x ray"),  # '-' not touching a space becomes a space
        ("left - right", "left  right"),  # '-' touching a space is deleted (the double space stays until split)
        ("1,000", "1000"),  # digit-comma-digit: punctuation deleted, not spaced
        ("man's", "man's"),  # the official rules keep "'s"
    ],
)
def test_official_normalize(raw: str, expected: str) -> None:
    # official_normalize also re-joins words with single spaces, so compare after the punctuation step
    # for the one case where the intermediate double space matters.
    if raw == "left - right":
        assert process_punctuation(raw) == expected
        assert official_normalize(raw) == "left right"
    else:
        assert official_normalize(raw) == expected


def test_evalai_normalize_differs_from_official() -> None:
    # m4c lowercases, drops ',' and '?', and splits "'s" before the shared steps.
    assert evalai_normalize("Man's") == "man 's"
    assert official_normalize("Man's") == "man's"
    assert evalai_normalize("Two dogs.") == "2 dogs"
    assert evalai_normalize("Unanswerable") == "unanswerable"


def test_vizwiz_normalize_uses_curly_contractions() -> None:
    # The VizWiz evaluator's table writes the apostrophe as U+2019.
    assert vizwiz_normalize("dont") == "don\u2019t"
    assert official_normalize("dont") == "don't"


# ------------------------------------------------------------------------------------------- leave-one-out
@pytest.mark.parametrize("m, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_leave_one_out_table(m: int, expected: float) -> None:
    # m matching answers of 10: the m subsets that drop a match see m-1, the 10-m others see m.
    # m=1: (1*0 + 9*(1/3))/10 = 0.3; m=2: (2*(1/3) + 8*(2/3))/10 = 0.6;
    # m=3: (3*(2/3) + 7*1)/10 = 0.9; m=4: (4*1 + 6*1)/10 = 1.0.
    gts = ["a"] * m + ["b"] * (10 - m)
    assert leave_one_out_accuracy("a", gts) == pytest.approx(expected)


def test_vqav2_normalizes_only_when_gt_disagrees() -> None:
    # All ten GT answers agree: nothing is normalized, so raw "Two" misses "2" entirely.
    assert vqav2_accuracy("Two", ["2"] * 10) == 0.0
    assert vqav2_accuracy("None", ["0"] * 10) == 0.0
    # GT answers disagree: both sides normalized, "Two" -> "2" matches 6 of 10.
    assert vqav2_accuracy("Two", ["2"] * 6 + ["3"] * 4) == pytest.approx(1.0)


def test_textvqa_needs_ten_answers() -> None:
    with pytest.raises(ValueError, match="exactly 10"):
        textvqa_accuracy("a", ["a"] * 9)


def test_vizwiz_keeps_gt_as_stored() -> None:
    # Prediction "Two." -> "2"; GT "2" x3 and "two" x7 are not normalized, so only 3 match: 0.9.
    assert vizwiz_accuracy("Two.", ["2"] * 3 + ["two"] * 7) == pytest.approx(0.9)
    # The curly table turns "dont" into "don’t", which never equals a stored "don't".
    assert vizwiz_accuracy("dont", ["don't"] * 10) == 0.0


# ------------------------------------------------------------------------------------------- VQAv2 val proxy
def test_vqav2_val_fixture() -> None:
    bench = get_benchmark("vqav2")
    answers = bench.read_answers(os.path.join(FIX, "vqav2", "answers.jsonl"))
    result = bench.score(
        answers,
        ScoreInputs(
            answers_file="answers.jsonl",
            annotation_file=os.path.join(FIX, "vqav2", "v2_mscoco_val2014_annotations.json"),
        ),
    )
    # Predictions are EvalAI-normalized first (as LLaVA does before uploading), then scored officially:
    # 420 "Two dogs." -> "2 dogs"; GT 4x "2 dogs" + 6x "2" disagree -> normalized; m=4 -> 1.0
    # 421 "None" -> "0"; GT 10x "0" agree -> compared raw; m=10 -> 1.0
    # 730 "Yes" -> "yes"; GT 2x yes, 8x no; m=2 -> 0.6
    # 731 "red"; GT 1x red, 9x blue; m=1 -> 0.3
    # 990 "" (unparsed); GT 10x blue -> 0.0
    # mean = (1 + 1 + 0.6 + 0.3 + 0) / 5 = 0.58
    assert result.score == pytest.approx(58.0)
    assert result.num_unparsed == 1
    assert result.details["per_answer_type"] == pytest.approx({"number": 100.0, "other": 15.0, "yes/no": 60.0})


def test_vqav2_official_question_file() -> None:
    qs = get_benchmark("vqav2").load_questions(os.path.join(FIX, "vqav2", "v2_OpenEnded_mscoco_val2014_questions.json"))
    assert [q.qid for q in qs] == [420, 421, 730, 731, 990]
    assert qs[0].image == "COCO_val2014_000000000042.jpg"
    assert qs[0].text == "How many dogs are there?\nAnswer the question using a single word or phrase."


def test_vqav2_submission_covers_all_test2015(tmp_path) -> None:
    out = tmp_path / "upload.json"
    convert.main(
        [
            "--bench", "vqav2",
            "--answers-file", os.path.join(FIX, "vqav2", "testdev_answers.jsonl"),
            "--question-file", os.path.join(FIX, "vqav2", "llava_vqav2_mscoco_test2015.jsonl"),
            "--output", str(out),
        ]
    )
    # Every test2015 id in file order, int ids, EvalAI-normalized answers, "" for the unanswered test-std one.
    assert json.loads(out.read_text()) == [
        {"question_id": 1001, "answer": "dog"},
        {"question_id": 1002, "answer": ""},
        {"question_id": 1003, "answer": "yes"},
    ]


# ------------------------------------------------------------------------------------------- VizWiz
def test_vizwiz_val_fixture() -> None:
    bench = get_benchmark("vizwiz")
    answers = bench.read_answers(os.path.join(FIX, "vizwiz", "answers.jsonl"))
    result = bench.score(answers, ScoreInputs(answers_file="a", annotation_file=os.path.join(FIX, "vizwiz", "val.json")))
    # 1 "Unanswerable" -> "unanswerable" (EvalAI pre-normalization lowercases); 10 matches -> 1.0
    # 2 "Two." -> "2"; GT stored "2" x3 (the 7 "two" are not normalized) -> 0.9
    # 3 "dont" -> EvalAI gives "don't" (straight), which the VizWiz step leaves alone; 10 matches -> 1.0
    # 4 "cat" vs 10x "dog" -> 0.0
    # mean = (1 + 0.9 + 1 + 0) / 4 = 0.725
    assert result.score == pytest.approx(72.5)
    assert result.num_unparsed == 0
    assert result.details["per_answer_type"]["number"] == pytest.approx(90.0)


def test_vizwiz_questions_from_official_val_json() -> None:
    qs = get_benchmark("vizwiz").load_questions(os.path.join(FIX, "vizwiz", "val.json"))
    assert qs[0].qid == "VizWiz_val_00000001.jpg"
    assert qs[0].text == (
        "What is this?\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n"
        "Answer the question using a single word or phrase."
    )


def test_vizwiz_submission(tmp_path) -> None:
    answers = tmp_path / "merge.jsonl"
    answers.write_text(
        '{"question_id": 0, "text": "Unanswerable"}\n{"question_id": 1, "text": "Two."}\n', encoding="utf-8"
    )
    out = tmp_path / "upload.json"
    args = ["--bench", "vizwiz", "--answers-file", str(answers), "--output", str(out)]
    convert.main([*args, "--question-file", os.path.join(FIX, "vizwiz", "llava_test.jsonl")])
    assert json.loads(out.read_text()) == [
        {"image": "VizWiz_test_00000000.jpg", "answer": "unanswerable"},
        {"image": "VizWiz_test_00000001.jpg", "answer": "2"},
    ]
    # A missing test answer is an error: the server needs all of them.
    answers.write_text('{"question_id": 0, "text": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="no answer"):
        convert.main([*args, "--question-file", os.path.join(FIX, "vizwiz", "llava_test.jsonl")])


# ------------------------------------------------------------------------------------------- TextVQA
def test_textvqa_fixture(capsys) -> None:
    score.main(
        [
            "--bench", "textvqa",
            "--answers-file", os.path.join(FIX, "textvqa", "answers.jsonl"),
            "--question-file", os.path.join(FIX, "textvqa", "llava_textvqa_val_v051_ocr.jsonl"),
            "--annotation-file", os.path.join(FIX, "textvqa", "TextVQA_0.5.1_val.json"),
        ]
    )
    # img1 q1 "Dakota." -> "dakota", 10 matches -> 1.0
    # img1 q2 "STOP" -> "stop", GT 2x stop + 8x "stop sign" -> 0.6 (same image id: joined on the question)
    # img2    "Man's" -> "man 's", GT "man's" x3 -> "man 's" x3 -> 0.9
    # mean = 2.5 / 3 = 83.33
    out = capsys.readouterr().out
    assert "TextVQA accuracy: 83.33" in out
    assert "TextVQA unparsed outputs: 0/3" in out


def test_textvqa_repeated_question_ids_get_uids() -> None:
    qs = get_benchmark("textvqa").load_questions(os.path.join(FIX, "textvqa", "llava_textvqa_val_v051_ocr.jsonl"))
    assert [q.key for q in qs] == ["img1#0", "img1#1", "img2#0"]
    assert [q.qid for q in qs] == ["img1", "img1", "img2"]
