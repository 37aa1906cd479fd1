"""MME: acc and acc+ per subtask; perception and cognition totals (the paper reports the perception total).

Official ``calculation.py``, per subtask: lowercase GT and prediction; the prediction is "yes"/"no" if it is
exactly that, otherwise its first 4 characters decide ("yes" in them -> yes, else "no" in them -> no, else
"other", which is always wrong). acc = fraction of questions right; acc+ = fraction of images with *both*
questions right; subtask score = 100 * acc + 100 * acc+ (max 200). Totals are sums, not averages:
perception over 10 subtasks (max 2000), cognition over 4 (max 800).

The official script pairs questions by file position; here they are grouped by image, which gives the same
number on a correctly ordered file and the right number on a reordered one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from llava.eval.scorers.common import ScoreResult

PERCEPTION = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
)
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def parse_mme(text: str) -> str:
    """"yes", "no" or "other", by the official 4-character prefix rule ("not ..." and "none" read as no)."""
    pred = text.lower()
    if pred in ("yes", "no"):
        return pred
    prefix = pred[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def score_subtask(items: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """acc, acc+ (percent) and their sum for one subtask; items have ``image``, ``text`` and ``gt`` keys."""
    by_image: dict[str, list[bool]] = defaultdict(list)
    n = correct = other = 0
    for it in items:
        pred = parse_mme(it["text"])
        other += pred == "other"
        hit = pred == str(it["gt"]).strip().lower()
        by_image[it["image"]].append(hit)
        n += 1
        correct += hit
    acc = 100.0 * correct / n if n else 0.0
    acc_plus = 100.0 * sum(all(v) for v in by_image.values()) / len(by_image) if by_image else 0.0
    return {
        "acc": acc,
        "acc_plus": acc_plus,
        "score": acc + acc_plus,
        "num_questions": n,
        "num_images": len(by_image),
        "num_other": other,
        "images_without_a_pair": sum(len(v) != 2 for v in by_image.values()),
    }


def score_mme(records: Iterable[Mapping[str, Any]]) -> ScoreResult:
    """Scores records with keys ``subtask``, ``image``, ``text`` (raw output) and ``gt`` ("Yes"/"No").

    The headline is the perception total; the cognition total and every subtask's acc/acc+ go to ``details``.
    """
    by_task: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        by_task[r["subtask"]].append(r)
    unknown = sorted(set(by_task) - set(PERCEPTION) - set(COGNITION))
    if unknown:
        raise ValueError(f"unknown MME subtask(s) {unknown}; expected {list(PERCEPTION) + list(COGNITION)}")
    subtasks = {task: score_subtask(items) for task, items in by_task.items()}
    perception = sum(subtasks[t]["score"] for t in PERCEPTION if t in subtasks)
    cognition = sum(subtasks[t]["score"] for t in COGNITION if t in subtasks)
    n = sum(s["num_questions"] for s in subtasks.values())
    unparsed = sum(s["num_other"] for s in subtasks.values())
    extra = [f"MME cognition total: {cognition:.2f}"]
    for t in (*PERCEPTION, *COGNITION):
        if t in subtasks:
            s = subtasks[t]
            extra.append(f"MME {t}: {s['score']:.2f} (acc {s['acc']:.2f}, acc+ {s['acc_plus']:.2f})")
    return ScoreResult(
        bench="mme",
        metric="perception total",
        score=perception,
        num_scored=n,
        num_unparsed=unparsed,
        details={
            "perception_total": perception,
            "cognition_total": cognition,
            "perception_subtasks_present": [t for t in PERCEPTION if t in subtasks],
            "subtasks": subtasks,
        },
        extra_lines=extra,
    )
