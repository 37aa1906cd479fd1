"""A web page that chats about an image and shows which vision tokens HiDrop kept for each answer.

    pip install -e ".[serve]"   # gradio, see docs/Serving.md
    python -m llava.serve.gradio_web_server --model-path ./checkpoints/demo-tiny [--reduction tok64] \\
        [--reduction-override "exit_layer=24 topk=hard"] [--host 127.0.0.1] [--port 7860]

By default one process serves one model. ``--controller-url URL [--model-list-mode reload]`` serves instead the
models of a controller's workers, upstream LLaVA's three-process setup (llava.serve.controller_web_page). The page
works as upstream's does: upload an image, ask, get the answer streamed, ask follow-ups, regenerate the last
answer, clear, and change temperature, top-p and the maximum number of new tokens. On top of that:

- a schedule picker: the loaded schedule or any preset, plus single-field ``key=value`` overrides, validated
  with the evaluation scripts' own functions (so with their messages); the presets the loaded model cannot run are
  listed last, marked, with each reason under the picker; each answer uses the schedule picked when it was asked,
  and the whole conversation is prefilled again under it;
- ``--speculative twig`` (a checkpoint with a twig, TwigVLM): answers are decoded self-speculatively and the
  statistics add the acceptance rate;
- after each answer, the kept-token map of that answer's own prefill (one panel per prune stage, drawn by
  ``llava.analysis.kept_tokens``), the realised average vision tokens per layer, the prefill time and the
  decoding speed;
- "Same answer under off": the last prompt answered again by plain LLaVA (every vision token, every layer),
  side by side with the schedule's answer, with the same sampling seed.

Answers are streamed token by token (``llava.serve.streaming.TokenStream``, the same computation as
``model.generate``). Input the model cannot use (a file that is not an image, an image over
``--max-image-pixels``, an empty question, a prompt past the context length, an invalid schedule) gets a
message on the page and changes nothing; unexpected failures are logged with their traceback on the server and
reported on the page in one line. Model events run one at a time (one model, one device); other visitors queue.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from llava.analysis.common import CHECKPOINT_SCHEDULE
from llava.mm_utils import ImageLoadError
from llava.model.builder import CheckpointError, checkpoint_kind, load_pretrained_model
from llava.model.reduction.config import ReductionConfig, ReductionConfigError, parse_overrides
from llava.serve.chat_engine import (
    DEFAULT_MAX_IMAGE_PIXELS,
    Answer,
    ChatEngine,
    ChatState,
    DemoInputError,
    PendingTurn,
    parse_sampling,
)
from llava.serve.common import check_port_free, non_negative_float, port_number, positive_int, split_override_args

logger = logging.getLogger("llava.serve.gradio_web_server")

# gradio is imported lazily (build_demo, main), after this: a demo runs offline and tells nobody who visits it.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

DEFAULT_STREAM_INTERVAL_S = 0.05  # at most 20 page updates a second while an answer streams
DEFAULT_MAX_UPLOAD_MB = 50

CSS = """
#kept_map img { object-fit: contain; }
#notice p { color: var(--error-text-color); font-weight: 600; }
"""


# --------------------------------------------------------------------------------------------------- page helpers
def chat_messages(state: ChatState | None, pending: str | None = None) -> list[dict[str, str]]:
    """The conversation as gr.Chatbot messages; ``pending`` is the answer being streamed."""
    messages: list[dict[str, str]] = []
    for question, answer in state.history() if state is not None else []:
        messages.append({"role": "user", "content": question})
        if answer is not None:  # an empty bubble would look like a page that hangs
            messages.append({"role": "assistant", "content": answer or "(empty answer: the model stopped at once)"})
        elif pending is not None:
            messages.append({"role": "assistant", "content": pending or "…"})
    return messages


def unfit_markdown(unfit: dict[str, str], num_layers: int, num_vision_tokens: int) -> str:
    """Why each preset cannot run on this model (written for another depth or width)."""
    lines = [f"This model has {num_layers} layers and {num_vision_tokens} vision tokens per image; these presets were "
             "written for other shapes (overrides can fit them):"]
    lines += [f"- `{name}`: {html.escape(reason)}" for name, reason in unfit.items()]
    return "\n".join(lines)


def warning(message: str) -> str:
    # U+26A0 without the emoji selector: every font has it, so headless browsers without emoji fonts show it too.
    return f"⚠ {message}"


def upload_path(image: Any) -> tuple[str | None, str]:
    """(server path, name the visitor gave it) of the Image component's raw value (events run unpreprocessed)."""
    if image is None:
        return None, ""
    if isinstance(image, dict):
        path, name = image.get("path"), image.get("orig_name") or ""
    else:
        path, name = getattr(image, "path", None), getattr(image, "orig_name", None) or ""
    if not isinstance(path, str) or not os.path.isfile(path):
        raise DemoInputError("The upload did not arrive; upload the image again.")
    return path, name or os.path.basename(path)


