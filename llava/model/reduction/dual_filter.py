"""MustDrop's dual-attention filter: which vision tokens a stage keeps, decided per sample by two thresholds.

A vision token is dropped only when both hold: its attention summed over the text query rows is below
``global_thr`` of the total the vision tokens receive, and its largest attention from any single text query is
below ``individual_thr``. Key tokens (the vision stage's key set) are always kept. Counts therefore differ per
sample; the kept tokens are gathered to the front of the span in their original order and the batch is padded to
the widest row with invalid filler slots, so the decoder loop stays one batched gather.
"""

from __future__ import annotations

import torch


def dual_attention_keep(
    attention: torch.Tensor,  # [B, Q, N] attention of each query row to each vision slot (mean over heads)
    query_ok: torch.Tensor,  # [B, Q] bool: real query rows
    vision_valid: torch.Tensor,  # [B, N] bool: slots that hold a token
    vision_key: torch.Tensor | None,  # [B, N] bool: key tokens, never dropped
    global_thr: float,
    individual_thr: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (keep [B, K] ascending slot indices, keep_valid [B, K]); K is the batch's largest kept count."""
    w = query_ok.unsqueeze(-1)  # [B, Q, 1]
    summed = (attention * w).sum(1)  # [B, N] global attention
    total = (summed * vision_valid).sum(1, keepdim=True)  # [B, 1]
    peak = attention.masked_fill(~w, float("-inf")).amax(1)  # [B, N] individual attention
    dropped = (summed < total * global_thr) & (peak < individual_thr)
    if vision_key is not None:
        dropped = dropped & ~vision_key
    kept = vision_valid & ~dropped  # [B, N]
    width = int(kept.sum(1).max()) if kept.numel() else 0  # one host sync per stage: the tensor width
    order = torch.sort(kept.to(torch.int8), dim=1, descending=True, stable=True)
    keep, keep_valid = order.indices[:, :width], order.values[:, :width].bool()
    # Filler slots point at some dropped slot; order the real ones ascending (they already are: stable sort).
    return keep, keep_valid
