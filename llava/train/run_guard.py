"""Guards around a training run's output directory and its processes.

* :func:`die_with_launcher`: torchrun starts every rank in its own session, so killing the launcher's process
  group (Ctrl-C in a terminal that lost its job control, ``kill -KILL -PGID``, a scheduler's cleanup) used to
  leave the ranks running; they went on writing checkpoints and rotating old ones away. Each rank now asks the
  kernel for SIGKILL when its parent, the torchrun agent, dies.
* :class:`OutputDirLock`: one training run per output directory. The lock is an ``flock`` held by global rank 0
  for the whole run, so the kernel releases it whatever way the run ends (even SIGKILL).
* :func:`check_output_dir`: a run into a directory that already holds checkpoints or a saved model is refused
  unless it resumes or is told to overwrite; the Trainer would otherwise rotate the old checkpoints away.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import glob
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

LOCK_NAME = ".hidrop-train.lock"
LAUNCHER_PID_ENV = "HIDROP_LAUNCHER_PID"  # exported by scripts/_launch.sh, which execs torchrun (same pid)
_PR_SET_PDEATHSIG = 1
# What a finished stage leaves in its output directory (full, projector-only and LoRA saves).
SAVED_MODEL_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
    "mm_projector.bin", "adapter_config.json",
)


class OutputDirError(RuntimeError):
    """The output directory is in use by another run, or holds work that this run would destroy."""


def die_with_launcher() -> bool:
    """Arms SIGKILL-on-parent-death in a rank started by torchrun; returns whether it was armed.

    Only ranks whose parent is the elastic agent are armed (``TORCHELASTIC_RUN_ID`` is set by torchrun), so
    ``nohup python -m llava.train.train`` keeps its usual meaning. When the launcher is already gone by the time
    the rank gets here (the parent is no longer the pid the script exported), the rank exits at once.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        logger.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d); ranks may outlive their launcher",
                       ctypes.get_errno())
        return False
    expected = os.environ.get(LAUNCHER_PID_ENV)
    if expected and expected.isdigit() and os.getppid() != int(expected):
        # The parent died between fork and prctl: the kernel will send nothing, so leave now.
        print(f"rank {os.environ.get('RANK', '?')}: the launcher (pid {expected}) is gone; exiting", file=sys.stderr)
        os._exit(1)
    return True


class OutputDirLock:
    """An exclusive, non-blocking ``flock`` on ``<output_dir>/.hidrop-train.lock``, holding the owner's pid."""

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.path = Path(output_dir) / LOCK_NAME
        self._file: IO[str] | None = None

    def acquire(self) -> OutputDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # noqa: SIM115 - held open for the whole run
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                f.close()
                raise
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise OutputDirError(
                f"another training run (pid {holder}) is writing {self.path.parent}; wait for it to finish, stop it, "
                "or choose another OUTPUT_DIR"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> OutputDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def existing_work(output_dir: str | os.PathLike) -> list[str]:
    """Checkpoints and saved-model files already in ``output_dir`` (names relative to it, sorted)."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = sorted(os.path.basename(p) for p in glob.glob(str(out / "checkpoint-*")) if os.path.isdir(p))
    found += [name for name in SAVED_MODEL_FILES if (out / name).is_file()]
    return found


def check_output_dir(output_dir: str | os.PathLike, resuming: bool, overwrite: bool) -> None:
    """Refuses to start a fresh run on top of earlier work; with ``overwrite`` deletes the old checkpoints.

    Resuming is allowed whatever the directory holds: the Trainer continues the run it belongs to.
    """
    found = existing_work(output_dir)
    if not found or resuming:
        return
    if not overwrite:
        raise OutputDirError(
            f"{output_dir} already holds {', '.join(found)} from an earlier run. Pass --resume_from_checkpoint "
            f"{output_dir}/<checkpoint-N> to continue it, or --overwrite_output_dir True (OVERWRITE=1 in the "
            "scripts) to start afresh and delete its checkpoints, or choose another OUTPUT_DIR"
        )
    for name in found:
        if name.startswith("checkpoint-"):
            logger.warning("--overwrite_output_dir: deleting %s/%s from an earlier run", output_dir, name)
            shutil.rmtree(Path(output_dir) / name)
    logger.warning("--overwrite_output_dir: the saved model in %s will be replaced", output_dir)
