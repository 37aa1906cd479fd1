"""The analysis tools (llava.analysis.*) end to end on a tiny checkpoint and a tiny GQA data root.

Each tool's JSON is checked against an independent computation: batch size 1, no padding, through the model's
public ``forward(..., observe=...)`` and plain loops, whereas the tools batch (left padding) and call the decoder
directly. The tiny LLM gets large random weights so that its hidden states, attention and answers depend on the
image (a default-initialised one answers every question with the same token).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from train_fixtures import build_gqa_eval, build_tiny_assets

from llava.analysis import early_exit, ilvas, kept_tokens, layer_dynamics
from llava.analysis.common import AnalysisError, cli, local_maxima, local_minima
from llava.constants import IMAGE_TOKEN_INDEX
from llava.eval.benchmarks import get_benchmark
from llava.eval.files import write_jsonl
from llava.eval.run_benchmark import vicuna_prompt
from llava.eval.scorers.gqa import convert_prediction
from llava.model.decoder import StageRecord
from llava.model.reduction.config import ReductionConfig
from llava.model.reduction.scoring import head_attention_to_vision

SCHEDULE = "inject_layer=2 prune_layers=3,5 keep_counts=8,4 exit_layer=7"  # 8 layers, 16 vision tokens
ZEROED_FROM = 6  # the "no difference" checkpoint: attention outputs of layers 6..8 are zero
FIX = Path(__file__).parent / "fixtures" / "eval"


def _save(model, assets: dict[str, str], out: Path) -> Path:
    from transformers import AutoTokenizer, CLIPImageProcessor

    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(assets["llm"]).save_pretrained(out)
    CLIPImageProcessor.from_pretrained(assets["clip"]).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from llava.train.train import build_model, parse_args

    root = tmp_path_factory.mktemp("analysis")
    assets = build_tiny_assets(root / "assets", num_samples=4, layers=8)
    args = parse_args(["--model_name_or_path", assets["llm"], "--vision_tower", assets["clip"], "--output_dir",
                       str(root / "train"), "--reduction", "tiny", "--reduction_overrides", SCHEDULE,
                       "--image_aspect_ratio", "pad", "--report_to", "none"])
    model = build_model(*args).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.model.layers.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.1, generator=g)
        for p in model.model.mm_projector.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5, generator=g)
        model.lm_head.weight.normal_(0, 1.0, generator=g)
    ckpt = _save(model, assets, root / "ckpt")
    with torch.no_grad():
        for layer in model.model.layers[ZEROED_FROM - 1 :]:
            layer.self_attn.o_proj.weight.zero_()
    flat = _save(model, assets, root / "ckpt_zeroed")
    data = build_gqa_eval(root / "data") / "gqa"
    return {"root": root, "ckpt": ckpt, "zeroed": flat, "qfile": data / "llava_gqa_testdev_balanced.jsonl",
            "images": data / "data" / "images", "annotation": data / "data" / "testdev_balanced_questions.json"}


def _common(env, ckpt: Path, out: Path, *extra: str) -> list[str]:
    return ["--model-path", str(ckpt), "--question-file", str(env["qfile"]), "--image-folder", str(env["images"]),
            "--output-dir", str(out), "--batch-size", "4", *extra]


def _assert_png(path: Path) -> None:
    img = Image.open(path).convert("L")
    assert min(img.size) > 100
    assert float(np.asarray(img, dtype=np.float32).std()) > 5.0, f"{path} looks blank"


def _samples(env):
    """(loaded tokenizer/model/processor, questions, images): the reference side, one sample at a time."""
    from llava.model.builder import load_pretrained_model

    tok, model, proc, _ = load_pretrained_model(str(env["ckpt"]), reduction="off")
    adapter = get_benchmark("gqa")
    qs = adapter.load_questions(str(env["qfile"]))
    return tok, model, proc, qs, [adapter.load_image(q, str(env["images"])) for q in qs]


def _single(tok, proc, text: str, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    from llava.mm_utils import process_images, tokenizer_image_token

    ids = tokenizer_image_token(vicuna_prompt(text, True), tok, return_tensors="pt").unsqueeze(0)  # [1, T]
    return ids, process_images([image], proc, "pad")  # [1, 3, H, W]


def _record_layers(model, ids, pixels, reduction, fn):
    """Runs the public forward with an observer; returns {layer: fn(layer, state, layer_input)}."""
    rec = {}

    def observe(i, layer, state, layer_input):
        rec[i] = fn(layer, state, layer_input)

    with torch.no_grad():
        model(ids, images=pixels, reduction=reduction, observe=observe)
    return rec


# --------------------------------------------------------------------------------------------------- curves
def test_local_extrema_definitions():
    layers = list(range(1, 10))
    v = [5, 3, 4, 4, 2, 2, 6, 1, 0]
    assert local_minima(layers, v) == [2, 5]  # layer 1 and 9 are endpoints; the flat valley counts at 5
    assert local_maxima(layers, v) == [3, 7]  # the flat top 3-4 counts once, at 3
    assert local_minima([1, 2, 3, 5, 6, 7], [3, 1, 2, 3, 1, 2]) == [2, 6]  # a gap in the layers splits the curve
    assert local_maxima([1, 2, 3], [None, 2.0, 1.0]) == []


# --------------------------------------------------------------------------------------------------- layer_dynamics
def test_layer_dynamics_matches_direct_computation(env, tmp_path):
    out = tmp_path / "ld"
    res = layer_dynamics.main(_common(env, env["ckpt"], out))
    data = json.loads((out / "layer_dynamics.json").read_text())
    assert data["suggested_inject_layer"] == res["suggested_inject_layer"]
    assert data["schedule"]["name"] == "off" and data["num_samples"] == 6
    _assert_png(out / "layer_dynamics.png")

    tok, model, proc, qs, imgs = _samples(env)
    N = model.config.num_vision_tokens
    grey = Image.new("RGB", (32, 32), (128, 128, 128))
    off = ReductionConfig()
    L = model.config.num_hidden_layers
    vis, txt, cross = np.zeros(L), np.zeros(L), np.zeros(L)
    for q, img in zip(qs, imgs):
        ids, pix = _single(tok, proc, q.text, img)
        _, ref_pix = _single(tok, proc, q.text, grey)
        ph = int((ids[0] == IMAGE_TOKEN_INDEX).nonzero())
        a = _record_layers(model, ids, pix, off, lambda layer, s, x: (x[0].clone(), s.hidden[0].clone()))
        b = _record_layers(model, ids, ref_pix, off, lambda layer, s, x: s.hidden[0].clone())
        S = ids.shape[1] - 1 + N  # the real tokens; the splice leaves one padding slot after them
        for i in range(1, L + 1):
            h_in, h_out = a[i]  # [S + 1, D] each
            cos = [float(F.cosine_similarity(h_in[t], h_out[t], dim=0)) for t in range(S)]
            vis[i - 1] += np.mean(cos[ph : ph + N]) / len(qs)
            txt[i - 1] += np.mean(cos[:ph] + cos[ph + N :]) / len(qs)
            after = range(ph + N, S)
            cross[i - 1] += np.mean([1 - float(F.cosine_similarity(h_out[t], b[i][t], dim=0)) for t in after]) / len(qs)
    np.testing.assert_allclose(data["s_intra_vision"], vis, atol=1e-4)
    np.testing.assert_allclose(data["s_intra_text"], txt, atol=1e-4)
    np.testing.assert_allclose(data["s_cross"], cross, atol=1e-4)
    assert max(data["s_cross"]) > 1e-3  # the image does move the instruction tokens in this model
    minima = [i for i in range(2, L) if vis[i - 1] < vis[i - 2] and vis[i - 1] < vis[i]]
    assert data["suggested_inject_layer"] == (minima[0] if minima else None)


# --------------------------------------------------------------------------------------------------- ilvas
def test_ilvas_matches_hand_computation(env, tmp_path, capsys):
    out = tmp_path / "il"
    ilvas.main(_common(env, env["ckpt"], out, "--ks", "5,10,20", "--ns", "1,2", "--select-k", "5", "--select-n", "1"))
    data = json.loads((out / "ilvas.json").read_text())
    _assert_png(out / "ilvas.png")
    assert data["window"] == {"inject_layer": 2, "exit_layer": 7, "vision_layers": [2, 3, 4, 5, 6]}
    assert data["ks"] == [5, 10] and {"k": 20, "reason": "K > 16 vision tokens"} in data["skipped"]
    curves = {(c["k"], c["n"]): c for c in data["curves"]}
    assert curves[(5, 1)]["layers"] == [2, 3, 4, 5] and curves[(5, 2)]["layers"] == [2, 3, 4]

    # By hand: batch 1, same-layer head attention through the public forward, explicit top-K and cosines.
    tok, model, proc, qs, imgs = _samples(env)
    window = ReductionConfig(inject_layer=2, exit_layer=7)
    at, n, K = 3, 1, 5
    per_sample = []
    for q, img in zip(qs, imgs):
        ids, pix = _single(tok, proc, q.text, img)
        query = model.prompt_query(ids, torch.ones_like(ids), window)

        def heads(layer, s, x, query=query):
            return None if s.num_vision == 0 else head_attention_to_vision(
                layer, model.model.rotary_emb, s, *query, hidden=x)[0].float()  # [H, N]

        att = _record_layers(model, ids, pix, window, heads)
        a, b = att[at], att[at + n]  # [H, N]
        mean = a.mean(0).tolist()
        top = sorted(range(len(mean)), key=lambda j: (-mean[j], j))[:K]
        cos = [float(a[:, j] @ b[:, j] / (a[:, j].norm() * b[:, j].norm())) for j in top]
        per_sample.append(sum(cos) / K)
    got = curves[(K, n)]["ilvas"][curves[(K, n)]["layers"].index(at)]
    assert got == pytest.approx(sum(per_sample) / len(per_sample), abs=1e-5)

    maxima = data["selection"]["prune_layers"]
    values = curves[(5, 1)]["ilvas"]
    assert maxima == [x for j, x in enumerate(curves[(5, 1)]["layers"][1:-1], start=1)
                      if values[j] > values[j - 1] and values[j] > values[j + 1]]
    printed = capsys.readouterr().out
    if maxima:
        assert f'REDUCTION_OVERRIDES="prune_layers={",".join(map(str, maxima))}"' in printed
        assert data["reduction_overrides"] in printed


def test_ilvas_vote_combines_curves():
    curves = [{"k": 5, "n": 1, "layers": [1, 2, 3, 4, 5], "local_maxima": [2, 4]},
              {"k": 5, "n": 2, "layers": [1, 2, 3, 4], "local_maxima": [2]},
              {"k": 10, "n": 1, "layers": [1, 2, 3, 4, 5], "local_maxima": [3]},
              {"k": 10, "n": 2, "layers": [], "local_maxima": []}]  # an empty curve does not vote
    assert ilvas.select_layers(curves, "vote", 5, 1) == [2]
    assert ilvas.select_layers(curves, "single", 10, 1) == [3]


# --------------------------------------------------------------------------------------------------- kept_tokens
def test_kept_tokens_masks_equal_stage_records(env, tmp_path):
    out = tmp_path / "kt"
    image = Image.open(next(env["images"].iterdir())).convert("RGB")
    path = tmp_path / "img.png"
    image.resize((40, 24)).save(path)  # not square: drawn over the padded, processed image
    res = kept_tokens.main(["--model-path", str(env["ckpt"]), "--image", str(path), "--question", "What digit?",
                            "--output-dir", str(out), "--hatch"])
    data = json.loads((out / "kept_tokens.json").read_text())
    _assert_png(out / "kept_tokens.png")
    assert data == json.loads(json.dumps(res))

    from llava.model.builder import load_pretrained_model

    tok, model, proc, _ = load_pretrained_model(str(env["ckpt"]))
    ids, pix = _single(tok, proc, "What digit?", Image.open(path).convert("RGB"))
    with torch.no_grad():
        stages = model(ids, images=pix).stages
    orig = list(range(16))
    expected = []
    for st in stages:
        orig = [orig[j] for j in st.keep[0].tolist()]
        expected.append({"layer": st.layer, "kept": len(orig), "of": 16, "kept_patches": orig})
    assert data["stages"] == expected and [s["kept"] for s in expected] == [8, 4]
    # inject 2, 16 on layers 2-3, 8 on 4-5, 4 on 6, exit 7: (2 * 16 + 2 * 8 + 4) / 8
    assert data["vision_tokens_per_layer"] == [0, 16, 16, 8, 8, 4, 0, 0]
    assert data["realised_avg_vision_tokens"] == data["scheduled_avg_vision_tokens"] == 6.5
    # MustDrop's counter: prune layers 3 and 5 count what they keep
    assert data["vision_tokens_per_layer_after_filter"] == [0, 16, 8, 8, 4, 4, 0, 0]
    assert data["realised_avg_vision_tokens_after_filter"] == 5.0
    assert data["patch_grid"]["size"] == 4 and not data["patch_grid"]["cls_token_first"]
    # The API draws over the tower's input: the 40x24 picture padded to a square with the processor's mean colour.
    from llava.analysis.common import LoadedModel

    api = kept_tokens.analyse_kept_tokens(LoadedModel.wrap(tok, model, proc), Image.open(path).convert("RGB"),
                                          "What digit?")
    assert api.image.shape == (32, 32, 3) and api.masks.sum(1).tolist() == [8, 4]
    np.testing.assert_allclose(api.image[0, 0], proc.image_mean, atol=2 / 255)
    assert api.kept_indices == [s["kept_patches"] for s in expected]


def test_kept_patch_api_composes_and_draws():
    stages = [StageRecord(layer=3, candidates=6, keep=torch.tensor([[0, 2, 3, 5], [1, 2, 4, 5]]), soft_keep=None),
              StageRecord(layer=5, candidates=4, keep=torch.tensor([[1, 3], [0, 1]]), soft_keep=None)]
    idx = kept_tokens.kept_original_indices(stages)
    assert idx[1].tolist() == [[2, 5], [1, 2]]
    with pytest.raises(ValueError, match="not consecutive"):
        kept_tokens.kept_original_indices(stages[1:] + stages[:1])
    # Rows that keep fewer tokens than the stage's width (keep_valid): filler entries are not patches.
    thresholded = [SimpleNamespace(layer=2, candidates=4, keep=torch.tensor([[1, 2, 3]]),
                                   keep_valid=torch.tensor([[True, True, False]])),
                   SimpleNamespace(layer=4, candidates=3, keep=torch.tensor([[1, 2]]), keep_valid=None)]
    assert kept_tokens.kept_original_indices(thresholded)[1].tolist() == [[2, -1]]
    assert kept_tokens.kept_patch_masks(thresholded, 4).tolist() == [[False, True, True, False],
                                                                      [False, False, True, False]]
    assert kept_tokens.stage_titles(thresholded, 4) == ["after layer 2: 2 of 4", "after layer 4: 1 of 4"]
    stages4 = [StageRecord(layer=3, candidates=4, keep=torch.tensor([[0, 3]]), soft_keep=None)]
    masks = kept_tokens.kept_patch_masks(stages4, 4)
    assert masks.tolist() == [[True, False, False, True]]
    img = np.zeros((20, 20, 3), dtype=np.uint8)
    img[:, :, 1] = 200
    fig = kept_tokens.draw_kept_maps(img, masks, kept_tokens.stage_titles(stages4, 4))
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["after layer 3: 2 of 4"]
    png = kept_tokens.kept_map_png_bytes(img, masks, ["after layer 3: 2 of 4"])
    assert png.startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="square patch grid"):
        kept_tokens.draw_kept_maps(img, torch.ones(1, 7, dtype=torch.bool), ["x"])


# --------------------------------------------------------------------------------------------------- early_exit
def test_early_exit_equals_baseline_where_exit_makes_no_difference(env, tmp_path):
    """Layers 6..8 of the zeroed checkpoint add nothing from attention, so removing any share of the vision tokens
    from layer 6 on cannot change an answer; before that it does."""
    from llava.analysis.common import LoadedModel
    from llava.model.builder import load_pretrained_model

    tok, model, proc, _ = load_pretrained_model(str(env["zeroed"]), reduction="off")
    backend = LoadedModel.wrap(tok, model, proc).backend
    adapter = get_benchmark("gqa")
    qs = adapter.load_questions(str(env["qfile"]))
    imgs = [adapter.load_image(q, str(env["images"])) for q in qs]
    # The tool's batches (size 4): the same left padding, hence bit-identical answers.
    answers = [a for s in (slice(0, 4), slice(4, 6)) for a in backend.generate([q.text for q in qs[s]], imgs[s], 2)]
    # Gold = the baseline's own answer for half of the questions: the baseline scores exactly 50.
    gold = {q.key: {"answer": convert_prediction(a) if i < 3 else "no such answer", "isBalanced": True}
            for i, (q, a) in enumerate(zip(qs, answers))}
    ann = tmp_path / "gold.json"
    ann.write_text(json.dumps(gold))
    out = tmp_path / "ee"
    res = early_exit.main(_common(env, env["zeroed"], out, "--annotation-file", str(ann), "--ratios", "0.5,1",
                                  "--layers", "2,6,8", "--max-new-tokens", "2"))
    _assert_png(out / "early_exit.png")
    assert json.loads((out / "early_exit.json").read_text()) == json.loads(json.dumps(res))
    assert res["baseline"] == 50.0 and res["layers"] == [2, 6, 8]
    texts = {}
    for f in (out / "early_exit_work" / "answers").iterdir():
        texts[f.stem] = [json.loads(line)["text"] for line in f.read_text().splitlines()]
    assert texts["baseline_off"] == answers
    for c in res["curves"]:
        assert c["accuracy"][1:] == [50.0, 50.0]
        assert c["reaches_baseline_at"] is not None and c["reaches_baseline_at"] <= ZEROED_FROM
        for layer in (6, 8):
            assert texts[f"r{c['ratio']:g}_l{layer}"] == answers
    assert [c["kept_tokens"] for c in res["curves"]] == [8, 0]
    assert res["suggested_exit_layer"] == res["curves"][1]["reaches_baseline_at"]
    # Not vacuous: removing vision earlier does change answers in this model.
    assert any(texts[f"r{r}_l2"] != answers for r in ("0.5", "1"))


def test_early_exit_schedules_follow_the_prune_convention():
    base = ReductionConfig(score_weight="l2")
    cut = early_exit.masking_schedule(base, 576, 0.75, 9)
    assert (cut.prune_layers, cut.keep_counts, cut.topk, cut.score_weight) == ((8,), (144,), "hard", "l2")
    assert cut.counts_per_layer(32, 576)[7:9] == [576, 144]  # layer 8 sees all, layer 9 (= l) the kept share
    exit_ = early_exit.masking_schedule(base, 576, 1.0, 25)
    assert exit_.counts_per_layer(32, 576)[23:25] == [576, 0]
    assert early_exit.kept_count(5, 0.5) == 3  # 2.5 rounds up
    assert early_exit.reaches_baseline([2, 3, 4, 5], [50, 60, 55, 60], 60, 0) == 5
    assert early_exit.reaches_baseline([2, 3, 4, 5], [50, 60, 55, 60], 60, 5) == 3
    assert early_exit.reaches_baseline([2, 3], [50, 40], 60, 0) is None


SUBSETS = {
    "gqa": ("gqa/llava_gqa_testdev_balanced.jsonl", {"annotation_file": "gqa/data/testdev_balanced_questions.json"}),
    "seed": ("seed/llava-seed-bench.jsonl", {"annotation_file": "seed/SEED-Bench.json"}),
    "vqav2": ("vqav2/v2_OpenEnded_mscoco_val2014_questions.json",
              {"annotation_file": "vqav2/v2_mscoco_val2014_annotations.json"}),
    "vizwiz": ("vizwiz/llava_val.jsonl", {"annotation_file": "vizwiz/val.json"}),
    "textvqa": ("textvqa/llava_textvqa_val_v051_ocr.jsonl", {"annotation_file": "textvqa/TextVQA_0.5.1_val.json"}),
    "pope": ("pope/llava_pope_test.jsonl", {"annotation_dir": "pope/coco"}),
    "mme": ("mme/llava_mme.jsonl", {"annotation_dir": "mme/MME_Benchmark_release_version"}),
    "sqa": ("sqa/llava_test_CQM-A.json", {"annotation_dir": "sqa"}),
    "mmbench": ("mmbench/mmbench_dev_20230712.tsv", {}),
    "mmstar": ("mmstar/MMStar.tsv", {}),
}


@pytest.mark.parametrize("bench", sorted(SUBSETS))
def test_early_exit_scores_a_subset_with_each_adapter(bench, tmp_path):
    """Answers to the first questions only score (the full-split scorers get a restricted ground truth)."""
    import argparse

    qfile, gt = SUBSETS[bench]
    adapter = get_benchmark(bench)
    qs = adapter.load_questions(str(FIX / qfile))[:3]
    args = argparse.Namespace(question_file=str(FIX / qfile), split=None,
                              annotation_file=str(FIX / gt["annotation_file"]) if "annotation_file" in gt else None,
                              annotation_dir=str(FIX / gt["annotation_dir"]) if "annotation_dir" in gt else None)
    inputs = early_exit.prepare_scoring(bench, args, qs, str(tmp_path / "work"))
    records = [{"question_id": q.qid, "prompt": q.text, "text": "A", **q.extra, **({"uid": q.uid} if q.uid else {})}
               for q in qs]
    write_jsonl(str(tmp_path / "a.jsonl"), records)
    score, _ = early_exit.score_answers(adapter, str(tmp_path / "a.jsonl"), inputs)
    assert math.isfinite(score)
    if bench == "gqa":  # exactly the three questions are scored: "a" is right for none of them
        assert json.loads(Path(inputs["annotation_file"]).read_text()).keys() == {q.key for q in qs}


# --------------------------------------------------------------------------------------------------- bad input
def test_bad_input_gives_clear_errors(env, tmp_path):
    ok = _common(env, env["ckpt"], tmp_path / "x")
    with pytest.raises(AnalysisError, match="--model-path .*nowhere.*not found"):
        layer_dynamics.main(["--model-path", str(tmp_path / "nowhere"), *ok[2:]])
    with pytest.raises(AnalysisError, match="--question-file .*missing.jsonl.*not found"):
        ilvas.main(_common(env, env["ckpt"], tmp_path / "x") + ["--question-file", str(tmp_path / "missing.jsonl")])
    qfile = tmp_path / "q.jsonl"
    qfile.write_text(json.dumps({"question_id": "1", "image": "gone.png", "text": "Q?"}) + "\n")
    with pytest.raises(AnalysisError, match="question '1'.*gone.png"):
        layer_dynamics.main(ok + ["--question-file", str(qfile)])
    with pytest.raises(AnalysisError, match="--inject 99 out of range.*1..8"):
        ilvas.main(ok + ["--inject", "99"])
    with pytest.raises(AnalysisError, match="every K exceeds the 16 vision tokens"):
        ilvas.main(ok + ["--ks", "50,100"])
    with pytest.raises(AnalysisError, match="every n is too large for the vision window 2..6"):
        ilvas.main(ok + ["--ns", "5"])
    with pytest.raises(AnalysisError, match="--annotation-file"):
        early_exit.main(ok)
    ann = ["--annotation-file", str(env["annotation"])]
    with pytest.raises(AnalysisError, match="l=1 cannot be swept"):
        early_exit.main(ok + ann + ["--layers", "1-3"])
    with pytest.raises(AnalysisError, match=r"--layers: layer\(s\) \[9\] out of range"):
        early_exit.main(ok + ann + ["--layers", "9"])
    with pytest.raises(AnalysisError, match=r"--ratios: \[1.5\] outside"):
        early_exit.main(ok + ann + ["--ratios", "1.5"])
    with pytest.raises(AnalysisError, match="--index 6 out of range"):
        kept_tokens.main(ok + ["--index", "6"])
    with pytest.raises(AnalysisError, match="--image .*nope.png.*not found"):
        kept_tokens.main(["--model-path", str(env["ckpt"]), "--image", str(tmp_path / "nope.png"), "--question", "Q",
                          "--output-dir", str(tmp_path)])


def test_cli_reports_errors_without_traceback(env, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(sys, "argv", ["ilvas", *_common(env, env["ckpt"], tmp_path), "--exit", "1"])
    with pytest.raises(SystemExit) as exc:
        cli(ilvas.main)
    assert exc.value.code == 2
    assert "--exit 1 out of range" in caplog.text


def test_reference_image_flag(env, tmp_path):
    """A reference identical to the sample image gives S_cross = 0 at every layer."""
    qfile = tmp_path / "one.jsonl"
    first = json.loads(env["qfile"].read_text().splitlines()[0])
    qfile.write_text(json.dumps(first) + "\n")
    shutil.copy(env["images"] / first["image"], tmp_path / "ref.jpg")
    res = layer_dynamics.main(_common(env, env["ckpt"], tmp_path / "o", "--question-file", str(qfile),
                                      "--reference-image", str(tmp_path / "ref.jpg")))
    assert max(abs(v) for v in res["s_cross"]) < 1e-5
    assert res["reference_image"].endswith("ref.jpg")
