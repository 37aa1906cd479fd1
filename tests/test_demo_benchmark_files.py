"""The demo benchmark files are in the real formats: oracle answers score 100 through the real adapters."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("sklearn")

from llava.demo import benchmark_files  # noqa: E402
from llava.eval.benchmarks import ScoreInputs, get_benchmark  # noqa: E402
from llava.eval.files import read_jsonl  # noqa: E402


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("demo")
    benchmark_files.main(["--out", str(out), "--gqa", "12", "--pope", "3", "--seed-bench", "6", "--mmbench", "3"])
    return str(out)


def _answers(questions, texts) -> list[dict]:
    return [{"question_id": q.qid, "prompt": q.text, "text": t, **q.extra} for q, t in zip(questions, texts)]


def test_gqa_oracle(root) -> None:
    bench = get_benchmark("gqa")
    qs = bench.load_questions(f"{root}/gqa/llava_gqa_testdev_balanced.jsonl")
    gold = json.load(open(f"{root}/gqa/data/testdev_balanced_questions.json"))
    assert len(qs) == 12
    result = bench.score(_answers(qs, [gold[q.key]["answer"] for q in qs]), ScoreInputs("a", annotation_file=f"{root}/gqa/data/testdev_balanced_questions.json"))
    assert result.score == 100.0


def test_pope_oracle_and_balance(root) -> None:
    bench = get_benchmark("pope")
    qs = bench.load_questions(f"{root}/pope/llava_pope_test.jsonl")
    assert len(qs) == 3 * 3 * 2  # images x splits x (present, absent)
    labels = {}
    for split in benchmark_files.POPE_SPLITS:
        recs = read_jsonl(f"{root}/pope/coco/coco_pope_{split}.json")
        assert sorted(r["label"] for r in recs) == ["no"] * 3 + ["yes"] * 3  # balanced per split
        labels.update({(split, r["image"], r["text"]): r["label"] for r in recs})
    texts = [labels[(q.extra["category"], q.image, q.text.split("\n")[0])].capitalize() for q in qs]
    result = bench.score(_answers(qs, texts), ScoreInputs("a", annotation_dir=f"{root}/pope/coco"))
    assert result.score == pytest.approx(100.0)
    assert result.num_unparsed == 0


def test_seed_and_mmbench_oracle(root) -> None:
    seed = get_benchmark("seed")
    qs = seed.load_questions(f"{root}/seed_bench/llava-seed-bench.jsonl")
    gold = {q["question_id"]: q["answer"] for q in json.load(open(f"{root}/seed_bench/SEED-Bench.json"))["questions"]}
    result = seed.score(_answers(qs, [gold[q.key] for q in qs]), ScoreInputs("a", annotation_file=f"{root}/seed_bench/SEED-Bench.json"))
    assert result.score == 100.0

    mmb = get_benchmark("mmbench")
    tsv = f"{root}/mmbench/mmbench_dev_20230712.tsv"
    qs = mmb.load_questions(tsv)
    assert len(qs) == 3 * 4  # four circular rotations per question
    from llava.eval.files import read_tsv

    answer = {int(r["index"]): r["answer"] for r in read_tsv(tsv, "tsv")}
    result = mmb.score(_answers(qs, [answer[q.qid] for q in qs]), ScoreInputs("a", question_file=tsv))
    assert result.score == 100.0
    assert result.details["num_questions"] == 3


def test_evaluation_does_not_import_the_demo() -> None:
    """llava.eval is used without the demo (scoring-only installs, real benchmarks): no module of it imports
    llava.demo, at the top or inside a function."""
    import ast
    from pathlib import Path

    import llava.eval

    root = Path(llava.eval.__file__).parent
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "llava.demo" or n.startswith("llava.demo.") for n in names), f"{path} imports {names}"
