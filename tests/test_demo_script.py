"""scripts/demo.sh (`make demo`): its inputs are checked before anything is built or trained."""

from __future__ import annotations

import os
import subprocess

import pytest
from train_fixtures import REPO


@pytest.mark.parametrize("seed", ["abc", "-1", "1.5", ""])
def test_a_bad_seed_stops_before_any_work(seed, tmp_path):
    env = dict(os.environ, SEED=seed, DEMO_DIR=str(tmp_path / "demo"), CKPT_DIR=str(tmp_path / "ckpt"),
               PYTHON="false")  # any Python call would fail differently
    out = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], env=env, capture_output=True, text=True)
    if seed == "":  # empty means the default seed; it then reaches the (disabled) Python and fails there
        assert "SEED must be" not in out.stderr
        return
    assert out.returncode == 2 and f"SEED must be a whole number, got '{seed}'" in out.stderr
    assert not (tmp_path / "demo").exists() and not (tmp_path / "ckpt").exists()
