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
    """Records have ``text`` (raw output, already stripped by the runner; ``None`` when the question has no
    answer), ``answer`` and ``question_type``; one record per image question of SEED-Bench.json.

    An output that is not exactly one of A-D counts as unparsed (and wrong). A question without an answer
    counts as wrong and stays in the denominator, as in the official script; it is counted in
    ``details["num_missing"]`` (not as unparsed: there is no output) and named in a summary line.
    """
    correct = n = unparsed = missing = 0
    per_type: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        n += 1
        qtype = str(r.get("question_type", "unknown"))
        per_type[qtype][1] += 1
        if r["text"] is None:
            missing += 1
            continue
        text = str(r["text"]).strip()
        unparsed += text not in LETTERS
        hit = int(text == r["answer"])
        correct += hit
        per_type[qtype][0] += hit
    extra = []
    if missing:
        extra.append(
            f"SEED-IMG: {missing} of {n} image questions have no answer; counted as wrong (as the official script does)"
        )
    return ScoreResult(
        bench="seed",
        metric="image accuracy",
        score=percent(correct, n),
        num_scored=n,
        num_unparsed=unparsed,
        details={
            "num_missing": missing,
            "per_question_type": {k: percent(c, t) for k, (c, t) in sorted(per_type.items())},
        },
        extra_lines=extra,
    )
