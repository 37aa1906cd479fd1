"""The web demo (llava.serve.gradio_web_server) on a tiny checkpoint built here.

- The streamed answer is ``model.generate()``'s, token for token (greedy and seeded sampling, several schedules,
  an early EOS), with the same realised vision counts.
- A real server in a subprocess on a free localhost port, driven with gradio_client like the page: a two-turn chat
  and schedule changes whose answers equal ``generate()`` on the same prompts, streaming in several updates, a
  kept-token map that is a real picture, regenerate, the `off` comparison, and a message (never a traceback) for
  each kind of bad input.
- The page itself in headless Chromium (scripts/screenshot_web_demo.py): after one answer the map is on the
  screenshot and not blank. Skipped, with the reason, only where Chromium or playwright is missing.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from train_fixtures import REPO, TINY_SCHEDULE, build_tiny_assets, free_port

pytest.importorskip("gradio", reason="gradio is not installed (the project's `serve` extra)")
gradio_client = pytest.importorskip("gradio_client", reason="gradio_client is not installed (the `serve` extra)")

from llava.conversation import get_conv_template  # noqa: E402
from llava.mm_utils import background_color, load_image, process_images, tokenizer_image_token  # noqa: E402
from llava.model.builder import load_pretrained_model  # noqa: E402
from llava.model.reduction.config import PRESETS, ReductionConfigError, resolve_reduction  # noqa: E402
from llava.serve.streaming import TokenStream  # noqa: E402

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
MAX_IMAGE_PIXELS = 1_000_000  # the server's --max-image-pixels here, so that "too large" needs no huge file
MAX_NEW = 12


# --------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> dict[str, str]:
    """A full tiny checkpoint (4 layers, 16 vision tokens, schedule pruning after layers 2 and 3) with its
    tokenizer and image processor, as training saves it."""
    from transformers import AutoTokenizer, CLIPImageProcessor

    from llava.train.train import build_model, parse_args

    root = tmp_path_factory.mktemp("webdemo")
    assets = build_tiny_assets(root / "assets", num_samples=8)
    args = parse_args(["--model_name_or_path", assets["llm"], "--vision_tower", assets["clip"], "--output_dir",
                       str(root / "out"), "--reduction", "tiny", "--reduction_overrides", TINY_SCHEDULE,
                       "--report_to", "none"])
    torch.manual_seed(0)
    build_model(*args).eval().save_pretrained(root / "full")
    AutoTokenizer.from_pretrained(assets["llm"]).save_pretrained(root / "full")
    CLIPImageProcessor.from_pretrained(assets["clip"]).save_pretrained(root / "full")
    return {"model": str(root / "full"), "image": str(Path(assets["images"]) / "0000.png"),
            "image2": str(Path(assets["images"]) / "0001.png"), "root": str(root)}


@pytest.fixture(scope="module")
def loaded(checkpoint):
    tokenizer, model, processor, context_len = load_pretrained_model(checkpoint["model"])
    return tokenizer, model, processor, int(context_len)


@pytest.fixture(scope="module")
def server(checkpoint):
    """The demo in a subprocess on a free local port; yields its URL, stops it at the end."""
    port = free_port()
    log = Path(checkpoint["root"]) / "server.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llava.serve.gradio_web_server", "--model-path", checkpoint["model"],
             "--host", "127.0.0.1", "--port", str(port), "--max-image-pixels", str(MAX_IMAGE_PIXELS),
             "--stream-interval", "0"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the demo server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the demo server did not answer within 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"url": url, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    # Bad input never reached a crash: the only tracebacks are the ones the demo logs for a failed answer.
    lines = log.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            assert i > 0 and "llava.serve.gradio_web_server ERROR" in lines[i - 1], "\n".join(lines[max(0, i - 5):])


@pytest.fixture()
def client(server, tmp_path):
    """A fresh visitor (its own session and conversation)."""
    return gradio_client.Client(server["url"], verbose=False, analytics_enabled=False, download_files=str(tmp_path))


# --------------------------------------------------------------------------------------------------- helpers
def prompt_ids(tokenizer, turns: list[tuple[str, str | None]]) -> torch.Tensor:
    """[1, T] prompt of a conversation whose last answer is to be generated, built independently of the demo."""
    conv = get_conv_template("vicuna_v1")
    for i, (question, answer) in enumerate(turns):
        conv.append_message(conv.roles[0], "<image>\n" + question if i == 0 else question)
        conv.append_message(conv.roles[1], answer)
    return tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt").unsqueeze(0)


def pixels_of(path: str, processor, model) -> torch.Tensor:
    image = load_image(path, background=background_color(processor))
    return process_images([image], processor, model.config.image_aspect_ratio)


def expected(loaded, image: str, turns: list[tuple[str, str | None]], reduction=None, max_new: int = MAX_NEW):
    """(answer text, realised average vision tokens) of ``generate()``, greedy."""
    tokenizer, model, processor, _ = loaded
    tokens, counts = model.generate(prompt_ids(tokenizer, turns), images=pixels_of(image, processor, model),
                                    do_sample=False, max_new_tokens=max_new, eos_token_id=tokenizer.eos_token_id,
                                    pad_token_id=tokenizer.pad_token_id, reduction=reduction, return_vision_counts=True)
    return tokenizer.decode(tokens[0], skip_special_tokens=True).strip(), float(counts.entering[0].float().mean())


def chat(client, question, image, preset="checkpoint", overrides="", temperature=0.0, top_p=1.0, max_new=MAX_NEW):
    """One /chat call; returns the outputs by name."""
    file = None if image is None else gradio_client.handle_file(image)
    out = client.predict(question, file, preset, overrides, temperature, top_p, max_new, api_name="/chat")
    return dict(zip(["chatbot", "textbox", "kept_map", "stats", "notice", "compare_left", "compare_right"], out))


def texts(chatbot) -> list[tuple[str, str]]:
    """(role, text) of every chatbot message."""
    out = []
    for m in chatbot:
        content = m["content"]
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        out.append((m["role"], content))
    return out


def last_answer(chatbot) -> str:
    role, text = texts(chatbot)[-1]
    assert role == "assistant"
    return text


def assert_not_blank(img: Image.Image, what: str) -> None:
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    assert arr.size and arr.std() > 10, f"{what} is blank (std {arr.std():.2f})"
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 16, f"{what} has almost no colours"


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height``: enough for PIL to read the size, tiny on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------------------------------- streaming
STREAM_SCHEDULES = [  # (preset or None for the checkpoint's own, overrides)
    (None, ""),  # HiDrop-shaped: inject 2, prune after 2 and 3, exit before 4
    ("off", ""),
    (None, "inject_layer=1 prune_layers=1,2 keep_counts=8,3 topk=hard position_scheme=compacted"),  # PDrop-shaped
    (None, "position_scheme=group"),
    ("mustdrop-64", "prune_layers=1,2 merge_window=2"),  # data-dependent counts, merged tower tokens, output-aware decoding cache
]


@pytest.mark.parametrize("preset,overrides", STREAM_SCHEDULES)
def test_stream_is_generate_token_by_token(loaded, checkpoint, preset, overrides):
    tokenizer, model, processor, _ = loaded
    red = resolve_reduction(preset, overrides or None, base=model.config.reduction_config).validate_for(
        model.config.num_hidden_layers, model.config.num_vision_tokens)
    ids = prompt_ids(tokenizer, [("What digit is this?", None)])
    pixels = pixels_of(checkpoint["image"], processor, model)
    cases = [
        dict(do_sample=False, temperature=1.0, top_p=None, seed=None),
        dict(do_sample=True, temperature=0.8, top_p=None, seed=3),
        dict(do_sample=True, temperature=1.3, top_p=0.7, seed=4),
    ]
    for case in cases:
        seed = case.pop("seed")
        gen_a = None if seed is None else torch.Generator().manual_seed(seed)
        gen_b = None if seed is None else torch.Generator().manual_seed(seed)
        ref, counts = model.generate(ids, images=pixels, max_new_tokens=20, eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=tokenizer.pad_token_id, reduction=red, generator=gen_a,
                                     return_vision_counts=True, **case)
        stream = TokenStream(model, ids, pixels, red, 20, eos_token_id=tokenizer.eos_token_id, generator=gen_b,
                             **case)
        got = []
        for token in stream:  # one at a time, as the page receives them
            got.append(token)
            assert torch.is_grad_enabled()  # no_grad never spans a yield (gradio resumes on other threads)
            assert got == ref[0, : len(got)].tolist(), f"{red.name} {case}: diverged at token {len(got)}"
        assert got == ref[0].tolist(), f"{red.name} {case}"
        assert stream.prefill is not None and stream.prefill.vision_counts == counts.entering[0].tolist()
        assert stream.prefill.vision_counts_after_filter == counts.after_filter[0].tolist()
        assert stream.prefill.seconds > 0 and stream.decode_seconds > 0
    # An EOS in the middle: both stop right after it, EOS included.
    ref = model.generate(ids, images=pixels, max_new_tokens=20, reduction=red, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=-1)[0].tolist()
    eos = ref[5]
    cut = model.generate(ids, images=pixels, max_new_tokens=20, reduction=red, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=eos)[0].tolist()
    assert list(TokenStream(model, ids, pixels, red, 20, eos_token_id=eos)) == cut == ref[: ref.index(eos) + 1]


# --------------------------------------------------------------------------------------------------- the server
def test_page_is_served(server):
    with urllib.request.urlopen(server["url"], timeout=10) as r:
        assert r.status == 200 and b"HiDrop-LLaVA" in r.read()


def test_two_turn_chat_and_schedule_changes_equal_generate(client, checkpoint, loaded, tmp_path):
    _, model, _, _ = loaded
    img = checkpoint["image"]
    q1, q2, q3, q4 = "What digit is this?", "Is it even?", "What comes after it?", "Render a short caption."

    r1 = chat(client, q1, img)
    a1, avg1 = expected(loaded, img, [(q1, None)])
    assert r1["notice"] == "" and last_answer(r1["chatbot"]) == a1 and a1
    assert f"**{avg1:.2f}** of 16" in r1["stats"] and "prefill" in r1["stats"] and "tokens/s" in r1["stats"]
    map1 = Image.open(r1["kept_map"])
    assert_not_blank(map1, "the kept-token map")

    r2 = chat(client, q2, img)  # the same image: the conversation goes on
    a2, _ = expected(loaded, img, [(q1, a1), (q2, None)])
    assert texts(r2["chatbot"]) == [("user", q1), ("assistant", a1), ("user", q2), ("assistant", a2)]

    # A schedule change mid-conversation: the next answer is prefilled under it.
    override = "keep_counts=4,2"
    r3 = chat(client, q3, img, overrides=override)
    red3 = resolve_reduction(None, override, base=model.config.reduction_config)
    a3, avg3 = expected(loaded, img, [(q1, a1), (q2, a2), (q3, None)], reduction=red3)
    assert last_answer(r3["chatbot"]) == a3 and f"**{avg3:.2f}** of 16" in r3["stats"] and avg3 < avg1
    assert f"`{red3.name}`" in r3["stats"]
    map3 = Image.open(r3["kept_map"])
    assert_not_blank(map3, "the kept-token map")
    assert np.asarray(map3).shape != np.asarray(map1).shape or (np.asarray(map3) != np.asarray(map1)).any()

    r4 = chat(client, q4, img, preset="off")
    a4, avg4 = expected(loaded, img, [(q1, a1), (q2, a2), (q3, a3), (q4, None)], reduction=PRESETS["off"])
    assert last_answer(r4["chatbot"]) == a4 and "**16.00** of 16" in r4["stats"] and avg4 == 16

    # Regenerate (greedy, same schedule): the same answer again, in place.
    out = client.predict("off", "", 0.0, 1.0, MAX_NEW, api_name="/regenerate")
    assert texts(out[0]) == texts(r4["chatbot"])

    # The `off` comparison of the last answer, side by side.
    r3b = chat(client, q1, img, preset="checkpoint")  # back to the loaded schedule
    a5, _ = expected(loaded, img, [(q1, a1), (q2, a2), (q3, a3), (q4, a4), (q1, None)])
    off5, _ = expected(loaded, img, [(q1, a1), (q2, a2), (q3, a3), (q4, a4), (q1, None)], reduction=PRESETS["off"])
    assert last_answer(r3b["chatbot"]) == a5
    left, right, notice = client.predict(api_name="/compare_off")
    assert notice == "" and left.startswith("### schedule `tiny") and a5 in left
    assert "`off`" in right and off5 in right and "**16.00** of 16" in right

    # A new image starts a new conversation.
    r6 = chat(client, q1, checkpoint["image2"])
    a6, _ = expected(loaded, checkpoint["image2"], [(q1, None)])
    assert texts(r6["chatbot"]) == [("user", q1), ("assistant", a6)] and "started over" in r6["stats"]


def test_answers_stream_in_several_updates(client, checkpoint, loaded):
    tokenizer, model, processor, _ = loaded
    question = "What digit is this?"
    job = client.submit(question, gradio_client.handle_file(checkpoint["image"]), "checkpoint", "", 0.0, 1.0, 16,
                        api_name="/chat")
    answer = last_answer(job.result(timeout=120)[0])
    tokens = model.generate(prompt_ids(tokenizer, [(question, None)]),
                            images=pixels_of(checkpoint["image"], processor, model), max_new_tokens=16,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)[0].tolist()
    assert answer == tokenizer.decode(tokens, skip_special_tokens=True).strip()
    # Each update showed the answer after some number of tokens (a trailing partial character held back); a prefix
    # of bytes can decode to other characters than the whole answer does, so the updates are compared with the
    # decodes of the token prefixes, not with the final text.
    prefixes = {tokenizer.decode(tokens[:k], skip_special_tokens=True).strip().rstrip("\ufffd") for k in
                range(1, len(tokens) + 1)}
    partial = [texts(o[0])[-1][1] for o in job.outputs() if o[0] and texts(o[0])[-1][0] == "assistant"]
    streamed = [p for p in partial if p != "…"]  # "…": before the first token
    assert set(streamed) <= prefixes, (streamed, prefixes)
    assert len(set(streamed)) >= min(4, len(prefixes)), streamed  # the page saw the answer grow


def test_bad_input_is_a_message(client, checkpoint, loaded, tmp_path):
    _, model, _, context_len = loaded
    img = checkpoint["image"]
    ok = chat(client, "What digit is this?", img)
    history = texts(ok["chatbot"])

    def refused(result, *needles):
        assert result["notice"].startswith("⚠ "), result
        assert all(n in result["notice"] for n in needles), result["notice"]
        assert "Traceback" not in json.dumps(result)
        assert texts(result["chatbot"]) == history  # nothing was added, nothing lost

    not_image = tmp_path / "notes.txt"
    not_image.write_text("this is not a picture")
    refused(chat(client, "What is this?", str(not_image)), "'notes.txt' is not an image")
    big = tmp_path / "big.png"
    big.write_bytes(png_header(2000, 1000))  # 2 megapixels, over this server's 1
    refused(chat(client, "What is this?", str(big)), "2000 x 1000", "--max-image-pixels")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(30000, 30000))  # PIL refuses it outright (decompression bomb)
    refused(chat(client, "What is this?", str(bomb)), "'bomb.png' is too large")
    refused(chat(client, "   ", img), "Type a question")
    long_question = "seven " * context_len
    refused(chat(client, long_question, img), f"context length is {context_len}", "nothing was generated")
    for preset, overrides in (("nosuch", ""), ("checkpoint", "exit_layer=99"), ("checkpoint", "exit_layer"),
                              ("off", "no_such_field=1")):
        with pytest.raises(ReductionConfigError) as e:  # the scripts' own message
            resolve_reduction(None if preset == "checkpoint" else preset, overrides or None,
                              base=model.config.reduction_config).validate_for(model.config.num_hidden_layers,
                                                                               model.config.num_vision_tokens)
        refused(chat(client, "What digit is this?", img, preset=preset, overrides=overrides), str(e.value))
        assert client.predict(preset, overrides, api_name="/check_schedule") == f"⚠ Invalid schedule: {e.value}"
    refused(chat(client, "What digit is this?", img, temperature="hot"), "must be numbers")
    refused(chat(client, "What digit is this?", img, max_new=0), "max new tokens")
    # After all that, the conversation goes on where it was.
    again = chat(client, "Is it even?", img)
    a2, _ = expected(loaded, img, [("What digit is this?", history[1][1]), ("Is it even?", None)])
    assert last_answer(again["chatbot"]) == a2
    assert client.predict("checkpoint", "", api_name="/check_schedule").startswith("reduction 'tiny")


def test_a_schedule_the_model_cannot_run_is_a_schedule_message(client, checkpoint):
    """MustDrop's local merging needs the patch grid (4 x 4 here) divisible by its window (3): validation says so."""
    img = checkpoint["image"]
    ok = chat(client, "What digit is this?", img)
    failed = chat(client, "Is it even?", img, preset="mustdrop-64", overrides="prune_layers=1,2")
    assert "merge_window" in failed["notice"] and "Traceback" not in failed["notice"]
    assert texts(failed["chatbot"]) == texts(ok["chatbot"])


