"""Build every asset the CPU demo needs, in LLaVA-1.5's own file formats and relative paths: the steps, their
up-to-date checks and the command line. The pieces live in their own modules: ``layout`` (settings, paths, file
writing), ``tiny_models`` (the tiny CLIP and LLaMA), ``train_data`` (stage-1/2 data), ``eval_sets`` (GQA, POPE,
SEED files), ``corpus`` + ``tokenizer`` (the tokenizer), ``manifest`` (counts and baselines).

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
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llava.demo import digits
from llava.demo.corpus import corpus_texts
from llava.demo.eval_sets import POPE_SPLITS, build_gqa, build_pope, build_seed
from llava.demo.layout import BuildConfig, DemoPaths, ImageRegistry, build_key, write_json
from llava.demo.manifest import write_manifest
from llava.demo.train_data import build_finetune, build_pretrain

logger = logging.getLogger(__name__)

# Bump when the generated content changes, so that existing builds are redone instead of skipped.
DATA_VERSION = 3
TOWER_VERSION = 1
LLM_VERSION = 1


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
        write_json(self.paths.build_dir / f"{step}.json", {"key": key, **info}, indent=2)

    # -- keys -----------------------------------------------------------------------------------

    def tower_key(self) -> str:
        from llava.demo import tiny_models

        c = self.cfg
        return build_key(
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
        return build_key({"v": DATA_VERSION, **params})

    def llm_key(self) -> str:
        from llava.demo import tiny_models

        return build_key(
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
        write_json(p.image_registry, {"train": train_images, "eval": eval_images})
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

    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        self._check_root()
        tower = self.step_tower()
        data = self.step_data()
        llm = self.step_llm()
        manifest = write_manifest(self.cfg, self.paths, self.pools, tower, data, llm)
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
