"""Efficiency accounting: average vision tokens and the paper's vision FLOPs (Table 2).

Per layer, a block with n tokens costs 4 n d^2 + 2 n^2 d + 3 n d m FLOPs (paper, section 4.1: attention
projections, attention, SwiGLU FFN). ``vision_tflops`` sums it over layers with n = vision tokens present at the
layer's input; with ``--text-tokens`` the same formula is also applied to the whole sequence (text + vision).

    python -m llava.eval.efficiency --llm vicuna-7b --schedule tok64
    python -m llava.eval.efficiency --layers 32 --hidden 4096 --ffn 11008 --counts 576x8,288x8,144x8,72x8

Inputs are checked, with "error: ..." on stderr and exit code 2: --layers, --hidden, --ffn and
--num-vision-tokens must be > 0, --text-tokens >= 0, and each --counts entry must be ``N`` or ``NxLAYERS``
with 0 <= N <= --num-vision-tokens and LAYERS >= 1, covering exactly the model's layers.

The solver finds keep counts for a budget (``llava.model.reduction.solver``) and prints them as a schedule:

    python -m llava.eval.efficiency --llm vicuna-7b --solve --target-avg 64 --inject 9 --exit 25 \
        --prune-layers 10,14,16,18 --tail 10,5,1        # -> keep_counts=215,10,5,1 (HiDrop tok64)
    python -m llava.eval.efficiency --llm vicuna-7b --solve --target-avg 64 --prune-layers 2,8,16
                                                        # geometric decay, PDrop-shaped -> 111,21,4
"""

from __future__ import annotations

import argparse
import math
import re
import sys

from llava.model.reduction.config import NO_EXIT, PRESETS, ReductionConfig, ReductionConfigError, resolve_reduction
from llava.model.reduction.solver import solve_keep_counts

LLM_SHAPES: dict[str, tuple[int, int, int]] = {  # layers, hidden d, FFN m (paper, Table 6)
    "vicuna-7b": (32, 4096, 11008),
    "mobilellama-2.7b": (32, 2560, 6912),
}


def block_flops(n: int, d: int, m: int) -> float:
    return 4 * n * d * d + 2 * n * n * d + 3 * n * d * m


def vision_tflops(counts_per_layer: list[int], hidden: int, ffn: int) -> float:
    return sum(block_flops(n, hidden, ffn) for n in counts_per_layer) / 1e12


def sequence_tflops(counts_per_layer: list[int], text_tokens: int, hidden: int, ffn: int) -> float:
    return sum(block_flops(n + text_tokens, hidden, ffn) for n in counts_per_layer) / 1e12


_COUNT_ENTRY = re.compile(r"(\d+)(?:x(\d+))?")


def parse_counts(spec: str) -> list[int]:
    """``576x8,288x8`` -> [576]*8 + [288]*8; plain integers are single layers.

    Raises ``ValueError`` naming the entry for anything else: a sign, a missing number on either side of ``x``,
    or a layer count of 0.
    """
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        match = _COUNT_ENTRY.fullmatch(part)
        if match is None:
            raise ValueError(f"bad --counts entry {part!r}; expected N or NxLAYERS with whole numbers N >= 0, "
                             "LAYERS >= 1 (e.g. 576x8)")
        n, rep = int(match.group(1)), int(match.group(2) or 1)
        if rep < 1:
            raise ValueError(f"bad --counts entry {part!r}: the layer count after 'x' must be >= 1")
        out += [n] * rep
    return out


def check_counts(counts: list[int], num_layers: int, num_vision_tokens: int) -> None:
    """Raises ``ValueError`` unless ``counts`` covers ``num_layers`` layers with 0..num_vision_tokens tokens each."""
    if len(counts) != num_layers:
        raise ValueError(f"--counts describes {len(counts)} layers but the model has {num_layers} layers")
    too_many = sorted({c for c in counts if c > num_vision_tokens})
    if too_many:
        raise ValueError(f"--counts has {too_many} vision tokens in a layer, more than the image's "
                         f"{num_vision_tokens} (--num-vision-tokens)")


def report(counts: list[int], hidden: int, ffn: int, text_tokens: int | None, num_vision: int) -> dict[str, str]:
    L = len(counts)
    base = vision_tflops([num_vision] * L, hidden, ffn)
    vt = vision_tflops(counts, hidden, ffn)
    out = {
        "layers": str(L),
        "avg_vision_tokens": f"{sum(counts) / L:.2f}",
        "vision_tokens_per_layer": ",".join(str(c) for c in counts),
        "vision_tflops": f"{vt:.2f}",
        "vision_tflops_exact": f"{vt:.6f}",
        "vision_flops_reduction": f"{1 - vt / base:.4f}" if base else "0",
    }
    if text_tokens is not None:
        out["text_tokens"] = str(text_tokens)
        out["total_tflops"] = f"{sequence_tflops(counts, text_tokens, hidden, ffn):.4f}"
        out["total_tflops_no_reduction"] = f"{sequence_tflops([num_vision] * L, text_tokens, hidden, ffn):.4f}"
    return out


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.eval.efficiency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    positive, non_negative = _int_at_least(1), _int_at_least(0)
    p.add_argument("--llm", choices=sorted(LLM_SHAPES), help="named LLM shape")
    p.add_argument("--layers", type=positive)
    p.add_argument("--hidden", type=positive)
    p.add_argument("--ffn", type=positive)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--schedule", help=f"reduction preset: {', '.join(sorted(PRESETS))}")
    g.add_argument("--counts", help="explicit vision tokens per layer, e.g. 576x8,288x8,144x8,72x8")
    g.add_argument("--solve", action="store_true", help="find keep counts for --target-avg (see below)")
    g.add_argument("--run-info", metavar="FILE",
                   help="the realised figures of an evaluation run (its merge.jsonl.run.json or result JSON): "
                        "data-dependent schedules such as mustdrop-* keep a different number of tokens per sample")
    p.add_argument("--target-avg", type=float, help="--solve: average vision tokens per layer to hit")
    p.add_argument("--inject", type=positive, default=1, help="--solve: injection layer (1 = from the start)")
    p.add_argument("--exit", type=int, default=NO_EXIT, help="--solve: exit layer (default: vision never leaves)")
    p.add_argument("--prune-layers", help="--solve: comma-separated prune layers, e.g. 10,14,16,18")
    p.add_argument("--tail", help="--solve: fixed counts of the stages after the first, e.g. 10,5,1")
    p.add_argument("--override", nargs="*", default=[], help="single-field schedule overrides, key=value")
    p.add_argument("--num-vision-tokens", type=positive, default=576)
    p.add_argument("--text-tokens", type=non_negative, help="also print whole-sequence FLOPs for this many text tokens")
    return p


