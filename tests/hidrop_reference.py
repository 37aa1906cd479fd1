"""A slow, obviously correct HiDrop forward used only by tests.

It runs the full-length, upstream-spliced sequence through every layer and expresses injection, pruning and exit
as attention masks plus held hidden states: a vision token that is not present at a layer is hidden from every
query and keeps its previous hidden state (so before injection it holds the projector output). Per-sample Python
loops are fine here; clarity is the point.
"""

from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX


def upstream_splice(model, input_ids, attention_mask, images, vision=None):
    """Upstream LLaVA's splice (right padding): returns embeds [B,F,D], valid, is_vision, vision index, positions."""
    if vision is None:
        vision = model.encode_images(images, input_ids.shape[0])  # [B, N, D]
    N = vision.shape[1]
    rows = []
    for b in range(input_ids.shape[0]):
        ids = input_ids[b][attention_mask[b].bool()]
        parts, vis_idx = [], []
        ph = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
        if ph:
            p = ph[0]
            parts = [model.model.embed_tokens(ids[:p]), vision[b], model.model.embed_tokens(ids[p + 1 :])]
            vis_idx = [-1] * p + list(range(N)) + [-1] * (len(ids) - p - 1)
        else:
            parts = [model.model.embed_tokens(ids)]
            vis_idx = [-1] * len(ids)
        rows.append((torch.cat(parts), torch.tensor(vis_idx)))
    F_len = max(r[0].shape[0] for r in rows)
    D = vision.shape[-1]
    B = len(rows)
    emb = torch.zeros(B, F_len, D)
    valid = torch.zeros(B, F_len, dtype=torch.bool)
    vis = torch.full((B, F_len), -1, dtype=torch.long)
    for b, (e, v) in enumerate(rows):
        emb[b, : e.shape[0]] = e
        valid[b, : e.shape[0]] = True
        vis[b, : e.shape[0]] = v
    positions = torch.arange(F_len).unsqueeze(0).expand(B, -1)
    return emb, valid, vis, positions


def upstream_labels(input_ids, attention_mask, labels, num_vision):
    out = []
    for b in range(input_ids.shape[0]):
        m = attention_mask[b].bool()
        ids, lab = input_ids[b][m], labels[b][m]
        ph = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
        if ph:
            p = ph[0]
            lab = torch.cat([lab[:p], torch.full((num_vision,), IGNORE_INDEX), lab[p + 1 :]])
        out.append(lab)
    F_len = max(len(x) for x in out)
    res = torch.full((len(out), F_len), IGNORE_INDEX)
    for b, x in enumerate(out):
        res[b, : len(x)] = x
    return res


def _mask(active: torch.Tensor, dtype) -> torch.Tensor:
    B, F_len = active.shape
    causal = torch.tril(torch.ones(F_len, F_len, dtype=torch.bool))
    allowed = causal.unsqueeze(0) & active.unsqueeze(1)
    allowed = allowed | ~allowed.any(-1, keepdim=True)
    return torch.zeros(B, 1, F_len, F_len, dtype=dtype).masked_fill(~allowed.unsqueeze(1), torch.finfo(dtype).min)


def reference_scores(layer, rotary, h, positions, active, vis, queries_before, current_vis, weight="none"):
    """Eager attention probabilities of layer `layer` from each query row to the current vision tokens
    (with weight="l2", each key's probability times the L2 norm of its value vector in that head)."""
    attn = layer.self_attn
    B, F_len, _ = h.shape
    x = layer.input_layernorm(h)
    hd = attn.head_dim
    q = attn.q_proj(x).view(B, F_len, -1, hd).transpose(1, 2)
    k = attn.k_proj(x).view(B, F_len, -1, hd).transpose(1, 2)
    v = attn.v_proj(x).view(B, F_len, -1, hd).transpose(1, 2)
    cos, sin = rotary(x, positions)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    logits = (q.float() @ k.float().transpose(2, 3)) * attn.scaling + _mask(active, torch.float32)
    probs = torch.softmax(logits, -1)  # [B, H, F, F]
    if weight == "l2":
        probs = probs * v.float().norm(dim=-1).unsqueeze(2)  # key j's column times ||v_j|| in each head
    probs = probs.mean(1)  # [B, F, F]
    scores = []
    for b in range(B):
        rows = [j for j in queries_before[b]]
        cols = current_vis[b]
        if rows:
            scores.append(probs[b][rows][:, cols].mean(0))
        else:
            scores.append(torch.zeros(len(cols)))
    return scores


