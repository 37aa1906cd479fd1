"""ScienceQA-IMG: LLaVA's strict letter parser, accuracy on the image questions of the test split.

The parser (``eval_science_qa.py``) accepts only: (a) the whole output is one of A-E, (b) a letter A-E followed
by ". " as characters 2-3 ("B. xxx"), or (c) exactly one match of the regex "The answer is ([A-Z])." Anything
else ("A." with 2 characters, "(A)", "a", "Answer: A") is FAILED. A letter beyond the question's number of
choices is wrong. The reported number is IMG-Accuracy; which questions have an image is decided from
``problems.json`` (upstream reads it from the prompt, which drops unanswered questions from the denominator).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from llava.eval.scorers.common import ScoreResult, percent

OPTIONS = ("A", "B", "C", "D", "E")
FAILED = "FAILED"
# Written as upstream writes it: the final "." is any character and the letter may be any capital.
_THE_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def parse_sqa_letter(text: str) -> str:
    """The letter the upstream parser extracts, or ``FAILED``."""
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = _THE_ANSWER_IS.findall(text)
    if len(found) == 1:
        return found[0]
    return FAILED


def predicted_index(letter: str, num_choices: int) -> int:
    """Index of the chosen option, or -1 when the letter is FAILED or beyond the number of choices."""
    if letter in OPTIONS[:num_choices]:
        return OPTIONS.index(letter)
    return -1


def score_sqa(
    predictions: Mapping[str, str], problems: Mapping[str, Mapping[str, Any]], pids: Sequence[str]
) -> ScoreResult:
    """IMG-Accuracy over ``pids`` (the test split) that have an image; overall accuracy goes to ``details``.

    A pid without a prediction is scored as the text "FAILED" (wrong), as upstream does.
    """
    correct_all = correct_img = n_img = unparsed = 0
    for pid in pids:
        if pid not in problems:
            raise ValueError(f"ScienceQA pid {pid!r} is not in problems.json")
        prob = problems[pid]
        letter = parse_sqa_letter(predictions.get(pid, FAILED))
        if letter == FAILED:
            unparsed += 1
        hit = predicted_index(letter, len(prob["choices"])) == int(prob["answer"])
        correct_all += hit
        if prob.get("image"):
            n_img += 1
            correct_img += hit
    return ScoreResult(
        bench="sqa",
        metric="IMG accuracy",
        score=percent(correct_img, n_img),
        num_scored=len(pids),
        num_unparsed=unparsed,
        details={"overall_accuracy": percent(correct_all, len(pids)), "num_image_questions": n_img},
    )
