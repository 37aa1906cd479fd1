"""Real images and image-dependent questions for the CPU demo.

The images are 2x2 grids of handwritten digits from scikit-learn's bundled digits set (1,797 scans,
8x8 grey, values 0..16; it ships inside the wheel, so no download is needed). Each scan is upscaled
to a 32x32 cell, giving a 64x64 RGB picture. 64 px with the tiny CLIP tower's 8 px patches means
8x8 = 64 patch tokens and each cell covers exactly a 4x4 block of patches, so "the digit in the top
left" is a well-defined set of vision tokens, which keeps the spatial questions learnable for a
model trained for minutes.

Every question generated here needs the image: which digit is at a position, whether a digit is
present, how many copies of a digit there are, multiple choice over those. The answer vocabulary is
tiny: the ten numerals, ``yes``/``no`` and the option letters ``A``-``D``.

Train/eval leakage is prevented at the level of the scanned digit: :func:`split_digit_sources`
assigns every scan to exactly one split, and train grids are composed only from train scans.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

GRID_SIDE = 2  # cells per row and per column
CELL_SIZE = 32  # pixels per cell: an 8x8 scan upscaled 4x
IMAGE_SIZE = GRID_SIDE * CELL_SIZE  # 64, the tiny CLIP tower's input size
NUM_CELLS = GRID_SIDE * GRID_SIDE
NUM_CLASSES = 10

# Cell order is reading order; quadrant index i is row i // 2, column i % 2.
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")

SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
OPTION_LETTER_PROMPT = "Answer with the option's letter from the given choices directly."
OPTION_LETTERS: tuple[str, ...] = ("A", "B", "C", "D")

DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Pairs of digits whose handwritten shapes are easy to mix up. POPE's "adversarial" split asks about
# absent objects that co-occur with present ones; for single digits the closest analogue is asking
# about an absent digit that looks like a present one.
LOOKALIKES: dict[int, tuple[int, ...]] = {
    0: (6, 8, 9),
    1: (7, 4, 2),
    2: (7, 3, 1),
    3: (8, 5, 9),
    4: (9, 1, 7),
    5: (6, 3, 9),
    6: (0, 5, 8),
    7: (1, 2, 9),
    8: (3, 0, 9),
    9: (4, 8, 3),
}


@dataclass(frozen=True)
class DigitPool:
    """The scans one split may use: ``images[i]`` is an 8x8 scan of digit ``labels[i]``.

    ``sources`` holds the row index in ``sklearn.datasets.load_digits()`` so that leakage between
    splits can be checked after the fact (the manifest and the tests do).
    """

    images: np.ndarray  # (N, 8, 8) float, 0..16
    labels: np.ndarray  # (N,) int
    sources: np.ndarray  # (N,) int, index into load_digits()
    by_class: tuple[np.ndarray, ...] = field(repr=False)  # per class: positions into images/labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Grid:
    """One picture: the digit class and the scan (global source index) in each cell, reading order."""

    labels: tuple[int, ...]
    sources: tuple[int, ...]

    def count(self, digit: int) -> int:
        return sum(1 for label in self.labels if label == digit)

    def present(self) -> set[int]:
        return set(self.labels)


@dataclass(frozen=True)
class QA:
    """A question with its answer and the GQA-style type labels used by the eval files."""

    question: str
    answer: str
    full_answer: str
    category: str
    structural: str  # GQA "types.structural": query / verify / choose / compare / logical
    semantic: str  # GQA "types.semantic": obj / attr / rel / global
    detailed: str  # GQA "types.detailed"
    program: tuple[tuple[str, str], ...] = ()  # (operation, argument) steps, GQA "semantic" field
    cell: int | None = None  # the cell the question is about, if any
    digit: int | None = None  # the digit class the question names, if any


@lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    # Imported lazily: scikit-learn is a dev extra and importing it costs about a second.
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.float32), data.target.astype(np.int64)


def split_digit_sources(seed: int = 0, eval_fraction: float = 0.3) -> dict[str, DigitPool]:
    """Split the 1,797 scans into disjoint ``train`` and ``eval`` pools, stratified by class.

    The split depends only on ``seed`` and ``eval_fraction`` (not on how many samples are built),
    so eval images always come from scans that no training image ever shows.
    """
    images, labels = _load_digits()
    rng = np.random.default_rng([seed, 101])
    train_idx: list[int] = []
    eval_idx: list[int] = []
    for digit in range(NUM_CLASSES):
        members = np.flatnonzero(labels == digit)
        members = members[rng.permutation(members.size)]
        n_eval = int(round(eval_fraction * members.size))
        eval_idx.extend(members[:n_eval].tolist())
        train_idx.extend(members[n_eval:].tolist())
    return {
        "train": _make_pool(images, labels, np.sort(train_idx)),
        "eval": _make_pool(images, labels, np.sort(eval_idx)),
    }


def _make_pool(images: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> DigitPool:
    pool_labels = labels[idx]
    by_class = tuple(np.flatnonzero(pool_labels == d) for d in range(NUM_CLASSES))
    return DigitPool(images=images[idx], labels=pool_labels, sources=idx.astype(np.int64), by_class=by_class)


def sample_grid(pool: DigitPool, rng: np.random.Generator, repeat_prob: float = 0.25) -> Grid:
    """Draw four digit classes and a distinct scan for each cell.

    Classes are uniform, but with probability ``repeat_prob`` one cell copies another cell's class
    (drawn with a different scan). Without that, "how many Xs" would almost always be 0 or 1.
    """
    classes = rng.integers(0, NUM_CLASSES, size=NUM_CELLS)
    if rng.random() < repeat_prob:
        src, dst = rng.choice(NUM_CELLS, size=2, replace=False)
        classes[dst] = classes[src]
    chosen: list[int] = []
    for digit in classes:
        candidates = pool.by_class[int(digit)]
        # Never reuse a scan inside one picture, so two equal digits still look different.
        while True:
            pos = int(candidates[rng.integers(candidates.size)])
            if pos not in chosen:
                break
        chosen.append(pos)
    return Grid(labels=tuple(int(c) for c in classes), sources=tuple(int(pool.sources[p]) for p in chosen))


@lru_cache(maxsize=1)
def cell_bitmaps() -> np.ndarray:
    """Every scan rendered once as a 32x32 cell: (1797, 32, 32) uint8, dark ink on white paper."""
    images, _ = _load_digits()
    cells = np.empty((images.shape[0], CELL_SIZE, CELL_SIZE), dtype=np.uint8)
    for i, scan in enumerate(images):
        small = Image.fromarray(np.clip(255.0 - scan * (255.0 / 16.0), 0, 255).astype(np.uint8), mode="L")
        # Bicubic rather than nearest: blocky 4x4 pixels would line up with the 8 px patch grid and make
        # the task about single pixel values instead of strokes.
        cells[i] = np.asarray(small.resize((CELL_SIZE, CELL_SIZE), Image.Resampling.BICUBIC))
    return cells


def render_array(sources: np.ndarray, max_shift: int = 0, rng: np.random.Generator | None = None) -> np.ndarray:
    """Compose grids from source indices ``(B, 4)`` into grey ``(B, 64, 64)`` uint8 arrays.

    ``max_shift > 0`` moves each digit by up to that many pixels inside its cell (white fill); it is
    only used as augmentation when pretraining the vision tower, never for the saved images.
    """
    sources = np.asarray(sources, dtype=np.int64).reshape(-1, NUM_CELLS)
    cells = cell_bitmaps()
    if max_shift:
        if rng is None:
            raise ValueError("render_array needs an rng when max_shift > 0")
        padded = np.pad(cells, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)), constant_values=255)
        # windows[i, dy, dx] is scan i seen through a 32x32 window offset by (dy, dx): a shifted cell.
        windows = np.lib.stride_tricks.sliding_window_view(padded, (CELL_SIZE, CELL_SIZE), axis=(1, 2))
        dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, *sources.shape))
        picked = windows[sources, dy, dx]
    else:
        picked = cells[sources]
    b = sources.shape[0]
    grid = picked.reshape(b, GRID_SIDE, GRID_SIDE, CELL_SIZE, CELL_SIZE).transpose(0, 1, 3, 2, 4)
    return np.ascontiguousarray(grid.reshape(b, IMAGE_SIZE, IMAGE_SIZE))


def sample_grid_batch(
    pool: DigitPool, rng: np.random.Generator, n: int, repeat_prob: float = 0.25
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised :func:`sample_grid` for pretraining batches: ``(labels, sources)``, both ``(n, 4)``.

    Unlike :func:`sample_grid` it may reuse a scan inside one grid; that is harmless for training a
    classifier and keeps a batch at a few hundred microseconds.
    """
    classes = rng.integers(0, NUM_CLASSES, size=(n, NUM_CELLS))
    repeat = rng.random(n) < repeat_prob
    src = rng.integers(0, NUM_CELLS, size=n)
    dst = (src + rng.integers(1, NUM_CELLS, size=n)) % NUM_CELLS  # a different cell
    rows = np.flatnonzero(repeat)
    classes[rows, dst[rows]] = classes[rows, src[rows]]
    counts = np.array([c.size for c in pool.by_class])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    order = np.concatenate(pool.by_class)  # pool positions grouped by class
    pick = starts[classes] + (rng.random(classes.shape) * counts[classes]).astype(np.int64)
    return classes.astype(np.int64), pool.sources[order[pick]]


