"""Build every asset the CPU demo needs, in LLaVA-1.5's own file formats and relative paths.

    python -m llava.demo.build_assets --out playground/demo [--seed 0] \\
        [--num-pretrain 2000 --num-finetune 4000 --num-eval 500 --num-pope 300 --num-seed 200] [--force]

Layout under ``--out`` (``data/`` mirrors ``playground/data`` so the upstream scripts only need a
different root)::

    models/clip-tiny/                         CLIPVisionModel + CLIPImageProcessor (64 px)
    models/llama-tiny/                        LlamaForCausalLM + its tokenizer
    data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json, data/LLaVA-Pretrain/images/
    data/llava_v1_5_mix665k.json, data/digits/train/       (image paths relative to data/)
    data/eval/gqa/llava_gqa_testdev_balanced.jsonl, data/eval/gqa/data/{images/,testdev_balanced_questions.json}
    data/eval/pope/llava_pope_test.jsonl, data/eval/pope/coco/coco_pope_<split>.json, data/eval/pope/val2014/
    data/eval/seed_bench/llava-seed-bench.jsonl, data/eval/seed_bench/SEED-Bench.json, .../SEED-Bench-image/
    manifest.json                             counts, seeds, probe numbers, eval answer distributions

The build is idempotent: each step (vision tower, data, tokenizer + LLM) records a key of its inputs in
``.build/<step>.json`` and is skipped when the key and its outputs are still there. ``--force``
rebuilds everything. Everything is deterministic given ``--seed`` (torch CPU kernels with the same
thread count).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.demo import digits
from llava.demo.digits import QA, Grid

logger = logging.getLogger(__name__)

# Bump when the generated content changes, so that existing builds are redone instead of skipped.
DATA_VERSION = 3
TOWER_VERSION = 1
LLM_VERSION = 1

# vicuna_v1 template pieces (llava/conversation.py); the tokenizer is trained on them too.
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
ROLES = ("USER", "ASSISTANT")

# Share of each kind of stage-2 conversation. Short answers dominate because GQA is the headline
# eval; long answers keep LLaVA-Instruct's descriptions, "mc" A-OKVQA/SEED-style option letters,
# "text" the ShareGPT text-only share (a few percent, as in the 665K mix).
FINETUNE_MIX: dict[str, float] = {"short": 0.60, "long": 0.17, "mc": 0.20, "text": 0.03}
# Questions per short-answer conversation (inclusive). Several turns per image, as in the VQA parts
# of the 665K mix, spread the cost of the 64 image tokens and the system prompt over more supervised
# answers: about 75% more answer tokens per step for about 20% more tokens.
SHORT_TURNS: tuple[int, int] = (2, 5)
IMAGE_AT_END_PROB = 0.1  # LLaVA-Instruct puts "<image>" after the question in some samples

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

# Independent random streams, so that changing one count never changes the other splits.
_STREAMS = {"pretrain": 1, "finetune": 2, "gqa": 3, "pope": 4, "seed": 5}
_GQA_QID_BASE = 20_000_000
_SEED_QID_BASE = 100_000


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


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def _key(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[stream]])


def _write_json(path: Path, obj: Any, indent: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        json.dump(obj, f, indent=indent)
    tmp.replace(path)  # atomic: an interrupted build never leaves a truncated JSON behind


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    tmp.replace(path)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


# Which scans (and digit classes) each written image shows, keyed by path relative to data/. Kept in
# .build/images.json rather than in the sample records so that the JSON files keep upstream's keys.
ImageRegistry = dict[str, dict[str, list[int]]]


def _save_image(grid: Grid, path: Path, paths: DemoPaths, registry: ImageRegistry) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    digits.render_grid(grid).save(path, format="PNG")
    registry[str(path.relative_to(paths.data))] = {"sources": list(grid.sources), "labels": list(grid.labels)}


def _turn(role: str, value: str) -> dict[str, str]:
    return {"from": role, "value": value}


def _with_image(question: str, rng: np.random.Generator) -> str:
    if rng.random() < IMAGE_AT_END_PROB:
        return f"{question}\n{DEFAULT_IMAGE_TOKEN}"
    return f"{DEFAULT_IMAGE_TOKEN}\n{question}"


def _exact_mix(mix: dict[str, float], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` kinds in the given proportions (largest-remainder rounding), shuffled."""
    raw = {k: w * n / sum(mix.values()) for k, w in mix.items()}
    counts = {k: int(math.floor(v)) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)[: n - sum(counts.values())]:
        counts[k] += 1
    kinds = [k for k, c in counts.items() for _ in range(c)]
    return [kinds[i] for i in rng.permutation(len(kinds))]


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