def answer_markdown(title: str, answer: Answer | None, text: str, engine: ChatEngine) -> str:
    body = text.strip() or "…"
    if answer is None:
        return f"### {title}\n\n{body}"
    return f"### {title}\n\n{body}\n\n{engine.stats_markdown(answer)}"


def _internal_error(what: str, err: BaseException) -> str:
    logger.exception("%s failed", what)
    return warning(f"Internal error while {what} ({type(err).__name__}: {err}); details are in the server log.")


# --------------------------------------------------------------------------------------------------- handlers
class DemoHandlers:
    """The page's event handlers; each returns or yields values for its event's outputs, in order."""

    def __init__(self, engine: ChatEngine, skip: Callable[[], Any],
                 stream_interval: float = DEFAULT_STREAM_INTERVAL_S) -> None:
        self.engine = engine
        self.skip = skip  # gr.skip: leaves an output as it is
        self.stream_interval = stream_interval

    def _refused(self, state: ChatState | None, err: Exception) -> tuple[Any, ...]:
        """The chat outputs when a turn is refused before answering: the conversation as it was, and the notice
        (the input's own message, or a one-line internal error)."""
        skip = self.skip
        notice = warning(str(err)) if isinstance(err, DemoInputError) else _internal_error("reading the input", err)
        return (state, chat_messages(state), skip(), skip(), skip(), notice, skip(), skip())

    # outputs: state, chatbot, textbox, kept_map, stats, notice, compare_left, compare_right
    def chat(self, state: ChatState | None, question: Any, image: Any, preset: Any, overrides: Any,
             temperature: Any, top_p: Any, max_new_tokens: Any) -> Iterator[tuple[Any, ...]]:
        eng = self.engine
        notes: list[str] = []
        try:
            text = eng.check_question(question)
            sampling = parse_sampling(temperature, top_p, max_new_tokens)
            schedule = eng.resolve_schedule(preset, overrides)
            path, name = upload_path(image)
            if path is not None:
                key = eng.image_key(path)
                if state is None or key != state.image_key:
                    pixels = eng.read_image(path, name)
                    if state is not None and state.conv.messages:
                        notes.append("A new image: the conversation started over.")
                    state = eng.new_state()
                    state.image_key, state.image_name, state.pixels = key, name, pixels
            elif state is None or state.pixels is None:
                raise DemoInputError("Upload an image first.")
            before = state.snapshot()
            turn = eng.begin_turn(state, text, sampling)
        except Exception as e:  # never a traceback on the page
            yield self._refused(state, e)
            return
        yield from self._answer(state, before, turn, text, schedule, sampling, notes, clear_textbox=True)

    def regenerate(self, state: ChatState | None, preset: Any, overrides: Any, temperature: Any, top_p: Any,
                   max_new_tokens: Any) -> Iterator[tuple[Any, ...]]:
        eng = self.engine
        try:
            if state is None:
                raise DemoInputError("There is no answer to regenerate yet: ask a question first.")
            sampling = parse_sampling(temperature, top_p, max_new_tokens)
            schedule = eng.resolve_schedule(preset, overrides)
            before = state.snapshot()
            turn = eng.reopen_last_turn(state, sampling)
        except Exception as e:  # never a traceback on the page
            yield self._refused(state, e)
            return
        yield from self._answer(state, before, turn, state.last_question, schedule, sampling, [],
                                clear_textbox=False)

    def _answer(self, state: ChatState, before: ChatState, turn: PendingTurn, question: str,
                schedule: ReductionConfig, sampling: Any, notes: list[str],
                clear_textbox: bool) -> Iterator[tuple[Any, ...]]:
        """Streams the answer of ``turn``; a turn that does not complete (an error, or the visitor gone, which
        closes this generator) leaves the conversation as it was before it (``before``)."""
        eng, skip = self.engine, self.skip
        textbox = "" if clear_textbox else skip()
        assert state.pixels is not None
        answer: Answer | None = None
        completed = False
        error = ""
        try:
            yield (state, chat_messages(state, ""), textbox, skip(), skip(), "", "", "")
            last_yield = 0.0
            for item in eng.answer_stream(state.pixels, turn, schedule, sampling):
                if isinstance(item, Answer):
                    answer = item
                elif time.monotonic() - last_yield >= self.stream_interval:
                    last_yield = time.monotonic()
                    yield (state, chat_messages(state, item), skip(), skip(), skip(), skip(), skip(), skip())
            assert answer is not None
            eng.finish_turn(state, turn, answer, question)
            kept_map = eng.kept_map(state.pixels, answer)
            completed = True
        except Exception as e:
            error = _internal_error("answering", e)
        finally:
            if not completed:
                state.restore(before)
        if not completed:
            yield (state, chat_messages(state), skip(), skip(), skip(), error, skip(), skip())
            return
        assert answer is not None
        if turn.note:
            notes.append(turn.note)
        logger.info("answered %d tokens under '%s': prefill %.3f s, realised %.2f vision tokens per layer",
                    len(answer.tokens), schedule.name, answer.prefill.seconds,
                    answer.prefill.realised_avg_vision_tokens)
        # Notes (a capped answer, a new conversation) go with the statistics; the notice holds refusals only.
        yield (state, chat_messages(state), skip(), kept_map, eng.stats_markdown(answer, notes), "", "", "")

    # outputs: compare_left, compare_right, notice
    def compare_off(self, state: ChatState | None) -> Iterator[tuple[str, str, str]]:
        eng, skip = self.engine, self.skip
        if state is None or state.last is None or state.last_prompt is None or state.pixels is None:
            yield (skip(), skip(), warning("Ask a question first: the comparison answers the last question again "
                                           "under off."))
            return
        last = state.last
        off = eng.resolve_schedule("off", "")
        left = answer_markdown(f"schedule `{last.schedule.name}`", last, last.text, eng)
        turn = PendingTurn(state.last_prompt, last.prompt_tokens, last.max_new_tokens)
        title = "`off` (plain LLaVA: every vision token in every layer)"
        yield (left, answer_markdown(title, None, "", eng), "")
        answer: Answer | None = None
        last_yield = 0.0
        try:
            for item in eng.answer_stream(state.pixels, turn, off, last.sampling):
                if isinstance(item, Answer):
                    answer = item
                elif time.monotonic() - last_yield >= self.stream_interval:
                    last_yield = time.monotonic()
                    yield (skip(), answer_markdown(title, None, item, eng), skip())
        except Exception as e:
            yield (skip(), skip(), _internal_error("answering under off", e))
            return
        assert answer is not None
        right = answer_markdown(title, answer, answer.text, eng)
        same = "the same answer" if answer.text == last.text else "different answers"
        right += (f"\n\nPrefill {last.prefill.seconds * 1000:.1f} ms under `{last.schedule.name}`, "
                  f"{answer.prefill.seconds * 1000:.1f} ms under `off`; {same}.")
        yield (left, right, "")

    # outputs: state, chatbot, textbox, image, kept_map, stats, notice, compare_left, compare_right
    def clear(self) -> tuple[Any, ...]:
        return (None, [], "", None, None, "", "", "", "")

    # output: schedule_info
    def check_schedule(self, preset: Any, overrides: Any) -> str:
        try:
            return self.engine.describe_schedule(self.engine.resolve_schedule(preset, overrides))
        except DemoInputError as e:
            return warning(str(e))


