"""Parallel vision decoupling: the step with the tower running beside the text-only shallow layers (a side CUDA
stream, joined at the injection layer) against the plain order, side by side, with a CLIP-L-shaped tower.

    python benchmarks/bench_parallel_vision.py [--hidden 256 --text 160 --batch 4 --reps 5 --device cuda --dtype bf16]

On a GPU the tower's time can hide behind the shallow layers, up to the smaller of the two; on CPU both share the
cores and the decoupled order only moves the tower to the injection layer, so expect no gain there. Prints both
medians, the gain, and the tower's and the shallow layers' own times (the bound on the gain).
"""

from __future__ import annotations

import argparse

import torch
from bench_hidrop_step import build
from timing import add_model_args, interleaved, machine_line, parse_model_args, tok64_for_depth
from transformers import CLIPVisionConfig

from llava.model.vision_tower import CLIPVisionTower


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, text=160, reps=5)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tower", default="24,1024,4096", help="CLIP layers,hidden,ffn (CLIP ViT-L/14-336 by default)")
    p.add_argument("--train", action="store_true", help="time forward + backward instead of the forward")
    args = parse_model_args(p)
    torch.manual_seed(0)
    model = build(args)
    layers, width, ffn = (int(x) for x in args.tower.split(","))
    vision = CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=width, intermediate_size=ffn,
                              num_hidden_layers=layers, num_attention_heads=max(1, width // 64))
    model.model.vision_tower = CLIPVisionTower(vision).to(args.device, args.dtype)
    model.model.mm_projector = torch.nn.Sequential(torch.nn.Linear(width, args.hidden), torch.nn.GELU(),
                                                   torch.nn.Linear(args.hidden, args.hidden)).to(args.device, args.dtype)
    model.train(args.train)
    red = tok64_for_depth(args.layers)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, args.vocab, (args.batch, args.text + 1), generator=g)
    ids[:, 35] = -200
    ids, mask = ids.to(args.device), torch.ones_like(ids).to(args.device)
    images = torch.randn(args.batch, 3, 336, 336, generator=g).to(args.device, args.dtype)
    labels = ids.clone() if args.train else None

    def step(mode: str):
        model.config.parallel_vision = mode
        with torch.set_grad_enabled(args.train):
            out = model(ids, mask, labels=labels, images=images, reduction=red)
            if args.train:
                out.loss.backward()

    def tower():
        with torch.no_grad():
            model.encode_images(images, args.batch)

    def shallow():
        """The text-only layers before the injection layer, which the tower can run beside."""
        with torch.set_grad_enabled(args.train):
            h = model.model.embed_tokens(ids.clamp_min(0))  # [B, T, D]
            pos = torch.arange(h.shape[1], device=h.device).unsqueeze(0).expand(h.shape[0], -1)  # [B, T]
            emb = model.model.rotary_emb(h, position_ids=pos)
            for layer in model.model.layers[: red.inject_layer - 1]:
                out = layer(h, attention_mask=None, position_ids=pos, position_embeddings=emb)
                h = out[0] if isinstance(out, tuple) else out
            if args.train:
                h.float().sum().backward()

    sync = args.device.startswith("cuda")
    t = interleaved({"plain": lambda: step("off"), "decoupled": lambda: step("on"), "tower": tower,
                     "shallow": shallow}, args.reps, sync)
    print(f"machine: {machine_line(args.device)}; {args.reps} interleaved repetitions, median [min-max]")
    print(f"tok64 (inject at {red.inject_layer}); LLM {args.layers} x {args.hidden}; tower {layers} x {width}; batch {args.batch}; "
          f"{'train step' if args.train else 'forward'}")
    gain = t["plain"].median - t["decoupled"].median
    bound = min(t["tower"].median, t["shallow"].median)
    print(f"| plain | decoupled | gain | tower alone | shallow layers 1-{red.inject_layer - 1} alone | bound on the gain |\n"
          f"|---|---|---|---|---|---|\n| {t['plain'].fmt()} | {t['decoupled'].fmt()} | {gain * 1e3:.1f} ms "
          f"({gain / t['plain'].median * 100:.1f}%) | {t['tower'].fmt()} | {t['shallow'].fmt()} | {bound * 1e3:.1f} ms |")
    print(f"RESULT | parallel vision ({'train' if args.train else 'forward'}; tok64) | plain "
          f"{t['plain'].median * 1e3:.1f} ms | decoupled {t['decoupled'].median * 1e3:.1f} ms | "
          f"{t['plain'].median / t['decoupled'].median:.2f}x | tower {t['tower'].median * 1e3:.1f} ms, shallow "
          f"{t['shallow'].median * 1e3:.1f} ms |")


if __name__ == "__main__":
    main()
