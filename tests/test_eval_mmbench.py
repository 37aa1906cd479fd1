"""MMBench: prompt building from the TSV, rule-based option extraction, and circular scoring."""

from __future__ import annotations

import os

import pytest

from llava.eval.benchmarks import ScoreInputs, get_benchmark
from llava.eval.benchmarks.multiple_choice import mmbench_options
from llava.eval.scorers.mmbench import can_infer, can_infer_option

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "eval", "mmbench")
TSV = os.path.join(FIX, "mmbench_dev_20230712.tsv")


@pytest.mark.parametrize(
    "text, letter",
    [
        ("A", "A"),
        ("B", "B"),
        ("The answer is C.", "C"),  # no bare letter, wrapped "C." once
        ("(D)", "D"),
        ("A dog is running", None),  # bare "A" in >3 tokens may be the article: give up on letters
        ("A or B", None),  # two bare letters, no single wrapped form
        ("E", "E"),  # A-E are candidate letters
    ],
)
def test_can_infer_option(text: str, letter: str | None) -> None:
    assert can_infer_option(text) == letter


def test_can_infer_falls_back_to_option_text() -> None:
    options = {"A": "blue", "B": "red"}
    assert can_infer("It is blue", options) == "A"
    assert can_infer("blue or red", options) is None  # two options match


def test_prompt_from_tsv() -> None:
    qs = {q.qid: q for q in get_benchmark("mmbench").load_questions(TSV)}
    assert len(qs) == 8
    # hint first, then options up to the first missing one, then the suffix
    assert qs[1].text == (
        "Count carefully.\nHow many legs does a spider have?\nA. 6\nB. 8\n"
        "Answer with the option's letter from the given choices directly."
    )
    # a hint cell reading "nan" is missing, as pandas + LLaVA's is_none read it
    assert qs[2].text.startswith("Which is a fruit?\nA. apple\nB. a car\n")
    assert qs[0].image_b64 is not None
    assert qs[1].extra["option_char"] == ["A", "B"]
    cn = {q.qid: q for q in get_benchmark("mmbench_cn").load_questions(TSV)}
    assert cn[0].text.endswith("\nD. yellow\n请直接回答选项字母。")


def test_options_stop_at_none() -> None:
    row = {"A": "x", "B": "None", "C": "z", "D": ""}
    assert mmbench_options(row) == ["x"]


def _score(judge=None):
    bench = get_benchmark("mmbench")
    answers = bench.read_answers(os.path.join(FIX, "answers.jsonl"))
    return bench.score(answers, ScoreInputs(answers_file="a", question_file=TSV, judge=judge))


def test_circular_score() -> None:
    result = _score()
    # base 0 (4 rotations): "A"=A ok, "D"=D ok, "The answer is C."=C ok, "blue" -> option text B ok -> 1
    # base 1 (2 rotations): "B"=B ok, "B" but the rotated answer is A -> one wrong rotation -> 0
    # base 2 (2 rotations): "A apple is a fruit" -> bare-A bail-out, option text "apple" = A ok;
    #                       "I'm not sure." -> unresolved, no judge -> 0
    # circular accuracy 1/3 = 33.33; one unparsed row
    assert result.score == pytest.approx(100 / 3)
    assert result.num_unparsed == 1
    assert result.details["num_questions"] == 3
    assert result.details["num_rows"] == 8
    # non-circular diagnostic: base 0 4/4, base 1 1/2, base 2 1/2 (the unresolved row is wrong) -> 6/8
    assert result.details["row_accuracy"] == pytest.approx(75.0)


def test_judge_hook_resolves_unparsed_rows() -> None:
    calls = []

    def judge(question, options, output):
        calls.append((question, dict(options), output))
        return "B"  # in rotation 1000002 "apple" is option B

    result = _score(judge)
    # base 2 now scores 1: 2/3 = 66.67. The judge saw only the one unresolved row.
    assert result.score == pytest.approx(200 / 3)
    assert calls == [("Which is a fruit?", {"A": "a car", "B": "apple"}, "I'm not sure.")]
