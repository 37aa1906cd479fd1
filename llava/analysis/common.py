"""Shared plumbing of the analysis tools: flags, model and question loading, prompt batches, the decoder run with an
observer, token masks, curve extrema, and output files.

The tools read the language model through ``run_decoder(..., observe=...)`` rather than ``model.forward``: the
forward would also build ``[B, S, vocab]`` logits nobody reads, and calling the splice ourselves hands the
observer the batch's scoring queries (``MultimodalBatch.query_text_index``) without recomputing them.
Prompts and images go through the evaluation runner's ``LlavaBackend`` (template, tokenizer, image
preprocessing), so an analysis sees exactly the inputs ``llava.eval.run_benchmark`` gives the model.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from llava.eval.benchmarks import BENCHMARK_NAMES, Benchmark, Question, get_benchmark
from llava.eval.files import EvalDataError, write_json
from llava.eval.run_benchmark import DEFAULT_CONV_MODE, LlavaBackend, parse_override_args, resolve_device_dtype
from llava.mm_utils import ImageLoadError
from llava.model.checkpoint_loading import CheckpointError
from llava.model.reduction.config import ReductionConfig, ReductionConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import Image

    from llava.model.decoder import DecoderOutput, Observer
    from llava.model.llava_llama import LlavaLlamaForCausalLM
    from llava.model.multimodal_inputs import MultimodalBatch
    from llava.model.token_state import TokenState

logger = logging.getLogger("llava.analysis")

# ``--reduction checkpoint``: keep the schedule saved in the checkpoint's config.json.
CHECKPOINT_SCHEDULE = "checkpoint"

T = TypeVar("T")


class AnalysisError(ValueError):
    """Bad input to an analysis tool; the message names the flag, file or value at fault."""


# --------------------------------------------------------------------------------------------------- CLI
def build_parser(
    prog: str, description: str, default_reduction: str, questions_required: bool = True
) -> argparse.ArgumentParser:
    """The flags every tool shares; each tool adds its own."""
    p = argparse.ArgumentParser(prog=f"python -m {prog}", description=description)
    p.add_argument("--model-path", required=True, help="checkpoint directory (full, projector-only or LoRA)")
    p.add_argument("--model-base", default=None, help="base LLM for LoRA / projector-only checkpoints")
    p.add_argument("--vision-tower-path", default=None,
                   help="local CLIP directory replacing the one the checkpoint names")
    p.add_argument("--bench", default="gqa", choices=BENCHMARK_NAMES,
                   help="benchmark adapter reading the question file")
    p.add_argument("--question-file", required=questions_required, default=None)
    p.add_argument("--image-folder", default="", help="images are looked up relative to this folder")
    p.add_argument("--limit", type=int, default=None, help="use the first N questions (default: all)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument(
        "--reduction", default=default_reduction,
        help=f"schedule preset (off, tok64, tiny, ...) or '{CHECKPOINT_SCHEDULE}' for the checkpoint's own "
        f"(default: {default_reduction})",
    )
    p.add_argument("--reduction-override", action="append", default=[],
                   help="key=value schedule overrides, repeatable or space-separated, e.g. 'exit_layer=24 topk=hard'")
    p.add_argument("--conv-mode", default=DEFAULT_CONV_MODE)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--dtype", default="auto", choices=("auto", "float16", "bfloat16", "float32"),
                   help="auto: float16 on GPU, float32 on CPU")
    p.add_argument("--output-dir", required=True, type=output_dir_arg,
                   help="folder for <tool>.json and <tool>.png (created; an existing file there is refused)")
    return p


def output_dir_arg(text: str) -> str:
    """``--output-dir``: refused at parse time, before any model loads, when it or a folder above it is a file."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder")
    parent = os.path.abspath(text)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"{text!r} cannot be created: {parent} is a file")
    return text


