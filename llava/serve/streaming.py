"""Token-by-token generation for the web demo: ``model.generate()`` for one prompt, one token at a time.

``LlavaLlamaForCausalLM.generate`` returns the whole answer at once, so a page that wants to stream must decode
itself. :class:`TokenStream` does so from the model's public pieces, in the order ``generate(use_cache=True)``
uses them, with ``generate``'s own sampling function (``next_token``) and last-token rule (``last_valid``):

1. prefill: ``model.multimodal_batch`` (vision tower, projector, splice) then
   ``run_decoder(model.model, batch, red, None, use_cache=True, count_vision=True)`` and ``lm_head`` on the last
   valid position, exactly as ``generate`` does for a batch of one with an all-ones attention mask;
2. each step: sample with ``next_token(logits, do_sample, temperature, top_p, generator)``, stop after the EOS
   token (it is part of the answer, as in ``generate``), else ``decode_step`` on its embedding and ``lm_head``.

Under a VoCo-LLaMA schedule step 1 is ``generate``'s two-pass prefill (``llava.model.two_pass.compressed_prefill``)
with the stream's ``image_cache``: a follow-up question about the same image reuses the image's VoCo cache.

Like ``generate``, it runs no ``decode_step`` after the last token (its logits would never be read).
tests/test_web_demo.py checks token-by-token equality with ``generate()`` (greedy and seeded sampling, several
schedules, the realised vision counts too).

The stream also keeps what the page shows after an answer and ``generate`` does not return: the prune decisions
of the prefill (``StageRecord``s: the kept-token map is drawn from the very prefill that produced the answer), the
prefill time and the decoding time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from llava.model.decoder import StageRecord, decode_step, run_decoder

# generate()'s own helpers: sharing them (not copies) is what makes the stream provably the same computation.
from llava.model.llava_llama import last_valid, next_token
from llava.model.reduction.config import ReductionConfig
from llava.model.speculative import SpeculativeDecoder, SpeculativeStats
from llava.model.two_pass import ImageCache, compressed_prefill

if TYPE_CHECKING:
    from llava.model.llava_llama import LlavaLlamaForCausalLM


@dataclass
class Prefill:
    """What the prompt's prefill did."""

    stages: list[StageRecord]  # one per prune stage: which vision tokens survived it
    vision_counts: list[int]  # vision tokens present at the input of each layer 1..L
    seconds: float  # vision tower + projector + every layer + the first logits
    vision_counts_after_filter: list[int] = field(default_factory=list)  # a prune layer counts its survivors
    image_reused: bool = False  # VoCo: the image's VoCo cache came from the ImageCache (no vision tower, no image)
    # [1, N] bool: the slots holding a token after local merging in the tower (None: the schedule does not merge)
    vision_valid: torch.Tensor | None = None

    @property
    def realised_avg_vision_tokens(self) -> float:
        return sum(self.vision_counts) / len(self.vision_counts) if self.vision_counts else 0.0

    @property
    def realised_avg_vision_tokens_after_filter(self) -> float:
        """The same average by MustDrop's counter (docs/Baselines.md, "Counting vision tokens")."""
        counts = self.vision_counts_after_filter
        return sum(counts) / len(counts) if counts else 0.0


