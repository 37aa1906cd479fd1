"""Training runs that used to lose work or report a wrong result with exit 0, through the real scripts
(2 CPU ranks over gloo, DeepSpeed ZeRO-3 unless said otherwise)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from train_fixtures import REPO, build_gqa_eval, eval_gqa, finetune_env, logged_losses, run_script, script_env

pytestmark = pytest.mark.slow


def _fails_with(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode != 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert message in proc.stderr, proc.stderr[-4000:]


# ------------------------------------------------------------------ 1. LoRA under ZeRO-3, 5. reruns
@pytest.fixture(scope="module")
def lora_run(tiny_assets, tiny_pretrained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora")
    run_script("finetune.sh", finetune_env(tiny_assets, tiny_pretrained, LORA="1", MAX_STEPS="2", SAVE_STEPS="2",
                                           OUTPUT_DIR=str(out)))
    return out


def test_lora_under_zero3_saves_the_trained_weights(tiny_assets, lora_run):
    """The final adapter and projector equal DeepSpeed's own reconstruction of the ZeRO-3 partitions."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from llava.model.builder import load_pretrained_model

    truth = get_fp32_state_dict_from_zero_checkpoint(str(lora_run / "checkpoint-2"))
    trained = {k: v for k, v in truth.items() if "lora_" in k or "mm_projector" in k}
    assert sum("lora_B" in k for k in trained) > 0 and sum("mm_projector" in k for k in trained) == 4
    _, model, _, _ = load_pretrained_model(str(lora_run), model_base=tiny_assets["llm"], merge_lora=False)
    loaded = dict(model.named_parameters())
    for name, value in trained.items():
        torch.testing.assert_close(loaded[name].float(), value, rtol=0, atol=1e-6, msg=name)
    # LoRA's B starts at zero: a non-zero B proves these are trained weights, not a fresh init
    assert max(float(v.detach().abs().max()) for k, v in trained.items() if "lora_B" in k) > 0
    # the intermediate checkpoint carries the projector and tokenizer too, so it evaluates on its own
    assert {"non_lora_trainables.bin", "tokenizer.json", "config.json"} <= {p.name for p in (lora_run / "checkpoint-2").iterdir()}


def test_lora_checkpoints_evaluate_through_the_scripts_with_model_base(tiny_assets, lora_run, tmp_path):
    data = build_gqa_eval(tmp_path / "eval")
    for path in (lora_run, lora_run / "checkpoint-2"):
        eval_gqa(data, path, MODEL_BASE=tiny_assets["llm"], CKPT=f"lora-{path.name}")


def test_rerun_into_a_folder_with_checkpoints_is_refused(tiny_assets, tiny_pretrained, lora_run):
    def snapshot() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in lora_run.iterdir() if p.name != ".hidrop-train.lock"}

    before = snapshot()
    proc = run_script("finetune.sh", finetune_env(tiny_assets, tiny_pretrained, LORA="1", MAX_STEPS="2",
                                                  OUTPUT_DIR=str(lora_run)), check=False)
    _fails_with(proc, "already holds checkpoint-2")
    assert "OVERWRITE=1" in proc.stderr and "--resume_from_checkpoint" in proc.stderr
    assert snapshot() == before


# ------------------------------------------------------------------ 3. non-finite losses and settings
def test_a_non_finite_loss_stops_the_run(tiny_assets, tiny_pretrained, tmp_path):
    # lr 0 on the warmup step, then 1e30: the weights blow up and the next loss is not finite.
    proc = run_script("finetune.sh", finetune_env(tiny_assets, tiny_pretrained, LR="1e30", MAX_STEPS="4",
                                                  OUTPUT_DIR=str(tmp_path / "nan")), check=False)
    _fails_with(proc, "non-finite loss")
    assert not (tmp_path / "nan" / "model.safetensors").exists()  # nothing saved as if it had trained


@pytest.mark.parametrize("override", ["score_temperature=nan", "learn_threshold=true budget_weight=nan"])
def test_non_finite_schedule_fields_are_refused(tiny_assets, tiny_pretrained, tmp_path, override):
    env = finetune_env(tiny_assets, tiny_pretrained, MAX_STEPS="2", OUTPUT_DIR=str(tmp_path / "x"),
                       REDUCTION_OVERRIDES=f"inject_layer=2 prune_layers=2,3 keep_counts=8,4 exit_layer=4 {override}")
    proc = run_script("finetune.sh", env, check=False)
    _fails_with(proc, "must be a finite number")


def test_stages_keeping_one_token_train_with_finite_losses(tiny_assets, tiny_pretrained, tmp_path):
    out = tmp_path / "one"
    env = finetune_env(tiny_assets, tiny_pretrained, MAX_STEPS="3", OUTPUT_DIR=str(out),
                       REDUCTION_OVERRIDES="inject_layer=2 prune_layers=2,3 keep_counts=1,1 exit_layer=4")
    run_script("finetune.sh", env)
    losses = logged_losses(out)
    assert sorted(losses) == [1, 2, 3] and all(0 < v < 100 for v in losses.values()), losses
    state = json.loads((out / "trainer_state.json").read_text())
    assert all(h["grad_norm"] < 1e6 for h in state["log_history"] if "grad_norm" in h)


