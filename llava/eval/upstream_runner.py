"""Upstream LLaVA's answer writers (``model_vqa_loader``, ``model_vqa``, ``model_vqa_science``, ``model_vqa_mmbench``)
as thin front ends of our runner, :mod:`llava.eval.run_benchmark`.

Each takes upstream's command line as written in its scripts (``--model-path --question-file --image-folder
--answers-file --num-chunks --chunk-idx --temperature --conv-mode``, ``--single-pred-prompt --lang --all-rounds``)
plus ours (``--reduction``, ``--reduction-override``, ``--vision-tower-path``, ``--batch-size``, ...), reads the
question file exactly as upstream's writer does, and hands the questions to ``run_benchmark.run``, which brings
chunking, resume, the answers-file lock, the run fingerprint and batching. The lines are upstream's
(``question_id, prompt, text, answer_id, model_id, metadata``, MMBench adding ``round_id, options, option_char``)
plus our ``run_id`` (and ``uid`` where question ids repeat, ``vision_tokens`` where the model reports them), so
our scorers and upstream's read them alike.

Where we differ on purpose (docs/Upstream.md): a rerun resumes instead of overwriting the answers file (only
answers of the very same run are kept); ``model_vqa_science`` defaults to ``--conv-mode vicuna_v1`` (upstream's
default ``llava_v0`` is a LLaVA-v0 template this codebase does not have; every v1.5 script passes vicuna_v1);
nothing is inferred from the model's folder name (upstream switched "plain" models to an ``_mmtag`` template).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llava.eval.benchmarks.base import OPTION_LETTER, OPTION_LETTER_CN, Benchmark, Question, ScoreInputs
from llava.eval.benchmarks.llava_jsonl import assign_uids
from llava.eval.benchmarks.multiple_choice import MC_LETTERS, MMBench, ScienceQA, mmbench_options, mmbench_prompt
from llava.eval.files import EvalDataError, iter_jsonl
from llava.eval.scorers.common import ScoreResult

logger = logging.getLogger("llava.eval.upstream_runner")


@dataclass(frozen=True)
class RunnerSpec:
    """What one of upstream's writers takes and does."""

    name: str  # module name, also the ``bench`` label of the run identity
    conv_mode: str  # upstream's default --conv-mode (vicuna_v1 where upstream's does not exist here)
    max_new_tokens: int  # upstream's cap (a flag only for the loader)
    question_format: str  # what --question-file holds
    flags: tuple[str, ...]  # upstream's optional flags beyond the common ones (--max_new_tokens: every runner here)


SPECS: dict[str, RunnerSpec] = {
    "model_vqa_loader": RunnerSpec("model_vqa_loader", "llava_v1", 128, "LLaVA question JSONL",
                                   ("top_p", "num_beams")),
    "model_vqa": RunnerSpec("model_vqa", "llava_v1", 1024, "LLaVA question JSONL", ("top_p", "num_beams")),
    "model_vqa_science": RunnerSpec("model_vqa_science", "vicuna_v1", 1024, "LLaVA-format ScienceQA JSON",
                                    ("answer_prompter", "single_pred_prompt")),
    "model_vqa_mmbench": RunnerSpec("model_vqa_mmbench", "llava_v1", 1024, "MMBench TSV",
                                    ("top_p", "num_beams", "all_rounds", "single_pred_prompt", "lang")),
}


# --------------------------------------------------------------------------------------------------- questions
class _WriterQuestions(Benchmark):
    """Questions read as one of upstream's writers reads them; scoring is the real benchmark's job."""

    title = "upstream runner"

    def score(self, answers: list[dict[str, Any]], inputs: ScoreInputs) -> ScoreResult:
        raise EvalDataError(f"{self.name} writes answers only; score them with python -m llava.eval.score --bench "
                            "<benchmark> or the benchmark's scripts/v1_5/eval/<bench>.sh step")


class LlavaQuestionFile(_WriterQuestions):
    """``model_vqa_loader`` / ``model_vqa``: every line of a LLaVA question JSONL, its ``text`` as the prompt as it is
    (the benchmark suffixes are already in LLaVA's eval files), its ``image`` relative to ``--image-folder``.

    Question ids that repeat (LLaVA's TextVQA and MME files) get a ``uid`` so resume and merge can tell them apart.
    """

    suffix = ""

    def __init__(self, spec: RunnerSpec) -> None:
        self.name = spec.name

    def load_questions(self, path: str) -> list[Question]:
        questions = []
        for lineno, rec in iter_jsonl(path, "question file"):
            if "question_id" not in rec or "text" not in rec:
                raise EvalDataError(f"question file {path}, line {lineno}: needs 'question_id' and 'text' (LLaVA's "
                                    "question JSONL)")
            questions.append(Question(qid=rec["question_id"], text=rec["text"], image=rec.get("image")))
        ids = [q.key for q in questions]
        return assign_uids(questions) if len(set(ids)) != len(ids) else questions


