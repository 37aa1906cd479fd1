"""Content fingerprints (sha256) of checkpoints and question files, for the runner's resume identity.

The runner may only reuse answers that the same weights produced on the same questions. File names and
timestamps cannot tell that (a retrain writes new weights to the same path; a copy keeps the mtime), so the
fingerprint is the sha256 of the file *contents*. Hashing a 14 GB checkpoint takes a minute, so digests are
cached in ``${XDG_CACHE_HOME:-~/.cache}/hidrop-llava/fingerprints.json`` under the key
(absolute path, size, mtime_ns, inode, ctime_ns). ``ctime`` is part of the key because user space cannot set
it: a file rewritten in place with the same size and its mtime restored (``os.utime``) still gets a new
ctime and is hashed again.

Two more rules keep the cache honest:
- A file whose ctime is within ``RACY_WINDOW_NS`` of the moment it was hashed is not cached: the kernel's
  timestamp clock is coarse, so a second rewrite within the same tick would leave the key unchanged. (Git
  calls this the "racy" case.) Such files are simply hashed again on the next run.
- A file whose stat changes while it is being read (a training run still writing it) is an error, not a
  fingerprint.

The cache is a small JSON file written atomically under a lock, so parallel chunk processes hash each file
once between them; a corrupt cache is ignored (with a warning) and rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from llava.eval.files import EvalDataError

logger = logging.getLogger("llava.eval.fingerprint")

CACHE_VERSION = 1
# See the module docstring: files changed this recently are hashed but not cached.
RACY_WINDOW_NS = 2_000_000_000
# Files at least this large get a progress bar while they are hashed.
PROGRESS_MIN_BYTES = 64 << 20
_READ_BYTES = 8 << 20

# The top-level files of a checkpoint folder that decide its answers: weights in every format the builder
# loads (full, sharded, projector-only, LoRA with its non-LoRA trainables), their indexes, the config (which
# holds the saved schedule), and the tokenizer / image-processor files. Sub-folders (trainer checkpoint-N/
# with optimizer states) are not read by the loader and are not hashed.
WEIGHT_PATTERNS: tuple[str, ...] = (
    "*.safetensors",
    "*.bin",
    "*.index.json",
    "adapter_model.*",
    "adapter_config.json",
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
# Without at least one of these a folder holds no model to fingerprint.
_WEIGHT_ONLY = ("*.safetensors", "*.bin", "adapter_model.*")


def cache_path() -> str:
    """Where the digest cache lives: ``${XDG_CACHE_HOME:-~/.cache}/hidrop-llava/fingerprints.json``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hidrop-llava", "fingerprints.json")


def _stat_key(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "ctime_ns": st.st_ctime_ns}


def _hash_file(path: str, size: int) -> str:
    h = hashlib.sha256()
    buf = bytearray(_READ_BYTES)
    view = memoryview(buf)
    bar = None
    if size >= PROGRESS_MIN_BYTES:
        from tqdm import tqdm

        bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"sha256 {os.path.basename(path)}", leave=False)
    try:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(view[:n])
                if bar is not None:
                    bar.update(n)
    finally:
        if bar is not None:
            bar.close()
    return h.hexdigest()


