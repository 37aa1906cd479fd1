"""The one inference runner for every benchmark.

    python -m llava.eval.run_benchmark --bench gqa --model-path CKPT --question-file Q --image-folder IMG \
        --answers-file OUT.jsonl --num-chunks N --chunk-idx I [--batch-size B] \
        [--reduction-preset tok64] [--reduction-override "exit_layer=24 topk=hard"]

Why it is shaped this way:
- Chunks are contiguous slices of the question list (one process per GPU), so concatenating the chunk files
  in index order restores the question order; ``llava.eval.merge`` checks that nothing is missing or doubled.
- It resumes: answers are appended and flushed batch by batch, and a rerun skips the ids already in the file.
  An interrupted last line is repaired (a truncated line is dropped and redone, a complete one missing its
  newline gets it). Only answers of the very same run are reused: every line carries a ``run_id``, a hash of
  what determines the answers (benchmark, sha256 of the weights and of the question file, schedule,
  decoding, dtype; see ``run_identity``), and ``<answers>.run.json`` records that identity in full. A file
  from another run is moved aside to ``<answers>.stale-<old run_id>`` with a warning naming what changed
  (``--on-mismatch restart``, the default) or stops the run (``--on-mismatch error``). The identity is
  computed without loading the model (fingerprints are cached, ``llava.eval.fingerprint``), so rerunning a
  finished chunk costs no model load.
- One run per answers file: an exclusive lock on ``<answers>.lock`` is held for the whole run, and a second
  run on the same file fails at once instead of appending the same answers twice.
- Decoding is greedy. Batch size 1 is the reference; larger batches left-pad the prompts and pass the
  attention mask, and must give the same answers.
- The efficiency of the schedule actually run (average vision tokens, vision TFLOPs) is written next to the
  answers (``<answers>.run.json``) so the report can put Table 2's columns next to the scores.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import socket
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from llava.eval.benchmarks import BENCHMARK_NAMES, Benchmark, Question, get_benchmark
from llava.eval.files import EvalDataError, answer_key, limit_arg, read_json, write_json
from llava.eval.fingerprint import FingerprintCache, checkpoint_fingerprint, file_fingerprint

if TYPE_CHECKING:
    import torch
    from PIL import Image

logger = logging.getLogger("llava.eval.run_benchmark")

DEFAULT_CONV_MODE = "vicuna_v1"


# --------------------------------------------------------------------------------------------------- chunks
def chunk_bounds(num_items: int, num_chunks: int, chunk_idx: int) -> tuple[int, int]:
    """[start, end) of chunk ``chunk_idx``: contiguous pieces of ceil(n / num_chunks) items, as upstream.

    Unlike upstream, a chunk index past the last piece gives an empty chunk instead of an IndexError, so a
    script can always launch one process per GPU.
    """
    if num_chunks < 1:
        raise ValueError(f"--num-chunks must be >= 1, got {num_chunks}")
    if not 0 <= chunk_idx < num_chunks:
        raise ValueError(f"--chunk-idx must be in [0, {num_chunks}), got {chunk_idx}")
    size = math.ceil(num_items / num_chunks) if num_items else 0
    start = min(chunk_idx * size, num_items)
    return start, min(start + size, num_items)


def check_unique_ids(questions: Sequence[Question], where: str) -> None:
    seen: set[str] = set()
    for q in questions:
        if q.key in seen:
            raise EvalDataError(f"{where}: duplicate question id {q.qid!r}")
        seen.add(q.key)


# --------------------------------------------------------------------------------------------------- identity
def run_id_of(identity: dict[str, Any]) -> str:
    """A short stable hash of the settings that determine the answers (not batch size or chunking)."""
    return hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def expected_schedule(model_path: str, preset: str | None, overrides: Sequence[str]) -> dict[str, Any] | None:
    """The schedule the loaded model will run, worked out without loading it (config.json + preset/overrides).

    It mirrors the builder: a preset replaces the saved schedule, then overrides apply. ``run`` checks it
    against the loaded model, so a divergence cannot slip into the resume identity unnoticed.
    """
    try:
        from llava.model.reduction.config import resolve_reduction
    except ImportError:  # scoring-only installs; the identity still holds config.json's hash, preset and overrides
        return None
    config_path = os.path.join(model_path, "config.json")
    saved = read_json(config_path, "checkpoint config").get("reduction") if os.path.isfile(config_path) else None
    return resolve_reduction(preset, list(overrides), base=saved if isinstance(saved, dict) else None).to_dict()


def run_identity(
    args: argparse.Namespace, overrides: Sequence[str], max_new_tokens: int, cache: FingerprintCache | None = None
) -> dict[str, Any]:
    """Everything that determines the answers, computed without loading the model.

    The weights and the question file enter by content (sha256), so retraining into the same folder or editing a
    question changes the identity. Paths do not enter: a copied checkpoint gives the same answers.
    """
    cache = cache or FingerprintCache()
    weights = {"model_path": checkpoint_fingerprint(args.model_path, "--model-path", cache)}
    if args.model_base:
        weights["model_base"] = checkpoint_fingerprint(args.model_base, "--model-base", cache)
    if getattr(args, "vision_tower_path", None):
        weights["vision_tower"] = checkpoint_fingerprint(args.vision_tower_path, "--vision-tower-path", cache)
    return {
        "bench": args.bench,
        "weights": weights,
        "question_file_sha256": file_fingerprint(args.question_file, cache),
        "reduction_preset": args.reduction_preset or None,
        "reduction_overrides": list(overrides),
        "schedule": expected_schedule(args.model_path, args.reduction_preset or None, overrides),
        "conv_mode": args.conv_mode,
        "max_new_tokens": max_new_tokens,
        **decoding_identity(args),
        # recorded only when on, so that the run ids of earlier plain runs stay what they were
        **({"speculative": args.speculative} if getattr(args, "speculative", "") else {}),
        "dtype": resolve_device_dtype(args.device, args.dtype)[1],
    }


def decoding_identity(args: argparse.Namespace) -> dict[str, Any]:
    """Greedy (``do_sample: False``) unless the run samples (upstream's runners: ``--temperature`` > 0)."""
    temperature = getattr(args, "temperature", None) or 0.0
    if temperature <= 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_p": getattr(args, "top_p", None)}


def _plain(value: Any) -> str:
    return str(value) if value is None or isinstance(value, (str, int, float)) else json.dumps(value, sort_keys=True)


def _weights_change(old: Any, new: Any) -> str:
    if not isinstance(old, dict) or not isinstance(new, dict):
        return "weights fingerprint changed"
    parts = []
    for role in sorted(set(old) | set(new)):
        if role not in old or role not in new:
            parts.append(f"{role} {'added' if role in new else 'removed'}")
            continue
        before, after = old[role] or {}, new[role] or {}
        files = [f for f in sorted(set(before) | set(after)) if before.get(f) != after.get(f)]
        if files:
            parts.append(f"{role}: {', '.join(files)}")
    return f"weights fingerprint changed ({'; '.join(parts)})" if parts else "weights fingerprint changed"


def describe_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Human-readable differences between an old run's recorded identity and this run's, one item per field."""
    if old is None:
        return ["the old run's settings are unknown (its .run.json is missing or belongs to another run)"]
    changes = []
    for key, after in new.items():
        if key not in old:
            changes.append(f"{key} not recorded by the old run")
            continue
        before = old[key]
        if before == after:
            continue
        if key == "weights":
            changes.append(_weights_change(before, after))
        elif key == "question_file_sha256":
            changes.append("question file changed")
        elif key == "schedule" and isinstance(before, dict) and isinstance(after, dict):
            fields = [
                f"{k} {_plain(before.get(k))} -> {_plain(after.get(k))}"
                for k in sorted(set(before) | set(after))
                if before.get(k) != after.get(k)
            ]
            changes.append(f"schedule changed ({', '.join(fields)})")
        else:
            changes.append(f"{key} {_plain(before)} -> {_plain(after)}")
    return changes


# --------------------------------------------------------------------------------------------------- resume
class AnswersFileBusy(EvalDataError):
    """Another run holds the answers file's lock."""


@contextlib.contextmanager
def answers_lock(answers_file: str) -> Iterator[None]:
    """Holds an exclusive lock on ``<answers_file>.lock`` for the whole run; a second run fails at once.

    Two runs appending to one file would double its answers. ``flock`` is released by the kernel when the
    process ends, however it ends, so a crash never leaves the file locked; the small lock file (holding the
    last holder's pid) stays and is reused.
    """
    lock_path = f"{answers_file}.lock"
    os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown (it has just started)"
            raise AnswersFileBusy(
                f"answers file {answers_file} is being written by another evaluation run (pid {holder}, per "
                f"{lock_path}); wait for that run to finish or stop it, then rerun. Two runs on one file would "
                "append the same answers twice."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def repair_tail(path: str) -> None:
    """Fixes the last line left by an interrupted write, so that appending resumes cleanly.

    A complete JSON line without its newline gets the newline (otherwise the next answer would be glued onto
    it); a truncated line is dropped (its question is answered again).
    """
    with open(path, "rb") as f:
        data = f.read()
    if not data or data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    lineno = data.count(b"\n") + 1
    try:
        json.loads(data[cut:].decode("utf-8"))
    except ValueError:  # JSONDecodeError, or UnicodeDecodeError from a multi-byte character cut in half
        os.truncate(path, cut)
        logger.warning("%s: dropped line %d, truncated by an interrupted run; its question will be redone", path, lineno)
        return
    with open(path, "ab") as f:
        f.write(b"\n")
    logger.warning("%s: line %d was complete but lacked its newline (an interrupted write); added it", path, lineno)


_JSON_TYPES = {type(None): "null", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}


def scan_answers(path: str) -> list[tuple[int, dict[str, Any] | None, str | None]]:
    """``(line number, record or None, problem or None)`` for every non-blank line of an answers file."""
    out: list[tuple[int, dict[str, Any] | None, str | None]] = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                out.append((lineno, None, "is not valid UTF-8"))
                continue
            except json.JSONDecodeError as e:
                out.append((lineno, None, f"is malformed JSON ({e})"))
                continue
            if not isinstance(rec, dict):
                out.append((lineno, None, f"holds a JSON {_JSON_TYPES.get(type(rec), type(rec).__name__)}, not an answer object"))
            elif "question_id" not in rec:
                out.append((lineno, None, "is an object without a question_id"))
            else:
                out.append((lineno, rec, None))
    return out


def _read_run_info(path: str) -> dict[str, Any] | None:
    """A ``.run.json`` for comparison only: missing or unreadable gives None (the caller says "unknown")."""
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _stale_name(path: str, old_run_id: str) -> str:
    """``<path>.stale-<old run_id>``, numbered when that name is taken: old answers are never overwritten."""
    base = f"{path}.stale-{re.sub(r'[^A-Za-z0-9_.-]', '_', old_run_id)}"
    dest, k = base, 1
    while os.path.exists(dest) or os.path.exists(f"{dest}.run.json"):
        k += 1
        dest = f"{base}-{k}"
    return dest


def _set_aside(path: str, old_run_id: str, run_id: str, identity: dict[str, Any], on_mismatch: str) -> None:
    """Answers from another run: stop (``error``) or move them and their run info aside (``restart``)."""
    info_path = f"{path}.run.json"
    old_info = _read_run_info(info_path)
    if old_info is not None and old_info.get("run_id") != old_run_id:
        old_info = None
    reason = "; ".join(describe_changes(old_info, identity)) or "settings differ"
    if on_mismatch == "error":
        raise EvalDataError(
            f"answers file {path} was written by another run (run_id {old_run_id}, this run {run_id}): {reason}. "
            f"Its answers cannot be reused. Rerun with --on-mismatch restart (scripts: ON_MISMATCH=restart) to move "
            f"it aside to {path}.stale-{old_run_id} and answer afresh, or use another answers file (CKPT)."
        )
    dest = _stale_name(path, old_run_id)
    os.replace(path, dest)
    if os.path.exists(info_path):
        os.replace(info_path, f"{dest}.run.json")
    logger.warning(
        "%s was written by another run (run_id %s, this run %s): %s. Moved it to %s; answering afresh.",
        path, old_run_id, run_id, reason, dest,
    )


def load_existing_answers(
    path: str,
    allowed: set[str],
    run_id: str,
    identity: dict[str, Any] | None = None,
    on_mismatch: str = "error",
) -> set[str]:
    """Ids already answered in ``path`` by this very run (same ``run_id``); repairs an interrupted last line.

    Answers from another run (any line with a different run_id) are never reused: ``on_mismatch="restart"``
    moves the file aside to ``<path>.stale-<old run_id>`` and returns nothing, ``"error"`` stops. Problems in
    a file that would be reused (a corrupt line, a duplicate, an id outside this chunk) are errors that say
    which line to delete.
    """
    if not os.path.exists(path):
        return set()
    repair_tail(path)
    lines = scan_answers(path)
    seen_ids = dict.fromkeys(rec.get("run_id") for _, rec, _ in lines if rec is not None)
    stale = [rid for rid in seen_ids if rid != run_id]
    if stale:
        _set_aside(path, str(stale[0]) if stale[0] is not None else "unknown", run_id, identity or {}, on_mismatch)
        return set()
    repair = "(its question will be answered again on the next run) or delete the file, then rerun"
    done: dict[str, int] = {}
    for lineno, rec, problem in lines:
        if rec is None:
            raise EvalDataError(f"answers file {path}, line {lineno} {problem}. Delete line {lineno} {repair}.")
        key = answer_key(rec)
        if key not in allowed:
            raise EvalDataError(
                f"answers file {path}, line {lineno}: question {rec['question_id']!r} is not in this chunk, so the "
                "file was written with a different --num-chunks/--chunk-idx. Use the answers file of that chunking, "
                "or move this one away and rerun."
            )
        if key in done:
            raise EvalDataError(
                f"answers file {path}, line {lineno}: a second answer for question {rec['question_id']!r} (the first "
                f"is on line {done[key]}). Delete line {lineno} {repair}."
            )
        done[key] = lineno
    return set(done)


# --------------------------------------------------------------------------------------------------- backend
class GenerationBackend(Protocol):
    """Turns question texts (and optional images) into answers. The real one wraps a LLaVA model."""

    def generate(self, texts: Sequence[str], images: Sequence[Image.Image | None], max_new_tokens: int) -> list[str]: ...


def vicuna_prompt(text: str, has_image: bool, conv_mode: str = DEFAULT_CONV_MODE) -> str:
    """The upstream eval prompt: the image token first, then a newline and the question text."""
    from llava.constants import DEFAULT_IMAGE_TOKEN
    from llava.conversation import get_conv_template

    conv = get_conv_template(conv_mode)
    conv.append_message(conv.roles[0], f"{DEFAULT_IMAGE_TOKEN}\n{text}" if has_image else text)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


class LlavaBackend:
    """Batched greedy generation with a LLaVA model, following the model contract.

    Prompts are left-padded with the tokenizer's pad id and masked; samples without an image get an all-zero
    image tensor and carry no image placeholder, which the model treats as text-only. ``template``,
    ``tokenize`` and ``preprocess`` default to the model package's own functions and can be replaced (tests).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        image_processor: Any,
        conv_mode: str = DEFAULT_CONV_MODE,
        template: Callable[[str, bool], str] | None = None,
        tokenize: Callable[[str], torch.Tensor] | None = None,
        preprocess: Callable[[list[Image.Image]], torch.Tensor] | None = None,
        temperature: float = 0.0,
        top_p: float | None = None,
        image_cache: Any | None = None,
        speculative: str | None = None,
    ) -> None:
        self.model = model
        # "twig": self-speculative decoding with the model's twig (llava.model.speculative); each answer then records
        # its drafted / kept tokens and its share of the batch's decoding time (the run's acceptance rate, tokens/s).
        self.speculative = speculative or None
        # VoCo schedules: an ImageCache of compressed images (--reuse-image-cache) answers the next question about
        # the same image from its VoCo cache; None compresses every question's image.
        self.image_cache = image_cache
        # 0: greedy, the reference; upstream's runners sample when given --temperature > 0.
        self.temperature = temperature
        self.top_p = top_p
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.template = template or (lambda text, has_image: vicuna_prompt(text, has_image, conv_mode))
        self.tokenize = tokenize or self._default_tokenize
        self.preprocess = preprocess or self._default_preprocess
        self._blank_shape: tuple[int, ...] | None = None
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            raise EvalDataError("the tokenizer has no pad_token_id; batched generation needs one")
        self.pad_token_id = int(pad)

    def _default_tokenize(self, prompt: str) -> torch.Tensor:
        from llava.mm_utils import tokenizer_image_token

        return tokenizer_image_token(prompt, self.tokenizer, return_tensors="pt")

    def _default_preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        from llava.mm_utils import process_images

        aspect = getattr(getattr(self.model, "config", None), "image_aspect_ratio", "pad")
        return process_images(images, self.image_processor, aspect)

    def _image_shape(self) -> tuple[int, ...]:
        if self._blank_shape is None:
            from PIL import Image

            self._blank_shape = tuple(self.preprocess([Image.new("RGB", (8, 8))]).shape[1:])
        return self._blank_shape

    def _placement(self) -> tuple[torch.device, torch.dtype]:
        import torch

        params = list(self.model.parameters()) if hasattr(self.model, "parameters") else []
        if params:
            float_params = [p for p in params if p.is_floating_point()]
            p = float_params[0] if float_params else params[0]
            return p.device, (p.dtype if p.is_floating_point() else torch.float32)
        return torch.device("cpu"), torch.float32

    def generate(self, texts: Sequence[str], images: Sequence[Image.Image | None], max_new_tokens: int) -> list[str]:
        return self._generate(texts, images, max_new_tokens, counts=False)[0]

    def generate_with_stats(
        self, texts: Sequence[str], images: Sequence[Image.Image | None], max_new_tokens: int
    ) -> tuple[list[str], list[dict[str, list[int]]] | None]:
        """The answers and, per sample, the vision tokens of each layer in prefill (realised: data-dependent
        schedules keep different counts per sample) as answer-record fields: ``vision_tokens`` (at each layer's
        input) and ``vision_tokens_after_filter`` (a prune layer counting its survivors, MustDrop's counter);
        None when the model cannot report them."""
        import inspect

        # Models without the realised counts (other generate() implementations) answer without them.
        supported = "return_vision_counts" in inspect.signature(self.model.generate).parameters
        return self._generate(texts, images, max_new_tokens, counts=supported)

    def encode(
        self, texts: Sequence[str], images: Sequence[Image.Image | None]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The model inputs of a batch: left-padded ``input_ids`` [B, T], ``attention_mask`` [B, T] and
        ``images`` [B, 3, H, W] (zeros for text-only samples), on the model's device and dtype."""
        import torch

        device, dtype = self._placement()
        ids = [self.tokenize(self.template(t, img is not None)).long().view(-1) for t, img in zip(texts, images)]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, x in enumerate(ids):
            input_ids[row, width - len(x) :] = x
            attention_mask[row, width - len(x) :] = 1
        real = [img for img in images if img is not None]
        processed = self.preprocess(real) if real else None
        shape = tuple(processed.shape[1:]) if processed is not None else self._image_shape()
        pixels = torch.zeros((len(ids), *shape), dtype=torch.float32)
        if processed is not None:
            rows = [i for i, img in enumerate(images) if img is not None]
            pixels[rows] = processed.to(torch.float32)
        return input_ids.to(device), attention_mask.to(device), pixels.to(device=device, dtype=dtype)

    def _generate(
        self, texts: Sequence[str], images: Sequence[Image.Image | None], max_new_tokens: int, counts: bool
    ) -> tuple[list[str], list[dict[str, list[int]]] | None]:
        import torch

        input_ids, attention_mask, pixels = self.encode(texts, images)
        extra: dict[str, Any] = {"return_vision_counts": True} if counts else {}
        if self.image_cache is not None:
            extra["image_cache"] = self.image_cache
        stats = None
        if self.speculative:
            from llava.model.speculative import SpeculativeStats

            stats = SpeculativeStats()
            extra.update(speculative=self.speculative, speculative_stats=stats)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                images=pixels,
                max_new_tokens=max_new_tokens,
                # Sampling arguments only when sampling (upstream's runners with --temperature > 0): models that
                # only decode greedily need not accept them.
                **({"do_sample": True, "temperature": self.temperature, "top_p": self.top_p} if self.temperature > 0
                   else {"do_sample": False}),
                **extra,
            )
        per_sample = None
        if counts:
            out, vision_counts = out
            per_sample = [{"vision_tokens": entering, "vision_tokens_after_filter": after} for entering, after in
                          zip(vision_counts.entering.tolist(), vision_counts.after_filter.tolist())]
        if stats is not None:
            per_sample = per_sample or [{} for _ in texts]
            for fields, row in zip(per_sample, speculative_records(stats)):
                fields["speculative"] = row
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)], per_sample


