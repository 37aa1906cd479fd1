"""VoCo-LLaMA in the decoder loop: the schedule, the token, the mask against a slow pair-by-pair reference, the
cropped cache, two-pass inference and its reuse in the chat, the CLI and the eval runner, and the accounting."""

from __future__ import annotations

import pytest
import torch
from hidrop_reference import upstream_splice
from tiny import random_batch, tiny_model

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model import PRESETS
from llava.model.compression_tokens import COMPRESS_TOKEN, compression_visibility, insert_compress_tokens
from llava.model.decoder import decode_step
from llava.model.kv_cache import cache_bytes
from llava.model.llava_llama import last_valid
from llava.model.reduction.config import ReductionConfigError, resolve_reduction
from llava.model.two_pass import ImageCache, compressed_prefill

N = 3  # VoCo tokens in the tiny tests (16 vision tokens per image)
VOCO_ID = 96  # an id of the tiny models' 97-token vocabulary stands in for <voco>


def voco(visibility: str = "code", n: int = N):
    return resolve_reduction("voco-2", {"compress_tokens": n, "compress_visibility": visibility})


def voco_model(visibility: str = "code", attn: str = "sdpa", seed: int = 7):
    model = tiny_model(seed=seed, reduction=voco(visibility), attn=attn)
    model.config.compress_token_id = VOCO_ID
    return model


MIXED = ([14, 9, 12], [3, None, 2])  # two image rows and a text-only row


# --------------------------------------------------------------------------------------------------- reference
def reference_logits(model, batch, red) -> dict[tuple[int, int], torch.Tensor]:
    """Slow forward: the VoCo tokens inserted by hand, upstream's splice, and an explicit visibility decision for
    every (query, key) pair. Returns the logits of each row's k-th text token (VoCo tokens count as text)."""
    ids, mask, images = batch["input_ids"], batch["attention_mask"], batch["images"]
    rows = []
    for b in range(ids.shape[0]):
        real = ids[b][mask[b].bool()].tolist()
        if IMAGE_TOKEN_INDEX in real:
            p = real.index(IMAGE_TOKEN_INDEX)
            real = real[: p + 1] + [model.config.compress_token_id] * red.compress_tokens + real[p + 1:]
        rows.append(real)
    T = max(len(r) for r in rows)
    new_ids = torch.zeros(len(rows), T, dtype=torch.long)
    new_mask = torch.zeros(len(rows), T, dtype=torch.long)
    for b, r in enumerate(rows):
        new_ids[b, : len(r)], new_mask[b, : len(r)] = torch.tensor(r), 1
    h, valid, vis, positions = upstream_splice(model, new_ids, new_mask, images)
    B, F_len, _ = h.shape
    allowed = torch.zeros(B, F_len, F_len, dtype=torch.bool)
    for b in range(B):
        cols = (vis[b] >= 0).nonzero().flatten().tolist()
        first_vision, end_vision = (cols[0], cols[-1] + 1) if cols else (None, None)
        for q in range(F_len):
            for k in range(q + 1):
                if not valid[b, k]:
                    continue
                if cols and q >= end_vision + red.compress_tokens:  # a row after the last VoCo token
                    hidden = k < end_vision if red.compress_visibility == "code" else first_vision <= k < end_vision
                    if hidden:
                        continue
                allowed[b, q, k] = True
    allowed |= ~allowed.any(-1, keepdim=True)
    additive = torch.zeros(B, 1, F_len, F_len).masked_fill(~allowed.unsqueeze(1), torch.finfo(torch.float32).min)
    lm = model.model
    for layer in lm.layers:
        h = layer(h, attention_mask=additive, position_ids=positions, position_embeddings=lm.rotary_emb(h, positions))
    logits = model.lm_head(lm.norm(h)).float()
    out = {}
    for b in range(B):
        text = [j for j in range(F_len) if valid[b, j] and vis[b, j] < 0]
        for k, j in enumerate(text):
            out[(b, k)] = logits[b, j]
    return out


def fast_logits(model, batch) -> dict[tuple[int, int], torch.Tensor]:
    out = model(**batch)
    state = out.decoder.state
    res = {}
    for b in range(out.logits.shape[0]):
        start = int(state.vision_start[b])
        text = [j for j in range(out.logits.shape[1])
                if out.token_valid[b, j] and not start <= j < start + state.num_vision]
        for k, j in enumerate(text):
            res[(b, k)] = out.logits[b, j]
    return res


