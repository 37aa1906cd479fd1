"""The result type every scorer returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ScoreResult:
    """One benchmark's score in the paper's units (percent, or MME's raw point sum).

    ``num_unparsed`` counts outputs the benchmark's parser could not turn into an answer; they are scored the
    way the official code scores them (usually wrong, for POPE "yes"), and the count is reported so that a
    format regression in the model shows up next to the number instead of silently lowering it.
    """

    bench: str
    metric: str
    score: float
    num_scored: int
    num_unparsed: int
    details: dict[str, Any] = field(default_factory=dict)
    extra_lines: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra_lines")
        return d

    def summary_lines(self, title: str) -> list[str]:
        """The lines the scripts print: the headline first, in the form ``<Title> <metric>: XX.XX``."""
        lines = [f"{title} {self.metric}: {self.score:.2f}"]
        lines.extend(self.extra_lines)
        lines.append(f"{title} unparsed outputs: {self.num_unparsed}/{self.num_scored}")
        return lines


def percent(numerator: float, denominator: float) -> float:
    """100 * n / d, with 0 for an empty denominator (an empty split must not crash the whole report)."""
    return 100.0 * numerator / denominator if denominator else 0.0
