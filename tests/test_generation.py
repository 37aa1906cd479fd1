"""Cached generation against full recompute, and batched against one sample, for several schedules."""

from __future__ import annotations

import pytest
import torch
from tiny import random_batch, tiny_model

from llava.model import PRESETS, ReductionConfig

_T3 = {"inject_layer": 3, "prune_layers": (3, 4, 5), "keep_counts": (9, 4, 2), "exit_layer": 7}
SCHEDULES = [
    PRESETS["off"],
    ReductionConfig(name="t3", **_T3),
    ReductionConfig(name="no-exit", inject_layer=2, prune_layers=(4,), keep_counts=(3,)),
    ReductionConfig(name="exit-only", inject_layer=4, exit_layer=6),
    # every position scheme and scoring option: each layer's cache continues from its own stage's positions
    ReductionConfig(name="compacted", position_scheme="compacted", **_T3),
    ReductionConfig(name="compacted-exit-only", position_scheme="compacted", inject_layer=4, exit_layer=6),
    ReductionConfig(name="group", position_scheme="group", **_T3),
    ReductionConfig(name="group-off", position_scheme="group"),
    ReductionConfig(name="all-text-l2-same", score_query="all_text", score_weight="l2", score_layer="same", **_T3),
    ReductionConfig(name="last-1round", score_query="last_1round", **_T3),
]


@pytest.mark.parametrize("red", SCHEDULES, ids=lambda r: r.name)
def test_cached_equals_full_recompute(red):
    model = tiny_model(seed=7)
    batch = random_batch(model, [14, 9, 12], [3, None, 2], left_pad=True, with_labels=False, seed=7)
    cached = model.generate(**batch, max_new_tokens=8, reduction=red, eos_token_id=-1)
    recomputed = model.generate(**batch, max_new_tokens=8, reduction=red, eos_token_id=-1, use_cache=False)
    assert cached.shape == (3, 8)
    assert torch.equal(cached, recomputed)


@pytest.mark.parametrize("red", SCHEDULES, ids=lambda r: r.name)
def test_batched_equals_single(red):
    model = tiny_model(seed=8)
    lengths, image_at = [14, 9, 12], [3, None, 2]
    batch = random_batch(model, lengths, image_at, left_pad=True, with_labels=False, seed=8)
    together = model.generate(**batch, max_new_tokens=6, reduction=red, eos_token_id=-1)
    T = batch["input_ids"].shape[1]
    for b, n in enumerate(lengths):
        one = {"input_ids": batch["input_ids"][b : b + 1, T - n :], "attention_mask": batch["attention_mask"][b : b + 1, T - n :],
               "images": batch["images"][b : b + 1]}
        alone = model.generate(**one, max_new_tokens=6, reduction=red, eos_token_id=-1)
        assert torch.equal(alone[0], together[b]), f"row {b}"


def test_sampling_is_reproducible_and_stops_at_eos():
    model = tiny_model(seed=9)
    batch = random_batch(model, [10, 8], [2, 2], left_pad=True, with_labels=False, seed=9)
    g1 = model.generate(**batch, max_new_tokens=5, do_sample=True, temperature=0.8, top_p=0.9, generator=torch.Generator().manual_seed(0))
    g2 = model.generate(**batch, max_new_tokens=5, do_sample=True, temperature=0.8, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(g1, g2)
    greedy = model.generate(**batch, max_new_tokens=5, eos_token_id=-1)
    eos = int(greedy[0, 0])  # pretend the first greedy token is EOS: row 0 stops and pads afterwards
    stopped = model.generate(**batch, max_new_tokens=5, eos_token_id=eos, pad_token_id=0)
    assert stopped[0, 0] == eos and torch.all(stopped[0, 1:] == 0)


def test_generate_rejects_right_padding():
    model = tiny_model(seed=9)
    batch = random_batch(model, [10, 8], [2, 2], left_pad=False, with_labels=False, seed=9)
    with pytest.raises(ValueError, match="left-padded"):
        model.generate(**batch, max_new_tokens=2)


def test_generate_rejects_unsupported_arguments():
    model = tiny_model(seed=9)
    batch = random_batch(model, [10, 8], [2, 2], left_pad=True, with_labels=False, seed=9)
    with pytest.raises(ValueError, match="num_beams=4: beam search is not supported"):  # upstream's argument
        model.generate(**batch, max_new_tokens=2, num_beams=4)
    with pytest.raises(TypeError, match="repetition_penalty"):
        model.generate(**batch, max_new_tokens=2, repetition_penalty=1.2)


@pytest.mark.parametrize("red", SCHEDULES[1:], ids=lambda r: r.name)
@pytest.mark.parametrize("lengths,image_at", [([14], [3]), ([12, 12], [2, None])], ids=["one-row", "no-padding"])
def test_full_recompute_prunes_like_prefill_without_padding(red, lengths, image_at):
    """Batches without any padding put the text stream's free slot on the right; the recompute query must follow."""
    model = tiny_model(seed=11)
    batch = random_batch(model, lengths, image_at, left_pad=True, with_labels=False, seed=11)
    from llava.model.decoder import run_decoder
    from llava.model.multimodal_inputs import split_multimodal_batch

    with torch.no_grad():
        vision = model.encode_images(batch["images"], len(lengths))
        split = split_multimodal_batch(batch["input_ids"], batch["attention_mask"], vision, model.model.embed_tokens,
                                       None, red.score_query)
        prefill = run_decoder(model.model, split, model._reduction(red), use_cache=True)
        query, valid = model.prompt_query(batch["input_ids"], batch["attention_mask"], red)
        assert torch.equal(query, split.query_text_index)
        full = model(**batch, reduction=red, query_text_index=query, query_valid=valid)
    for a, b in zip(prefill.stages, full.stages):
        assert torch.equal(a.keep, b.keep)