class FingerprintCache:
    """sha256 of files, cached by (absolute path, size, mtime_ns, inode, ctime_ns)."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or cache_path()
        self._usable = True

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            logger.warning("fingerprint cache %s is unreadable (%s); ignoring it, it will be rebuilt", self.path, e)
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("files"), dict):
            logger.warning("fingerprint cache %s has an unknown layout; ignoring it, it will be rebuilt", self.path)
            return {}
        return {k: v for k, v in data["files"].items() if isinstance(v, dict)}

    def _save(self, files: dict[str, dict[str, Any]]) -> None:
        # Entries of deleted files would only grow the file; drop them whenever it is rewritten.
        files = {p: e for p, e in files.items() if os.path.exists(p)}
        folder = os.path.dirname(self.path)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".fingerprints-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": CACHE_VERSION, "files": files}, f, indent=0, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @contextlib.contextmanager
    def _locked(self) -> Iterator[bool]:
        """Serializes hashing between processes; yields False (and hashes uncached) if the cache is unwritable."""
        fd = -1
        if self._usable:
            try:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                logger.warning("fingerprint cache %s is not writable (%s); hashing without a cache", self.path, e)
                self._usable = False
        if fd < 0:
            yield False
            return
        try:
            # Blocking on purpose: another chunk process hashing the same checkpoint will have cached it by the
            # time this one gets the lock. The kernel releases the lock if that process dies.
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield True
        finally:
            os.close(fd)

    def sha256(self, path: str) -> str:
        """The sha256 of ``path``'s contents, from the cache when its stat key is unchanged."""
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
        except OSError as e:
            raise EvalDataError(f"cannot fingerprint {path}: {e}") from None
        key = _stat_key(st)
        hit = self._load().get(real) if self._usable else None
        if hit is not None and all(hit.get(k) == v for k, v in key.items()):
            return str(hit["sha256"])
        with self._locked() as cached:
            files = self._load() if cached else {}
            hit = files.get(real)
            if hit is not None and all(hit.get(k) == v for k, v in key.items()):
                return str(hit["sha256"])
            digest = _hash_file(real, st.st_size)
            if _stat_key(os.stat(real)) != key:
                raise EvalDataError(
                    f"{path} changed while it was being hashed; is a training run still writing it? "
                    "Rerun the evaluation when the checkpoint is complete."
                )
            if cached and time.time_ns() - st.st_ctime_ns > RACY_WINDOW_NS:
                files[real] = {**key, "sha256": digest}
                try:
                    self._save(files)
                except OSError as e:
                    logger.warning("cannot write fingerprint cache %s (%s); the next run hashes again", self.path, e)
            return digest


def resolve_model_dir(path: str, what: str) -> str:
    """The local folder holding ``path``'s files: the folder itself, or a hub id's cached snapshot.

    The builder accepts a hub id for ``--model-base``; its files are fingerprinted from the local hub cache.
    Anything else cannot be fingerprinted, and an unfingerprinted model must not be trusted for resume.
    """
    if os.path.isdir(path):
        return path
    if not os.path.exists(path) and path.count("/") == 1 and not path.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(path, local_files_only=True)
        except Exception as e:  # any failure means: not in the local hub cache
            raise EvalDataError(
                f"{what} {path!r} is neither a local folder nor a model in the local Hugging Face cache ({e}); "
                "download it first or pass a local folder"
            ) from None
    raise EvalDataError(f"{what} {path!r} is not a folder; pass the checkpoint folder")


def weight_files(folder: str) -> list[str]:
    """Names of the top-level files of ``folder`` that the fingerprint covers (see ``WEIGHT_PATTERNS``)."""
    names = sorted(
        n for n in os.listdir(folder)
        if os.path.isfile(os.path.join(folder, n)) and any(fnmatch.fnmatch(n, p) for p in WEIGHT_PATTERNS)
    )
    if not any(fnmatch.fnmatch(n, p) for n in names for p in _WEIGHT_ONLY):
        raise EvalDataError(
            f"{folder} holds no weight files (*.safetensors, *.bin, adapter_model.*); is it a checkpoint folder?"
        )
    return names


def checkpoint_fingerprint(path: str, what: str = "model path", cache: FingerprintCache | None = None) -> dict[str, str]:
    """``{file name: sha256}`` of the checkpoint files under ``path`` (a folder or a cached hub id)."""
    cache = cache or FingerprintCache()
    folder = resolve_model_dir(path, what)
    return {name: cache.sha256(os.path.join(folder, name)) for name in weight_files(folder)}


def file_fingerprint(path: str, cache: FingerprintCache | None = None) -> str:
    """sha256 of one file's contents (the question file), cached like the weights."""
    return (cache or FingerprintCache()).sha256(path)