def reference_twig_input(twig, rotary, h, positions, active):
    """The input of the twig's last layer: the twig's other layers on ``h`` (layer K's output), with the tokens
    present at layer K (masked as the base's layers mask them)."""
    mask = _mask(active, h.dtype)
    for layer in twig.layers[:-1]:
        h = layer(h, attention_mask=mask, position_ids=positions, position_embeddings=rotary(h, positions))
    return h


def reference_positions(reduction, layer, num_layers, valid, vis, active, full_positions, group_offset):
    """RoPE positions at ``layer`` (1-based) under the schedule's position scheme, per token of the full sequence."""
    if reduction.position_scheme == "group":
        text = valid & (vis < 0)
        return torch.where(vis >= 0, group_offset + vis, (text.long().cumsum(1) - 1).clamp(min=0))
    if reduction.position_scheme == "compacted" and layer >= reduction.inject_layer:
        return (active.long().cumsum(1) - 1).clamp(min=0)  # the active tokens numbered 0..n-1
    return full_positions


def reference_probs(layer, rotary, h, positions, active):
    """[B, H, F, F] eager attention probabilities of ``layer`` on ``h`` (causal, active keys only)."""
    attn = layer.self_attn
    B, F_len, _ = h.shape
    x = layer.input_layernorm(h)
    hd = attn.head_dim
    q = attn.q_proj(x).view(B, F_len, -1, hd).transpose(1, 2)
    k = attn.k_proj(x).view(B, F_len, -1, hd).transpose(1, 2)
    cos, sin = rotary(x, positions)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    logits = (q.float() @ k.float().transpose(2, 3)) * attn.scaling + _mask(active, torch.float32)
    return torch.softmax(logits, -1)


def reference_dual_filter(probs_b, rows, cols, key_cols, global_thr, individual_thr):
    """MustDrop's rule for one sample: the columns (full-sequence indices) of ``cols`` it keeps, and the margin of
    each decision (how far the deciding quantities are from their thresholds, for tie-tolerant comparisons)."""
    a = probs_b.mean(0)[rows][:, cols]  # [Q, N] mean over heads
    summed = a.sum(0)
    total = summed.sum()
    peak = a.max(0).values if rows else torch.full((len(cols),), float("-inf"))
    kept, margins = [], []
    for j, col in enumerate(cols):
        drop = bool(summed[j] < total * global_thr) and bool(peak[j] < individual_thr) and col not in key_cols
        if not drop:
            kept.append(col)
        margins.append(min(abs(float(summed[j] - total * global_thr)), abs(float(peak[j] - individual_thr))))
    return kept, margins


def reference_queries(reduction, full_labels, active, valid, vis, b):
    """Full-sequence indices of the scoring query rows of sample ``b`` at a prune layer."""
    F_len = active.shape[1]
    act = active[b].nonzero().flatten().tolist()
    if reduction.score_query == "all_text":
        vision_cols = (vis[b] >= 0).nonzero().flatten().tolist()
        after = vision_cols[-1] if vision_cols else F_len
        return [j for j in act if vis[b, j] < 0 and j > after]
    if full_labels is None:
        return [act[-1]]
    starts = [t for t in range(F_len) if full_labels[b, t] != IGNORE_INDEX and (t == 0 or full_labels[b, t - 1] == IGNORE_INDEX)]
    rows = [max(a for a in act if a < t) for t in starts if any(a < t for a in act)]
    return rows[:1] if reduction.score_query == "last_1round" else rows


def initial_slots(vis, vision_valid, N):
    """Per row, the vision id of each slot of the injected span (None for slots the vision stage left empty)."""
    return [[j if vision_valid is None or bool(vision_valid[b, j]) else None for j in range(N)]
            if (vis[b] >= 0).any() else [None] * N for b in range(vis.shape[0])]


def apply_keep(slots, keep):
    """The slots after a stage: ``keep`` is [B, k] slot indices, or (indices, validity) for thresholded stages."""
    keep, ok = keep if isinstance(keep, tuple) else (keep, None)
    return [[row[int(r)] if (ok is None or bool(ok[b, j])) else None for j, r in enumerate(keep[b])]
            for b, row in enumerate(slots)]


