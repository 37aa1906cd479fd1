"""Top-k selection of vision tokens: exact hard top-k, and the paper's differentiable top-k (DTop-K).

Both keep exactly k tokens per row in the forward pass, in their original order, with ties broken towards the
lower index. DTop-K adds a straight-through path: the forward value of the returned scale is exactly 1, and its
gradient is that of the soft mask ``sigmoid(lambda * (c' - a))`` with ``lambda = N`` and ``a = 1 - k / N``.

A stage with at most one candidate (an earlier stage kept 0 or 1 token) has nothing to rank: the soft rank of a
single score is undefined (its std is NaN) and ``1 - k / N`` divides by zero for N = 0. Such a stage keeps what
there is (k of N) as hard top-k does, with a constant scale of 1 and a soft mask equal to the hard one, so it
passes no gradient to the scores. A stage that keeps 0 of N >= 2 tokens stays differentiable through the soft
mask (the budget term sees it), although no kept token carries the scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Selection:
    keep: torch.Tensor  # [B, k] ascending indices into the current vision span
    scale: torch.Tensor | None  # [B, k] straight-through scale (forward value 1), None for hard top-k
    soft_mask: torch.Tensor | None  # [B, N] soft keep probabilities (diff mode), for logging and the budget term


def hard_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """[B, N] -> [B, k] indices of the k largest scores, ascending; stable sort makes ties deterministic."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.sort(order, dim=1).values


def rank_normalize(scores: torch.Tensor) -> torch.Tensor:
    """c'_i = (1/N) * #{j : c_i >= c_j}, in [1/N, 1]; computed by binary search instead of N^2 comparisons."""
    N = scores.shape[1]
    sorted_scores = torch.sort(scores, dim=1).values.contiguous()
    return torch.searchsorted(sorted_scores, scores.contiguous(), right=True).to(scores.dtype) / N


def soft_rank(scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Smooth surrogate of ``rank_normalize``: (1/N) * sum_j sigmoid((c_i - c_j) / tau), tau = std(c) * temperature.

    Used only for the backward pass of the rank; its forward value is discarded.
    """
    tau = scores.detach().std(dim=1, keepdim=True).clamp_min(1e-12) * temperature  # [B, 1]
    diff = (scores.unsqueeze(2) - scores.unsqueeze(1)) / tau.unsqueeze(2)  # [B, N, N]
    return torch.sigmoid(diff).mean(dim=2)


def differentiable_topk(
    scores: torch.Tensor,  # [B, N]
    k: int,
    threshold: torch.Tensor | None = None,  # scalar learned `a`; default 1 - k / N
    temperature: float = 1.0,
) -> Selection:
    B, N = scores.shape
    keep = hard_topk(scores.detach(), k)
    if N <= 1:  # nothing to rank (see the module doc)
        hard = torch.zeros_like(scores).scatter(1, keep, 1.0)
        return Selection(keep=keep, scale=torch.ones_like(keep, dtype=scores.dtype), soft_mask=hard)
    hard_rank = rank_normalize(scores.detach())
    smooth = soft_rank(scores, temperature)
    rank = hard_rank + (smooth - smooth.detach())  # forward: the paper's c'; backward: the smooth surrogate
    a = threshold if threshold is not None else torch.tensor(1.0 - k / N, dtype=scores.dtype, device=scores.device)
    soft_mask = torch.sigmoid(N * (rank - a))  # lambda = N_v (paper, section 4.1)
    hard_mask = torch.zeros_like(scores).scatter(1, keep, 1.0)
    st_mask = hard_mask + (soft_mask - soft_mask.detach())  # exactly the hard mask in the forward pass
    return Selection(keep=keep, scale=torch.gather(st_mask, 1, keep), soft_mask=soft_mask)


def select_tokens(
    scores: torch.Tensor, k: int, mode: str, threshold: torch.Tensor | None = None, temperature: float = 1.0
) -> Selection:
    if mode == "hard":
        return Selection(keep=hard_topk(scores.detach(), k), scale=None, soft_mask=None)
    if mode == "diff":
        return differentiable_topk(scores, k, threshold, temperature)
    raise ValueError(f"unknown top-k mode {mode!r}; expected 'hard' or 'diff'")
