"""One training step (forward + backward of the language model on spliced embeddings) and one prefill,
`off` against `tok64`, side by side, on a 32-layer model of reduced width with 576 vision tokens.

Prints measured speedups next to the FLOPs-ideal speedup for the exact shapes (every matmul and attention counted,
the scorer included), and the time spent in scoring + top-k + gathering as a share of the HiDrop training step
(forward timers, and forward+backward of the selection timed on its own with the step's captured inputs).

    python benchmarks/bench_hidrop_step.py [--hidden 256 --text 160 --batch 4 --reps 5 --dtype fp32|bf16 --device cpu|cuda]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from timing import add_model_args, interleaved, machine_line, parse_model_args, tok64_for_depth
from transformers import CLIPVisionConfig

import llava.model.decoder as decoder
from llava.model import PRESETS, LlavaConfig, LlavaLlamaForCausalLM
from llava.model.llava_llama import causal_lm_loss
from llava.model.multimodal_inputs import split_multimodal_batch

TIMED = ("score_vision_tokens", "select_tokens", "inject_vision", "keep_vision", "exit_vision")


def build(args) -> LlavaLlamaForCausalLM:
    d = args.hidden
    vision = CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2)
    heads = getattr(args, "heads", None) or max(1, d // 64)  # head_dim 64 at reduced width (7B: 32 heads of 128)
    layers = getattr(args, "layers", None) or 32
    cfg = LlavaConfig(vocab_size=args.vocab, hidden_size=d, intermediate_size=int(d * 11008 / 4096), num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=4096,
                      vision_config={k: v for k, v in vision.to_dict().items() if not k.startswith("_")},
                      mm_hidden_size=32)
    cfg._attn_implementation = args.attn
    return LlavaLlamaForCausalLM(cfg).to(args.device, args.dtype)


def make_batch(model, args):
    B, T, N = args.batch, args.text, 576
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, args.vocab, (B, T + 1), generator=g)
    if T < 60:
        raise SystemExit(f"--text {T} is too short: the layout needs a 35-token system prompt and a 40-token answer")
    ids[:, 35] = -200  # image after a 35-token system prompt, as in the vicuna_v1 template
    labels = ids.clone()
    labels[:, : T - 40] = -100  # the last 40 tokens are the answer
    vision = torch.randn(B, N, model.config.hidden_size, generator=g).to(args.device, args.dtype)
    return ids.to(args.device), torch.ones_like(ids).to(args.device), labels.to(args.device), vision


def step(model, batch, red, train: bool) -> None:
    ids, mask, labels, vision = batch
    with torch.set_grad_enabled(train):
        mb = split_multimodal_batch(ids, mask, vision, model.model.embed_tokens, labels if train else None)
        out = decoder.run_decoder(model.model, mb, red)
        if train:
            loss = causal_lm_loss(model.lm_head(out.hidden).float(), out.state.labels)
            loss.backward()
        else:
            model.lm_head(out.hidden[:, -1:])
    if ids.is_cuda:
        torch.cuda.synchronize()


def layer_flops(n: int, d: int, m: int, kv: int) -> float:
    return 2 * n * d * (2 * d + 2 * kv) + 2 * n * 3 * d * m + 4 * n * n * d  # projections, SwiGLU, QK^T and AV


def forward_flops(red, L, d, m, kv, T, N, V, B, train: bool, n_queries: int = 1) -> float:
    counts = red.counts_per_layer(L, N)
    total = sum(layer_flops(T + c, d, m, kv) for c in counts)
    for pl in red.prune_layers:  # scorer: norm-free q on the query rows, k on all tokens, q.K^T
        n = T + counts[pl - 1]
        total += 2 * n_queries * d * d + 2 * n * d * kv + 2 * n_queries * n * d
    total += 2 * (T if train else 1) * d * V
    return B * total


def timed(fn, reps: int) -> float:
    return interleaved({"only": fn}, reps)["only"].median


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, text=160, reps=5)
    p.add_argument("--batch", type=int, default=4)
    args = parse_model_args(p)
    torch.manual_seed(0)
    model = build(args).train()
    batch = make_batch(model, args)
    cfg = model.config
    L, d, m, kv = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_key_value_heads * cfg.head_dim
    off, tok64 = PRESETS["off"], tok64_for_depth(L)

    # forward-time of the reduction pieces, measured by wrapping them where the decoder calls them
    spent = {"t": 0.0}
    originals = {name: getattr(decoder, name) for name in TIMED}

    def wrap(fn):
        def inner(*a, **k):
            t = time.perf_counter()
            r = fn(*a, **k)
            if batch[0].is_cuda:
                torch.cuda.synchronize()
            spent["t"] += time.perf_counter() - t
            return r
        return inner

    results = {}
    sync = batch[0].is_cuda
    for mode in ("train", "prefill"):
        train = mode == "train"
        # off and tok64 take turns (off, tok64, off, ...): a change of machine load hits both alike
        results[mode] = interleaved({"off": lambda train=train: step(model, batch, off, train),
                                     "tok64": lambda train=train: step(model, batch, tok64, train)}, args.reps, sync)
    # Forward time of every reduction piece, measured where the decoder calls them.
    for name in TIMED:
        setattr(decoder, name, wrap(originals[name]))
    spent["t"] = 0.0
    t_wrapped = timed(lambda: step(model, batch, tok64, True), args.reps)
    fwd_share = spent["t"] / (args.reps + 1) / t_wrapped
    # Forward and backward of the selection, measured on its own: the inputs of every prune stage of one tok64
    # training step are captured, then scoring, top-k and the keep-gather (with the top-k's gradient scale) run
    # forward and backward on them, as in the step. Timed alone, so the figure is not the small difference of two
    # noisy step times. Injection and exit gathers are added from the forward timers (they have no backward
    # beyond a gather's scatter).
    for name in TIMED:
        setattr(decoder, name, originals[name])
    captured: list[tuple] = []

    def capture_score(layer, rotary, state, *a):
        captured.append((layer, rotary, state, a))
        return originals["score_vision_tokens"](layer, rotary, state, *a)

    def capture_select(scores, *a):
        captured[-1] = (*captured[-1], a)
        return originals["select_tokens"](scores, *a)

    decoder.score_vision_tokens, decoder.select_tokens = capture_score, capture_select
    step(model, batch, tok64, True)
    decoder.score_vision_tokens, decoder.select_tokens = originals["score_vision_tokens"], originals["select_tokens"]
    spent["t"] = 0.0
    for name in ("inject_vision", "exit_vision"):
        setattr(decoder, name, wrap(originals[name]))
    t_full = timed(lambda: step(model, batch, tok64, True), args.reps)
    other_gathers = spent["t"] / (args.reps + 1)
    for name, fn in originals.items():
        setattr(decoder, name, fn)

    def selection_fwd_bwd() -> None:
        for layer, rotary, state, score_args, select_args in captured:
            with torch.enable_grad():
                h = state.hidden.detach().requires_grad_(True)  # [B, S, D]
                st = dataclasses.replace(state, hidden=h)
                scored = score_args[2]
                if scored is not None:  # "same" scoring reads the layer's input instead of the state
                    score_args = (*score_args[:2], scored.detach().requires_grad_(True), *score_args[3:])
                scores = decoder.score_vision_tokens(layer, rotary, st, *score_args)  # [B, N_vis]
                sel = decoder.select_tokens(scores, *select_args)
                out = decoder.keep_vision(st, sel.keep, sel.scale).hidden  # [B, S - dropped, D]
                out.backward(torch.ones_like(out))
        model.zero_grad(set_to_none=True)
        if batch[0].is_cuda:
            torch.cuda.synchronize()

    selection = timed(selection_fwd_bwd, 2 * args.reps + 1)
    share = (selection + other_gathers) / t_full

    V, B, T = args.vocab, args.batch, args.text + 1
    print(f"model: {L} layers, hidden {d}, ffn {m}, heads {cfg.num_attention_heads}, vocab {V}; batch {B}, "
          f"text {T} tokens + 576 vision; {args.device} {str(args.dtype).split('.')[-1]} {args.attn}")
    print(f"schedule {tok64.describe(L, 576)}")
    print(f"machine: {machine_line(args.device)}; {args.reps} interleaved repetitions, median [min-max]")
    for mode, timing in results.items():
        train = mode == "train"
        t_off, t_hd = timing["off"].median, timing["tok64"].median
        f_off = forward_flops(off, L, d, m, kv, T, 576, V, B, train)
        f_hd = forward_flops(tok64, L, d, m, kv, T, 576, V, B, train)
        ideal = f_off / f_hd
        measured = t_off / t_hd
        print(f"{mode:8s} off {timing['off'].fmt()} | tok64 {timing['tok64'].fmt()} | measured speedup "
              f"{measured:.2f}x | FLOPs-ideal {ideal:.2f}x | measured/ideal {measured / ideal:.2f}")
        # one row of gpu_suite.sh's table
        print(f"RESULT | {mode} ({args.attn}, {str(args.dtype).split('.')[-1]}, {cfg.num_hidden_layers} layers) | "
              f"{timing['off'].median * 1e3:.1f} ms | {timing['tok64'].median * 1e3:.1f} ms | {measured:.2f}x | "
              f"{ideal:.2f}x |")
    print(f"scoring + top-k + gathering, forward only (timers): {fwd_share * 100:.2f}% of the tok64 training step")
    print(f"scoring + top-k + keep-gather forward+backward ({len(captured)} stages, timed alone: "
          f"{selection * 1e3:.1f} ms) + inject/exit gathers forward ({other_gathers * 1e3:.1f} ms): "
          f"{share * 100:.2f}% of the tok64 training step ({t_full * 1e3:.0f} ms)")


if __name__ == "__main__":
    main()
