"""Inter-Layer Visual Attention Similarity (paper, section 3.2, Fig. 6 and Fig. 9): where to prune.

    python -m llava.analysis.ilvas --model-path CKPT --bench gqa --question-file Q --image-folder IMG \
        --limit 200 --output-dir analysis/CKPT [--inject 9 --exit 25] [--ks 5,10,20,50,100,200] [--ns 4,8]

Head-wise attention vector: at layer l, vision token i gets A_i^l in R^H, the attention it receives in each head
from the scoring query rows, averaged over those rows (``head_attention_to_vision`` with layer l's own q / k
projections on layer l's input: same-layer attention). The query rows are the schedule's ``score_query`` rows; at
inference that is the last prompt token (``--reduction-override score_query=all_text`` uses every text token after
the image); ``score_weight=l2`` weights each key by its value norm, as the pruning scorer can.

    ILVAS(l, l+n, K) = 1/K * sum over i in V_K^l of cos(A_i^l, A_i^{l+n})

where V_K^l are the K vision tokens with the highest head-mean attention at layer l (ties to the lower index, as
the pruning top-k). It is computed per sample and averaged over samples.

Model: late injection and early exit, no pruning (paper, App. F.5), so every vision token exists at l and l+n.
The window is the loaded schedule's own inject / exit (the checkpoint's, or ``--reduction`` / overrides), or
``--inject`` / ``--exit``; its prune stages are dropped. A curve covers the layers l with both l and l+n in
[inject, exit - 1].

Filter layers: the interior local maxima (``llava.analysis.common.local_maxima``: the first and last layer of a
curve never count, a flat top counts once) of one curve, by default the middle K of those that fit (the lower
middle for an even count: 20 of 5..200) and the smallest n (``--select-k``, ``--select-n``). With ``--combine
vote`` a layer counts when it is a local maximum of at least half of all the (K, n) curves, which keeps only
maxima that agree across K and n. Pruning "at layer l" then keeps the most attended tokens after layer l, so the
maxima are the ``prune_layers`` directly. The line ``REDUCTION_OVERRIDES="prune_layers=..."`` is printed for the
training and evaluation scripts; ``keep_counts`` must be given with the same number of entries.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from llava.analysis.common import (
    AnalysisError,
    batched,
    build_parser,
    cli,
    encode_prompts,
    finite_or_none,
    int_list,
    load_images,
    load_model,
    load_questions,
    local_maxima,
    new_figure,
    run_layers,
    run_metadata,
    save_outputs,
)
from llava.model.reduction.config import ReductionConfig
from llava.model.reduction.scoring import head_attention_to_vision
from llava.model.reduction.topk import hard_topk

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from llava.model.decoder import Observer
    from llava.model.multimodal_inputs import MultimodalBatch
    from llava.model.token_state import TokenState

logger = logging.getLogger("llava.analysis.ilvas")

NAME = "ilvas"
DEFAULT_KS = "5,10,20,50,100,200"
DEFAULT_NS = "4,8"


def build_arg_parser() -> argparse.ArgumentParser:
    p = build_parser(f"llava.analysis.{NAME}", "ILVAS curves and filter layers (paper Fig. 6 / 9).",
                     default_reduction="checkpoint")
    p.add_argument("--inject", type=int, default=None, help="injection layer of the window (default: the schedule's)")
    p.add_argument("--exit", type=int, default=None, help="exit layer of the window (default: the schedule's)")
    p.add_argument("--ks", default=DEFAULT_KS, help=f"top-K sizes (default {DEFAULT_KS}); K > N_vis is skipped")
    p.add_argument("--ns", default=DEFAULT_NS, help=f"layer distances n (default {DEFAULT_NS}; tiny models: 1,2)")
    p.add_argument("--select-k", type=int, default=None, help="K of the curve whose maxima are printed")
    p.add_argument("--select-n", type=int, default=None, help="n of the curve whose maxima are printed")
    p.add_argument("--combine", choices=("single", "vote"), default="single",
                   help="single: maxima of the selected curve; vote: maxima shared by at least half of all curves")
    return p


def window_schedule(base: ReductionConfig, num_layers: int, inject: int | None, exit_: int | None) -> ReductionConfig:
    """Late injection and early exit of ``base`` (or the flags), no pruning; scoring / positions stay ``base``'s."""
    inject = base.inject_layer if inject is None else inject
    exit_ = base.resolved_exit(num_layers) if exit_ is None else exit_
    if not 1 <= inject <= num_layers:
        raise AnalysisError(f"--inject {inject} out of range: the model has layers 1..{num_layers}")
    if not inject < exit_ <= num_layers + 1:
        raise AnalysisError(f"--exit {exit_} out of range: it must lie in {inject + 1}..{num_layers + 1} "
                            f"(after the injection layer {inject}; {num_layers + 1} = never exit)")
    return ReductionConfig(
        name=f"ilvas-window-{inject}-{exit_}", inject_layer=inject, exit_layer=exit_,
        score_query=base.score_query, score_weight=base.score_weight, score_layer=base.score_layer,
        position_scheme=base.position_scheme,
    )


