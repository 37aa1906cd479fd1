"""Attention masks for a token set whose keys may include padding and masked vision slots.

Tensor order is causal order in every row (the token-state layout guarantees it), so a key is visible to a query
when it is valid and not later in the tensor. We build the mask ourselves instead of calling
``create_causal_mask``: the sequence changes length between stages, positions have gaps (transformers would read
gaps as packed sequences), and with a KV cache every layer has its own key length.

With sdpa, some sets need no mask at all (``None``): transformers' sdpa integration then passes ``is_causal=True``
for a square and nothing for one query, and the kernel skips the blocks above the diagonal instead of computing and
masking them (a prefill's attention costs about half). That is exact for every valid query when

- the queries are the whole set (prefill) and each row's valid slots come first: a valid query never sees a later
  key, so trailing invalid slots are out of its reach. The slot the ``<image>`` placeholder frees, a text-only row's
  vision slots and right padding are trailing; left padding is not. Only the trailing slots' own outputs change,
  and nothing reads them (logits and scores are taken at valid slots; decode steps mask their cached keys);
- or there is one query and every key is valid (a decode step with no hole in its cache).

Positions play no part in that call (RoPE is applied before it), so gapped positions are fine; the packed-sequence
reading of gapped positions with no mask happens in ``create_causal_mask`` and in the flash integrations, which this
path never reaches (flash always gets its 2-D mask, eager its explicit mask).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BlockedPairs:
    """Query-key pairs the mask forbids on top of causality and validity: a query flagged in ``queries`` may not see
    a key flagged in ``keys``. VoCo-LLaMA's compression is such a rule (the text after the VoCo tokens does not see
    the image; ``llava.model.compression_tokens.compression_visibility``)."""

    queries: torch.Tensor  # [B, Q] bool, aligned with the last Q keys
    keys: torch.Tensor  # [B, K] bool


def build_attention_mask(
    key_valid: torch.Tensor,  # [B, K] bool; the last q_len keys are the queries
    q_len: int,
    attn_implementation: str,
    dtype: torch.dtype,
    blocked: BlockedPairs | None = None,
    implicit_causal: bool = True,
) -> torch.Tensor | None:
    """Returns what ``attn_implementation`` expects: a 2-D mask for flash kernels, a boolean ``[B, 1, Q, K]`` mask
    for sdpa, an additive float mask for eager. ``blocked`` pairs need a 4-D mask: flash kernels refuse them.

    sdpa, no blocked pairs and a set that causal order alone masks exactly (``causal_order_suffices``): ``None``,
    unless ``implicit_causal=False`` asks for the explicit mask (the general path the tests compare the fast one with).
    Deciding reads one bool on the host: one sync per distinct token set, as transformers' own check does."""
    if attn_implementation.startswith("flash_attention"):
        if blocked is not None:
            raise ValueError(
                "flash attention takes a 2-D padding mask and cannot forbid single query-key pairs, which VoCo-LLaMA's "
                "compression needs (the text after the VoCo tokens must not see the image): run this forward with "
                "attn_implementation='sdpa' or 'eager'; cached generation uses the two-pass path, which flash runs"
            )
        # Flash kernels unpad with the 2-D mask and apply causality by order; valid tokens are contiguous per row.
        return key_valid.long()
    B, K = key_valid.shape
    if implicit_causal and attn_implementation == "sdpa" and blocked is None and causal_order_suffices(key_valid, q_len):
        return None
    device = key_valid.device
    q_idx = torch.arange(K - q_len, K, device=device).unsqueeze(1)  # [Q, 1]
    k_idx = torch.arange(K, device=device).unsqueeze(0)  # [1, K]
    allowed = (k_idx <= q_idx).unsqueeze(0) & key_valid.unsqueeze(1)  # [B, Q, K]
    if blocked is not None:
        allowed = allowed & ~(blocked.queries.unsqueeze(2) & blocked.keys.unsqueeze(1))
    # A padding query sees no valid key; letting it see everything keeps its softmax finite (its output is unused).
    allowed = allowed | ~allowed.any(-1, keepdim=True)
    allowed = allowed.unsqueeze(1)  # [B, 1, Q, K]
    if attn_implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    return allowed


def causal_order_suffices(key_valid: torch.Tensor, q_len: int) -> bool:  # key_valid [B, K]
    """Whether attention with no mask (causal by order for a square, everything for one query) gives every valid
    query exactly the keys the explicit mask gives it (the cases of the module docstring)."""
    K = key_valid.shape[1]
    if q_len == K:  # no valid slot after an invalid one in any row
        return not bool((key_valid[:, 1:] & ~key_valid[:, :-1]).any())
    return q_len == 1 and bool(key_valid.all())
