"""load_pretrained_model: full checkpoints, projector-only checkpoints on a base LLM, and LoRA adapters.

What a directory holds decides how it loads (never its name):
- ``adapter_config.json``: a LoRA adapter; needs ``model_base``; ``non_lora_trainables.bin`` carries the projector.
- ``mm_projector.bin`` and no model weights: a stage-1 (projector-only) checkpoint; needs ``model_base``.
- otherwise: a full checkpoint whose config.json rebuilds the whole model, vision tower included.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from transformers import CLIPImageProcessor, PreTrainedTokenizerBase

from llava.model.checkpoint_loading import (
    CheckpointError,
    complete_vision_config,
    load_base_llm,
    load_llava,
    load_tower_weights,
    tower_source,
)
from llava.model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
from llava.model.reduction.config import resolve_reduction
from llava.tokenizer_loading import load_tokenizer

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")

__all__ = ["CheckpointError", "checkpoint_kind", "default_attn_implementation", "load_pretrained_model"]


def checkpoint_kind(model_path: str) -> str:
    if not os.path.isdir(model_path):
        raise CheckpointError(f"model path {model_path!r} is not a directory")
    files = set(os.listdir(model_path))
    if "adapter_config.json" in files:
        return "lora"
    if "mm_projector.bin" in files and not files.intersection(WEIGHT_FILES):
        return "projector"
    if files.intersection(WEIGHT_FILES):
        return "full"
    raise CheckpointError(f"{model_path} holds no model weights, mm_projector.bin or adapter_config.json")


def default_attn_implementation() -> str:
    from transformers.utils import is_flash_attn_2_available

    return "flash_attention_2" if torch.cuda.is_available() and is_flash_attn_2_available() else "sdpa"


def _load_image_processor(model_path: str, config: LlavaConfig, vision_tower_path: str | None) -> CLIPImageProcessor:
    """The checkpoint's own processor, else the CLIP tower's (the override first, then ``mm_vision_tower``)."""
    if os.path.isfile(os.path.join(model_path, "preprocessor_config.json")):
        return CLIPImageProcessor.from_pretrained(model_path)
    source = tower_source(config, vision_tower_path)
    if not source:
        raise CheckpointError(f"no preprocessor_config.json in {model_path} and no vision tower named by its config")
    try:
        return CLIPImageProcessor.from_pretrained(source)
    except OSError as e:
        raise CheckpointError(
            f"no preprocessor_config.json in {model_path}, and the vision tower {source!r} has none that can be "
            f"loaded ({e}). On an offline machine: --vision-tower-path DIR (VISION_TOWER_PATH=DIR in the scripts)"
        ) from e


def _base_with_vision(
    model_base: str, config: LlavaConfig, dtype, attn: str, vision_tower_path: str | None
) -> LlavaLlamaForCausalLM:
    """The base LLM weights plus a CLIP tower from ``vision_tower_path`` or ``config.mm_vision_tower``."""
    if not tower_source(config, vision_tower_path):
        raise CheckpointError("the checkpoint's config.json has no mm_vision_tower; projector-only and LoRA "
                              "checkpoints rebuild CLIP from it (or pass vision_tower_path)")
    complete_vision_config(config, vision_tower_path)
    model = load_base_llm(model_base, config, dtype, attn)
    load_tower_weights(model, tower_source(config, vision_tower_path), dtype)
    return model


def load_pretrained_model(
    model_path: str,
    model_base: str | None = None,
    device: str = "cpu",
    torch_dtype: torch.dtype | None = None,
    reduction: str | None = None,
    reduction_overrides: dict[str, Any] | list[str] | str | None = None,
    merge_lora: bool = True,
    attn_implementation: str | None = None,
    vision_tower_path: str | None = None,
) -> tuple[PreTrainedTokenizerBase, LlavaLlamaForCausalLM, CLIPImageProcessor, int]:
    """Returns ``(tokenizer, model, image_processor, context_len)``.

    Full checkpoints load in our layout or upstream LLaVA-1.5's (see :mod:`llava.model.checkpoint_loading`);
    ``vision_tower_path`` (a local CLIP directory) replaces the hub id a checkpoint names for its tower.
    The token-reduction schedule comes from the checkpoint's config.json; ``reduction`` (a preset name) and
    ``reduction_overrides`` (single fields) replace it, e.g. to evaluate a plain LLaVA checkpoint with HiDrop.
    """
    attn = attn_implementation or default_attn_implementation()
    dtype = torch_dtype or torch.float32
    kind = checkpoint_kind(model_path)
    config = LlavaConfig.from_pretrained(model_path)
    if kind in ("lora", "projector") and not model_base:
        raise CheckpointError(f"{model_path} is a {kind} checkpoint: pass model_base (the LLM it was trained on)")
    if kind == "full":
        model = load_llava(model_path, dtype, attn, vision_tower_path, config)
        if not model.config.vision_config:
            raise CheckpointError(f"{model_path} is a plain language model (its config names no vision tower)")
        tok_path = model_path
    elif kind == "projector":
        model = _base_with_vision(model_base, config, dtype, attn, vision_tower_path)
        model.load_projector(os.path.join(model_path, "mm_projector.bin"))
        tok_path = model_base
    else:
        from peft import PeftModel

        model = _base_with_vision(model_base, config, dtype, attn, vision_tower_path)
        extra = os.path.join(model_path, "non_lora_trainables.bin")
        if not os.path.isfile(extra):
            raise CheckpointError(f"LoRA checkpoint {model_path} has no non_lora_trainables.bin: its projector "
                                  "weights are missing (the base LLM has none)")
        state = torch.load(extra, map_location="cpu", weights_only=True)
        state = {k.removeprefix("base_model.model."): v for k, v in state.items()}  # peft-wrapped names
        result = model.load_state_dict(state, strict=False)
        projector = {n for n in model.state_dict() if n.startswith("model.mm_projector.")}
        if result.unexpected_keys or projector - set(state):
            raise CheckpointError(
                f"{extra} does not hold exactly the trained non-LoRA weights: unexpected "
                f"{sorted(result.unexpected_keys)[:5]}, projector weights missing {sorted(projector - set(state))[:5]}"
            )
        model = PeftModel.from_pretrained(model, model_path)
        if merge_lora:
            model = model.merge_and_unload()
        tok_path = model_path if os.path.isfile(os.path.join(model_path, "tokenizer_config.json")) else model_base
    tokenizer = load_tokenizer(tok_path)
    if reduction or reduction_overrides:
        base = model.config.reduction
        red = resolve_reduction(reduction, reduction_overrides, base=base)
        model.set_reduction(red)
    red = model.config.reduction_config
    logger.info(red.describe(model.config.num_hidden_layers, model.config.num_vision_tokens))
    model.to(device).eval()
    image_processor = _load_image_processor(model_path, model.config, vision_tower_path)
    context_len = model.config.tokenizer_model_max_length or model.config.max_position_embeddings
    return tokenizer, model, image_processor, context_len
