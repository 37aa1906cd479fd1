"""Fixtures and helpers for the data-side tests: a tiny trained tokenizer, a tiny CLIP processor, digit PNGs.

Import the fixtures into a test module (``from data_fixtures import tiny_tokenizer``) to use them; pytest
registers fixtures found in a test module's namespace. Everything is built locally in a temp dir: the
tokenizer is trained in well under a second on :data:`CORPUS`, the images are scikit-learn's digit scans.

The corpus repeats every word the golden tests use, and the vocabulary is large enough for BPE to merge each
of them completely, so (for example) every word of the Vicuna system prompt is a single ``"▁word"`` piece.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from llava.conversation import get_template
from llava.demo.tokenizer import train_tokenizer
from llava.mm_utils import build_image_processor

PROCESSOR_SIZE = 28  # CLIP processor output side for the tests: [3, 28, 28]

CORPUS: list[str] = [
    get_template("vicuna_v1").system,
    get_template("llava_v1").system,
    "USER: What digit is shown? ASSISTANT: 3</s>USER: Is it odd? ASSISTANT: yes</s>",
    "USER: What is two plus three? ASSISTANT: Two plus three is five.</s>",
    "USER: Describe the image briefly. ASSISTANT: A handwritten digit three.</s>",
    "A handwritten digit three.\nA handwritten digit seven on a white background.",
] * 8


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    # Imported lazily: scikit-learn takes about a second to import.
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images, data.target


def write_digit_png(path: Path, index: int = 0, size: tuple[int, int] = (24, 16)) -> Path:
    """Save scikit-learn digit scan ``index`` as an RGB PNG of ``size`` (W, H); non-square by default."""
    images, _ = _digits()
    ink = np.clip(255.0 - images[index] * (255.0 / 16.0), 0, 255).astype(np.uint8)  # 8x8, dark ink on white
    img = Image.fromarray(ink, mode="L").resize(size, Image.Resampling.BICUBIC).convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def write_json(path: Path, records: Any) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def image_record(
    sample_id: str, image: str, question: str = "<image>\nWhat digit is shown?", answer: str = "3"
) -> dict:
    return {
        "id": sample_id,
        "image": image,
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
    }


def text_record(
    sample_id: str, question: str = "What is two plus three?", answer: str = "Two plus three is five."
) -> dict:
    return {"id": sample_id, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    return train_tokenizer(CORPUS, tmp_path_factory.mktemp("tokenizer"), vocab_size=1024)


@pytest.fixture(scope="session")
def image_processor():
    return build_image_processor(image_size=PROCESSOR_SIZE)
