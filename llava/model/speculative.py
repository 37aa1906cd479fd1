"""Self-speculative decoding with the model's twig (TwigVLM's SSD, generalised): the shallow model (base layers 1..K
and the twig) drafts up to ``draft_tokens`` tokens, the base verifies them in one cached pass of its own schedule,
the longest agreeing prefix is kept plus the base's own next token, and the rejected tokens leave every cache.

One round, per row (rows of a left-padded batch advance independently):

1. Draft. Feed the last accepted token, then each proposal, through base layers 1..K (``decode_chunk``) and the twig
   (its own cache); the twig's head proposes the next token. A row stops proposing after ``draft_tokens``
   proposals, at EOS, when the room left for new tokens is used up, or when the draft's probability for its
   proposal is below ``draft_threshold`` (that proposal is still verified). Rows that stopped feed invalid slots.
2. Verify. Base layers K+1..L run once on the buffered layer-K states of the fed tokens (``decode_chunk`` with a
   layer range), giving the base's distribution after each of them.
3. Accept. Greedy: the leading proposals equal to the base's argmax, then the base's argmax after them. Sampling:
   the standard speculative-sampling rule, which leaves the base's distribution exactly unchanged: proposal j is
   kept with probability min(1, p_j / q_j) of its token; at the first rejection the replacement is drawn from
   max(0, p - q) renormalised; after all proposals are kept a bonus token is drawn from p. ``p`` and ``q`` are the
   sampling distributions plain ``generate`` uses (temperature and nucleus, ``sampling_probs``).
4. Roll back. In every cache (base layers, twig, and the draft's own shallow layers when it has them) the fed slots
   after the row's last kept token are marked invalid in the per-layer key validity and the positions rewound by
   their number; slots rejected in every row are cropped physically. With flash attention, whose 2-D mask path
   wants each row's valid keys contiguous, holes left by rows that kept fewer tokens are moved to the left edge
   (where the padding is) by a stable per-row gather; the keys carry their RoPE already, so nothing else changes.

Where drafting runs: when the schedule keeps every token, vision included, at full-sequence positions through
layer K (``draft_shares_shallow_layers``, e.g. every ``twigvlm-*`` preset and ``off``), the draft uses the base's
own caches of layers 1..K, as TwigVLM does. Otherwise (HiDrop's late injection, ...) a separate shallow prefill
gives the draft its own caches of layers 1..K with every token, and the verifier runs all its layers on the
drafted tokens' embeddings. Either way the verifier is the checkpoint's own schedule, so greedy output equals
plain cached greedy decoding of that schedule (tests/test_speculative.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from llava.model.decoder import DecoderOutput, GenerationState, decode_chunk, run_decoder
from llava.model.reduction.config import PRESETS, ReductionConfig
from llava.model.twig import TwigStack, draft_shares_shallow_layers

if TYPE_CHECKING:
    from llava.model.llava_llama import LlavaLlamaForCausalLM

DRAFT_TOKENS = 5  # TwigVLM's delta: at most this many proposals per round
DRAFT_THRESHOLD = 0.6  # TwigVLM's theta: drafting stops after a proposal the draft gives less probability


@dataclass
class SpeculativeStats:
    """What a speculative generation did, per row; filled in by ``speculative_generate`` / ``SpeculativeDecoder``."""

    drafted: list[int] = field(default_factory=list)  # proposals verified
    accepted: list[int] = field(default_factory=list)  # proposals kept
    new_tokens: list[int] = field(default_factory=list)  # tokens generated (the first, from the prefill, included)
    rounds: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0  # every round (draft, verify, accept, roll back); the prefill excluded

    @property
    def acceptance_rate(self) -> float | None:
        drafted = sum(self.drafted)
        return sum(self.accepted) / drafted if drafted else None

    @property
    def decoded_tokens(self) -> int:
        """Tokens produced by the rounds: every new token but each row's first (the prefill's)."""
        return sum(max(n - 1, 0) for n in self.new_tokens)

    @property
    def tokens_per_second(self) -> float | None:
        if self.decoded_tokens == 0 or self.decode_seconds <= 0:
            return None
        return self.decoded_tokens / self.decode_seconds

    def summary(self) -> str:
        rate = self.acceptance_rate
        tps = self.tokens_per_second
        return (f"acceptance rate {'n/a' if rate is None else f'{rate:.3f}'} ({sum(self.accepted)}/{sum(self.drafted)} "
                f"drafted tokens kept, {self.rounds} rounds), "
                f"{'n/a' if tps is None else f'{tps:.1f}'} tokens/s after the first")


class SpeculativeDecoder:
    """The state of one speculative generation: the caches of the base, the twig and (if separate) the draft's
    shallow layers. ``prefill`` once, then ``round`` until every row is done."""

    def __init__(
        self,
        model: LlavaLlamaForCausalLM,
        reduction: ReductionConfig,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int = 0,
        generator: torch.Generator | None = None,
        draft_tokens: int = DRAFT_TOKENS,
        draft_threshold: float = DRAFT_THRESHOLD,
        compact: bool | None = None,
    ) -> None:
        if model.twig is None:
            raise ValueError("speculative='twig' drafts with the model's twig, but this model has none: train one with "
                             "scripts/train_twig.sh or convert TwigVLM's with python -m llava.model.convert_twig")
        if draft_tokens < 1:
            raise ValueError(f"draft_tokens must be >= 1, got {draft_tokens}")
        if not 0.0 <= draft_threshold <= 1.0:
            raise ValueError(f"draft_threshold is a probability in [0, 1], got {draft_threshold}")
        if reduction.compress_tokens:
            raise ValueError(f"schedule {reduction.name!r} (VoCo-LLaMA) prefills in two passes; speculative decoding "
                             "with it is not supported")
        self.model = model
        self.red = reduction
        self.greedy = not do_sample or temperature == 0
        self.temperature, self.top_p = temperature, top_p
        self.eos = eos_token_id
        self.pad = pad_token_id
        self.generator = generator
        self.gamma = draft_tokens
        self.theta = draft_threshold
        self.twig = model.twig
        self.K = model.twig.after_layer
        self.shared = draft_shares_shallow_layers(reduction, model.twig)
        impl = model.config._attn_implementation
        self.compact = impl.startswith("flash_attention") if compact is None else compact
        self.stack = TwigStack.of(model.twig, model.model)
        self.gen: GenerationState | None = None
        self.twig_gen: GenerationState | None = None
        self.draft_gen: GenerationState | None = None  # the draft's own layers 1..K when not shared

    # ------------------------------------------------------------------------------------------------ prefill
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, images: torch.Tensor | None,
                count_vision: bool = False) -> tuple[DecoderOutput, torch.Tensor]:
        """The base's prefill under its schedule (and the twig's), as plain ``generate`` does; returns the decoder
        output and the base's logits [B, V] after the last prompt token."""
        from llava.model.llava_llama import last_valid

        model, red = self.model, self.red
        lm = model.model
        batch = model.multimodal_batch(input_ids, attention_mask, images, None, red)
        out = run_decoder(lm, batch, red, None, use_cache=True, count_vision=count_vision, twig=self.twig,
                          twig_cache=self.shared)
        self.gen = out.generation
        if self.shared:
            self.twig_gen = out.twig_generation
        else:  # the shallow model with every token: layers 1..K as plain LLaVA runs them, then the twig
            shallow = model.multimodal_batch(input_ids, attention_mask, images, None, PRESETS["off"])
            draft = run_decoder(lm, shallow, PRESETS["off"], None, use_cache=True, twig=self.twig, twig_cache=True,
                                stop_after=self.K)
            self.draft_gen, self.twig_gen = draft.generation, draft.twig_generation
        B = input_ids.shape[0]
        last = last_valid(out.state.valid)
        logits = model.lm_head(out.hidden[torch.arange(B, device=out.hidden.device), last]).float()  # [B, V]
        return out, logits

    def first_token(self, logits: torch.Tensor) -> torch.Tensor:
        from llava.model.llava_llama import next_token

        return next_token(logits, not self.greedy, self.temperature, self.top_p, self.generator)

    # ------------------------------------------------------------------------------------------------ one round
    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        from llava.model.llava_llama import sampling_probs

        if self.greedy:
            return torch.softmax(logits, dim=-1)
        return sampling_probs(logits, self.temperature, self.top_p)

    def _shallow(self, embeds: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Base layers 1..K on new tokens ``embeds`` [B, 1, D] (the base's caches or the draft's own)."""
        gen = self.gen if self.shared else self.draft_gen
        return decode_chunk(self.model.model, embeds, gen, valid, 0, self.K)

    @torch.no_grad()
    def round(self, last: torch.Tensor, active: torch.Tensor, room: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One draft-verify-accept round.

        ``last`` [B]: each row's last accepted token, not yet fed; ``active`` [B]: rows still generating; ``room`` [B]:
        tokens each row may still emit (>= 1 where active). Returns (tokens [B, n], counts [B] how many of them each
        row emits (0 for inactive rows; EOS is not cut here), drafted [B] proposals verified)."""
        model, lm = self.model, self.model.model
        B = last.shape[0]
        device = last.device
        limit = torch.where(active, (room - 1).clamp(min=0, max=self.gamma), torch.zeros_like(room))  # [B]
        n = torch.zeros(B, dtype=torch.long, device=device)  # proposals so far
        drafting = active & (limit > 0)
        x = last
        fed: list[torch.Tensor] = []  # [B] per step: the row fed a real token
        layer_k: list[torch.Tensor] = []  # [B, 1, D] per step: layer K's output (the verifier's input when shared)
        embeds: list[torch.Tensor] = []
        drafts: list[torch.Tensor] = []  # [B] per proposal step
        q_dists: list[torch.Tensor] = []  # [B, V] the distribution each proposal was drawn from
        for j in range(self.gamma + 1):
            feed = active & (n == j)
            if j > 0 and not bool(feed.any()):
                break
            emb = lm.embed_tokens(x).unsqueeze(1)  # [B, 1, D]
            hk = self._shallow(emb, feed.unsqueeze(1))
            fed.append(feed)
            layer_k.append(hk)
            embeds.append(emb)
            th = decode_chunk(self.stack, hk, self.twig_gen, feed.unsqueeze(1))  # [B, 1, D]
            if not bool(drafting.any()):
                continue  # the last proposals are fed (caches, verifier input); nothing more to propose
            q = self._probs(self.twig.logits(th[:, -1]))  # [B, V]
            if self.greedy:
                d = q.argmax(-1)
            else:
                d = torch.multinomial(q, 1, generator=self.generator).squeeze(1)
            qd = q.gather(1, d.unsqueeze(1)).squeeze(1)  # [B]
            d = torch.where(drafting, d, torch.full_like(d, self.pad))
            drafts.append(d)
            q_dists.append(q)
            n = n + drafting.long()
            stop = (qd < self.theta) | (n >= limit)
            if self.eos is not None:
                stop = stop | (d == self.eos)
            drafting = drafting & ~stop
            x = d
        m = len(drafts)
        valid = torch.stack(fed, 1)  # [B, m + 1]: a prefix per row (the last token and its proposals)
        if self.shared:
            h = decode_chunk(lm, torch.cat(layer_k, 1), self.gen, valid, self.K, None)
        else:
            h = decode_chunk(lm, torch.cat(embeds, 1), self.gen, valid, 0, None)
        p_logits = model.lm_head(lm.norm(h)).float()  # [B, m + 1, V]
        D = torch.stack(drafts, 1) if m else torch.zeros(B, 0, dtype=torch.long, device=device)  # [B, m]
        proposed = valid[:, 1:]  # [B, m]
        if self.greedy:
            target = p_logits.argmax(-1)  # [B, m + 1]
            ok = (D == target[:, :m]) & proposed
            a = ok.long().cumprod(1).sum(1)  # [B] kept proposals
            final = target.gather(1, a.unsqueeze(1)).squeeze(1)
        else:
            a, final = self._accept_sampled(self._probs(p_logits), torch.stack(q_dists, 1) if m else None, D, proposed)
        cols = torch.arange(m + 1, device=device).unsqueeze(0)
        Dp = torch.cat([D, torch.full((B, 1), self.pad, dtype=torch.long, device=device)], 1)  # [B, m + 1]
        tokens = torch.where(cols < a.unsqueeze(1), Dp, torch.where(cols == a.unsqueeze(1), final.unsqueeze(1),
                                                                    torch.full_like(Dp, self.pad)))
        counts = torch.where(active, a + 1, torch.zeros_like(a))
        keep = valid & (cols <= a.unsqueeze(1))  # [B, m + 1] fed slots that stay in the caches
        for g in (self.gen, self.twig_gen, self.draft_gen):
            if g is not None:
                roll_back(g, valid, keep, self.compact)
        return tokens, counts, torch.where(active, proposed.sum(1), torch.zeros_like(a))

    def _accept_sampled(self, p: torch.Tensor, q: torch.Tensor | None, D: torch.Tensor,
                        proposed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Speculative sampling: (kept proposals [B], the token after them [B]). ``p`` [B, m + 1, V] the base's
        distributions after each fed token, ``q`` [B, m, V] the draft's for each proposal, ``D`` [B, m]."""
        B, m1, V = p.shape
        m = m1 - 1
        if m:
            pd = p[:, :m].gather(2, D.unsqueeze(2)).squeeze(2)  # [B, m]
            qd = q.gather(2, D.unsqueeze(2)).squeeze(2)
            u = torch.rand(B, m, generator=self.generator, device=p.device)
            ok = (u * qd < pd) & proposed  # u < p / q, i.e. kept with probability min(1, p / q)
            a = ok.long().cumprod(1).sum(1)  # [B]
        else:
            a = torch.zeros(B, dtype=torch.long, device=p.device)
        pa = p.gather(1, a.view(B, 1, 1).expand(-1, 1, V)).squeeze(1)  # [B, V] the base after the kept ones
        rejected = a < proposed.sum(1)
        if m:
            qa = q.gather(1, a.clamp(max=m - 1).view(B, 1, 1).expand(-1, 1, V)).squeeze(1)  # the rejected proposal's q
            dist = torch.where(rejected.unsqueeze(1), residual(pa, qa), pa)
        else:
            dist = pa
        return a, torch.multinomial(dist, 1, generator=self.generator).squeeze(1)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """max(0, p - q) renormalised [B, V]: where a rejected proposal's replacement is drawn from. Where float rounding
    leaves nothing (p == q up to rounding, when a rejection has probability ~0), p itself."""
    r = (p - q).clamp(min=0)
    total = r.sum(-1, keepdim=True)
    return torch.where(total > 0, r / total.clamp_min(torch.finfo(r.dtype).tiny), p)


def roll_back(gen: GenerationState, fed: torch.Tensor, keep: torch.Tensor, compact: bool) -> None:
    """Undoes the fed slots a row did not keep. ``fed`` / ``keep`` [B, n]: the round's last n slots of every layer
    of ``gen`` (each layer received exactly n); ``keep`` is a prefix of ``fed`` per row.

    Each layer's cache drops the trailing slots no row keeps; the rest of the unkept slots become invalid keys, and
    each position counter goes back by the row's unkept fed slots. With ``compact`` the holes move to the left."""
    n = fed.shape[1]
    kmax = int(keep.sum(1).max()) if keep.numel() else 0  # a prefix per row: columns >= kmax keep nothing
    drop = n - kmax
    back = fed.long().sum(1) - keep.long().sum(1)  # [B]
    new_valid: dict[int, torch.Tensor] = {}
    new_pos: dict[int, torch.Tensor] = {}
    for li, kv in enumerate(gen.key_valid):
        if id(kv) not in new_valid:
            S = kv.shape[1]
            new_valid[id(kv)] = torch.cat([kv[:, : S - n], keep[:, :kmax]], 1)
        pos = gen.next_position[li]
        if id(pos) not in new_pos:
            new_pos[id(pos)] = pos - back
        gen.key_valid[li] = new_valid[id(kv)]
        gen.next_position[li] = new_pos[id(pos)]
        layer = gen.cache.layers[li]
        if drop:
            layer.keys = layer.keys[:, :, : layer.keys.shape[2] - drop]
            layer.values = layer.values[:, :, : layer.values.shape[2] - drop]
    if compact and kmax and bool((~keep[:, :kmax]).any()):  # a row kept fewer than another (or none): holes
        compact_left(gen)


def compact_left(gen: GenerationState) -> None:
    """Moves every row's invalid key slots to its left edge, the valid ones keeping their order: causal order and
    positions are unchanged (keys carry their RoPE), and each row's valid keys become contiguous, as flash attention's
    2-D mask path needs."""
    moved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for li, kv in enumerate(gen.key_valid):
        if id(kv) not in moved:
            order = torch.sort(kv.to(torch.int8), dim=1, stable=True).indices  # [B, S] invalid first, order kept
            moved[id(kv)] = (torch.gather(kv, 1, order), order)
        valid, order = moved[id(kv)]
        gen.key_valid[li] = valid
        layer = gen.cache.layers[li]
        idx = order.view(order.shape[0], 1, order.shape[1], 1).expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
        layer.keys = torch.gather(layer.keys, 2, idx)
        layer.values = torch.gather(layer.values, 2, idx)


def speculative_generate(
    model: LlavaLlamaForCausalLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    images: torch.Tensor | None,
    reduction: ReductionConfig,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_p: float | None,
    eos_token_id: int | None,
    pad_token_id: int,
    generator: torch.Generator | None = None,
    draft_tokens: int = DRAFT_TOKENS,
    draft_threshold: float = DRAFT_THRESHOLD,
    stats: SpeculativeStats | None = None,
    count_vision: bool = False,
    streamer: Any | None = None,
    compact: bool | None = None,
) -> tuple[torch.Tensor, Any]:
    """``generate(speculative="twig")``: the new tokens [B, n] (pad after a row's EOS, as plain ``generate``) and the
    prefill's vision counts (or None). ``stats`` (a ``SpeculativeStats``) is filled in when given."""
    B = input_ids.shape[0]
    device = input_ids.device
    if streamer is not None and B != 1:
        raise ValueError("a streamer with speculative decoding takes one prompt at a time (batch size 1)")
    dec = SpeculativeDecoder(model, reduction, do_sample, temperature, top_p, eos_token_id, pad_token_id, generator,
                             draft_tokens, draft_threshold, compact)
    sync = device.type == "cuda"
    start = time.perf_counter()
    out, logits = dec.prefill(input_ids, attention_mask, images, count_vision)
    rows: list[list[torch.Tensor]] = [[] for _ in range(B)]
    count = torch.zeros(B, dtype=torch.long, device=device)
    drafted = torch.zeros(B, dtype=torch.long, device=device)
    accepted = torch.zeros(B, dtype=torch.long, device=device)
    rounds = 0
    active = torch.ones(B, dtype=torch.bool, device=device)
    last = None
    if max_new_tokens > 0:
        last = dec.first_token(logits)
        count += 1
        active, emitted = _emit(rows, last.unsqueeze(1), torch.ones_like(count), active, eos_token_id)
        active = active & (count < max_new_tokens)
        if streamer is not None:
            streamer.put(last.cpu())
    if sync:
        torch.cuda.synchronize(device)
    prefill_seconds = time.perf_counter() - start
    start = time.perf_counter()
    while last is not None and bool(active.any()):
        tokens, counts, n_drafted = dec.round(last, active, max_new_tokens - count)
        rounds += 1
        drafted += n_drafted
        accepted += (counts - 1).clamp(min=0)
        was_active = active
        active, emitted = _emit(rows, tokens, counts, active, eos_token_id)
        count += emitted
        active = active & (count < max_new_tokens)
        last = torch.where(was_active, tokens.gather(1, (counts - 1).clamp(min=0).unsqueeze(1)).squeeze(1), last)
        if streamer is not None:
            for t in tokens[0, : int(emitted[0])]:
                streamer.put(t.view(1).cpu())
    if sync:
        torch.cuda.synchronize(device)
    decode_seconds = time.perf_counter() - start
    lengths = [sum(int(t.numel()) for t in r) for r in rows]
    width = max(lengths, default=0)
    out_tokens = torch.full((B, width), pad_token_id, dtype=torch.long, device=device)
    for b, r in enumerate(rows):
        if r:
            seq = torch.cat(r)
            out_tokens[b, : seq.numel()] = seq
    if stats is not None:
        stats.drafted = drafted.tolist()
        stats.accepted = accepted.tolist()
        stats.new_tokens = lengths
        stats.rounds = rounds
        stats.prefill_seconds = prefill_seconds
        stats.decode_seconds = decode_seconds
    return out_tokens, out.vision_counts


def _emit(rows: list[list[torch.Tensor]], tokens: torch.Tensor, counts: torch.Tensor, active: torch.Tensor,
          eos: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Appends each active row's first ``counts`` tokens, cut after an EOS; returns (still active [B], emitted [B])."""
    emitted = counts.clone()
    done = torch.zeros_like(active)
    if eos is not None and tokens.shape[1]:
        cols = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)
        is_eos = (tokens == eos) & (cols < counts.unsqueeze(1))
        first = torch.where(is_eos.any(1), is_eos.long().argmax(1), torch.full_like(counts, tokens.shape[1]))
        emitted = torch.minimum(counts, first + 1)
        done = is_eos.any(1)
    for b, k in enumerate(emitted.tolist()):
        if k and bool(active[b]):
            rows[b].append(tokens[b, :k])
    emitted = torch.where(active, emitted, torch.zeros_like(emitted))
    return active & ~done, emitted


__all__ = [
    "DRAFT_THRESHOLD",
    "DRAFT_TOKENS",
    "SpeculativeDecoder",
    "SpeculativeStats",
    "compact_left",
    "residual",
    "roll_back",
    "speculative_generate",
]
