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
from transformers import PreTrainedTokenizerBase

from llava.mm_utils import load_image_processor
from llava.model.checkpoint_files import LLAVA_HF, OTHER, check_weight_files, convert_first_hint, inspect_folder
from llava.model.checkpoint_loading import (
    CheckpointError,
    complete_vision_config,
    load_base_llm,
    load_llava,
    load_tower_weights,
    tower_source,
)
from llava.model.compression_tokens import check_compress_tokenizer
from llava.model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
from llava.model.reduction.config import resolve_reduction
from llava.tokenizer_loading import load_tokenizer

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")

__all__ = ["CheckpointError", "checkpoint_kind", "default_attn_implementation", "load_pretrained_model"]


def checkpoint_kind(model_path: str) -> str:
    if not os.path.isdir(model_path):
        raise CheckpointError(f"model path {model_path!r} is not a directory")
    # What the folder is, from its files, before any model is built (a llava-hf or CLIP folder would otherwise
    # fail deep inside transformers, or build a default-sized model); then whether its weight files open.
    found = inspect_folder(model_path)
    if found.kind == LLAVA_HF:
        raise CheckpointError(convert_first_hint(model_path))
    if found.kind == OTHER and found.model_type not in (None, "llava_llama", "llava"):
        raise CheckpointError(f"{model_path} is {found.description}, not a LLaVA checkpoint")
    check_weight_files(model_path)
    files = set(os.listdir(model_path))
    if "adapter_config.json" in files:
        return "lora"
    if "mm_projector.bin" in files and not files.intersection(WEIGHT_FILES):
        return "projector"
    if files.intersection(WEIGHT_FILES):
        return "full"
    raise CheckpointError(f"{model_path} holds no model weights, mm_projector.bin or adapter_config.json")


def _resolve_device(device: str | None, device_map: str | dict[str, Any] | None) -> str:
    """The one device the model goes to: ``device``, else the one ``device_map`` names, else the GPU if any."""
    if device is None:
        if isinstance(device_map, dict):
            if set(device_map) != {""}:
                raise CheckpointError(f"device_map {device_map!r} splits the model over several devices; the decoder "
                                      "loop runs on one: pass device='cuda:N' or device_map={'': 'cuda:N'}")
            device = str(device_map[""])
        elif isinstance(device_map, str) and device_map != "auto":
            device = device_map
        else:
            device = "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(f"device {device!r} was asked for but this machine has no CUDA GPU "
                              "(torch.cuda.is_available() is False); use device='cpu'")
    return device


def _quantization_config(load_8bit: bool, load_4bit: bool, device: str) -> Any:
    """bitsandbytes' config for 8-bit or 4-bit loading, or None; refused with the reason where it cannot run."""
    if not (load_8bit or load_4bit):
        return None
    if load_8bit and load_4bit:
        raise CheckpointError("pass load_8bit or load_4bit, not both")
    what = "load_8bit" if load_8bit else "load_4bit"
    if not torch.cuda.is_available():
        raise CheckpointError(f"{what}: bitsandbytes' 8-bit and 4-bit kernels need a CUDA GPU and this machine has "
                              "none (torch.cuda.is_available() is False); load in full precision instead")
    if not device.startswith("cuda"):
        raise CheckpointError(f"{what}: quantized weights run on the GPU, but device is {device!r}; use device='cuda'")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise CheckpointError(f"{what} needs the bitsandbytes package ({e}); pip install bitsandbytes") from e
    from transformers import BitsAndBytesConfig

    # The vision tower and projector stay in float16 (they are small, and the tower's features set every
    # vision token); only the language model's linear layers are quantized, as upstream's 4-bit path does.
    skip = ["mm_projector", "vision_tower", "lm_head"]
    if load_8bit:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16, bnb_4bit_use_double_quant=True,
                              bnb_4bit_quant_type="nf4", llm_int8_skip_modules=skip)


def _flash_attention(requested: str | None, device: str) -> str:
    from transformers.utils import is_flash_attn_2_available

    if requested not in (None, "flash_attention_2"):
        raise CheckpointError(f"use_flash_attn=True conflicts with attn_implementation={requested!r}")
    if not device.startswith("cuda") or not is_flash_attn_2_available():
        raise CheckpointError("use_flash_attn=True needs a CUDA GPU and the flash-attn package "
                              "(pip install flash-attn --no-build-isolation); leave it off to use sdpa")
    return "flash_attention_2"


def default_attn_implementation() -> str:
    from transformers.utils import is_flash_attn_2_available

    return "flash_attention_2" if torch.cuda.is_available() and is_flash_attn_2_available() else "sdpa"


