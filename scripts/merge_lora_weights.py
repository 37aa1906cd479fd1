"""Upstream LLaVA's LoRA merge command: a LoRA checkpoint plus its base LLM -> one full checkpoint.

    python scripts/merge_lora_weights.py --model-path ./checkpoints/llava-v1.5-13b-lora \\
        --model-base lmsys/vicuna-13b-v1.5 --save-model-path ./checkpoints/llava-v1.5-13b-merged

Loads through ``load_pretrained_model`` on the CPU (adapter merged into the base, projector from
``non_lora_trainables.bin``) and saves the model, the tokenizer and the image processor, so the result loads on its
own. The checkpoint's kind comes from its files (upstream required "lora" in the folder name). Weights are saved
in float16, as upstream's merge saves them (``--dtype`` chooses).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import torch

from llava.mm_utils import get_model_name_from_path
from llava.model.builder import CheckpointError, checkpoint_kind, load_pretrained_model


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/merge_lora_weights.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", type=str, required=True, help="the LoRA checkpoint (adapter_config.json)")
    p.add_argument("--model-base", type=str, required=True, help="the base LLM the LoRA was trained on")
    p.add_argument("--save-model-path", type=str, required=True, help="a new or empty folder")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"), help="ours")
    return p


def merge_lora(args: argparse.Namespace) -> None:
    if checkpoint_kind(args.model_path) != "lora":
        raise CheckpointError(f"{args.model_path} is not a LoRA checkpoint (no adapter_config.json); nothing to merge")
    out = args.save_model_path
    if os.path.isdir(out) and os.listdir(out):
        raise CheckpointError(f"--save-model-path {out} is not empty; choose a new or empty folder")
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path, args.model_base, get_model_name_from_path(args.model_path), device_map="cpu",
        torch_dtype=getattr(torch, args.dtype),
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)
    print(f"merged {args.model_path} into {args.model_base}: {out}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        merge_lora(args)
    except (CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
