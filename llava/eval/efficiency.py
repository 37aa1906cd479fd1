"""Efficiency accounting: average vision tokens and the paper's vision FLOPs (Table 2).

Per layer, a block with n tokens costs 4 n d^2 + 2 n^2 d + 3 n d m FLOPs (paper, section 4.1: attention
projections, attention, SwiGLU FFN). ``vision_tflops`` sums it over layers with n = vision tokens present at the
layer's input; with ``--text-tokens`` the same formula is also applied to the whole sequence (text + vision).

    python -m llava.eval.efficiency --llm vicuna-7b --schedule tok64
    python -m llava.eval.efficiency --layers 32 --hidden 4096 --ffn 11008 --counts 576x8,288x8,144x8,72x8
"""

from __future__ import annotations

import argparse
import sys

from llava.model.reduction.config import PRESETS, ReductionConfigError, resolve_reduction

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


def parse_counts(spec: str) -> list[int]:
    """``576x8,288x8`` -> [576]*8 + [288]*8; plain integers are single layers."""
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        n, _, rep = part.partition("x")
        try:
            out += [int(n)] * (int(rep) if rep else 1)
        except ValueError:
            raise ValueError(f"bad --counts entry {part!r}; expected N or NxLAYERS") from None
    return out


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.eval.efficiency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm", choices=sorted(LLM_SHAPES), help="named LLM shape")
    p.add_argument("--layers", type=int)
    p.add_argument("--hidden", type=int)
    p.add_argument("--ffn", type=int)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--schedule", help=f"reduction preset: {', '.join(sorted(PRESETS))}")
    g.add_argument("--counts", help="explicit vision tokens per layer, e.g. 576x8,288x8,144x8,72x8")
    p.add_argument("--override", nargs="*", default=[], help="single-field schedule overrides, key=value")
    p.add_argument("--num-vision-tokens", type=int, default=576)
    p.add_argument("--text-tokens", type=int, help="also print whole-sequence FLOPs for this many text tokens")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
        if args.counts:
            counts = parse_counts(args.counts)
            if len(counts) != L:
                raise ValueError(f"--counts describes {len(counts)} layers but the model has {L} layers")
        else:
            red = resolve_reduction(args.schedule, args.override).validate_for(L, args.num_vision_tokens)
            counts = red.counts_per_layer(L, args.num_vision_tokens)
    except (ValueError, ReductionConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for k, v in report(counts, d, m, args.text_tokens, args.num_vision_tokens).items():
        print(f"{k}={v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
