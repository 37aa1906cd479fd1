"""Adapters for the multiple-choice benchmarks: ScienceQA-IMG, MMBench, MMBench-CN and MMStar."""

from __future__ import annotations

import logging
import os
from typing import Any

from llava.eval.benchmarks.base import (
    OPTION_LETTER,
    OPTION_LETTER_CN,
    Benchmark,
    Question,
    ScoreInputs,
    answers_by_key,
    ensure_suffix,
    require,
)
from llava.eval.files import (
    PANDAS_NA_STRINGS,
    EvalDataError,
    is_missing_cell,
    iter_jsonl,
    qid_key,
    read_json,
    read_tsv,
)
from llava.eval.scorers.common import ScoreResult
from llava.eval.scorers.mmbench import score_mmbench
from llava.eval.scorers.mmstar import score_mmstar
from llava.eval.scorers.sqa import score_sqa

logger = logging.getLogger(__name__)

MC_LETTERS = ("A", "B", "C", "D")


# --------------------------------------------------------------------------------------------------- ScienceQA
class ScienceQA(Benchmark):
    """ScienceQA test split, LLaVA's ``llava_test_CQM-A.json`` (all 4,241 questions, text-only ones included).

    Prompt: the human turn without ``<image>``, plus the option-letter suffix; text-only questions are run
    without an image. Score inputs: ``--annotation-dir`` holding ``problems.json`` and ``pid_splits.json``,
    ``--split`` (default ``test``). The reported number is IMG-Accuracy.
    """

    name = "sqa"
    title = "SQA-IMG"
    suffix = OPTION_LETTER
    max_new_tokens = 1024

    def load_questions(self, path: str) -> list[Question]:
        data = read_json(path, "ScienceQA question file")
        if not isinstance(data, list):
            raise EvalDataError(f"ScienceQA question file {path}: expected a JSON list of LLaVA conversations")
        questions = []
        for i, item in enumerate(data):
            try:
                human = item["conversations"][0]["value"]
                qid = item["id"]
            except (KeyError, IndexError, TypeError):
                raise EvalDataError(f"ScienceQA question file {path}, item {i}: needs 'id' and 'conversations'") from None
            text = ensure_suffix(human.replace("<image>", "").strip(), self.suffix)
            questions.append(Question(qid=qid, text=text, image=item.get("image"), extra={"image": item.get("image")}))
        return questions

    def score(self, answers: list[dict[str, Any]], inputs: ScoreInputs) -> ScoreResult:
        base = require(inputs.annotation_dir, "--annotation-dir (the folder with problems.json and pid_splits.json)", self.name)
        problems = read_json(os.path.join(base, "problems.json"), "ScienceQA problems.json")
        splits = read_json(os.path.join(base, "pid_splits.json"), "ScienceQA pid_splits.json")
        split = inputs.split or "test"
        if split not in splits:
            raise EvalDataError(f"ScienceQA split {split!r} not in pid_splits.json (has {sorted(splits)})")
        preds = {k: str(a["text"]) for k, a in answers_by_key(answers, inputs.answers_file).items()}
        pids = [str(p) for p in splits[split]]
        if inputs.question_keys is not None:  # a LIMIT subset: only its questions count
            pids = [p for p in pids if p in inputs.question_keys]
        elif inputs.question_file:
            asked = {q.key for q in self.load_questions(inputs.question_file)}
            subset = [p for p in pids if p in asked]
            if len(subset) != len(pids):
                logger.warning("ScienceQA: the question file covers %d of the %d %s pids", len(subset), len(pids), split)
            pids = subset
        if pids and not any(p in preds for p in pids):
            # Unanswered pids count as FAILED upstream; with no answer at all that is a score of 0 for nothing.
            raise EvalDataError(
                f"ScienceQA: none of the {len(preds)} answers in {inputs.answers_file} is for a question of split "
                f"{split!r} in {base}/pid_splits.json; are they from the same split?"
            )
        result = score_sqa(preds, problems, pids)
        if pids and not result.details["num_image_questions"]:
            raise EvalDataError(
                f"ScienceQA: split {split!r} holds no question with an image in {base}/problems.json, so there is no "
                "IMG accuracy to report"
            )
        result.details["split"] = split
        return result


