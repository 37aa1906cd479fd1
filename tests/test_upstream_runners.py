"""Upstream LLaVA's answer writers (llava.eval.model_vqa_loader, model_vqa, model_vqa_science, model_vqa_mmbench) with
the flags upstream's scripts pass (typed out here), on a tiny checkpoint in upstream's layout: upstream's answer
lines, the answers ``model.generate`` gives for upstream's own prompt, resume, chunks, and our scorers and
upstream's scorer commands reading the files. Where upstream fixed the answer length at 1,024 tokens, the tests
add ``--max_new_tokens`` (ours): a random tiny model rarely ends an answer by itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.eval import eval_pope, model_vqa, model_vqa_loader, model_vqa_mmbench, model_vqa_science
from llava.mm_utils import load_image_from_base64, process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model

FIX = Path(__file__).parent / "fixtures" / "eval"
UPSTREAM_KEYS = {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}


@pytest.fixture(scope="module")
def model(upstream_checkpoints):
    return load_pretrained_model(upstream_checkpoints["upstream"], None, "llava-v1.5-7b")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _images(folder: Path, names, source: str) -> None:
    """The question files' images, as copies of one digit picture."""
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, folder / name)


def _upstream_answer(model, qs: str, image: Image.Image | None, max_new_tokens: int) -> str:
    """What upstream's writers do for one question: template, tokenizer_image_token, process_images, generate."""
    tokenizer, llava, processor, _ = model
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], qs)
    conv.append_message(conv.roles[1], None)
    input_ids = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
    images = None if image is None else process_images([image], processor, llava.config)
    out = llava.generate(input_ids, images=images, do_sample=False, temperature=0, max_new_tokens=max_new_tokens)
    return tokenizer.batch_decode(out, skip_special_tokens=True)[0].strip()


def test_model_vqa_loader_as_the_pope_script_runs_it(upstream_checkpoints, model, tmp_path, capsys) -> None:
    questions = FIX / "pope" / "llava_pope_test.jsonl"
    lines = _lines(questions)[:4]
    qfile = tmp_path / "llava_pope_test.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in lines))
    digit = f"{upstream_checkpoints['images']}/0001.png"
    _images(tmp_path / "val2014", {q["image"] for q in lines}, digit)
    answers = tmp_path / "answers" / "llava-v1.5-7b.jsonl"
    argv = ["--model-path", upstream_checkpoints["upstream"],
            "--question-file", str(qfile),
            "--image-folder", str(tmp_path / "val2014"),
            "--answers-file", str(answers),
            "--temperature", "0",
            "--conv-mode", "vicuna_v1",
            "--max_new_tokens", "6"]
    model_vqa_loader.main(argv)
    out = _lines(answers)
    assert [a["question_id"] for a in out] == [q["question_id"] for q in lines]
    assert all(UPSTREAM_KEYS <= set(a) for a in out) and {a["model_id"] for a in out} == {"llava-v1.5-7b"}
    assert [a["prompt"] for a in out] == [q["text"] for q in lines]
    image = Image.open(digit).convert("RGB")
    assert out[0]["text"] == _upstream_answer(model, DEFAULT_IMAGE_TOKEN + "\n" + lines[0]["text"], image, 6)
    model_vqa_loader.main(argv)  # a rerun resumes: nothing is answered twice
    assert len(_lines(answers)) == len(lines)
    # Chunks, as the multi-GPU scripts launch them: contiguous pieces that together answer every question.
    for idx in range(2):
        model_vqa_loader.main([*argv[:6], "--answers-file", str(tmp_path / "chunks" / f"2_{idx}.jsonl"),
                               "--num-chunks", "2", "--chunk-idx", str(idx), "--temperature", "0", "--max_new_tokens", "6"])
    merged = [a for idx in range(2) for a in _lines(tmp_path / "chunks" / f"2_{idx}.jsonl")]
    assert [a["question_id"] for a in merged] == [q["question_id"] for q in lines]
    # upstream's scorer command on the file (our POPE scorer underneath)
    capsys.readouterr()
    eval_pope.main(["--annotation-dir", str(FIX / "pope" / "coco"), "--question-file", str(qfile),
                    "--result-file", str(answers)])
    assert "POPE" in capsys.readouterr().out


