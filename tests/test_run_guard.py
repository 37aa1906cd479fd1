"""The output-directory guards of a training run: refuse to start over earlier work, one run per folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llava.train.run_guard import OutputDirError, OutputDirLock, check_output_dir, existing_work


def _earlier_run(out):
    (out / "checkpoint-12").mkdir(parents=True)
    (out / "checkpoint-12" / "model.safetensors").write_bytes(b"x")
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"y")


def test_fresh_or_empty_folders_start(tmp_path):
    check_output_dir(tmp_path / "new", resuming=False, overwrite=False)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "notes.txt").write_text("not a model")
    check_output_dir(tmp_path / "logs", resuming=False, overwrite=False)


def test_earlier_work_is_refused_unless_resuming(tmp_path):
    _earlier_run(tmp_path)
    assert existing_work(tmp_path) == ["checkpoint-12", "model.safetensors"]
    with pytest.raises(OutputDirError, match="already holds checkpoint-12, model.safetensors") as info:
        check_output_dir(tmp_path, resuming=False, overwrite=False)
    assert "--resume_from_checkpoint" in str(info.value) and "OVERWRITE=1" in str(info.value)
    assert (tmp_path / "checkpoint-12").is_dir()
    check_output_dir(tmp_path, resuming=True, overwrite=False)
    assert (tmp_path / "checkpoint-12").is_dir()


@pytest.mark.parametrize("saved", ["mm_projector.bin", "adapter_config.json", "pytorch_model.bin.index.json"])
def test_every_kind_of_saved_model_counts_as_earlier_work(tmp_path, saved):
    (tmp_path / saved).write_text("{}")
    with pytest.raises(OutputDirError, match=saved):
        check_output_dir(tmp_path, resuming=False, overwrite=False)


def test_overwrite_deletes_the_old_checkpoints(tmp_path):
    _earlier_run(tmp_path)
    check_output_dir(tmp_path, resuming=False, overwrite=True)
    assert not (tmp_path / "checkpoint-12").exists()
    assert (tmp_path / "model.safetensors").exists()  # replaced by the new run's save, not deleted up front


def test_the_lock_is_exclusive_across_processes_and_names_the_holder(tmp_path):
    code = (
        "import sys; from llava.train.run_guard import OutputDirLock, OutputDirError\n"
        "try:\n    OutputDirLock(sys.argv[1]).acquire()\nexcept OutputDirError as e:\n    print(e); sys.exit(3)\n"
    )
    with OutputDirLock(tmp_path) as lock:
        other = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
        assert other.returncode == 3, other.stderr
        assert "another training run" in other.stdout and str(os.getpid()) in other.stdout
        assert lock.path.read_text().strip() == str(os.getpid())
    again = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
