"""Conversation templates: how a list of (role, message) turns becomes one prompt string.

Templates are frozen dataclasses in a registry; :func:`get_conv_template` hands out a fresh
:class:`Conversation` every time, so no caller can change what another caller sees. Upstream LLaVA kept a
module-level ``default_conversation`` that ``train()`` reassigned and every ``preprocess_*`` read; here the
template is always passed explicitly.

Rendering (``seps = (sep, sep2)``; message ``i`` is followed by ``seps[i % 2]``):

* ``TWO`` (``vicuna_v1``, ``llava_v1``)::

      {system}{sep}{role0}: {msg0}{sep}{role1}: {msg1}{sep2}{role0}: ...

  e.g. ``"<system> USER: <image>\\nq1 ASSISTANT: a1</s>USER: q2 ASSISTANT: a2</s>"``. A ``None`` message
  renders as ``"{role}:"`` with nothing after it: the generation prompt.
* ``PLAIN`` (``plain``, stage-1 captioning): no system text and no role names; ``sep`` (empty) follows the
  user message and ``sep2`` (``"\\n"``) follows the assistant message, so ``[("", "<image>"), ("", caption)]``
  renders as ``"<image>" + caption + "\\n"``, exactly the layout upstream's ``preprocess_plain`` trains on.

Upstream's calls work as written: ``conv_templates["llava_v1"].copy()`` (and ``default_conversation.copy()``)
give a fresh :class:`Conversation` with ``.roles``, ``.messages``, ``.append_message``, ``.get_prompt()``,
``.sep``, ``.sep2``; ``conv.messages[-1][-1] = answer`` edits the last message in place, as upstream's CLI does.
The templates themselves are frozen: ``conv_templates[...].append_message`` is refused with a message saying to
``.copy()`` first (upstream would have changed the template for every later caller). Only the LLaVA-1.5
(Vicuna) templates exist; upstream's LLaMA-2, Mistral, MPT and v0 templates are for other language models.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "Conversation",
    "ConversationTemplate",
    "MessageSpan",
    "SeparatorStyle",
    "conv_llava_plain",
    "conv_llava_v1",
    "conv_templates",
    "conv_vicuna_v1",
    "default_conversation",
    "get_conv_template",
    "get_template",
    "list_conv_templates",
]


class SeparatorStyle(enum.Enum):
    """How messages are joined; see the module docstring for the exact layouts."""

    TWO = "two"  # vicuna v1 style: "ROLE: msg" with alternating separators
    PLAIN = "plain"  # stage-1 captioning: bare messages, no roles, no system text


@dataclass(frozen=True)
class ConversationTemplate:
    """Immutable description of one prompt format. Use :meth:`new` (or :func:`get_conv_template`)."""

    name: str
    system: str
    roles: tuple[str, str]  # (user role, assistant role)
    sep_style: SeparatorStyle
    sep: str  # follows the system text and every user message
    sep2: str  # follows every assistant message; for v1 this is the EOS text "</s>"
    version: str = ""

    @property
    def stop_str(self) -> str | None:
        """Text that ends an assistant message, for stopping generation (``None`` if it is only whitespace)."""
        return self.sep2 if self.sep2.strip() else None

    def new(self) -> Conversation:
        return Conversation(template=self)

    def copy(self) -> Conversation:
        """A fresh, empty conversation in this template (upstream's ``conv_templates[name].copy()``)."""
        return self.new()

    @property
    def messages(self) -> tuple[()]:
        return ()

    @property
    def offset(self) -> int:
        return 0

    def append_message(self, role: str, message: str | None) -> None:
        raise TypeError(
            f"template {self.name!r} is shared by every caller and cannot hold messages; take a conversation first: "
            f"conv = conv_templates[{self.name!r}].copy(), then conv.append_message(...)"
        )

    def get_prompt(self) -> str:
        """The prompt of an empty conversation (the system text), as upstream's template object renders it."""
        return self.new().get_prompt()


@dataclass(frozen=True)
class MessageSpan:
    """Character offsets of one rendered message inside :meth:`Conversation.get_prompt_with_spans`' prompt.

    ``prompt[start:text_start]`` is the role header (e.g. ``"ASSISTANT: "``, empty for PLAIN),
    ``prompt[text_start:text_end]`` is the message text and ``prompt[text_end:end]`` its trailing separator.
    """

    role: str
    message_index: int
    start: int
    text_start: int
    text_end: int
    end: int


@dataclass
class Conversation:
    """A template plus the messages appended so far. Cheap to create; never shared between samples."""

    template: ConversationTemplate
    # [role, message] lists, as upstream: callers set the answer with ``conv.messages[-1][-1] = text``.
    messages: list[list[str | None]] = field(default_factory=list)

    @property
    def roles(self) -> tuple[str, str]:
        return self.template.roles

    @property
    def system(self) -> str:
        return self.template.system

    @property
    def sep_style(self) -> SeparatorStyle:
        return self.template.sep_style

    @property
    def sep(self) -> str:
        return self.template.sep

    @property
    def sep2(self) -> str:
        return self.template.sep2

    def append_message(self, role: str, message: str | None) -> None:
        """Add a turn; ``message=None`` marks the turn the model should generate (only valid last)."""
        if role not in self.roles:
            raise ValueError(f"role {role!r} is not one of template {self.template.name!r}'s roles {self.roles}")
        self.messages.append([role, message])

    def copy(self) -> Conversation:
        # Each message is copied too: callers edit messages in place (upstream's ``messages[-1][-1] = text``).
        return Conversation(template=self.template, messages=[list(m) for m in self.messages])

    @property
    def version(self) -> str:
        return self.template.version

    @property
    def offset(self) -> int:
        """Upstream's count of few-shot messages before the user's; no LLaVA-1.5 template has any."""
        return 0

    def get_prompt(self) -> str:
        return self.get_prompt_with_spans()[0]

    def get_prompt_with_spans(self) -> tuple[str, list[MessageSpan]]:
        """Render the prompt and report where each non-``None`` message sits in it (for label masking)."""
        seps = (self.sep, self.sep2)
        style = self.sep_style
        parts: list[str] = []
        spans: list[MessageSpan] = []
        pos = 0

        def emit(text: str) -> None:
            nonlocal pos
            parts.append(text)
            pos += len(text)

        if style is SeparatorStyle.TWO:
            emit(self.system + self.sep)
        elif style is SeparatorStyle.PLAIN:
            emit(self.system)
        else:  # pragma: no cover - the enum has no other members
            raise ValueError(f"unsupported separator style {style}")

        for i, (role, message) in enumerate(self.messages):
            if message is None:
                if i != len(self.messages) - 1:
                    raise ValueError("only the last message may be None (the generation prompt)")
                # The generation prompt ends right after the colon; the model produces " answer".
                emit(f"{role}:" if style is SeparatorStyle.TWO else "")
                continue
            start = pos
            emit(f"{role}: " if style is SeparatorStyle.TWO else "")
            text_start = pos
            emit(message)
            text_end = pos
            emit(seps[i % 2])
            spans.append(MessageSpan(role, i, start, text_start, text_end, pos))
        return "".join(parts), spans


# === Registry ===

_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_LLAVA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

_TEMPLATES: dict[str, ConversationTemplate] = {
    "plain": ConversationTemplate(
        name="plain", system="", roles=("", ""), sep_style=SeparatorStyle.PLAIN, sep="", sep2="\n", version="plain"
    ),
    "vicuna_v1": ConversationTemplate(
        name="vicuna_v1",
        system=_VICUNA_SYSTEM,
        roles=("USER", "ASSISTANT"),
        sep_style=SeparatorStyle.TWO,
        sep=" ",
        sep2="</s>",
        version="v1",
    ),
    "llava_v1": ConversationTemplate(
        name="llava_v1",
        system=_LLAVA_SYSTEM,
        roles=("USER", "ASSISTANT"),
        sep_style=SeparatorStyle.TWO,
        sep=" ",
        sep2="</s>",
        version="v1",
    ),
}
# Upstream's other names for the same templates.
_ALIASES: dict[str, str] = {"v1": "vicuna_v1", "v0_plain": "plain"}

# Read-only view: templates are frozen and the mapping cannot be reassigned through this name.
conv_templates: MappingProxyType[str, ConversationTemplate] = MappingProxyType(
    {**_TEMPLATES, **{alias: _TEMPLATES[target] for alias, target in _ALIASES.items()}}
)


# Upstream's module-level names. default_conversation is vicuna_v1, as upstream's; here it is a frozen template (take
# a conversation with .copy()) and nothing reassigns it: training passes its template explicitly.
conv_vicuna_v1 = _TEMPLATES["vicuna_v1"]
conv_llava_v1 = _TEMPLATES["llava_v1"]
conv_llava_plain = _TEMPLATES["plain"]
default_conversation = conv_vicuna_v1


def list_conv_templates() -> list[str]:
    """All accepted names, aliases included, sorted."""
    return sorted(conv_templates)


def get_template(name: str) -> ConversationTemplate:
    """The frozen template registered under ``name`` (or an alias); ``ValueError`` listing known names."""
    try:
        return conv_templates[name]
    except KeyError:
        raise ValueError(
            f"unknown conversation template {name!r}; known templates: {', '.join(list_conv_templates())}"
        ) from None


def get_conv_template(name: str) -> Conversation:
    """A fresh, empty :class:`Conversation` for template ``name``."""
    return get_template(name).new()
