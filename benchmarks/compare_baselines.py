"""Training-free side by side on the demo: off, FastV, PDrop, MustDrop and HiDrop at the same average tokens.

    python benchmarks/compare_baselines.py --model-path checkpoints/reproduce/reproduce/off-s1 \
        --data-root playground/demo/data/eval --output reports/baselines

One plain-LLaVA demo checkpoint (the paper's training-free rows start from the released plain model), every
method applied at inference with the demo's 8-layer, 64-token shape at HiDrop's demo budget (26 tokens per layer on
average): GQA accuracy on the demo questions, the realised average vision tokens (counted in every prefill), and
the prefill time of a fixed batch, with the methods' repetitions interleaved (A, B, C, ..., A, B, C, ...) so a
change of machine load hits them alike. MustDrop's count depends on the image: its thresholds are scaled (in the
released 64-token ratio) on the first ``--calibration`` questions until its realised average is the budget, and
every method is then scored on the remaining questions only. Writes ``compare.json`` and ``compare.md``.

"The same average tokens" needs a count: ``--count-convention entering`` (default; this project's and the paper's,
a prune layer counts its input) or ``after_filter`` (MustDrop's released counter, a prune layer counts its
survivors; docs/Baselines.md). The fixed-count methods' keep counts are solved for the budget on that count
(``llava.model.reduction.solver``), MustDrop is calibrated on it, and the table reports both counts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import torch
from tqdm import tqdm

from llava.cli_types import positive_int
from llava.eval.benchmarks import get_benchmark
from llava.eval.run_benchmark import LlavaBackend
from llava.eval.scorers.gqa import convert_prediction, score_gqa
from llava.model.builder import CheckpointError, load_pretrained_model
from llava.model.reduction.config import COUNT_CONVENTIONS, PRESETS, ReductionConfig
from llava.model.reduction.solver import solve_keep_counts

BUDGET = 26.0  # HiDrop's demo schedule `tiny`: (64 * 2 + 32 * 2 + 16) / 8
LAYERS, VISION = 8, 64  # the demo model


def fixed_methods(convention: str) -> dict[str, ReductionConfig]:
    """off and the fixed-count methods at the budget counted by ``convention``: FastV one cut after layer 2, PDrop
    cuts after 2, 4, 6 with one ratio, HiDrop `tiny`'s layout with its last count (16) kept. On the entering count
    these are exactly 13; 26, 10, 4; and `tiny` itself."""
    def solve(inject: int, exit_layer: int, prune: tuple[int, ...], tail: tuple[int, ...] | None = None):
        return solve_keep_counts(BUDGET, LAYERS, inject, exit_layer, prune, tail, VISION, convention).keep_counts

    tiny = PRESETS["tiny"]
    return {
        "off": PRESETS["off"],
        "FastV (K=2)": ReductionConfig(name="fastv-demo", prune_layers=(2,), keep_counts=solve(1, -1, (2,)),
                                       topk="hard", score_layer="same"),
        "PDrop (2,4,6)": ReductionConfig(name="pdrop-demo", prune_layers=(2, 4, 6),
                                         keep_counts=solve(1, -1, (2, 4, 6)), topk="hard",
                                         position_scheme="compacted"),
        "HiDrop (tiny)": tiny.with_overrides({
            "name": "tiny" if convention == "entering" else "tiny-after-filter",
            "keep_counts": solve(tiny.inject_layer, tiny.exit_layer, tiny.prune_layers, tiny.keep_counts[1:])}),
    }


def mustdrop(scale: float) -> ReductionConfig:
    """MustDrop on the 8-layer demo: it filters four times in the first half of the network (after layers 3, 7, 11
    and 15 of 32); on 8 layers the four stages sit after layers 2, 3, 4 and 5. 2x2 merge windows on the 8x8 patch
    grid; the released 64-token thresholds (0.011, 0.01) times ``scale``."""
    return ReductionConfig(
        name=f"mustdrop-demo-x{scale:.3g}", prune_layers=(2, 3, 4, 5), selection="dual_attention",
        global_thr=min(1.0, 0.011 * scale), individual_thr=min(1.0, 0.01 * scale), score_layer="same",
        score_query="all_text", position_scheme="compacted", local_merge=True, merge_threshold=0.8, merge_window=2,
        key_ratio=0.08, kv_policy="final", topk="hard",
    )


RECORD_FIELDS = {"entering": "vision_tokens", "after_filter": "vision_tokens_after_filter"}


def answer(backend: LlavaBackend, questions, images, red: ReductionConfig,
           batch_size: int) -> tuple[list[str], dict[str, list[float]]]:
    """Greedy answers and each sample's realised average vision tokens under schedule ``red``, on both counts."""
    backend.model.set_reduction(red)
    texts: list[str] = []
    averages: dict[str, list[float]] = {c: [] for c in COUNT_CONVENTIONS}
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        out, counts = backend.generate_with_stats([q.text for q in chunk], images[start : start + batch_size], 8)
        texts += out
        for convention, field in RECORD_FIELDS.items():
            averages[convention] += [sum(c[field]) / len(c[field]) for c in counts]
    return texts, averages


