"""SEED-IMG exact-letter accuracy and MMStar's official first-character rule."""

from __future__ import annotations

import json
import os

import pytest

from llava.eval import convert, score
from llava.eval.benchmarks import ScoreInputs, get_benchmark
from llava.eval.files import EvalDataError
from llava.eval.scorers.mmstar import mmstar_correct

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "eval")


def test_seed_skips_video_questions() -> None:
    qs = get_benchmark("seed").load_questions(os.path.join(FIX, "seed", "llava-seed-bench.jsonl"))
    assert [q.qid for q in qs] == [101, 102, 103, 104]


def test_seed_fixture() -> None:
    bench = get_benchmark("seed")
    answers = bench.read_answers(os.path.join(FIX, "seed", "answers.jsonl"))
    result = bench.score(answers, ScoreInputs(answers_file="a", annotation_file=os.path.join(FIX, "seed", "SEED-Bench.json")))
    # 101 "A" = A ok; 102 "B." != "B" (whole-string equality) wrong, unparsed; 103 "C" != D wrong; 104 "D" ok
    # image accuracy 2/4 = 50; Scene Understanding (101, 104) 100; Instances Counting (102, 103) 0
    assert result.score == pytest.approx(50.0)
    assert result.num_unparsed == 1
    assert result.details["per_question_type"] == {"Instances Counting": 0.0, "Scene Understanding": 100.0}


SEED_JSON = os.path.join(FIX, "seed", "SEED-Bench.json")


def _seed_answers(tmp_path, lines: list[tuple[int, str]]) -> str:
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps({"question_id": q, "prompt": "...", "text": t}) + "\n" for q, t in lines))
    return str(path)


def test_seed_unanswered_image_question_counts_as_wrong(tmp_path, capsys) -> None:
    # 104 (answer D) is not answered. The official script keeps it in the denominator as wrong:
    # 101 "A" ok, 102 "B." wrong, 103 "C" wrong, 104 missing -> 1/4 = 25.00 (not 1/3 = 33.33).
    answers = _seed_answers(tmp_path, [(101, "A"), (102, "B."), (103, "C")])
    result_file = tmp_path / "seed.json"
    score.main(
        ["--bench", "seed", "--answers-file", answers, "--annotation-file", SEED_JSON, "--result-file", str(result_file)]
    )
    out = capsys.readouterr().out
    assert "SEED-IMG image accuracy: 25.00" in out
    assert "SEED-IMG: 1 of 4 image questions have no answer; counted as wrong" in out
    rec = json.loads(result_file.read_text())
    assert rec["num_scored"] == 4
    assert rec["num_unparsed"] == 1  # "B."; the missing answer is counted apart, it has no output to parse
    assert rec["details"]["num_missing"] == 1
    # Scene Understanding: 101 ok, 104 missing -> 50; Instances Counting: 102, 103 wrong -> 0
    assert rec["details"]["per_question_type"] == {"Instances Counting": 0.0, "Scene Understanding": 50.0}


def test_seed_with_no_image_answer_is_an_error(tmp_path) -> None:
    answers = _seed_answers(tmp_path, [(901, "A")])  # only the video question
    with pytest.raises(EvalDataError, match="none of the 1 answer\\(s\\) .* is for an image question"):
        get_benchmark("seed").score(
            get_benchmark("seed").read_answers(answers), ScoreInputs(answers_file=answers, annotation_file=SEED_JSON)
        )


def test_seed_upload_keeps_the_string_ids_of_seed_bench_json(tmp_path) -> None:
    # LLaVA's question file, and so every answer file, holds the ids as ints; SEED-Bench.json as strings.
    answers = _seed_answers(tmp_path, [(104, "D"), (101, "A"), (102, "B."), (103, "C")])
    out = tmp_path / "upload.jsonl"
    args = ["--bench", "seed", "--answers-file", answers, "--output", str(out)]
    convert.main([*args, "--annotation-file", SEED_JSON])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    # SEED-Bench.json's order and its id strings; the unanswered video question is left out (SEED-IMG only)
    assert lines == [
        {"question_id": "101", "prediction": "A"},
        {"question_id": "102", "prediction": "B."},
        {"question_id": "103", "prediction": "C"},
        {"question_id": "104", "prediction": "D"},
    ]
    convert.main(args)  # without SEED-Bench.json: answer order, ids still written as strings
    assert [json.loads(line)["question_id"] for line in out.read_text().splitlines()] == ["104", "101", "102", "103"]


def test_seed_upload_needs_every_image_question(tmp_path) -> None:
    answers = _seed_answers(tmp_path, [(101, "A"), (102, "B")])
    with pytest.raises(EvalDataError, match="2 SEED-Bench image question\\(s\\) have no answer, e.g. \\['103', '104'\\]"):
        convert.main(
            ["--bench", "seed", "--answers-file", answers, "--annotation-file", SEED_JSON, "--output", str(tmp_path / "u.jsonl")]
        )


@pytest.mark.parametrize(
    "pred, answer, ok",
    [
        ("A", "A", True),
        ("(B) cat", "B", True),
        ("The answer is C", "C", True),
        ("Option b", "B", True),
        ("a cat", "A", True),  # the official quirk: any output starting with the letter
        ("Answer: D", "D", False),  # first character is "a"
        ("", "A", False),
    ],
)
def test_mmstar_rule(pred: str, answer: str, ok: bool) -> None:
    assert mmstar_correct(pred, answer) is ok


def test_mmstar_fixture() -> None:
    bench = get_benchmark("mmstar")
    tsv = os.path.join(FIX, "mmstar", "MMStar.tsv")
    qs = bench.load_questions(tsv)
    # options are already in the question text, so none are appended
    assert qs[0].text == (
        "What is shown? Options: A: a cat, B: a dog, C: a car, D: a tree\n"
        "Answer with the option's letter from the given choices directly."
    )
    answers = bench.read_answers(os.path.join(FIX, "mmstar", "answers.jsonl"))
    result = bench.score(answers, ScoreInputs(answers_file="a", question_file=tsv))
    # 0 "A" ok; 1 "(B) cat" ok; 2 "The answer is C" ok; 3 "Answer: D" wrong; 4 "a cat" ok (quirk);
    # 5 "Option b" ok; 6 "I don't know" wrong and unparsed -> 5/7 = 71.43
    # coarse perception: 0, 1, 4 all ok -> 100; math: 2 ok, 3 x, 5 ok, 6 x -> 50
    assert result.score == pytest.approx(500 / 7)
    assert result.num_unparsed == 1
    assert result.details["per_category"] == pytest.approx({"coarse perception": 100.0, "math": 50.0})
