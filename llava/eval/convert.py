"""Writes merged answers in the file formats of upstream tools and evaluation servers.

    python -m llava.eval.convert --bench gqa    --answers-file merge.jsonl --output testdev_balanced_predictions.json
    python -m llava.eval.convert --bench vqav2  --answers-file merge.jsonl --question-file llava_vqav2_mscoco_test2015.jsonl --output upload.json
    python -m llava.eval.convert --bench vizwiz --answers-file merge.jsonl --question-file llava_test.jsonl --output upload.json
    python -m llava.eval.convert --bench seed   --answers-file merge.jsonl --annotation-file SEED-Bench.json --output upload.jsonl
    python -m llava.eval.convert --bench mmbench --answers-file answers.jsonl --question-file mmbench_dev_20230712.tsv --output upload.xlsx

- GQA: ``[{"questionId": str, "prediction": text.rstrip('.').lower()}]``, the official eval.py input.
- VQAv2 (EvalAI challenge 830, phase test-dev2015): a JSON list ``[{"question_id": int, "answer": str}]`` over
  *all* test2015 questions, answers EvalAI-normalized, ``""`` for the test-std-only questions that test-dev does
  not include. Every question of the test-dev answers must be present.
- VizWiz: ``[{"image": "VizWiz_test_XXXXXXXX.jpg", "answer": str}]`` with EvalAI-normalized answers; every test
  question must have an answer.
- SEED: the optional leaderboard upload, JSON lines ``{"question_id", "prediction"}``. ``question_id`` is the
  string SEED-Bench.json uses (LLaVA's question file and so the answers hold it as an int), in SEED-Bench.json's
  order when ``--annotation-file`` is given; every image question must then have an answer.
- MMBench / MMBench-CN (OpenCompass server): an ``.xlsx`` with the TSV's rows and columns, minus the image and
  the metadata columns upstream's converter drops (``hint, category, source, image, comment, l2-category``), and
  a ``prediction`` column after the options. Every row needs an answer; answers of ``--all-rounds`` runs
  (``round_id`` > 0) are refused, as by the scorer.

The answers file may come from our runner or from upstream LLaVA's answer writers (``model_vqa_loader.py``:
``question_id``, ``prompt``, ``text``, ``answer_id``, ``model_id``, ``metadata``); only ``question_id`` and
``text`` are read. A line without them, or a second answer to a question, is an error naming the line.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from typing import Any

from llava.eval.files import EvalDataError, iter_jsonl, qid_key, read_json, read_tsv, write_json, write_jsonl
from llava.eval.scorers.gqa import convert_prediction
from llava.eval.scorers.vqa import evalai_normalize

logger = logging.getLogger("llava.eval.convert")

CONVERTIBLE = ("gqa", "vqav2", "vizwiz", "seed", "mmbench", "mmbench_cn")
MMBENCH_DROPPED_COLUMNS = ("hint", "category", "source", "image", "comment", "l2-category")


def read_answer_lines(path: str) -> list[dict[str, Any]]:
    """The answers file's records; each needs ``question_id`` and ``text``, and no question may be answered twice.

    Upstream's converters build ``{question_id: text}`` dicts, so a doubled answer silently replaces the first.
    """
    answers: list[dict[str, Any]] = []
    first_line: dict[str, int] = {}
    for lineno, rec in iter_jsonl(path, "answers file"):
        lacking = [f for f in ("question_id", "text") if rec.get(f) is None]
        if lacking:
            raise EvalDataError(f"answers file {path}, line {lineno}: no {'/'.join(lacking)}")
        key = qid_key(rec["question_id"])
        if key in first_line:
            raise EvalDataError(
                f"answers file {path}, line {lineno}: a second answer to question {rec['question_id']!r} (the first is "
                f"on line {first_line[key]})"
            )
        first_line[key] = lineno
        answers.append(rec)
    return answers


def gqa_predictions(answers: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"questionId": str(a["question_id"]), "prediction": convert_prediction(str(a["text"]))} for a in answers]


def vqav2_submission(answers: Sequence[dict[str, Any]], test_questions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per test2015 question, in the test file's order; ``""`` where there is no answer."""
    by_key = {qid_key(a["question_id"]): str(a["text"]) for a in answers}
    test_keys = {qid_key(q["question_id"]) for q in test_questions}
    unknown = [k for k in by_key if k not in test_keys]
    if unknown:
        raise EvalDataError(f"{len(unknown)} answers are not test2015 questions, e.g. {unknown[:5]}")
    out = []
    for q in test_questions:
        text = by_key.get(qid_key(q["question_id"]))
        out.append({"question_id": int(q["question_id"]), "answer": "" if text is None else evalai_normalize(text)})
    blank = len(test_questions) - len(by_key)
    logger.info("VQAv2 upload: %d answered, %d blank (questions outside the answered split)", len(by_key), blank)
    return out


