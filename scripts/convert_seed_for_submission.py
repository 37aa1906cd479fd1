"""Upstream LLaVA's SEED-Bench command: prints the accuracy and writes the leaderboard upload.

    python scripts/convert_seed_for_submission.py --annotation-file seed_bench/SEED-Bench.json \\
        --result-file answers/merge.jsonl --result-upload-file answers_upload/CKPT.jsonl

The accuracy is our SEED scorer's (``python -m llava.eval.score --bench seed``): SEED-IMG, the image questions the
paper reports, with the per-dimension breakdown; answers to video questions are counted and left out (upstream
also printed a video and an overall accuracy). The upload is ``python -m llava.eval.convert --bench seed``:
``{"question_id", "prediction"}`` lines in SEED-Bench.json's order.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from llava.eval import convert, score


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/convert_seed_for_submission.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--annotation-file", type=str, required=True, help="SEED-Bench.json")
    p.add_argument("--result-file", type=str, required=True)
    p.add_argument("--result-upload-file", type=str, required=True)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    score.main(["--bench", "seed", "--answers-file", args.result_file, "--annotation-file", args.annotation_file])
    convert.main(["--bench", "seed", "--answers-file", args.result_file, "--annotation-file", args.annotation_file,
                  "--output", args.result_upload_file])


if __name__ == "__main__":
    main()
