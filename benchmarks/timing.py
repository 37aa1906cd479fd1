"""Side-by-side timing for the benchmarks on a shared, noisy machine.

The repetitions of the sides are interleaved (A, B, A, B, ...) after one warm-up each, so a change of load hits
every side alike; each side reports its median and its spread (min to max). ``machine_line`` says where and when.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    median: float
    low: float
    high: float
    samples: tuple[float, ...]

    def fmt(self, scale: float = 1e3, unit: str = "ms") -> str:
        return f"{self.median * scale:.1f} {unit} [{self.low * scale:.1f}-{self.high * scale:.1f}]"


def interleaved(sides: dict[str, Callable[[], object]], reps: int, sync: bool = False) -> dict[str, Timing]:
    """Times each callable ``reps`` times, the sides taking turns; one untimed warm-up call each first."""
    for fn in sides.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(reps):
        for name, fn in sides.items():
            if sync:
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if sync:
                torch.cuda.synchronize()
            samples[name].append(time.perf_counter() - start)
    return {name: Timing(statistics.median(v), min(v), max(v), tuple(v)) for name, v in samples.items()}


def machine_line(device: str) -> str:
    """Where and when: for the README, next to the figures."""
    if device.startswith("cuda") and torch.cuda.is_available():
        where = f"{torch.cuda.get_device_name(0)}"
    else:
        where = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    return f"{where}; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"


def tok64_for_depth(num_layers: int):
    """`tok64` for a model of ``num_layers`` layers: with 32 the preset itself; with fewer (a 7B-width run that
    fits the GPU's memory only in part of the depth) its injection, prune and exit layers scaled by
    ``num_layers / 32`` and kept strictly increasing, with the same keep counts, so the schedule keeps its shape."""
    from dataclasses import replace

    from llava.model import PRESETS

    red = PRESETS["tok64"]
    if num_layers == 32:
        return red
    if num_layers < 2 * len(red.prune_layers) + 3:
        raise SystemExit(f"--layers {num_layers}: tok64 needs at least {2 * len(red.prune_layers) + 3} layers")
    scale = num_layers / 32
    inject = max(1, round(red.inject_layer * scale))
    prune, last = [], inject  # the first cut after at least one layer with every vision token, as in tok64
    for layer in red.prune_layers:
        last = max(last + 1, round(layer * scale))
        prune.append(last)
    exit_ = min(num_layers, max(last + 1, round(red.exit_layer * scale)))
    scaled = replace(red, name=f"tok64@{num_layers}L", inject_layer=inject, prune_layers=tuple(prune), exit_layer=exit_)
    return scaled.validate_for(num_layers, 576)


def add_model_args(p: argparse.ArgumentParser, *, text: int, reps: int) -> None:
    """The synthetic language model's shape and run flags that the model benchmarks share (gpu_suite.sh passes
    the same names to each). ``parse_model_args`` turns ``--dtype`` into a torch dtype."""
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=None, help="default hidden // 64 (7B: --hidden 4096 --heads 32)")
    p.add_argument("--layers", type=int, default=32, help="fewer to fit a GPU's memory at 7B width")
    p.add_argument("--text", type=int, default=text, help="prompt text tokens (the image adds 576)")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--reps", type=int, default=reps)
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])


def parse_model_args(p: argparse.ArgumentParser) -> argparse.Namespace:
    args = p.parse_args()
    args.dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    return args
