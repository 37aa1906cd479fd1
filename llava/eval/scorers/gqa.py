"""GQA testdev-balanced exact-match accuracy, as LLaVA computes it.

LLaVA's number comes from two steps: ``convert_gqa_for_eval.py`` turns each output into
``text.rstrip('.').lower()`` (nothing else: no article or number-word normalization), and the official
``eval.py`` (with the author's patch for the v1.2 testdev release) counts a balanced question as correct when
the prediction string equals the gold answer exactly. Missing predictions are an error, not a zero.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

from llava.eval.scorers.common import ScoreResult, percent


def convert_prediction(text: str) -> str:
    """The upstream conversion: strip trailing periods, lowercase. "Yes." -> "yes", "Two." -> "two"."""
    return text.rstrip(".").lower()


def _is_balanced(question: Mapping[str, Any]) -> bool:
    # Every question of testdev_balanced_questions.json is balanced; files without the flag are treated the same.
    return bool(question.get("isBalanced", True))


def _structural_type(question: Mapping[str, Any]) -> str | None:
    types = question.get("types") or {}
    return types.get("structural") if isinstance(types, Mapping) else None


def gqa_hits(predictions: Mapping[str, str], questions: Mapping[str, Mapping[str, Any]]) -> dict[str, bool]:
    """Per balanced question: is the (converted) prediction exactly the gold answer? What ``score_gqa`` counts,
    per question, for paired comparisons of two runs (``llava.eval.significance``)."""
    balanced = {qid: q for qid, q in questions.items() if _is_balanced(q)}
    missing = [qid for qid in balanced if qid not in predictions]
    if missing:
        raise ValueError(f"missing predictions for {len(missing)} balanced question(s), e.g. {missing[:5]}")
    return {qid: predictions[qid] == q["answer"] for qid, q in balanced.items()}


def score_gqa(predictions: Mapping[str, str], questions: Mapping[str, Mapping[str, Any]]) -> ScoreResult:
    """Accuracy over the balanced questions of an official-format questions file ({qid: {"answer": ...}}).

    ``predictions`` maps the string question id to the already-converted prediction. The breakdowns the
    official script prints (binary = structural type other than "query", open = "query", and per structural
    and semantic type) go to ``details`` when the questions carry ``types``. An empty prediction counts as
    unparsed (it is scored as wrong).
    """
    hits = gqa_hits(predictions, questions)
    balanced = {qid: questions[qid] for qid in hits}
    correct = 0
    unparsed = 0
    by_group: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for qid, q in balanced.items():
        if not predictions[qid].strip():
            unparsed += 1
        hit = int(hits[qid])
        correct += hit
        structural = _structural_type(q)
        if structural is not None:
            kind = "open" if structural == "query" else "binary"
            for key in (kind, f"structural/{structural}", f"semantic/{(q.get('types') or {}).get('semantic')}"):
                by_group[key][0] += hit
                by_group[key][1] += 1
    n = len(balanced)
    details = {k: percent(c, t) for k, (c, t) in sorted(by_group.items())}
    return ScoreResult(
        bench="gqa", metric="accuracy", score=percent(correct, n), num_scored=n, num_unparsed=unparsed, details=details
    )


def answer_baselines(questions: Mapping[str, Mapping[str, Any]]) -> tuple[float, float]:
    """Chance and majority accuracy (percent) for a questions file, to put a small model's score in context.

    - chance: the expected accuracy of answering every question with an answer drawn uniformly at random from
      the file's answer vocabulary (the set of distinct gold answers among its balanced questions). Each guess
      is right with probability 1 / |vocabulary|, so chance = 100 / |vocabulary|.
    - majority: the accuracy of always answering the single most frequent gold answer of the file.

    Both are computed over the balanced questions only, like the score itself.
    """
    answers = [q["answer"] for q in questions.values() if _is_balanced(q)]
    if not answers:
        raise ValueError("the questions file has no balanced questions")
    counts = Counter(answers)
    chance = 100.0 / len(counts)
    majority = percent(counts.most_common(1)[0][1], len(answers))
    return chance, majority
