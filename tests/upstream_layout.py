"""Writes a model in upstream LLaVA-1.5's on-disk layout (the layout of liuhaotian/llava-v1.5-7b), for the tests.

config.json: ``model_type: llava_llama``, ``mm_vision_tower`` (a CLIP directory or hub id), ``mm_hidden_size``,
``mm_projector_type`` and the other ``mm_*`` fields upstream's ``initialize_vision_modules`` writes, no
``vision_config``. Weights in fp16, with upstream's names: ``model.mm_projector.{0,2}.*``, the tower (when kept)
as ``model.vision_tower.vision_tower.vision_model.*``, and the rotary ``inv_freq`` buffers that transformers 4.31
saved with every LLaMA layer. One file or shards with the standard index JSON, as ``.safetensors`` or ``.bin``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

# Fields of upstream's released config.json besides the LLaMA ones (values of llava-v1.5-7b).
UPSTREAM_FIELDS = {
    "architectures": ["LlavaLlamaForCausalLM"],
    "model_type": "llava_llama",
    "freeze_mm_mlp_adapter": False,
    "image_aspect_ratio": "pad",
    "mm_projector_type": "mlp2x_gelu",
    "mm_use_im_patch_token": False,
    "mm_use_im_start_end": False,
    "mm_vision_select_feature": "patch",
    "mm_vision_select_layer": -2,
    "tune_mm_mlp_adapter": False,
    "tune_mm_vision_resampler": False,
    "unfreeze_mm_vision_tower": False,
    "use_mm_proj": True,
    "tokenizer_model_max_length": 2048,
    "tokenizer_padding_side": "right",
    "torch_dtype": "float16",
    "transformers_version": "4.31.0",
}


def upstream_state_dict(model: torch.nn.Module, with_tower: bool) -> dict[str, torch.Tensor]:
    """The model's weights under upstream's names, in fp16."""
    out = {}
    for name, value in model.state_dict().items():
        if name.startswith("model.vision_tower."):
            if not with_tower:
                continue
            name = name.replace("model.vision_tower.vision_tower.", "model.vision_tower.vision_tower.vision_model.", 1)
        out[name] = value.detach().to(torch.float16).contiguous()
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    for i in range(cfg.num_hidden_layers):
        out[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    return out


def upstream_config(model: torch.nn.Module, mm_vision_tower: str) -> dict:
    cfg = model.config.to_dict()
    llama = {k: cfg[k] for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "bos_token_id", "eos_token_id",
        "pad_token_id", "hidden_act", "initializer_range", "tie_word_embeddings",
    ) if k in cfg}
    return {**llama, **UPSTREAM_FIELDS, "mm_vision_tower": mm_vision_tower,
            "mm_hidden_size": model.config.mm_hidden_size, "rope_scaling": None, "pretraining_tp": 1,
            "use_cache": True}


def write_upstream_checkpoint(
    model: torch.nn.Module, out: Path, mm_vision_tower: str, with_tower: bool, fmt: str = "safetensors",
    shards: int = 1,
) -> Path:
    """Writes config.json and the weights (``fmt`` "safetensors" or "bin", in ``shards`` files) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(upstream_config(model, mm_vision_tower), indent=2))
    state = upstream_state_dict(model, with_tower)
    keys = list(state)
    stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    groups = [keys[i::shards] for i in range(shards)]
    weight_map = {}
    for i, group in enumerate(groups, start=1):
        name = f"{stem}.{ext}" if shards == 1 else f"{stem}-{i:05d}-of-{shards:05d}.{ext}"
        part = {k: state[k] for k in group}
        if fmt == "safetensors":
            save_file(part, out / name, metadata={"format": "pt"})
        else:
            torch.save(part, out / name)
        weight_map.update(dict.fromkeys(group, name))
    if shards > 1:
        total = sum(v.numel() * v.element_size() for v in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / f"{stem}.{ext}.index.json").write_text(json.dumps(index, indent=2))
    return out
