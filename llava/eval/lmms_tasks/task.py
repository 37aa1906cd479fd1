"""``LocalBenchmarkTask``: an lmms-eval task over one of our benchmarks, from local files, scored by our scorer.

The YAMLs of this folder name it as their ``class``; the task name picks the benchmark (``TASKS``). Where the data
lives is the eval scripts' layout under ``$DATA_ROOT`` (docs/Evaluation.md, "Data"): the same question file, image
folder and ground truth as ``scripts/eval/<bench>.sh``. A missing file stops the task with a message naming it.

What lmms-eval sees: one document per question, in the adapter's order (``index``, ``question_id``); the prompt text
is the question as our runner sends it (``Question.text``, the benchmark's suffix included; the ``hidrop_llava``
model wraps it in the same conversation template), the image is the adapter's; generation is greedy with the
benchmark's upstream ``max_new_tokens`` and no stop string, as the runner. The answers are then scored by the
benchmark's own scorer on the questions that were asked: with lmms-eval's ``--limit N``, the first N questions, and
the log says it is a subset. The metric ``score`` is the headline the eval script prints (MME: perception total;
GQA: accuracy; ...).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import datasets
from lmms_eval.api.task import ConfigurableTask

from llava.eval.benchmarks import ScoreInputs, get_benchmark

logger = logging.getLogger("llava.eval.lmms_tasks")

DEFAULT_DATA_ROOT = "./playground/data/eval"


@dataclass(frozen=True)
class Layout:
    """One benchmark's files under ``$DATA_ROOT``, as ``scripts/eval/<bench>.sh`` reads them."""

    bench: str
    question_file: str
    image_folder: str
    annotation_file: str | None = None
    annotation_dir: str | None = None
    split: str | None = None


TASKS: dict[str, Layout] = {
    "mme": Layout("mme", "MME/llava_mme.jsonl", "MME/MME_Benchmark_release_version",
                  annotation_dir="MME/MME_Benchmark_release_version"),
    "gqa": Layout("gqa", "gqa/llava_gqa_testdev_balanced.jsonl", "gqa/data/images",
                  annotation_file="gqa/data/testdev_balanced_questions.json"),
    "pope": Layout("pope", "pope/llava_pope_test.jsonl", "pope/val2014", annotation_dir="pope/coco"),
    "textvqa": Layout("textvqa", "textvqa/llava_textvqa_val_v051_ocr.jsonl", "textvqa/train_images",
                      annotation_file="textvqa/TextVQA_0.5.1_val.json"),
    "sqa": Layout("sqa", "scienceqa/llava_test_CQM-A.json", "scienceqa/images/test", annotation_dir="scienceqa",
                  split="test"),
    "mmbench": Layout("mmbench", "mmbench/mmbench_dev_20230712.tsv", "mmbench"),
    "mmbench_cn": Layout("mmbench_cn", "mmbench_cn/mmbench_dev_cn_20231003.tsv", "mmbench_cn"),
    "mmstar": Layout("mmstar", "mmstar/MMStar.tsv", "mmstar"),
    "seed": Layout("seed", "seed_bench/llava-seed-bench.jsonl", "seed_bench",
                   annotation_file="seed_bench/SEED-Bench.json"),
    "vqav2_val": Layout("vqav2", "vqav2/v2_OpenEnded_mscoco_val2014_questions.json", "vqav2/val2014",
                        annotation_file="vqav2/v2_mscoco_val2014_annotations.json"),
    "vizwiz_val": Layout("vizwiz", "vizwiz/val.json", "vizwiz/val", annotation_file="vizwiz/val.json"),
}


