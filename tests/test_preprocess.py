"""Golden tokenization and masking for `plain` and `vicuna_v1`, plus the tokenizer and the error paths.

The expected layouts are written out piece by piece. They were derived from the fixture tokenizer's pieces:
every word of the corpus is one ``"▁word"`` piece, a newline is the byte piece ``<0x0A>``, text right after
``</s>`` or at the start of the chunk after an image gets no ``"▁"`` on its first word, and the chunk after an
image starts with a lone ``"▁"`` (its prefix space) because ``"▁\\n"`` is not a piece.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from data_fixtures import CORPUS, image_record, text_record, tiny_tokenizer  # noqa: F401  (fixture import)
from llama_sp_fixtures import Upstream437, build_llama_sp_dir
from transformers import AutoTokenizer

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import get_template
from llava.demo.tokenizer import train_tokenizer
from llava.mm_utils import SampleError, tokenizer_image_token, tokenizer_image_token_with_offsets
from llava.tokenizer_loading import load_tokenizer
from llava.train.preprocess import (
    MalformedSampleError,
    OverlongSampleError,
    TokenizationMismatchError,
    build_conversation,
    expanded_length,
    move_image_to_front,
    preprocess,
)

IMG = "<IMG>"  # stands for IMAGE_TOKEN_INDEX in the expected layouts
SYSTEM_PIECES = ["▁" + word for word in get_template("vicuna_v1").system.split()]


def ign(*pieces: str) -> list[tuple[str, bool]]:
    return [(p, False) for p in pieces]


def sup(*pieces: str) -> list[tuple[str, bool]]:
    return [(p, True) for p in pieces]


def layout(sample, tokenizer) -> list[tuple[str, bool]]:
    """(piece, supervised) per position; also checks that supervised labels equal their input ids."""
    ids, labels = sample.input_ids.tolist(), sample.labels.tolist()
    assert len(ids) == len(labels)
    out = []
    for token, label in zip(ids, labels):
        assert label in (IGNORE_INDEX, token)
        piece = IMG if token == IMAGE_TOKEN_INDEX else tokenizer.convert_ids_to_tokens(token)
        out.append((piece, label != IGNORE_INDEX))
    return out


def record(sample_id: str, *turns: tuple[str, str], image: str | None = "img.png") -> dict:
    rec = {"id": sample_id, "conversations": [{"from": f, "value": v} for f, v in turns]}
    if image is not None:
        rec["image"] = image
    return rec


# === Tokenizer ===


def test_tokenizer_is_llama_like(tiny_tokenizer) -> None:  # noqa: F811
    tok = tiny_tokenizer
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 0)
    ids = tok("yes</s>USER: hi")["input_ids"]
    assert ids[0] == 1 and ids[-1] != 2  # BOS added, EOS not
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[:4] == ["<s>", "▁yes", "</s>", "USER:"]  # "</s>" in text is EOS; no prefix space after it
    assert tok.convert_ids_to_tokens(tok("\n")["input_ids"]) == ["<s>", "▁", "<0x0A>"]
    assert tok.convert_ids_to_tokens(3) == "<0x00>" and tok.convert_ids_to_tokens(258) == "<0xFF>"


def test_tokenizer_round_trips_any_text_and_reloads(tiny_tokenizer) -> None:  # noqa: F811
    text = "Zebra 漢字 😀 ünïcødé\ttabs  and\nnewlines"
    ids = tiny_tokenizer(text)["input_ids"]
    assert tiny_tokenizer.unk_token_id not in ids  # byte fallback: nothing is unknown
    assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == text
    again = AutoTokenizer.from_pretrained(tiny_tokenizer.name_or_path)
    assert again(text)["input_ids"] == ids


def test_tokenizer_training_is_deterministic(tiny_tokenizer, tmp_path: Path) -> None:  # noqa: F811
    other = train_tokenizer(CORPUS, tmp_path / "again", vocab_size=1024)
    assert other.get_vocab() == tiny_tokenizer.get_vocab()
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(CORPUS, tmp_path / "small", vocab_size=100)


# === tokenizer_image_token ===


def test_tokenizer_image_token_keeps_one_bos_and_one_placeholder(tiny_tokenizer) -> None:  # noqa: F811
    tok = tiny_tokenizer
    ids = tokenizer_image_token("USER: <image>\nWhat digit is shown?", tok)
    pieces = [IMG if i == IMAGE_TOKEN_INDEX else tok.convert_ids_to_tokens(i) for i in ids]
    assert pieces == ["<s>", "▁USER:", "▁", IMG, "▁", "<0x0A>", "What", "▁digit", "▁is", "▁shown?"]
    assert tokenizer_image_token("<image>", tok) == [1, IMAGE_TOKEN_INDEX]
    assert tokenizer_image_token("<image><image>", tok) == [1, IMAGE_TOKEN_INDEX, IMAGE_TOKEN_INDEX]
    tensor = tokenizer_image_token("<image>yes", tok, return_tensors="pt")
    assert tensor.dtype == torch.long and tensor.tolist() == tokenizer_image_token("<image>yes", tok)
    with pytest.raises(ValueError):
        tokenizer_image_token("x", tok, return_tensors="np")


def test_offsets_point_into_the_prompt(tiny_tokenizer) -> None:  # noqa: F811
    prompt = "USER: <image>\nWhat digit"
    ids, offsets = tokenizer_image_token_with_offsets(prompt, tiny_tokenizer)
    assert ids == tokenizer_image_token(prompt, tiny_tokenizer)
    at = ids.index(IMAGE_TOKEN_INDEX)
    assert prompt[slice(*offsets[at])] == "<image>"
    assert prompt[slice(*offsets[-1])] == " digit"


# === Golden layouts: vicuna_v1 ===


def test_golden_vicuna_single_turn_image(tiny_tokenizer) -> None:  # noqa: F811
    sample = preprocess(image_record("s1", "img.png"), tiny_tokenizer, "vicuna_v1", num_image_tokens=576)
    assert layout(sample, tiny_tokenizer) == [
        *ign("<s>", *SYSTEM_PIECES, "▁USER:", "▁", IMG, "▁", "<0x0A>", "What", "▁digit", "▁is", "▁shown?"),
        *ign("▁ASSISTANT:"),
        *sup("▁3", "</s>"),
    ]


def test_golden_vicuna_multi_turn_image_moves_image_to_front(tiny_tokenizer) -> None:  # noqa: F811
    rec = record(
        "s2",
        ("human", "What digit is shown?\n<image>"),  # image at the end: moved to the start of the turn
        ("gpt", "3"),
        ("human", "Is it odd?"),
        ("gpt", "yes"),
    )
    sample = preprocess(rec, tiny_tokenizer, "vicuna_v1", num_image_tokens=576)
    assert layout(sample, tiny_tokenizer) == [
        *ign("<s>", *SYSTEM_PIECES, "▁USER:", "▁", IMG, "▁", "<0x0A>", "What", "▁digit", "▁is", "▁shown?"),
        *ign("▁ASSISTANT:"),
        *sup("▁3", "</s>"),
        *ign("USER:", "▁Is", "▁it", "▁odd?", "▁ASSISTANT:"),  # no prefix space after </s> (non-legacy Llama)
        *sup("▁yes", "</s>"),
    ]


def test_golden_vicuna_text_only_drops_leading_gpt_turn(tiny_tokenizer) -> None:  # noqa: F811
    rec = record(
        "s3",
        ("gpt", "Hello there."),  # upstream drops a conversation's leading assistant turn
        ("human", "What is two plus three?"),
        ("gpt", "Two plus three is five."),
        image=None,
    )
    sample = preprocess(rec, tiny_tokenizer, "vicuna_v1", num_image_tokens=576)
    assert IMAGE_TOKEN_INDEX not in sample.input_ids.tolist()
    assert layout(sample, tiny_tokenizer) == [
        *ign("<s>", *SYSTEM_PIECES, "▁USER:", "▁What", "▁is", "▁two", "▁plus", "▁three?", "▁ASSISTANT:"),
        *sup("▁Two", "▁plus", "▁three", "▁is", "▁five.", "</s>"),
    ]


def test_vicuna_supervised_tokens_decode_to_answers(tiny_tokenizer) -> None:  # noqa: F811
    rec = record(
        "s4", ("human", "<image>\nWhat digit is shown?"), ("gpt", "3 ünï"), ("human", "Is it odd?"), ("gpt", " yes\n")
    )
    sample = preprocess(rec, tiny_tokenizer, "vicuna_v1", num_image_tokens=576)
    supervised = sample.labels[sample.labels != IGNORE_INDEX].tolist()
    # Each answer's supervision starts with the space after "ASSISTANT:" (it is part of the answer's first piece,
    # or a lone "▁"). The decoder drops the very first leading space, so only the second answer shows it, next
    # to the answer's own leading space.
    assert tiny_tokenizer.decode(supervised, skip_special_tokens=False) == "3 ünï</s>  yes\n</s>"


# === Golden layouts: plain ===


def test_golden_plain_single_turn_image_discards_instruction(tiny_tokenizer) -> None:  # noqa: F811
    rec = record("p1", ("human", "<image>\nDescribe the image briefly."), ("gpt", "A handwritten digit three."))
    sample = preprocess(rec, tiny_tokenizer, "plain", num_image_tokens=576)
    # [BOS, IMAGE, caption..., "\n"]: the first two positions ignored, no EOS, instruction text gone
    assert layout(sample, tiny_tokenizer) == [
        *ign("<s>", IMG),
        *sup("▁A", "▁handwritten", "▁digit", "▁three.", "<0x0A>"),
    ]


def test_golden_plain_text_only(tiny_tokenizer) -> None:  # noqa: F811
    sample = preprocess(text_record("p2"), tiny_tokenizer, "plain", num_image_tokens=576)
    assert layout(sample, tiny_tokenizer) == [
        *ign("<s>"),
        *sup("▁Two", "▁plus", "▁three", "▁is", "▁five.", "<0x0A>"),
    ]


def test_plain_multi_turn_is_malformed(tiny_tokenizer) -> None:  # noqa: F811
    rec = record("p3", ("human", "<image>\nq"), ("gpt", "a"), ("human", "q2"), ("gpt", "b"))
    with pytest.raises(MalformedSampleError, match="p3"):
        preprocess(rec, tiny_tokenizer, "plain", num_image_tokens=576)


# === Agreement with upstream's offset arithmetic ===


def _upstream_v1_labels(prompt: str, tokenizer, later_round_shift: int) -> tuple[list[int], bool]:
    """Upstream preprocess_v1's round arithmetic, as documented (research notes §2.5); for comparison only.

    Returns the labels and whether upstream's own consistency check (cur_len == total) would pass.
    ``later_round_shift`` is the extra -1 upstream applies to rounds after the first for non-legacy tokenizers.
    """
    ids = tokenizer_image_token(prompt, tokenizer)
    labels = list(ids)
    cur = 1
    labels[0] = IGNORE_INDEX
    for i, rnd in enumerate(prompt.split("</s>")):
        if not rnd:
            break
        parts = rnd.split(" ASSISTANT: ")
        if len(parts) != 2:
            break
        round_len = len(tokenizer_image_token(rnd, tokenizer))
        instruction_len = len(tokenizer_image_token(parts[0] + " ASSISTANT: ", tokenizer)) - 2
        if i > 0:
            round_len -= later_round_shift
            instruction_len -= later_round_shift
        labels[cur : cur + instruction_len] = [IGNORE_INDEX] * instruction_len
        cur += round_len
    labels[cur:] = [IGNORE_INDEX] * (len(labels) - cur)
    return labels, cur == len(ids)


@pytest.mark.parametrize("with_image", [True, False])
@pytest.mark.parametrize("rounds", [1, 2, 3])
def test_labels_match_upstream_arithmetic_where_it_is_consistent(tiny_tokenizer, with_image, rounds) -> None:  # noqa: F811
    turns = [("human", "<image>\nWhat digit is shown?" if with_image else "What is two plus three?"), ("gpt", "3")]
    turns += [("human", "Is it odd?"), ("gpt", "yes")] * (rounds - 1)
    rec = record("u", *turns, image="img.png" if with_image else None)
    ours = preprocess(rec, tiny_tokenizer, "vicuna_v1", num_image_tokens=576)
    prompt = build_conversation(rec, get_template("vicuna_v1"), has_image=with_image, sample_id="u").get_prompt()
    consistent = []
    for shift in (0, 1):  # legacy and non-legacy constants; which one holds depends on the tokenizer
        labels, ok = _upstream_v1_labels(prompt, tiny_tokenizer, shift)
        if ok:
            consistent.append(shift)
            assert labels == ours.labels.tolist()
    assert consistent, "upstream's arithmetic would mask this whole sample"


# === Legacy LLaMA tokenizer: special tokens written inside answers ===
# The tokenizer is a real SentencePiece LLaMA-style model loaded the way upstream's Vicuna tokenizer loads
# (legacy=True: text after <s>, </s>, <unk> gets its own prefix "▁"). The expected ids and labels come from
# Upstream437, which models transformers 4.37's slow tokenizer and upstream's preprocess with SentencePiece alone.


@pytest.fixture(scope="module")
def legacy_llama(tmp_path_factory: pytest.TempPathFactory):
    directory = build_llama_sp_dir(tmp_path_factory.mktemp("llama_sp"))
    tokenizer = load_tokenizer(directory)
    assert tokenizer.legacy is True and tokenizer.is_fast  # no legacy key: loaded as transformers 4.37 did
    return tokenizer, Upstream437(directory / "tokenizer.model")


def _answer_char_span(rec: dict, template: str, answer_index: int = 0) -> tuple[str, int, int]:
    conv = build_conversation(rec, get_template(template), has_image="image" in rec, sample_id="x")
    prompt, spans = conv.get_prompt_with_spans()
    span = [s for s in spans if s.message_index % 2 == 1][answer_index]
    return prompt, span.text_start, span.end


def test_legacy_decoded_answer_gains_a_space_although_its_token_spans_are_exact(legacy_llama) -> None:
    """Why the old decode round-trip check rejected these samples: decoding adds a space after </s>."""
    tokenizer, _ = legacy_llama
    rec = record("leg-0", ("human", "<image>\nDescribe the image briefly."), ("gpt", "first part</s>second part"))
    prompt, lo, hi = _answer_char_span(rec, "plain")
    ids, offsets = tokenizer_image_token_with_offsets(prompt, tokenizer)
    answer = [j for j, (s, e) in enumerate(offsets) if e > s and lo <= s and e <= hi]
    decoded = tokenizer.decode([ids[j] for j in answer], skip_special_tokens=False)
    assert prompt[lo:hi] == "first part</s>second part\n"
    assert decoded == "first part</s> second part\n"  # what the old check compared, and rejected
    # The prefix piece after </s> has the span of the character it precedes: the spans tile the answer exactly.
    after_eos = answer[[ids[j] for j in answer].index(tokenizer.eos_token_id) + 1]
    assert tokenizer.convert_ids_to_tokens(ids[after_eos]).startswith("▁")
    assert offsets[after_eos][0] == prompt.index("second")


@pytest.mark.parametrize("special", ["</s>", "<unk>", "<s>"])
def test_golden_plain_legacy_special_token_inside_caption_matches_upstream(legacy_llama, special) -> None:
    tokenizer, upstream = legacy_llama
    caption = f"first part{special}second part"
    rec = record("leg-p", ("human", "<image>\nDescribe the image briefly."), ("gpt", caption))
    sample = preprocess(rec, tokenizer, "plain", num_image_tokens=576)
    want_ids, want_labels = upstream.plain(caption)
    assert sample.input_ids.tolist() == want_ids
    assert sample.labels.tolist() == want_labels
    assert upstream.pieces(want_ids)[:2] == ["<s>", "<IMG>"] and want_labels[:3] == [IGNORE_INDEX] * 2 + [want_ids[2]]
    assert upstream.SPECIALS[special] in want_ids[3:]  # the special token is inside the supervised caption


def _v1_record(answer: str) -> dict:
    return record("leg-v", ("human", "<image>\nWhat digit is shown?"), ("gpt", answer), ("human", "Is it odd?"),
                  ("gpt", "yes"))


def _v1_prompt(rec: dict) -> str:
    return build_conversation(rec, get_template("vicuna_v1"), has_image=True, sample_id="x").get_prompt()


@pytest.mark.parametrize("answer", ["3", "3<s>three"])
def test_golden_vicuna_legacy_matches_upstream_arithmetic(legacy_llama, answer) -> None:
    """Multi-turn, with and without <s> inside an answer: upstream's legacy arithmetic is consistent and agrees."""
    tokenizer, upstream = legacy_llama
    rec = _v1_record(answer)
    sample = preprocess(rec, tokenizer, "vicuna_v1", num_image_tokens=576)
    want_ids, want_labels, cur, total = upstream.v1(_v1_prompt(rec))
    assert cur == total == len(want_ids)  # upstream keeps these labels
    assert sample.input_ids.tolist() == want_ids
    assert sample.labels.tolist() == want_labels
    # legacy: the second turn's "USER:" right after </s> starts with a prefix "▁", as upstream trained
    second_user = want_ids.index(2) + 1
    assert upstream.pieces(want_ids)[second_user].startswith("▁")


