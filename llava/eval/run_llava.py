"""One question about one image, upstream LLaVA's quick-start entry point.

    python -m llava.eval.run_llava --model-path CKPT --image-file view.jpg --query "What is in the image?" \\
        [--conv-mode llava_v1] [--temperature 0.2 --top_p P --num_beams 1 --max_new_tokens 512] [--reduction tok64]

or from Python, with an ``args`` object carrying upstream's fields (``model_path, model_base, model_name, query,
conv_mode, image_file, sep, temperature, top_p, num_beams, max_new_tokens``)::

    from llava.eval.run_llava import eval_model
    eval_model(args)   # prints the answer (and returns it)

It is upstream's sequence of public calls (``load_pretrained_model``, ``conv_templates[...].copy()``,
``tokenizer_image_token``, ``process_images``, ``model.generate``), so it also shows them working together. Where it
differs on purpose: ``conv_mode=None`` means ``llava_v1``, the template upstream picks for every LLaVA-1.5 model
name (nothing is read from the name here); the model takes one image per prompt (LLaVA-1.5), so several image
files are refused; ``reduction`` / ``reduction_overrides`` (ours, optional) pick the token-reduction schedule.
"""

from __future__ import annotations

import argparse
import io
import logging
import urllib.request
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_PLACEHOLDER
from llava.conversation import conv_templates, get_template
from llava.mm_utils import (
    ImageLoadError,
    background_color,
    get_model_name_from_path,
    load_image,
    process_images,
    to_rgb,
    tokenizer_image_token,
)
from llava.model.builder import load_pretrained_model

logger = logging.getLogger("llava.eval.run_llava")

DEFAULT_CONV_MODE = "llava_v1"
URL_TIMEOUT_S = 30


def image_parser(args: Any) -> list[str]:
    """The image files of ``args.image_file``, split on ``args.sep`` (upstream's ``,`` by default)."""
    return [f for f in str(args.image_file).split(getattr(args, "sep", ",") or ",") if f]


def load_image_file(image_file: str, background: Sequence[int]) -> Image.Image:
    """A local file (through our loader's checks) or an http(s) URL, as RGB."""
    if image_file.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(image_file, timeout=URL_TIMEOUT_S) as response:
                data = response.read()
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                return to_rgb(img, background)
        except OSError as e:  # URLError, timeouts and undecodable data are all OSErrors
            raise ImageLoadError(f"cannot fetch or read the image at {image_file}: {e}", path=image_file) from e
    return load_image(image_file, background=background)


def build_prompt(query: str, conv_mode: str) -> str:
    """Upstream's prompt: the image where the query says ``<image-placeholder>``, otherwise before the query."""
    qs = query.replace(IMAGE_PLACEHOLDER, DEFAULT_IMAGE_TOKEN) if IMAGE_PLACEHOLDER in query else f"{DEFAULT_IMAGE_TOKEN}\n{query}"
    conv = conv_templates[conv_mode].copy()
    conv.append_message(conv.roles[0], qs)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def eval_model(args: Any) -> str:
    """Answers ``args.query`` about ``args.image_file``; prints the answer and returns it."""
    conv_mode = getattr(args, "conv_mode", None) or DEFAULT_CONV_MODE
    get_template(conv_mode)  # an unknown template fails before the model loads
    image_files = image_parser(args)
    if len(image_files) != 1:
        raise ValueError(f"image_file names {len(image_files)} images ({image_files}); LLaVA-1.5 takes one image per "
                         "prompt")
    if getattr(args, "num_beams", 1) not in (None, 1):
        raise ValueError(f"num_beams={args.num_beams}: beam search is not supported; use num_beams=1")
    model_name = getattr(args, "model_name", None) or get_model_name_from_path(args.model_path)
    overrides = getattr(args, "reduction_overrides", None)
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path, getattr(args, "model_base", None), model_name,
        reduction=getattr(args, "reduction", None) or None, reduction_overrides=overrides or None,
        vision_tower_path=getattr(args, "vision_tower_path", None) or None,
    )
    prompt = build_prompt(args.query, conv_mode)
    images = [load_image_file(f, background_color(image_processor)) for f in image_files]
    images_tensor = process_images(images, image_processor, model.config).to(model.device, dtype=model.dtype)
    input_ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt").unsqueeze(0).to(model.device)
    temperature = float(getattr(args, "temperature", 0) or 0)
    with torch.inference_mode():
        output_ids = model.generate(
            input_ids,
            images=images_tensor,
            image_sizes=[img.size for img in images],
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else 1.0,
            top_p=getattr(args, "top_p", None),
            num_beams=1,
            max_new_tokens=int(getattr(args, "max_new_tokens", 512)),
            use_cache=True,
        )
    outputs = tokenizer.batch_decode(output_ids, skip_special_tokens=True)[0].strip()
    print(outputs)
    return outputs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.eval.run_llava", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", type=str, required=True)
    p.add_argument("--model-base", type=str, default=None)
    p.add_argument("--image-file", type=str, required=True, help="a local file or an http(s) URL")
    p.add_argument("--query", type=str, required=True)
    p.add_argument("--conv-mode", type=str, default=None, help=f"default: {DEFAULT_CONV_MODE}")
    p.add_argument("--sep", type=str, default=",", help="separates several --image-file entries")
    p.add_argument("--temperature", type=float, default=0.2, help="0: greedy")
    p.add_argument("--top_p", type=float, default=None)
    p.add_argument("--num_beams", type=int, default=1, help="only 1")
    p.add_argument("--max_new_tokens", type=int, default=512)
    ours = p.add_argument_group("HiDrop-LLaVA")
    ours.add_argument("--reduction", default=None, help="schedule preset replacing the checkpoint's (e.g. tok64)")
    ours.add_argument("--reduction-override", dest="reduction_overrides", nargs="*", default=[], metavar="KEY=VALUE",
                      help="single-field schedule overrides")
    ours.add_argument("--vision-tower-path", default=None, help="local CLIP directory replacing the tower's hub id")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    args.reduction_overrides = [item for value in args.reduction_overrides for item in value.split()]
    try:
        eval_model(args)
    except (ValueError, ImageLoadError) as e:  # CheckpointError and ReductionConfigError are ValueErrors
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
