"""Where the CPU demo's assets go and how they are written: the build settings, every path under the build root
(upstream's ``playground/data`` layout), seeded random streams, atomic JSON writing and image saving.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llava.demo import digits
from llava.demo.digits import Grid

# Independent random streams, so that changing one count never changes the other splits.
STREAMS = {"pretrain": 1, "finetune": 2, "gqa": 3, "pope": 4, "seed": 5}


@dataclass(frozen=True)
class BuildConfig:
    out: Path
    seed: int = 0
    num_pretrain: int = 2000
    num_finetune: int = 4000
    num_eval: int = 500  # GQA questions
    num_pope: int = 300  # split evenly over adversarial / popular / random
    num_seed: int = 200
    gqa_per_image: int = 2
    eval_fraction: float = 0.3  # share of each digit class's scans held out for eval images
    tower_steps: int = 300
    probe: bool = True  # linear-probe the tower before/after pretraining (a few seconds)
    vocab_size: int = 1024
    progress: bool = True


@dataclass(frozen=True)
class DemoPaths:
    """Every path the demo writes, relative to the build root."""

    root: Path

    @property
    def build_dir(self) -> Path:
        return self.root / ".build"

    @property
    def clip(self) -> Path:
        return self.root / "models" / "clip-tiny"

    @property
    def llama(self) -> Path:
        return self.root / "models" / "llama-tiny"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def pretrain_dir(self) -> Path:
        return self.data / "LLaVA-Pretrain"

    @property
    def pretrain_json(self) -> Path:
        return self.pretrain_dir / "blip_laion_cc_sbu_558k.json"

    @property
    def pretrain_images(self) -> Path:
        return self.pretrain_dir / "images"

    @property
    def finetune_json(self) -> Path:
        return self.data / "llava_v1_5_mix665k.json"

    @property
    def finetune_images(self) -> Path:
        return self.data / "digits"

    @property
    def gqa(self) -> Path:
        return self.data / "eval" / "gqa"

    @property
    def gqa_jsonl(self) -> Path:
        return self.gqa / "llava_gqa_testdev_balanced.jsonl"

    @property
    def gqa_questions(self) -> Path:
        return self.gqa / "data" / "testdev_balanced_questions.json"

    @property
    def gqa_images(self) -> Path:
        return self.gqa / "data" / "images"

    @property
    def pope(self) -> Path:
        return self.data / "eval" / "pope"

    @property
    def pope_jsonl(self) -> Path:
        return self.pope / "llava_pope_test.jsonl"

    @property
    def pope_images(self) -> Path:
        return self.pope / "val2014"

    def pope_annotation(self, split: str) -> Path:
        return self.pope / "coco" / f"coco_pope_{split}.json"

    @property
    def seed(self) -> Path:
        return self.data / "eval" / "seed_bench"

    @property
    def seed_jsonl(self) -> Path:
        return self.seed / "llava-seed-bench.jsonl"

    @property
    def seed_annotation(self) -> Path:
        return self.seed / "SEED-Bench.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def image_registry(self) -> Path:
        return self.build_dir / "images.json"

    def data_outputs(self) -> list[Path]:
        """What the data step owns: removed before a rebuild so no stale files survive."""
        return [self.pretrain_dir, self.finetune_json, self.finetune_images, self.gqa, self.pope, self.seed]


def build_key(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stream_rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([seed, STREAMS[stream]])


def write_json(path: Path, obj: Any, indent: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        json.dump(obj, f, indent=indent)
    tmp.replace(path)  # atomic: an interrupted build never leaves a truncated JSON behind


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    tmp.replace(path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


# Which scans (and digit classes) each written image shows, keyed by path relative to data/. Kept in
# .build/images.json rather than in the sample records so that the JSON files keep upstream's keys.
ImageRegistry = dict[str, dict[str, list[int]]]


def save_image(grid: Grid, path: Path, paths: DemoPaths, registry: ImageRegistry) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    digits.render_grid(grid).save(path, format="PNG")
    registry[str(path.relative_to(paths.data))] = {"sources": list(grid.sources), "labels": list(grid.labels)}
