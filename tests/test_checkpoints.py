"""Save/load round trips through from_pretrained: full, projector-only (on a base LLM) and LoRA checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_fixtures import build_tiny_assets

from llava.model.builder import CheckpointError, checkpoint_kind, load_pretrained_model
from llava.train.train import build_model, parse_args


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_tiny_assets(tmp_path_factory.mktemp("ck"))


def _model(assets, tmp_path, *extra):
    args = parse_args(["--model_name_or_path", assets["llm"], "--vision_tower", assets["clip"], "--output_dir",
                       str(tmp_path), "--reduction", "tiny", "--reduction_overrides",
                       "inject_layer=2 prune_layers=2,3 keep_counts=8,4 exit_layer=4", "--report_to", "none", *extra])
    return build_model(*args).eval()


def _probe(model, tok):
    from PIL import Image

    from llava.mm_utils import process_images, tokenizer_image_token

    ids = tokenizer_image_token("<image>\nWhat digit is this?", tok, return_tensors="pt").unsqueeze(0)
    proc = __import__("transformers").CLIPImageProcessor.from_pretrained(model.config.mm_vision_tower)
    img = process_images([Image.new("RGB", (40, 30), (200, 10, 10))], proc, "pad")
    with torch.no_grad():
        return model(ids, images=img).logits


def test_full_checkpoint_round_trip(assets, tmp_path):
    model = _model(assets, tmp_path)
    model.save_pretrained(tmp_path / "full")
    from transformers import AutoTokenizer, CLIPImageProcessor

    tok = AutoTokenizer.from_pretrained(assets["llm"])
    tok.save_pretrained(tmp_path / "full")
    CLIPImageProcessor.from_pretrained(assets["clip"]).save_pretrained(tmp_path / "full")
    assert checkpoint_kind(str(tmp_path / "full")) == "full"
    tok2, loaded, proc, _ = load_pretrained_model(str(tmp_path / "full"))
    assert loaded.config.reduction == model.config.reduction
    torch.testing.assert_close(_probe(loaded, tok2), _probe(model, tok))
    # schedule override at load time (training-free evaluation with another schedule)
    _, off, _, _ = load_pretrained_model(str(tmp_path / "full"), reduction="off")
    assert off.config.reduction_config.is_off


def test_projector_only_checkpoint_on_base(assets, tmp_path):
    model = _model(assets, tmp_path)
    torch.nn.init.normal_(model.model.mm_projector[0].weight)
    out = tmp_path / "proj"
    out.mkdir()
    model.config.save_pretrained(out)
    state = {n: p.detach() for n, p in model.named_parameters() if "mm_projector" in n}
    torch.save(state, out / "mm_projector.bin")
    assert checkpoint_kind(str(out)) == "projector"
    with pytest.raises(CheckpointError, match="model_base"):
        load_pretrained_model(str(out))
    tok, loaded, _, _ = load_pretrained_model(str(out), model_base=assets["llm"])
    torch.testing.assert_close(_probe(loaded, tok), _probe(model, tok))


@pytest.mark.parametrize("merge", [True, False])
def test_lora_checkpoint(assets, tmp_path, merge):
    model = _model(assets, tmp_path, "--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8")
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)  # non-zero adapter so merging matters
    out = tmp_path / "lora"
    model.save_pretrained(out)
    model.base_model.model.config.save_pretrained(out)
    extra = {n.removeprefix("base_model.model."): p.detach() for n, p in model.named_parameters() if "mm_projector" in n}
    torch.save(extra, out / "non_lora_trainables.bin")
    assert checkpoint_kind(str(out)) == "lora"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets["llm"])
    _, loaded, _, _ = load_pretrained_model(str(out), model_base=assets["llm"], merge_lora=merge)
    base = model.base_model.model
    torch.testing.assert_close(_probe(loaded, tok), _probe(base, tok), atol=1e-4, rtol=1e-4)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        load_pretrained_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no model weights"):
        load_pretrained_model(str(tmp_path / "empty"))


def test_cli_chats_about_an_image(assets, tmp_path, capsys):
    from transformers import AutoTokenizer, CLIPImageProcessor

    from llava.serve.cli import main

    model = _model(assets, tmp_path)
    model.save_pretrained(tmp_path / "full")
    AutoTokenizer.from_pretrained(assets["llm"]).save_pretrained(tmp_path / "full")
    CLIPImageProcessor.from_pretrained(assets["clip"]).save_pretrained(tmp_path / "full")
    image = Path(assets["images"]) / "0000.png"
    questions = iter(["What digit is this?", "Is it even?"])

    def fake_input(prompt):
        try:
            return next(questions)
        except StopIteration:
            raise EOFError from None

    rc = main(["--model-path", str(tmp_path / "full"), "--image-file", str(image), "--temperature", "0",
               "--max-new-tokens", "4", "--reduction", "off"], input_fn=fake_input)
    assert rc == 0
    captured = capsys.readouterr()
    assert captured.out.count("ASSISTANT:") == 2
    assert "bye (end of input)" in captured.err
    assert main(["--model-path", str(tmp_path / "full"), "--image-file", str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err


def test_projector_checkpoint_with_missing_vision_tower_names_it(assets, tmp_path):
    model = _model(assets, tmp_path)
    out = tmp_path / "proj"
    out.mkdir()
    model.config.mm_vision_tower = str(tmp_path / "no-such-clip")
    model.config.save_pretrained(out)
    torch.save({n: p.detach() for n, p in model.named_parameters() if "mm_projector" in n}, out / "mm_projector.bin")
    with pytest.raises(CheckpointError, match="no-such-clip"):
        load_pretrained_model(str(out), model_base=assets["llm"])


# === The terminal chat (llava.serve.cli): errors, context length, override forms ===


@pytest.fixture(scope="module")
def cli_checkpoint(assets, tmp_path_factory):
    from transformers import AutoTokenizer, CLIPImageProcessor

    root = tmp_path_factory.mktemp("cli")
    _model(assets, root).save_pretrained(root / "full")
    AutoTokenizer.from_pretrained(assets["llm"]).save_pretrained(root / "full")
    CLIPImageProcessor.from_pretrained(assets["clip"]).save_pretrained(root / "full")
    return {"model": str(root / "full"), "image": str(Path(assets["images"]) / "0000.png")}


def _answers(*texts):
    """An input() stand-in that returns ``texts`` and then signals the end of input."""
    queue = list(texts)

    def fake_input(prompt):
        if not queue:
            raise EOFError
        return queue.pop(0)

    return fake_input


class _LoadSpy:
    """Wraps load_pretrained_model: records the model, optionally replaces context_len, records generate calls."""

    def __init__(self, context_len=None):
        self.context_len = context_len
        self.model = None
        self.generate_calls = []

    def __call__(self, *args, **kwargs):
        tok, model, proc, context_len = load_pretrained_model(*args, **kwargs)
        self.model = model
        real_generate = model.generate

        def generate(input_ids, **kw):
            self.generate_calls.append((input_ids, kw))
            return real_generate(input_ids, **kw)

        model.generate = generate
        return tok, model, proc, self.context_len or context_len


@pytest.mark.parametrize("extra,named", [
    (["--reduction", "nosuch"], "nosuch"),
    (["--reduction-override", "exit_layer=abc"], "exit_layer=abc"),
    (["--reduction-override", "exit_layer"], "key=value"),
    (["--reduction-override", "no_such_field=1"], "no_such_field"),
    (["--reduction-override", "exit_layer=99"], "exit_layer=99"),  # parses, but not valid for a 4-layer model
])
def test_cli_bad_schedule_is_a_message(cli_checkpoint, capsys, extra, named):
    from llava.serve.cli import main

    rc = main(["--model-path", cli_checkpoint["model"], "--image-file", cli_checkpoint["image"], *extra],
              input_fn=_answers())
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert any(line.startswith("error: ") and named in line for line in err.splitlines())  # after any progress bar


def test_cli_missing_or_empty_model_path_is_a_message(cli_checkpoint, tmp_path, capsys):
    from llava.serve.cli import main

    assert main(["--model-path", str(tmp_path / "nope"), "--image-file", cli_checkpoint["image"]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope" in err and "not a directory" in err
    (tmp_path / "empty").mkdir()
    assert main(["--model-path", str(tmp_path / "empty"), "--image-file", cli_checkpoint["image"]]) == 2
    assert "holds no model weights" in capsys.readouterr().err


def test_cli_reduction_override_accepts_both_forms(cli_checkpoint, monkeypatch, capsys):
    import llava.serve.cli as cli

    schedules = []
    for form in (["budget_weight=0.5 score_temperature=2"], ["budget_weight=0.5", "score_temperature=2"]):
        spy = _LoadSpy()
        monkeypatch.setattr(cli, "load_pretrained_model", spy)
        rc = cli.main(["--model-path", cli_checkpoint["model"], "--image-file", cli_checkpoint["image"],
                       "--reduction-override", *form], input_fn=_answers())
        assert rc == 0, capsys.readouterr().err
        schedules.append(spy.model.config.reduction_config)
    assert schedules[0] == schedules[1]
    assert schedules[0].budget_weight == 0.5 and schedules[0].score_temperature == 2.0


def test_cli_prompt_past_the_context_is_refused_then_capped(cli_checkpoint, monkeypatch, capsys):
    import llava.serve.cli as cli
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.conversation import get_conv_template
    from llava.mm_utils import tokenizer_image_token

    tok = __import__("transformers").AutoTokenizer.from_pretrained(cli_checkpoint["model"])
    conv = get_conv_template("vicuna_v1")
    conv.append_message(conv.roles[0], "<image>\nWhat digit is this?")
    conv.append_message(conv.roles[1], None)
    ids = tokenizer_image_token(conv.get_prompt(), tok, return_tensors="pt")
    needed = len(ids) - 1 + 16  # the tiny tower gives (32 / 8) ** 2 = 16 vision tokens
    spy = _LoadSpy(context_len=needed + 3)  # room for 3 new tokens after the short question
    monkeypatch.setattr(cli, "load_pretrained_model", spy)
    rc = cli.main(["--model-path", cli_checkpoint["model"], "--image-file", cli_checkpoint["image"],
                   "--temperature", "0", "--max-new-tokens", "50"],
                  input_fn=_answers("seven " * 200, "What digit is this?"))
    captured = capsys.readouterr()
    assert rc == 0 and spy.model.config.num_vision_tokens == 16
    # the long message: refused, nothing generated, the user can go on
    assert f"context length is {needed + 3}; nothing was generated" in captured.err
    assert len(spy.generate_calls) == 1 and captured.out.count("ASSISTANT:") == 1
    # the short one fits, with the image (the refused turn was forgotten), and its answer is capped to the room
    input_ids, kwargs = spy.generate_calls[0]
    assert input_ids.shape[1] == len(ids) and int((input_ids == IMAGE_TOKEN_INDEX).sum()) == 1
    assert kwargs["max_new_tokens"] == 3
    assert "capped at 3 new tokens (--max-new-tokens 50)" in captured.err
    assert captured.err.rstrip().endswith("bye (end of input)")


def test_cli_empty_message_exits_with_a_reason(cli_checkpoint, monkeypatch, capsys):
    import llava.serve.cli as cli

    spy = _LoadSpy()
    monkeypatch.setattr(cli, "load_pretrained_model", spy)
    rc = cli.main(["--model-path", cli_checkpoint["model"], "--image-file", cli_checkpoint["image"]],
                  input_fn=_answers("   "))
    assert rc == 0 and spy.generate_calls == []
    assert "bye (empty message)" in capsys.readouterr().err


def test_prompt_token_count_expands_the_image():
    from llava.serve.common import prompt_token_count, split_override_args

    assert prompt_token_count(torch.tensor([1, 5, -200, 7]), 576) == 3 + 576
    assert prompt_token_count(torch.tensor([1, 5]), 576) == 2
    assert split_override_args(["a=1 b=2", "c=3"]) == ["a=1", "b=2", "c=3"]
