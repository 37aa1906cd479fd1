"""The demo's evaluation sets in the real benchmarks' files (GQA, POPE, SEED-Bench), drawn from held-out scans only,
so no eval image shows a scan a training image showed.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from llava.demo import digits
from llava.demo.digits import QA, Grid
from llava.demo.layout import (
    STREAMS,
    BuildConfig,
    DemoPaths,
    ImageRegistry,
    save_image,
    stream_rng,
    write_json,
    write_jsonl,
)

POPE_SPLITS: tuple[str, ...] = ("adversarial", "popular", "random")  # llava_pope_test.jsonl order
POPE_PER_IMAGE = 4  # 2 present + 2 absent digits per image and split (POPE: 3 + 3 objects)

# SEED-Bench v1 dimension ids; the demo uses 2, 4, 5 and 6, the others are kept so ids match.
SEED_QUESTION_TYPES: dict[str, int] = {
    "Scene Understanding": 1,
    "Instance Identity": 2,
    "Instance Attributes": 3,
    "Instance Location": 4,
    "Instances Counting": 5,
    "Spatial Relation": 6,
    "Instance Interaction": 7,
    "Visual Reasoning": 8,
    "Text Understanding": 9,
    "Action Recognition": 10,
    "Action Prediction": 11,
    "Procedure Understanding": 12,
}

_GQA_QID_BASE = 20_000_000
_SEED_QID_BASE = 100_000


def _distinct_short_qas(grid: Grid, rng: np.random.Generator, n: int) -> list[QA]:
    """``n`` independent short-answer questions about one image (GQA eval: one question per line).

    Questions are compared by their program, not their wording: "What digit is in the top left?"
    and "Which digit is at the top left?" count as the same question.
    """
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    out: list[QA] = []
    for _ in range(50 * n):
        qa = digits.sample_short_qa(grid, rng)
        key = (qa.category, qa.program)
        if key not in seen:
            seen.add(key)
            out.append(qa)
            if len(out) == n:
                break
    return out


# ---------------------------------------------------------------------------------------------
# Evaluation sets (held-out scans only)
# ---------------------------------------------------------------------------------------------


def _gqa_entry(qa: QA, image_id: str, qid: str) -> dict[str, Any]:
    """One value of GQA's ``testdev_balanced_questions.json``, with the fields the official file has."""
    semantic = [
        {"operation": op, "dependencies": [k - 1] if k else [], "argument": arg}
        for k, (op, arg) in enumerate(qa.program)
    ]
    answer_group = {"position_query": "digit", "choose": "digit", "count": "number"}.get(qa.category)
    return {
        "semantic": semantic,
        "entailed": [],
        "equivalent": [qid],
        "question": qa.question,
        "imageId": image_id,
        "isBalanced": True,
        "groups": {"global": answer_group, "local": f"{qa.structural}-{qa.detailed}"},
        "answer": qa.answer,
        "semanticStr": "->".join(f"{op}: {arg}" for op, arg in qa.program),
        "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
        "types": {"structural": qa.structural, "semantic": qa.semantic, "detailed": qa.detailed},
        "fullAnswer": qa.full_answer,
    }


def build_gqa(
    cfg: BuildConfig, paths: DemoPaths, pool: digits.DigitPool, registry: ImageRegistry
) -> list[dict[str, Any]]:
    rng = stream_rng(cfg.seed, "gqa")
    lines: list[dict[str, Any]] = []
    official: dict[str, dict[str, Any]] = {}
    n_images = math.ceil(cfg.num_eval / cfg.gqa_per_image)
    for j in tqdm(range(n_images), desc="gqa images", disable=not cfg.progress):
        grid = digits.sample_grid(pool, rng)
        image_id = f"d{j:07d}"
        save_image(grid, paths.gqa_images / f"{image_id}.png", paths, registry)
        for qa in _distinct_short_qas(grid, rng, min(cfg.gqa_per_image, cfg.num_eval - len(lines))):
            qid = str(_GQA_QID_BASE + len(lines))  # GQA ids are strings; the scorer looks them up as such
            lines.append(
                {
                    "question_id": qid,
                    "image": f"{image_id}.png",
                    "text": digits.with_short_answer_prompt(qa.question),
                    "category": qa.category,
                }
            )
            official[qid] = _gqa_entry(qa, image_id, qid)
    write_jsonl(paths.gqa_jsonl, lines)
    write_json(paths.gqa_questions, official)
    return lines


