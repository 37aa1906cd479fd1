"""The web page in controller mode: the demo's chat, kept-token map and statistics for whichever model worker serves
the model picked on the page (upstream LLaVA's three-process setup).

    python -m llava.serve.controller --port 10000
    python -m llava.serve.model_worker --controller http://localhost:10000 --port 40000 --worker http://localhost:40000 \\
        --model-path CKPT [--reduction tok64]
    python -m llava.serve.gradio_web_server --controller http://localhost:10000 --model-list-mode reload

The page holds the conversation and builds the prompt (``--conv-mode``); the worker answers, draws the kept-token map
of that answer's prefill and computes the statistics, and sends both with its last chunk
(llava.serve.model_worker). The model list comes from the controller: once at start-up (``--model-list-mode
once``) or on every page load (``reload``); "Refresh models" asks again at any time. A worker that has stopped,
is busy or stalls gives a message on the page (llava.serve.controller_client), and the conversation stays as it
was before the question.
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from PIL import Image

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.conversation import get_conv_template
from llava.serve.chat_engine import DEFAULT_MAX_IMAGE_PIXELS, ChatEngine, ChatState, DemoInputError, parse_sampling
from llava.serve.controller_client import ControllerClient, ServingError

logger = logging.getLogger("llava.serve.controller_web_page")


@dataclass
class RemoteChatState(ChatState):
    """A visitor's conversation with one model: the uploaded file (base64, sent with every turn) and the model."""

    image_b64: str | None = None
    model: str = ""


