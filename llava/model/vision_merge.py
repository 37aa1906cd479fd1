"""MustDrop's vision-encoding stage: local spatial merging inside CLIP plus a CLS-attention key-token set.

What it does (one CLIP forward pass, batched):

1. embeddings + ``pre_layrnorm`` + encoder layer 0, exactly as ``CLIPVisionModel`` runs them;
2. local spatial merging after layer 0: the ``G x G`` patch grid (CLS excluded) is cut into non-overlapping
   ``window x window`` blocks; a block whose mean pairwise cosine similarity (self-pairs excluded) is
   ``>= merge_threshold`` becomes ONE token, the mean of its tokens (the size-weighted average with all sizes 1),
   written to the block's last slot in raster order (bottom-right); its other slots become invalid;
3. the remaining layers up to the selected feature layer run on the full-length sequence with an additive key mask
   that hides invalid slots from every query, which is the same computation as running them on the physically
   shortened sequence;
4. the key set: the layer that reads the feature layer's output computes the CLS row's attention probabilities over
   the valid keys (mean over heads); the top ``ceil(key_ratio * n_valid)`` valid patches of each image are keys;
5. the features: the selected layer's hidden states for every slot, with ``valid``/``key``/``merged`` masks.

Decisions and deviations from the MustDrop release (liuting20/MustDrop, ``local_merge.py`` / ``clip_encoder.py``):

* **Per-image merge count.** Upstream merges the ``r`` most similar blocks with ``r`` = the batch *minimum* of the
  number of blocks at or above the threshold, so one image's result depends on the other images in its batch. Here
  every image merges exactly its own blocks at or above the threshold (``>=``, as upstream's ``torch.ge``): a batch
  gives the same result as encoding each image alone. For batch size 1 (the only setting upstream evaluates) both
  rules coincide.
* **Token order.** Upstream physically rebuilds the sequence as ``[CLS, merged blocks in descending similarity,
  unmerged tokens in raster order]``. We keep the full ``N``-slot layout and put each merged token at its block's
  last slot, so valid tokens stay in raster (reading) order. Inside CLIP the two are equivalent: positional
  embeddings are added once, before layer 0, and self-attention without a mask pattern is permutation-equivariant,
  so every token's hidden state is the same under either order (the tests check this against an upstream-ordered
  reference). It is not equivalent for the causal LLM, which sees positions: raster order keeps the image's
  reading order, the order LLaVA-1.5 was trained on, instead of an image-dependent similarity order.
* **No proportional attention.** Upstream computes merged token sizes but never feeds them back into attention
  (``size`` is discarded after ``merge_wavg``); neither do we. ``merged`` tells which slots stand for a whole block.
* **Key layer.** Upstream takes the CLS attention of layer 23 (the last) while its features are
  ``hidden_states[-2]``, the input of layer 23. Generalised: the key layer is the layer that *reads* the selected
  feature layer's output. With ``L`` encoder layers, ``hidden_states`` has ``L + 1`` entries and entry ``i`` is the
  input of layer ``i``; so the feature index is ``i = select_layer`` if ``select_layer >= 0`` else
  ``L + 1 + select_layer``, and the key layer is 0-based layer ``i`` (``L + select_layer + 1`` for negative
  ``select_layer``: 23 for ``-2`` with 24 layers). ``i`` must lie in ``[1, L - 1]``: ``i = 0`` is the embedding
  output, before merging happens, and ``i = L`` (``select_layer = -1``) is read by no layer, so the key set would be
  undefined; both are refused. The attention is recomputed from that layer's ``layer_norm1`` and q/k projections,
  because sdpa does not return attention probabilities. Layers after the feature layer are not run: upstream runs
  them but discards their output.
* **Key count.** ``ceil(key_ratio * n_valid)`` with ``n_valid`` the image's valid patch count (upstream:
  ``ceil(0.08 * (N - 1))`` with ``N - 1`` the patches of the merged sequence), computed in float64 so it matches
  Python's ``math.ceil(key_ratio * n)`` bit for bit.
* **select_feature "cls_patch".** Supported: the CLS slot stays at index 0 of ``features`` and is always valid,
  never merged and never a key (the key set ranks patches by the CLS row's attention, as upstream). ``n_valid``
  counts patches only.
* **Invalid slots.** Their features are set to zero (finite, and independent of discarded content); consumers must
  drop them using ``valid``.
* **No merging.** ``merge_threshold=None`` or ``> 1`` (a mean cosine similarity never exceeds 1) disables merging;
  then ``features`` equal ``CLIPVisionTower.forward`` exactly, because the same layers run on the same inputs with no
  mask. The key set is still computed, and no window is formed, so the grid need not be divisible by ``window``
  (``key_ratio > 0`` with ``local_merge=false`` runs on any grid).
* **Attention implementations.** The masked layers pass a ``[B, 1, 1, S]`` additive float mask, which transformers'
  ``eager`` and ``sdpa`` CLIP attention accept; with merging enabled any other implementation (flash attention) is
  refused up front, whatever the images. With merging disabled no mask is passed and any implementation works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from llava.model.vision_tower import CLIPVisionTower

_MASKABLE_ATTENTION = ("eager", "sdpa")


@dataclass(frozen=True)
class VisionTokens:
    """Output of :func:`encode_with_local_merging`; ``N`` = ``tower.num_patches`` (CLS slot first for cls_patch)."""

    features: Tensor  # [B, N, D_v] selected-layer hidden states; invalid slots are zero
    valid: Tensor  # [B, N] bool: slot holds a real token (unmerged patch, merged block, or CLS)
    key: Tensor  # [B, N] bool: key token (MustDrop's key set), always a subset of valid patches
    merged: Tensor  # [B, N] bool: slot holds a merged block (the mean of window*window patches)


def feature_layer_index(select_layer: int, num_layers: int) -> int:
    """Index into ``hidden_states`` (``num_layers + 1`` entries); also the 0-based index of the key layer."""
    index = select_layer if select_layer >= 0 else num_layers + 1 + select_layer
    if not 1 <= index <= num_layers - 1:
        raise ValueError(
            f"local merging needs select_layer addressing hidden_states[1..{num_layers - 1}] of a {num_layers}-layer "
            f"CLIP (index 0 is before merging; the last output is read by no layer, so it has no key attention); "
            f"got select_layer={select_layer}"
        )
    return index


def _check_args(merge_threshold: float | None, window: int, key_ratio: float) -> None:
    if merge_threshold is not None and (isinstance(merge_threshold, bool) or math.isnan(float(merge_threshold))):
        raise ValueError(f"merge_threshold must be a real number or None, got {merge_threshold!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        # A 1x1 block has no token pairs, so its similarity is undefined.
        raise ValueError(f"window must be an int >= 2, got {window!r}")
    if isinstance(key_ratio, bool) or not (0.0 < float(key_ratio) <= 1.0):  # also rejects NaN
        raise ValueError(f"key_ratio must be in (0, 1], got {key_ratio!r}")


def block_slot_index(grid: int, window: int, device: torch.device | None = None) -> Tensor:
    """Raster patch index of every block token: ``[n_blocks, window*window]``.

    Blocks are in raster order over the block grid, tokens in raster order within a block, so column
    ``window*window - 1`` is each block's bottom-right slot (upstream's ``dst``).
    """
    if grid % window != 0:
        raise ValueError(f"patch grid side {grid} is not divisible by window {window}")
    g = grid // window
    index = torch.arange(grid * grid, device=device).view(g, window, g, window)  # [block_row, r, block_col, c]
    return index.permute(0, 2, 1, 3).reshape(g * g, window * window)  # [n_blocks, k]


def block_similarity(blocks: Tensor) -> Tensor:  # [B, n_blocks, k, D] -> [B, n_blocks]
    """Mean pairwise cosine similarity of each block's tokens, self-pairs excluded."""
    k = blocks.shape[-2]
    # float32 so that a bf16/fp16 tower does not blur the comparison with the threshold.
    unit = F.normalize(blocks.float(), dim=-1, eps=1e-8)  # [B, nb, k, D]
    sims = unit @ unit.transpose(-1, -2)  # [B, nb, k, k]
    off_diagonal = ~torch.eye(k, dtype=torch.bool, device=blocks.device)  # [k, k]
    return (sims * off_diagonal).sum(dim=(-1, -2)) / (k * (k - 1))


