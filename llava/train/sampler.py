"""Upstream LLaVA's modality-grouped length sampler: each optimizer step is one modality (except the last)."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


def _split_by_length(indices: list[int], lengths: list[int], num_chunks: int) -> list[list[int]]:
    """Deals indices (longest first) into num_chunks chunks of roughly equal total length."""
    if len(indices) % num_chunks != 0:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals = [0] * num_chunks
    for i in indices:
        c = min((k for k in range(num_chunks) if len(chunks[k]) < per_chunk), key=lambda k: totals[k])
        chunks[c].append(i)
        totals[c] += lengths[i]
    return chunks


def _grouped(lengths: list[int], batch_size: int, world_size: int, generator: torch.Generator) -> list[int]:
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    mega = world_size * batch_size
    batches = [perm[i : i + mega] for i in range(0, len(perm), mega)]
    batches = [sorted(b, key=lambda i: lengths[i], reverse=True) for b in batches]
    return [i for b in batches for chunk in _split_by_length(b, lengths, world_size) for i in chunk]


def modality_grouped_indices(
    modality_lengths: list[int], batch_size: int, world_size: int, generator: torch.Generator
) -> list[int]:
    """Positive lengths are image samples, negative are text-only (upstream's sign convention)."""
    if all(x != 0 for x in modality_lengths) and (all(x > 0 for x in modality_lengths) or all(x < 0 for x in modality_lengths)):
        return _grouped([abs(x) for x in modality_lengths], batch_size, world_size, generator)
    mm = [i for i, x in enumerate(modality_lengths) if x > 0]
    lang = [i for i, x in enumerate(modality_lengths) if x < 0]
    mm_order = [mm[i] for i in _grouped([modality_lengths[i] for i in mm], batch_size, world_size, generator)]
    lang_order = [lang[i] for i in _grouped([-modality_lengths[i] for i in lang], batch_size, world_size, generator)]
    mega = world_size * batch_size
    mm_batches = [mm_order[i : i + mega] for i in range(0, len(mm_order), mega)]
    lang_batches = [lang_order[i : i + mega] for i in range(0, len(lang_order), mega)]
    last = (mm_batches.pop() if mm_batches and len(mm_batches[-1]) < mega else []) + (
        lang_batches.pop() if lang_batches and len(lang_batches[-1]) < mega else []
    )
    full = mm_batches + lang_batches
    order = torch.randperm(len(full), generator=generator).tolist()
    out = [i for k in order for i in full[k]]
    return out + last


class ModalityGroupedSampler(Sampler[int]):
    def __init__(self, modality_lengths: list[int], batch_size: int, world_size: int, seed: int) -> None:
        self.lengths, self.batch_size, self.world_size, self.seed = modality_lengths, batch_size, world_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(modality_grouped_indices(self.lengths, self.batch_size, self.world_size, g))
