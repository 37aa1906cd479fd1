"""Upstream LLaVA's VQAv2 converter command: merged test-dev answers -> the EvalAI upload over all of test2015.

    python scripts/convert_vqav2_for_submission.py --split llava_vqav2_mscoco_test-dev2015 --ckpt CKPT \\
        [--dir ./playground/data/eval/vqav2]

Reads ``<dir>/answers/<split>/<ckpt>/merge.jsonl`` and ``<dir>/llava_vqav2_mscoco_test2015.jsonl`` and writes
``<dir>/answers_upload/<split>/<ckpt>.json`` (upstream's paths) through ``python -m llava.eval.convert --bench
vqav2``: EvalAI-normalized answers, ``""`` for the test-std questions test-dev does not ask.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from llava.eval import convert


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/convert_vqav2_for_submission.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=str, default="./playground/data/eval/vqav2")
    p.add_argument("--ckpt", type=str, required=True)
    p.add_argument("--split", type=str, required=True)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    convert.main(["--bench", "vqav2",
                  "--answers-file", os.path.join(args.dir, "answers", args.split, args.ckpt, "merge.jsonl"),
                  "--question-file", os.path.join(args.dir, "llava_vqav2_mscoco_test2015.jsonl"),
                  "--output", os.path.join(args.dir, "answers_upload", args.split, f"{args.ckpt}.json")])


if __name__ == "__main__":
    main()
