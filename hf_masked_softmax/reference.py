"""The library's semantics in plain PyTorch: the CPU fallback and the tests' oracle.

``masked_softmax_reference`` computes, for scores ``S [B, H, Q, K]``::

    X[b,h,i,j] = scale * S[b,h,i,j] (+ additive mask)        where kept
    Y[b,h,i,:] = softmax(X[b,h,i,kept])                        zeros elsewhere

A position is kept when the padding / boolean / additive mask keeps it and, with ``causal=True``, when
``j <= i + K - Q`` (bottom-right alignment, as with a KV cache). A row with nothing kept, or whose kept scores are all
``-inf``, is all zeros. NaN in a kept score makes the row's kept entries NaN (as torch.softmax does); masked entries
are exactly 0 regardless. The gradient ignores the incoming gradient wherever ``Y = 0`` (there it is exactly 0).
Math runs in ``compute_dtype`` (fp32 by default; fp64 for the tests' oracle).

``dropout_keep_reference`` draws the fused attention's dropout mask bit for bit (Philox-4x32-10 in integer tensor
arithmetic), so the attention references can apply the very mask the kernels drew.
"""
from __future__ import annotations

from typing import Optional

import torch

from .masks import ADD4D, MaskSpec, keep_mask, prepare_mask

_LOG2E = 1.4426950408889634


def _sink_column(sinks, x: torch.Tensor):
    """Attention sinks (``[H]``, one logit per head) as a ``[1, H, 1, 1]`` column in ``x``'s dtype, or None."""
    return None if sinks is None else sinks.to(x.dtype).reshape(1, -1, 1, 1)


