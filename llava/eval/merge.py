"""Merges the runner's chunk files into one answers file in question order, and fails loudly otherwise.

    python -m llava.eval.merge --bench gqa --question-file Q --chunks-dir DIR --num-chunks N --output merge.jsonl
    python -m llava.eval.merge --bench gqa --question-file Q --inputs a.jsonl b.jsonl --output merge.jsonl

Upstream concatenated chunk files with ``cat``; a crashed chunk or a rerun then produced a short or doubled
file that POPE/MME scored by position without complaint. Here the question file defines the expected ids:
a missing id, a duplicate id (within or across chunks), an unknown id, answers from runs with different
settings, or an answer whose ``prompt`` is no longer the question file's text (the file was edited after the
answers were written) are errors that name the ids and files.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

from llava.eval.benchmarks import BENCHMARK_NAMES, Question, get_benchmark
from llava.eval.files import EvalDataError, answer_key, iter_jsonl, limit_arg, read_json, write_json, write_jsonl

logger = logging.getLogger("llava.eval.merge")


def chunk_files(chunks_dir: str, num_chunks: int) -> list[str]:
    """The runner's chunk file names, ``{N}_{i}.jsonl``, as the upstream scripts name them."""
    return [os.path.join(chunks_dir, f"{num_chunks}_{i}.jsonl") for i in range(num_chunks)]


_REPAIR = "delete that line (the benchmark script answers its question again when rerun) or the whole chunk file"


