"""The three VQA accuracy variants: official VQAv2, EvalAI/m4c (TextVQA), and VizWiz.

They share the soft accuracy (leave-one-out over the 10 human answers, min(matches / 3, 1), averaged over the 10
"choose 9" subsets) but normalize differently, and the differences move scores by tenths of a point:

- ``vqav2``: the official ``vqaEval.py``. Newlines/tabs become spaces on both sides; then, *only when the 10 GT
  answers are not all identical*, both the prediction and the GT answers are normalized (punctuation, then
  digits/articles/contractions). When all GT answers agree nothing is normalized, so "Yes" or "two" scores 0
  against "yes"/"2". LLaVA therefore uploads EvalAI-normalized predictions; ``score_vqa(..., "vqav2")`` does the
  same pre-normalization so local val numbers follow the server pipeline.
- ``textvqa``: the EvalAI processor LLaVA ships as ``m4c_evaluator.py``: always normalize both sides, after
  lowercasing, deleting "," and "?" and splitting "'s" into " 's". Exactly 10 GT answers are required.
- ``vizwiz``: the VizWiz evaluator: the prediction is always normalized (its contraction table uses curly
  apostrophes), GT answers are compared exactly as stored.

The normalization steps are kept as separate functions so the traps can be unit-tested: "Two dogs." -> "2 dogs",
"none" -> "0", "3.5" unchanged, "man's" -> "man 's" (m4c only).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from llava.eval.scorers.common import ScoreResult

VqaVariant = Literal["vqav2", "textvqa", "vizwiz"]

# The official punctuation set. Apostrophe, colon, '#', '$', '%', '&', '*' and '.' are deliberately absent.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}

ARTICLES = frozenset({"a", "an", "the"})

# The official contraction table (key=value pairs). Keys with capitals ("Im", "Ive") can never match because
# words are lowercased first; that is how the official code behaves, so they stay.
_CONTRACTION_PAIRS = """
    aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
    couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
    hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's
    howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd
    itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't
    mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've
    neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at
    'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've
    shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
    somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's
    someoned=someone'd someoned've=someone'd've someone'dve=someone'd've someonell=someone'll
    someones=someone's somethingd=something'd somethingd've=something'd've something'dve=something'd've
    somethingll=something'll thats=that's thered=there'd thered've=there'd've there'dve=there'd've
    therere=there're theres=there's theyd=they'd theyd've=they'd've they'dve=they'd've theyll=they'll
    theyre=they're theyve=they've twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've
    werent=weren't whatll=what'll whatre=what're whats=what's whatve=what've whens=when's whered=where'd
    wheres=where's whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's
    whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't
    wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll
    yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
    you'dve=you'd've youll=you'll youre=you're youve=you've
