"""Demo-scale benchmark files in the real benchmarks' formats, built from held-out handwritten-digit grids.

    python -m llava.demo.benchmark_files --out playground/demo/eval [--seed 0] [--gqa 60 --pope 20 --seed-bench 30 --mmbench 20]

It writes the upstream layout under ``--out`` (use it as ``DATA_ROOT`` for scripts/eval/*.sh), so the whole
pipeline (runner, merge, conversion, scorer, report) runs unchanged on the CPU demo checkpoint:

- ``gqa/``: LLaVA question JSONL, images, and an official-format ``testdev_balanced_questions.json``.
- ``pope/``: LLaVA question JSONL with the three splits and ``coco/coco_pope_<split>.json`` label files. Each
  image gets one present digit ("yes") and one absent digit ("no") per split; the absent digit is uniform
  (random), the most frequent digit of the set that is absent (popular), or a look-alike of a present digit
  (adversarial), mirroring how POPE samples absent objects.
- ``seed_bench/``: four-option multiple choice in SEED's files (``llava-seed-bench.jsonl``, ``SEED-Bench.json``).
- ``mmbench/``: the same kind of questions as an MMBench dev TSV with all four circular rotations.

Only scans from the digit pool's ``eval`` split are drawn, so no demo image reuses a training scan. (This module
belongs to the demo: evaluation, ``llava.eval``, never imports ``llava.demo``.)
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import logging
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from llava.demo import digits
from llava.eval.benchmarks.base import SHORT_ANSWER
from llava.eval.files import write_json, write_jsonl

logger = logging.getLogger("llava.demo.benchmark_files")

POPE_SPLITS = ("adversarial", "popular", "random")


def _grids(n: int, rng: np.random.Generator) -> list[Any]:
    pool = digits.split_digit_sources()["eval"]
    return [digits.sample_grid(pool, rng) for _ in range(n)]


def _save(grid: Any, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    digits.render_grid(grid).save(path)


def build_gqa(root: str, n: int, rng: np.random.Generator) -> int:
    """One short-answer question per image, in the GQA eval mix of question types."""
    lines, questions = [], {}
    for i, grid in enumerate(_grids(n, rng)):
        image_id = f"d{i:04d}"
        _save(grid, os.path.join(root, "gqa", "data", "images", f"{image_id}.png"))
        qa = digits.sample_short_qa(grid, rng)
        qid = f"{i:05d}"
        lines.append({"question_id": qid, "image": f"{image_id}.png", "text": f"{qa.question}\n{SHORT_ANSWER}"})
        questions[qid] = {
            "imageId": image_id,
            "question": qa.question,
            "answer": qa.answer,
            "fullAnswer": qa.full_answer,
            "isBalanced": True,
            "types": {"structural": qa.structural, "semantic": qa.semantic, "detailed": qa.detailed},
            "semantic": [{"operation": op, "argument": arg} for op, arg in qa.program],
        }
    write_jsonl(os.path.join(root, "gqa", "llava_gqa_testdev_balanced.jsonl"), lines)
    write_json(os.path.join(root, "gqa", "data", "testdev_balanced_questions.json"), questions)
    return len(lines)


def _absent_digit(split: str, grid: Any, frequency: Counter, rng: np.random.Generator) -> int:
    absent = [d for d in range(digits.NUM_CLASSES) if d not in grid.present()]
    if split == "popular":
        return max(absent, key=lambda d: (frequency[d], -d))
    if split == "adversarial":
        lookalikes = [d for p in sorted(grid.present()) for d in digits.LOOKALIKES[p] if d in absent]
        if lookalikes:
            return int(rng.choice(lookalikes))
    return int(rng.choice(absent))


def build_pope(root: str, n: int, rng: np.random.Generator) -> int:
    """Per image and split: a present digit (yes) and an absent one (no), POPE's phrasing."""
    grids = _grids(n, rng)
    frequency = Counter(d for g in grids for d in g.labels)
    lines: list[dict[str, Any]] = []
    labels: dict[str, list[dict[str, Any]]] = {s: [] for s in POPE_SPLITS}
    for i, grid in enumerate(grids):
        image = f"COCO_val2014_{i:012d}.png"
        _save(grid, os.path.join(root, "pope", "val2014", image))
        for split in POPE_SPLITS:
            present = int(rng.choice(sorted(grid.present())))
            absent = _absent_digit(split, grid, frequency, rng)
            pair = [(present, "yes"), (absent, "no")]
            for digit, label in (pair if rng.random() < 0.5 else pair[::-1]):
                text = f"Is there a {digit} in the image?"
                labels[split].append({"question_id": len(labels[split]) + 1, "image": image, "text": text, "label": label})
                lines.append({"question_id": len(lines) + 1, "image": image, "text": f"{text}\n{SHORT_ANSWER}", "category": split})
    write_jsonl(os.path.join(root, "pope", "llava_pope_test.jsonl"), lines)
    for split, recs in labels.items():
        write_jsonl(os.path.join(root, "pope", "coco", f"coco_pope_{split}.json"), recs)
    return len(lines)


