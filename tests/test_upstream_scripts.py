"""Upstream LLaVA's script paths: scripts/v1_5/eval/<bench>.sh for the paper's 11 benchmarks with the converters and
scorers they call, scripts/v1_5/{pretrain,finetune,...}.sh through llava/train/train_mem.py, the DeepSpeed configs
and scripts/merge_lora_weights.py.

- Every eval script runs with a stand-in ``$PYTHON`` that records each command it is given; every recorded command is
  then parsed by the real program's own parser (the runner flags upstream's scripts pass, the converters' and
  scorers' flags), so a renamed flag fails here.
- gqa.sh runs end to end on a tiny checkpoint in upstream's layout, finishing with ``eval/eval.py --tier
  testdev_balanced`` where upstream expects GQA's official scorer. That scorer cannot be downloaded here; the file
  put there is a stand-in reading exactly what the official one reads: ``{tier}_predictions.json`` as a list of
  ``{"questionId", "prediction"}``, every balanced question of ``{tier}_questions.json`` answered, exact match.
- The training scripts' flags (PRINT_ARGS_ONLY=1) parse through our trainer's parser, ``--evaluation_strategy``
  included; train_mem.py runs as a file path.
- A LoRA checkpoint merged by merge_lora_weights.py loads as a full checkpoint with the logits of the unmerged one.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_fixtures import REPO, build_gqa_eval

EVAL_SCRIPTS = REPO / "scripts" / "v1_5" / "eval"
BENCHES = ("gqa", "vqav2", "vizwiz", "sqa", "textvqa", "pope", "mme", "mmbench", "mmbench_cn", "seed", "mmstar")
TRAIN_SCRIPTS = ("pretrain", "finetune", "finetune_lora", "finetune_task", "finetune_task_lora")
RUNNERS = {"model_vqa_loader", "model_vqa", "model_vqa_science", "model_vqa_mmbench"}

RECORDER = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps(args) + "\\n")
for flag in ("--answers-file",):  # the runner's output, which the scripts concatenate
    if flag in args:
        path = args[args.index(flag) + 1]
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        open(path, "a").close()
"""