class ScienceQuestions(_WriterQuestions):
    """``model_vqa_science``: the human turn without ``<image>``, plus the option-letter instruction with
    ``--single-pred-prompt``; the recorded prompt starts with ``<image>\\n`` for image questions, as upstream's."""

    name = "model_vqa_science"
    max_new_tokens = 1024

    def __init__(self, single_pred_prompt: bool) -> None:
        self.suffix = OPTION_LETTER if single_pred_prompt else ""

    def load_questions(self, path: str) -> list[Question]:
        reader = ScienceQA()
        reader.suffix = self.suffix  # the same file parsing, with upstream's flag deciding the instruction
        questions = reader.load_questions(path)
        for q in questions:
            q.extra = {"prompt": f"<image>\n{q.text}" if q.has_image else q.text}
        return questions


class MMBenchQuestions(_WriterQuestions):
    """``model_vqa_mmbench``: hint, question and options A-D from the TSV (base64 images), the option-letter
    instruction with ``--single-pred-prompt`` (Chinese with ``--lang cn``); the recorded prompt has no instruction.
    ``--all-rounds`` asks each question once per rotation of its options (``round_id`` 0, 1, ...), as upstream."""

    name = "model_vqa_mmbench"
    max_new_tokens = 1024

    def __init__(self, single_pred_prompt: bool, lang: str, all_rounds: bool) -> None:
        if lang not in ("en", "cn"):
            raise EvalDataError(f"--lang {lang!r}: expected en or cn")
        self.suffix = (OPTION_LETTER_CN if lang == "cn" else OPTION_LETTER) if single_pred_prompt else ""
        self.all_rounds = all_rounds

    def load_questions(self, path: str) -> list[Question]:
        questions = []
        for row in MMBench()._rows(path):
            options = mmbench_options(row)
            letters = list(MC_LETTERS[: len(options)])
            for round_id in range(len(options) if self.all_rounds else 1):
                shown = dict(row, **dict(zip(MC_LETTERS, options)))  # this round's options under the letters A-D
                prompt = mmbench_prompt(shown, "")
                text = f"{prompt}\n{self.suffix}" if self.suffix else prompt
                extra = {"round_id": round_id, "prompt": prompt, "options": list(options), "option_char": list(letters)}
                uid = f"{int(row['index'])}#r{round_id}" if self.all_rounds else None
                questions.append(Question(qid=int(row["index"]), text=text, image_b64=row.get("image") or None,
                                          extra=extra, uid=uid))
                options, letters = options[1:] + options[:1], letters[1:] + letters[:1]
        return questions


def question_reader(spec: RunnerSpec, args: argparse.Namespace) -> Benchmark:
    if spec.name == "model_vqa_science":
        reader: Benchmark = ScienceQuestions(args.single_pred_prompt)
    elif spec.name == "model_vqa_mmbench":
        reader = MMBenchQuestions(args.single_pred_prompt, args.lang, args.all_rounds)
    else:
        reader = LlavaQuestionFile(spec)
    reader.max_new_tokens = getattr(args, "max_new_tokens", None) or spec.max_new_tokens
    return reader


