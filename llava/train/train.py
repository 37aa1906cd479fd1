"""Training entry point for both LLaVA stages, with the token-reduction schedule of the model config.

    torchrun --nproc_per_node 8 -m llava.train.train --deepspeed scripts/zero3.json ...   (see scripts/*.sh)
"""

from __future__ import annotations

import logging
import os
import sys

import torch
import torch.distributed as dist
from transformers import set_seed

from llava.mm_utils import load_image_processor
from llava.model.builder import default_attn_implementation
from llava.model.checkpoint_loading import CheckpointError, is_llava_checkpoint, load_llava
from llava.model.compression_tokens import add_compress_token, image_prompt_tokens
from llava.model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
from llava.model.reduction.config import ReductionConfigError, resolve_reduction
from llava.tokenizer_loading import load_tokenizer
from llava.train.arguments import build_parser
from llava.train.collator import DataCollatorForSupervisedDataset
from llava.train.dataset import DatasetFormatError, ImageFolderError, LazySupervisedDataset
from llava.train.run_guard import OutputDirError, OutputDirLock, check_output_dir, die_with_launcher
from llava.train.trainer import LLaVATrainer, NonFiniteLossError
from llava.train.twig_training import prepare_twig

logger = logging.getLogger("llava.train")

TEMPLATES = {"plain": "plain", "v1": "vicuna_v1", "vicuna_v1": "vicuna_v1", "llava_v1": "llava_v1"}


class TrainingSetupError(ValueError):
    """A flag combination this codebase does not support; the message names the flag."""


def _uses_zero3(ds_config) -> bool:
    if not ds_config:
        return False
    import json

    cfg = ds_config if isinstance(ds_config, dict) else json.load(open(ds_config))
    return cfg.get("zero_optimization", {}).get("stage") == 3


