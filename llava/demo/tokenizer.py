"""Train a small Llama-style tokenizer locally, for the CPU demo and the tests (no download needed).

The result behaves like the Vicuna-v1.5 / Llama-2 tokenizer in everything the LLaVA templates depend on:

* BPE with SentencePiece's whitespace handling: spaces become ``"▁"`` and attach to the following word, and one
  ``"▁"`` is prepended to the start of a text but not after a special token (Llama's non-legacy behaviour, so
  ``"</s>USER"`` tokenizes ``USER`` without a prefix space);
* byte fallback: the 256 ``<0xNN>`` byte tokens are in the vocabulary, so any text round-trips and a newline
  becomes ``<0x0A>`` as in Llama;
* ids ``<unk>`` = 0, ``<s>`` = 1, ``</s>`` = 2; BOS is added automatically, EOS is not; ``"</s>"`` written in
  the text is the EOS token; the pad token is ``<unk>`` (upstream LLaVA sets ``pad_token = unk_token``).

It is saved as an ordinary tokenizer directory and loaded back with ``AutoTokenizer.from_pretrained``:
constructing ``LlamaTokenizer(vocab_file=...)`` directly silently yields empty ids in transformers 5.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import AutoTokenizer, LlamaTokenizer, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

__all__ = ["SPECIAL_TOKENS", "train_tokenizer"]

SPECIAL_TOKENS: tuple[str, str, str] = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2, as in Llama
_NUM_BYTES = 256
_MIN_VOCAB = len(SPECIAL_TOKENS) + _NUM_BYTES + 1
_SPECIAL_SPLIT = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))


def _training_segments(texts: Iterable[str]) -> Iterator[str]:
    """Yield the pieces of each text exactly as the encoder will see them.

    The encoder splits text on special tokens and prepends "▁" only to the first piece; training on the same
    split means words right after ``</s>`` (``USER:``) are learned without the prefix space. Newlines are
    replaced by spaces so that no newline piece is learned and ``"\\n"`` stays ``<0x0A>``, as in Llama.
    """
    for text in texts:
        for k, piece in enumerate(_SPECIAL_SPLIT.split(text)):
            piece = piece.replace("\n", " ")
            if piece:
                yield (" " + piece) if k == 0 else piece


def train_tokenizer(
    texts: Iterable[str],
    out_dir: str | os.PathLike,
    vocab_size: int = 1024,
    *,
    model_max_length: int = 2048,
    limit_alphabet: int = 100,
) -> PreTrainedTokenizerBase:
    """Train a byte-fallback BPE tokenizer on ``texts``, save it to ``out_dir`` and load it back.

    ``vocab_size`` is an upper bound on the whole vocabulary (3 specials + 256 byte tokens + learned pieces);
    training stops earlier when the corpus has nothing left to merge. Characters outside the ``limit_alphabet``
    most frequent ones are left to byte fallback. Deterministic for a given corpus.
    """
    if vocab_size < _MIN_VOCAB:
        raise ValueError(
            f"vocab_size must be at least {_MIN_VOCAB} (3 special + 256 byte tokens + 1), got {vocab_size}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # Training-time pipeline: split on "▁" so no merge ever crosses a word boundary, and never prepend, because
    # _training_segments already put the space where the encoder would.
    trainer_tok = Tokenizer(BPE(unk_token=SPECIAL_TOKENS[0], byte_fallback=True, fuse_unk=True))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    trainer = BpeTrainer(
        vocab_size=vocab_size - _NUM_BYTES,
        special_tokens=list(SPECIAL_TOKENS),
        limit_alphabet=limit_alphabet,
        show_progress=False,
    )
    trainer_tok.train_from_iterator(_training_segments(texts), trainer=trainer)
    model = json.loads(trainer_tok.to_str())["model"]

    # Llama's id layout: specials, then <0x00>..<0xFF>, then the learned pieces in training order.
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for b in range(_NUM_BYTES):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]

    # LlamaTokenizer builds the encoding pipeline itself (Metaspace prepend "first", no split; byte-fallback BPE;
    # the Llama decoder) from vocab + merges, so the saved tokenizer reloads identically through AutoTokenizer.
    tokenizer = LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=SPECIAL_TOKENS[0],
        bos_token=SPECIAL_TOKENS[1],
        eos_token=SPECIAL_TOKENS[2],
        pad_token=SPECIAL_TOKENS[0],
        add_bos_token=True,
        add_eos_token=False,
        legacy=False,
        model_max_length=model_max_length,
        padding_side="right",
    )
    tokenizer.save_pretrained(str(out_dir))
    loaded = AutoTokenizer.from_pretrained(str(out_dir))
    _check_llama_like(loaded)
    logger.info("trained tokenizer with %d tokens (%d merges) in %s", len(loaded), len(merges), out_dir)
    return loaded


def _check_llama_like(tokenizer: PreTrainedTokenizerBase) -> None:
    """Fail loudly if a transformers/tokenizers upgrade changed how the directory loads back."""
    expected = {"unk": 0, "bos": 1, "eos": 2, "pad": 0}
    actual = {name: getattr(tokenizer, f"{name}_token_id") for name in expected}
    if actual != expected:
        raise RuntimeError(f"reloaded tokenizer has special ids {actual}, expected {expected}")
    ids = tokenizer("a</s>b")["input_ids"]
    if not ids or ids[0] != 1 or 2 not in ids or ids[-1] == 2:
        raise RuntimeError(f"reloaded tokenizer does not add BOS / parse '</s>' as EOS: {ids}")
