"""The one decoder loop. Every token-reduction method is a `ReductionConfig` schedule plugged into it.

Per layer i (1-based): inject vision before layer ``inject_layer``, drop all vision before ``exit_layer``, run the
layer on the current token set, and after a prune layer score the vision tokens (with layer i + 1's projections on
layer i's output, or layer i's own on its input) and keep exactly k of them. The moves are batched gathers
(`token_state`), the scores come from a small separate computation (`reduction.scoring`), so the main attention
kernel (sdpa, eager or flash) is untouched.

Positions (``position_scheme``): ``persistent`` keeps the full-sequence positions throughout; ``compacted``
renumbers the valid tokens 0..n-1 after every prune and at exit (PDrop); ``group`` numbers text tokens 0.. in
order (generated tokens continue the count) and vision token j ``max_position_embeddings + j``, never updated:
two disjoint ranges that generation within the context length cannot make collide.

ZeRO-3: every call runs every layer, the scorer at every prune layer and the threshold module (if learned), in the
same order, whatever the data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import DynamicCache

from llava.model.attention_mask import build_attention_mask
from llava.model.multimodal_inputs import MultimodalBatch
from llava.model.reduction.config import ReductionConfig
from llava.model.reduction.dual_filter import dual_attention_keep
from llava.model.reduction.scoring import query_vision_attention, score_vision_tokens
from llava.model.reduction.topk import select_tokens
from llava.model.token_state import TokenState, exit_vision, inject_vision, keep_vision, renumber, text_state

Observer = Callable[[int, nn.Module, TokenState, torch.Tensor], None]


@dataclass
class StageRecord:
    layer: int  # prune layer (1-based)
    candidates: int  # vision slots before the cut
    keep: torch.Tensor  # [B, k] kept indices into the candidates, ascending (then filler, see keep_valid)
    soft_keep: torch.Tensor | None  # [B] expected kept count under the soft mask (diff mode)
    keep_valid: torch.Tensor | None = None  # [B, k] bool: real kept slots (thresholded stages keep fewer per row)
    vision_start: torch.Tensor | None = None  # [B] where the candidates' span started in that stage's layout


@dataclass
class GenerationState:
    """What decoding needs beyond the per-layer KV cache: each layer's key validity and the next position."""

    cache: DynamicCache
    key_valid: list[torch.Tensor]  # per layer [B, K_l] bool; layers hold different token sets
    next_position: list[torch.Tensor]  # per layer [B]: the position the next token takes at that layer (layers of
    # one stage share one tensor; with compacted positions each stage counts its own tokens)


@dataclass
class DecoderOutput:
    hidden: torch.Tensor  # [B, S, D] final-norm hidden states of the final token set
    state: TokenState  # final token set (positions, validity, labels aligned with `hidden`)
    stages: list[StageRecord] = field(default_factory=list)
    budget_loss: torch.Tensor | None = None
    generation: GenerationState | None = None
    vision_counts: torch.Tensor | None = None  # [B, L] valid vision tokens at each layer's input (count_vision)


class StageThresholds(nn.Module):
    """DTop-K's learned pruning ratio `a`, one per stage. A module (not a bare parameter) so ZeRO-3 gathers it."""

    def __init__(self, initial: list[float]) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(initial, dtype=torch.float32))

    def forward(self) -> torch.Tensor:
        return self.a


def initial_thresholds(reduction: ReductionConfig, num_vision_tokens: int) -> list[float]:
    counts = [num_vision_tokens, *reduction.keep_counts]
    return [1.0 - k / n if n > 0 else 0.0 for n, k in zip(counts[:-1], counts[1:])]


def _layer_inputs(lm: nn.Module, state: TokenState, impl: str) -> tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor]]:
    mask = build_attention_mask(state.valid, state.hidden.shape[1], impl, state.hidden.dtype)
    return mask, lm.rotary_emb(state.hidden, position_ids=state.positions)


def group_vision_offset(lm: nn.Module) -> int:
    """First RoPE position of the vision range of ``group`` positions: past every text position of the context."""
    return int(lm.config.max_position_embeddings)


def _initial_state(lm: nn.Module, batch: MultimodalBatch, scheme: str) -> tuple[TokenState, torch.Tensor | None, torch.Tensor]:
    """(text-only state, vision positions for injection or None for persistent ones, the next token's position)."""
    state = text_state(batch)
    if scheme != "group":
        return state, None, batch.full_lengths().to(torch.long)
    state.positions = (batch.text_valid.long().cumsum(1) - 1).clamp(min=0)  # [B, T] text counted without the image
    B, N = batch.vision_embeds.shape[:2]
    vision = group_vision_offset(lm) + torch.arange(N, device=batch.text_valid.device).unsqueeze(0).expand(B, -1)
    return state, vision, batch.text_lengths().to(torch.long)