def test_vicuna_legacy_unk_inside_answer_gets_upstreams_round_labels(legacy_llama) -> None:
    """Upstream's round arithmetic gives these labels; only its final length check, which counts the genuine
    <unk> as padding (pad = unk), would then mask the whole sample. Our collator does not treat <unk> as padding."""
    tokenizer, upstream = legacy_llama
    rec = _v1_record("3<unk>three")
    sample = preprocess(rec, tokenizer, "vicuna_v1", num_image_tokens=576)
    want_ids, want_labels, cur, total = upstream.v1(_v1_prompt(rec))
    assert cur == len(want_ids) and total == cur - 1
    assert sample.input_ids.tolist() == want_ids
    assert sample.labels.tolist() == want_labels
    assert 0 in sample.labels.tolist()  # the <unk> id is supervised


def test_vicuna_legacy_eos_inside_answer_is_supervised_where_upstream_masks_all(legacy_llama) -> None:
    """Upstream splits the prompt into rounds at </s>, so an inner </s> breaks its arithmetic and it masks the whole
    sample. Here the ids are still upstream's and every answer token (inner </s> included) is supervised."""
    tokenizer, upstream = legacy_llama
    rec = _v1_record("3</s>three")
    sample = preprocess(rec, tokenizer, "vicuna_v1", num_image_tokens=576)
    prompt = _v1_prompt(rec)
    want_ids, _, cur, total = upstream.v1(prompt)
    assert cur != total  # upstream: "tokenization mismatch", whole sample masked
    assert sample.input_ids.tolist() == want_ids
    # Independent expectation: the tokens of everything up to each "ASSISTANT:" are ignored, the rest of each
    # round (answer and its closing </s>) supervised. SentencePiece never merges across a space, and text after
    # a special token is encoded on its own, so these prefixes' ids are prefixes of the whole prompt's ids.
    first_header_end = prompt.index("ASSISTANT:") + len("ASSISTANT:")
    second_user = prompt.index("USER:", first_header_end)
    second_header_end = prompt.index("ASSISTANT:", second_user) + len("ASSISTANT:")
    n1 = len(upstream.tokenizer_image_token(prompt[:first_header_end]))
    n2 = len(upstream.tokenizer_image_token(prompt[:second_user]))
    n3 = len(upstream.tokenizer_image_token(prompt[:second_header_end]))
    assert want_ids[:n1] == upstream.tokenizer_image_token(prompt[:first_header_end])
    expected = [IGNORE_INDEX] * n1 + want_ids[n1:n2] + [IGNORE_INDEX] * (n3 - n2) + want_ids[n3:]
    assert sample.labels.tolist() == expected
    assert [upstream.sp.id_to_piece(i) for i in want_ids[n1:n2]].count("</s>") == 2