def build_seed(root: str, n: int, rng: np.random.Generator) -> int:
    """SEED-style four-option questions (dimensions: identity, counting, location, spatial relation)."""
    type_ids: dict[str, int] = {}
    lines, questions = [], []
    for i, grid in enumerate(_grids(n, rng)):
        name = f"demo_{i:05d}.png"
        _save(grid, os.path.join(root, "seed_bench", "SEED-Bench-image", name))
        mc = digits.multiple_choice(grid, rng)
        type_id = type_ids.setdefault(mc.dimension, len(type_ids) + 1)
        qid = str(100000 + i)
        questions.append(
            {
                "question_id": qid, "data_id": name, "data_type": "image", "question": mc.question,
                **{f"choice_{c.lower()}": text for c, text in zip("ABCD", mc.choices)},
                "answer": mc.answer, "question_type_id": type_id,
            }
        )
        lines.append({"question_id": int(qid), "image": f"SEED-Bench-image/{name}", "text": mc.prompt(), "category": mc.dimension})
    write_jsonl(os.path.join(root, "seed_bench", "llava-seed-bench.jsonl"), lines)
    write_json(os.path.join(root, "seed_bench", "SEED-Bench.json"), {"question_type": type_ids, "questions": questions})
    return len(lines)


def build_mmbench(root: str, n: int, rng: np.random.Generator) -> int:
    """An MMBench-format dev TSV: each question in all four circular rotations of its options."""
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "source", "l2-category", "comment", "split", "image"]
    rows = []
    for i, grid in enumerate(_grids(n, rng)):
        buf = io.BytesIO()
        digits.render_grid(grid).save(buf, format="PNG")
        image = base64.b64encode(buf.getvalue()).decode("ascii")
        mc = digits.multiple_choice(grid, rng)
        correct = mc.choices["ABCD".index(mc.answer)]
        for k in range(4):
            options = list(mc.choices[k:]) + list(mc.choices[:k])
            answer = "ABCD"[options.index(correct)]
            rows.append([i + k * 1_000_000, mc.question, "nan", *options, answer, mc.dimension, "digits-demo", "perception", "", "dev", image])
    os.makedirs(os.path.join(root, "mmbench"), exist_ok=True)
    with open(os.path.join(root, "mmbench", "mmbench_dev_20230712.tsv"), "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(header)
        writer.writerows(sorted(rows, key=lambda r: r[0]))
    return len(rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.demo.benchmark_files", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="becomes DATA_ROOT for scripts/eval/*.sh")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gqa", type=int, default=60, help="GQA questions (one per image)")
    p.add_argument("--pope", type=int, default=20, help="POPE images (6 questions each: 3 splits x yes/no)")
    p.add_argument("--seed-bench", type=int, default=30, help="SEED questions (one per image)")
    p.add_argument("--mmbench", type=int, default=20, help="MMBench base questions (4 rotations each)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    builders = (("gqa", build_gqa, args.gqa), ("pope", build_pope, args.pope), ("seed", build_seed, args.seed_bench), ("mmbench", build_mmbench, args.mmbench))
    for i, (name, build, n) in enumerate(builders):
        if n > 0:
            count = build(args.out, n, np.random.default_rng([args.seed, i, 7]))
            logger.info("%s: %d questions under %s", name, count, args.out)


if __name__ == "__main__":
    main()
