"""Upstream LLaVA's MMBench converter command: answers -> the .xlsx the OpenCompass server takes.

    python scripts/convert_mmbench_for_submission.py --annotation-file mmbench/mmbench_dev_20230712.tsv \\
        --result-dir answers/mmbench_dev_20230712 --upload-dir answers_upload/mmbench_dev_20230712 --experiment CKPT

Reads ``<result-dir>/<experiment>.jsonl`` and writes ``<upload-dir>/<experiment>.xlsx`` (upstream's paths) through
``python -m llava.eval.convert --bench mmbench``: the TSV's rows with a ``prediction`` column. Every row needs an
answer.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from llava.eval import convert


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/convert_mmbench_for_submission.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--annotation-file", type=str, required=True, help="the MMBench (or MMBench-CN) TSV")
    p.add_argument("--result-dir", type=str, required=True)
    p.add_argument("--upload-dir", type=str, required=True)
    p.add_argument("--experiment", type=str, required=True)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    convert.main(["--bench", "mmbench", "--answers-file", os.path.join(args.result_dir, f"{args.experiment}.jsonl"),
                  "--question-file", args.annotation_file,
                  "--output", os.path.join(args.upload_dir, f"{args.experiment}.xlsx")])


if __name__ == "__main__":
    main()