def _number_list(text: str, flag: str, cast: type, what: str) -> list:
    try:
        values = [cast(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise AnalysisError(f"{flag} {text!r}: expected comma-separated {what}") from None
    if not values:
        raise AnalysisError(f"{flag} is empty")
    return values


def int_list(text: str, flag: str) -> list[int]:
    """``"5,10,20"`` -> [5, 10, 20]; an error names the flag."""
    return _number_list(text, flag, int, "integers")


def float_list(text: str, flag: str) -> list[float]:
    return _number_list(text, flag, float, "numbers")


def layer_list(text: str, flag: str, lo: int, hi: int) -> list[int]:
    """Layers (1-based) given as ``"2,4,9"``, ``"2-32"`` or ``"2-32:2"``; each must lie in [lo, hi]."""
    layers: list[int] = []
    try:
        for part in text.replace(" ", "").split(","):
            if not part:
                continue
            if "-" in part:
                span, _, step = part.partition(":")
                a, b = (int(x) for x in span.split("-", 1))
                layers.extend(range(a, b + 1, int(step) if step else 1))
            else:
                layers.append(int(part))
    except ValueError:
        raise AnalysisError(f"{flag} {text!r}: expected layers like '2,4,9', '2-32' or '2-32:2'") from None
    bad = [x for x in layers if not lo <= x <= hi]
    if bad:
        raise AnalysisError(f"{flag}: layer(s) {bad} out of range; this model allows {lo}..{hi} here")
    if not layers:
        raise AnalysisError(f"{flag} {text!r} names no layer")
    return sorted(set(layers))


def check_positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise AnalysisError(f"{flag} must be >= 1, got {value}")


def batched(items: Sequence[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def cli(main: Callable[[Sequence[str] | None], Any]) -> None:
    """Runs a tool's ``main`` from the command line: known input errors print one line and exit 2, no traceback."""
    setup_logging()
    try:
        main(None)
    except (AnalysisError, EvalDataError, CheckpointError, ReductionConfigError, ImageLoadError) as e:
        logger.error("%s", e)
        sys.exit(2)


# --------------------------------------------------------------------------------------------------- model
@dataclass
class LoadedModel:
    tokenizer: Any
    model: LlavaLlamaForCausalLM
    image_processor: Any
    backend: LlavaBackend

    @classmethod
    def wrap(cls, tokenizer: Any, model: LlavaLlamaForCausalLM, image_processor: Any,
             conv_mode: str = DEFAULT_CONV_MODE) -> LoadedModel:
        """From what ``load_pretrained_model`` returned (e.g. a web demo that already holds the model)."""
        backend = LlavaBackend(model, tokenizer, image_processor, conv_mode=conv_mode)
        return cls(tokenizer, model, image_processor, backend)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def num_vision_tokens(self) -> int:
        return int(self.model.config.num_vision_tokens)

    @property
    def schedule(self) -> ReductionConfig:
        """The schedule the model was loaded with (checkpoint's, or ``--reduction`` / overrides)."""
        return self.model.config.reduction_config

    @property
    def placement(self) -> tuple[torch.device, torch.dtype]:
        p = next(self.model.parameters())
        return p.device, p.dtype


def _check_dir(path: str | None, flag: str, what: str) -> None:
    if path and not os.path.isdir(path):
        raise AnalysisError(f"{flag} {path!r}: {what} not found (no such directory)")


def load_model(args: argparse.Namespace) -> LoadedModel:
    """Loads the checkpoint through the builder with the tool's schedule (``--reduction``, overrides)."""
    from llava.model.builder import load_pretrained_model
    from llava.model.reduction.config import parse_overrides

    _check_dir(args.model_path, "--model-path", "checkpoint")
    _check_dir(args.model_base, "--model-base", "base model")
    _check_dir(args.vision_tower_path, "--vision-tower-path", "vision tower")
    try:
        overrides = parse_override_args(args.reduction_override)
    except EvalDataError as e:
        raise AnalysisError(str(e)) from None
    preset = None if args.reduction == CHECKPOINT_SCHEDULE else args.reduction
    device, dtype_name = resolve_device_dtype(args.device, args.dtype)
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path,
        model_base=args.model_base,
        device=device,
        torch_dtype=getattr(torch, dtype_name),
        reduction=preset,
        reduction_overrides=parse_overrides(overrides) if overrides else None,
        vision_tower_path=args.vision_tower_path,
    )
    model.eval()
    return LoadedModel.wrap(tokenizer, model, image_processor, args.conv_mode)


# --------------------------------------------------------------------------------------------------- questions
def load_questions(args: argparse.Namespace, need_images: bool = True) -> tuple[Benchmark, list[Question]]:
    """The first ``--limit`` questions of ``--question-file`` read by the ``--bench`` adapter.

    With ``need_images`` questions without an image are left out (with a count in the log): the forward
    diagnostics measure vision tokens, which such samples do not have.
    """
    path = args.question_file
    if not path:
        raise AnalysisError("--question-file is required")
    if not os.path.isfile(path):
        raise AnalysisError(f"--question-file {path!r}: question file not found")
    if args.image_folder and not os.path.isdir(args.image_folder):
        raise AnalysisError(f"--image-folder {args.image_folder!r}: image folder not found (no such directory)")
    check_positive(args.limit, "--limit")
    check_positive(args.batch_size, "--batch-size")
    adapter = get_benchmark(args.bench)
    questions = adapter.load_questions(path)
    if need_images:
        with_image = [q for q in questions if q.has_image]
        if len(with_image) < len(questions):
            logger.info("skipping %d question(s) without an image (no vision tokens to analyse)",
                        len(questions) - len(with_image))
        questions = with_image
    if args.limit is not None:
        questions = questions[: args.limit]
    if not questions:
        raise AnalysisError(f"--question-file {path}: no {'image ' if need_images else ''}questions to analyse")
    return adapter, questions


def load_images(adapter: Benchmark, questions: Sequence[Question], image_folder: str) -> list[Image.Image | None]:
    """Opens each question's image (``None`` for text-only ones); a missing or unreadable file names itself."""
    images = []
    for q in questions:
        try:
            images.append(adapter.load_image(q, image_folder))
        except ImageLoadError as e:
            raise AnalysisError(f"question {q.qid!r}: {e} (--image-folder {image_folder!r})") from None
    return images


# --------------------------------------------------------------------------------------------------- batches
@dataclass
class PromptBatch:
    input_ids: torch.Tensor  # [B, T] left-padded, one <image> placeholder per row
    attention_mask: torch.Tensor  # [B, T]
    images: torch.Tensor  # [B, 3, H, W] processed pixel values (normalised)


def encode_prompts(loaded: LoadedModel, texts: Sequence[str], images: Sequence[Image.Image]) -> PromptBatch:
    """Image questions -> a left-padded batch, built with the runner's template, tokenizer and preprocessing.

    Left padding as in generation: the scoring query (the last prompt token) then sits in the last column.
    """
    input_ids, mask, pixels = loaded.backend.encode(texts, images)  # [B, T], [B, T], [B, 3, H, W]
    return PromptBatch(input_ids, mask, pixels)


def run_layers(
    model: LlavaLlamaForCausalLM,
    batch: PromptBatch,
    reduction: ReductionConfig,
    make_observer: Callable[[MultimodalBatch], Observer] | None = None,
) -> tuple[DecoderOutput, MultimodalBatch]:
    """The language model's layers on ``batch`` under ``reduction`` (what ``model.forward`` runs, minus the logits).

    ``make_observer(mm)`` builds the per-layer observer once the batch is spliced, so that it can read the
    batch's scoring queries. No learned DTop-K thresholds are passed: they only shape the soft mask of
    training; the kept set is the exact top-k either way.
    """
    from llava.model.decoder import run_decoder

    red = reduction.validate_for(model.config.num_hidden_layers, model.config.num_vision_tokens)
    with torch.inference_mode():
        # the model's own splice, vision stage included (MustDrop's merging and key set when the schedule has them)
        mm = model.multimodal_batch(batch.input_ids, batch.attention_mask, batch.images, None, red)
        observe = make_observer(mm) if make_observer is not None else None
        out = run_decoder(model.model, mm, red, None, observe=observe, twig=getattr(model, "twig", None))
    return out, mm


@dataclass
class TokenMasks:
    vision: torch.Tensor  # [B, S] valid vision slots
    text: torch.Tensor  # [B, S] valid text tokens
    after_image: torch.Tensor  # [B, S] valid text tokens after the vision span (the only text the image can reach)


def token_masks(state: TokenState) -> TokenMasks:
    """Which slots of the current token set are vision / text; the layout is [prefix][vision span][suffix]."""
    S = state.hidden.shape[1]
    j = torch.arange(S, device=state.hidden.device).unsqueeze(0)  # [1, S]
    start = state.vision_start.unsqueeze(1)  # [B, 1]
    end = start + state.num_vision
    in_span = (j >= start) & (j < end)  # [B, S]
    text = state.valid & ~in_span
    return TokenMasks(vision=state.valid & in_span, text=text, after_image=text & (j >= end))


def masked_row_mean(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean of ``values`` [B, S] over ``mask`` [B, S] -> ([B] means, [B] bool: the row had any token)."""
    count = mask.sum(1)  # [B]
    mean = (values * mask).sum(1) / count.clamp_min(1)
    return mean, count > 0


# --------------------------------------------------------------------------------------------------- curves
def _extrema(layers: Sequence[int], values: Sequence[float | None], sign: float) -> list[int]:
    """Interior local extrema of a curve (``sign`` = 1 maxima, -1 minima), in layer order.

    A flat run of equal values counts once, at its first layer, when both neighbouring runs lie strictly below
    (maxima) or above (minima) it. Endpoints never count: an extremum at the edge of the measured range says
    nothing about the shape beyond it. Undefined points (None) and gaps in the layer numbers split the curve.
    """
    found: list[int] = []
    segment: list[tuple[int, float]] = []

    def flush() -> None:
        runs: list[tuple[int, float]] = []  # (first layer, value) of each run of equal values
        for layer, v in segment:
            if not runs or v != runs[-1][1]:
                runs.append((layer, v))
        for k in range(1, len(runs) - 1):
            v = sign * runs[k][1]
            if v > sign * runs[k - 1][1] and v > sign * runs[k + 1][1]:
                found.append(runs[k][0])

    for layer, v in zip(layers, values):
        if v is None or (segment and layer != segment[-1][0] + 1):
            flush()
            segment = []
        if v is not None:
            segment.append((layer, float(v)))
    flush()
    return found


def local_maxima(layers: Sequence[int], values: Sequence[float | None]) -> list[int]:
    return _extrema(layers, values, 1.0)


def local_minima(layers: Sequence[int], values: Sequence[float | None]) -> list[int]:
    return _extrema(layers, values, -1.0)


# --------------------------------------------------------------------------------------------------- output
def new_figure(width: float, height: float) -> Figure:
    """A Figure drawn by Agg without touching pyplot's global backend (the web demo shares the process)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_outputs(output_dir: str, name: str, data: dict[str, Any], fig: Figure, dpi: int = 120) -> tuple[str, str]:
    """Writes ``<name>.json`` and ``<name>.png`` into ``output_dir``; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    json_path = os.path.join(output_dir, f"{name}.json")
    png_path = os.path.join(output_dir, f"{name}.png")
    write_json(json_path, data)
    fig.savefig(png_path, dpi=dpi)
    logger.info("wrote %s and %s", json_path, png_path)
    return json_path, png_path


def run_metadata(
    args: argparse.Namespace, loaded: LoadedModel, schedule: ReductionConfig, num_samples: int
) -> dict[str, Any]:
    """What a result was computed on, stored at the top of every JSON."""
    return {
        "model_path": os.path.abspath(args.model_path),
        "model_base": args.model_base,
        "bench": args.bench,
        "question_file": os.path.abspath(args.question_file) if args.question_file else None,
        "num_samples": num_samples,
        "num_layers": loaded.num_layers,
        "num_vision_tokens": loaded.num_vision_tokens,
        "schedule": schedule.to_dict(),
        "dtype": str(loaded.placement[1]).removeprefix("torch."),
    }


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: an undefined value (e.g. no vision token at that layer) is written as null."""
    return None if value != value or value in (float("inf"), float("-inf")) else float(value)


__all__ = [
    "CHECKPOINT_SCHEDULE",
    "AnalysisError",
    "LoadedModel",
    "PromptBatch",
    "TokenMasks",
    "batched",
    "build_parser",
    "cli",
    "encode_prompts",
    "finite_or_none",
    "float_list",
    "int_list",
    "layer_list",
    "load_images",
    "load_model",
    "load_questions",
    "local_maxima",
    "local_minima",
    "masked_row_mean",
    "new_figure",
    "run_layers",
    "run_metadata",
    "save_outputs",
    "setup_logging",
    "token_masks",
]
