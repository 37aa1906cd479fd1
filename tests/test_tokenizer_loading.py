"""``load_tokenizer``'s ``legacy`` decision, checked on a real SentencePiece LLaMA-style tokenizer built locally.

The reference ids (:class:`Upstream437`) model transformers 4.37's slow ``LlamaTokenizer`` with its default
``legacy=True``: text between special tokens is SentencePiece-encoded piece by piece, each with the prefix ``"▁"``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from data_fixtures import CORPUS
from llama_sp_fixtures import Upstream437, build_llama_sp_dir
from transformers import AutoTokenizer

from llava.demo.tokenizer import train_tokenizer
from llava.tokenizer_loading import _legacy_from_pipeline, load_tokenizer, resolve_legacy

EOS_CASES = ["a</s>b", "USER: What digit is shown? ASSISTANT: 3</s>USER: Is it odd? ASSISTANT: yes</s>"]
TEXTS = [*EOS_CASES, "first part<unk>second part\n", "<s>x", "Zebra ünï 😀\ttabs\n"]


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Vicuna-like: tokenizer.model and a tokenizer_config.json without a legacy key."""
    return build_llama_sp_dir(tmp_path_factory.mktemp("sp"))


@pytest.fixture(scope="module")
def upstream(sp_dir: Path) -> Upstream437:
    return Upstream437(sp_dir / "tokenizer.model")


def _with_config(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    path = dst / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is ...:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config), encoding="utf-8")
    return dst


def _pieces(tokenizer, text: str) -> list[str]:
    return tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])


def test_missing_legacy_key_loads_as_legacy_with_upstream_ids(sp_dir: Path, upstream: Upstream437) -> None:
    assert resolve_legacy(sp_dir).legacy is True
    tokenizer = load_tokenizer(sp_dir)
    assert tokenizer.legacy is True and tokenizer.is_fast
    for text in TEXTS:
        assert tokenizer(text)["input_ids"] == upstream.encode(text), text
    # The token after </s> carries the prefix "▁", as under transformers 4.37 ...
    assert _pieces(tokenizer, "a</s>b")[-2:] == ["</s>", "▁b"]
    # ... while transformers 5 on its own would load the same files without it.
    plain = AutoTokenizer.from_pretrained(str(sp_dir))
    assert plain.legacy is False and _pieces(plain, "a</s>b")[-2:] == ["</s>", "b"]
    for text in EOS_CASES:
        assert plain(text)["input_ids"] != upstream.encode(text)



def test_known_difference_text_starting_with_a_space(sp_dir: Path, upstream: Upstream437) -> None:
    """Not a legacy matter and not fixed by the loader: SentencePiece prefixes a segment that already starts with a
    space (" second" -> "▁" "▁second"), transformers 5's Metaspace does not ("▁second"). If this starts failing,
    transformers changed and the loader's module docstring should drop its note."""
    tokenizer = load_tokenizer(sp_dir)
    for text in [" second part", "first part</s> second part"]:
        ours, ref = tokenizer(text)["input_ids"], upstream.encode(text)
        assert len(ref) == len(ours) + 1 and upstream.pieces(ref).count("▁") == upstream.pieces(ours).count("▁") + 1


@pytest.mark.parametrize("value", [False, True])
def test_legacy_in_config_is_respected(sp_dir: Path, tmp_path: Path, value: bool) -> None:
    directory = _with_config(sp_dir, tmp_path / "tok", legacy=value)
    decision = resolve_legacy(directory)
    assert decision.legacy is None and "sets legacy" in decision.reason  # transformers reads the key itself
    tokenizer = load_tokenizer(directory)
    assert tokenizer.legacy is value
    assert _pieces(tokenizer, "a</s>b")[-1] == ("▁b" if value else "b")


def test_null_legacy_counts_as_missing(sp_dir: Path, tmp_path: Path) -> None:
    # transformers 4.37 turned legacy=None into True; transformers 5 would treat it as False.
    directory = _with_config(sp_dir, tmp_path / "tok", legacy=None)
    assert load_tokenizer(directory).legacy is True


