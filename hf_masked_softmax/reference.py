"""The library's semantics in plain PyTorch: the CPU fallback and the tests' oracle.

``masked_softmax_reference`` computes, for scores ``S [B, H, Q, K]``::

    X[b,h,i,j] = scale * S[b,h,i,j] (+ additive mask)        where kept
    Y[b,h,i,:] = softmax(X[b,h,i,kept])                        zeros elsewhere

A position is kept when the padding / boolean / additive mask keeps it and, with ``causal=True``, when
``j <= i + K - Q`` (bottom-right alignment, as with a KV cache). A row with nothing kept, or whose kept scores are all
``-inf``, is all zeros. NaN in a kept score makes the row's kept entries NaN (as torch.softmax does); masked entries
are exactly 0 regardless. The gradient ignores the incoming gradient wherever ``Y = 0`` (there it is exactly 0).
Math runs in ``compute_dtype`` (fp32 by default; fp64 for the tests' oracle).
"""
from __future__ import annotations

from typing import Optional

import torch

from .masks import ADD4D, MaskSpec, keep_mask, prepare_mask

_LOG2E = 1.4426950408889634


def _softmax_kept(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] == 0:  # no keys: nothing to normalise (amax over an empty dim would raise)
        return x.clone()
    x = x.masked_fill(~keep, float("-inf"))
    row_max = x.amax(dim=-1, keepdim=True)
    # An empty (or all -inf) row has max -inf; shifting by 0 instead keeps exp() at 0 rather than NaN.
    row_max = torch.where(row_max == float("-inf"), torch.zeros_like(row_max), row_max)
    e = torch.exp(x - row_max)
    denom = e.sum(dim=-1, keepdim=True)
    denom = torch.where(denom == 0, torch.ones_like(denom), denom)
    return (e / denom).masked_fill(~keep, 0.0)


def _masked_logits(scores, attention_mask, causal, scale, compute_dtype):
    """``scale * scores`` (+ additive mask) in ``compute_dtype`` and the boolean keep-mask, both ``[B, H, Q, K]``."""
    spec = attention_mask if isinstance(attention_mask, MaskSpec) else prepare_mask(
        attention_mask, tuple(scores.shape), scores.device
    )
    x = scores.to(compute_dtype) * scale
    keep = keep_mask(spec, tuple(scores.shape), causal=causal, device=scores.device)
    if spec.kind == ADD4D:
        x = x + torch.where(keep, spec.tensor.to(compute_dtype), torch.zeros((), dtype=compute_dtype, device=x.device))
    return x, keep


