"""Physical edits of a generation cache (``GenerationState``): drop keys, measure bytes, split rows and stack them.

Keys and values in the cache already carry their RoPE positions, and masks are built from key validity and tensor
order (``attention_mask``), so keys can be moved and removed freely as long as each row keeps them in order and
``next_position`` is untouched. VoCo-LLaMA's two-pass inference uses this to keep only the VoCo tokens' keys and
values of a compressed image (``llava.model.two_pass``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from llava.model.decoder import GenerationState

__all__ = ["CacheRow", "cache_bytes", "crop_cache", "split_rows", "stack_rows"]


def cache_bytes(gen: GenerationState) -> int:
    """Bytes of every layer's keys and values, padding slots included: what the cache really holds."""
    total = 0
    for layer in gen.cache.layers:
        if getattr(layer, "keys", None) is None or not layer.is_initialized:
            continue
        total += layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
    return total


def _layer_tensors(gen: GenerationState) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in gen.cache.layers]


def crop_cache(gen: GenerationState, keep: torch.Tensor) -> None:
    """Removes the keys and values that ``keep`` [B, K] marks False from every layer, in place.

    Every layer must hold K keys (one token set, as under VoCo). Each row keeps its kept keys in their order,
    right-aligned in ``K' = max kept`` slots; a row with fewer gets invalid slots on the left. One host sync (K').
    """
    B, K = keep.shape
    for li, (keys, _) in enumerate(_layer_tensors(gen)):
        if keys.shape[2] != K or gen.key_valid[li].shape[1] != K:
            raise ValueError(f"crop_cache: layer {li} holds {keys.shape[2]} keys, the keep mask covers {K}")
    kept = keep.sum(1)  # [B]
    width = int(kept.max()) if B else 0
    # a stable sort puts each row's dropped columns first and its kept ones after them, both in order
    order = torch.sort(keep.to(torch.int8), dim=1, stable=True).indices[:, K - width:]  # [B, K']
    new_valid = torch.gather(keep, 1, order)  # [B, K']
    for layer in gen.cache.layers:
        index = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
        layer.keys = torch.gather(layer.keys, 2, index)
        layer.values = torch.gather(layer.values, 2, index)
    cropped: dict[int, torch.Tensor] = {}
    for li, valid in enumerate(gen.key_valid):
        gen.key_valid[li] = cropped.setdefault(id(valid), new_valid)


@dataclass
class CacheRow:
    """One row of a generation cache whose layers share one token set, without padding."""

    keys: list[torch.Tensor]  # per layer [H_kv, K_row, head_dim]
    values: list[torch.Tensor]
    next_position: torch.Tensor  # [] long: the position the next token of this row takes


def split_rows(gen: GenerationState) -> list[CacheRow]:
    """The rows of a cache whose layers share one key-validity tensor (VoCo's), each trimmed of its invalid
    slots. Valid keys must sit right-aligned after invalid ones (``crop_cache``'s layout). One host sync."""
    valid = gen.key_valid[0]  # [B, K]
    if any(v is not valid for v in gen.key_valid):
        raise ValueError("split_rows needs one token set in every layer")
    B, K = valid.shape
    counts = valid.sum(1).tolist()
    starts = (~valid).sum(1)
    if not bool(((torch.arange(K, device=valid.device).unsqueeze(0) >= starts.unsqueeze(1)) == valid).all()):
        raise ValueError("split_rows needs each row's valid keys right-aligned (crop the cache first)")
    tensors = _layer_tensors(gen)
    return [CacheRow([k[b, :, K - n:] for k, _ in tensors], [v[b, :, K - n:] for _, v in tensors],
                     gen.next_position[0][b]) for b, n in enumerate(counts)]


def stack_rows(rows: list[CacheRow], config) -> GenerationState:
    """A generation cache for a batch of rows (left-padded to the longest one; every layer shares one key-validity
    and one position tensor). ``config`` gives the depth and head shape for rows without keys."""
    L = config.num_hidden_layers
    width = max((r.keys[0].shape[1] for r in rows if r.keys), default=0)
    ref = next((r for r in rows if r.keys and r.keys[0].shape[1]), None)
    cache = DynamicCache(config=config)
    device = rows[0].next_position.device
    valid = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
    for b, r in enumerate(rows):
        n = r.keys[0].shape[1] if r.keys else 0
        valid[b, width - n:] = True
    if ref is not None:
        H, _, d = ref.keys[0].shape
        for li in range(L):
            parts_k, parts_v = [], []
            for r in rows:
                n = r.keys[li].shape[1] if r.keys else 0
                pad = ref.keys[li].new_zeros(H, width - n, d)
                parts_k.append(torch.cat([pad, r.keys[li]], 1) if n else pad)
                parts_v.append(torch.cat([pad, r.values[li]], 1) if n else pad)
            cache.update(torch.stack(parts_k), torch.stack(parts_v), li)  # [B, H, K', d]
    position = torch.stack([r.next_position for r in rows]).to(torch.long)  # [B]
    return GenerationState(cache=cache, key_valid=[valid] * L, next_position=[position] * L)
