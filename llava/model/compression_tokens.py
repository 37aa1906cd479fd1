"""VoCo-LLaMA's compression tokens: where they sit in a prompt, what the rows after them may see, and the ``<voco>``
token itself (tokenizer, embeddings, config).

Layout. A schedule with ``compress_tokens = N`` puts N ``<voco>`` tokens right after the image:
``[prefix] <image> <voco> x N [suffix]``. The authors write ``<image> \\n <voco> x N \\n`` and move the system
prompt after it (Yxxxb/VoCo-LLaMA ``llava/train/train_compress.py``); we keep LLaVA-1.5's prompts as they are and
put the VoCo tokens directly after the image, before the prompt's own ``\\n``: under the authors' ``code`` mask the
newline between the image and the VoCo tokens is hidden from the text like the image itself, so it only adds one
more token the VoCo tokens read. Their labels are ignored.

One place inserts them: ``insert_compress_tokens``, called by ``LlavaLlamaForCausalLM.multimodal_batch`` whenever
the schedule it runs has ``compress_tokens > 0``. Every prompt builder (training preprocessing, the eval runner,
the terminal chat, the web demo, the lmms-eval plugin) hands the model ``<image>`` prompts as for plain LLaVA and
gets the VoCo tokens from the schedule, so none can forget them or add them to a checkpoint that was not trained
with them. What a prompt costs in context is ``image_prompt_tokens`` per image.

Visibility (``compression_visibility``): rows up to the last VoCo token are causal; every row after it (the text
and every generated token) may not see ``code``: any key before the first VoCo token (BOS, the prompt before the
image and the image, as the authors' released mask), or ``paper``: the vision span only (the paper's Eq. 3). Rows
without an image carry no VoCo tokens and are left alone. The same rule decides which keys a generation cache must
keep (``visible_keys``): the VoCo tokens (and with ``paper`` the prompt before the image) and the text after them.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.attention_mask import BlockedPairs
from llava.model.reduction.config import ReductionConfig, ReductionConfigError
from llava.model.token_state import TokenState

logger = logging.getLogger(__name__)

COMPRESS_TOKEN = "<voco>"

__all__ = [
    "COMPRESS_TOKEN",
    "add_compress_token",
    "check_compress_support",
    "check_compress_tokenizer",
    "compression_visibility",
    "image_prompt_tokens",
    "insert_compress_tokens",
    "visible_keys",
]


def image_prompt_tokens(num_vision_tokens: int, reduction: ReductionConfig) -> int:
    """Sequence slots one ``<image>`` placeholder takes: its vision tokens plus the schedule's VoCo tokens."""
    return num_vision_tokens + reduction.compress_tokens


def check_compress_support(config: Any, reduction: ReductionConfig) -> None:
    """A VoCo schedule needs a checkpoint trained with ``<voco>`` tokens (``config.compress_token_id``)."""
    if reduction.compress_tokens and getattr(config, "compress_token_id", None) is None:
        raise ReductionConfigError(
            f"schedule {reduction.name!r} puts {reduction.compress_tokens} VoCo tokens after the image, but this "
            "checkpoint has no <voco> token (config.json has no compress_token_id): VoCo-LLaMA is trained, not "
            f"training-free; train one with REDUCTION={reduction.name} bash scripts/finetune.sh"
        )


