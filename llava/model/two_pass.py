"""VoCo-LLaMA's two-pass inference: compress an image once, keep only its VoCo cache, answer questions against it.

The paper (section 3.3, Fig. 4) describes it and its authors never released it. For a prompt
``[prefix] <image> [suffix]`` under a schedule with ``compress_tokens = N``:

1. **Compress** (``compress_images``): ``[prefix] <image> <voco> x N`` through every layer with a cache. Nothing
   follows the VoCo tokens, so this is plain causal attention (flash kernels run it). Then every layer's cache is
   cropped to the keys the text after the VoCo tokens may see (``compression_tokens.visible_keys``): with ``code``
   visibility the N VoCo tokens only, with ``paper`` the prefix and the N VoCo tokens. The 576 vision tokens'
   keys and values are gone from every layer (``kv_cache.crop_cache``).
2. **Answer** (``compressed_prefill``): the suffix runs against that cache with ``decoder.decode_chunk`` at its
   persistent positions (after the image and the VoCo tokens), then decoding continues as usual.

The logits equal the one-pass forward under the same visibility (tests/test_voco.py): in one pass the VoCo rows
see the prefix and the image causally and the suffix rows see exactly the keys the crop keeps.

``ImageCache`` keeps compressed images by (pixels, prefix tokens, schedule): a follow-up question about the same
image (the web demo's and the terminal chat's next turn, or the eval runner's next question with
``--reuse-image-cache``) skips the vision tower and the 576 vision tokens entirely. Rows without an image have
no VoCo tokens: their whole prompt is the suffix, against an empty cache.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.compression_tokens import visible_keys
from llava.model.decoder import GenerationState, VisionCounts, decode_chunk, run_decoder
from llava.model.kv_cache import CacheRow, crop_cache, split_rows, stack_rows
from llava.model.reduction.config import ReductionConfig

if TYPE_CHECKING:
    from llava.model.llava_llama import LlavaLlamaForCausalLM

__all__ = ["CompressedImage", "CompressedPrefill", "ImageCache", "compress_images", "compressed_prefill",
           "split_at_image"]


@dataclass
class CompressedImage:
    """One image compressed under one prefix and schedule: what answering a question about it needs."""

    row: CacheRow  # every layer's kept keys and values, and the position the text after it starts at
    last_hidden: torch.Tensor  # [D] final-norm hidden state of the last VoCo token (a prompt ending at the image)
    entering: torch.Tensor  # [L] image tokens each layer processed while compressing (VisionCounts conventions)
    after_filter: torch.Tensor  # [L]


class ImageCache:
    """Compressed images of one model, least recently used first out. Keyed by the image's pixels, the prompt
    tokens before it and the schedule, so a changed system prompt or schedule compresses again. ``hits`` and
    ``misses`` count lookups. Safe to share between threads (the web demo's workers)."""

    def __init__(self, max_images: int = 32) -> None:
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        self.max_images = max_images
        self._items: OrderedDict[str, CompressedImage] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> CompressedImage | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
            else:
                self.hits += 1
                self._items.move_to_end(key)
            return item

    def put(self, key: str, item: CompressedImage) -> None:
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > self.max_images:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


@dataclass
class CompressedPrefill:
    logits: torch.Tensor  # [B, V] next-token logits after the whole prompt
    generation: GenerationState  # the VoCo caches plus the suffix, ready for decode_step
    vision_counts: VisionCounts | None  # image tokens each layer processed while compressing each row's image
    reused: torch.Tensor  # [B] bool: the row's image came from the ImageCache


def split_at_image(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Left-padded ``[B, T]`` prompts -> (prefix ids [B, P] ending with the ``<image>`` placeholder, its mask,
    suffix ids [B, S] after the placeholder, its mask, has_image [B]), both parts left-padded. A row without an
    image has an empty prefix and its whole prompt as suffix. One host sync (P and S)."""
    B, T = input_ids.shape
    mask = attention_mask.bool()
    is_ph = (input_ids == IMAGE_TOKEN_INDEX) & mask
    has_image = is_ph.any(1)  # [B]
    ph = torch.where(has_image, is_ph.long().argmax(1), torch.full((B,), -1, device=input_ids.device))  # [B]
    start = T - mask.sum(1)  # [B] first real column (left padding)
    prefix_len = torch.where(has_image, ph - start + 1, torch.zeros_like(ph))  # [B]
    suffix_len = torch.where(has_image, T - 1 - ph, mask.sum(1))  # [B]
    P, S = (int(x) for x in torch.stack([prefix_len.max(), suffix_len.max()]).tolist())
    j = torch.arange(P, device=input_ids.device).unsqueeze(0)  # [1, P]
    src = (ph - P + 1).unsqueeze(1) + j  # [B, P] right-aligned at the placeholder
    prefix_mask = j >= (P - prefix_len).unsqueeze(1)
    prefix_ids = torch.where(prefix_mask, torch.gather(input_ids, 1, src.clamp(0, T - 1)), torch.zeros_like(src))
    cols = torch.arange(T - S, T, device=input_ids.device).unsqueeze(0)  # [1, S]
    suffix_mask = mask[:, T - S:] & (cols > ph.unsqueeze(1))
    suffix_ids = torch.where(suffix_mask, input_ids[:, T - S:], torch.zeros_like(input_ids[:, T - S:]))
    return prefix_ids, prefix_mask.long(), suffix_ids, suffix_mask, has_image


def compress_images(
    model: LlavaLlamaForCausalLM,
    prefix_ids: torch.Tensor,  # [M, P] left-padded, each row ending with its <image> placeholder
    prefix_mask: torch.Tensor,  # [M, P]
    images: torch.Tensor,  # [M, 3, H, W]
    reduction: ReductionConfig,
) -> list[CompressedImage]:
    """Pass 1 for M images: the prefix, the image and its VoCo tokens through every layer, each layer's cache
    cropped to what later text may see."""
    batch = model.multimodal_batch(prefix_ids, prefix_mask, images, None, reduction)  # inserts the VoCo tokens
    out = run_decoder(model.model, batch, reduction, None, use_cache=True, count_vision=True)
    gen = out.generation
    crop_cache(gen, visible_keys(out.state, batch.has_image, reduction))
    last = out.state.valid.long().cumsum(1).argmax(1)  # [M] the last valid column (the last VoCo token)
    hidden = out.hidden[torch.arange(len(last), device=last.device), last]  # [M, D]
    counts = out.vision_counts
    return [CompressedImage(row, hidden[m], counts.entering[m], counts.after_filter[m])
            for m, row in enumerate(split_rows(gen))]


def image_keys(images: torch.Tensor, prefix_ids: torch.Tensor, prefix_mask: torch.Tensor,
               reduction: ReductionConfig) -> list[str]:
    """One ImageCache key per row: sha256 of the pixels (dtype included), the prefix token ids and the schedule."""
    schedule = json.dumps(reduction.to_dict(), sort_keys=True).encode()
    pixels = images.detach().contiguous().cpu()
    keys = []
    for b in range(images.shape[0]):
        digest = hashlib.sha256(str(pixels.dtype).encode())
        digest.update(pixels[b].view(torch.uint8).numpy().tobytes())
        digest.update(json.dumps(prefix_ids[b][prefix_mask[b].bool()].tolist()).encode())
        digest.update(schedule)
        keys.append(digest.hexdigest())
    return keys


def compressed_prefill(
    model: LlavaLlamaForCausalLM,
    input_ids: torch.Tensor,  # [B, T] left-padded
    attention_mask: torch.Tensor,  # [B, T]
    images: torch.Tensor | None,  # [B, 3, H, W]
    reduction: ReductionConfig,
    image_cache: ImageCache | None = None,
) -> CompressedPrefill:
    """The prefill of ``generate(use_cache=True)`` under a VoCo schedule: compress the images that ``image_cache``
    does not hold (one batched pass), then run every row's text after its image against its VoCo cache."""
    lm = model.model
    B = input_ids.shape[0]
    device = input_ids.device
    prefix_ids, prefix_mask, suffix_ids, suffix_mask, has_image = split_at_image(input_ids, attention_mask)
    rows: list[CompressedImage | None] = [None] * B
    reused = torch.zeros(B, dtype=torch.bool, device=device)
    image_rows = torch.nonzero(has_image).flatten().tolist()
    if image_rows and images is None:
        raise ValueError("the prompts hold an <image> placeholder but no images were given")
    keys = image_keys(images[image_rows], prefix_ids[image_rows], prefix_mask[image_rows], reduction) if image_rows else []
    todo: dict[str, int] = {}  # key -> first row that needs it compressed (rows sharing an image compress once)
    for b, key in zip(image_rows, keys):
        hit = image_cache.get(key) if image_cache is not None else None
        if hit is not None:
            rows[b], reused[b] = hit, True
        else:
            todo.setdefault(key, b)
    if todo:
        sel = torch.tensor(list(todo.values()), device=device)
        fresh = compress_images(model, prefix_ids[sel], prefix_mask[sel], images[sel], reduction)
        made = dict(zip(todo, fresh))
        for b, key in zip(image_rows, keys):
            if rows[b] is None:
                rows[b] = made[key]
        if image_cache is not None:
            for key, item in made.items():
                image_cache.put(key, item)
    L = model.config.num_hidden_layers
    empty = CacheRow([], [], torch.zeros((), dtype=torch.long, device=device))
    gen = stack_rows([r.row if r is not None else empty for r in rows], lm.config)
    zeros = torch.zeros(L, device=device, dtype=torch.long)
    counts = VisionCounts(torch.stack([r.entering if r is not None else zeros for r in rows]),
                          torch.stack([r.after_filter if r is not None else zeros for r in rows]))
    if suffix_ids.shape[1]:
        h = decode_chunk(lm, lm.embed_tokens(suffix_ids), gen, valid=suffix_mask)  # [B, S, D]
        hidden = lm.norm(h[:, -1])  # [B, D]: the last column is each row's last prompt token (left padding)
    else:
        hidden = torch.zeros(B, model.config.hidden_size, device=device, dtype=model.dtype)
    if image_rows:  # a prompt that ends with its image answers from the last VoCo token
        ended = ~suffix_mask.any(1) if suffix_ids.shape[1] else torch.ones(B, dtype=torch.bool, device=device)
        last_voco = torch.stack([r.last_hidden if r is not None else hidden[b] for b, r in enumerate(rows)])
        hidden = torch.where(ended.unsqueeze(1), last_voco.to(hidden.dtype), hidden)
    logits = model.lm_head(hidden).float()  # [B, V]
    return CompressedPrefill(logits=logits, generation=gen, vision_counts=counts, reused=reused)