# --------------------------------------------------------------------------------------------------- page
def build_demo(engine: ChatEngine, model_name: str, stream_interval: float = DEFAULT_STREAM_INTERVAL_S) -> Any:
    """The gr.Blocks page (not launched)."""
    import gradio as gr

    h = DemoHandlers(engine, gr.skip, stream_interval)
    loaded = engine.loaded_schedule
    # delete_cache: every hour, uploads and drawn maps older than a day go (a demo runs for weeks).
    with gr.Blocks(title="HiDrop-LLaVA", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        state = gr.State(None)
        gr.Markdown(
            f"## HiDrop-LLaVA: what the model keeps of your image\n"
            f"Model `{model_name}` ({engine.num_layers} layers, {engine.num_vision_tokens} vision tokens per image), "
            f"loaded schedule `{loaded.name}`. Upload an image and ask; after each answer the map below shows which "
            "image patches survived each prune stage."
        )
        with gr.Row():
            with gr.Column(scale=3):
                image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"], elem_id="image",
                                 height=260)
                unfit = engine.unfit_presets()
                schedule = gr.Dropdown(choices=engine.schedule_options(), value=CHECKPOINT_SCHEDULE, label="Schedule",
                                       info=f"'{CHECKPOINT_SCHEDULE}' = the loaded one ('{loaded.name}'); "
                                            f"{len(unfit)} presets do not fit this model and are marked",
                                       elem_id="schedule")
                overrides = gr.Textbox(label="Overrides", placeholder="key=value ..., e.g. exit_layer=24 topk=hard",
                                       elem_id="overrides")
                schedule_info = gr.Markdown(engine.describe_schedule(loaded), elem_id="schedule_info")
                if unfit:
                    with gr.Accordion(f"Presets this model cannot run ({len(unfit)})", open=False):
                        gr.Markdown(unfit_markdown(unfit, engine.num_layers, engine.num_vision_tokens),
                                    elem_id="unfit_presets")
                with gr.Accordion("Parameters", open=False):
                    # Upstream's ranges, within this model's context.
                    top = max(1, min(1024, engine.context_len))
                    temperature = gr.Slider(0.0, 1.0, value=0.2, step=0.05, label="Temperature (0 = greedy)")
                    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top P")
                    max_new_tokens = gr.Slider(1, top, value=min(512, max(1, top // 2)), step=1,
                                               label="Max new tokens")
            with gr.Column(scale=7):
                chatbot = gr.Chatbot(label="Chat", height=360, elem_id="chatbot", buttons=["copy"],
                                     feedback_options=None)
                with gr.Row():
                    textbox = gr.Textbox(show_label=False, placeholder="Ask about the image and press Enter",
                                         container=False, scale=8, elem_id="question")
                    send = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="send")
                with gr.Row():
                    regenerate = gr.Button("Regenerate", elem_id="regenerate")
                    compare = gr.Button("Same answer under off", elem_id="compare")
                    clear = gr.Button("Clear", elem_id="clear")
                notice = gr.Markdown(elem_id="notice")
        with gr.Row():
            with gr.Column(scale=7):
                gr.Markdown("**Kept vision tokens per prune stage** (last answer; dropped patches greyed out)")
                # No label on the image: it would cover the figure's title.
                kept_map = gr.Image(show_label=False, type="pil", format="png", interactive=False,
                                    elem_id="kept_map", height=330, buttons=["download", "fullscreen"])
            with gr.Column(scale=3):
                stats = gr.Markdown(elem_id="stats")
        with gr.Row():
            compare_left = gr.Markdown(elem_id="compare_schedule")
            compare_right = gr.Markdown(elem_id="compare_off")

        answer_outputs = [state, chatbot, textbox, kept_map, stats, notice, compare_left, compare_right]
        params = [schedule, overrides, temperature, top_p, max_new_tokens]
        # preprocess=False: the handlers read the raw upload themselves, so that a file that is not an image, or a
        # huge one, gets the demo's message instead of failing inside gradio's image decoding.
        model_event = {"concurrency_id": "model", "concurrency_limit": 1, "preprocess": False}
        chat_inputs = [state, textbox, image, *params]
        send.click(h.chat, chat_inputs, answer_outputs, api_name="chat", **model_event)
        textbox.submit(h.chat, chat_inputs, answer_outputs, api_visibility="private", **model_event)
        regenerate.click(h.regenerate, [state, *params], answer_outputs, api_name="regenerate", **model_event)
        compare.click(h.compare_off, [state], [compare_left, compare_right, notice], api_name="compare_off",
                      **model_event)
        clear.click(h.clear, None, [state, chatbot, textbox, image, kept_map, stats, notice, compare_left,
                                    compare_right], api_name="clear", queue=False)
        # The schedule line under the picker follows every change, before anything is asked.
        schedule.change(h.check_schedule, [schedule, overrides], [schedule_info], api_name="check_schedule",
                        preprocess=False, queue=False)
        for event in (overrides.submit, overrides.blur):
            event(h.check_schedule, [schedule, overrides], [schedule_info], api_visibility="private",
                  preprocess=False, queue=False)
    return demo


# --------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.serve.gradio_web_server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", default=None, help="the model this process serves (or --controller-url)")
    p.add_argument("--model-base", default=None, help="base LLM of a projector-only or LoRA checkpoint")
    p.add_argument("--vision-tower-path", default=None,
                   help="local CLIP directory replacing the tower the checkpoint names (a hub id, offline)")
    p.add_argument("--reduction", default=None, help="preset replacing the checkpoint's schedule (the page's default)")
    p.add_argument("--reduction-override", nargs="*", default=[], metavar="KEY=VALUE",
                   help="schedule overrides: separate arguments, or several in one quoted argument")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", choices=("auto", "float16", "bfloat16", "float32"),
                   help="auto: float16 on GPU, float32 on CPU")
    p.add_argument("--conv-mode", default="vicuna_v1")
    p.add_argument("--speculative", default=None, choices=("twig",),
                   help="self-speculative decoding with the checkpoint's twig (TwigVLM); the statistics show the "
                        "acceptance rate")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface")
    p.add_argument("--port", type=port_number, default=7860, help="1-65535; checked before the model loads")
    p.add_argument("--root-path", default=None,
                   help="the URL prefix when served behind a reverse proxy under a sub-path, e.g. /hidrop")
    p.add_argument("--max-image-pixels", type=positive_int, default=DEFAULT_MAX_IMAGE_PIXELS,
                   help="larger uploads are refused with a message (default %(default)s)")
    p.add_argument("--max-upload-mb", type=positive_int, default=DEFAULT_MAX_UPLOAD_MB,
                   help="larger files are refused by the upload itself (default %(default)s)")
    p.add_argument("--queue-size", type=positive_int, default=64,
                   help="visitors waiting for the model beyond this are turned away")
    p.add_argument("--stream-interval", type=non_negative_float, default=DEFAULT_STREAM_INTERVAL_S,
                   help="seconds between page updates while an answer streams; 0: after every token")
    remote = p.add_argument_group("controller mode (upstream's multi-process demo; llava.serve.controller_web_page)")
    remote.add_argument("--controller-url", default=None,
                        help="serve the models of this controller's workers instead of loading --model-path")
    remote.add_argument("--model-list-mode", default="once", choices=("once", "reload"),
                        help="ask the controller for its models once at start-up, or on every page load")
    remote.add_argument("--concurrency-count", type=positive_int, default=16,
                        help="answers the page streams at once (the workers queue them)")
    remote.add_argument("--worker-timeout", type=positive_int, default=60,
                        help="seconds without progress (no new text) after which a worker counts as stuck or too busy "
                             "(default %(default)s)")
    return p