def run_decoder(
    lm: nn.Module,  # a LlamaModel: embed_tokens, layers, norm, rotary_emb
    batch: MultimodalBatch,
    reduction: ReductionConfig,
    thresholds: StageThresholds | None = None,
    use_cache: bool = False,
    observe: Observer | None = None,
    count_vision: bool = False,
) -> DecoderOutput:
    """Runs every layer on the schedule's token sets. ``observe(i, layer, state, layer_input)`` is called after each
    layer i (1-based, before any pruning after it) for analysis tools; it must not modify the state.
    ``count_vision`` records the valid vision tokens at every layer's input (realised averages)."""
    layers = lm.layers
    L = len(layers)
    impl = lm.config._attn_implementation
    exit_layer = reduction.resolved_exit(L)
    prune_at = {layer: s for s, layer in enumerate(reduction.prune_layers)}
    a = thresholds() if thresholds is not None else None

    compacted = reduction.position_scheme == "compacted"
    state, vision_positions, next_position = _initial_state(lm, batch, reduction.position_scheme)
    cache = DynamicCache(config=lm.config) if use_cache else None
    key_valid: list[torch.Tensor] = []
    next_positions: list[torch.Tensor] = []
    stages: list[StageRecord] = []
    budget_terms: list[torch.Tensor] = []
    counts: list[torch.Tensor] = []
    mask = pos_emb = None
    for i, layer in enumerate(layers, start=1):
        changed = mask is None
        if i == reduction.inject_layer:
            batch.resolve_vision()  # joins a decoupled vision stage (parallel_vision)
            state, changed = inject_vision(state, batch, vision_positions), True
            if compacted:  # a no-op unless the vision stage left empty slots (local merging)
                state, next_position = renumber(state), state.valid.sum(1)
        if i == exit_layer:
            state, changed = exit_vision(state), True
            if compacted:
                state, next_position = renumber(state), state.valid.sum(1)
        if changed:  # masks and RoPE tables change only at stage boundaries
            mask, pos_emb = _layer_inputs(lm, state, impl)
        if use_cache:
            key_valid.append(state.valid)
            next_positions.append(next_position)
        if count_vision:
            counts.append(state.vision_count())
        layer_input = state.hidden
        state.hidden = layer(
            state.hidden,
            attention_mask=mask,
            position_ids=state.positions,
            past_key_values=cache,
            use_cache=use_cache,
            position_embeddings=pos_emb,
        )
        if observe is not None:
            observe(i, layer, state, layer_input)
        if i in prune_at and reduction.selection == "dual_attention":
            scorer, scored = (layers[i], None) if reduction.score_layer == "next" else (layer, layer_input)
            with torch.no_grad():  # training-free: thresholds on probabilities carry no gradient
                attention, query_ok = query_vision_attention(scorer, lm.rotary_emb, state, batch.query_text_index,
                                                             batch.query_valid, scored)
                keep, keep_valid = dual_attention_keep(attention, query_ok, state.vision_valid(), state.vision_key,
                                                       reduction.global_thr, reduction.individual_thr)
            stages.append(StageRecord(layer=i, candidates=state.num_vision, keep=keep, soft_keep=None,
                                      keep_valid=keep_valid, vision_start=state.vision_start))
            state = keep_vision(state, keep, None, keep_valid)
            if compacted:
                state, next_position = renumber(state), state.valid.sum(1)
            mask = None
        elif i in prune_at:
            s = prune_at[i]
            k = reduction.keep_counts[s]
            candidates = state.num_vision
            grad_ctx = torch.enable_grad() if reduction.topk == "diff" and torch.is_grad_enabled() else torch.no_grad()
            with grad_ctx:
                # "next": layer i + 1 on layer i's output; "same": layer i on its own input (same token set).
                scorer, scored = (layers[i], None) if reduction.score_layer == "next" else (layer, layer_input)
                scores = score_vision_tokens(scorer, lm.rotary_emb, state, batch.query_text_index, batch.query_valid,
                                             scored, reduction.score_weight)
                sel = select_tokens(
                    scores, k, reduction.topk, None if a is None else a[s], reduction.score_temperature
                )
            soft_keep = None
            if sel.soft_mask is not None:
                soft_keep = sel.soft_mask.sum(1)  # [B]
                if a is not None and candidates > 0:
                    img = batch.has_image.to(sel.soft_mask.dtype)
                    frac = (sel.soft_mask.mean(1) * img).sum() / img.sum().clamp_min(1.0)
                    budget_terms.append((frac - k / candidates) ** 2)
            stages.append(StageRecord(layer=i, candidates=candidates, keep=sel.keep, soft_keep=soft_keep,
                                      vision_start=state.vision_start))
            state = keep_vision(state, sel.keep, sel.scale)
            if compacted:
                state, next_position = renumber(state), state.valid.sum(1)
            mask = None  # rebuilt before the next layer
    batch.resolve_vision()  # a schedule that never injects still runs the tower (same modules on every rank)
    state.hidden = lm.norm(state.hidden)
    budget = torch.stack(budget_terms).sum() * reduction.budget_weight if budget_terms else None
    gen = None
    if use_cache:
        if reduction.kv_policy == "final" and stages:
            _keep_final_survivors(key_valid, next_positions, stages, reduction, compacted)
        gen = GenerationState(cache=cache, key_valid=key_valid, next_position=next_positions)
    vision_counts = torch.stack(counts, 1) if counts else None  # [B, L]
    return DecoderOutput(hidden=state.hidden, state=state, stages=stages, budget_loss=budget, generation=gen,
                         vision_counts=vision_counts)


