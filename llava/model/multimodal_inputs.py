"""Splice of the `<image>` placeholder: token ids + projector features -> a text stream and a vision stream.

Unlike upstream, the vision features are not pasted into one long embedding tensor here. The decoder loop
(`llava.model.decoder`) inserts them at the reduction schedule's injection layer, so this module returns the text
stream with its *persistent* positions (a gap is reserved where the image sits) and an explicit description of
where the vision span belongs in each row. Nothing is stored on a module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX


class MultimodalInputError(ValueError):
    """Inputs that cannot be spliced (e.g. two images in one sample); the message says which sample."""


@dataclass
class MultimodalBatch:
    """One batch, split into a text stream and a vision stream, with the layout that joins them."""

    text_embeds: torch.Tensor  # [B, T, D] text token embeddings, placeholder removed, padding kept on its side
    text_valid: torch.Tensor  # [B, T] bool: real text token (not padding)
    text_positions: torch.Tensor  # [B, T] persistent positions: text after the image skips N_v slots
    text_labels: torch.Tensor | None  # [B, T] labels aligned with text_embeds, or None at inference
    vision_embeds: torch.Tensor  # [B, N_v, D] projector output (embedding level), computed for every sample
    has_image: torch.Tensor  # [B] bool: the sample had an <image> placeholder
    vision_insert: torch.Tensor  # [B] long: index in the text stream before which the vision span sits
    vision_position_start: torch.Tensor  # [B] long: persistent position of the first vision token
    query_text_index: torch.Tensor  # [B, Q] long: text index of the token *after* each scoring query (see below)
    query_valid: torch.Tensor  # [B, Q] bool
    left_padded: bool
    # Set by the caller when the vision stage decides per image (MustDrop's local merging and key set):
    vision_valid: torch.Tensor | None = None  # [B, N_v] bool: slot holds a token (merged-away slots do not)
    vision_key: torch.Tensor | None = None  # [B, N_v] bool: key tokens, never dropped by a later stage
    # Parallel vision decoupling: returns (vision_embeds, vision_valid, vision_key) when the injection layer needs
    # them; until then vision_embeds is a placeholder that only carries the shape.
    vision_pending: Callable[[], tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] | None = None

    def resolve_vision(self) -> None:
        """Joins a decoupled vision stage (no-op otherwise)."""
        if self.vision_pending is not None:
            self.vision_embeds, self.vision_valid, self.vision_key = self.vision_pending()
            self.vision_pending = None

    @property
    def num_vision(self) -> int:
        return self.vision_embeds.shape[1]

    def text_lengths(self) -> torch.Tensor:  # [B]
        return self.text_valid.sum(1)

    def full_lengths(self) -> torch.Tensor:  # [B] text + vision tokens, as upstream would have spliced them
        return self.text_lengths() + self.has_image.long() * self.num_vision


def split_multimodal_batch(
    input_ids: torch.Tensor,  # [B, T] with at most one IMAGE_TOKEN_INDEX per row
    attention_mask: torch.Tensor,  # [B, T] 1 = token, 0 = padding
    vision_embeds: torch.Tensor,  # [B, N_v, D]
    embed_tokens: torch.nn.Module,
    labels: torch.Tensor | None = None,  # [B, T]
    score_query: str = "last_nround",
) -> MultimodalBatch:
    """Builds the text stream, persistent positions and scoring queries without a per-sample Python loop.

    Scoring queries (``score_query``): ``last_nround`` (default): in training (labels given) the token just before
    the first token of every answer span (the paper's "multi-round last token"), at inference the last prompt
    token. ``last_1round``: only the first answer span's in training, the last prompt token at inference.
    ``all_text``: every text token after the image. We store the index of the
    text token that *follows* the query (the answer start, or one past the last prompt token) because the query
    itself may be a vision token (the `plain` template puts the caption right after the image) and vision tokens
    move as they are pruned; the decoder resolves "the token before it" in the current layout at each stage.
    """
    B, T = input_ids.shape
    device = input_ids.device
    mask = attention_mask.bool()
    is_ph = input_ids == IMAGE_TOKEN_INDEX  # [B, T]
    n_ph = is_ph.sum(1)  # [B]
    # One host sync per forward (not per layer) to give a clear error instead of a silent mis-splice.
    if bool((n_ph > 1).any()):
        bad = torch.nonzero(n_ph > 1).flatten().tolist()
        raise MultimodalInputError(f"samples {bad} have more than one <image> placeholder; LLaVA-1.5 supports one")
    if bool((is_ph & ~mask).any()):
        raise MultimodalInputError("an <image> placeholder sits on a padded position (attention_mask == 0)")
    has_image = n_ph == 1  # [B]
    left_padded = bool((~mask[:, 0]).any())

    cols = torch.arange(T, device=device).unsqueeze(0)  # [1, T]
    ph_idx = torch.where(has_image, is_ph.long().argmax(1), torch.zeros_like(n_ph))  # [B]
    hi = has_image.unsqueeze(1)
    if left_padded:
        # Row becomes [pad (+1), prefix, suffix]: tokens up to the placeholder shift one slot right.
        src = torch.where(hi & (cols <= ph_idx.unsqueeze(1)), cols - 1, cols)
        vision_insert = torch.where(has_image, ph_idx + 1, torch.zeros_like(ph_idx))
    else:
        # Row becomes [prefix, suffix, pad (+1)]: tokens after the placeholder shift one slot left.
        src = torch.where(hi & (cols >= ph_idx.unsqueeze(1)), cols + 1, cols)
        vision_insert = torch.where(has_image, ph_idx, mask.sum(1))
    in_range = (src >= 0) & (src < T)
    src_c = src.clamp(0, T - 1)
    text_valid = in_range & torch.gather(mask, 1, src_c) & ~torch.gather(is_ph, 1, src_c)  # [B, T]

    ids = torch.gather(input_ids, 1, src_c).clamp(min=0)  # placeholder id is never embedded
    text_embeds = embed_tokens(ids)  # [B, T, D]
    text_labels = None
    if labels is not None:
        text_labels = torch.where(text_valid, torch.gather(labels, 1, src_c), torch.full_like(labels, IGNORE_INDEX))

    N_v = vision_embeds.shape[1]
    after_image = hi & (cols >= vision_insert.unsqueeze(1))  # [B, T]
    text_positions = (text_valid.long().cumsum(1) - 1).clamp(min=0) + after_image.long() * N_v
    vision_position_start = (text_valid & (cols < vision_insert.unsqueeze(1))).sum(1)  # [B]

    query_text_index, query_valid = _scoring_queries(text_valid, text_labels, has_image, vision_insert, score_query)
    return MultimodalBatch(
        text_embeds=text_embeds,
        text_valid=text_valid,
        text_positions=text_positions,
        text_labels=text_labels,
        vision_embeds=vision_embeds,
        has_image=has_image,
        vision_insert=vision_insert,
        vision_position_start=vision_position_start,
        query_text_index=query_text_index,
        query_valid=query_valid,
        left_padded=left_padded,
    )


def _scoring_queries(
    text_valid: torch.Tensor,  # [B, T]
    text_labels: torch.Tensor | None,  # [B, T]
    has_image: torch.Tensor,  # [B]
    vision_insert: torch.Tensor,  # [B]
    score_query: str = "last_nround",
) -> tuple[torch.Tensor, torch.Tensor]:
    B, T = text_valid.shape
    device = text_valid.device
    cols = torch.arange(T, device=device).unsqueeze(0)
    if score_query == "all_text":
        # Every text token after the image is a query; store the index after each (see above).
        after = text_valid & has_image.unsqueeze(1) & (cols >= vision_insert.unsqueeze(1))  # [B, T]
        return _first_true_columns(after, 1)
    if text_labels is None:
        # Inference: the query is the last prompt token, i.e. the token before "one past the last text token".
        last = torch.where(text_valid.any(1), (text_valid.long() * (cols + 1)).argmax(1), torch.zeros(B, device=device, dtype=torch.long))
        return (last + 1).unsqueeze(1), torch.ones(B, 1, dtype=torch.bool, device=device)
    supervised = text_labels != IGNORE_INDEX  # [B, T]
    prev_ignored = torch.ones_like(supervised)
    prev_ignored[:, 1:] = ~supervised[:, :-1]
    # The full-sequence predecessor of the first text token after the image is a vision token (label ignored).
    prev_ignored |= has_image.unsqueeze(1) & (cols == vision_insert.unsqueeze(1))
    is_start = supervised & prev_ignored  # [B, T]
    idx, valid = _first_true_columns(is_start, 0)
    if score_query == "last_1round":
        idx, valid = idx[:, :1], valid[:, :1]
    return idx, valid


def _first_true_columns(flags: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] bool -> ([B, Q] column + offset of each True in ascending order, then filler; [B, Q] validity)."""
    B = flags.shape[0]
    Q = max(int(flags.sum(1).max()), 1) if B > 0 else 1  # one sync per forward: the number of queries
    order = torch.sort(flags.to(torch.int8), dim=1, descending=True, stable=True)
    return order.indices[:, :Q] + offset, order.values[:, :Q].bool()
