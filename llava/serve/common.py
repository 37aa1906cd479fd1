"""Pieces the terminal chat and the web demo share: argument types, override splitting, prompt length."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from llava.constants import IMAGE_TOKEN_INDEX


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def split_override_args(values: Sequence[str] | None) -> list[str]:
    """Flatten ``--reduction-override`` values: each may hold several space-separated ``key=value`` pairs."""
    return [item for value in values or [] for item in value.split()]


def prompt_token_count(input_ids: torch.Tensor, num_vision_tokens: int) -> int:
    """Tokens the model sees for ``input_ids`` ``[T]``: each image placeholder expands to the vision tokens."""
    images = int((input_ids == IMAGE_TOKEN_INDEX).sum())
    return input_ids.numel() - images + images * num_vision_tokens
