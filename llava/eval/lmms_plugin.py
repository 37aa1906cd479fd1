"""lmms-eval model plugin: ``python -m lmms_eval --model hidrop_llava --model_args pretrained=CKPT,reduction=tok64``.

lmms-eval finds the model through the ``lmms_eval.models`` entry point that ``pyproject.toml`` declares
(``hidrop_llava = "llava.eval.lmms_plugin:lmms_eval_models"``); nothing has to be imported by hand. The
model arguments (comma-separated ``key=value``, as lmms-eval passes them):

- ``pretrained``: checkpoint directory (full, projector-only or LoRA; see ``llava.model.builder``).
- ``model_base``: the base LLM of a projector-only or LoRA checkpoint.
- ``vision_tower_path``: a local CLIP directory replacing the tower a checkpoint names (offline machines).
- ``reduction``: a preset that replaces the checkpoint's saved schedule (``tok64``, ``off``, ...); unset keeps it.
- ``reduction_overrides``: single-field overrides, separated by spaces or ``;``. Put list values in brackets
  so that lmms-eval's comma split leaves them whole: ``reduction_overrides=exit_layer=24;keep_counts=[215,10,5,1]``.
- ``conv_template`` (default ``vicuna_v1``), ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:1``),
  ``dtype`` (``auto``: float16 on GPU, float32 on CPU), ``batch_size``, ``attn_implementation``.

Prompts, tokenization, image preprocessing and batched generation are those of the benchmark runner
(``llava.eval.run_benchmark.LlavaBackend`` and ``vicuna_prompt``), so lmms-eval and our own runner answer
the same question with the same text. The task's context is the user turn; an ``<image>`` line is put in front
of it when the document has an image (unless the context already holds the placeholder).

Requests:

- ``generate_until``: batched, left-padded generation. Greedy unless the task (or ``--gen_kwargs``) asks for a
  ``temperature`` > 0, which samples (``top_p`` honoured). ``max_new_tokens`` defaults to 1024 as in lmms-eval's
  own LLaVA model. The task's ``until`` strings cut the answer at the first one found: generation runs until
  EOS or ``max_new_tokens`` and the text is cut afterwards, which gives the same answer as stopping early.
  Beam search is not supported (``num_beams`` > 1 raises).
- ``loglikelihood`` (multiple-choice tasks): ``(negative log-likelihood, is_greedy)`` of the continuation given
  the prompt and the image: the *negated* sum of its token log-probabilities, because lmms-eval's
  multiple-choice scorer picks the choice with the *smallest* first value (``np.argmin`` in its
  ``ConfigurableTask.process_results``; its built-in models return a loss), so ``acc`` and ``acc_norm`` come out
  right. ``continuation_logprobs`` gives the plain log-probabilities. It works with every schedule: vision-token
  pruning is scored by the last *context* token, as in generation, so the continuation never influences which
  vision tokens are kept, and the score equals the probability that ``generate`` emits the same tokens. Text
  tokens are never pruned; the logits are aligned by the persistent positions the model returns
  (``LlavaCausalLMOutput.positions`` / ``token_valid``). (lmms-eval's ``acc_mutual_info`` takes an argmax over
  differences of these values and so ranks choices backwards for every loss-returning model; use ``acc``.)
- ``generate_until_multi_round``: not supported (raises ``NotImplementedError``).

One image per question (LLaVA-1.5): a document with several images or a video raises a ``ValueError`` naming it.

Written against and tested with lmms-eval 0.6.1. Releases 0.7.0 to 0.7.3 turn every loglikelihood result into a
string (``unwrap_generation_output``) and so fail on multiple-choice tasks for every model, and 0.7.2+ need
``filelock<4`` (``filelock._api``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

try:
    from lmms_eval.api.instance import Instance
    from lmms_eval.api.model import lmms
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "llava.eval.lmms_plugin needs lmms-eval; install it with the project's `lmms` extra (see docs/Evaluation.md)"
    ) from e

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.eval.run_benchmark import DEFAULT_CONV_MODE, LlavaBackend, resolve_device_dtype, vicuna_prompt

if TYPE_CHECKING:
    import torch
    from PIL import Image

logger = logging.getLogger("llava.eval.lmms_plugin")

MODEL_NAME = "hidrop_llava"
DEFAULT_MAX_NEW_TOKENS = 1024  # lmms-eval's own LLaVA model uses this when a task does not say
# Generation settings that are accepted and have no effect here (the image aspect ratio is the checkpoint's).
_IGNORED_GEN_KWARGS = {"do_sample", "use_cache", "image_aspect_ratio", "top_k", "num_beams"}


def lmms_eval_models() -> list[Any]:
    """The ``lmms_eval.models`` entry point: registers ``hidrop_llava`` (lmms-eval calls this when it starts)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.{HiDropLlava.__name__}")]


