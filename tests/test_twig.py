"""TwigVLM's twig as a module of the model: twig-guided pruning against the masked reference, its schedules and
refusals, ZeRO-3 call parity, saving and loading, the converter for the authors' released twig, and the shallow
model's training loss."""

from __future__ import annotations

import json
import random

import pytest
import torch
from hidrop_reference import reference_forward
from test_hidrop_forward import fast_text_logits
from tiny import random_batch, tiny_model

from llava.model import PRESETS, LlavaLlamaForCausalLM, ReductionConfig, ReductionConfigError
from llava.model.twig import TwigConfigError, TwigSpec


def _twig_model(seed, L=6, K=2, T=2, from_base=False, **kw):
    model = tiny_model(seed=seed, num_layers=L, **kw)
    model.add_twig(TwigSpec(K, T), from_base=from_base)  # random twig weights: its scores differ from every layer's
    return model.eval()


def _check_against_reference(model, batch, red, rows_with_image):
    with torch.no_grad():
        out = model(**batch, reduction=red)
        keeps = [s.keep for s in out.stages]
        ref, ref_scores = reference_forward(model, batch, red, keeps)
    fast = fast_text_logits(model, out)
    assert set(fast) == set(ref)
    for key in ref:
        torch.testing.assert_close(fast[key], ref[key], atol=2e-5, rtol=1e-4)
    k = red.keep_counts[0]
    for b in rows_with_image:  # the kept tokens are the top k of the reference twig's scores
        sc = ref_scores[0][b]
        kept = set(keeps[0][b].tolist())
        assert len(kept) == k
        if k < sc.numel():
            assert min(float(sc[i]) for i in kept) >= max(float(sc[i]) for i in range(sc.numel()) if i not in kept) - 1e-6
    return out


@pytest.mark.parametrize("seed", range(6))
def test_twig_scores_match_the_masked_reference(seed):
    """Random depths, twig placements and shapes, GQA, sdpa/eager, either padding side, training and inference
    queries, last-token and all-text scoring."""
    rng = random.Random(seed)
    L = rng.randint(4, 7)
    K = rng.randint(1, L - 2)
    T = rng.randint(1, L - K)
    model = _twig_model(seed, L, K, T, kv_heads=rng.choice([1, 2, 4]), attn=rng.choice(["sdpa", "eager"]))
    exit_layer = rng.choice([rng.randint(K + 1, L), -1])
    red = ReductionConfig(name="twig", prune_layers=(K,), keep_counts=(rng.randint(0, 16),), exit_layer=exit_layer,
                          topk="hard", score_layer="twig", score_query=rng.choice(["last_nround", "all_text"]))
    B = rng.randint(1, 3)
    lengths = [rng.randint(8, 16) for _ in range(B)]
    image_at = [rng.choice([None, rng.randint(1, n - 4)]) for n in lengths]
    image_at[0] = image_at[0] or 1
    batch = random_batch(model, lengths, image_at, left_pad=rng.random() < 0.5, with_labels=rng.random() < 0.5,
                         seed=seed)
    _check_against_reference(model, batch, red, [b for b in range(B) if image_at[b] is not None])


@pytest.mark.parametrize("preset", ["twigvlm-64", "twigvlm-64-alltext"])
@pytest.mark.parametrize("left_pad", [False, True])
def test_twig_presets_match_the_reference_and_batch_equals_single(preset, left_pad):
    """The presets' shape (cut after 2, FinalWipe, hard top-k, persistent positions) at the tiny model's scale."""
    model = _twig_model(11)
    red = PRESETS[preset].with_overrides({"keep_counts": (5,), "exit_layer": 5})
    lengths, image_at = [18, 12, 15], [3, None, 2]
    batch = random_batch(model, lengths, image_at, left_pad=left_pad, with_labels=False, seed=11)
    together = _check_against_reference(model, batch, red, [0, 2])
    T = batch["input_ids"].shape[1]
    with torch.no_grad():
        for b, n in enumerate(lengths):
            cols = slice(T - n, T) if left_pad else slice(0, n)
            one = {k: batch[k][b:b + 1, cols] for k in ("input_ids", "attention_mask")} | {"images": batch["images"][b:b + 1]}
            alone = model(**one, reduction=red)
            assert torch.equal(alone.stages[0].keep[0], together.stages[0].keep[b]) or image_at[b] is None
            rows = together.token_valid[b].nonzero().flatten()
            torch.testing.assert_close(alone.logits[0][alone.token_valid[0]], together.logits[b][rows], atol=2e-5,
                                       rtol=1e-4)
    if left_pad:  # cached generation with twig-guided pruning equals full recompute
        cached = model.generate(**batch, max_new_tokens=5, reduction=red, eos_token_id=-1)
        recomputed = model.generate(**batch, max_new_tokens=5, reduction=red, eos_token_id=-1, use_cache=False)
        assert torch.equal(cached, recomputed)


