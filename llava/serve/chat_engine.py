"""The web demo's model side, without gradio: image checks, schedules, multi-turn prompts, streamed answers and the
kept-token map of each answer.

The page (``llava.serve.gradio_web_server``) only wires these to components. Everything a visitor can get wrong is
raised as :class:`DemoInputError` with a message meant for the page; the prompt rules are the terminal chat's
(``llava.serve.cli``): the first user turn carries ``<image>\\n``, the image counts as the model's number of
vision tokens, a prompt without room for one new token is refused and forgotten, and a prompt with less room than
the requested maximum gets its answer capped, with a note.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from llava.analysis.common import CHECKPOINT_SCHEDULE
from llava.analysis.kept_tokens import kept_map_png_bytes, kept_panels, processed_image
from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.conversation import Conversation, get_conv_template
from llava.mm_utils import ImageLoadError, background_color, load_image, process_images, tokenizer_image_token
from llava.model.compression_tokens import check_compress_support, image_prompt_tokens
from llava.model.reduction.config import PRESETS, ReductionConfig, ReductionConfigError, resolve_reduction
from llava.model.speculative import SpeculativeStats
from llava.model.two_pass import ImageCache
from llava.serve.common import prompt_token_count
from llava.serve.streaming import Prefill, TokenStream

if TYPE_CHECKING:
    from llava.model.llava_llama import LlavaLlamaForCausalLM

logger = logging.getLogger("llava.serve.chat_engine")

# A 48-megapixel phone photo passes; decoding an image costs about 3 bytes a pixel before it is shrunk to the tower's
# input, so the bound keeps one request to a few hundred MB. PIL itself refuses only past twice its own
# MAX_IMAGE_PIXELS (about 179 million), as a decompression bomb.
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
# Longer questions cannot fit any LLaVA context anyway; the bound only keeps the tokenizer from megabytes of text.
MAX_QUESTION_CHARS = 20_000
MAX_NEW_TOKENS_LIMIT = 4096


class DemoInputError(ValueError):
    """Input the demo cannot use; the message is shown on the page as it is."""


def schedule_choices() -> list[str]:
    """The picker's entries: the schedule the model was loaded with, then every preset."""
    return [CHECKPOINT_SCHEDULE, *sorted(PRESETS)]


@dataclass(frozen=True)
class Sampling:
    temperature: float  # 0: greedy
    top_p: float  # 1: no nucleus cut
    max_new_tokens: int
    seed: int  # of the sampling generator; the `off` comparison reuses it

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0


def parse_sampling(temperature: Any, top_p: Any, max_new_tokens: Any, seed: int | None = None) -> Sampling:
    """Checks the sliders' values (an API caller can send anything); a new random seed unless one is given."""
    try:
        t, p, m = float(temperature), float(top_p), float(max_new_tokens)
    except (TypeError, ValueError):
        raise DemoInputError(f"temperature, top-p and max new tokens must be numbers, got {temperature!r}, {top_p!r} "
                             f"and {max_new_tokens!r}") from None
    if not 0 <= t <= 5:  # also refuses NaN
        raise DemoInputError(f"temperature must be between 0 (greedy) and 5, got {temperature}")
    if not 0 < p <= 1:
        raise DemoInputError(f"top-p must be in (0, 1], got {top_p}")
    if not (m == int(m) and 1 <= m <= MAX_NEW_TOKENS_LIMIT):
        raise DemoInputError(f"max new tokens must be a whole number from 1 to {MAX_NEW_TOKENS_LIMIT}, got {max_new_tokens}")
    return Sampling(t, p, int(m), random.SystemRandom().randrange(2**31) if seed is None else seed)


@dataclass
class Answer:
    """One generated answer and what the page reports about it."""

    text: str
    schedule: ReductionConfig
    prefill: Prefill
    tokens: list[int]
    decode_seconds: float
    tokens_per_second: float | None
    prompt_tokens: int  # the prompt as the model counts it (the image as its vision tokens)
    max_new_tokens: int  # after capping to the context
    sampling: Sampling
    speculative: SpeculativeStats | None = None  # self-speculative decoding (the server's --speculative twig)


