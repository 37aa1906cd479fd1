"""Chat about an image in the terminal, as upstream's `python -m llava.serve.cli`.

    python -m llava.serve.cli --model-path ./checkpoints/llava-v1.5-7b-hidrop-tok64 --image-file view.jpg
"""

from __future__ import annotations

import argparse
import sys

import torch

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.conversation import get_conv_template
from llava.mm_utils import ImageLoadError, load_image, process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.serve.cli", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True)
    p.add_argument("--model-base", default=None)
    p.add_argument("--image-file", required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--conv-mode", default="vicuna_v1")
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--reduction", default=None, help="preset replacing the checkpoint's schedule")
    p.add_argument("--reduction-override", nargs="*", default=[], help="key=value schedule overrides")
    return p


def main(argv: list[str] | None = None, input_fn=input) -> int:
    args = build_parser().parse_args(argv)
    try:
        image = load_image(args.image_file)
    except ImageLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tokenizer, model, processor, _ = load_pretrained_model(
        args.model_path, args.model_base, device=args.device, reduction=args.reduction,
        reduction_overrides=args.reduction_override,
    )
    images = process_images([image], processor, model.config.image_aspect_ratio).to(model.device, model.dtype)
    conv = get_conv_template(args.conv_mode)
    first = True
    while True:
        try:
            text = input_fn(f"{conv.roles[0]}: ")
        except EOFError:
            return 0
        if not text.strip():
            return 0
        if first:
            text, first = DEFAULT_IMAGE_TOKEN + "\n" + text, False
        conv.append_message(conv.roles[0], text)
        conv.append_message(conv.roles[1], None)
        ids = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt").unsqueeze(0).to(model.device)
        out = model.generate(ids, images=images, do_sample=args.temperature > 0, temperature=args.temperature,
                             max_new_tokens=args.max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        answer = tokenizer.decode(out[0], skip_special_tokens=True).strip()
        print(f"{conv.roles[1]}: {answer}")
        conv.messages[-1] = (conv.roles[1], answer)  # the answer becomes context for the next turn


if __name__ == "__main__":
    sys.exit(main())
