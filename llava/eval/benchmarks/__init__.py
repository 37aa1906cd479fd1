"""The benchmark registry: ``get_benchmark("gqa")`` returns that benchmark's adapter.

The names are the ones the scripts, the result files and the report use.
"""

from __future__ import annotations

from llava.eval.benchmarks.base import Benchmark, Question, ScoreInputs
from llava.eval.benchmarks.llava_jsonl import GQA, MME, POPE, SEED, TextVQA, VizWiz, VQAv2
from llava.eval.benchmarks.multiple_choice import MMBench, MMBenchCN, MMStar, ScienceQA
from llava.eval.files import EvalDataError

_ADAPTERS: dict[str, type[Benchmark]] = {
    cls.name: cls for cls in (MME, MMBench, MMBenchCN, GQA, VQAv2, ScienceQA, VizWiz, TextVQA, POPE, SEED, MMStar)
}

# In the order of the paper's Table 1 columns.
BENCHMARK_NAMES: tuple[str, ...] = tuple(_ADAPTERS)


def get_benchmark(name: str) -> Benchmark:
    """A fresh adapter for ``name``; an unknown name is an error that lists the known ones."""
    try:
        return _ADAPTERS[name]()
    except KeyError:
        raise EvalDataError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARK_NAMES)}") from None


__all__ = ["BENCHMARK_NAMES", "Benchmark", "Question", "ScoreInputs", "get_benchmark"]
