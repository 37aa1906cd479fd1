"""A small LLaMA-style SentencePiece tokenizer built locally, and an independent model of upstream's tokenization.

:func:`build_llama_sp_dir` trains a real SentencePiece BPE model with LLaMA's settings (``<unk>`` = 0, ``<s>`` = 1,
``</s>`` = 2, byte fallback, split digits, identity normalization, dummy prefix, whitespace kept) and writes the
directory a LLaMA/Vicuna checkpoint ships: ``tokenizer.model`` plus a Vicuna-like ``tokenizer_config.json``
(``LlamaTokenizer``, BOS added, EOS not, and by default no ``legacy`` key: the case :mod:`llava.tokenizer_loading`
loads as legacy).

:class:`Upstream437` reproduces what upstream LLaVA computes under transformers 4.37.2 with SentencePiece alone,
not with transformers or this project's tokenization code: its slow ``LlamaTokenizer`` with the default ``legacy=True`` splits the text at the special token
strings and SentencePiece-encodes every other piece on its own (each gets the dummy prefix ``"▁"``), and
upstream's ``tokenizer_image_token`` / ``preprocess_plain`` / ``preprocess_v1`` are re-derived from their
description in the research notes on upstream (sections 2.4 and 2.5).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import sentencepiece as spm

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import get_template

_MISSING = object()

SP_CORPUS: list[str] = [
    get_template("vicuna_v1").system,
    "USER: What digit is shown? ASSISTANT: 3",
    "USER: Is it odd? ASSISTANT: yes",
    "USER: Describe the image briefly. ASSISTANT: A handwritten digit three.",
    "first part second part",
] * 30


def _added_token(content: str) -> dict[str, Any]:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False}


def build_llama_sp_dir(out_dir: Path, *, legacy: Any = _MISSING, vocab_size: int = 1000) -> Path:
    """Train the SentencePiece model into ``out_dir`` and write the config; ``legacy`` is written only if given."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SP_CORPUS),
        model_prefix=str(out_dir / "tokenizer"),
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # the corpus is small: stop when nothing is left to merge
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,  # deterministic
        minloglevel=2,
    )
    config: dict[str, Any] = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": _added_token("<s>"),
        "eos_token": _added_token("</s>"),
        "unk_token": _added_token("<unk>"),
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
    }
    if legacy is not _MISSING:
        config["legacy"] = legacy
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out_dir


class Upstream437:
    """Upstream LLaVA's ids and labels under transformers 4.37.2 (slow LlamaTokenizer, legacy=True, pad = unk)."""

    SPECIALS = {"<unk>": 0, "<s>": 1, "</s>": 2}
    BOS, PAD = 1, 0

    def __init__(self, model_file: Path) -> None:
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self._split = re.compile("(" + "|".join(re.escape(s) for s in self.SPECIALS) + ")")

    def encode(self, text: str) -> list[int]:
        """``tokenizer(text).input_ids``: BOS, then each special token string as its id, other text via SentencePiece."""
        ids = [self.BOS]
        for piece in self._split.split(text):
            if piece in self.SPECIALS:
                ids.append(self.SPECIALS[piece])
            elif piece:
                ids.extend(self.sp.encode(piece))
        return ids

    def pieces(self, ids: list[int]) -> list[str]:
        return ["<IMG>" if i == IMAGE_TOKEN_INDEX else self.sp.id_to_piece(i) for i in ids]

    def tokenizer_image_token(self, prompt: str) -> list[int]:
        """Each ``<image>``-separated chunk encoded alone; the first BOS kept, the others dropped, -200 between."""
        out: list[int] = []
        for k, chunk in enumerate(prompt.split("<image>")):
            ids = self.encode(chunk)
            if k > 0:
                out.append(IMAGE_TOKEN_INDEX)
                ids = ids[1:]
            out.extend(ids)
        return out

    def plain(self, caption: str) -> tuple[list[int], list[int]]:
        """``preprocess_plain``: ``"<image>" + caption + "\\n"``; the length of ``"<image>"``'s ids is masked."""
        ids = self.tokenizer_image_token("<image>" + caption + "\n")
        masked = len(self.tokenizer_image_token("<image>"))
        return ids, [IGNORE_INDEX] * masked + ids[masked:]

    def v1(self, prompt: str) -> tuple[list[int], list[int], int, int]:
        """``preprocess_v1``'s round arithmetic for a legacy tokenizer (no extra -1 for later rounds).

        Returns ``(input_ids, labels, cur_len, total_len)``: upstream keeps the labels only if ``cur_len`` equals
        ``total_len``, the count of ids that are not the pad id (``<unk>`` = 0); otherwise it masks everything.
        """
        ids = self.tokenizer_image_token(prompt)
        labels = list(ids)
        labels[0] = IGNORE_INDEX
        cur = 1
        sep = " ASSISTANT: "
        for rnd in prompt.split("</s>"):
            if not rnd:
                break
            parts = rnd.split(sep)
            if len(parts) != 2:
                break
            round_len = len(self.tokenizer_image_token(rnd))
            instruction_len = len(self.tokenizer_image_token(parts[0] + sep)) - 2
            labels[cur : cur + instruction_len] = [IGNORE_INDEX] * instruction_len
            cur += round_len
        labels[cur:] = [IGNORE_INDEX] * (len(labels) - cur)
        total = sum(1 for i in ids if i != self.PAD)
        return ids, labels, cur, total
