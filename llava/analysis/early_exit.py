"""Deep-to-shallow vision masking (paper, section 2 and Fig. 4; App. F.1): where to exit.

    python -m llava.analysis.early_exit --model-path CKPT --bench gqa --question-file Q --image-folder IMG \
        --annotation-file testdev_balanced_questions.json --limit 500 --output-dir analysis/CKPT \
        [--ratios 0.5,0.75,1.0] [--layers 2-32] [--tolerance 0] [--max-new-tokens 16]

For each masking ratio r and layer l, vision tokens are removed from layer l onward, and the benchmark subset is
answered (greedy ``generate`` through the evaluation runner's ``LlavaBackend``) and scored by the benchmark
adapter's own scorer. As ``ReductionConfig`` schedules (vision on from layer 1):

- r = 1: early exit, ``exit_layer = l``: layers 1..l-1 see every vision token, layers l..L none.
- r < 1: one hard top-k cut after layer l - 1 keeping round(N * (1 - r)) tokens (rounded half up) to the end:
  ``prune_layers = (l - 1,)``, ``keep_counts = (k,)``, ``topk = hard``. Pruning "at layer p" takes effect from
  layer p + 1, so the cut after l - 1 is what layer l first sees; the lowest-scored tokens go first, scored as
  the schedule scores them (by default layer l's attention from the last prompt token: ``score_layer=next``).

l = 1 is not swept: removing vision before layer 1 means no vision at all (r = 1: ``exit_layer`` must be after
``inject_layer >= 1``; r < 1: there is no layer 0 to cut after), which is a text-only run rather than a point of
this curve. The sweep therefore covers l = 2..L (``--layers`` picks a subset). The baseline is the same subset
under ``off`` (vision everywhere). ``--reduction`` / ``--reduction-override`` set only the scoring and position
fields of these schedules; their layer fields are replaced by the sweep.

Marks: for each ratio, the first swept l from which every later swept l' has accuracy >= baseline - tolerance
(``--tolerance``, in the score's units, default 0): the curve has reached the baseline and stays there. For r = 1
that is the suggested ``exit_layer`` (layer 25 in the paper, where accuracy plateaus).

Scoring a subset: the adapters score a whole split, so for the benchmarks whose ground truth must cover the
answers exactly (GQA, SEED, ScienceQA, MMBench, MMBench-CN, MMStar) a copy of the ground truth restricted to the
subset is written under ``<output-dir>/early_exit_work/``; VQAv2 (val), VizWiz (val), TextVQA, POPE and MME join
each answer to its annotation and score any subset as is. Every benchmark here is scored from local files only
(no judge, no evaluation server).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from llava.analysis.common import (
    AnalysisError,
    build_parser,
    cli,
    float_list,
    layer_list,
    load_model,
    load_questions,
    new_figure,
    run_metadata,
    save_outputs,
)
from llava.eval.benchmarks import Benchmark, Question, ScoreInputs
from llava.eval.files import iter_jsonl, qid_key, read_json, write_json, write_jsonl
from llava.eval.run_benchmark import generate_answers
from llava.model.reduction.config import ReductionConfig

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger("llava.analysis.early_exit")

NAME = "early_exit"


# --------------------------------------------------------------------------------------------------- ground truth
def _missing(keys: Sequence[str], have: set[str] | dict[str, Any], path: str, flag: str) -> None:
    lacking = [k for k in keys if k not in have]
    if lacking:
        raise AnalysisError(f"{flag} {path} has no ground truth for {len(lacking)} question(s) of the subset, "
                            f"e.g. {lacking[:5]}; is it the same split as --question-file?")


def _subset_gqa(path: str, questions: list[Question], work_dir: str, split: str | None) -> str:
    data = read_json(path, "GQA questions file")
    if not isinstance(data, dict):
        raise AnalysisError(f"--annotation-file {path}: expected GQA's JSON object keyed by question id")
    keys = [q.key for q in questions]
    _missing(keys, data, path, "--annotation-file")
    out = os.path.join(work_dir, "gqa_questions_subset.json")
    write_json(out, {k: data[k] for k in keys})
    return out


def _subset_seed(path: str, questions: list[Question], work_dir: str, split: str | None) -> str:
    data = read_json(path, "SEED-Bench annotation file")
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise AnalysisError(f"--annotation-file {path}: expected SEED-Bench.json with a 'questions' list")
    keys = {q.key for q in questions}
    kept = [x for x in data["questions"] if qid_key(x.get("question_id")) in keys]
    _missing(sorted(keys), {qid_key(x.get("question_id")) for x in kept}, path, "--annotation-file")
    out = os.path.join(work_dir, "seed_subset.json")
    write_json(out, {**data, "questions": kept})
    return out


def _subset_sqa(path: str, questions: list[Question], work_dir: str, split: str | None) -> str:
    problems = read_json(os.path.join(path, "problems.json"), "ScienceQA problems.json")
    keys = [q.key for q in questions]
    _missing(keys, problems, os.path.join(path, "problems.json"), "--annotation-dir")
    out = os.path.join(work_dir, "sqa_subset")
    write_json(os.path.join(out, "problems.json"), {k: problems[k] for k in keys})
    write_json(os.path.join(out, "pid_splits.json"), {split or "test": keys})
    return out


def _subset_table(path: str, questions: list[Question], work_dir: str, split: str | None) -> str:
    """MMBench / MMStar: the question file is the ground truth; keep its rows of the subset, cells verbatim."""
    keys = {q.key for q in questions}
    base = os.path.basename(path)
    out = os.path.join(work_dir, f"subset_{base}")
    os.makedirs(work_dir, exist_ok=True)
    if path.endswith(".tsv"):
        csv.field_size_limit(sys.maxsize)  # base64 image cells
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t")
            header = next(reader)
            rows = [r for r in reader if r]
        if "index" not in header:
            raise AnalysisError(f"--question-file {path} has no 'index' column")
        col = header.index("index")
        kept = [r for r in rows if qid_key(int(r[col])) in keys]
        with open(out, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(header)
            writer.writerows(kept)
    else:
        records = [r for _, r in iter_jsonl(path, "question file")]
        write_jsonl(out, [r for r in records if qid_key(r.get("index", r.get("question_id"))) in keys])
    return out


@dataclass(frozen=True)
class GroundTruth:
    field: str  # the ScoreInputs field the adapter reads its ground truth from
    flag: str
    what: str
    subset: Callable[[str, list[Question], str, str | None], str] | None  # None: any subset scores as is


GROUND_TRUTH: dict[str, GroundTruth] = {
    "gqa": GroundTruth("annotation_file", "--annotation-file", "testdev_balanced_questions.json", _subset_gqa),
    "seed": GroundTruth("annotation_file", "--annotation-file", "SEED-Bench.json", _subset_seed),
    "vqav2": GroundTruth("annotation_file", "--annotation-file", "v2_mscoco_val2014_annotations.json (val only)", None),
    "vizwiz": GroundTruth("annotation_file", "--annotation-file", "VizWiz val.json (val only)", None),
    "textvqa": GroundTruth("annotation_file", "--annotation-file", "TextVQA_0.5.1_val.json", None),
    "pope": GroundTruth("annotation_dir", "--annotation-dir", "the folder with coco_pope_<split>.json", None),
    "mme": GroundTruth("annotation_dir", "--annotation-dir", "MME_Benchmark_release_version", None),
    "sqa": GroundTruth("annotation_dir", "--annotation-dir", "the folder with problems.json and pid_splits.json",
                       _subset_sqa),
    "mmbench": GroundTruth("question_file", "--question-file", "the MMBench dev TSV", _subset_table),
    "mmbench_cn": GroundTruth("question_file", "--question-file", "the MMBench-CN dev TSV", _subset_table),
    "mmstar": GroundTruth("question_file", "--question-file", "the MMStar file", _subset_table),
}


def prepare_scoring(bench: str, args: argparse.Namespace, questions: list[Question], work_dir: str) -> dict[str, Any]:
    """ScoreInputs fields (all but the answers file) scoring exactly ``questions``; checked before any generation."""
    gt = GROUND_TRUTH.get(bench)
    if gt is None:
        raise AnalysisError(f"early_exit cannot score '{bench}' from local files; supported: {sorted(GROUND_TRUTH)}")
    source = getattr(args, gt.field)
    if not source:
        raise AnalysisError(f"early_exit on {bench} scores with {gt.flag} ({gt.what}); pass it")
    exists = os.path.isdir(source) if gt.field == "annotation_dir" else os.path.isfile(source)
    if not exists:
        raise AnalysisError(f"{gt.flag} {source!r}: not found ({gt.what})")
    inputs = {"question_file": args.question_file, "annotation_file": args.annotation_file,
              "annotation_dir": args.annotation_dir, "split": args.split}
    inputs[gt.field] = gt.subset(source, questions, work_dir, args.split) if gt.subset else source
    return inputs


def score_answers(adapter: Benchmark, answers_file: str, inputs: dict[str, Any]) -> tuple[float, str]:
    """(score, metric name) of an answers file by the adapter's own scorer."""
    result = adapter.score(adapter.read_answers(answers_file), ScoreInputs(answers_file=answers_file, **inputs))
    return float(result.score), result.metric


