"""MustDrop in the decoder loop: the dual-attention filter against the masked reference, the key set, per-sample
counts with padding on either side, batch equals single, and cached decoding against a slow full recompute under
the same (output-aware) cache policy. The vision stage's own reference tests are in test_vision_merge.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hidrop_reference import reference_decode_logits, reference_forward
from tiny import random_batch, tiny_model

from llava.model import PRESETS, ReductionConfig
from llava.model.decoder import decode_step, run_decoder

# A MustDrop-shaped schedule for the tiny model (6 layers, 64 vision tokens on an 8x8 grid, windows of 2): with
# the sharpened attention of _model, these thresholds drop a different share per sample at both stages.
MUSTDROP = {"prune_layers": (2, 4), "selection": "dual_attention", "global_thr": 0.015, "individual_thr": 0.1,
            "score_layer": "same", "score_query": "all_text", "position_scheme": "compacted", "local_merge": True,
            "merge_threshold": 0.2, "merge_window": 2, "key_ratio": 0.1, "kv_policy": "final", "topk": "hard"}


def _model(seed: int = 3):
    """A random tiny model's attention is nearly uniform; larger q/k weights give it the peaks real ones have."""
    model = tiny_model(seed=seed, num_layers=6, image_size=64, patch=8)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(6)
            layer.self_attn.k_proj.weight.mul_(6)
    return model