def speculative_records(stats: Any) -> list[dict[str, Any]]:
    """Per answer of a speculative batch: proposals verified and kept, tokens generated, and its share of the batch's
    decoding time (in proportion to the tokens decoded after the first), so that sums over answers give the run's
    acceptance rate and tokens per second (``llava.eval.merge``)."""
    decoded = [max(n - 1, 0) for n in stats.new_tokens]
    total = sum(decoded)
    return [{"drafted": d, "accepted": a, "new_tokens": n,
             "decode_seconds": stats.decode_seconds * k / total if total else 0.0}
            for d, a, n, k in zip(stats.drafted, stats.accepted, stats.new_tokens, decoded)]


# --------------------------------------------------------------------------------------------------- loop
def generate_answers(
    backend: GenerationBackend,
    adapter: Benchmark,
    questions: Sequence[Question],
    image_folder: str,
    answers_file: str,
    batch_size: int,
    max_new_tokens: int,
    record_fields: dict[str, Any],
) -> int:
    """Answers ``questions`` in batches and appends one JSON line per question; returns how many were written.

    Each batch is flushed before the next starts, so an interruption loses at most one batch.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    os.makedirs(os.path.dirname(os.path.abspath(answers_file)), exist_ok=True)
    written = 0
    with open(answers_file, "a", encoding="utf-8") as out, tqdm(total=len(questions), desc=adapter.name, unit="q") as bar:
        for start in range(0, len(questions), batch_size):
            batch = questions[start : start + batch_size]
            images = [adapter.load_image(q, image_folder) for q in batch]
            prompts = [q.text for q in batch]
            with_stats = getattr(backend, "generate_with_stats", None)
            texts, counts = with_stats(prompts, images, max_new_tokens) if with_stats else (
                backend.generate(prompts, images, max_new_tokens), None)
            if len(texts) != len(batch):
                raise RuntimeError(f"the model returned {len(texts)} answers for a batch of {len(batch)}")
            for row, (q, text) in enumerate(zip(batch, texts)):
                record = {"question_id": q.qid, "prompt": q.text, "text": text, **q.extra, **record_fields}
                record.setdefault("answer_id", uuid.uuid4().hex)  # upstream's answer-file fields
                record.setdefault("metadata", {})
                if q.uid is not None:
                    record["uid"] = q.uid
                if counts is not None:
                    record.update(counts[row])  # realised per layer, for the run's efficiency figures
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            written += len(batch)
            bar.update(len(batch))
    return written


# --------------------------------------------------------------------------------------------------- model
def parse_override_args(values: Sequence[str] | None) -> list[str]:
    """``--reduction-override`` may repeat and each value may hold several space-separated key=value pairs."""
    items: list[str] = []
    for v in values or []:
        items.extend(v.split())
    for item in items:
        if "=" not in item:
            raise EvalDataError(f"--reduction-override {item!r} is not of the form key=value")
    return items


def _saved_reduction(model: Any, model_path: str) -> Any:
    """The schedule the loaded model runs: an attribute of the model, else the checkpoint's config.json."""
    for owner in (model, getattr(model, "config", None)):
        for attr in ("reduction_config", "reduction"):
            value = getattr(owner, attr, None) if owner is not None else None
            if value is not None:
                return value
    config_path = os.path.join(model_path, "config.json")
    if os.path.isfile(config_path):
        return read_json(config_path, "checkpoint config").get("reduction")
    return None


