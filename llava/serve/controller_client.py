"""The client side of upstream LLaVA's serving API: ask a controller for models and workers, stream an answer from a
worker. Used by the web page in controller mode (llava.serve.controller_web_page) and by llava.serve.test_message.

Every request has a timeout, and every way a request can fail becomes a :class:`ServingError` whose message says
what happened in words a visitor can act on (the controller is down, no worker serves the model any more, the
worker is busy, the worker stopped in the middle of an answer, it sent nothing for too long), never a hang.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

CONNECT_TIMEOUT_S = 5.0
# Between two chunks of an answer. A waiting request gets a keep-alive chunk every few seconds (model_worker), so
# this only runs out for a worker that is stuck or gone.
DEFAULT_READ_TIMEOUT_S = 60.0


class ServingError(RuntimeError):
    """A request to the controller or a worker that did not work; the message is meant for the page."""


@dataclass
class StreamEvent:
    """One chunk of an answer: the answer text so far; ``report`` (ours) on the last chunk."""

    text: str
    report: dict[str, Any] | None = None
    waiting: bool = False


def _describe(e: Exception) -> str:
    import httpx

    if isinstance(e, httpx.ConnectError):
        return "connection refused"
    if isinstance(e, httpx.TimeoutException):
        return "no answer in time"
    return f"{type(e).__name__}: {e}"


class ControllerClient:
    def __init__(self, controller_url: str, read_timeout: float = DEFAULT_READ_TIMEOUT_S) -> None:
        self.controller_url = controller_url.rstrip("/")
        self.read_timeout = read_timeout

    def _post(self, url: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        import httpx

        try:
            r = httpx.post(url, json=payload or {}, timeout=httpx.Timeout(self.read_timeout, connect=CONNECT_TIMEOUT_S))
            r.raise_for_status()
            data = r.json()
        except (httpx.HTTPError, ValueError) as e:
            raise ServingError(f"the server at {url} did not answer ({_describe(e)})") from e
        return data if isinstance(data, dict) else {}

    def list_models(self, refresh: bool = False) -> list[str]:
        """The models some worker serves; ``refresh`` first makes the controller check every worker."""
        try:
            if refresh:
                self._post(self.controller_url + "/refresh_all_workers")
            return sorted(self._post(self.controller_url + "/list_models").get("models", []))
        except ServingError as e:
            raise ServingError(f"the controller at {self.controller_url} is not reachable: {e}") from e

    def worker_address(self, model: str) -> str:
        try:
            address = self._post(self.controller_url + "/get_worker_address", {"model": model}).get("address", "")
        except ServingError as e:
            raise ServingError(f"the controller at {self.controller_url} is not reachable: {e}") from e
        if not address:
            raise ServingError(f"no worker serves model {model!r} any more (it may have stopped); reload the page "
                               "for the current list of models")
        return str(address)

    def worker_status(self, address: str) -> dict[str, Any]:
        return self._post(address.rstrip("/") + "/worker_get_status")

    def stream(self, address: str, payload: dict[str, Any], require_report: bool = True) -> Iterator[StreamEvent]:
        """The answer of ``payload`` (upstream's request) from the worker at ``address``, chunk by chunk.

        ``require_report``: our workers end every answer with a chunk holding ``"hidrop"``; without it the answer
        is taken as cut off. Upstream's workers send no such chunk (pass False for them)."""
        import httpx

        prompt = str(payload.get("prompt", ""))
        model = payload.get("model")
        where = f"the worker at {address} (model {model!r})"
        finished = False
        # A worker repeats its last chunk while a request waits or the model works; chunks that add nothing for
        # read_timeout seconds mean a stuck or hopelessly busy worker, which must not keep the page waiting.
        last_text, last_progress = None, time.monotonic()
        try:
            timeout = httpx.Timeout(self.read_timeout, connect=CONNECT_TIMEOUT_S)
            with httpx.stream("POST", address.rstrip("/") + "/worker_generate_stream", json=payload,
                              timeout=timeout) as r:
                r.raise_for_status()
                buffer = b""
                for data in r.iter_bytes():
                    buffer += data
                    *chunks, buffer = buffer.split(b"\0")
                    for chunk in chunks:
                        if not chunk:
                            continue
                        event = json.loads(chunk.decode("utf-8"))
                        if event.get("error_code", 0) != 0:
                            raise ServingError(f"{where} could not answer: {event.get('text')} "
                                               f"(error_code {event.get('error_code')})")
                        text = str(event.get("text", ""))
                        text = text[len(prompt):] if text.startswith(prompt) else text
                        report = event.get("hidrop")
                        if text != last_text or report is not None:
                            last_text, last_progress = text, time.monotonic()
                        elif time.monotonic() - last_progress > self.read_timeout:
                            raise ServingError(f"{where} made no progress for {self.read_timeout:.0f} s; it may be "
                                               "stuck or overloaded. Try again, or pick another model.")
                        finished = finished or report is not None
                        yield StreamEvent(text.strip(), report, bool(event.get("waiting")))
        except httpx.HTTPError as e:
            if isinstance(e, httpx.ConnectError):
                raise ServingError(f"{where} is not reachable ({_describe(e)}): it may have stopped. Reload the page "
                                   "to refresh the list of models, or pick another model.") from e
            if isinstance(e, httpx.TimeoutException):
                raise ServingError(f"{where} sent nothing for {self.read_timeout:.0f} s; it may be stuck or "
                                   "overloaded. Try again, or pick another model.") from e
            raise ServingError(f"{where} stopped in the middle of the answer ({_describe(e)}); it may have "
                               "stopped. Reload the page and try again.") from e
        except ValueError as e:
            raise ServingError(f"{where} sent a malformed chunk ({e})") from e
        if require_report and not finished:
            raise ServingError(f"{where} ended the answer without its final report; it may have stopped. Try again.")


__all__ = ["ControllerClient", "ServingError", "StreamEvent"]
