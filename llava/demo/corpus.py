"""The texts the demo tokenizer is trained on: the template pieces, then every text the demo's data files hold."""

from __future__ import annotations

import json
from collections.abc import Iterator

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.demo import digits
from llava.demo.layout import DemoPaths, read_jsonl
from llava.demo.train_data import ROLES, VICUNA_SYSTEM


def fixed_prompt_texts() -> list[str]:
    """Template strings the tokenizer must know even if no sample happens to contain them."""
    return [
        VICUNA_SYSTEM,
        *(f"{role}:" for role in ROLES),
        digits.SHORT_ANSWER_PROMPT,
        digits.OPTION_LETTER_PROMPT,
        *(f"{letter}. " for letter in digits.OPTION_LETTERS),
        *digits.CAPTION_INSTRUCTIONS,
        *digits.DESCRIBE_INSTRUCTIONS,
    ]


def corpus_texts(paths: DemoPaths) -> Iterator[str]:
    """Every text of the demo, read back from the written files, with ``<image>`` removed.

    ``<image>`` never reaches the tokenizer in LLaVA (``tokenizer_image_token`` splits it out), so
    it must not become a vocabulary piece. Conversations are also rendered in the vicuna_v1 layout
    so merges such as "ASSISTANT:" are learned in the context they appear in.
    """
    image = DEFAULT_IMAGE_TOKEN
    yield from fixed_prompt_texts()
    for path in (paths.pretrain_json, paths.finetune_json):
        for record in json.loads(path.read_text()):
            turns = [t["value"].replace(image, "").strip() for t in record["conversations"]]
            yield from turns
            rendered = " ".join(f"{ROLES[0]}: {q} {ROLES[1]}: {a}</s>" for q, a in zip(turns[0::2], turns[1::2]))
            yield f"{VICUNA_SYSTEM} {rendered}"
    for path in (paths.gqa_jsonl, paths.pope_jsonl, paths.seed_jsonl):
        for row in read_jsonl(path):
            yield row["text"]
