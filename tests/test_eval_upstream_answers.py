"""Answer files written by upstream LLaVA score exactly like the same answers written by our runner.

Upstream's writers (``model_vqa_loader.py`` / ``model_vqa.py``, ``model_vqa_science.py``,
``model_vqa_mmbench.py``) emit ``question_id, prompt, text, answer_id, model_id, metadata`` (MMBench adds
``round_id, options, option_char``) and none of the fields our runner copies from the question (``uid``,
``image``, ``category``). LLaVA's reference prediction files have the same shape. For each of the 11
benchmarks the same model outputs are written both ways and scored by ``python -m llava.eval.score``; the
results must be identical and equal to the hand-computed score of the per-benchmark tests.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from llava.eval import convert, score
from llava.eval.benchmarks import ScoreInputs, get_benchmark
from llava.eval.benchmarks.base import OPTION_LETTER
from llava.eval.benchmarks.multiple_choice import mmbench_options, mmbench_prompt
from llava.eval.files import EvalDataError, read_json, read_jsonl, read_tsv
from llava.eval.run_benchmark import generate_answers

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "eval")
UPSTREAM_MODEL = "llava-v1.5-7b"


# ------------------------------------------------------------------------------------------- the two writers
class ScriptedBackend:
    """A model whose outputs are fixed in advance, in question order (the runner is called with batch size 1)."""

    def __init__(self, outputs: Sequence[str]) -> None:
        self.outputs = list(outputs)

    def generate(self, texts: Sequence[str], images: Sequence[Any], max_new_tokens: int) -> list[str]:
        return [self.outputs.pop(0) for _ in texts]


def write_runner_answers(path: Path, bench: str, question_file: str, outputs: Sequence[str]) -> Path:
    """The answers file ``llava.eval.run_benchmark`` writes for these outputs (its real record shape)."""
    adapter = get_benchmark(bench)
    questions = adapter.load_questions(question_file)
    assert len(questions) == len(outputs)
    adapter.load_image = lambda question, folder: None  # the fixtures ship no images; the scripted model needs none
    generate_answers(
        ScriptedBackend(outputs), adapter, questions, "", str(path), 1, adapter.max_new_tokens,
        {"model_id": "ours", "run_id": "r1"},
    )
    return path


def upstream_record(question_id: Any, prompt: str, text: str, n: int, **more: Any) -> dict[str, Any]:
    """One line as upstream's writers emit it (``answer_id`` is a shortuuid there; any string will do)."""
    return {
        "question_id": question_id, **more, "prompt": prompt, "text": text,
        "answer_id": f"ans{n:04d}", "model_id": UPSTREAM_MODEL, "metadata": {},
    }


def loader_lines(question_file: str, outputs: Sequence[str]) -> list[dict[str, Any]]:
    """``model_vqa_loader.py`` over a LLaVA question JSONL: every line is run, ``prompt`` is the line's ``text``."""
    lines = read_jsonl(question_file)
    assert len(lines) == len(outputs)
    return [upstream_record(q["question_id"], q["text"], out, n) for n, (q, out) in enumerate(zip(lines, outputs))]


def loaded_question_lines(bench: str, question_file: str, outputs: Sequence[str]) -> list[dict[str, Any]]:
    """The loader's shape for question files upstream never shipped as LLaVA JSONL (VQAv2 val, MMStar)."""
    questions = get_benchmark(bench).load_questions(question_file)
    assert len(questions) == len(outputs)
    return [upstream_record(q.qid, q.text, out, n) for n, (q, out) in enumerate(zip(questions, outputs))]


def science_lines(question_file: str, outputs: Sequence[str]) -> list[dict[str, Any]]:
    """``model_vqa_science.py --single-pred-prompt``: id is the pid; the prompt starts with ``<image>\\n``
    for image questions and ends with the option-letter suffix."""
    items = read_json(question_file)
    assert len(items) == len(outputs)
    out = []
    for n, (item, text) in enumerate(zip(items, outputs)):
        qs = item["conversations"][0]["value"].replace("<image>", "").strip()
        prompt = (f"<image>\n{qs}" if "image" in item else qs) + "\n" + OPTION_LETTER
        out.append(upstream_record(item["id"], prompt, text, n))
    return out


