"""The fast decoder loop against the slow masking reference, on random tiny configs and mixed batches."""

from __future__ import annotations

import random

import pytest
import torch
from hidrop_reference import reference_forward, upstream_labels, upstream_splice
from tiny import random_batch, tiny_model
from transformers import LlamaModel

from llava.model import PRESETS, ReductionConfig


def fast_text_logits(model, out):
    """Text logits keyed by (row, k) for the row's k-th text token (the reference's keys)."""
    st = out.decoder.state
    S = st.valid.shape[1]
    cols = torch.arange(S).unsqueeze(0)
    rel = cols - st.vision_start.unsqueeze(1)
    is_vis = (rel >= 0) & (rel < st.num_vision)
    res = {}
    for b in range(st.valid.shape[0]):
        text = [j for j in range(S) if st.valid[b, j] and not is_vis[b, j]]
        for k, j in enumerate(text):
            res[(b, k)] = out.logits[b, j]
    return res


OPTIONS = {"score_query": ("last_nround", "last_1round", "all_text"), "score_weight": ("none", "l2"),
           "score_layer": ("next", "same"), "position_scheme": ("persistent", "compacted", "group")}


def random_schedule(rng: random.Random, L: int, N: int, topk: str, options: bool = False) -> ReductionConfig:
    inject = rng.randint(1, L - 2)
    exit_layer = rng.choice([rng.randint(inject + 2, L + 1), L + 1])
    candidates = list(range(inject, min(exit_layer - 1, L - 1) + 1))
    n_stages = rng.randint(0, min(3, len(candidates)))
    prune = sorted(rng.sample(candidates, n_stages))
    counts = sorted((rng.randint(0, N) for _ in prune), reverse=True)
    extra = {name: rng.choice(values) for name, values in OPTIONS.items()} if options else {}
    return ReductionConfig(name="rand", inject_layer=inject, prune_layers=tuple(prune), keep_counts=tuple(counts),
                           exit_layer=exit_layer if exit_layer <= L else -1, topk=topk, **extra)


@pytest.mark.parametrize("seed", range(24))
def test_fast_path_matches_reference(seed):
    """Seeds 0-11: HiDrop's defaults; 12-23: random scoring strategies and position schemes too."""
    rng = random.Random(seed)
    L = rng.randint(4, 7)
    attn = rng.choice(["sdpa", "eager"])
    model = tiny_model(seed=seed, num_layers=L, kv_heads=rng.choice([1, 2, 4]), attn=attn)
    N = model.config.num_vision_tokens
    red = random_schedule(rng, L, N, rng.choice(["hard", "diff"]), options=seed >= 12)
    B = rng.randint(1, 4)
    lengths = [rng.randint(6, 18) for _ in range(B)]
    image_at = [rng.choice([None, rng.randint(1, n - 3)]) for n in lengths]
    if all(a is None for a in image_at):
        image_at[0] = 1
    batch = random_batch(model, lengths, image_at, left_pad=rng.random() < 0.5, with_labels=rng.random() < 0.7, seed=seed)
    with torch.no_grad():
        out = model(**batch, reduction=red)
        keeps = [s.keep for s in out.stages]
        ref, ref_scores = reference_forward(model, batch, red, keeps)
    fast = fast_text_logits(model, out)
    assert set(fast) == set(ref), "both paths must produce logits for the same text tokens"
    for key in ref:
        torch.testing.assert_close(fast[key], ref[key], atol=2e-5, rtol=1e-4)
    # the fast path picked the top-k of the reference scores
    for s, k in enumerate(red.keep_counts):
        for b in range(B):
            sc = ref_scores[s][b]
            if image_at[b] is None or sc.numel() == 0:
                continue
            kept = set(keeps[s][b].tolist())
            assert len(kept) == k
            if k and k < sc.numel():
                worst_kept = min(float(sc[i]) for i in kept)
                best_dropped = max(float(sc[i]) for i in range(sc.numel()) if i not in kept)
                assert worst_kept >= best_dropped - 1e-6


@pytest.mark.parametrize("field,value", [(f, v) for f, values in OPTIONS.items() for v in values])
@pytest.mark.parametrize("left_pad", [False, True])
@pytest.mark.parametrize("labels", [True, False], ids=["train", "infer"])
def test_each_scoring_and_position_option_matches_reference(field, value, left_pad, labels):
    model = tiny_model(seed=21, num_layers=6, kv_heads=2)
    red = ReductionConfig(name="opt", inject_layer=2, prune_layers=(2, 4), keep_counts=(9, 3), exit_layer=6,
                          topk="diff", **{field: value})
    batch = random_batch(model, [20, 14, 17], [4, None, 2], left_pad=left_pad, with_labels=labels, seed=21)
    with torch.no_grad():
        out = model(**batch, reduction=red)
        keeps = [st.keep for st in out.stages]
        ref, ref_scores = reference_forward(model, batch, red, keeps)
    fast = fast_text_logits(model, out)
    assert set(fast) == set(ref)
    for key in ref:
        torch.testing.assert_close(fast[key], ref[key], atol=2e-5, rtol=1e-4)
    for s, k in enumerate(red.keep_counts):
        for b in (0, 2):  # the rows with an image: the kept tokens are the reference scores' top k
            sc = ref_scores[s][b]
            kept = set(keeps[s][b].tolist())
            assert len(kept) == k
            worst_kept = min(float(sc[i]) for i in kept)
            best_dropped = max(float(sc[i]) for i in range(sc.numel()) if i not in kept)
            assert worst_kept >= best_dropped - 1e-6


