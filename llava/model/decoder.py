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
same order, whatever the data; the twig (TwigVLM) runs whenever the schedule scores with it, never only for some
samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import DynamicCache

from llava.model.attention_mask import BlockedPairs, build_attention_mask
from llava.model.compression_tokens import compression_visibility
from llava.model.multimodal_inputs import MultimodalBatch
from llava.model.reduction.config import ReductionConfig
from llava.model.reduction.dual_filter import dual_attention_keep
from llava.model.reduction.scoring import query_vision_attention, score_vision_tokens
from llava.model.reduction.topk import select_tokens
from llava.model.token_state import TokenState, exit_vision, inject_vision, keep_vision, renumber, text_state
from llava.model.twig import twig_prefill

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
class VisionCounts:
    """Realised vision tokens per layer under the two counting conventions in use (docs/Baselines.md, "Counting
    vision tokens"). They differ only at prune layers: this project counts what each layer computes with, MustDrop's
    authors count each filter layer after its filter."""

    entering: torch.Tensor  # [B, L] valid vision tokens at each layer's input (this project's average)
    after_filter: torch.Tensor  # [B, L] the same, but a prune layer counts what it keeps (MustDrop's counter)


@dataclass
class DecoderOutput:
    hidden: torch.Tensor  # [B, S, D] final-norm hidden states of the final token set
    state: TokenState  # final token set (positions, validity, labels aligned with `hidden`)
    stages: list[StageRecord] = field(default_factory=list)
    budget_loss: torch.Tensor | None = None
    generation: GenerationState | None = None
    vision_counts: VisionCounts | None = None  # realised per layer (count_vision)
    twig_generation: GenerationState | None = None  # the twig's caches after the prompt (run_decoder's twig_cache)


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


def _layer_inputs(
    lm: nn.Module, state: TokenState, impl: str, blocked: BlockedPairs | None = None
) -> tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor]]:
    mask = build_attention_mask(state.valid, state.hidden.shape[1], impl, state.hidden.dtype, blocked)
    return mask, lm.rotary_emb(state.hidden, position_ids=_shared_rows(state.positions))


def _shared_rows(positions: torch.Tensor) -> torch.Tensor:
    """[B, S] positions -> [1, S] when every row has the same ones (``off`` without padding): one RoPE table that the
    layers broadcast over the batch, as transformers builds it, instead of B equal ones (reading them costs about
    1.5% of a layer at batch 8). The values are the same either way. One host read per stage."""
    if positions.shape[0] > 1 and bool((positions == positions[:1]).all()):
        return positions[:1]
    return positions


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
    twig: nn.Module | None = None,
    twig_cache: bool = False,
    stop_after: int | None = None,
) -> DecoderOutput:
    """Runs every layer on the schedule's token sets. ``observe(i, layer, state, layer_input)`` is called after each
    layer i (1-based, before any pruning after it) for analysis tools; it must not modify the state.
    ``count_vision`` records the valid vision tokens of every layer under both conventions (``VisionCounts``; a
    VoCo schedule's compression tokens count with the image).

    ``twig`` (TwigVLM, ``llava.model.twig``) runs on base layer K's output when the schedule scores with it
    (``score_layer="twig"``) or, with ``twig_cache``, to fill the draft's caches for speculative decoding (returned
    as ``twig_generation``). ``stop_after=K`` runs layers 1..K only and returns their output before the final norm
    (the twig's shallow model)."""
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
    counts_after: list[torch.Tensor] = []
    twig_at = None
    if reduction.score_layer == "twig" or twig_cache:
        if twig is None:
            raise ValueError(f"schedule {reduction.name!r} needs the model's twig (score_layer='twig' or a draft cache)")
        twig_at = twig.after_layer
    twig_input = twig_gen = None
    mask = pos_emb = None
    stale = True  # the mask and RoPE table need building (a dense set's sdpa mask is None, so None cannot say it)
    for i, layer in enumerate(layers, start=1):
        changed = stale
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
            # the schedule's pair-wise visibility (VoCo's compression tokens), None for every other schedule
            mask, pos_emb = _layer_inputs(lm, state, impl, compression_visibility(state, batch.has_image, reduction, impl))
            stale = False
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
        if i == twig_at:  # TwigVLM: the twig on layer K's output, before the cut after it
            twig_input, twig_gen = twig_prefill(twig, state, mask, pos_emb, next_position, twig_cache)
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
            stale = True
        elif i in prune_at:
            s = prune_at[i]
            k = reduction.keep_counts[s]
            candidates = state.num_vision
            grad_ctx = torch.enable_grad() if reduction.topk == "diff" and torch.is_grad_enabled() else torch.no_grad()
            with grad_ctx:
                # "next": layer i + 1 on layer i's output; "same": layer i on its own input (same token set);
                # "twig": the twig's last layer on its input (the twig ran on layer i's output).
                scorer, scored = (layers[i], None) if reduction.score_layer == "next" else (layer, layer_input)
                if reduction.score_layer == "twig":
                    scorer, scored = twig.layers[-1], twig_input
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
            # With local merging some candidates are merged-away slots: top-k may pick them as filler once the real
            # tokens run out (keep_vision carries them as invalid). Record which picks are real tokens, so that
            # kept counts and maps count tokens, not slots.
            keep_valid = None if batch.vision_valid is None else torch.gather(state.vision_valid(), 1, sel.keep)
            stages.append(StageRecord(layer=i, candidates=candidates, keep=sel.keep, soft_keep=soft_keep,
                                      keep_valid=keep_valid, vision_start=state.vision_start))
            state = keep_vision(state, sel.keep, sel.scale)
            if compacted:
                state, next_position = renumber(state), state.valid.sum(1)
            stale = True  # rebuilt before the next layer
        if count_vision:
            counts_after.append(state.vision_count())
        if i == stop_after:
            break
    batch.resolve_vision()  # a schedule that never injects still runs the tower (same modules on every rank)
    if stop_after is None:
        state.hidden = lm.norm(state.hidden)
    budget = torch.stack(budget_terms).sum() * reduction.budget_weight if budget_terms else None
    gen = None
    if use_cache:
        if reduction.kv_policy == "final" and stages:
            _keep_final_survivors(key_valid, next_positions, stages, reduction, compacted)
        gen = GenerationState(cache=cache, key_valid=key_valid, next_position=next_positions)
    vision_counts = None
    if counts:  # a VoCo schedule's compression tokens exist because of the image: they count with it
        voco = (batch.has_image.long() * reduction.compress_tokens).unsqueeze(1)  # [B, 1]
        vision_counts = VisionCounts(torch.stack(counts, 1) + voco, torch.stack(counts_after, 1) + voco)
    return DecoderOutput(hidden=state.hidden, state=state, stages=stages, budget_loss=budget, generation=gen,
                         vision_counts=vision_counts, twig_generation=twig_gen)


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