def merge_blocks(
    patches: Tensor, window: int, merge_threshold: float | None
) -> tuple[Tensor, Tensor, Tensor]:  # [B, P, D] -> ([B, P, D], valid [B, P], merged [B, P])
    """Merge every block whose similarity is >= ``merge_threshold`` into its bottom-right slot (per image)."""
    b, p, d = patches.shape
    grid = math.isqrt(p)
    if grid * grid != p:
        raise ValueError(f"local merging needs a square patch grid, got {p} patches")
    slots = block_slot_index(grid, window, patches.device)  # [nb, k]
    nb, k = slots.shape
    blocks = patches[:, slots.flatten()].view(b, nb, k, d)  # [B, nb, k, D]

    if merge_threshold is None or merge_threshold > 1.0:
        to_merge = torch.zeros(b, nb, dtype=torch.bool, device=patches.device)  # [B, nb]
    else:
        to_merge = block_similarity(blocks) >= merge_threshold  # [B, nb]; >= as upstream's torch.ge

    dst = slots[:, -1]  # [nb] bottom-right slot of every block
    # Size-weighted average with unit sizes = mean; computed in float32 and cast back like the hidden states.
    mean = blocks.float().mean(dim=2).to(patches.dtype)  # [B, nb, D]
    out = patches.clone()
    out[:, dst] = torch.where(to_merge[..., None], mean, patches[:, dst])  # [B, nb, D]

    is_dst = torch.arange(k, device=patches.device) == k - 1  # [k]
    block_valid = ~to_merge[..., None] | is_dst  # [B, nb, k]: merged blocks keep only their dst slot
    valid = torch.empty(b, p, dtype=torch.bool, device=patches.device)
    valid[:, slots.flatten()] = block_valid.reshape(b, nb * k)  # [B, P]
    merged = torch.zeros(b, p, dtype=torch.bool, device=patches.device)
    merged[:, dst] = to_merge  # [B, P]
    return out, valid, merged


