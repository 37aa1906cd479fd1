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
    out = capsys.readouterr().out
    assert out.count("ASSISTANT:") == 2
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
