"""Convert between our checkpoints and transformers' own LLaVA (the ``llava-hf/llava-1.5-7b-hf`` layout).

    python -m llava.model.convert --from-hf DIR --out DIR     # LlavaForConditionalGeneration -> ours (schedule off)
    python -m llava.model.convert --to-hf DIR --out DIR       # ours -> LlavaForConditionalGeneration

transformers reads and writes its own layout (its on-disk key names differ from its in-memory ones and change
between versions), so both directions go through ``LlavaForConditionalGeneration`` itself and only map its
in-memory names to ours:

============================================  ==============================================
transformers (in memory)                      ours
============================================  ==============================================
``model.language_model.*``                    ``model.*`` (LLaMA: embeddings, layers, norm)
``lm_head.*``                                 ``lm_head.*``
``model.vision_tower.*`` (CLIPVisionModel)    ``model.vision_tower.vision_tower.*``
``model.multi_modal_projector.linear_1.*``    ``model.mm_projector.0.*``
``model.multi_modal_projector.linear_2.*``    ``model.mm_projector.2.*``
============================================  ==============================================

``vision_feature_layer`` is our ``mm_vision_select_layer``; the ``default`` strategy (drop CLS) is our ``patch``
feature, ``full`` is ``cls_patch``. transformers' LLaVA expands ``<image>`` into ``image_seq_length`` tokens in the
prompt; ours keeps one placeholder (-200) and expands it inside the model. Prompts tokenized our (upstream's) way
give the same text ids to both models; note that transformers' ``LlavaProcessor`` tokenizes the whole prompt in
one pass, so the text right after ``<image>`` may lack the prefix space upstream's per-segment tokenization gives.
Going to transformers, an ``<image>`` token is added to the tokenizer when it has none (its embedding and
``lm_head`` rows are the mean of the others; the model never reads them at image positions).

transformers' LLaVA has no token reduction: ``--to-hf`` refuses a checkpoint whose schedule is not ``off``
unless ``--drop-schedule`` says to export its weights anyway (the exported model then runs plain LLaVA).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import torch
from transformers import CLIPVisionConfig, LlamaConfig

from llava.mm_utils import load_image_processor
from llava.model.checkpoint_files import (
    LLAVA_HF,
    LORA,
    OURS,
    PROJECTOR,
    UPSTREAM,
    inspect_folder,
    weight_key_names,
    weight_load_error,
)
from llava.model.checkpoint_loading import CheckpointError
from llava.model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
from llava.model.reduction.config import ReductionConfig
from llava.tokenizer_loading import load_tokenizer

logger = logging.getLogger("llava.model.convert")

# (transformers in-memory prefix, our prefix), most specific first.
PREFIX_MAP: tuple[tuple[str, str], ...] = (
    ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
    ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
    ("model.vision_tower.", "model.vision_tower.vision_tower."),
    ("model.language_model.", "model."),
    ("lm_head.", "lm_head."),
)
_LLAMA_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
    "rope_parameters", "attention_bias", "attention_dropout", "mlp_bias", "bos_token_id", "eos_token_id",
    "pad_token_id", "tie_word_embeddings",
)
IMAGE_TOKEN = "<image>"


class ConversionError(ValueError):
    """A checkpoint that has no faithful counterpart in the other layout; the message names the setting."""


def _rename(name: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for src, dst in pairs:
        if name.startswith(src):
            return dst + name[len(src):]
    raise ConversionError(f"no mapping for weight {name!r}")


def hf_to_ours_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {_rename(k, PREFIX_MAP): v for k, v in state.items()}


def ours_to_hf_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    reverse = tuple(sorted(((dst, src) for src, dst in PREFIX_MAP), key=lambda p: -len(p[0])))
    return {_rename(k, reverse): v for k, v in state.items()}


def _llama_fields(config) -> dict:
    d = config.to_dict()
    return {k: d[k] for k in _LLAMA_FIELDS if k in d}


def config_from_hf(hf_config, source: str) -> LlavaConfig:
    """Our config for a transformers ``LlavaConfig``; refuses what our model cannot reproduce."""
    text, vision = hf_config.text_config, hf_config.vision_config
    if text.model_type != "llama":
        raise ConversionError(f"text model {text.model_type!r}: only LLaMA language models are supported")
    if vision.model_type != "clip_vision_model":
        raise ConversionError(f"vision model {vision.model_type!r}: only CLIP towers are supported")
    if hf_config.projector_hidden_act != "gelu" or not getattr(hf_config, "multimodal_projector_bias", True):
        raise ConversionError(
            f"projector act {hf_config.projector_hidden_act!r} (bias {hf_config.multimodal_projector_bias}): "
            "only LLaVA-1.5's mlp2x_gelu with biases is supported"
        )
    if not isinstance(hf_config.vision_feature_layer, int):
        raise ConversionError(f"vision_feature_layer {hf_config.vision_feature_layer!r}: one layer only")
    strategy = hf_config.vision_feature_select_strategy
    if strategy not in ("default", "full"):
        raise ConversionError(f"vision_feature_select_strategy {strategy!r}: expected 'default' or 'full'")
    return LlavaConfig(
        **_llama_fields(text),
        vision_config={k: v for k, v in vision.to_dict().items() if not k.startswith("_")},
        mm_vision_tower=source,
        mm_hidden_size=vision.hidden_size,
        mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=hf_config.vision_feature_layer,
        mm_vision_select_feature="patch" if strategy == "default" else "cls_patch",
        image_aspect_ratio="pad",
        reduction=ReductionConfig().to_dict(),
        architectures=["LlavaLlamaForCausalLM"],
    )


# What to do instead, per kind of folder that is not a llava-hf checkpoint.
_NOT_LLAVA_HF_HINT = {
    OURS: "it is already in our layout: give it to our tools as it is, or export it with --to-hf",
    UPSTREAM: "our tools load upstream's layout as it is: give it to them directly (no conversion needed)",
    PROJECTOR: "a projector-only checkpoint loads with --model-base (the LLM it was trained on)",
    LORA: "a LoRA adapter loads with --model-base (the LLM it was trained on)",
}


def check_llava_hf(src: str) -> None:
    """Refuses, from its files and before anything is built, a folder that is not a local llava-hf checkpoint."""
    found = inspect_folder(src)  # a missing path is an error here, never a hub id
    if found.kind != LLAVA_HF:
        hint = _NOT_LLAVA_HF_HINT.get(found.kind, "--from-hf converts LlavaForConditionalGeneration checkpoints only "
                                                  "(config.json with model_type 'llava' and a text_config)")
        raise ConversionError(f"{src} is {found.description}, not a transformers LLaVA (llava-hf) checkpoint; {hint}")
    keys = weight_key_names(src)  # opens every safetensors header: a broken file is named here
    if keys and not any("multi_modal_projector." in k for k in keys):
        raise ConversionError(f"{src}: config.json describes a transformers LLaVA model, but its weights hold no "
                              f"multi_modal_projector tensors (e.g. {sorted(keys)[:3]}); is it the right folder?")


def from_hf(src: str, out: str, dtype: torch.dtype | None = None) -> LlavaLlamaForCausalLM:
    """Converts a ``LlavaForConditionalGeneration`` checkpoint into ours (schedule ``off``) and saves it."""
    from transformers import LlavaForConditionalGeneration

    check_llava_hf(src)
    try:
        hf = LlavaForConditionalGeneration.from_pretrained(src, dtype=dtype or "auto", local_files_only=True)
    except Exception as e:
        named = weight_load_error(src, e)
        if named is not None:
            raise named from e
        if not isinstance(e, (OSError, ValueError)):
            raise
        raise CheckpointError(f"cannot load {src} as a transformers LLaVA checkpoint: {e}") from e
    config = config_from_hf(hf.config, src)
    config.tokenizer_model_max_length = config.max_position_embeddings
    state = hf_to_ours_names(hf.state_dict())
    model = LlavaLlamaForCausalLM(config).to(next(iter(state.values())).dtype)
    model.load_state_dict(state, strict=True)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out)
    load_tokenizer(src).save_pretrained(out)
    load_image_processor(src).save_pretrained(out)
    logger.info("wrote %s (our layout, schedule off) from %s", out, src)
    return model


def _image_token_id(tokenizer, model: LlavaLlamaForCausalLM) -> int:
    """The tokenizer's ``<image>`` id, adding the token (and mean-initialised embedding rows) when missing."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if token_id >= model.config.vocab_size:
        model.resize_token_embeddings(token_id + 1, mean_resizing=True)
    return token_id


