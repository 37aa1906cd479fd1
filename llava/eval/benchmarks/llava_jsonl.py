"""Adapters for benchmarks whose questions come as LLaVA JSONL (``question_id``, ``image``, ``text``, ``category``):
GQA, VQAv2, VizWiz, TextVQA, POPE, MME and SEED-IMG.

Each adapter also accepts the official question format where scoring a local proxy needs it (VQAv2 val
questions, VizWiz ``val.json``), so no conversion script is needed for those.

Answer files written by upstream LLaVA (``model_vqa_loader.py``: ``question_id``, ``prompt``, ``text``,
``answer_id``, ``model_id``, ``metadata``) and the reference predictions shipped with LLaVA's eval data lack
the fields our runner copies from the question (``image``, ``category``, ``uid``). Where a scorer needs one,
it is looked up the way upstream's own scorer looks it up: by ``question_id`` in ``--question-file`` (POPE,
VizWiz), from the ``question_id`` itself (MME), or by (``question_id``, prompt text) (TextVQA, and the coverage
check of the benchmarks whose question ids repeat).
"""

from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any, ClassVar

from llava.eval.benchmarks.base import (
    OPTION_LETTER,
    SHORT_ANSWER,
    VIZWIZ_SUFFIX,
    Benchmark,
    Question,
    ScoreInputs,
    answers_by_key,
    check_answer_fields,
    ensure_suffix,
    require,
    strip_suffix,
)
from llava.eval.files import EvalDataError, iter_jsonl, qid_key, read_json, read_json_records, require_file
from llava.eval.scorers import gqa as gqa_scorer
from llava.eval.scorers.common import ScoreResult
from llava.eval.scorers.mme import score_mme
from llava.eval.scorers.pope import score_pope
from llava.eval.scorers.seed import score_seed
from llava.eval.scorers.vqa import score_vqa

logger = logging.getLogger(__name__)


def load_llava_jsonl(path: str, suffix: str, what: str) -> list[Question]:
    """Reads LLaVA's question JSONL; every line needs ``question_id`` and ``text``."""
    questions = []
    for lineno, rec in iter_jsonl(path, what):
        for key in ("question_id", "text"):
            if key not in rec:
                raise EvalDataError(f"{what} {path}, line {lineno}: missing field {key!r}")
        extra = {"image": rec.get("image")}
        if "category" in rec:
            extra["category"] = rec["category"]
        questions.append(Question(qid=rec["question_id"], text=ensure_suffix(rec["text"], suffix), image=rec.get("image"), extra=extra))
    return questions


def assign_uids(questions: list[Question]) -> list[Question]:
    """Gives each question the uid "<question_id>#<k>", k counting that id's questions in file order.

    LLaVA's TextVQA and MME files reuse one ``question_id`` for several questions (the image id / image path),
    so resume and merge need a key that tells them apart; it is deterministic for a given question file.
    """
    seen: dict[str, int] = {}
    for q in questions:
        base = qid_key(q.qid)
        k = seen.get(base, 0)
        seen[base] = k + 1
        q.uid = f"{base}#{k}"
    return questions