def decode_chunk(
    lm: nn.Module,
    hidden: torch.Tensor,  # [B, n, D] the new tokens' input to layer ``start`` (embeddings when start = 0)
    gen: GenerationState,
    valid: torch.Tensor | None = None,  # [B, n] bool: real new tokens (a row may carry fewer, e.g. padding)
    start: int = 0,
    stop: int | None = None,
) -> torch.Tensor:
    """Cached forward of ``n`` new tokens through layers ``start..stop-1`` (0-based); returns their hidden states
    after layer ``stop - 1``, before the final norm. Each layer attends to its own cache plus the new tokens
    (causal by order); the new tokens take positions ``next_position + (valid tokens before them)``, so invalid
    slots neither take a position nor are attended to. Advances ``gen`` in place for the layers it runs.

    Layers of one stage share their key-validity and position tensors; each distinct one is extended once and its
    mask and RoPE table built once. The only host read: with sdpa, whether a one-token step's keys are all valid
    (then it runs with no mask, ``attention_mask.build_attention_mask``), once per distinct set.
    """
    impl = lm.config._attn_implementation
    B, n = hidden.shape[:2]
    if valid is None:
        valid = torch.ones(B, n, dtype=torch.bool, device=hidden.device)
    offsets = valid.long().cumsum(1) - valid.long()  # [B, n] valid new tokens before each one
    advance = valid.long().sum(1)  # [B]
    layers = lm.layers[start:stop]
    extended: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
    stepped: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = {}
    h = hidden
    for li, layer in enumerate(layers, start=start):
        src = gen.key_valid[li]
        if id(src) not in extended:
            kv = torch.cat([src, valid], dim=1)
            extended[id(src)] = (src, kv, build_attention_mask(kv, n, impl, h.dtype))
        _, kv, mask = extended[id(src)]
        gen.key_valid[li] = kv
        pos = gen.next_position[li]
        if id(pos) not in stepped:
            positions = pos.unsqueeze(1) + offsets  # [B, n]
            stepped[id(pos)] = (pos, pos + advance, positions, lm.rotary_emb(h, position_ids=positions))
        _, advanced, positions, pos_emb = stepped[id(pos)]
        gen.next_position[li] = advanced
        h = layer(h, attention_mask=mask, position_ids=positions, past_key_values=gen.cache, use_cache=True,
                  position_embeddings=pos_emb)
    return h


def decode_step(lm: nn.Module, embeds: torch.Tensor, gen: GenerationState) -> torch.Tensor:
    """One cached step for new tokens ``embeds`` [B, 1, D]; each layer attends to its own cache.

    Positions come from the per-layer counts kept in ``gen`` (never from a cache length: layer 0's cache holds
    text only). Returns final-norm hidden states [B, 1, D] and advances ``gen`` in place.
    """
    return lm.norm(decode_chunk(lm, embeds, gen))
