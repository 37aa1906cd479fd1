"""One LLaVA-format record -> ``input_ids`` and ``labels`` for the ``plain`` and ``vicuna_v1`` templates.

Record format (LLaVA's JSON)::

    {"id": "000123", "image": "coco/train2017/000123.jpg",          # "image" absent for text-only samples
     "conversations": [{"from": "human", "value": "<image>\\nWhat is this?"},
                       {"from": "gpt", "value": "A cat."}, ...]}

The token ids are exactly upstream's (``tokenizer_image_token`` on the rendered prompt), and so is the mask:

* ``plain``: ``[BOS, IMAGE, caption..., "\\n"...]``; BOS and the image placeholder are ignored, the caption and
  its trailing newline are supervised; the human instruction text is discarded.
* ``vicuna_v1``: ``system + " " + "USER: q1 ASSISTANT: a1</s>USER: q2 ASSISTANT: a2</s>"``; each answer's tokens
  (starting with the piece that carries the space after ``"ASSISTANT:"``) and its closing ``</s>`` are supervised,
  everything else is ``IGNORE_INDEX``.

How the spans are found differs from upstream on purpose. Upstream re-tokenizes every round and its instruction
part separately and subtracts hand-tuned offsets (-2, -1) that depend on the tokenizer's ``legacy`` flag and the
``tokenizers`` version; when they are wrong it masks the whole sample and prints one warning, and training goes
on with zero loss for that sample. Here the prompt is tokenized once with character offsets, a token is
supervised when its characters fall inside an answer's span, and the result is checked: the supervised tokens
must be contiguous, stay inside the answer's characters (answer text plus ``</s>``) and cover all of them, apart
from whitespace no token carries. Any inconsistency raises :class:`TokenizationMismatchError`.

The check compares character spans, not decoded text. A legacy LLaMA tokenizer (``legacy=True``, which is how
upstream loads Vicuna's tokenizer, see :mod:`llava.tokenizer_loading`) gives the text right after ``<s>``,
``</s>`` or ``<unk>`` its own prefix ``"▁"``. That piece stands for no character of the prompt (its offsets are
those of the character it precedes), but decoding turns it into a space: ``"first part</s>second part"`` decodes
as ``"first part</s> second part"`` although every token is exactly where it belongs. Such special tokens written
inside an answer are supervised like the rest of it. Upstream trains the same labels for a ``plain`` caption and
for ``<s>`` inside a ``vicuna_v1`` answer, but masks the whole ``vicuna_v1`` sample when an answer contains
``</s>`` (its split into rounds at ``</s>`` breaks) or ``<unk>`` (its final length check counts ``<unk>``, the pad
token, as padding); those are deliberate differences, like the collator's treatment of ``<unk>``.

Truncation happens here, not in the collator, because only here is it known where the image sits:
``model_max_length`` counts the sequence after the placeholder expands to ``num_image_tokens`` vision tokens.
Text after the image may be cut, the image span never; see :func:`truncate`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from transformers import PreTrainedTokenizerBase

from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import Conversation, ConversationTemplate, MessageSpan, SeparatorStyle, get_template
from llava.mm_utils import SampleError, tokenizer_image_token_with_offsets

logger = logging.getLogger(__name__)

__all__ = [
    "MalformedSampleError",
    "OverlongSampleError",
    "TokenizationMismatchError",
    "TokenizedSample",
    "Turn",
    "build_conversation",
    "expanded_length",
    "move_image_to_front",
    "preprocess",
    "sample_id_of",
    "truncate",
]

HUMAN, GPT = "human", "gpt"  # the two "from" values of LLaVA's data files


# === Errors ===


class TokenizationMismatchError(SampleError):
    """The supervised tokens do not correspond exactly to the answer texts (upstream silently masked these)."""

    reason = "tokenization_mismatch"


class OverlongSampleError(SampleError):
    """The sample cannot be truncated to ``model_max_length`` without cutting the image or every answer."""

    reason = "overlong"


class MalformedSampleError(SampleError):
    """The record's conversation is unusable (unknown speaker, roles not alternating, misplaced ``<image>``)."""

    reason = "malformed"