def _conversation_qas(grid: Grid, rng: np.random.Generator, n: int) -> list[QA]:
    """Up to ``n`` questions for one multi-turn conversation, none answerable from earlier answers.

    In a conversation the model sees its previous answers. If "What digit is in the top left?" ->
    "7" were followed by "Is there a 7 in the image?", the second answer could be copied from the
    context, a shortcut that does not exist in the single-question evals. So once a cell has been
    asked about, no later question targets it, and once a digit has been asked about (or shown by a
    cell's answer), no later exist/count question names it.
    """
    known_cells: set[int] = set()
    known_digits: set[int] = set()
    out: list[QA] = []
    for _ in range(50 * n):
        qa = digits.sample_short_qa(grid, rng)
        if qa.cell is not None and qa.cell in known_cells:
            continue
        if qa.cell is None and qa.digit is not None and qa.digit in known_digits:
            continue
        out.append(qa)
        if qa.cell is not None:
            known_cells.add(qa.cell)
            known_digits.add(grid.labels[qa.cell])  # conservative: a verify "no" reveals less
        if qa.digit is not None:
            known_digits.add(qa.digit)
        if len(out) == n:
            break
    return out


# ---------------------------------------------------------------------------------------------
# Stage 1: LCS-558K format
# ---------------------------------------------------------------------------------------------


def build_pretrain(
    cfg: BuildConfig, paths: DemoPaths, pool: digits.DigitPool, registry: ImageRegistry
) -> list[dict[str, Any]]:
    rng = _rng(cfg.seed, "pretrain")
    records = []
    for i in tqdm(range(cfg.num_pretrain), desc="pretrain captions", disable=not cfg.progress):
        grid = digits.sample_grid(pool, rng)
        # LCS-558K shards its images by the first five digits of a nine-digit id.
        sample_id = f"{i:09d}"
        rel = f"{sample_id[:5]}/{sample_id}.png"
        _save_image(grid, paths.pretrain_images / rel, paths, registry)
        instruction = digits.CAPTION_INSTRUCTIONS[int(rng.integers(len(digits.CAPTION_INSTRUCTIONS)))]
        records.append(
            {
                "id": sample_id,
                "image": rel,
                "conversations": [
                    _turn("human", f"{DEFAULT_IMAGE_TOKEN}\n{instruction}"),
                    _turn("gpt", digits.caption(grid, rng)),
                ],
            }
        )
    _write_json(paths.pretrain_json, records)
    return records


# ---------------------------------------------------------------------------------------------
# Stage 2: llava_v1_5_mix665k format
# ---------------------------------------------------------------------------------------------


def _short_conversation(grid: Grid, rng: np.random.Generator) -> list[dict[str, str]]:
    qas = _conversation_qas(grid, rng, int(rng.integers(SHORT_TURNS[0], SHORT_TURNS[1] + 1)))
    turns: list[dict[str, str]] = []
    for k, qa in enumerate(qas):
        question = digits.with_short_answer_prompt(qa.question)
        turns += [_turn("human", _with_image(question, rng) if k == 0 else question), _turn("gpt", qa.answer)]
    return turns


def _long_conversation(grid: Grid, rng: np.random.Generator) -> list[dict[str, str]]:
    if rng.random() < 0.5:
        instruction = digits.DESCRIBE_INSTRUCTIONS[int(rng.integers(len(digits.DESCRIBE_INSTRUCTIONS)))]
        return [_turn("human", _with_image(instruction, rng)), _turn("gpt", digits.describe(grid))]
    # LLaVA-Instruct-style conversation: plain questions answered with a full sentence.
    turns: list[dict[str, str]] = []
    for k, qa in enumerate(_conversation_qas(grid, rng, int(rng.integers(1, 3)))):
        turns += [
            _turn("human", _with_image(qa.question, rng) if k == 0 else qa.question),
            _turn("gpt", qa.full_answer),
        ]
    return turns


