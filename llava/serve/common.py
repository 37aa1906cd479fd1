"""Pieces the terminal chat and the web demo share: argument types, override splitting, prompt length."""

from __future__ import annotations

import argparse
import errno
import socket
from collections.abc import Sequence

import torch

from llava.cli_types import positive_int
from llava.constants import IMAGE_TOKEN_INDEX


def port_number(text: str) -> int:
    """A TCP port, 1..65535 (0, "any free port", is refused: the page's address must be known)."""
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 1 to 65535, got {value}")
    return value


def check_port_free(host: str, port: int) -> None:
    """Raises OSError with a one-line reason when the server could not listen on ``host:port`` (in use, not
    allowed, unknown host). Checked before the slow model load; the server binds it for real afterwards."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise OSError(f"cannot listen on {host}:{port}: unknown host ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no conflict
        try:
            sock.bind(address)
        except OSError as e:
            reason = "the port is in use (another server?); pick another with --port" if e.errno == errno.EADDRINUSE \
                else e.strerror or str(e)
            raise OSError(f"cannot listen on {host}:{port}: {reason}") from None


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