def _answer_lines(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """The chunk file's records; a bad line is an error that says how to get past it."""
    try:
        for lineno, rec in iter_jsonl(path, "answers file"):
            if "question_id" not in rec:
                raise EvalDataError(f"answers file {path}, line {lineno}: no question_id")
            yield lineno, rec
    except EvalDataError as e:
        raise EvalDataError(f"{e}; {_REPAIR}, then rerun the benchmark script") from None


def merge_answers(questions: Sequence[Question], inputs: Sequence[str]) -> list[dict[str, Any]]:
    """Answers from ``inputs`` in question order; raises on missing, duplicate or unknown ids, on answers
    from runs with different settings, and on answers whose prompt is not the question file's text."""
    by_key = {q.key: q for q in questions}
    found: dict[str, tuple[dict[str, Any], str]] = {}
    run_ids: dict[str, str] = {}
    for path in inputs:
        if not os.path.isfile(path):
            raise EvalDataError(f"chunk file missing: {path} (did that chunk's process fail?)")
        for lineno, rec in _answer_lines(path):
            key = answer_key(rec)
            question = by_key.get(key)
            if question is None:
                raise EvalDataError(f"answers file {path}, line {lineno}: question {rec['question_id']!r} is not in the question file")
            if key in found:
                raise EvalDataError(
                    f"duplicate answer for question {rec['question_id']!r}: in {found[key][1]} and {path}, line {lineno}"
                )
            # The runner writes the exact text it asked; a different text means the question file was edited
            # after these answers were written, and they answer another question.
            if rec.get("prompt") != question.text:
                raise EvalDataError(
                    f"answers file {path}, line {lineno}: the answer to question {rec['question_id']!r} was asked "
                    f"{str(rec.get('prompt'))[:200]!r}, but the question file now says {question.text[:200]!r}. The "
                    "question file changed after these answers were written: rerun the benchmark script (it moves "
                    "stale answers aside and answers again)."
                )
            found[key] = (rec, path)
            if rec.get("run_id") is not None:
                run_ids.setdefault(str(rec["run_id"]), f"{path}, line {lineno}")
    if len(run_ids) > 1:
        raise EvalDataError(f"answers come from runs with different settings: {run_ids}")
    missing = [q.key for q in questions if q.key not in found]
    if missing:
        raise EvalDataError(
            f"{len(missing)} of {len(questions)} questions have no answer, e.g. {missing[:10]}; rerun the "
            "benchmark script (it resumes) to fill them in"
        )
    return [found[q.key][0] for q in questions]


def merge_run_info(inputs: Sequence[str]) -> dict[str, Any] | None:
    """The chunks' ``.run.json`` records, checked to describe the same run; the most complete one is kept."""
    infos = [read_json(f"{p}.run.json", "run info") for p in inputs if os.path.isfile(f"{p}.run.json")]
    if not infos:
        return None
    ids = {i.get("run_id") for i in infos}
    if len(ids) > 1:
        raise EvalDataError(f"chunk run-info files disagree on the run settings: run ids {sorted(map(str, ids))}")
    return max(infos, key=lambda i: sum(v is not None for v in i.values()))


def _per_layer_means(answers: Sequence[dict[str, Any]], key: str) -> tuple[list[list[int]], list[float]] | None:
    """(the answers' per-layer counts under ``key``, their mean per layer), or None when no answer records them."""
    per_sample = [a[key] for a in answers if isinstance(a.get(key), list)]
    if not per_sample:
        return None
    widths = {len(c) for c in per_sample}
    if len(widths) != 1:
        raise EvalDataError(f"answers record {key} for different depths {sorted(widths)}")
    layers = widths.pop()
    return per_sample, [sum(c[i] for c in per_sample) / len(per_sample) for i in range(layers)]


def realised_efficiency(answers: Sequence[dict[str, Any]], llm: dict[str, Any] | None) -> dict[str, Any]:
    """Averages of the vision tokens the answers' prefills actually kept, written by the runner per layer:
    ``vision_tokens`` (at each layer's input, this project's count) and ``vision_tokens_after_filter`` (a prune
    layer counting its survivors, MustDrop's counter; docs/Baselines.md): per layer, overall, and the mean
    per-sample vision TFLOPs (of the layers' inputs) when the LLM shape is known."""
    entering = _per_layer_means(answers, "vision_tokens")
    if entering is None:
        return {}
    per_sample, per_layer = entering
    layers = len(per_layer)
    out: dict[str, Any] = {
        "realised_vision_tokens_per_layer": [round(x, 4) for x in per_layer],
        "realised_avg_vision_tokens": sum(per_layer) / layers,
        "realised_samples": len(per_sample),
    }
    after = _per_layer_means(answers, "vision_tokens_after_filter")
    if after is not None:  # answer files written before this count existed have only the entering one
        out["realised_vision_tokens_after_filter_per_layer"] = [round(x, 4) for x in after[1]]
        out["realised_avg_vision_tokens_after_filter"] = sum(after[1]) / len(after[1])
    if llm and llm.get("hidden") and llm.get("ffn"):
        from llava.eval.efficiency import vision_tflops

        flops = [vision_tflops(c, int(llm["hidden"]), int(llm["ffn"])) for c in per_sample]
        out["realised_vision_tflops"] = sum(flops) / len(flops)
    return out


def speculative_summary(answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run's self-speculative decoding figures, summed over the answers' ``speculative`` records (the runner
    writes them with ``--speculative twig``): acceptance rate = kept / drafted proposals, tokens per second = the
    tokens decoded after each answer's first over the decoding time."""
    recs = [a["speculative"] for a in answers if isinstance(a.get("speculative"), dict)]
    if not recs:
        return {}
    drafted = sum(int(r.get("drafted", 0)) for r in recs)
    accepted = sum(int(r.get("accepted", 0)) for r in recs)
    decoded = sum(max(int(r.get("new_tokens", 0)) - 1, 0) for r in recs)
    seconds = sum(float(r.get("decode_seconds", 0.0)) for r in recs)
    return {"speculative_stats": {
        "answers": len(recs), "drafted": drafted, "accepted": accepted,
        "acceptance_rate": accepted / drafted if drafted else None,
        "new_tokens": sum(int(r.get("new_tokens", 0)) for r in recs), "decode_seconds": seconds,
        "tokens_per_second": decoded / seconds if seconds > 0 else None,
    }}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.eval.merge", description=__doc__.split("\n\n")[0])
    p.add_argument("--bench", required=True, choices=BENCHMARK_NAMES)
    p.add_argument("--question-file", required=True)
    p.add_argument("--output", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--inputs", nargs="+", help="chunk files, in chunk order")
    src.add_argument("--chunks-dir", help="folder holding the runner's {N}_{i}.jsonl files (needs --num-chunks)")
    p.add_argument("--num-chunks", type=int, default=None)
    p.add_argument("--limit", type=limit_arg, default=None,
                   help="the run answered only the first N questions (run_benchmark --limit); empty: all")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.chunks_dir is not None:
        if not args.num_chunks or args.num_chunks < 1:
            parser.error("--chunks-dir needs --num-chunks >= 1")
        inputs = chunk_files(args.chunks_dir, args.num_chunks)
    else:
        inputs = args.inputs
    questions = get_benchmark(args.bench).load_questions(args.question_file)
    if args.limit:
        questions = questions[: args.limit]
    if not questions:
        raise EvalDataError(f"question file {args.question_file} holds no questions; there is nothing to merge")
    merged = merge_answers(questions, inputs)
    write_jsonl(args.output, merged)
    info = merge_run_info(inputs)
    if info is not None:
        info.update(realised_efficiency(merged, info.get("llm")))
        info.update(speculative_summary(merged))
        spec = info.get("speculative_stats")
        if spec:
            rate, tps = spec["acceptance_rate"], spec["tokens_per_second"]
            logger.info("speculative decoding: acceptance rate %s (%d of %d drafted tokens kept), %s tokens/s after "
                        "each answer's first, over %d answers", "n/a" if rate is None else f"{rate:.3f}",
                        spec["accepted"], spec["drafted"], "n/a" if tps is None else f"{tps:.1f}", spec["answers"])
        if info.get("realised_avg_vision_tokens") is not None:
            logger.info("realised average vision tokens: %.2f over %d answers (%s after each prune layer's filter, "
                        "MustDrop's counter)", info["realised_avg_vision_tokens"], info["realised_samples"],
                        f"{info['realised_avg_vision_tokens_after_filter']:.2f}"
                        if "realised_avg_vision_tokens_after_filter" in info else "not recorded")
        write_json(f"{args.output}.run.json", info)
    else:
        logger.warning("no run-info files next to the chunks; the report will lack the efficiency columns")
    logger.info("merged %d answers from %d file(s) into %s", len(merged), len(inputs), args.output)


if __name__ == "__main__":
    main()
