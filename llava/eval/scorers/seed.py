"""SEED-Bench image split: whole-string letter equality, micro-averaged over the image questions.

LLaVA's ``convert_seed_for_submission.py`` counts a question as correct only when the output *equals* the GT
letter; "A." or "A. One" is wrong (lmms-eval's first-character rule is more lenient and gives a different
number). The reported SEED-IMG figure is total correct / total image questions; per-dimension accuracy is a
breakdown. Video questions are never mixed in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from llava.eval.scorers.common import ScoreResult, percent

LETTERS = ("A", "B", "C", "D")


def score_seed(records: Iterable[Mapping[str, Any]]) -> ScoreResult:
    """Records have ``text`` (raw output, already stripped by the runner), ``answer`` and ``question_type``.

    An output that is not exactly one of A-D counts as unparsed (and wrong).
    """
    correct = n = unparsed = 0
    per_type: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        text = str(r["text"]).strip()
        unparsed += text not in LETTERS
        hit = int(text == r["answer"])
        correct += hit
        n += 1
        per_type[str(r.get("question_type", "unknown"))][0] += hit
        per_type[str(r.get("question_type", "unknown"))][1] += 1
    return ScoreResult(
        bench="seed",
        metric="image accuracy",
        score=percent(correct, n),
        num_scored=n,
        num_unparsed=unparsed,
        details={"per_question_type": {k: percent(c, t) for k, (c, t) in sorted(per_type.items())}},
    )