def _num_vision_tokens(model: Any) -> int | None:
    config = getattr(model, "config", None)
    for attr in ("num_vision_tokens", "mm_num_vision_tokens"):
        if getattr(config, attr, None):
            return int(getattr(config, attr))
    get_tower = getattr(model, "get_vision_tower", None)
    tower = get_tower() if callable(get_tower) else None
    if tower is not None and getattr(tower, "num_patches", None):
        return int(tower.num_patches)
    return None


def describe_efficiency(model: Any, model_path: str, preset: str | None, overrides: list[str]) -> dict[str, Any]:
    """Schedule and Table 2 figures (average vision tokens, vision TFLOPs) for the model as loaded.

    Best effort: fields the model does not expose are left as None rather than guessed.
    """
    info: dict[str, Any] = {"reduction": None, "avg_vision_tokens": None, "vision_tflops": None}
    config = getattr(model, "config", None)
    num_layers = getattr(config, "num_hidden_layers", None)
    hidden = getattr(config, "hidden_size", None)
    ffn = getattr(config, "intermediate_size", None)
    info["llm"] = {"num_layers": num_layers, "hidden": hidden, "ffn": ffn}
    try:
        from llava.model.reduction.config import ReductionConfig, resolve_reduction
    except ImportError:
        return info
    saved = _saved_reduction(model, model_path)
    if isinstance(saved, ReductionConfig):
        cfg = saved
    else:
        cfg = resolve_reduction(preset, overrides, base=saved if isinstance(saved, dict) else None)
    info["reduction"] = cfg.to_dict()
    nv = _num_vision_tokens(model)
    info["num_vision_tokens"] = nv
    if cfg.data_dependent:
        info["data_dependent"] = True  # realised per sample: the merge averages the answers' vision_tokens
        return info
    if num_layers and nv:
        counts = cfg.counts_per_layer(int(num_layers), nv)
        info["avg_vision_tokens"] = sum(counts) / int(num_layers)
        if cfg.compress_tokens:  # VoCo: the layers process every vision token, the text sees the N VoCo tokens
            info["visible_vision_tokens"] = cfg.average_visible_tokens(int(num_layers), nv)
        try:
            from llava.eval.efficiency import vision_tflops
        except ImportError:
            vision_tflops = None
        if vision_tflops is not None and hidden and ffn:
            info["vision_tflops"] = float(vision_tflops(counts, int(hidden), int(ffn)))
    twig = getattr(config, "twig", None)
    if isinstance(twig, dict) and (cfg.score_layer == "twig" or getattr(model, "twig", None) is not None):
        info["twig"] = dict(twig)  # TwigVLM: its prefill FLOPs are not in the schedule's figures (the report notes them)
        if nv and hidden and ffn:
            from llava.eval.efficiency import block_flops

            info["twig_prefill_vision_tflops"] = int(twig.get("num_layers", 0)) * block_flops(nv, int(hidden), int(ffn)) / 1e12
    return info