def render_grid(grid: Grid) -> Image.Image:
    """Draw the grid as a 64x64 RGB image (grey content; RGB because CLIP and LLaVA expect it)."""
    return Image.fromarray(render_array(np.array([grid.sources]))[0], mode="L").convert("RGB")


# ---------------------------------------------------------------------------------------------
# Questions. Templates are few and shared by train and eval: the demo measures whether the model
# reads the image, not whether it generalises over phrasings.
# ---------------------------------------------------------------------------------------------

_POSITION_QUERY = (
    "What digit is in the {pos}?",
    "Which digit is at the {pos}?",
    "What number is written in the {pos} cell?",
)
_EXIST = ("Is there {ad} in the image?",)  # POPE's exact phrasing, with a digit for the object
_POSITION_VERIFY = ("Is the digit in the {pos} {ad}?", "Is there {ad} at the {pos}?")
_CHOOSE = ("Is the digit in the {pos} {aa} or {ab}?",)
_COUNT = ("How many {d}s are in the image?", "How many times does the digit {d} appear?")


def with_article(digit: int) -> str:
    """``"a 7"`` but ``"an 8"``: the questions should read like English, as real VQA questions do."""
    return f"an {digit}" if digit == 8 else f"a {digit}"


def _plural(n: int) -> str:
    return "time" if n == 1 else "times"


