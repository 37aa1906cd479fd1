"""Paired statistics for two settings that answered the same questions: is one more accurate than the other?

Two runs scored on the same questions are paired: a question that is hard for one is usually hard for the other,
so comparing the two accuracies as if they were independent wastes most of the evidence. Both tools here use the
pairing.

- ``paired_bootstrap`` : a confidence interval of the accuracy difference A - B. Each replicate draws the seeds
  (with replacement) and, independently, the questions (with replacement), and averages the per-question
  differences of the drawn seeds on the drawn questions; the interval is the replicates' percentile interval.
  Resampling both levels lets the interval carry both sources of variation: which questions were asked, and
  which training run (seed) produced each model. Settings are paired by seed too: seed s of A and of B start
  from the same stage-1 weights and data order.
- ``mcnemar_exact`` : McNemar's exact test for one seed: of the questions where the two disagree, is the split
  between "A right, B wrong" and "B right, A wrong" compatible with a fair coin? Two-sided binomial p-value.

Everything is NumPy on boolean matrices ``[seeds, questions]``; ``reps`` x seeds x questions booleans at most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BootstrapInterval:
    difference: float  # observed mean accuracy difference A - B, in points (percent)
    low: float  # lower end of the interval, points
    high: float  # upper end, points
    level: float  # e.g. 0.95
    reps: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class McNemar:
    a_only: int  # questions A answers correctly and B does not
    b_only: int  # the reverse
    p_value: float  # two-sided exact binomial test of a_only vs b_only at 1/2


def _as_matrix(x: np.ndarray | list) -> np.ndarray:
    m = np.asarray(x, dtype=bool)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.shape[1] == 0 or m.shape[0] == 0:
        raise ValueError(f"expected a [seeds, questions] matrix of correctness with at least one of each, got {m.shape}")
    return m


def paired_bootstrap(
    a: np.ndarray | list, b: np.ndarray | list, reps: int = 10_000, level: float = 0.95, seed: int = 0,
    chunk: int = 500,
) -> BootstrapInterval:
    """Percentile interval of the accuracy difference (points) of ``a`` [S, Q] and ``b`` [S, Q] (bool: question q
    answered correctly by seed s), resampling seeds and questions; the seeds of ``a`` and ``b`` are paired."""
    a, b = _as_matrix(a), _as_matrix(b)
    if a.shape != b.shape:
        raise ValueError(f"paired settings must answer the same questions with the same seeds: {a.shape} vs {b.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    d = a.astype(np.int8) - b.astype(np.int8)  # [S, Q] in {-1, 0, 1}
    S, Q = d.shape
    rng = np.random.default_rng(seed)
    stats = np.empty(reps)
    for start in range(0, reps, chunk):  # bounded memory: chunk x S x Q at a time
        n = min(chunk, reps - start)
        seeds = rng.integers(0, S, size=(n, S))  # [n, S]
        questions = rng.integers(0, Q, size=(n, Q))  # [n, Q]
        drawn = d[seeds[:, :, None], questions[:, None, :]]  # [n, S, Q]
        stats[start : start + n] = drawn.mean(axis=(1, 2))
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return BootstrapInterval(100 * float(d.mean()), 100 * float(low), 100 * float(high), level, reps)


def mcnemar_exact(a: np.ndarray | list, b: np.ndarray | list) -> McNemar:
    """McNemar's exact test on one seed's correctness vectors ``a`` [Q] and ``b`` [Q]."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"McNemar's test needs two correctness vectors over the same questions, got {a.shape} and "
                         f"{b.shape}")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    n, k = a_only + b_only, min(a_only, b_only)
    if n == 0:
        return McNemar(a_only, b_only, 1.0)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n  # P(X <= k), X ~ Binomial(n, 1/2)
    return McNemar(a_only, b_only, min(1.0, 2 * tail))


__all__ = ["BootstrapInterval", "McNemar", "mcnemar_exact", "paired_bootstrap"]