def parse_args(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not torch.cuda.is_available() and not any(a.startswith("--use_cpu") for a in argv):
        argv += ["--use_cpu", "True"]  # DeepSpeed on CPU needs accelerate's MULTI_CPU state (gloo)
    model_args, data_args, training_args = build_parser().parse_args_into_dataclasses(args=argv)
    if training_args.warmup_ratio is not None:
        if not 0 <= training_args.warmup_ratio < 1:
            raise TrainingSetupError(f"--warmup_ratio {training_args.warmup_ratio} must be in [0, 1)")
        training_args.warmup_steps = training_args.warmup_ratio
    if training_args.bits != 16:
        raise TrainingSetupError(f"--bits {training_args.bits}: only 16-bit training is supported")
    if model_args.mm_use_im_start_end:
        raise TrainingSetupError("--mm_use_im_start_end True is not supported (LLaVA-1.5 does not use it)")
    if model_args.mm_patch_merge_type != "flat":
        raise TrainingSetupError(f"--mm_patch_merge_type {model_args.mm_patch_merge_type}: only 'flat' (LLaVA-1.5)")
    if model_args.version not in TEMPLATES:
        raise TrainingSetupError(f"--version {model_args.version!r}: expected one of {sorted(TEMPLATES)}")
    if data_args.on_bad_sample not in ("raise", "skip"):
        raise TrainingSetupError(f"--on_bad_sample {data_args.on_bad_sample!r}: expected 'raise' or 'skip'")
    return model_args, data_args, training_args


def build_model(model_args, data_args, training_args, tokenizer=None) -> LlavaLlamaForCausalLM:
    dtype = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32
    config = LlavaConfig.from_pretrained(model_args.model_name_or_path)
    base_reduction = config.reduction if model_args.reduction == "checkpoint" else None
    red = resolve_reduction(None if base_reduction else model_args.reduction, model_args.reduction_overrides, base=base_reduction)
    config.reduction = red.to_dict()
    config.image_aspect_ratio = data_args.image_aspect_ratio
    config.tokenizer_model_max_length = training_args.model_max_length
    config.tokenizer_padding_side = "right"
    config.use_cache = False
    if model_args.parallel_vision not in ("auto", "on", "off"):
        raise TrainingSetupError(f"--parallel_vision {model_args.parallel_vision!r}: expected auto, on or off")
    config.parallel_vision = model_args.parallel_vision
    attn = model_args.attn_implementation or default_attn_implementation()
    # A finetuned LLaVA (ours or upstream's layout) continues with its own projector and tower; a plain LLM
    # (Vicuna) gets them from --vision_tower and --pretrain_mm_mlp_adapter. Both load strictly.
    llava_base = is_llava_checkpoint(model_args.model_name_or_path)
    if llava_base and model_args.pretrain_mm_mlp_adapter:
        raise TrainingSetupError(
            f"--model_name_or_path {model_args.model_name_or_path} is a LLaVA checkpoint with its own projector; "
            "--pretrain_mm_mlp_adapter would replace it. Pass PROJECTOR= (empty) to continue from the checkpoint's "
            "projector"
        )
    try:
        model = load_llava(model_args.model_name_or_path, dtype, attn,
                           model_args.vision_tower if llava_base else None, config)
    except CheckpointError as e:
        raise TrainingSetupError(str(e)) from e
    if model_args.vision_tower:
        model.initialize_vision_modules(
            model_args.vision_tower, model_args.mm_projector_type, model_args.mm_vision_select_layer,
            model_args.mm_vision_select_feature, model_args.pretrain_mm_mlp_adapter,
        )
    elif not config.vision_config:
        raise TrainingSetupError("--vision_tower is required when the base model has no vision tower")
    red.validate_for(model.config.num_hidden_layers, model.config.num_vision_tokens)
    if red.data_dependent:
        raise TrainingSetupError(
            f"schedule {red.name!r} ({red.selection}, local_merge={red.local_merge}) is training-free: its "
            "thresholds and merging carry no gradient; evaluate it with REDUCTION=... on a trained checkpoint"
        )
    logger.info(red.describe(model.config.num_hidden_layers, model.config.num_vision_tokens))
    if red.compress_tokens:
        _add_voco_token(model, tokenizer, red, attn, model_args, training_args)

    if model_args.freeze_backbone:
        model.model.requires_grad_(False)
    if model_args.tune_mm_mlp_adapter:
        model.requires_grad_(False)
        model.model.mm_projector.requires_grad_(True)
    if training_args.freeze_mm_mlp_adapter:
        model.model.mm_projector.requires_grad_(False)
    model.model.vision_tower.requires_grad_(False)
    if model.reduction_thresholds is not None:
        model.reduction_thresholds.requires_grad_(True)
    prepare_twig(model, red, model_args, training_args, TrainingSetupError)  # TwigVLM (llava/train/twig_training.py)
    if training_args.gradient_checkpointing:
        model.enable_input_require_grads()
    if training_args.lora_enable:
        model = _wrap_lora(model, training_args)
    return model


def _add_voco_token(model, tokenizer, red, attn: str, model_args, training_args) -> None:
    """VoCo-LLaMA trains a new <voco> token (random init) with the whole LLM, as its authors: refuse what would
    leave it untrained or unmaskable, then add it to the tokenizer and both embeddings (saved with the model)."""
    if model_args.tune_mm_mlp_adapter:
        raise TrainingSetupError(
            f"--reduction {red.name}: VoCo tokens enter at instruction tuning (VoCo-LLaMA section 3.5); stage 1 trains "
            "only the projector and would leave <voco> untrained. Pretrain with REDUCTION=off, then finetune with "
            f"REDUCTION={red.name}")
    if training_args.lora_enable:
        raise TrainingSetupError(
            f"--reduction {red.name}: LoRA freezes the embeddings, so the new <voco> token would stay random; train "
            "VoCo-LLaMA with full finetuning (LORA=0), as its authors")
    if attn.startswith("flash_attention"):
        raise TrainingSetupError(
            f"--reduction {red.name}: flash attention cannot carry VoCo's pair-wise mask (the text after the VoCo "
            "tokens must not see the image); train with --attn_implementation sdpa (the authors' choice) or eager")
    if tokenizer is None:
        raise TrainingSetupError(f"--reduction {red.name}: the <voco> token must be added to the tokenizer too")
    add_compress_token(tokenizer, model)


def _wrap_lora(model, args):
    from peft import LoraConfig, get_peft_model

    skip = ("mm_projector", "vision_tower", "lm_head", "reduction_thresholds")
    targets = sorted({n.split(".")[-1] for n, m in model.named_modules()
                      if isinstance(m, torch.nn.Linear) and not any(s in n for s in skip)})
    # A TwigVLM twig stays frozen outside twig training and gets no adapters (a schedule without it never runs it).
    exclude = r"twig\..*" if getattr(model, "twig", None) is not None else None
    cfg = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, target_modules=targets, lora_dropout=args.lora_dropout,
                     bias=args.lora_bias, task_type="CAUSAL_LM", exclude_modules=exclude)
    model = get_peft_model(model, cfg)
    for n, p in model.named_parameters():
        if "mm_projector" in n or "reduction_thresholds" in n:
            p.requires_grad_(True)
    return model