def vanilla_logits(model, batch):
    """Upstream LLaVA: splice, then the stock transformers LlamaModel forward."""
    emb, valid, _, _ = upstream_splice(model, batch["input_ids"], batch["attention_mask"], batch["images"])
    h = LlamaModel.forward(model.model, inputs_embeds=emb, attention_mask=valid.long()).last_hidden_state
    return model.lm_head(h).float(), valid


@pytest.mark.parametrize("reduction", [PRESETS["off"], ReductionConfig(name="inject1", inject_layer=1, exit_layer=-1)])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_off_equals_plain_llava(reduction, attn):
    model = tiny_model(seed=3, attn=attn)
    batch = random_batch(model, [15, 11, 13], [2, None, 4], seed=3)
    with torch.no_grad():
        out = model(**batch, reduction=reduction)
        ref, valid = vanilla_logits(model, batch)
    # right padding, nothing removed: the final token set is exactly the upstream spliced sequence
    S = min(ref.shape[1], out.logits.shape[1])
    m = valid[:, :S]
    torch.testing.assert_close(out.logits[:, :S][m], ref[:, :S][m], atol=2e-5, rtol=1e-4)
    labels = upstream_labels(batch["input_ids"], batch["attention_mask"], batch["labels"], model.config.num_vision_tokens)
    ref_loss = torch.nn.functional.cross_entropy(ref[:, :-1].reshape(-1, ref.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, ref_loss, atol=1e-5, rtol=1e-5)


def test_exact_k_and_labels_aligned():
    model = tiny_model(seed=1)
    red = ReductionConfig(name="t", inject_layer=2, prune_layers=(2, 4), keep_counts=(7, 2), exit_layer=7)
    batch = random_batch(model, [16, 12], [3, 2], seed=1)
    with torch.no_grad():
        out = model(**batch, reduction=red)
    assert [s.keep.shape[1] for s in out.stages] == [7, 2]
    for s in out.stages:
        assert torch.all(s.keep[:, 1:] > s.keep[:, :-1]), "kept indices stay in original order"
    # after exit only text remains; its labels are the original labels in order
    st = out.decoder.state
    assert st.num_vision == 0
    text_labels = batch["labels"][batch["input_ids"] != -200].view(2, -1)
    for b in range(2):
        got = st.labels[b][st.valid[b]]
        want = batch["labels"][b][(batch["attention_mask"][b] == 1) & (batch["input_ids"][b] != -200)]
        assert torch.equal(got, want)
    assert text_labels.shape[0] == 2


def test_batched_equals_single_forward():
    model = tiny_model(seed=5)
    red = ReductionConfig(name="t3", inject_layer=3, prune_layers=(3, 4, 5), keep_counts=(9, 4, 2), exit_layer=7)
    lengths, image_at = [17, 9, 13], [4, None, 2]
    batch = random_batch(model, lengths, image_at, seed=5)
    with torch.no_grad():
        full = fast_text_logits(model, model(**batch, reduction=red))
        for b in range(3):
            n = lengths[b]
            single = {k: batch[k][b : b + 1, :n] for k in ("input_ids", "attention_mask", "labels")}
            single["images"] = batch["images"][b : b + 1]
            one = fast_text_logits(model, model(**single, reduction=red))
            for (_, pos), v in one.items():
                torch.testing.assert_close(full[(b, pos)], v, atol=2e-5, rtol=1e-4)


def test_text_only_batch_runs_every_module_once_per_layer():
    """ZeRO-3 safety: the same modules run the same number of times with and without images."""
    model = tiny_model(seed=2)
    red = ReductionConfig(name="t3", inject_layer=3, prune_layers=(3, 4, 5), keep_counts=(8, 4, 2), exit_layer=7)
    counts: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=name: counts.__setitem__(n, counts.get(n, 0) + 1))
             for name, m in model.named_modules() if name]

    def run(image_at):
        counts.clear()
        model(**random_batch(model, [12, 10], image_at, seed=2), reduction=red).loss.backward()
        return dict(counts)

    with_images, without = run([2, 3]), run([None, None])
    for h in hooks:
        h.remove()
    assert with_images == without
    scorer_q = "model.layers.3.self_attn.q_proj"  # prune at layer 3 scores with layer 4 = index 3
    assert with_images[scorer_q] == 2  # once by the scorer, once by the layer itself


