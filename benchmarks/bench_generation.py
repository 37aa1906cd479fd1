"""Batched greedy generation, `off` against `tok64` and `voco-64`, side by side: prefill time, decode tokens per
second, the KV-cache bytes per sample against the schedule's ideal, and peak memory where the device reports it;
then VoCo's second question about an image, answered with and without the compressed image's cache.

    python benchmarks/bench_generation.py [--hidden 256 --text 100 --new 128 --batches 1,8 --reps 3 --device cpu|cuda]

The model is the speed benchmark's 32-layer one (reduced width, 576 vision tokens, `bench_hidrop_step.build`).
The ideal KV size of a schedule is sum over layers of (text + vision tokens present at that layer) key and value
vectors; `off` keeps text + 576 at every layer, so tok64 with 100 text tokens needs about 24% of it. Decoding
runs `max_new` cached steps with every layer attending to its own cache (prefill cost excluded).

`voco-64` (VoCo-LLaMA, 64 compression tokens, the authors' `code` visibility) prefills in two passes and keeps, per
layer, only the 64 VoCo tokens and the text after the image (the 35-token system prompt before it is hidden from the
text under `code` visibility, so it is not kept either): its ideal is (64 + text after the image) per layer. Its
<voco> id is an arbitrary one here: speed and memory do not depend on trained weights. The second-question
measurement times one answer (prefill + `--new` tokens, batch 1) about an image whose VoCo cache is already in an
`ImageCache` against the same answer compressing the image again.

`--speculative` measures self-speculative decoding (TwigVLM's twig drafting) against plain decoding instead, at each
batch size, with the acceptance rate (benchmarks/speculative_generation.py):

    python benchmarks/bench_generation.py --speculative [--draft-disagree 0.15]   # twig agreeing by construction
    python benchmarks/bench_generation.py --speculative --model-path CKPT --question-file Q --image-folder IMG
"""

from __future__ import annotations

import argparse

import torch
from bench_hidrop_step import build
from timing import add_model_args, interleaved, machine_line, parse_model_args, tok64_for_depth

from llava.model import PRESETS
from llava.model.decoder import decode_step, run_decoder
from llava.model.kv_cache import cache_bytes
from llava.model.two_pass import ImageCache, compressed_prefill

IMAGE_AT = 35  # the image after a 35-token system prompt, as in vicuna_v1


def inputs(model, batch: int, text: int, device: str):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (batch, text + 1), generator=g)
    ids[:, IMAGE_AT] = -200
    images = torch.randn(batch, 3, 336, 336, generator=g)
    return ids.to(device), torch.ones_like(ids).to(device), images.to(device, model.dtype)


def prefill(model, ids, mask, images, red, image_cache=None):
    with torch.inference_mode():
        if red.compress_tokens:  # VoCo: generate()'s two-pass prefill
            pre = compressed_prefill(model, ids, mask, images, red, image_cache)
            return pre.generation, pre.logits.argmax(-1)
        batch = model.multimodal_batch(ids, mask, images, None, red)
        out = run_decoder(model.model, batch, red, None, use_cache=True)
        last = model.lm_head(out.hidden[:, -1]).argmax(-1)
    return out.generation, last


def decode(model, gen, token, steps: int) -> None:
    with torch.inference_mode():
        for _ in range(steps):
            h = decode_step(model.model, model.model.embed_tokens(token).unsqueeze(1), gen)
            token = model.lm_head(h[:, -1]).argmax(-1)


def kv_bytes(gen) -> int:
    """Bytes of every layer's keys and values (padding slots included: what the cache really holds)."""
    return cache_bytes(gen)


def ideal_kv_bytes(model, red, text: int) -> float:
    cfg = model.config
    per_token = 2 * cfg.num_key_value_heads * cfg.head_dim * model.dtype.itemsize  # keys + values
    if red.compress_tokens:  # VoCo: the N VoCo tokens and the text the rows after them may see
        seen = text - 1 - IMAGE_AT if red.compress_visibility == "code" else text - 1
        return cfg.num_hidden_layers * (red.compress_tokens + seen) * per_token
    counts = red.counts_per_layer(cfg.num_hidden_layers, cfg.num_vision_tokens)
    return sum(text + c for c in counts) * per_token


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, text=100, reps=3)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--speculative", action="store_true", help="plain vs self-speculative decoding (see above)")
    p.add_argument("--draft-disagree", type=float, default=0.0,
                   help="--speculative: the share of the vocabulary the agreeing twig proposes wrongly")
    p.add_argument("--model-path", default=None, help="--speculative: a checkpoint with a trained twig")
    p.add_argument("--question-file", default=None, help="--speculative --model-path: benchmark questions")
    p.add_argument("--image-folder", default="")
    p.add_argument("--bench", default="gqa")
    args = parse_model_args(p)
    if args.speculative:
        from speculative_generation import speculative_main

        speculative_main(args, inputs)
        return
    torch.manual_seed(0)
    model = build(args).eval()
    sync = args.device.startswith("cuda")
    model.config.compress_token_id = model.config.vocab_size - 1  # an untrained stand-in for <voco>
    schedules = {"off": PRESETS["off"], "tok64": tok64_for_depth(args.layers), "voco-64": PRESETS["voco-64"]}
    print(f"machine: {machine_line(args.device)}; {args.reps} interleaved repetitions, median [min-max]")
    print(f"model: {args.layers} layers, hidden {args.hidden}; prompt {args.text} text + 576 vision tokens; {args.new} new tokens")
    print("| batch | schedule | prefill | decode tok/s | KV per sample (MB) | KV vs ideal | KV vs off | peak memory |")
    print("|---|---|---|---|---|---|---|---|")
    for batch in (int(b) for b in args.batches.split(",")):
        for line in measure_batch(model, args, batch, schedules, sync):
            print(line)
    print(measure_second_question(model, args, PRESETS["voco-64"], sync))


