"""POPE: per-split F1, accuracy, precision, recall and yes-ratio; the reported number is the mean F1.

Parser (``eval_pope.py`` / POPE's ``evaluate.py``): keep the text before the first ".", delete commas, split on
single spaces; if any token is exactly "No", "no" or "not" the answer is "no", otherwise "yes". So empty or
off-topic outputs count as "yes"; they are reported as unparsed. "yes" is the positive class. The LLaVA-1.5
number is the mean of the per-split F1 scores (not pooled F1, not accuracy).

Labels are joined on (split, image, question), never by line position: mixing POPE releases (2,910 vs 3,000
lines in the random split) silently misaligns a positional join.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from llava.eval.scorers.common import ScoreResult

_NO_TOKENS = frozenset({"No", "no", "not"})


def parse_pope(text: str) -> tuple[str, bool]:
    """Returns ("yes" | "no", explicit) where ``explicit`` is False when the output had neither a yes nor a no
    token in its first sentence and was defaulted to "yes" by the official rule."""
    first = text.split(".")[0] if "." in text else text
    words = first.replace(",", "").split(" ")
    if any(w in _NO_TOKENS for w in words):
        return "no", True
    return "yes", any(w.lower() == "yes" for w in words)


def binary_metrics(preds: Iterable[str], labels: Iterable[str]) -> dict[str, float]:
    """Confusion counts and the five POPE metrics for yes/no lists ("yes" is positive). Ratios are fractions."""
    tp = fp = tn = fn = 0
    n_yes = n = 0
    for pred, label in zip(preds, labels, strict=True):
        n += 1
        n_yes += pred == "yes"
        if pred == "yes" and label == "yes":
            tp += 1
        elif pred == "yes":
            fp += 1
        elif label == "no":
            tn += 1
        else:
            fn += 1
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "TP": tp, "FP": fp, "TN": tn, "FN": fn,
        "accuracy": (tp + tn) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": n_yes / n if n else 0.0,
    }


def score_pope(records: Iterable[Mapping[str, Any]]) -> ScoreResult:
    """Scores records with keys ``split``, ``text`` (raw model output) and ``label`` ("yes"/"no").

    The headline is 100 x the mean of the per-split F1 scores over the splits present.
    """
    preds: dict[str, list[str]] = defaultdict(list)
    labels: dict[str, list[str]] = defaultdict(list)
    unparsed = 0
    n = 0
    for r in records:
        label = str(r["label"]).strip().lower()
        if label not in ("yes", "no"):
            raise ValueError(f"POPE label must be yes or no, got {r['label']!r}")
        pred, explicit = parse_pope(r["text"])
        unparsed += not explicit
        preds[r["split"]].append(pred)
        labels[r["split"]].append(label)
        n += 1
    per_split = {split: binary_metrics(preds[split], labels[split]) for split in sorted(preds)}
    mean_f1 = sum(m["f1"] for m in per_split.values()) / len(per_split) if per_split else 0.0
    extra = [
        f"POPE {split}: F1 {100 * m['f1']:.2f}  acc {100 * m['accuracy']:.2f}  precision {100 * m['precision']:.2f}"
        f"  recall {100 * m['recall']:.2f}  yes-ratio {100 * m['yes_ratio']:.2f}"
        for split, m in per_split.items()
    ]
    return ScoreResult(
        bench="pope",
        metric="mean F1",
        score=100.0 * mean_f1,
        num_scored=n,
        num_unparsed=unparsed,
        details={"per_split": per_split},
        extra_lines=extra,
    )
