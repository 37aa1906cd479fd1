"""`bench_generation.py --speculative`: plain against self-speculative greedy decoding (TwigVLM's twig drafting),
the repetitions interleaved (plain, speculative, plain, ...), decode tokens/s (the tokens after the first over the
decoding time, prefill excluded), the acceptance rate and the drafted tokens per round, at each batch size.

Two settings:

- the 32-layer benchmark model (``bench_hidrop_step.build``) with schedule ``twigvlm-64`` and a twig after layer 2
  that agrees with the base by construction: the base's attention outputs after layer 2 and its MLPs after layer 5
  are zeroed (the weights stay, so every layer costs what it costs), the twig is a copy of layers 3-5 with the
  base's norm and head, and the heads are sharpened so that drafts are confident: the mechanism's ceiling.
  ``--draft-disagree F`` makes the twig propose another token whenever the base's is in a random F share of the
  vocabulary (its head rows permuted among them): each proposal then agrees with probability about 1 - F, and with
  5 proposals a round the acceptance rate is about (sum of (1 - F)^k, k = 1..5) / 5, 0.63 for F = 0.15.
- ``--model-path CKPT --question-file Q --image-folder IMG``: a checkpoint with a trained twig, its own schedule, on
  benchmark questions; EOS is ignored so that every row generates ``--new`` tokens.
"""

from __future__ import annotations

import statistics
import time

import torch
from bench_hidrop_step import build
from timing import machine_line

from llava.model.decoder import decode_step, run_decoder
from llava.model.speculative import SpeculativeStats


@torch.no_grad()
def agreeing_twig(model, after: int = 2, layers: int = 3, disagree: float = 0.0, scale: float = 200.0) -> None:
    """Makes ``model``'s twig compute the base's logits exactly, but for the tokens of a random ``disagree`` share
    of the vocabulary, which it permutes among themselves (see the module doc)."""
    from llava.model.twig import TwigSpec

    for i, layer in enumerate(model.model.layers):
        if i >= after:
            layer.self_attn.o_proj.weight.zero_()
        if i >= after + layers:
            layer.mlp.down_proj.weight.zero_()
    model.lm_head.weight.mul_(scale / model.lm_head.weight.norm(dim=1).mean())
    model.add_twig(TwigSpec(after, layers))
    if disagree:
        V = model.config.vocab_size
        g = torch.Generator().manual_seed(1)
        subset = torch.randperm(V, generator=g)[: max(2, round(disagree * V))]
        head = model.twig.head.weight
        head[subset] = head[torch.roll(subset, 1)].clone()  # twig logit of subset[i] = base logit of subset[i - 1]


def _sync(on: bool) -> None:
    if on:
        torch.cuda.synchronize()


@torch.inference_mode()
def plain_decode_seconds(model, ids, mask, images, red, new: int, sync: bool) -> float:
    """Plain cached greedy decoding, as ``generate`` runs it: the ``new - 1`` tokens after the prefill's, timed."""
    batch = model.multimodal_batch(ids, mask, images, None, red)
    out = run_decoder(model.model, batch, red, None, use_cache=True, twig=model.twig)
    token = model.lm_head(out.hidden[:, -1]).argmax(-1)
    _sync(sync)
    start = time.perf_counter()
    gen = out.generation
    for _ in range(new - 1):
        h = decode_step(model.model, model.model.embed_tokens(token).unsqueeze(1), gen)
        token = model.lm_head(h[:, -1]).argmax(-1)
    _sync(sync)
    return time.perf_counter() - start


@torch.inference_mode()
def speculative_run(model, ids, mask, images, red, new: int) -> SpeculativeStats:
    stats = SpeculativeStats()
    model.generate(ids, mask, images=images, reduction=red, max_new_tokens=new, eos_token_id=-1, speculative="twig",
                   speculative_stats=stats)
    return stats