def _mc_conversation(grid: Grid, rng: np.random.Generator) -> list[dict[str, str]]:
    mc = digits.multiple_choice(grid, rng)
    return [_turn("human", _with_image(mc.prompt(), rng)), _turn("gpt", mc.answer)]


def build_finetune(
    cfg: BuildConfig, paths: DemoPaths, pool: digits.DigitPool, registry: ImageRegistry
) -> list[dict[str, Any]]:
    rng = _rng(cfg.seed, "finetune")
    kinds = _exact_mix(FINETUNE_MIX, cfg.num_finetune, rng)
    builders: dict[str, Callable[[Grid, np.random.Generator], list[dict[str, str]]]] = {
        "short": _short_conversation,
        "long": _long_conversation,
        "mc": _mc_conversation,
    }
    records = []
    for i, kind in enumerate(tqdm(kinds, desc="finetune conversations", disable=not cfg.progress)):
        if kind == "text":
            turns = [t for q, a in digits.text_only(rng) for t in (_turn("human", q), _turn("gpt", a))]
            records.append({"id": f"text-{i:06d}", "conversations": turns})  # no "image" key: text-only
            continue
        grid = digits.sample_grid(pool, rng)
        rel = f"digits/train/{i:05d}.png"  # relative to data/, like "coco/train2017/..." in the 665K mix
        _save_image(grid, paths.data / rel, paths, registry)
        records.append({"id": f"digits-{i:06d}", "image": rel, "conversations": builders[kind](grid, rng)})
    _write_json(paths.finetune_json, records)
    return records


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
    rng = _rng(cfg.seed, "gqa")
    lines: list[dict[str, Any]] = []
    official: dict[str, dict[str, Any]] = {}
    n_images = math.ceil(cfg.num_eval / cfg.gqa_per_image)
    for j in tqdm(range(n_images), desc="gqa images", disable=not cfg.progress):
        grid = digits.sample_grid(pool, rng)
        image_id = f"d{j:07d}"
        _save_image(grid, paths.gqa_images / f"{image_id}.png", paths, registry)
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
    _write_jsonl(paths.gqa_jsonl, lines)
    _write_json(paths.gqa_questions, official)
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
    rng = _rng(cfg.seed, "pope")
    per_split = cfg.num_pope // len(POPE_SPLITS)
    n_images = math.ceil(per_split / POPE_PER_IMAGE)
    popularity = sorted(range(digits.NUM_CLASSES), key=lambda d: (-train_label_counts[d], d))
    grids: list[tuple[str, Grid]] = []
    for j in tqdm(range(n_images), desc="pope images", disable=not cfg.progress):
        grid = digits.sample_grid(pool, rng)
        while len(grid.present()) < POPE_PER_IMAGE // 2:  # need two distinct present digits
            grid = digits.sample_grid(pool, rng)
        name = f"DIGITS_val2014_{j:012d}.png"  # mirrors COCO_val2014_000000xxxxxx.jpg
        _save_image(grid, paths.pope_images / name, paths, registry)
        grids.append((name, grid))
    lines: list[dict[str, Any]] = []
    for split in POPE_SPLITS:
        split_rng = np.random.default_rng([cfg.seed, _STREAMS["pope"], POPE_SPLITS.index(split)])
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
        _write_jsonl(paths.pope_annotation(split), annotations)  # JSON lines despite the .json name, as in POPE
        for ann in annotations:
            lines.append(
                {
                    "question_id": len(lines) + 1,  # unique over the file: eval_pope indexes questions by id
                    "image": ann["image"],
                    "text": digits.with_short_answer_prompt(ann["text"]),
                    "category": split,
                }
            )
    _write_jsonl(paths.pope_jsonl, lines)
    return lines


def build_seed(
    cfg: BuildConfig, paths: DemoPaths, pool: digits.DigitPool, registry: ImageRegistry
) -> list[dict[str, Any]]:
    rng = _rng(cfg.seed, "seed")
    lines: list[dict[str, Any]] = []
    questions: list[dict[str, Any]] = []
    for j in tqdm(range(cfg.num_seed), desc="seed images", disable=not cfg.progress):
        grid = digits.sample_grid(pool, rng)
        data_id = f"digits_{j:06d}.png"
        _save_image(grid, paths.seed / "SEED-Bench-image" / data_id, paths, registry)
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
    _write_jsonl(paths.seed_jsonl, lines)
    _write_json(paths.seed_annotation, {"question_type": SEED_QUESTION_TYPES, "questions": questions})
    return lines