@pytest.mark.parametrize("visibility", ["code", "paper"])
@pytest.mark.parametrize("attn,left_pad", [("sdpa", True), ("eager", True), ("sdpa", False)])
def test_forward_matches_pairwise_reference(visibility, attn, left_pad):
    model = voco_model(visibility, attn)
    batch = random_batch(model, *MIXED, left_pad=left_pad, seed=3)
    with torch.no_grad():
        fast, ref = fast_logits(model, batch), reference_logits(model, batch, voco(visibility))
    assert fast.keys() == ref.keys()
    for key in ref:
        torch.testing.assert_close(fast[key], ref[key], rtol=1e-4, atol=1e-4, msg=f"row/text token {key}")


def test_batch_equals_single_and_text_rows_are_untouched():
    model = voco_model("code")
    batch = random_batch(model, *MIXED, left_pad=True, seed=4)
    T = batch["input_ids"].shape[1]
    with torch.no_grad():
        together = fast_logits(model, batch)
        plain = fast_logits(model, {**batch, "reduction": PRESETS["off"]})
        for b, n in enumerate(MIXED[0]):
            one = {k: v[b: b + 1, T - n:] if k != "images" else v[b: b + 1] for k, v in batch.items()}
            alone = fast_logits(model, one)
            for (_, k), value in alone.items():
                torch.testing.assert_close(together[(b, k)], value, rtol=1e-4, atol=1e-4)
    # the text-only row carries no VoCo tokens and sees everything: exactly plain LLaVA's logits
    for k in range(MIXED[0][1]):
        torch.testing.assert_close(together[(1, k)], plain[(1, k)])


def test_training_loss_ignores_the_voco_tokens():
    model = voco_model("code")
    batch = random_batch(model, *MIXED, left_pad=False, seed=5)
    out = model(**batch)
    labels = out.decoder.state.labels
    assert out.loss is not None and torch.isfinite(out.loss)
    tokens = torch.zeros_like(labels, dtype=torch.bool)  # where the VoCo tokens sit: right after each vision span
    start = out.decoder.state.vision_start + out.decoder.state.num_vision
    for b in (0, 2):
        tokens[b, int(start[b]): int(start[b]) + N] = True
    assert (labels[tokens] == -100).all()
    out.loss.backward()
    assert model.model.embed_tokens.weight.grad[VOCO_ID].abs().sum() > 0  # the <voco> row learns


def test_insert_compress_tokens_keeps_each_rows_padding_side():
    ids = torch.tensor([[0, 0, 1, IMAGE_TOKEN_INDEX, 5], [0, 1, 7, 8, 9], [1, 4, IMAGE_TOKEN_INDEX, 6, 7]])
    mask = (torch.arange(5) >= torch.tensor([2, 1, 0]).unsqueeze(1)).long()
    labels = torch.where(ids == 9, 9, -100)
    new_ids, new_mask, new_labels = insert_compress_tokens(ids, mask, labels, 50, 2)
    assert new_ids.tolist() == [[0, 0, 1, IMAGE_TOKEN_INDEX, 50, 50, 5], [0, 0, 0, 1, 7, 8, 9],
                                [1, 4, IMAGE_TOKEN_INDEX, 50, 50, 6, 7]]
    assert new_mask.tolist() == [[0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1], [1] * 7]
    assert new_labels.tolist()[1][-1] == 9 and (new_labels[new_ids == 50] == -100).all()
    right = torch.tensor([[1, IMAGE_TOKEN_INDEX, 5, 0], [1, 7, 8, 9]])
    r_ids, r_mask, _ = insert_compress_tokens(right, (right != 0).long(), None, 50, 1)
    assert r_ids.tolist() == [[1, IMAGE_TOKEN_INDEX, 50, 5, 0], [1, 7, 8, 9, 0]]
    assert r_mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]]


# --------------------------------------------------------------------------------------------------- generation
def _prefill_then_steps(model, batch, red, tokens):
    """[B, n + 1, V]: the two-pass prefill's logits, then decode_step's after each of ``tokens`` [B, n]."""
    pre = compressed_prefill(model, batch["input_ids"], batch["attention_mask"], batch["images"], red)
    out = [pre.logits]
    for t in range(tokens.shape[1]):
        h = decode_step(model.model, model.model.embed_tokens(tokens[:, t]).unsqueeze(1), pre.generation)
        out.append(model.lm_head(h[:, -1]).float())
    return torch.stack(out, 1), pre


