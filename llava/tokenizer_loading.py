"""Load a tokenizer so that it splits text the way the released LLaVA-1.5 checkpoints were trained.

Use :func:`load_tokenizer` instead of ``AutoTokenizer.from_pretrained`` wherever a tokenizer is loaded for
training, evaluation or serving.

Why: LLaMA's SentencePiece tokenizer has a ``legacy`` flag that decides how the text right after a special token
(``<s>``, ``</s>``, ``<unk>``) is tokenized. With ``legacy=True`` that text starts a new SentencePiece segment
and gets its own prefix ``"▁"`` (``"a</s>b"`` -> ``"▁a" "</s>" "▁b"``); with ``legacy=False`` it does not
(``"▁a" "</s>" "b"``). In a ``vicuna_v1`` prompt every turn after the first starts right after ``</s>``, so the
flag changes the token ids of every multi-turn sample.

* transformers 4.37.2 (upstream LLaVA's pin) loads a ``LlamaTokenizer`` whose ``tokenizer_config.json`` has no
  ``legacy`` key as ``legacy=True`` (and warns about it), and upstream trains and evaluates with that slow
  tokenizer (``use_fast=False``). A Vicuna / LLaVA-1.5 tokenizer without the key was therefore used as legacy.
* transformers 5 defaults to ``legacy=False``. Its ``LlamaTokenizer`` also rebuilds the pre-tokenizer from that
  flag and ignores the pipeline stored in ``tokenizer.json``, and its ``save_pretrained`` does not write the flag
  to ``tokenizer_config.json``, so a saved tokenizer does not remember how it was loaded.

Decision (:func:`resolve_legacy`; the first rule that applies wins): match upstream unless the files say
otherwise.

1. ``legacy`` passed by the caller: used as given.
2. ``tokenizer_config.json`` sets ``legacy`` (not null): that value (transformers reads it; nothing is passed).
   A ``null`` value counts as missing, because 4.37 read it as ``True`` and transformers 5 reads it as ``False``.
3. ``tokenizer_class`` is not ``LlamaTokenizer``/``LlamaTokenizerFast`` (or there is no config): nothing is
   passed; other tokenizers are left to transformers.
4. ``tokenizer.json`` records a prefix rule: a ``Metaspace`` pre-tokenizer with ``prepend_scheme="always"``, or
   a ``Prepend("▁")`` normalizer (the 4.x conversion of a legacy tokenizer), means ``True``; ``"first"`` means
   ``False``. This is how the tokenizer that wrote the file behaved, so a checkpoint saved by transformers 5
   (which drops the key) reloads as it was trained, and the demo tokenizer of :mod:`llava.demo.tokenizer`
   (``"first"``) keeps its non-legacy behaviour.
5. a SentencePiece ``tokenizer.model`` (and no ``tokenizer.json`` that decided): ``True``, transformers 4.37's
   default for the slow tokenizer upstream loads (``use_fast=False``).
6. otherwise nothing is passed.

:func:`load_tokenizer` also records the flag of a loaded LLaMA tokenizer in ``init_kwargs``, so that
``save_pretrained`` writes ``"legacy"`` to ``tokenizer_config.json`` and a plain ``AutoTokenizer`` reloads the
checkpoint the same way.

Known remaining difference from transformers 4.37 (not a ``legacy`` matter): when a text segment starts with a
space (a caption after ``<image>`` that begins with a space, or ``"</s> x"``), SentencePiece adds its prefix
``"▁"`` anyway (``"▁" "▁x"``), while transformers 5's ``Metaspace`` does not prefix text that already starts
with a space (``"▁x"``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from transformers import AutoTokenizer, LlamaTokenizer, PreTrainedTokenizerBase
from transformers.utils import cached_file

logger = logging.getLogger(__name__)

__all__ = ["LLAMA_TOKENIZER_CLASSES", "LegacyDecision", "load_tokenizer", "resolve_legacy"]

LLAMA_TOKENIZER_CLASSES: frozenset[str] = frozenset({"LlamaTokenizer", "LlamaTokenizerFast"})

# from_pretrained arguments that say where the files are; forwarded when reading the tokenizer's files.
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")


@dataclass(frozen=True)
class LegacyDecision:
    """The ``legacy`` value to pass to ``from_pretrained`` (``None``: pass nothing) and why."""

    legacy: bool | None
    reason: str


def _find_file(name_or_path: str, filename: str, hub_kwargs: dict[str, Any]) -> str | None:
    """Local path of ``filename`` in a tokenizer directory or hub repo, or None if it has no such file."""
    return cached_file(
        name_or_path,
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **hub_kwargs,
    )


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read tokenizer file {path}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"tokenizer file {path} must hold a JSON object, got {type(data).__name__}")
    return data


def _components(component: Any, list_key: str) -> list[dict[str, Any]]:
    """A tokenizer.json normalizer or pre-tokenizer, with ``Sequence`` entries flattened."""
    if not isinstance(component, dict):
        return []
    if component.get("type") == "Sequence":
        return [part for child in component.get(list_key) or [] for part in _components(child, list_key)]
    return [component]


def _legacy_from_pipeline(tokenizer_json: dict[str, Any]) -> bool | None:
    """Whether the pipeline stored in tokenizer.json prefixes text after special tokens; None if it does not say."""
    for normalizer in _components(tokenizer_json.get("normalizer"), "normalizers"):
        # transformers 4.x stored legacy Llama tokenizers as Prepend("▁") + Replace(" ", "▁"); normalizers run on
        # each piece of text between special tokens, so every such piece gets the prefix.
        if normalizer.get("type") == "Prepend" and normalizer.get("prepend") == "▁":
            return True
    for pre_tokenizer in _components(tokenizer_json.get("pre_tokenizer"), "pretokenizers"):
        if pre_tokenizer.get("type") != "Metaspace":
            continue
        scheme = pre_tokenizer.get("prepend_scheme")
        if scheme is None:  # files written before tokenizers 0.14 only have add_prefix_space
            scheme = "always" if pre_tokenizer.get("add_prefix_space", True) else "never"
        if scheme == "always":
            return True
        if scheme == "first":
            return False
    return None


def resolve_legacy(name_or_path: str | os.PathLike, **kwargs: Any) -> LegacyDecision:
    """Decide the ``legacy`` flag for loading ``name_or_path`` (rules in the module docstring).

    ``kwargs`` are ``from_pretrained``'s; ``legacy`` and the file-location ones (``revision``, ``subfolder``,
    ``cache_dir``, ...) are used. Hub repos are read through the local cache (or downloaded unless offline); a
    file that cannot be fetched counts as absent, as it does for ``AutoTokenizer``. Raises ``FileNotFoundError``
    for an absolute or ``./``-style path that is not a directory, ``ValueError`` for an unreadable JSON file.
    """
    if "legacy" in kwargs:
        if not isinstance(kwargs["legacy"], bool):
            raise TypeError(f"legacy must be True or False, got {kwargs['legacy']!r}")
        return LegacyDecision(kwargs["legacy"], "passed by the caller")
    name = str(name_or_path)
    if (os.path.isabs(name) or name.startswith((".", "~"))) and not os.path.isdir(os.path.expanduser(name)):
        # transformers would take it for a malformed hub repo id and say so, which hides the real problem.
        raise FileNotFoundError(f"tokenizer directory {name} does not exist")
    hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}

    config_path = _find_file(name, "tokenizer_config.json", hub_kwargs)
    if config_path is None:
        return LegacyDecision(None, "no tokenizer_config.json; transformers' default applies")
    config = _read_json(config_path)
    # A null value counts as missing: 4.37 turned None into True, transformers 5 treats it as False.
    if config.get("legacy") is not None:
        return LegacyDecision(None, f"tokenizer_config.json sets legacy={config['legacy']!r}")
    tokenizer_class = config.get("tokenizer_class")
    if tokenizer_class not in LLAMA_TOKENIZER_CLASSES:
        return LegacyDecision(None, f"tokenizer_class {tokenizer_class!r} is not a LLaMA tokenizer")

    json_path = _find_file(name, "tokenizer.json", hub_kwargs)
    if json_path is not None:
        from_pipeline = _legacy_from_pipeline(_read_json(json_path))
        if from_pipeline is not None:
            return LegacyDecision(from_pipeline, "tokenizer.json records how text after special tokens is prefixed")
    if _find_file(name, "tokenizer.model", hub_kwargs) is not None:
        # Upstream's setup: the SentencePiece file alone, loaded by transformers 4.37 with its default legacy=True.
        return LegacyDecision(True, "SentencePiece tokenizer.model without a legacy key: transformers 4.37's default")
    return LegacyDecision(None, "the tokenizer files do not say; transformers' default applies")


def load_tokenizer(name_or_path: str | os.PathLike, **kwargs: Any) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(name_or_path, **kwargs)`` with LLaMA's ``legacy`` flag made explicit.

    The flag is chosen by :func:`resolve_legacy` unless ``kwargs`` has ``legacy``. Raises ``RuntimeError`` if the
    loaded tokenizer did not take the chosen flag (a transformers change would otherwise go unnoticed).
    """
    decision = resolve_legacy(name_or_path, **kwargs)
    if decision.legacy is not None:
        kwargs["legacy"] = decision.legacy
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), **kwargs)
    if isinstance(tokenizer, LlamaTokenizer):
        if decision.legacy is not None and bool(tokenizer.legacy) != decision.legacy:
            raise RuntimeError(
                f"{type(tokenizer).__name__} from {name_or_path} has legacy={tokenizer.legacy!r} although "
                f"legacy={decision.legacy!r} was passed ({decision.reason})"
            )
        # transformers 5's save_pretrained leaves the flag out; recording it makes saved checkpoints reload alike.
        tokenizer.init_kwargs["legacy"] = bool(tokenizer.legacy)
        logger.info(
            "loaded %s from %s with legacy=%s (%s)",
            type(tokenizer).__name__,
            name_or_path,
            tokenizer.legacy,
            decision.reason,
        )
    return tokenizer