def position_query(grid: Grid, rng: np.random.Generator) -> QA:
    cell = int(rng.integers(NUM_CELLS))
    pos, digit = POSITIONS[cell], grid.labels[cell]
    template = _POSITION_QUERY[int(rng.integers(len(_POSITION_QUERY)))]
    return QA(
        question=template.format(pos=pos),
        answer=str(digit),
        full_answer=f"The digit in the {pos} is {digit}.",
        category="position_query",
        structural="query",
        semantic="attr",
        detailed="positionQuery",
        program=(("select", f"digit ({pos})"), ("query", "name")),
        cell=cell,
    )


def exist_verify(grid: Grid, rng: np.random.Generator, digit: int | None = None) -> QA:
    """Yes/no presence question; balanced: a present digit half of the time unless ``digit`` is given."""
    if digit is None:
        present = sorted(grid.present())
        absent = [d for d in range(NUM_CLASSES) if d not in grid.present()]
        pick_present = rng.random() < 0.5 or not absent
        digit = int(rng.choice(present if pick_present else absent))
    yes = digit in grid.present()
    return QA(
        question=_EXIST[0].format(ad=with_article(digit)),
        answer="yes" if yes else "no",
        full_answer=f"Yes, there is {with_article(digit)} in the image."
        if yes
        else f"No, there is no {digit} in the image.",
        category="exist_verify",
        structural="verify",
        semantic="obj",
        detailed="exist",
        program=(("select", f"digit {digit}"), ("exist", "?")),
        digit=digit,
    )


def position_verify(grid: Grid, rng: np.random.Generator) -> QA:
    cell = int(rng.integers(NUM_CELLS))
    pos, true_digit = POSITIONS[cell], grid.labels[cell]
    yes = rng.random() < 0.5
    digit = true_digit if yes else int(rng.choice([d for d in range(NUM_CLASSES) if d != true_digit]))
    template = _POSITION_VERIFY[int(rng.integers(len(_POSITION_VERIFY)))]
    return QA(
        question=template.format(pos=pos, ad=with_article(digit)),
        answer="yes" if yes else "no",
        full_answer=f"Yes, the digit in the {pos} is {digit}."
        if yes
        else f"No, the digit in the {pos} is {true_digit}.",
        category="position_verify",
        structural="verify",
        semantic="attr",
        detailed="verifyAttr",
        program=(("select", f"digit ({pos})"), ("verify name", str(digit))),
        cell=cell,
        digit=digit,
    )


def choose(grid: Grid, rng: np.random.Generator) -> QA:
    cell = int(rng.integers(NUM_CELLS))
    pos, true_digit = POSITIONS[cell], grid.labels[cell]
    other = int(rng.choice([d for d in range(NUM_CLASSES) if d != true_digit]))
    # Random order so the answer is not always the first option named.
    a, b = (true_digit, other) if rng.random() < 0.5 else (other, true_digit)
    return QA(
        question=_CHOOSE[0].format(pos=pos, aa=with_article(a), ab=with_article(b)),
        answer=str(true_digit),
        full_answer=f"The digit in the {pos} is {with_article(true_digit)}.",
        category="choose",
        structural="choose",
        semantic="attr",
        detailed="chooseAttr",
        program=(("select", f"digit ({pos})"), ("choose name", f"{a}|{b}")),
        cell=cell,
    )