def realised_report(path: str, num_vision: int | None) -> dict[str, str]:
    """The realised per-layer vision tokens of an evaluation run, averaged over its answers (recorded by the
    runner, averaged by ``llava.eval.merge``), with the mean per-sample vision TFLOPs."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read --run-info {path}: {e}") from None
    info = info.get("run", info) if isinstance(info, dict) else {}
    per_layer = info.get("realised_vision_tokens_per_layer") if isinstance(info, dict) else None
    if not per_layer:
        raise ValueError(f"{path} has no realised vision-token counts (evaluate with this codebase's runner; the "
                         "merge writes them into merge.jsonl.run.json)")
    llm = info.get("llm") or {}
    n = num_vision or info.get("num_vision_tokens")
    out = {
        "schedule": str((info.get("reduction") or {}).get("name", "?")),
        "samples": str(info.get("realised_samples", "?")),
        "layers": str(len(per_layer)),
        "avg_vision_tokens": f"{sum(per_layer) / len(per_layer):.2f}",
        "vision_tokens_per_layer": ",".join(f"{x:.2f}" for x in per_layer),
    }
    tflops = info.get("realised_vision_tflops")
    if tflops is not None:
        out["vision_tflops"] = f"{tflops:.2f}"
        out["vision_tflops_exact"] = f"{tflops:.6f}"
        if n and llm.get("hidden") and llm.get("ffn"):
            base = vision_tflops([int(n)] * len(per_layer), int(llm["hidden"]), int(llm["ffn"]))
            out["vision_flops_reduction"] = f"{1 - tflops / base:.4f}"
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.run_info:
        try:
            figures = realised_report(args.run_info, args.num_vision_tokens if args.num_vision_tokens != 576 else None)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for k, v in figures.items():
            print(f"{k}={v}")
        return 0
    if args.llm:
        L, d, m = LLM_SHAPES[args.llm]
    else:
        if None in (args.layers, args.hidden, args.ffn):
            print("error: give --llm or all of --layers/--hidden/--ffn", file=sys.stderr)
            return 2
        L, d, m = args.layers, args.hidden, args.ffn
    L = args.layers or L
    d, m = args.hidden or d, args.ffn or m
    try:
        if args.solve:
            red = _solve(args, L)
            print(f'schedule: REDUCTION_OVERRIDES="{_overrides_line(red)}"')
            counts = red.counts_per_layer(L, args.num_vision_tokens)
        elif args.counts is not None:
            counts = parse_counts(args.counts)
            check_counts(counts, L, args.num_vision_tokens)
        else:
            red = resolve_reduction(args.schedule, args.override).validate_for(L, args.num_vision_tokens)
            if red.data_dependent:
                print(red.describe(L, args.num_vision_tokens))
                raise ValueError(f"schedule {red.name!r} is data-dependent: give an evaluation run's realised figures "
                                 "with --run-info <answers>/merge.jsonl.run.json")
            counts = red.counts_per_layer(L, args.num_vision_tokens)
    except (ValueError, ReductionConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for k, v in report(counts, d, m, args.text_tokens, args.num_vision_tokens).items():
        print(f"{k}={v}")
    return 0


def _int_list(text: str | None, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in (text or "").split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated whole numbers") from None


def _solve(args: argparse.Namespace, num_layers: int) -> ReductionConfig:
    if args.target_avg is None or not args.prune_layers:
        raise ValueError("--solve needs --target-avg and --prune-layers")
    if not math.isfinite(args.target_avg):
        raise ValueError(f"--target-avg must be a finite number, got {args.target_avg}")
    prune = _int_list(args.prune_layers, "--prune-layers")
    tail = _int_list(args.tail, "--tail") if args.tail is not None else None
    solved = solve_keep_counts(args.target_avg, num_layers, args.inject, args.exit, prune, tail, args.num_vision_tokens)
    red = ReductionConfig(name=f"solved-{args.target_avg:g}", inject_layer=args.inject, prune_layers=prune,
                          keep_counts=solved.keep_counts, exit_layer=args.exit)
    return red.validate_for(num_layers, args.num_vision_tokens)


def _overrides_line(red: ReductionConfig) -> str:
    fields = [f"inject_layer={red.inject_layer}", f"prune_layers={','.join(map(str, red.prune_layers))}",
              f"keep_counts={','.join(map(str, red.keep_counts))}"]
    if red.exit_layer != NO_EXIT:
        fields.append(f"exit_layer={red.exit_layer}")
    return " ".join(fields)


if __name__ == "__main__":
    sys.exit(main())
