"""Modality-grouped sampling and the projector learning rate (upstream LLaVATrainer behaviour)."""

from __future__ import annotations

import torch

from llava.train.sampler import ModalityGroupedSampler, modality_grouped_indices
from llava.train.trainer import LLaVATrainer


def test_each_megabatch_has_one_modality_except_the_last():
    # 37 image samples (positive lengths), 21 text-only (negative); batch 2 x world 2 -> megabatches of 4
    lengths = [10 + i for i in range(37)] + [-(5 + i) for i in range(21)]
    order = modality_grouped_indices(lengths, batch_size=2, world_size=2, generator=torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(len(lengths)))  # a permutation: nothing dropped or repeated
    mega = [order[i : i + 4] for i in range(0, len(order), 4)]
    mixed = [m for m in mega if len({lengths[i] > 0 for i in m}) > 1]
    assert len(mixed) <= 1 and (not mixed or mixed[0] == mega[-1])


def test_sampler_is_deterministic_per_seed_and_epoch():
    lengths = [3, -4, 5, -6, 7, 8, -9, 10]
    a, b = ModalityGroupedSampler(lengths, 2, 2, seed=1), ModalityGroupedSampler(lengths, 2, 2, seed=1)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert sorted(b) == sorted(a) and len(b) == len(lengths)


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = torch.nn.Module()
        self.model.mm_projector = torch.nn.Linear(4, 4)
        self.model.layer = torch.nn.Linear(4, 4)
        self.model.norm = torch.nn.LayerNorm(4)


def test_projector_gets_its_own_learning_rate():
    from transformers import TrainingArguments

    model = _Tiny()
    trainer = LLaVATrainer.__new__(LLaVATrainer)  # only the optimizer logic is under test
    trainer.model, trainer.optimizer = model, None
    trainer.args = TrainingArguments(output_dir="/tmp/unused", learning_rate=1e-3, weight_decay=0.1, use_cpu=True,
                                     report_to="none")
    trainer.args.mm_projector_lr = 2e-5
    opt = trainer.create_optimizer()
    proj = {id(p) for p in model.model.mm_projector.parameters()}
    for g in opt.param_groups:
        ids = {id(p) for p in g["params"]}
        if ids & proj:
            assert ids <= proj and g["lr"] == 2e-5
        else:
            assert g["lr"] == 1e-3
    decayed = [g for g in opt.param_groups if g["weight_decay"] > 0]
    assert all(id(p) != id(model.model.norm.weight) for g in decayed for p in g["params"])
