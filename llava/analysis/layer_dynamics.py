"""Layer-wise representational dynamics (paper, section 2 and Fig. 2): where to inject vision.

    python -m llava.analysis.layer_dynamics --model-path CKPT --bench gqa --question-file Q --image-folder IMG \
        --limit 200 --batch-size 8 --output-dir analysis/CKPT [--reference-image PATH] [--reduction off]

Per layer l (1-based) and sample:

- ``S_intra^M(l)``: mean over the valid tokens of modality M (vision, text) of cos(h_t^{l-1}, h_t^l), the cosine
  between token t's hidden state before and after layer l (h^0 is the embedding input). It is the paper's
  "consecutive layers" similarity, indexed by the layer that does the change: low means layer l rewrites the
  tokens.
- ``S_cross(l)``: 1 - mean over the instruction tokens of cos(H_t^l(image), H_t^l(reference)), the same prompt
  run once with the sample's image and once with a fixed reference image. Instruction tokens are the prompt's
  text tokens after the image (the question, the suffix and "ASSISTANT:"); the system prompt before the image
  cannot attend to it, so its cosine is 1 by construction and would only dilute the measure. The cosine is taken
  per token and averaged (rather than over the flattened matrix), so a few massive-norm tokens cannot dominate.

Both are averaged over samples (each sample weighs the same, as in the paper's formulas). The reference image
defaults to a uniform mid-grey (RGB 128, 128, 128) image: it carries no content, so S_cross measures how much
the sample's actual picture moves the instruction tokens. ``--reference-image`` replaces it.

Schedule: ``off`` by default, so every layer sees every vision token and the curves describe the base model
(the paper's setting). Another schedule (``--reduction``) is allowed; layers without vision then have no
vision S_intra (null).

Injection layer: the first interior local minimum of the vision S_intra curve (layer 1 and the last layer are
never candidates; a flat valley counts at its first layer). HiDrop injects vision right before that layer
(``inject_layer = l*``), where vision tokens start being rewritten (layer 9 in the paper).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from llava.analysis.common import (
    AnalysisError,
    LoadedModel,
    batched,
    build_parser,
    cli,
    encode_prompts,
    finite_or_none,
    load_images,
    load_model,
    load_questions,
    local_minima,
    masked_row_mean,
    new_figure,
    run_layers,
    run_metadata,
    save_outputs,
    token_masks,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from llava.model.decoder import Observer
    from llava.model.token_state import TokenState

logger = logging.getLogger("llava.analysis.layer_dynamics")

NAME = "layer_dynamics"
MID_GREY = (128, 128, 128)
METRICS = ("s_intra_vision", "s_intra_text", "s_cross")


def build_arg_parser() -> argparse.ArgumentParser:
    p = build_parser(f"llava.analysis.{NAME}", "S_intra / S_cross per layer (paper Fig. 2).", default_reduction="off")
    p.add_argument("--reference-image", default=None,
                   help="fixed reference image for S_cross (default: a uniform mid-grey image)")
    return p


def reference_image(path: str | None, loaded: LoadedModel) -> tuple[Any, str]:
    """(the reference PIL image, how it is described in the JSON)."""
    from PIL import Image

    from llava.mm_utils import image_processor_output_size, load_image

    if path:
        if not os.path.isfile(path):
            raise AnalysisError(f"--reference-image {path!r}: image file not found")
        return load_image(path), os.path.abspath(path)
    h, w = image_processor_output_size(loaded.image_processor)
    return Image.new("RGB", (w, h), MID_GREY), f"uniform mid-grey RGB{MID_GREY} image"


class DynamicsAccumulator:
    """Per-layer sums of per-sample means (float64 on the host) and the number of samples behind each."""

    def __init__(self, num_layers: int) -> None:
        self.sums = {m: torch.zeros(num_layers, dtype=torch.float64) for m in METRICS}
        self.counts = {m: torch.zeros(num_layers, dtype=torch.long) for m in METRICS}

    def add(self, metric: str, layer: int, per_sample: torch.Tensor, ok: torch.Tensor) -> None:
        # per_sample [B], ok [B] bool: rows that have tokens of this kind at this layer
        self.sums[metric][layer - 1] += float(per_sample[ok].double().sum())
        self.counts[metric][layer - 1] += int(ok.sum())

    def observer(self, num_samples: int) -> Observer:
        """Rows [0, B) carry the samples' images, rows [B, 2B) the same prompts with the reference image."""
        B = num_samples

        def observe(i: int, layer: torch.nn.Module, state: TokenState, layer_input: torch.Tensor) -> None:
            h_in = layer_input[:B].float()  # [B, S, D] input of layer i (sample rows)
            h_out = state.hidden.float()  # [2B, S, D] output of layer i (sample rows, then reference rows)
            masks = token_masks(state)
            intra = F.cosine_similarity(h_in, h_out[:B], dim=-1)  # [B, S]
            for metric, mask in (("s_intra_vision", masks.vision[:B]), ("s_intra_text", masks.text[:B])):
                self.add(metric, i, *masked_row_mean(intra, mask))
            # Both halves share prompts and padding, so slot j holds the same token in row b and row b + B.
            cross = 1.0 - F.cosine_similarity(h_out[:B], h_out[B:], dim=-1)  # [B, S]
            self.add("s_cross", i, *masked_row_mean(cross, masks.after_image[:B] & masks.after_image[B:]))

        return observe

    def curves(self) -> dict[str, list[float | None]]:
        out = {}
        for m in METRICS:
            mean = self.sums[m] / self.counts[m].clamp_min(1)
            out[m] = [finite_or_none(v) if c > 0 else None for v, c in zip(mean.tolist(), self.counts[m].tolist())]
        return out


