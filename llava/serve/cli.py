"""Chat about an image in the terminal, as upstream's `python -m llava.serve.cli`.

    python -m llava.serve.cli --model-path ./checkpoints/llava-v1.5-7b-hidrop-tok64 --image-file view.jpg

- An empty message or the end of input (Ctrl-D) ends the chat with exit code 0 and says why; Ctrl-C at the prompt exits 130.
- Each turn's prompt (the image counting as the model's number of vision tokens) must leave room in the model's
  context length: a prompt that does not fit is refused with a message, nothing is generated and the turn is
  forgotten, so a shorter message can be typed. Without --max-new-tokens an answer takes up to 512 new tokens or
  the room left in the context, whichever is less, silently; a --max-new-tokens larger than the room left is
  capped to it, with a note.
- A VoCo-LLaMA checkpoint (``voco-*`` schedules) compresses the image once; every follow-up question runs against its
  VoCo cache (``llava.model.two_pass.ImageCache``), without the vision tower or the image's tokens.
- A missing or unloadable checkpoint or image, an unknown --reduction preset or a bad --reduction-override is
  reported as "error: ..." on stderr with exit code 2. --reduction-override takes key=value pairs as separate
  arguments or several in one quoted argument ("exit_layer=24 topk=hard"), as the evaluation scripts do.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import torch

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.conversation import get_conv_template
from llava.mm_utils import (
    DEFAULT_BACKGROUND,
    ImageLoadError,
    background_color,
    load_image,
    process_images,
    tokenizer_image_token,
)
from llava.model.builder import CheckpointError, load_pretrained_model
from llava.model.compression_tokens import image_prompt_tokens
from llava.model.reduction.config import ReductionConfig, ReductionConfigError, parse_overrides
from llava.model.speculative import SpeculativeStats
from llava.model.two_pass import ImageCache
from llava.serve.common import non_negative_float, positive_int, prompt_token_count, split_override_args

DEFAULT_MAX_NEW_TOKENS = 512  # upstream's default, when the context leaves room for it


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.serve.cli", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True)
    p.add_argument("--model-base", default=None)
    p.add_argument("--vision-tower-path", default=None,
                   help="local CLIP directory replacing the tower the checkpoint names (a hub id, offline)")
    p.add_argument("--image-file", required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--conv-mode", default="vicuna_v1")
    p.add_argument("--temperature", type=non_negative_float, default=0.2, help="0 = greedy")
    p.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help=f"default: {DEFAULT_MAX_NEW_TOKENS} or what the context leaves, whichever is less")
    p.add_argument("--load-8bit", action="store_true", help="8-bit weights through bitsandbytes (CUDA GPU only)")
    p.add_argument("--load-4bit", action="store_true", help="4-bit weights through bitsandbytes (CUDA GPU only)")
    p.add_argument("--reduction", default=None, help="preset replacing the checkpoint's schedule")
    p.add_argument("--speculative", default=None, choices=("twig",),
                   help="self-speculative decoding with the checkpoint's twig (TwigVLM); after each answer the "
                        "acceptance rate and tokens/s are printed on stderr")
    p.add_argument("--reduction-override", nargs="*", default=[], metavar="KEY=VALUE",
                   help="schedule overrides: separate arguments, or several in one quoted argument")
    return p


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None, input_fn: Callable[[str], str] = input) -> int:
    args = build_parser().parse_args(argv)
    try:
        # Schedule and image are checked before the (slow) model load, so a typo fails at once.
        overrides = parse_overrides(split_override_args(args.reduction_override))
        if args.reduction:
            ReductionConfig.from_preset(args.reduction)
        image = load_image(args.image_file)
        try:
            tokenizer, model, processor, context_len = load_pretrained_model(
                args.model_path, args.model_base, None, args.load_8bit, args.load_4bit, device=args.device,
                reduction=args.reduction,
                reduction_overrides=overrides or None, vision_tower_path=args.vision_tower_path,
            )
        except OSError as e:  # unreadable config/weights/tokenizer files inside an existing directory
            raise CheckpointError(f"cannot load the model from {args.model_path}: {e}") from e
        background = background_color(processor)
        if background != DEFAULT_BACKGROUND:  # transparency must blend into this processor's padding colour
            image = load_image(args.image_file, background=background)
    except (ImageLoadError, ReductionConfigError, CheckpointError) as e:
        return _error(str(e))
    images = process_images([image], processor, model.config.image_aspect_ratio).to(model.device, model.dtype)
    return chat(args, tokenizer, model, images, int(context_len), input_fn)


def chat(args: argparse.Namespace, tokenizer: Any, model: Any, images: torch.Tensor, context_len: int,
         input_fn: Callable[[str], str]) -> int:
    """The question/answer loop; returns the exit code."""
    conv = get_conv_template(args.conv_mode)
    # the image as the model counts it: its vision tokens plus a VoCo schedule's compression tokens
    num_vision_tokens = image_prompt_tokens(int(model.config.num_vision_tokens), model.config.reduction_config)
    image_cache = ImageCache(max_images=1)  # VoCo: the image is compressed once, every follow-up reuses its cache
    image_sent = False
    while True:
        try:
            text = input_fn(f"{conv.roles[0]}: ")
        except EOFError:
            print("bye (end of input)", file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print("\nbye (interrupted)", file=sys.stderr)
            return 130
        if not text.strip():
            print("bye (empty message)", file=sys.stderr)
            return 0
        conv.append_message(conv.roles[0], text if image_sent else DEFAULT_IMAGE_TOKEN + "\n" + text)
        conv.append_message(conv.roles[1], None)
        ids = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")
        needed = prompt_token_count(ids, num_vision_tokens)
        room = context_len - needed
        if room < 1:
            # Forget the turn (the image too, if it came with it) so that the next message starts from the same
            # conversation.
            del conv.messages[-2:]
            print(f"error: the prompt would be {needed} tokens (the image counts as {num_vision_tokens}) but the "
                  f"model's context length is {context_len}; nothing was generated. Type a shorter message, or an "
                  "empty line to quit.", file=sys.stderr)
            continue
        image_sent = True
        max_new_tokens = args.max_new_tokens
        if max_new_tokens is None:  # the default: what fits, no note
            max_new_tokens = min(DEFAULT_MAX_NEW_TOKENS, room)
        elif max_new_tokens > room:
            print(f"note: the prompt is {needed} tokens, so only {room} tokens of the {context_len}-token context are "
                  f"left; "
                  f"the answer is capped at {room} new tokens (--max-new-tokens {max_new_tokens})", file=sys.stderr)
            max_new_tokens = room
        speculative = getattr(args, "speculative", None)
        extra: dict[str, Any] = {"image_cache": image_cache}
        stats = None
        if speculative:
            stats = SpeculativeStats()
            extra = {"speculative": speculative, "speculative_stats": stats}
        out = model.generate(ids.unsqueeze(0).to(model.device), images=images, do_sample=args.temperature > 0,
                             temperature=args.temperature, max_new_tokens=max_new_tokens,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **extra)
        answer = tokenizer.decode(out[0], skip_special_tokens=True).strip()
        print(f"{conv.roles[1]}: {answer}")
        if stats is not None:
            print(f"speculative decoding: {stats.summary()}", file=sys.stderr)
        conv.messages[-1][-1] = answer  # the answer becomes context for the next turn


if __name__ == "__main__":
    sys.exit(main())
