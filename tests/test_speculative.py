"""Self-speculative decoding with a twig (llava.model.speculative) and its building block ``decode_chunk``.

Greedy speculative output must equal plain cached greedy output token for token, whatever the draft proposes: twigs
that agree with the base by construction (every proposal kept), that never agree (every proposal rejected), and
that agree on part of the vocabulary (rows of a batch keep different numbers); EOS and max_new_tokens inside a draft;
the draft on the base's own shallow caches and on its own (late injection). Sampling keeps the base's distribution:
a chi-square test on a tiny vocabulary, which the same test shows failing for a wrong replacement rule.
"""

from __future__ import annotations

import pytest
import torch
from tiny import random_batch, tiny_model

from llava.model import PRESETS, ReductionConfig
from llava.model.decoder import decode_chunk, decode_step, run_decoder
from llava.model.speculative import SpeculativeStats, speculative_generate
from llava.model.twig import TwigSpec

# The twig's schedule for the 6-layer tiny model: cut after layer 2 (the twig's K) to 5 of 16, exit before 6.
TWIG_SCHEDULE = ReductionConfig(name="twig-tiny", prune_layers=(2,), keep_counts=(5,), exit_layer=6, topk="hard",
                                score_layer="twig")
LATE = ReductionConfig(name="late", inject_layer=3, prune_layers=(3, 4), keep_counts=(9, 4), exit_layer=6)
LENGTHS, IMAGE_AT = [14, 9, 12], [3, None, 2]


def _model(seed: int = 1, **kw):
    model = tiny_model(seed=seed, num_layers=6, **kw)
    model.add_twig(TwigSpec(after_layer=2, num_layers=2))
    return model


@torch.no_grad()
def _agreeing(model, shift: torch.Tensor | None = None, scale: float = 300.0):
    """Makes the twig compute the base's logits exactly: layers after K add nothing through attention, the layers
    after K + T nothing at all, so the base's output is the twig's (pruning cannot change it). ``shift`` (a
    permutation of the vocabulary) makes the twig propose shift[base's token] instead; ``scale`` sharpens the heads
    so that drafts are confident (draft_threshold)."""
    K, T = model.twig.after_layer, len(model.twig.layers)
    for i, layer in enumerate(model.model.layers):
        if i >= K:
            layer.self_attn.o_proj.weight.zero_()
        if i >= K + T:
            layer.mlp.down_proj.weight.zero_()
    model.lm_head.weight.mul_(scale)
    model.add_twig(TwigSpec(K, T))  # copies of the (now modified) base layers, norm and head
    if shift is not None:
        inverse = torch.argsort(shift)
        model.twig.head.weight.copy_(model.lm_head.weight[inverse])  # twig logit of shift[v] = base logit of v
    return model


def _batch(model, left_pad=True, seed=7):
    return random_batch(model, LENGTHS, IMAGE_AT, left_pad=left_pad, with_labels=False, seed=seed)


def _both(model, batch, red, **kw):
    plain = model.generate(**batch, reduction=red, **kw)
    stats = SpeculativeStats()
    spec = model.generate(**batch, reduction=red, speculative="twig", speculative_stats=stats, **kw)
    return plain, spec, stats


# ------------------------------------------------------------------------------------------------ decode_chunk
@torch.no_grad()
def test_decode_chunk_equals_single_steps_with_invalid_slots_and_left_padding():
    """n new tokens in one chunk (some slots invalid, per row) == each row alone, its valid tokens one step each."""
    model = tiny_model(seed=3, num_layers=6)
    red = ReductionConfig(name="t", inject_layer=2, prune_layers=(2, 4), keep_counts=(9, 3), exit_layer=6)
    batch = _batch(model)
    new = torch.randint(3, model.config.vocab_size, (3, 4), generator=torch.Generator().manual_seed(3))
    valid = torch.tensor([[True, True, True, True], [True, False, True, True], [True, True, False, False]])
    split = model.multimodal_batch(batch["input_ids"], batch["attention_mask"], batch["images"], None, red)
    gen = run_decoder(model.model, split, red, use_cache=True).generation
    chunk = model.model.norm(decode_chunk(model.model, model.model.embed_tokens(new), gen, valid))  # [B, 4, D]
    T = batch["input_ids"].shape[1]
    for b, n in enumerate(LENGTHS):
        one = model.multimodal_batch(batch["input_ids"][b:b + 1, T - n:], batch["attention_mask"][b:b + 1, T - n:],
                                     batch["images"][b:b + 1], None, red)
        g = run_decoder(model.model, one, red, use_cache=True).generation
        for j in valid[b].nonzero().flatten().tolist():
            h = decode_step(model.model, model.model.embed_tokens(new[b:b + 1, j:j + 1]), g)
            torch.testing.assert_close(chunk[b, j], h[0, 0], atol=2e-5, rtol=1e-4, msg=f"row {b} slot {j}")
    # the positions advanced by the valid slots only (the <image> placeholder stands for 16 tokens)
    assert gen.next_position[-1].tolist() == [n + 15 * (a is not None) + int(v.sum())
                                              for n, a, v in zip(LENGTHS, IMAGE_AT, valid)]