def resolve_device_dtype(device: str, dtype: str) -> tuple[str, str]:
    """("cuda" | "cpu", dtype name). auto picks the GPU when there is one and then fp16, as upstream LLaVA
    evaluates; on CPU fp32 (fp16 matmuls there are slow or missing)."""
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "float16" if device == "cuda" else "float32"
    return device, dtype


def load_backend(args: argparse.Namespace, overrides: list[str]) -> tuple[LlavaBackend, Any]:
    """Loads the checkpoint with its saved schedule, or the preset/overrides given on the command line."""
    import torch

    from llava.model.builder import load_pretrained_model

    device, dtype_name = resolve_device_dtype(args.device, args.dtype)
    dtype = getattr(torch, dtype_name)
    override_dict: dict[str, Any] | None = None
    if overrides:
        from llava.model.reduction.config import parse_overrides

        override_dict = parse_overrides(overrides)
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path,
        model_base=args.model_base,
        vision_tower_path=args.vision_tower_path or None,
        device=device,
        torch_dtype=dtype,
        reduction=args.reduction_preset or None,
        reduction_overrides=override_dict,
    )
    model.eval()
    image_cache = None
    if getattr(args, "reuse_image_cache", False):
        from llava.model.two_pass import ImageCache

        if model.config.reduction_config.compress_tokens:
            image_cache = ImageCache()
        else:
            logger.info("--reuse-image-cache: schedule %s has no VoCo tokens, so there is no compressed image to "
                        "reuse; answering as usual", model.config.reduction_config.name)
    backend = LlavaBackend(model, tokenizer, image_processor, conv_mode=args.conv_mode,
                           temperature=getattr(args, "temperature", None) or 0.0, top_p=getattr(args, "top_p", None),
                           image_cache=image_cache, speculative=getattr(args, "speculative", "") or None)
    return backend, model