# --------------------------------------------------------------------------------------------------- CLI
def build_parser(name: str) -> argparse.ArgumentParser:
    """Upstream's flags for writer ``name`` (its names and defaults), then ours."""
    spec = SPECS[name]
    p = argparse.ArgumentParser(prog=f"python -m llava.eval.{name}",
                                description=f"Upstream LLaVA's {name} on our runner (llava.eval.run_benchmark).")
    p.add_argument("--model-path", type=str, required=True)
    p.add_argument("--model-base", type=str, default=None)
    p.add_argument("--image-folder", type=str, default="")
    p.add_argument("--question-file", type=str, required=True, help=spec.question_format)
    p.add_argument("--answers-file", type=str, required=True)
    p.add_argument("--conv-mode", type=str, default=spec.conv_mode)
    p.add_argument("--num-chunks", type=int, default=1)
    p.add_argument("--chunk-idx", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.2, help="0: greedy (every v1.5 script); upstream's default 0.2 samples")
    if "top_p" in spec.flags:
        p.add_argument("--top_p", type=float, default=None)
    if "num_beams" in spec.flags:
        p.add_argument("--num_beams", type=int, default=1, help="only 1: beam search is not supported")
    p.add_argument("--max_new_tokens", type=int, default=spec.max_new_tokens,
                   help=f"default {spec.max_new_tokens}, upstream's" + ("" if spec.name == "model_vqa_loader" else
                                                                        " (a fixed value there; the flag is ours)"))
    if "answer_prompter" in spec.flags:
        p.add_argument("--answer-prompter", action="store_true", help="accepted; upstream's writer ignores it too")
    if "single_pred_prompt" in spec.flags:
        p.add_argument("--single-pred-prompt", action="store_true",
                       help="append the option-letter instruction to every question")
    if "lang" in spec.flags:
        p.add_argument("--lang", type=str, default="en", help="en or cn (the instruction's language)")
    if "all_rounds" in spec.flags:
        p.add_argument("--all-rounds", action="store_true", help="ask each question once per rotation of its options")
    ours = p.add_argument_group("HiDrop-LLaVA")
    ours.add_argument("--reduction", default="", help="schedule preset replacing the checkpoint's (e.g. tok64, off)")
    ours.add_argument("--reduction-override", action="append", default=[],
                      help="key=value schedule overrides; repeatable, or several separated by spaces")
    ours.add_argument("--vision-tower-path", default=None, help="local CLIP directory replacing the tower's hub id")
    ours.add_argument("--batch-size", type=int, default=1, help="1 is the reference; larger batches answer the same")
    ours.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ours.add_argument("--dtype", default="auto", choices=("auto", "float16", "bfloat16", "float32"))
    ours.add_argument("--on-mismatch", default="restart", choices=("restart", "error"),
                      help="answers file from another run: move it aside (restart) or stop (error)")
    return p


def runner_args(spec: RunnerSpec, args: argparse.Namespace, max_new_tokens: int) -> argparse.Namespace:
    """Our runner's arguments for upstream's command line."""
    from llava.mm_utils import get_model_name_from_path

    if getattr(args, "num_beams", 1) != 1:
        raise EvalDataError(f"--num_beams {args.num_beams}: beam search is not supported; use --num_beams 1 (every "
                            "LLaVA-1.5 evaluation script does)")
    if args.temperature < 0:
        raise EvalDataError(f"--temperature {args.temperature} must be >= 0 (0: greedy)")
    return argparse.Namespace(
        bench=spec.name,
        model_path=args.model_path,
        model_base=args.model_base,
        vision_tower_path=args.vision_tower_path,
        model_id=get_model_name_from_path(args.model_path),  # upstream's model_id
        question_file=args.question_file,
        image_folder=args.image_folder,
        answers_file=args.answers_file,
        num_chunks=args.num_chunks,
        chunk_idx=args.chunk_idx,
        batch_size=args.batch_size,
        max_new_tokens=max_new_tokens,
        conv_mode=args.conv_mode,
        reduction_preset=args.reduction or None,
        reduction_override=list(args.reduction_override),
        device=args.device,
        dtype=args.dtype,
        on_mismatch=args.on_mismatch,
        temperature=args.temperature,
        top_p=getattr(args, "top_p", None),
    )


def eval_model(name: str, args: argparse.Namespace) -> int:
    """Upstream's ``eval_model(args)`` of writer ``name``; returns how many answers were written."""
    from llava.conversation import get_template
    from llava.eval import run_benchmark

    spec = SPECS[name]
    # An args object built by hand (upstream's notebooks) may leave out flags: the command line's defaults.
    defaults = vars(build_parser(name).parse_args(["--model-path", "_", "--question-file", "_", "--answers-file", "_"]))
    for flag, default in defaults.items():
        if not hasattr(args, flag):
            setattr(args, flag, default)
    get_template(args.conv_mode)  # an unknown template fails before anything loads
    reader = question_reader(spec, args)
    return run_benchmark.run(runner_args(spec, args, reader.max_new_tokens), adapter=reader)


def main(name: str, argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser(name).parse_args(argv)
    try:
        eval_model(name, args)
    except (EvalDataError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


__all__ = ["SPECS", "LlavaQuestionFile", "MMBenchQuestions", "ScienceQuestions", "build_parser", "eval_model", "main"]