class LlavaJsonlBenchmark(Benchmark):
    """Questions from LLaVA's eval.zip JSONL files."""

    repeated_ids: ClassVar[bool] = False  # True where LLaVA's file reuses question_id (TextVQA, MME)
    question_file_name: ClassVar[str] = "the LLaVA question file"  # named in errors asking for --question-file

    def load_questions(self, path: str) -> list[Question]:
        questions = load_llava_jsonl(path, self.suffix, f"{self.title} question file")
        return assign_uids(questions) if self.repeated_ids else questions

    def answer_keys(
        self, answers: list[dict[str, Any]], questions: list[Question], answers_file: str, question_file: str
    ) -> list[str]:
        """Where question ids repeat, an answer without our ``uid`` is matched on (question_id, prompt text).

        That is the key upstream's scorers use (``eval_textvqa.py``: image id + the question read from the
        prompt; ``convert_answer_to_mme.py``: subtask/image from the id + the prompt). Questions that share both
        the id and the text are the same question on the same image, so they are paired in file order, which
        cannot change a score. An answer that matches no question, or one question too many times, is an error.
        """
        if not self.repeated_ids:
            return super().answer_keys(answers, questions, answers_file, question_file)
        check_answer_fields(answers, answers_file, ("question_id",))
        slots: dict[tuple[str, str], list[str]] = defaultdict(list)
        for q in questions:
            slots[(qid_key(q.qid), strip_suffix(q.text, self.suffix))].append(q.key)
        taken: Counter[tuple[str, str]] = Counter()
        keys = []
        for n, a in enumerate(answers, start=1):
            if a.get("uid") is not None:
                keys.append(str(a["uid"]))
                continue
            if a.get("prompt") is None:
                raise EvalDataError(
                    f"{answers_file}, answer {n}: no 'uid' and no 'prompt', so it cannot be matched to one of the "
                    f"{self.title} questions sharing question_id {a['question_id']!r} in {question_file}"
                )
            slot = (qid_key(a["question_id"]), strip_suffix(str(a["prompt"]), self.suffix))
            candidates = slots.get(slot, [])
            if not candidates:
                raise EvalDataError(
                    f"{answers_file}, answer {n}: no question in {question_file} has question_id "
                    f"{a['question_id']!r} and the prompt {str(a['prompt'])[:200]!r}; were the answers written for "
                    "another question file?"
                )
            if taken[slot] >= len(candidates):
                raise EvalDataError(
                    f"{answers_file}, answer {n}: question_id {a['question_id']!r} with the prompt "
                    f"{str(a['prompt'])[:200]!r} is answered more often than {question_file} asks it "
                    f"({len(candidates)} time(s)): a doubled answer (a rerun appended to the file?)"
                )
            keys.append(candidates[taken[slot]])
            taken[slot] += 1
        return keys

    def fill_from_questions(
        self, answers: list[dict[str, Any]], fields: tuple[str, ...], inputs: ScoreInputs
    ) -> list[dict[str, Any]]:
        """The answers, with ``fields`` copied from their question wherever an answer lacks them.

        Our runner writes these fields into every answer; upstream's writers do not, and upstream's scorer
        looks them up in the question file by ``question_id`` (``eval_pope.py``). A question file that repeats
        that id makes the lookup ambiguous, which is an error here (upstream silently takes the last line).
        """
        lacking = [a for a in answers if any(a.get(f) is None for f in fields)]
        if not lacking:
            return answers
        names = "/".join(repr(f) for f in fields)
        if not inputs.question_file:
            raise EvalDataError(
                f"{self.title}: {len(lacking)} of {len(answers)} answer(s) in {inputs.answers_file} have no {names} "
                "(an answer file written by upstream LLaVA's model_vqa_loader.py, or LLaVA's reference predictions); "
                f"pass --question-file ({self.question_file_name}) so that they can be joined to their questions by "
                "question_id"
            )
        path = inputs.question_file
        by_id: dict[str, list[Question]] = defaultdict(list)
        for q in self.load_questions(path):
            by_id[qid_key(q.qid)].append(q)
        filled_answers = []
        for n, a in enumerate(answers, start=1):
            if all(a.get(f) is not None for f in fields):
                filled_answers.append(a)
                continue
            matches = by_id.get(qid_key(a["question_id"]), [])
            if not matches:
                raise EvalDataError(f"{inputs.answers_file}, answer {n}: question_id {a['question_id']!r} is not in {path}")
            if len(matches) > 1:
                raise EvalDataError(
                    f"{inputs.answers_file}, answer {n}: question_id {a['question_id']!r} appears {len(matches)} times "
                    f"in {path}, so its {names} cannot be looked up by question_id; use answers written by "
                    "llava.eval.run_benchmark (they carry these fields) or a question file with unique ids"
                )
            q = matches[0]
            # Catches a question file of another release that reuses the ids for other questions.
            if a.get("prompt") is not None and strip_suffix(str(a["prompt"]), self.suffix) != strip_suffix(q.text, self.suffix):
                raise EvalDataError(
                    f"{inputs.answers_file}, answer {n}: question_id {a['question_id']!r} was asked "
                    f"{str(a['prompt'])[:200]!r}, but {path} says {q.text[:200]!r}; the answers were written for "
                    "another question file"
                )
            filled = dict(a)
            for f in fields:
                if filled.get(f) is None:
                    if q.extra.get(f) is None:
                        raise EvalDataError(f"{path}: question {q.qid!r} has no {f!r}, which {self.title} scoring needs")
                    filled[f] = q.extra[f]
            filled_answers.append(filled)
        logger.info(
            "%s: took %s of %d answer(s) from %s by question_id", self.title, names, len(lacking), path
        )
        return filled_answers