def to_hf(src: str, out: str, drop_schedule: bool = False) -> None:
    """Writes our full checkpoint ``src`` as a ``LlavaForConditionalGeneration`` checkpoint with its processor."""
    from transformers import LlavaConfig as HFLlavaConfig
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    from llava.model.builder import checkpoint_kind, load_pretrained_model

    if os.path.isdir(src) and inspect_folder(src).kind == LLAVA_HF:
        raise ConversionError(f"{src} is already a transformers LLaVA (llava-hf) checkpoint: --to-hf exports our "
                              "checkpoints to that layout. To use it with our tools, convert it first with: "
                              f"python -m llava.model.convert --from-hf {src} --out DIR2")
    if checkpoint_kind(src) != "full":
        raise ConversionError(f"{src} is not a full checkpoint; merge it first (load_pretrained_model with model_base)")
    tokenizer, model, processor, _ = load_pretrained_model(src, device="cpu", torch_dtype=torch.float32)
    red = model.config.reduction_config
    if not red.is_off and not drop_schedule:
        raise ConversionError(
            f"{src} runs schedule {red.name!r}; transformers' LLaVA has no token reduction, so the exported model "
            "would run plain LLaVA. Pass --drop-schedule to export the weights anyway"
        )
    cfg = model.config
    token_id = _image_token_id(tokenizer, model)
    text = LlamaConfig(**_llama_fields(cfg) | {"vocab_size": model.get_input_embeddings().weight.shape[0]})
    vision = CLIPVisionConfig(**{k: v for k, v in cfg.vision_config.items() if k != "model_type"})
    patch = cfg.mm_vision_select_feature == "patch"
    hf_config = HFLlavaConfig(
        text_config=text, vision_config=vision, image_token_index=token_id, projector_hidden_act="gelu",
        vision_feature_select_strategy="default" if patch else "full", vision_feature_layer=cfg.mm_vision_select_layer,
        image_seq_length=cfg.num_vision_tokens, multimodal_projector_bias=True,
    )
    if cfg.mm_projector_type != "mlp2x_gelu":
        raise ConversionError(f"mm_projector_type {cfg.mm_projector_type!r}: transformers' LLaVA has mlp2x_gelu only")
    state = ours_to_hf_names({k: v for k, v in model.state_dict().items() if not k.startswith("reduction_thresholds")})
    hf = LlavaForConditionalGeneration(hf_config).to(model.dtype)
    hf.load_state_dict(state, strict=True)
    os.makedirs(out, exist_ok=True)
    hf.save_pretrained(out)
    LlavaProcessor(image_processor=processor, tokenizer=tokenizer, patch_size=vision.patch_size,
                   vision_feature_select_strategy=hf_config.vision_feature_select_strategy,
                   num_additional_image_tokens=1).save_pretrained(out)
    logger.info("wrote %s (transformers LlavaForConditionalGeneration) from %s", out, src)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.model.convert", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    direction = p.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from-hf", metavar="DIR", help="a LlavaForConditionalGeneration checkpoint to import")
    direction.add_argument("--to-hf", metavar="DIR", help="one of our full checkpoints to export")
    p.add_argument("--out", required=True, metavar="DIR", help="where the converted checkpoint goes")
    p.add_argument("--drop-schedule", action="store_true", help="--to-hf: export a checkpoint whose schedule is not off")
    return p


