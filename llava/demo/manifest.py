"""The demo's ``manifest.json``: counts, the train/eval split check, and the blind baselines (chance, majority answer)
a trained model has to beat on each eval set.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

import numpy as np

from llava.demo import digits
from llava.demo.eval_sets import POPE_SPLITS, SEED_QUESTION_TYPES
from llava.demo.layout import BuildConfig, DemoPaths, read_jsonl, write_json


def _distribution(values: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(values).items(), key=lambda kv: (-kv[1], kv[0])))


def _image_overlap(paths: DemoPaths) -> int:
    registry = json.loads(paths.image_registry.read_text())
    used = {split: {s for entry in registry[split].values() for s in entry["sources"]} for split in ("train", "eval")}
    return len(used["train"] & used["eval"])


def gqa_baselines(official: dict[str, dict[str, Any]], categories: dict[str, str]) -> dict[str, Any]:
    """Answer distribution plus three blind baselines for the GQA-style split.

    chance: expected accuracy of a uniform guess over each category's answer set; majority: always
    the most common answer; category_majority: the most common answer of the question's category;
    blind_best: per category the better of those two (a "choose" question names its two candidate
    answers, so a blind model gets 50% there). blind_best is the bar an image-reading model must clear.
    """
    answers = {qid: entry["answer"] for qid, entry in official.items()}
    n = len(answers)
    dist = _distribution(answers.values())
    by_cat: dict[str, Any] = {}
    for cat in sorted(set(categories.values())):
        cat_answers = [answers[q] for q, c in categories.items() if c == cat]
        cat_dist = _distribution(cat_answers)
        top = next(iter(cat_dist))
        by_cat[cat] = {
            "n": len(cat_answers),
            "answers": cat_dist,
            "majority_answer": top,
            "majority_accuracy": cat_dist[top] / len(cat_answers),
            "chance": 1.0 / digits.CATEGORY_ANSWER_SPACE[cat],
        }
        by_cat[cat]["blind_best"] = max(by_cat[cat]["chance"], by_cat[cat]["majority_accuracy"])
    top = next(iter(dist)) if dist else None
    return {
        "n": n,
        "answers": dist,
        "by_category": by_cat,
        "chance": sum(v["chance"] * v["n"] for v in by_cat.values()) / max(n, 1),
        "majority": {"answer": top, "accuracy": dist[top] / n if top else 0.0},
        "category_majority": sum(v["majority_accuracy"] * v["n"] for v in by_cat.values()) / max(n, 1),
        "blind_best": sum(v["blind_best"] * v["n"] for v in by_cat.values()) / max(n, 1),
    }


def pope_baselines(paths: DemoPaths) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split in POPE_SPLITS:
        labels = [row["label"] for row in read_jsonl(paths.pope_annotation(split))]
        yes = labels.count("yes")
        precision = yes / len(labels) if labels else 0.0
        out[split] = {
            "n": len(labels),
            "answers": _distribution(labels),
            # "always yes": recall 1, precision = share of yes; POPE reports F1, so this is its floor.
            "always_yes_f1": 2 * precision / (1 + precision) if precision else 0.0,
            "always_yes_accuracy": precision,
        }
    return out


def seed_baselines(paths: DemoPaths) -> dict[str, Any]:
    questions = json.loads(paths.seed_annotation.read_text())["questions"]
    letters = _distribution(q["answer"] for q in questions)
    names = {v: k for k, v in SEED_QUESTION_TYPES.items()}
    top = next(iter(letters)) if letters else None
    return {
        "n": len(questions),
        "answers": letters,
        "by_dimension": _distribution(names[q["question_type_id"]] for q in questions),
        "chance": 0.25,
        "majority": {"answer": top, "accuracy": letters[top] / len(questions) if top else 0.0},
    }


def write_manifest(cfg: BuildConfig, paths: DemoPaths, pools: dict[str, digits.DigitPool], tower: dict[str, Any],
                   data: dict[str, Any], llm: dict[str, Any]) -> dict[str, Any]:
    """``manifest.json``: the settings, the layout, the counts and the baselines a trained model has to beat."""
    p = paths
    pretrain = json.loads(p.pretrain_json.read_text())
    finetune = json.loads(p.finetune_json.read_text())
    official = json.loads(p.gqa_questions.read_text())
    gqa_lines = read_jsonl(p.gqa_jsonl)
    pope_lines = read_jsonl(p.pope_jsonl)
    rel = {
        name: str(getattr(p, name).relative_to(p.root))
        for name in (
            "clip",
            "llama",
            "pretrain_json",
            "pretrain_images",
            "finetune_json",
            "gqa_jsonl",
            "gqa_questions",
            "gqa_images",
            "pope_jsonl",
            "pope_images",
            "seed_jsonl",
            "seed_annotation",
        )
    }
    rel["image_folder_finetune"] = str(p.data.relative_to(p.root))
    rel["pope_annotation_dir"] = str(p.pope_annotation("random").parent.relative_to(p.root))
    rel["seed_image_folder"] = str(p.seed.relative_to(p.root))
    manifest = {
        "format_version": 1,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("out", "progress")},
        "layout": rel,
        "digit_split": {
            "source": "sklearn.datasets.load_digits (1,797 scans, 8x8, 0..16)",
            "train_scans": len(pools["train"]),
            "eval_scans": len(pools["eval"]),
            "overlap": int(np.intersect1d(pools["train"].sources, pools["eval"].sources).size),
            # the check that matters: scans drawn in both a training image and an eval image
            "image_overlap": _image_overlap(p),
        },
        "counts": {
            "pretrain": len(pretrain),
            "finetune": {
                "conversations": len(finetune),
                "text_only": sum(1 for r in finetune if "image" not in r),
                "turns": sum(len(r["conversations"]) // 2 for r in finetune),
                "multi_turn": sum(1 for r in finetune if len(r["conversations"]) > 2),
            },
            "gqa_questions": len(gqa_lines),
            "gqa_images": len({line["image"] for line in gqa_lines}),
            "pope_questions": len(pope_lines),
            "pope_images": len({line["image"] for line in pope_lines}),
            "seed_questions": len(read_jsonl(p.seed_jsonl)),
        },
        "vision_tower": tower.get("report", {}),
        "llm": {k: v for k, v in llm.items() if k != "key"},
        "eval": {
            "gqa": gqa_baselines(official, {line["question_id"]: line["category"] for line in gqa_lines}),
            "pope": pope_baselines(p),
            "seed": seed_baselines(p),
        },
        "timings_s": {
            "data": data.get("timings_s", {}),
            "clip": tower.get("report", {}).get("seconds"),
            "llm": llm.get("timings_s", {}),
        },
    }
    write_json(p.manifest, manifest, indent=2)
    return manifest