def speculative_main(args, inputs) -> None:
    """``inputs(model, batch, text, device)`` -> (ids, mask, images): bench_generation's synthetic prompts."""
    sync = args.device.startswith("cuda")
    if args.model_path:
        from llava.eval.benchmarks import get_benchmark
        from llava.eval.run_benchmark import LlavaBackend
        from llava.model.builder import load_pretrained_model

        if not args.question_file:
            raise SystemExit("--model-path needs --question-file: a trained twig drafts from real questions")
        tokenizer, model, processor, _ = load_pretrained_model(args.model_path, device=args.device)
        if model.twig is None:
            raise SystemExit(f"{args.model_path} has no twig (scripts/train_twig.sh trains one)")
        adapter = get_benchmark(args.bench)
        questions = adapter.load_questions(args.question_file)
        backend = LlavaBackend(model, tokenizer, processor)
        red = model.config.reduction_config
        shape = (f"{args.model_path} ({model.config.num_hidden_layers} layers, twig {model.config.twig}, schedule "
                 f"{red.name}), {args.bench} questions, EOS ignored")

        def batch_inputs(batch: int, rep: int):
            qs = questions[rep * batch:(rep + 1) * batch] or questions[:batch]
            return backend.encode([q.text for q in qs], [adapter.load_image(q, args.image_folder) for q in qs])
    else:
        from llava.model import PRESETS

        torch.manual_seed(0)
        model = build(args).eval()
        agreeing_twig(model, disagree=args.draft_disagree)
        red = PRESETS["twigvlm-64"]
        if args.layers != 32:  # fewer layers (a 7B-width run that fits only part of the depth): FinalWipe scaled
            red = red.with_overrides({"exit_layer": max(6, round(25 * args.layers / 32)),
                                      "name": f"twigvlm-64@{args.layers}L"})
        red.validate_for(args.layers, 576)
        shape = (f"{args.layers} layers, hidden {args.hidden}, schedule {red.name}, a twig of layers 3-5 agreeing by "
                 f"construction{f' except on {args.draft_disagree:g} of the vocabulary' if args.draft_disagree else ''}; prompt "
                 f"{args.text} text + 576 vision tokens")

        def batch_inputs(batch: int, rep: int):
            return inputs(model, batch, args.text, args.device)
    print(f"machine: {machine_line(args.device)}; {args.reps} interleaved repetitions (plain, speculative, ...) after "
          "one warm-up pair, median [min-max]")
    print(f"model: {shape}; {args.new} new tokens per row, greedy, {model.config._attn_implementation}")
    print("| batch | plain decode tok/s | speculative decode tok/s | speedup | acceptance rate | drafted per row and round |")
    print("|---|---|---|---|---|---|")
    for batch in (int(b) for b in args.batches.split(",")):
        plain_s, spec_s, rates, per_round = [], [], [], []
        for rep in range(args.reps + 1):
            ids, mask, images = batch_inputs(batch, rep)
            t_plain = plain_decode_seconds(model, ids, mask, images, red, args.new, sync)
            st = speculative_run(model, ids, mask, images, red, args.new)
            if rep == 0:
                continue
            plain_s.append(t_plain)
            spec_s.append(st.decode_seconds)
            rates.append(st.acceptance_rate or 0.0)
            per_round.append(sum(st.drafted) / max(st.rounds, 1) / batch)
        tokens = batch * (args.new - 1)
        tp, ts = [tokens / t for t in plain_s], [tokens / t for t in spec_s]
        mp, ms, rate = statistics.median(tp), statistics.median(ts), statistics.median(rates)
        print(f"| {batch} | {mp:.1f} [{min(tp):.1f}-{max(tp):.1f}] | {ms:.1f} [{min(ts):.1f}-{max(ts):.1f}] | "
              f"{ms / mp:.2f}x | {rate:.3f} | {statistics.median(per_round):.2f} |")
        print(f"RESULT | speculative decode tokens/s, batch {batch} | {mp:.0f} | {ms:.0f} | {ms / mp:.2f}x | "
              f"acceptance {rate:.3f} |")
