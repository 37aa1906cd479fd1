"""LLaVA's supervised dataset: a JSON list of records, images read lazily from ``image_folder``.

Differences from upstream that change what happens (not just how):

* Bad samples are typed errors (:class:`~llava.mm_utils.ImageLoadError`,
  :class:`~llava.train.preprocess.TokenizationMismatchError`, :class:`~llava.train.preprocess.OverlongSampleError`,
  :class:`~llava.train.preprocess.MalformedSampleError`) that name the sample id and the data file.
  ``on_bad_sample="raise"`` lets them propagate; ``"skip"`` logs a warning, remembers the index and its reason,
  and returns the next good sample instead (so the batch keeps its size), and :meth:`report_skips` prints the
  tally at the end of the run. Upstream crashed on a missing image and silently zero-masked mismatches.
* Truncation is image-aware and happens per sample (see :mod:`llava.train.preprocess`).

Skip counting across DataLoader workers and ranks: every sample carries ``bad_samples``, the ``(index, reason)``
pairs its loading process skipped on the way to it (first meetings only), and the collator passes them on in the
batch. The trainer, which sees every batch, keeps the union by index, and gathers it across ranks for the log
and the end-of-run summary. The dataset's own tally (:meth:`skipped_counts`) only knows what its process loaded:
exact with ``num_workers=0`` on one rank, partial otherwise.

Checked before training starts, whatever ``on_bad_sample`` says: the file holds at least one record, and when
records have images, the image folder exists. With ``on_bad_sample="skip"`` at least one of the first 64 images
the records name must also exist: a wrong ``IMAGE_FOLDER`` would otherwise turn into thousands of skips and
text-only training.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from llava.conversation import ConversationTemplate, get_template
from llava.mm_utils import (
    IMAGE_ASPECT_RATIOS,
    SampleError,
    background_color,
    image_processor_output_size,
    load_image,
    process_images,
)
from llava.train.preprocess import preprocess, sample_id_of

logger = logging.getLogger(__name__)

__all__ = ["DatasetFormatError", "ImageFolderError", "LazySupervisedDataset", "load_records", "summarize_skips"]

IMAGE_LENGTH_BONUS = 128  # upstream's fixed stand-in for an image in `lengths` (not the real 576 tokens)
_MAX_REPORTED_IDS = 5
_FOLDER_PROBE = 64  # image records whose files are looked for before training starts


class DatasetFormatError(ValueError):
    """The data file as a whole is unusable: not JSON, not a list, empty, or a record of the wrong shape."""


class ImageFolderError(ValueError):
    """The image folder does not exist, or none of the images the data names can be found in it."""


def _record_problem(record: Any) -> str | None:
    """Why ``record`` does not have LLaVA's structure, or ``None``. Speakers and ``<image>`` are checked later."""
    if not isinstance(record, dict):
        return f"is a {type(record).__name__}, not an object"
    conversations = record.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        return "has no non-empty 'conversations' list"
    for j, turn in enumerate(conversations):
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("from"), str)
            or not isinstance(turn.get("value"), str)
        ):
            return f"turn {j} is not an object with string 'from' and 'value'"
    if "image" in record and not isinstance(record["image"], str):
        return "'image' is not a string path"
    return None