# --------------------------------------------------------------------------------------------------- GQA
class GQA(LlavaJsonlBenchmark):
    """GQA testdev-balanced. Score inputs: ``--answers-file`` (the converted ``testdev_balanced_predictions.json``,
    or the merged answers JSONL), ``--annotation-file`` (official ``testdev_balanced_questions.json``)."""

    name = "gqa"
    title = "GQA"

    def read_answers(self, path: str) -> list[dict[str, Any]]:
        records = read_json_records(path, "GQA predictions file")
        if records and "questionId" in records[0]:
            return [{"question_id": r["questionId"], "text": r["prediction"], "converted": True} for r in records]
        return records

    def _predictions_and_questions(
        self, answers: list[dict[str, Any]], inputs: ScoreInputs
    ) -> tuple[dict[str, str], dict[str, Any]]:
        questions = read_json(require(inputs.annotation_file, "--annotation-file (testdev_balanced_questions.json)", self.name), "GQA questions file")
        if not isinstance(questions, dict):
            raise EvalDataError(f"GQA questions file {inputs.annotation_file} must be a JSON object keyed by question id")
        if not questions:
            raise EvalDataError(f"GQA questions file {inputs.annotation_file} holds no questions; nothing can be scored")
        if inputs.question_keys is not None:  # a LIMIT subset: only its questions count
            questions = {k: v for k, v in questions.items() if k in inputs.question_keys}
        predictions = {}
        for k, a in answers_by_key(answers, inputs.answers_file).items():
            text = str(a["text"])
            predictions[k] = text if a.get("converted") else gqa_scorer.convert_prediction(text)
        extra = set(predictions) - set(questions)
        if extra:
            logger.warning("%d GQA predictions have no question in %s; ignored", len(extra), inputs.annotation_file)
        return predictions, questions

    def hits(self, answers_file: str, annotation_file: str) -> dict[str, bool]:
        """Per balanced question, whether it was answered correctly: the paired statistics' input."""
        inputs = ScoreInputs(answers_file=answers_file, annotation_file=annotation_file)
        predictions, questions = self._predictions_and_questions(self.read_answers(answers_file), inputs)
        try:
            return gqa_scorer.gqa_hits(predictions, questions)
        except ValueError as e:
            raise EvalDataError(f"GQA: {e} (questions file {annotation_file}, answers {answers_file})") from None

    def score(self, answers: list[dict[str, Any]], inputs: ScoreInputs) -> ScoreResult:
        predictions, questions = self._predictions_and_questions(answers, inputs)
        try:
            return gqa_scorer.score_gqa(predictions, questions)
        except ValueError as e:  # questions without a prediction: the two files are not from the same split
            raise EvalDataError(
                f"GQA: {e} (questions file {inputs.annotation_file}, answers {inputs.answers_file}); are the answers "
                "and the questions file from the same split?"
            ) from None


