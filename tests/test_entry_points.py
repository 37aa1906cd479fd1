"""The entry points on inputs they cannot use: one ``error: ...`` line (exit 2) that names the problem, before any
model is built where the input can be checked first; and schedules that validate also run, with counts of real
tokens (issue 16, items 5-7, 9 and 10).

Every command runs as its user types it (``python -m ...`` / ``python benchmarks/...``), all of them in one fresh
process (``cli_driver``: ``runpy`` as ``python -m`` does, each command with its own stdout, stderr, stdin and exit
code), on a tiny checkpoint built here: 4 layers, 16 vision tokens (a 4 x 4 patch grid), schedule ``inject 2, prune
after 2 and 3 (keep 8, 4), exit 4``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from cli_driver import cmd, run_commands
from train_fixtures import REPO, TINY_SCHEDULE, build_gqa_eval, free_port, run_script

QUESTION = "What digit is this?"
HELP_MODULES = ("llava.serve.gradio_web_server", "llava.serve.cli", "llava.eval.efficiency", "llava.model.convert",
                "llava.eval.run_benchmark", "llava.analysis.kept_tokens", "llava.train.train")


@pytest.fixture(scope="module")
def world(tiny_assets, tmp_path_factory) -> dict[str, Path]:
    """Our checkpoint, the same one exported to llava-hf, a copy with a truncated weights file, a GPT-2, a GQA
    data root, a file, a non-empty folder."""
    from transformers import AutoTokenizer, CLIPImageProcessor, GPT2Config, GPT2LMHeadModel

    from llava.model.convert import to_hf
    from llava.train.train import build_model, parse_args

    root = tmp_path_factory.mktemp("entry")
    ours = root / "ours"
    args = parse_args(["--model_name_or_path", tiny_assets["llm"], "--vision_tower", tiny_assets["clip"],
                       "--output_dir", str(root / "train"), "--reduction", "tiny", "--reduction_overrides",
                       TINY_SCHEDULE, "--report_to", "none"])
    torch.manual_seed(0)
    build_model(*args).eval().save_pretrained(ours)
    AutoTokenizer.from_pretrained(tiny_assets["llm"]).save_pretrained(ours)
    CLIPImageProcessor.from_pretrained(tiny_assets["clip"]).save_pretrained(ours)
    to_hf(str(ours), str(root / "llava-hf"), drop_schedule=True)
    corrupt = root / "corrupt"
    shutil.copytree(ours, corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:20_000])  # an interrupted copy
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(root / "gpt2")
    (root / "a-file").write_text("not a folder")
    (root / "notes").mkdir()
    (root / "notes" / "notes.txt").write_text("keep me")
    data = build_gqa_eval(root / "data")
    return {"root": root, "ours": ours, "hf": root / "llava-hf", "corrupt": corrupt, "gpt2": root / "gpt2",
            "llm": Path(tiny_assets["llm"]), "clip": Path(tiny_assets["clip"]), "file": root / "a-file",
            "notes": root / "notes", "data": data, "gqa": data / "gqa",
            "image": Path(tiny_assets["images"]) / "0000.png", "out": root / "out"}


@pytest.fixture(scope="module")
def runs(world) -> dict:
    """Every command line of the tests below, run in ONE fresh process (imports paid once), the ``--help`` runs
    first so that a warning printed once per process would show in theirs. Results by name."""
    held = socket.socket()  # a port another server holds
    held.bind(("127.0.0.1", 0))
    held.listen()
    calls = {**_help_calls(), **_convert_calls(world), **_loader_calls(world), **_schedule_calls(world),
             **_argument_calls(world, held.getsockname()[1]), **_solve_calls(), **_baseline_calls(world),
             **_chat_calls(world)}
    try:
        # An 8 GB address-space limit: a regression that builds a 7B model fails fast instead of taking the machine.
        results = run_commands(list(calls.values()), world["root"] / "driver", memory_limit_gb=8, timeout=1200)
    finally:
        held.close()
    return dict(zip(calls, results))


def _refused(result, *needles: str) -> None:
    """Exit 2, an error line naming the problem, no traceback, no transformers fallback warning."""
    assert result.rc == 2, result.text[-3000:]
    assert "Traceback" not in result.text and "torchvision" not in result.text, result.text[-3000:]
    assert all(n in result.err for n in needles), result.err[-3000:]


# --------------------------------------------------------------------------------------------------- item 5
def _convert_calls(w) -> dict:
    convert = "llava.model.convert"
    return {
        "from_hf_ours": cmd(convert, "--from-hf", w["ours"], "--out", w["out"]),
        "from_hf_llama": cmd(convert, "--from-hf", w["llm"], "--out", w["out"]),
        "from_hf_clip": cmd(convert, "--from-hf", w["clip"], "--out", w["out"]),
        "from_hf_gpt2": cmd(convert, "--from-hf", w["gpt2"], "--out", w["out"]),
        "from_hf_missing": cmd(convert, "--from-hf", "/nonexistent/llava", "--out", w["out"]),
        "from_hf_typo": cmd(convert, "--from-hf", "typo-dir", "--out", w["out"]),
        "from_hf_hub_id": cmd(convert, "--from-hf", "llava-hf/llava-1.5-7b-hf", "--out", w["out"]),  # no such folder
        "out_file": cmd(convert, "--from-hf", w["hf"], "--out", w["file"]),
        "out_not_empty": cmd(convert, "--from-hf", w["hf"], "--out", w["notes"]),
        "out_under_file": cmd(convert, "--from-hf", w["hf"], "--out", w["file"] / "sub"),
    }


def test_convert_from_hf_says_what_a_folder_is_before_building_anything(world, runs):
    """Our own checkpoint (the wrong direction), a plain LLaMA, a CLIP tower, GPT-2, a path that does not exist:
    each named, nothing built (before: the default 7B LLaVA, about 24 GB, until the OOM killer; a missing path was
    fetched from the hub). ``--out`` that is a file or a folder with files in it: refused before loading."""
    _refused(runs["from_hf_ours"], "is a HiDrop-LLaVA checkpoint (our layout), not a transformers LLaVA", "--to-hf")
    _refused(runs["from_hf_llama"], "is a plain LLaMA language model")
    _refused(runs["from_hf_clip"], "is a CLIP vision tower")
    _refused(runs["from_hf_gpt2"], "is a GPT-2 language model")
    for name in ("from_hf_missing", "from_hf_typo", "from_hf_hub_id"):
        _refused(runs[name], "does not exist", "hub ids are not fetched")
    _refused(runs["out_file"], "is a file")
    _refused(runs["out_not_empty"], "is not empty (it holds notes.txt)")
    _refused(runs["out_under_file"], "is a file, so the folder cannot be created")
    assert (world["notes"] / "notes.txt").read_text() == "keep me" and not world["out"].exists()
    assert runs["out_under_file"].peak_mb < 4000  # nothing model-sized was ever built in the process


def _loader_calls(w) -> dict:
    calls = {}
    for kind in ("hf", "corrupt"):
        folder, out = w[kind], w["root"] / f"loader-{kind}"
        calls |= {
            f"{kind}_cli": cmd("llava.serve.cli", "--model-path", folder, "--image-file", w["image"]),
            f"{kind}_web": cmd("llava.serve.gradio_web_server", "--model-path", folder, "--port", free_port()),
            f"{kind}_eval": cmd("llava.eval.run_benchmark", "--bench", "gqa", "--model-path", folder, "--question-file",
                                w["gqa"] / "llava_gqa_testdev_balanced.jsonl", "--image-folder",
                                w["gqa"] / "data" / "images", "--answers-file", out / "answers.jsonl"),
            f"{kind}_to_hf": cmd("llava.model.convert", "--to-hf", folder, "--out", out / "export"),
            f"{kind}_analysis": cmd("llava.analysis.kept_tokens", "--model-path", folder, "--image", w["image"],
                                    "--question", QUESTION, "--output-dir", out / "kept"),
        }
    return calls


LOADERS = ("cli", "web", "eval", "to_hf", "analysis")


def test_a_llava_hf_folder_is_convert_first_in_every_loader(world, runs):
    """The terminal chat, the web server, the eval runner, the converter's --to-hf and the analysis tools share one
    loading path (before: 'dict' object has no attribute 'to_dict')."""
    hint = f"convert it first with: python -m llava.model.convert --from-hf {world['hf']} --out DIR2"
    for loader in LOADERS:
        _refused(runs[f"hf_{loader}"], hint)
    assert "already a transformers LLaVA (llava-hf) checkpoint" in runs["hf_to_hf"].err


def test_truncated_weights_are_named_in_every_loader(world, runs):
    """Item 6 (before: a bare SafetensorError naming no file, exit 1)."""
    for loader in LOADERS:
        _refused(runs[f"corrupt_{loader}"],
                 f"weights file {world['corrupt'] / 'model.safetensors'} (20,000 bytes) is truncated or corrupt")


# --------------------------------------------------------------------------------------------------- item 7
def _schedule_calls(w) -> dict:
    base = ["--model-path", w["ours"], "--image", w["image"], "--question", QUESTION]
    kept = w["root"] / "kept"
    return {
        "key_set_cli": cmd("llava.serve.cli", "--model-path", w["ours"], "--image-file", w["image"], "--temperature",
                           "0", "--max-new-tokens", "3", "--reduction-override", "key_ratio=0.1", stdin=QUESTION + "\n"),
        "key_set_analysis": cmd("llava.analysis.kept_tokens", *base, "--reduction-override", "key_ratio=0.1",
                                "--output-dir", kept / "key_set"),
        # every 2 x 2 block merges: 4 tokens, fewer than either stage's top-k
        "merge_topk": cmd("llava.analysis.kept_tokens", *base, "--reduction-override",
                          "local_merge=true merge_window=2 merge_threshold=-1", "--output-dir", kept / "merge_topk"),
        "merge_off": cmd("llava.analysis.kept_tokens", *base, "--reduction", "off", "--reduction-override",
                         "local_merge=true merge_window=4 merge_threshold=-1", "--output-dir", kept / "merge_off"),
    }


def test_schedules_that_validate_run_and_kept_counts_count_real_tokens(world, runs):
    """A key set without merging runs on a grid its window does not divide (4 x 4, window 3; before: every answer
    failed with "patch grid side 4 is not divisible by window 3"); with local merging the kept-token stages count
    the merged tokens that exist, never the empty slots that top-k picks as filler (before: "8 of 16" and "4 of 16"
    kept where 4 tokens existed; ``off`` drew "16 of 16" while 1 token was realised)."""
    for name in ("key_set_cli", "key_set_analysis", "merge_topk", "merge_off"):
        assert runs[name].rc == 0 and "Traceback" not in runs[name].text, runs[name].text[-3000:]
    assert runs["key_set_cli"].out.count("ASSISTANT:") == 1
    merged = json.loads((world["root"] / "kept" / "merge_topk" / "kept_tokens.json").read_text())
    per_layer = merged["vision_tokens_per_layer"]  # at the input of layers 1..4
    assert per_layer == [0, 4, 4, 0]
    assert [(s["layer"], s["kept"]) for s in merged["stages"]] == [(None, 4), (2, 4), (3, 4)]
    assert all(stage["kept"] == len(stage["kept_patches"]) for stage in merged["stages"])
    assert merged["stages"][1]["kept"] == per_layer[2]  # what the stage after layer 2 keeps, layer 3 runs on
    assert set(merged["stages"][2]["kept_patches"]) <= set(merged["stages"][0]["kept_patches"])
    off = json.loads((world["root"] / "kept" / "merge_off" / "kept_tokens.json").read_text())
    assert off["realised_avg_vision_tokens"] == 1.0 and [(s["layer"], s["kept"]) for s in off["stages"]] == [(None, 1)]


# --------------------------------------------------------------------------------------------------- item 9
def _argument_calls(w, busy_port: int) -> dict:
    model = ["--model-path", w["ours"]]
    calls = {
        "web_port_in_use": cmd("llava.serve.gradio_web_server", *model, "--port", busy_port),
        "web_port_70000": cmd("llava.serve.gradio_web_server", *model, "--port", "70000"),
        "analysis_out_file": cmd("llava.analysis.kept_tokens", *model, "--image", w["image"], "--question", QUESTION,
                                 "--output-dir", w["file"]),
        "analysis_out_under_file": cmd("llava.analysis.layer_dynamics", *model, "--question-file",
                                       w["gqa"] / "llava_gqa_testdev_balanced.jsonl", "--output-dir", w["file"] / "x"),
    }
    if not torch.cuda.is_available():
        calls["web_cuda"] = cmd("llava.serve.gradio_web_server", *model, "--port", free_port(), "--device", "cuda")
        calls["cli_cuda"] = cmd("llava.serve.cli", *model, "--image-file", w["image"], "--device", "cuda")
    return calls


def test_server_and_tool_arguments_fail_with_one_line_before_the_model_loads(runs):
    res = runs["web_port_in_use"]
    _refused(res, "cannot listen on 127.0.0.1:", "the port is in use")
    assert "GRADIO_SERVER_PORT" not in res.err and "Loading weights" not in res.err  # checked before the load
    _refused(runs["web_port_70000"], "a port is a number from 1 to 65535, got 70000")
    _refused(runs["analysis_out_file"], "--output-dir", "is a file, not a folder")
    _refused(runs["analysis_out_under_file"], "--output-dir", "cannot be created")
    for name in ("web_cuda", "cli_cuda"):
        if name in runs:  # only where this machine has no GPU
            _refused(runs[name], "no CUDA GPU")
            assert "Loading weights" not in runs[name].err


SOLVE = ("--llm", "vicuna-7b", "--solve", "--target-avg", "64", "--prune-layers", "10,14,16,18")


def _solve_calls() -> dict:
    solve = ("llava.eval.efficiency", *SOLVE)
    return {
        "solve_garbage": cmd(*solve, "--override", "garbage"),
        "solve_bad_exit": cmd(*solve, "--override", "exit_layer=99"),
        "solve_keep_counts": cmd(*solve, "--override", "keep_counts=1,2,3,4"),
        "solve_dual": cmd(*solve, "--override", "selection=dual_attention"),
        "solve_conflict": cmd(*solve, "--inject", "9", "--override", "inject_layer=10"),
        "solve_overrides": cmd(*solve, "--override", "inject_layer=9", "exit_layer=25", "topk=hard"),
        "solve_flags": cmd(*solve, "--inject", "9", "--exit", "25"),
    }


def test_efficiency_solve_applies_or_refuses_overrides(runs):
    """``--solve`` used to ignore ``--override`` silently, even ``garbage``."""
    _refused(runs["solve_garbage"], "override 'garbage' is not of the form key=value")
    _refused(runs["solve_bad_exit"], "exit_layer=99")
    _refused(runs["solve_keep_counts"], "keep_counts", "does not go with --solve")
    _refused(runs["solve_dual"], "data-dependent")
    _refused(runs["solve_conflict"], "contradicts --inject 9")
    with_overrides, with_flags = runs["solve_overrides"], runs["solve_flags"]
    assert with_overrides.rc == 0 and with_flags.rc == 0, with_overrides.err + with_flags.err
    line = with_flags.out.splitlines()[0]
    assert line.startswith('schedule: REDUCTION_OVERRIDES="inject_layer=9 ') and "exit_layer=25" in line
    # the same solve as --inject 9 --exit 25, with the extra field carried into the printed schedule
    assert with_overrides.out.splitlines()[0] == line[:-1] + ' topk=hard"'
    assert with_overrides.out.splitlines()[1:] == with_flags.out.splitlines()[1:]


BASELINE_CASES = {  # the GQA fixture holds 6 questions
    "limit_0": (["--limit", "0"], "--limit: must be >= 1"),
    "limit_negative": (["--limit", "-3"], "--limit: must be >= 1"),
    "calibration_0": (["--calibration", "0"], "--calibration: must be >= 1"),
    "batch_size_0": (["--batch-size", "0"], "--batch-size: must be >= 1"),
    "repeats_0": (["--repeats", "0"], "--repeats: must be >= 1"),
    "calibration_all": (["--calibration", "6"], "--calibration 6 leaves no question to score"),
    "calibration_plus_limit": (["--calibration", "4", "--limit", "3"], "is more than the 6 questions"),
    "output_file": (["--output", "FILE"], "is a file"),
    "no_data": (["--data-root", "/nonexistent/data"], "missing GQA question file"),
}


def _baseline_calls(w) -> dict:
    script = str(REPO / "benchmarks" / "compare_baselines.py")
    base = ["--model-path", w["ours"], "--data-root", w["data"]]
    return {f"baselines_{name}": cmd(script, *base, *[str(w["file"]) if a == "FILE" else a for a in extra])
            for name, (extra, _) in BASELINE_CASES.items()}


def test_compare_baselines_checks_its_arguments_before_any_work(runs):
    """Before: --limit 0 / --calibration 0 crashed in statistics, --batch-size 0 in range(), --repeats 0 in median,
    --limit -3 ran every question, and an --output file failed after all the work."""
    for name, (_, needle) in BASELINE_CASES.items():
        _refused(runs[f"baselines_{name}"], needle)
        assert "Loading weights" not in runs[f"baselines_{name}"].err


# --------------------------------------------------------------------------------------------------- item 10
def _help_calls() -> dict:
    return {f"help_{m}": cmd(m, "--help") for m in HELP_MODULES}


def test_no_entry_point_prints_the_torchvision_fallback_warning(runs):
    """transformers warns once per process when ``CLIPImageProcessor`` falls back to its PIL class; every entry
    point printed it, even for --help. Here no command of the whole run prints it (``_refused`` checks it too)."""
    for name, res in runs.items():
        if name.startswith("help_"):
            assert res.rc == 0 and "usage:" in res.out, (name, res.text[-2000:])
        assert "torchvision" not in res.err, (name, res.err[-2000:])


def _chat_calls(w) -> dict:
    chat = ["--model-path", w["ours"], "--image-file", w["image"], "--temperature", "0"]
    return {"chat_default": cmd("llava.serve.cli", *chat, stdin=QUESTION + "\n"),
            "chat_explicit": cmd("llava.serve.cli", *chat, "--max-new-tokens", "500", stdin=QUESTION + "\n")}


def test_cli_default_answer_length_fits_the_context_without_a_note(runs):
    """The default --max-new-tokens (512) exceeds what this model's 512-token context leaves after the prompt: the
    default is what fits, with no note (before: a note on every turn). An explicit --max-new-tokens 500 is still
    capped to the room, with the note."""
    default, explicit = runs["chat_default"], runs["chat_explicit"]
    assert default.rc == 0 and default.out.count("ASSISTANT:") == 1, default.text[-3000:]
    assert "note:" not in default.err
    assert explicit.rc == 0 and "capped at" in explicit.err and "(--max-new-tokens 500)" in explicit.err


def test_eval_script_limit_runs_scores_and_says_so(world, tmp_path):
    """``LIMIT=3 bash scripts/eval/gqa.sh``: 3 of the 6 questions answered, merged and scored; GQA's scorer counts
    only those (before: "missing predictions for 3 balanced question(s)") and prints a subset line."""
    env = {"MODEL_PATH": str(world["ours"]), "DATA_ROOT": str(world["data"]), "MAX_NEW_TOKENS": "3", "LIMIT": "3",
           "RESULTS_DIR": str(tmp_path / "results"), "REDUCTION_OVERRIDES": ""}
    proc = run_script("eval/gqa.sh", env)
    assert "GQA subset: the first 3 of the 6 questions" in proc.stdout, proc.stdout[-2000:]
    answers = world["gqa"] / "answers" / "llava_gqa_testdev_balanced" / "ours-limit3" / "merge.jsonl"
    assert len(answers.read_text().splitlines()) == 3
    result = json.loads((tmp_path / "results" / "ours-limit3" / "gqa.json").read_text())
    assert result["num_scored"] == 3 and result["details"]["subset"] == {"limit": 3, "questions": 3, "of": 6}
    bad = subprocess.run(["bash", str(REPO / "scripts" / "eval" / "gqa.sh")], cwd=REPO, capture_output=True,
                         text=True, env={**os.environ, **env, "LIMIT": "abc"})
    assert bad.returncode == 2 and "LIMIT must be a whole number" in bad.stderr
