"""Screenshot of the web demo after one answer, taken with headless Chromium (Debian's ``chromium`` package).

    # against a running server
    python scripts/screenshot_web_demo.py --url http://127.0.0.1:7860/ --image IMG --question "..." \\
        --output docs/figures/web_demo.png
    # or start one for the shot (and stop it afterwards)
    python scripts/screenshot_web_demo.py --model-path checkpoints/demo-tiny --image IMG --question "..." \\
        --output docs/figures/web_demo.png

The page is driven like a visitor would: upload the image, type the question, press Send, wait until the answer,
the kept-token map and the statistics are there, then capture the whole page. ``--map-output`` also saves the
kept-token map element alone, and one JSON line on stdout gives the answer, the statistics and where the map is
on the screenshot (tests/test_web_demo.py checks that region is not blank).

Chromium is driven through the ``playwright`` Python package with ``executable_path``: the package ships its
driver, and no browser of its own is ever downloaded. Chromium runs with no network beyond the page (the flags
below), a fresh profile in a temporary directory, and is closed at the end whatever happens. Exit code 2 with a
one-line message when Chromium or playwright is missing or the page does not answer in ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("screenshot_web_demo")

# What the issue asks for: headless, nothing fetched or synced in the background, a throwaway profile (playwright's
# persistent context passes --user-data-dir itself).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class ScreenshotError(RuntimeError):
    """The screenshot cannot be taken; the message says why."""


def find_chromium(explicit: str | None) -> str:
    for candidate in (explicit, os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise ScreenshotError("no Chromium found (--chromium, $CHROMIUM, /usr/bin/chromium); install Debian's package: "
                          "apt-get install -y chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ScreenshotError(f"the server exited with code {proc.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise ScreenshotError(f"{url} did not answer within {timeout:.0f} s")


def start_server(model_path: str, extra: Sequence[str], timeout: float) -> tuple[subprocess.Popen, str]:
    """The demo server on a free local port, in a child process (stopped by the caller)."""
    port = _free_port()
    cmd = [sys.executable, "-m", "llava.serve.gradio_web_server", "--model-path", model_path, "--host", "127.0.0.1",
           "--port", str(port), *extra]
    logger.info("starting %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_http(url, timeout, proc)
    except BaseException:
        proc.terminate()
        proc.wait(timeout=30)
        raise
    return proc, url


def take_screenshot(url: str, image: str, question: str, output: str, *, chromium: str, map_output: str | None = None,
                    width: int = 1280, height: int = 900, timeout: float = 180.0,
                    temperature: float | None = None, max_new_tokens: int | None = None) -> dict[str, Any]:
    """Drives the page through one answer and saves the screenshot(s); returns what the page showed."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise ScreenshotError("the playwright Python package is missing: pip install -e \".[dev]\" (it drives the "
                              "system Chromium; no browser download)") from None
    ms = int(timeout * 1000)
    profile = tempfile.mkdtemp(prefix="web-demo-chromium-")
    try:
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                profile, executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
                viewport={"width": width, "height": height}, device_scale_factor=1,
            )
            try:
                page = ctx.new_page()
                page.set_default_timeout(ms)
                page.goto(url, wait_until="load")
                page.wait_for_selector("#question textarea")
                page.set_input_files("#image input[type=file]", image)
                page.wait_for_selector("#image img")  # the upload's preview: the file has arrived
                sliders = {"Temperature (0 = greedy)": temperature, "Max new tokens": max_new_tokens}
                if any(v is not None for v in sliders.values()):
                    page.get_by_text("Parameters").click()  # the accordion starts closed
                for label, value in sliders.items():
                    if value is not None:  # each slider has a number box with the same label
                        box = page.get_by_label(label).first
                        box.fill(str(value))
                        box.press("Enter")
                        box.press("Tab")  # leaving the box commits the value, as a visitor's next click does
                        # On a loaded machine Send could otherwise go out with the slider's old value (a sampled
                        # answer instead of the greedy one): wait until every input of that slider shows the value.
                        page.wait_for_function(
                            "([label, v]) => { const els = [...document.querySelectorAll('input')].filter("
                            "e => (e.getAttribute('aria-label') || '').includes(label));"
                            " return els.length > 0 && els.every(e => Number(e.value) === v); }",
                            arg=[label, float(value)])
                        page.wait_for_timeout(300)
                page.fill("#question textarea", question)
                page.click("#send")
                # Done when the statistics of this answer are on the page (they come with the map, last).
                page.wait_for_function(
                    "() => (document.querySelector('#stats')?.innerText || '').includes('prefill')"
                    " || (document.querySelector('#notice')?.innerText || '').includes('⚠')")
                notice = page.inner_text("#notice").strip()
                if "⚠" in notice:
                    raise ScreenshotError(f"the page refused the question: {notice}")
                kept = page.wait_for_selector("#kept_map img")
                page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=kept)
                page.wait_for_timeout(300)  # let the layout settle after the last update
                Path(output).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=output, full_page=True)
                if map_output:
                    Path(map_output).parent.mkdir(parents=True, exist_ok=True)
                    kept.screenshot(path=map_output)
                box = kept.bounding_box()
                scroll = page.evaluate("() => [window.scrollX, window.scrollY]")
                bubbles = page.locator("#chatbot .message").all_inner_texts()
                return {
                    "url": url,
                    "output": output,
                    "map_output": map_output,
                    "answer": bubbles[-1].strip() if bubbles else "",
                    "stats": page.inner_text("#stats").strip(),
                    "notice": notice,
                    # the map's place on the full-page screenshot, in its pixels
                    "map_box": None if box is None else {"x": box["x"] + scroll[0], "y": box["y"] + scroll[1],
                                                         "width": box["width"], "height": box["height"]},
                }
            except PlaywrightError as e:
                failed = str(Path(output).with_suffix("")) + "-failed.png"
                try:  # what the page showed when it went wrong is the first thing to look at
                    page.screenshot(path=failed, full_page=True)
                except PlaywrightError:
                    failed = "(none)"
                raise ScreenshotError(f"driving the page failed: {str(e).splitlines()[0]}; page at that moment: "
                                      f"{failed}") from e
            finally:
                ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running demo, e.g. http://127.0.0.1:7860/")
    where.add_argument("--model-path", help="start a demo server for this checkpoint, take the shot, stop it")
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra argument for the started server (repeatable), e.g. --server-arg=--reduction=tiny")
    p.add_argument("--image", required=True)
    p.add_argument("--question", required=True)
    p.add_argument("--output", required=True, help="PNG of the whole page")
    p.add_argument("--map-output", default=None, help="PNG of the kept-token map element alone")
    p.add_argument("--chromium", default=None, help="Chromium binary (default: $CHROMIUM, /usr/bin/chromium)")
    p.add_argument("--temperature", type=float, default=None, help="set the page's temperature first (0 = greedy)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="set the page's max new tokens first")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=900)
    p.add_argument("--timeout", type=float, default=180.0, help="seconds for the server start and for the answer")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    proc = None
    try:
        if not os.path.isfile(args.image):
            raise ScreenshotError(f"--image {args.image!r}: no such file")
        chromium = find_chromium(args.chromium)
        url = args.url
        if args.model_path:
            proc, url = start_server(args.model_path, args.server_arg, args.timeout)
        else:
            wait_for_http(url, args.timeout)
        result = take_screenshot(url, os.path.abspath(args.image), args.question, args.output, chromium=chromium,
                                 map_output=args.map_output, width=args.width, height=args.height,
                                 timeout=args.timeout, temperature=args.temperature,
                                 max_new_tokens=args.max_new_tokens)
    except ScreenshotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