# ------------------------------------------------------------------------------------------------ greedy
@pytest.mark.parametrize("red", [TWIG_SCHEDULE, PRESETS["off"], LATE], ids=lambda r: r.name)
def test_greedy_speculative_equals_plain_with_a_trained_like_twig(red):
    model = _model()
    plain, spec, stats = _both(model, _batch(model), red, max_new_tokens=10, eos_token_id=-1)
    assert torch.equal(plain, spec)
    assert sum(stats.drafted) > 0 and stats.rounds > 0


def test_every_proposal_kept_when_the_twig_agrees():
    model = _agreeing(_model(seed=2))
    batch = _batch(model)
    plain, spec, stats = _both(model, batch, TWIG_SCHEDULE, max_new_tokens=13, eos_token_id=-1)
    assert torch.equal(plain, spec)
    assert stats.acceptance_rate == 1.0
    assert stats.rounds == 2  # 12 tokens after the first: 2 rounds of 5 kept proposals + the base's token
    # batch of one, the single rows
    T = batch["input_ids"].shape[1]
    for b, n in enumerate(LENGTHS):
        one = {k: v[b:b + 1, T - n:] for k, v in batch.items() if k != "images"} | {"images": batch["images"][b:b + 1]}
        p1, s1, st1 = _both(model, one, TWIG_SCHEDULE, max_new_tokens=13, eos_token_id=-1)
        assert torch.equal(p1, s1) and torch.equal(s1[0], spec[b]) and st1.rounds == 2


def test_every_proposal_rejected_when_the_twig_never_agrees():
    V = 97
    model = _agreeing(_model(seed=2), shift=torch.roll(torch.arange(V), 1))
    plain, spec, stats = _both(model, _batch(model), TWIG_SCHEDULE, max_new_tokens=8, eos_token_id=-1)
    assert torch.equal(plain, spec)
    # each round keeps none and emits the base's token (7 rounds for the 7 tokens after the first); the drafts are
    # at most what the room left allows: 5, 5, 4, 3, 2, 1, 0
    assert stats.acceptance_rate == 0.0 and stats.rounds == 7 and max(stats.drafted) <= 20 and min(stats.drafted) > 7


def test_rows_keeping_different_numbers_and_the_compacted_cache():
    """A twig agreeing on half the vocabulary: rows keep different numbers of proposals per round. With compact=True
    (what flash attention gets) the holes those rows leave are moved left; the tokens stay the same."""
    V = 97
    shift = torch.arange(V)
    shift[::2] = torch.roll(shift[::2], 1)  # even tokens are proposed wrongly, odd ones right
    model = _agreeing(_model(seed=4), shift=shift)
    batch = _batch(model)
    plain, spec, stats = _both(model, batch, TWIG_SCHEDULE, max_new_tokens=16, eos_token_id=-1)
    assert torch.equal(plain, spec)
    assert 0 < stats.acceptance_rate < 1 and len(set(stats.accepted)) > 1
    attention_mask = batch["attention_mask"]
    compacted_stats = SpeculativeStats()
    compacted, _ = speculative_generate(model, batch["input_ids"], attention_mask, batch["images"], TWIG_SCHEDULE, 16,
                                        False, 1.0, None, -1, 0, stats=compacted_stats, compact=True)
    assert torch.equal(plain, compacted) and compacted_stats.accepted == stats.accepted