def count(grid: Grid, rng: np.random.Generator) -> QA:
    """Count a digit; asks about a present digit 75% of the time so the answers are not mostly 0."""
    present = sorted(grid.present())
    absent = [d for d in range(NUM_CLASSES) if d not in grid.present()]
    digit = int(rng.choice(present if rng.random() < 0.75 or not absent else absent))
    n = grid.count(digit)
    template = _COUNT[int(rng.integers(len(_COUNT)))]
    return QA(
        question=template.format(d=digit),
        answer=str(n),
        full_answer=f"The digit {digit} appears {n} {_plural(n)}.",
        category="count",
        structural="query",
        semantic="obj",
        detailed="count",
        program=(("select", f"digit {digit}"), ("count", "?")),
        digit=digit,
    )


SHORT_QA_GENERATORS = {
    "position_query": position_query,
    "exist_verify": exist_verify,
    "position_verify": position_verify,
    "choose": choose,
    "count": count,
}

# Share of each question type in the GQA-style eval and in the short-answer training turns.
# Position queries dominate because they are the open, 10-way questions that a blind model can only
# answer at chance; the yes/no and choose types keep GQA's mix of binary questions.
GQA_CATEGORY_WEIGHTS: dict[str, float] = {
    "position_query": 0.40,
    "exist_verify": 0.20,
    "position_verify": 0.20,
    "choose": 0.10,
    "count": 0.10,
}

# Answer sets a uniform guesser would draw from, per category; used for the chance baseline.
CATEGORY_ANSWER_SPACE: dict[str, int] = {
    "position_query": NUM_CLASSES,
    "exist_verify": 2,
    "position_verify": 2,
    "choose": 2,
    "count": NUM_CELLS + 1,
}


def sample_short_qa(grid: Grid, rng: np.random.Generator, weights: dict[str, float] | None = None) -> QA:
    """One short-answer question, its type drawn from ``weights`` (default: the GQA eval mix)."""
    weights = weights or GQA_CATEGORY_WEIGHTS
    names = list(weights)
    probs = np.array([weights[n] for n in names], dtype=np.float64)
    name = names[int(rng.choice(len(names), p=probs / probs.sum()))]
    return SHORT_QA_GENERATORS[name](grid, rng)


def with_short_answer_prompt(question: str) -> str:
    return f"{question}\n{SHORT_ANSWER_PROMPT}"


# ---------------------------------------------------------------------------------------------
# Long answers: captions (stage 1) and descriptions (stage 2), in the spirit of LCS-558K captions
# and LLaVA-Instruct's detailed descriptions.
# ---------------------------------------------------------------------------------------------

CAPTION_INSTRUCTIONS: tuple[str, ...] = (
    "Describe the image briefly.",
    "Give a short caption for this picture.",
    "Summarize the visual content of the image.",
    "What does this image show? Answer concisely.",
    "Write a brief description of the image.",
)

DESCRIBE_INSTRUCTIONS: tuple[str, ...] = (
    "Describe the image in detail.",
    "What digits can you see in this image, and where are they?",
    "List every digit in the picture with its position.",
)


def caption(grid: Grid, rng: np.random.Generator) -> str:
    """A one-sentence caption naming every cell in reading order (varied wording, same content)."""
    d = grid.labels
    style = int(rng.integers(3))
    if style == 0:
        return f"Handwritten digits {d[0]}, {d[1]}, {d[2]} and {d[3]} in a two by two grid."
    if style == 1:
        return f"A grid of four handwritten digits: {d[0]} and {d[1]} on top, {d[2]} and {d[3]} below."
    return f"Four handwritten digits: {d[0]} at the top left, {d[1]} at the top right, {d[2]} at the bottom left and {d[3]} at the bottom right."