def test_the_picker_marks_the_presets_this_model_cannot_run_and_says_why(server, client, loaded):
    """14 of the presets were offered as if they could run; each was refused only once picked. The page's own
    config: every preset that does not fit is marked in the list, and the accordion under it gives each reason,
    the very message the page gives when that preset is picked."""
    from llava.serve.chat_engine import ChatEngine

    tokenizer, model, processor, context_len = loaded
    with urllib.request.urlopen(server["url"] + "config", timeout=10) as r:
        config = json.loads(r.read())
    props = {c["props"].get("elem_id"): c["props"] for c in config["components"] if c.get("props", {}).get("elem_id")}
    choices = [tuple(c) for c in props["schedule"]["choices"]]
    unfit = ChatEngine(tokenizer, model, processor, context_len).unfit_presets()
    assert "off" in dict(choices).values() and unfit and "tok64" in unfit
    assert sorted(value for _, value in choices) == sorted(["checkpoint", *PRESETS])
    for label, value in choices:
        assert label.endswith("(does not fit this model)") == (value in unfit), (label, value)
    reasons = props["unfit_presets"]["value"]
    for name, reason in unfit.items():
        assert client.predict(name, "", api_name="/check_schedule") == f"⚠ Invalid schedule: {reason}"
        assert f"- `{name}`: " in reasons
    for name in set(PRESETS) - set(unfit):
        assert not client.predict(name, "", api_name="/check_schedule").startswith("⚠")
    assert "must be < exit_layer" not in reasons  # presets without an exit are refused by depth, not a phantom exit


