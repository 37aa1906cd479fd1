"""Upstream LLaVA's VizWiz converter command: answers -> the EvalAI upload.

    python scripts/convert_vizwiz_for_submission.py --annotation-file vizwiz/llava_test.jsonl \\
        --result-file answers/CKPT.jsonl --result-upload-file answers_upload/CKPT.json

Writes ``[{"image": ..., "answer": ...}]`` with EvalAI-normalized answers through ``python -m llava.eval.convert
--bench vizwiz``; every test question needs an answer.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from llava.eval import convert


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/convert_vizwiz_for_submission.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--annotation-file", type=str, required=True, help="llava_test.jsonl")
    p.add_argument("--result-file", type=str, required=True)
    p.add_argument("--result-upload-file", type=str, required=True)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    convert.main(["--bench", "vizwiz", "--answers-file", args.result_file, "--question-file", args.annotation_file,
                  "--output", args.result_upload_file])


if __name__ == "__main__":
    main()