def parse_reduction_overrides(value: Any) -> list[str]:
    """``"exit_layer=24 keep_counts=[8,4]"`` or ``"exit_layer=24;keep_counts=8,4"`` -> ``["exit_layer=24", ...]``.

    lmms-eval splits ``--model_args`` on commas outside brackets and quotes, so several overrides are separated
    by spaces or ``;`` and list values are bracketed (or the whole value quoted).
    """
    if value is None or value == "":
        return []
    text = str(value).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    items = [item for item in text.replace(";", " ").split() if item]
    for item in items:
        if "=" not in item:
            raise ValueError(f"reduction_overrides item {item!r} is not of the form key=value")
    return items


def _flatten_visuals(visuals: Any) -> list[Any]:
    """The visuals of a document as a flat list; ``None`` entries (a text-only row of an image column) dropped."""
    if visuals is None:
        return []
    if isinstance(visuals, (list, tuple)):
        out: list[Any] = []
        for v in visuals:
            out.extend(_flatten_visuals(v))
        return out
    return [visuals]


def _stop_at(text: str, until: Sequence[str]) -> str:
    """``text`` cut at the earliest occurrence of any (non-empty) stop string."""
    cut = len(text)
    for stop in until:
        if stop:
            at = text.find(stop)
            if at != -1:
                cut = min(cut, at)
    return text[:cut]