def check_out(out: str) -> bool:
    """``--out`` must be a new or empty folder that can be written: checked (and created) before anything is
    loaded. Returns whether it was created here."""
    if os.path.exists(os.path.join(out, "config.json")):
        raise ConversionError(f"--out {out} already holds a checkpoint; choose a new or empty folder")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConversionError(f"--out {out} is a file; choose a new or empty folder")
    if os.path.isdir(out):
        present = sorted(os.listdir(out))
        if present:
            shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
            raise ConversionError(f"--out {out} is not empty (it holds {shown}); its files would be mixed with or "
                                  "overwritten by the checkpoint's: choose a new or empty folder")
    parent = os.path.abspath(out)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConversionError(f"--out {out}: {parent} is a file, so the folder cannot be created")
    if os.path.isdir(out):
        return False
    try:
        os.makedirs(out)
    except OSError as e:
        raise ConversionError(f"--out {out} cannot be created: {e.strerror or e}") from None
    return True


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    created = False
    try:
        created = check_out(args.out)
        if args.from_hf:
            from_hf(args.from_hf, args.out)
        else:
            to_hf(args.to_hf, args.out, args.drop_schedule)
    except (ConversionError, CheckpointError) as e:
        if created and not os.listdir(args.out):
            os.rmdir(args.out)  # refused before writing: leave no empty folder behind
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
