"""Which image patches survive each prune stage, drawn over the image the vision tower saw.

    python -m llava.analysis.kept_tokens --model-path CKPT --image IMG.jpg --question "What is on the table?" \
        --output-dir analysis/CKPT [--reduction tok64]
    python -m llava.analysis.kept_tokens --model-path CKPT --bench gqa --question-file Q --image-folder IMG \
        --index 3 --output-dir analysis/CKPT

Composition: a stage's ``keep`` [B, k] indexes into the survivors of the previous stage, so the original patch
index of a survivor is found by composing the stages: orig_0 = 0..N-1, orig_s = orig_{s-1}[keep_s].

Drawing: vision token j (after a CLS token, if the tower emits one) is patch (j // g, j % g) of the g x g grid
(g = sqrt(N)) laid over the *processed* image, i.e. the tower's input, de-normalised from the pixel values: with
LLaVA-1.5's ``image_aspect_ratio=pad`` the picture padded to a square with the processor's mean colour and resized
(``square``: resized and centre-cropped), exactly as the evaluation runner prepares it. Drawing over the original
image instead would misplace every patch of a non-square picture. Kept patches are shown in full colour, dropped
ones blended towards mid-grey (optionally hatched); each panel is titled "after layer p: k of N".

The drawing API is independent of the CLI (a web demo reuses it; no gradio here):
``kept_original_indices(stages)``, ``kept_patch_masks(stages, num_vision_tokens) -> [S, N] bool``,
``draw_kept_maps(image, masks, stage_titles) -> Figure``, ``kept_map_png_bytes(...) -> bytes`` and
``analyse_kept_tokens(loaded, image, question)`` that runs the model and returns all of it.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from llava.analysis.common import (
    AnalysisError,
    LoadedModel,
    build_parser,
    cli,
    encode_prompts,
    load_images,
    load_model,
    load_questions,
    new_figure,
    run_layers,
    run_metadata,
    save_outputs,
    token_masks,
)
from llava.model.reduction.config import ReductionConfig

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import Image

    from llava.model.decoder import Observer
    from llava.model.multimodal_inputs import MultimodalBatch
    from llava.model.token_state import TokenState

logger = logging.getLogger("llava.analysis.kept_tokens")

NAME = "kept_tokens"


class StageLike(Protocol):
    """What the composition reads from a ``llava.model.decoder.StageRecord``."""

    layer: int
    candidates: int
    keep: torch.Tensor  # [B, k] indices into the candidates


# --------------------------------------------------------------------------------------------------- masks
def kept_original_indices(stages: Sequence[StageLike], vision_valid: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Per stage, the original patch indices of its survivors, [B, k_s], ascending.

    A stage may carry ``keep_valid`` [B, k] (selections that keep fewer than k tokens in some rows pad ``keep``
    with filler slots); filler entries, and entries that pick a filler slot of an earlier stage, are -1.
    ``vision_valid`` [B, N] marks the slots that hold a token after the vision stage (local merging leaves
    merged-away slots empty): the others are -1 from the start, so no stage can count them as kept.
    """
    out: list[torch.Tensor] = []
    current: torch.Tensor | None = None  # [B, n] original indices of the current candidates (-1: filler)
    for s, st in enumerate(stages):
        keep = st.keep.long().cpu()  # [B, k]
        if current is None:
            current = torch.arange(st.candidates).unsqueeze(0).expand(keep.shape[0], -1)  # [B, N]
            if vision_valid is not None:
                current = torch.where(vision_valid.cpu(), current, torch.full_like(current, -1))
        if current.shape[1] != st.candidates:
            raise ValueError(f"stage {s} (layer {st.layer}) has {st.candidates} candidates but the previous stage "
                             f"kept {current.shape[1]}; the stages are not consecutive stages of one forward")
        current = torch.gather(current, 1, keep)  # [B, k] keep indexes into the previous survivors
        keep_valid = getattr(st, "keep_valid", None)
        if keep_valid is not None:
            current = torch.where(keep_valid.cpu(), current, torch.full_like(current, -1))
        out.append(current)
    return out


def kept_patch_masks(stages: Sequence[StageLike], num_vision_tokens: int, sample: int = 0,
                     vision_valid: torch.Tensor | None = None) -> torch.Tensor:
    """[S, N] bool: vision token j (original index) is still present after stage s, for batch row ``sample``."""
    masks = torch.zeros(len(stages), num_vision_tokens, dtype=torch.bool)
    for s, idx in enumerate(kept_original_indices(stages, vision_valid)):
        row = idx[sample]
        masks[s, row[row >= 0]] = True
    return masks


