"""Tiny random LLaVA models and batches for CPU tests (no downloads)."""

from __future__ import annotations

import torch
from transformers import CLIPVisionConfig

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model import LlavaConfig, LlavaLlamaForCausalLM, ReductionConfig


def tiny_config(
    num_layers: int = 8,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 97,
    image_size: int = 32,
    patch: int = 8,
    reduction: ReductionConfig | None = None,
    attn: str = "sdpa",
) -> LlavaConfig:
    vision = CLIPVisionConfig(
        image_size=image_size, patch_size=patch, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=2,
    )
    cfg = LlavaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
        vision_config={k: v for k, v in vision.to_dict().items() if not k.startswith("_")},
        mm_hidden_size=32, mm_projector_type="mlp2x_gelu",
        reduction=(reduction or ReductionConfig()).to_dict(),
    )
    cfg._attn_implementation = attn
    return cfg


def tiny_model(seed: int = 0, **kw) -> LlavaLlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlavaLlamaForCausalLM(tiny_config(**kw)).eval()
    return model


def random_batch(
    model: LlavaLlamaForCausalLM,
    lengths: list[int],
    image_at: list[int | None],
    left_pad: bool = False,
    with_labels: bool = True,
    seed: int = 0,
) -> dict:
    """Random ids with one <image> placeholder at `image_at[b]` (None: text-only), padded to the longest row.

    Labels supervise random answer spans after the placeholder (two spans when long enough: multi-round).
    """
    g = torch.Generator().manual_seed(seed)
    V = model.config.vocab_size
    B, T = len(lengths), max(lengths)
    ids = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    for b, (n, at) in enumerate(zip(lengths, image_at)):
        row = torch.randint(3, V, (n,), generator=g)
        row[0] = 1
        lab = torch.full((n,), IGNORE_INDEX, dtype=torch.long)
        if at is not None:
            row[at] = IMAGE_TOKEN_INDEX
        start = (at if at is not None else 0) + 2
        if start < n - 1:
            a_end = min(n, start + max(1, (n - start) // 3))
            lab[start:a_end] = row[start:a_end]
            s2 = a_end + 2
            if s2 < n:
                lab[s2:] = row[s2:]
        sl = slice(T - n, T) if left_pad else slice(0, n)
        ids[b, sl], mask[b, sl], labels[b, sl] = row, 1, lab
    size = model.config.vision_config["image_size"]
    images = torch.randn(B, 3, size, size, generator=g)
    out = {"input_ids": ids, "attention_mask": mask, "images": images}
    if with_labels:
        out["labels"] = labels
    return out