def plot(layers: list[int], curves: dict[str, list[float | None]], inject: int | None, title: str) -> Figure:
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(7.5, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True)

    def xy(values: Sequence[float | None]) -> tuple[list[int], list[float]]:
        pts = [(x, v) for x, v in zip(layers, values) if v is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    top.plot(*xy(curves["s_intra_vision"]), "o-", color="tab:red", ms=3, label="vision tokens")
    top.plot(*xy(curves["s_intra_text"]), "s-", color="tab:blue", ms=3, label="text tokens")
    top.set_ylabel(r"$S_{intra}$ = cos($h^{l-1}$, $h^{l}$)")
    bottom.plot(*xy(curves["s_cross"]), "o-", color="tab:green", ms=3, label="instruction tokens")
    bottom.set_ylabel(r"$S_{cross}$ = 1 - cos(image, reference)")
    bottom.set_xlabel("layer l")
    if inject is not None:
        for ax in (top, bottom):
            ax.axvline(inject, color="gray", ls="--", lw=1)
        v = curves["s_intra_vision"][layers.index(inject)]
        top.annotate(f"first local min: layer {inject}\n(suggested inject_layer)", (inject, v),
                     xytext=(10, -30), textcoords="offset points", fontsize=8,
                     arrowprops={"arrowstyle": "->", "color": "gray"})
    for ax in (top, bottom):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    top.set_title(title, fontsize=9)
    return fig


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_arg_parser().parse_args(argv)
    adapter, questions = load_questions(args, need_images=True)
    loaded = load_model(args)
    schedule = loaded.schedule
    L = loaded.num_layers
    ref_img, ref_desc = reference_image(args.reference_image, loaded)
    logger.info("%s on %d samples; %s", NAME, len(questions),
                schedule.describe(L, loaded.num_vision_tokens))
    acc = DynamicsAccumulator(L)
    for batch in tqdm(list(batched(questions, args.batch_size)), desc=NAME, unit="batch"):
        images = load_images(adapter, batch, args.image_folder)
        texts = [q.text for q in batch]
        # One forward over both halves: the reference rows line up slot for slot with the sample rows.
        prompts = encode_prompts(loaded, texts + texts, images + [ref_img] * len(batch))
        run_layers(loaded.model, prompts, schedule, lambda mm, n=len(batch): acc.observer(n))
    curves = acc.curves()
    layers = list(range(1, L + 1))
    minima = local_minima(layers, curves["s_intra_vision"])
    inject = minima[0] if minima else None
    if inject is None:
        logger.warning("the vision S_intra curve has no interior local minimum; no injection layer suggested")
    else:
        logger.info("first local minimum of vision S_intra: layer %d -> suggested inject_layer=%d", inject, inject)
    result: dict[str, Any] = {
        "tool": NAME,
        **run_metadata(args, loaded, schedule, len(questions)),
        "reference_image": ref_desc,
        "definitions": {
            "s_intra": "mean over valid tokens of cos(input of layer l, output of layer l), per sample, then mean "
            "over samples",
            "s_cross": "1 - mean over instruction tokens (text after the image) of cos(output of layer l with the "
            "sample's image, with the reference image), per sample, then mean over samples",
            "suggested_inject_layer": "first interior local minimum of s_intra_vision (layer 1 and layer L are "
            "never candidates)",
        },
        "layers": layers,
        **curves,
        "samples_per_layer": {m: acc.counts[m].tolist() for m in METRICS},
        "vision_local_minima": minima,
        "suggested_inject_layer": inject,
    }
    title = (f"{os.path.basename(os.path.normpath(args.model_path))}, schedule '{schedule.name}', "
             f"{len(questions)} {args.bench} samples")
    save_outputs(args.output_dir, NAME, result, plot(layers, curves, inject, title))
    return result


if __name__ == "__main__":
    cli(main)