def cls_attention(layer: torch.nn.Module, hidden: Tensor, key_valid: Tensor) -> Tensor:
    """CLS row of ``layer``'s attention probabilities over valid keys, mean over heads: ``[B, S]`` (float32).

    Recomputed from ``layer_norm1`` and the q/k projections because sdpa does not return probabilities; the
    softmax runs over all valid keys (CLS included) exactly as the layer's own attention does.
    """
    attn = layer.self_attn
    b, s, _ = hidden.shape
    x = layer.layer_norm1(hidden)  # [B, S, D]
    q = attn.q_proj(x[:, :1]).view(b, 1, attn.num_heads, attn.head_dim).transpose(1, 2)  # [B, H, 1, Dh]
    k = attn.k_proj(x).view(b, s, attn.num_heads, attn.head_dim).transpose(1, 2)  # [B, H, S, Dh]
    scores = (q.float() @ k.float().transpose(-1, -2)) * attn.scale  # [B, H, 1, S]
    scores = scores.masked_fill(~key_valid[:, None, None, :], float("-inf"))  # CLS is always valid: no NaN rows
    return scores.softmax(dim=-1).mean(dim=1)[:, 0]  # [B, S]


def top_valid(scores: Tensor, valid: Tensor, key_ratio: float) -> Tensor:  # [B, P], [B, P] -> [B, P] bool
    """Per image, the ``ceil(key_ratio * n_valid)`` highest-scoring valid entries (a variable count per row)."""
    n_valid = valid.sum(dim=1)  # [B]
    # float64 reproduces Python's math.ceil(key_ratio * n) (e.g. ceil(0.1 * 30) = 4 in both).
    count = torch.ceil(torch.tensor(key_ratio, dtype=torch.float64) * n_valid.double()).long()  # [B]
    count = torch.minimum(count, n_valid)
    ranked = scores.float().masked_fill(~valid, float("-inf"))  # [B, P]: invalid entries rank last
    order = ranked.argsort(dim=1, descending=True, stable=True)  # [B, P]
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))  # [B, P]
    return (rank < count[:, None]) & valid


