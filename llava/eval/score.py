"""Scores one benchmark, prints the score lines and writes a JSON result for ``llava.eval.report``.

    python -m llava.eval.score --bench gqa --answers-file testdev_balanced_predictions.json \
        --question-file llava_gqa_testdev_balanced.jsonl --annotation-file testdev_balanced_questions.json \
        --result-file results/CKPT/gqa.json --label CKPT

Which inputs each benchmark reads is documented on its adapter (``llava.eval.benchmarks``) and in
docs/Evaluation.md. With ``--question-file`` the answers are first checked to cover exactly the question
file's questions, each answered once. Answer files written by upstream LLaVA's answer writers (no ``uid``,
``image`` or ``category``) are accepted: POPE and VizWiz-val then need ``--question-file`` to look those
fields up by question_id, and where question ids repeat (TextVQA, MME) answers are matched to questions on
(question_id, prompt). A result with nothing scored (an empty annotation file, or annotations that share no
question with the answers) is an error, never a score of 0. A score reported by an evaluation server (VQAv2
test-dev, VizWiz test) can be recorded with ``--manual-score`` so that the report can show it next to locally
scored benchmarks.

The result JSON holds the score, the unparsed-output count, the breakdowns, and the run information the
runner recorded (model, schedule, average vision tokens, vision TFLOPs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import logging
import os
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any

from llava.eval.benchmarks import BENCHMARK_NAMES, ScoreInputs, get_benchmark
from llava.eval.files import EvalDataError, limit_arg, read_json, write_json
from llava.eval.scorers.common import ScoreResult
from llava.eval.scorers.mmbench import Judge

logger = logging.getLogger("llava.eval.score")


def load_judge(spec: str | None) -> Judge | None:
    """Imports the optional MMBench judge hook given as ``module:function`` (never evaluates text)."""
    if not spec:
        return None
    module_name, sep, func_name = spec.partition(":")
    if not sep or not module_name or not func_name:
        raise EvalDataError(f"--judge must look like 'package.module:function', got {spec!r}")
    func = getattr(importlib.import_module(module_name), func_name, None)
    if not callable(func):
        raise EvalDataError(f"--judge {spec!r}: {func_name} is not a callable in {module_name}")
    return func


def check_coverage(
    answer_keys: Sequence[str],
    question_keys: Sequence[str],
    question_file: str,
    skipped_keys: Collection[str] = (),
) -> None:
    """Answers must cover exactly the questions, once each: a missing, extra or doubled id means a broken merge
    or a wrong file. Answers to ``skipped_keys`` (questions the benchmark does not run, such as SEED's video
    questions, which upstream's runs answer) are allowed; they are counted in the log and left to the scorer."""
    repeated = sorted(k for k, c in Counter(question_keys).items() if c > 1)
    if repeated:
        raise EvalDataError(
            f"{question_file} lists {len(repeated)} question id(s) more than once (e.g. {repeated[:5]}), so answers "
            "cannot be matched to its questions by id; is it the benchmark's question file?"
        )
    qset, aset = set(question_keys), set(answer_keys)
    missing = [k for k in question_keys if k not in aset]
    skipped = [k for k in answer_keys if k not in qset and k in skipped_keys]
    extra = [k for k in answer_keys if k not in qset and k not in skipped_keys]
    doubled = sorted(k for k, c in Counter(answer_keys).items() if c > 1)
    if missing or extra or doubled:
        raise EvalDataError(
            f"answers do not match {question_file}: {len(missing)} question(s) unanswered (e.g. {missing[:5]}), "
            f"{len(extra)} answer(s) for unknown ids (e.g. {extra[:5]}), {len(doubled)} question(s) answered more "
            f"than once (e.g. {doubled[:5]})"
        )
    if skipped:
        logger.info(
            "%d answer(s) are to questions of %s that this benchmark does not score (e.g. %s); they are left out",
            len(skipped), question_file, skipped[:5],
        )


def ground_truth_names(args: argparse.Namespace) -> str:
    """The ground-truth inputs given on the command line, for error messages."""
    given = [
        f"{flag} {value}"
        for flag, value in (
            ("--annotation-file", args.annotation_file),
            ("--annotation-dir", args.annotation_dir),
            ("--question-file", args.question_file),
        )
        if value
    ]
    return ", ".join(given) or "no ground-truth input given"


def result_record(
    bench: str, result: ScoreResult, args: argparse.Namespace, run_info: dict[str, Any] | None, source: str
) -> dict[str, Any]:
    adapter = get_benchmark(bench)
    return {
        "bench": bench,
        "title": adapter.title,
        "label": args.label,
        **result.to_dict(),
        "source": source,
        "proxy": adapter.server_only and source == "local",
        "run": run_info,
        "inputs": {
            "answers_file": args.answers_file,
            "question_file": args.question_file,
            "annotation_file": args.annotation_file,
            "annotation_dir": args.annotation_dir,
            "split": args.split,
        },
        "scored_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.eval.score", description=__doc__.split("\n\n")[0])
    p.add_argument("--bench", required=True, choices=BENCHMARK_NAMES)
    p.add_argument("--answers-file", default=None, help="merged answers (GQA: also the converted predictions JSON)")
    p.add_argument(
        "--question-file",
        default=None,
        help="checks coverage; the ground truth for MMBench/MMStar; needed for POPE and VizWiz-val answer files "
        "written by upstream LLaVA (no category/image fields)",
    )
    p.add_argument("--annotation-file", default=None, help="GQA/VQAv2/VizWiz/TextVQA/SEED ground truth")
    p.add_argument("--annotation-dir", default=None, help="POPE/MME/ScienceQA ground-truth folder")
    p.add_argument("--split", default=None, help="ScienceQA split (default: test)")
    p.add_argument("--judge", default=None, help="MMBench only: optional judge hook 'module:function' (off by default)")
    p.add_argument("--result-file", default=None, help="where to write the JSON result for the report")
    p.add_argument("--label", default=None, help="the report row this result belongs to (default: the model id)")
    p.add_argument("--run-info", default=None, help="runner's run info (default: <answers-file>.run.json if present)")
    p.add_argument("--manual-score", type=float, default=None, help="record a score reported by an evaluation server")
    p.add_argument("--limit", type=limit_arg, default=None,
                   help="the answers are for the first N questions of --question-file (the eval scripts' LIMIT): "
                        "only those are scored, and the output says so; empty: all")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    adapter = get_benchmark(args.bench)
    run_info_path = args.run_info or (f"{args.answers_file}.run.json" if args.answers_file else None)
    run_info = read_json(run_info_path, "run info") if run_info_path and os.path.isfile(run_info_path) else None
    if args.label is None:
        args.label = (run_info or {}).get("model_id") or "unnamed"
    if args.manual_score is not None:
        result = ScoreResult(bench=args.bench, metric="server score", score=args.manual_score, num_scored=0, num_unparsed=0)
        source = "server"
    else:
        if not args.answers_file:
            parser.error("--answers-file is required unless --manual-score is given")
        answers = adapter.read_answers(args.answers_file)
        subset: dict[str, Any] | None = None
        if args.limit and not args.question_file:
            parser.error("--limit needs --question-file (the subset is its first N questions)")
        if args.question_file:
            questions = adapter.load_questions(args.question_file)
            if args.limit:
                subset = {"limit": args.limit, "questions": min(args.limit, len(questions)), "of": len(questions)}
                questions = questions[: args.limit]
            check_coverage(
                adapter.answer_keys(answers, questions, args.answers_file, args.question_file),
                [q.key for q in questions],
                args.question_file,
                adapter.skipped_question_keys(args.question_file),
            )
        inputs = ScoreInputs(
            answers_file=args.answers_file,
            question_file=args.question_file,
            annotation_file=args.annotation_file,
            annotation_dir=args.annotation_dir,
            split=args.split,
            judge=load_judge(args.judge),
            question_keys=None if subset is None else frozenset(q.key for q in questions),
        )
        result = adapter.score(answers, inputs)
        if subset is not None:
            # Scored as the full benchmark is, on fewer questions: a quick check, not a result to compare.
            result.details["subset"] = subset
            result.extra_lines.append(
                f"{adapter.title} subset: the first {subset['questions']} of the {subset['of']} questions of "
                f"{args.question_file} (LIMIT / --limit {args.limit}); not comparable with a full run")
        if result.num_scored == 0:
            # 0 of 0 is not a score: it would print "accuracy: 0.00" and land in the report as a real number.
            raise EvalDataError(
                f"{adapter.title}: none of the {len(answers)} answer(s) in {args.answers_file} could be scored against "
                f"the ground truth ({ground_truth_names(args)}); is the annotation file empty, or from another split "
                "than the question file? No result was written."
            )
        source = "local"
    result.bench = args.bench
    for line in result.summary_lines(adapter.title):
        print(line)
    spec = (run_info or {}).get("speculative_stats")
    if spec:  # self-speculative decoding (--speculative twig): how much of the draft the base kept, and the speed
        rate, tps = spec.get("acceptance_rate"), spec.get("tokens_per_second")
        print(f"{adapter.title} speculative decoding: acceptance rate {'n/a' if rate is None else f'{rate:.3f}'}, "
              f"{'n/a' if tps is None else f'{tps:.1f}'} tokens/s")
    realised = (run_info or {}).get("realised_avg_vision_tokens")
    if realised is not None:  # both counts of docs/Baselines.md, "Counting vision tokens"
        after = (run_info or {}).get("realised_avg_vision_tokens_after_filter")
        print(f"{adapter.title} realised vision tokens per layer: {realised:.2f} at the layers' inputs"
              + ("" if after is None else f", {after:.2f} counting each prune layer after its filter (MustDrop's "
                 "counter)"))
    if args.result_file:
        write_json(args.result_file, result_record(args.bench, result, args, run_info, source))
        logger.info("result written to %s", args.result_file)


if __name__ == "__main__":
    main()