def reference_forward(model, batch, reduction, kept_per_stage):
    """Text logits keyed by (row, k) for the row's k-th text token, and per-stage reference scores, given the fast
    path's kept indices. (Keys are ordinals, not positions: positions depend on the position scheme.)"""
    lm = model.model
    L = len(lm.layers)
    input_ids, attention_mask, images = batch["input_ids"], batch["attention_mask"], batch["images"]
    labels = batch.get("labels")
    vision, vision_valid, vision_key = model.encode_vision(images, input_ids.shape[0], reduction)
    h, valid, vis, full_positions = upstream_splice(model, input_ids, attention_mask, images, vision)
    N = model.config.num_vision_tokens
    full_labels = upstream_labels(input_ids, attention_mask, labels, N) if labels is not None else None
    exit_layer = reduction.resolved_exit(L)
    B, F_len, _ = h.shape
    # the vision id each slot of the current span holds (None: a merged-away or filler slot), and the present ids
    slots = initial_slots(vis, vision_valid, N)
    current = [[v for v in row if v is not None] for row in slots]
    keys = [set() if vision_key is None else {j for j in range(N) if bool(vision_key[b, j])} for b in range(B)]
    stage = 0
    ref_scores = []
    group_offset = model.config.max_position_embeddings
    for i, layer in enumerate(lm.layers, start=1):
        window = reduction.inject_layer <= i < exit_layer
        active = valid.clone()
        for b in range(B):
            for j in range(F_len):
                if vis[b, j] >= 0:
                    active[b, j] = window and int(vis[b, j]) in current[b]
        positions = reference_positions(reduction, i, L, valid, vis, active, full_positions, group_offset)
        cos_sin = lm.rotary_emb(h, positions)
        h_in = h
        out = layer(h, attention_mask=_mask(active, h.dtype), position_ids=positions, position_embeddings=cos_sin)
        h = torch.where(active.unsqueeze(-1), out, h)
        if stage < len(reduction.prune_layers) and reduction.prune_layers[stage] == i:
            qs = [reference_queries(reduction, full_labels, active, valid, vis, b) for b in range(B)]
            cur_cols = []
            for b in range(B):
                cols = [j for j in range(F_len) if vis[b, j] >= 0 and int(vis[b, j]) in current[b]]
                cur_cols.append(cols if cols else [0] * 0)
            # next: layer i + 1 reads layer i's output; same: layer i's own attention on its input
            scorer, scored = (lm.layers[i], h) if reduction.score_layer == "next" else (layer, h_in)
            if reduction.score_layer == "twig":  # TwigVLM: the twig's last layer on its input, the twig on layer i's output
                scorer, scored = model.twig.layers[-1], reference_twig_input(model.twig, lm.rotary_emb, h, positions, active)
            keep = kept_per_stage[stage]
            if reduction.selection == "dual_attention":
                probs = reference_probs(scorer, lm.rotary_emb, scored, positions, active)
                decisions = []
                for b in range(B):
                    key_cols = [c for c in cur_cols[b] if int(vis[b, c]) in keys[b]]
                    kept_cols, margins = reference_dual_filter(probs[b], qs[b], cur_cols[b], key_cols,
                                                               reduction.global_thr, reduction.individual_thr)
                    decisions.append(([int(vis[b, c]) for c in kept_cols], margins))
                ref_scores.append(decisions)
            else:
                ref_scores.append(reference_scores(scorer, lm.rotary_emb, scored, positions, active, vis, qs,
                                                   cur_cols, reduction.score_weight))
            slots = apply_keep(slots, keep)
            current = [[v for v in row if v is not None] for row in slots]
            stage += 1
    logits = model.lm_head(lm.norm(h)).float()
    text = {}
    for b in range(B):
        cols = [j for j in range(F_len) if valid[b, j] and vis[b, j] < 0]
        for k, j in enumerate(cols):
            text[(b, k)] = logits[b, j]
    return text, ref_scores