# ---------------------------------------------------------------------------------------------
# Manifest: counts and the baselines a trained model has to beat
# ---------------------------------------------------------------------------------------------


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
        labels = [row["label"] for row in _read_jsonl(paths.pope_annotation(split))]
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


# ---------------------------------------------------------------------------------------------
# Tokenizer corpus
# ---------------------------------------------------------------------------------------------


def fixed_prompt_texts() -> list[str]:
    """Template strings the tokenizer must know even if no sample happens to contain them."""
    return [
        VICUNA_SYSTEM,
        *(f"{role}:" for role in ROLES),
        digits.SHORT_ANSWER_PROMPT,
        digits.OPTION_LETTER_PROMPT,
        *(f"{letter}. " for letter in digits.OPTION_LETTERS),
        *digits.CAPTION_INSTRUCTIONS,
        *digits.DESCRIBE_INSTRUCTIONS,
    ]


def corpus_texts(paths: DemoPaths) -> Iterator[str]:
    """Every text of the demo, read back from the written files, with ``<image>`` removed.

    ``<image>`` never reaches the tokenizer in LLaVA (``tokenizer_image_token`` splits it out), so
    it must not become a vocabulary piece. Conversations are also rendered in the vicuna_v1 layout
    so merges such as "ASSISTANT:" are learned in the context they appear in.
    """
    image = DEFAULT_IMAGE_TOKEN
    yield from fixed_prompt_texts()
    for path in (paths.pretrain_json, paths.finetune_json):
        for record in json.loads(path.read_text()):
            turns = [t["value"].replace(image, "").strip() for t in record["conversations"]]
            yield from turns
            rendered = " ".join(f"{ROLES[0]}: {q} {ROLES[1]}: {a}</s>" for q, a in zip(turns[0::2], turns[1::2]))
            yield f"{VICUNA_SYSTEM} {rendered}"
    for path in (paths.gqa_jsonl, paths.pope_jsonl, paths.seed_jsonl):
        for row in _read_jsonl(path):
            yield row["text"]


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------


