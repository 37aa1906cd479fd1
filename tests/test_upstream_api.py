"""Upstream LLaVA's Python API, called as its README, run_llava.py and model_worker.py call it (typed out here), on a
tiny checkpoint in upstream's layout and one in ours (tests/upstream_fixtures.py)."""

from __future__ import annotations

from threading import Thread

import pytest
import torch
from PIL import Image

from llava.constants import (
    CONTROLLER_HEART_BEAT_EXPIRATION,
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_PATCH_TOKEN,
    DEFAULT_IMAGE_TOKEN,
    IGNORE_INDEX,
    IMAGE_PLACEHOLDER,
    IMAGE_TOKEN_INDEX,
    WORKER_HEART_BEAT_INTERVAL,
)
from llava.conversation import SeparatorStyle, conv_templates, default_conversation
from llava.mm_utils import (
    KeywordsStoppingCriteria,
    get_model_name_from_path,
    process_images,
    tokenizer_image_token,
)
from llava.model.builder import CheckpointError, load_pretrained_model


@pytest.fixture(scope="module")
def loaded(upstream_checkpoints):
    """Upstream's README call, verbatim but for the path."""
    model_path = upstream_checkpoints["upstream"]
    tokenizer, model, image_processor, context_len = load_pretrained_model(
        model_path=model_path,
        model_base=None,
        model_name=get_model_name_from_path(model_path)
    )
    return tokenizer, model, image_processor, context_len


def _prompt(qs: str, conv_mode: str = "llava_v1") -> str:
    conv = conv_templates[conv_mode].copy()
    conv.append_message(conv.roles[0], qs)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def _inputs(upstream_checkpoints, tokenizer, image_processor, model, name="0003.png"):
    image = Image.open(f"{upstream_checkpoints['images']}/{name}").convert("RGB")
    images_tensor = process_images([image], image_processor, model.config).to(model.device, dtype=torch.float16)
    prompt = _prompt(DEFAULT_IMAGE_TOKEN + "\n" + "What digit is this?")
    input_ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
    return image, images_tensor, input_ids


def test_names_and_constants() -> None:
    assert get_model_name_from_path("liuhaotian/llava-v1.5-7b") == "llava-v1.5-7b"
    assert get_model_name_from_path("./checkpoints/llava-v1.5-13b-lora/checkpoint-500/") == \
        "llava-v1.5-13b-lora_checkpoint-500"
    assert (IGNORE_INDEX, IMAGE_TOKEN_INDEX, DEFAULT_IMAGE_TOKEN) == (-100, -200, "<image>")
    assert (DEFAULT_IMAGE_PATCH_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN) == ("<im_patch>", "<im_start>",
                                                                                         "<im_end>")
    assert IMAGE_PLACEHOLDER == "<image-placeholder>"
    assert (CONTROLLER_HEART_BEAT_EXPIRATION, WORKER_HEART_BEAT_INTERVAL) == (30, 15)


def test_conversation_api_as_upstream_uses_it() -> None:
    conv = conv_templates["llava_v1"].copy()
    roles = conv.roles
    conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN + "\nWhat is this?")
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt().endswith(" USER: <image>\nWhat is this? ASSISTANT:")
    conv.messages[-1][-1] = "A cat."  # upstream's cli.py sets the answer in place
    stop_str = conv.sep if conv.sep_style != SeparatorStyle.TWO else conv.sep2
    assert stop_str == "</s>" and conv.sep == " " and roles == ("USER", "ASSISTANT")
    assert conv.get_prompt().endswith("ASSISTANT: A cat.</s>")
    # copies are independent, templates are never changed
    other = conv.copy()
    other.messages[-1][-1] = "A dog."
    assert conv.messages[-1][-1] == "A cat." and conv_templates["llava_v1"].messages == ()
    state = default_conversation.copy()  # upstream's test_message.py / gradio
    assert state.roles == ("USER", "ASSISTANT") and state.messages == [] and state.version == "v1"
    with pytest.raises(TypeError, match=r"\.copy\(\)"):
        conv_templates["vicuna_v1"].append_message("USER", "x")


def test_load_pretrained_model_from_files_not_names(upstream_checkpoints, loaded) -> None:
    tokenizer, model, image_processor, context_len = loaded
    assert context_len == 2048 and model.config.num_vision_tokens == 16
    # Our layout in a folder named like no LLaVA, a misleading model_name, and our keyword arguments.
    t2, ours, p2, _ = load_pretrained_model(upstream_checkpoints["ours"], None, "vicuna-7b-plain", False, False,
                                            device_map="auto", device="cpu", use_flash_attn=False, reduction="off")
    assert ours.config.reduction_config.is_off
    _, images_tensor, input_ids = _inputs(upstream_checkpoints, tokenizer, image_processor, model)
    with torch.no_grad():
        a = model(input_ids, images=images_tensor).logits
        b = ours(input_ids, images=images_tensor).logits
    torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)  # fp16-stored weights vs fp32
    for flag in ("load_8bit", "load_4bit"):
        with pytest.raises(CheckpointError, match="CUDA GPU" if not torch.cuda.is_available() else "bitsandbytes"):
            load_pretrained_model(upstream_checkpoints["upstream"], None, "llava-v1.5-7b", **{flag: True})
    with pytest.raises(TypeError, match="unsupported keyword"):
        load_pretrained_model(upstream_checkpoints["upstream"], None, None, cache_dir="x")
    if not torch.cuda.is_available():  # upstream's README CLI call with --load-4bit: refused, saying why
        from llava.serve import cli

        code = cli.main(["--model-path", upstream_checkpoints["upstream"], "--image-file",
                         f"{upstream_checkpoints['images']}/0003.png", "--load-4bit"], input_fn=lambda _: "")
        assert code == 2