def ilvas_per_sample(att_l: torch.Tensor, att_ln: torch.Tensor, k: int) -> torch.Tensor:
    """ILVAS(l, l+n, K) per sample from head-wise attention at l and l+n, both [B, H, N_vis] -> [B]."""
    top = hard_topk(att_l.mean(dim=1), k)  # [B, K] the K most attended tokens at layer l (head mean)
    cos = F.cosine_similarity(att_l, att_ln, dim=1)  # [B, N_vis] cosine of each token's head vector over heads
    return torch.gather(cos, 1, top).mean(dim=1)  # [B]


def head_attention_observer(
    model: torch.nn.Module, store: dict[int, torch.Tensor], weight: str
) -> Callable[[MultimodalBatch], Observer]:
    """Observer factory recording, at every layer with vision, the head-wise attention [B, H, N_vis] (fp32)."""
    rotary = model.model.rotary_emb

    def make(mm: MultimodalBatch) -> Observer:
        def observe(i: int, layer: torch.nn.Module, state: TokenState, layer_input: torch.Tensor) -> None:
            if state.num_vision == 0:
                return
            # Same-layer attention: layer i's projections on layer i's input; the token set is the input's
            # (the observer runs before any prune after layer i).
            store[i] = head_attention_to_vision(layer, rotary, state, mm.query_text_index, mm.query_valid,
                                                hidden=layer_input, weight=weight).float()  # [B, H, N_vis]

        return observe

    return make


def select_layers(curves: list[dict[str, Any]], combine: str, k: int, n: int) -> list[int]:
    if combine == "single":
        return next(c["local_maxima"] for c in curves if c["k"] == k and c["n"] == n)
    votes: dict[int, int] = {}
    usable = [c for c in curves if c["layers"]]
    for c in usable:
        for layer in c["local_maxima"]:
            votes[layer] = votes.get(layer, 0) + 1
    need = math.ceil(len(usable) / 2)
    return sorted(layer for layer, v in votes.items() if v >= need)