# --------------------------------------------------------------------------------------------------- VQAv2
class VQAv2(LlavaJsonlBenchmark):
    """VQAv2. test-dev: ``convert`` writes the EvalAI upload. val (local proxy): the question file may be the
    official ``v2_OpenEnded_mscoco_val2014_questions.json``; score with ``--annotation-file
    v2_mscoco_val2014_annotations.json``."""

    name = "vqav2"
    title = "VQAv2"
    server_only = True

    def load_questions(self, path: str) -> list[Question]:
        if path.endswith(".jsonl"):
            return super().load_questions(path)
        data = read_json(path, "VQAv2 question file")
        if not isinstance(data, dict) or "questions" not in data:
            raise EvalDataError(f"VQAv2 question file {path}: expected LLaVA JSONL or the official JSON with 'questions'")
        subtype = data.get("data_subtype", "val2014")
        return [
            Question(
                qid=q["question_id"],
                text=ensure_suffix(q["question"], self.suffix),
                image=f"COCO_{subtype}_{int(q['image_id']):012d}.jpg",
                extra={"image": f"COCO_{subtype}_{int(q['image_id']):012d}.jpg"},
            )
            for q in data["questions"]
        ]

    def score(self, answers: list[dict[str, Any]], inputs: ScoreInputs) -> ScoreResult:
        path = require(inputs.annotation_file, "--annotation-file (v2_mscoco_<split>_annotations.json)", self.name)
        data = read_json(path, "VQAv2 annotation file")
        ann_list = data.get("annotations") if isinstance(data, dict) else None
        if ann_list is None:
            raise EvalDataError(f"VQAv2 annotation file {path} has no 'annotations' list")
        by_qid = {qid_key(a["question_id"]): a for a in ann_list}
        preds = {k: str(a["text"]) for k, a in answers_by_key(answers, inputs.answers_file).items()}
        missing = [k for k in preds if k not in by_qid]
        if missing:
            raise EvalDataError(f"{len(missing)} VQAv2 answers have no annotation in {path}, e.g. {missing[:5]}")
        annotations = {
            k: {
                "answers": [x["answer"] for x in by_qid[k]["answers"]],
                "answer_type": by_qid[k].get("answer_type"),
                "question_type": by_qid[k].get("question_type"),
            }
            for k in preds
        }
        result = score_vqa("vqav2", preds, annotations)
        result.bench = self.name
        result.details["split"] = "local proxy (official VQAv2 algorithm on a split with public answers)"
        return result


# --------------------------------------------------------------------------------------------------- VizWiz
class VizWiz(LlavaJsonlBenchmark):
    """VizWiz. test: ``convert`` writes the upload. val (local proxy): the question file may be the official
    ``val.json``; score with ``--annotation-file val.json`` (joined on the image name)."""

    name = "vizwiz"
    title = "VizWiz"
    suffix = VIZWIZ_SUFFIX
    server_only = True
    question_file_name = "the val question file the answers were written for: val.json or a LLaVA-format JSONL"

    def load_questions(self, path: str) -> list[Question]:
        if path.endswith(".jsonl"):
            return super().load_questions(path)
        data = read_json(path, "VizWiz question file")
        if not isinstance(data, list):
            raise EvalDataError(f"VizWiz question file {path}: expected LLaVA JSONL or the official JSON list")
        return [
            Question(qid=q["image"], text=ensure_suffix(q["question"], self.suffix), image=q["image"], extra={"image": q["image"]})
            for q in data
        ]

    def score(self, answers: list[dict[str, Any]], inputs: ScoreInputs) -> ScoreResult:
        path = require(inputs.annotation_file, "--annotation-file (VizWiz val.json)", self.name)
        data = read_json(path, "VizWiz annotation file")
        if not isinstance(data, list):
            raise EvalDataError(f"VizWiz annotation file {path}: expected the official JSON list (val.json)")
        by_image = {a["image"]: a for a in data}
        preds: dict[str, str] = {}
        check_answer_fields(answers, inputs.answers_file)
        # The evaluator joins results on the image name; upstream-written answers carry only question_id.
        answers = self.fill_from_questions(answers, ("image",), inputs)
        for a in answers_by_key(answers, inputs.answers_file).values():
            image = a.get("image")
            if image not in by_image:
                raise EvalDataError(f"VizWiz answer {a['question_id']!r} (image {image!r}) has no annotation in {path}")
            preds[image] = str(a["text"])
        annotations = {
            img: {"answers": [x["answer"] for x in by_image[img]["answers"]], "answer_type": by_image[img].get("answer_type")}
            for img in preds
        }
        result = score_vqa("vizwiz", preds, annotations)
        result.bench = self.name
        result.details["split"] = "local proxy (VizWiz algorithm on val)"
        return result