def _parser_of(command: list[str]):
    """The argparse parser of the program a recorded command runs, and the arguments to give it."""
    if command[0] == "-m":
        module, args = command[1], command[2:]
        name = module.rsplit(".", 1)[-1]
        if name in RUNNERS:
            from llava.eval import upstream_runner

            return upstream_runner.build_parser(name), args
        return importlib.import_module(module).build_parser(), args
    path, args = command[0], command[1:]
    spec = importlib.util.spec_from_file_location(f"script_{Path(path).stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_parser(), args


@pytest.mark.parametrize("bench", BENCHES)
def test_eval_script_commands_parse(bench: str, tmp_path: Path) -> None:
    record = tmp_path / "commands.jsonl"
    stub = tmp_path / "python"
    stub.write_text(RECORDER.format(python="/usr/bin/env python3"))
    stub.chmod(0o755)
    (tmp_path / "eval" / "gqa" / "data").mkdir(parents=True)  # gqa.sh cd's there for the official scorer
    env = dict(os.environ, PYTHON=str(stub), RECORD=str(record), EVAL_DIR=str(tmp_path / "eval"),
               MODEL_PATH="./checkpoints/llava-v1.5-13b", CUDA_VISIBLE_DEVICES="0,1", REDUCTION="tok64",
               REDUCTION_OVERRIDES="exit_layer=24")
    proc = subprocess.run(["bash", str(EVAL_SCRIPTS / f"{bench}.sh")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    commands = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(commands) >= 2  # the answers, then the conversion or the score
    for command in commands:
        parser, args = _parser_of(command)
        parsed = parser.parse_args(args)
        if command[:2] == ["-m", "llava.eval.model_vqa_loader"]:
            assert (parsed.temperature, parsed.conv_mode) == (0.0, "vicuna_v1")  # upstream's flags, as written
            assert parsed.reduction == "tok64" and parsed.reduction_override == ["exit_layer=24"]
            if bench in ("gqa", "vqav2", "seed"):  # one chunk per GPU
                assert parsed.num_chunks == 2
    runner = commands[0]
    assert runner[1] == {"sqa": "llava.eval.model_vqa_science", "mmbench": "llava.eval.model_vqa_mmbench",
                         "mmbench_cn": "llava.eval.model_vqa_mmbench",
                         "mmstar": "llava.eval.run_benchmark"}.get(bench, "llava.eval.model_vqa_loader")


def test_gqa_script_end_to_end_with_the_official_scorer_interface(upstream_checkpoints, tmp_path: Path) -> None:
    root = build_gqa_eval(tmp_path / "eval")
    gqa_data = root / "gqa" / "data"
    (gqa_data / "eval").mkdir()
    (gqa_data / "eval" / "eval.py").write_text(
        "import argparse, json\n"
        "p = argparse.ArgumentParser(); p.add_argument('--tier', default='val'); a = p.parse_args()\n"
        "questions = json.load(open(f'{a.tier}_questions.json'))\n"
        "predictions = {p['questionId']: p['prediction'] for p in json.load(open(f'{a.tier}_predictions.json'))}\n"
        "for qid, q in questions.items():\n"
        "    if q['isBalanced'] and qid not in predictions:\n"
        "        raise Exception('missing predictions')\n"
        "scores = [float(predictions[qid] == q['answer']) for qid, q in questions.items() if q['isBalanced']]\n"
        "print(f'Accuracy: {100 * sum(scores) / len(scores):.2f}%')\n")
    env = dict(os.environ, PYTHON=sys.executable, EVAL_DIR=str(root), MODEL_PATH=upstream_checkpoints["upstream"],
               MAX_NEW_TOKENS="3", HF_HUB_OFFLINE="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run(["bash", str(EVAL_SCRIPTS / "gqa.sh")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Accuracy:" in proc.stdout
    answers = [json.loads(line) for line in
               (root / "gqa" / "answers" / "llava_gqa_testdev_balanced" / "llava-v1.5-7b" / "merge.jsonl").open()]
    assert {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"} <= set(answers[0])
    predictions = json.loads((gqa_data / "testdev_balanced_predictions.json").read_text())
    assert [p["questionId"] for p in predictions] == [a["question_id"] for a in answers]


@pytest.mark.parametrize("script", TRAIN_SCRIPTS)
def test_training_script_flags_parse(script: str) -> None:
    from llava.train.train import parse_args

    env = dict(os.environ, PRINT_ARGS_ONLY="1", REDUCTION="tok64")
    printed = subprocess.run(["bash", str(REPO / "scripts" / "v1_5" / f"{script}.sh")], env=env, capture_output=True,
                             text=True, check=True).stdout.splitlines()
    assert printed[printed.index("--tf32") + 1] == "True"
    if not torch.cuda.is_available():  # an Ampere-GPU setting: transformers refuses it on a machine without CUDA
        i = printed.index("--tf32")
        printed = printed[:i] + printed[i + 2:]
    model_args, data_args, training_args = parse_args(printed)
    assert model_args.version == ("plain" if script == "pretrain" else "v1")
    assert str(getattr(training_args.eval_strategy, "value", training_args.eval_strategy)) == "no"
    assert training_args.lora_enable == script.endswith("lora") and model_args.reduction == "tok64"
    assert (REPO / training_args.deepspeed).is_file()
    config = json.loads((REPO / training_args.deepspeed).read_text())
    assert config["zero_optimization"]["stage"] == (2 if script == "pretrain" else 3)


def test_train_mem_runs_as_a_file_path(capsys) -> None:
    argv = sys.argv
    sys.argv = ["llava/train/train_mem.py", "--help"]
    try:
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(REPO / "llava" / "train" / "train_mem.py"), run_name="__main__")
    finally:
        sys.argv = argv
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--evaluation_strategy" in out and "--lazy_preprocess" in out and "--reduction" in out
    for name in ("zero2.json", "zero3.json", "zero3_offload.json"):
        json.loads((REPO / "scripts" / name).read_text())


def test_merge_lora_weights(tiny_assets, tmp_path: Path) -> None:
    from llava.model.builder import checkpoint_kind, load_pretrained_model
    from llava.train.train import build_model, parse_args

    args = parse_args(["--model_name_or_path", tiny_assets["llm"], "--vision_tower", tiny_assets["clip"],
                       "--output_dir", str(tmp_path / "unused"), "--lora_enable", "True", "--lora_r", "4",
                       "--lora_alpha", "8", "--report_to", "none"])
    torch.manual_seed(1)
    model = build_model(*args)
    for n, p in model.named_parameters():
        if "lora_B" in n or "mm_projector" in n:
            torch.nn.init.normal_(p, std=0.3)  # a trained-looking adapter and projector
    lora = tmp_path / "llava-v1.5-7b-lora"
    model.save_pretrained(lora)
    model.base_model.model.config.save_pretrained(lora)
    torch.save({n.removeprefix("base_model.model."): p.detach() for n, p in model.named_parameters()
                if "mm_projector" in n}, lora / "non_lora_trainables.bin")
    spec = importlib.util.spec_from_file_location("merge_lora_weights", REPO / "scripts" / "merge_lora_weights.py")
    merge = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(merge)
    out = tmp_path / "merged"
    assert merge.main(["--model-path", str(lora), "--model-base", tiny_assets["llm"], "--save-model-path", str(out),
                       "--dtype", "float32"]) == 0
    assert checkpoint_kind(str(out)) == "full"
    tok, merged, _, _ = load_pretrained_model(str(out), None, None)
    _, unmerged, _, _ = load_pretrained_model(str(lora), tiny_assets["llm"], None, merge_lora=False)
    ids = torch.tensor([[tok.bos_token_id, 5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, unmerged(ids).logits, atol=1e-4, rtol=1e-4)
    assert merge.main(["--model-path", str(out), "--model-base", tiny_assets["llm"], "--save-model-path",
                       str(tmp_path / "again")]) == 2  # a full checkpoint: nothing to merge


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_converter_and_scorer_commands_on_upstream_answer_files(tmp_path: Path, capsys) -> None:
    """Each converter and scorer command the v1.5 scripts call, run on upstream-shaped answer files."""
    import shutil

    from openpyxl import load_workbook

    from llava.eval import eval_science_qa, eval_textvqa

    fix = REPO / "tests" / "fixtures" / "eval"
    # MMBench: the .xlsx upload, one row per TSV row, the prediction after the options
    (tmp_path / "mmb").mkdir()
    shutil.copy(fix / "mmbench" / "answers.jsonl", tmp_path / "mmb" / "ckpt.jsonl")
    _script("convert_mmbench_for_submission").main([
        "--annotation-file", str(fix / "mmbench" / "mmbench_dev_20230712.tsv"), "--result-dir", str(tmp_path / "mmb"),
        "--upload-dir", str(tmp_path / "upload"), "--experiment", "ckpt"])
    rows = list(load_workbook(tmp_path / "upload" / "ckpt.xlsx").active.values)
    header = list(rows[0])
    assert header[:7] == ["index", "question", "A", "B", "C", "D", "prediction"] and "image" not in header
    answers = {json.loads(line)["question_id"]: json.loads(line)["text"]
               for line in (fix / "mmbench" / "answers.jsonl").read_text().splitlines()}
    tsv_rows = (fix / "mmbench" / "mmbench_dev_20230712.tsv").read_text().splitlines()[1:]
    assert len(rows) - 1 == len(tsv_rows) and {int(r[0]): r[6] for r in rows[1:]} == answers
    # VQAv2: upstream's --dir/--split/--ckpt layout, every test2015 question in the upload
    vqa = tmp_path / "vqav2"
    (vqa / "answers" / "split" / "ckpt").mkdir(parents=True)
    shutil.copy(fix / "vqav2" / "testdev_answers.jsonl", vqa / "answers" / "split" / "ckpt" / "merge.jsonl")
    shutil.copy(fix / "vqav2" / "llava_vqav2_mscoco_test2015.jsonl", vqa)
    _script("convert_vqav2_for_submission").main(["--dir", str(vqa), "--split", "split", "--ckpt", "ckpt"])
    upload = json.loads((vqa / "answers_upload" / "split" / "ckpt.json").read_text())
    assert len(upload) == len((vqa / "llava_vqav2_mscoco_test2015.jsonl").read_text().splitlines())
    # VizWiz: one normalized answer per test question
    test_questions = [json.loads(line) for line in (fix / "vizwiz" / "llava_test.jsonl").read_text().splitlines()]
    result = tmp_path / "vizwiz.jsonl"
    result.write_text("".join(json.dumps({"question_id": q["question_id"], "text": "Yes."}) + "\n" for q in test_questions))
    _script("convert_vizwiz_for_submission").main([
        "--annotation-file", str(fix / "vizwiz" / "llava_test.jsonl"), "--result-file", str(result),
        "--result-upload-file", str(tmp_path / "vizwiz_upload.json")])
    assert {a["answer"] for a in json.loads((tmp_path / "vizwiz_upload.json").read_text())} == {"yes"}
    # SEED: the accuracy printed, the upload written
    capsys.readouterr()
    _script("convert_seed_for_submission").main([
        "--annotation-file", str(fix / "seed" / "SEED-Bench.json"), "--result-file", str(fix / "seed" / "answers.jsonl"),
        "--result-upload-file", str(tmp_path / "seed_upload.jsonl")])
    assert "SEED-IMG" in capsys.readouterr().out and (tmp_path / "seed_upload.jsonl").read_text().strip()
    # ScienceQA and TextVQA scorers
    eval_science_qa.main(["--base-dir", str(fix / "sqa"), "--result-file", str(fix / "sqa" / "answers.jsonl"),
                          "--output-file", str(tmp_path / "sqa_output.json"),
                          "--output-result", str(tmp_path / "sqa_result.json")])
    assert json.loads((tmp_path / "sqa_result.json").read_text())["bench"] == "sqa"
    assert json.loads((tmp_path / "sqa_output.json").read_text())["p1"] == "B"
    eval_textvqa.main(["--annotation-file", str(fix / "textvqa" / "TextVQA_0.5.1_val.json"),
                       "--result-file", str(fix / "textvqa" / "answers.jsonl")])
    assert "TextVQA" in capsys.readouterr().out
