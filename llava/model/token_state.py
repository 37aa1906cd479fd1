"""The token set one decoder layer sees, and the three moves of a reduction schedule: inject, prune, exit.

Every move is a single batched gather with an index map ``[B, S_new]`` into the current tensors, so hidden states,
persistent positions, validity and labels always move together. Each row keeps the layout
``[prefix text][vision span of num_vision slots][suffix text]`` (plus padding on one side); rows without an image
carry masked vision slots so the batch stays rectangular and every rank runs the same modules.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from llava.constants import IGNORE_INDEX
from llava.model.multimodal_inputs import MultimodalBatch


@dataclass
class TokenState:
    hidden: torch.Tensor  # [B, S, D]
    positions: torch.Tensor  # [B, S] persistent positions
    valid: torch.Tensor  # [B, S] bool: attends and is attended to
    labels: torch.Tensor | None  # [B, S]
    vision_start: torch.Tensor  # [B] index of the first vision slot (== MultimodalBatch.vision_insert)
    num_vision: int  # vision slots currently in the tensor (0 before injection and after exit)
    vision_key: torch.Tensor | None = None  # [B, num_vision] bool: key tokens (MustDrop), moved with the span

    def vision_columns(self) -> torch.Tensor:
        """[B, num_vision] indices of the vision span in the current tensor."""
        return self.vision_start.unsqueeze(1) + torch.arange(self.num_vision, device=self.valid.device).unsqueeze(0)

    def vision_valid(self) -> torch.Tensor:
        """[B, num_vision] bool: which vision slots hold a token."""
        return torch.gather(self.valid, 1, self.vision_columns())

    def vision_count(self) -> torch.Tensor:
        """[B] valid vision tokens in the current set."""
        return self.vision_valid().sum(1)

    def text_to_current(self, text_index: torch.Tensor) -> torch.Tensor:
        """Maps text-stream indices [B, Q] to indices in the current tensor."""
        return text_index + (text_index >= self.vision_start.unsqueeze(1)).long() * self.num_vision


def text_state(batch: MultimodalBatch) -> TokenState:
    return TokenState(
        hidden=batch.text_embeds,
        positions=batch.text_positions,
        valid=batch.text_valid,
        labels=batch.text_labels,
        vision_start=batch.vision_insert,
        num_vision=0,
    )


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3:
        return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return torch.gather(x, 1, index)


def _span_index(vision_start: torch.Tensor, new_len: int, span: int, shift: int, span_src: torch.Tensor) -> torch.Tensor:
    """Index map for ``[prefix][span new slots][suffix]``: prefix stays, the span reads ``span_src``, the suffix
    reads from ``shift`` slots further on. Shapes: vision_start [B], span_src [B, span] -> [B, new_len]."""
    B = vision_start.shape[0]
    j = torch.arange(new_len, device=vision_start.device).unsqueeze(0).expand(B, -1)  # [B, S_new]
    rel = j - vision_start.unsqueeze(1)
    in_span = (rel >= 0) & (rel < span)
    if span > 0:
        from_span = torch.gather(span_src, 1, rel.clamp(0, span - 1))
    else:
        from_span = j
    return torch.where(rel < 0, j, torch.where(in_span, from_span, j + shift))


def inject_vision(state: TokenState, batch: MultimodalBatch, vision_positions: torch.Tensor | None = None) -> TokenState:
    """Inserts the projector's features (not run through the shallow layers) at ``vision_positions`` [B, N],
    by default their persistent positions in the full sequence."""
    B, T, _ = state.hidden.shape
    N = batch.num_vision
    device = state.hidden.device
    vis_src = T + torch.arange(N, device=device).unsqueeze(0).expand(B, -1)  # [B, N] into cat([text, vision])
    index = _span_index(state.vision_start, T + N, N, -N, vis_src)  # [B, T + N]
    hidden = _gather(torch.cat([state.hidden, batch.vision_embeds.to(state.hidden.dtype)], 1), index)
    vis_pos = vision_positions
    if vis_pos is None:
        vis_pos = batch.vision_position_start.unsqueeze(1) + torch.arange(N, device=device).unsqueeze(0)  # [B, N]
    positions = _gather(torch.cat([state.positions, vis_pos], 1), index)
    vis_valid = batch.has_image.unsqueeze(1).expand(-1, N)
    if batch.vision_valid is not None:
        vis_valid = vis_valid & batch.vision_valid
    valid = _gather(torch.cat([state.valid, vis_valid], 1), index)
    labels = None
    if state.labels is not None:
        vis_labels = torch.full((B, N), IGNORE_INDEX, dtype=state.labels.dtype, device=device)
        labels = _gather(torch.cat([state.labels, vis_labels], 1), index)
    key = None if batch.vision_key is None else batch.vision_key & vis_valid
    return replace(state, hidden=hidden, positions=positions, valid=valid, labels=labels, num_vision=N,
                   vision_key=key)


def keep_vision(
    state: TokenState, keep: torch.Tensor, scale: torch.Tensor | None = None, keep_valid: torch.Tensor | None = None
) -> TokenState:
    """Keeps ``keep`` [B, k] (indices into the current vision span, ascending) and drops the other vision slots.

    ``scale`` [B, k] multiplies the kept hidden states; it is exactly 1 in the forward pass and carries the
    straight-through gradient of the differentiable top-k. ``keep_valid`` [B, k] marks filler slots of rows that
    keep fewer than k tokens (thresholded selections): they are carried as invalid slots.
    """
    B, S, _ = state.hidden.shape
    k = keep.shape[1]
    drop = state.num_vision - k
    index = _span_index(state.vision_start, S - drop, k, drop, state.vision_start.unsqueeze(1) + keep)
    hidden = _gather(state.hidden, index)
    if scale is not None and k > 0:
        new_slots = torch.arange(index.shape[1], device=index.device).unsqueeze(0)  # [1, S_new]
        rel = new_slots - state.vision_start.unsqueeze(1)  # [B, S_new] offset into the kept span
        in_span = (rel >= 0) & (rel < k)
        span_scale = torch.gather(scale, 1, rel.clamp(0, k - 1))  # [B, S_new]
        ones = torch.ones((), dtype=span_scale.dtype, device=span_scale.device)
        hidden = hidden * torch.where(in_span, span_scale, ones).unsqueeze(-1).to(hidden.dtype)
    valid = _gather(state.valid, index)
    if keep_valid is not None and k > 0:
        rel = torch.arange(index.shape[1], device=index.device).unsqueeze(0) - state.vision_start.unsqueeze(1)
        in_span = (rel >= 0) & (rel < k)
        valid = valid & (~in_span | torch.gather(keep_valid, 1, rel.clamp(0, k - 1)))
    key = None
    if state.vision_key is not None:
        key = torch.gather(state.vision_key, 1, keep) if k > 0 else keep.new_zeros(keep.shape, dtype=torch.bool)
        if keep_valid is not None:
            key = key & keep_valid
    return replace(
        state,
        hidden=hidden,
        positions=_gather(state.positions, index),
        valid=valid,
        labels=None if state.labels is None else _gather(state.labels, index),
        num_vision=k,
        vision_key=key,
    )


def exit_vision(state: TokenState) -> TokenState:
    """Removes every remaining vision slot; the text keeps its persistent positions."""
    empty = torch.zeros(state.hidden.shape[0], 0, dtype=torch.long, device=state.hidden.device)
    return keep_vision(state, empty)


def renumber(state: TokenState) -> TokenState:
    """Compacted positions: the valid tokens of the current set numbered 0..n-1 in order (PDrop's reset)."""
    positions = (state.valid.long().cumsum(1) - 1).clamp(min=0)  # [B, S]
    return replace(state, positions=positions)
