"""MMBench / MMBench-CN: circular evaluation with the 2023 rule-based option extraction.

The dev TSV holds every question once per circular shift of its options (``index = base + k * 1,000,000``,
``answer`` re-lettered). A base question scores 1 only if *every* rotation is answered correctly; the overall
number is the mean over base questions. Scoring rows independently inflates it.

Extraction ("can_infer", as in the 2023 OpenCompass/MMBench evaluator):
1. Split the output on whitespace. If exactly one of A-E appears as a bare token, take it; but when that
   token is "A" in an output of more than 3 tokens, give up on bare letters (it may be the article).
2. Otherwise try wrapped forms, in this order: ``X.`` ``X,`` ``X:`` ``X)`` ``X).`` ``(X)`` ``(X).`` ``:X``
   ``:X,`` ``:X.`` ``:X)`` ``:X).``; the first form that matches exactly one letter wins.
3. Otherwise, if exactly one option's text (lowercased) is a substring of the lowercased output, take it.
Rows that stay unresolved go to the optional judge hook (the original used gpt-3.5-turbo); with no judge they
count as wrong (VLMEvalKit's "exact matching" policy) and are reported as unparsed.
"""

from __future__ import annotations

import string
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from llava.eval.scorers.common import ScoreResult, percent

CIRCULAR_STRIDE = 1_000_000

# (prefix, suffix) forms tried after bare letters, in the evaluator's order.
_WRAPPED_FORMS = (
    ("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"),
    ("(", ")."), (":", ""), (":", ","), (":", "."), (":", ")"), (":", ")."),
)

# A judge receives (question text, {letter: option text}, raw output) and returns a letter or None.
Judge = Callable[[str, Mapping[str, str], str], "str | None"]


def _count_forms(tokens: list[str], letters: str, prefix: str = "", suffix: str = "") -> int:
    return sum(prefix + c + suffix in tokens for c in letters)


def can_infer_option(answer: str, num_choices: int = 5) -> str | None:
    """Steps 1-2 of the extraction: a letter written as a bare or wrapped token, else None."""
    letters = string.ascii_uppercase[:num_choices]
    tokens = [t.strip() for t in answer.split()]
    if _count_forms(tokens, letters) == 1:
        ambiguous_article = "A" in tokens and len(tokens) > 3
        if not ambiguous_article:
            for c in letters:
                if c in tokens:
                    return c
    for prefix, suffix in _WRAPPED_FORMS:
        if _count_forms(tokens, letters, prefix, suffix) == 1:
            for c in letters:
                if prefix + c + suffix in tokens:
                    return c
    return None


def can_infer_text(answer: str, options: Mapping[str, str]) -> str | None:
    """Step 3: the single option whose lowercased text occurs in the lowercased output, else None."""
    low = answer.lower()
    hits = [letter for letter, text in options.items() if str(text).lower() in low]
    return hits[0] if len(hits) == 1 else None


def can_infer(answer: str, options: Mapping[str, str]) -> str | None:
    """The full rule-based extraction; None means the output needs a judge (or counts as wrong)."""
    return can_infer_option(answer) or can_infer_text(answer, options)


def base_index(index: int) -> int:
    return index % CIRCULAR_STRIDE


def score_mmbench(
    rows: Iterable[Mapping[str, Any]],
    judge: Judge | None = None,
    bench: str = "mmbench",
) -> ScoreResult:
    """Circular accuracy over base questions.

    Each row needs ``index`` (int), ``answer`` (GT letter), ``options`` ({letter: text}), ``text`` (raw output)
    and optionally ``question`` (passed to the judge), ``category`` and ``l2_category`` (for breakdowns).
    Following the evaluator, a group stops at the first rotation whose extracted answer is wrong; unresolved
    rotations are then sent to the judge, and with no judge the group scores 0.
    """
    groups: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[base_index(int(r["index"]))].append(r)
    hits: dict[int, int] = {}
    unparsed = 0
    judged = 0
    rows_right = 0  # rule-extracted rows that match, for the non-circular diagnostic only
    for base, members in groups.items():
        members = sorted(members, key=lambda r: int(r["index"]))
        extracted = [can_infer(str(r["text"]), r["options"]) for r in members]
        unparsed += sum(e is None for e in extracted)
        rows_right += sum(e == r["answer"] for e, r in zip(extracted, members))
        if any(e is not None and e != r["answer"] for e, r in zip(extracted, members)):
            hits[base] = 0
            continue
        ok = True
        for e, r in zip(extracted, members):
            if e is not None:
                continue
            if judge is None:
                ok = False
                break
            judged += 1
            if judge(str(r.get("question", "")), r["options"], str(r["text"])) != r["answer"]:
                ok = False
                break
        hits[base] = int(ok)
    by_cat: dict[str, list[int]] = defaultdict(list)
    by_l2: dict[str, list[int]] = defaultdict(list)
    for base, members in groups.items():
        first = min(members, key=lambda r: int(r["index"]))
        if first.get("category") is not None:
            by_cat[str(first["category"])].append(hits[base])
        if first.get("l2_category") is not None:
            by_l2[str(first["l2_category"])].append(hits[base])
    n_groups = len(groups)
    n_rows = sum(len(m) for m in groups.values())
    return ScoreResult(
        bench=bench,
        metric="circular accuracy",
        score=percent(sum(hits.values()), n_groups),
        num_scored=n_rows,
        num_unparsed=unparsed,
        details={
            "num_questions": n_groups,
            "num_rows": n_rows,
            "num_judged": judged,
            # Not the MMBench metric: each row scored on its own (rule extraction only), to show how much of the
            # gap to the circular score comes from inconsistency across rotations.
            "row_accuracy": percent(rows_right, n_rows),
            "judge": judge is not None,
            "per_category": {k: percent(sum(v), len(v)) for k, v in sorted(by_cat.items())},
            "per_l2_category": {k: percent(sum(v), len(v)) for k, v in sorted(by_l2.items())},
        },
        extra_lines=[f"({n_groups} questions, {n_rows} rotations; per-rotation accuracy, not circular: {percent(rows_right, n_rows):.2f})"],
    )