def reference_decode_logits(model, batch, reduction, kept_per_stage, generated):
    """Full recompute under the schedule's decoding cache, the slow way: next-token logits [B, n + 1, V] for the
    last prompt token and after each of the ``generated`` [B, n] tokens.

    Prompt tokens are computed as in prefill (the fast path's kept sets replayed). A generated token at layer i
    attends to the prompt tokens layer i's cache keeps (its stage's set; with kv_policy="final", from the first to
    the last prune layer, only the vision tokens that survive every stage) and to the generated tokens up to
    itself. Its position at layer i is that cache's count + k with compacted positions (from the injection layer
    on), the prompt's full length + k with persistent ones, the text count + k with group ones.
    """
    lm = model.model
    L = len(lm.layers)
    input_ids, attention_mask, images = batch["input_ids"], batch["attention_mask"], batch["images"]
    vision, vision_valid, _ = model.encode_vision(images, input_ids.shape[0], reduction)
    h_p, valid_p, vis_p, full_p = upstream_splice(model, input_ids, attention_mask, images, vision)
    B, Fp, D = h_p.shape
    N = model.config.num_vision_tokens
    n_gen = generated.shape[1]
    lengths = valid_p.sum(1).tolist()
    F_len = max(lengths) + n_gen
    h = torch.zeros(B, F_len, D)
    valid = torch.zeros(B, F_len, dtype=torch.bool)  # prompt tokens
    vis = torch.full((B, F_len), -1, dtype=torch.long)
    full = torch.zeros(B, F_len, dtype=torch.long)
    is_gen = torch.zeros(B, F_len, dtype=torch.bool)
    gen_k = torch.zeros(B, F_len, dtype=torch.long)
    gen_emb = lm.embed_tokens(generated)
    for b, n in enumerate(lengths):
        h[b, :n], valid[b, :n], vis[b, :n], full[b, :n] = h_p[b, :n], True, vis_p[b, :n], full_p[b, :n]
        h[b, n:n + n_gen] = gen_emb[b]
        is_gen[b, n:n + n_gen] = True
        gen_k[b, n:n + n_gen] = torch.arange(n_gen)
    exit_layer = reduction.resolved_exit(L)
    # the vision ids present at each layer, replaying the kept sets
    slots = initial_slots(vis, vision_valid, N)
    per_layer, stage = [], 0
    for i in range(1, L + 1):
        per_layer.append([{v for v in row if v is not None} for row in slots])
        if stage < len(reduction.prune_layers) and reduction.prune_layers[stage] == i:
            slots = apply_keep(slots, kept_per_stage[stage])
            stage += 1
    final = [{v for v in row if v is not None} for row in slots]
    first, last = (reduction.prune_layers[0], reduction.prune_layers[-1]) if reduction.prune_layers else (0, -1)
    group_offset = model.config.max_position_embeddings
    text = valid & (vis < 0)
    for i, layer in enumerate(lm.layers, start=1):
        window = reduction.inject_layer <= i < exit_layer
        active = valid.clone()
        cache = valid.clone()
        for b in range(B):
            for j in range(F_len):
                if vis[b, j] >= 0:
                    v = int(vis[b, j])
                    active[b, j] = window and v in per_layer[i - 1][b]
                    in_cache = v in final[b] if reduction.kv_policy == "final" and first <= i <= last else True
                    cache[b, j] = bool(active[b, j]) and in_cache
        positions = reference_positions(reduction, i, L, valid, vis, active, full, group_offset).clone()
        if reduction.position_scheme == "group":
            base = text.sum(1)
        elif reduction.position_scheme == "compacted" and i >= reduction.inject_layer:
            base = cache.sum(1)
        else:
            base = torch.tensor([int(full[b, :lengths[b]].max()) + 1 for b in range(B)])
        positions = torch.where(is_gen, base.unsqueeze(1) + gen_k, positions)
        causal = torch.tril(torch.ones(F_len, F_len, dtype=torch.bool)).unsqueeze(0)
        prompt_rows = causal & active.unsqueeze(1)
        gen_rows = (cache.unsqueeze(1) | (is_gen.unsqueeze(1) & causal))
        allowed = torch.where(is_gen.unsqueeze(2), gen_rows, prompt_rows)
        allowed = allowed | ~allowed.any(-1, keepdim=True)
        mask = torch.zeros(B, 1, F_len, F_len).masked_fill(~allowed.unsqueeze(1), torch.finfo(torch.float32).min)
        out = layer(h, attention_mask=mask, position_ids=positions, position_embeddings=lm.rotary_emb(h, positions))
        h = torch.where((active | is_gen).unsqueeze(-1), out, h)
    logits = model.lm_head(lm.norm(h)).float()
    rows = []
    for b, n in enumerate(lengths):
        rows.append(torch.cat([logits[b, n - 1 : n], logits[b, n : n + n_gen]]))
    return torch.stack(rows)