# --------------------------------------------------------------------------------------------------- TextVQA
def textvqa_question(prompt: str) -> str:
    """Recovers the question from a TextVQA prompt, as upstream does: the first line of a 3-line prompt with a
    "Reference OCR token:" line, or of a 2-line prompt without one."""
    lines = prompt.rstrip().split("\n")
    if len(lines) == 3 and "Reference OCR token: " in prompt:
        return (lines[1] if lines[0].startswith("Reference OCR token:") else lines[0]).lower()
    if len(lines) == 2:
        return lines[0].lower()
    raise EvalDataError(f"unexpected TextVQA prompt layout ({len(lines)} lines): {prompt[:200]!r}")


class TextVQA(LlavaJsonlBenchmark):
    """TextVQA val with OCR tokens. Score inputs: ``--annotation-file TextVQA_0.5.1_val.json``; answers are joined
    on (image id, lowercased question), because LLaVA's ``question_id`` is the image id and is not unique."""

    name = "textvqa"
    title = "TextVQA"
    repeated_ids = True

    def score(self, answers: list[dict[str, Any]], inputs: ScoreInputs) -> ScoreResult:
        path = require(inputs.annotation_file, "--annotation-file (TextVQA_0.5.1_val.json)", self.name)
        data = read_json(path, "TextVQA annotation file")
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise EvalDataError(f"TextVQA annotation file {path}: expected a JSON object with a 'data' list")
        # Keyed as upstream keys it; a repeated (image, question) pair keeps its last entry there too.
        index = {(a["image_id"], a["question"].lower()): a for a in data["data"]}
        check_answer_fields(answers, inputs.answers_file, ("question_id", "prompt", "text"))
        preds: dict[str, str] = {}
        annotations: dict[str, Mapping[str, Any]] = {}
        for i, a in enumerate(answers):
            key = (a["question_id"], textvqa_question(a["prompt"]))
            if key not in index:
                raise EvalDataError(f"TextVQA answer {key} has no annotation in {path}")
            preds[str(i)] = str(a["text"])
            annotations[str(i)] = {"answers": index[key]["answers"]}
        result = score_vqa("textvqa", preds, annotations)
        result.bench = self.name
        return result


# --------------------------------------------------------------------------------------------------- POPE
POPE_SPLITS = ("adversarial", "popular", "random")


class POPE(LlavaJsonlBenchmark):
    """POPE (COCO). Score inputs: ``--annotation-dir`` holding ``coco_pope_{adversarial,popular,random}.json``.

    Labels are joined on (split, image, question text); a question without a label, or a key with two
    different labels, is an error. Answers without ``category``/``image`` (upstream's) take them from
    ``--question-file`` by question_id, as ``eval_pope.py`` does.
    """

    name = "pope"
    title = "POPE"
    question_file_name = "llava_pope_test.jsonl, which gives each question its split as 'category'"

    def score(self, answers: list[dict[str, Any]], inputs: ScoreInputs) -> ScoreResult:
        ann_dir = require(inputs.annotation_dir, "--annotation-dir (the folder with coco_pope_<split>.json)", self.name)
        check_answer_fields(answers, inputs.answers_file, ("question_id", "prompt", "text"))
        answers = self.fill_from_questions(answers, ("category", "image"), inputs)
        splits = sorted({str(a["category"]) for a in answers})
        labels: dict[tuple[str, str, str], str] = {}
        for split in splits:
            path = os.path.join(ann_dir, f"coco_pope_{split}.json")
            for rec in read_json_records(require_file(path, f"POPE annotation file for split {split!r}"), "POPE annotation file"):
                key = (split, rec["image"], rec["text"].strip())
                label = str(rec["label"]).strip().lower()
                if labels.setdefault(key, label) != label:
                    raise EvalDataError(f"POPE annotation {path}: conflicting labels for {key}")
        records = []
        for a in answers:
            key = (str(a["category"]), str(a["image"]), strip_suffix(a["prompt"], self.suffix))
            if key not in labels:
                raise EvalDataError(f"POPE answer {a['question_id']!r}: no label for (split, image, question) = {key}")
            records.append({"split": key[0], "text": str(a["text"]), "label": labels[key]})
        return score_pope(records)


