"""The adapter interface: what differs between benchmarks (files, suffix, answer joining), nothing else.

The runner, the merge step and the scorers are shared. An adapter only says how to read a question file into
``Question`` objects, how to open a question's image, and how to join merged answers with the benchmark's
ground truth before handing plain records to a scorer in ``llava.eval.scorers``.
"""

from __future__ import annotations

import base64
import io
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from llava.eval.files import EvalDataError, answer_key, qid_key, read_jsonl
from llava.eval.scorers.common import ScoreResult

if TYPE_CHECKING:
    from PIL import Image

    from llava.eval.scorers.mmbench import Judge

SHORT_ANSWER = "Answer the question using a single word or phrase."
OPTION_LETTER = "Answer with the option's letter from the given choices directly."
OPTION_LETTER_CN = "请直接回答选项字母。"
VIZWIZ_SUFFIX = "When the provided information is insufficient, respond with 'Unanswerable'.\n" + SHORT_ANSWER


@dataclass
class Question:
    """One model query.

    ``text`` is the user turn without the image token (the runner adds ``<image>\\n`` in front when the question
    has an image), already ending with the benchmark's suffix. ``extra`` is copied into the answer record so
    that scorers can join on real keys (image, split, subtask) instead of line order.
    """

    qid: Any
    text: str
    image: str | None = None
    image_b64: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    uid: str | None = None  # set only when question ids repeat (TextVQA); see files.answer_key

    @property
    def key(self) -> str:
        return self.uid if self.uid is not None else qid_key(self.qid)

    @property
    def has_image(self) -> bool:
        return self.image is not None or self.image_b64 is not None


@dataclass
class ScoreInputs:
    """Everything a benchmark may need to score; each adapter documents which fields it reads."""

    answers_file: str
    question_file: str | None = None
    annotation_file: str | None = None
    annotation_dir: str | None = None
    split: str | None = None
    judge: Judge | None = None
    # ``llava.eval.score --limit``: the keys of the questions a quick subset answered (the first N of the question
    # file). Scorers that walk the ground truth (GQA, SEED, ScienceQA, MMBench, MMStar) score only these; the others
    # walk the answers, which the coverage check has already matched to exactly these questions.
    question_keys: frozenset[str] | None = None


def ensure_suffix(text: str, suffix: str) -> str:
    """Appends ``"\\n" + suffix`` unless the text already ends with it.

    LLaVA's eval.zip question files already carry the suffix; official-format files (VQAv2 val, VizWiz val) and
    hand-made demo files may not. Either way the model sees exactly one copy.
    """
    if not suffix or text.rstrip().endswith(suffix):
        return text
    return f"{text}\n{suffix}"


def strip_suffix(text: str, suffix: str) -> str:
    """The question as asked, without the benchmark suffix (used to join answers with official annotations)."""
    text = text.rstrip()
    if suffix and text.endswith(suffix):
        text = text[: -len(suffix)]
    return text.strip()


def open_image_file(path: str) -> Image.Image:
    """Opens an RGB image with an error naming the file; prefers the model's own loader when it exists."""
    try:
        from llava.mm_utils import load_image
    except ImportError:  # the model package is optional for scoring-only use and unit tests
        load_image = None
    if load_image is not None:
        return load_image(path)
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise EvalDataError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise EvalDataError(f"cannot read image {path}: {e}") from None


def decode_base64_image(data: str, where: str) -> Image.Image:
    """Decodes the base64 image cell of an MMBench/MMStar TSV row."""
    from PIL import Image, UnidentifiedImageError

    try:
        from llava.mm_utils import to_rgb
    except ImportError:  # the model package is optional for scoring-only use and unit tests
        to_rgb = None
    try:
        raw = base64.b64decode(data, validate=False)
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            # to_rgb composites transparency over CLIP's mean colour and scales 16-bit images (convert() does not)
            return to_rgb(img) if to_rgb is not None else img.convert("RGB")
    except (ValueError, UnidentifiedImageError, OSError) as e:
        raise EvalDataError(f"cannot decode the base64 image of {where}: {e}") from None


class Benchmark(ABC):
    """One benchmark's adapter. Subclasses set the class attributes and implement the two abstract methods."""

    name: ClassVar[str]
    title: ClassVar[str]  # used in printed score lines: "<title> <metric>: XX.XX"
    suffix: ClassVar[str] = SHORT_ANSWER
    max_new_tokens: ClassVar[int] = 128  # upstream: 128 for the loader benchmarks, 1024 for SQA and MMBench
    server_only: ClassVar[bool] = False  # the reported split can only be scored by an evaluation server

    @abstractmethod
    def load_questions(self, path: str) -> list[Question]:
        """Reads a question file; raises ``EvalDataError`` naming the file for a missing file or bad line."""

    @abstractmethod
    def score(self, answers: list[dict[str, Any]], inputs: ScoreInputs) -> ScoreResult:
        """Joins merged answers with the ground truth and scores them."""

    def load_image(self, question: Question, image_folder: str) -> Image.Image | None:
        if question.image_b64 is not None:
            return decode_base64_image(question.image_b64, f"question {question.qid}")
        if question.image is None:
            return None
        return open_image_file(os.path.join(image_folder, question.image))

    def read_answers(self, path: str) -> list[dict[str, Any]]:
        """Merged answers as written by the runner or by upstream LLaVA's answer writers (JSONL)."""
        return read_jsonl(path, "answers file")

    def answer_keys(
        self, answers: list[dict[str, Any]], questions: list[Question], answers_file: str, question_file: str
    ) -> list[str]:
        """The ``Question.key`` each answer belongs to, in answer order (for the coverage check).

        By default that is the answer's own id; adapters whose question ids repeat override it so that answer
        files without our ``uid`` (upstream's) can be checked too.
        """
        check_answer_fields(answers, answers_file, ("question_id",))
        return [answer_key(a) for a in answers]

    def skipped_question_keys(self, question_file: str) -> set[str]:
        """Keys of questions in ``question_file`` that this benchmark neither runs nor scores.

        Upstream runs every line of its question files, so its answer files may answer these (SEED's video
        questions); such answers are allowed by the coverage check and left out of the score, with a count.
        """
        return set()


def require(value: str | None, flag: str, bench: str) -> str:
    """Returns a required score input or raises naming the missing command-line flag."""
    if not value:
        raise EvalDataError(f"scoring {bench} needs {flag}")
    return value


def check_answer_fields(answers: list[dict[str, Any]], where: str, fields: tuple[str, ...] = ("question_id", "text")) -> None:
    """Every answer needs ``fields``; the error names the answer's position in the file (blank lines aside)."""
    for n, a in enumerate(answers, start=1):
        lacking = [f for f in fields if a.get(f) is None]
        if lacking:
            raise EvalDataError(f"{where}: answer {n} has no {'/'.join(lacking)}: {str(a)[:200]}")


def answers_by_key(answers: list[dict[str, Any]], where: str) -> dict[str, dict[str, Any]]:
    """Indexes answers by question id; a duplicate id is an error (the merge step should have caught it)."""
    out: dict[str, dict[str, Any]] = {}
    for a in answers:
        if "question_id" not in a or "text" not in a:
            raise EvalDataError(f"{where}: answer record without question_id/text: {str(a)[:200]}")
        k = qid_key(a["question_id"])
        if k in out:
            raise EvalDataError(f"{where}: duplicate question_id {a['question_id']!r}")
        out[k] = a
    return out
