"""Attach TwigVLM's released twig to a LLaVA-1.5 checkpoint, giving one of our checkpoints with a twig.

    python -m llava.model.convert_twig --base /models/llava-v1.5-7b --twig /models/twigvlm-llava-v1.5-7b-twig \
        --out ./checkpoints/llava-v1.5-7b-twigvlm [--after-layer 2] [--vision-tower-path CLIP] [--reduction twigvlm-64]

The authors' training script keeps base layers 1..K+T, trains the last T, the final norm and the LM head, and before
saving deletes the first K layers, the embeddings, the projector and the tower: their twig folder holds
``model.safetensors`` with

==========================  =====================================
theirs                      ours
==========================  =====================================
``model.layers.{i}.*``      ``twig.layers.{i}.*`` (i = 0..T-1)
``model.norm.weight``       ``twig.norm.weight``
``lm_head.weight``          ``twig.head.weight``
==========================  =====================================

(their loader maps the same keys onto ``model.twig_layers``, ``twig_norm`` and ``twig_head``). Deleting from a
``ModuleList`` renumbers it, so their layers are 0..T-1; a file whose layers are still numbered K..K+T-1 is
accepted too. Where the twig sits (K, TwigVLM's ``twig_K`` environment variable, 2 for the release) is not in the
file: ``--after-layer`` gives it; T is the number of layers found. Any other key, a gap in the layer numbers or a
shape that does not fit the base is an error naming it. The base loads in our layout or upstream's (``--base``),
and the output is a full checkpoint in our layout whose schedule is ``--reduction`` (default ``twigvlm-64``).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys

import torch

from llava.model.checkpoint_loading import CheckpointError
from llava.model.reduction.config import PRESETS, ReductionConfigError
from llava.model.twig import DEFAULT_AFTER_LAYER, TwigConfigError, TwigSpec

logger = logging.getLogger("llava.model.convert_twig")

_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
# Files of the base folder that travel to the output as they are (tokenizer and image processor).
_COPIED = re.compile(r"(tokenizer.*|special_tokens_map\.json|added_tokens\.json|preprocessor_config\.json|"
                     r"generation_config\.json|.*\.model)")


class TwigConversionError(ValueError):
    """A twig folder that cannot be attached as asked; the message names the key or setting."""


def read_twig_weights(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a twig folder (``model.safetensors``, sharded safetensors or ``pytorch_model.bin``) or file."""
    from safetensors.torch import load_file

    from llava.model.checkpoint_files import check_weight_files, safetensors_files

    if os.path.isfile(path):
        return load_file(path) if path.endswith(".safetensors") else torch.load(path, map_location="cpu", weights_only=True)
    if not os.path.isdir(path):
        raise TwigConversionError(f"twig {path!r} is neither a folder nor a weights file")
    check_weight_files(path)
    files = safetensors_files(path)
    if files:
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(f))
        return state
    bin_file = os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(bin_file):
        return torch.load(bin_file, map_location="cpu", weights_only=True)
    raise TwigConversionError(f"{path} holds no model.safetensors or pytorch_model.bin (TwigVLM's twig folder has "
                              "model.safetensors)")


