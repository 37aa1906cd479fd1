"""Image and prompt helpers shared by training, evaluation and serving.

* :func:`tokenizer_image_token` turns a prompt containing ``<image>`` into token ids with one
  ``IMAGE_TOKEN_INDEX`` (-200) placeholder per image, exactly as upstream LLaVA does.
* :func:`load_image` / :func:`process_images` turn files into the ``[B, 3, H, W]`` pixel tensor the vision tower
  expects, with typed errors (:class:`ImageLoadError`) instead of a crash deep inside a DataLoader worker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_ASPECT_RATIOS",
    "ImageLoadError",
    "SampleError",
    "build_image_processor",
    "expand2square",
    "image_processor_output_size",
    "load_image",
    "load_image_processor",
    "process_images",
    "tokenizer_image_token",
    "tokenizer_image_token_with_offsets",
]

IMAGE_ASPECT_RATIOS: tuple[str, ...] = ("pad", "square")  # plus None, which means "square"


# === Errors ===


class SampleError(Exception):
    """One sample (a record plus its image) cannot be turned into a training example.

    ``reason`` is a short stable key (``"image_missing"``, ``"overlong"``, ...) used to count skipped samples.
    ``sample_id`` and ``data_path`` are filled in by whoever knows them (the dataset adds them if the raiser
    could not) and are part of ``str(err)``, so a log line always says which record was bad.
    """

    reason: str = "bad_sample"

    def __init__(self, message: str, *, sample_id: str | None = None, data_path: str | os.PathLike | None = None):
        # Only `message` goes to Exception.args: DataLoader workers re-create exceptions as `type(err)(text)`,
        # which must keep working.
        super().__init__(message)
        self.message = message
        self.sample_id = sample_id
        self.data_path = None if data_path is None else str(data_path)

    def __str__(self) -> str:
        context = []
        if self.sample_id is not None:
            context.append(f"sample id {self.sample_id!r}")
        if self.data_path is not None:
            context.append(f"data file {self.data_path}")
        return f"{self.message} [{', '.join(context)}]" if context else self.message


class ImageLoadError(SampleError):
    """An image file is missing, or exists but cannot be decoded (corrupt, truncated, not an image)."""

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike | None = None,
        problem: Literal["missing", "unreadable"] = "unreadable",
        sample_id: str | None = None,
        data_path: str | os.PathLike | None = None,
    ):
        super().__init__(message, sample_id=sample_id, data_path=data_path)
        self.path = None if path is None else str(path)
        self.problem = problem

    @property
    def reason(self) -> str:  # type: ignore[override]
        return f"image_{self.problem}"


# === Images ===


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open ``path`` as an RGB image, fully decoded; raises :class:`ImageLoadError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"image file is missing: {path}", path=path, problem="missing")
    try:
        with Image.open(path) as img:
            # convert() forces the full decode here, so a truncated file fails now rather than in the processor.
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageLoadError(
            f"image file is unreadable or corrupt: {path} ({type(err).__name__}: {err})",
            path=path,
            problem="unreadable",
        ) from err


def expand2square(pil_img: Image.Image, background_color: tuple[int, ...] | int) -> Image.Image:
    """Pad the shorter side symmetrically (extra pixel at the bottom/right) to a square of the longer side."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    side = max(width, height)
    result = Image.new(pil_img.mode, (side, side), background_color)
    result.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return result


def _mean_color(image_processor: Any) -> tuple[int, ...]:
    # Upstream truncates (int(), not round()): CLIP's mean gives (122, 116, 104).
    return tuple(int(x * 255) for x in image_processor.image_mean)


def process_images(images: Sequence[Image.Image], image_processor: Any, image_aspect_ratio: str | None) -> torch.Tensor:
    """Preprocess RGB images into pixel values ``[B, 3, H, W]`` (float32).

    ``"pad"``: pad each image to a square with the processor's mean colour first (LLaVA-1.5's setting), so the
    centre crop keeps the whole picture. ``"square"`` or ``None``: hand the image to the processor as is (resize
    shortest side, centre crop).
    """
    if image_aspect_ratio not in (*IMAGE_ASPECT_RATIOS, None):
        raise ValueError(
            f"unsupported image_aspect_ratio {image_aspect_ratio!r}; expected one of {IMAGE_ASPECT_RATIOS} or None"
        )
    if len(images) == 0:
        raise ValueError("process_images needs at least one image")
    if image_aspect_ratio == "pad":
        color = _mean_color(image_processor)
        images = [expand2square(img, color) for img in images]
    pixel_values = image_processor(images=list(images), return_tensors="pt")["pixel_values"]
    if not isinstance(pixel_values, torch.Tensor):  # pragma: no cover - processors that return ragged lists
        raise ValueError("images of different output sizes cannot be batched; use image_aspect_ratio='pad'")
    return pixel_values  # [B, 3, H, W]


