"""TwigVLM end to end through the shipped scripts: ``scripts/train_twig.sh`` (2 CPU ranks, ZeRO-2) trains only the
twig and resumes (the output-folder lock, the NaN stop and the refusal to overwrite are the shared trainer's and
launcher's, tested on scripts/finetune.sh in test_training_reliability.py); ``scripts/eval/gqa.sh`` with
``SPECULATIVE=1`` on the result gives the plain greedy answers and reports the acceptance rate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import build_gqa_eval, eval_gqa, run_script

pytestmark = pytest.mark.slow

# The 4-layer tiny LLM with 16 vision tokens: a one-layer twig after layer 2, one cut to 4 tokens, exit before 4.
TWIG_ENV = {"RECIPE": "tiny", "TWIG_AFTER_LAYER": "2", "TWIG_LAYERS": "1", "REDUCTION": "twigvlm-tiny",
            "REDUCTION_OVERRIDES": "keep_counts=4 exit_layer=4", "BATCH_PER_DEVICE": "4", "SAVE_STEPS": "1",
            "LR": "1e-2"}


@pytest.fixture(scope="module")
def base_checkpoint(tiny_assets, tmp_path_factory) -> Path:
    """A plain LLaVA checkpoint of the tiny assets (what the twig is trained on)."""
    from llava.train.train import build_model, parse_args

    ckpt = tmp_path_factory.mktemp("base")
    args = parse_args(["--model_name_or_path", tiny_assets["llm"], "--vision_tower", tiny_assets["clip"],
                       "--output_dir", str(ckpt), "--report_to", "none"])
    build_model(*args).save_pretrained(ckpt)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(tiny_assets["llm"]) / name, ckpt / name)
    shutil.copy(Path(tiny_assets["clip"]) / "preprocessor_config.json", ckpt)
    return ckpt


@pytest.fixture(scope="module")
def twig_run(tiny_assets, base_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("twig")
    env = {**TWIG_ENV, "MODEL_PATH": str(base_checkpoint), "DATA_PATH": tiny_assets["finetune"],
           "IMAGE_FOLDER": tiny_assets["images"], "OUTPUT_DIR": str(out), "MAX_STEPS": "2"}
    run_script("train_twig.sh", env)
    # resumes from its checkpoint (DeepSpeed's optimizer and scheduler state too) and goes on to step 3
    run_script("train_twig.sh", {**env, "MAX_STEPS": "3"}, "--resume_from_checkpoint", str(out / "checkpoint-2"))
    return out


def test_only_the_twig_trains_and_the_run_resumes(base_checkpoint, twig_run):
    base = load_file(str(base_checkpoint / "model.safetensors"))
    trained = load_file(str(twig_run / "model.safetensors"))
    assert set(trained) - set(base) == {k for k in trained if k.startswith("twig.")}
    for name, value in base.items():
        assert torch.equal(trained[name], value), f"{name} changed"  # bit for bit
    # the twig started as a copy of base layer 3, the base's norm and head, and moved away from it
    for name, value in trained.items():
        if name.startswith("twig.layers.0."):
            src = base["model.layers.2." + name.removeprefix("twig.layers.0.")]
            assert value.shape == src.shape
    moved = [n for n, v in trained.items() if n.startswith("twig.layers.0.") and
             not torch.equal(v, base["model.layers.2." + n.removeprefix("twig.layers.0.")])]
    assert moved and not torch.equal(trained["twig.head.weight"], base["lm_head.weight"])
    config = json.loads((twig_run / "config.json").read_text())
    assert config["twig"] == {"after_layer": 2, "num_layers": 1}
    assert config["reduction"]["score_layer"] == "twig" and config["reduction"]["keep_counts"] == [4]
    state = json.loads((twig_run / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in state["log_history"] if "loss" in h)


def test_speculative_evaluation_gives_the_plain_answers(twig_run, tmp_path):
    """Through the script with SPECULATIVE=1, against the runner's own plain greedy answers to the same prompts."""
    from llava.eval.benchmarks import get_benchmark
    from llava.eval.run_benchmark import LlavaBackend
    from llava.model.builder import load_pretrained_model

    data = build_gqa_eval(tmp_path / "eval")
    spec = eval_gqa(data, twig_run, CKPT="spec", SPECULATIVE="1", MAX_NEW_TOKENS="12", REDUCTION_OVERRIDES="")
    answers = [json.loads(line) for line in next((data / "gqa" / "answers").rglob("spec/merge.jsonl")).read_text().splitlines()]
    adapter = get_benchmark("gqa")
    questions = adapter.load_questions(str(data / "gqa" / "llava_gqa_testdev_balanced.jsonl"))
    images = [adapter.load_image(q, str(data / "gqa" / "data" / "images")) for q in questions]
    tokenizer, model, processor, _ = load_pretrained_model(str(twig_run))
    plain = LlavaBackend(model, tokenizer, processor).generate([q.text for q in questions], images, 12)
    assert [a["text"] for a in answers] == plain
    assert all(a["speculative"]["new_tokens"] >= 1 for a in answers)
    run = json.loads(next((data / "gqa" / "answers").rglob("spec/merge.jsonl.run.json")).read_text())
    stats = run["speculative_stats"]
    assert run["speculative"] == "twig" and run["twig"] == {"after_layer": 2, "num_layers": 1}
    assert stats["answers"] == 6 and stats["drafted"] > 0
    assert stats["acceptance_rate"] == stats["accepted"] / stats["drafted"]
    assert "GQA speculative decoding: acceptance rate" in spec.stdout and "tokens/s" in spec.stdout


def test_the_cli_and_the_web_demo_report_the_acceptance(twig_run, tiny_assets, capsys):
    """The trained checkpoint in the terminal chat and the web demo's engine with --speculative twig."""
    from llava.model.builder import load_pretrained_model
    from llava.serve.chat_engine import ChatEngine, parse_sampling
    from llava.serve.cli import main

    image = str(Path(tiny_assets["images"]) / "0000.png")
    questions = iter(["What digit is this?"])

    def answer(prompt):
        try:
            return next(questions)
        except StopIteration:
            raise EOFError from None

    code = main(["--model-path", str(twig_run), "--image-file", image, "--temperature", "0", "--max-new-tokens", "6",
                 "--speculative", "twig"], input_fn=answer)
    captured = capsys.readouterr()
    assert code == 0 and "ASSISTANT:" in captured.out
    assert "speculative decoding: acceptance rate" in captured.err and "tokens/s" in captured.err
    tokenizer, model, processor, context_len = load_pretrained_model(str(twig_run))
    engine = ChatEngine(tokenizer, model, processor, int(context_len), speculative="twig")
    state = engine.new_state()
    state.pixels = engine.read_image(image, "0000.png")
    sampling = parse_sampling(0, 1, 6, seed=0)
    turn = engine.begin_turn(state, "What digit is this?", sampling)
    *_, answer_ = engine.answer_stream(state.pixels, turn, engine.loaded_schedule, sampling)
    stats = engine.stats_markdown(answer_)
    assert "self-speculative decoding (twig): acceptance rate" in stats and "tokens/s" in stats
    plain = ChatEngine(tokenizer, model, processor, int(context_len))
    *_, plain_answer = plain.answer_stream(state.pixels, turn, engine.loaded_schedule, sampling)
    assert plain_answer.tokens == answer_.tokens  # greedy: the plain answer
