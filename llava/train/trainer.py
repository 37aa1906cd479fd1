"""LLaVATrainer: modality-grouped sampling, a projector learning rate, projector-only checkpoints for stage 1,
and logging of the realised vision-token counts."""

from __future__ import annotations

import logging
import os

import torch
from transformers import Trainer
from transformers.trainer_pt_utils import get_parameter_names

from llava.train.sampler import ModalityGroupedSampler

logger = logging.getLogger(__name__)


def _unwrap(model):
    while hasattr(model, "module"):
        model = model.module
    return model


def projector_state_dict(model) -> dict[str, torch.Tensor]:
    """`model.mm_projector.*` weights, gathered under ZeRO-3, on CPU (upstream's mm_projector.bin keys)."""
    named = {n: p for n, p in _unwrap(model).named_parameters() if "mm_projector" in n or "reduction_thresholds" in n}
    return _gather_to_cpu(named)


def _gather_to_cpu(named: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    out = {}
    for n, p in named.items():
        if hasattr(p, "ds_id"):
            from deepspeed import zero

            with zero.GatheredParameters([p]):
                out[n] = p.data.detach().cpu().clone()
        else:
            out[n] = p.detach().cpu().clone()
    # peft wraps names as base_model.model.<name>; store the plain model's names
    return {k.removeprefix("base_model.model."): v for k, v in out.items()}


class LLaVATrainer(Trainer):
    def __init__(self, *args, tune_mm_mlp_adapter: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tune_mm_mlp_adapter = tune_mm_mlp_adapter
        self._vision_stats: dict[str, list[float]] = {}

    # ---------------------------------------------------------------- data order
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.args.group_by_modality_length:
            return super()._get_train_sampler(train_dataset)
        world = self.args.world_size * self.args.gradient_accumulation_steps
        return ModalityGroupedSampler(dataset.modality_lengths, self.args.train_batch_size, world, self.args.seed)

    # ---------------------------------------------------------------- optimizer
    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        model = _unwrap(self.model)
        decay = set(get_parameter_names(model, [torch.nn.LayerNorm], ["bias", "layernorm", "rmsnorm", "norm"]))
        proj_lr = self.args.mm_projector_lr
        groups: dict[tuple[bool, bool], list] = {}
        for n, p in model.named_parameters():
            if not p.requires_grad:
                continue
            is_proj = proj_lr is not None and "mm_projector" in n
            groups.setdefault((n in decay, is_proj), []).append(p)
        param_groups = []
        for (dec, is_proj), params in groups.items():
            g = {"params": params, "weight_decay": self.args.weight_decay if dec else 0.0}
            if is_proj:
                g["lr"] = proj_lr
            param_groups.append(g)
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
        if _offloads_optimizer(self.args):
            # ZeRO-Offload wants DeepSpeed's CPU Adam. Using it here (rather than an `optimizer` block in the JSON)
            # keeps our parameter groups and the projector LR, and the HF cosine schedule.
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer_cls = DeepSpeedCPUAdam
            optimizer_kwargs = {"lr": self.args.learning_rate, "betas": (self.args.adam_beta1, self.args.adam_beta2),
                                "eps": self.args.adam_epsilon, "adamw_mode": True}
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    # ---------------------------------------------------------------- loss and logging
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        loss = outputs.loss
        if outputs.stages is not None:
            self._record_vision_stats(outputs, inputs)
        return (loss, outputs) if return_outputs else loss

    def _record_vision_stats(self, outputs, inputs) -> None:
        cfg = _unwrap(self.model).config
        red = cfg.reduction_config
        L, N = cfg.num_hidden_layers, cfg.num_vision_tokens
        realised = [s.keep.shape[1] for s in outputs.stages]  # exact k per stage (hard forward)
        counts = red.counts_per_layer(L, N, realised)
        self._vision_stats.setdefault("vision_tokens_avg", []).append(sum(counts) / L)
        soft = [s.soft_keep for s in outputs.stages if s.soft_keep is not None]
        if soft:
            has_img = inputs["input_ids"].eq(-200).any(1).float()
            soft_counts = [float((sk.detach() * has_img).sum() / has_img.sum().clamp_min(1)) for sk in soft]
            self._vision_stats.setdefault("vision_tokens_soft_avg", []).append(
                sum(red.counts_per_layer(L, N, soft_counts)) / L
            )
        if outputs.budget_loss is not None:
            self._vision_stats.setdefault("budget_loss", []).append(float(outputs.budget_loss.detach()))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for k, v in self._vision_stats.items():
            if v:
                logs[k] = round(sum(v) / len(v), 4)
        self._vision_stats = {}
        super().log(logs, start_time)

    # ---------------------------------------------------------------- saving
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        if not self.tune_mm_mlp_adapter:
            return super()._save(output_dir, state_dict)
        output_dir = output_dir or self.args.output_dir
        weights = projector_state_dict(self.model)
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            _unwrap(self.model).config.save_pretrained(output_dir)
            torch.save(weights, os.path.join(output_dir, "mm_projector.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        path = os.path.join(resume_from_checkpoint, "mm_projector.bin")
        if self.tune_mm_mlp_adapter and os.path.isfile(path) and not self.is_deepspeed_enabled:
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing = _unwrap(model or self.model).load_state_dict(state, strict=False)
            if missing.unexpected_keys:
                raise ValueError(f"unexpected keys in {path}: {missing.unexpected_keys[:5]}")
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)


def _offloads_optimizer(args) -> bool:
    cfg = getattr(args, "hf_deepspeed_config", None)
    if cfg is None:
        return False
    off = cfg.config.get("zero_optimization", {}).get("offload_optimizer", {})
    return off.get("device") in ("cpu", "nvme")
