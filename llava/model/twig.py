"""TwigVLM's twig: a few decoder layers, a final norm and an LM head sitting on the output of base layer K.

Together with base layers 1..K the twig is a shallow language model. It serves three purposes (docs/Baselines.md):

- **twig-guided pruning** (``score_layer="twig"``): after base layer K the twig runs on the current token set and
  the attention of its last layer from the scoring queries ranks the vision tokens (``twig_prefill`` returns that
  layer's input; the scorer in ``reduction.scoring`` reads its projections, so the main kernel stays untouched);
- **drafting** for self-speculative decoding (``llava.model.speculative``): the shallow model proposes tokens that
  the base then verifies;
- **training** (``twig_loss``): only the twig learns, by next-token cross-entropy of the shallow model.

Its layers are built with ``layer_idx`` 0..T-1 and use their own ``DynamicCache``: the base's layer indices are
the base cache's. ``config.twig`` (saved in config.json) holds K and T; the twig is a submodule of the model, so it
is saved, loaded and gathered under ZeRO-3 like every other weight.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm

from llava.model.reduction.config import ReductionConfigError

if TYPE_CHECKING:
    from llava.model.decoder import GenerationState
    from llava.model.reduction.config import ReductionConfig
    from llava.model.token_state import TokenState

logger = logging.getLogger(__name__)

# TwigVLM's released setting for LLaVA-1.5-7B: the twig sits after base layer 2 and has 3 layers.
DEFAULT_AFTER_LAYER = 2
DEFAULT_NUM_LAYERS = 3


class TwigConfigError(ReductionConfigError):
    """A twig that cannot be built or used as asked; the message names the setting. A schedule error (the entry
    points report it as they report every invalid schedule)."""


@dataclass(frozen=True)
class TwigSpec:
    """Where the twig sits and how deep it is; stored in config.json as ``"twig": {"after_layer": K, "num_layers": T}``."""

    after_layer: int = DEFAULT_AFTER_LAYER  # K: the twig reads base layer K's output (1-based)
    num_layers: int = DEFAULT_NUM_LAYERS  # T

    def validate_for(self, num_layers: int) -> TwigSpec:
        if self.after_layer < 1:
            raise TwigConfigError(f"twig after_layer must be >= 1 (it reads a base layer's output), got {self.after_layer}")
        if self.num_layers < 1:
            raise TwigConfigError(f"twig num_layers must be >= 1, got {self.num_layers}")
        if self.after_layer + self.num_layers > num_layers:
            raise TwigConfigError(
                f"a twig of {self.num_layers} layers after layer {self.after_layer} is initialised from base layers "
                f"{self.after_layer + 1}..{self.after_layer + self.num_layers}, but the model has {num_layers} layers"
            )
        return self

    def to_dict(self) -> dict[str, int]:
        return {"after_layer": self.after_layer, "num_layers": self.num_layers}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TwigSpec:
        unknown = set(d) - {"after_layer", "num_layers"}
        if unknown:
            raise TwigConfigError(f"unknown twig field(s) {sorted(unknown)} in config.json; known: after_layer, num_layers")
        try:
            return cls(int(d.get("after_layer", DEFAULT_AFTER_LAYER)), int(d.get("num_layers", DEFAULT_NUM_LAYERS)))
        except (TypeError, ValueError):
            raise TwigConfigError(f"twig settings must be whole numbers, got {d}") from None


class Twig(nn.Module):
    """T decoder layers (``layers``), a final norm (``norm``) and an LM head (``head``) on base layer K's output."""

    def __init__(self, config: Any, spec: TwigSpec) -> None:
        super().__init__()
        spec.validate_for(config.num_hidden_layers)
        self.after_layer = spec.after_layer
        # The layers hold the model's own config object, so they follow its attention implementation.
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, layer_idx=j) for j in range(spec.num_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    @property
    def spec(self) -> TwigSpec:
        return TwigSpec(self.after_layer, len(self.layers))

    def run(
        self,
        hidden: torch.Tensor,  # [B, S, D]
        mask: torch.Tensor | None,
        positions: torch.Tensor,  # [B, S]
        pos_emb: tuple[torch.Tensor, torch.Tensor],
        cache: DynamicCache | None = None,
        stop: int | None = None,
    ) -> torch.Tensor:
        """Layers ``0..stop-1`` of the twig on ``hidden`` (no norm); with ``cache`` they append their keys/values."""
        h = hidden
        for layer in self.layers[:stop]:
            h = layer(h, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=cache is not None,
                      position_embeddings=pos_emb)
        return h

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(hidden)).float()


@dataclass
class TwigStack:
    """What ``decoder.decode_chunk`` reads of a language model (``layers``, ``config``, ``rotary_emb``), for the
    twig's layers: the twig shares the base's rotary table and attention implementation."""

    layers: nn.ModuleList
    config: Any
    rotary_emb: nn.Module

    @classmethod
    def of(cls, twig: Twig, lm: nn.Module) -> TwigStack:
        return cls(twig.layers, lm.config, lm.rotary_emb)