def test_diff_topk_gives_scorer_gradients_hard_does_not():
    model = tiny_model(seed=4).train()
    batch = random_batch(model, [16, 14], [2, 3], seed=4)
    scorer = model.model.layers[3].self_attn  # prune at layer 3 -> scored with layer 4 (index 3)
    grads = {}
    for mode in ("diff", "hard"):
        red = ReductionConfig(name=mode, inject_layer=2, prune_layers=(3,), keep_counts=(5,), exit_layer=7, topk=mode)
        seen = []
        hook = scorer.q_proj.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.requires_grad))
        model.zero_grad()
        model(**batch, reduction=red).loss.backward()
        hook.remove()
        # first call is the scorer (query rows), second is layer 4's own attention
        assert seen == [mode == "diff", True], mode
        grads[mode] = (scorer.q_proj.weight.grad.clone(), scorer.k_proj.weight.grad.clone())
    # Same selection (diff's forward is exactly hard top-k), so any gradient difference is the selection's own path.
    assert not torch.allclose(grads["diff"][0], grads["hard"][0], atol=1e-9, rtol=0)
    assert not torch.allclose(grads["diff"][1], grads["hard"][1], atol=1e-9, rtol=0)


def test_learned_threshold_gets_gradient_and_budget_loss():
    model = tiny_model(seed=6, reduction=ReductionConfig(name="t3", inject_layer=3, prune_layers=(3, 4, 5), keep_counts=(8, 4, 2), exit_layer=7, learn_threshold=True)).train()
    batch = random_batch(model, [14, 12], [2, 2], seed=6)
    out = model(**batch)
    assert out.budget_loss is not None
    out.loss.backward()
    a = model.reduction_thresholds.a
    assert a.grad is not None and torch.count_nonzero(a.grad) > 0
    assert all(s.soft_keep is not None for s in out.stages)


@pytest.mark.parametrize("keep", [(1, 1), (0, 0), (1, 0), (2, 1)])
@pytest.mark.parametrize("learn", [False, True])
def test_stages_keeping_zero_or_one_token_train_with_finite_gradients(keep, learn):
    """A stage after one that kept 0 or 1 token has nothing to rank; diff mode must neither divide by zero
    (1 - k / N with N = 0) nor take the std of a single score (NaN), and must keep exactly what hard mode keeps."""
    red = ReductionConfig(name="deg", inject_layer=2, prune_layers=(3, 5), keep_counts=keep, exit_layer=7,
                          learn_threshold=learn)
    model = tiny_model(seed=8, reduction=red).train()
    batch = random_batch(model, [20, 16], [3, 2], seed=8)
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert [s.keep.shape[1] for s in out.stages] == list(keep)
    with torch.no_grad():
        hard = model(**batch, reduction=ReductionConfig(**{**red.to_dict(), "topk": "hard", "learn_threshold": False}))
    for s_diff, s_hard in zip(out.stages, hard.stages):
        assert torch.equal(s_diff.keep, s_hard.keep)
    torch.testing.assert_close(out.logits.detach(), hard.logits)


def test_ties_are_deterministic():
    from llava.model.reduction.topk import differentiable_topk, hard_topk

    scores = torch.tensor([[0.5, 0.2, 0.5, 0.5, 0.1, 0.2]])
    assert hard_topk(scores, 2).tolist() == [[0, 2]]  # ties go to the lower index
    assert hard_topk(scores, 4).tolist() == [[0, 1, 2, 3]]
    sel = differentiable_topk(scores.clone().requires_grad_(True), 4)
    assert sel.keep.tolist() == [[0, 1, 2, 3]]
    assert torch.equal(sel.scale.detach(), torch.ones(1, 4))  # forward value exactly 1


def test_gradient_checkpointing_gives_the_same_gradients():
    red = ReductionConfig(name="t3", inject_layer=3, prune_layers=(3, 4, 5), keep_counts=(8, 4, 2), exit_layer=7)
    grads = []
    for ckpt in (False, True):
        model = tiny_model(seed=11).train()
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        batch = random_batch(model, [15, 12], [2, None], seed=11)
        model(**batch, reduction=red).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5, msg=n)


def test_forward_refuses_what_it_cannot_honour():
    model = tiny_model(seed=1)
    batch = random_batch(model, [10], [2], seed=1)
    with pytest.raises(ValueError, match="inputs_embeds"):
        model(**batch, inputs_embeds=torch.zeros(1, 10, 64))
    with pytest.raises(ValueError, match="output_attentions"):
        model(**batch, output_attentions=True)
    with pytest.raises(TypeError, match="pixel_values"):
        model(**batch, pixel_values=torch.zeros(1))
    assert model(**batch, output_attentions=None, use_cache=False).loss is not None