# --------------------------------------------------------------------------------------------------- schedules
def _fields(base: ReductionConfig) -> dict[str, Any]:
    return {"score_query": base.score_query, "score_weight": base.score_weight, "score_layer": base.score_layer,
            "position_scheme": base.position_scheme}


def kept_count(num_vision_tokens: int, ratio: float) -> int:
    """round(N * (1 - r)), halves rounded up (Python's round would send 2.5 to 2)."""
    return int(math.floor(num_vision_tokens * (1.0 - ratio) + 0.5))


def masking_schedule(base: ReductionConfig, num_vision_tokens: int, ratio: float, layer: int) -> ReductionConfig:
    """Vision from layer 1; from layer ``layer`` on, share ``ratio`` of it removed (1: all of it)."""
    if ratio >= 1.0:
        return ReductionConfig(name=f"exit@{layer}", exit_layer=layer, **_fields(base))
    k = kept_count(num_vision_tokens, ratio)
    return ReductionConfig(name=f"mask{ratio:g}@{layer}", prune_layers=(layer - 1,), keep_counts=(k,), topk="hard",
                           **_fields(base))


def reaches_baseline(layers: Sequence[int], accuracy: Sequence[float], baseline: float, tolerance: float) -> int | None:
    """First swept l from which every later swept l' has accuracy >= baseline - tolerance (None: never)."""
    at = None
    for layer, acc in zip(reversed(layers), reversed(accuracy)):
        if acc < baseline - tolerance:
            break
        at = layer
    return at