# ------------------------------------------------------------------ 6, 7. data that trains nothing
def test_empty_data_file_is_an_error(tiny_assets, tiny_pretrained, tmp_path):
    data = tmp_path / "empty.json"
    data.write_text("[]")
    proc = run_script("finetune.sh", finetune_env(tiny_assets, tiny_pretrained, DATA_PATH=str(data),
                                                  OUTPUT_DIR=str(tmp_path / "o")), check=False)
    _fails_with(proc, "holds no records")
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_missing_image_folder_is_an_error_even_when_skipping(tiny_assets, tmp_path):
    env = {"MODEL_BASE": tiny_assets["llm"], "VISION_TOWER": tiny_assets["clip"], "DATA_PATH": tiny_assets["pretrain"],
           "IMAGE_FOLDER": "/nonexistent", "ON_BAD_SAMPLE": "skip", "OUTPUT_DIR": str(tmp_path / "o")}
    proc = run_script("pretrain.sh", env, check=False)
    _fails_with(proc, "image folder /nonexistent does not exist")


# ------------------------------------------------------------------ 8. one skip total over workers and ranks
def test_skip_counts_are_one_total_over_workers_and_ranks(tiny_assets, tiny_pretrained, tmp_path):
    records = json.loads(Path(tiny_assets["finetune"]).read_text())
    images = Path(tiny_assets["images"])
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    bad = [{"id": f"gone{i}", "image": f"gone{i}.png", "conversations": records[0]["conversations"]} for i in range(3)]
    bad.append({"id": "corrupt", "image": str(tmp_path / "corrupt.png"), "conversations": records[0]["conversations"]})
    data = tmp_path / "with_bad.json"
    data.write_text(json.dumps(records[:20] + bad + records[20:]))
    out = tmp_path / "skip"
    env = finetune_env(tiny_assets, tiny_pretrained, DATA_PATH=str(data), IMAGE_FOLDER=str(images), EPOCHS="1",
                       WORKERS="2", ON_BAD_SAMPLE="skip", OUTPUT_DIR=str(out))
    proc = run_script("finetune.sh", env)
    log = proc.stdout + proc.stderr
    summaries = [line for line in log.splitlines() if "skipped 4 of" in line]
    assert len(summaries) == 1, log[-4000:]  # one total, not one tally per rank
    assert "image_missing: 3" in summaries[0] and "image_unreadable: 1" in summaries[0]
    assert "no bad samples skipped" not in log
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert history[-1]["skipped_samples"] == 4 and history[-1]["skipped_by_reason"] == {
        "image_missing": 3, "image_unreadable": 1}
    assert [h["skipped_samples"] for h in history if "loss" in h][-1] == 4


# ------------------------------------------------------------------ 4. launcher death and concurrent runs
def _rank_pids(marker: str) -> list[int]:
    """Live python processes running llava.train.train with ``marker`` on their command line."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "llava.train.train" in cmd and marker in cmd and "torch.distributed.run" not in cmd:
            pids.append(int(entry))
    return pids


def test_ranks_die_with_their_launcher_and_runs_do_not_share_a_folder(tiny_assets, tiny_pretrained, tmp_path):
    out = tmp_path / "killed"
    env = finetune_env(tiny_assets, tiny_pretrained, MAX_STEPS="100000", OUTPUT_DIR=str(out))
    log = open(tmp_path / "a.log", "w")
    launcher = subprocess.Popen(["bash", str(REPO / "scripts" / "finetune.sh")], env=script_env(**env),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 240
        while "/100000" not in (tmp_path / "a.log").read_text():
            assert launcher.poll() is None, (tmp_path / "a.log").read_text()[-3000:]
            assert time.time() < deadline, "the run never started training"
            time.sleep(1)
        assert len(_rank_pids(str(out))) == 2

        second = run_script("finetune.sh", dict(env, MAX_STEPS="2"), check=False, timeout=240)
        _fails_with(second, "another training run")
        assert launcher.poll() is None  # the first run is untouched

        os.killpg(launcher.pid, signal.SIGKILL)  # the whole launcher group, as a scheduler or `kill -9 -PGID` does
        launcher.wait()
        deadline = time.time() + 20
        while _rank_pids(str(out)) and time.time() < deadline:
            time.sleep(0.5)
        assert _rank_pids(str(out)) == [], "ranks outlived their launcher"
    finally:
        log.close()
        for pid in _rank_pids(str(out)):
            os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    from llava.train.run_guard import OutputDirError, OutputDirLock

    # The dead run's lock goes with it. An exiting process drops its command line before its files, so allow
    # the last rank a moment to finish dying.
    deadline = time.time() + 10
    while True:
        try:
            OutputDirLock(out).acquire().release()
            break
        except OutputDirError:
            assert time.time() < deadline, "the killed run still holds the output directory"
            time.sleep(0.2)


def test_parallel_vision_is_switched_off_under_zero3(tiny_assets, tiny_pretrained, tmp_path):
    """Asked for explicitly, decoupling still stands down under ZeRO-3 (its gathers assume one stream): the run
    trains and says why, once."""
    proc = run_script("finetune.sh", finetune_env(tiny_assets, tiny_pretrained, MAX_STEPS="2",
                                                  OUTPUT_DIR=str(tmp_path / "pv")), "--parallel_vision", "on")
    log = proc.stdout + proc.stderr
    assert log.count("parallel vision decoupling is off under DeepSpeed ZeRO-3") == 1, log[-3000:]
    assert sorted(logged_losses(tmp_path / "pv")) == [1, 2]
