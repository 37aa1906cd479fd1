"""Upstream LLaVA's ScienceQA scorer command, on our ScienceQA scorer (llava.eval.score --bench sqa).

    python llava/eval/eval_science_qa.py --base-dir scienceqa --result-file answers/CKPT.jsonl \\
        --output-file answers/CKPT_output.jsonl --output-result answers/CKPT_result.json [--split test]

``--base-dir`` holds ``problems.json`` and ``pid_splits.json``. The answers are parsed with upstream's strict
letter rules; the printed headline is the IMG accuracy the paper reports, with the overall accuracy beside it.
``--output-result`` gets our result JSON (score, counts, run information), and ``--output-file`` the letter
parsed from each answer (``{question_id: letter or "FAILED"}``); upstream wrote its own layouts to both.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from llava.eval import score
from llava.eval.files import read_jsonl, write_json
from llava.eval.scorers.sqa import OPTIONS, parse_sqa_letter


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python llava/eval/eval_science_qa.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--base-dir", type=str, required=True, help="the folder with problems.json and pid_splits.json")
    p.add_argument("--result-file", type=str, required=True, help="the answers (JSON lines)")
    p.add_argument("--output-file", type=str, default=None, help="each answer's parsed letter (JSON)")
    p.add_argument("--output-result", type=str, default=None, help="the result JSON")
    p.add_argument("--split", type=str, default="test")
    p.add_argument("--options", type=list, default=list(OPTIONS), help="accepted; the letters are always A-E")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    score.main(["--bench", "sqa", "--answers-file", args.result_file, "--annotation-dir", args.base_dir,
                "--split", args.split, *(["--result-file", args.output_result] if args.output_result else [])])
    if args.output_file:
        answers = read_jsonl(args.result_file, "answers file")
        write_json(args.output_file, {str(a["question_id"]): parse_sqa_letter(str(a.get("text", ""))) for a in answers})


if __name__ == "__main__":
    main()