def plot(curves: list[dict[str, Any]], ks: list[int], ns: list[int], selected: dict[str, Any], title: str) -> Figure:
    from matplotlib.ticker import MaxNLocator

    ncols = min(3, len(ks))
    nrows = math.ceil(len(ks) / ncols)
    fig = new_figure(4.2 * ncols, 3.2 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    markers = "osd^v<>"
    for ax, k in zip(axes, ks):
        for j, n in enumerate(ns):
            c = next(c for c in curves if c["k"] == k and c["n"] == n)
            if not c["layers"]:
                continue
            line, = ax.plot(c["layers"], c["ilvas"], marker=markers[j % len(markers)], ms=3, label=f"n={n}")
            peaks = [(x, v) for x, v in zip(c["layers"], c["ilvas"]) if x in c["local_maxima"]]
            if peaks:
                ax.scatter(*zip(*peaks), s=60, facecolors="none", edgecolors=line.get_color(), zorder=3)
        if selected["combine"] == "vote" or k == selected["k"]:
            for x in selected["prune_layers"]:
                ax.axvline(x, color="gray", ls="--", lw=1)
        ax.set_title(f"top-K = {k}" + (" (selected)" if selected["combine"] == "single" and k == selected["k"] else ""),
                     fontsize=9)
        ax.set_xlabel("layer l")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("ILVAS(l, l+n, K)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(ks):]:
        ax.set_visible(False)
    fig.suptitle(f"{title}\nfilter layers (circles: local maxima, dashed: selected): {selected['prune_layers']}",
                 fontsize=9)
    return fig


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_arg_parser().parse_args(argv)
    ks_req, ns = int_list(args.ks, "--ks"), sorted(set(int_list(args.ns, "--ns")))
    if min(ks_req) < 1:
        raise AnalysisError(f"--ks {args.ks}: every K must be >= 1")
    if min(ns) < 1:
        raise AnalysisError(f"--ns {args.ns}: every n must be >= 1")
    adapter, questions = load_questions(args, need_images=True)
    loaded = load_model(args)
    L, N = loaded.num_layers, loaded.num_vision_tokens
    schedule = window_schedule(loaded.schedule, L, args.inject, args.exit)
    exit_ = schedule.resolved_exit(L)
    vision_layers = list(range(schedule.inject_layer, exit_))
    if schedule.inject_layer == 1 and exit_ == L + 1:
        logger.info("the window has no late injection or early exit (schedule '%s'): curves cover every layer; "
                    "the paper measures on a model with both (--inject / --exit)", loaded.schedule.name)

    ks = sorted({k for k in ks_req if k <= N})
    skipped_k = [{"k": k, "reason": f"K > {N} vision tokens"} for k in sorted(set(ks_req)) if k > N]
    for s in skipped_k:
        logger.warning("skipping K=%d: the model has only %d vision tokens", s["k"], N)
    if not ks:
        raise AnalysisError(f"--ks {args.ks}: every K exceeds the {N} vision tokens of this model")
    pairs = {n: [layer for layer in vision_layers if layer + n < exit_] for n in ns}
    skipped_n = [{"n": n, "reason": f"no layer l with l and l+{n} in the vision window "
                  f"{schedule.inject_layer}..{exit_ - 1}"} for n in ns if not pairs[n]]
    if len(skipped_n) == len(ns):
        raise AnalysisError(f"--ns {args.ns}: every n is too large for the vision window "
                            f"{schedule.inject_layer}..{exit_ - 1} ({len(vision_layers)} layers)")
    for s in skipped_n:
        logger.warning("skipping n=%d: %s", s["n"], s["reason"])
    ns_used = [n for n in ns if pairs[n]]
    sel_k = ks[(len(ks) - 1) // 2] if args.select_k is None else args.select_k
    sel_n = ns_used[0] if args.select_n is None else args.select_n
    if sel_k not in ks:
        raise AnalysisError(f"--select-k {sel_k} is not one of the computed K values {ks}")
    if sel_n not in ns_used:
        raise AnalysisError(f"--select-n {sel_n} is not one of the computed n values {ns_used}")

    logger.info("%s on %d samples; window %s", NAME, len(questions), schedule.describe(L, N))
    sums = {(k, n): torch.zeros(len(pairs[n]), dtype=torch.float64) for k in ks for n in ns_used}
    for batch in tqdm(list(batched(questions, args.batch_size)), desc=NAME, unit="batch"):
        images = load_images(adapter, batch, args.image_folder)
        prompts = encode_prompts(loaded, [q.text for q in batch], images)
        store: dict[int, torch.Tensor] = {}
        run_layers(loaded.model, prompts, schedule, head_attention_observer(loaded.model, store, schedule.score_weight))
        for n in ns_used:
            for j, layer in enumerate(pairs[n]):
                for k in ks:
                    sums[(k, n)][j] += float(ilvas_per_sample(store[layer], store[layer + n], k).double().sum())

    curves = []
    for k in ks:
        for n in ns:
            layers = pairs[n]
            values = [finite_or_none(v) for v in (sums[(k, n)] / len(questions)).tolist()] if n in ns_used else []
            curves.append({"k": k, "n": n, "layers": layers, "ilvas": values,
                           "local_maxima": local_maxima(layers, values)})
    prune_layers = select_layers(curves, args.combine, sel_k, sel_n)
    selected = {"combine": args.combine, "k": sel_k, "n": sel_n, "prune_layers": prune_layers}
    line = f'REDUCTION_OVERRIDES="prune_layers={",".join(str(x) for x in prune_layers)}"' if prune_layers else None
    if line:
        print(line)
        logger.info("filter layers %s (%s); pass keep_counts with %d entries too", prune_layers,
                    f"K={sel_k}, n={sel_n}" if args.combine == "single" else "vote", len(prune_layers))
    else:
        logger.warning("the selected curve has no interior local maximum; no filter layers suggested")
    result: dict[str, Any] = {
        "tool": NAME,
        **run_metadata(args, loaded, schedule, len(questions)),
        "window": {"inject_layer": schedule.inject_layer, "exit_layer": exit_, "vision_layers": vision_layers},
        "attention": f"same-layer head-wise attention from the '{schedule.score_query}' query rows, "
        f"weight '{schedule.score_weight}'",
        "ks": ks,
        "ns": ns_used,
        "skipped": skipped_k + skipped_n,
        "curves": curves,
        "selection": selected,
        "reduction_overrides": line,
    }
    title = (f"{os.path.basename(os.path.normpath(args.model_path))}: ILVAS, vision on layers "
             f"{schedule.inject_layer}..{exit_ - 1}, {len(questions)} {args.bench} samples")
    save_outputs(args.output_dir, NAME, result, plot(curves, ks, ns_used, selected, title))
    return result


if __name__ == "__main__":
    cli(main)
