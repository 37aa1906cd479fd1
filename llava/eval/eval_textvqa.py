"""Upstream LLaVA's TextVQA scorer command, on our TextVQA scorer (llava.eval.score --bench textvqa).

    python -m llava.eval.eval_textvqa --annotation-file TextVQA_0.5.1_val.json --result-file answers/CKPT.jsonl
    python -m llava.eval.eval_textvqa --annotation-file TextVQA_0.5.1_val.json --result-dir answers/

Answers are matched to annotations on (image id, question read from the prompt), as upstream's scorer does, and
scored with the VQA accuracy of the official evaluator. ``--result-dir`` scores every ``.jsonl`` file in the
folder, one after another (upstream's behaviour); ``--output-result`` (ours) writes the result JSON of a single file.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from llava.eval import score


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.eval.eval_textvqa", description=__doc__.split("\n\n")[0])
    p.add_argument("--annotation-file", type=str, required=True, help="TextVQA_0.5.1_val.json")
    p.add_argument("--result-file", type=str, default=None, help="one answers file (JSON lines)")
    p.add_argument("--result-dir", type=str, default=None, help="score every .jsonl file in this folder")
    p.add_argument("--output-result", type=str, default=None, help="ours: the result JSON (with --result-file)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    if (args.result_file is None) == (args.result_dir is None):
        p.error("pass --result-file or --result-dir (one of them)")
    files = [args.result_file] if args.result_file else sorted(
        os.path.join(args.result_dir, f) for f in os.listdir(args.result_dir) if f.endswith(".jsonl"))
    if not files:
        p.error(f"--result-dir {args.result_dir} holds no .jsonl answers file")
    for path in files:
        print(os.path.splitext(os.path.basename(path))[0])
        score.main(["--bench", "textvqa", "--answers-file", path, "--annotation-file", args.annotation_file,
                    *(["--result-file", args.output_result] if args.output_result and args.result_file else [])])


if __name__ == "__main__":
    main()
