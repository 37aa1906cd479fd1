"""Attention masks for a token set whose keys may include padding and masked vision slots.

Tensor order is causal order in every row (the token-state layout guarantees it), so a key is visible to a query
when it is valid and not later in the tensor. We build the mask ourselves instead of calling
``create_causal_mask``: the sequence changes length between stages, positions have gaps (transformers would read
gaps as packed sequences), and with a KV cache every layer has its own key length.
"""

from __future__ import annotations

import torch


def build_attention_mask(
    key_valid: torch.Tensor,  # [B, K] bool; the last q_len keys are the queries
    q_len: int,
    attn_implementation: str,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """Returns what ``attn_implementation`` expects: a 2-D mask for flash kernels, a boolean ``[B, 1, Q, K]`` mask
    for sdpa, an additive float mask for eager."""
    if attn_implementation.startswith("flash_attention"):
        # Flash kernels unpad with the 2-D mask and apply causality by order; valid tokens are contiguous per row.
        return key_valid.long()
    B, K = key_valid.shape
    device = key_valid.device
    q_idx = torch.arange(K - q_len, K, device=device).unsqueeze(1)  # [Q, 1]
    k_idx = torch.arange(K, device=device).unsqueeze(0)  # [1, K]
    allowed = (k_idx <= q_idx).unsqueeze(0) & key_valid.unsqueeze(1)  # [B, Q, K]
    # A padding query sees no valid key; letting it see everything keeps its softmax finite (its output is unused).
    allowed = allowed | ~allowed.any(-1, keepdim=True)
    allowed = allowed.unsqueeze(1)  # [B, 1, Q, K]
    if attn_implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    return allowed
