"""argparse value types shared by the command lines (eval runner, scorers, servers, benchmarks)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """A whole number >= 1, or an argparse error that quotes what was given."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