def masked_softmax_reference(
    scores: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    causal: bool = False,
    scale: float = 1.0,
    compute_dtype: torch.dtype = torch.float32,
    out_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Masked softmax of ``scores [B, H, Q, K]`` in ``compute_dtype``; returns ``out_dtype`` (default: scores')."""
    x, keep = _masked_logits(scores, attention_mask, causal, scale, compute_dtype)
    y = _softmax_kept(x, keep).to(out_dtype or scores.dtype)
    # a no-op forward whose backward zeroes the incoming gradient wherever Y = 0, as the kernels' backward does: a NaN
    # or inf upstream gradient at a dropped entry (or a -inf score) never reaches the row
    return y.masked_fill(y == 0, 0.0)


def masked_softmax_backward_reference(
    y: torch.Tensor, dy: torch.Tensor, scale: float = 1.0, compute_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Gradient of ``masked_softmax`` w.r.t. the scores from its output ``y`` and the incoming gradient ``dy``:
    ``dS = scale * Y * (dY - sum(dY * Y))`` per row, with ``dY`` ignored wherever ``Y = 0`` (as the kernel does)."""
    y32 = y.to(compute_dtype)
    dy32 = torch.where(y == 0, torch.zeros((), dtype=compute_dtype, device=y.device), dy.to(compute_dtype))
    return (scale * y32 * (dy32 - (dy32 * y32).sum(dim=-1, keepdim=True))).to(y.dtype)


def _repeat_heads(heads: int, *kv: torch.Tensor):
    """Grouped-query attention: each key/value head repeated for the ``heads // Hkv`` query heads it serves."""
    Hkv = kv[0].shape[1]
    if heads % Hkv:
        raise ValueError(f"query heads ({heads}) must be a multiple of key/value heads ({Hkv})")
    return tuple(t.repeat_interleave(heads // Hkv, dim=1) if Hkv != heads else t for t in kv)


def attention_lse_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    causal: bool = False,
    scale: float = 1.0,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Base-2 log-sum-exp ``log2(sum_kept 2^(log2(e) * x))`` of each row of the masked logits ``x`` of
    ``attention_reference``, ``[B, H, Q]`` in ``compute_dtype``: what the fused kernel saves for its backward (in fp32);
    ``-inf`` for a row with nothing kept."""
    (k,) = _repeat_heads(q.shape[1], k)
    s = torch.matmul(q.to(compute_dtype), k.to(compute_dtype).transpose(-1, -2))
    x, keep = _masked_logits(s, attention_mask, causal, scale, compute_dtype)
    return torch.logsumexp(x.masked_fill(~keep, float("-inf")), dim=-1) * _LOG2E


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    causal: bool = False,
    scale: Optional[float] = None,
    compute_dtype: torch.dtype = torch.float32,
    prob_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """``softmax_masked(q kᵀ · scale) v`` for ``q [B, H, Q, D]``, ``k, v [B, Hkv, K, D]`` (GQA by repetition).

    ``prob_dtype`` (e.g. ``q.dtype`` for fp16/bf16 inputs) rounds the probabilities to that dtype before the product
    with ``v``, as HF's eager attention does and close to what the GPU kernel does (it rounds its not yet normalised
    probabilities to the inputs' dtype for the tensor cores); the scores and the accumulation stay in
    ``compute_dtype``.
    """
    k, v = _repeat_heads(q.shape[1], k, v)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    s = torch.matmul(q.to(compute_dtype), k.to(compute_dtype).transpose(-1, -2))
    p = masked_softmax_reference(s, attention_mask, causal=causal, scale=scale, compute_dtype=compute_dtype)
    if prob_dtype is not None:
        p = p.to(prob_dtype).to(compute_dtype)
    return torch.matmul(p, v.to(compute_dtype)).to(q.dtype)


def attention_backward_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    do: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    causal: bool = False,
    scale: Optional[float] = None,
    compute_dtype: torch.dtype = torch.float32,
):
    """``(dq, dk, dv)`` of ``attention_reference`` for the output gradient ``do``, written out (a custom operator's
    implementation runs below autograd, so it cannot differentiate the reference)::

        P = softmax_masked(scale * q kᵀ),  dP = do vᵀ,  dX = P * (dP - rowsum(dP * P))
        dq = scale * dX k,  dk = scale * dXᵀ q,  dv = Pᵀ do      (dk, dv summed over each GQA group)
    """
    B, H, Q, D = q.shape
    Hkv = k.shape[1]
    ke, ve = _repeat_heads(H, k, v)
    if scale is None:
        scale = D ** -0.5
    q32, k32, v32, do32 = (t.to(compute_dtype) for t in (q, ke, ve, do))
    p = masked_softmax_reference(torch.matmul(q32, k32.transpose(-1, -2)), attention_mask, causal=causal, scale=scale,
                                 compute_dtype=compute_dtype)
    dp = torch.matmul(do32, v32.transpose(-1, -2))
    dx = p * (dp - (dp * p).sum(dim=-1, keepdim=True))
    dq = scale * torch.matmul(dx, k32)
    dk = scale * torch.matmul(dx.transpose(-1, -2), q32)
    dv = torch.matmul(p.transpose(-1, -2), do32)
    if Hkv != H:
        dk = dk.unflatten(1, (Hkv, H // Hkv)).sum(dim=2)
        dv = dv.unflatten(1, (Hkv, H // Hkv)).sum(dim=2)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