@torch.no_grad()  # the tower is frozen in LLaVA-1.5, as in CLIPVisionTower.forward
def encode_with_local_merging(
    tower: CLIPVisionTower,
    images: Tensor,  # [B, 3, H, W]
    merge_threshold: float | None = 0.8,
    window: int = 3,
    key_ratio: float = 0.08,
) -> VisionTokens:
    """MustDrop vision encoding (local merging after CLIP layer 0 + key set); see the module docstring."""
    _check_args(merge_threshold, window, key_ratio)
    model = tower.vision_tower  # transformers 5.x CLIPVisionModel: embeddings, pre_layrnorm, encoder.layers
    layers = model.encoder.layers
    feature_index = feature_layer_index(tower.select_layer, len(layers))
    merging = merge_threshold is not None and merge_threshold <= 1.0
    impl = model.config._attn_implementation
    if merging and impl not in _MASKABLE_ATTENTION:  # checked up front, so the error does not depend on the images
        raise ValueError(f"local merging needs attention in {_MASKABLE_ATTENTION} for its key mask, got {impl!r}")

    dtype = next(model.parameters()).dtype
    hidden = model.pre_layrnorm(model.embeddings(images.to(dtype=dtype)))  # [B, 1+P, D]
    hidden = layers[0](hidden, None)  # [B, 1+P, D]

    if merging:
        patches, valid, merged = merge_blocks(hidden[:, 1:], window, merge_threshold)  # [B, P, D], [B, P], [B, P]
    else:  # the key set alone: no block is formed, so any grid works, whatever the window
        patches = hidden[:, 1:]  # [B, P, D]
        valid = torch.ones(patches.shape[:2], dtype=torch.bool, device=patches.device)  # [B, P]
        merged = torch.zeros_like(valid)  # [B, P]
    hidden = torch.cat([hidden[:, :1], patches], dim=1)  # [B, 1+P, D]
    cls_valid = torch.ones_like(valid[:, :1])  # [B, 1]
    key_valid = torch.cat([cls_valid, valid], dim=1)  # [B, 1+P]

    mask = None  # no invalid slot anywhere: run the layers exactly as CLIPVisionModel does
    if not bool(key_valid.all()):
        # Additive key mask shared by all queries: invalid slots get zero weight (exp(min) underflows to 0), and
        # every row keeps the always-valid CLS key, so invalid rows stay finite too.
        mask = torch.zeros(key_valid.shape, dtype=hidden.dtype, device=hidden.device)
        mask = mask.masked_fill(~key_valid, torch.finfo(hidden.dtype).min)[:, None, None, :]  # [B, 1, 1, 1+P]

    for layer in layers[1:feature_index]:
        hidden = layer(hidden, mask)  # [B, 1+P, D]

    cls_probs = cls_attention(layers[feature_index], hidden, key_valid)  # [B, 1+P]
    key = top_valid(cls_probs[:, 1:], valid, key_ratio)  # [B, P]

    features = hidden.masked_fill(~key_valid[..., None], 0.0).to(images.dtype)  # [B, 1+P, D]
    if tower.select_feature == "patch":
        return VisionTokens(features=features[:, 1:], valid=valid, key=key, merged=merged)  # N = P
    # "cls_patch": the CLS slot stays first; it is valid, never a key and never merged.  N = 1 + P
    no = torch.zeros_like(cls_valid)  # [B, 1]
    return VisionTokens(
        features=features, valid=key_valid, key=torch.cat([no, key], dim=1), merged=torch.cat([no, merged], dim=1)
    )