def read_upload(path: str, name: str, max_image_pixels: int) -> str:
    """The uploaded file as base64 once it is known to be a readable picture of at most ``max_image_pixels``."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > max_image_pixels:
                raise DemoInputError(f"{name!r} is {width} x {height} = {width * height / 1e6:.1f} megapixels; this "
                                     f"demo takes images up to {max_image_pixels / 1e6:.0f} megapixels "
                                     "(--max-image-pixels). Downscale it and upload it again.")
            img.load()
    except Image.DecompressionBombError:
        raise DemoInputError(f"{name!r} is too large to decode safely; upload a smaller picture.") from None
    except (OSError, ValueError, SyntaxError):
        raise DemoInputError(f"{name!r} is not an image this demo can read (PNG, JPEG, WebP, GIF, BMP, TIFF, ...). "
                             "Upload a picture file.") from None
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode()


class ControllerPageHandlers:
    """The page's event handlers; each returns or yields values for its event's outputs, in order."""

    def __init__(self, client: ControllerClient, skip: Any, conv_mode: str = "vicuna_v1",
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, reload_models: bool = True,
                 stream_interval: float = 0.05) -> None:
        get_conv_template(conv_mode)  # an unknown template fails at start-up
        self.client = client
        self.skip = skip
        self.conv_mode = conv_mode
        self.max_image_pixels = max_image_pixels
        self.reload_models = reload_models
        self.stream_interval = stream_interval
        self.models: list[str] = []

    # outputs: model (a dropdown update), model_info, notice
    def load_models(self, refresh: bool | None = None) -> tuple[Any, str, str]:
        import gradio as gr

        from llava.serve.gradio_web_server import warning

        try:
            if refresh if refresh is not None else (self.reload_models or not self.models):
                self.models = self.client.list_models(refresh=True)
        except ServingError as e:
            return gr.update(choices=[], value=None), "", warning(str(e))
        if not self.models:
            return (gr.update(choices=[], value=None), "",
                    warning("No model is served yet: start a model worker, then press Refresh models."))
        return gr.update(choices=self.models, value=self.models[0]), self.model_info(self.models[0]), ""

    def model_info(self, model: Any) -> str:
        """The schedule of the worker the controller picks for ``model``."""
        if not model:
            return ""
        try:
            address = self.client.worker_address(str(model))
            info = self.client.worker_status(address).get("hidrop") or {}
        except ServingError as e:
            return f"⚠ {e}"
        if not info:
            return f"`{model}` at {address} (a worker without HiDrop statistics)"
        return f"`{model}` at {address}: {info.get('description', info.get('schedule', ''))}"

    def _refused(self, state: Any, err: Exception) -> tuple[Any, ...]:
        from llava.serve.gradio_web_server import chat_messages, warning

        skip = self.skip
        return (state, chat_messages(state), skip(), skip(), skip(), warning(str(err)))

    # outputs: state, chatbot, textbox, kept_map, stats, notice
    def chat(self, state: RemoteChatState | None, question: Any, image: Any, model: Any, temperature: Any,
             top_p: Any, max_new_tokens: Any) -> Iterator[tuple[Any, ...]]:
        from llava.serve.gradio_web_server import upload_path

        notes: list[str] = []
        try:
            text = ChatEngine.check_question(question)
            sampling = parse_sampling(temperature, top_p, max_new_tokens)
            if not model:
                raise DemoInputError("Pick a model first (none is listed? press Refresh models).")
            path, name = upload_path(image)
            if path is not None:
                key = ChatEngine.image_key(path)
                if state is None or key != state.image_key or state.model != model:
                    image_b64 = read_upload(path, name, self.max_image_pixels)
                    if state is not None and state.conv.messages:
                        notes.append("A new image or model: the conversation started over.")
                    state = RemoteChatState(conv=get_conv_template(self.conv_mode), image_key=key, image_name=name,
                                            image_b64=image_b64, model=str(model))
            elif state is None or state.image_b64 is None:
                raise DemoInputError("Upload an image first.")
            elif state.model != model:
                raise DemoInputError(f"This conversation is with {state.model!r}; upload the image again to start "
                                     f"one with {model!r}.")
            before = state.snapshot()
            conv = state.conv
            first = not conv.messages
            conv.append_message(conv.roles[0], f"{DEFAULT_IMAGE_TOKEN}\n{text}" if first else text)
            conv.append_message(conv.roles[1], None)
        except Exception as e:  # never a traceback on the page
            yield self._refused(state, e)
            return
        yield from self._answer(state, before, sampling, notes)

    def _answer(self, state: RemoteChatState, before: RemoteChatState, sampling: Any,
                notes: list[str]) -> Iterator[tuple[Any, ...]]:
        from llava.serve.gradio_web_server import chat_messages, warning

        skip = self.skip
        conv = state.conv
        payload = {"model": state.model, "prompt": conv.get_prompt(), "images": [state.image_b64],
                   "temperature": sampling.temperature, "top_p": sampling.top_p,
                   "max_new_tokens": sampling.max_new_tokens, "stop": conv.sep2}
        report: dict[str, Any] | None = None
        text = ""
        completed = False
        try:
            yield (state, chat_messages(state, ""), "", skip(), skip(), "")
            address = self.client.worker_address(state.model)
            last_yield = 0.0
            for event in self.client.stream(address, payload):
                text = event.text
                if event.report is not None:
                    report = event.report
                elif time.monotonic() - last_yield >= self.stream_interval:
                    last_yield = time.monotonic()
                    yield (state, chat_messages(state, text), skip(), skip(), skip(), skip())
            conv.messages[-1][-1] = text
            completed = True
        except ServingError as e:
            error = warning(str(e))
        except Exception as e:  # logged with its traceback, one line on the page
            logger.exception("answering through the controller failed")
            error = warning(f"Internal error while answering ({type(e).__name__}: {e}); details are in the server log.")
        finally:
            if not completed:
                state.restore(before)
        if not completed:
            yield (state, chat_messages(state), skip(), skip(), skip(), error)
            return
        assert report is not None
        kept_map = None
        if report.get("kept_map_png"):
            with Image.open(io.BytesIO(base64.b64decode(report["kept_map_png"]))) as img:
                kept_map = img.convert("RGB")
        stats = report.get("stats_markdown") or f"**Schedule** `{report.get('schedule', '?')}`"
        stats += "".join(f"\n- note: {n}" for n in notes)
        yield (state, chat_messages(state), skip(), kept_map, stats, "")

    # outputs: state, chatbot, textbox, image, kept_map, stats, notice
    def clear(self) -> tuple[Any, ...]:
        return (None, [], "", None, None, "", "")


def build_page(handlers: ControllerPageHandlers, controller_url: str) -> Any:
    """The gr.Blocks page (not launched)."""
    import gradio as gr

    h = handlers
    with gr.Blocks(title="HiDrop-LLaVA", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        state = gr.State(None)
        gr.Markdown(f"## HiDrop-LLaVA: what the model keeps of your image\nModels served by the workers of the "
                    f"controller at {controller_url}. Upload an image and ask; after each answer the map below shows "
                    "which image patches survived each prune stage of that worker's schedule.")
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    model = gr.Dropdown(choices=h.models, value=h.models[0] if h.models else None, label="Model",
                                        elem_id="model", scale=3)
                    refresh = gr.Button("Refresh models", elem_id="refresh", scale=1)
                model_info = gr.Markdown(elem_id="model_info")
                image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"], elem_id="image",
                                 height=260)
                with gr.Accordion("Parameters", open=False):
                    temperature = gr.Slider(0.0, 1.0, value=0.2, step=0.05, label="Temperature (0 = greedy)")
                    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top P")
                    max_new_tokens = gr.Slider(1, 1024, value=512, step=1, label="Max new tokens")
            with gr.Column(scale=7):
                chatbot = gr.Chatbot(label="Chat", height=360, elem_id="chatbot", buttons=["copy"],
                                     feedback_options=None)
                with gr.Row():
                    textbox = gr.Textbox(show_label=False, placeholder="Ask about the image and press Enter",
                                         container=False, scale=8, elem_id="question")
                    send = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="send")
                clear = gr.Button("Clear", elem_id="clear")
                notice = gr.Markdown(elem_id="notice")
        with gr.Row():
            with gr.Column(scale=7):
                gr.Markdown("**Kept vision tokens per prune stage** (last answer; dropped patches greyed out)")
                kept_map = gr.Image(show_label=False, type="pil", format="png", interactive=False,
                                    elem_id="kept_map", height=330, buttons=["download", "fullscreen"])
            with gr.Column(scale=3):
                stats = gr.Markdown(elem_id="stats")

        outputs = [state, chatbot, textbox, kept_map, stats, notice]
        inputs = [state, textbox, image, model, temperature, top_p, max_new_tokens]
        # Requests go to the workers: the page itself may serve many visitors at once.
        send.click(h.chat, inputs, outputs, api_name="chat", preprocess=False)
        textbox.submit(h.chat, inputs, outputs, api_visibility="private", preprocess=False)
        clear.click(h.clear, None, [state, chatbot, textbox, image, kept_map, stats, notice], api_name="clear",
                    queue=False)
        refresh.click(lambda: h.load_models(refresh=True), None, [model, model_info, notice], api_name="refresh_models")
        model.change(h.model_info, [model], [model_info], api_visibility="private", queue=False)
        demo.load(h.load_models, None, [model, model_info, notice])
    return demo


def serve(args: argparse.Namespace) -> int:
    """``gradio_web_server --controller-url URL``: this page, launched."""
    import sys

    import gradio as gr

    from llava.serve.gradio_web_server import CSS

    client = ControllerClient(args.controller_url, read_timeout=args.worker_timeout)
    handlers = ControllerPageHandlers(client, gr.skip, conv_mode=args.conv_mode,
                                      max_image_pixels=args.max_image_pixels,
                                      reload_models=args.model_list_mode == "reload",
                                      stream_interval=args.stream_interval)
    try:
        handlers.models = client.list_models(refresh=True)
    except ServingError as e:  # not fatal: the controller may come up after the page
        logger.warning("%s; the list stays empty until the page is reloaded or refreshed", e)
    logger.info("models at %s: %s", args.controller_url, handlers.models)
    demo = build_page(handlers, args.controller_url)
    demo.queue(max_size=args.queue_size, default_concurrency_limit=args.concurrency_count)
    try:
        demo.launch(server_name=args.host, server_port=args.port, root_path=args.root_path, show_error=False,
                    max_file_size=f"{args.max_upload_mb}mb", ssr_mode=False, share=False, theme="default", css=CSS,
                    footer_links=["api", "gradio", "settings"], run_history=False)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port} ({e}); pick another with --port", file=sys.stderr)
        return 2
    return 0


__all__ = ["ControllerPageHandlers", "RemoteChatState", "build_page", "read_upload", "serve"]
