"""FlashAttention-compatible vision-token scores.

The main attention kernel never returns probabilities, so the scores come from a separate small computation that
reuses the *next* layer's input norm and q / k projections: queries are only the scoring rows (a handful per
sample), keys are every current token, RoPE uses the persistent positions, and the softmax runs in fp32 over each
query's causal, valid keys. Probabilities are averaged over heads and query rows and sliced to the vision span.
"""

from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import rotate_half

from llava.model.token_state import TokenState


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x [B, H, L, hd]; cos/sin [B, L, hd]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


def score_vision_tokens(
    next_layer: torch.nn.Module,  # the LlamaDecoderLayer that will run on the pruned set
    rotary_emb: torch.nn.Module,
    state: TokenState,
    query_next_text_index: torch.Tensor,  # [B, Q] text index of the token after each query
    query_valid: torch.Tensor,  # [B, Q] bool
) -> torch.Tensor:
    """Returns [B, N_vis] scores for the current vision span (0 for rows without a valid query)."""
    attn = next_layer.self_attn
    h = state.hidden  # [B, S, D]
    B, S, _ = h.shape
    N = state.num_vision
    hd = attn.head_dim
    n_heads = attn.config.num_attention_heads
    n_kv = attn.config.num_key_value_heads

    q_idx = state.text_to_current(query_next_text_index) - 1  # [B, Q] the token before it, in the current layout
    q_ok = query_valid & (q_idx >= 0)
    q_idx = q_idx.clamp(0, S - 1)
    q_ok = q_ok & torch.gather(state.valid, 1, q_idx)

    x = next_layer.input_layernorm(h)  # [B, S, D]
    xq = torch.gather(x, 1, q_idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # [B, Q, D]
    Q = xq.shape[1]
    q = attn.q_proj(xq).view(B, Q, n_heads, hd).transpose(1, 2)  # [B, H, Q, hd]
    k = attn.k_proj(x).view(B, S, n_kv, hd).transpose(1, 2)  # [B, H_kv, S, hd]
    cos, sin = rotary_emb(x, position_ids=state.positions)  # [B, S, hd]
    q = _rope(q, torch.gather(cos, 1, q_idx.unsqueeze(-1).expand(-1, -1, hd)), torch.gather(sin, 1, q_idx.unsqueeze(-1).expand(-1, -1, hd)))
    k = _rope(k, cos, sin)
    if n_kv != n_heads:  # grouped KV heads: each key head serves n_heads / n_kv query heads
        k = k.repeat_interleave(n_heads // n_kv, dim=1)

    logits = torch.matmul(q.float(), k.float().transpose(2, 3)) * attn.scaling  # [B, H, Q, S]
    k_pos = torch.arange(S, device=h.device).view(1, 1, S)
    allowed = state.valid.unsqueeze(1) & (k_pos <= q_idx.unsqueeze(-1))  # [B, Q, S]
    allowed = allowed | ~allowed.any(-1, keepdim=True)  # keep softmax finite for padding rows (zeroed below)
    logits = logits.masked_fill(~allowed.unsqueeze(1), float("-inf"))
    probs = torch.softmax(logits, dim=-1).mean(dim=1)  # [B, Q, S] fp32, mean over heads

    vis_cols = state.vision_start.unsqueeze(1) + torch.arange(N, device=h.device).unsqueeze(0)  # [B, N]
    vis = torch.gather(probs, 2, vis_cols.unsqueeze(1).expand(-1, Q, -1))  # [B, Q, N]
    w = q_ok.to(vis.dtype).unsqueeze(-1)  # [B, Q, 1]
    return (vis * w).sum(1) / w.sum(1).clamp_min(1.0)  # [B, N] mean over valid query rows