def _keep_final_survivors(
    key_valid: list[torch.Tensor],
    next_positions: list[torch.Tensor],
    stages: list[StageRecord],
    reduction: ReductionConfig,
    compacted: bool,
) -> None:
    """MustDrop's output-aware cache: the layers from the first to the last prune layer keep, for decoding, only
    the vision tokens that survive every stage (masked, not moved: the attention is the same). With compacted
    positions a decoded token then takes each such layer's remaining count, as MustDrop reads its cache length."""
    first, last = stages[0].layer, stages[-1].layer
    # alive[s][b, j]: slot j of the span stage s scored survives all later stages. Backwards through the keeps.
    alive = torch.ones_like(stages[-1].keep, dtype=torch.bool)
    if stages[-1].keep_valid is not None:
        alive = alive & stages[-1].keep_valid
    alive_per_stage: list[torch.Tensor] = []
    for st in reversed(stages):
        B = st.keep.shape[0]
        hits = torch.zeros(B, st.candidates, dtype=torch.int32, device=st.keep.device)
        if st.keep.shape[1]:
            hits.scatter_add_(1, st.keep, alive.to(torch.int32))
        alive_s = hits > 0  # [B, candidates]
        alive_per_stage.append(alive_s)
        alive = alive_s
    alive_per_stage.reverse()
    masked: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for layer in range(first, last + 1):
        li = layer - 1
        s = sum(st.layer < layer for st in stages)  # the stage whose token set this layer holds
        src = key_valid[li]
        if id(src) not in masked:
            st, alive_s = stages[s], alive_per_stage[s]
            rel = torch.arange(src.shape[1], device=src.device).unsqueeze(0) - st.vision_start.unsqueeze(1)
            in_span = (rel >= 0) & (rel < st.candidates)
            survives = torch.gather(alive_s, 1, rel.clamp(0, max(st.candidates - 1, 0))) if st.candidates else in_span
            kept = src & (~in_span | survives)
            masked[id(src)] = (kept, kept.sum(1) if compacted else next_positions[li])
        key_valid[li], next_positions[li] = masked[id(src)]


def decode_step(lm: nn.Module, embeds: torch.Tensor, gen: GenerationState) -> torch.Tensor:
    """One cached step for new tokens ``embeds`` [B, 1, D]; each layer attends to its own cache.

    Positions come from the per-layer counts kept in ``gen`` (never from a cache length: layer 0's cache holds
    text only). Returns final-norm hidden states [B, 1, D] and advances ``gen`` in place.
    """
    impl = lm.config._attn_implementation
    B = embeds.shape[0]
    new_valid = torch.ones(B, 1, dtype=torch.bool, device=embeds.device)
    h = embeds
    # Layers of one stage share their key-validity and position tensors; extend each distinct one once, and
    # build its mask and RoPE table once (no host sync).
    extended: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
    stepped: dict[int, tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = {}
    for li, layer in enumerate(lm.layers):
        src = gen.key_valid[li]
        if id(src) not in extended:
            kv = torch.cat([src, new_valid], dim=1)
            extended[id(src)] = (src, kv, build_attention_mask(kv, 1, impl, h.dtype))
        _, kv, mask = extended[id(src)]
        gen.key_valid[li] = kv
        pos = gen.next_position[li]
        if id(pos) not in stepped:
            positions = pos.unsqueeze(1)  # [B, 1]
            stepped[id(pos)] = (pos, pos + 1, lm.rotary_emb(embeds, position_ids=positions))
        _, advanced, pos_emb = stepped[id(pos)]
        gen.next_position[li] = advanced
        h = layer(h, attention_mask=mask, position_ids=pos.unsqueeze(1), past_key_values=gen.cache, use_cache=True,
                  position_embeddings=pos_emb)
    return lm.norm(h)