def test_model_vqa_and_science_and_mmbench(upstream_checkpoints, model, tmp_path) -> None:
    digit = f"{upstream_checkpoints['images']}/0002.png"
    ckpt = upstream_checkpoints["upstream"]
    # model_vqa (LLaVA-Bench / MM-Vet style), answers capped at upstream's 1,024 tokens
    qfile = tmp_path / "questions.jsonl"
    qfile.write_text(json.dumps({"question_id": 7, "image": "a.png", "text": "Describe the image."}) + "\n")
    _images(tmp_path / "img", ["a.png"], digit)
    model_vqa.main(["--model-path", ckpt, "--question-file", str(qfile), "--image-folder", str(tmp_path / "img"),
                    "--answers-file", str(tmp_path / "vqa.jsonl"), "--temperature", "0", "--conv-mode", "vicuna_v1",
                    "--max_new_tokens", "6",
                    "--reduction", "tiny", "--reduction-override", "inject_layer=2 prune_layers=2,3 keep_counts=8,4 exit_layer=4"])
    (vqa,) = _lines(tmp_path / "vqa.jsonl")
    assert UPSTREAM_KEYS <= set(vqa) and vqa["prompt"] == "Describe the image."
    assert json.loads((tmp_path / "vqa.jsonl.run.json").read_text())["reduction"]["prune_layers"] == [2, 3]

    # model_vqa_science --single-pred-prompt: text-only questions without an image, upstream's recorded prompt
    sqa = tmp_path / "scienceqa"
    items = json.loads((FIX / "sqa" / "llava_test_CQM-A.json").read_text())[3:5]  # p4 (image), p5 (text only)
    (sqa / "llava_test_CQM-A.json").parent.mkdir()
    (sqa / "llava_test_CQM-A.json").write_text(json.dumps(items))
    _images(sqa / "images" / "test", [i["image"] for i in items if "image" in i], digit)
    model_vqa_science.main(["--model-path", ckpt, "--question-file", str(sqa / "llava_test_CQM-A.json"),
                            "--image-folder", str(sqa / "images" / "test"), "--answers-file", str(sqa / "a.jsonl"),
                            "--single-pred-prompt", "--temperature", "0", "--conv-mode", "vicuna_v1",
                            "--max_new_tokens", "6"])
    got = {a["question_id"]: a for a in _lines(sqa / "a.jsonl")}
    suffix = "\nAnswer with the option's letter from the given choices directly."
    image_q, text_q = items
    assert got[image_q["id"]]["prompt"].startswith("<image>\n") and got[image_q["id"]]["prompt"].endswith(suffix)
    text_prompt = text_q["conversations"][0]["value"].replace("<image>", "").strip() + suffix
    assert got[text_q["id"]]["prompt"] == text_prompt
    assert got[text_q["id"]]["text"] == _upstream_answer(model, text_prompt, None, 6)

    # model_vqa_mmbench --single-pred-prompt --lang cn --all-rounds: one answer per rotation of the options
    tsv = FIX / "mmbench" / "mmbench_dev_20230712.tsv"
    rows = tsv.read_text().splitlines()
    small = tmp_path / "mmbench.tsv"
    small.write_text("\n".join(rows[:3]) + "\n")  # header + two questions (4 and 2 options)
    model_vqa_mmbench.main(["--model-path", ckpt, "--question-file", str(small),
                            "--answers-file", str(tmp_path / "mmb.jsonl"), "--single-pred-prompt", "--lang", "cn",
                            "--all-rounds", "--temperature", "0", "--conv-mode", "vicuna_v1", "--max_new_tokens", "6"])
    mmb = _lines(tmp_path / "mmb.jsonl")
    assert [(a["question_id"], a["round_id"]) for a in mmb] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]
    assert mmb[1]["options"] == ["red", "green", "yellow", "blue"] and mmb[1]["option_char"] == ["B", "C", "D", "A"]
    assert mmb[1]["prompt"] == "What color is the sky?\nA. red\nB. green\nC. yellow\nD. blue"  # no instruction
    first = rows[1].split("\t")
    image = load_image_from_base64(first[-1])
    with torch.no_grad():
        expected = _upstream_answer(model, f"{DEFAULT_IMAGE_TOKEN}\n{mmb[1]['prompt']}\n请直接回答选项字母。", image, 6)
    assert mmb[1]["text"] == expected
    with pytest.raises(SystemExit, match="num_beams"):
        model_vqa_mmbench.main(["--model-path", ckpt, "--question-file", str(small), "--answers-file",
                                str(tmp_path / "x.jsonl"), "--num_beams", "3"])