def _images_with_flat_regions(batch, seed):
    """Noise images with a flat quadrant of varying size, so merging differs per image."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch["images"].shape, generator=g) * 0.5
    for b in range(images.shape[0]):
        side = 16 * (b % 3 + 1)
        images[b, :, :side, :side] = float(b) / 3
    return images


def _kept_ids(stage, b):
    return [int(r) for r, ok in zip(stage.keep[b], stage.keep_valid[b]) if ok]


@pytest.mark.parametrize("left_pad", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dual_attention_filter_matches_the_reference(left_pad, seed):
    model = _model(seed)
    red = ReductionConfig(name="md", **MUSTDROP).validate_for(6, 64)
    batch = random_batch(model, [22, 15, 19], [3, 2, None], left_pad=left_pad, with_labels=False, seed=seed)
    batch["images"] = _images_with_flat_regions(batch, seed)
    with torch.no_grad():
        out = model(**batch, reduction=red)
        kept = [(s.keep, s.keep_valid) for s in out.stages]
        ref_logits, decisions = reference_forward(model, batch, red, kept)
        _, valid, key = model.encode_vision(batch["images"], 3, red)
    counts = []
    slots = [[j if valid[b, j] else None for j in range(64)] for b in range(3)]
    for s, stage in enumerate(out.stages):
        for b in (0, 1):  # the rows with an image
            present = [v for v in slots[b] if v is not None]
            fast = [slots[b][r] for r in _kept_ids(stage, b)]
            ref, margins = decisions[s][b]
            disagree = set(fast) ^ set(ref)
            # a disagreement is allowed only at a threshold (float rounding between the two computations)
            assert all(margins[present.index(v)] < 1e-6 for v in disagree), (s, b, disagree)
            assert None not in fast
            assert {v for v in present if key[b, v]} <= set(fast), "a key token was dropped"
            counts.append((s, len(fast), len(present)))
        slots = [[row[int(r)] if ok else None for r, ok in zip(stage.keep[b], stage.keep_valid[b])]
                 for b, row in enumerate(slots)]
        assert stage.keep_valid[2].sum() == 0  # the text-only row has no vision tokens
    assert len({n for _, n, _ in counts}) > 1, "the test needs per-sample counts that differ"
    assert all(any(n < before for st, n, before in counts if st == s) for s in (0, 1)), "both stages must drop"
    assert any(valid[b].sum() < 64 for b in (0, 1)), "the test needs merging"
    from test_hidrop_forward import fast_text_logits

    fast_logits = fast_text_logits(model, out)
    for k in ref_logits:
        torch.testing.assert_close(fast_logits[k], ref_logits[k], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("left_pad", [False, True])
def test_batch_equals_single(left_pad):
    """Per-sample counts in one batch: each row's kept tokens, realised counts and logits (forward, either padding
    side) and its generated tokens (generation needs left padding) equal the row run alone."""
    model = _model(4)
    red = ReductionConfig(name="md", **MUSTDROP)
    lengths, image_at = [20, 14, 17], [3, None, 2]
    batch = random_batch(model, lengths, image_at, left_pad=left_pad, with_labels=False, seed=4)
    batch["images"] = _images_with_flat_regions(batch, 4)
    T = batch["input_ids"].shape[1]
    with torch.no_grad():
        together = model(**batch, reduction=red, count_vision=True)
        generated = model.generate(**batch, max_new_tokens=5, reduction=red, eos_token_id=-1) if left_pad else None
        for b, n in enumerate(lengths):
            cols = slice(T - n, T) if left_pad else slice(0, n)
            one = {"input_ids": batch["input_ids"][b : b + 1, cols],
                   "attention_mask": batch["attention_mask"][b : b + 1, cols], "images": batch["images"][b : b + 1]}
            alone = model(**one, reduction=red, count_vision=True)
            for convention in ("entering", "after_filter"):
                a = getattr(alone.decoder.vision_counts, convention)[0]
                assert torch.equal(a, getattr(together.decoder.vision_counts, convention)[b]), f"row {b} {convention}"
            for s_one, s_all in zip(alone.stages, together.stages):
                assert _kept_ids(s_one, 0) == _kept_ids(s_all, b)
            rows = together.token_valid[b].nonzero().flatten()
            torch.testing.assert_close(alone.logits[0][alone.token_valid[0]], together.logits[b][rows], atol=2e-5,
                                       rtol=1e-4)
            if left_pad:
                gen_one = model.generate(**one, max_new_tokens=5, reduction=red, eos_token_id=-1)
                assert torch.equal(gen_one[0], generated[b]), f"row {b}"
    assert len({int(c) for c in together.decoder.vision_counts.entering[:, -1]}) > 1  # the counts differ per sample


@pytest.mark.parametrize("schedule", [
    ReductionConfig(name="md", **MUSTDROP),
    ReductionConfig(name="md-stage", **{**MUSTDROP, "kv_policy": "stage"}),
    ReductionConfig(name="md-persistent", **{**MUSTDROP, "position_scheme": "persistent"}),
    ReductionConfig(name="tiny-compacted", inject_layer=2, prune_layers=(2, 4), keep_counts=(20, 6), exit_layer=6,
                    position_scheme="compacted", kv_policy="final"),
    ReductionConfig(name="tiny-group", inject_layer=2, prune_layers=(2, 4), keep_counts=(20, 6), exit_layer=6,
                    position_scheme="group"),
    PRESETS["off"],
], ids=lambda r: r.name)
def test_cached_decoding_equals_the_slow_recompute_under_the_cache_policy(schedule):
    model = _model(5)
    batch = random_batch(model, [18, 12, 15], [3, None, 2], left_pad=True, with_labels=False, seed=5)
    batch["images"] = _images_with_flat_regions(batch, 5)
    forced = torch.randint(3, model.config.vocab_size, (3, 4), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        split = model.multimodal_batch(batch["input_ids"], batch["attention_mask"], batch["images"], None, schedule)
        out = run_decoder(model.model, split, schedule, None, use_cache=True)
        last = (out.state.valid.long() * torch.arange(1, out.state.valid.shape[1] + 1)).argmax(1)
        cached = [model.lm_head(out.hidden[torch.arange(3), last]).float()]
        for t in range(forced.shape[1]):
            h = decode_step(model.model, model.model.embed_tokens(forced[:, t]).unsqueeze(1), out.generation)
            cached.append(model.lm_head(h[:, -1]).float())
        kept = [(s.keep, s.keep_valid) if s.keep_valid is not None else s.keep for s in out.stages]
        ref = reference_decode_logits(model, batch, schedule, kept, forced)
    torch.testing.assert_close(torch.stack(cached, 1), ref, atol=5e-5, rtol=1e-4)


def test_final_cache_policy_masks_what_later_stages_drop():
    """The policy matters: decoding with the stage caches gives other logits than with the final-set caches."""
    model = _model(6)
    batch = random_batch(model, [18], [3], left_pad=True, with_labels=False, seed=6)
    batch["images"] = _images_with_flat_regions(batch, 6)
    token = torch.tensor([7])
    logits = {}
    for policy in ("stage", "final"):
        red = ReductionConfig(name=policy, **{**MUSTDROP, "kv_policy": policy})
        with torch.no_grad():
            split = model.multimodal_batch(batch["input_ids"], batch["attention_mask"], batch["images"], None, red)
            out = run_decoder(model.model, split, red, None, use_cache=True)
            logits[policy] = decode_step(model.model, model.model.embed_tokens(token).unsqueeze(1), out.generation)
    assert not torch.allclose(logits["stage"], logits["final"])


def test_presets_and_training_refusal():
    for budget, g, ind in ((192, 0.001, 0.001), (128, 0.0012, 0.001), (64, 0.011, 0.01)):
        red = PRESETS[f"mustdrop-{budget}"]
        assert (red.global_thr, red.individual_thr, red.prune_layers) == (g, ind, (3, 7, 11, 15))
        assert red.data_dependent and red.kv_policy == "final" and red.local_merge and red.key_ratio == 0.08
        red.validate_for(32, 576)
        assert ReductionConfig.from_dict(red.to_dict()) == red  # survives config.json
    model = _model(7).train()
    batch = random_batch(model, [14], [2], seed=7)
    with pytest.raises(ValueError, match="training-free"):
        model(**batch, reduction=PRESETS["mustdrop-64"].__class__(name="x", **MUSTDROP))
    with pytest.raises(ValueError, match="full recompute"):
        model.eval().generate(batch["input_ids"], batch["attention_mask"], images=batch["images"],
                              reduction=ReductionConfig(name="x", **MUSTDROP), use_cache=False, max_new_tokens=1)


def test_realised_tokens_through_the_eval_script(tiny_assets, tmp_path):
    """A MustDrop-shaped schedule, training-free through scripts/eval/gqa.sh: every answer records the vision tokens
    its prefill kept, the merge averages them, the result and `llava.eval.efficiency --run-info` report them."""
    import json
    import subprocess
    import sys

    from train_fixtures import build_gqa_eval, eval_gqa

    from llava.train.train import build_model, parse_args

    ckpt = tmp_path / "ckpt"
    args = parse_args(["--model_name_or_path", tiny_assets["llm"], "--vision_tower", tiny_assets["clip"],
                       "--output_dir", str(ckpt), "--report_to", "none"])
    model = build_model(*args)
    model.save_pretrained(ckpt)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (ckpt / name).write_bytes((Path(tiny_assets["llm"]) / name).read_bytes())
    schedule = ("prune_layers=2,3 selection=dual_attention global_thr=0.05 individual_thr=0.3 score_layer=same "
                "score_query=all_text position_scheme=compacted local_merge=true merge_threshold=0.3 merge_window=2 "
                "key_ratio=0.25 kv_policy=final topk=hard")
    data = build_gqa_eval(tmp_path / "eval")
    printed = eval_gqa(data, ckpt, REDUCTION_OVERRIDES=schedule, VISION_TOWER_PATH=tiny_assets["clip"]).stdout
    answers = next((data / "gqa" / "answers").rglob("1_0.jsonl"))
    lines = [json.loads(x) for x in answers.read_text().splitlines()]
    assert all(len(a["vision_tokens"]) == len(a["vision_tokens_after_filter"]) == 4 for a in lines)
    # MustDrop's counter: the filter layers (2 and 3) count what they keep, i.e. what enters the next layer
    assert all(a["vision_tokens_after_filter"][1:3] == a["vision_tokens"][2:4] for a in lines)
    assert all(a["vision_tokens_after_filter"][::3] == a["vision_tokens"][::3] for a in lines)
    run = json.loads(next((data / "gqa" / "answers").rglob("merge.jsonl.run.json")).read_text())
    assert run["data_dependent"] and run["realised_samples"] == len(lines)
    expected = [sum(a["vision_tokens"][i] for a in lines) / len(lines) for i in range(4)]
    after = [sum(a["vision_tokens_after_filter"][i] for a in lines) / len(lines) for i in range(4)]
    assert run["realised_vision_tokens_per_layer"] == pytest.approx(expected)
    assert run["realised_vision_tokens_after_filter_per_layer"] == pytest.approx(after)
    result = json.loads(next((data / "results").rglob("gqa.json")).read_text())
    assert result["run"]["realised_avg_vision_tokens"] == pytest.approx(sum(expected) / 4)
    assert result["run"]["realised_avg_vision_tokens_after_filter"] == pytest.approx(sum(after) / 4)
    assert (f"GQA realised vision tokens per layer: {sum(expected) / 4:.2f} at the layers' inputs, "
            f"{sum(after) / 4:.2f} counting each prune layer after its filter") in printed
    printed = subprocess.run([sys.executable, "-m", "llava.eval.efficiency", "--llm", "vicuna-7b", "--run-info",
                              str(next((data / "results").rglob("gqa.json")))], capture_output=True, text=True)
    assert printed.returncode == 0, printed.stderr
    assert f"avg_vision_tokens={sum(expected) / 4:.2f}" in printed.stdout and "vision_tflops=" in printed.stdout
    assert f"avg_vision_tokens_after_filter={sum(after) / 4:.2f}" in printed.stdout


@pytest.mark.parametrize("shape", [
    # FastV as its authors run it: one cut after layer 2 by layer 2's own attention, persistent positions
    {"prune_layers": (2,), "keep_counts": (7,), "topk": "hard", "score_layer": "same"},
    # PDrop: cuts scored with the next stage's first layer, contiguous renumbering after every cut
    {"prune_layers": (2, 4), "keep_counts": (16, 4), "topk": "hard", "position_scheme": "compacted"},
], ids=["fastv", "pdrop"])
@pytest.mark.parametrize("left_pad", [False, True])
@pytest.mark.parametrize("labels", [True, False], ids=["trained", "training-free"])
def test_fastv_and_pdrop_match_the_reference(shape, left_pad, labels):
    from test_hidrop_forward import fast_text_logits

    model = _model(8)
    red = ReductionConfig(name="baseline", **shape)
    batch = random_batch(model, [20, 14, 17], [3, None, 2], left_pad=left_pad, with_labels=labels, seed=8)
    with torch.no_grad():
        out = model(**batch, reduction=red)
        keeps = [s.keep for s in out.stages]
        ref, scores = reference_forward(model, batch, red, keeps)
    fast = fast_text_logits(model, out)
    for k in ref:
        torch.testing.assert_close(fast[k], ref[k], atol=2e-5, rtol=1e-4)
    for s, keep in enumerate(keeps):  # the kept tokens are the reference scores' top k
        for b in (0, 2):
            kept = set(keep[b].tolist())
            worst = min(float(scores[s][b][i]) for i in kept)
            best_dropped = max((float(scores[s][b][i]) for i in range(scores[s][b].numel()) if i not in kept),
                               default=float("-inf"))
            assert worst >= best_dropped - 1e-6


@pytest.mark.parametrize("preset,tokens,tflops", [("fastv-paper", "306.00", "2.01"), ("pdrop-paper", "270.00", "1.78"),
                                                  ("fastv-64", "64.12", "0.42"), ("pdrop-64", "64.06", "0.42")])
def test_baseline_presets_accounting(preset, tokens, tflops, capsys):
    from llava.eval.efficiency import main

    assert main(["--llm", "vicuna-7b", "--schedule", preset]) == 0
    out = capsys.readouterr().out
    assert f"avg_vision_tokens={tokens}" in out and f"vision_tflops={tflops}" in out
