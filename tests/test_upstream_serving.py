"""Upstream LLaVA's serving stack on localhost, started with upstream's README command lines (typed out here): a
controller, two model workers (one per schedule: the checkpoint's own, and ``--reduction off`` on the upstream-layout
copy), upstream's smoke test, the streaming API driven by a client, the web page in controller mode, and one worker
overloaded and then killed in the middle of an answer.

What it proves: the streamed answer is the answer ``model.generate`` gives for the same prompt and image, its last
chunk carries the kept-token map and the statistics, and the page shows them; a busy worker answers at once with a
message; a killed worker gives a message on the page within seconds (never a hang), and the controller drops it
when its heartbeats stop.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image
from train_fixtures import REPO, free_port

pytest.importorskip("fastapi", reason="fastapi is not installed (the project's `serve` extra)")
pytest.importorskip("gradio", reason="gradio is not installed (the project's `serve` extra)")

from llava.conversation import conv_templates  # noqa: E402
from llava.mm_utils import process_images, tokenizer_image_token  # noqa: E402
from llava.model.builder import load_pretrained_model  # noqa: E402
from llava.serve.controller_client import ControllerClient, ServingError  # noqa: E402


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait(condition, what: str, timeout: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in logs if p.exists())
            pytest.fail(f"{what} did not happen within {timeout:.0f} s\n{tails}")
        time.sleep(0.3)


def _raw_chunks(address: str, payload: dict) -> list[dict]:
    """The worker's stream as upstream's clients read it: JSON objects, each followed by a null byte."""
    with httpx.stream("POST", address + "/worker_generate_stream", json=payload, timeout=60) as r:
        body = b"".join(r.iter_bytes())
    assert body.endswith(b"\0")
    return [json.loads(part) for part in body.split(b"\0")[:-1]]


def test_controller_two_workers_streaming_and_a_killed_worker(upstream_checkpoints, tmp_path: Path) -> None:
    from llava.serve import gradio_web_server, register_worker
    from llava.serve.controller_web_page import ControllerPageHandlers

    ctl_port, p1, p2 = free_port(), free_port(), free_port()
    controller = f"http://127.0.0.1:{ctl_port}"
    w1, w2 = f"http://127.0.0.1:{p1}", f"http://127.0.0.1:{p2}"
    logs = [tmp_path / "controller.log", tmp_path / "worker1.log", tmp_path / "worker2.log"]
    procs = [_start(["llava.serve.controller", "--host", "127.0.0.1", "--port", str(ctl_port),
                     "--heart-beat-expiration", "2"], logs[0])]
    try:
        procs.append(_start(["llava.serve.model_worker", "--host", "127.0.0.1", "--controller", controller,
                             "--port", str(p1), "--worker", w1, "--model-path", upstream_checkpoints["ours"],
                             "--heart-beat-interval", "0.5"], logs[1]))
        procs.append(_start(["llava.serve.model_worker", "--host", "127.0.0.1", "--controller", controller,
                             "--port", str(p2), "--worker", w2, "--model-path", upstream_checkpoints["upstream"],
                             "--reduction", "off", "--limit-model-concurrency", "1", "--heart-beat-interval", "0.5"],
                            logs[2]))
        client = ControllerClient(controller, read_timeout=30)

        def listed() -> list[str]:
            try:
                return client.list_models()
            except ServingError:
                return []

        _wait(lambda: listed() == ["llava-v1.5-7b-off", "my-run"], "both workers registering", 240, logs)

        # upstream's smoke test, as its README runs it
        smoke = subprocess.run([sys.executable, "-m", "llava.serve.test_message", "--controller-address", controller,
                                "--model-name", "my-run", "--max-new-tokens", "4", "--message", "What comes after one?"],
                               cwd=REPO, capture_output=True, text=True, timeout=120)
        assert smoke.returncode == 0, smoke.stderr
        assert "Models: ['llava-v1.5-7b-off', 'my-run']" in smoke.stdout and "USER: What comes after one?" in smoke.stdout

        # the streaming API: upstream's request, chunk by chunk; the answer is model.generate's
        image_path = f"{upstream_checkpoints['images']}/0005.png"
        conv = conv_templates["vicuna_v1"].copy()
        conv.append_message(conv.roles[0], "<image>\nWhat digit is this?")
        conv.append_message(conv.roles[1], None)
        prompt = conv.get_prompt()
        payload = {"model": "my-run", "prompt": prompt, "temperature": 0, "top_p": 1.0, "max_new_tokens": 6,
                   "stop": conv.sep2, "images": [base64.b64encode(Path(image_path).read_bytes()).decode()]}
        address = client.worker_address("my-run")
        assert address == w1
        chunks = _raw_chunks(address, payload)
        assert all(c["error_code"] == 0 and c["text"].startswith(prompt) for c in chunks) and len(chunks) >= 2
        report = chunks[-1]["hidrop"]
        assert base64.b64decode(report["kept_map_png"])[:8] == b"\x89PNG\r\n\x1a\n"
        assert "Schedule" in report["stats_markdown"] and report["realised_avg_vision_tokens"] == 6.0
        tokenizer, model, processor, _ = load_pretrained_model(upstream_checkpoints["ours"], device="cpu")
        ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt").unsqueeze(0)
        pixels = process_images([Image.open(image_path).convert("RGB")], processor, model.config)
        expected = tokenizer.decode(model.generate(ids, images=pixels, max_new_tokens=6)[0], skip_special_tokens=True)
        assert chunks[-1]["text"][len(prompt):] == expected.strip()
        status = client.worker_status(w2)
        assert status["model_names"] == ["llava-v1.5-7b-off"] and status["hidrop"]["schedule"] == "off"

        # the web page in controller mode: the README's command line, and the page's chat
        launched = {}
        import gradio

        original = gradio.Blocks.launch
        gradio.Blocks.launch = lambda self, **kw: launched.update(kw)
        try:
            assert gradio_web_server.main(["--controller", controller, "--model-list-mode", "reload",
                                           "--port", str(free_port())]) == 0
        finally:
            gradio.Blocks.launch = original
        assert launched["server_port"] > 0
        page = ControllerPageHandlers(client, skip=lambda: None, reload_models=True, stream_interval=0)
        dropdown, info, notice = page.load_models()
        assert dropdown["choices"] == ["llava-v1.5-7b-off", "my-run"] and notice == ""
        upload = {"path": image_path, "orig_name": "digit.png"}
        *_, last = page.chat(None, "What digit is this?", upload, "my-run", 0, 1.0, 6)
        state, chat, _, kept_map, stats, notice = last
        assert notice == "" and chat[-1]["content"] == expected.strip() and kept_map.size[0] > 100
        assert "Schedule" in stats

        # worker 2 holds one request at most: a second one is refused at once, with a message. The long answer must
        # not end early: pick a question whose greedy answer (worker 2's model, schedule off) runs 200 tokens or more.
        _, off_model, off_processor, _ = load_pretrained_model(upstream_checkpoints["upstream"], device="cpu")
        off_pixels = process_images([Image.open(image_path).convert("RGB")], off_processor, off_model.config)
        for question in ("What digit is this?", "Describe the image.", "What comes after one?", "Is it even?"):
            conv = conv_templates["vicuna_v1"].copy()
            conv.append_message(conv.roles[0], f"<image>\n{question}")
            conv.append_message(conv.roles[1], None)
            long_ids = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt").unsqueeze(0)
            if off_model.generate(long_ids, images=off_pixels, max_new_tokens=200).shape[1] == 200:
                break
        else:
            pytest.fail("every candidate question's answer ends within 200 tokens")
        long_payload = dict(payload, model="llava-v1.5-7b-off", prompt=conv.get_prompt(), max_new_tokens=2000)
        outcome: dict = {}
        first_chunk = threading.Event()

        def long_request() -> None:
            try:
                for _ in client.stream(w2, long_payload):
                    first_chunk.set()
            except ServingError as e:
                outcome["error"] = str(e)
            first_chunk.set()

        thread = threading.Thread(target=long_request)
        thread.start()
        assert first_chunk.wait(60)
        start = time.monotonic()
        (busy,) = _raw_chunks(w2, dict(payload, model="llava-v1.5-7b-off"))
        assert busy["error_code"] == 4 and "busy" in busy["text"] and time.monotonic() - start < 10

        # killed in the middle of that answer: the client hears it, the page says so, the controller drops it
        procs[2].send_signal(signal.SIGKILL)
        procs[2].wait(timeout=30)
        thread.join(timeout=60)
        assert not thread.is_alive() and "stopped in the middle" in outcome.get("error", "")
        start = time.monotonic()
        *_, last = page.chat(None, "What digit is this?", upload, "llava-v1.5-7b-off", 0, 1.0, 6)
        assert "not reachable" in last[-1] or "no worker serves" in last[-1]
        assert time.monotonic() - start < 15
        _wait(lambda: listed() == ["my-run"], "the controller dropping the killed worker", 30, logs)
        *_, last = page.chat(None, "What digit is this?", upload, "llava-v1.5-7b-off", 0, 1.0, 6)
        assert "no worker serves model 'llava-v1.5-7b-off'" in last[-1]

        # registering by hand: a live worker is (re)registered, a dead address is refused
        assert register_worker.main(["--controller-address", controller, "--worker-name", w1]) == 0
        assert register_worker.main(["--controller-address", controller, "--worker-name", w2]) == 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
