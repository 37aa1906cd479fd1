"""MMStar: the official first-character rule; final score = correct / number of samples (1,500 in full).

Official ``eval/vlmeval/evaluate/mmstar.py``: lowercase, strip and flatten newlines in prediction and answer;
correct when the prediction's first character is the answer letter, or it starts with "(x", "option x" or
"the answer is x". Category scores are correct / count per core capability (250 each in full). lmms-eval
reports a macro average over the 18 l2 categories instead; it is kept in ``details`` for comparison, the
headline is the official micro average.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from llava.eval.scorers.common import ScoreResult, percent

_PREFIXES = ("(", "option ", "the answer is ")


def _clean(text: str) -> str:
    return str(text).lower().strip().replace("\n", " ")


def mmstar_letter(prediction: str) -> str | None:
    """The letter the official rule reads from an output (first char, or after one of its prefixes)."""
    pred = _clean(prediction)
    candidates = []
    if pred:
        candidates.append(pred[0])
    for prefix in _PREFIXES:
        if pred.startswith(prefix) and len(pred) > len(prefix):
            candidates.append(pred[len(prefix)])
    for c in candidates:
        if c in "abcd":
            return c.upper()
    return None


def mmstar_correct(prediction: str, answer: str) -> bool:
    """The official test, including its quirk that any output starting with the answer letter counts
    ("a cat" is right when the answer is A)."""
    pred, ans = _clean(prediction), _clean(answer)
    if not pred:
        return False
    if ans == pred[0]:
        return True
    return any(pred.startswith(p) and len(pred) > len(p) and ans == pred[len(p)] for p in _PREFIXES)


def score_mmstar(records: Iterable[Mapping[str, Any]]) -> ScoreResult:
    """Records have ``text``, ``answer``, ``category`` and ``l2_category``."""
    correct = n = unparsed = 0
    per_cat: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    per_l2: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        hit = int(mmstar_correct(r["text"], r["answer"]))
        unparsed += mmstar_letter(r["text"]) is None
        correct += hit
        n += 1
        for table, key in ((per_cat, r.get("category")), (per_l2, r.get("l2_category"))):
            table[str(key)][0] += hit
            table[str(key)][1] += 1
    l2_scores = {k: percent(c, t) for k, (c, t) in sorted(per_l2.items())}
    return ScoreResult(
        bench="mmstar",
        metric="accuracy",
        score=percent(correct, n),
        num_scored=n,
        num_unparsed=unparsed,
        details={
            "per_category": {k: percent(c, t) for k, (c, t) in sorted(per_cat.items())},
            "per_l2_category": l2_scores,
            "l2_macro_average": sum(l2_scores.values()) / len(l2_scores) if l2_scores else 0.0,
        },
    )