def describe(grid: Grid) -> str:
    """A detailed multi-sentence description, used as a long-form stage-2 answer."""
    d = grid.labels
    parts = [
        "The image shows four handwritten digits arranged in a two by two grid.",
        f"The top row has {with_article(d[0])} on the left and {with_article(d[1])} on the right.",
        f"The bottom row has {with_article(d[2])} on the left and {with_article(d[3])} on the right.",
    ]
    repeated = sorted({x for x in d if grid.count(x) > 1})
    if repeated:
        parts.append("The digit " + " and ".join(f"{x} appears {grid.count(x)} times" for x in repeated) + ".")
    else:
        parts.append("All four digits are different.")
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------
# Multiple choice (SEED-Bench style: four options, answer is a letter).
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MultipleChoice:
    question: str
    choices: tuple[str, str, str, str]
    answer: str  # "A".."D"
    dimension: str  # SEED evaluation dimension name

    def prompt(self) -> str:
        lines = [self.question] + [f"{letter}. {choice}" for letter, choice in zip(OPTION_LETTERS, self.choices)]
        return "\n".join(lines) + "\n" + OPTION_LETTER_PROMPT


def _options(correct: str, distractors: Sequence[str], rng: np.random.Generator) -> tuple[tuple[str, ...], str]:
    pool = [x for x in dict.fromkeys(distractors) if x != correct]
    picked = [pool[i] for i in rng.permutation(len(pool))[:3]]
    options = [correct, *picked]
    order = rng.permutation(4)
    shuffled = tuple(options[i] for i in order)
    return shuffled, OPTION_LETTERS[shuffled.index(correct)]


def multiple_choice(grid: Grid, rng: np.random.Generator) -> MultipleChoice:
    """A four-option question about identity, location, counting or spatial relation."""
    kinds = ["Instance Identity", "Instances Counting"]
    unique = [c for c in range(NUM_CELLS) if grid.count(grid.labels[c]) == 1]
    if unique:
        kinds += ["Instance Location", "Spatial Relation"]
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "Instance Identity":
        cell = int(rng.integers(NUM_CELLS))
        correct = str(grid.labels[cell])
        choices, answer = _options(correct, [str(x) for x in range(NUM_CLASSES)], rng)
        question = f"Which digit is in the {POSITIONS[cell]}?"
    elif kind == "Instances Counting":
        digit = grid.labels[int(rng.integers(NUM_CELLS))]
        correct = DIGIT_WORDS[grid.count(digit)].capitalize()
        choices, answer = _options(correct, [w.capitalize() for w in DIGIT_WORDS[1:5]], rng)
        question = f"How many {digit}s are in the image?"
    elif kind == "Instance Location":
        cell = int(rng.choice(unique))
        correct = POSITIONS[cell].capitalize()
        choices, answer = _options(correct, [p.capitalize() for p in POSITIONS], rng)
        question = f"Where is the {grid.labels[cell]} in the image?"
    else:
        cell = int(rng.choice(unique))
        row, col = divmod(cell, GRID_SIDE)
        # The neighbour across the row (left/right) or the column (above/below), picked at random.
        if rng.random() < 0.5:
            other = row * GRID_SIDE + (1 - col)
            relation = "to the right of" if col == 0 else "to the left of"
        else:
            other = (1 - row) * GRID_SIDE + col
            relation = "below" if row == 0 else "above"
        correct = str(grid.labels[other])
        choices, answer = _options(correct, [str(x) for x in range(NUM_CLASSES)], rng)
        question = f"Which digit is {relation} the {grid.labels[cell]}?"
    return MultipleChoice(question=question, choices=choices, answer=answer, dimension=kind)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Text-only samples: answerable without an image (LLaVA's mix keeps ShareGPT text conversations).
# ---------------------------------------------------------------------------------------------


def text_only(rng: np.random.Generator) -> list[tuple[str, str]]:
    """One text-only exchange (list of (question, answer) turns) about digit arithmetic."""
    kind = int(rng.integers(4))
    a = int(rng.integers(0, NUM_CLASSES))
    b = int(rng.integers(0, NUM_CLASSES - a))  # keep sums single-digit: the answer vocabulary stays small
    if kind == 0:
        return [(with_short_answer_prompt(f"What is {a} plus {b}?"), str(a + b))]
    if kind == 1:
        return [
            (
                f"What is {DIGIT_WORDS[a]} plus {DIGIT_WORDS[b]}?",
                f"{DIGIT_WORDS[a].capitalize()} plus {DIGIT_WORDS[b]} is {DIGIT_WORDS[a + b]}.",
            )
        ]
    if kind == 2:
        c = int(rng.integers(0, NUM_CLASSES - 1))
        return [
            (with_short_answer_prompt(f"Which digit comes after {c}?"), str(c + 1)),
            (with_short_answer_prompt(f"Is {c + 1} larger than {c}?"), "yes"),
        ]
    x, y = int(rng.integers(NUM_CLASSES)), int(rng.integers(NUM_CLASSES))
    return [(with_short_answer_prompt(f"Is {x} larger than {y}?"), "yes" if x > y else "no")]