def test_presets_budgets_and_refusals():
    assert [PRESETS[f"twigvlm-{b}"].keep_counts[0] for b in (192, 128, 64, 80, 48)] == [227, 134, 41, 64, 18]
    for b in (192, 128, 64, 80, 48):
        red = PRESETS[f"twigvlm-{b}"]
        assert red.prune_layers == (2,) and red.exit_layer == 25 and red.topk == "hard"
        assert abs(red.average_vision_tokens(32, 576) - b) < 0.4
        assert PRESETS[f"twigvlm-{b}-alltext"].score_query == "all_text"
    assert PRESETS["twigvlm-tiny"].average_vision_tokens(8, 64) == 26.0
    with pytest.raises(ReductionConfigError, match="cuts once"):
        ReductionConfig(prune_layers=(2, 4), keep_counts=(5, 2), score_layer="twig")
    model = tiny_model(seed=1, num_layers=6)
    batch = random_batch(model, [10], [2], seed=1)
    red = PRESETS["twigvlm-64"].with_overrides({"keep_counts": (5,), "exit_layer": 5})
    with pytest.raises(TwigConfigError, match="has no twig"):
        model(**batch, reduction=red)
    model.add_twig(TwigSpec(3, 1))
    with pytest.raises(TwigConfigError, match="prune_layers=3"):
        model(**batch, reduction=red)
    with pytest.raises(TwigConfigError, match="inject_layer=1"):
        model(**batch, reduction=red.with_overrides({"prune_layers": (3,), "inject_layer": 2}))
    with pytest.raises(TwigConfigError, match="initialised from base layers 5..7"):
        model.add_twig(TwigSpec(4, 3))


def test_zero3_parity_of_twig_calls():
    """Every rank calls the same modules: a twig schedule runs the twig with and without images; a schedule
    without the twig never runs it (its weights take no part, on every rank alike)."""
    model = _twig_model(2)
    counts: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=name: counts.__setitem__(n, counts.get(n, 0) + 1))
             for name, m in model.named_modules() if name]

    def run(red, image_at):
        counts.clear()
        with torch.no_grad():
            model(**random_batch(model, [12, 10], image_at, seed=2), reduction=red)
        return dict(counts)

    red = PRESETS["twigvlm-64"].with_overrides({"keep_counts": (5,), "exit_layer": 5})
    assert run(red, [2, 3]) == run(red, [None, None])
    assert run(red, [2, 3])["twig.layers.0.mlp"] == 1 and run(red, [2, 3])["twig.layers.1.self_attn.q_proj"] == 1
    hidrop = ReductionConfig(name="h", inject_layer=2, prune_layers=(3, 4), keep_counts=(8, 4), exit_layer=6)
    assert not any(n.startswith("twig") for n in run(hidrop, [2, 3]))
    for h in hooks:
        h.remove()


def test_save_load_and_initialisation(tmp_path):
    model = _twig_model(4, from_base=True)
    K = model.twig.after_layer
    for j, layer in enumerate(model.twig.layers):
        for (n, p), q in zip(layer.named_parameters(), model.model.layers[K + j].parameters()):
            assert torch.equal(p, q), n
    assert torch.equal(model.twig.head.weight, model.lm_head.weight)
    with torch.no_grad():
        model.twig.head.weight.add_(1.0)  # the saved twig is its own weights, not the base's again
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["twig"] == {"after_layer": 2, "num_layers": 2}
    loaded = LlavaLlamaForCausalLM.from_pretrained(tmp_path)
    for (n, p), q in zip(model.twig.state_dict().items(), loaded.twig.state_dict().values()):
        assert torch.equal(p, q), n


