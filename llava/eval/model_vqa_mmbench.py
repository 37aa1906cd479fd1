"""Upstream LLaVA's MMBench writer: the TSV with base64 images, --single-pred-prompt, --lang cn, --all-rounds.

    python -m llava.eval.model_vqa_mmbench --model-path CKPT --question-file Q --answers-file A.jsonl [upstream's flags] \\
        [--reduction tok64] [--reduction-override "exit_layer=24"]

A thin front end: the questions go to our runner (llava.eval.run_benchmark; resume, locks, chunks, batching)
through llava.eval.upstream_runner, which documents the flags, the answer lines and where we differ.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from llava.eval import upstream_runner


def eval_model(args: argparse.Namespace) -> int:
    """Upstream's ``eval_model(args)``; returns how many answers were written."""
    return upstream_runner.eval_model("model_vqa_mmbench", args)


def main(argv: Sequence[str] | None = None) -> None:
    upstream_runner.main("model_vqa_mmbench", argv)


if __name__ == "__main__":
    main()
