"""Conversation templates: exact prompt strings, registry behaviour, no shared mutable state."""

from __future__ import annotations

import dataclasses

import pytest

from llava.conversation import (
    ConversationTemplate,
    SeparatorStyle,
    conv_templates,
    get_conv_template,
    get_template,
    list_conv_templates,
)

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


def test_vicuna_v1_multi_turn_prompt_is_exact() -> None:
    conv = get_conv_template("vicuna_v1")
    user, assistant = conv.roles
    assert (user, assistant) == ("USER", "ASSISTANT")
    conv.append_message(user, "<image>\nq1")
    conv.append_message(assistant, "a1")
    conv.append_message(user, "q2")
    conv.append_message(assistant, "a2")
    assert conv.get_prompt() == VICUNA_SYSTEM + " USER: <image>\nq1 ASSISTANT: a1</s>USER: q2 ASSISTANT: a2</s>"


def test_generation_prompt_ends_at_the_assistant_colon() -> None:
    conv = get_conv_template("v1")
    conv.append_message("USER", "Hi")
    conv.append_message("ASSISTANT", None)
    assert conv.get_prompt() == VICUNA_SYSTEM + " USER: Hi ASSISTANT:"
    assert get_template("v1").stop_str == "</s>"


def test_none_message_only_allowed_last() -> None:
    conv = get_conv_template("vicuna_v1")
    conv.append_message("USER", None)
    conv.append_message("ASSISTANT", "a")
    with pytest.raises(ValueError, match="only the last message"):
        conv.get_prompt()


def test_llava_v1_uses_human_wording_and_same_layout() -> None:
    conv = get_conv_template("llava_v1")
    assert conv.system == LLAVA_SYSTEM
    conv.append_message("USER", "q")
    conv.append_message("ASSISTANT", "a")
    assert conv.get_prompt() == LLAVA_SYSTEM + " USER: q ASSISTANT: a</s>"


def test_plain_renders_upstream_stage1_layout() -> None:
    conv = get_conv_template("plain")
    assert conv.sep_style is SeparatorStyle.PLAIN
    conv.append_message("", "<image>")
    conv.append_message("", "a cat on a mat")
    # upstream preprocess_plain: "<image>" + caption + sep("\n"), no system text, no roles
    assert conv.get_prompt() == "<image>a cat on a mat\n"
    assert get_template("plain").stop_str is None


def test_spans_locate_every_message() -> None:
    conv = get_conv_template("vicuna_v1")
    messages = ["<image>\nq1", "a1", "q2", "a2 "]
    for i, msg in enumerate(messages):
        conv.append_message(conv.roles[i % 2], msg)
    prompt, spans = conv.get_prompt_with_spans()
    assert [prompt[s.text_start : s.text_end] for s in spans] == messages
    assert [prompt[s.start : s.text_start] for s in spans] == ["USER: ", "ASSISTANT: ", "USER: ", "ASSISTANT: "]
    assert [prompt[s.text_end : s.end] for s in spans] == [" ", "</s>", " ", "</s>"]
    assert spans[-1].end == len(prompt)


def test_get_conv_template_returns_fresh_objects() -> None:
    a = get_conv_template("vicuna_v1")
    a.append_message("USER", "q")
    b = get_conv_template("vicuna_v1")
    assert b.messages == []
    assert a.template is b.template  # the immutable template is shared, the message list is not
    c = a.copy()
    c.append_message("ASSISTANT", "x")
    assert len(a.messages) == 1


def test_templates_are_immutable() -> None:
    template = get_template("vicuna_v1")
    assert isinstance(template, ConversationTemplate)
    with pytest.raises(dataclasses.FrozenInstanceError):
        template.system = "changed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        conv_templates["vicuna_v1"] = template  # type: ignore[index]


def test_aliases_and_registry() -> None:
    assert get_template("v1") is get_template("vicuna_v1")
    assert {"plain", "v1", "vicuna_v1", "llava_v1"} <= set(list_conv_templates())


def test_unknown_template_lists_known_names() -> None:
    with pytest.raises(ValueError) as info:
        get_conv_template("vicuna_v2")
    message = str(info.value)
    assert "vicuna_v2" in message
    for name in ("plain", "vicuna_v1", "llava_v1", "v1"):
        assert name in message


def test_append_message_rejects_foreign_role() -> None:
    conv = get_conv_template("vicuna_v1")
    with pytest.raises(ValueError, match="role"):
        conv.append_message("human", "hi")