def twig_prefill(
    twig: Twig,
    state: TokenState,
    mask: torch.Tensor | None,
    pos_emb: tuple[torch.Tensor, torch.Tensor],
    next_position: torch.Tensor,  # [B] the next token's position at layer K
    with_cache: bool,
) -> tuple[torch.Tensor, GenerationState | None]:
    """Runs the twig on base layer K's output (``state``, the token set after layer K).

    Returns the input of the twig's last layer (its projections score the vision tokens) and, ``with_cache``, the
    twig's generation state after running every twig layer over the prompt (drafting continues from it).
    Training-free: no gradient flows into the twig here.
    """
    from llava.model.decoder import GenerationState

    cache = DynamicCache() if with_cache else None
    with torch.no_grad():
        last_input = twig.run(state.hidden, mask, state.positions, pos_emb, cache, stop=len(twig.layers) - 1)
        if not with_cache:
            return last_input, None
        twig.layers[-1](last_input, attention_mask=mask, position_ids=state.positions, past_key_values=cache,
                        use_cache=True, position_embeddings=pos_emb)
    T = len(twig.layers)
    return last_input, GenerationState(cache=cache, key_valid=[state.valid] * T, next_position=[next_position] * T)


def check_twig_schedule(red: ReductionConfig, twig: Twig | None) -> None:
    """A schedule that scores with the twig must prune exactly once, right after the twig's base layer K, with the
    vision tokens present from the first layer up to it (the twig was trained on layer K's output with them)."""
    if red.score_layer != "twig":
        return
    if twig is None:
        raise TwigConfigError(
            f"schedule {red.name!r} scores with the twig (score_layer='twig') but this model has no twig: train one "
            "with scripts/train_twig.sh, or convert TwigVLM's released twig with python -m llava.model.convert_twig"
        )
    K = twig.after_layer
    if red.prune_layers != (K,):
        raise TwigConfigError(
            f"schedule {red.name!r}: twig-guided pruning cuts once, after the twig's base layer {K}; got prune_layers "
            f"{list(red.prune_layers)} (set prune_layers={K})"
        )
    if red.inject_layer != 1 or red.position_scheme == "group" or red.local_merge or red.key_ratio > 0:
        raise TwigConfigError(
            f"schedule {red.name!r}: the twig reads layer {K}'s output as it was trained, with every vision token "
            "present from layer 1 at its own position: it needs inject_layer=1, persistent or compacted positions and "
            "no vision-stage merging"
        )


def draft_shares_shallow_layers(red: ReductionConfig, twig: Twig) -> bool:
    """Whether the base's layers 1..K hold what the twig's shallow model needs (every token, vision included, at its
    full-sequence position, every slot cached), so that drafting can run on the base's own caches of those layers.
    Otherwise (late injection, a cut before layer K, group positions, merging, MustDrop's final cache policy reaching
    layer K) the draft gets its own caches of layers 1..K from a separate shallow prefill."""
    K = twig.after_layer
    if red.inject_layer != 1 or red.position_scheme == "group" or red.local_merge or red.key_ratio > 0:
        return False
    if red.exit_layer != -1 and red.exit_layer <= K:
        return False
    if red.prune_layers and red.prune_layers[0] < K:
        return False
    if red.kv_policy == "final" and red.prune_layers and red.prune_layers[0] <= K:
        return False
    return True


# ------------------------------------------------------------------------------------------------ initialisation
@contextlib.contextmanager
def _gathered(params: list[nn.Parameter], modify: list[nn.Parameter]) -> Iterator[None]:
    """Under ZeRO-3, the full tensors of ``params`` for the duration (the modified ones written back from rank 0)."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None):
            yield
    else:
        yield


@torch.no_grad()
def init_twig_from_base(model: nn.Module) -> None:
    """TwigVLM's initialisation: twig layer j = base layer K + 1 + j (1-based), norm and head = the base's."""
    twig: Twig = model.twig
    lm = model.model
    K = twig.after_layer
    pairs = [(twig.layers[j], lm.layers[K + j]) for j in range(len(twig.layers))]
    pairs += [(twig.norm, lm.norm), (twig.head, model.lm_head)]
    for dst, src in pairs:
        dst_params, src_params = dict(dst.named_parameters()), dict(src.named_parameters())
        if dst_params.keys() != src_params.keys():
            raise TwigConfigError(f"twig module {type(dst).__name__} does not match its base module: "
                                  f"{sorted(dst_params.keys() ^ src_params.keys())[:5]}")
        with _gathered([*dst_params.values(), *src_params.values()], list(dst_params.values())):
            for name, p in dst_params.items():
                p.copy_(src_params[name].to(p.dtype))
    logger.info("twig initialised from base layers %d..%d, the base's norm and LM head", K + 1, K + len(twig.layers))


# ------------------------------------------------------------------------------------------------ training
def twig_loss(model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The shallow model's next-token loss: base layers 1..K (frozen, no graph) on every token as plain LLaVA runs
    them, then the twig, its norm and head. Returns (loss, logits [B, S, V])."""
    from llava.model.decoder import _layer_inputs, run_decoder
    from llava.model.llava_llama import causal_lm_loss
    from llava.model.reduction.config import PRESETS

    twig: Twig = model.twig
    lm = model.model
    with torch.no_grad():  # the base is frozen: nothing below layer K needs activations kept
        out = run_decoder(lm, batch, PRESETS["off"], stop_after=twig.after_layer)
    state = out.state
    mask, pos_emb = _layer_inputs(lm, state, lm.config._attn_implementation)
    h = state.hidden
    if torch.is_grad_enabled():  # re-entrant gradient checkpointing of the twig's layers needs an input with a graph
        h = h.detach().requires_grad_(True)
    h = twig.run(h, mask, state.positions, pos_emb)
    logits = twig.logits(h)
    return causal_lm_loss(logits, state.labels), logits


__all__ = [
    "DEFAULT_AFTER_LAYER",
    "DEFAULT_NUM_LAYERS",
    "Twig",
    "TwigConfigError",
    "TwigSpec",
    "TwigStack",
    "check_twig_schedule",
    "draft_shares_shallow_layers",
    "init_twig_from_base",
    "twig_loss",
    "twig_prefill",
]