def train(argv: list[str] | None = None) -> None:
    die_with_launcher()
    model_args, data_args, training_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if training_args.should_log else logging.WARNING)
    lock = None
    if int(os.environ.get("RANK", "0")) == 0:
        # Rank 0 alone guards the directory; if it refuses, torchrun stops the other ranks.
        lock = OutputDirLock(training_args.output_dir).acquire()
        check_output_dir(training_args.output_dir, bool(training_args.resume_from_checkpoint),
                         training_args.overwrite_output_dir)
    if training_args.deepspeed and _uses_zero3(training_args.deepspeed) and not torch.cuda.is_available():
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")  # before zero.Init builds the model on CPU ranks

    tokenizer = load_tokenizer(model_args.model_name_or_path, model_max_length=training_args.model_max_length,
                                              padding_side="right")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token  # upstream: pad = unk
    image_processor = load_image_processor(model_args.vision_tower or model_args.model_name_or_path)
    # --seed decides the new weights (projector, thresholds) too, not only the data order the Trainer seeds later:
    # without it they come from torch's fixed start-up seed and every --seed trains from the same initialisation.
    set_seed(training_args.seed)
    model = build_model(model_args, data_args, training_args, tokenizer)
    base = model.base_model.model if training_args.lora_enable else model

    # an image takes its vision tokens plus a VoCo schedule's compression tokens (inserted by the model)
    image_tokens = image_prompt_tokens(base.config.num_vision_tokens, base.config.reduction_config)
    dataset = LazySupervisedDataset(
        data_args.data_path, tokenizer, image_processor, data_args.image_folder, TEMPLATES[model_args.version],
        data_args.image_aspect_ratio, image_tokens, training_args.model_max_length,
        data_args.on_bad_sample,
    )
    trainer = LLaVATrainer(
        model=model, args=training_args, train_dataset=dataset,
        data_collator=DataCollatorForSupervisedDataset(tokenizer.pad_token_id), processing_class=None,
        tune_mm_mlp_adapter=model_args.tune_mm_mlp_adapter, tokenizer=tokenizer, image_processor=image_processor,
        objective="twig" if model_args.train_twig else "lm",
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.report_skips()
    trainer.save_state()
    trainer.save_model(training_args.output_dir)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    if lock is not None:
        lock.release()


# Errors whose message says everything: printed without a traceback, exit status 2.
USER_ERRORS = (TrainingSetupError, OutputDirError, DatasetFormatError, ImageFolderError, NonFiniteLossError,
               ReductionConfigError, FileNotFoundError)


def main() -> None:
    try:
        train()
    except USER_ERRORS as e:
        rank = os.environ.get("RANK")
        print(f"error{f' (rank {rank})' if rank else ''}: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(2)  # skip DeepSpeed's teardown, which can abort on CPU ranks (see below)
    if not torch.cuda.is_available():
        # DeepSpeed's CPU communication threads can abort at interpreter teardown ("terminate called without an
        # active exception"), turning a finished run into a failure. Everything is saved and the process group
        # is closed by now, so leave without running C++ destructors.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(0)


if __name__ == "__main__":
    main()