class _SamplingModel:
    """The model with ``generate`` switched to sampling: lets ``LlavaBackend`` (greedy by contract) sample."""

    def __init__(self, model: Any, temperature: float, top_p: float | None) -> None:
        self._model, self._temperature, self._top_p = model, temperature, top_p

    def generate(self, **kwargs: Any) -> Any:
        kwargs.update(do_sample=True, temperature=self._temperature, top_p=self._top_p)
        return self._model.generate(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class HiDropLlava(lmms):
    """A HiDrop-LLaVA checkpoint as an lmms-eval model (``--model hidrop_llava``)."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        model_base: str | None = None,
        reduction: str | None = None,
        reduction_overrides: str | None = None,
        conv_template: str = DEFAULT_CONV_MODE,
        device: str | None = "auto",
        dtype: str = "auto",
        batch_size: int | str | None = 1,
        max_batch_size: int | None = None,  # passed by lmms-eval; automatic batch sizes are not supported
        attn_implementation: str | None = None,
        vision_tower_path: str | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise TypeError(f"{MODEL_NAME}: unknown model_args {sorted(unknown)}")
        import torch
        from accelerate import Accelerator

        from llava.model.builder import load_pretrained_model
        from llava.model.reduction.config import parse_overrides

        try:
            self.batch_size_per_device = int(batch_size if batch_size is not None else 1)
        except (TypeError, ValueError):
            raise ValueError(f"{MODEL_NAME}: batch_size must be an integer, got {batch_size!r}") from None
        if self.batch_size_per_device < 1:
            raise ValueError(f"{MODEL_NAME}: batch_size must be >= 1, got {batch_size!r}")

        self.accelerator = Accelerator()
        device = str(device or "auto")
        if self.accelerator.num_processes > 1:  # data parallel: one process per GPU, lmms-eval shards the requests
            device = f"cuda:{self.accelerator.local_process_index}"
            self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
        if device == "auto":
            device, dtype_name = resolve_device_dtype("auto", str(dtype))
        else:
            dtype_name = resolve_device_dtype(device.split(":")[0], str(dtype))[1]
        self._device = torch.device(device)

        overrides = parse_reduction_overrides(reduction_overrides)
        extra = {"vision_tower_path": str(vision_tower_path)} if vision_tower_path else {}
        tokenizer, model, image_processor, context_len = load_pretrained_model(
            str(pretrained),
            model_base=model_base or None,
            device=str(self._device),
            torch_dtype=getattr(torch, dtype_name),
            reduction=str(reduction) if reduction else None,
            reduction_overrides=parse_overrides(overrides) if overrides else None,
            attn_implementation=attn_implementation,
            **extra,
        )
        model.eval()
        self._model, self._tokenizer, self._max_length = model, tokenizer, context_len
        self.conv_template = conv_template
        self.backend = LlavaBackend(model, tokenizer, image_processor, template=self._template)
        self.reduction = model.config.reduction_config
        logger.info("%s: %s on %s (%s)", MODEL_NAME, pretrained, self._device, self.reduction.name)

    # ------------------------------------------------------------------ properties lmms-eval reads
    @property
    def model(self) -> Any:
        return self._model

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def config(self) -> Any:
        return self._model.config

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_device

    @property
    def max_length(self) -> int:
        return self._max_length

    # ------------------------------------------------------------------ inputs
    def _template(self, text: str, has_image: bool) -> str:
        """``vicuna_prompt``, except that a context already holding ``<image>`` keeps it where it is."""
        return vicuna_prompt(text, has_image and DEFAULT_IMAGE_TOKEN not in text, self.conv_template)

    def _image_of(self, doc_to_visual: Callable | None, doc_id: Any, task: str, split: str) -> Image.Image | None:
        """The document's one image (None for text-only documents)."""
        from PIL import Image

        if doc_to_visual is None:
            return None
        visuals = _flatten_visuals(doc_to_visual(self.task_dict[task][split][doc_id]))
        where = f"task {task!r}, split {split!r}, document {doc_id}"
        if len(visuals) > 1:
            raise ValueError(f"{where} has {len(visuals)} visuals; {MODEL_NAME} (LLaVA-1.5) answers with one image")
        if visuals and not isinstance(visuals[0], Image.Image):
            raise ValueError(
                f"{where}: the visual is a {type(visuals[0]).__name__}, not a PIL image; {MODEL_NAME} takes images "
                "only (no video or audio)"
            )
        return visuals[0] if visuals else None

    def _check_placeholder(self, context: str, image: Any, where: str) -> None:
        if image is None and DEFAULT_IMAGE_TOKEN in context:
            raise ValueError(f"{where}: the context holds {DEFAULT_IMAGE_TOKEN} but the document has no image")

    # ------------------------------------------------------------------ generate_until
    def generate_until(self, requests: list[Instance]) -> list[str]:
        from tqdm import tqdm

        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):  # one batch never mixes generation settings
            groups.setdefault(json.dumps(req.args[1] or {}, sort_keys=True, default=str), []).append(i)
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc=f"{MODEL_NAME} generate_until")
        for indices in groups.values():
            # Longest first: less padding and an out-of-memory error shows on the first batch. Answers do not
            # depend on the batch (left padding and the attention mask, see run_benchmark).
            indices = sorted(indices, key=lambda i: -len(requests[i].args[0]))
            settings = self._generation_settings(requests[indices[0]].args[1])
            backend = self._backend_for(settings)
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                texts, images = [], []
                for i in batch:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args
                    image = self._image_of(doc_to_visual, doc_id, task, split)
                    self._check_placeholder(context, image, f"task {task!r}, document {doc_id}")
                    texts.append(context)
                    images.append(image)
                answers = backend.generate(texts, images, settings["max_new_tokens"])
                for i, answer in zip(batch, answers):
                    results[i] = _stop_at(answer, settings["until"])
                    self.cache_hook.add_partial("generate_until", requests[i].args[:2], results[i])
                bar.update(len(batch))
        bar.close()
        return [r if r is not None else "" for r in results]

    def _generation_settings(self, gen_kwargs: dict[str, Any] | None) -> dict[str, Any]:
        kw = dict(gen_kwargs or {})
        until = kw.pop("until", None)
        if until is None:
            until = []
        elif isinstance(until, str):
            until = [until]
        elif not isinstance(until, (list, tuple)):
            raise ValueError(f"gen_kwargs['until'] must be a string or a list of strings, got {type(until).__name__}")
        max_new = int(kw.pop("max_new_tokens", None) or DEFAULT_MAX_NEW_TOKENS)
        temperature = float(kw.pop("temperature", 0) or 0)
        top_p = kw.pop("top_p", None)
        num_beams = int(kw.get("num_beams", 1) or 1)
        if num_beams > 1:
            raise NotImplementedError(
                f"{MODEL_NAME} decodes greedily or by sampling; num_beams={num_beams} is not supported"
            )
        unused = sorted(k for k in kw if k not in _IGNORED_GEN_KWARGS)
        if unused:
            logger.warning("%s ignores generation settings %s", MODEL_NAME, unused)
        return {
            "until": [str(u) for u in until],
            "max_new_tokens": max_new,
            "temperature": temperature,
            "top_p": float(top_p) if top_p not in (None, "", 0) else None,
        }

    def _backend_for(self, settings: dict[str, Any]) -> LlavaBackend:
        if settings["temperature"] <= 0:
            return self.backend
        sampler = _SamplingModel(self._model, settings["temperature"], settings["top_p"])
        return LlavaBackend(sampler, self._tokenizer, self.backend.image_processor, template=self._template)

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(
            f"{MODEL_NAME} does not support multi-round generation tasks (generate_until_multi_round); "
            "run single-turn generate_until or multiple-choice tasks"
        )

    # ------------------------------------------------------------------ loglikelihood
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """``(-log P(continuation | context, image), is_greedy)`` per request: lmms-eval ranks choices by argmin."""
        out = [(-lp, greedy) for lp, greedy in self.continuation_logprobs(requests)]
        for req, res in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", req.args[:2], res)
        return out

    def continuation_logprobs(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """``(log P(continuation | context, image), is_greedy)`` per loglikelihood request, batched."""
        from tqdm import tqdm

        rows = [self._scoring_row(req.args) for req in requests]
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["ids"]))
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc=f"{MODEL_NAME} loglikelihood")
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            for i, res in zip(batch, self._score([rows[i] for i in batch])):
                results[i] = res
            bar.update(len(batch))
        bar.close()
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _scoring_row(self, args: tuple) -> dict[str, Any]:
        """Token ids of prompt + continuation and how many of them are the continuation."""
        from llava.mm_utils import tokenizer_image_token_with_offsets

        context, continuation = str(args[0]), str(args[1])
        image = None
        if len(args) >= 6:  # (context, continuation, doc_to_visual, doc_id, task, split); 2 for acc_mutual_info
            _, _, doc_to_visual, doc_id, task, split = args[:6]
            image = self._image_of(doc_to_visual, doc_id, task, split)
            self._check_placeholder(context, image, f"task {task!r}, document {doc_id}")
        prompt = self.backend.template(context, image is not None)
        ids, spans = tokenizer_image_token_with_offsets(prompt + continuation, self._tokenizer)
        # Continuation tokens: those covering any of its characters. A token that straddles the boundary is
        # counted with the continuation; special tokens (empty spans) after the text are dropped.
        cont = [j for j, (s, e) in enumerate(spans) if e > len(prompt) and e > s]
        if cont:
            ids = ids[: cont[-1] + 1]
            n_cont = len(ids) - cont[0]
        else:
            n_cont = 0
        if n_cont >= len(ids):
            raise ValueError(f"nothing is left of the prompt before the continuation {continuation!r}")
        return {"ids": ids, "n_cont": n_cont, "image": image}

    def _score(self, rows: list[dict[str, Any]]) -> list[tuple[float, bool]]:
        """One left-padded forward over prompt + continuation for a batch of rows."""
        import torch

        from llava.model.multimodal_inputs import split_multimodal_batch

        device, dtype = self.backend._placement()
        B, width = len(rows), max(len(r["ids"]) for r in rows)
        input_ids = torch.full((B, width), self.backend.pad_token_id, dtype=torch.long)
        mask = torch.zeros((B, width), dtype=torch.long)
        for b, r in enumerate(rows):
            input_ids[b, width - len(r["ids"]) :] = torch.tensor(r["ids"], dtype=torch.long)
            mask[b, width - len(r["ids"]) :] = 1
        n_cont = torch.tensor([r["n_cont"] for r in rows], dtype=torch.long)

        # Text-stream coordinates come from the model's own splitter (cheap stand-ins for the embeddings): the
        # continuation is the last n_cont text tokens of each row, its first token follows the last context token,
        # and the token predicting continuation token j sits at persistent position text_positions[first - 1 + j].
        nv = int(self.config.num_vision_tokens)
        layout = split_multimodal_batch(input_ids, mask, torch.zeros(B, nv, 1), lambda ids: ids.unsqueeze(-1))
        first = layout.query_text_index[:, 0] - n_cont  # [B] text index of the first continuation token
        k = int(n_cont.max()) if B else 0
        steps = torch.arange(max(k, 1)).unsqueeze(0)  # [1, K]
        src = (first.unsqueeze(1) - 1 + steps).clamp(0, width - 1)  # [B, K] predictors of continuation tokens
        wanted_pos = torch.gather(layout.text_positions, 1, src)
        targets = torch.gather(input_ids, 1, (width - n_cont.unsqueeze(1) + steps).clamp(0, width - 1))  # [B, K]
        used = steps < n_cont.unsqueeze(1)

        pixels = self._pixels(rows)
        with torch.inference_mode():
            out = self._model(
                input_ids.to(device),
                attention_mask=mask.to(device),
                images=pixels.to(device=device, dtype=dtype),
                # Pruning is scored by the last context token, as when generating from the context.
                query_text_index=first.unsqueeze(1).to(device),
            )
        positions, valid = out.positions.cpu(), out.token_valid.cpu()
        match = (positions.unsqueeze(1) == wanted_pos.unsqueeze(2)) & valid.unsqueeze(1)  # [B, K, S]
        found = match.any(2)
        if bool((used & ~found).any()):
            raise RuntimeError(
                "a text token predicting the continuation is missing from the model's final token set; text tokens "
                f"are expected to survive every schedule ({self.reduction.name})"
            )
        slots = match.long().argmax(2).to(out.logits.device)  # [B, K]
        logits = torch.gather(out.logits, 1, slots.unsqueeze(-1).expand(-1, -1, out.logits.shape[-1]))
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()  # [B, K, V]
        token_lp = torch.gather(logprobs, 2, targets.unsqueeze(-1)).squeeze(-1)
        greedy = logprobs.argmax(-1) == targets
        return [(float(token_lp[b][used[b]].sum()), bool(greedy[b][used[b]].all())) for b in range(B)]

    def _pixels(self, rows: Sequence[dict[str, Any]]) -> torch.Tensor:
        """[B, 3, H, W] float32: the preprocessed image of each row, zeros for text-only rows (as in generate)."""
        import torch

        images = [r["image"] for r in rows]
        real = [img for img in images if img is not None]
        processed = self.backend.preprocess(real) if real else None
        shape = tuple(processed.shape[1:]) if processed is not None else self.backend._image_shape()
        pixels = torch.zeros((len(rows), *shape), dtype=torch.float32)
        if processed is not None:
            pixels[[b for b, img in enumerate(images) if img is not None]] = processed.to(torch.float32)
        return pixels