def test_twig_objective_trains_only_the_twig():
    model = _twig_model(6, from_base=True).train()
    model.requires_grad_(False)
    model.twig.requires_grad_(True)
    batch = random_batch(model, [16, 12], [3, None], seed=6)
    out = model(**batch, objective="twig")
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.twig.parameters())
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("twig."))
    # the shallow model is a plain LLaMA of base layers 1..K then the twig's layers, norm and head (stock
    # transformers forward on upstream's spliced sequence, right padding)
    from hidrop_reference import upstream_labels, upstream_splice
    from transformers import LlamaModel

    model.eval()
    lm = model.model
    with torch.no_grad():
        shallow = model(**batch, objective="twig")
        emb, valid, _, _ = upstream_splice(model, batch["input_ids"], batch["attention_mask"], batch["images"])
        layers, norm = lm.layers, lm.norm
        lm.layers = torch.nn.ModuleList([*layers[: model.twig.after_layer], *model.twig.layers])
        lm.norm = model.twig.norm
        try:
            h = LlamaModel.forward(lm, inputs_embeds=emb, attention_mask=valid.long(), use_cache=False).last_hidden_state
        finally:
            lm.layers, lm.norm = layers, norm
        ref = model.twig.head(h).float()
    labels = upstream_labels(batch["input_ids"], batch["attention_mask"], batch["labels"], model.config.num_vision_tokens)
    ref_loss = torch.nn.functional.cross_entropy(ref[:, :-1].reshape(-1, ref.shape[-1]), labels[:, 1:].reshape(-1),
                                                 ignore_index=-100)
    torch.testing.assert_close(shallow.loss, ref_loss, atol=1e-5, rtol=1e-5)


def _authors_twig(model, folder, first_index=0):
    """A twig folder as TwigVLM's training script leaves it: layers K+1..K+T renumbered, the final norm, the head."""
    from safetensors.torch import save_file

    K, T = 2, 2
    state = {f"model.layers.{first_index + j}.{n}": (p + 0.01 * (j + 1)).contiguous()
             for j in range(T) for n, p in model.model.layers[K + j].state_dict().items()}
    state["model.norm.weight"] = model.model.norm.weight.detach() * 1.5
    state["lm_head.weight"] = model.lm_head.weight.detach().flip(0).contiguous()
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llava_llama", "num_hidden_layers": K + T}))
    return state


@pytest.mark.parametrize("first_index", [0, 2], ids=["renumbered", "base-numbers"])
def test_convert_the_authors_twig(tmp_path, first_index):
    from llava.model.convert_twig import main

    base = tiny_model(seed=9, num_layers=8, image_size=64)  # the demo's shape: 8 layers, 64 vision tokens
    base.save_pretrained(tmp_path / "base")
    theirs = _authors_twig(base, tmp_path / "twig", first_index)
    out = tmp_path / "out"
    assert main(["--base", str(tmp_path / "base"), "--twig", str(tmp_path / "twig"), "--out", str(out),
                 "--reduction", "twigvlm-tiny", "--after-layer", "2"]) == 0
    model = LlavaLlamaForCausalLM.from_pretrained(out).eval()
    assert model.config.twig == {"after_layer": 2, "num_layers": 2}
    assert model.config.reduction_config.name == "twigvlm-tiny"
    for j in range(2):
        for n, p in model.twig.layers[j].state_dict().items():
            assert torch.equal(p, theirs[f"model.layers.{first_index + j}.{n}"]), n
    assert torch.equal(model.twig.norm.weight, theirs["model.norm.weight"])
    assert torch.equal(model.twig.head.weight, theirs["lm_head.weight"])
    for (n, p), q in zip(model.model.state_dict().items(), base.model.state_dict().values()):
        assert torch.equal(p, q), n  # the base is untouched
    batch = random_batch(model, [12], [2], with_labels=False, seed=9)
    red = model.config.reduction_config
    assert torch.equal(model.generate(**batch, reduction=red, max_new_tokens=4, eos_token_id=-1),
                       model.generate(**batch, reduction=red, max_new_tokens=4, eos_token_id=-1, speculative="twig"))


