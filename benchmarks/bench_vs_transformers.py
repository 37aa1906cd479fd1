"""Ours against transformers' own LLaVA on the same weights: prefill and greedy generation, side by side.

    python benchmarks/bench_vs_transformers.py [--hidden 512 --text 61 --new 32 --batches 1,4,8 --reps 5]

transformers' ``LlavaForConditionalGeneration`` is built from a config (a 1-layer, 32-wide CLIP tower at 336 px,
so 576 image tokens; the projector; a LLaMA of ``--layers`` x ``--hidden``) and imported into ours with the
converter's own functions (``llava.model.convert.config_from_hf`` and ``hf_to_ours_names``, what ``--from-hf``
runs), so both hold exactly the same weights. Both sides are timed end to end through their public ``generate``,
pixels in, tokens out (the tower is a small fixed share, the same module on both sides):

- prefill: ``generate(max_new_tokens=1)``, the prompt (576 image + ``--text`` text tokens) to the first token;
- generation: ``generate(max_new_tokens=--new)``, greedy, no EOS (every row generates ``--new`` tokens).

transformers gets the prompt its own way, ``<image>`` expanded to 576 image tokens; ours gets one placeholder.
Before any timing, at every batch, ``off`` must generate exactly transformers' tokens (else the script stops and
reports no timings). `tok64` is timed beside. Ratios are transformers' time / ours (above 1: we are faster);
the repetitions of the three sides are interleaved (``timing.interleaved``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from timing import add_model_args, interleaved, machine_line, parse_model_args, tok64_for_depth
from transformers import CLIPVisionConfig, LlamaConfig, LlavaForConditionalGeneration
from transformers import LlavaConfig as HFLlavaConfig

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model import PRESETS, LlavaLlamaForCausalLM
from llava.model.convert import config_from_hf, hf_to_ours_names

NUM_IMAGE_TOKENS = 576  # (336 / 14) ** 2
SYSTEM_TOKENS = 35  # the image follows a 35-token system prompt, as in vicuna_v1


def build_pair(args) -> tuple[LlavaForConditionalGeneration, LlavaLlamaForCausalLM]:
    """transformers' LLaVA with random weights and ours converted from it; no EOS, so lengths are fixed."""
    d = args.hidden
    heads = args.heads or max(1, d // 64)
    text = LlamaConfig(vocab_size=args.vocab, hidden_size=d, intermediate_size=int(d * 11008 / 4096),
                       num_hidden_layers=args.layers, num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=4096, bos_token_id=1, eos_token_id=None, pad_token_id=0)
    vision = CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2)
    config = HFLlavaConfig(text_config=text, vision_config=vision, image_token_index=args.vocab - 1,
                           vision_feature_layer=-2, vision_feature_select_strategy="default",
                           image_seq_length=NUM_IMAGE_TOKENS, projector_hidden_act="gelu",
                           multimodal_projector_bias=True)
    torch.manual_seed(0)
    hf = LlavaForConditionalGeneration._from_config(config, attn_implementation=args.attn, dtype=args.dtype)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    ours_config = config_from_hf(hf.config, "bench_vs_transformers")
    ours_config.eos_token_id = None
    ours_config._attn_implementation = args.attn
    ours = LlavaLlamaForCausalLM(ours_config).to(args.dtype)
    ours.load_state_dict(hf_to_ours_names(hf.state_dict()), strict=True)
    return hf.to(args.device).eval(), ours.to(args.device).eval()


