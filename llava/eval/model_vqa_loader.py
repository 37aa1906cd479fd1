"""Upstream LLaVA's short-answer writer (GQA, VQAv2, VizWiz, TextVQA, POPE, MME, SEED): every line of a LLaVA
question JSONL, its text as the prompt, answers capped at --max_new_tokens (128).

    python -m llava.eval.model_vqa_loader --model-path CKPT --question-file Q --answers-file A.jsonl [upstream's flags] \\
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
    return upstream_runner.eval_model("model_vqa_loader", args)


def main(argv: Sequence[str] | None = None) -> None:
    upstream_runner.main("model_vqa_loader", argv)


if __name__ == "__main__":
    main()
