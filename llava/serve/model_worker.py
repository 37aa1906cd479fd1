"""A model worker of upstream LLaVA's multi-process demo: one model (with one token-reduction schedule) behind
upstream's HTTP API, registered with a controller.

    python -m llava.serve.model_worker --host 0.0.0.0 --controller http://localhost:10000 --port 40000 \\
        --worker http://localhost:40000 --model-path CKPT [--reduction tok64] [--reduction-override "exit_layer=24"]

Run one per GPU or machine (different ``--port``/``--worker``); the controller spreads requests for a model name
over the workers that serve it. The model name is ``--model-name``, else the checkpoint's folder name
(``get_model_name_from_path``) followed by ``-<preset>`` when ``--reduction`` is given, so two schedules of one
checkpoint are two models on the page.

HTTP API (upstream's):

* ``POST /worker_get_status`` -> ``{"model_names": [name], "speed": 1, "queue_length": n}`` plus ours under
  ``"hidrop"``: the schedule (name, description), layers, vision tokens per image, context length.
* ``POST /worker_generate_stream`` with ``{"model", "prompt", "images": [base64 file], "temperature", "top_p",
  "max_new_tokens", "stop"}`` streams JSON chunks, each followed by a null byte: ``{"text": prompt + answer so far,
  "error_code": 0}``. The last one also holds ``"hidrop"``: the kept-token map of the answer's prefill (a base64
  PNG, when there is an image), the statistics the web page shows, the realised average vision tokens, the prefill
  time and the decoding speed. Ours in the request: ``"reduction"`` / ``"reduction_overrides"`` answer under
  another schedule (the page's "Same answer under off").

Errors are chunks too, never a hang: ``error_code`` 1 with the reason (bad image, prompt too long, unknown
schedule, a failure while generating) and 4 (ours) when the worker already holds ``--limit-model-concurrency``
requests (running or waiting). The model answers one request at a time; a waiting request gets a chunk with no new
text every few seconds, so its client can tell a busy worker from a dead one. The worker sends a heartbeat to the
controller every ``--heart-beat-interval`` seconds (15, upstream's) and registers again when the controller has
forgotten it.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import queue
import threading
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI, Request  # at module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import StreamingResponse

from llava.constants import DEFAULT_IMAGE_TOKEN, WORKER_HEART_BEAT_INTERVAL
from llava.mm_utils import ImageLoadError, background_color, get_model_name_from_path, load_image_from_base64
from llava.model.builder import load_pretrained_model
from llava.serve.chat_engine import Answer, ChatEngine, DemoInputError, parse_sampling
from llava.serve.common import split_override_args

logger = logging.getLogger("llava.serve.model_worker")

GENERATION_FAILED, OVERLOADED = 1, 4
KEEPALIVE_S = 2.0  # a waiting request hears from the worker this often
REQUEST_TIMEOUT_S = 5.0


def _chunk(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode() + b"\0"


class ModelWorker:
    """The model, the request queue and the link to the controller."""

    def __init__(self, controller_addr: str, worker_addr: str, worker_id: str, no_register: bool, model_path: str,
                 model_base: str | None, model_name: str | None, load_8bit: bool, load_4bit: bool,
                 device: str | None, use_flash_attn: bool = False, *, reduction: str | None = None,
                 reduction_overrides: Sequence[str] = (), vision_tower_path: str | None = None,
                 conv_mode: str = "vicuna_v1", limit_model_concurrency: int = 5,
                 heart_beat_interval: float = WORKER_HEART_BEAT_INTERVAL, stream_interval: int = 1,
                 dtype: torch.dtype | None = None) -> None:
        if limit_model_concurrency < 1:
            raise ValueError(f"--limit-model-concurrency must be >= 1, got {limit_model_concurrency}")
        self.controller_addr = controller_addr.rstrip("/")
        self.worker_addr = worker_addr.rstrip("/")
        self.worker_id = worker_id
        self.no_register = no_register
        self.model_name = model_name or (get_model_name_from_path(model_path) + (f"-{reduction}" if reduction else ""))
        self.limit = limit_model_concurrency
        self.heart_beat_interval = heart_beat_interval
        self.stream_interval = max(1, stream_interval)
        logger.info("loading %s as model %r on worker %s", model_path, self.model_name, worker_id)
        tokenizer, model, processor, context_len = load_pretrained_model(
            model_path, model_base, self.model_name, load_8bit, load_4bit, device=device, use_flash_attn=use_flash_attn,
            torch_dtype=dtype, reduction=reduction, reduction_overrides=list(reduction_overrides) or None,
            vision_tower_path=vision_tower_path)
        self.engine = ChatEngine(tokenizer, model, processor, int(context_len), conv_mode=conv_mode)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")  # one request at a time
        self._admitted = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # ------------------------------------------------------------------------------------------- controller
    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        import httpx

        r = httpx.post(self.controller_addr + path, json=payload, timeout=REQUEST_TIMEOUT_S)
        r.raise_for_status()
        return r.json() or {}

    def register_to_controller(self) -> bool:
        import httpx

        try:
            ok = bool(self._post("/register_worker", {"worker_name": self.worker_addr, "check_heart_beat": True,
                                                      "worker_status": self.get_status()}).get("registered", True))
        except (httpx.HTTPError, ValueError) as e:
            logger.error("cannot register with the controller at %s (%s); retrying with each heartbeat",
                         self.controller_addr, e)
            return False
        logger.info("registered with the controller at %s as %s", self.controller_addr, self.worker_addr)
        return ok

    def send_heart_beat(self) -> None:
        import httpx

        try:
            exist = self._post("/receive_heart_beat", {"worker_name": self.worker_addr,
                                                       "queue_length": self.get_queue_length()}).get("exist", False)
        except (httpx.HTTPError, ValueError) as e:
            logger.warning("heartbeat to %s failed: %s", self.controller_addr, e)
            return
        if not exist:
            self.register_to_controller()

    def start_heart_beat(self) -> threading.Thread:
        def loop() -> None:
            self.register_to_controller()
            while not self._stop.wait(self.heart_beat_interval):
                self.send_heart_beat()

        thread = threading.Thread(target=loop, name="heart-beat", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------------------------------- status
    def get_queue_length(self) -> int:
        with self._lock:
            return self._admitted

    def get_status(self) -> dict[str, Any]:
        eng = self.engine
        schedule = eng.loaded_schedule
        return {
            "model_names": [self.model_name],
            "speed": 1,
            "queue_length": self.get_queue_length(),
            "hidrop": {"schedule": schedule.name, "description": eng.describe_schedule(schedule),
                       "num_layers": eng.num_layers, "num_vision_tokens": eng.num_vision_tokens,
                       "context_len": eng.context_len, "conv_mode": eng.conv_mode},
        }

    # ------------------------------------------------------------------------------------------- generation
    def generate_stream(self, params: dict[str, Any]) -> Iterator[bytes]:
        """The response chunks of one request (see the module docstring); never raises."""
        with self._lock:
            if self._admitted >= self.limit:
                busy = self._admitted
                overloaded = True
            else:
                self._admitted += 1
                overloaded = False
        if overloaded:
            yield _chunk({"text": f"worker {self.worker_addr} is busy ({busy} requests in progress, its limit is "
                                  f"{self.limit}); try again shortly or pick another model", "error_code": OVERLOADED})
            return
        out: queue.Queue = queue.Queue()
        cancel = threading.Event()
        try:
            self._executor.submit(self._answer, params, out, cancel)
            # Keep-alive: the last chunk again (its text unchanged), or the bare prompt while the request waits.
            last = _chunk({"text": str(params.get("prompt", "")), "error_code": 0, "waiting": True})
            while True:
                try:
                    item = out.get(timeout=KEEPALIVE_S)
                except queue.Empty:
                    yield last
                    continue
                if item is None:
                    return
                last = item
                yield item
        finally:
            cancel.set()  # the client went away: the model stops after its current token
            with self._lock:
                self._admitted -= 1

    def _answer(self, params: dict[str, Any], out: queue.Queue, cancel: threading.Event) -> None:
        """Runs on the model thread; puts the chunks, then None."""
        try:
            if not cancel.is_set():
                for item in self._answer_chunks(params, cancel):
                    out.put(item)
        except (DemoInputError, ImageLoadError, ValueError) as e:
            out.put(_chunk({"text": str(e), "error_code": GENERATION_FAILED}))
        except Exception as e:  # a failure of the model itself: logged with its traceback, reported in one line
            logger.exception("generation failed")
            out.put(_chunk({"text": f"the worker failed while answering ({type(e).__name__}: {e})",
                            "error_code": GENERATION_FAILED}))
        finally:
            out.put(None)

    def _answer_chunks(self, params: dict[str, Any], cancel: threading.Event) -> Iterator[bytes]:
        eng = self.engine
        prompt = params.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise DemoInputError("the request has no prompt")
        images = params.get("images") or []
        if not isinstance(images, list):
            raise DemoInputError("images must be a list of base64-encoded image files")
        if len(images) != prompt.count(DEFAULT_IMAGE_TOKEN):
            raise DemoInputError(f"the prompt has {prompt.count(DEFAULT_IMAGE_TOKEN)} {DEFAULT_IMAGE_TOKEN} "
                                 f"placeholder(s) but {len(images)} image(s) came with it")
        if len(images) > 1:
            raise DemoInputError("LLaVA-1.5 takes one image per conversation; start a new conversation for another")
        sampling = parse_sampling(params.get("temperature", 1.0), params.get("top_p", 1.0),
                                  min(int(params.get("max_new_tokens", 256)), 1024))
        schedule = eng.resolve_schedule(params.get("reduction"), params.get("reduction_overrides"))
        pixels = None
        if images:
            image = load_image_from_base64(images[0], background=background_color(eng.image_processor))
            pixels = self._pixels(image)
        turn = eng.turn_for_prompt(prompt, sampling)
        stop = params.get("stop")
        stop = stop if isinstance(stop, str) and stop.strip() else None  # a bare separator (" ") ends nothing
        answer: Answer | None = None
        text, sent = "", 0
        for item in eng.answer_stream(pixels, turn, schedule, sampling):
            if isinstance(item, Answer):
                answer = item
                break
            text = item
            if stop and stop in text:
                text = text[: text.index(stop)]
                break
            sent += 1
            if sent % self.stream_interval == 0:
                yield _chunk({"text": prompt + text, "error_code": 0})
            if cancel.is_set():
                return
        # The last chunk always carries "hidrop" (the page knows the answer is complete); the statistics and the map
        # need the finished answer, so an answer cut at a stop string has only its schedule.
        report = self._report(pixels, answer, turn.note) if answer is not None else {"schedule": schedule.name}
        text = answer.text if answer is not None else text.strip()
        yield _chunk({"text": prompt + text, "error_code": 0, "hidrop": report})

    def _pixels(self, image: Any) -> torch.Tensor:
        """[1, 3, H, W] in the model's dtype, on the CPU (ChatEngine moves it), with the demo's size bound."""
        from llava.mm_utils import process_images

        eng = self.engine
        if image.size[0] * image.size[1] > eng.max_image_pixels:
            raise DemoInputError(f"the image is {image.size[0]} x {image.size[1]} pixels; this worker takes up to "
                                 f"{eng.max_image_pixels / 1e6:.0f} megapixels")
        pixels = process_images([image], eng.image_processor, eng.model.config)
        return pixels.to(next(eng.model.parameters()).dtype)

    def _report(self, pixels: torch.Tensor | None, answer: Answer, note: str | None) -> dict[str, Any]:
        """What the page shows after an answer: the statistics and, with an image, the kept-token map."""
        eng = self.engine
        report: dict[str, Any] = {
            "schedule": answer.schedule.name,
            "stats_markdown": eng.stats_markdown(answer, [note] if note else []),
            "realised_avg_vision_tokens": answer.prefill.realised_avg_vision_tokens,
            "prefill_seconds": answer.prefill.seconds,
            "tokens_per_second": answer.tokens_per_second,
            "new_tokens": len(answer.tokens),
        }
        if pixels is not None:
            buffer = io.BytesIO()
            eng.kept_map(pixels, answer).save(buffer, format="PNG")
            report["kept_map_png"] = base64.b64encode(buffer.getvalue()).decode()
        return report


def create_app(worker: ModelWorker) -> Any:
    @asynccontextmanager
    async def lifespan(app: Any):
        if not worker.no_register:  # registered once the server is up, so the controller can reach it
            worker.start_heart_beat()
        yield
        worker.stop()

    app = FastAPI(title="HiDrop-LLaVA model worker", lifespan=lifespan)

    @app.post("/worker_generate_stream")
    async def worker_generate_stream(request: Request) -> Any:
        try:
            params = await request.json()
        except ValueError:
            params = None
        if not isinstance(params, dict):
            params = {}
        return StreamingResponse(worker.generate_stream(params))

    @app.post("/worker_get_status")
    def worker_get_status() -> dict[str, Any]:
        return worker.get_status()

    return app


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.serve.model_worker", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", type=str, default="localhost")
    p.add_argument("--port", type=int, default=21002)
    p.add_argument("--worker-address", type=str, default="http://localhost:21002",
                   help="the URL the controller and the web page reach this worker at")
    p.add_argument("--controller-address", type=str, default="http://localhost:21001")
    p.add_argument("--model-path", type=str, required=True)
    p.add_argument("--model-base", type=str, default=None)
    p.add_argument("--model-name", type=str, default=None,
                   help="the name on the page (default: the folder name, plus -<preset> with --reduction)")
    p.add_argument("--device", type=str, default=None, help="default: cuda when there is a GPU, else cpu")
    p.add_argument("--multi-modal", action="store_true", help="accepted for upstream's command lines; every model "
                   "here is multimodal (upstream decided it from the name)")
    p.add_argument("--limit-model-concurrency", type=int, default=5,
                   help="requests held at once (one answering, the others waiting); more are refused at once")
    p.add_argument("--stream-interval", type=int, default=1, help="send the text every N tokens")
    p.add_argument("--no-register", action="store_true", help="do not register with the controller")
    p.add_argument("--load-8bit", action="store_true")
    p.add_argument("--load-4bit", action="store_true")
    p.add_argument("--use-flash-attn", action="store_true")
    ours = p.add_argument_group("HiDrop-LLaVA")
    ours.add_argument("--reduction", default=None, help="schedule preset replacing the checkpoint's (e.g. tok64, off)")
    ours.add_argument("--reduction-override", nargs="*", default=[], metavar="KEY=VALUE",
                      help="single-field schedule overrides")
    ours.add_argument("--vision-tower-path", default=None, help="local CLIP folder replacing the tower's hub id")
    ours.add_argument("--conv-mode", default="vicuna_v1", help="the template the web page builds prompts with")
    ours.add_argument("--dtype", default="auto", choices=("auto", "float16", "bfloat16", "float32"),
                      help="auto: float16 on GPU, float32 on CPU")
    ours.add_argument("--heart-beat-interval", type=float, default=WORKER_HEART_BEAT_INTERVAL,
                      help="seconds between heartbeats to the controller (upstream's constant, 15)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    import uvicorn

    from llava.model.builder import CheckpointError
    from llava.model.reduction.config import ReductionConfigError

    try:
        worker = ModelWorker(
            args.controller_address, args.worker_address, uuid.uuid4().hex[:6], args.no_register, args.model_path,
            args.model_base, args.model_name, args.load_8bit, args.load_4bit, args.device, args.use_flash_attn,
            reduction=args.reduction, reduction_overrides=split_override_args(args.reduction_override),
            vision_tower_path=args.vision_tower_path, conv_mode=args.conv_mode,
            limit_model_concurrency=args.limit_model_concurrency, heart_beat_interval=args.heart_beat_interval,
            stream_interval=args.stream_interval, dtype=None if args.dtype == "auto" else getattr(torch, args.dtype))
    except (CheckpointError, ReductionConfigError, ValueError, OSError) as e:
        logger.error("cannot start the worker: %s", e)
        return 2
    logger.info("serving %r on %s (controller %s)", worker.model_name, worker.worker_addr, worker.controller_addr)
    uvicorn.run(create_app(worker), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
