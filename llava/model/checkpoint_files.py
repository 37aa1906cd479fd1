"""What a checkpoint folder holds, read from its files alone, before any model is built.

Building a model from the wrong folder is expensive: transformers fills in defaults for a config it does not
recognise (``LlavaForConditionalGeneration`` on a GPT-2 folder builds the default 7B LLaVA) and reports the
mismatch only after allocating it. So every loader first asks :func:`inspect_folder` what the folder is, from
``config.json`` (``model_type``, ``architectures``, ``text_config``, ``vision_config``, ``mm_vision_tower``) and,
where the config is silent, the weight key names in the safetensors headers; and :func:`check_weight_files` opens
every safetensors header (cheap: a few kB per file) so that a truncated or corrupt weights file is named before
transformers raises its bare ``SafetensorError``.

A path is always a local folder here: nothing in this module looks up a hub id.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from llava.model.checkpoint_loading import CheckpointError

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"

# The kinds :func:`inspect_folder` tells apart.
LLAVA_HF = "llava-hf"  # transformers' LlavaForConditionalGeneration (llava-hf/llava-1.5-7b-hf)
OURS = "ours"  # our layout: config.json carries vision_config
UPSTREAM = "upstream"  # upstream LLaVA-1.5: mm_vision_tower names the CLIP tower, no vision_config
PROJECTOR = "projector"  # stage-1 output: mm_projector.bin only
LORA = "lora"  # a LoRA adapter (adapter_config.json)
OTHER = "other"  # anything else: a plain LLM, a CLIP tower, GPT-2, ...


@dataclass(frozen=True)
class FolderKind:
    kind: str  # one of the constants above
    description: str  # what the folder is, for messages: "a transformers LLaVA (llava-hf) checkpoint", ...
    model_type: str | None = None


def convert_first_hint(path: str) -> str:
    """The message every loader of ours gives for a llava-hf folder."""
    return (f"{path} is a transformers LLaVA (llava-hf) checkpoint; convert it first with: "
            f"python -m llava.model.convert --from-hf {path} --out DIR2")


def read_config(path: str) -> dict | None:
    """``config.json`` of ``path`` as a dict, None when there is none; a broken one is a :class:`CheckpointError`."""
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        return None
    try:
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise CheckpointError(f"{config_file} cannot be read as JSON ({type(e).__name__}: {e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file} holds a JSON {type(config).__name__}, not an object")
    return config


def safetensors_files(path: str) -> list[str]:
    """The safetensors weight files of a folder: the index's shards, else ``model.safetensors`` (paths)."""
    index = os.path.join(path, SAFETENSORS_INDEX)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a readable safetensors index ({type(e).__name__}: {e})") from None
        return [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
    single = os.path.join(path, "model.safetensors")
    return [single] if os.path.isfile(single) else []


def check_weight_files(path: str) -> None:
    """Opens the header of every safetensors weight file of ``path``: a missing shard, a truncated or a corrupt
    file is a :class:`CheckpointError` naming the file and what is wrong (PyTorch ``.bin`` files are checked when
    they load, see :func:`weight_load_error`)."""
    from safetensors import SafetensorError, safe_open

    for file in safetensors_files(path):
        if not os.path.isfile(file):
            raise CheckpointError(f"weights file {file} is missing (listed in {SAFETENSORS_INDEX})")
        try:
            with safe_open(file, framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise CheckpointError(_corrupt(file, e)) from None


def _corrupt(file: str, err: BaseException) -> str:
    size = os.path.getsize(file) if os.path.isfile(file) else 0
    return (f"weights file {file} ({size:,} bytes) is truncated or corrupt: {err}. Copy or download it again "
            "(an interrupted transfer leaves such a file)")


def weight_load_error(path: str, err: BaseException) -> CheckpointError | None:
    """A :class:`CheckpointError` naming the file when ``err`` (raised while transformers read the weights of
    ``path``) comes from a broken weights file; None for other errors."""
    import pickle
    import zipfile

    from safetensors import SafetensorError

    if isinstance(err, SafetensorError):
        try:
            check_weight_files(path)
        except CheckpointError as named:
            return named
        return CheckpointError(f"the weights in {path} cannot be read: {err}")
    if isinstance(err, (pickle.UnpicklingError, EOFError, zipfile.BadZipFile)) or (
        isinstance(err, RuntimeError) and "PytorchStreamReader" in str(err)
    ):
        bins = sorted(f for f in os.listdir(path) if f.startswith("pytorch_model") and f.endswith(".bin"))
        names = ", ".join(os.path.join(path, f) for f in bins) or path
        return CheckpointError(f"weights file {names} is truncated or corrupt: {type(err).__name__}: {err}. Copy or "
                               "download it again")
    return None


def weight_key_names(path: str) -> list[str]:
    """The tensor names in the safetensors headers of ``path`` (empty for PyTorch ``.bin`` weights)."""
    from safetensors import safe_open

    check_weight_files(path)
    names: list[str] = []
    for file in safetensors_files(path):
        with safe_open(file, framework="pt") as f:
            names.extend(f.keys())
    return names


_NAMED_TYPES = {
    "llama": "a plain LLaMA language model (no vision tower)",
    "gpt2": "a GPT-2 language model",
    "clip": "a CLIP model (text and vision)",
    "clip_vision_model": "a CLIP vision tower",
    "mistral": "a plain Mistral language model (no vision tower)",
    "qwen2": "a plain Qwen2 language model (no vision tower)",
}


def _describe_by_keys(keys: list[str]) -> tuple[str, str] | None:
    if any(k.startswith("model.multi_modal_projector.") or k.startswith("multi_modal_projector.") for k in keys):
        return LLAVA_HF, "a transformers LLaVA (llava-hf) checkpoint"
    if any(".mm_projector." in f".{k}" for k in keys):
        return UPSTREAM, "a LLaVA checkpoint"
    if any(k.startswith("vision_model.") for k in keys):
        return OTHER, "a CLIP vision tower"
    if any(k.startswith("transformer.h.") or k.startswith("h.0.") for k in keys):
        return OTHER, "a GPT-2-style language model"
    return None


def inspect_folder(path: str) -> FolderKind:
    """What ``path`` holds; raises :class:`CheckpointError` when it is not a folder at all."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path} does not exist (a local checkpoint folder is expected; hub ids are not fetched)")
    if not os.path.isdir(path):
        raise CheckpointError(f"{path} is a file, not a checkpoint folder")
    files = set(os.listdir(path))
    config = read_config(path)
    if "adapter_config.json" in files:
        return FolderKind(LORA, "a LoRA adapter", None if config is None else config.get("model_type"))
    if config is None:
        if "mm_projector.bin" in files:
            return FolderKind(PROJECTOR, "a projector-only (stage-1) checkpoint")
        return FolderKind(OTHER, f"a folder without config.json ({_listing(files)})")
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    has_weights = bool(files & {"model.safetensors", SAFETENSORS_INDEX, "pytorch_model.bin", BIN_INDEX})
    if "LlavaForConditionalGeneration" in architectures or (model_type == "llava" and "text_config" in config):
        return FolderKind(LLAVA_HF, "a transformers LLaVA (llava-hf) checkpoint", model_type)
    if config.get("vision_config") and model_type == "llava_llama":
        return FolderKind(OURS, "a HiDrop-LLaVA checkpoint (our layout)", model_type)
    if config.get("mm_vision_tower"):
        if "mm_projector.bin" in files and not has_weights:
            return FolderKind(PROJECTOR, "a projector-only (stage-1) checkpoint", model_type)
        return FolderKind(UPSTREAM, "an upstream LLaVA-1.5 checkpoint", model_type)
    if model_type is None and has_weights:
        found = _describe_by_keys(weight_key_names(path))
        if found is not None:
            return FolderKind(found[0], found[1], None)
    if model_type in _NAMED_TYPES:
        return FolderKind(OTHER, _NAMED_TYPES[model_type], model_type)
    arch = f" ({', '.join(architectures)})" if architectures else ""
    return FolderKind(OTHER, f"a model of type {model_type!r}{arch}", model_type)


def _listing(files: set[str]) -> str:
    if not files:
        return "empty"
    shown = sorted(files)[:5]
    return "holds " + ", ".join(shown) + (f" and {len(files) - 5} more" if len(files) > 5 else "")


__all__ = [
    "LLAVA_HF",
    "LORA",
    "OTHER",
    "OURS",
    "PROJECTOR",
    "UPSTREAM",
    "FolderKind",
    "check_weight_files",
    "convert_first_hint",
    "inspect_folder",
    "read_config",
    "safetensors_files",
    "weight_key_names",
    "weight_load_error",
]
