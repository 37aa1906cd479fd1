"""LlavaConfig and LlavaLlamaForCausalLM: LLaVA-1.5 whose language-model forward is the reduction-aware loop.

Everything needed to rebuild a checkpoint lives in its config.json: the CLIP vision config (so the tower is rebuilt
from the checkpoint itself, no hub id), select layer and feature, projector type, image aspect ratio and the
token-reduction schedule. Parameter names follow upstream (`model.mm_projector.*`, `model.vision_tower.*`) so
upstream projector files load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from llava.constants import IGNORE_INDEX
from llava.model.decoder import (
    DecoderOutput,
    Observer,
    StageRecord,
    StageThresholds,
    decode_step,
    initial_thresholds,
    run_decoder,
)
from llava.model.multimodal_inputs import split_multimodal_batch
from llava.model.projector import build_projector
from llava.model.reduction.config import ReductionConfig
from llava.model.vision_merge import encode_with_local_merging
from llava.model.vision_tower import CLIPVisionTower

logger = logging.getLogger(__name__)


class LlavaConfig(LlamaConfig):
    model_type = "llava_llama"

    vision_config: dict | None = None  # CLIPVisionConfig.to_dict() of the tower
    mm_vision_tower: str | None = None  # where the tower came from (a local path or hub id), for the record
    mm_hidden_size: int | None = None
    mm_projector_type: str = "mlp2x_gelu"
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: str = "patch"
    image_aspect_ratio: str = "pad"
    tokenizer_model_max_length: int | None = None
    tokenizer_padding_side: str = "right"
    reduction: dict | None = None  # ReductionConfig.to_dict()
    # Parallel vision decoupling: with late injection nothing needs the tower until layer inject_layer, so it runs
    # beside the text-only shallow layers (a side CUDA stream) and joins at injection. "auto": on with a GPU and
    # inject_layer > 1; "on"; "off". Never under DeepSpeed ZeRO-3 (see LlavaLlamaForCausalLM.vision_decoupled).
    parallel_vision: str = "auto"

    @property
    def reduction_config(self) -> ReductionConfig:
        return ReductionConfig.from_dict(self.reduction) if self.reduction else ReductionConfig()

    @property
    def num_vision_tokens(self) -> int:
        if not self.vision_config:
            return 0
        n = (self.vision_config["image_size"] // self.vision_config["patch_size"]) ** 2
        return n + (1 if self.mm_vision_select_feature == "cls_patch" else 0)


@dataclass
class LlavaCausalLMOutput(CausalLMOutputWithPast):
    """Adds the reduction record. `logits` cover the final token set; `positions` / `token_valid` align them."""

    positions: torch.Tensor | None = None  # [B, S] persistent positions of the final token set
    token_valid: torch.Tensor | None = None  # [B, S]
    stages: list[StageRecord] | None = None
    budget_loss: torch.Tensor | None = None
    decoder: DecoderOutput | None = None


class LlavaLlamaForCausalLM(LlamaForCausalLM):
    config_class = LlavaConfig
    # The loss is a token mean per micro-batch (upstream); the Trainer scales it for gradient accumulation.
    accepts_loss_kwargs = False
    _no_split_modules = ["LlamaDecoderLayer", "CLIPEncoderLayer"]

    def __init__(self, config: LlavaConfig) -> None:
        if getattr(config, "model_type", None) != LlavaConfig.model_type:
            config.model_type = LlavaConfig.model_type  # a Vicuna config.json loaded into LlavaConfig
        super().__init__(config)
        if config.vision_config:
            self.model.vision_tower = CLIPVisionTower(
                config.vision_config, config.mm_vision_select_layer, config.mm_vision_select_feature
            )
            self.model.mm_projector = build_projector(config.mm_projector_type, config.mm_hidden_size, config.hidden_size)
        self._build_thresholds()
        self.post_init()

    # ------------------------------------------------------------------ assembly
    def _build_thresholds(self) -> None:
        red = self.config.reduction_config
        if red.learn_threshold and red.prune_layers:
            self.reduction_thresholds = StageThresholds(initial_thresholds(red, self.config.num_vision_tokens))
        else:
            self.reduction_thresholds = None

    def initialize_vision_modules(
        self,
        vision_tower: str,
        projector_type: str = "mlp2x_gelu",
        select_layer: int = -2,
        select_feature: str = "patch",
        pretrain_mm_mlp_adapter: str | None = None,
    ) -> None:
        """Loads the CLIP tower from ``vision_tower`` (a local directory) and builds the projector (training)."""
        tower = CLIPVisionTower.from_pretrained(vision_tower, select_layer, select_feature)
        tower.to(dtype=self.model.embed_tokens.weight.dtype)
        self.model.vision_tower = tower
        cfg = self.config
        cfg.vision_config = {k: v for k, v in tower.config.to_dict().items() if not k.startswith("_")}
        cfg.mm_vision_tower = vision_tower
        cfg.mm_hidden_size = tower.hidden_size
        cfg.mm_projector_type = projector_type
        cfg.mm_vision_select_layer = select_layer
        cfg.mm_vision_select_feature = select_feature
        if getattr(self.model, "mm_projector", None) is None:
            self.model.mm_projector = build_projector(projector_type, tower.hidden_size, cfg.hidden_size)
        for p in self.model.mm_projector.parameters():
            p.requires_grad_(True)
        if pretrain_mm_mlp_adapter:
            self.load_projector(pretrain_mm_mlp_adapter)
        self._build_thresholds()

    def load_projector(self, path: str) -> None:
        """Loads an upstream-style `mm_projector.bin` (keys `model.mm_projector.*`)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        sub = {k.split("mm_projector.", 1)[1]: v for k, v in state.items() if "mm_projector." in k}
        if not sub:
            raise ValueError(f"{path} holds no 'mm_projector.*' weights (keys: {list(state)[:5]}...)")
        self.model.mm_projector.load_state_dict(sub)

    def set_reduction(self, reduction: ReductionConfig) -> None:
        """Switches the schedule (e.g. evaluating a plain LLaVA checkpoint with HiDrop, training-free)."""
        reduction.validate_for(self.config.num_hidden_layers, self.config.num_vision_tokens)
        self.config.reduction = reduction.to_dict()
        if reduction.learn_threshold and self.reduction_thresholds is None:
            self._build_thresholds()

    def get_vision_tower(self) -> CLIPVisionTower:
        return self.model.vision_tower

    # ------------------------------------------------------------------ forward
    def encode_images(self, images: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """[B, 3, H, W] -> [B, N_v, D]. Always runs the tower and projector, also for text-only batches (ZeRO-3)."""
        tower = self.model.vision_tower
        if images is None:
            size = tower.config.image_size
            images = torch.zeros(batch_size, 3, size, size, device=self.device, dtype=self.dtype)
        feats = tower(images.to(device=self.device, dtype=self.dtype))
        return self.model.mm_projector(feats)

    def encode_vision(
        self, images: torch.Tensor | None, batch_size: int, reduction: ReductionConfig
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """([B, N_v, D] projector features, [B, N_v] valid slots or None, [B, N_v] key tokens or None).

        Plain LLaVA's tower unless the schedule asks for MustDrop's vision stage (local merging, key set).
        """
        if not (reduction.local_merge or reduction.key_ratio > 0):
            return self.encode_images(images, batch_size), None, None
        tower = self.model.vision_tower
        if images is None:
            size = tower.config.image_size
            images = torch.zeros(batch_size, 3, size, size, device=self.device, dtype=self.dtype)
        out = encode_with_local_merging(
            tower, images.to(device=self.device, dtype=self.dtype),
            reduction.merge_threshold if reduction.local_merge else None, reduction.merge_window,
            reduction.key_ratio if reduction.key_ratio > 0 else 1.0,
        )
        return self.model.mm_projector(out.features), out.valid, (out.key if reduction.key_ratio > 0 else None)

    def vision_decoupled(self, red: ReductionConfig) -> bool:
        """Whether the vision stage runs beside the shallow text layers (see ``LlavaConfig.parallel_vision``)."""
        mode = getattr(self.config, "parallel_vision", "auto")
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"parallel_vision must be 'auto', 'on' or 'off', got {mode!r}")
        if mode == "off" or red.inject_layer <= 1:
            return False
        if any(hasattr(p, "ds_id") for p in self.model.vision_tower.parameters()):
            # ZeRO-3 gathers the tower's weights in module hooks on its own streams and prefetches by the recorded
            # module order; running the tower on a side stream could use weights before they arrive.
            _log_once("parallel vision decoupling is off under DeepSpeed ZeRO-3 (its parameter gathering assumes one "
                      "stream); the tower runs before the first layer")
            return False
        return mode == "on" or self.device.type == "cuda"

    def multimodal_batch(self, input_ids, attention_mask, images, labels, red: ReductionConfig):
        """The multimodal batch of these inputs under schedule ``red`` (vision stage included).

        Decoupled (``vision_decoupled``): the batch carries a placeholder of the vision shape and a ``vision_pending``
        callable that the decoder calls at the injection layer. On a GPU the tower is launched now on a side stream
        and the callable makes the main stream wait for it; on CPU it runs when called (the cores are shared anyway).
        """
        B = input_ids.shape[0]
        if not self.vision_decoupled(red):
            vision, valid, key = self.encode_vision(images, B, red)
            batch = split_multimodal_batch(input_ids, attention_mask, vision, self.model.embed_tokens, labels,
                                           red.score_query)
            batch.vision_valid, batch.vision_key = valid, key
            return batch
        layout = torch.empty(B, self.config.num_vision_tokens, 0, device=self.device, dtype=self.dtype)  # shape only
        batch = split_multimodal_batch(input_ids, attention_mask, layout, self.model.embed_tokens, labels,
                                       red.score_query)
        batch.vision_pending = _launch_vision(self, images, B, red)
        return batch

    def _reduction(self, reduction: ReductionConfig | None) -> ReductionConfig:
        red = reduction if reduction is not None else self.config.reduction_config
        return red.validate_for(self.config.num_hidden_layers, self.config.num_vision_tokens)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        images: torch.Tensor | None = None,
        has_image: torch.Tensor | None = None,  # accepted from the collator; the <image> placeholder decides
        reduction: ReductionConfig | None = None,
        query_text_index: torch.Tensor | None = None,
        query_valid: torch.Tensor | None = None,
        observe: Observer | None = None,
        count_vision: bool = False,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool = True,
        **kwargs,
    ) -> LlavaCausalLMOutput:
        # Wrappers such as peft pass the standard HF arguments; refuse the ones this forward cannot honour.
        if inputs_embeds is not None:
            raise ValueError("pass input_ids (with the <image> placeholder), not inputs_embeds")
        if output_attentions or output_hidden_states:
            raise ValueError("output_attentions / output_hidden_states are not supported by the reduction loop")
        unexpected = sorted(k for k, v in kwargs.items() if v is not None and k != "use_cache")
        if unexpected:
            raise TypeError(f"forward() got unsupported arguments {unexpected}")
        red = self._reduction(reduction)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if red.data_dependent and self.training:
            raise ValueError(f"schedule {red.name!r} is training-free (thresholds and merging carry no gradient)")
        batch = self.multimodal_batch(input_ids, attention_mask, images, labels, red)
        if query_text_index is not None:  # fixed scoring queries (full-recompute generation)
            batch.query_text_index = query_text_index
            batch.query_valid = (torch.ones_like(query_text_index, dtype=torch.bool) if query_valid is None
                                 else query_valid)
        out = run_decoder(self.model, batch, red, self.reduction_thresholds, observe=observe,
                          count_vision=count_vision)
        logits = self.lm_head(out.hidden).float()  # [B, S, V]
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, out.state.labels)
            if out.budget_loss is not None:
                loss = loss + out.budget_loss
        return LlavaCausalLMOutput(
            loss=loss,
            logits=logits,
            positions=out.state.positions,
            token_valid=out.state.valid,
            stages=out.stages,
            budget_loss=out.budget_loss,
            decoder=out,
        )

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        max_new_tokens: int = 128,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        use_cache: bool = True,
        reduction: ReductionConfig | None = None,
        generator: torch.Generator | None = None,
        return_vision_counts: bool = False,
        **unsupported,
    ) -> torch.LongTensor | tuple[torch.LongTensor, torch.Tensor]:
        """Greedy or sampled decoding; returns only the new tokens [B, new]. Batches must be left-padded.

        With the cache, prefill prunes once (query: the last prompt token) and each layer decodes against its own
        cache. Without it, every step recomputes the whole sequence with the scoring query fixed at the last prompt
        token, which is the same computation and is what the consistency tests compare against.
        """
        if unsupported:
            raise TypeError(f"generate() does not support {sorted(unsupported)} (greedy or sampled decoding only)")
        red = self._reduction(reduction)
        B, T = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        _check_left_padded(attention_mask)
        eos = self.config.eos_token_id if eos_token_id is None else eos_token_id
        pad = (self.config.pad_token_id if pad_token_id is None else pad_token_id) or 0
        finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        new_tokens = []
        if not use_cache and red.kv_policy == "final":
            raise ValueError(f"schedule {red.name!r} decodes with its output-aware cache (kv_policy='final'), which "
                             "full recompute does not model; generate with use_cache=True")
        counts = None
        if use_cache:
            batch = self.multimodal_batch(input_ids, attention_mask, images, None, red)
            out = run_decoder(self.model, batch, red, None, use_cache=True, count_vision=return_vision_counts)
            counts = out.vision_counts
            gen = out.generation
            last = last_valid(out.state.valid)  # [B]
            logits = self.lm_head(out.hidden[torch.arange(B), last]).float()  # [B, V]
        else:
            ids, mask = input_ids, attention_mask
            query = self.prompt_query(input_ids, attention_mask, red)
            logits = self._last_logits(ids, mask, images, red, query)
        for _ in range(max_new_tokens):
            nxt = next_token(logits, do_sample, temperature, top_p, generator)  # [B]
            nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
            new_tokens.append(nxt)
            if eos is not None:
                finished = finished | (nxt == eos)
                if bool(finished.all()):
                    break
            if use_cache:
                h = decode_step(self.model, self.model.embed_tokens(nxt).unsqueeze(1), gen)
                logits = self.lm_head(h[:, -1]).float()
            else:
                ids = torch.cat([ids, nxt.unsqueeze(1)], 1)
                mask = torch.cat([mask, torch.ones_like(nxt).unsqueeze(1)], 1)
                logits = self._last_logits(ids, mask, images, red, query)
        tokens = torch.stack(new_tokens, 1) if new_tokens else torch.zeros(B, 0, dtype=torch.long, device=input_ids.device)
        if return_vision_counts:
            if counts is None:  # full recompute: the prompt's prefill is what the counts describe
                with torch.no_grad():
                    counts = self.forward(input_ids, attention_mask, images=images, reduction=red,
                                          count_vision=True).decoder.vision_counts
            return tokens, counts  # [B, new], [B, L] valid vision tokens at each layer's input during prefill
        return tokens

    def prompt_query(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor, reduction: ReductionConfig | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, Q] text-stream indices, [B, Q] validity) of the prompt's scoring queries. The indices stay valid when
        generated tokens are appended on the right, so full recompute pins them and prunes as prefill did."""
        red = self._reduction(reduction)
        B = input_ids.shape[0]
        layout_only = torch.zeros(B, 1, self.config.hidden_size, device=input_ids.device, dtype=self.dtype)
        batch = split_multimodal_batch(input_ids, attention_mask, layout_only, self.model.embed_tokens, None,
                                       red.score_query)
        return batch.query_text_index, batch.query_valid

    def _last_logits(self, ids, mask, images, red, query) -> torch.Tensor:
        out = self.forward(ids, mask, images=images, reduction=red, query_text_index=query[0], query_valid=query[1])
        last = last_valid(out.token_valid)
        return out.logits[torch.arange(ids.shape[0]), last]


_LOGGED: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _LOGGED:
        _LOGGED.add(message)
        logger.info(message)


def _launch_vision(model: LlavaLlamaForCausalLM, images, batch_size: int, red: ReductionConfig):
    """Starts the vision stage beside the text layers; returns the callable the decoder joins it with."""
    if model.device.type != "cuda":
        return lambda: model.encode_vision(images, batch_size, red)
    main = torch.cuda.current_stream(model.device)
    side = torch.cuda.Stream(device=model.device)
    side.wait_stream(main)  # the images and weights are ready on the main stream
    with torch.cuda.stream(side):
        result = model.encode_vision(images, batch_size, red)

    def join():
        main.wait_stream(side)
        for t in result:
            if t is not None:
                t.record_stream(main)  # the caching allocator must not reuse them while the main stream reads
        return result

    return join


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean next-token loss over the final token set (labels travelled with the tokens through every stage)."""
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)


def last_valid(valid: torch.Tensor) -> torch.Tensor:  # [B, S] -> [B]
    cols = torch.arange(1, valid.shape[1] + 1, device=valid.device).unsqueeze(0)
    return (valid.long() * cols).argmax(1)


def _check_left_padded(mask: torch.Tensor) -> None:
    m = mask.bool()
    # Left padding: once a row has started, it has no holes and runs to the last column.
    if not bool(m[:, -1].all()) or bool((m[:, :-1] & ~m[:, 1:]).any()):
        raise ValueError("generate() needs left-padded batches (tokenizer.padding_side = 'left')")


def next_token(
    logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float | None, generator: torch.Generator | None
) -> torch.Tensor:
    if not do_sample or temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_p, idx = torch.sort(probs, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the most likely token
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


AutoConfig.register(LlavaConfig.model_type, LlavaConfig)
AutoModelForCausalLM.register(LlavaConfig, LlavaLlamaForCausalLM)

__all__ = ["LlavaCausalLMOutput", "LlavaConfig", "LlavaLlamaForCausalLM", "causal_lm_loss", "last_valid", "next_token"]
