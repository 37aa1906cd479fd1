"""Checkpoints in upstream LLaVA-1.5's on-disk layout load strictly and give the logits of the same weights."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from train_fixtures import build_gqa_eval, eval_gqa, run_script
from upstream_layout import write_upstream_checkpoint

from llava.model.builder import CheckpointError, load_pretrained_model
from llava.model.checkpoint_loading import complete_vision_config
from llava.model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
from llava.train.train import build_model, parse_args

FIXTURES = Path(__file__).parent / "fixtures" / "upstream"
HUB_ID = "openai/clip-vit-large-patch14-336"  # not in any cache here: needs the override


@pytest.fixture(scope="module")
def source(tiny_assets, tmp_path_factory):
    """A trained-looking tiny LLaVA (non-zero projector) built from the tiny LLM and CLIP, schedule off."""
    args = parse_args(["--model_name_or_path", tiny_assets["llm"], "--vision_tower", tiny_assets["clip"],
                       "--output_dir", str(tmp_path_factory.mktemp("unused")), "--report_to", "none"])
    torch.manual_seed(3)
    model = build_model(*args).eval()
    for p in model.model.mm_projector.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model


def _reference(model, with_tower: bool):
    """The same weights as the checkpoint holds: fp16-rounded where they were stored, the CLIP directory's
    fp32 tower where the checkpoint has none."""
    ref = copy.deepcopy(model)
    for name, p in ref.named_parameters():
        if with_tower or not name.startswith("model.vision_tower."):
            p.data = p.data.half().float()
    return ref


def _probe(model, tokenizer, processor):
    from PIL import Image

    from llava.mm_utils import process_images, tokenizer_image_token

    ids = tokenizer_image_token("USER: <image>\nWhat digit is this? ASSISTANT:", tokenizer, return_tensors="pt")
    pixels = process_images([Image.new("RGB", (40, 30), (200, 10, 10))], processor, "pad")
    with torch.no_grad():
        return model(ids.unsqueeze(0), images=pixels).logits


def _write(source, tiny_assets, out, tower, fmt, shards):
    mm_vision_tower = HUB_ID if tower == "hub" else tiny_assets["clip"]
    write_upstream_checkpoint(source, out, mm_vision_tower, with_tower=tower == "inside", fmt=fmt, shards=shards)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(tiny_assets["llm"]) / name, out / name)
    return out


LAYOUTS = [  # (tower weights, file format, shards)
    ("inside", "safetensors", 1),
    ("inside", "bin", 3),
    ("dir", "safetensors", 2),
    ("dir", "bin", 1),
    ("hub", "safetensors", 3),
]


@pytest.mark.parametrize("tower,fmt,shards", LAYOUTS, ids=["-".join(map(str, c)) for c in LAYOUTS])
def test_upstream_layout_loads_with_the_same_logits(source, tiny_assets, tmp_path, tower, fmt, shards):
    ckpt = _write(source, tiny_assets, tmp_path / "llava-v1.5-tiny", tower, fmt, shards)
    override = tiny_assets["clip"] if tower == "hub" else None
    tokenizer, model, processor, context_len = load_pretrained_model(str(ckpt), vision_tower_path=override)
    assert model.config.vision_config["image_size"] == 32 and model.config.num_vision_tokens == 16
    assert model.config.reduction_config.is_off and context_len == 2048
    ref = _reference(source, with_tower=tower == "inside")
    expected = _probe(ref, tokenizer, processor)
    torch.testing.assert_close(_probe(model, tokenizer, processor), expected, rtol=1e-5, atol=1e-6)
    # the tower really came from where it should: the checkpoint's fp16 copy, or the CLIP directory's fp32
    w = model.model.vision_tower.vision_tower.embeddings.patch_embedding.weight
    clip_w = source.model.vision_tower.vision_tower.embeddings.patch_embedding.weight
    assert torch.equal(w, clip_w.half().float() if tower == "inside" else clip_w)
    # any schedule, training-free
    _, pruned, _, _ = load_pretrained_model(str(ckpt), vision_tower_path=override,
                                            reduction_overrides="inject_layer=2 prune_layers=2,3 keep_counts=8,4 exit_layer=4")
    assert [s.keep.shape[1] for s in pruned(*_inputs(tokenizer, processor)).stages] == [8, 4]


def _inputs(tokenizer, processor):
    from PIL import Image

    from llava.mm_utils import process_images, tokenizer_image_token

    ids = tokenizer_image_token("USER: <image>\nWhat digit is this? ASSISTANT:", tokenizer, return_tensors="pt")
    return ids.unsqueeze(0), None, None, process_images([Image.new("RGB", (8, 8))], processor, "pad")


def _tamper(ckpt: Path, edit) -> None:
    state = load_file(ckpt / "model.safetensors")
    edit(state)
    save_file(state, ckpt / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.pop("model.mm_projector.2.bias"), "missing from the checkpoint: model.mm_projector.2.bias"),
    (lambda s: s.pop("model.layers.1.mlp.up_proj.weight"), "missing from the checkpoint: model.layers.1.mlp.up_proj"),
    (lambda s: s.update({"model.layers.0.self_attn.extra.weight": torch.zeros(2)}), "not in the model"),
    (lambda s: s.update({"model.mm_projector.4.weight": torch.zeros(2)}), "model.mm_projector.4.weight"),
    (lambda s: s.update({"model.mm_projector.0.weight": torch.zeros(3, 3)}), "shape other than"),
    (lambda s: s.pop("model.vision_tower.vision_tower.vision_model.post_layernorm.bias"), "only part of the vision"),
], ids=["projector-missing", "layer-missing", "layer-unexpected", "projector-unexpected", "shape", "partial-tower"])
def test_nothing_is_dropped_silently(source, tiny_assets, tmp_path, edit, message):
    ckpt = _write(source, tiny_assets, tmp_path / "ck", "inside", "safetensors", 1)
    _tamper(ckpt, edit)
    with pytest.raises(CheckpointError, match=message.replace(".", r"\.")):
        load_pretrained_model(str(ckpt))


def test_hub_tower_offline_names_the_override(source, tiny_assets, tmp_path):
    ckpt = _write(source, tiny_assets, tmp_path / "ck", "hub", "safetensors", 1)
    with pytest.raises(CheckpointError, match="VISION_TOWER_PATH"):
        load_pretrained_model(str(ckpt))


@pytest.mark.parametrize("field,value", [("mm_patch_merge_type", "spatial_unpad"), ("mm_use_im_start_end", True),
                                         ("image_aspect_ratio", "anyres")])
def test_unsupported_upstream_settings_are_refused(source, tiny_assets, tmp_path, field, value):
    ckpt = _write(source, tiny_assets, tmp_path / "ck", "inside", "safetensors", 1)
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, field: value}))
    with pytest.raises(CheckpointError, match=field):
        load_pretrained_model(str(ckpt))


@pytest.mark.parametrize("name,hidden,layers", [("llava-v1.5-7b", 4096, 32), ("llava-v1.5-13b", 5120, 40)])
def test_released_7b_and_13b_configs_build_the_right_shapes(name, hidden, layers):
    """The released config.json files (as published) plus CLIP ViT-L/14-336's config give upstream's shapes."""
    config = LlavaConfig.from_pretrained(FIXTURES / name)
    assert config.vision_config is None and config.mm_vision_tower == HUB_ID
    assert complete_vision_config(config, str(FIXTURES / "clip-vit-large-patch14-336"))
    assert config.num_vision_tokens == 576 and config.mm_vision_select_layer == -2
    assert config.image_aspect_ratio == "pad" and config.mm_projector_type == "mlp2x_gelu"
    with torch.device("meta"):
        model = LlavaLlamaForCausalLM(config)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes["model.mm_projector.0.weight"] == (hidden, 1024)
    assert shapes["model.mm_projector.2.weight"] == (hidden, hidden)
    assert shapes["model.vision_tower.vision_tower.embeddings.position_embedding.weight"] == (577, 1024)
    assert shapes["model.embed_tokens.weight"] == (32000, hidden)
    assert sum(n.endswith("self_attn.q_proj.weight") and n.startswith("model.layers.") for n in shapes) == layers


def test_cli_chats_with_an_upstream_checkpoint(source, tiny_assets, tmp_path, capsys):
    from PIL import Image

    from llava.serve import cli

    ckpt = _write(source, tiny_assets, tmp_path / "ck", "hub", "bin", 2)
    image = tmp_path / "img.png"
    Image.new("RGB", (20, 20), (0, 200, 0)).save(image)
    answers = iter(["What is this?"])

    def fake_input(prompt):
        try:
            return next(answers)
        except StopIteration:
            raise EOFError from None

    rc = cli.main(["--model-path", str(ckpt), "--vision-tower-path", tiny_assets["clip"], "--image-file",
                   str(image), "--temperature", "0", "--max-new-tokens", "3"], input_fn=fake_input)
    assert rc == 0 and "ASSISTANT:" in capsys.readouterr().out


@pytest.mark.slow
def test_training_free_eval_and_continued_training_through_the_scripts(source, tiny_assets, tmp_path):
    """The released-weights path of the paper's training-free rows, and finetuning a released LLaVA further."""
    ckpt = _write(source, tiny_assets, tmp_path / "llava-v1.5-tiny", "hub", "safetensors", 2)
    data = build_gqa_eval(tmp_path / "eval")
    schedule = "inject_layer=2 prune_layers=2,3 keep_counts=8,4 exit_layer=4"
    proc = eval_gqa(data, ckpt, VISION_TOWER_PATH=tiny_assets["clip"], REDUCTION_OVERRIDES=schedule)
    run = json.loads(next((data / "results").rglob("gqa.json")).read_text())["run"]
    assert run["reduction"]["keep_counts"] == [8, 4] and run["avg_vision_tokens"] == pytest.approx(6.0)
    assert "GQA accuracy" in proc.stdout

    env = {"MODEL_BASE": str(ckpt), "VISION_TOWER": tiny_assets["clip"], "DATA_PATH": tiny_assets["finetune"],
           "IMAGE_FOLDER": tiny_assets["images"], "MAX_STEPS": "2", "OUTPUT_DIR": str(tmp_path / "continued")}
    refused = run_script("finetune.sh", dict(env, PROJECTOR=str(tmp_path / "mm_projector.bin")), check=False)
    assert refused.returncode != 0 and "PROJECTOR= (empty)" in refused.stderr
    run_script("finetune.sh", dict(env, PROJECTOR=""))
    _, trained, _, _ = load_pretrained_model(str(tmp_path / "continued"))
    assert trained.config.reduction["keep_counts"] == [8, 4]