def calibrate(backend, questions, images, batch_size: int, convention: str,
              steps: int = 12) -> tuple[float, float]:
    """The MustDrop threshold scale whose realised average (counted by ``convention``) on ``questions`` is closest
    to the budget (bisection on log-scale: more scale drops more)."""
    lo, hi = 0.01, 100.0
    best = (1.0, float("inf"))
    for _ in range(steps):
        mid = (lo * hi) ** 0.5
        _, averages = answer(backend, questions, images, mustdrop(mid), batch_size)
        avg = statistics.fmean(averages[convention])
        if abs(avg - BUDGET) < abs(best[1] - BUDGET):
            best = (mid, avg)
        if avg > BUDGET:
            lo = mid
        else:
            hi = mid
    return best


def prefill_seconds(model, backend: LlavaBackend, questions, images, methods: dict[str, ReductionConfig],
                    repeats: int) -> dict[str, list[float]]:
    """Interleaved timing of one prefill (forward on the prompts) of a fixed batch, per method."""
    ids, mask, pixels = backend.encode([q.text for q in questions], images)
    times: dict[str, list[float]] = {name: [] for name in methods}
    with torch.inference_mode():
        for red in methods.values():  # warm-up
            model(ids, mask, images=pixels, reduction=red)
        for _ in range(repeats):
            for name, red in methods.items():
                start = time.perf_counter()
                model(ids, mask, images=pixels, reduction=red)
                times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", required=True)
    p.add_argument("--data-root", default="playground/demo/data/eval")
    p.add_argument("--calibration", type=positive_int, default=50, help="questions MustDrop is calibrated on (>= 1)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="questions scored after the calibration ones (>= 1; default: all the rest)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--repeats", type=positive_int, default=30, help="interleaved prefill timings per method (>= 1)")
    p.add_argument("--output", default="reports/baselines", help="folder for compare.json and compare.md")
    p.add_argument("--count-convention", choices=COUNT_CONVENTIONS, default="entering",
                   help="the count the budget holds equal: 'entering' (a prune layer counts its input; this project "
                        "and the paper) or 'after_filter' (its survivors; MustDrop's counter)")
    args = p.parse_args(argv)
    # Everything that can be checked is checked before the model loads and the methods run.
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        p.error(f"--output {args.output} is a file; compare.json and compare.md go into a folder")
    if not os.path.isdir(args.model_path):
        p.error(f"--model-path {args.model_path}: no such checkpoint folder")
    gqa = os.path.join(args.data_root, "gqa")
    question_file = os.path.join(gqa, "llava_gqa_testdev_balanced.jsonl")
    truth_file = os.path.join(gqa, "data", "testdev_balanced_questions.json")
    for path, what in ((question_file, "GQA question file"), (truth_file, "GQA annotation file")):
        if not os.path.isfile(path):
            p.error(f"--data-root {args.data_root}: missing {what} {path}")
    torch.manual_seed(0)
    adapter = get_benchmark("gqa")
    questions = adapter.load_questions(question_file)
    if args.calibration >= len(questions):
        p.error(f"--calibration {args.calibration} leaves no question to score: {question_file} has {len(questions)}")
    if args.limit is not None and args.calibration + args.limit > len(questions):
        p.error(f"--calibration {args.calibration} + --limit {args.limit} is more than the {len(questions)} questions "
                f"of {question_file}")
    questions = questions[: args.calibration + args.limit] if args.limit is not None else questions
    with open(truth_file, encoding="utf-8") as f:
        truth = json.load(f)
    images = [adapter.load_image(q, os.path.join(gqa, "data", "images")) for q in questions]
    calib_q, calib_i = questions[: args.calibration], images[: args.calibration]
    test_q, test_i = questions[args.calibration :], images[args.calibration :]
    try:
        tokenizer, model, processor, _ = load_pretrained_model(args.model_path)
    except CheckpointError as e:
        p.error(str(e))
    backend = LlavaBackend(model, tokenizer, processor)
    convention = args.count_convention
    scale, calib_avg = calibrate(backend, calib_q, calib_i, args.batch_size, convention)
    methods = {**fixed_methods(convention), "MustDrop": mustdrop(scale)}
    rows: dict[str, dict[str, Any]] = {}
    for name, red in tqdm(methods.items(), desc="methods"):
        texts, averages = answer(backend, test_q, test_i, red, args.batch_size)
        preds = {str(q.qid): convert_prediction(t) for q, t in zip(test_q, texts)}
        score = score_gqa(preds, {k: truth[k] for k in preds})
        rows[name] = {"schedule": red.to_dict(), "accuracy": score.score,
                      "realised_avg_vision_tokens": statistics.fmean(averages["entering"]),
                      "realised_avg_vision_tokens_after_filter": statistics.fmean(averages["after_filter"])}
    times = prefill_seconds(model, backend, test_q[: args.batch_size], test_i[: args.batch_size], methods, args.repeats)
    for name in methods:
        rows[name]["prefill_ms_median"] = 1000 * statistics.median(times[name])
        rows[name]["prefill_ms_range"] = [1000 * min(times[name]), 1000 * max(times[name])]
    os.makedirs(args.output, exist_ok=True)
    meta = {"model_path": args.model_path, "questions": len(test_q), "calibration_questions": len(calib_q),
            "count_convention": convention, "budget": BUDGET,
            "mustdrop_threshold_scale": scale, "mustdrop_calibration_avg": calib_avg, "batch_size": args.batch_size,
            "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with open(os.path.join(args.output, "compare.json"), "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    off_ms = rows["off"]["prefill_ms_median"]
    lines = [
        f"GQA-style demo questions {args.calibration}-{args.calibration + len(test_q) - 1} ({len(test_q)}), checkpoint "
        f"`{args.model_path}`, {meta['date']}, batch {args.batch_size}, prefill timed {args.repeats}x interleaved "
        f"on {meta['torch_threads']} threads. Budget: {BUDGET:g} vision tokens per layer on the **{convention}** count"
        f" ({'a prune layer counts its input' if convention == 'entering' else 'a prune layer counts its survivors'})"
        "; both counts shown.",
        "",
        "| method | keep counts | GQA accuracy | avg vision tokens (entering) | (after filter) | prefill (ms, median) | "
        "prefill range (ms) | vs off |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        keep = ",".join(map(str, r["schedule"]["keep_counts"])) or "-"
        lines.append(f"| {name} | {keep} | {r['accuracy']:.2f} | {r['realised_avg_vision_tokens']:.2f} | "
                     f"{r['realised_avg_vision_tokens_after_filter']:.2f} | "
                     f"{r['prefill_ms_median']:.1f} | {r['prefill_ms_range'][0]:.1f}-{r['prefill_ms_range'][1]:.1f} | "
                     f"{r['prefill_ms_median'] / off_ms:.2f} |")
    lines += ["", f"MustDrop's threshold scale {scale:.3g} (x the released 64-token thresholds) gave "
              f"{calib_avg:.2f} tokens ({convention} count) on the calibration questions."]
    with open(os.path.join(args.output, "compare.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