# --------------------------------------------------------------------------------------------------- CLI
def _optional_int(value: str) -> int | None:
    """An int flag that scripts may pass as an empty string to mean "the default"."""
    return int(value) if value.strip() else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.eval.run_benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--bench", required=True, choices=BENCHMARK_NAMES)
    p.add_argument("--model-path", required=True)
    p.add_argument("--model-base", default=None, help="base LLM for LoRA/projector-only checkpoints")
    p.add_argument("--vision-tower-path", default=None,
                   help="local CLIP directory replacing the tower a checkpoint names (a hub id on an offline machine)")
    p.add_argument("--model-id", default=None, help="written into every answer; default: basename of --model-path")
    p.add_argument("--question-file", required=True)
    p.add_argument("--image-folder", default="", help="images are looked up relative to this folder")
    p.add_argument("--answers-file", required=True)
    p.add_argument("--num-chunks", type=int, default=1)
    p.add_argument("--chunk-idx", type=int, default=0)
    p.add_argument("--limit", type=limit_arg, default=None,
                   help="answer only the first N questions of the file (a quick subset; empty: all)")
    p.add_argument("--batch-size", type=int, default=1, help="1 is the reference mode; larger batches give the same answers")
    p.add_argument(
        "--max-new-tokens", type=_optional_int, default=None, help="default (or empty): the benchmark's upstream value (128 or 1024)"
    )
    p.add_argument("--conv-mode", default=DEFAULT_CONV_MODE)
    p.add_argument("--reduction-preset", default="", help="preset replacing the checkpoint's saved schedule (e.g. tok64, off); empty: keep it")
    p.add_argument(
        "--reduction-override",
        action="append",
        default=[],
        help="key=value single-field schedule overrides; repeatable, or several separated by spaces",
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--dtype", default="auto", choices=("auto", "float16", "bfloat16", "float32"), help="auto: float16 on GPU, float32 on CPU")
    p.add_argument(
        "--on-mismatch",
        default="restart",
        choices=("restart", "error"),
        help="when the answers file comes from another run (other weights, question file, schedule or decoding): "
        "restart moves it aside to <answers>.stale-<old run_id> and answers afresh; error stops",
    )
    p.add_argument(
        "--speculative",
        default="",
        choices=("", "twig"),
        help="twig: self-speculative decoding with the checkpoint's twig (TwigVLM); greedy answers are the plain ones, "
        "and the run records the acceptance rate and tokens/s; empty: plain decoding",
    )
    p.add_argument(
        "--reuse-image-cache",
        action="store_true",
        help="VoCo schedules (compress_tokens > 0): compress each image once and answer the following questions about "
        "it from its VoCo cache (two-pass inference); the answers are those of a fresh compression",
    )
    return p


def run(
    args: argparse.Namespace,
    load: Callable[[argparse.Namespace, list[str]], tuple[GenerationBackend, Any]] = load_backend,
    adapter: Benchmark | None = None,
) -> int:
    """Answers this chunk's unanswered questions; returns how many were generated.

    ``load`` builds the backend (and returns the model for the efficiency figures); it is only called when
    there is something left to answer, so a rerun of a finished chunk costs no model load. The answers file
    is locked for the whole call (see ``answers_lock``).
    """
    adapter = adapter or get_benchmark(args.bench)  # upstream's runners pass their own (llava.eval.upstream_runner)
    args.reduction_preset = benchmark_preset(args.reduction_preset, args.bench)
    with answers_lock(args.answers_file):
        return _run_locked(args, adapter, load)


def benchmark_preset(preset: str | None, bench: str) -> str | None:
    """The preset this benchmark runs for ``preset``: the authors' released per-benchmark variant where there is
    one (MustDrop's VizWiz thresholds), logged, so answers, identity and run info all name the schedule run."""
    try:
        from llava.model.reduction.config import preset_for_benchmark
    except ImportError:  # scoring-only installs run no model
        return preset
    chosen = preset_for_benchmark(preset, bench)
    if chosen != preset:
        logger.info("preset %s on %s: running %s, the authors' released settings for this benchmark", preset, bench,
                    chosen)
    return chosen


def _run_locked(
    args: argparse.Namespace,
    adapter: Benchmark,
    load: Callable[[argparse.Namespace, list[str]], tuple[GenerationBackend, Any]],
) -> int:
    questions = adapter.load_questions(args.question_file)
    if getattr(args, "limit", None):  # a quick subset: the first N questions (merge and score take the same --limit)
        questions = questions[: args.limit]
    if not questions:
        # An empty file would "succeed" with no answers and end as a scorer traceback or a score of nothing.
        raise EvalDataError(
            f"{adapter.title} question file {args.question_file} holds no questions to run; check that it is the "
            "right (and complete) file"
        )
    check_unique_ids(questions, args.question_file)
    start, end = chunk_bounds(len(questions), args.num_chunks, args.chunk_idx)
    chunk = questions[start:end]
    overrides = parse_override_args(args.reduction_override)
    max_new_tokens = args.max_new_tokens or adapter.max_new_tokens
    identity = run_identity(args, overrides, max_new_tokens)
    run_id = run_id_of(identity)
    done = load_existing_answers(args.answers_file, {q.key for q in chunk}, run_id, identity, args.on_mismatch)
    todo = [q for q in chunk if q.key not in done]
    logger.info(
        "%s chunk %d/%d: questions %d-%d (%d), %d already answered, %d to do",
        args.bench, args.chunk_idx, args.num_chunks, start, end, len(chunk), len(done), len(todo),
    )
    run_info_path = f"{args.answers_file}.run.json"
    model_id = args.model_id or os.path.basename(os.path.normpath(args.model_path))
    run_info: dict[str, Any] = {
        **identity,
        "run_id": run_id,
        "model_id": model_id,
        "model_path": os.path.abspath(args.model_path),
        "model_base": args.model_base,
        "vision_tower_path": args.vision_tower_path,
        "question_file": os.path.abspath(args.question_file),
    }
    if not todo:
        if not os.path.exists(args.answers_file):
            os.makedirs(os.path.dirname(os.path.abspath(args.answers_file)), exist_ok=True)
            open(args.answers_file, "a").close()
        # An empty chunk has no lines to compare, so its run info is what the merge checks: keep it current.
        old_info = _read_run_info(run_info_path)
        if old_info is None or old_info.get("run_id") != run_id:
            write_json(run_info_path, run_info)
        return 0
    backend, model = load(args, overrides)
    run_info.update(describe_efficiency(model, args.model_path, args.reduction_preset or None, overrides))
    if identity["schedule"] is not None and run_info.get("reduction") not in (None, identity["schedule"]):
        raise RuntimeError(
            f"the loaded model runs schedule {run_info['reduction']} but the run identity was computed for "
            f"{identity['schedule']}; resume could mix answers of two schedules. This is a bug in "
            "llava.eval.run_benchmark.expected_schedule: please report it."
        )
    write_json(run_info_path, run_info)
    n = generate_answers(
        backend, adapter, todo, args.image_folder, args.answers_file, args.batch_size, max_new_tokens,
        {"model_id": model_id, "run_id": run_id},
    )
    logger.info("wrote %d answers to %s", n, args.answers_file)
    return n


def _input_error_types() -> tuple[type[BaseException], ...]:
    """A checkpoint that cannot be loaded, a schedule the model cannot run: one line, no traceback. Looked up in
    ``sys.modules`` because scoring-only installs never import the model (then no such error can occur)."""
    import sys

    found = []
    for module, name in (("llava.model.checkpoint_loading", "CheckpointError"),
                         ("llava.model.reduction.config", "ReductionConfigError")):
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None:
            found.append(cls)
    return tuple(found)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except Exception as e:
        if not isinstance(e, _input_error_types()):
            raise
        import sys

        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