def prompts(batch: int, text: int, vocab: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(our ids [B, text + 1] with one image placeholder, transformers' ids [B, text + 576], pixels)."""
    if text <= SYSTEM_TOKENS:
        raise SystemExit(f"--text {text}: the prompt needs more than the {SYSTEM_TOKENS}-token system prompt")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab - 1, (batch, text + 1), generator=g)  # never the image token (vocab - 1)
    ids[:, SYSTEM_TOKENS] = IMAGE_TOKEN_INDEX
    image = torch.full((batch, NUM_IMAGE_TOKENS), vocab - 1, dtype=torch.long)
    hf_ids = torch.cat([ids[:, :SYSTEM_TOKENS], image, ids[:, SYSTEM_TOKENS + 1:]], 1)
    pixels = torch.randn(batch, 3, 336, 336, generator=g)
    return ids.to(device), hf_ids.to(device), pixels.to(device)


def generators(hf, ours, batch: int, args) -> dict[str, Callable[[int], torch.Tensor]]:
    """name -> f(max_new_tokens) returning the new tokens [B, n]; the three sides the benchmark compares."""
    ids, hf_ids, pixels = prompts(batch, args.text, args.vocab, args.device)
    pixels = pixels.to(args.dtype)
    mask, hf_mask = torch.ones_like(ids), torch.ones_like(hf_ids)
    tok64 = tok64_for_depth(args.layers)

    def run_hf(n: int) -> torch.Tensor:
        with torch.inference_mode():
            out = hf.generate(input_ids=hf_ids, attention_mask=hf_mask, pixel_values=pixels, max_new_tokens=n,
                              min_new_tokens=n, do_sample=False)
        return out[:, hf_ids.shape[1]:]

    def run_ours(red):
        def run(n: int) -> torch.Tensor:
            with torch.inference_mode():
                return ours.generate(ids, mask, images=pixels, max_new_tokens=n, reduction=red)
        return run

    return {"transformers": run_hf, "off": run_ours(PRESETS["off"]), "tok64": run_ours(tok64)}


def check_same_tokens(sides: dict, batch: int, new: int) -> float:
    """Stops unless ``off`` generates transformers' tokens; returns the share of tok64's tokens that agree."""
    ref = sides["transformers"](new)
    off = sides["off"](new)
    if ref.shape != off.shape or not torch.equal(ref, off):
        same = (ref == off).all(0) if ref.shape == off.shape else torch.zeros(1, dtype=torch.bool)
        first = int((~same).nonzero()[0]) if not bool(same.all()) else -1
        raise SystemExit(f"batch {batch}: off generates different tokens from transformers (first difference at new "
                         f"token {first}: {ref[:, first].tolist()} vs {off[:, first].tolist()}); no timings reported")
    return float((sides["tok64"](new) == ref).float().mean())


def first_logits_gap(hf, ours, batch: int, args) -> float:
    """Largest |difference| of the first new token's logits (ours ``off`` vs transformers), relative to their scale:
    the token check alone could pass on a model whose argmax ignores what an error would change."""
    ids, hf_ids, pixels = prompts(batch, args.text, args.vocab, args.device)
    pixels = pixels.to(args.dtype)
    with torch.inference_mode():
        ref = hf(input_ids=hf_ids, attention_mask=torch.ones_like(hf_ids), pixel_values=pixels,
                 logits_to_keep=1).logits[:, -1].float()  # [B, V]
        out = ours(ids, torch.ones_like(ids), images=pixels, reduction=PRESETS["off"])
        last = (out.token_valid.long() * torch.arange(1, out.token_valid.shape[1] + 1, device=ids.device)).argmax(1)
        mine = out.logits[torch.arange(batch, device=ids.device), last]  # [B, V]
    return float((mine - ref).abs().max() / ref.abs().max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, text=61, reps=5)
    p.set_defaults(hidden=512)
    p.add_argument("--new", type=int, default=32, help="new tokens per generation")
    p.add_argument("--batches", default="1,4,8")
    p.add_argument("--check-only", action="store_true", help="the token-equality check at every batch, no timing")
    args = parse_model_args(p)
    if args.new < 1 or args.reps < 1:
        raise SystemExit(f"--new {args.new} / --reps {args.reps}: both must be at least 1")
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        raise SystemExit(f"--batches {args.batches!r}: expected comma-separated batch sizes, e.g. 1,4,8") from None
    if min(batches) < 1:
        raise SystemExit(f"--batches {args.batches}: every batch size must be at least 1")
    hf, ours = build_pair(args)
    sync = args.device.startswith("cuda")
    print(f"machine: {machine_line(args.device)}; {args.dtype}, {args.attn}; {args.reps} interleaved repetitions, "
          "median [min-max]")
    print(f"model: {args.layers} layers x {args.hidden} (CLIP 1 x 32 at 336 px), prompt {NUM_IMAGE_TOKENS} image + "
          f"{args.text} text tokens, {args.new} new tokens, greedy; ratio = transformers' time / ours")
    rows = []
    for batch in batches:
        sides = generators(hf, ours, batch, args)
        gap = first_logits_gap(hf, ours, batch, args)
        if args.dtype == torch.float32 and gap > 1e-4:
            raise SystemExit(f"batch {batch}: off's first logits differ from transformers' by {gap:.1e} of their "
                             "scale (fp32 allows 1e-4); no timings reported")
        agree = check_same_tokens(sides, batch, args.new)
        print(f"batch {batch}: off generates transformers' {args.new} tokens exactly (first logits within {gap:.1e} "
              f"of their scale); tok64 agrees on {agree:.0%}")
        if args.check_only:
            continue
        prefill = interleaved({n: (lambda f=f: f(1)) for n, f in sides.items()}, args.reps, sync)
        gen = interleaved({n: (lambda f=f: f(args.new)) for n, f in sides.items()}, args.reps, sync)
        rows.append((batch, prefill, gen))
    if args.check_only:
        return
    print("| batch | | transformers | off | tok64 | off vs transformers | tok64 vs transformers |")
    print("|---|---|---|---|---|---|---|")
    for batch, prefill, gen in rows:
        for what, t in (("prefill", prefill), (f"generate {args.new}", gen)):
            ref = t["transformers"].median
            print(f"| {batch} | {what} | {t['transformers'].fmt()} | {t['off'].fmt()} | {t['tok64'].fmt()} | "
                  f"{ref / t['off'].median:.2f}x | {ref / t['tok64'].median:.2f}x |")
    for batch, prefill, gen in rows:
        ratio = {n: (prefill["transformers"].median / prefill[n].median, gen["transformers"].median / gen[n].median)
                 for n in ("off", "tok64")}
        print(f"RESULT | vs transformers (prefill / generate), batch {batch} | off {ratio['off'][0]:.2f}x / "
              f"{ratio['off'][1]:.2f}x | tok64 {ratio['tok64'][0]:.2f}x / {ratio['tok64'][1]:.2f}x | | same tokens |")


if __name__ == "__main__":
    main()