def mmbench_lines(tsv: str, outputs: Sequence[str]) -> list[dict[str, Any]]:
    """``model_vqa_mmbench.py --single-pred-prompt`` without ``--all-rounds``: one round per TSV row; the
    recorded prompt is hint + question + options, without the suffix."""
    rows = read_tsv(tsv, "MMBench TSV")
    assert len(rows) == len(outputs)
    out = []
    for n, (row, text) in enumerate(zip(rows, outputs)):
        options = mmbench_options(row)
        more = {"round_id": 0, "options": options, "option_char": ["A", "B", "C", "D"][: len(options)]}
        out.append(upstream_record(int(row["index"]), mmbench_prompt(row, ""), text, n, **more))
    return out


def write_lines(path: Path, lines: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def score_file(tmp_path: Path, bench: str, answers: Path, args: Sequence[str]) -> dict[str, Any]:
    result_file = tmp_path / f"{answers.stem}.result.json"
    score.main(["--bench", bench, "--answers-file", str(answers), *args, "--result-file", str(result_file)])
    return json.loads(result_file.read_text())


# ------------------------------------------------------------------------------------------- the 11 benchmarks
@dataclass
class Case:
    runner_questions: str  # the question file our runner reads
    upstream: Any  # () -> upstream answer lines
    outputs: list[str]  # model outputs in the runner's question order
    score_args: list[str]  # ground truth
    expected: float
    upstream_questions: str | None = None  # --question-file for the upstream answers, when not runner_questions
    ignore_details: tuple[str, ...] = field(default=())


def _p(*parts: str) -> str:
    return os.path.join(FIX, *parts)


MMBENCH_TSV = _p("mmbench", "mmbench_dev_20230712.tsv")
# TSV rows 0 1 2 1000000 1000001 1000002 2000000 3000000 (see test_eval_mmbench for the hand count)
MMBENCH_OUTPUTS = ["A", "B", "A apple is a fruit", "D", "B", "I'm not sure.", "The answer is C.", "blue"]
GQA_OUT = ["Yes.", "The table.", "white", "", "No", "no"]
VQAV2_OUT = ["Two dogs.", "None", "Yes", "red", ""]
VIZWIZ_OUT = ["Unanswerable", "Two.", "dont", "cat"]
SQA_OUT = ["B", "A.", "C. blue", "C", "A", "The answer is A."]
TEXTVQA_OUT = ["Dakota.", "STOP", "Man's"]
POPE_OUT = ["Yes, there is a horse", "Yes", "There is a dog.", "No, there is not.", "I think not.", "Yes."]
MME_OUT = ["Yes", "No", "Yes", "Yes", "There is a painting by Monet", "not really", "yes", "No."]
SEED_OUT = ["A", "B.", "C", "D"]  # the image questions; upstream also answers the video question 901
MMSTAR_OUT = ["A", "(B) cat", "The answer is C", "Answer: D", "a cat", "Option b", "I don't know"]

CASES: dict[str, Case] = {
    "gqa": Case(
        _p("gqa", "llava_gqa_testdev_balanced.jsonl"),
        lambda: loader_lines(_p("gqa", "llava_gqa_testdev_balanced.jsonl"), GQA_OUT),
        GQA_OUT, ["--annotation-file", _p("gqa", "data", "testdev_balanced_questions.json")], 50.0,
    ),
    "vqav2": Case(
        _p("vqav2", "v2_OpenEnded_mscoco_val2014_questions.json"),
        lambda: loaded_question_lines("vqav2", _p("vqav2", "v2_OpenEnded_mscoco_val2014_questions.json"), VQAV2_OUT),
        VQAV2_OUT, ["--annotation-file", _p("vqav2", "v2_mscoco_val2014_annotations.json")], 58.0,
    ),
    # Our runner reads the official val.json (question_id = image name, "image" copied into each answer);
    # upstream's loader reads a LLaVA-format val JSONL with int ids and writes no image.
    "vizwiz": Case(
        _p("vizwiz", "val.json"),
        lambda: loader_lines(_p("vizwiz", "llava_val.jsonl"), VIZWIZ_OUT),
        VIZWIZ_OUT, ["--annotation-file", _p("vizwiz", "val.json")], 72.5,
        upstream_questions=_p("vizwiz", "llava_val.jsonl"),
    ),
    "sqa": Case(
        _p("sqa", "llava_test_CQM-A.json"),
        lambda: science_lines(_p("sqa", "llava_test_CQM-A.json"), SQA_OUT),
        SQA_OUT, ["--annotation-dir", _p("sqa")], 60.0,
    ),
    "textvqa": Case(
        _p("textvqa", "llava_textvqa_val_v051_ocr.jsonl"),
        lambda: loader_lines(_p("textvqa", "llava_textvqa_val_v051_ocr.jsonl"), TEXTVQA_OUT),
        TEXTVQA_OUT, ["--annotation-file", _p("textvqa", "TextVQA_0.5.1_val.json")], 250 / 3,
    ),
    "pope": Case(
        _p("pope", "llava_pope_test.jsonl"),
        lambda: loader_lines(_p("pope", "llava_pope_test.jsonl"), POPE_OUT),
        POPE_OUT, ["--annotation-dir", _p("pope", "coco")], 90.0,
    ),
    "mme": Case(
        _p("mme", "llava_mme_all.jsonl"),
        lambda: loader_lines(_p("mme", "llava_mme_all.jsonl"), MME_OUT),
        MME_OUT, ["--annotation-dir", _p("mme", "MME_Benchmark_release_version")], 175.0,
    ),
    "mmbench": Case(
        MMBENCH_TSV, lambda: mmbench_lines(MMBENCH_TSV, MMBENCH_OUTPUTS), MMBENCH_OUTPUTS, [], 100 / 3,
    ),
    "mmbench_cn": Case(
        MMBENCH_TSV, lambda: mmbench_lines(MMBENCH_TSV, MMBENCH_OUTPUTS), MMBENCH_OUTPUTS, [], 100 / 3,
    ),
    "seed": Case(
        _p("seed", "llava-seed-bench.jsonl"),
        lambda: loader_lines(_p("seed", "llava-seed-bench.jsonl"), [*SEED_OUT, "A"]),
        SEED_OUT, ["--annotation-file", _p("seed", "SEED-Bench.json")], 50.0,
        ignore_details=("num_video_answers_ignored",),
    ),
    "mmstar": Case(
        _p("mmstar", "MMStar.tsv"),
        lambda: loaded_question_lines("mmstar", _p("mmstar", "MMStar.tsv"), MMSTAR_OUT),
        MMSTAR_OUT, [], 500 / 7,
    ),
}


def with_questions(bench: str) -> list[str]:
    """The score arguments for ``bench`` with its (runner's) question file."""
    return ["--question-file", CASES[bench].runner_questions, *CASES[bench].score_args]


def test_every_benchmark_has_a_case() -> None:
    from llava.eval.benchmarks import BENCHMARK_NAMES

    assert sorted(CASES) == sorted(BENCHMARK_NAMES)


@pytest.mark.parametrize("bench", sorted(CASES))
def test_upstream_answers_score_like_runner_answers(bench: str, tmp_path: Path) -> None:
    case = CASES[bench]
    runner = write_runner_answers(tmp_path / "runner.jsonl", bench, case.runner_questions, case.outputs)
    upstream_lines = case.upstream()
    upstream = write_lines(tmp_path / "upstream.jsonl", upstream_lines)
    # The upstream lines really lack what only our runner writes.
    assert not any({"uid", "image", "category", "run_id"} & set(line) for line in upstream_lines)
    ours = score_file(tmp_path, bench, runner, ["--question-file", case.runner_questions, *case.score_args])
    theirs = score_file(
        tmp_path, bench, upstream, ["--question-file", case.upstream_questions or case.runner_questions, *case.score_args]
    )
    assert ours["score"] == pytest.approx(case.expected)
    for key in ("score", "metric", "num_scored", "num_unparsed"):
        assert theirs[key] == ours[key], key
    drop = set(case.ignore_details)
    assert {k: v for k, v in theirs["details"].items() if k not in drop} == {
        k: v for k, v in ours["details"].items() if k not in drop
    }


@pytest.mark.parametrize("bench", ["gqa", "vqav2", "sqa", "textvqa", "mme", "seed"])
def test_upstream_answers_score_without_question_file(bench: str, tmp_path: Path) -> None:
    """Where the official scorer reads no question file, neither do we: the score needs only the ground truth."""
    case = CASES[bench]
    upstream = write_lines(tmp_path / "upstream.jsonl", case.upstream())
    assert score_file(tmp_path, bench, upstream, case.score_args)["score"] == pytest.approx(case.expected)


def test_seed_upstream_video_answers_are_counted_not_scored(tmp_path: Path) -> None:
    upstream = write_lines(tmp_path / "upstream.jsonl", CASES["seed"].upstream())
    res = score_file(tmp_path, "seed", upstream, with_questions("seed"))
    assert res["details"]["num_video_answers_ignored"] == 1
    assert res["num_scored"] == 4  # the four image questions of SEED-Bench.json


# ------------------------------------------------------------------------------------------- joins that need the question file
@pytest.mark.parametrize("bench, hint", [("pope", "llava_pope_test.jsonl"), ("vizwiz", "the val question file")])
def test_missing_question_file_is_a_clear_error(bench: str, hint: str, tmp_path: Path) -> None:
    # eval_pope.py takes each answer's split from the question file; without it the split is unknown
    # (this used to fail as "coco_pope_None.json not found").
    upstream = write_lines(tmp_path / "upstream.jsonl", CASES[bench].upstream())
    with pytest.raises(EvalDataError, match=f"pass --question-file \\({hint}"):
        score_file(tmp_path, bench, upstream, CASES[bench].score_args)


def test_pope_repeated_question_id_is_ambiguous(tmp_path: Path) -> None:
    questions = read_jsonl(_p("pope", "llava_pope_test.jsonl"))
    questions[5]["question_id"] = questions[4]["question_id"]  # two questions now share id 5
    qfile = write_lines(tmp_path / "q.jsonl", questions)
    lines = loader_lines(str(qfile), POPE_OUT)
    upstream = write_lines(tmp_path / "upstream.jsonl", lines)
    # eval_pope.py would silently take the last of the two questions for both answers.
    with pytest.raises(EvalDataError, match="lists 1 question id\\(s\\) more than once \\(e.g. \\['5'\\]\\)"):
        score_file(tmp_path, "pope", upstream, ["--annotation-dir", _p("pope", "coco"), "--question-file", str(qfile)])
    # The adapter's own join refuses it too, for callers that skip the coverage check.
    inputs = ScoreInputs(answers_file="upstream.jsonl", question_file=str(qfile), annotation_dir=_p("pope", "coco"))
    with pytest.raises(EvalDataError, match="answer 5: question_id 5 appears 2 times in .*q.jsonl"):
        get_benchmark("pope").score(lines, inputs)


def test_pope_answers_for_another_question_file_are_refused(tmp_path: Path) -> None:
    lines = CASES["pope"].upstream()
    lines[0]["prompt"] = "Is there a zebra in the image?\nAnswer the question using a single word or phrase."
    upstream = write_lines(tmp_path / "upstream.jsonl", lines)
    # Coverage passes (the ids match); the join by question_id then sees that answer 1 was asked another question.
    with pytest.raises(EvalDataError, match="answer 1: question_id 1 was asked .*zebra.*another question file"):
        score_file(tmp_path, "pope", upstream, with_questions("pope"))


# ------------------------------------------------------------------------------------------- repeated ids: (question_id, prompt)
def test_textvqa_upstream_answers_join_on_prompt_in_any_order(tmp_path: Path) -> None:
    lines = CASES["textvqa"].upstream()
    # The two img1 answers swapped: a positional join would give each the other's question.
    upstream = write_lines(tmp_path / "upstream.jsonl", [lines[1], lines[2], lines[0]])
    res = score_file(tmp_path, "textvqa", upstream, with_questions("textvqa"))
    assert res["score"] == pytest.approx(250 / 3)


def test_repeated_id_answer_matching_no_question_is_an_error(tmp_path: Path) -> None:
    lines = CASES["mme"].upstream()
    lines[1]["prompt"] = "Is there a horse in this image?\nAnswer the question using a single word or phrase."
    upstream = write_lines(tmp_path / "upstream.jsonl", lines)
    with pytest.raises(EvalDataError, match="answer 2: no question in .* has question_id 'existence/img1.jpg'"):
        score_file(tmp_path, "mme", upstream, with_questions("mme"))


def test_repeated_id_doubled_answer_is_an_error(tmp_path: Path) -> None:
    lines = CASES["textvqa"].upstream()
    upstream = write_lines(tmp_path / "upstream.jsonl", [*lines, lines[1]])
    with pytest.raises(EvalDataError, match="answer 4: .* is answered more often than .* asks it"):
        score_file(tmp_path, "textvqa", upstream, with_questions("textvqa"))


def test_identical_questions_pair_in_file_order(tmp_path: Path) -> None:
    """Two questions with the same id *and* text are one question asked twice: pairing in order is exact."""
    adapter = get_benchmark("textvqa")
    questions = read_jsonl(_p("textvqa", "llava_textvqa_val_v051_ocr.jsonl"))
    qfile = write_lines(tmp_path / "q.jsonl", [*questions, questions[0]])
    loaded = adapter.load_questions(str(qfile))
    answers = loader_lines(str(qfile), [*TEXTVQA_OUT, "dakota"])
    keys = adapter.answer_keys(answers, loaded, "answers.jsonl", str(qfile))
    assert keys == ["img1#0", "img1#1", "img2#0", "img1#2"]


def test_mme_upstream_id_without_subtask_is_an_error(tmp_path: Path) -> None:
    lines = CASES["mme"].upstream()
    lines[0]["question_id"] = "img1.jpg"
    upstream = write_lines(tmp_path / "upstream.jsonl", lines)
    with pytest.raises(EvalDataError, match="answer 1: no 'category', and question_id 'img1.jpg' is not '<subtask>/<image file>'"):
        score_file(tmp_path, "mme", upstream, CASES["mme"].score_args)


def test_mmbench_all_rounds_answers_are_refused(tmp_path: Path) -> None:
    lines = mmbench_lines(MMBENCH_TSV, MMBENCH_OUTPUTS)
    lines.append({**lines[0], "round_id": 1, "text": "B"})  # what --all-rounds adds for the rotated options
    upstream = write_lines(tmp_path / "upstream.jsonl", lines)
    with pytest.raises(EvalDataError, match="round_id > 0 .*--all-rounds"):
        score_file(tmp_path, "mmbench", upstream, ["--question-file", MMBENCH_TSV])


def test_doubled_answer_fails_the_coverage_check(tmp_path: Path) -> None:
    # POPE's scorer takes every answer line, so without this check a doubled line would be scored twice.
    case = CASES["pope"]
    runner = write_runner_answers(tmp_path / "runner.jsonl", "pope", case.runner_questions, case.outputs)
    lines = read_jsonl(str(runner))
    doubled = write_lines(tmp_path / "doubled.jsonl", [*lines, lines[2]])
    with pytest.raises(EvalDataError, match="1 question\\(s\\) answered more than once \\(e.g. \\['3'\\]\\)"):
        score_file(tmp_path, "pope", doubled, with_questions("pope"))


# ------------------------------------------------------------------------------------------- conversions
def _convert(bench: str, answers: Path, out: Path, *args: str) -> Any:
    convert.main(["--bench", bench, "--answers-file", str(answers), "--output", str(out), *args])
    text = out.read_text()
    return [json.loads(line) for line in text.splitlines()] if out.suffix == ".jsonl" else json.loads(text)


@pytest.mark.parametrize(
    "bench, question_file, outputs, args",
    [
        ("gqa", _p("gqa", "llava_gqa_testdev_balanced.jsonl"), GQA_OUT, []),
        ("vqav2", _p("vqav2", "llava_vqav2_mscoco_test2015.jsonl"), ["A dog.", "Two", "Yes"],
         ["--question-file", _p("vqav2", "llava_vqav2_mscoco_test2015.jsonl")]),
        ("vizwiz", _p("vizwiz", "llava_test.jsonl"), ["Unanswerable", "Two."],
         ["--question-file", _p("vizwiz", "llava_test.jsonl")]),
        ("seed", _p("seed", "llava-seed-bench.jsonl"), SEED_OUT, ["--annotation-file", _p("seed", "SEED-Bench.json")]),
    ],
    ids=["gqa", "vqav2", "vizwiz", "seed"],
)
def test_convert_upstream_answers_like_runner_answers(
    bench: str, question_file: str, outputs: list[str], args: list[str], tmp_path: Path
) -> None:
    runner = write_runner_answers(tmp_path / "runner.jsonl", bench, question_file, outputs)
    upstream_outputs = [*outputs, "A"] if bench == "seed" else outputs  # upstream also answers SEED's video question
    upstream = write_lines(tmp_path / "upstream.jsonl", loader_lines(question_file, upstream_outputs))
    ext = ".jsonl" if bench == "seed" else ".json"
    ours = _convert(bench, runner, tmp_path / f"ours{ext}", *args)
    theirs = _convert(bench, upstream, tmp_path / f"theirs{ext}", *args)
    if bench == "seed":
        # upstream's file also answers the video question, which SEED-Bench's upload then carries
        assert theirs == [*ours, {"question_id": "901", "prediction": "A"}]
    else:
        assert theirs == ours


def test_convert_refuses_doubled_and_incomplete_lines(tmp_path: Path) -> None:
    lines = loader_lines(_p("gqa", "llava_gqa_testdev_balanced.jsonl"), GQA_OUT)
    doubled = write_lines(tmp_path / "doubled.jsonl", [*lines, lines[0]])
    with pytest.raises(EvalDataError, match="line 7: a second answer to question '201' \\(the first is on line 1\\)"):
        _convert("gqa", doubled, tmp_path / "out.json")
    no_text = write_lines(tmp_path / "no_text.jsonl", [{"question_id": "201", "prompt": "x"}])
    with pytest.raises(EvalDataError, match="no_text.jsonl, line 1: no text"):
        _convert("gqa", no_text, tmp_path / "out.json")


# ------------------------------------------------------------------------------------------- LIMIT: a quick subset
@pytest.mark.parametrize("bench", sorted(CASES))
def test_a_limited_run_scores_its_subset_and_says_so(bench: str, tmp_path: Path, capsys) -> None:
    """The eval scripts' LIMIT=N: the runner answers the first N questions, and ``score --limit N`` scores exactly
    those against the full ground truth (scorers that walk the ground truth, like GQA's, would otherwise count the
    unasked questions as missing or wrong), with a line saying it is a subset."""
    case, n = CASES[bench], 2
    adapter = get_benchmark(bench)
    questions = adapter.load_questions(case.runner_questions)
    adapter.load_image = lambda question, folder: None  # the fixtures ship no images
    answers = tmp_path / "subset.jsonl"
    generate_answers(ScriptedBackend(case.outputs[:n]), adapter, questions[:n], "", str(answers), 1,
                     adapter.max_new_tokens, {"model_id": "ours", "run_id": "r1"})
    res = score_file(tmp_path, bench, answers, ["--limit", str(n), *with_questions(bench)])
    assert res["details"]["subset"] == {"limit": n, "questions": n, "of": len(questions)}
    assert res["num_scored"] == n  # only the subset's questions count, not the unasked ones
    assert f"subset: the first {n} of the {len(questions)} questions" in capsys.readouterr().out
    # a subset scored as if it were the whole question file is refused: n answers do not cover its questions
    with pytest.raises(EvalDataError, match="unanswered"):
        score_file(tmp_path, bench, answers, with_questions(bench))
