"""The CPU demo's assets: upstream file formats, no train/eval leakage, loadable models.

One tiny build (a few dozen samples, tower pretraining and probes off) is shared by the module.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from llava.demo import digits
from llava.demo.build_assets import build_assets, build_parser
from llava.demo.eval_sets import POPE_SPLITS
from llava.demo.layout import BuildConfig, DemoPaths
from llava.demo.train_data import build_finetune, conversation_qas

SA = "\n" + digits.SHORT_ANSWER_PROMPT
OL = "\n" + digits.OPTION_LETTER_PROMPT
SHORT_VOCAB = {str(d) for d in range(10)} | {"yes", "no"}


def _cfg(out: Path) -> BuildConfig:
    return BuildConfig(
        out=out,
        seed=0,
        num_pretrain=12,
        num_finetune=70,  # 3% text-only -> 2 samples
        num_eval=20,
        num_pope=24,
        num_seed=8,
        tower_steps=0,
        probe=False,
        progress=False,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoPaths, dict[str, Any]]:
    out = tmp_path_factory.mktemp("demo")
    manifest = build_assets(_cfg(out))
    return DemoPaths(out), manifest


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _check_image(path: Path) -> None:
    assert path.is_file(), path
    with Image.open(path) as img:
        assert img.mode == "RGB" and img.size == (digits.IMAGE_SIZE, digits.IMAGE_SIZE)


def _check_conversation(conv: list[dict[str, str]], has_image: bool) -> None:
    assert len(conv) >= 2 and len(conv) % 2 == 0
    assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
    assert all(isinstance(t["value"], str) and t["value"].strip() for t in conv)
    # Upstream: the placeholder appears once, in the first human turn (at its start or end).
    first = conv[0]["value"]
    if has_image:
        assert first.count("<image>") == 1 and (first.startswith("<image>\n") or first.endswith("\n<image>"))
    assert all("<image>" not in t["value"] for t in conv[1 if has_image else 0 :])


def test_pretrain_lcs558k_format(built: tuple[DemoPaths, dict[str, Any]]) -> None:
    paths, _ = built
    records = json.loads(paths.pretrain_json.read_text())
    assert len(records) == 12
    for r in records:
        assert set(r) == {"id", "image", "conversations"}
        assert len(r["conversations"]) == 2 and r["conversations"][0]["value"].startswith("<image>\n")
        _check_conversation(r["conversations"], has_image=True)
        _check_image(paths.pretrain_images / r["image"])
    assert len({r["id"] for r in records}) == len(records)


def test_finetune_mix665k_format(built: tuple[DemoPaths, dict[str, Any]]) -> None:
    paths, _ = built
    records = json.loads(paths.finetune_json.read_text())
    assert len(records) == 70 and len({r["id"] for r in records}) == 70
    text_only = [r for r in records if "image" not in r]
    assert len(text_only) == 2  # a few percent, no "image" key at all
    assert any(len(r["conversations"]) > 2 for r in records)  # multi-turn present
    for r in records:
        assert set(r) <= {"id", "image", "conversations"}
        _check_conversation(r["conversations"], has_image="image" in r)
        if "image" in r:
            assert r["image"].startswith("digits/train/")  # relative to data/, like coco/train2017/...
            _check_image(paths.data / r["image"])
        for q, a in zip(r["conversations"][0::2], r["conversations"][1::2]):
            if q["value"].replace("\n<image>", "").endswith(SA):
                assert a["value"] in SHORT_VOCAB
            if q["value"].replace("\n<image>", "").endswith(OL):
                assert a["value"] in digits.OPTION_LETTERS


def test_no_digit_scan_shared_between_train_and_eval(built: tuple[DemoPaths, dict[str, Any]]) -> None:
    paths, manifest = built
    pools = digits.split_digit_sources(0, _cfg(paths.root).eval_fraction)
    assert not set(pools["train"].sources) & set(pools["eval"].sources)
    assert len(pools["train"]) + len(pools["eval"]) == 1797
    registry = json.loads(paths.image_registry.read_text())
    used = {s: {x for e in registry[s].values() for x in e["sources"]} for s in ("train", "eval")}
    assert used["train"] and used["eval"] and not used["train"] & used["eval"]
    assert used["train"] <= set(pools["train"].sources.tolist())
    assert used["eval"] <= set(pools["eval"].sources.tolist())
    assert manifest["digit_split"]["overlap"] == 0 and manifest["digit_split"]["image_overlap"] == 0


def test_gqa_files_match(built: tuple[DemoPaths, dict[str, Any]]) -> None:
    paths, _ = built
    lines = _jsonl(paths.gqa_jsonl)
    official = json.loads(paths.gqa_questions.read_text())
    assert len(lines) == 20
    assert [line["question_id"] for line in lines] == list(official)  # same ids, same order, strings
    for line in lines:
        assert set(line) == {"question_id", "image", "text", "category"}
        assert isinstance(line["question_id"], str) and line["text"].endswith(SA)
        entry = official[line["question_id"]]
        for key in ("imageId", "question", "answer", "fullAnswer", "isBalanced", "types", "groups", "semantic"):
            assert key in entry
        assert set(entry["types"]) == {"structural", "semantic", "detailed"}
        assert line["text"] == entry["question"] + SA and line["image"] == entry["imageId"] + ".png"
        assert entry["answer"] in SHORT_VOCAB and entry["isBalanced"] is True
        assert line["category"] in digits.GQA_CATEGORY_WEIGHTS
        _check_image(paths.gqa_images / line["image"])


def test_pope_files_align(built: tuple[DemoPaths, dict[str, Any]]) -> None:
    paths, _ = built
    lines = _jsonl(paths.pope_jsonl)
    assert len({line["question_id"] for line in lines}) == len(lines)  # eval_pope indexes by id
    assert Counter(line["category"] for line in lines) == {split: 8 for split in POPE_SPLITS}
    registry = json.loads(paths.image_registry.read_text())["eval"]
    for split in POPE_SPLITS:
        ann = _jsonl(paths.pope_annotation(split))
        mine = [line for line in lines if line["category"] == split]
        assert [a["question_id"] for a in ann] == list(range(1, len(ann) + 1))
        # eval_pope pairs answers and labels by position within the category.
        assert [(m["image"], m["text"]) for m in mine] == [(a["image"], a["text"] + SA) for a in ann]
        assert Counter(a["label"] for a in ann) == {"yes": 4, "no": 4}
        for a in ann:
            registry_key = str((paths.pope_images / a["image"]).relative_to(paths.data))
            digit = int(a["text"].split()[3])  # "Is there a 7 in the image?"
            labels = registry[registry_key]["labels"]
            assert (digit in labels) == (a["label"] == "yes")
            _check_image(paths.pope_images / a["image"])


def test_seed_files_match(built: tuple[DemoPaths, dict[str, Any]]) -> None:
    paths, _ = built
    lines = _jsonl(paths.seed_jsonl)
    ann = json.loads(paths.seed_annotation.read_text())
    assert set(ann) == {"question_type", "questions"}
    by_id = {q["question_id"]: q for q in ann["questions"]}
    assert len(lines) == len(by_id) == 8
    for line in lines:
        assert isinstance(line["question_id"], int)
        q = by_id[str(line["question_id"])]  # str in SEED-Bench.json, int in the LLaVA jsonl
        assert q["data_type"] == "image" and q["answer"] in digits.OPTION_LETTERS
        assert ann["question_type"][line["category"]] == q["question_type_id"]
        options = "".join(f"\n{letter}. {q['choice_' + letter.lower()]}" for letter in digits.OPTION_LETTERS)
        assert line["text"] == q["question"] + options + OL
        assert line["image"] == f"SEED-Bench-image/{q['data_id']}"
        _check_image(paths.seed / line["image"])


def test_tokenizer_and_llm_load(built: tuple[DemoPaths, dict[str, Any]]) -> None:
    from transformers import AutoTokenizer, LlamaForCausalLM

    paths, manifest = built
    tok = AutoTokenizer.from_pretrained(paths.llama)
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    prompt = (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: What digit is in the top left?"
        f"{SA} ASSISTANT: 7</s>USER: Is there an 8 in the image?{SA} ASSISTANT: no</s>"
    )
    ids = tok(prompt).input_ids
    assert ids[0] == 1 and ids[-1] == 2 and tok.unk_token_id not in ids
    assert tok.decode(ids[1:]) == prompt
    model = LlamaForCausalLM.from_pretrained(paths.llama)
    assert model.config.vocab_size == len(tok) == manifest["llm"]["vocab_size"]
    assert model.config.hidden_size == 128 and model.config.num_hidden_layers == 8
    assert model.config.num_key_value_heads == 2 and model.config.pad_token_id == tok.pad_token_id


def test_clip_tower_loads_and_gives_64_patch_tokens(built: tuple[DemoPaths, dict[str, Any]]) -> None:
    from transformers import CLIPImageProcessor, CLIPVisionModel

    from llava.demo.tiny_models import normalize_grey

    paths, _ = built
    model = CLIPVisionModel.from_pretrained(paths.clip).eval()
    processor = CLIPImageProcessor.from_pretrained(paths.clip)
    image_path = paths.gqa_images / _jsonl(paths.gqa_jsonl)[0]["image"]
    image = Image.open(image_path).convert("RGB")
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 64, 64)
    # The vectorised normalisation used to pretrain the tower matches the saved processor.
    grey = np.asarray(image)[:, :, 0][None]
    torch.testing.assert_close(normalize_grey(grey), pixels, atol=1e-5, rtol=0)
    with torch.no_grad():
        feats = model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    assert feats.shape == (1, 64, 64)


def test_manifest_baselines(built: tuple[DemoPaths, dict[str, Any]]) -> None:
    paths, manifest = built
    assert json.loads(paths.manifest.read_text()) == manifest
    counts = manifest["counts"]
    assert counts["pretrain"] == 12 and counts["finetune"]["conversations"] == 70 and counts["gqa_questions"] == 20
    gqa = manifest["eval"]["gqa"]
    assert sum(gqa["answers"].values()) == gqa["n"] == 20
    assert 0 < gqa["chance"] < 1 and 0 < gqa["majority"]["accuracy"] <= gqa["blind_best"] <= 1
    assert all(v["n"] == 8 for v in manifest["eval"]["pope"].values())
    assert manifest["eval"]["seed"]["chance"] == 0.25


def test_rerun_is_a_no_op(built: tuple[DemoPaths, dict[str, Any]]) -> None:
    paths, _ = built
    stamps = {p.name: p.read_text() for p in paths.build_dir.glob("*.json")}
    mtime = paths.finetune_json.stat().st_mtime_ns
    build_assets(_cfg(paths.root))
    assert paths.finetune_json.stat().st_mtime_ns == mtime
    assert {p.name: p.read_text() for p in paths.build_dir.glob("*.json")} == stamps


def test_generation_is_deterministic(tmp_path: Path) -> None:
    pool = digits.split_digit_sources(3)["train"]
    outs = []
    for name in ("a", "b"):
        cfg = BuildConfig(out=tmp_path / name, seed=3, num_finetune=15, progress=False)
        outs.append(build_finetune(cfg, DemoPaths(cfg.out), pool, {}))
    assert outs[0] == outs[1]
    first = tmp_path / "a" / "data" / outs[0][0].get("image", outs[0][1].get("image", ""))
    second = tmp_path / "b" / "data" / outs[1][0].get("image", outs[1][1].get("image", ""))
    assert first.read_bytes() == second.read_bytes()


def test_conversation_questions_do_not_leak_answers() -> None:
    """No turn of a training conversation is answerable from the answers before it."""
    pool = digits.split_digit_sources(0)["train"]
    rng = np.random.default_rng(0)
    for _ in range(200):
        grid = digits.sample_grid(pool, rng)
        cells: set[int] = set()
        known: set[int] = set()
        for qa in conversation_qas(grid, rng, 5):
            if qa.cell is not None:
                assert qa.cell not in cells
                cells.add(qa.cell)
                known.add(grid.labels[qa.cell])
            else:
                assert qa.digit not in known
            if qa.digit is not None:
                known.add(qa.digit)


def test_refuses_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "llava_v1_5_mix665k.json").write_text("[]")
    with pytest.raises(SystemExit):
        build_assets(_cfg(tmp_path))
    assert (tmp_path / "data" / "llava_v1_5_mix665k.json").read_text() == "[]"


def test_cli_parser_defaults() -> None:
    args = build_parser().parse_args(["--out", "x", "--num-eval", "7"])
    assert args.out == Path("x") and args.num_eval == 7 and args.seed == 0 and not args.force