def test_eos_and_max_new_tokens_inside_a_draft():
    model = _agreeing(_model(seed=2))
    batch = _batch(model)
    free = model.generate(**batch, reduction=TWIG_SCHEDULE, max_new_tokens=12, eos_token_id=-1)
    eos = int(free[0, 3])  # row 0's 4th token, proposed in the first round's draft
    plain, spec, stats = _both(model, batch, TWIG_SCHEDULE, max_new_tokens=12, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(plain, spec)
    first = int((free[0] == eos).nonzero()[0])
    assert spec[0, first] == eos and torch.all(spec[0, first + 1:] == 0)
    for max_new in (1, 2, 4, 6):  # 4: the first round may draft only 2 of its 5 tokens
        plain, spec, _ = _both(model, batch, TWIG_SCHEDULE, max_new_tokens=max_new, eos_token_id=-1)
        assert torch.equal(plain, spec) and spec.shape == (3, max_new)


def test_speculative_refusals():
    model = tiny_model(seed=1, num_layers=6)
    batch = _batch(model)
    with pytest.raises(ValueError, match="has none"):
        model.generate(**batch, max_new_tokens=2, speculative="twig")
    model = _model()
    with pytest.raises(ValueError, match="speculative must be 'twig'"):
        model.generate(**batch, max_new_tokens=2, speculative="medusa")
    with pytest.raises(ValueError, match="with the cache"):
        model.generate(**batch, max_new_tokens=2, speculative="twig", use_cache=False)


# ------------------------------------------------------------------------------------------------ sampling
def _sampled_pairs(model, prompt, n, seed, temperature):
    batch = {k: v.expand(n, *v.shape[1:]) for k, v in prompt.items()}
    out = model.generate(**batch, reduction=PRESETS["off"], max_new_tokens=3, do_sample=True, temperature=temperature,
                         eos_token_id=-1, speculative="twig", generator=torch.Generator().manual_seed(seed))
    return out[:, 1] * model.config.vocab_size + out[:, 2]  # (x2, x3): both come from speculative rounds


@torch.no_grad()
def _exact_pairs(model, prompt, temperature):
    """P(x2, x3) under plain sampling, by full recompute: sum over x1 of p(x1) p(x2 | x1) p(x3 | x1, x2)."""
    V = model.config.vocab_size
    red = PRESETS["off"]

    def probs(ids):  # next-token distribution after each row of ids [R, t]
        mask = torch.ones_like(ids)
        images = prompt["images"].expand(ids.shape[0], *prompt["images"].shape[1:])
        logits = model(ids, mask, images=images, reduction=red).logits[:, -1]
        return torch.softmax(logits.double() / temperature, -1)

    ids = prompt["input_ids"]
    p1 = probs(ids)[0]  # [V]
    x1 = torch.arange(V).unsqueeze(1)
    p2 = probs(torch.cat([ids.expand(V, -1), x1], 1))  # [V(x1), V(x2)]
    pairs = torch.cartesian_prod(torch.arange(V), torch.arange(V))
    p3 = probs(torch.cat([ids.expand(V * V, -1), pairs], 1)).view(V, V, V)  # [x1, x2, x3]
    return torch.einsum("a,ab,abc->bc", p1, p2, p3).flatten()  # [V * V] over (x2, x3)


def _chi_square_pvalue(samples: torch.Tensor, expected: torch.Tensor) -> float:
    from scipy.stats import chisquare

    n = samples.numel()
    counts = torch.bincount(samples, minlength=expected.numel()).double()
    exp = expected * n
    small = exp < 5  # pooled, so that every cell's expectation is large enough for the chi-square approximation
    obs, exp = counts[~small], exp[~small]
    if small.any():
        obs, exp = torch.cat([obs, counts[small].sum().view(1)]), torch.cat([exp, (expected[small] * n).sum().view(1)])
    return float(chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue)


def _sampling_model():
    model = tiny_model(seed=5, num_layers=4, hidden=32, heads=2, kv_heads=1, vocab=6)
    with torch.no_grad():
        model.lm_head.weight.mul_(4)  # peaked enough that base and draft differ a lot
    model.add_twig(TwigSpec(after_layer=1, num_layers=1))
    with torch.no_grad():
        model.twig.head.weight.copy_(model.lm_head.weight[torch.tensor([3, 0, 4, 5, 1, 2])])
    prompt = random_batch(model, [10], [2], with_labels=False, seed=5)
    return model, prompt


def test_speculative_sampling_keeps_the_base_distribution():
    model, prompt = _sampling_model()
    expected = _exact_pairs(model, prompt, temperature=0.9)
    samples = _sampled_pairs(model, prompt, 3000, seed=0, temperature=0.9)
    assert _chi_square_pvalue(samples, expected) > 1e-3


def test_the_distribution_test_fails_for_a_wrong_replacement_rule(monkeypatch):
    """Drawing a rejected proposal's replacement from p instead of max(0, p - q) is biased; the test sees it."""
    import llava.model.speculative as speculative

    model, prompt = _sampling_model()
    expected = _exact_pairs(model, prompt, temperature=0.9)
    monkeypatch.setattr(speculative, "residual", lambda p, q: p)
    samples = _sampled_pairs(model, prompt, 3000, seed=0, temperature=0.9)
    assert _chi_square_pvalue(samples, expected) < 1e-6


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
def test_the_web_demos_stream_is_generate_speculative(do_sample):
    """llava.serve.streaming.TokenStream with speculative='twig' yields generate(speculative='twig')'s tokens, one by
    one, the same generator draws included, and reports the acceptance."""
    from llava.serve.streaming import TokenStream

    shift = torch.arange(97)
    shift[::3] = torch.roll(shift[::3], 1)
    model = _agreeing(_model(seed=6), shift=shift)
    one = random_batch(model, [14], [3], with_labels=False, seed=6)
    kw = {"do_sample": do_sample, "temperature": 0.7}
    stats = SpeculativeStats()
    expected = model.generate(**one, reduction=TWIG_SCHEDULE, max_new_tokens=12, eos_token_id=-1, speculative="twig",
                              speculative_stats=stats, generator=torch.Generator().manual_seed(3), **kw)
    stream = TokenStream(model, one["input_ids"], one["images"], TWIG_SCHEDULE, 12, eos_token_id=-1,
                         generator=torch.Generator().manual_seed(3), speculative="twig", **kw)
    assert list(stream) == expected[0].tolist()
    assert stream.speculative_stats.accepted == stats.accepted and stream.speculative_stats.rounds == stats.rounds
    assert stream.prefill.stages and stream.tokens_per_second is not None