def test_merging_and_key_sets_run_and_the_page_counts_real_tokens(client, checkpoint, loaded):
    """A key set on a grid the merge window does not divide answers (before: "Internal error ... not divisible by
    window 3" on every question); with local merging the stats and the map count the 4 merged tokens, not the
    8 and 4 slots the top-k stages keep (before: "kept: 8 after layer 2, 4 after layer 3")."""
    img = checkpoint["image"]
    key_set = chat(client, "What digit is this?", img, overrides="key_ratio=0.1")
    assert key_set["notice"] == "" and last_answer(key_set["chatbot"]), key_set
    merged = chat(client, "Is it even?", img, overrides="local_merge=true merge_window=2 merge_threshold=-1")
    assert merged["notice"] == "", merged["notice"]
    assert "**2.00** of 16" in merged["stats"]  # 4 tokens on layers 2 and 3 of 4
    assert "kept: 4 after local merging, 4 after layer 2, 4 after layer 3" in merged["stats"]
    assert_not_blank(Image.open(merged["kept_map"]), "the kept-token map")


def test_a_failing_answer_is_one_line_and_forgets_the_turn(checkpoint, loaded, monkeypatch, caplog):
    """A failure inside the model: one line on the page, the traceback in the server log, the turn forgotten."""
    from llava.serve.chat_engine import ChatEngine
    from llava.serve.gradio_web_server import DemoHandlers

    tokenizer, model, processor, context_len = loaded
    handlers = DemoHandlers(ChatEngine(tokenizer, model, processor, context_len), skip=lambda: None,
                            stream_interval=0)
    image = {"path": checkpoint["image"], "orig_name": "0000.png"}
    state = list(handlers.chat(None, "What digit is this?", image, "checkpoint", "", 0, 1, MAX_NEW))[-1][0]
    before = (list(state.conv.messages), state.last)

    def broken(*args, **kwargs):
        raise RuntimeError("the accelerator fell over")

    monkeypatch.setattr(model, "multimodal_batch", broken)
    with caplog.at_level("ERROR"):
        outputs = list(handlers.chat(state, "Is it even?", image, "checkpoint", "", 0, 1, MAX_NEW))
    notice = outputs[-1][5]
    assert notice.startswith("⚠ Internal error while answering (RuntimeError: the accelerator fell over)")
    assert "Traceback" not in notice and any(r.exc_info for r in caplog.records)
    assert state.conv.messages == before[0] and state.last is before[1]