# --------------------------------------------------------------------------------------------------- MMBench
def mmbench_options(row: dict[str, str]) -> list[str]:
    """Options A-D in order, stopping at the first missing one (pandas NaN or "nan"/"none"), as LLaVA does."""
    options = []
    for letter in MC_LETTERS:
        value = row.get(letter)
        if is_missing_cell(value):
            break
        options.append(value)
    return options


def mmbench_prompt(row: dict[str, str], suffix: str) -> str:
    """``hint\\nquestion\\nA. a\\nB. b...`` plus the suffix (the hint is left out when missing)."""
    text = row["question"]
    if not is_missing_cell(row.get("hint")):
        text = f"{row['hint']}\n{text}"
    for letter, option in zip(MC_LETTERS, mmbench_options(row)):
        text += f"\n{letter}. {option}"
    return ensure_suffix(text, suffix)


def evaluator_choices(row: dict[str, str]) -> dict[str, str]:
    """The options the MMBench evaluator matches text against: every option cell pandas does not read as NaN."""
    return {c: row[c] for c in MC_LETTERS if c in row and row[c] not in PANDAS_NA_STRINGS}


class MMBench(Benchmark):
    """MMBench dev (``mmbench_dev_20230712.tsv``), circular. The TSV is both the question file and the ground
    truth; score with ``--question-file`` set to it. ``--judge module:function`` enables the optional judge."""

    name = "mmbench"
    title = "MMBench"
    suffix = OPTION_LETTER
    max_new_tokens = 1024

    def _rows(self, path: str) -> list[dict[str, str]]:
        return read_tsv(path, f"{self.title} TSV", required_columns=("index", "question", "A", "B"))

    def load_questions(self, path: str) -> list[Question]:
        questions = []
        for row in self._rows(path):
            options = mmbench_options(row)
            questions.append(
                Question(
                    qid=int(row["index"]),
                    text=mmbench_prompt(row, self.suffix),
                    image_b64=row.get("image") or None,
                    extra={"round_id": 0, "options": options, "option_char": list(MC_LETTERS[: len(options)])},
                )
            )
        return questions

    def _refuse_later_rounds(self, answers: list[dict[str, Any]], answers_file: str) -> None:
        """model_vqa_mmbench.py --all-rounds rotates the options itself and writes one answer per round under
        the same question_id; the TSV already holds every rotation as its own row (and upstream's converter
        would keep only the last round of each index), so such a file is not the LLaVA-1.5 protocol."""
        later_rounds = [a for a in answers if a.get("round_id") not in (None, 0)]
        if later_rounds:
            raise EvalDataError(
                f"{answers_file}: {len(later_rounds)} answer(s) have round_id > 0 (e.g. question_id "
                f"{later_rounds[0].get('question_id')!r}), i.e. were written by model_vqa_mmbench.py --all-rounds; "
                f"LLaVA-1.5's {self.title} protocol answers each TSV row once (round 0). Rerun without --all-rounds."
            )

    def answer_keys(
        self, answers: list[dict[str, Any]], questions: list[Question], answers_file: str, question_file: str
    ) -> list[str]:
        self._refuse_later_rounds(answers, answers_file)
        return super().answer_keys(answers, questions, answers_file, question_file)

    def score(self, answers: list[dict[str, Any]], inputs: ScoreInputs) -> ScoreResult:
        path = require(inputs.question_file, f"--question-file (the {self.title} TSV, which holds the answers)", self.name)
        rows = self._rows(path)
        if not rows:
            raise EvalDataError(f"{self.title} TSV {path} has a header but no rows; nothing can be scored")
        if inputs.question_keys is not None:  # a LIMIT subset: only its questions count
            rows = [r for r in rows if qid_key(int(r["index"])) in inputs.question_keys]
        if "answer" not in rows[0] or any(is_missing_cell(r.get("answer")) for r in rows):
            raise EvalDataError(f"{path} has no answers for some rows: only dev can be scored locally (test needs the server)")
        self._refuse_later_rounds(answers, inputs.answers_file)
        preds = answers_by_key(answers, inputs.answers_file)
        records = []
        for row in rows:
            a = preds.get(qid_key(int(row["index"])))
            if a is None:
                raise EvalDataError(f"{self.title}: no answer for index {row['index']}")
            records.append(
                {
                    "index": int(row["index"]),
                    "answer": row["answer"].strip(),
                    "options": evaluator_choices(row),
                    "text": a["text"],
                    "question": row["question"],
                    "category": row.get("category"),
                    "l2_category": row.get("l2-category"),
                }
            )
        return score_mmbench(records, judge=inputs.judge, bench=self.name)