def insert_compress_tokens(
    input_ids: torch.Tensor,  # [B, T] with at most one IMAGE_TOKEN_INDEX per row
    attention_mask: torch.Tensor,  # [B, T] 1 = token
    labels: torch.Tensor | None,  # [B, T] or None
    token_id: int,
    n: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Inserts ``n`` copies of ``token_id`` right after each row's ``<image>`` placeholder (labels ignored).

    Returns tensors of width ``T + n``. Rows keep their padding side: with left padding (some row starts with
    padding) a text-only row gets ``n`` more padding slots on the left, otherwise on the right. One batched gather.
    """
    B, T = input_ids.shape
    device = input_ids.device
    mask = attention_mask.bool()
    is_ph = (input_ids == IMAGE_TOKEN_INDEX) & mask  # [B, T]
    has_image = is_ph.any(1)  # [B]
    ph = torch.where(has_image, is_ph.long().argmax(1), torch.full_like(has_image, T, dtype=torch.long))  # [B]
    left_padded = bool((~mask[:, 0]).any())
    cols = torch.arange(T + n, device=device).unsqueeze(0)  # [1, T + n]
    is_voco = has_image.unsqueeze(1) & (cols > ph.unsqueeze(1)) & (cols <= ph.unsqueeze(1) + n)  # [B, T + n]
    image_src = torch.where(cols <= ph.unsqueeze(1), cols, cols - n)
    text_src = cols - n if left_padded else cols
    src = torch.where(has_image.unsqueeze(1), image_src, text_src)  # [B, T + n] source column
    inside = (src >= 0) & (src < T) & ~is_voco
    src = src.clamp(0, T - 1)
    new_mask = (torch.gather(mask, 1, src) & inside) | is_voco
    new_ids = torch.where(is_voco, torch.full_like(src, token_id), torch.gather(input_ids, 1, src))
    new_ids = torch.where(new_mask, new_ids, torch.zeros_like(new_ids))  # padding slots hold a valid id
    new_labels = None
    if labels is not None:
        new_labels = torch.where(inside & new_mask, torch.gather(labels, 1, src), torch.full_like(src, IGNORE_INDEX))
    return new_ids, new_mask.to(attention_mask.dtype), new_labels


def _spans(state: TokenState, has_image: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """([1, S] columns, [B, 1] first VoCo column, [B, 1] one past the last) in the current layout, where the
    VoCo tokens follow the vision span. Rows without an image get an empty span past the end."""
    S = state.valid.shape[1]
    cols = torch.arange(S, device=state.valid.device).unsqueeze(0)
    start = state.vision_start + state.num_vision  # [B]
    start = torch.where(has_image, start, torch.full_like(start, S)).unsqueeze(1)
    return cols, start, start + n


def compression_visibility(
    state: TokenState, has_image: torch.Tensor, reduction: ReductionConfig, attn_implementation: str
) -> BlockedPairs | None:
    """The pairs VoCo forbids in the current token set, or None (no VoCo schedule, or nothing follows the VoCo
    tokens: the compression pass of the two-pass path is plain causal attention, which flash kernels run)."""
    if not reduction.compress_tokens or state.num_vision == 0:
        return None
    cols, start, end = _spans(state, has_image, reduction.compress_tokens)
    queries = (cols >= end) & has_image.unsqueeze(1)  # [B, S] rows after the last VoCo token
    if reduction.compress_visibility == "code":
        keys = cols < start  # everything before the first VoCo token
    else:
        keys = (cols >= state.vision_start.unsqueeze(1)) & (cols < start)  # the vision span
    if attn_implementation.startswith("flash_attention") and not bool((queries & state.valid).any()):
        return None  # one host sync, flash only: a compression-only pass needs no pair-wise mask
    return BlockedPairs(queries=queries, keys=keys & has_image.unsqueeze(1))


def visible_keys(state: TokenState, has_image: torch.Tensor, reduction: ReductionConfig) -> torch.Tensor:
    """[B, S] bool: the valid keys a row after the VoCo tokens may see, i.e. what a generation cache must keep
    (``code``: from the first VoCo token on; ``paper``: all but the vision span; rows without an image: all)."""
    blocked = compression_visibility(state, has_image, reduction, "sdpa")
    if blocked is None:
        return state.valid
    return state.valid & ~blocked.keys


# --------------------------------------------------------------------------------------------------- the token
def add_compress_token(tokenizer: Any, model: Any) -> int:
    """Adds ``<voco>`` to the tokenizer (a special token) and, when the model has no row for it yet, one randomly
    initialised row to its input and output embeddings (normal, std ``initializer_range``, as the authors'
    transformers 4.37 did; not transformers 5's mean resizing). Records the id in ``config.compress_token_id``.
    Idempotent: a tokenizer and model that already have it (a VoCo checkpoint trained further) are kept."""
    from transformers import AddedToken

    token_id = tokenizer.convert_tokens_to_ids(COMPRESS_TOKEN)
    if token_id is None or token_id == tokenizer.unk_token_id:
        tokenizer.add_tokens([AddedToken(COMPRESS_TOKEN, special=True, normalized=False)], special_tokens=True)
        token_id = tokenizer.convert_tokens_to_ids(COMPRESS_TOKEN)
        logger.info("added %s to the tokenizer as id %d", COMPRESS_TOKEN, token_id)
    rows = model.get_input_embeddings().weight.shape[0]
    if hasattr(model.get_input_embeddings().weight, "ds_shape"):  # ZeRO-3 partitioned
        rows = model.get_input_embeddings().weight.ds_shape[0]
    if token_id >= rows:
        model.resize_token_embeddings(max(token_id + 1, len(tokenizer)), mean_resizing=False)
        logger.info("resized the embeddings to %d rows for %s (random init)", max(token_id + 1, len(tokenizer)),
                    COMPRESS_TOKEN)
    model.config.compress_token_id = int(token_id)
    return int(token_id)


def check_compress_tokenizer(tokenizer: Any, config: Any) -> None:
    """A VoCo checkpoint's tokenizer must map ``<voco>`` to the id its config and embeddings were trained with."""
    expected = getattr(config, "compress_token_id", None)
    if expected is None:
        return
    found = tokenizer.convert_tokens_to_ids(COMPRESS_TOKEN)
    if found != expected:
        raise ValueError(
            f"the checkpoint was trained with {COMPRESS_TOKEN} as token id {expected} (config.json "
            f"compress_token_id) but its tokenizer maps {COMPRESS_TOKEN} to {found}: the tokenizer files do not "
            "belong to these weights; copy the tokenizer the training run saved next to them"
        )