"""

CONTRACTIONS: dict[str, str] = dict(pair.split("=", 1) for pair in _CONTRACTION_PAIRS.split())

# The VizWiz evaluator's copy of the table writes most apostrophes as U+2019. The few entries it left with a
# straight apostrophe are listed so the table is reproduced exactly.
_VIZWIZ_STRAIGHT_KEYS = frozenset({"couldn'tve", "hadn'tve"})
_VIZWIZ_STRAIGHT_VALUES = frozenset({"aint", "arent", "cant", "couldve", "couldnt", "weve", "wheres", "whove"})
VIZWIZ_CONTRACTIONS: dict[str, str] = {
    (k if k in _VIZWIZ_STRAIGHT_KEYS else k.replace("'", "\u2019")): (
        v if k in _VIZWIZ_STRAIGHT_VALUES else v.replace("'", "\u2019")
    )
    for k, v in CONTRACTIONS.items()
}

# A digit-comma-digit anywhere switches every punctuation mark to deletion instead of replacement by a space.
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# A period not followed by a digit ("yes." -> "yes", "3.5" kept). The official pattern also carries a
# lookbehind written as a lookahead, which never fires; this is its effective behaviour.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# The official code passes re.UNICODE (== 32) positionally as the ``count`` argument of ``sub``, so at most
# 32 periods are removed. Reproduced for exactness; it only matters for pathological outputs.
_OFFICIAL_PERIOD_LIMIT = int(re.UNICODE)


def process_punctuation(text: str) -> str:
    """The official punctuation step.

    A mark is deleted when it touches a space in the *original* text (or the text has a digit-comma-digit),
    otherwise it becomes a space; then periods not followed by a digit are removed.
    """
    out = text
    has_digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_OFFICIAL_PERIOD_LIMIT)


def process_digit_article(text: str, contractions: Mapping[str, str] = CONTRACTIONS) -> str:
    """The official word step: lowercase, number words to digits ("none" -> "0"), drop articles, restore
    apostrophes of common contractions, and re-join with single spaces."""
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(word)
    return " ".join(contractions.get(w, w) for w in words)


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def official_normalize(text: str) -> str:
    """Punctuation then digit/article steps, as the official VQA code applies them (when it applies them)."""
    return process_digit_article(process_punctuation(_clean_whitespace(text)))


def evalai_normalize(text: str) -> str:
    """The EvalAI/m4c answer processor (LLaVA's ``EvalAIAnswerProcessor``).

    Lowercases, deletes "," and "?", splits "'s" into " 's", then applies the official punctuation and
    digit/article steps. Used for TextVQA scoring and to pre-normalize VQAv2/VizWiz uploads.
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return process_digit_article(process_punctuation(_clean_whitespace(text)))


def vizwiz_normalize(text: str) -> str:
    """The VizWiz evaluator's prediction normalization (official steps, curly-apostrophe contraction table)."""
    return process_digit_article(process_punctuation(_clean_whitespace(text)), VIZWIZ_CONTRACTIONS)


def leave_one_out_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """Mean over the "leave answer i out" subsets of min(#other answers equal to the prediction / 3, 1).

    Exactly one answer is removed per subset (by position, as the official code does through the unique
    ``answer_id``), so duplicates are not all removed at once. With m matching answers out of 10 this is
    0, 0.3, 0.6, 0.9 and 1.0 for m = 0, 1, 2, 3 and >= 4.
    """
    if not gt_answers:
        raise ValueError("a VQA question needs at least one ground-truth answer")
    matches = [a == prediction for a in gt_answers]
    total_matches = sum(matches)
    accs = [min(1.0, (total_matches - int(m)) / 3.0) for m in matches]
    return sum(accs) / len(accs)


def vqav2_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """Official VQAv2 accuracy: normalize both sides only when the GT answers disagree."""
    pred = _clean_whitespace(prediction)
    gts = [_clean_whitespace(a) for a in gt_answers]
    if len(set(gts)) > 1:
        gts = [official_normalize(a) for a in gts]
        pred = official_normalize(pred)
    return leave_one_out_accuracy(pred, gts)


def textvqa_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """EvalAI/m4c accuracy: always normalize both sides; the m4c evaluator requires exactly 10 answers."""
    if len(gt_answers) != 10:
        raise ValueError(f"TextVQA scoring expects exactly 10 GT answers, got {len(gt_answers)}")
    return leave_one_out_accuracy(evalai_normalize(prediction), [evalai_normalize(a) for a in gt_answers])


def vizwiz_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """VizWiz accuracy: normalize the prediction only; GT answers are compared as stored."""
    return leave_one_out_accuracy(vizwiz_normalize(prediction), list(gt_answers))


_ACCURACY = {"vqav2": vqav2_accuracy, "textvqa": textvqa_accuracy, "vizwiz": vizwiz_accuracy}


def score_vqa(
    variant: VqaVariant,
    predictions: Mapping[str, str],
    annotations: Mapping[str, Mapping[str, Any]],
    prenormalize: bool | None = None,
) -> ScoreResult:
    """Scores ``predictions[key]`` against ``annotations[key]["answers"]`` (a list of strings).

    ``prenormalize`` applies the EvalAI processor to the raw prediction first, which is what LLaVA does
    before uploading VQAv2 and VizWiz results; by default it is on for those two and off for TextVQA (whose
    scorer normalizes anyway). A prediction that normalizes to the empty string counts as unparsed.
    Per-answer-type (and, when present, per-question-type) accuracies go to ``details``.
    """
    if variant not in _ACCURACY:
        raise ValueError(f"unknown VQA variant {variant!r}; expected one of {sorted(_ACCURACY)}")
    if prenormalize is None:
        prenormalize = variant in ("vqav2", "vizwiz")
    accuracy = _ACCURACY[variant]
    missing = [k for k in annotations if k not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} annotated question(s) have no prediction, e.g. {missing[:5]}")
    per_answer_type: dict[str, list[float]] = defaultdict(list)
    per_question_type: dict[str, list[float]] = defaultdict(list)
    total = 0.0
    unparsed = 0
    for key, ann in annotations.items():
        raw = predictions[key]
        pred = evalai_normalize(raw) if prenormalize else raw
        if not evalai_normalize(raw):
            unparsed += 1
        acc = accuracy(pred, list(ann["answers"]))
        total += acc
        if ann.get("answer_type") is not None:
            per_answer_type[str(ann["answer_type"])].append(acc)
        if ann.get("question_type") is not None:
            per_question_type[str(ann["question_type"])].append(acc)
    n = len(annotations)
    details: dict[str, Any] = {
        "variant": variant,
        "prenormalized": prenormalize,
        "per_answer_type": {k: 100.0 * sum(v) / len(v) for k, v in sorted(per_answer_type.items())},
    }
    if per_question_type:
        details["per_question_type"] = {k: 100.0 * sum(v) / len(v) for k, v in sorted(per_question_type.items())}
    return ScoreResult(
        bench=variant,
        metric="accuracy",
        score=100.0 * total / n if n else 0.0,
        num_scored=n,
        num_unparsed=unparsed,
        details=details,
    )