def test_process_images_takes_the_config(upstream_checkpoints, loaded) -> None:
    _, model, image_processor, _ = loaded
    image = Image.new("RGB", (40, 24), (200, 10, 10))
    assert model.config.image_aspect_ratio == "pad"
    torch.testing.assert_close(process_images([image], image_processor, model.config),
                               process_images([image], image_processor, "pad"))
    with pytest.raises(ValueError, match="anyres"):
        process_images([image], image_processor, {"image_aspect_ratio": "anyres"})


def test_generate_as_run_llava_and_the_worker_call_it(upstream_checkpoints, loaded) -> None:
    from transformers import TextIteratorStreamer

    tokenizer, model, image_processor, _ = loaded
    image, images_tensor, input_ids = _inputs(upstream_checkpoints, tokenizer, image_processor, model)
    with torch.inference_mode():
        output_ids = model.generate(
            input_ids,
            images=images_tensor,
            image_sizes=[image.size],
            do_sample=False,
            temperature=0,
            top_p=None,
            num_beams=1,
            max_new_tokens=8,
            use_cache=True,
        )
    reference = model.generate(input_ids, images=images_tensor, max_new_tokens=8)
    assert torch.equal(output_ids, reference)
    outputs = tokenizer.batch_decode(output_ids, skip_special_tokens=True)[0].strip()
    with pytest.raises(ValueError, match="num_beams=2"):
        model.generate(input_ids, images=images_tensor, num_beams=2, max_new_tokens=2)

    # model_worker.py: generate in a thread, the text from a TextIteratorStreamer as it comes.
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=15)
    thread = Thread(target=model.generate, kwargs=dict(inputs=input_ids, do_sample=False, temperature=0.2, top_p=1.0,
                                                       max_new_tokens=8, streamer=streamer, use_cache=True,
                                                       images=images_tensor, image_sizes=[image.size]))
    thread.start()
    pieces = list(streamer)
    thread.join()
    assert "".join(pieces).strip() == outputs

    class Recorder:  # the streamer protocol: the prompt, then each new token as it is sampled, then end
        def __init__(self) -> None:
            self.puts, self.ends = [], 0

        def put(self, value: torch.Tensor) -> None:
            self.puts.append(value.tolist())

        def end(self) -> None:
            self.ends += 1

    rec = Recorder()
    out = model.generate(input_ids, images=images_tensor, max_new_tokens=8, streamer=rec)
    assert rec.ends == 1 and len(rec.puts) == out.shape[1] + 1
    assert IMAGE_TOKEN_INDEX not in rec.puts[0][0]  # the prompt, placeholder removed
    assert [p[0] for p in rec.puts[1:]] == out[0].tolist()

    # stopping_criteria: a StoppingCriteriaList-style list of callables ends generation where they say.
    stopped = model.generate(input_ids, images=images_tensor, max_new_tokens=8,
                             stopping_criteria=[lambda seq, scores: seq.shape[1] >= input_ids.shape[1] + 3])
    assert torch.equal(stopped, output_ids[:, :3])


def test_keywords_stopping_criteria(loaded) -> None:
    tokenizer = loaded[0]
    prompt = tokenizer_image_token("USER: <image>\nWhat comes after one? ASSISTANT:", tokenizer, return_tensors="pt")
    input_ids = prompt.unsqueeze(0)
    stopping = KeywordsStoppingCriteria(["</s>", "What"], tokenizer, input_ids)
    answer = tokenizer("two is after one. What", add_special_tokens=False).input_ids
    done = [bool(stopping(torch.cat([input_ids, torch.tensor([answer[:k]])], 1), None)) for k in range(1, len(answer) + 1)]
    assert done == [False] * (len(answer) - 1) + [True]  # only once "What" is complete, never from the prompt
    eos = torch.tensor([[*answer[:2], tokenizer.eos_token_id]])
    assert bool(stopping(torch.cat([input_ids, eos], 1), None))  # the "</s>" keyword as EOS ids


def test_run_llava_eval_model_readme_form(upstream_checkpoints, loaded, capsys) -> None:
    from llava.eval.run_llava import eval_model

    tokenizer, model, image_processor, _ = loaded
    model_path = upstream_checkpoints["upstream"]
    prompt = "What digit is this?"
    image_file = f"{upstream_checkpoints['images']}/0003.png"
    args = type('Args', (), {
        "model_path": model_path,
        "model_base": None,
        "model_name": get_model_name_from_path(model_path),
        "query": prompt,
        "conv_mode": None,
        "image_file": image_file,
        "sep": ",",
        "temperature": 0,
        "top_p": None,
        "num_beams": 1,
        "max_new_tokens": 8
    })()
    eval_model(args)
    printed = capsys.readouterr().out.strip()
    _, images_tensor, input_ids = _inputs(upstream_checkpoints, tokenizer, image_processor, model)
    expected = tokenizer.batch_decode(model.generate(input_ids, images=images_tensor.float(), max_new_tokens=8),
                                      skip_special_tokens=True)[0].strip()
    assert printed == expected
    # The command line, with the image placed by <image-placeholder>.
    from llava.eval import run_llava

    run_llava.main(["--model-path", model_path, "--image-file", image_file, "--query",
                    f"{IMAGE_PLACEHOLDER}\nWhat digit is this?", "--temperature", "0", "--max_new_tokens", "8"])
    assert capsys.readouterr().out.strip() == expected
