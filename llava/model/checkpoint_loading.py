"""Strict loading of LLaVA weights in the two on-disk layouts this codebase meets.

* **Ours**: config.json carries ``vision_config`` (the CLIP config), and the weights hold the LLM, the projector and
  the CLIP tower.
* **Upstream LLaVA-1.5** (the layout of ``liuhaotian/llava-v1.5-7b``): ``model_type: llava_llama`` with
  ``mm_vision_tower`` naming a CLIP directory or hub id and no ``vision_config``; the weights hold the LLM and
  ``model.mm_projector.{0,2}.*``, and in some releases the tower as ``model.vision_tower.vision_tower.vision_model.*``
  (transformers maps those names onto ours). The CLIP config, and the tower weights when the checkpoint has
  none, come from ``mm_vision_tower``, or from ``vision_tower_path`` when given: a local CLIP directory that
  replaces a hub id on an offline machine.

Nothing is dropped silently: a weight of the projector, the tower, the decoder layers (or anything else) that
the checkpoint lacks, holds but the model does not expect, or holds with another shape is a
:class:`CheckpointError` naming the keys. The only tolerated extras are the rotary ``inv_freq`` buffers that
checkpoints saved by older transformers (upstream's 4.31) carry; they are recomputed from the config anyway.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from llava.model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM

logger = logging.getLogger(__name__)

TOWER_PREFIX = "model.vision_tower."
# Extra keys that carry no information: RoPE tables saved as buffers by transformers < 4.38.
_BENIGN_UNEXPECTED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")
_MAX_NAMED = 8


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded as asked; the message says what is missing or wrong."""


def tower_source(config: LlavaConfig, vision_tower_path: str | None) -> str | None:
    """Where the CLIP tower comes from when the checkpoint does not carry it: the override, else the config."""
    return vision_tower_path or config.mm_vision_tower or None


# Upstream settings of LLaVA-1.6 and v0 that this LLaVA-1.5 codebase does not implement.
_UNSUPPORTED = {
    "mm_use_im_start_end": (False, None),
    "mm_patch_merge_type": ("flat", None),
}


def check_supported(config: LlavaConfig) -> None:
    """Refuses upstream settings whose models this codebase would run wrongly (e.g. LLaVA-1.6's anyres)."""
    for name, allowed in _UNSUPPORTED.items():
        value = getattr(config, name, None)
        if value not in allowed:
            raise CheckpointError(f"{name}={value!r} in the checkpoint's config is not supported (LLaVA-1.5 uses "
                                  f"{allowed[0]!r})")
    if config.image_aspect_ratio not in ("pad", "square", None):
        raise CheckpointError(f"image_aspect_ratio={config.image_aspect_ratio!r} in the checkpoint's config is not "
                              "supported (LLaVA-1.5: 'pad'; 'square' also works)")


def complete_vision_config(config: LlavaConfig, vision_tower_path: str | None = None) -> bool:
    """Fills ``config.vision_config`` of an upstream-layout config from its CLIP source; returns whether it did.

    Upstream's names are read as they are (``mm_vision_select_layer``, ``mm_vision_select_feature``,
    ``mm_projector_type``, ``image_aspect_ratio``); only the CLIP architecture is missing from its config.
    """
    check_supported(config)
    if config.vision_config:
        return False
    source = tower_source(config, vision_tower_path)
    if not source:
        return False  # a plain LLM (e.g. Vicuna): no vision modules
    try:
        vision = CLIPVisionConfig.from_pretrained(source)
    except OSError as e:
        raise CheckpointError(
            f"the checkpoint names the vision tower {source!r} but its CLIP config cannot be loaded ({e}). On an "
            "offline machine point it at a local CLIP directory: --vision-tower-path DIR (VISION_TOWER_PATH=DIR "
            "in the scripts)"
        ) from e
    if config.mm_hidden_size and config.mm_hidden_size != vision.hidden_size:
        raise CheckpointError(
            f"mm_hidden_size {config.mm_hidden_size} of the checkpoint does not match the hidden size "
            f"{vision.hidden_size} of the vision tower {source!r}"
        )
    config.vision_config = {k: v for k, v in vision.to_dict().items() if not k.startswith("_")}
    config.mm_hidden_size = vision.hidden_size
    if vision_tower_path:
        config.mm_vision_tower = vision_tower_path
    logger.info("upstream LLaVA layout: CLIP config from %s", source)
    return True


def _names(keys: list[str]) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - _MAX_NAMED} more)" if len(keys) > _MAX_NAMED else ""
    return ", ".join(keys[:_MAX_NAMED]) + more


def check_loading_info(
    info: dict[str, Any], path: str, allowed_missing: tuple[str, ...] = ()
) -> list[str]:
    """Raises on unexpected or mismatched keys, and on missing keys outside ``allowed_missing`` prefixes.

    Returns the allowed missing keys (the caller loads them from elsewhere).
    """
    unexpected = [k for k in info.get("unexpected_keys", ()) if not _BENIGN_UNEXPECTED.search(k)]
    mismatched = [k if isinstance(k, str) else k[0] for k in info.get("mismatched_keys", ())]
    missing = list(info.get("missing_keys", ()))
    stray = [k for k in missing if not k.startswith(allowed_missing)] if allowed_missing else missing
    problems = []
    if stray:
        problems.append(f"missing from the checkpoint: {_names(stray)}")
    if unexpected:
        problems.append(f"in the checkpoint but not in the model (they would be dropped): {_names(unexpected)}")
    if mismatched:
        problems.append(f"with a shape other than the model's: {_names(mismatched)}")
    if problems:
        raise CheckpointError(f"weights of {path} do not match the model built from its config; " + "; ".join(problems))
    return [k for k in missing if k not in stray]