class LocalBenchmarkTask(ConfigurableTask):
    """A ``generate_until`` task over our benchmark ``TASKS[config["task"]]`` (see the module docstring)."""

    def __init__(self, config: dict[str, Any]) -> None:
        name = config["task"]
        if name not in TASKS:
            raise ValueError(f"no local benchmark for lmms-eval task {name!r}; known: {sorted(TASKS)}")
        self.layout = TASKS[name]
        self.adapter = get_benchmark(self.layout.bench)
        self.data_root = os.environ.get("DATA_ROOT") or DEFAULT_DATA_ROOT
        self.questions: list = []
        super().__init__(config={
            "task": name,
            "output_type": "generate_until",
            "test_split": "test",
            "doc_to_visual": self._doc_to_visual,
            "doc_to_text": self._doc_to_text,
            "doc_to_target": self._doc_to_target,
            "process_results": self._process_results,
            "metric_list": [{"metric": "score", "aggregation": self._aggregate, "higher_is_better": True}],
            # the runner's decoding: greedy, the benchmark's upstream length, no stop string
            "generation_kwargs": {"until": [], "max_new_tokens": self.adapter.max_new_tokens, "temperature": 0,
                                  "do_sample": False},
            "metadata": {"version": 1, "benchmark": self.layout.bench},
        })

    # ------------------------------------------------------------------ data
    def _path(self, relative: str | None) -> str | None:
        return None if relative is None else os.path.join(self.data_root, relative)

    def download(self, dataset_kwargs: dict | None = None) -> None:
        """The question file through our adapter (lmms-eval would fetch a hub dataset here)."""
        question_file = self._path(self.layout.question_file)
        needed = [(question_file, "question file"), (self._path(self.layout.annotation_file), "annotation file"),
                  (self._path(self.layout.annotation_dir), "annotation folder")]
        for path, what in needed:
            if path is not None and not os.path.exists(path):
                raise FileNotFoundError(
                    f"lmms-eval task {self.layout.bench}: missing {self.adapter.title} {what} {path} (DATA_ROOT="
                    f"{self.data_root}; the layout of scripts/eval/{self.layout.bench.split('_')[0]}.sh, see "
                    "docs/Evaluation.md)")
        self.questions = self.adapter.load_questions(question_file)
        docs = datasets.Dataset.from_list([{"index": i, "question_id": q.key} for i, q in enumerate(self.questions)])
        self.dataset = datasets.DatasetDict({"test": docs})
        self.dataset_no_image = self.dataset

    # ------------------------------------------------------------------ documents
    def _doc_to_visual(self, doc: dict[str, Any], *_: Any) -> list:
        image = self.adapter.load_image(self.questions[doc["index"]], self._path(self.layout.image_folder))
        return [] if image is None else [image]

    def _doc_to_text(self, doc: dict[str, Any], *_: Any) -> str:
        return self.questions[doc["index"]].text  # the runner's prompt text; the model adds the template

    def _doc_to_target(self, doc: dict[str, Any], *_: Any) -> str:
        return doc["question_id"]  # the ground truth stays in the benchmark's own files; the scorer reads them

    def _process_results(self, doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
        return {"score": {"index": doc["index"], "text": results[0]}}

    # ------------------------------------------------------------------ scoring
    def _aggregate(self, items: list[dict[str, Any]], *_: Any, **__: Any) -> float:
        """Our scorer on the answered questions, as ``llava.eval.score`` (with ``--limit`` for a subset)."""
        asked = [self.questions[item["index"]] for item in items]
        records = []
        for q, item in zip(asked, items):
            record = {"question_id": q.qid, "prompt": q.text, "text": item["text"], **q.extra}
            if q.uid is not None:
                record["uid"] = q.uid
            records.append(record)
        subset = len(asked) < len(self.questions)
        inputs = ScoreInputs(
            answers_file=f"lmms-eval {self.layout.bench} answers",
            question_file=self._path(self.layout.question_file),
            annotation_file=self._path(self.layout.annotation_file),
            annotation_dir=self._path(self.layout.annotation_dir),
            split=self.layout.split,
            question_keys=frozenset(q.key for q in asked) if subset else None,
        )
        result = self.adapter.score(records, inputs)
        for line in result.summary_lines(self.adapter.title):
            logger.info("%s", line)
        if subset:
            logger.warning("%s: scored a subset, the %d answered of the %d questions (lmms-eval --limit); not "
                           "comparable with a full run", self.adapter.title, len(asked), len(self.questions))
        return float(result.score)


__all__ = ["TASKS", "Layout", "LocalBenchmarkTask"]
