"""LLaVATrainer: modality-grouped sampling, a projector learning rate, what each kind of run saves (projector-only
for stage 1, adapter plus projector for LoRA, with tokenizer and image processor in every checkpoint), logging of
the realised vision-token counts and of skipped samples, and a stop on a non-finite loss."""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import torch
import torch.distributed as dist
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


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss or gradient norm; the run stops instead of logging it as 0."""


class LLaVATrainer(Trainer):
    def __init__(
        self,
        *args,
        tune_mm_mlp_adapter: bool = False,
        tokenizer: Any = None,
        image_processor: Any = None,
        objective: str = "lm",
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.tune_mm_mlp_adapter = tune_mm_mlp_adapter
        self.objective = objective  # "twig": the model's shallow-model loss (TwigVLM's twig training)
        self.tokenizer = tokenizer  # saved with every checkpoint, so a checkpoint-N folder evaluates on its own
        self.image_processor = image_processor
        self._vision_stats: dict[str, list[float]] = {}
        self._bad_samples: dict[int, str] = {}  # index -> reason, from the batches this rank trained on
        self._last_log: tuple[float, int] | None = None  # (time, global step) of the previous log

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
        for index, reason in inputs.pop("bad_samples", None) or ():
            self._bad_samples[int(index)] = reason
        outputs = model(**inputs, objective=self.objective) if self.objective != "lm" else model(**inputs)
        loss = outputs.loss
        # Checked before backward so that a NaN never reaches the optimizer state; the Trainer itself would log
        # the step as loss 0 (logging_nan_inf_filter) and go on.
        if model.training and not bool(torch.isfinite(loss.detach())):
            raise NonFiniteLossError(
                f"non-finite loss ({float(loss.detach())}) at step {self.state.global_step + 1}"
                f"{_rank_suffix()}; training stopped before the update. Usual causes: a learning rate far too high, "
                "fp16 overflow (try bf16), or a reduction setting that produced NaN scores"
            )
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
        # The Trainer calls log() on every rank in the same order, so the gather below is safe under ZeRO-3.
        grad_norm = logs.get("grad_norm")
        if grad_norm is not None and not math.isfinite(grad_norm) and not self.args.fp16:
            # fp16's loss scaler skips such steps by design; in bf16/fp32 the update has been poisoned.
            raise NonFiniteLossError(
                f"non-finite gradient norm ({grad_norm}) at step {self.state.global_step}{_rank_suffix()}; "
                "training stopped. Usual causes: a learning rate far too high or a reduction setting that "
                "produced NaN scores"
            )
        # Wall time per optimizer step since the previous log: what a user feels, and what the speed benchmark
        # of the whole training step reads (benchmarks/bench_train_step.py).
        now, step = time.perf_counter(), self.state.global_step
        if self._last_log is not None and step > self._last_log[1]:
            logs["step_seconds"] = round((now - self._last_log[0]) / (step - self._last_log[1]), 4)
        self._last_log = (now, step)
        for k, v in self._vision_stats.items():
            if v:
                logs[k] = round(sum(v) / len(v), 4)
        self._vision_stats = {}
        if getattr(self.train_dataset, "on_bad_sample", "raise") == "skip":
            logs["skipped_samples"] = len(self.gather_bad_samples())
        super().log(logs, start_time)

    def gather_bad_samples(self) -> dict[int, str]:
        """The union over ranks of the skipped samples met in training (collective: call it on every rank)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return dict(self._bad_samples)
        parts: list[dict[int, str] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self._bad_samples)
        merged: dict[int, str] = {}
        for part in parts:
            merged.update(part or {})
        return merged

    def report_skips(self) -> dict[str, int]:
        """End of run: one summary of skipped samples over all workers and ranks, logged by the main process and
        recorded in the trainer state (collective: call it on every rank)."""
        bad = self.gather_bad_samples()
        if not self.is_world_process_zero():
            return {}
        counts = self.train_dataset.report_skips(logger, bad=bad)
        self.state.log_history.append({"step": self.state.global_step, "skipped_samples": len(bad),
                                       "skipped_by_reason": counts})
        return counts

    # ---------------------------------------------------------------- saving
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Every save (checkpoint-N and the final one) goes through here, on the writing rank only.

        Under DeepSpeed ``state_dict`` is the Trainer's consolidated one (ZeRO-3 partitions gathered, trainable
        weights only for LoRA); saving from the live parameters instead wrote zero-sized ZeRO-3 shards.
        """
        output_dir = output_dir or self.args.output_dir
        base = _unwrap(self.model)
        is_lora = hasattr(base, "peft_config")
        if self.tune_mm_mlp_adapter:
            weights = projector_state_dict(self.model) if state_dict is None else _projector_only(state_dict)
            if self.args.should_save:
                os.makedirs(output_dir, exist_ok=True)
                _plain(base).config.save_pretrained(output_dir)
                torch.save(weights, os.path.join(output_dir, "mm_projector.bin"))
        else:
            if is_lora and state_dict is not None:
                _check_complete({n: v for n, v in state_dict.items() if "lora_" in n}, output_dir)
            super()._save(output_dir, state_dict)
            if is_lora and self.args.should_save:
                if state_dict is None:
                    state_dict = {n: p.detach() for n, p in base.named_parameters() if p.requires_grad}
                trainables = {n.removeprefix("base_model.model."): v.detach().cpu().clone()
                              for n, v in state_dict.items() if "lora_" not in n and _is_non_lora_trainable(n)}
                _check_complete(trainables, output_dir)
                torch.save(trainables, os.path.join(output_dir, "non_lora_trainables.bin"))
                _plain(base).config.save_pretrained(output_dir)
        if self.args.should_save:
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(output_dir)
            if self.image_processor is not None:
                self.image_processor.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        path = os.path.join(resume_from_checkpoint, "mm_projector.bin")
        if self.tune_mm_mlp_adapter and os.path.isfile(path) and not self.is_deepspeed_enabled:
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing = _unwrap(model or self.model).load_state_dict(state, strict=False)
            if missing.unexpected_keys:
                raise ValueError(f"unexpected keys in {path}: {missing.unexpected_keys[:5]}")
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)


def _rank_suffix() -> str:
    if dist.is_available() and dist.is_initialized():
        return f" on rank {dist.get_rank()}"
    return ""


def _plain(model):
    """The LLaVA model under a peft wrapper (its config is the one a checkpoint needs)."""
    return model.base_model.model if hasattr(model, "peft_config") else model


def _is_non_lora_trainable(name: str) -> bool:
    return "mm_projector" in name or "reduction_thresholds" in name


def _projector_only(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {n.removeprefix("base_model.model."): v.detach().cpu().clone()
           for n, v in state_dict.items() if _is_non_lora_trainable(n)}
    _check_complete(out, "mm_projector.bin")
    return out


def _check_complete(weights: dict[str, torch.Tensor], where: str) -> None:
    """A zero-sized tensor is an ungathered ZeRO-3 shard: saving it would lose the trained weights."""
    empty = sorted(n for n, v in weights.items() if v.numel() == 0)
    if empty:
        raise RuntimeError(f"refusing to save ungathered (zero-sized) weights to {where}: {empty[:5]}")


def _offloads_optimizer(args) -> bool:
    cfg = getattr(args, "hf_deepspeed_config", None)
    if cfg is None:
        return False
    off = cfg.config.get("zero_optimization", {}).get("offload_optimizer", {})
    return off.get("device") in ("cpu", "nvme")
