"""Efficiency accounting: average vision tokens and the paper's vision FLOPs (Table 2).

Per layer, a block with n tokens costs 4 n d^2 + 2 n^2 d + 3 n d m FLOPs (paper, section 4.1: attention
projections, attention, SwiGLU FFN). ``vision_tflops`` sums it over layers with n = vision tokens present at the
layer's input; with ``--text-tokens`` the same formula is also applied to the whole sequence (text + vision).

    python -m llava.eval.efficiency --llm vicuna-7b --schedule tok64
    python -m llava.eval.efficiency --llm vicuna-7b --schedule voco-64 --text-tokens 100

VoCo-LLaMA schedules (``voco-*``) print two token counts: ``visible_vision_tokens`` (the N VoCo tokens the text
sees, the budget they are compared at) and ``avg_vision_tokens`` / ``processed_vision_tokens`` (576 + N: every layer
runs the image and its VoCo tokens while compressing; ``vision_tflops`` is that one-pass cost). A question about an
image already compressed (``--reuse-image-cache``, the chat's follow-up turns) runs none of it:
``reuse_vision_tflops=0``, and with ``--text-tokens`` ``reuse_total_tflops`` is the whole question against the N
cached keys, next to ``total_tflops`` for one pass.
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

from llava.model.reduction.config import (
    COUNT_CONVENTIONS,
    NO_EXIT,
    PRESETS,
    ReductionConfig,
    ReductionConfigError,
    parse_overrides,
    resolve_reduction,
)
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


def cached_reuse_tflops(num_layers: int, cached_tokens: int, text_tokens: int, hidden: int, ffn: int) -> float:
    """A question answered against a cached compressed image (VoCo's two-pass path): only the ``text_tokens`` run,
    each layer's attention also reading ``cached_tokens`` cached keys and values (the per-layer formula with n text
    queries over n + cached keys: 4 n d^2 + 2 n (n + cached) d + 3 n d m)."""
    n = text_tokens
    return num_layers * (4 * n * hidden * hidden + 2 * n * (n + cached_tokens) * hidden + 3 * n * hidden * ffn) / 1e12


def compression_figures(red: ReductionConfig, num_layers: int, num_vision: int, text_tokens: int | None,
                        hidden: int, ffn: int) -> dict[str, str]:
    """VoCo's two counts and two costs: the N tokens the text sees and the 576 + N every layer processes while
    compressing (one pass, the ``vision_tflops`` above), and what a question about an already compressed image
    costs (nothing of the image runs again: its vision TFLOPs are 0; with --text-tokens the whole question)."""
    out = {
        "visible_vision_tokens": f"{red.average_visible_tokens(num_layers, num_vision):.2f}",
        "processed_vision_tokens": f"{red.average_vision_tokens(num_layers, num_vision):.2f}",
        "reuse_vision_tflops": "0.00",
    }
    if text_tokens is not None:
        out["reuse_total_tflops"] = f"{cached_reuse_tflops(num_layers, red.compress_tokens, text_tokens, hidden, ffn):.4f}"
    return out


def decode_token_flops(context: int, hidden: int, ffn: int) -> float:
    """One new token through one layer, attending to ``context`` cached tokens (the block formula with one query:
    4 d^2 + 2 context d + 3 d m)."""
    return 4 * hidden * hidden + 2 * context * hidden + 3 * hidden * ffn


def twig_figures(twig_after: int, twig_layers: int, num_vision: int, text_tokens: int | None, hidden: int, ffn: int,
                 drafts_per_token: float | None = None) -> dict[str, str]:
    """TwigVLM's extra compute, which the schedule's average tokens do not count (its R-bar leaves the twig out).

    - prefill: the twig's T layers run on every token after base layer K, the whole image included
      (``twig_prefill_vision_tflops``: the vision tokens' share, comparable to ``vision_tflops``; with
      ``--text-tokens`` also the whole sequence, ``twig_prefill_tflops``);
    - drafting: each drafted token runs base layers 1..K and the twig's T layers against every prompt token
      (``draft_tflops_per_draft``); times the drafted tokens per generated token of a run (``--drafts-per-token``,
      printed by ``--run-info`` of a speculative run) it is the extra per generated token. The LM heads are not in
      the paper's per-layer formula and are not counted here either.
    """
    context = num_vision + (text_tokens or 0)
    out = {
        "twig": f"{twig_layers} layers after layer {twig_after}",
        "twig_prefill_vision_tflops": f"{twig_layers * block_flops(num_vision, hidden, ffn) / 1e12:.4f}",
    }
    if text_tokens is not None:
        out["twig_prefill_tflops"] = f"{twig_layers * block_flops(context, hidden, ffn) / 1e12:.4f}"
    per_draft = (twig_after + twig_layers) * decode_token_flops(context, hidden, ffn) / 1e12
    out["draft_tflops_per_draft"] = f"{per_draft:.6f}"
    if drafts_per_token is not None:
        out["draft_tflops_per_generated_token"] = f"{per_draft * drafts_per_token:.6f}"
    return out


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
    p.add_argument("--count-convention", choices=COUNT_CONVENTIONS, default="entering",
                   help="--solve: how --target-avg counts a prune layer: 'entering' (its input, this project's and "
                        "the paper's averages) or 'after_filter' (its survivors, MustDrop's counter)")
    p.add_argument("--override", nargs="*", default=[], help="single-field schedule overrides, key=value")
    p.add_argument("--num-vision-tokens", type=positive, default=576)
    p.add_argument("--text-tokens", type=non_negative, help="also print whole-sequence FLOPs for this many text tokens")
    p.add_argument("--twig-layers", type=non_negative, default=None,
                   help="TwigVLM: the twig's depth T (default 3 for a schedule scored by the twig, else no twig); its "
                        "extra prefill and drafting FLOPs are printed")
    p.add_argument("--twig-after", type=positive, default=None,
                   help="TwigVLM: the base layer K the twig reads (default: the twig schedule's prune layer, else 2)")
    p.add_argument("--drafts-per-token", type=float, default=None,
                   help="drafted tokens per generated token of a speculative run (its --run-info prints it)")
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
    after = info.get("realised_vision_tokens_after_filter_per_layer")
    if after:  # MustDrop's counter: a prune layer counts its survivors (docs/Baselines.md)
        out["avg_vision_tokens_after_filter"] = f"{sum(after) / len(after):.2f}"
        out["vision_tokens_after_filter_per_layer"] = ",".join(f"{x:.2f}" for x in after)
    else:
        out["avg_vision_tokens_after_filter"] = "not recorded (answers written before this count existed)"
    spec = info.get("speculative_stats")
    if spec:  # a --speculative twig run: what the draft cost and how much of it the base kept
        decoded = max(int(spec.get("new_tokens", 0)) - int(spec.get("answers", 0)), 0)
        out["speculative_acceptance_rate"] = "n/a" if spec.get("acceptance_rate") is None else f"{spec['acceptance_rate']:.4f}"
        out["speculative_tokens_per_second"] = ("n/a" if spec.get("tokens_per_second") is None
                                                else f"{spec['tokens_per_second']:.2f}")
        out["drafts_per_token"] = f"{spec.get('drafted', 0) / decoded:.4f}" if decoded else "n/a"
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
    red = None
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
    figures = report(counts, d, m, args.text_tokens, args.num_vision_tokens)
    if red is not None:  # the same schedule by MustDrop's counter: a prune layer counts its survivors
        figures["avg_vision_tokens_after_filter"] = (
            f"{red.average_vision_tokens(L, args.num_vision_tokens, 'after_filter'):.2f}")
    if red is not None and red.compress_tokens:
        figures.update(compression_figures(red, L, args.num_vision_tokens, args.text_tokens, d, m))
    twig_scored = red is not None and red.score_layer == "twig"
    twig_layers = args.twig_layers if args.twig_layers is not None else (3 if twig_scored else 0)
    if twig_layers:
        twig_after = args.twig_after or (red.prune_layers[0] if twig_scored else 2)
        figures.update(twig_figures(twig_after, twig_layers, args.num_vision_tokens, args.text_tokens, d, m,
                                    args.drafts_per_token))
    for k, v in figures.items():
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
    inject, exit_, rest = _solve_overrides(args)
    solved = solve_keep_counts(args.target_avg, num_layers, inject, exit_, prune, tail, args.num_vision_tokens,
                               args.count_convention)
    red = ReductionConfig(name=f"solved-{args.target_avg:g}", inject_layer=inject, prune_layers=prune,
                          keep_counts=solved.keep_counts, exit_layer=exit_)
    if rest:  # fields that do not change the counts (scoring, top-k mode, positions, ...) go into the schedule
        red = red.with_overrides(rest)
    return red.validate_for(num_layers, args.num_vision_tokens)


def _solve_overrides(args: argparse.Namespace) -> tuple[int, int, dict]:
    """(inject layer, exit layer, the other override fields) of ``--solve``: ``inject_layer`` / ``exit_layer``
    overrides set the layout the solver fills (like --inject / --exit); the counts are the solver's own."""
    fields = parse_overrides(split_overrides(args.override))  # unknown fields and bad values are errors
    for key, flag in (("prune_layers", "--prune-layers"), ("keep_counts", "--target-avg (the solver computes them)")):
        if key in fields:
            raise ValueError(f"--override {key}=... does not go with --solve: use {flag}")
    layout = {}
    for key, flag, value, default in (("inject_layer", "--inject", args.inject, 1),
                                      ("exit_layer", "--exit", args.exit, NO_EXIT)):
        layout[key] = value
        if key in fields:
            if value != default and value != fields[key]:
                raise ValueError(f"--override {key}={fields[key]} contradicts {flag} {value}")
            layout[key] = fields.pop(key)
    if fields.get("selection") == "dual_attention" or fields.get("local_merge"):
        raise ValueError("--override: the solver finds keep counts of top-k schedules; selection=dual_attention and "
                         "local_merge keep a data-dependent number of tokens")
    return layout["inject_layer"], layout["exit_layer"], fields


def split_overrides(values: list[str]) -> list[str]:
    """``--override`` values, each possibly holding several space-separated ``key=value`` pairs."""
    return [item for value in values for item in value.split()]


def _overrides_line(red: ReductionConfig) -> str:
    fields = [f"inject_layer={red.inject_layer}", f"prune_layers={','.join(map(str, red.prune_layers))}",
              f"keep_counts={','.join(map(str, red.keep_counts))}"]
    if red.exit_layer != NO_EXIT:
        fields.append(f"exit_layer={red.exit_layer}")
    defaults = ReductionConfig().to_dict()
    layout = {"name", "inject_layer", "prune_layers", "keep_counts", "exit_layer"}
    for key, value in red.to_dict().items():  # --override fields given to --solve
        if key not in layout and value != defaults[key]:
            fields.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    return " ".join(fields)


if __name__ == "__main__":
    sys.exit(main())
