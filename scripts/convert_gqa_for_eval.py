"""Upstream LLaVA's GQA converter command: merged answers -> the predictions file GQA's official eval.py reads.

    python scripts/convert_gqa_for_eval.py --src answers/merge.jsonl --dst gqa/data/testdev_balanced_predictions.json

Writes ``[{"questionId": str, "prediction": str}]`` (lower-case, a trailing "." removed) through
``python -m llava.eval.convert --bench gqa``; a line without question_id/text, or a question answered twice, is an
error naming the line.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from llava.eval import convert


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/convert_gqa_for_eval.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=str, required=True, help="merged answers (JSON lines)")
    p.add_argument("--dst", type=str, required=True, help="testdev_balanced_predictions.json")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    convert.main(["--bench", "gqa", "--answers-file", args.src, "--output", args.dst])


if __name__ == "__main__":
    main()