def test_caller_choice_wins_and_must_be_a_bool(sp_dir: Path) -> None:
    assert load_tokenizer(sp_dir, legacy=False).legacy is False
    with pytest.raises(TypeError, match="legacy must be True or False"):
        load_tokenizer(sp_dir, legacy="yes")


def test_saved_tokenizer_remembers_the_flag(sp_dir: Path, tmp_path: Path, upstream: Upstream437) -> None:
    """transformers 5 drops `legacy` when saving; the loader records it so plain AutoTokenizer reloads alike."""
    load_tokenizer(sp_dir).save_pretrained(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "tokenizer_config.json").read_text(encoding="utf-8"))["legacy"] is True
    again = AutoTokenizer.from_pretrained(str(tmp_path / "ckpt"))
    assert again.legacy is True and again(EOS_CASES[1])["input_ids"] == upstream.encode(EOS_CASES[1])


def test_checkpoint_saved_without_the_key_is_read_from_tokenizer_json(sp_dir: Path, tmp_path: Path) -> None:
    """A directory written by transformers 5's save_pretrained directly: tokenizer.json only, no legacy key."""
    AutoTokenizer.from_pretrained(str(sp_dir), legacy=True).save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert "legacy" not in config and not (tmp_path / "ckpt" / "tokenizer.model").exists()
    decision = resolve_legacy(tmp_path / "ckpt")
    assert decision.legacy is True and "tokenizer.json" in decision.reason
    assert load_tokenizer(tmp_path / "ckpt").legacy is True


def test_demo_tokenizer_is_left_alone(tmp_path: Path) -> None:
    """The demo BPE tokenizer (tokenizer.json with prepend_scheme "first", no legacy key) stays non-legacy."""
    demo = train_tokenizer(CORPUS, tmp_path / "demo", vocab_size=1024)
    assert "legacy" not in json.loads((tmp_path / "demo" / "tokenizer_config.json").read_text(encoding="utf-8"))
    loaded = load_tokenizer(tmp_path / "demo")
    assert loaded.legacy is False
    for text in TEXTS:
        assert loaded(text)["input_ids"] == demo(text)["input_ids"], text
    assert _pieces(loaded, "yes</s>USER: hi")[2:4] == ["</s>", "USER:"]


def test_non_llama_tokenizer_gets_no_legacy_flag(tmp_path: Path) -> None:
    train_tokenizer(CORPUS, tmp_path / "demo", vocab_size=1024)
    directory = _with_config(tmp_path / "demo", tmp_path / "generic", tokenizer_class="PreTrainedTokenizerFast")
    decision = resolve_legacy(directory)
    assert decision.legacy is None and "not a LLaMA tokenizer" in decision.reason
    assert load_tokenizer(directory)("a</s>b")["input_ids"] == AutoTokenizer.from_pretrained(str(directory))(
        "a</s>b"
    )["input_ids"]


def test_missing_or_broken_config(tmp_path: Path) -> None:
    assert resolve_legacy(tmp_path).legacy is None  # no tokenizer_config.json: nothing to decide from
    (tmp_path / "tokenizer_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        resolve_legacy(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")


@pytest.mark.parametrize(
    ("tokenizer_json", "expected"),
    [
        # transformers 4.x conversion of a legacy Llama tokenizer: a Prepend("▁") normalizer, no pre-tokenizer
        ({"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                             {"type": "Replace"}]}, "pre_tokenizer": None}, True),
        ({"normalizer": None, "pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "always"}}, True),
        ({"normalizer": None, "pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "first"}}, False),
        ({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Metaspace", "prepend_scheme": "first"}]}},
         False),
        ({"pre_tokenizer": {"type": "Metaspace", "add_prefix_space": True}}, True),  # written before tokenizers 0.14
        ({"pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "never"}}, None),
        ({"pre_tokenizer": {"type": "ByteLevel"}}, None),
    ],
)
def test_legacy_read_from_tokenizer_json_pipeline(tokenizer_json: dict, expected: bool | None) -> None:
    assert _legacy_from_pipeline(tokenizer_json) is expected