def test_first_question_needs_an_image_and_regenerate_needs_an_answer(client):
    assert chat(client, "What is this?", None)["notice"] == "⚠ Upload an image first."
    out = client.predict("checkpoint", "", 0.0, 1.0, MAX_NEW, api_name="/regenerate")
    assert "no answer to regenerate" in out[4]
    left, right, notice = client.predict(api_name="/compare_off")
    assert "Ask a question first" in notice


# --------------------------------------------------------------------------------------------------- the browser
def _have_playwright() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
@pytest.mark.skipif(not _have_playwright(), reason="the playwright Python package is missing (the `dev` extra)")
def test_screenshot_shows_the_kept_token_map(server, checkpoint, loaded, tmp_path):
    page, kept = tmp_path / "page.png", tmp_path / "map.png"
    question = "What digit is this?"
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "screenshot_web_demo.py"), "--url", server["url"], "--image",
         checkpoint["image"], "--question", question, "--output", str(page), "--map-output", str(kept),
         "--temperature", "0", "--max-new-tokens", str(MAX_NEW), "--chromium", CHROMIUM, "--timeout", "120"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    info = json.loads(run.stdout.strip().splitlines()[-1])
    answer, _ = expected(loaded, checkpoint["image"], [(question, None)])
    assert info["answer"] == answer  # the browser got generate()'s answer too
    assert "prefill" in info["stats"] and info["notice"] == ""
    assert_not_blank(Image.open(kept), "the map element's screenshot")
    shot = Image.open(page)
    box = info["map_box"]
    region = shot.crop((int(box["x"]), int(box["y"]), int(box["x"] + box["width"]), int(box["y"] + box["height"])))
    assert region.width > 100 and region.height > 100
    assert_not_blank(region, "the map's region of the page screenshot")