def vizwiz_submission(answers: Sequence[dict[str, Any]], test_questions: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    by_key = {qid_key(a["question_id"]): str(a["text"]) for a in answers}
    missing = [q["question_id"] for q in test_questions if qid_key(q["question_id"]) not in by_key]
    if missing:
        raise EvalDataError(f"{len(missing)} VizWiz test questions have no answer, e.g. {missing[:5]}")
    return [{"image": q["image"], "answer": evalai_normalize(by_key[qid_key(q["question_id"])])} for q in test_questions]


def seed_upload(
    answers: Sequence[dict[str, Any]], seed_questions: Sequence[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """``{"question_id": str, "prediction"}`` per answer.

    With SEED-Bench.json's ``questions`` the lines follow its order and carry its question_id strings exactly
    (as upstream's converter writes them); every image question must be answered, and video questions are
    included when answered (upstream's runs answer them, ours do not). Without it, ids are written as strings
    in answer order.
    """
    if seed_questions is None:
        return [{"question_id": qid_key(a["question_id"]), "prediction": str(a["text"])} for a in answers]
    by_key = {qid_key(a["question_id"]): str(a["text"]) for a in answers}
    known = {qid_key(q["question_id"]) for q in seed_questions}
    unknown = [a["question_id"] for a in answers if qid_key(a["question_id"]) not in known]
    if unknown:
        raise EvalDataError(f"{len(unknown)} answer(s) are not SEED-Bench questions, e.g. {unknown[:5]}")
    missing = [
        q["question_id"]
        for q in seed_questions
        if q.get("data_type", "image") == "image" and qid_key(q["question_id"]) not in by_key
    ]
    if missing:
        raise EvalDataError(f"{len(missing)} SEED-Bench image question(s) have no answer, e.g. {missing[:5]}")
    out = [
        {"question_id": str(q["question_id"]), "prediction": by_key[qid_key(q["question_id"])]}
        for q in seed_questions
        if qid_key(q["question_id"]) in by_key
    ]
    left_out = len(seed_questions) - len(out)
    if left_out:
        logger.info("SEED upload: %d video question(s) have no answer and are left out (SEED-IMG runs images only)", left_out)
    return out


def mmbench_submission(
    answers: Sequence[dict[str, Any]], rows: Sequence[dict[str, str]]
) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the MMBench upload: the TSV's rows in order with their ``prediction``."""
    later = [a for a in answers if a.get("round_id") not in (None, 0)]
    if later:
        raise EvalDataError(f"{len(later)} answer(s) have round_id > 0 (model_vqa_mmbench --all-rounds); the upload "
                            "takes one answer per TSV row: rerun without --all-rounds")
    by_key = {qid_key(a["question_id"]): str(a["text"]) for a in answers}
    missing = [r["index"] for r in rows if qid_key(int(r["index"])) not in by_key]
    if missing:
        raise EvalDataError(f"{len(missing)} MMBench row(s) have no answer, e.g. index {missing[:5]}")
    columns = [c for c in rows[0] if c not in MMBENCH_DROPPED_COLUMNS] if rows else []
    at = columns.index("D") + 1 if "D" in columns else len(columns)
    header = [*columns[:at], "prediction", *columns[at:]]
    body = [[*(r[c] for c in columns[:at]), by_key[qid_key(int(r["index"]))], *(r[c] for c in columns[at:])]
            for r in rows]
    return header, body


def write_xlsx(path: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """One sheet, every cell as text (MMBench's server reads the cells as strings)."""
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.append(list(header))
    for row in rows:
        sheet.append(list(row))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    book.save(path)


def read_seed_questions(path: str) -> list[dict[str, Any]]:
    data = read_json(path, "SEED-Bench annotation file")
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise EvalDataError(f"SEED-Bench annotation file {path}: expected a JSON object with a 'questions' list")
    return data["questions"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.eval.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("--bench", required=True, choices=CONVERTIBLE)
    p.add_argument("--answers-file", required=True, help="merged answers (JSONL)")
    p.add_argument("--question-file", default=None,
                   help="VQAv2: the full test2015 list; VizWiz: llava_test.jsonl; MMBench: the TSV")
    p.add_argument(
        "--annotation-file", default=None, help="SEED: SEED-Bench.json (its id strings and order; checks coverage)"
    )
    p.add_argument("--output", required=True)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    answers = read_answer_lines(args.answers_file)
    if args.bench == "gqa":
        write_json(args.output, gqa_predictions(answers), indent=None)
    elif args.bench in ("mmbench", "mmbench_cn"):
        if not args.question_file:
            parser.error(f"--bench {args.bench} needs --question-file (the TSV the answers were written for)")
        write_xlsx(args.output, *mmbench_submission(answers, read_tsv(args.question_file, "MMBench TSV", ("index",))))
    elif args.bench == "seed":
        if args.annotation_file:
            write_jsonl(args.output, seed_upload(answers, read_seed_questions(args.annotation_file)))
        else:
            logger.info("SEED upload without --annotation-file: ids written as strings in answer order, coverage unchecked")
            write_jsonl(args.output, seed_upload(answers))
    else:
        if not args.question_file:
            parser.error(f"--bench {args.bench} needs --question-file (the full test question list)")
        test_questions = [r for _, r in iter_jsonl(args.question_file, "test question file")]
        if args.bench == "vqav2":
            write_json(args.output, vqav2_submission(answers, test_questions), indent=None)
        else:
            write_json(args.output, vizwiz_submission(answers, test_questions), indent=None)
    logger.info("wrote %s (%d bytes)", args.output, os.path.getsize(args.output))


if __name__ == "__main__":
    main()
