"""LLaVA model: config, the reduction-aware decoder loop, and loading."""

from llava.model.llava_llama import LlavaCausalLMOutput, LlavaConfig, LlavaLlamaForCausalLM
from llava.model.reduction.config import PRESETS, ReductionConfig, ReductionConfigError

__all__ = [
    "PRESETS",
    "LlavaCausalLMOutput",
    "LlavaConfig",
    "LlavaLlamaForCausalLM",
    "ReductionConfig",
    "ReductionConfigError",
]
