"""The decoder's two fast paths against the general one: sdpa with no mask (``is_causal``) where causal order alone
masks exactly, and one RoPE table for rows with the same positions. When they are taken, and that they change
nothing (forward logits at valid slots, cached generation, full recompute), also with HiDrop's gapped positions."""

from __future__ import annotations

import functools

import pytest
import torch
from tiny import random_batch, tiny_model

import llava.model.decoder as decoder
from llava.model import PRESETS, ReductionConfig
from llava.model.attention_mask import BlockedPairs, build_attention_mask

_T3 = {"inject_layer": 3, "prune_layers": (3, 4, 5), "keep_counts": (9, 4, 2), "exit_layer": 7}
SCHEDULES = [
    PRESETS["off"],
    ReductionConfig(name="t3", **_T3),  # persistent positions: gaps after every cut
    ReductionConfig(name="compacted", position_scheme="compacted", **_T3),
    ReductionConfig(name="group", position_scheme="group", **_T3),  # vision at max_position_embeddings + j
]


def test_no_mask_only_where_causal_order_masks_exactly():
    dense = torch.ones(2, 6, dtype=torch.bool)
    trailing, leading = dense.clone(), dense.clone()
    trailing[0, 5], leading[1, 0] = False, False  # the slot <image> frees (no padding) / left padding
    f32 = torch.float32
    assert build_attention_mask(dense, 6, "sdpa", f32) is None  # prefill
    assert build_attention_mask(trailing, 6, "sdpa", f32) is None  # no valid query can reach a later slot
    assert build_attention_mask(dense, 1, "sdpa", f32) is None  # one decode step, no hole in the cache
    assert build_attention_mask(trailing, 1, "sdpa", f32).shape == (2, 1, 1, 6)  # the new token would see the hole
    assert build_attention_mask(leading, 6, "sdpa", f32).shape == (2, 1, 6, 6)
    # sdpa's is_causal is upper-left aligned (transformers crops the keys): chunks against a cache keep the mask
    assert build_attention_mask(dense, 3, "sdpa", f32).shape == (2, 1, 3, 6)
    blocked = BlockedPairs(torch.zeros(2, 6, dtype=torch.bool), torch.zeros(2, 6, dtype=torch.bool))
    assert build_attention_mask(dense, 6, "sdpa", f32, blocked) is not None
    assert build_attention_mask(dense, 6, "sdpa", f32, implicit_causal=False).dtype == torch.bool
    assert build_attention_mask(dense, 6, "eager", f32) is not None  # eager applies no causality itself
    assert build_attention_mask(dense, 6, "flash_attention_2", f32).shape == (2, 6)


_SHARED_ROWS = decoder._shared_rows


def _runs(monkeypatch, implicit: bool) -> list[tuple[int, bool]]:
    """Routes the decoder through the fast paths or the general one; returns a log of (queries, no mask) per mask."""
    log: list[tuple[int, bool]] = []
    monkeypatch.setattr(decoder, "_shared_rows", _SHARED_ROWS if implicit else (lambda positions: positions))

    def build(key_valid, q_len, *args, **kwargs):
        mask = build_attention_mask(key_valid, q_len, *args, **kwargs, implicit_causal=implicit)
        log.append((q_len, mask is None))
        return mask

    monkeypatch.setattr(decoder, "build_attention_mask", build)
    return log


@pytest.mark.parametrize("red", SCHEDULES, ids=lambda r: r.name)
def test_no_mask_path_equals_the_explicit_mask(monkeypatch, red):
    model = tiny_model(seed=3)
    batch = random_batch(model, [13, 13], [3, 6], left_pad=True, with_labels=False, seed=3)  # no padding
    results = {}
    for implicit in (True, False):
        log = _runs(monkeypatch, implicit)
        with torch.no_grad():
            out = model(**batch, reduction=red)
        cached = model.generate(**batch, max_new_tokens=6, reduction=red, eos_token_id=-1)
        results[implicit] = (out.logits[out.token_valid], cached, log)  # logits of the valid slots [n, V]
    fast, general = results[True], results[False]
    assert any(none for _, none in fast[2]) and not any(none for _, none in general[2])
    torch.testing.assert_close(fast[0], general[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(fast[1], general[1])
    _runs(monkeypatch, True)
    recomputed = model.generate(**batch, max_new_tokens=6, reduction=red, eos_token_id=-1, use_cache=False)
    assert torch.equal(fast[1], recomputed)


@pytest.mark.parametrize("lengths,image_at", [([12, 12], [2, None]), ([11, 11], [None, None]), ([12, 9], [2, 3])],
                         ids=["text-only-row", "text-only-batch", "left-padded"])
def test_decode_steps_and_padded_batches(monkeypatch, lengths, image_at):
    """Decode steps run unmasked only where the cache has no hole (layers before injection of a text-only batch with
    no padding); left padding keeps every mask. Answers equal the general path's and full recompute."""
    model = tiny_model(seed=4)
    batch = random_batch(model, lengths, image_at, left_pad=True, with_labels=False, seed=4)
    red = SCHEDULES[1]
    answers = {}
    for implicit in (True, False):
        log = _runs(monkeypatch, implicit)
        answers[implicit] = model.generate(**batch, max_new_tokens=5, reduction=red, eos_token_id=-1)
        if implicit:
            decode_unmasked = any(none for q, none in log if q == 1)
            assert decode_unmasked == (image_at == [None, None])
            assert any(none for _, none in log) == (lengths[0] == lengths[1])
    _runs(monkeypatch, True)
    recomputed = model.generate(**batch, max_new_tokens=5, reduction=red, eos_token_id=-1, use_cache=False)
    assert torch.equal(answers[True], answers[False]) and torch.equal(answers[True], recomputed)


def test_one_rope_table_for_rows_with_the_same_positions():
    lm = tiny_model(seed=6).model
    same = torch.arange(7).expand(3, -1)
    differ = same.clone()
    differ[2, 4:] += 5  # a gap in one row only
    assert decoder._shared_rows(same).shape == (1, 7) and decoder._shared_rows(differ) is differ
    x = torch.zeros(3, 7, lm.config.hidden_size)
    shared, per_row = lm.rotary_emb(x, position_ids=decoder._shared_rows(same)), lm.rotary_emb(x, position_ids=same)
    for one, every in zip(shared, per_row):  # cos, sin: the broadcast table is each row's table, bit for bit
        assert one.shape[0] == 1 and torch.equal(one.expand_as(every), every)


def test_generate_runs_no_step_after_the_last_token(monkeypatch):
    model = tiny_model(seed=5)
    batch = random_batch(model, [10], [2], with_labels=False, seed=5)
    steps = []
    step = decoder.decode_step

    monkeypatch.setattr("llava.model.llava_llama.decode_step", functools.partial(_count, steps, step))
    assert model.generate(**batch, max_new_tokens=4, eos_token_id=-1).shape == (1, 4)
    assert len(steps) == 3


def _count(log: list, fn, *args, **kwargs):
    log.append(1)
    return fn(*args, **kwargs)
