"""Image and prompt helpers shared by training, evaluation and serving.

* :func:`tokenizer_image_token` turns a prompt containing ``<image>`` into token ids with one
  ``IMAGE_TOKEN_INDEX`` (-200) placeholder per image, exactly as upstream LLaVA does.
* :func:`load_image` / :func:`process_images` turn files into the ``[B, 3, H, W]`` pixel tensor the vision tower
  expects, with typed errors (:class:`ImageLoadError`) instead of a crash deep inside a DataLoader worker.
* upstream LLaVA's other helpers under their names: :func:`get_model_name_from_path`,
  :class:`KeywordsStoppingCriteria`, :func:`load_image_from_base64`; :func:`process_images` takes upstream's third
  argument (the model config, whose ``image_aspect_ratio`` it reads) as well as the aspect-ratio string.

Colour conversion (:func:`to_rgb`, used by :func:`load_image`, and by :func:`process_images` for any image that
is not plain RGB). A bare ``convert("RGB")`` clips 16-bit values (the picture turns almost white) and drops alpha
(transparent pixels keep whatever colour they store, usually black), so every mode is handled explicitly:

* alpha (``RGBA``, ``LA``, ``PA``, premultiplied ``RGBa``/``La``, and ``P``/``L``/``RGB``/``I;16`` images with a
  transparency key) is composited over a background colour. The right background is the colour the image will be
  padded with, i.e. the processor's mean colour (:func:`background_color`); callers that know the processor
  pass it, and :data:`DEFAULT_BACKGROUND` is CLIP's mean colour (122, 116, 104), the same as every CLIP tower's,
  so callers that cannot pass it still get the padding colour of the standard towers.
* 16-bit integer (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``): value / 257, rounded (65535 -> 255).
* 32-bit integer ``I``: taken as 8-bit when every value is in 0..255, as 16-bit (/ 257) when in 0..65535,
  otherwise stretched linearly from ``min(0, lowest)`` to ``max(0, highest)`` onto 0..255.
* float ``F``: values in 0..1 are scaled by 255, values in 0..255 are taken as they are, anything else is
  stretched like ``I``; NaN or infinite values are an :class:`ImageLoadError` (there is no sensible grey for them).
* ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``: PIL's own conversion to RGB.
* an image with a side of 0 is an :class:`ImageLoadError` with reason ``image_empty``; a file PIL refuses as a
  decompression bomb (over twice ``PIL.Image.MAX_IMAGE_PIXELS``) one with reason ``image_too_large``.

Size bounds in :func:`process_images`, so that an extreme aspect ratio cannot blow up memory (a 1x12000 strip
padded to a 12000x12000 square took 2.3 GB for a 336 px tower; in ``square`` mode the shortest-edge resize of a
1x2000 strip to 336 x 672000 took as much):

* ``pad``: an image whose longer side exceeds ``max(MAX_PAD_SIDE, 4 * tower side)`` (2048 for a 336 px tower) is
  first downscaled (bicubic, aspect kept, shorter side at least 1 px) so that its longer side equals that bound,
  then padded. Images within the bound are padded exactly as before, so their pixel values are unchanged; larger
  ones differ only by the extra resampling step.
* ``square`` with a shortest-edge resize plus centre crop (CLIP's processor): an image longer than
  ``MAX_SQUARE_ASPECT`` (8) times its shorter side is first centre-cropped to that aspect ratio. The processor's
  centre crop keeps only the middle square anyway, so this removes pixels it would discard (up to rounding of
  the resize size); images within the ratio are unchanged.

No aspect ratio is an error: after these bounds every image costs at most a few tens of MB, and a thin strip is
a poor but valid picture.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase, StoppingCriteria

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BACKGROUND",
    "IMAGE_ASPECT_RATIOS",
    "MAX_PAD_SIDE",
    "MAX_SQUARE_ASPECT",
    "ImageLoadError",
    "KeywordsStoppingCriteria",
    "SampleError",
    "background_color",
    "build_image_processor",
    "expand2square",
    "get_model_name_from_path",
    "image_processor_output_size",
    "load_image",
    "load_image_from_base64",
    "load_image_processor",
    "process_images",
    "to_rgb",
    "tokenizer_image_token",
    "tokenizer_image_token_with_offsets",
]

IMAGE_ASPECT_RATIOS: tuple[str, ...] = ("pad", "square")  # plus None, which means "square"

# CLIP's mean colour, truncated as upstream does (see _mean_color): the padding colour of every CLIP tower.
DEFAULT_BACKGROUND: tuple[int, int, int] = (122, 116, 104)
MAX_PAD_SIDE = 2048  # "pad": longer side bound before padding (raised to 4x the tower side for large towers)
MAX_SQUARE_ASPECT = 8  # "square": longest aspect ratio handed to a shortest-edge resize


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


ImageProblem = Literal["missing", "unreadable", "empty", "too_large"]


class ImageLoadError(SampleError):
    """An image is missing, cannot be decoded (corrupt, truncated, not an image, unusable values), has no pixels,
    or is too large for PIL to decode safely. ``reason`` is ``image_<problem>``."""

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike | None = None,
        problem: ImageProblem = "unreadable",
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


def load_image(path: str | os.PathLike, background: Sequence[int] = DEFAULT_BACKGROUND) -> Image.Image:
    """Open ``path`` as an RGB image, fully decoded; raises :class:`ImageLoadError` naming the file.

    Non-RGB modes are converted by :func:`to_rgb`; transparent pixels are composited over ``background``
    (pass :func:`background_color` of the image processor so they match the padding).
    """
    background = _check_background(background)  # a caller's mistake, not a bad file: checked before opening
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"image file is missing: {path}", path=path, problem="missing")
    try:
        with Image.open(path) as img:
            # Forcing the full decode here makes a truncated file fail now rather than in the processor.
            img.load()
            return to_rgb(img, background)
    except ImageLoadError as err:
        raise ImageLoadError(f"{err.message}: {path}", path=path, problem=err.problem) from err
    except Image.DecompressionBombError as err:
        raise ImageLoadError(
            f"image file is too large to decode safely: {path} ({err})", path=path, problem="too_large"
        ) from err
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageLoadError(
            f"image file is unreadable or corrupt: {path} ({type(err).__name__}: {err})",
            path=path,
            problem="unreadable",
        ) from err


def load_image_from_base64(data: str | bytes, background: Sequence[int] = DEFAULT_BACKGROUND) -> Image.Image:
    """An RGB image from base64-encoded file bytes (upstream's serving format); :class:`ImageLoadError` if the text
    is not base64 or the bytes are not a readable image. Modes are converted as in :func:`load_image`."""
    background = _check_background(background)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ImageLoadError(f"image data is not valid base64 ({err})", problem="unreadable") from err
    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            return to_rgb(img, background)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"image is too large to decode safely ({err})", problem="too_large") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageLoadError(f"image data is unreadable or corrupt ({type(err).__name__}: {err})") from err


def _check_background(background: Sequence[int]) -> tuple[int, int, int]:
    color = tuple(background)
    if len(color) != 3 or not all(isinstance(c, (int, np.integer)) and 0 <= c <= 255 for c in color):
        raise ValueError(f"background must be three integers in 0..255 (an RGB colour), got {background!r}")
    return (int(color[0]), int(color[1]), int(color[2]))


def _composite(color: np.ndarray, alpha: np.ndarray, background: tuple[int, int, int], premultiplied: bool) -> Image.Image:
    """``color`` ``[H, W, C]`` (C = 1 or 3) over ``background`` with ``alpha`` ``[H, W]``, rounded to uint8 RGB."""
    # Integer arithmetic: half the memory of float64 on large images, and exact rounding.
    a = alpha.astype(np.uint32)[..., None]
    c = color.astype(np.uint32)
    bg = np.asarray(background, dtype=np.uint32)
    # Premultiplied colour already carries the factor alpha / 255; straight colour still needs it.
    weighted = (c * 255 if premultiplied else c * a) + bg * (255 - a)
    # (x + 127) // 255 is round(x / 255) (no ties: 255 is odd); the cap catches invalid premultiplied data.
    out = np.minimum((weighted + 127) // 255, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(np.broadcast_to(out, (*alpha.shape, 3))), "RGB")


def _stretch(values: np.ndarray) -> np.ndarray:
    """Linear map of ``[min(0, lowest), max(0, highest)]`` onto 0..255; zero stays black for non-negative data."""
    lo = min(float(values.min()), 0.0)
    hi = max(float(values.max()), 0.0)
    span = hi - lo or 1.0
    return (values.astype(np.float64) - lo) * 255.0 / span


def _high_bit_to_gray(img: Image.Image) -> np.ndarray:
    """8-bit grey levels of an ``I;16*``, ``I`` or ``F`` image (rules in the module docstring)."""
    values = np.asarray(img)
    if img.mode.startswith("I;16"):
        # (v + 128) // 257 is round(v / 257) in integers (no ties: 257 is odd).
        return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if img.mode == "I":
        lo, hi = int(values.min()), int(values.max())
        if lo >= 0 and hi <= 255:
            return values.astype(np.uint8)
        if lo >= 0 and hi <= 65535:
            return ((values.astype(np.int64) + 128) // 257).astype(np.uint8)
        return np.rint(_stretch(values)).astype(np.uint8)
    # mode "F"
    if not np.isfinite(values).all():
        raise ImageLoadError("float (mode 'F') image holds NaN or infinite values, which have no grey level")
    lo, hi = float(values.min()), float(values.max())
    if lo >= 0.0 and hi <= 1.0:
        scaled = values.astype(np.float64) * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        scaled = values.astype(np.float64)
    else:
        scaled = _stretch(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


_HIGH_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})


def to_rgb(img: Image.Image, background: Sequence[int] = DEFAULT_BACKGROUND) -> Image.Image:
    """A new RGB image with the content of ``img`` in any PIL mode; transparency is composited over ``background``.

    The per-mode rules are in the module docstring. Raises :class:`ImageLoadError` for an image with a side of 0,
    a float image with NaN/inf values, or a mode PIL cannot convert to RGB.
    """
    bg = _check_background(background)
    width, height = img.size
    if width == 0 or height == 0:
        raise ImageLoadError(f"image has no pixels ({width}x{height})", problem="empty")
    mode = img.mode
    if mode in _HIGH_BIT_MODES:
        gray = _high_bit_to_gray(img)
        key = img.info.get("transparency")
        if isinstance(key, (int, float)):  # a transparency key: pixels of exactly that value are transparent
            alpha = np.where(np.asarray(img) == key, 0, 255).astype(np.uint8)
            return _composite(gray[..., None], alpha, bg, premultiplied=False)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode in ("RGBa", "La"):
        # PIL cannot convert La at all, and unpremultiplying RGBa first would lose precision where alpha is small.
        data = np.asarray(img)
        return _composite(data[..., :-1], data[..., -1], bg, premultiplied=True)
    if img.has_transparency_data:
        rgba = img.convert("RGBA")  # resolves LA, PA, palette transparency and transparency keys to straight alpha
        data = np.asarray(rgba)
        if (data[..., 3] == 255).all():  # common: an alpha channel that is opaque everywhere
            return rgba.convert("RGB")
        return _composite(data[..., :3], data[..., 3], bg, premultiplied=False)
    try:
        return img.convert("RGB") if mode != "RGB" else img.copy()
    except ValueError as err:
        raise ImageLoadError(f"image mode {mode!r} cannot be converted to RGB ({err})") from err


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


def background_color(image_processor: Any) -> tuple[int, int, int]:
    """The processor's mean colour as RGB: the ``pad`` colour, and the colour transparency is composited over."""
    color = _mean_color(image_processor)
    if len(color) == 1:  # a single-channel mean applies to all three channels
        color = color * 3
    return _check_background(color)


def _shortest_edge_center_crop(image_processor: Any) -> bool:
    """Whether the processor resizes the shortest edge and then centre-crops (CLIP's recipe).

    Only then can an extreme aspect ratio blow up the resize, and only then does cropping first keep the output.
    """
    size = getattr(image_processor, "size", None)
    shortest = size.get("shortest_edge") if isinstance(size, dict) else getattr(size, "shortest_edge", None)
    return bool(shortest) and bool(getattr(image_processor, "do_center_crop", False))


def _shrink_longer_side(img: Image.Image, bound: int) -> Image.Image:
    width, height = img.size
    longer = max(width, height)
    if longer <= bound:
        return img
    scale = bound / longer
    size = (bound, max(1, round(height * scale))) if width >= height else (max(1, round(width * scale)), bound)
    return img.resize(size, Image.Resampling.BICUBIC)


def _crop_to_aspect(img: Image.Image, max_aspect: int) -> Image.Image:
    width, height = img.size
    if width > max_aspect * height:
        keep = max_aspect * height
        left = (width - keep) // 2
        return img.crop((left, 0, left + keep, height))
    if height > max_aspect * width:
        keep = max_aspect * width
        top = (height - keep) // 2
        return img.crop((0, top, width, top + keep))
    return img


def _aspect_ratio_of(model_cfg: Any) -> str | None:
    """The aspect-ratio setting from upstream's third argument: a config object or dict, or the string itself."""
    if model_cfg is None or isinstance(model_cfg, str):
        return model_cfg
    if isinstance(model_cfg, Mapping):
        return model_cfg.get("image_aspect_ratio")
    return getattr(model_cfg, "image_aspect_ratio", None)  # upstream reads it the same way (absent: None)


def process_images(images: Sequence[Image.Image], image_processor: Any, model_cfg: Any) -> torch.Tensor:
    """Preprocess images into pixel values ``[B, 3, H, W]`` (float32).

    ``model_cfg`` is upstream's argument: the model config (``model.config``; its ``image_aspect_ratio`` is
    used), a dict holding that key, or the aspect ratio itself (``"pad"``, ``"square"`` or ``None``).
    ``"pad"``: pad each image to a square with the processor's mean colour first (LLaVA-1.5's setting), so the
    centre crop keeps the whole picture. ``"square"`` or ``None``: hand the image to the processor as is (resize
    shortest side, centre crop). Non-RGB images go through :func:`to_rgb` with the mean colour as background;
    extreme sizes and aspect ratios are bounded first (module docstring). An image with a side of 0 raises
    :class:`ImageLoadError`.
    """
    image_aspect_ratio = _aspect_ratio_of(model_cfg)
    if image_aspect_ratio not in (*IMAGE_ASPECT_RATIOS, None):
        hint = " (LLaVA-1.6's anyres tiling is not part of this LLaVA-1.5 codebase)" if image_aspect_ratio == "anyres" else ""
        raise ValueError(
            f"unsupported image_aspect_ratio {image_aspect_ratio!r}{hint}; expected one of {IMAGE_ASPECT_RATIOS} or None"
        )
    if len(images) == 0:
        raise ValueError("process_images needs at least one image")
    color = background_color(image_processor)
    crop_extreme = image_aspect_ratio != "pad" and _shortest_edge_center_crop(image_processor)
    pad_bound: int | None = None
    prepared = []
    for img in images:
        if img.mode != "RGB" or img.has_transparency_data or 0 in img.size:
            img = to_rgb(img, color)
        if image_aspect_ratio == "pad":
            if max(img.size) > MAX_PAD_SIDE:
                if pad_bound is None:  # measured only when needed: it runs the processor once
                    pad_bound = max(MAX_PAD_SIDE, 4 * max(image_processor_output_size(image_processor)))
                img = _shrink_longer_side(img, pad_bound)
            img = expand2square(img, color)
        elif crop_extreme:
            img = _crop_to_aspect(img, MAX_SQUARE_ASPECT)
        prepared.append(img)
    pixel_values = image_processor(images=prepared, return_tensors="pt")["pixel_values"]
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


# === Upstream's helpers: model names and keyword stopping ===


def get_model_name_from_path(model_path: str | os.PathLike) -> str:
    """The last component of ``model_path``; for a Trainer checkpoint folder, ``<run>_checkpoint-<step>``.

    Upstream LLaVA chose how to load a checkpoint from this name; here it is only a label (answer files'
    ``model_id``, a serving worker's model name). How a checkpoint loads is decided by its files.
    """
    parts = [part for part in str(model_path).replace(os.sep, "/").split("/") if part]
    if not parts:
        raise ValueError(f"model path {str(model_path)!r} has no name")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stops a sequence once its generated text contains one of ``keywords`` (e.g. the template's ``"</s>"``).

    ``input_ids`` is the prompt ``[B, T]``; the criterion is then called with the prompt followed by the tokens
    generated so far (transformers' and our ``generate`` convention) and looks only past the prompt. A keyword is
    found either as its exact token ids at the end, or in the decoded text of the last few tokens (a keyword can
    be split into other pieces than when tokenized alone). Returns a bool tensor ``[B]``: which rows are done.
    """

    def __init__(self, keywords: Sequence[str], tokenizer: PreTrainedTokenizerBase, input_ids: torch.Tensor) -> None:
        if isinstance(keywords, str):
            raise TypeError("keywords must be a list of strings, e.g. [stop_str]")
        self.keywords = [k for k in keywords if k]
        if not self.keywords:
            raise ValueError("KeywordsStoppingCriteria needs at least one non-empty keyword")
        self.tokenizer = tokenizer
        self.start_len = int(input_ids.shape[-1])
        bos = tokenizer.bos_token_id
        self.keyword_ids: list[torch.Tensor] = []
        for keyword in self.keywords:
            ids = list(tokenizer(keyword, add_special_tokens=False).input_ids)
            if len(ids) > 1 and ids[0] == bos:
                ids = ids[1:]
            self.keyword_ids.append(torch.tensor(ids, dtype=torch.long))
        # Text of this many trailing tokens always covers a keyword, however it was split.
        self.window = max(len(ids) for ids in self.keyword_ids) + 2

    def _row_done(self, new_tokens: torch.Tensor) -> bool:  # new_tokens: [N]
        for ids in self.keyword_ids:
            n = ids.numel()
            if 0 < n <= new_tokens.numel() and torch.equal(new_tokens[-n:].cpu(), ids):
                return True
        text = self.tokenizer.decode(new_tokens[-self.window :], skip_special_tokens=False)
        return any(keyword in text for keyword in self.keywords)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None = None, **kwargs: Any) -> torch.BoolTensor:
        new = input_ids[:, self.start_len :]  # [B, N]
        done = [new.shape[1] > 0 and self._row_done(row) for row in new]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