def _absent_ranked(grid: Grid, split: str, popularity: list[int], rng: np.random.Generator) -> list[int]:
    """Absent digits in the order a POPE split would pick its negatives."""
    absent = [d for d in range(digits.NUM_CLASSES) if d not in grid.present()]
    noise = {d: float(rng.random()) for d in absent}  # random tie-break
    if split == "random":
        return sorted(absent, key=lambda d: noise[d])
    if split == "popular":
        # Most frequent digits in the training images first (POPE: most frequent objects in the dataset).
        return sorted(absent, key=lambda d: (popularity.index(d), noise[d]))

    # adversarial: digits that look like a present one first (POPE: objects that co-occur with present ones)
    def confusion(d: int) -> float:
        return sum(
            len(digits.LOOKALIKES[p]) - digits.LOOKALIKES[p].index(d)
            for p in grid.present()
            if d in digits.LOOKALIKES[p]
        )

    return sorted(absent, key=lambda d: (-confusion(d), noise[d]))


def build_pope(
    cfg: BuildConfig,
    paths: DemoPaths,
    pool: digits.DigitPool,
    registry: ImageRegistry,
    train_label_counts: Counter[int],
) -> list[dict[str, Any]]:
    rng = stream_rng(cfg.seed, "pope")
    per_split = cfg.num_pope // len(POPE_SPLITS)
    n_images = math.ceil(per_split / POPE_PER_IMAGE)
    popularity = sorted(range(digits.NUM_CLASSES), key=lambda d: (-train_label_counts[d], d))
    grids: list[tuple[str, Grid]] = []
    for j in tqdm(range(n_images), desc="pope images", disable=not cfg.progress):
        grid = digits.sample_grid(pool, rng)
        while len(grid.present()) < POPE_PER_IMAGE // 2:  # need two distinct present digits
            grid = digits.sample_grid(pool, rng)
        name = f"DIGITS_val2014_{j:012d}.png"  # mirrors COCO_val2014_000000xxxxxx.jpg
        save_image(grid, paths.pope_images / name, paths, registry)
        grids.append((name, grid))
    lines: list[dict[str, Any]] = []
    for split in POPE_SPLITS:
        split_rng = np.random.default_rng([cfg.seed, STREAMS["pope"], POPE_SPLITS.index(split)])
        annotations: list[dict[str, Any]] = []
        for name, grid in grids:
            present = [int(x) for x in split_rng.permutation(sorted(grid.present()))[: POPE_PER_IMAGE // 2]]
            absent = _absent_ranked(grid, split, popularity, split_rng)[: POPE_PER_IMAGE // 2]
            for yes_digit, no_digit in zip(present, absent):  # alternate yes / no like POPE's files
                for digit, label in ((yes_digit, "yes"), (no_digit, "no")):
                    if len(annotations) < per_split:
                        text = digits.exist_verify(grid, split_rng, digit=digit).question
                        annotations.append(
                            {"question_id": len(annotations) + 1, "image": name, "text": text, "label": label}
                        )
        write_jsonl(paths.pope_annotation(split), annotations)  # JSON lines despite the .json name, as in POPE
        for ann in annotations:
            lines.append(
                {
                    "question_id": len(lines) + 1,  # unique over the file: eval_pope indexes questions by id
                    "image": ann["image"],
                    "text": digits.with_short_answer_prompt(ann["text"]),
                    "category": split,
                }
            )
    write_jsonl(paths.pope_jsonl, lines)
    return lines


def build_seed(
    cfg: BuildConfig, paths: DemoPaths, pool: digits.DigitPool, registry: ImageRegistry
) -> list[dict[str, Any]]:
    rng = stream_rng(cfg.seed, "seed")
    lines: list[dict[str, Any]] = []
    questions: list[dict[str, Any]] = []
    for j in tqdm(range(cfg.num_seed), desc="seed images", disable=not cfg.progress):
        grid = digits.sample_grid(pool, rng)
        data_id = f"digits_{j:06d}.png"
        save_image(grid, paths.seed / "SEED-Bench-image" / data_id, paths, registry)
        mc = digits.multiple_choice(grid, rng)
        qid = _SEED_QID_BASE + j
        questions.append(
            {
                "answer": mc.answer,
                "choice_a": mc.choices[0],
                "choice_b": mc.choices[1],
                "choice_c": mc.choices[2],
                "choice_d": mc.choices[3],
                "data_id": data_id,
                "data_type": "image",
                "question": mc.question,
                "question_id": str(qid),  # a string in SEED-Bench.json, an int in the LLaVA jsonl
                "question_type_id": SEED_QUESTION_TYPES[mc.dimension],
            }
        )
        lines.append(
            {"question_id": qid, "image": f"SEED-Bench-image/{data_id}", "text": mc.prompt(), "category": mc.dimension}
        )
    write_jsonl(paths.seed_jsonl, lines)
    write_json(paths.seed_annotation, {"question_type": SEED_QUESTION_TYPES, "questions": questions})
    return lines