# --------------------------------------------------------------------------------------------------- in process
def test_start_up_errors_are_one_line(checkpoint, tmp_path, capsys):
    from llava.serve.gradio_web_server import main

    for argv, needle in (
        (["--reduction", "nosuch"], "unknown reduction preset 'nosuch'"),
        (["--reduction-override", "exit_layer"], "override 'exit_layer' is not of the form key=value"),
        (["--reduction-override", "exit_layer=99"], "exit_layer=99 must be <= num_layers + 1 = 5"),
    ):
        assert main(["--model-path", checkpoint["model"], *argv]) == 2
        err = capsys.readouterr().err
        assert "error: " in err and needle in err and "Traceback" not in err, err
    assert main(["--model-path", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_a_turn_cut_short_is_forgotten(checkpoint, loaded):
    """A visitor who leaves mid-answer closes the handler's generator: the conversation is as before the turn."""
    from llava.serve.chat_engine import ChatEngine
    from llava.serve.gradio_web_server import DemoHandlers

    tokenizer, model, processor, context_len = loaded
    handlers = DemoHandlers(ChatEngine(tokenizer, model, processor, context_len), skip=lambda: None,
                            stream_interval=0)
    image = {"path": checkpoint["image"], "orig_name": "0000.png"}
    first = list(handlers.chat(None, "What digit is this?", image, "checkpoint", "", 0, 1, MAX_NEW))
    state = first[-1][0]
    before = (list(state.conv.messages), state.last)
    gen = handlers.chat(state, "Is it even?", image, "checkpoint", "", 0, 1, MAX_NEW)
    assert next(gen)[1][-1] == {"role": "assistant", "content": "…"}  # the turn is open
    next(gen)  # a first token
    gen.close()
    assert state.conv.messages == before[0] and state.last is before[1]