# --------------------------------------------------------------------------------------------------- MME
def _mme_question_key(question: str) -> str:
    """The question without MME's "Please answer yes or no." and LLaVA's suffix, whitespace collapsed."""
    q = strip_suffix(question, SHORT_ANSWER)
    q = strip_suffix(q, "Please answer yes or no.")
    return " ".join(q.split())


def load_mme_ground_truth(root: str) -> dict[tuple[str, str, str], str]:
    """Reads ``MME_Benchmark_release_version``: {(subtask, image stem, question): "Yes"/"No"}.

    Subtasks keep their txt files either in ``questions_answers_YN/`` or next to the images; each line is
    ``question<TAB>Yes|No``.
    """
    if not os.path.isdir(root):
        raise EvalDataError(f"MME benchmark folder not found: {root}")
    gt: dict[tuple[str, str, str], str] = {}
    for subtask in sorted(os.listdir(root)):
        task_dir = os.path.join(root, subtask)
        if not os.path.isdir(task_dir):
            continue
        qa_dir = os.path.join(task_dir, "questions_answers_YN")
        if not os.path.isdir(qa_dir):
            qa_dir = task_dir
        for fname in sorted(os.listdir(qa_dir)):
            if not fname.endswith(".txt"):
                continue
            path = os.path.join(qa_dir, fname)
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    parts = line.rstrip("\r\n").split("\t")
                    answer = parts[-1].strip()
                    if len(parts) < 2 or answer.lower() not in ("yes", "no"):
                        raise EvalDataError(f"MME ground truth {path}, line {lineno}: expected 'question<TAB>Yes|No'")
                    gt[(subtask, os.path.splitext(fname)[0], _mme_question_key(parts[0]))] = answer
    if not gt:
        raise EvalDataError(f"no MME ground-truth txt files under {root}")
    return gt


class MME(LlavaJsonlBenchmark):
    """MME. Score inputs: ``--annotation-dir MME_Benchmark_release_version``. Answers are joined on (subtask,
    image, question) and acc+ groups by image, so answer order does not matter. Answers without ``category`` /
    ``image`` (upstream's) take both from the question id ``<subtask>/<image file>``, as upstream's
    ``convert_answer_to_mme.py`` does."""

    name = "mme"
    title = "MME"
    repeated_ids = True  # question_id is "<subtask>/<image>", shared by the image's two questions

    def score(self, answers: list[dict[str, Any]], inputs: ScoreInputs) -> ScoreResult:
        gt = load_mme_ground_truth(require(inputs.annotation_dir, "--annotation-dir (MME_Benchmark_release_version)", self.name))
        check_answer_fields(answers, inputs.answers_file, ("question_id", "prompt", "text"))
        records = []
        for n, a in enumerate(answers, start=1):
            qid = str(a["question_id"])
            if not a.get("category") and "/" not in qid:
                raise EvalDataError(
                    f"{inputs.answers_file}, answer {n}: no 'category', and question_id {qid!r} is not "
                    "'<subtask>/<image file>' (the form of llava_mme.jsonl), so its subtask is unknown"
                )
            subtask = str(a.get("category") or qid.split("/")[0])
            image = os.path.basename(str(a.get("image") or qid))
            key = (subtask, os.path.splitext(image)[0], _mme_question_key(a["prompt"]))
            if key not in gt:
                raise EvalDataError(f"MME answer {qid!r}: no ground truth for (subtask, image, question) = {key}")
            records.append({"subtask": subtask, "image": image, "text": str(a["text"]), "gt": gt[key]})
        return score_mme(records)


