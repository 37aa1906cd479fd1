"""ScienceQA-IMG: the strict letter parser and IMG-Accuracy on a hand-made test split."""

from __future__ import annotations

import os

import pytest

from llava.eval import score
from llava.eval.benchmarks import get_benchmark
from llava.eval.scorers.sqa import FAILED, parse_sqa_letter, predicted_index

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "eval", "sqa")


@pytest.mark.parametrize(
    "text, letter",
    [
        ("B", "B"),
        ("C. blue", "C"),  # letter + ". " as characters 2-3
        ("The answer is A.", "A"),
        ("A.", FAILED),  # two characters: rule (b) needs length >= 3
        ("(A)", FAILED),
        ("a", FAILED),  # lowercase is not accepted
        ("Answer: A", FAILED),
        ("The answer is A. The answer is B.", FAILED),  # the regex must match exactly once
    ],
)
def test_parser(text: str, letter: str) -> None:
    assert parse_sqa_letter(text) == letter


def test_letter_beyond_choices_is_wrong() -> None:
    assert predicted_index("C", 2) == -1
    assert predicted_index("B", 2) == 1


def test_prompt_has_no_image_token_and_one_suffix() -> None:
    qs = get_benchmark("sqa").load_questions(os.path.join(FIX, "llava_test_CQM-A.json"))
    p1 = next(q for q in qs if q.qid == "p1")
    assert p1.image == "p1/image.png"
    assert p1.text == (
        "Context: N/A\nWhich is a mammal?\nA. frog\nB. whale\nC. shark\n"
        "Answer with the option's letter from the given choices directly."
    )
    p5 = next(q for q in qs if q.qid == "p5")
    assert not p5.has_image  # text-only questions run without an image


def test_img_accuracy(capsys, tmp_path) -> None:
    result_file = tmp_path / "sqa.json"
    score.main(
        [
            "--bench", "sqa",
            "--answers-file", os.path.join(FIX, "answers.jsonl"),
            "--question-file", os.path.join(FIX, "llava_test_CQM-A.json"),
            "--annotation-dir", FIX,
            "--result-file", str(result_file),
        ]
    )
    # p1 "B"                -> B = answer 1          correct  (image)
    # p2 "A."               -> FAILED                wrong    (image, unparsed)
    # p3 "C. blue"          -> C = answer 2          correct  (image)
    # p4 "C"                -> beyond 2 choices, -1  wrong    (image)
    # p5 "A"                -> A = answer 0          correct  (text only: not in IMG)
    # p6 "The answer is A." -> A = answer 0          correct  (image)
    # IMG: 3 of 5 = 60.00; overall 4 of 6 = 66.67; unparsed 1
    out = capsys.readouterr().out
    assert "SQA-IMG IMG accuracy: 60.00" in out
    assert "SQA-IMG unparsed outputs: 1/6" in out
    import json

    rec = json.loads(result_file.read_text())
    assert rec["details"]["overall_accuracy"] == pytest.approx(400 / 6)
    assert rec["details"]["num_image_questions"] == 5