# --------------------------------------------------------------------------------------------------- CLI
def build_arg_parser() -> argparse.ArgumentParser:
    p = build_parser(f"llava.analysis.{NAME}", "Accuracy when vision is removed from layer l on (paper Fig. 4).",
                     default_reduction="off")
    p.add_argument("--ratios", default="0.5,0.75,1.0", help="masking ratios in (0, 1]; 1 = early exit")
    p.add_argument("--layers", default=None, help="layers l to sweep, e.g. '2-32:2' or '9,17,25' (default: 2..L)")
    p.add_argument("--tolerance", type=float, default=0.0, help="a curve reaches the baseline at >= baseline - tol")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the benchmark's")
    p.add_argument("--annotation-file", default=None, help="ground truth file (GQA, SEED, VQAv2/VizWiz val, TextVQA)")
    p.add_argument("--annotation-dir", default=None, help="ground truth folder (POPE, MME, ScienceQA)")
    p.add_argument("--split", default=None, help="ScienceQA split (default test)")
    return p


def plot(layers: list[int], curves: list[dict[str, Any]], baseline: float, metric: str, title: str) -> Figure:
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(7.5, 4.5)
    ax = fig.subplots()
    ax.axhline(baseline, color="black", ls="--", lw=1, label=f"baseline (off): {baseline:.2f}")
    for c in curves:
        label = "early exit (r=1)" if c["ratio"] >= 1 else f"r={c['ratio']:g} (keep {c['kept_tokens']})"
        line, = ax.plot(layers, c["accuracy"], "o-", ms=3, label=label)
        if c["reaches_baseline_at"] is not None:
            x = c["reaches_baseline_at"]
            ax.axvline(x, color=line.get_color(), ls=":", lw=1)
            ax.annotate(f"l={x}", (x, c["accuracy"][layers.index(x)]), xytext=(4, -12), textcoords="offset points",
                        fontsize=8, color=line.get_color())
    ax.set_xlabel("vision removed from layer l on")
    ax.set_ylabel(metric)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return fig


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_arg_parser().parse_args(argv)
    ratios = sorted(set(float_list(args.ratios, "--ratios")))
    bad = [r for r in ratios if not 0.0 < r <= 1.0]
    if bad:
        raise AnalysisError(f"--ratios: {bad} outside (0, 1]")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise AnalysisError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    adapter, questions = load_questions(args, need_images=False)
    work_dir = os.path.join(args.output_dir, f"{NAME}_work")
    inputs = prepare_scoring(args.bench, args, questions, work_dir)  # before the model: fail fast on bad inputs
    loaded = load_model(args)
    L, N = loaded.num_layers, loaded.num_vision_tokens
    layers = layer_list(args.layers or f"2-{L}", "--layers", 1, L)
    if 1 in layers:
        raise AnalysisError("--layers: l=1 cannot be swept (removing vision before layer 1 leaves no vision at all; "
                            f"see the module doc); use 2..{L}")
    base = loaded.schedule
    model = loaded.model
    original = base
    max_new_tokens = args.max_new_tokens or adapter.max_new_tokens
    runs = [(None, None)] + [(r, layer) for r in ratios for layer in layers]
    logger.info("%s: %d questions x %d runs (baseline + %d ratios x %d layers), max_new_tokens=%d",
                NAME, len(questions), len(runs), len(ratios), len(layers), max_new_tokens)
    scores: dict[tuple[float | None, int | None], float] = {}
    metric = "score"
    try:
        for ratio, layer in tqdm(runs, desc=NAME, unit="run"):
            if ratio is None:
                schedule, tag = ReductionConfig(name="off", **_fields(base)), "baseline_off"
            else:
                schedule, tag = masking_schedule(base, N, ratio, layer), f"r{ratio:g}_l{layer}"
            model.set_reduction(schedule)
            answers = os.path.join(work_dir, "answers", f"{tag}.jsonl")
            if os.path.exists(answers):
                os.remove(answers)  # generate_answers appends
            generate_answers(loaded.backend, adapter, questions, args.image_folder, answers, args.batch_size,
                             max_new_tokens, {"schedule": schedule.name})
            scores[(ratio, layer)], metric = score_answers(adapter, answers, inputs)
    finally:
        model.set_reduction(original)
    baseline = scores[(None, None)]
    curves = []
    for r in ratios:
        acc = [scores[(r, layer)] for layer in layers]
        curves.append({"ratio": r, "kept_tokens": 0 if r >= 1 else kept_count(N, r), "accuracy": acc,
                       "reaches_baseline_at": reaches_baseline(layers, acc, baseline, args.tolerance)})
    exit_curve = next((c for c in curves if c["ratio"] >= 1), None)
    suggested = exit_curve["reaches_baseline_at"] if exit_curve else None
    for c in curves:
        logger.info("r=%g reaches the baseline %.2f (tolerance %g) from layer %s", c["ratio"], baseline,
                    args.tolerance, c["reaches_baseline_at"])
    result: dict[str, Any] = {
        "tool": NAME,
        **run_metadata(args, loaded, ReductionConfig(name="off", **_fields(base)), len(questions)),
        "metric": metric,
        "max_new_tokens": max_new_tokens,
        "baseline": baseline,
        "tolerance": args.tolerance,
        "layers": layers,
        "ratios": ratios,
        "curves": curves,
        "suggested_exit_layer": suggested,
        "answers_dir": os.path.abspath(os.path.join(work_dir, "answers")),
        "notes": ["l = 1 is not swept: removing vision before layer 1 leaves a text-only run",
                  "r < 1: one hard top-k cut after layer l - 1 (effective from layer l) kept to the end; "
                  "r = 1: exit_layer = l"],
    }
    title = (f"{os.path.basename(os.path.normpath(args.model_path))}: {len(questions)} {args.bench} questions, "
             f"tolerance {args.tolerance:g}")
    save_outputs(args.output_dir, NAME, result, plot(layers, curves, baseline, metric, title))
    return result


if __name__ == "__main__":
    cli(main)
