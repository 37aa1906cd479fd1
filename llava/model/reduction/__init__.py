"""Token-reduction schedules (HiDrop, PDrop, FastV, off), scoring and top-k selection."""

from llava.model.reduction.config import (
    NO_EXIT,
    PRESETS,
    ReductionConfig,
    ReductionConfigError,
    parse_overrides,
    resolve_reduction,
)

__all__ = ["NO_EXIT", "PRESETS", "ReductionConfig", "ReductionConfigError", "parse_overrides", "resolve_reduction"]
