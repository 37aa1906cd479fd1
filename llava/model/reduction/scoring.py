"""FlashAttention-compatible vision-token scores.

The main attention kernel never returns probabilities, so the scores come from a separate small computation that
reuses a layer's input norm and q / k (and, with L2 weighting, v) projections: queries are only the scoring rows,
keys are every current token, RoPE uses the token state's positions, and the softmax runs in fp32 over each
query's causal, valid keys. Probabilities are averaged over heads and query rows and sliced to the vision span.

Which layer: HiDrop scores the cut after layer l with layer l + 1's projections on layer l's output (the
attention the pruned set is about to receive, ``score_layer="next"``); FastV and PDrop score with layer l's own
attention on its input (``"same"``). The caller passes the layer and the hidden states accordingly.

L2 weighting (``weight="l2"``): each key's probability is multiplied by the L2 norm of its value vector in the
same head before the head mean, so a key counts by what it would contribute to the attention output (the
norm-based reading of attention, ||alpha * v||), not by its probability alone. The paper says only "L2-norm
weighting"; docs/HiDrop.md explains this reading.
"""

from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import rotate_half

from llava.model.token_state import TokenState


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x [B, H, L, hd]; cos/sin [B, L, hd]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


def head_attention_to_vision(
    layer: torch.nn.Module,
    rotary_emb: torch.nn.Module,
    state: TokenState,
    query_next_text_index: torch.Tensor,  # [B, Q]
    query_valid: torch.Tensor,  # [B, Q] bool
    hidden: torch.Tensor | None = None,  # [B, S, D] the layer's input; default state.hidden
    weight: str = "none",
) -> torch.Tensor:
    """[B, H, N_vis]: the attention each current vision token receives in each head, averaged over the valid query
    rows (0 for rows without one). The analysis tools read the per-head vectors; pruning averages the heads."""
    vis, q_ok = _query_attention(layer, rotary_emb, state, query_next_text_index, query_valid, hidden, weight)
    w = q_ok.to(vis.dtype).view(q_ok.shape[0], 1, q_ok.shape[1], 1)
    return (vis * w).sum(2) / w.sum(2).clamp_min(1.0)  # [B, H, N] mean over valid query rows


def query_vision_attention(
    layer: torch.nn.Module,
    rotary_emb: torch.nn.Module,
    state: TokenState,
    query_next_text_index: torch.Tensor,  # [B, Q]
    query_valid: torch.Tensor,  # [B, Q] bool
    hidden: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, Q, N_vis] attention of each query row to each current vision token, mean over heads; [B, Q] which
    query rows are real). MustDrop's dual-attention filter needs the rows, not their mean."""
    vis, q_ok = _query_attention(layer, rotary_emb, state, query_next_text_index, query_valid, hidden, "none")
    return vis.mean(dim=1), q_ok


def score_vision_tokens(
    layer: torch.nn.Module,  # the LlamaDecoderLayer whose projections score (see the module doc)
    rotary_emb: torch.nn.Module,
    state: TokenState,
    query_next_text_index: torch.Tensor,  # [B, Q] text index of the token after each query
    query_valid: torch.Tensor,  # [B, Q] bool
    hidden: torch.Tensor | None = None,  # [B, S, D] the layer's input; default state.hidden
    weight: str = "none",
) -> torch.Tensor:
    """Returns [B, N_vis] scores for the current vision span (0 for rows without a valid query)."""
    heads = head_attention_to_vision(layer, rotary_emb, state, query_next_text_index, query_valid, hidden, weight)
    return heads.mean(dim=1)  # [B, N] mean over heads


def _query_attention(
    layer: torch.nn.Module,
    rotary_emb: torch.nn.Module,
    state: TokenState,
    query_next_text_index: torch.Tensor,
    query_valid: torch.Tensor,
    hidden: torch.Tensor | None,
    weight: str,
) -> tuple[torch.Tensor, torch.Tensor]:  # ([B, H, Q, N_vis] probabilities, [B, Q] real query rows)
    attn = layer.self_attn
    h = state.hidden if hidden is None else hidden  # [B, S, D]
    B, S, _ = h.shape
    N = state.num_vision
    hd = attn.head_dim
    n_heads = attn.config.num_attention_heads
    n_kv = attn.config.num_key_value_heads

    q_idx = state.text_to_current(query_next_text_index) - 1  # [B, Q] the token before it, in the current layout
    q_ok = query_valid & (q_idx >= 0)
    q_idx = q_idx.clamp(0, S - 1)
    q_ok = q_ok & torch.gather(state.valid, 1, q_idx)

    x = layer.input_layernorm(h)  # [B, S, D]
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
    probs = torch.softmax(logits, dim=-1)  # [B, H, Q, S] fp32
    if weight == "l2":
        v_norm = attn.v_proj(x).view(B, S, n_kv, hd).float().norm(dim=-1).transpose(1, 2)  # [B, H_kv, S]
        if n_kv != n_heads:
            v_norm = v_norm.repeat_interleave(n_heads // n_kv, dim=1)
        probs = probs * v_norm.unsqueeze(2)  # [B, H, Q, S]
    vis_cols = state.vision_start.unsqueeze(1) + torch.arange(N, device=h.device).unsqueeze(0)  # [B, N]
    index = vis_cols.view(B, 1, 1, N).expand(-1, n_heads, Q, -1)
    return torch.gather(probs, 3, index), q_ok  # [B, H, Q, N], [B, Q]
