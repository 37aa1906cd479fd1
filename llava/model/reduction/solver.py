"""Keep counts that hit an average-token budget: the arithmetic behind every preset.

With 1-based layers, vision present on layers ``[inject, exit - 1]`` and prune layers ``p_1 < ... < p_S``::

    total = N * (p_1 - inject + 1) + sum_s k_s * w_s,   w_s = p_{s+1} - p_s,   w_S = exit - 1 - p_S
    average = total / num_layers

Given a tail (the counts of stages 2..S, as HiDrop's presets fix 10, 5, 1), the first count is the only unknown
and is solved directly. Without a tail the counts decay geometrically, ``k_s = N * q**s`` with one ratio ``q``
for every stage (PDrop's uniform lambda is exactly this shape): the big cuts come first and the later ones are
small, the concave "fast then slow" decay. ``q`` is found by bisection, the counts are rounded, and the first
count is then moved to bring the integer total as close to the target as integers allow.
"""

from __future__ import annotations

from dataclasses import dataclass

from llava.model.reduction.config import COUNT_CONVENTIONS, NO_EXIT, ReductionConfig, ReductionConfigError


@dataclass(frozen=True)
class SolvedSchedule:
    keep_counts: tuple[int, ...]
    average: float  # realised average vision tokens per layer
    target: float


def stage_widths(
    num_layers: int, inject: int, exit_layer: int, prune_layers: tuple[int, ...], convention: str = "entering"
) -> tuple[int, list[int]]:
    """(layers counted with all N tokens, layers each stage's count is counted on). With ``after_filter`` a prune
    layer counts its survivors, so every stage covers one layer more and the full-count stretch one layer less."""
    end = (num_layers + 1 if exit_layer == NO_EXIT else exit_layer) - 1  # last layer with vision
    shift = 1 if convention == "after_filter" else 0
    bounds = [*prune_layers, end + shift]
    return prune_layers[0] - inject + 1 - shift, [b - a for a, b in zip(bounds, bounds[1:])]


def _check(num_layers: int, num_vision_tokens: int, inject: int, exit_layer: int, prune_layers: tuple[int, ...],
           target: float, convention: str) -> tuple[int, list[int]]:
    if not prune_layers:
        raise ReductionConfigError("the solver needs at least one prune layer")
    ReductionConfig(name="solve", inject_layer=inject, prune_layers=prune_layers,
                    keep_counts=(0,) * len(prune_layers), exit_layer=exit_layer).validate_for(num_layers, num_vision_tokens)
    if convention not in COUNT_CONVENTIONS:
        raise ReductionConfigError(f"count convention must be one of {list(COUNT_CONVENTIONS)}, got {convention!r}")
    full, widths = stage_widths(num_layers, inject, exit_layer, prune_layers, convention)
    lowest, highest = full * num_vision_tokens / num_layers, (full + sum(widths)) * num_vision_tokens / num_layers
    if not lowest <= target <= highest:
        raise ReductionConfigError(
            f"target average {target} is out of reach for this layout: between {lowest:.2f} (every stage keeps 0) "
            f"and {highest:.2f} (nothing pruned); move the first prune layer or inject later / exit earlier"
        )
    return full, widths


def _average(full: int, widths: list[int], counts: tuple[int, ...], n: int, num_layers: int) -> float:
    return (full * n + sum(k * w for k, w in zip(counts, widths))) / num_layers


def solve_keep_counts(
    target_avg: float,
    num_layers: int,
    inject: int,
    exit_layer: int,
    prune_layers: tuple[int, ...],
    tail: tuple[int, ...] | None = None,
    num_vision_tokens: int = 576,
    convention: str = "entering",
) -> SolvedSchedule:
    """Integer keep counts (non-increasing, at most N) whose average, counted by ``convention``
    (``ReductionConfig.counts_per_layer``), is the closest to ``target_avg``."""
    full, widths = _check(num_layers, num_vision_tokens, inject, exit_layer, prune_layers, target_avg, convention)
    n = num_vision_tokens
    goal = target_avg * num_layers - full * n  # what the stages must contribute
    if tail is not None:
        if len(tail) != len(prune_layers) - 1:
            raise ReductionConfigError(f"--tail has {len(tail)} counts for {len(prune_layers) - 1} later stages")
        fixed = sum(k * w for k, w in zip(tail, widths[1:]))
        first = (goal - fixed) / widths[0]
        candidates = {max(0, min(n, int(first))), max(0, min(n, int(first) + 1))}
        counts = [(c, *tail) for c in candidates if not tail or c >= tail[0]]
        if not counts:
            raise ReductionConfigError(f"the tail {list(tail)} leaves the first stage {first:.1f} tokens, below its "
                                       "own first count; use a smaller tail")
    else:
        lo, hi = 0.0, 1.0
        for _ in range(100):  # contribution grows with q: bisection on the real-valued counts
            q = (lo + hi) / 2
            if sum(n * q ** (s + 1) * w for s, w in enumerate(widths)) < goal:
                lo = q
            else:
                hi = q
        real = [n * lo ** (s + 1) for s in range(len(widths))]
        base = [round(x) for x in real]
        counts = []
        for delta in range(-n, n + 1):  # move only the first count, keeping the order
            first = base[0] + delta
            if 0 <= first <= n and (len(base) == 1 or first >= base[1]):
                counts.append((first, *base[1:]))
    best = min(counts, key=lambda c: (abs(_average(full, widths, c, n, num_layers) - target_avg), -c[0]))
    return SolvedSchedule(tuple(best), _average(full, widths, best, n, num_layers), target_avg)