def load_records(data_path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read and structurally validate a LLaVA JSON file (a list of records)."""
    path = Path(data_path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    try:
        with path.open(encoding="utf-8") as f:
            records = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetFormatError(f"data file {path} is not valid JSON: {err}") from err
    if not isinstance(records, list):
        raise DatasetFormatError(
            f"data file {path} must contain a JSON list of records, found {type(records).__name__}"
        )
    if not records:
        raise DatasetFormatError(f"data file {path} holds no records (an empty list): there is nothing to train on")
    for i, record in enumerate(records):
        problem = _record_problem(record)
        if problem is not None:
            sid = sample_id_of(record, i) if isinstance(record, dict) else f"#{i}"
            raise DatasetFormatError(f"data file {path}: record {i} (id {sid!r}) {problem}")
    return records


class LazySupervisedDataset(Dataset):
    """Records -> ``{"input_ids" [T], "labels" [T], "image" [3, H, W], "has_image" bool, "bad_samples" list}``.

    Text-only records get an all-zero image of the processor's output size, as upstream, so every sample in a
    batch carries an image and every rank runs the vision tower (ZeRO-3 needs identical module calls).
    """

    def __init__(
        self,
        data_path: str | os.PathLike,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: Any,
        image_folder: str | os.PathLike | None = None,
        template: str | ConversationTemplate = "vicuna_v1",
        image_aspect_ratio: str | None = "pad",
        num_image_tokens: int = 576,
        model_max_length: int | None = 2048,
        on_bad_sample: Literal["raise", "skip"] = "raise",
    ) -> None:
        super().__init__()
        if on_bad_sample not in ("raise", "skip"):
            raise ValueError(f"on_bad_sample must be 'raise' or 'skip', got {on_bad_sample!r}")
        if image_aspect_ratio not in (*IMAGE_ASPECT_RATIOS, None):
            raise ValueError(
                f"unsupported image_aspect_ratio {image_aspect_ratio!r}; expected one of {IMAGE_ASPECT_RATIOS} or None"
            )
        self.data_path = Path(data_path)
        self.records = load_records(self.data_path)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_folder = None if image_folder is None else Path(image_folder)
        self.template = get_template(template) if isinstance(template, str) else template
        self.image_aspect_ratio = image_aspect_ratio
        self.num_image_tokens = num_image_tokens
        self.model_max_length = model_max_length
        self.on_bad_sample = on_bad_sample
        self.image_size = image_processor_output_size(image_processor)  # (H, W) of the zero image
        self.background = background_color(image_processor)  # transparency is composited over the pad colour
        self._lock = threading.Lock()
        self._bad: dict[int, str] = {}  # index -> reason, each bad sample counted once however often it is hit
        logger.info("loaded %d records from %s", len(self.records), self.data_path)
        self.check_image_folder()

    def __len__(self) -> int:
        return len(self.records)

    # DataLoader workers started with "spawn" pickle the dataset; a lock cannot be pickled, so each copy
    # gets its own.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # --- lengths for the modality-grouped sampler (upstream definitions, word counts not token counts) ---

    @cached_property
    def lengths(self) -> list[int]:
        """Word count of all turns, plus 128 for image samples."""
        return [_word_count(r) + (IMAGE_LENGTH_BONUS if "image" in r else 0) for r in self.records]

    @cached_property
    def modality_lengths(self) -> list[int]:
        """Word count of all turns, negated for text-only samples (the sign tells the sampler the modality)."""
        return [_word_count(r) if "image" in r else -_word_count(r) for r in self.records]

    # --- loading ---

    def image_path(self, record: dict[str, Any]) -> Path:
        name = Path(record["image"])
        return name if self.image_folder is None else self.image_folder / name

    def check_image_folder(self) -> None:
        """Raises :class:`ImageFolderError` when the image records cannot possibly load (see the module doc)."""
        with_image = [r for r in self.records if "image" in r]
        if not with_image:
            return
        if self.image_folder is not None and not self.image_folder.is_dir():
            raise ImageFolderError(
                f"image folder {self.image_folder} does not exist, but {len(with_image)} records of "
                f"{self.data_path} name images relative to it (check IMAGE_FOLDER / --image_folder)"
            )
        if self.on_bad_sample == "raise":
            return  # the first missing image stops the run with its own error
        probe = with_image[:_FOLDER_PROBE]
        if not any(self.image_path(r).is_file() for r in probe):
            where = self.image_folder if self.image_folder is not None else Path.cwd()
            raise ImageFolderError(
                f"none of the first {len(probe)} images named by {self.data_path} exist under {where} (e.g. "
                f"{self.image_path(probe[0])}); check IMAGE_FOLDER / --image_folder"
            )

    def load_sample(self, index: int) -> dict[str, Any]:
        """Build sample ``index`` or raise its :class:`~llava.mm_utils.SampleError` (with id and data file)."""
        record = self.records[index]
        sample_id = sample_id_of(record, index)
        try:
            tokens = preprocess(
                record,
                self.tokenizer,
                self.template,
                num_image_tokens=self.num_image_tokens,
                model_max_length=self.model_max_length,
                sample_id=sample_id,
            )
            has_image = "image" in record
            if has_image:
                pil = load_image(self.image_path(record), background=self.background)
                image = process_images([pil], self.image_processor, self.image_aspect_ratio)[0]  # [3, H, W]
            else:
                image = torch.zeros(3, *self.image_size)  # [3, H, W]
        except SampleError as err:
            if err.sample_id is None:
                err.sample_id = sample_id
            if err.data_path is None:
                err.data_path = str(self.data_path)
            raise
        return {"input_ids": tokens.input_ids, "labels": tokens.labels, "image": image, "has_image": has_image}

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The sample, plus ``bad_samples``: the ``(index, reason)`` pairs first met while walking to it."""
        if self.on_bad_sample == "raise":
            return {**self.load_sample(index), "bad_samples": []}
        n = len(self)
        met: list[tuple[int, str]] = []
        # Walk forward from `index` to the first good sample: deterministic for a given index and data, whatever
        # was loaded before (known-bad indices are skipped without being re-read or re-logged).
        for step in range(n):
            candidate = (index + step) % n
            if candidate in self._bad:
                continue
            try:
                return {**self.load_sample(candidate), "bad_samples": met}
            except SampleError as err:
                self._record_skip(candidate, err)
                met.append((candidate, err.reason))
        raise RuntimeError(f"every sample in {self.data_path} is bad: {self.skipped_counts()}")

    def scan(self) -> dict[str, int]:
        """Load every sample once (tokenization and image decode) and return the bad-sample tally by reason.

        A pre-flight check: exact even when training later uses DataLoader workers. In ``"raise"`` mode the first
        bad sample raises.
        """
        for index in range(len(self)):
            if index in self._bad:
                continue
            try:
                self.load_sample(index)
            except SampleError as err:
                if self.on_bad_sample == "raise":
                    raise
                self._record_skip(index, err)
        return self.skipped_counts()

    # --- skip bookkeeping ---

    def _record_skip(self, index: int, err: SampleError) -> None:
        with self._lock:
            if index in self._bad:
                return
            self._bad[index] = err.reason
        logger.warning("skipping bad sample (index %d, %s): %s", index, err.reason, err)

    def skipped_counts(self) -> dict[str, int]:
        """Number of distinct bad samples met so far, by reason (e.g. ``{"image_missing": 2}``)."""
        with self._lock:
            return dict(Counter(self._bad.values()))

    def skipped_indices(self) -> dict[int, str]:
        """Index -> reason for every bad sample met so far."""
        with self._lock:
            return dict(self._bad)

    def report_skips(self, log: logging.Logger | None = None, bad: dict[int, str] | None = None) -> dict[str, int]:
        """Logs the end-of-run summary of skipped samples (a warning if any) and returns the counts by reason.

        ``bad`` (index -> reason) replaces this process's own tally, e.g. with the union over workers and ranks.
        """
        return summarize_skips(self.skipped_indices() if bad is None else bad, self.records, self.data_path,
                               log or logger)


def summarize_skips(
    bad: dict[int, str], records: list[dict[str, Any]], data_path: str | os.PathLike, log: logging.Logger
) -> dict[str, int]:
    """Logs how many of ``records`` were skipped and why (with example ids); returns the counts by reason."""
    counts = dict(Counter(bad.values()))
    if not counts:
        log.info("no bad samples skipped in %s", data_path)
        return counts
    by_reason: dict[str, list[str]] = {}
    for index, reason in sorted(bad.items()):
        by_reason.setdefault(reason, []).append(sample_id_of(records[index], index))
    details = "; ".join(
        f"{reason}: {len(ids)} (e.g. {', '.join(ids[:_MAX_REPORTED_IDS])})" for reason, ids in sorted(by_reason.items())
    )
    log.warning("skipped %d of %d samples in %s: %s", len(bad), len(records), data_path, details)
    return counts


def _word_count(record: dict[str, Any]) -> int:
    return sum(len(turn["value"].split()) for turn in record["conversations"])
