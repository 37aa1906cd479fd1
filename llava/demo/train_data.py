"""The demo's training data in LLaVA-1.5's formats: stage-1 captions (LCS-558K's ``blip_laion_cc_sbu_558k.json``) and
stage-2 conversations (``llava_v1_5_mix665k.json``), drawn from the digit pool's training scans.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.demo import digits
from llava.demo.digits import QA, Grid
from llava.demo.layout import BuildConfig, DemoPaths, ImageRegistry, save_image, stream_rng, write_json

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


def conversation_qas(grid: Grid, rng: np.random.Generator, n: int) -> list[QA]:
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
    rng = stream_rng(cfg.seed, "pretrain")
    records = []
    for i in tqdm(range(cfg.num_pretrain), desc="pretrain captions", disable=not cfg.progress):
        grid = digits.sample_grid(pool, rng)
        # LCS-558K shards its images by the first five digits of a nine-digit id.
        sample_id = f"{i:09d}"
        rel = f"{sample_id[:5]}/{sample_id}.png"
        save_image(grid, paths.pretrain_images / rel, paths, registry)
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
    write_json(paths.pretrain_json, records)
    return records


# ---------------------------------------------------------------------------------------------
# Stage 2: llava_v1_5_mix665k format
# ---------------------------------------------------------------------------------------------


def _short_conversation(grid: Grid, rng: np.random.Generator) -> list[dict[str, str]]:
    qas = conversation_qas(grid, rng, int(rng.integers(SHORT_TURNS[0], SHORT_TURNS[1] + 1)))
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
    for k, qa in enumerate(conversation_qas(grid, rng, int(rng.integers(1, 3)))):
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
    rng = stream_rng(cfg.seed, "finetune")
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
        save_image(grid, paths.data / rel, paths, registry)
        records.append({"id": f"digits-{i:06d}", "image": rel, "conversations": builders[kind](grid, rng)})
    write_json(paths.finetune_json, records)
    return records