@dataclass
class ChatState:
    """One visitor's conversation (kept in a ``gr.State``)."""

    conv: Conversation
    image_key: str | None = None  # content hash of the image the conversation is about
    image_name: str = ""
    # [1, 3, H, W] in the model's dtype, on the CPU: gradio keeps up to thousands of sessions, GPU memory is for the
    # model (moved to the device for each answer).
    pixels: torch.Tensor | None = None
    last: Answer | None = None  # the answer of the last turn (regenerate, the `off` comparison)
    last_prompt: torch.Tensor | None = None  # [1, T] its prompt (CPU)
    last_question: str = ""

    def snapshot(self) -> ChatState:
        """A copy to go back to if a turn does not complete (the tensors are shared: nothing changes them)."""
        return dataclasses.replace(self, conv=self.conv.copy())

    def restore(self, snap: ChatState) -> None:
        """Back to ``snap``, in place: gradio holds this very object as the visitor's state."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(snap, f.name))
        self.conv = snap.conv.copy()

    def history(self) -> list[tuple[str, str | None]]:
        """(question, answer) pairs as typed, the image placeholder removed; answer None while being generated."""
        pairs: list[tuple[str, str | None]] = []
        msgs = self.conv.messages
        for i in range(0, len(msgs) - 1, 2):
            question = msgs[i][1] or ""
            if i == 0:
                question = question.removeprefix(DEFAULT_IMAGE_TOKEN + "\n")
            pairs.append((question, msgs[i + 1][1]))
        return pairs


@dataclass
class PendingTurn:
    """A prompt ready to be answered."""

    input_ids: torch.Tensor  # [1, T] (CPU)
    prompt_tokens: int
    max_new_tokens: int
    note: str | None = None  # e.g. the answer was capped to the room left in the context


@dataclass
class ChatEngine:
    tokenizer: Any
    model: LlavaLlamaForCausalLM
    image_processor: Any
    context_len: int
    conv_mode: str = "vicuna_v1"
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    # VoCo schedules: compressed images (their VoCo caches, on the model's device) shared by every conversation and
    # keyed by content, so a follow-up question skips the vision tower and the image; least recently used out.
    max_cached_images: int = 8
    # "twig": every answer is decoded self-speculatively with the checkpoint's twig (greedy answers are the plain
    # ones; sampled answers keep the base's distribution), and the statistics show the acceptance rate.
    speculative: str | None = None
    loaded_schedule: ReductionConfig = field(init=False)
    image_cache: ImageCache = field(init=False)

    def __post_init__(self) -> None:
        self.loaded_schedule = self.model.config.reduction_config
        self.image_cache = ImageCache(self.max_cached_images)
        if self.speculative and getattr(self.model, "twig", None) is None:
            raise ValueError("--speculative twig drafts with the checkpoint's twig, but this checkpoint has none "
                             "(scripts/train_twig.sh trains one)")
        get_conv_template(self.conv_mode)  # an unknown template fails at start-up, not on the first question

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def num_vision_tokens(self) -> int:
        return int(self.model.config.num_vision_tokens)

    def new_state(self) -> ChatState:
        return ChatState(conv=get_conv_template(self.conv_mode))

    # ----------------------------------------------------------------------------------------------- inputs
    def resolve_schedule(self, preset: Any, overrides: Any) -> ReductionConfig:
        """The picker's schedule: a preset (or the loaded one) plus ``key=value`` overrides, validated for this model
        with the scripts' own functions, so the messages are the scripts' messages."""
        preset_name = "" if preset is None else str(preset).strip()
        override_text = "" if overrides is None else str(overrides).strip()
        try:
            red = resolve_reduction(None if preset_name in ("", CHECKPOINT_SCHEDULE) else preset_name,
                                    override_text or None, base=self.loaded_schedule)
            check_compress_support(self.model.config, red)
            return red.validate_for(self.num_layers, self.num_vision_tokens)
        except ReductionConfigError as e:
            raise DemoInputError(f"Invalid schedule: {e}") from None

    def unfit_presets(self) -> dict[str, str]:
        """The presets this model cannot run (another depth or width than they were written for), each with the
        reason ``resolve_schedule`` would give."""
        unfit: dict[str, str] = {}
        for name in sorted(PRESETS):
            try:
                self.resolve_schedule(name, "")
            except DemoInputError as e:
                unfit[name] = str(e).removeprefix("Invalid schedule: ")
        return unfit

    def schedule_options(self) -> list[tuple[str, str]]:
        """The picker's entries as (label, value): the loaded schedule, the presets this model runs, then the others,
        marked (picking one shows why it cannot run)."""
        unfit = self.unfit_presets()
        fit = [(name, name) for name in sorted(PRESETS) if name not in unfit]
        marked = [(f"{name} (does not fit this model)", name) for name in sorted(unfit)]
        return [(CHECKPOINT_SCHEDULE, CHECKPOINT_SCHEDULE), *fit, *marked]

    def describe_schedule(self, red: ReductionConfig) -> str:
        return red.describe(self.num_layers, self.num_vision_tokens)

    @staticmethod
    def image_key(path: str) -> str:
        """Content hash of an uploaded file: the same picture again continues the conversation."""
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def read_image(self, path: str, display_name: str) -> torch.Tensor:
        """Pixel values [1, 3, H, W] (model dtype, CPU) of an uploaded file, or :class:`DemoInputError`."""
        name = display_name or "the upload"
        try:
            # The header alone gives the size: a huge image is refused before any pixel is decoded.
            with Image.open(path) as probe:
                width, height = probe.size
        except Image.DecompressionBombError:
            raise DemoInputError(self._too_large(name, None)) from None
        except (OSError, ValueError, SyntaxError) as e:  # PIL's UnidentifiedImageError is an OSError
            logger.info("refused upload %r: %s: %s", name, type(e).__name__, e)
            raise DemoInputError(f"{name!r} is not an image this demo can read (PNG, JPEG, WebP, GIF, BMP, TIFF, "
                                 "...). Upload a picture file.") from None
        if width * height > self.max_image_pixels:
            raise DemoInputError(self._too_large(name, (width, height)))
        try:
            image = load_image(path, background=background_color(self.image_processor))
        except ImageLoadError as e:
            logger.info("refused upload %r: %s", name, e)
            reason = {"empty": "it has no pixels", "too_large": "it is too large to decode safely"}.get(
                e.problem, "it is unreadable or corrupt")
            raise DemoInputError(f"{name!r} cannot be used: {reason}. Upload another picture.") from None
        pixels = process_images([image], self.image_processor, self.model.config.image_aspect_ratio)
        return pixels.to(next(self.model.parameters()).dtype)

    def _too_large(self, name: str, size: tuple[int, int] | None) -> str:
        what = "is too large" if size is None else f"is {size[0]} x {size[1]} = {size[0] * size[1] / 1e6:.1f} megapixels"
        return (f"{name!r} {what}; this demo takes images up to {self.max_image_pixels / 1e6:.0f} megapixels "
                "(--max-image-pixels). Downscale it and upload it again.")

    @staticmethod
    def check_question(text: Any) -> str:
        question = "" if text is None else str(text)
        if not question.strip():
            raise DemoInputError("Type a question about the image first.")
        if len(question) > MAX_QUESTION_CHARS:
            raise DemoInputError(f"The question is {len(question)} characters long; this demo takes at most "
                                 f"{MAX_QUESTION_CHARS}.")
        return question

    # ----------------------------------------------------------------------------------------------- turns
    def begin_turn(self, state: ChatState, question: str, sampling: Sampling) -> PendingTurn:
        """Appends the question (the first one carries the image) and checks it fits, as the terminal chat does.

        A prompt without room for one new token is refused with :class:`DemoInputError` and the turn is forgotten.
        """
        conv = state.conv
        first = not conv.messages
        conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN + "\n" + question if first else question)
        conv.append_message(conv.roles[1], None)
        try:
            return self._pending(state, sampling)
        except DemoInputError:
            del conv.messages[-2:]
            raise

    def reopen_last_turn(self, state: ChatState, sampling: Sampling) -> PendingTurn:
        """Forgets the last answer so that it can be generated again (regenerate)."""
        conv = state.conv
        if state.last is None or len(conv.messages) < 2 or conv.messages[-1][1] is None:
            raise DemoInputError("There is no answer to regenerate yet: ask a question first.")
        conv.messages[-1][-1] = None
        return self._pending(state, sampling)

    def _pending(self, state: ChatState, sampling: Sampling) -> PendingTurn:
        return self.turn_for_prompt(state.conv.get_prompt(), sampling)

    def turn_for_prompt(self, prompt: str, sampling: Sampling) -> PendingTurn:
        """The prompt's tokens and its answer's cap, or :class:`DemoInputError` when the context has no room
        (also the model worker's check, llava.serve.model_worker)."""
        ids = tokenizer_image_token(prompt, self.tokenizer, return_tensors="pt")
        image_tokens = image_prompt_tokens(self.num_vision_tokens, self.loaded_schedule)  # VoCo tokens count too
        needed = prompt_token_count(ids, image_tokens)
        room = self.context_len - needed
        if room < 1:
            raise DemoInputError(
                f"The prompt would be {needed} tokens (the conversation so far plus this question; the image counts "
                f"as {image_tokens}) but the model's context length is {self.context_len}; nothing was "
                "generated. Ask a shorter question, or press Clear to start a new conversation.")
        note = None
        max_new = sampling.max_new_tokens
        if max_new > room:
            note = (f"The prompt is {needed} tokens, so only {room} of the {self.context_len}-token context are left: "
                    f"the answer is capped at {room} new tokens (max new tokens {max_new}).")
            max_new = room
        return PendingTurn(ids.unsqueeze(0), needed, max_new, note)

    def stream(self, pixels: torch.Tensor | None, turn: PendingTurn, schedule: ReductionConfig,
               sampling: Sampling) -> TokenStream:
        device = next(self.model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(sampling.seed) if sampling.do_sample else None
        pixels = pixels.to(device) if pixels is not None else None  # None: a text-only prompt (model worker)
        return TokenStream(self.model, turn.input_ids.to(device), pixels, schedule, turn.max_new_tokens,
                           do_sample=sampling.do_sample, temperature=sampling.temperature,
                           top_p=sampling.top_p if sampling.top_p < 1 else None,
                           eos_token_id=self.tokenizer.eos_token_id, generator=generator, image_cache=self.image_cache,
                           speculative=self.speculative)

    def decode(self, tokens: list[int]) -> str:
        """The answer text, as the terminal chat prints it."""
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    def answer_stream(self, pixels: torch.Tensor, turn: PendingTurn, schedule: ReductionConfig,
                      sampling: Sampling) -> Iterator[str | Answer]:
        """Yields the answer text so far after each token, then the finished :class:`Answer`."""
        stream = self.stream(pixels, turn, schedule, sampling)
        for _ in stream:
            # A token can end inside a multi-byte character: hold the replacement mark back until it completes.
            yield self.decode(stream.tokens).rstrip("\ufffd")
        assert stream.prefill is not None
        yield Answer(self.decode(stream.tokens), schedule, stream.prefill, list(stream.tokens), stream.decode_seconds,
                     stream.tokens_per_second, turn.prompt_tokens, turn.max_new_tokens, sampling,
                     stream.speculative_stats)

    @staticmethod
    def finish_turn(state: ChatState, turn: PendingTurn, answer: Answer, question: str) -> None:
        state.conv.messages[-1][-1] = answer.text  # context for the next turn
        state.last, state.last_prompt, state.last_question = answer, turn.input_ids, question

    # ----------------------------------------------------------------------------------------------- reports
    def kept_map(self, pixels: torch.Tensor, answer: Answer) -> Image.Image:
        """The kept-token map of the answer's own prefill, drawn by ``llava.analysis.kept_tokens``."""
        N = self.num_vision_tokens
        panels = kept_panels(answer.prefill.stages, N, answer.prefill.vision_valid)
        suptitle = (f"schedule '{answer.schedule.name}': realised average {answer.prefill.realised_avg_vision_tokens:.2f}"
                    f" of {N} vision tokens per layer")
        png = kept_map_png_bytes(processed_image(pixels[0], self.image_processor), panels.masks, panels.titles,
                                 suptitle=suptitle)
        with Image.open(io.BytesIO(png)) as img:
            return img.convert("RGB")

    def stats_markdown(self, answer: Answer, notes: Sequence[str] = ()) -> str:
        N, L = self.num_vision_tokens, self.num_layers
        pf = answer.prefill
        panels = kept_panels(pf.stages, N, pf.vision_valid)  # real tokens only, never merged-away slots
        kept = ", ".join(f"{k} after {'local merging' if layer is None else f'layer {layer}'}"
                         for layer, k in zip(panels.layers, panels.kept)) or "none pruned"
        rate = "n/a (fewer than 2 tokens)" if answer.tokens_per_second is None else f"{answer.tokens_per_second:.1f}"
        sampling = ("greedy" if not answer.sampling.do_sample else
                    f"temperature {answer.sampling.temperature:g}, top-p {answer.sampling.top_p:g}, "
                    f"seed {answer.sampling.seed}")
        lines = [
            f"**Schedule** `{answer.schedule.name}`",
            f"- average vision tokens per layer (realised): **{pf.realised_avg_vision_tokens:.2f}** of {N} "
            f"over {L} layers ({pf.realised_avg_vision_tokens_after_filter:.2f} counting each prune layer after its "
            f"filter, as MustDrop's authors count); kept: {kept}",
            f"- prefill: **{pf.seconds * 1000:.1f} ms** for a {answer.prompt_tokens}-token prompt (the image counted "
            f"as {N})",
            f"- decoding: **{rate} tokens/s** ({len(answer.tokens)} new tokens, {sampling})",
        ]
        spec = answer.speculative
        if spec is not None:
            rate = spec.acceptance_rate
            lines.append(f"- self-speculative decoding (twig): acceptance rate **{'n/a' if rate is None else f'{rate:.2f}'}**"
                         f" ({sum(spec.accepted)} of {sum(spec.drafted)} drafted tokens kept, {spec.rounds} rounds)")
        if answer.schedule.compress_tokens:
            lines.append(f"- VoCo: the text sees **{answer.schedule.compress_tokens}** compression tokens instead of the "
                         f"image; " + ("the image's VoCo cache was reused (no vision tower, no image tokens this turn)"
                                       if pf.image_reused else "the image was compressed for this turn"))
        lines.extend(f"- note: {n}" for n in notes)
        return "\n".join(lines)


__all__ = [
    "Answer",
    "ChatEngine",
    "ChatState",
    "DemoInputError",
    "PendingTurn",
    "Sampling",
    "parse_sampling",
    "schedule_choices",
]