@pytest.mark.parametrize("visibility", ["code", "paper"])
def test_two_pass_and_cached_decoding_equal_one_pass(visibility):
    """Two-pass prefill + 10 cached steps give the one-pass forward's logits at every position (batch 3, mixed,
    left-padded), and cached greedy generation equals full recompute under the same visibility."""
    model = voco_model(visibility)
    red = voco(visibility)
    batch = random_batch(model, *MIXED, left_pad=True, with_labels=False, seed=6)
    tokens = torch.randint(3, 90, (3, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cached, _ = _prefill_then_steps(model, batch, red, tokens)
        ids = torch.cat([batch["input_ids"], tokens], 1)
        mask = torch.cat([batch["attention_mask"], torch.ones_like(tokens)], 1)
        one_pass = model(ids, mask, images=batch["images"])
    # left padding: every row's last 11 columns are its last prompt token and the 10 given tokens
    torch.testing.assert_close(cached, one_pass.logits[:, -11:], rtol=1e-4, atol=1e-4)
    greedy = model.generate(**batch, max_new_tokens=12, eos_token_id=-1)
    assert torch.equal(greedy, model.generate(**batch, max_new_tokens=12, eos_token_id=-1, use_cache=False))


@pytest.mark.parametrize("visibility,kept_prefix", [("code", False), ("paper", True)])
def test_cache_holds_only_the_visible_keys(visibility, kept_prefix):
    """After prefill each layer holds N VoCo + text tokens (code: only the text after the image; paper: the
    prefix too), not the 16 vision tokens: measured bytes equal that count exactly."""
    model = voco_model(visibility)
    red = voco(visibility)
    prefix, suffix = 4, 6  # BOS + 2 tokens + <image>, then 6 tokens
    batch = random_batch(model, [prefix + suffix], [prefix - 1], left_pad=True, with_labels=False, seed=8)
    with torch.no_grad():
        pre = compressed_prefill(model, batch["input_ids"], batch["attention_mask"], batch["images"], red)
    cfg = model.config
    per_token = 2 * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4  # K + V, fp32
    text = suffix + (prefix - 1 if kept_prefix else 0)
    assert cache_bytes(pre.generation) == cfg.num_hidden_layers * (N + text) * per_token
    assert pre.generation.key_valid[0].all() and pre.vision_counts.entering.tolist() == [[16 + N] * 8]


def test_image_cache_reuse_equals_fresh_compression():
    model = voco_model("paper")
    red = voco("paper")
    first = random_batch(model, [12], [3], left_pad=True, with_labels=False, seed=9)
    second = random_batch(model, [9], [3], left_pad=True, with_labels=False, seed=10)
    second["input_ids"][0, :4] = first["input_ids"][0, :4]  # same prefix and image, another question
    second["images"] = first["images"]
    cache = ImageCache()
    with torch.no_grad():
        compressed_prefill(model, first["input_ids"], first["attention_mask"], first["images"], red, cache)
        reused = compressed_prefill(model, second["input_ids"], second["attention_mask"], second["images"], red, cache)
        fresh = compressed_prefill(model, second["input_ids"], second["attention_mask"], second["images"], red)
        one_pass = model(**second)
    assert reused.reused.tolist() == [True] and (cache.hits, cache.misses) == (1, 1)
    torch.testing.assert_close(reused.logits, fresh.logits)
    last = int(last_valid(one_pass.token_valid)[0])
    torch.testing.assert_close(reused.logits[0], one_pass.logits[0, last], rtol=1e-4, atol=1e-4)
    # another prefix or schedule is another compression; two rows about one image compress it once
    other = second["input_ids"].clone()
    other[0, 1] = (other[0, 1] + 1) % 90 + 3
    pair = {"input_ids": torch.cat([other, other]), "attention_mask": torch.cat([second["attention_mask"]] * 2),
            "images": torch.cat([second["images"]] * 2)}
    with torch.no_grad():
        out = compressed_prefill(model, pair["input_ids"], pair["attention_mask"], pair["images"], red, cache)
    assert out.reused.tolist() == [False, False] and len(cache) == 2
    model.generate(**second, max_new_tokens=2, image_cache=cache)
    assert cache.hits == 2
    # a prompt that ends with its image answers from the last VoCo token, cached or not
    ends = {"input_ids": first["input_ids"][:, :4], "attention_mask": first["attention_mask"][:, :4],
            "images": first["images"]}
    with torch.no_grad():
        for image_cache in (None, cache):
            out = compressed_prefill(model, ends["input_ids"], ends["attention_mask"], ends["images"], red, image_cache)
            one_pass = model(**ends)
            last = int(last_valid(one_pass.token_valid)[0])  # a row without padding keeps a free slot on the right
            torch.testing.assert_close(out.logits[0], one_pass.logits[0, last], rtol=1e-4, atol=1e-4)


def test_flash_attention_refuses_the_one_pass_mask_but_not_compression():
    import dataclasses

    model = voco_model("code")
    batch = random_batch(model, [12], [3], left_pad=True, with_labels=False, seed=11)
    with torch.no_grad():
        state = model(**batch).decoder.state
        model.config._attn_implementation = "flash_attention_2"
        with pytest.raises(ValueError, match="flash attention.*sdpa"):  # the mask is refused before any kernel
            model(**batch)
    # the compression pass (nothing after the VoCo tokens) needs no pair-wise mask, so flash runs it
    end = int(state.vision_start[0]) + state.num_vision + N
    cut = dataclasses.replace(state, valid=state.valid & (torch.arange(state.valid.shape[1]) < end))
    assert compression_visibility(cut, torch.tensor([True]), voco(), "flash_attention_2") is None
    assert compression_visibility(state, torch.tensor([True]), voco(), "flash_attention_2") is not None


# --------------------------------------------------------------------------------------------------- schedule
def test_schedule_presets_accounting_and_refusals():
    for n in (80, 64, 48, 2):
        red = PRESETS[f"voco-{n}"]
        assert red.compress_tokens == n and red.compress_visibility == "code" and not red.is_off
        assert red.average_visible_tokens(32, 576) == n and red.average_vision_tokens(32, 576) == 576 + n
    assert resolve_reduction("off", "compress_tokens=26 compress_visibility=paper").compress_visibility == "paper"
    for bad, named in (("prune_layers=2 keep_counts=8", "prune_layers"), ("inject_layer=3", "inject_layer"),
                       ("exit_layer=5", "exit_layer"), ("position_scheme=group", "position_scheme"),
                       ("compress_visibility=both", "compress_visibility"), ("compress_tokens=-1", ">= 0")):
        with pytest.raises(ReductionConfigError, match=named):
            resolve_reduction("voco-64", bad)
    plain = tiny_model(seed=1)  # never trained with <voco>: a VoCo schedule is refused with the reason
    with pytest.raises(ReductionConfigError, match="compress_token_id"):
        plain.set_reduction(voco())


def test_efficiency_reports_both_counts_and_both_costs(capsys):
    from llava.eval.efficiency import main

    assert main(["--llm", "vicuna-7b", "--schedule", "voco-64", "--text-tokens", "100"]) == 0
    out = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert out["visible_vision_tokens"] == "64.00" and out["avg_vision_tokens"] == "640.00"
    assert out["reuse_vision_tflops"] == "0.00"
    assert float(out["reuse_total_tflops"]) < float(out["total_tflops"]) / 5  # no image at all on reuse


# --------------------------------------------------------------------------------------------------- the token
@pytest.fixture(scope="module")
def voco_checkpoint(tiny_assets, tmp_path_factory):
    """A VoCo checkpoint as the training entry point builds and saves it: <voco> added to the tokenizer and both
    embeddings (random rows), the id in config.json."""
    from transformers import CLIPImageProcessor

    from llava.tokenizer_loading import load_tokenizer
    from llava.train.train import build_model, parse_args

    root = tmp_path_factory.mktemp("voco")
    args = parse_args(["--model_name_or_path", tiny_assets["llm"], "--vision_tower", tiny_assets["clip"],
                       "--output_dir", str(root / "out"), "--reduction", "voco-2", "--reduction_overrides",
                       f"compress_tokens={N}", "--report_to", "none"])
    tokenizer = load_tokenizer(tiny_assets["llm"])
    vocab = len(tokenizer)
    torch.manual_seed(0)
    model = build_model(*args, tokenizer=tokenizer).eval()
    assert tokenizer.convert_tokens_to_ids(COMPRESS_TOKEN) == vocab == model.config.compress_token_id
    row = model.get_input_embeddings().weight[vocab]
    assert 0.005 < float(row.detach().std()) < 0.05  # random init (std initializer_range), not the mean of the others
    model.save_pretrained(root / "full")
    tokenizer.save_pretrained(root / "full")
    CLIPImageProcessor.from_pretrained(tiny_assets["clip"]).save_pretrained(root / "full")
    return {"path": str(root / "full"), "llm": tiny_assets["llm"], "images": tiny_assets["images"], "vocab": vocab}


def test_token_is_saved_and_reloaded_and_checked(voco_checkpoint, tmp_path):
    import shutil

    from llava.model.builder import CheckpointError, load_pretrained_model

    tokenizer, model, _, _ = load_pretrained_model(voco_checkpoint["path"])
    assert model.config.compress_token_id == voco_checkpoint["vocab"] == tokenizer.convert_tokens_to_ids(COMPRESS_TOKEN)
    assert model.config.reduction_config.compress_tokens == N
    assert model.get_input_embeddings().weight.shape[0] == voco_checkpoint["vocab"] + 1
    # the weights with the base LLM's tokenizer files (no <voco>): refused, naming the mismatch
    from pathlib import Path

    broken = tmp_path / "broken"
    shutil.copytree(voco_checkpoint["path"], broken)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
        (broken / name).unlink(missing_ok=True)
        if (Path(voco_checkpoint["llm"]) / name).exists():
            shutil.copy(Path(voco_checkpoint["llm"]) / name, broken / name)
    with pytest.raises(CheckpointError, match="compress_token_id"):
        load_pretrained_model(str(broken))


def _image(voco_checkpoint, processor, model, name="0000.png"):
    from llava.mm_utils import load_image, process_images

    return process_images([load_image(f"{voco_checkpoint['images']}/{name}")], processor, "pad").to(model.dtype)


def test_chat_follow_ups_reuse_the_compressed_image(voco_checkpoint):
    """The web demo's second turn and the terminal chat's second question skip the image: same tokens as a
    fresh two-pass generate of the same prompt."""
    import argparse

    from llava.model.builder import load_pretrained_model
    from llava.serve import cli
    from llava.serve.chat_engine import ChatEngine, parse_sampling

    tokenizer, model, processor, context_len = load_pretrained_model(voco_checkpoint["path"])
    pixels = _image(voco_checkpoint, processor, model)
    engine = ChatEngine(tokenizer, model, processor, int(context_len))
    state = engine.new_state()
    sampling = parse_sampling(0, 1, 5, seed=0)
    answers = []
    for question in ("What digit is this?", "Is it even?"):
        turn = engine.begin_turn(state, question, sampling)
        answer = list(engine.answer_stream(pixels, turn, engine.loaded_schedule, sampling))[-1]
        engine.finish_turn(state, turn, answer, question)
        answers.append((turn, answer))
    assert [a.prefill.image_reused for _, a in answers] == [False, True]
    assert "reused" in engine.stats_markdown(answers[1][1])
    fresh = model.generate(answers[1][0].input_ids, images=pixels, max_new_tokens=5, eos_token_id=tokenizer.eos_token_id)
    assert answers[1][1].tokens == fresh[0, : len(answers[1][1].tokens)].tolist()

    caches = []
    real = model.generate

    def spy(*a, **kw):
        caches.append(kw["image_cache"])
        return real(*a, **kw)

    model.generate = spy
    questions = iter(["What digit is this?", "Is it even?", ""])
    args = argparse.Namespace(conv_mode="vicuna_v1", max_new_tokens=3, temperature=0.0)
    assert cli.chat(args, tokenizer, model, pixels, int(context_len), lambda _: next(questions)) == 0
    model.generate = real
    assert len(caches) == 2 and caches[0] is caches[1]
    assert (caches[0].hits, caches[0].misses) == (1, 1)  # the follow-up question found the compressed image


def test_eval_runner_reuses_images_with_the_flag(voco_checkpoint):
    from PIL import Image

    from llava.eval.run_benchmark import LlavaBackend
    from llava.model.builder import load_pretrained_model

    tokenizer, model, processor, _ = load_pretrained_model(voco_checkpoint["path"])
    image = Image.open(f"{voco_checkpoint['images']}/0000.png").convert("RGB")
    texts = ["What digit is this?", "Is it even?", "What comes after one?"]
    cache = ImageCache()
    with_cache = LlavaBackend(model, tokenizer, processor, image_cache=cache)
    plain = LlavaBackend(model, tokenizer, processor)
    first = with_cache.generate_with_stats(texts[:1], [image], 4)
    second = with_cache.generate_with_stats(texts[1:], [image, None], 4)
    assert (cache.hits, cache.misses) == (1, 1)
    assert first[0] + second[0] == plain.generate(texts, [image, image, None], 4)
    assert second[1][0]["vision_tokens"] == [16 + N] * 4 and second[1][1]["vision_tokens"] == [0] * 4


# --------------------------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_finetune_script_trains_voco_from_an_upstream_layout_projector(tiny_assets, tiny_pretrained, tmp_path):
    """`REDUCTION=voco-2 bash scripts/finetune.sh` (ZeRO-3, 2 CPU ranks, 2 steps) from a stage-1 projector in
    upstream's layout (fp16 `model.mm_projector.*`): the checkpoint holds <voco> in its tokenizer, config and both
    embeddings, reloads with it, and answers through the two-pass path."""
    from train_fixtures import finetune_env, logged_losses, run_script

    from llava.model.builder import load_pretrained_model

    state = torch.load(tiny_pretrained / "mm_projector.bin", weights_only=True)
    upstream = tmp_path / "pretrain"
    upstream.mkdir()
    torch.save({k: v.half() for k, v in state.items() if k.startswith("model.mm_projector.")},
               upstream / "mm_projector.bin")
    out = tmp_path / "voco"
    run_script("finetune.sh", finetune_env(tiny_assets, upstream, REDUCTION="voco-2", REDUCTION_OVERRIDES=f"compress_tokens={N}",
                                           MAX_STEPS="2", OUTPUT_DIR=str(out)))
    assert all(torch.isfinite(torch.tensor(v)) for v in logged_losses(out).values())
    tokenizer, model, processor, _ = load_pretrained_model(str(out))
    token_id = tokenizer.convert_tokens_to_ids(COMPRESS_TOKEN)
    assert model.config.compress_token_id == token_id == model.get_input_embeddings().weight.shape[0] - 1
    assert model.lm_head.weight.shape[0] == token_id + 1
    assert model.config.reduction_config.compress_tokens == N
    from llava.conversation import get_conv_template
    from llava.mm_utils import load_image, process_images, tokenizer_image_token

    conv = get_conv_template("vicuna_v1")
    conv.append_message(conv.roles[0], "<image>\nWhat digit is this?")
    conv.append_message(conv.roles[1], None)
    ids = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt").unsqueeze(0)
    pixels = process_images([load_image(f"{tiny_assets['images']}/0000.png")], processor, "pad")
    cached = model.generate(ids, images=pixels, max_new_tokens=4, eos_token_id=-1)
    assert torch.equal(cached, model.generate(ids, images=pixels, max_new_tokens=4, eos_token_id=-1, use_cache=False))


def test_report_shows_what_the_text_sees_and_what_the_layers_process(tmp_path):
    import json

    from llava.eval.report import build_report, order_rows, rows_from_results

    for label, score, run in (("off", 30.0, {"avg_vision_tokens": 64.0, "vision_tflops": 1e-4}),
                              ("voco", 27.0, {"avg_vision_tokens": 90.0, "visible_vision_tokens": 26.0,
                                              "vision_tflops": 1.6e-4}),
                              ("hidrop", 35.0, {"avg_vision_tokens": 26.0, "vision_tflops": 4e-5})):
        (tmp_path / "res" / label).mkdir(parents=True)
        (tmp_path / "res" / label / "gqa.json").write_text(json.dumps(
            {"bench": "gqa", "score": score, "label": label, "run": run}))
    rows = order_rows(rows_from_results(str(tmp_path / "res")), "off")
    assert [r.label for r in rows] == ["off", "hidrop", "voco"]  # compared at the 26 tokens the text sees
    paths = build_report(rows, "off", str(tmp_path / "out"), "t")
    md = open(paths["md"]).read()
    assert "| voco | 26 seen (90 processed) |" in md and "| off | 64 |" in md