# --------------------------------------------------------------------------------------------------- SEED
def is_seed_video_question(question: Question) -> bool:
    """LLaVA's SEED file points video questions at a middle frame under ``SEED-Bench-video-image/``."""
    return str(question.image or "").startswith("SEED-Bench-video-image")


class SEED(LlavaJsonlBenchmark):
    """SEED-Bench v1, image questions only. Questions whose image is a video frame (``SEED-Bench-video-image/``)
    are skipped when reading the question file, so they are never run. Score inputs: ``--annotation-file
    SEED-Bench.json``.

    As in upstream's ``convert_seed_for_submission.py``, the denominator is every image question of
    SEED-Bench.json: one without an answer counts as wrong (and is counted in ``num_missing``). Answers to
    video questions (upstream runs them) are left out of SEED-IMG and counted.
    """

    name = "seed"
    title = "SEED-IMG"
    suffix = OPTION_LETTER

    def load_questions(self, path: str) -> list[Question]:
        questions = super().load_questions(path)
        kept = [q for q in questions if not is_seed_video_question(q)]
        if len(kept) != len(questions):
            logger.info("SEED: skipping %d video questions (SEED-IMG uses image questions only)", len(questions) - len(kept))
        return kept

    def skipped_question_keys(self, question_file: str) -> set[str]:
        questions = super().load_questions(question_file)
        return {q.key for q in questions if is_seed_video_question(q)}

    def score(self, answers: list[dict[str, Any]], inputs: ScoreInputs) -> ScoreResult:
        path = require(inputs.annotation_file, "--annotation-file (SEED-Bench.json)", self.name)
        data = read_json(path, "SEED-Bench annotation file")
        if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
            raise EvalDataError(f"SEED-Bench annotation file {path}: expected a JSON object with a 'questions' list")
        type_names = {int(v): k for k, v in data.get("question_type", {}).items()}
        by_answer = answers_by_key(answers, inputs.answers_file)
        known = {qid_key(q["question_id"]) for q in data["questions"]}
        unknown = [a["question_id"] for k, a in by_answer.items() if k not in known]
        if unknown:
            raise EvalDataError(f"{len(unknown)} SEED answer(s) have no question in {path}, e.g. {unknown[:5]}")
        records = []
        video_answers = 0
        for q in data["questions"]:
            if inputs.question_keys is not None and qid_key(q["question_id"]) not in inputs.question_keys:
                continue  # a LIMIT subset: only its questions count
            a = by_answer.get(qid_key(q["question_id"]))
            if q.get("data_type", "image") != "image":
                video_answers += a is not None
                continue
            qtype = q.get("question_type_id")
            records.append(
                {"text": None if a is None else a["text"], "answer": q["answer"], "question_type": type_names.get(qtype, qtype)}
            )
        answered = sum(r["text"] is not None for r in records)
        if records and not answered:
            # Every image question would count as wrong: that is a wrong file, not a score of 0.
            raise EvalDataError(
                f"SEED: none of the {len(answers)} answer(s) in {inputs.answers_file} is for an image question of "
                f"{path}; are they SEED-Bench v1 answers?"
            )
        if answered < len(records):
            logger.warning(
                "SEED: %d of the %d image questions in %s have no answer in %s; they count as wrong, as in the "
                "official script", len(records) - answered, len(records), path, inputs.answers_file,
            )
        result = score_seed(records)
        result.details["num_video_answers_ignored"] = video_answers
        if video_answers:
            result.extra_lines.append(f"SEED-IMG: {video_answers} answer(s) to video questions not scored (image split only)")
        return result


__all__ = ["GQA", "MME", "POPE", "SEED", "TextVQA", "VQAv2", "VizWiz", "is_seed_video_question", "load_llava_jsonl"]
