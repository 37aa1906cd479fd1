"""Parallel vision decoupling: the tower joins at the injection layer and nothing changes, values or gradients;
under ZeRO-3 it switches itself off and says so once."""

from __future__ import annotations

import logging

import pytest
import torch
from tiny import random_batch, tiny_model

from llava.model import PRESETS, ReductionConfig

LATE = ReductionConfig(name="late", inject_layer=3, prune_layers=(3, 5), keep_counts=(8, 4), exit_layer=7)


def _pair(reduction):
    on, off = tiny_model(seed=12, reduction=reduction), tiny_model(seed=12, reduction=reduction)
    on.config.parallel_vision, off.config.parallel_vision = "on", "off"
    return on, off


@pytest.mark.parametrize("reduction", [LATE, ReductionConfig(name="late-exit-only", inject_layer=5, exit_layer=7)],
                         ids=lambda r: r.name)
def test_outputs_and_gradients_are_unchanged(reduction):
    on, off = _pair(reduction)
    on.train(), off.train()
    assert on.vision_decoupled(reduction) and not off.vision_decoupled(reduction)
    batch = random_batch(on, [18, 12, 15], [3, None, 2], seed=12)
    out_on, out_off = on(**batch), off(**batch)
    torch.testing.assert_close(out_on.logits, out_off.logits, rtol=0, atol=0)
    out_on.loss.backward()
    out_off.loss.backward()
    for (name, p_on), p_off in zip(on.named_parameters(), off.parameters()):
        assert (p_on.grad is None) == (p_off.grad is None), name
        if p_on.grad is not None:
            torch.testing.assert_close(p_on.grad, p_off.grad, rtol=0, atol=0, msg=name)
    assert on.model.mm_projector[0].weight.grad is not None  # the projector still trains through the join


def test_generation_is_unchanged():
    on, off = _pair(LATE)
    batch = random_batch(on, [14, 9], [3, 2], left_pad=True, with_labels=False, seed=13)
    assert torch.equal(on.generate(**batch, max_new_tokens=6, eos_token_id=-1),
                       off.generate(**batch, max_new_tokens=6, eos_token_id=-1))


def test_when_it_applies():
    model = tiny_model(seed=1)
    model.config.parallel_vision = "auto"
    assert not model.vision_decoupled(LATE)  # auto: GPU only
    model.config.parallel_vision = "on"
    assert not model.vision_decoupled(PRESETS["off"])  # injection at layer 1: nothing to overlap
    model.config.parallel_vision = "sometimes"
    with pytest.raises(ValueError, match="parallel_vision"):
        model.vision_decoupled(LATE)


def test_zero3_switches_it_off_and_says_so_once(caplog):
    model = tiny_model(seed=2)
    model.config.parallel_vision = "on"
    for p in model.model.vision_tower.parameters():
        p.ds_id = 0  # what DeepSpeed ZeRO-3 puts on a partitioned parameter
    from llava.model import llava_llama

    llava_llama._LOGGED.clear()  # "once" is per process
    with caplog.at_level(logging.INFO, logger="llava.model.llava_llama"):
        assert not model.vision_decoupled(LATE)
        assert not model.vision_decoupled(LATE)
    messages = [r.getMessage() for r in caplog.records if "ZeRO-3" in r.getMessage()]
    assert len(messages) == 1
    batch = random_batch(model, [12], [2], seed=2)
    model(**batch, reduction=LATE)  # runs, tower first
