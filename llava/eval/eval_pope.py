"""Upstream LLaVA's POPE scorer command, on our POPE scorer (llava.eval.score --bench pope).

    python llava/eval/eval_pope.py --annotation-dir pope/coco --question-file llava_pope_test.jsonl \\
        --result-file answers/CKPT.jsonl [--output-result pope.json]

Prints accuracy, precision, recall, F1 and the yes ratio per split and the F1 average the paper reports, in our
score lines (not upstream's tab-separated block). ``--output-result`` (ours) writes the result JSON the report reads.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from llava.eval import score


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python llava/eval/eval_pope.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--annotation-dir", type=str, required=True, help="the folder with coco_pope_<split>.json")
    p.add_argument("--question-file", type=str, required=True, help="llava_pope_test.jsonl (each question's split)")
    p.add_argument("--result-file", type=str, required=True, help="the answers (JSON lines)")
    p.add_argument("--output-result", type=str, default=None, help="ours: the result JSON for llava.eval.report")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    score.main(["--bench", "pope", "--answers-file", args.result_file, "--question-file", args.question_file,
                "--annotation-dir", args.annotation_dir,
                *(["--result-file", args.output_result] if args.output_result else [])])


if __name__ == "__main__":
    main()