# === Conversation handling and errors ===


def test_move_image_to_front_strips_and_reinserts() -> None:
    from llava.train.preprocess import Turn

    moved = move_image_to_front([Turn("human", "  Look at this <image>  "), Turn("human", "<image>")])
    assert moved == [Turn("human", "<image>\nLook at this"), Turn("human", "<image>")]


@pytest.mark.parametrize(
    ("turns", "image", "match"),
    [
        ([("human", "<image>\nq"), ("human", "q2")], "x.png", "alternate"),
        ([("human", "<image>\nq"), ("robot", "a")], "x.png", "robot"),
        ([("human", "q"), ("gpt", "a")], "x.png", "exactly once"),
        ([("human", "<image>\nq <image>"), ("gpt", "a")], "x.png", "exactly once"),
        ([("human", "<image>\nq"), ("gpt", "a")], None, "text-only"),
        ([("human", "q"), ("gpt", "<image>")], "x.png", "gpt"),
        ([("gpt", "a")], None, "no gpt turn"),
    ],
)
def test_malformed_conversations_raise_with_sample_id(tiny_tokenizer, turns, image, match) -> None:  # noqa: F811
    rec = record("bad-1", *turns, image=image)
    with pytest.raises(MalformedSampleError, match=match) as info:
        preprocess(rec, tiny_tokenizer, "vicuna_v1", num_image_tokens=576)
    assert "bad-1" in str(info.value)
    assert isinstance(info.value, SampleError) and info.value.reason == "malformed"