def load_tower_weights(model: LlavaLlamaForCausalLM, source: str | None, dtype: torch.dtype) -> None:
    """Loads the CLIP weights of ``model``'s tower from ``source`` (a CLIP directory or hub id), strictly."""
    if not source:
        raise CheckpointError("the checkpoint has no vision-tower weights and its config names no mm_vision_tower")
    if os.path.isdir(source):
        from llava.model.checkpoint_files import check_weight_files

        check_weight_files(source)
    try:
        clip = CLIPVisionModel.from_pretrained(source, dtype=dtype)
    except OSError as e:
        raise CheckpointError(
            f"the checkpoint has no vision-tower weights and the tower {source!r} cannot be loaded ({e}). On an "
            "offline machine: --vision-tower-path DIR (VISION_TOWER_PATH=DIR in the scripts)"
        ) from e
    result = model.model.vision_tower.vision_tower.load_state_dict(clip.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"the vision tower {source!r} does not fit the checkpoint's CLIP config: missing "
            f"{_names(result.missing_keys)}; unexpected {_names(result.unexpected_keys)}"
        )


def _from_pretrained(path: str, **kwargs: Any) -> tuple[LlavaLlamaForCausalLM, dict[str, Any]]:
    """``LlavaLlamaForCausalLM.from_pretrained`` where a truncated or corrupt weights file is a
    :class:`CheckpointError` naming the file (safetensors raises its own error type, naming none)."""
    from llava.model.checkpoint_files import check_weight_files, weight_load_error

    if os.path.isdir(path):
        check_weight_files(path)
    try:
        return LlavaLlamaForCausalLM.from_pretrained(path, **kwargs)
    except Exception as e:
        named = weight_load_error(path, e) if os.path.isdir(path) else None
        if named is None:
            raise
        raise named from e


def load_llava(
    path: str,
    dtype: torch.dtype,
    attn_implementation: str,
    vision_tower_path: str | None = None,
    config: LlavaConfig | None = None,
    **from_pretrained_kwargs: Any,
) -> LlavaLlamaForCausalLM:
    """A full LLaVA checkpoint (ours or upstream's layout), or a plain LLM when its config names no tower.

    ``config`` replaces the checkpoint's own (the training entry point edits it first); its vision config is
    completed from the tower source when missing. ``from_pretrained_kwargs`` go to ``from_pretrained`` (the
    builder's 8-bit/4-bit loading passes ``quantization_config`` and ``device_map``).
    """
    config = config if config is not None else LlavaConfig.from_pretrained(path)
    complete_vision_config(config, vision_tower_path)
    model, info = _from_pretrained(
        path, config=config, dtype=dtype, attn_implementation=attn_implementation, output_loading_info=True,
        ignore_mismatched_sizes=True,  # reported by check_loading_info, with the keys named
        **from_pretrained_kwargs,
    )
    has_tower = bool(config.vision_config)
    missing_tower = check_loading_info(info, path, (TOWER_PREFIX,) if has_tower else ())
    if missing_tower:
        tower_keys = [n for n in model.state_dict() if n.startswith(TOWER_PREFIX)]
        if len(missing_tower) != len(tower_keys):
            raise CheckpointError(f"{path} holds only part of the vision tower; missing {_names(missing_tower)}")
        source = tower_source(config, vision_tower_path)
        load_tower_weights(model, source, dtype)
        logger.info("vision-tower weights from %s (the checkpoint has none)", source)
    return model


def load_base_llm(
    model_base: str, config: LlavaConfig, dtype: torch.dtype, attn_implementation: str
) -> LlavaLlamaForCausalLM:
    """The base LLM's weights under a LLaVA config whose tower and projector are loaded afterwards."""
    model, info = _from_pretrained(
        model_base, config=config, dtype=dtype, attn_implementation=attn_implementation, output_loading_info=True,
        ignore_mismatched_sizes=True,
    )
    check_loading_info(info, model_base, (TOWER_PREFIX, "model.mm_projector.", "reduction_thresholds."))
    return model


def is_llava_checkpoint(path: str) -> bool:
    """Whether ``path``'s config.json describes a LLaVA model (ours or upstream's), not a plain LLM."""
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        return False
    with open(config_file, encoding="utf-8") as f:
        cfg = json.load(f)
    return bool(cfg.get("vision_config") or cfg.get("mm_vision_tower"))


__all__ = [
    "CheckpointError",
    "check_loading_info",
    "check_supported",
    "complete_vision_config",
    "is_llava_checkpoint",
    "load_base_llm",
    "load_llava",
    "load_tower_weights",
    "tower_source",
]