def build_image_processor(image_size: int = 336) -> Any:
    """A CLIP image processor (resize shortest side, centre crop ``image_size``, CLIP mean/std).

    The PIL implementation is used directly: ``CLIPImageProcessor`` would fall back to it anyway without
    torchvision, with a warning on every construction.
    """
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


def load_image_processor(name_or_path: str | os.PathLike) -> Any:
    """Load a saved CLIP image processor (a vision-tower directory or ``preprocessor_config.json``'s folder)."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil.from_pretrained(str(name_or_path))


def image_processor_output_size(image_processor: Any) -> tuple[int, int]:
    """``(H, W)`` of the processor's output for a square input, e.g. ``(336, 336)``.

    Measured on a dummy image rather than read from ``crop_size``/``size``, whose layout differs between
    processors and transformers versions.
    """
    dummy = Image.new("RGB", (32, 32))
    pixel_values = image_processor(images=[dummy], return_tensors="pt")["pixel_values"]
    return int(pixel_values.shape[-2]), int(pixel_values.shape[-1])


# === Prompt tokenization ===


def _encode_image_chunks(
    prompt: str, tokenizer: PreTrainedTokenizerBase, image_token_index: int, with_offsets: bool
) -> tuple[list[int], list[tuple[int, int]]]:
    """Shared core of the two public functions; offsets are ``[]`` unless ``with_offsets``."""
    if with_offsets and not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} cannot report character offsets; load a fast (tokenizers-backed) tokenizer"
        )
    chunks = prompt.split(DEFAULT_IMAGE_TOKEN)
    bos = tokenizer.bos_token_id
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    chunk_start = 0
    strip_bos = False
    for k, chunk in enumerate(chunks):
        enc = tokenizer(chunk, return_offsets_mapping=with_offsets)
        chunk_ids = list(enc["input_ids"])
        chunk_offsets = [(chunk_start + s, chunk_start + e) for s, e in enc["offset_mapping"]] if with_offsets else []
        if k == 0:
            # Every chunk is encoded on its own and so gets its own BOS; only the prompt's first one is kept.
            strip_bos = bos is not None and chunk_ids[:1] == [bos]
        else:
            ids.append(image_token_index)
            if with_offsets:
                offsets.append((chunk_start - len(DEFAULT_IMAGE_TOKEN), chunk_start))
            if strip_bos and chunk_ids[:1] == [bos]:
                chunk_ids, chunk_offsets = chunk_ids[1:], chunk_offsets[1:]
        ids.extend(chunk_ids)
        offsets.extend(chunk_offsets)
        chunk_start += len(chunk) + len(DEFAULT_IMAGE_TOKEN)
    return ids, offsets


def tokenizer_image_token(
    prompt: str,
    tokenizer: PreTrainedTokenizerBase,
    image_token_index: int = IMAGE_TOKEN_INDEX,
    return_tensors: str | None = None,
) -> list[int] | torch.Tensor:
    """Tokenize ``prompt``, replacing each ``<image>`` with one ``image_token_index``.

    The text around each ``<image>`` is tokenized as a separate chunk (so the text after an image starts a new
    SentencePiece segment with its own prefix space, as upstream); the first chunk's BOS is kept and the
    other chunks' BOS dropped. ``return_tensors="pt"`` gives a ``LongTensor [T]``, ``None`` a list.
    """
    if return_tensors not in (None, "pt"):
        raise ValueError(f"unsupported return_tensors {return_tensors!r}; use None or 'pt'")
    ids, _ = _encode_image_chunks(prompt, tokenizer, image_token_index, with_offsets=False)
    return torch.tensor(ids, dtype=torch.long) if return_tensors == "pt" else ids


def tokenizer_image_token_with_offsets(
    prompt: str, tokenizer: PreTrainedTokenizerBase, image_token_index: int = IMAGE_TOKEN_INDEX
) -> tuple[list[int], list[tuple[int, int]]]:
    """Same ids as :func:`tokenizer_image_token` plus each token's ``(start, end)`` character span in ``prompt``.

    Special tokens added by the tokenizer (BOS) have an empty span; a placeholder spans its ``<image>`` text.
    Needs a fast tokenizer.
    """
    return _encode_image_chunks(prompt, tokenizer, image_token_index, with_offsets=True)
