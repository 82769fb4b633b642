"""The Transformer's pieces: batched per-example products, softmax, the attention mask and
multi-head attention.

Every reduction inside one example (over features, positions, keys) runs in one fixed order:
exactforge's fixed-mode sum, or a loop of separately rounded torch multiplies and adds (each a
correctly rounded IEEE operation, so the same bits wherever the element sits). Reductions over
the batch (parameter gradients) use the layer's batch mode."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from ... import ops
from .linear import linear


def _bmm_loop(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ops.bmm(a, b)


class _BMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return _bmm_loop(a, b)

    @staticmethod
    def backward(ctx, dc):
        a, b = ctx.saved_tensors
        da = _bmm_loop(dc, b.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        db = _bmm_loop(a.transpose(1, 2), dc) if ctx.needs_input_grad[1] else None
        return da, db


def bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched product of per-example matrices in a fixed order (attention scores, attention
    times values): no sum crosses the leading axis, so no batch mode applies."""
    return _BMM.apply(a, b)


class _Softmax(torch.autograd.Function):
    """Softmax over the last axis with exactforge's exp and fixed-order row sums."""

    @staticmethod
    def forward(ctx, s):
        shp = s.shape
        s2 = s.reshape(-1, shp[-1])
        m = s2.max(dim=1, keepdim=True).values  # exact
        e = ops.exp(s2 - m)
        p = (e / ops.rowsum(e).reshape(-1, 1)).reshape(shp)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, dp):
        (p,) = ctx.saved_tensors
        L = p.shape[-1]
        p2, dp2 = p.reshape(-1, L), dp.reshape(-1, L)
        dot = ops.rowsum(dp2 * p2).reshape(-1, 1)
        return (p2 * (dp2 - dot)).reshape(p.shape)


def softmax(s: torch.Tensor) -> torch.Tensor:
    return _Softmax.apply(s)


def attention_mask(
    attn_mask: Optional[torch.Tensor],
    key_padding_mask: Optional[torch.Tensor],
    is_causal: bool,
    B: int,
    H: int,
    L: int,
    S: int,
    dtype,
) -> Optional[torch.Tensor]:
    """One additive mask (B*H, L, S) from torch's conventions: a boolean True (or -inf) means
    "may not attend"; a float mask is added to the scores."""

    def additive(m):
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=dtype).masked_fill(m, float("-inf"))
        return m.to(dtype)

    total = None
    if attn_mask is None and is_causal:
        attn_mask = torch.ones(L, S, dtype=torch.bool).triu(1)
    if attn_mask is not None:
        a = additive(attn_mask)
        a = a.reshape(B, H, L, S) if a.dim() == 3 else a.reshape(1, 1, L, S)
        total = a
    if key_padding_mask is not None:
        k = additive(key_padding_mask).reshape(B, 1, 1, S)
        total = k if total is None else total + k
    if total is None:
        return None
    return total.expand(B, H, L, S).reshape(B * H, L, S)


def multi_head_attention(
    q_in,
    k_in,
    v_in,
    mha,
    attn_mask=None,
    key_padding_mask=None,
    is_causal=False,
    need_weights=False,
    average_attn_weights=True,
    mode: str = "exact",
    drop: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
):
    """nn.MultiheadAttention's computation (batch first) with reproducible pieces: projections
    as reproducible linears (their weight gradients sum over the batch in ``mode``), per-head
    scores and weighted values as fixed-order per-example products, softmax with exactforge's
    exp; ``drop``, where given, is applied to the attention weights before they weigh the values
    (the returned weights are the ones before dropout, as torch's)."""
    B, L, E = q_in.shape
    S = k_in.shape[1]
    H = mha.num_heads
    dh = E // H
    if mha._qkv_same_embed_dim:
        w, b = mha.in_proj_weight, mha.in_proj_bias
        if q_in is k_in and k_in is v_in:
            q, k, v = linear(q_in, w, b, mode).chunk(3, dim=-1)
        else:
            bs = (None, None, None) if b is None else (b[:E], b[E : 2 * E], b[2 * E :])
            q = linear(q_in, w[:E], bs[0], mode)
            k = linear(k_in, w[E : 2 * E], bs[1], mode)
            v = linear(v_in, w[2 * E :], bs[2], mode)
    else:
        bs = (None, None, None) if mha.in_proj_bias is None else mha.in_proj_bias.split(E)
        q = linear(q_in, mha.q_proj_weight, bs[0], mode)
        k = linear(k_in, mha.k_proj_weight, bs[1], mode)
        v = linear(v_in, mha.v_proj_weight, bs[2], mode)

    def heads(t, n):
        return t.reshape(B, n, H, dh).transpose(1, 2).reshape(B * H, n, dh)

    q, k, v = heads(q, L), heads(k, S), heads(v, S)
    scores = bmm(q, k.transpose(1, 2)) * (1.0 / float(np.sqrt(dh)))
    mask = attention_mask(attn_mask, key_padding_mask, is_causal, B, H, L, S, scores.dtype)
    if mask is not None:
        scores = scores + mask
    p = softmax(scores)
    o = bmm(p if drop is None else drop(p), v).reshape(B, H, L, dh).transpose(1, 2).reshape(B, L, E)
    out = linear(o, mha.out_proj.weight, mha.out_proj.bias, mode)
    weights = None
    if need_weights:
        pw = p.detach().reshape(B, H, L, S)
        weights = pw
        if average_attn_weights:
            acc = pw[:, 0]
            for h in range(1, H):
                acc = acc + pw[:, h]
            weights = acc / H
    return out, weights