def _load_image_processor(model_path: str, config: LlavaConfig, vision_tower_path: str | None) -> Any:
    """The checkpoint's own processor, else the CLIP tower's (the override first, then ``mm_vision_tower``)."""
    if os.path.isfile(os.path.join(model_path, "preprocessor_config.json")):
        return load_image_processor(model_path)
    source = tower_source(config, vision_tower_path)
    if not source:
        raise CheckpointError(f"no preprocessor_config.json in {model_path} and no vision tower named by its config")
    try:
        return load_image_processor(source)
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
    model_name: str | None = None,
    load_8bit: bool = False,
    load_4bit: bool = False,
    device_map: str | dict[str, Any] | None = "auto",
    device: str | None = None,
    use_flash_attn: bool = False,
    *,
    torch_dtype: torch.dtype | None = None,
    reduction: str | None = None,
    reduction_overrides: dict[str, Any] | list[str] | str | None = None,
    merge_lora: bool = True,
    attn_implementation: str | None = None,
    vision_tower_path: str | None = None,
    **kwargs: Any,
) -> tuple[PreTrainedTokenizerBase, LlavaLlamaForCausalLM, Any, int]:
    """Returns ``(tokenizer, model, image_processor, context_len)``, upstream LLaVA's signature and return value.

    The positional arguments are upstream's. ``model_name`` (``get_model_name_from_path(model_path)`` in
    upstream's examples) is accepted and only logged: what the checkpoint is (full, projector-only, LoRA; our
    layout or upstream's) comes from its files, never from its name. ``device`` defaults to the GPU when there is
    one, else the CPU; ``device_map`` "auto" means that device (the model is never split across devices), and
    ``"cpu"`` / ``{"": "cuda:1"}`` name one. The dtype defaults to float16 on a GPU (upstream's) and float32 on
    the CPU; ``torch_dtype`` (or upstream's ``dtype``) sets it. ``load_8bit`` / ``load_4bit`` load the language
    model through bitsandbytes (the vision tower and projector stay in float16); they need a CUDA GPU and the
    bitsandbytes package and are refused, saying which is missing, otherwise. ``use_flash_attn`` selects
    flash-attention 2.

    Ours, as keywords: ``vision_tower_path`` (a local CLIP directory) replaces the hub id a checkpoint names for
    its tower. The token-reduction schedule comes from the checkpoint's config.json; ``reduction`` (a preset
    name) and ``reduction_overrides`` (single fields) replace it, e.g. to evaluate a plain LLaVA checkpoint with
    HiDrop. ``merge_lora=False`` keeps a LoRA adapter unmerged.
    """
    if "dtype" in kwargs:  # transformers' newer name for torch_dtype
        if torch_dtype is not None:
            raise TypeError("pass torch_dtype or dtype, not both")
        torch_dtype = kwargs.pop("dtype")
    if kwargs:
        raise TypeError(f"load_pretrained_model() got unsupported keyword arguments {sorted(kwargs)}")
    device = _resolve_device(device, device_map)
    quantization = _quantization_config(load_8bit, load_4bit, device)
    if use_flash_attn:
        attn_implementation = _flash_attention(attn_implementation, device)
    attn = attn_implementation or default_attn_implementation()
    dtype = torch_dtype or (torch.float16 if quantization is not None or device.startswith("cuda") else torch.float32)
    if model_name is not None:
        logger.info("loading %s (model_name %r is a label only: the checkpoint's files decide how it loads)",
                    model_path, model_name)
    kind = checkpoint_kind(model_path)
    config = LlavaConfig.from_pretrained(model_path)
    if kind in ("lora", "projector") and not model_base:
        raise CheckpointError(f"{model_path} is a {kind} checkpoint: pass model_base (the LLM it was trained on)")
    if quantization is not None and kind != "full":
        raise CheckpointError(f"{model_path} is a {kind} checkpoint; 8-bit/4-bit loading takes full checkpoints: merge "
                              "it into its base first (python scripts/merge_lora_weights.py, or load without "
                              "load_8bit/load_4bit)")
    if kind == "full":
        quantized = {} if quantization is None else {"quantization_config": quantization, "device_map": {"": device}}
        model = load_llava(model_path, dtype, attn, vision_tower_path, config, **quantized)
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
    try:  # a VoCo checkpoint's <voco> id must be the one its embeddings were trained with
        check_compress_tokenizer(tokenizer, model.config)
    except ValueError as e:
        raise CheckpointError(f"{model_path}: {e}") from None
    if reduction or reduction_overrides:
        base = model.config.reduction
        red = resolve_reduction(reduction, reduction_overrides, base=base)
        model.set_reduction(red)
    red = model.config.reduction_config
    logger.info(red.describe(model.config.num_hidden_layers, model.config.num_vision_tokens))
    if quantization is None:
        model.to(device)
    model.eval()
    image_processor = _load_image_processor(model_path, model.config, vision_tower_path)
    context_len = model.config.tokenizer_model_max_length or model.config.max_position_embeddings
    return tokenizer, model, image_processor, context_len
