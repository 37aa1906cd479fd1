"""The controller of upstream LLaVA's multi-process demo: it knows which model workers are alive and which models they
serve, and tells clients where to send a request.

    python -m llava.serve.controller --host 0.0.0.0 --port 10000 [--dispatch-method shortest_queue]

HTTP API (upstream's; every endpoint is a POST with a JSON body):

* ``/register_worker`` ``{"worker_name": URL, "check_heart_beat": bool, "worker_status": {...} | null}``: adds or
  refreshes a worker (with no status, the controller asks the worker's ``/worker_get_status``); answers
  ``{"registered": bool}``.
* ``/receive_heart_beat`` ``{"worker_name", "queue_length"}`` -> ``{"exist": bool}`` (``false``: register again).
* ``/refresh_all_workers``: asks every worker for its status and drops those that do not answer.
* ``/list_models`` -> ``{"models": [...]}``; ``/get_worker_address`` ``{"model"}`` -> ``{"address": URL or ""}``.
* ``/worker_generate_stream`` and ``/worker_get_status``: the controller acting as a worker (it forwards the request
  to a worker of the model; the status sums its workers'), as upstream's does.

A worker that registered with ``check_heart_beat`` and has not been heard from for ``--heart-beat-expiration``
seconds (30, upstream's) is dropped; so is one that does not answer a status request. Every request the controller
makes has a timeout, so a dead worker costs at most that long and never blocks the controller.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request  # at module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import StreamingResponse

from llava.constants import CONTROLLER_HEART_BEAT_EXPIRATION

logger = logging.getLogger("llava.serve.controller")

STATUS_TIMEOUT_S = 5.0  # a worker's /worker_get_status answers at once unless it is dead
# error codes of the streaming API (upstream's 1-3; 4 is ours, see model_worker)
NO_WORKER, WORKER_UNREACHABLE = 2, 3


@dataclass
class WorkerInfo:
    model_names: list[str]
    speed: float
    queue_length: int
    check_heart_beat: bool
    last_heart_beat: float
    status: dict[str, Any]  # the worker's last full status (ours: its schedule, under "hidrop")


class Controller:
    """The registry of workers. Thread-safe: the HTTP handlers and the expiry thread share it."""

    def __init__(self, dispatch_method: str = "shortest_queue",
                 heart_beat_expiration: float = CONTROLLER_HEART_BEAT_EXPIRATION,
                 status_timeout: float = STATUS_TIMEOUT_S) -> None:
        if dispatch_method not in ("lottery", "shortest_queue"):
            raise ValueError(f"--dispatch-method {dispatch_method!r}: expected lottery or shortest_queue")
        if heart_beat_expiration <= 0:
            raise ValueError(f"--heart-beat-expiration must be > 0, got {heart_beat_expiration}")
        self.dispatch_method = dispatch_method
        self.heart_beat_expiration = heart_beat_expiration
        self.status_timeout = status_timeout
        self.workers: dict[str, WorkerInfo] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # ------------------------------------------------------------------------------------------- registry
    def register_worker(self, worker_name: str, check_heart_beat: bool, worker_status: dict[str, Any] | None) -> bool:
        if not worker_status:
            worker_status = self.get_worker_status(worker_name)
        if not worker_status or not isinstance(worker_status.get("model_names"), list):
            logger.warning("not registering %s: no usable status (%s)", worker_name, worker_status)
            return False
        info = WorkerInfo(list(worker_status["model_names"]), float(worker_status.get("speed", 1) or 1),
                          int(worker_status.get("queue_length", 0)), bool(check_heart_beat), time.time(),
                          dict(worker_status))
        with self._lock:
            known = worker_name in self.workers
            self.workers[worker_name] = info
        logger.info("%s worker %s serving %s", "refreshed" if known else "registered", worker_name, info.model_names)
        return True

    def get_worker_status(self, worker_name: str) -> dict[str, Any] | None:
        import httpx

        try:
            r = httpx.post(worker_name + "/worker_get_status", timeout=self.status_timeout)
            r.raise_for_status()
            return r.json()
        except (httpx.HTTPError, ValueError) as e:
            logger.warning("worker %s did not answer a status request: %s", worker_name, e)
            return None

    def remove_worker(self, worker_name: str) -> None:
        with self._lock:
            if self.workers.pop(worker_name, None) is not None:
                logger.info("removed worker %s", worker_name)

    def refresh_all_workers(self) -> list[str]:
        """Asks every worker for its status; drops those that do not answer. Returns the dropped ones."""
        with self._lock:
            known = dict(self.workers)
        dropped = []
        for name, info in known.items():
            status = self.get_worker_status(name)
            if status is None:
                self.remove_worker(name)
                dropped.append(name)
            else:
                self.register_worker(name, info.check_heart_beat, status)
        return dropped

    def list_models(self) -> list[str]:
        with self._lock:
            return sorted({m for info in self.workers.values() for m in info.model_names})

    def get_worker_address(self, model_name: str) -> str:
        """A worker serving ``model_name``, by lottery (weighted by speed) or shortest queue; "" if there is none."""
        with self._lock:
            candidates = [(name, info) for name, info in self.workers.items() if model_name in info.model_names]
            if not candidates:
                return ""
            if self.dispatch_method == "lottery":
                names = [n for n, _ in candidates]
                return random.choices(names, weights=[max(info.speed, 1e-6) for _, info in candidates])[0]
            name, info = min(candidates, key=lambda c: c[1].queue_length / max(c[1].speed, 1e-6))
            info.queue_length += 1  # until the worker's next heartbeat says otherwise
            return name

    def worker_status_of(self, worker_name: str) -> dict[str, Any] | None:
        with self._lock:
            info = self.workers.get(worker_name)
            return dict(info.status, queue_length=info.queue_length) if info else None

    def receive_heart_beat(self, worker_name: str, queue_length: int) -> bool:
        with self._lock:
            info = self.workers.get(worker_name)
            if info is None:
                return False
            info.queue_length = int(queue_length)
            info.last_heart_beat = time.time()
            return True

    def remove_expired_workers(self, now: float | None = None) -> list[str]:
        """Drops the heartbeat-checked workers not heard from within the expiration; returns them."""
        deadline = (time.time() if now is None else now) - self.heart_beat_expiration
        with self._lock:
            expired = [n for n, i in self.workers.items() if i.check_heart_beat and i.last_heart_beat < deadline]
            for name in expired:
                del self.workers[name]
        for name in expired:
            logger.info("removed worker %s: no heartbeat for %.0f s", name, self.heart_beat_expiration)
        return expired

    def start_expiry_thread(self) -> threading.Thread:
        # Checked a few times per expiration period, so a dead worker goes within 1.25 expirations.
        period = self.heart_beat_expiration / 4

        def loop() -> None:
            while not self._stop.wait(period):
                self.remove_expired_workers()

        thread = threading.Thread(target=loop, name="controller-expiry", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------------------------------- as a worker
    def worker_api_generate_stream(self, params: dict[str, Any], read_timeout: float = 120.0) -> Iterator[bytes]:
        """Forwards a streaming request to a worker of ``params["model"]``; errors become error chunks."""
        import httpx

        model = params.get("model")
        address = self.get_worker_address(str(model))
        if not address:
            yield _chunk(f"no worker serves model {model!r}", NO_WORKER)
            return
        try:
            timeout = httpx.Timeout(read_timeout, connect=self.status_timeout)
            with httpx.stream("POST", address + "/worker_generate_stream", json=params, timeout=timeout) as r:
                r.raise_for_status()
                buffer = b""
                for data in r.iter_bytes():
                    buffer += data
                    *chunks, buffer = buffer.split(b"\0")
                    for chunk in chunks:
                        if chunk:
                            yield chunk + b"\0"
        except httpx.HTTPError as e:
            logger.warning("worker %s failed while streaming: %s", address, e)
            yield _chunk(f"the worker at {address} for model {model!r} did not answer ({type(e).__name__}: {e})",
                         WORKER_UNREACHABLE)

    def worker_api_get_status(self) -> dict[str, Any]:
        with self._lock:
            infos = list(self.workers.values())
        return {"model_names": sorted({m for i in infos for m in i.model_names}),
                "speed": sum(i.speed for i in infos), "queue_length": sum(i.queue_length for i in infos)}


def _chunk(text: str, error_code: int) -> bytes:
    return json.dumps({"text": text, "error_code": error_code}).encode() + b"\0"


def create_app(controller: Controller) -> Any:
    """The FastAPI app. Handlers are plain functions: FastAPI runs them in its thread pool, so the status requests
    they make never stall the event loop."""
    app = FastAPI(title="HiDrop-LLaVA controller")

    async def body(request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError:
            data = None
        return data if isinstance(data, dict) else {}

    @app.post("/register_worker")
    async def register_worker(request: Request) -> dict[str, Any]:
        data = await body(request)
        if not data.get("worker_name"):
            return {"registered": False, "error": "worker_name is missing"}
        import anyio

        ok = await anyio.to_thread.run_sync(controller.register_worker, data["worker_name"],
                                            bool(data.get("check_heart_beat", False)), data.get("worker_status"))
        return {"registered": ok}

    @app.post("/refresh_all_workers")
    def refresh_all_workers() -> dict[str, Any]:
        return {"removed": controller.refresh_all_workers()}

    @app.post("/list_models")
    def list_models() -> dict[str, Any]:
        return {"models": controller.list_models()}

    @app.post("/get_worker_address")
    async def get_worker_address(request: Request) -> dict[str, Any]:
        data = await body(request)
        return {"address": controller.get_worker_address(str(data.get("model", "")))}

    @app.post("/receive_heart_beat")
    async def receive_heart_beat(request: Request) -> dict[str, Any]:
        data = await body(request)
        return {"exist": controller.receive_heart_beat(str(data.get("worker_name", "")), int(data.get("queue_length", 0)))}

    @app.post("/worker_generate_stream")
    async def worker_generate_stream(request: Request) -> Any:
        return StreamingResponse(controller.worker_api_generate_stream(await body(request)))

    @app.post("/worker_get_status")
    def worker_get_status() -> dict[str, Any]:
        return controller.worker_api_get_status()

    return app


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.serve.controller", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", type=str, default="localhost")
    p.add_argument("--port", type=int, default=21001)
    p.add_argument("--dispatch-method", type=str, choices=["lottery", "shortest_queue"], default="shortest_queue")
    p.add_argument("--heart-beat-expiration", type=float, default=CONTROLLER_HEART_BEAT_EXPIRATION,
                   help="seconds without a heartbeat after which a worker is dropped (ours; upstream's constant, 30)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    import uvicorn

    controller = Controller(args.dispatch_method, args.heart_beat_expiration)
    controller.start_expiry_thread()
    uvicorn.run(create_app(controller), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
