"""The runner on a real (tiny, random) LLaVA checkpoint: the model contract end to end.

Builds a full checkpoint directory (tokenizer, model with a saved reduction schedule, image processor) in a few
seconds, then checks that batched generation equals batch-size-1 generation through the real tokenizer,
image preprocessing and ``model.generate``, and that the run info records the schedule actually run.
"""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("llava.model.builder")

from PIL import Image  # noqa: E402

from llava.eval import run_benchmark  # noqa: E402

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "eval", "gqa")


@pytest.fixture(autouse=True)
def _fingerprint_cache(tmp_path, monkeypatch):
    """Keeps the runner's weights-fingerprint cache out of the real ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    import torch
    from tiny import tiny_config
    from transformers import CLIPImageProcessor

    from llava.conversation import get_template
    from llava.demo.tokenizer import train_tokenizer
    from llava.model import LlavaLlamaForCausalLM
    from llava.model.reduction.config import ReductionConfig

    root = tmp_path_factory.mktemp("ckpt") / "llava-tiny-eval"
    corpus = [get_template("vicuna_v1").system, "USER: ASSISTANT: Answer the question using a single word or phrase."] * 4
    tok = train_tokenizer(corpus, root, vocab_size=300)
    schedule = ReductionConfig(name="eval-test", inject_layer=3, prune_layers=(3, 5), keep_counts=(8, 2), exit_layer=7)
    cfg = tiny_config(vocab=len(tok), reduction=schedule)
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    torch.manual_seed(0)
    LlavaLlamaForCausalLM(cfg).eval().save_pretrained(root)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root)
    return str(root)


@pytest.fixture()
def images(tmp_path) -> str:
    for i, color in enumerate([(200, 10, 10), (10, 200, 10), (10, 10, 200)]):
        Image.new("RGB", (40, 30), color).save(tmp_path / f"n{i + 1}.jpg")
    return str(tmp_path)


def _questions(tmp_path, n: int) -> str:
    """The first n GQA fixture questions (generation on CPU is the slow part of this file)."""
    path = tmp_path / f"q{n}.jsonl"
    lines = open(os.path.join(FIX, "llava_gqa_testdev_balanced.jsonl")).read().splitlines()[:n]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _run(ckpt: str, image_dir: str, out: str, batch: int, *extra: str, questions: str) -> list[dict]:
    argv = [
        "--bench", "gqa", "--model-path", ckpt, "--question-file", questions,
        "--image-folder", image_dir, "--answers-file", out, "--batch-size", str(batch), "--max-new-tokens", "3",
        "--device", "cpu", *extra,
    ]
    run_benchmark.main(argv)
    return [json.loads(line) for line in open(out)]


def test_real_tiny_model_batched_equals_batch_one(tiny_checkpoint, images, tmp_path) -> None:
    questions = _questions(tmp_path, 3)  # three prompts of different lengths over two images
    one = _run(tiny_checkpoint, images, str(tmp_path / "b1.jsonl"), 1, questions=questions)
    three = _run(tiny_checkpoint, images, str(tmp_path / "b3.jsonl"), 3, questions=questions)
    assert [a["question_id"] for a in one] == ["201", "202", "203"]
    assert [a["text"] for a in one] == [a["text"] for a in three]
    info = json.load(open(tmp_path / "b1.jsonl.run.json"))
    assert info["reduction"]["name"] == "eval-test"
    # 16 vision tokens on layer 3, 8 on layers 4-5, 2 on layer 6, none elsewhere: (16 + 8 + 8 + 2) / 8 layers
    assert info["avg_vision_tokens"] == pytest.approx(4.25)
    assert info["num_vision_tokens"] == 16


def test_real_tiny_model_schedule_override(tiny_checkpoint, images, tmp_path) -> None:
    questions = _questions(tmp_path, 1)
    _run(tiny_checkpoint, images, str(tmp_path / "o.jsonl"), 1, "--reduction-override", "exit_layer=6", questions=questions)
    info = json.load(open(tmp_path / "o.jsonl.run.json"))
    # exit at 6 drops layer 6's 2 tokens: (16 + 8 + 8) / 8 = 4.0
    assert info["reduction"]["exit_layer"] == 6
    assert info["avg_vision_tokens"] == pytest.approx(4.0)
    _run(tiny_checkpoint, images, str(tmp_path / "p.jsonl"), 1, "--reduction-preset", "off", questions=questions)
    assert json.load(open(tmp_path / "p.jsonl.run.json"))["avg_vision_tokens"] == pytest.approx(16.0)