def _dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        name = "float16" if device.startswith("cuda") else "float32"  # upstream serves fp16 on GPU
    return getattr(torch, name)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print('error: gradio is not installed; install the serving extra (docs/Serving.md): pip install -e ".[serve]"',
              file=sys.stderr)
        return 2
    if args.controller_url:
        if args.model_path:
            print("error: pass --model-path (this process loads the model) or --controller-url (workers serve the "
                  "models), not both", file=sys.stderr)
            return 2
        from llava.serve.controller_web_page import serve

        return serve(args)
    if not args.model_path:
        print("error: --model-path is required (or --controller-url to serve a controller's workers)", file=sys.stderr)
        return 2
    try:
        # Schedule checked before the (slow) model load, so a typo fails at once, as in the terminal chat.
        overrides = parse_overrides(split_override_args(args.reduction_override))
        if args.reduction:
            ReductionConfig.from_preset(args.reduction)
        checkpoint_kind(args.model_path)  # the folder's own problems first (cheap: its files, not the model)
        check_port_free(args.host, args.port)  # a port in use fails now, not after the model load
        try:
            tokenizer, model, processor, context_len = load_pretrained_model(
                args.model_path, args.model_base, device=args.device, torch_dtype=_dtype(args.dtype, args.device),
                reduction=args.reduction, reduction_overrides=overrides or None,
                vision_tower_path=args.vision_tower_path,
            )
        except OSError as e:  # unreadable config/weights/tokenizer files inside an existing directory
            raise CheckpointError(f"cannot load the model from {args.model_path}: {e}") from e
        engine = ChatEngine(tokenizer, model, processor, int(context_len), conv_mode=args.conv_mode,
                            max_image_pixels=args.max_image_pixels, speculative=args.speculative)
    except (ImageLoadError, ReductionConfigError, CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    demo = build_demo(engine, Path(args.model_path.rstrip("/")).name or args.model_path, args.stream_interval)
    demo.queue(max_size=args.queue_size, default_concurrency_limit=1)
    logger.info("serving %s on http://%s:%d%s", args.model_path, args.host, args.port, args.root_path or "")
    try:
        demo.launch(server_name=args.host, server_port=args.port, root_path=args.root_path, show_error=False,
                    max_file_size=f"{args.max_upload_mb}mb", ssr_mode=False, share=False, theme="default", css=CSS,
                    footer_links=["api", "gradio", "settings"], run_history=False)
    except OSError as e:  # taken between the check and now; gradio's own advice names settings this CLI overrides
        print(f"error: cannot listen on {args.host}:{args.port} ({e.__class__.__name__}); the port was taken while "
              "the model loaded: pick another with --port", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