@dataclass
class Builder:
    cfg: BuildConfig
    force: bool = False
    paths: DemoPaths = field(init=False)
    _pools: dict[str, digits.DigitPool] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.paths = DemoPaths(Path(self.cfg.out))

    @property
    def pools(self) -> dict[str, digits.DigitPool]:
        if self._pools is None:
            self._pools = digits.split_digit_sources(self.cfg.seed, self.cfg.eval_fraction)
        return self._pools

    # -- stamps ---------------------------------------------------------------------------------

    def _check_root(self) -> None:
        # Steps delete what they rebuild; never do that in a directory this tool did not create
        # (e.g. --out playground would otherwise reach playground/data/eval).
        root = self.paths.root
        if root.exists() and any(root.iterdir()) and not self.paths.build_dir.exists():
            raise SystemExit(f"{root} is not empty and was not created by build_assets; choose another --out")
        self.paths.build_dir.mkdir(parents=True, exist_ok=True)

    def _stamp(self, step: str) -> dict[str, Any] | None:
        path = self.paths.build_dir / f"{step}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def _fresh(self, step: str, key: str, outputs: Iterable[Path]) -> bool:
        stamp = self._stamp(step)
        return not self.force and stamp is not None and stamp.get("key") == key and all(p.exists() for p in outputs)

    def _write_stamp(self, step: str, key: str, info: dict[str, Any]) -> None:
        _write_json(self.paths.build_dir / f"{step}.json", {"key": key, **info}, indent=2)

    # -- keys -----------------------------------------------------------------------------------

    def tower_key(self) -> str:
        from llava.demo import tiny_models

        c = self.cfg
        return _key(
            {
                "v": TOWER_VERSION,
                "seed": c.seed,
                "eval_fraction": c.eval_fraction,
                "steps": c.tower_steps,
                "probe": c.probe,
                "config": tiny_models.VISION_CONFIG,
            }
        )

    def data_key(self) -> str:
        c = self.cfg
        params = {
            k: v for k, v in asdict(c).items() if k not in ("out", "tower_steps", "probe", "vocab_size", "progress")
        }
        return _key({"v": DATA_VERSION, **params})

    def llm_key(self) -> str:
        from llava.demo import tiny_models

        return _key(
            {
                "v": LLM_VERSION,
                "data": self.data_key(),
                "seed": self.cfg.seed,
                "vocab": self.cfg.vocab_size,
                "config": tiny_models.LLM_CONFIG,
            }
        )

    # -- steps ----------------------------------------------------------------------------------

    def step_tower(self) -> dict[str, Any]:
        from llava.demo import tiny_models

        p, key = self.paths, self.tower_key()
        outputs = [p.clip / "config.json", p.clip / "model.safetensors", p.clip / "preprocessor_config.json"]
        if self._fresh("clip", key, outputs):
            logger.info("clip-tiny is up to date, skipping")
            return self._stamp("clip") or {}
        logger.info("building clip-tiny in %s", p.clip)
        shutil.rmtree(p.clip, ignore_errors=True)
        report = tiny_models.build_clip_tiny(
            p.clip,
            self.pools,
            seed=self.cfg.seed,
            pretrain_steps=self.cfg.tower_steps,
            probe=self.cfg.probe,
            progress=self.cfg.progress,
        )
        info = {"report": report.to_dict()}
        self._write_stamp("clip", key, info)
        return info

    def step_data(self) -> dict[str, Any]:
        p, key = self.paths, self.data_key()
        outputs = [
            p.pretrain_json,
            p.finetune_json,
            p.gqa_jsonl,
            p.gqa_questions,
            p.pope_jsonl,
            p.seed_jsonl,
            p.seed_annotation,
            p.image_registry,
        ]
        if self._fresh("data", key, outputs):
            logger.info("demo data is up to date, skipping")
            return self._stamp("data") or {}
        for out in p.data_outputs():
            if out.is_dir():
                shutil.rmtree(out)
            elif out.exists():
                out.unlink()
        timings: dict[str, float] = {}
        train_images: ImageRegistry = {}
        eval_images: ImageRegistry = {}
        t0 = time.perf_counter()
        build_pretrain(self.cfg, p, self.pools["train"], train_images)
        timings["pretrain"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        build_finetune(self.cfg, p, self.pools["train"], train_images)
        timings["finetune"] = time.perf_counter() - t0
        # POPE's "popular" negatives are the digits seen most often in training images.
        train_counts = Counter(label for entry in train_images.values() for label in entry["labels"])
        t0 = time.perf_counter()
        build_gqa(self.cfg, p, self.pools["eval"], eval_images)
        build_pope(self.cfg, p, self.pools["eval"], eval_images, train_counts)
        build_seed(self.cfg, p, self.pools["eval"], eval_images)
        timings["eval"] = time.perf_counter() - t0
        _write_json(p.image_registry, {"train": train_images, "eval": eval_images})
        info = {
            "timings_s": timings,
            "train_digit_counts": {str(d): train_counts[d] for d in range(digits.NUM_CLASSES)},
        }
        self._write_stamp("data", key, info)
        return info

    def step_llm(self) -> dict[str, Any]:
        from llava.demo import tiny_models
        from llava.demo.tokenizer import train_tokenizer

        p, key = self.paths, self.llm_key()
        outputs = [p.llama / "config.json", p.llama / "model.safetensors", p.llama / "tokenizer_config.json"]
        if self._fresh("llm", key, outputs):
            logger.info("llama-tiny is up to date, skipping")
            return self._stamp("llm") or {}
        shutil.rmtree(p.llama, ignore_errors=True)
        t0 = time.perf_counter()
        tokenizer = train_tokenizer(corpus_texts(p), p.llama, vocab_size=self.cfg.vocab_size)
        t_tok = time.perf_counter() - t0
        model = tiny_models.build_llama_tiny(p.llama, tokenizer, seed=self.cfg.seed)
        info = {
            "vocab_size": len(tokenizer),
            "parameters": sum(x.numel() for x in model.parameters()),
            "timings_s": {"tokenizer": t_tok, "llm": time.perf_counter() - t0 - t_tok},
        }
        self._write_stamp("llm", key, info)
        return info

    def write_manifest(self, tower: dict[str, Any], data: dict[str, Any], llm: dict[str, Any]) -> dict[str, Any]:
        p = self.paths
        pools = self.pools
        pretrain = json.loads(p.pretrain_json.read_text())
        finetune = json.loads(p.finetune_json.read_text())
        official = json.loads(p.gqa_questions.read_text())
        gqa_lines = _read_jsonl(p.gqa_jsonl)
        pope_lines = _read_jsonl(p.pope_jsonl)
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
            "config": {k: v for k, v in asdict(self.cfg).items() if k not in ("out", "progress")},
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
                "seed_questions": len(_read_jsonl(p.seed_jsonl)),
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
        _write_json(p.manifest, manifest, indent=2)
        return manifest

    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        self._check_root()
        tower = self.step_tower()
        data = self.step_data()
        llm = self.step_llm()
        manifest = self.write_manifest(tower, data, llm)
        gqa = manifest["eval"]["gqa"]
        logger.info(
            "demo assets ready in %s (%.1fs): GQA %d questions, chance %.3f, majority %.3f, blind best %.3f",
            self.paths.root,
            time.perf_counter() - start,
            gqa["n"],
            gqa["chance"],
            gqa["majority"]["accuracy"],
            gqa["blind_best"],
        )
        return manifest


def build_assets(cfg: BuildConfig, force: bool = False) -> dict[str, Any]:
    """Build (or bring up to date) the demo assets under ``cfg.out``; returns the manifest."""
    return Builder(cfg, force=force).run()


def build_parser() -> argparse.ArgumentParser:
    d = BuildConfig(out=Path("playground/demo"))
    parser = argparse.ArgumentParser(
        prog="python -m llava.demo.build_assets",
        description="Build the tiny CLIP/Llama models and the digit-grid data of the CPU demo, in LLaVA-1.5's formats.",
    )
    parser.add_argument("--out", type=Path, default=d.out, help="build root (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed for every random choice (default: %(default)s)")
    parser.add_argument(
        "--num-pretrain", type=int, default=d.num_pretrain, help="stage-1 captions (default: %(default)s)"
    )
    parser.add_argument(
        "--num-finetune", type=int, default=d.num_finetune, help="stage-2 conversations (default: %(default)s)"
    )
    parser.add_argument("--num-eval", type=int, default=d.num_eval, help="GQA-style questions (default: %(default)s)")
    parser.add_argument(
        "--num-pope", type=int, default=d.num_pope, help="POPE questions over 3 splits (default: %(default)s)"
    )
    parser.add_argument("--num-seed", type=int, default=d.num_seed, help="SEED-style questions (default: %(default)s)")
    parser.add_argument(
        "--gqa-per-image", type=int, default=d.gqa_per_image, help="GQA questions per image (default: %(default)s)"
    )
    parser.add_argument(
        "--tower-steps",
        type=int,
        default=d.tower_steps,
        help="CLIP pretraining steps if the probe is weak; 0 disables (default: %(default)s)",
    )
    parser.add_argument("--no-probe", action="store_true", help="skip the linear probes of the vision tower")
    parser.add_argument(
        "--vocab-size", type=int, default=d.vocab_size, help="tokenizer vocabulary upper bound (default: %(default)s)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild every step even if it is up to date")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name, value in (
        ("--num-pretrain", args.num_pretrain),
        ("--num-finetune", args.num_finetune),
        ("--num-eval", args.num_eval),
    ):
        if value < 1:
            raise SystemExit(f"{name} must be at least 1")
    if args.num_pope < len(POPE_SPLITS) or args.num_seed < 1 or args.gqa_per_image < 1:
        raise SystemExit("--num-pope must be at least 3, --num-seed and --gqa-per-image at least 1")
    cfg = BuildConfig(
        out=args.out,
        seed=args.seed,
        num_pretrain=args.num_pretrain,
        num_finetune=args.num_finetune,
        num_eval=args.num_eval,
        num_pope=args.num_pope,
        num_seed=args.num_seed,
        gqa_per_image=args.gqa_per_image,
        tower_steps=args.tower_steps,
        probe=not args.no_probe,
        vocab_size=args.vocab_size,
        progress=not args.no_progress,
    )
    build_assets(cfg, force=args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