class MMBenchCN(MMBench):
    """MMBench-CN dev (``mmbench_dev_cn_20231003.tsv``): the same questions translated, Chinese suffix."""

    name = "mmbench_cn"
    title = "MMBench-CN"
    suffix = OPTION_LETTER_CN


# --------------------------------------------------------------------------------------------------- MMStar
class MMStar(Benchmark):
    """MMStar val (1,500). Question file: the OpenCompass ``MMStar.tsv`` (base64 images) or a JSONL with
    ``index``, ``question``, ``answer``, ``category``, ``l2_category`` and ``image`` (a path under the image
    folder). Options are appended as ``A. ...`` lines only when the file has option columns and the question
    text does not already list them. It is also the ground truth: score with ``--question-file``."""

    name = "mmstar"
    title = "MMStar"
    suffix = OPTION_LETTER

    def _records(self, path: str) -> list[dict[str, Any]]:
        if path.endswith(".tsv"):
            return read_tsv(path, "MMStar TSV", required_columns=("index", "question", "answer", "category"))
        return [r for _, r in iter_jsonl(path, "MMStar question file")]

    def _text(self, rec: dict[str, Any]) -> str:
        text = str(rec["question"])
        has_listed_options = "Options:" in text or "\nA." in text
        if not has_listed_options:
            for letter in MC_LETTERS:
                value = rec.get(letter)
                if value is None or is_missing_cell(str(value)):
                    break
                text += f"\n{letter}. {value}"
        return ensure_suffix(text, self.suffix)

    def load_questions(self, path: str) -> list[Question]:
        questions = []
        tsv = path.endswith(".tsv")
        for rec in self._records(path):
            qid = rec.get("index", rec.get("question_id"))
            if qid is None:
                raise EvalDataError(f"MMStar question file {path}: a record has no 'index'")
            if tsv:
                questions.append(Question(qid=int(qid), text=self._text(rec), image_b64=rec.get("image") or None))
            else:
                questions.append(Question(qid=qid, text=self._text(rec), image=rec.get("image"), extra={"image": rec.get("image")}))
        return questions

    def score(self, answers: list[dict[str, Any]], inputs: ScoreInputs) -> ScoreResult:
        path = require(inputs.question_file, "--question-file (the MMStar file, which holds the answers)", self.name)
        preds = answers_by_key(answers, inputs.answers_file)
        records = []
        for rec in self._records(path):
            qid = rec.get("index", rec.get("question_id"))
            key = qid_key(int(qid) if path.endswith(".tsv") else qid)
            if inputs.question_keys is not None and key not in inputs.question_keys:
                continue  # a LIMIT subset: only its questions count
            a = preds.get(key)
            if a is None:
                raise EvalDataError(f"MMStar: no answer for index {qid}")
            records.append(
                {
                    "text": a["text"],
                    "answer": rec["answer"],
                    "category": rec.get("category"),
                    "l2_category": rec.get("l2_category", rec.get("l2-category")),
                }
            )
        return score_mmstar(records)
