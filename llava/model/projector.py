"""The vision-language projector: `linear`, `mlpNx_gelu` (LLaVA-1.5 uses mlp2x_gelu) or `identity`."""

from __future__ import annotations

import re

from torch import nn


def build_projector(projector_type: str, mm_hidden_size: int, hidden_size: int) -> nn.Module:
    if projector_type == "linear":
        return nn.Linear(mm_hidden_size, hidden_size)
    m = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if m:
        depth = int(m.group(1))
        layers: list[nn.Module] = [nn.Linear(mm_hidden_size, hidden_size)]
        for _ in range(1, depth):
            layers += [nn.GELU(), nn.Linear(hidden_size, hidden_size)]
        return nn.Sequential(*layers)
    if projector_type == "identity":
        if mm_hidden_size != hidden_size:
            raise ValueError(f"identity projector needs mm_hidden_size == hidden_size ({mm_hidden_size} != {hidden_size})")
        return nn.Identity()
    raise ValueError(f"unknown mm_projector_type {projector_type!r}; use 'linear', 'mlpNx_gelu' or 'identity'")