def _softmax_kept(x: torch.Tensor, keep: torch.Tensor, sink: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Softmax over each row's kept entries, zeros elsewhere; ``sink`` (``[1, H, 1, 1]``): one more logit per row in
    the max and the sum, left out of the result."""
    if x.shape[-1] == 0:  # no keys: nothing to normalise (amax over an empty dim would raise)
        return x.clone()
    x = x.masked_fill(~keep, float("-inf"))
    row_max = x.amax(dim=-1, keepdim=True)
    if sink is not None:
        row_max = torch.maximum(row_max, sink)
    # An empty (or all -inf) row has max -inf; shifting by 0 instead keeps exp() at 0 rather than NaN.
    row_max = torch.where(row_max == float("-inf"), torch.zeros_like(row_max), row_max)
    e = torch.exp(x - row_max)
    denom = e.sum(dim=-1, keepdim=True)
    if sink is not None:
        denom = denom + torch.exp(sink - row_max)
    denom = torch.where(denom == 0, torch.ones_like(denom), denom)
    return (e / denom).masked_fill(~keep, 0.0)


def _masked_logits(scores, attention_mask, causal, scale, compute_dtype, window=None):
    """``scale * scores`` (+ additive mask) in ``compute_dtype`` and the boolean keep-mask, both ``[B, H, Q, K]``."""
    spec = attention_mask if isinstance(attention_mask, MaskSpec) else prepare_mask(
        attention_mask, tuple(scores.shape), scores.device
    )
    x = scores.to(compute_dtype) * scale
    keep = keep_mask(spec, tuple(scores.shape), causal=causal, device=scores.device, window=window)
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
    window: Optional[int] = None,
    sinks: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Masked softmax of ``scores [B, H, Q, K]`` in ``compute_dtype``; returns ``out_dtype`` (default: scores').
    ``window``: a sliding window, as :func:`attention_reference`'s. ``sinks``: ``[H]`` attention sinks, one logit per
    head that joins each row's softmax and is left out of the result (differentiable)."""
    x, keep = _masked_logits(scores, attention_mask, causal, scale, compute_dtype, window)
    y = _softmax_kept(x, keep, _sink_column(sinks, x)).to(out_dtype or scores.dtype)
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


def _soft_capped(s: torch.Tensor, scale: float, softcap: float):
    """``(scores, scale, tanh)`` for the raw products ``s``: with a soft-cap ``c``, the capped scores
    ``c * tanh(scale * s / c)``, a scale of 1 still to apply and the tanh (for the backward); else ``s``, ``scale``
    and None."""
    if not softcap:
        return s, scale, None
    t = torch.tanh(s * scale / softcap)
    return t * softcap, 1.0, t


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
    window: Optional[int] = None,
    softcap: Optional[float] = None,
    sinks: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Base-2 log-sum-exp ``log2(sum_kept 2^(log2(e) * x))`` of each row of the masked logits ``x`` of
    ``attention_reference``, ``[B, H, Q]`` in ``compute_dtype``: what the fused kernel saves for its backward (in fp32,
    with its rounding residual beside it); ``-inf`` for a row with nothing kept. With ``sinks``, each head's sink
    logit is one more term of every row's sum, but a row with nothing kept stays ``-inf`` (as the kernels save it)."""
    (k,) = _repeat_heads(q.shape[1], k)
    s = torch.matmul(q.to(compute_dtype), k.to(compute_dtype).transpose(-1, -2))
    s, scale, _ = _soft_capped(s, scale, softcap)
    x, keep = _masked_logits(s, attention_mask, causal, scale, compute_dtype, window)
    x = x.masked_fill(~keep, float("-inf"))
    sink = _sink_column(sinks, x)
    if sink is None:
        return torch.logsumexp(x, dim=-1) * _LOG2E
    empty = (x == float("-inf")).all(dim=-1)
    lse = torch.logsumexp(torch.cat((x, sink.expand(*x.shape[:-1], 1)), dim=-1), dim=-1) * _LOG2E
    return lse.masked_fill(empty, float("-inf"))


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
    dropout: Optional[tuple[torch.Tensor, float]] = None,
    window: Optional[int] = None,
    softcap: Optional[float] = None,
    sinks: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``softmax_masked(q kᵀ · scale) v`` for ``q [B, H, Q, D]``, ``k, v [B, Hkv, K, D]`` (GQA by repetition).

    ``prob_dtype`` (e.g. ``q.dtype`` for fp16/bf16 inputs) rounds the probabilities to that dtype before the product
    with ``v``, as HF's eager attention does and close to what the GPU kernel does (it rounds its not yet normalised
    probabilities to the inputs' dtype for the tensor cores); the scores and the accumulation stay in
    ``compute_dtype``. ``dropout``: ``(keep, keep_scale)``, a bool ``keep`` broadcastable to ``[B, H, Q, K]``: the
    probabilities are multiplied by ``keep * keep_scale`` before the product with ``v``. ``window``: query ``i``
    also keeps only keys ``j > i + K - Q - window`` (a sliding window, as :func:`hf_masked_softmax.attention`'s;
    None or 0: none). ``softcap``: the scaled scores become ``softcap * tanh(scale * q kᵀ / softcap)`` before the
    mask (None or 0: none). ``sinks``: ``[H]`` attention sinks (GPT-OSS), one logit per head in every row's softmax,
    attending to nothing (differentiable).
    """
    k, v = _repeat_heads(q.shape[1], k, v)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    s = torch.matmul(q.to(compute_dtype), k.to(compute_dtype).transpose(-1, -2))
    s, scale, _ = _soft_capped(s, scale, softcap)
    p = masked_softmax_reference(s, attention_mask, causal=causal, scale=scale, compute_dtype=compute_dtype,
                                 window=window, sinks=sinks)
    if prob_dtype is not None:
        p = p.to(prob_dtype).to(compute_dtype)
    # a row with nothing kept is zero whatever v holds, and its gradient never reaches v or the scores (the kernels
    # read that row's dO as 0): a select, whose backward zeroes even a NaN, not a product with P = 0
    empty = (p == 0).all(dim=-1, keepdim=True)
    z = _dropout_factor(dropout, compute_dtype)
    if z is not None:
        p = p * z
    return torch.where(empty, 0.0, torch.matmul(p, v.to(compute_dtype))).to(q.dtype)


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
    dropout: Optional[tuple[torch.Tensor, float]] = None,
    window: Optional[int] = None,
    softcap: Optional[float] = None,
    sinks: Optional[torch.Tensor] = None,
):
    """``(dq, dk, dv)`` of ``attention_reference`` for the output gradient ``do``, written out (a custom operator's
    implementation runs below autograd, so it cannot differentiate the reference)::

        P = softmax_masked(scale * q kᵀ),  dP = Z * (do vᵀ),  dX = P * (dP - rowsum(dP * P))
        dq = scale * dX k,  dk = scale * dXᵀ q,  dv = (P Z)ᵀ do      (dk, dv summed over each GQA group)

    with ``do`` read as 0 on rows with nothing kept (as the kernels read it; see ``attention_reference``).

    ``dropout``: ``(keep, keep_scale)`` as in ``attention_reference``; ``Z = keep * keep_scale`` (1 without).
    ``window``: as in ``attention_reference``. ``softcap`` ``c``: ``P`` of the capped scores, and ``dX`` times
    ``1 - tanh(scale * q kᵀ / c)**2`` before the products with ``k`` and ``q``. ``sinks``: ``P`` includes them in
    its normalisation (their own gradient: :func:`sink_gradient_reference`).
    """
    B, H, Q, D = q.shape
    Hkv = k.shape[1]
    ke, ve = _repeat_heads(H, k, v)
    if scale is None:
        scale = D ** -0.5
    q32, k32, v32, do32 = (t.to(compute_dtype) for t in (q, ke, ve, do))
    s, s_scale, t = _soft_capped(torch.matmul(q32, k32.transpose(-1, -2)), scale, softcap)
    p = masked_softmax_reference(s, attention_mask, causal=causal, scale=s_scale, compute_dtype=compute_dtype,
                                 window=window, sinks=sinks)
    do32 = do32.masked_fill((p == 0).all(dim=-1, keepdim=True), 0.0)  # rows with nothing kept: see attention_reference
    z = _dropout_factor(dropout, compute_dtype)
    pz = p if z is None else p * z
    dp = torch.matmul(do32, v32.transpose(-1, -2))
    if z is not None:
        dp = dp * z
    dx = p * (dp - (dp * p).sum(dim=-1, keepdim=True))
    if t is not None:
        dx = dx * (1 - t * t)
    dq = scale * torch.matmul(dx, k32)
    dk = scale * torch.matmul(dx.transpose(-1, -2), q32)
    dv = torch.matmul(pz.transpose(-1, -2), do32)
    if Hkv != H:
        dk = dk.unflatten(1, (Hkv, H // Hkv)).sum(dim=2)
        dv = dv.unflatten(1, (Hkv, H // Hkv)).sum(dim=2)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _dropout_factor(dropout, dtype):
    if dropout is None:
        return None
    keep, keep_scale = dropout
    return keep.to(dtype) * keep_scale


# Philox-4x32 constants (Salmon et al., 2011), as Triton's tl.philox uses them.
_PHILOX_ROUND = (0xD2511F53, 0xCD9E8D57)
_PHILOX_KEY = (0x9E3779B9, 0xBB67AE85)
_U32 = 0xFFFFFFFF


def _mulhilo(a: torch.Tensor, m: int):
    """High and low 32 bits of ``a * m`` for ``a`` in [0, 2**32) (int64 tensor) and a 32-bit constant ``m``, in int64
    arithmetic that cannot overflow: ``m`` is split into 16-bit halves."""
    m_hi, m_lo = m >> 16, m & 0xFFFF
    a_hi, a_lo = a * m_hi, a * m_lo  # each below 2**48
    hi = (a_hi + (a_lo >> 16)) >> 16
    lo = (((a_hi & 0xFFFF) << 16) + a_lo) & _U32
    return hi, lo


def philox4x32(seed: int, c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, rounds: int = 10):
    """Philox-4x32 with key ``seed`` (low 32 bits, high 32 bits) on counters ``c0..c3`` (int64 tensors holding
    values in [0, 2**32), broadcast together): four int64 tensors of 32-bit words, those of ``tl.philox``."""
    k0, k1 = seed & _U32, (seed >> 32) & _U32
    c0, c1, c2, c3 = torch.broadcast_tensors(c0, c1, c2, c3)
    for _ in range(rounds):
        hi0, lo0 = _mulhilo(c0, _PHILOX_ROUND[0])
        hi2, lo2 = _mulhilo(c2, _PHILOX_ROUND[1])
        c0, c1, c2, c3 = hi2 ^ c1 ^ k0, lo2, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _PHILOX_KEY[0]) & _U32, (k1 + _PHILOX_KEY[1]) & _U32
    return c0, c1, c2, c3


def dropout_keep_reference(seed: int, shape, drop_thr: int, device=None) -> torch.Tensor:
    """The fused attention's dropout mask, ``[B, H, Q, K]`` bool (True = kept), for Philox key ``seed`` and threshold
    ``drop_thr`` (:func:`hf_masked_softmax.attention.dropout_threshold`): score ``(b, h, i, j)`` takes 16-bit number
    ``j % 8`` of the Philox block at counter ``(j // 8, i, b * H + h, 0)`` (words in order, each low half first) and is
    kept iff that number is at least ``drop_thr``."""
    B, H, Q, K = shape
    groups = -(-K // 8)
    g = torch.arange(groups, dtype=torch.int64, device=device).view(1, 1, groups)
    i = torch.arange(Q, dtype=torch.int64, device=device).view(1, Q, 1)
    bh = torch.arange(B * H, dtype=torch.int64, device=device).view(B * H, 1, 1)
    words = torch.stack(philox4x32(int(seed), g, i, bh, torch.zeros_like(g)), dim=-1)  # [BH, Q, G, 4]
    halves = torch.stack((words & 0xFFFF, words >> 16), dim=-1)  # [BH, Q, G, 4, 2]
    u = halves.reshape(B * H, Q, groups * 8)[..., :K]
    return (u >= drop_thr).reshape(B, H, Q, K)
