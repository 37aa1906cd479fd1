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
from transformers import AutoTokenizer, CLIPImageProcessor, PreTrainedTokenizerBase

from llava.model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
from llava.model.reduction.config import resolve_reduction

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded as asked; the message says what is missing."""


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


def _load_image_processor(model_path: str, config: LlavaConfig) -> CLIPImageProcessor:
    for path in (model_path, config.mm_vision_tower):
        if path and os.path.isfile(os.path.join(path, "preprocessor_config.json")):
            return CLIPImageProcessor.from_pretrained(path)
    raise CheckpointError(
        f"no preprocessor_config.json in {model_path} or in the vision tower path {config.mm_vision_tower!r}"
    )


def _base_with_vision(model_base: str, config: LlavaConfig, dtype, attn: str) -> LlavaLlamaForCausalLM:
    """The base LLM weights plus a CLIP tower loaded from ``config.mm_vision_tower``."""
    if not config.mm_vision_tower:
        raise CheckpointError("the checkpoint's config.json has no mm_vision_tower; projector-only and LoRA "
                              "checkpoints rebuild CLIP from it")
    model = LlavaLlamaForCausalLM.from_pretrained(model_base, config=config, dtype=dtype, attn_implementation=attn)
    try:  # a local directory or a hub id (e.g. openai/clip-vit-large-patch14-336 on a machine with network)
        model.initialize_vision_modules(
            config.mm_vision_tower, config.mm_projector_type, config.mm_vision_select_layer,
            config.mm_vision_select_feature,
        )
    except OSError as e:
        raise CheckpointError(f"cannot load the vision tower {config.mm_vision_tower!r} named by the checkpoint: {e}") from e
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
) -> tuple[PreTrainedTokenizerBase, LlavaLlamaForCausalLM, CLIPImageProcessor, int]:
    """Returns ``(tokenizer, model, image_processor, context_len)``.

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
        model = LlavaLlamaForCausalLM.from_pretrained(model_path, dtype=dtype, attn_implementation=attn)
        tok_path = model_path
    elif kind == "projector":
        model = _base_with_vision(model_base, config, dtype, attn)
        model.load_projector(os.path.join(model_path, "mm_projector.bin"))
        tok_path = model_base
    else:
        from peft import PeftModel

        model = _base_with_vision(model_base, config, dtype, attn)
        extra = os.path.join(model_path, "non_lora_trainables.bin")
        if os.path.isfile(extra):
            state = torch.load(extra, map_location="cpu", weights_only=True)
            state = {k.removeprefix("base_model.model."): v for k, v in state.items()}  # peft-wrapped names
            missing = model.load_state_dict(state, strict=False)
            if missing.unexpected_keys:
                raise CheckpointError(f"non_lora_trainables.bin has unexpected keys {missing.unexpected_keys[:5]}")
        model = PeftModel.from_pretrained(model, model_path)
        if merge_lora:
            model = model.merge_and_unload()
        tok_path = model_path if os.path.isfile(os.path.join(model_path, "tokenizer_config.json")) else model_base
    tokenizer = AutoTokenizer.from_pretrained(tok_path)
    if reduction or reduction_overrides:
        base = model.config.reduction
        red = resolve_reduction(reduction, reduction_overrides, base=base)
        model.set_reduction(red)
    red = model.config.reduction_config
    logger.info(red.describe(model.config.num_hidden_layers, model.config.num_vision_tokens))
    model.to(device).eval()
    image_processor = _load_image_processor(model_path, model.config)
    context_len = model.config.tokenizer_model_max_length or model.config.max_position_embeddings
    return tokenizer, model, image_processor, context_len