@dataclass
class KeptPanels:
    """What a kept-token map shows, one panel per stage: local merging in the tower first (when the schedule
    merges), then each prune stage. Every count is of real tokens, never of empty (merged-away) slots."""

    masks: torch.Tensor  # [P, N] bool
    titles: list[str]
    layers: list[int | None]  # the prune layer of each panel; None for the merging panel
    kept: list[int]  # tokens present after each panel's stage


def kept_panels(stages: Sequence[StageLike], num_vision_tokens: int, vision_valid: torch.Tensor | None = None,
                sample: int = 0) -> KeptPanels:
    """The panels of one sample. ``vision_valid`` [B, N]: the slots holding a token after local merging (pass it
    for schedules with ``local_merge``; None otherwise)."""
    N = num_vision_tokens
    masks = kept_patch_masks(stages, N, sample, vision_valid)
    layers: list[int | None] = [st.layer for st in stages]
    titles = [f"after layer {st.layer}" for st in stages]
    if vision_valid is not None:
        merged = vision_valid[sample].cpu().bool().unsqueeze(0)  # [1, N]
        masks = torch.cat([merged, masks], 0)
        layers.insert(0, None)
        titles.insert(0, "after local merging")
    kept = [int(m.sum()) for m in masks]
    return KeptPanels(masks, [f"{t}: {k} of {N}" for t, k in zip(titles, kept)], layers, kept)


def patch_grid(num_vision_tokens: int) -> tuple[int, int]:
    """(g, offset): tokens offset.. form a g x g grid; offset 1 when the tower's CLS token comes first."""
    for offset in (0, 1):
        g = math.isqrt(num_vision_tokens - offset)
        if g > 0 and g * g == num_vision_tokens - offset:
            return g, offset
    raise ValueError(f"{num_vision_tokens} vision tokens do not form a square patch grid (with or without a CLS token)")