def twig_state_dict(theirs: dict[str, torch.Tensor], after_layer: int) -> tuple[dict[str, torch.Tensor], int]:
    """(our ``twig.*`` state dict, T) from the authors' key layout."""
    ours: dict[str, torch.Tensor] = {}
    layers: dict[int, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in theirs.items():
        m = _LAYER.fullmatch(key)
        if m:
            layers.setdefault(int(m.group(1)), {})[m.group(2)] = value
        elif key == "model.norm.weight":
            ours["twig.norm.weight"] = value
        elif key == "lm_head.weight":
            ours["twig.head.weight"] = value
        elif not key.endswith("rotary_emb.inv_freq"):  # RoPE tables saved by older transformers: recomputed
            unknown.append(key)
    if unknown:
        raise TwigConversionError(f"keys that are not part of a twig (layers, final norm, LM head): {sorted(unknown)[:8]}")
    missing = [k for k in ("twig.norm.weight", "twig.head.weight") if k not in ours]
    if missing or not layers:
        raise TwigConversionError(f"the twig weights lack {missing + ([] if layers else ['model.layers.*'])}")
    indices = sorted(layers)
    first = indices[0]
    if first not in (0, after_layer):
        raise TwigConversionError(f"the twig's layers are numbered {indices[0]}..{indices[-1]}: expected 0..T-1 (the "
                                  f"release) or {after_layer}..{after_layer}+T-1 (--after-layer {after_layer})")
    if indices != list(range(first, first + len(indices))):
        raise TwigConversionError(f"the twig's layer numbers have gaps: {indices}")
    for i in indices:
        for name, value in layers[i].items():
            if not name.endswith("rotary_emb.inv_freq"):
                ours[f"twig.layers.{i - first}.{name}"] = value
    return ours, len(indices)


def attach_twig(model, state: dict[str, torch.Tensor], spec: TwigSpec) -> None:
    """Adds a twig of ``spec`` to ``model`` and loads ``state`` into it strictly (every key, every shape)."""
    twig = model.add_twig(spec, from_base=False)
    expected = {f"twig.{k}": v for k, v in twig.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or extra or shapes:
        raise TwigConversionError(
            f"the twig does not fit this base model: missing {missing[:5]}, unexpected {extra[:5]}, other shapes "
            f"{[(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in shapes[:5]]}")
    twig.load_state_dict({k.removeprefix("twig."): v.to(expected[k].dtype) for k, v in state.items()})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.model.convert_twig", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the LLaVA-1.5 checkpoint the twig was trained on (ours or upstream)")
    p.add_argument("--twig", required=True, help="TwigVLM's twig folder (model.safetensors) or weights file")
    p.add_argument("--out", required=True)
    p.add_argument("--after-layer", type=int, default=DEFAULT_AFTER_LAYER,
                   help="K, the base layer the twig reads (TwigVLM's twig_K; %(default)s for the release)")
    p.add_argument("--vision-tower-path", default=None, help="local CLIP directory replacing a hub id (offline)")
    p.add_argument("--reduction", default="twigvlm-64", help="the schedule saved with the output (default %(default)s)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float16", "bfloat16", "float32"),
                   help="auto: the base checkpoint's own")
    return p


def convert(args: argparse.Namespace) -> str:
    from llava.model.builder import checkpoint_kind, default_attn_implementation
    from llava.model.checkpoint_loading import load_llava
    from llava.model.llava_llama import LlavaConfig

    if os.path.exists(args.out) and os.listdir(args.out):
        raise TwigConversionError(f"--out {args.out} exists and is not empty; give a new folder")
    if args.reduction not in PRESETS:
        raise ReductionConfigError(f"unknown reduction preset {args.reduction!r}; known presets: {sorted(PRESETS)}")
    if checkpoint_kind(args.base) != "full":
        raise CheckpointError(f"--base {args.base} is not a full checkpoint (the twig needs the base's weights)")
    theirs = read_twig_weights(args.twig)
    state, T = twig_state_dict(theirs, args.after_layer)
    config = LlavaConfig.from_pretrained(args.base)
    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else (getattr(config, "dtype", None) or
                                                                    getattr(config, "torch_dtype", None) or torch.float32)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    model = load_llava(args.base, dtype, default_attn_implementation(), args.vision_tower_path, config)
    attach_twig(model, state, TwigSpec(args.after_layer, T).validate_for(model.config.num_hidden_layers))
    model.set_reduction(PRESETS[args.reduction])
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out)
    for name in sorted(os.listdir(args.base)):
        if _COPIED.fullmatch(name) and os.path.isfile(os.path.join(args.base, name)):
            shutil.copy(os.path.join(args.base, name), os.path.join(args.out, name))
    logger.info("twig of %d layers after layer %d attached to %s; saved to %s with schedule %s", T, args.after_layer,
                args.base, args.out, args.reduction)
    return args.out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        convert(args)
    except (TwigConversionError, TwigConfigError, CheckpointError, ReductionConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