def measure_batch(model, args, batch: int, schedules: dict, sync: bool) -> list[str]:
    ids, mask, images = inputs(model, batch, args.text, args.device)
    states = {name: prefill(model, ids, mask, images, red) for name, red in schedules.items()}
    t_prefill = interleaved({n: (lambda r=r: prefill(model, ids, mask, images, r)) for n, r in schedules.items()},
                            args.reps, sync)
    # each repetition decodes from a fresh prefill's cache (decoding extends it in place)
    fresh = {n: [prefill(model, ids, mask, images, r) for _ in range(args.reps + 1)] for n, r in schedules.items()}
    t_decode = interleaved({n: (lambda n=n: decode(model, *fresh[n].pop(), args.new)) for n in schedules},
                           args.reps, sync)
    kv = {n: kv_bytes(states[n][0]) / batch for n in schedules}
    lines = []
    for name, red in schedules.items():
        peak = "n/a on CPU"
        if sync:
            torch.cuda.reset_peak_memory_stats()
            decode(model, *prefill(model, ids, mask, images, red), args.new)
            peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MB"
        ideal = ideal_kv_bytes(model, red, args.text + 1)
        tps = batch * args.new / t_decode[name].median
        lines.append(f"| {batch} | {name} | {t_prefill[name].fmt()} | {tps:.0f} | {kv[name] / 2**20:.2f} | "
                     f"{kv[name] / ideal:.3f} | {kv[name] / kv['off']:.3f} | {peak} |")
    tps = {n: batch * args.new / t_decode[n].median for n in schedules}
    lines.append(f"RESULT | decode tokens/s, batch {batch} | {tps['off']:.0f} | {tps['tok64']:.0f} | "
                 f"{tps['tok64'] / tps['off']:.2f}x | KV {kv['tok64'] / kv['off']:.3f} of off |")
    lines.append(f"RESULT | generation prefill, batch {batch} | {t_prefill['off'].median * 1e3:.1f} ms | "
                 f"{t_prefill['tok64'].median * 1e3:.1f} ms | {t_prefill['off'].median / t_prefill['tok64'].median:.2f}x | |")
    voco_ideal = ideal_kv_bytes(model, schedules["voco-64"], args.text + 1)  # per sample, as kv
    lines.append(f"RESULT | voco-64 decode tokens/s, batch {batch} | {tps['off']:.0f} | {tps['voco-64']:.0f} | "
                 f"{tps['voco-64'] / tps['off']:.2f}x | KV {kv['voco-64'] / kv['off']:.3f} of off, "
                 f"{kv['voco-64'] / voco_ideal:.3f} of its ideal |")
    return lines


def measure_second_question(model, args, red, sync: bool) -> str:
    """One answer (prefill + ``args.new`` greedy tokens, batch 1) to a second question about an image: from the
    image's cached VoCo cache, and compressing the image again; interleaved."""
    ids, mask, images = inputs(model, 1, args.text, args.device)
    second = ids.clone()
    second[:, IMAGE_AT + 1:] = torch.randint(3, model.config.vocab_size, (1, args.text - IMAGE_AT),
                                             generator=torch.Generator().manual_seed(1)).to(ids.device)
    cache = ImageCache()
    prefill(model, ids, mask, images, red, cache)  # the first question compresses the image

    def answer(image_cache):
        decode(model, *prefill(model, second, mask, images, red, image_cache), args.new)

    t = interleaved({"reuse": lambda: answer(cache), "again": lambda: answer(None)}, args.reps, sync)
    first = interleaved({"reuse": lambda: prefill(model, second, mask, images, red, cache),
                         "again": lambda: prefill(model, second, mask, images, red)}, args.reps, sync)
    return (f"RESULT | voco-64 second question about an image, batch 1 | compress again {t['again'].fmt()} | "
            f"reuse the VoCo cache {t['reuse'].fmt()} | {t['again'].median / t['reuse'].median:.2f}x | "
            f"time to first token {first['again'].fmt()} vs {first['reuse'].fmt()} "
            f"({first['again'].median / first['reuse'].median:.2f}x); cache hits {cache.hits} |")

if __name__ == "__main__":
    main()