def _boundary_crossing_tokenizer(base, out_dir: Path):
    """The fixture tokenizer plus a top-priority merge ":" + "▁", so a piece spans "ASSISTANT:" and the answer."""
    src = Path(base.name_or_path)
    shutil.copytree(src, out_dir)
    data = json.loads((out_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    vocab[":▁"] = max(vocab.values()) + 1
    data["model"]["merges"].insert(0, [":", "▁"])
    (out_dir / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    return AutoTokenizer.from_pretrained(str(out_dir))


def test_token_crossing_answer_boundary_is_a_mismatch_not_a_silent_mask(tiny_tokenizer, tmp_path: Path) -> None:  # noqa: F811
    bad_tok = _boundary_crossing_tokenizer(tiny_tokenizer, tmp_path / "crossing")
    assert ":▁" in bad_tok.convert_ids_to_tokens(bad_tok("ASSISTANT: 3")["input_ids"])
    with pytest.raises(TokenizationMismatchError, match="mismatch") as info:
        preprocess(image_record("mm-7", "img.png"), bad_tok, "vicuna_v1", num_image_tokens=576)
    assert "mm-7" in str(info.value) and info.value.reason == "tokenization_mismatch"


class _DroppingTokenizer:
    """A real tokenizer whose encodings lose every occurrence of one token, as a tokenizer that drops text would."""

    def __init__(self, base, dropped_piece: str) -> None:
        self._base = base
        self._dropped = base.convert_tokens_to_ids(dropped_piece)

    def __getattr__(self, name: str):
        return getattr(self._base, name)

    def __call__(self, text: str, **kwargs) -> dict:
        enc = self._base(text, **kwargs)
        keep = [j for j, token in enumerate(enc["input_ids"]) if token != self._dropped]
        return {key: [enc[key][j] for j in keep] for key in ("input_ids", "offset_mapping") if key in enc}


def test_answer_text_no_token_covers_is_a_mismatch(tiny_tokenizer) -> None:  # noqa: F811
    dropping = _DroppingTokenizer(tiny_tokenizer, "▁three")
    with pytest.raises(TokenizationMismatchError, match="no supervised token covers ' three'") as info:
        preprocess(text_record("gap-1"), dropping, "vicuna_v1", num_image_tokens=576)
    assert "gap-1" in str(info.value)


# === Truncation (image-aware) ===
# The single-turn image sample has 36 ids, the image at index 26; with 4 vision tokens it expands to 39:
# 26 text tokens, the image at expanded positions 26..29, then 9 text tokens (the last two are "▁3", "</s>").


def _single_turn(tokenizer, max_len: int | None):
    return preprocess(
        image_record("t1", "img.png"), tokenizer, "vicuna_v1", num_image_tokens=4, model_max_length=max_len
    )


def test_truncation_counts_expanded_image_tokens(tiny_tokenizer) -> None:  # noqa: F811
    full = _single_turn(tiny_tokenizer, None)
    assert len(full.input_ids) == 36 and full.input_ids.tolist().index(IMAGE_TOKEN_INDEX) == 26
    assert expanded_length(full.input_ids, 4) == 39
    assert _single_turn(tiny_tokenizer, 39).num_truncated == 0
    cut = _single_turn(tiny_tokenizer, 38)  # "</s>" no longer fits
    assert cut.num_truncated == 1 and expanded_length(cut.input_ids, 4) == 38
    assert layout(cut, tiny_tokenizer)[-1] == ("▁3", True)


def test_truncation_leaving_no_answer_is_overlong(tiny_tokenizer) -> None:  # noqa: F811
    with pytest.raises(OverlongSampleError, match="no supervised token") as info:
        _single_turn(tiny_tokenizer, 37)
    assert "t1" in str(info.value) and info.value.reason == "overlong"


@pytest.mark.parametrize("max_len", [29, 27, 10])
def test_truncation_never_cuts_the_image_span(tiny_tokenizer, max_len) -> None:  # noqa: F811
    with pytest.raises(OverlongSampleError, match="vision tokens"):
        _single_turn(tiny_tokenizer, max_len)


def test_multi_turn_truncation_keeps_image_and_earlier_answers(tiny_tokenizer) -> None:  # noqa: F811
    rec = record(
        "t2", ("human", "<image>\nWhat digit is shown?"), ("gpt", "3"), ("human", "Is it odd?"), ("gpt", "yes")
    )
    full = preprocess(rec, tiny_tokenizer, "vicuna_v1", num_image_tokens=4)
    cut = preprocess(
        rec, tiny_tokenizer, "vicuna_v1", num_image_tokens=4, model_max_length=expanded_length(full.input_ids, 4) - 3
    )
    assert cut.num_truncated == 3
    assert cut.input_ids.tolist() == full.input_ids.tolist()[:-3]
    assert IMAGE_TOKEN_INDEX in cut.input_ids.tolist()
    assert [p for p, s in layout(cut, tiny_tokenizer) if s] == ["▁3", "</s>"]  # the second answer was cut