# --------------------------------------------------------------------------------------------------- drawing
def processed_image(pixel_values: torch.Tensor, image_processor: Any) -> np.ndarray:
    """The tower's input [3, H, W] (normalised) -> [H, W, 3] float in [0, 1], undoing the processor's mean / std."""
    mean = torch.tensor(image_processor.image_mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(image_processor.image_std, dtype=torch.float32).view(3, 1, 1)
    rgb = pixel_values.detach().float().cpu() * std + mean  # [3, H, W]
    return rgb.clamp(0, 1).permute(1, 2, 0).numpy()


def _as_float_image(image: Image.Image | np.ndarray) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {arr.shape}")
    return arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else np.clip(arr.astype(np.float32), 0, 1)


def draw_kept_maps(
    image: Image.Image | np.ndarray,
    masks: torch.Tensor | np.ndarray,
    stage_titles: Sequence[str],
    *,
    dim: float = 0.35,
    hatch: bool = False,
    grid_lines: bool = True,
    ncols: int | None = None,
    suptitle: str | None = None,
) -> Figure:
    """One panel per stage over ``image`` (the processed image; PIL, uint8 or [0, 1] float [H, W, 3]).

    ``masks`` [S, N] bool marks the vision tokens present after each stage (``kept_patch_masks``). Dropped
    patches are blended towards mid-grey (``dim`` = share of the original kept), so both dark and bright
    regions visibly lose contrast; ``hatch`` adds diagonal hatching on them. With no stage (S = 0) the image is shown
    once with every patch kept.
    """
    img = _as_float_image(image)  # [H, W, 3]
    m = np.asarray(masks, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"masks must be [stages, vision tokens], got shape {m.shape}")
    if len(stage_titles) != m.shape[0]:
        raise ValueError(f"{len(stage_titles)} titles for {m.shape[0]} stages")
    N = m.shape[1]
    g, offset = patch_grid(N)
    if m.shape[0] == 0:
        m, stage_titles = np.ones((1, N), dtype=bool), [f"no prune stage: {N} of {N}"]
    H, W = img.shape[:2]
    # Patch of every pixel: row r of the image lies in patch row r * g // H (exact when g divides H).
    pix = (np.arange(H) * g // H)[:, None] * g + (np.arange(W) * g // W)[None, :]  # [H, W] patch index
    S = m.shape[0]
    ncols = ncols or min(S, 4)
    nrows = math.ceil(S / ncols)
    fig = new_figure(3.2 * ncols, 3.4 * nrows + (0.6 if suptitle else 0))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    grey = np.float32(0.5)
    for s, ax in enumerate(axes):
        if s >= S:
            ax.set_visible(False)
            continue
        keep_px = m[s, offset:][pix]  # [H, W] bool
        shown = np.where(keep_px[..., None], img, dim * img + (1 - dim) * grey)
        ax.imshow(shown, extent=(0, W, H, 0), interpolation="nearest")
        if hatch:
            from matplotlib.patches import Rectangle

            ph, pw = H / g, W / g
            for p in np.flatnonzero(~m[s, offset:]):
                ax.add_patch(Rectangle(((p % g) * pw, (p // g) * ph), pw, ph, fill=False, hatch="///",
                                       edgecolor=(0.3, 0.3, 0.3, 0.6), lw=0))
        if grid_lines:
            for t in range(1, g):
                ax.axhline(t * H / g, color="white", lw=0.3, alpha=0.5)
                ax.axvline(t * W / g, color="white", lw=0.3, alpha=0.5)
        ax.set_title(stage_titles[s], fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if suptitle:
        # Schedule names with overrides get long: wrap to the figure's width instead of clipping.
        lines = [part for line in suptitle.splitlines() for part in textwrap.wrap(line, width=40 * ncols) or [""]]
        fig.suptitle("\n".join(lines), fontsize=9)
    return fig


def kept_map_png_bytes(
    image: Image.Image | np.ndarray,
    masks: torch.Tensor | np.ndarray,
    stage_titles: Sequence[str],
    dpi: int = 110,
    **kw: Any,
) -> bytes:
    """``draw_kept_maps`` rendered to PNG bytes (for a web page or an API response)."""
    fig = draw_kept_maps(image, masks, stage_titles, **kw)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def stage_titles(stages: Sequence[StageLike], num_vision_tokens: int, sample: int = 0,
                 vision_valid: torch.Tensor | None = None) -> list[str]:
    """ "after layer p: k of N" per stage, k counted for batch row ``sample`` (rows may keep different counts)."""
    kept = [int((idx[sample] >= 0).sum()) for idx in kept_original_indices(stages, vision_valid)]
    return [f"after layer {st.layer}: {k} of {num_vision_tokens}" for st, k in zip(stages, kept)]


# --------------------------------------------------------------------------------------------------- model run
@dataclass
class KeptTokens:
    image: np.ndarray  # [H, W, 3] float, the processed image the tower saw
    masks: torch.Tensor  # [P, N] bool, one panel per stage (local merging first, when the schedule merges)
    titles: list[str]
    stage_layers: list[int | None]  # the prune layer of each panel; None: local merging in the tower
    kept_indices: list[list[int]]  # per panel, original patch indices of the real tokens present after it
    vision_tokens_per_layer: list[int]  # vision tokens present at each layer 1..L in this forward
    realised_avg_vision_tokens: float  # their mean over the L layers
    schedule: ReductionConfig
    # the same per layer, but a prune layer counts its survivors (MustDrop's counter; docs/Baselines.md)
    vision_tokens_per_layer_after_filter: list[int] = field(default_factory=list)

    @property
    def realised_avg_vision_tokens_after_filter(self) -> float:
        counts = self.vision_tokens_per_layer_after_filter
        return sum(counts) / len(counts) if counts else 0.0


def analyse_kept_tokens(
    loaded: LoadedModel, image: Image.Image, question: str, schedule: ReductionConfig | None = None
) -> KeptTokens:
    """Runs the language model once on (image, question) under ``schedule`` (default: the loaded one)."""
    schedule = schedule or loaded.schedule
    N = loaded.num_vision_tokens
    prompts = encode_prompts(loaded, [question], [image])
    counts: list[int] = []

    def make(mm: MultimodalBatch) -> Observer:
        def observe(i: int, layer: torch.nn.Module, state: TokenState, layer_input: torch.Tensor) -> None:
            counts.append(int(token_masks(state).vision[0].sum()))  # vision tokens this layer ran on

        return observe

    out, mm = run_layers(loaded.model, prompts, schedule, make)
    panels = kept_panels(out.stages, N, mm.vision_valid if schedule.local_merge else None)
    kept_indices = [torch.nonzero(m).flatten().tolist() for m in panels.masks]
    after_filter = list(counts)
    for layer, idx in zip(panels.layers, kept_indices):
        if layer is not None:  # a prune layer: its survivors (real tokens), not its candidates
            after_filter[layer - 1] = len(idx)
    return KeptTokens(
        image=processed_image(prompts.images[0], loaded.image_processor),
        masks=panels.masks,
        titles=panels.titles,
        stage_layers=panels.layers,
        kept_indices=kept_indices,
        vision_tokens_per_layer=counts,
        realised_avg_vision_tokens=sum(counts) / len(counts),
        schedule=schedule,
        vision_tokens_per_layer_after_filter=after_filter,
    )


# --------------------------------------------------------------------------------------------------- CLI
def build_arg_parser() -> argparse.ArgumentParser:
    p = build_parser(f"llava.analysis.{NAME}", "Kept vision patches per prune stage, drawn over the image.",
                     default_reduction="checkpoint", questions_required=False)
    p.add_argument("--image", default=None, help="image file (with --question)")
    p.add_argument("--question", default=None, help="question text, asked as is (with --image)")
    p.add_argument("--index", type=int, default=0, help="with --question-file: which image question (0-based)")
    p.add_argument("--hatch", action="store_true", help="hatch dropped patches as well as dimming them")
    return p


def _pick_input(args: argparse.Namespace) -> tuple[Image.Image, str, dict[str, Any]]:
    """(image, question text, description for the JSON) from --image/--question or --question-file/--index."""
    from llava.mm_utils import load_image

    if args.image or args.question:
        if not (args.image and args.question):
            raise AnalysisError("--image and --question go together (or use --question-file with --index)")
        if not os.path.isfile(args.image):
            raise AnalysisError(f"--image {args.image!r}: image file not found")
        return load_image(args.image), args.question, {"image": os.path.abspath(args.image), "question": args.question}
    if not args.question_file:
        raise AnalysisError("give --image and --question, or --question-file (with --image-folder and --index)")
    # --index picks among all image questions of the file, whatever --limit says.
    adapter, questions = load_questions(argparse.Namespace(**{**vars(args), "limit": None}), need_images=True)
    if not 0 <= args.index < len(questions):
        raise AnalysisError(f"--index {args.index} out of range: {args.question_file} has {len(questions)} image "
                            f"question(s) (0..{len(questions) - 1})")
    q = questions[args.index]
    image = load_images(adapter, [q], args.image_folder)[0]
    return image, q.text, {"image": q.image or "(embedded)", "question": q.text, "question_id": q.qid,
                           "index": args.index}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_arg_parser().parse_args(argv)
    image, question, source = _pick_input(args)
    loaded = load_model(args)
    L, N = loaded.num_layers, loaded.num_vision_tokens
    res = analyse_kept_tokens(loaded, image, question)
    g, offset = patch_grid(N)
    if all(layer is None for layer in res.stage_layers):
        logger.warning("schedule '%s' has no prune stage: every %s is kept until exit", res.schedule.name,
                       "token left by local merging" if res.stage_layers else "patch")
    logger.info("realised average vision tokens %.2f of %d over %d layers (%.2f counting each prune layer after its "
                "filter; schedule '%s')", res.realised_avg_vision_tokens, N, L,
                res.realised_avg_vision_tokens_after_filter, res.schedule.name)
    result: dict[str, Any] = {
        "tool": NAME,
        **run_metadata(args, loaded, res.schedule, 1),
        **source,
        "patch_grid": {"size": g, "cls_token_first": bool(offset),
                       "drawn_over": "processed image (padded to square, resized, cropped; de-normalised)"},
        # one entry per stage; "layer": null is local merging in the tower (schedules with local_merge)
        "stages": [{"layer": layer, "kept": len(idx), "of": N, "kept_patches": idx}
                   for layer, idx in zip(res.stage_layers, res.kept_indices)],
        "vision_tokens_per_layer": res.vision_tokens_per_layer,
        "realised_avg_vision_tokens": res.realised_avg_vision_tokens,
        "vision_tokens_per_layer_after_filter": res.vision_tokens_per_layer_after_filter,
        "realised_avg_vision_tokens_after_filter": res.realised_avg_vision_tokens_after_filter,
        "scheduled_avg_vision_tokens": None if res.schedule.data_dependent else res.schedule.average_vision_tokens(L, N),
    }
    fig = draw_kept_maps(res.image, res.masks, res.titles, hatch=args.hatch,
                         suptitle=f"schedule '{res.schedule.name}': {question.splitlines()[0][:80]}\n"
                         f"realised average {res.realised_avg_vision_tokens:.2f} of {N} vision tokens per layer "
                         f"({res.realised_avg_vision_tokens_after_filter:.2f} after each prune layer's filter)")
    save_outputs(args.output_dir, NAME, result, fig)
    return result


if __name__ == "__main__":
    cli(main)