@dataclass
class TokenStream:
    """Iterate to get the new token ids of ``model.generate(input_ids, images=..., ...)`` one by one.

    ``input_ids`` is one prompt ``[1, T]`` (no padding). After the iteration ``prefill``, ``tokens`` and
    ``decode_seconds`` describe the answer. A stream runs once.
    """

    model: LlavaLlamaForCausalLM
    input_ids: torch.Tensor  # [1, T]
    images: torch.Tensor | None  # [1, 3, H, W] or None (text only)
    reduction: ReductionConfig
    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float | None = None
    eos_token_id: int | None = None
    generator: torch.Generator | None = None
    image_cache: ImageCache | None = None  # VoCo schedules: compressed images kept for the next turns
    # "twig": self-speculative decoding with the model's twig, as generate(speculative="twig") does it (the same
    # SpeculativeDecoder); the tokens of a round are yielded one by one. ``speculative_stats`` then holds the
    # proposals drafted and kept.
    speculative: str | None = None
    speculative_stats: SpeculativeStats | None = None
    prefill: Prefill | None = None
    tokens: list[int] = field(default_factory=list)
    # Compute time of the decode steps (each ``decode_step`` + ``lm_head`` + sampling of the token it gives), i.e.
    # of every token after the first; the prefill and the time the consumer spends between tokens are excluded.
    decode_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.input_ids.dim() != 2 or self.input_ids.shape[0] != 1:
            raise ValueError(f"TokenStream takes one prompt [1, T], got shape {tuple(self.input_ids.shape)}")
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")

    @property
    def tokens_per_second(self) -> float | None:
        """Decoding speed: the tokens after the first over their decode time (None below 2 tokens)."""
        if len(self.tokens) < 2 or self.decode_seconds <= 0:
            return None
        return (len(self.tokens) - 1) / self.decode_seconds

    def __iter__(self) -> Iterator[int]:
        if self.prefill is not None:
            raise RuntimeError("a TokenStream runs once; make a new one")
        model = self.model
        cfg = model.config
        red = self.reduction.validate_for(cfg.num_hidden_layers, cfg.num_vision_tokens)  # as generate()'s _reduction
        eos = cfg.eos_token_id if self.eos_token_id is None else self.eos_token_id
        device = self.input_ids.device
        # generate() runs under no_grad. Here each piece enters it on its own, never across a yield: grad mode is
        # per thread, and gradio resumes a generator on whichever worker thread is free.
        with torch.no_grad():
            start = time.perf_counter()
            mask = torch.ones_like(self.input_ids)  # generate(attention_mask=None) uses ones
            merged_valid = None
            if red.compress_tokens:  # VoCo: generate()'s two-pass prefill, reusing a compressed image if it can
                pre = compressed_prefill(model, self.input_ids, mask, self.images, red, self.image_cache)
                stages, counts, gen, logits, reused = [], pre.vision_counts, pre.generation, pre.logits, bool(pre.reused[0])
            elif self.speculative:
                if self.speculative != "twig":
                    raise ValueError(f"speculative must be 'twig' or None, got {self.speculative!r}")
                spec = SpeculativeDecoder(model, red, self.do_sample, self.temperature, self.top_p, eos, 0,
                                          self.generator)
                out, logits = spec.prefill(self.input_ids, mask, self.images, count_vision=True)
                stages, counts, gen, reused = out.stages, out.vision_counts, None, False
                batch = None
            else:
                batch = model.multimodal_batch(self.input_ids, mask, self.images, None, red)
                out = run_decoder(model.model, batch, red, None, use_cache=True, count_vision=True, twig=model.twig)
                last = last_valid(out.state.valid)  # [1]
                logits = model.lm_head(out.hidden[torch.arange(1, device=out.hidden.device), last]).float()  # [1, V]
                stages, counts, gen, reused = out.stages, out.vision_counts, out.generation, False
                if red.local_merge and batch is not None and batch.vision_valid is not None:
                    merged_valid = batch.vision_valid.detach().cpu()  # [1, N]
            _synchronize(device)  # the timing must include the GPU's work, not just its launch
        self.prefill = Prefill(
            stages=stages,
            vision_counts=[] if counts is None else [int(c) for c in counts.entering[0].tolist()],
            seconds=time.perf_counter() - start,
            vision_counts_after_filter=[] if counts is None else [int(c) for c in counts.after_filter[0].tolist()],
            image_reused=reused,
            vision_valid=merged_valid,
        )
        if self.speculative:
            yield from self._speculative(spec, logits, eos)
            return
        step_start = time.perf_counter()
        for step in range(self.max_new_tokens):
            with torch.no_grad():
                nxt = next_token(logits, self.do_sample, self.temperature, self.top_p, self.generator)  # [1]
            token = int(nxt[0])  # host sync: the page needs the token now (and the timing the GPU's work)
            if step > 0:
                self.decode_seconds += time.perf_counter() - step_start
            self.tokens.append(token)
            yield token  # the clock is stopped while the consumer holds the token
            if (eos is not None and token == eos) or step + 1 == self.max_new_tokens:
                return
            step_start = time.perf_counter()
            with torch.no_grad():
                h = decode_step(model.model, model.model.embed_tokens(nxt).unsqueeze(1), gen)
                logits = model.lm_head(h[:, -1]).float()


    def _speculative(self, spec: SpeculativeDecoder, logits: torch.Tensor, eos: int | None) -> Iterator[int]:
        """The tokens of ``speculative_generate`` for this one prompt, yielded as each round produces them."""
        stats = self.speculative_stats if self.speculative_stats is not None else SpeculativeStats()
        self.speculative_stats = stats
        stats.drafted, stats.accepted, stats.new_tokens = [0], [0], [0]
        stats.prefill_seconds = self.prefill.seconds if self.prefill is not None else 0.0
        if self.max_new_tokens == 0:
            return
        with torch.no_grad():
            last = spec.first_token(logits)  # [1]
        token = int(last[0])
        self.tokens.append(token)
        stats.new_tokens[0] = 1
        yield token
        active = torch.ones(1, dtype=torch.bool, device=last.device)
        while not (eos is not None and self.tokens[-1] == eos) and len(self.tokens) < self.max_new_tokens:
            start = time.perf_counter()
            with torch.no_grad():
                room = torch.full_like(last, self.max_new_tokens - len(self.tokens))
                tokens, counts, drafted = spec.round(last, active, room)
            emitted = tokens[0, : int(counts[0])].tolist()  # host sync: the page needs the tokens now
            self.decode_seconds += time.perf_counter() - start
            stats.decode_seconds = self.decode_seconds
            stats.rounds += 1
            stats.drafted[0] += int(drafted[0])
            stats.accepted[0] += int(counts[0]) - 1
            last = tokens[:, int(counts[0]) - 1]
            for token in emitted:
                self.tokens.append(token)
                stats.new_tokens[0] += 1
                yield token  # the clock is stopped while the consumer holds the token
                if eos is not None and token == eos:
                    return


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
