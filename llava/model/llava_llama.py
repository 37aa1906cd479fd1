"""LlavaConfig and LlavaLlamaForCausalLM: LLaVA-1.5 whose language-model forward is the reduction-aware loop.

Everything needed to rebuild a checkpoint lives in its config.json: the CLIP vision config (so the tower is rebuilt
from the checkpoint itself, no hub id), select layer and feature, projector type, image aspect ratio and the
token-reduction schedule. Parameter names follow upstream (`model.mm_projector.*`, `model.vision_tower.*`) so
upstream projector files load.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.compression_tokens import check_compress_support, insert_compress_tokens
from llava.model.decoder import (
    DecoderOutput,
    Observer,
    StageRecord,
    StageThresholds,
    VisionCounts,
    decode_step,
    initial_thresholds,
    run_decoder,
)
from llava.model.multimodal_inputs import split_multimodal_batch
from llava.model.projector import build_projector
from llava.model.reduction.config import ReductionConfig
from llava.model.twig import Twig, TwigSpec, check_twig_schedule, init_twig_from_base, twig_loss
from llava.model.two_pass import ImageCache, compressed_prefill
from llava.model.vision_merge import encode_with_local_merging
from llava.model.vision_tower import CLIPVisionTower

logger = logging.getLogger(__name__)


def _ends_streamer(generate):
    """Calls ``streamer.end()`` once ``generate`` returns or fails, so a consumer iterating the streamer (e.g. a
    ``TextIteratorStreamer`` in another thread) never waits for tokens that will not come."""

    @functools.wraps(generate)
    def wrapper(self, *args, **kwargs):
        streamer = kwargs.get("streamer")
        try:
            return generate(self, *args, **kwargs)
        finally:
            if streamer is not None:
                streamer.end()

    return wrapper


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
    # The <voco> token id of a checkpoint trained with VoCo-LLaMA's compression tokens (None: never trained with
    # them); the schedule's compress_tokens says how many follow each image (llava.model.compression_tokens).
    compress_token_id: int | None = None
    # TwigVLM's twig (llava.model.twig): {"after_layer": K, "num_layers": T}, or None for a model without one.
    twig: dict | None = None

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
        self.twig = Twig(config, TwigSpec.from_dict(config.twig)) if config.twig else None
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
        check_compress_support(self.config, reduction)
        check_twig_schedule(reduction, self.twig)
        self.config.reduction = reduction.to_dict()
        if reduction.learn_threshold and self.reduction_thresholds is None:
            self._build_thresholds()

    def add_twig(self, spec: TwigSpec, from_base: bool = True) -> Twig:
        """Attaches a twig (saved with the model from now on), initialised from the base layers after its layer K
        as TwigVLM does, unless ``from_base`` is False (its weights are loaded next)."""
        spec.validate_for(self.config.num_hidden_layers)
        self.config.twig = spec.to_dict()
        p = self.lm_head.weight
        self.twig = Twig(self.config, spec).to(device=p.device, dtype=p.dtype)
        if from_base:
            init_twig_from_base(self)
        return self.twig

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
        if red.compress_tokens:  # the one place VoCo tokens enter a prompt (after each <image> placeholder)
            input_ids, attention_mask, labels = insert_compress_tokens(
                input_ids, attention_mask, labels, self.config.compress_token_id, red.compress_tokens)
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
        red.validate_for(self.config.num_hidden_layers, self.config.num_vision_tokens)
        check_compress_support(self.config, red)
        check_twig_schedule(red, self.twig)
        return red

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
        objective: str = "lm",
        **kwargs,
    ) -> LlavaCausalLMOutput:
        """``objective="twig"`` (twig training, ``scripts/train_twig.sh``): the loss and logits of the shallow model
        (base layers 1..K, then the twig), on every token as plain LLaVA runs them; only the twig gets gradients."""
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
        if objective == "twig":
            if self.twig is None:
                raise ValueError("objective='twig' trains the twig, but this model has none (config.twig is empty)")
            loss, logits = twig_loss(self, batch)
            return LlavaCausalLMOutput(loss=loss if labels is not None else None, logits=logits)
        if objective != "lm":
            raise ValueError(f"objective must be 'lm' or 'twig', got {objective!r}")
        out = run_decoder(self.model, batch, red, self.reduction_thresholds, observe=observe,
                          count_vision=count_vision, twig=self.twig)
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
    @_ends_streamer
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
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
        image_cache: ImageCache | None = None,
        image_sizes: list[tuple[int, int]] | None = None,
        num_beams: int = 1,
        streamer: Any | None = None,
        stopping_criteria: Any | None = None,
        speculative: str | None = None,
        draft_tokens: int = 5,
        draft_threshold: float = 0.6,
        speculative_stats: Any | None = None,
        **unsupported,
    ) -> torch.LongTensor | tuple[torch.LongTensor, VisionCounts]:
        """Greedy or sampled decoding; returns only the new tokens [B, new]. Batches must be left-padded.

        With the cache, prefill prunes once (query: the last prompt token) and each layer decodes against its own
        cache. Without it, every step recomputes the whole sequence with the scoring query fixed at the last prompt
        token, which is the same computation and is what the consistency tests compare against.

        Upstream LLaVA's call form works as written: ``inputs=`` for ``input_ids``, ``image_sizes`` (accepted and
        checked against the batch; only LLaVA-1.6's anyres tiling would use it), ``num_beams=1`` (beam search is
        refused), a transformers streamer (``put`` with the prompt, then each new token ``[B]`` as it is
        sampled, ``end`` once, also when generation fails) and ``stopping_criteria`` (a ``StoppingCriteriaList``
        or callables ``(sequence [B, T + n], scores [B, V]) -> bool or [B] bools``; a stopped row, like one
        that produced EOS, gets pad tokens after it).

        A VoCo schedule (``compress_tokens > 0``) prefills in two passes (``llava.model.two_pass``): each image and
        its VoCo tokens once, every layer's cache cropped to the keys the text may see, then the text after it.
        ``image_cache`` (an ``ImageCache``) keeps the compressed images for later calls about the same image.

        ``speculative="twig"`` (a model with a twig): self-speculative decoding (``llava.model.speculative``), the
        shallow model drafting up to ``draft_tokens`` tokens (stopping after one it gives less than
        ``draft_threshold``) and this schedule verifying them; greedy output equals plain greedy output, sampling
        keeps the base's distribution. ``speculative_stats`` (a ``SpeculativeStats``) receives the acceptance rate
        and timing.
        """
        if "inputs" in unsupported:  # transformers' (and upstream's model worker's) name for the prompt ids
            if input_ids is not None:
                raise TypeError("pass the prompt as input_ids or inputs, not both")
            input_ids = unsupported.pop("inputs")
        if unsupported:
            raise TypeError(f"generate() does not support {sorted(unsupported)} (greedy or sampled decoding only)")
        if input_ids is None:
            raise TypeError("generate() needs input_ids, the prompt token ids [B, T]")
        if num_beams != 1:
            raise ValueError(f"num_beams={num_beams}: beam search is not supported here (greedy or sampled decoding "
                             "only); use num_beams=1, as every LLaVA-1.5 evaluation script does")
        _check_image_sizes(image_sizes, images)
        red = self._reduction(reduction)
        B, T = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        _check_left_padded(attention_mask)
        eos = self.config.eos_token_id if eos_token_id is None else eos_token_id
        pad = (self.config.pad_token_id if pad_token_id is None else pad_token_id) or 0
        if speculative is not None:
            if speculative != "twig":
                raise ValueError(f"speculative must be 'twig' (the model's twig drafts) or None, got {speculative!r}")
            if not use_cache or stopping_criteria is not None or image_cache is not None:
                raise ValueError("speculative='twig' decodes with the cache, without stopping_criteria or image_cache")
            from llava.model.speculative import speculative_generate

            if streamer is not None and B == 1:
                streamer.put(_prompt_for_streamer(input_ids, pad))
            tokens, counts = speculative_generate(
                self, input_ids, attention_mask, images, red, max_new_tokens, do_sample, temperature, top_p, eos, pad,
                generator, draft_tokens, draft_threshold, speculative_stats, return_vision_counts, streamer)
            return (tokens, counts) if return_vision_counts else tokens
        finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        new_tokens = []
        if not use_cache and red.kv_policy == "final":
            raise ValueError(f"schedule {red.name!r} decodes with its output-aware cache (kv_policy='final'), which "
                             "full recompute does not model; generate with use_cache=True")
        counts = None
        if use_cache and red.compress_tokens:  # VoCo: compress each image once, answer against its VoCo cache
            pre = compressed_prefill(self, input_ids, attention_mask, images, red, image_cache)
            counts, gen, logits = pre.vision_counts, pre.generation, pre.logits
        elif use_cache:
            batch = self.multimodal_batch(input_ids, attention_mask, images, None, red)
            out = run_decoder(self.model, batch, red, None, use_cache=True, count_vision=return_vision_counts,
                              twig=self.twig)
            counts = out.vision_counts
            gen = out.generation
            last = last_valid(out.state.valid)  # [B]
            logits = self.lm_head(out.hidden[torch.arange(B), last]).float()  # [B, V]
        else:
            ids, mask = input_ids, attention_mask
            query = self.prompt_query(input_ids, attention_mask, red)
            logits = self._last_logits(ids, mask, images, red, query)
        if streamer is not None:
            streamer.put(_prompt_for_streamer(input_ids, pad))
        for _ in range(max_new_tokens):
            nxt = next_token(logits, do_sample, temperature, top_p, generator)  # [B]
            nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
            new_tokens.append(nxt)
            if streamer is not None:
                streamer.put(nxt.cpu())
            if eos is not None:
                finished = finished | (nxt == eos)
            if stopping_criteria is not None:
                sequence = torch.cat([input_ids, torch.stack(new_tokens, 1)], 1)  # [B, T + n]
                finished = finished | _stopped_rows(stopping_criteria, sequence, logits, B)
            if (eos is not None or stopping_criteria is not None) and bool(finished.all()):
                break
            if len(new_tokens) == max_new_tokens:
                break  # the last token's logits would never be read: no step for them
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
            return tokens, counts  # [B, new]; the prefill's realised vision tokens per layer (VisionCounts)
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


def _prompt_for_streamer(input_ids: torch.Tensor, pad: int) -> torch.Tensor:
    """The prompt as a streamer's first ``put``: image placeholders (-200, not a token) removed for one prompt,
    replaced by the pad id in a batch (rows must keep one length)."""
    ids = input_ids.cpu()
    image = ids == IMAGE_TOKEN_INDEX
    if ids.shape[0] == 1:
        return ids[~image].unsqueeze(0)  # [1, T - images]
    return torch.where(image, torch.full_like(ids, pad), ids)  # [B, T]


def _stopped_rows(criteria: Any, sequence: torch.Tensor, scores: torch.Tensor, batch: int) -> torch.Tensor:
    """[B] bools: the rows any stopping criterion ends (a criterion may answer one bool for the whole batch)."""
    items = criteria if isinstance(criteria, (list, tuple)) else [criteria]  # StoppingCriteriaList is a list
    done = torch.zeros(batch, dtype=torch.bool, device=sequence.device)
    for criterion in items:
        result = torch.as_tensor(criterion(sequence, scores), device=sequence.device).to(torch.bool).reshape(-1)
        done = done | (result.expand(batch) if result.numel() == 1 else result)
    return done


def _check_image_sizes(image_sizes: Any, images: torch.Tensor | None) -> None:
    """Upstream passes ``image_sizes=[(w, h), ...]``, one per image; only its length can be checked here."""
    if image_sizes is None or images is None:
        return
    try:
        n = len(image_sizes)
    except TypeError:
        raise TypeError(f"image_sizes must be a list of (width, height), one per image, got {image_sizes!r}") from None
    if n != images.shape[0]:
        raise ValueError(f"image_sizes has {n} entries for {images.shape[0]} images; pass one (width, height) per image")


def _check_left_padded(mask: torch.Tensor) -> None:
    m = mask.bool()
    # Left padding: once a row has started, it has no holes and runs to the last column.
    if not bool(m[:, -1].all()) or bool((m[:, :-1] & ~m[:, 1:]).any()):
        raise ValueError("generate() needs left-padded batches (tokenizer.padding_side = 'left')")


def sampling_probs(logits: torch.Tensor, temperature: float, top_p: float | None) -> torch.Tensor:
    """[..., V] -> the distribution sampled tokens are drawn from (temperature, then the nucleus renormalised).
    Speculative sampling uses it for both the base and the draft, so it keeps exactly this distribution."""
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_p, idx = torch.sort(probs, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the most likely token
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def next_token(
    logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float | None, generator: torch.Generator | None
) -> torch.Tensor:
    if not do_sample or temperature == 0:
        return logits.argmax(-1)
    return torch.multinomial(sampling_probs(logits, temperature, top_p), 1, generator=generator).squeeze(1)


AutoConfig.register(LlavaConfig.model_type, LlavaConfig)
AutoModelForCausalLM.register(LlavaConfig, LlavaLlamaForCausalLM)

__all__ = ["LlavaCausalLMOutput", "LlavaConfig", "LlavaLlamaForCausalLM", "causal_lm_loss", "last_valid", "next_token",
           "sampling_probs"]
