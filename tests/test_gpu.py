"""GPU-only checks (skipped without CUDA; `benchmarks/gpu_suite.sh` runs them on a lent GPU): the fast path against
the masked reference on the GPU, flash-attention's 2-D mask path against sdpa, cached generation against full
recompute, and parallel vision decoupling on a real side stream."""

from __future__ import annotations

import random

import pytest
import torch
from hidrop_reference import reference_forward
from test_hidrop_forward import fast_text_logits, random_schedule
from tiny import random_batch, tiny_model

from llava.model import ReductionConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def _to(batch, device):
    return {k: v.to(device) for k, v in batch.items()}


@pytest.mark.parametrize("seed", range(6))
def test_fast_path_on_gpu_matches_the_reference(seed):
    rng = random.Random(seed)
    L = rng.randint(4, 7)
    model = tiny_model(seed=seed, num_layers=L, kv_heads=rng.choice([1, 2, 4]))
    red = random_schedule(rng, L, model.config.num_vision_tokens, rng.choice(["hard", "diff"]), options=True)
    batch = random_batch(model, [14, 9, 12], [3, None, 2], left_pad=rng.random() < 0.5, seed=seed)
    with torch.no_grad():
        out = model.to(CUDA)(**_to(batch, CUDA), reduction=red)
        keeps = [s.keep.cpu() for s in out.stages]
        out.logits, out.decoder.state = out.logits.cpu(), _state_cpu(out.decoder.state)
        ref, _ = reference_forward(model.cpu(), batch, red, keeps)
    fast = fast_text_logits(model, out)
    for key in ref:
        torch.testing.assert_close(fast[key], ref[key], atol=1e-4, rtol=1e-3)


def _state_cpu(state):
    from dataclasses import replace

    return replace(state, hidden=state.hidden.cpu(), positions=state.positions.cpu(), valid=state.valid.cpu(),
                   vision_start=state.vision_start.cpu(), labels=None)


@pytest.mark.parametrize("left_pad", [False, True])
def test_flash_attention_2_matches_sdpa(left_pad):
    pytest.importorskip("flash_attn")
    red = ReductionConfig(name="t", inject_layer=2, prune_layers=(3, 5), keep_counts=(10, 4), exit_layer=7)
    sdpa = tiny_model(seed=3, reduction=red, attn="sdpa").to(CUDA, torch.bfloat16)
    flash = tiny_model(seed=3, reduction=red, attn="flash_attention_2").to(CUDA, torch.bfloat16)
    batch = _to(random_batch(sdpa, [20, 13, 17], [3, None, 2], left_pad=left_pad, seed=3), CUDA)
    with torch.no_grad():
        a, b = sdpa(**batch), flash(**batch)
    assert all(torch.equal(x.keep, y.keep) for x, y in zip(a.stages, b.stages))
    valid = a.token_valid
    torch.testing.assert_close(a.logits[valid], b.logits[valid], atol=3e-2, rtol=3e-2)


def test_cached_generation_equals_recompute_on_gpu():
    red = ReductionConfig(name="t", inject_layer=3, prune_layers=(3, 4, 5), keep_counts=(9, 4, 2), exit_layer=7,
                          position_scheme="compacted")
    model = tiny_model(seed=7).to(CUDA)
    batch = _to(random_batch(model, [14, 9, 12], [3, None, 2], left_pad=True, with_labels=False, seed=7), CUDA)
    cached = model.generate(**batch, max_new_tokens=8, reduction=red, eos_token_id=-1)
    recomputed = model.generate(**batch, max_new_tokens=8, reduction=red, eos_token_id=-1, use_cache=False)
    assert torch.equal(cached, recomputed)


def test_parallel_vision_on_a_side_stream_changes_nothing():
    red = ReductionConfig(name="late", inject_layer=3, prune_layers=(3, 5), keep_counts=(8, 4), exit_layer=7)
    on, off = tiny_model(seed=12, reduction=red).to(CUDA).train(), tiny_model(seed=12, reduction=red).to(CUDA).train()
    on.config.parallel_vision, off.config.parallel_vision = "auto", "off"
    assert on.vision_decoupled(red)  # auto: on with a GPU and late injection
    batch = _to(random_batch(on, [18, 12, 15], [3, None, 2], seed=12), CUDA)
    a, b = on(**batch), off(**batch)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    a.loss.backward()
    b.loss.backward()
    for (name, p), q in zip(on.named_parameters(), off.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("attn", ["sdpa", "flash_attention_2"])
def test_speculative_decoding_equals_plain_on_gpu(attn):
    """Self-speculative greedy decoding with a twig, batch > 1 with left padding: rows keep different numbers of
    drafted tokens; with flash attention the holes they leave are compacted (llava.model.speculative)."""
    if attn.startswith("flash"):
        pytest.importorskip("flash_attn")
    from test_speculative import TWIG_SCHEDULE, _agreeing

    from llava.model.speculative import SpeculativeStats
    from llava.model.twig import TwigSpec

    V = 97
    shift = torch.arange(V)
    shift[::2] = torch.roll(shift[::2], 1)  # agrees on odd tokens only: rows keep different numbers
    model = tiny_model(seed=4, num_layers=6, attn=attn)
    model.add_twig(TwigSpec(2, 2))
    model = _agreeing(model, shift=shift).to(CUDA, torch.bfloat16 if attn.startswith("flash") else torch.float32)
    batch = _to(random_batch(model, [14, 9, 12], [3, None, 2], left_pad=True, with_labels=False, seed=7), CUDA)
    plain = model.generate(**batch, reduction=TWIG_SCHEDULE, max_new_tokens=16, eos_token_id=-1)
    stats = SpeculativeStats()
    spec = model.generate(**batch, reduction=TWIG_SCHEDULE, max_new_tokens=16, eos_token_id=-1, speculative="twig",
                          speculative_stats=stats)
    assert torch.equal(plain, spec)
    assert 0 < stats.acceptance_rate < 1


@pytest.mark.parametrize("bits", [8, 4])
def test_load_8bit_and_4bit_through_bitsandbytes(upstream_checkpoints, bits):
    """Upstream's load_8bit / load_4bit: the language model's linear layers quantized, tower and projector not,
    and the model answers; its logits stay near the float16 model's."""
    bnb = pytest.importorskip("bitsandbytes")
    from llava.model.builder import load_pretrained_model

    path = upstream_checkpoints["upstream"]
    tokenizer, model, _, _ = load_pretrained_model(path, None, "llava-v1.5-7b", load_8bit=bits == 8,
                                                   load_4bit=bits == 4)
    _, ref, _, _ = load_pretrained_model(path, None, "llava-v1.5-7b")
    kind = bnb.nn.Linear8bitLt if bits == 8 else bnb.nn.Linear4bit
    assert isinstance(model.model.layers[0].self_attn.q_proj, kind)
    assert not isinstance(model.model.mm_projector[0], kind)
    ids = torch.tensor([[tokenizer.bos_token_id, 5, 6, 7, 8]], device=CUDA)
    with torch.no_grad():
        a, b = model(ids).logits.float(), ref(ids).logits.float()
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.9
    assert model.generate(ids, max_new_tokens=4, eos_token_id=-1).shape == (1, 4)  # no EOS: all 4 tokens
