"""Typed command-line arguments of `python -m llava.train.train` (upstream's names, so upstream scripts parse)."""

from __future__ import annotations

from dataclasses import dataclass, field

import transformers


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default="lmsys/vicuna-7b-v1.5", metadata={"help": "base LLM directory"})
    version: str = field(default="vicuna_v1", metadata={"help": "conversation template: plain (stage 1), vicuna_v1/v1"})
    freeze_backbone: bool = False
    tune_mm_mlp_adapter: bool = field(default=False, metadata={"help": "stage 1: train only the projector"})
    vision_tower: str | None = field(default=None, metadata={"help": "local CLIP vision directory"})
    mm_vision_select_layer: int = -2
    pretrain_mm_mlp_adapter: str | None = field(default=None, metadata={"help": "stage-1 mm_projector.bin"})
    mm_projector_type: str = "mlp2x_gelu"
    mm_use_im_start_end: bool = False
    mm_use_im_patch_token: bool = False
    mm_patch_merge_type: str = "flat"
    mm_vision_select_feature: str = "patch"
    reduction: str = field(default="off", metadata={"help": "token-reduction preset: off, tok64, tok48, tok80, ..."})
    reduction_overrides: str = field(default="", metadata={"help": "space-separated key=value schedule overrides"})
    attn_implementation: str | None = field(default=None, metadata={"help": "sdpa | eager | flash_attention_2"})
    train_twig: bool = field(default=False, metadata={"help": "TwigVLM: train only a twig on the frozen model "
                                                              "(scripts/train_twig.sh)"})
    twig_after_layer: int = field(default=2, metadata={"help": "the base layer K the twig reads (TwigVLM: 2)"})
    twig_layers: int = field(default=3, metadata={"help": "the twig's depth T (TwigVLM: 3)"})
    parallel_vision: str = field(
        default="auto",
        metadata={"help": "auto | on | off: run the vision tower beside the text-only shallow layers (late injection; "
                          "a side CUDA stream on GPU; never under ZeRO-3)"},
    )


@dataclass
class DataArguments:
    data_path: str | None = field(default=None, metadata={"help": "LLaVA-format JSON list"})
    lazy_preprocess: bool = field(default=True, metadata={"help": "accepted for upstream scripts; always lazy"})
    is_multimodal: bool = False
    image_folder: str | None = None
    image_aspect_ratio: str = "square"
    on_bad_sample: str = field(default="raise", metadata={"help": "raise | skip (skips are counted and reported)"})


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    cache_dir: str | None = None
    optim: str = "adamw_torch"
    remove_unused_columns: bool = False
    freeze_mm_mlp_adapter: bool = False
    mpt_attn_impl: str | None = "triton"
    model_max_length: int = field(default=512, metadata={"help": "max tokens after the image expands"})
    double_quant: bool = True
    quant_type: str = "nf4"
    bits: int = field(default=16, metadata={"help": "16 only; 4/8-bit training is not supported"})
    lora_enable: bool = False
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_weight_path: str = ""
    lora_bias: str = "none"
    mm_projector_lr: float | None = None
    group_by_modality_length: bool = False
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "start afresh in an output_dir that holds checkpoints or a saved model (deletes the "
                          "checkpoints); without it such a run is refused unless it resumes"},
    )
    warmup_ratio: float | None = field(
        default=None, metadata={"help": "upstream's flag; transformers 5 takes the ratio through warmup_steps"}
    )
    evaluation_strategy: str | None = field(
        default=None, metadata={"help": "upstream's name (transformers < 4.46) for --eval_strategy"}
    )

    def __post_init__(self) -> None:
        # Upstream's scripts pass --evaluation_strategy "no"; transformers 5 only knows eval_strategy.
        if self.evaluation_strategy is not None:
            if str(getattr(self.eval_strategy, "value", self.eval_strategy)) not in ("no", self.evaluation_strategy):
                raise ValueError(f"--evaluation_strategy {self.evaluation_strategy} and --eval_strategy "
                                 f"{self.eval_strategy} disagree; pass one of them")
            self.eval_strategy = self.evaluation_strategy
        super().__post_init__()


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainingArguments)


def build_parser() -> transformers.HfArgumentParser:
    return transformers.HfArgumentParser(ARGUMENT_CLASSES)