def test_convert_refuses_what_is_not_a_twig(tmp_path, capsys):
    from safetensors.torch import save_file

    from llava.model.convert_twig import main

    base = tiny_model(seed=9, num_layers=6)
    base.save_pretrained(tmp_path / "base")
    theirs = _authors_twig(base, tmp_path / "twig")
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file({**theirs, "model.embed_tokens.weight": base.model.embed_tokens.weight.detach()}, str(bad / "model.safetensors"))
    args = ["--base", str(tmp_path / "base"), "--out", str(tmp_path / "o")]
    assert main([*args, "--twig", str(bad)]) == 2 and "model.embed_tokens.weight" in capsys.readouterr().err
    gap = {k.replace("model.layers.1.", "model.layers.5."): v for k, v in theirs.items()}
    save_file(gap, str(bad / "model.safetensors"))
    assert main([*args, "--twig", str(bad)]) == 2 and "gaps" in capsys.readouterr().err
    assert main([*args, "--twig", str(tmp_path / "twig"), "--after-layer", "5"]) == 2
    assert "initialised from base layers 6..7" in capsys.readouterr().err


def test_efficiency_reports_the_twigs_extra_flops(capsys):
    from llava.eval.efficiency import block_flops, main

    assert main(["--llm", "vicuna-7b", "--schedule", "twigvlm-64", "--text-tokens", "60", "--drafts-per-token", "2"]) == 0
    out = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert out["avg_vision_tokens"] == "64.19" and out["vision_tflops"] == "0.42"
    d, m = 4096, 11008
    assert float(out["twig_prefill_vision_tflops"]) == pytest.approx(3 * block_flops(576, d, m) / 1e12, abs=1e-4)
    assert float(out["twig_prefill_tflops"]) == pytest.approx(3 * block_flops(636, d, m) / 1e12, abs=1e-4)
    per_draft = 5 * (4 * d * d + 2 * 636 * d + 3 * d * m) / 1e12  # base layers 1-2 and the twig's 3, one token
    assert float(out["draft_tflops_per_draft"]) == pytest.approx(per_draft, rel=1e-4)
    assert float(out["draft_tflops_per_generated_token"]) == pytest.approx(2 * per_draft, rel=1e-4)
    assert main(["--llm", "vicuna-7b", "--schedule", "tok64"]) == 0
    assert "twig" not in capsys.readouterr().out  # no twig, no twig figures


def test_report_notes_the_twigs_extra_cost_and_the_acceptance_rate(tmp_path):
    from llava.eval.report import build_report, rows_from_results

    run = {"reduction": PRESETS["twigvlm-64"].to_dict(), "avg_vision_tokens": 64.1875, "vision_tflops": 0.4214,
           "num_vision_tokens": 576, "llm": {"num_layers": 32, "hidden": 4096, "ffn": 11008},
           "twig": {"after_layer": 2, "num_layers": 3}, "twig_prefill_vision_tflops": 0.3579,
           "speculative_stats": {"acceptance_rate": 0.625, "tokens_per_second": 31.0}}
    for label, extra in (("off", {"reduction": PRESETS["off"].to_dict()}), ("twigvlm-64", run)):
        (tmp_path / label).mkdir()
        (tmp_path / label / "gqa.json").write_text(json.dumps({"bench": "gqa", "score": 60.0, "label": label,
                                                               "run": extra}))
    paths = build_report(rows_from_results(str(tmp_path)), "off", str(tmp_path / "out"), "table1")
    md = open(paths["md"]).read()
    assert "| twigvlm-64 | 64.19 | 0.42 |" in md
    assert ("- twigvlm-64: the twig (3 layers after layer 2) adds 0.36 vision TFLOPs at prefill, not in the TFLOPs "
            "column; speculative decoding kept 62.5% of the drafted tokens (31.0 tokens/s).") in md