# === Records ===


class Turn(NamedTuple):
    speaker: str  # "human" or "gpt"
    value: str


@dataclass(frozen=True)
class TokenizedSample:
    input_ids: torch.Tensor  # [T] long; one IMAGE_TOKEN_INDEX where the vision tokens go (image samples)
    labels: torch.Tensor  # [T] long; IGNORE_INDEX except on answer tokens
    num_truncated: int = 0  # tokens cut from the end to fit model_max_length

    @property
    def num_supervised(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


def sample_id_of(record: Mapping[str, Any], index: int | None = None) -> str:
    """The record's ``id`` as a string, or ``"#<index>"`` for records without one."""
    if "id" in record:
        return str(record["id"])
    return f"#{index}" if index is not None else "<no id>"


def _turns(record: Mapping[str, Any], sample_id: str) -> list[Turn]:
    conversations = record.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise MalformedSampleError("'conversations' must be a non-empty list", sample_id=sample_id)
    turns = []
    for j, turn in enumerate(conversations):
        if not isinstance(turn, Mapping) or not isinstance(turn.get("value"), str):
            raise MalformedSampleError(f"turn {j} must be an object with a string 'value'", sample_id=sample_id)
        speaker = turn.get("from")
        if speaker not in (HUMAN, GPT):
            raise MalformedSampleError(
                f"turn {j} has 'from'={speaker!r}; expected 'human' or 'gpt'", sample_id=sample_id
            )
        turns.append(Turn(speaker, turn["value"]))
    return turns


def move_image_to_front(turns: Sequence[Turn]) -> list[Turn]:
    """Upstream's ``preprocess_multimodal``: a turn containing ``<image>`` becomes ``"<image>\\n" + rest``.

    The rest is the turn with the token removed and surrounding whitespace stripped, so the image always sits at
    the start of its turn whatever position the data file put it in.
    """
    moved = []
    for turn in turns:
        if DEFAULT_IMAGE_TOKEN in turn.value:
            rest = turn.value.replace(DEFAULT_IMAGE_TOKEN, "").strip()
            turn = Turn(turn.speaker, f"{DEFAULT_IMAGE_TOKEN}\n{rest}".strip())
        moved.append(turn)
    return moved


def _check_image_tokens(turns: Sequence[Turn], has_image: bool, sample_id: str) -> None:
    counts = [turn.value.count(DEFAULT_IMAGE_TOKEN) for turn in turns]
    total = sum(counts)
    if not has_image:
        if total:
            raise MalformedSampleError(f"text-only sample contains {DEFAULT_IMAGE_TOKEN}", sample_id=sample_id)
        return
    if total != 1:
        # LLaVA-1.5 feeds exactly one image per sample; 0 would silently drop the image, >1 has no features.
        raise MalformedSampleError(
            f"image sample must contain {DEFAULT_IMAGE_TOKEN} exactly once, found {total}", sample_id=sample_id
        )
    where = counts.index(1)
    if turns[where].speaker != HUMAN:
        raise MalformedSampleError(f"{DEFAULT_IMAGE_TOKEN} is in a 'gpt' turn (turn {where})", sample_id=sample_id)


def build_conversation(
    record: Mapping[str, Any], template: ConversationTemplate, *, has_image: bool, sample_id: str
) -> Conversation:
    """Validate the record's turns and fill a fresh conversation of ``template`` (user turn first)."""
    turns = _turns(record, sample_id)
    conv = template.new()
    user, assistant = template.roles

    if template.sep_style is SeparatorStyle.PLAIN:
        # Stage-1 captioning (upstream preprocess_plain): the human turn only carries the image; its text is
        # thrown away and the caption is the whole target.
        if [t.speaker for t in turns] != [HUMAN, GPT]:
            raise MalformedSampleError(
                f"template 'plain' needs exactly one human and one gpt turn, got {[t.speaker for t in turns]}",
                sample_id=sample_id,
            )
        _check_image_tokens(turns, has_image, sample_id)
        conv.append_message(user, DEFAULT_IMAGE_TOKEN if has_image else "")
        conv.append_message(assistant, turns[1].value)
        return conv

    if template.sep_style is not SeparatorStyle.TWO:  # pragma: no cover - every registered style is handled
        raise ValueError(f"template {template.name!r} ({template.sep_style}) is not supported for training")
    if turns[0].speaker != HUMAN:
        # Upstream drops a leading gpt turn (some ShareGPT records start with the assistant).
        turns = turns[1:]
    # Counted before moving: the move would silently merge two <image> tokens of one turn into one.
    _check_image_tokens(turns, has_image, sample_id)
    if has_image:
        turns = move_image_to_front(turns)
    for j, turn in enumerate(turns):
        expected = HUMAN if j % 2 == 0 else GPT
        if turn.speaker != expected:
            raise MalformedSampleError(
                f"roles must alternate human, gpt, human, ... but conversation turn {j} is {turn.speaker!r}",
                sample_id=sample_id,
            )
        conv.append_message(user if expected == HUMAN else assistant, turn.value)
    if len(turns) < 2:
        raise MalformedSampleError("no gpt turn to train on", sample_id=sample_id)
    return conv


# === Tokenization and masking ===


def _answer_region(prompt: str, span: MessageSpan) -> tuple[int, int]:
    """Characters the answer's tokens may cover: from the end of the role header's text to the separator's end.

    The header's trailing space ("ASSISTANT: ") belongs to the answer's first token, because SentencePiece
    attaches a space to the word after it ("▁a1"); upstream supervises that token too.
    """
    header = prompt[span.start : span.text_start]
    return span.start + len(header.rstrip()), span.end


def _coverage_problem(prompt: str, lo: int, hi: int, spans: Sequence[tuple[int, int]]) -> str | None:
    """Why the token ``spans`` (in token order, each inside ``[lo, hi)``) do not cover ``prompt[lo:hi]``, or None.

    Spans may overlap: the bytes of one character share its span under byte fallback, and a legacy tokenizer's
    prefix ``"▁"`` after a special token shares the span of the character it precedes. Characters no token
    covers are tolerated only if they are whitespace (a tokenizer may drop it), so a dropped word, or offsets
    that point elsewhere, are reported instead of trained on.
    """
    covered = lo  # every character before this one is covered by some token so far
    previous_start = lo
    for start, end in spans:
        if start < previous_start:
            return f"the supervised tokens' character spans run backwards at {(start, end)}"
        if start > covered and prompt[covered:start].strip():
            return f"no supervised token covers {prompt[covered:start]!r}"
        previous_start, covered = start, max(covered, end)
    if prompt[covered:hi].strip():
        return f"no supervised token covers {prompt[covered:hi]!r}"
    return None


def _answer_tokens(
    prompt: str,
    span: MessageSpan,
    ids: Sequence[int],
    offsets: Sequence[tuple[int, int]],
    tokenizer: PreTrainedTokenizerBase,
    sample_id: str,
) -> range:
    """Indices of the tokens that make up one answer (plus its closing separator), after checking them."""
    lo, hi = _answer_region(prompt, span)
    # A token belongs to the answer when its characters overlap the region; empty spans (BOS) never do.
    members = [j for j, (s, e) in enumerate(offsets) if e > s and s < hi and e > lo]
    problem = None
    if not members:
        problem = "no token covers the answer"
    elif members != list(range(members[0], members[-1] + 1)):
        problem = "the answer's tokens are not contiguous"
    elif any(offsets[j][0] < lo or offsets[j][1] > hi for j in members):
        # A token straddles the boundary with the header or the next turn, so no exact split exists.
        problem = "a token crosses the answer boundary"
    elif any(ids[j] == IMAGE_TOKEN_INDEX for j in members):
        problem = "the answer overlaps an image placeholder"
    else:
        problem = _coverage_problem(prompt, lo, hi, [offsets[j] for j in members])
    if problem is not None:
        pieces = tokenizer.convert_ids_to_tokens([ids[j] for j in members])
        raise TokenizationMismatchError(
            f"tokenization mismatch in answer {span.message_index // 2}: {problem}; "
            f"expected {prompt[lo:hi]!r}, supervised pieces {pieces}",
            sample_id=sample_id,
        )
    return range(members[0], members[-1] + 1)


def _mask_answers(
    prompt: str,
    spans: Sequence[MessageSpan],
    ids: Sequence[int],
    offsets: Sequence[tuple[int, int]],
    tokenizer: PreTrainedTokenizerBase,
    sample_id: str,
) -> list[int]:
    """Labels with every assistant message (odd message index) supervised, each checked against its text."""
    labels = [IGNORE_INDEX] * len(ids)
    for span in spans:
        if span.message_index % 2 == 0:  # user turn
            continue
        for j in _answer_tokens(prompt, span, ids, offsets, tokenizer, sample_id):
            if labels[j] != IGNORE_INDEX:  # pragma: no cover - answers' character regions are disjoint
                raise TokenizationMismatchError("a token belongs to two answers", sample_id=sample_id)
            labels[j] = ids[j]
    return labels


def expanded_length(input_ids: Sequence[int] | torch.Tensor, num_image_tokens: int) -> int:
    """Length after each IMAGE_TOKEN_INDEX placeholder becomes ``num_image_tokens`` vision tokens."""
    ids = input_ids.tolist() if isinstance(input_ids, torch.Tensor) else list(input_ids)
    return len(ids) + ids.count(IMAGE_TOKEN_INDEX) * (num_image_tokens - 1)


def truncate(
    input_ids: list[int], labels: list[int], *, num_image_tokens: int, model_max_length: int, sample_id: str
) -> tuple[list[int], list[int]]:
    """Cut text from the end so the expanded sequence fits ``model_max_length``; never cut an image span.

    Raises :class:`OverlongSampleError` if an image span ends past the limit, or if no supervised token is left
    (such a sample would only add zero-loss compute, which upstream trained on silently).
    """
    if expanded_length(input_ids, num_image_tokens) <= model_max_length:
        return input_ids, labels
    keep = 0  # number of input_ids that fit
    expanded = 0  # expanded length of everything up to and including the current token
    for token in input_ids:
        expanded += num_image_tokens if token == IMAGE_TOKEN_INDEX else 1
        if token == IMAGE_TOKEN_INDEX and expanded > model_max_length:
            raise OverlongSampleError(
                f"the image's {num_image_tokens} vision tokens would end at position {expanded}, "
                f"beyond model_max_length={model_max_length}",
                sample_id=sample_id,
            )
        if expanded <= model_max_length:
            keep += 1
    input_ids, labels = input_ids[:keep], labels[:keep]
    if all(label == IGNORE_INDEX for label in labels):
        raise OverlongSampleError(
            f"no supervised token is left after truncating to model_max_length={model_max_length}",
            sample_id=sample_id,
        )
    return input_ids, labels


def preprocess(
    record: Mapping[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    template: str | ConversationTemplate,
    *,
    num_image_tokens: int,
    model_max_length: int | None = None,
    sample_id: str | None = None,
) -> TokenizedSample:
    """Tokenize and mask one record; an ``"image"`` key makes it an image sample.

    ``model_max_length=None`` disables truncation. Errors (all :class:`~llava.mm_utils.SampleError`) name the
    sample: :class:`MalformedSampleError`, :class:`TokenizationMismatchError`, :class:`OverlongSampleError`.
    """
    if num_image_tokens < 1:
        raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
    if isinstance(template, str):
        template = get_template(template)
    sample_id = sample_id if sample_id is not None else sample_id_of(record)
    has_image = "image" in record

    conv = build_conversation(record, template, has_image=has_image, sample_id=sample_id)
    prompt, spans = conv.get_prompt_with_spans()
    ids, offsets = tokenizer_image_token_with_offsets(prompt, tokenizer)
    labels = _mask_answers(prompt, spans, ids, offsets, tokenizer, sample_id)

    num_before = len(ids)
    if model_max_length is not None:
        ids, labels = truncate(
            ids, labels, num_image_tokens=num_image_tokens, model_max_length=model_max_length, sample_id=sample_id
        )
    return TokenizedSample(
        input_ids=torch.tensor(ids, dtype=torch.long),
        labels=torch.tensor(labels, dtype=torch.long),
        num_truncated=num_before - len(ids),
    )
