"""Fused (flash-style) attention with Hugging Face masks: scores are never written to memory.

For ``q [B, H, Q, D]`` and ``k, v [B, Hkv, K, D]`` (``H % Hkv == 0``; query head ``h`` reads key/value head
``h // (H // Hkv)``)::

    S[i, j] = scale * q[i] . k[j]   (+ additive mask)       for kept (i, j)
    O[i, :] = sum_j softmax_kept(S[i, :])[j] * v[j, :]       (zeros for a row with nothing kept)

Masks and causality are exactly those of :mod:`hf_masked_softmax.reference` (causal is bottom-right: query ``i``
sees key ``j`` iff ``j <= i + K - Q``).

The kernels also take values of a head dim of their own, ``v [B, Hkv, K, Dv]`` (``HEAD_DV`` / ``BLOCK_DV`` beside
``HEAD_D`` / ``BLOCK_D``): multi-head latent attention (DeepSeek-V2 / V3) has 192-wide queries and keys and 128-wide
values. Outputs, ``dO`` and ``dv`` are then ``Dv`` wide; ``attention()`` keeps one head dim (DESIGN.md), and the HF
backend reaches this through ``ops.attention(..., _any_value_dim=True)``.

The forward kernel runs a head dim that is the sum of two powers of two (each 16 or more) as those two tiles instead
of one padded to the next power of two (``_split_d``: 80 as 64 + 16, 96 as 64 + 32, 192 as 128 + 64; ``D_TAIL`` /
``DV_TAIL`` the second tiles' widths, 0 for none): ``q k^T`` is two ``tl.dot`` calls (the second accumulating onto
the first), and the output two accumulators. The backward kernels keep one padded tile: two tiles there were no
faster on an H100 (NOTES.md, forty-third session).

How the forward kernel works: one program per (query block, batch x head) walks the key blocks with an online
softmax in fp32 (running max ``m``, running sum ``l``, base-2 exponentials) and keeps ``O`` in registers. What it
walks depends on the mask:

* no mask / 2D padding mask: a tiny kernel first turns the ``[B, K]`` mask into one key range ``[start, end)`` per
  sequence plus a "has holes" flag (left or right padding gives a contiguous range; no host sync is needed). Key
  blocks outside the range, and past the causal diagonal, are never visited; a query block with nothing to see
  writes zeros straight away. Only the blocks that straddle the range edges or the diagonal evaluate a mask;
  interior blocks run unmasked, in the same loop as the trailing edge and diagonal blocks (one software pipeline).
  A sequence whose mask has holes (rare) instead reads its mask row block by block.
* 4D bool / additive masks: a small kernel first reduces the mask to key bounds, the first kept key and the last
  kept key + 1 per sequence (where the mask differs between sequences), per head (likewise) and per 16 query rows
  (``masks.mask_bounds``; cached per mask object in eager calls, as the ranges are). A query block visits only the
  key blocks inside the union of its rows' bounds, so a static cache's unfilled keys, the future of a causal 4D mask
  and the documents left of a block-diagonal one are never read. Every block visited loads its
  ``[BLOCK_M, BLOCK_N]`` mask tile through the mask's strides, so broadcast (stride-0) masks cost no memory. The
  backward's dq kernel visits the same key blocks, and the dk / dv kernel, per key block, only the query blocks
  between the first and the last query that keep one of its keys (the bounds' second part).
* packed sequences (``segments``, ``[B, L]`` ids, ``Q == K``): each token's run ``[first, end)`` (int32 ``[2, B, L]``,
  one small kernel, ``masks.segment_bounds``) takes the 4D mask's place (mask kind 4: a block's keep test compares
  the key index with its rows' runs, no mask tile is read), and the runs' extent per 16 rows takes the bounds' (the
  same layout, written by the same kernel), so the blocks of other runs are skipped as above.

A positive finite scale is applied inside the exponent, ``exp2(s * scale * log2(e) - m)`` as one FMA per score
(``FOLD``; the row max is scaled once), in the forward and both backward kernels; not with an additive mask,
which adds to already scaled scores.

Soft-capping (``softcap = c``, Gemma 2): ``S[i, j] = c * tanh(scale * q[i] . k[j] / c)`` before the mask (``SOFTCAP``;
never ``FOLD``): the product times ``scale / c`` is the tanh's argument, and the tanh times ``c * log2(e)`` the score
in base-2 units. The backward recomputes the tanh and multiplies ``dS`` by ``1 - tanh**2`` before its products with
``k`` and ``q``.

Attention sinks (``sinks``, GPT-OSS): one logit per query head that each row's softmax also counts, as a key with a
zero value (``SINK``). The forward adds it to the running max and sum after the key blocks (the split combine adds it
instead where the keys are split), so the saved log-sum-exp includes it and the backward kernels, which recompute the
probabilities from it, need nothing more; the sinks' own gradient, ``-sum_rows P_sink * delta``, is a few PyTorch
operations on ``out``, ``dO`` and ``lse`` (:func:`sink_gradient`). A row with nothing kept keeps ``lse = -inf``.

The forward saves each row's ``lse = m + log2(l)`` (FlashAttention-2's log-sum-exp in base 2) and, in a second
plane, its rounding residual ``(m + log2(l)) - lse`` (exact, by TwoSum): ``[2, B, H, Q]`` fp32, ``(-inf, 0)`` for a row
with nothing kept; calls that autograd does not record skip it (``STORE_LSE``). The backward recomputes the
probabilities as ``exp2(s - lse)``, and with an additive mask as ``exp2((s - lse) - residual)``: kept mask values of
-1e9 or less make ``m`` so large that the rounded ``lse`` loses ``log2(l)`` altogether, and ``exp2(s - lse)`` gave
every kept key a probability of 1 (gradients K times too large); ``s - lse`` is exact there. Without an additive
mask the backward reads ``lse`` alone, as FlashAttention-2 does: the recomputed probabilities carry its rounding, a
relative error of up to ``|lse| * 2**-24 * ln(2)`` with ``lse`` in log2 units (6e-6 at logits of 100, 0.6% at 1e5,
tens of percent at 1e7: ``dv`` 3x too large with three tied keys at 1e9), where the forward is exact. Subtracting the
residual there too made the backward 8% slower on GPT-2's shape and +3.7% / -1.1% on BERT's in two rounds (H200,
2026-12-03), for logits no attention layer produces. The split merge of the decode path weights its partials by
``exp2((lse_s - max) + residual_s)``. A row with nothing kept has an all-zero output whatever its ``dO``: ``delta``
skips the zeros of ``O`` and the backward reads that row's ``dO`` as 0, so a NaN or inf there stays out of the other
rows' gradients. One kernel per key block accumulates ``dk, dv`` over all query heads of its GQA group, another per
query block accumulates ``dq``. ``delta = rowsum(dO * O)`` comes first.

Dropout (``dropout_p``, training): the forward sums every probability into ``l`` but multiplies only the kept ones
into ``O`` (``O = (P * Z) v`` with ``Z`` = kept / (1 - p), else 0), and saves ``lse`` (and residual) of the
probabilities before dropout. The mask is a function of the score's indices: one Philox-4x32-10 call, keyed by a
per-call seed, per 8 neighbouring keys of a row gives eight 16-bit numbers (``_dropout_keep``), so both backward
kernels redraw it
whatever their tiles: ``dv = (P Z)^T dO``, ``dP = Z (dO v^T)``; ``delta = rowsum(dO * O)`` holds as before.

On an H100 / H200, inference calls at head dim 64 in fp16 / bf16 without dropout or a 4D mask (BERT's encoder
layers, GPT-2's and Llama-family prefill, at four or more 128-query tiles per multiprocessor) run a Gluon kernel
instead of the forward kernel below: :mod:`hf_masked_softmax._hopper` says exactly when; same numerics, output
bit-identical to this kernel's in every case timed on an H200.

Decode (``Q <= 16``): too few query blocks to fill the GPU, so the key range of each sequence is split across
``num_splits`` programs, each writing a partial ``O``, ``lse`` and residual in fp32, merged by a small combine kernel.

Layout: the result is ``[B, H, Q, D]`` whose memory is ``[B, Q, H, D]`` (as SDPA's flash backend returns it), so
``out.transpose(1, 2)`` — the layout Hugging Face wants — is already contiguous. :func:`attention_bqhd` returns that
view directly.

Limits: head dim 1..256 (padded to a power of two >= 16 inside the kernel), fp16 / bf16 / fp32 (fp32 dots run in
full ieee precision), any strides, int64 offsets. Scores enter the exponent in base-2 units: ``|scale * q.k|`` or a
kept additive mask value above FLT_MAX / log2(e) = 2.36e38 overflows and turns its row NaN (as in masked_softmax).
Grids: CUDA allows 65535 programs on grid axes 1 and 2, so batch x heads or a sequence's blocks go on axis 0,
whichever would exceed that (``_bh_first``). CPU tensors run the same kernels under ``TRITON_INTERPRET=1``, otherwise
the PyTorch reference.
"""
from __future__ import annotations

import contextlib
import numbers
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from . import _hopper
from . import masks as _masks
from ._launch import INTERPRETED as _INTERPRET  # the interpreter gets small blocks: it runs every program in Python
from ._launch import aligned, bind, fast_launch, first_order_only, remember

_LOG2E = 1.4426950408889634
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Mask kinds as the kernels see them: the key-range form replaces the 2D padding mask; packed sequences
# (``segments``) are read as each token's run ``[first, end)`` (``masks.segment_bounds``), on the 4D masks' path.
_K_NONE, _K_RANGE, _K_BOOL, _K_ADD, _K_SEG = 0, 1, 2, 3, 4


# ---------------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------------

@triton.jit
def _load_2d(ptrs, row_ok, col_ok, CHECK_ROWS: tl.constexpr, CHECK_COLS: tl.constexpr):
    if CHECK_ROWS and CHECK_COLS:
        return tl.load(ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    elif CHECK_ROWS:
        return tl.load(ptrs, mask=row_ok[:, None], other=0.0)
    elif CHECK_COLS:
        return tl.load(ptrs, mask=col_ok[None, :], other=0.0)
    else:
        return tl.load(ptrs)


@triton.jit
def _diag(Q_LEN, K_LEN, window, CAUSAL: tl.constexpr):
    """The last key query row 0 may see: ``K - Q`` (bottom-right causality), or for a bidirectional window (``CAUSAL``
    2, which the kernels run as causality moved ``W - 1`` keys right with a window of ``2 W - 1`` keys:
    ``window`` is that width) ``K - Q + W - 1``."""
    if CAUSAL == 2:
        return K_LEN - Q_LEN + (window - 1) // 2
    else:
        return K_LEN - Q_LEN


@triton.jit
def _mask_scores(s, r2, c2, start, end, has_holes, mask_base, stride_mm, stride_mk, Q_LEN, K_LEN, threshold, window,
                 MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, AS_TILE: tl.constexpr):
    """Set the masked entries of the base-2 score tile ``s`` to -inf (and add an additive mask). ``r2`` / ``c2`` are
    the query / key indices broadcastable to ``s``: ``rows[:, None], cols[None, :]`` or transposed. ``WINDOWED``
    (with ``CAUSAL``): row ``r`` keeps only keys ``c > r + diag - window`` (:func:`_diag`). ``AS_TILE``: a 4D mask is
    added as :func:`_mask_tile`'s f32 tile instead of joining ``keep`` (the same scores): the dk / dv kernel's form;
    the dq kernel keeps the boolean one, which compiles smaller there. (The forward adds the tile itself.)"""
    # the causal bound folded into the range's end per row, the window's into its start (on the broadcastable r2,
    # not per score)
    first = start
    diag = _diag(Q_LEN, K_LEN, window, CAUSAL)
    if WINDOWED:
        first = tl.maximum(start, r2 + (diag + 1 - window))
    if CAUSAL:
        keep = (c2 >= first) & (c2 < tl.minimum(r2 + (diag + 1), end))
    else:
        keep = (c2 >= first) & (c2 < end)
    if MASK_KIND == 1:
        if has_holes:
            pm = tl.load(mask_base + c2 * stride_mk, mask=c2 < K_LEN, other=0)
            keep = keep & (pm != 0)
    elif MASK_KIND >= 2 and AS_TILE:
        s = s + _mask_tile(r2, c2, mask_base, stride_mm, stride_mk, Q_LEN, K_LEN, threshold, MASK_KIND)
    elif MASK_KIND == 2:
        bm = tl.load(mask_base + r2 * stride_mm + c2 * stride_mk, mask=(r2 < Q_LEN) & (c2 < K_LEN), other=0)
        keep = keep & (bm != 0)
    elif MASK_KIND == 4:
        run_first, run_end = _segment_run(r2, mask_base, stride_mm, stride_mk, Q_LEN)
        keep = keep & (c2 >= run_first) & (c2 < run_end)
    elif MASK_KIND == 3:
        am = tl.load(mask_base + r2 * stride_mm + c2 * stride_mk, mask=(r2 < Q_LEN) & (c2 < K_LEN),
                     other=0.0).to(tl.float32)
        keep = keep & ~(am <= threshold)
        s = s + tl.where(keep, am, 0.0) * 1.4426950408889634
    return tl.where(keep, s, float("-inf"))


@triton.jit
def _segment_run(r2, mask_base, stride_mm, stride_plane, Q_LEN):
    """Packed sequences (``MASK_KIND`` 4): the runs ``[first, end)`` of query rows ``r2`` (shaped as ``r2``), from
    ``masks.segment_bounds``' two planes (``stride_plane`` apart); rows past ``Q_LEN`` keep nothing."""
    ok = r2 < Q_LEN
    run_first = tl.load(mask_base + r2 * stride_mm, mask=ok, other=0)
    run_end = tl.load(mask_base + stride_plane + r2 * stride_mm, mask=ok, other=0)
    return run_first, run_end


@triton.jit
def _segment_block(mask_base, stride_mm, stride_plane, first, last, start, end, has_holes):
    """Packed sequences (``MASK_KIND`` 4): the bounds of tokens ``[first, last]`` (query rows, or keys: one run of
    ids serves both) as the 2D path's ``(start, end, has_holes)``. Runs are contiguous, so the tokens lie in one run
    iff ``first`` and ``last`` do: that run ``[f, e)`` then is exactly what they see (or are seen by), and the
    kernels visit its whole blocks unmasked as a padded sequence's (``has_holes`` 0). Tokens of several runs keep
    ``start, end`` (their runs' bounds) and every block is masked (``has_holes`` 1)."""
    f0 = tl.load(mask_base + first * stride_mm)
    f1 = tl.load(mask_base + last * stride_mm)
    e0 = tl.load(mask_base + stride_plane + first * stride_mm)
    one = f0 == f1
    return tl.where(one, f0, start), tl.where(one, e0, end), tl.where(one, 0, 1) + has_holes * 0


@triton.jit
def _mask_tile(r2, c2, mask_base, stride_mm, stride_mk, Q_LEN, K_LEN, threshold, MASK_KIND: tl.constexpr):
    """A 4D mask's tile as what the forward adds to its base-2 scores, in f32: 0 where a bool mask keeps and -inf
    where it does not (``MASK_KIND`` 2); an additive mask's value times log2(e), or -inf at or below ``threshold``
    (3). The same scores as a boolean ``keep``, but a boolean tile in the load's layout led Triton 3.6 and 3.9 to
    reduce the row maxima in that layout too and to compute the exponentials twice (Triton 3.9 spilled at
    D = 128); the forward also loads the tile before its product, without which Triton 3.9 still did so where the
    scale is not folded (sm_90 SASS compiled on a CPU, 2026-12-05: ``tests/test_sass.py``)."""
    if MASK_KIND == 2:
        bm = tl.load(mask_base + r2 * stride_mm + c2 * stride_mk, mask=(r2 < Q_LEN) & (c2 < K_LEN), other=0)
        pen = tl.where(bm != 0, 0.0, float("-inf"))
    elif MASK_KIND == 4:
        run_first, run_end = _segment_run(r2, mask_base, stride_mm, stride_mk, Q_LEN)
        pen = tl.where((c2 >= run_first) & (c2 < run_end), 0.0, float("-inf"))
    else:
        am = tl.load(mask_base + r2 * stride_mm + c2 * stride_mk, mask=(r2 < Q_LEN) & (c2 < K_LEN),
                     other=0.0).to(tl.float32)
        pen = tl.where(am <= threshold, float("-inf"), am * 1.4426950408889634)
    return pen


@triton.jit
def _dropout_keep(seed, bh, rows, n0, drop_thr, BLOCK_N: tl.constexpr):
    """Which scores of the tile ``rows x [n0, n0 + BLOCK_N)`` of head ``bh`` dropout keeps, ``[BLOCK_M, BLOCK_N]``
    bool: one Philox-4x32-10 call (key ``seed``, counter ``(col // 8, row, bh, 0)``) gives four 32-bit words, that is
    eight 16-bit numbers ``u``, for eight neighbouring keys; a score is kept iff ``u >= drop_thr``. A function of the
    score's indices only, so the forward and both backward kernels, whatever their tiles, draw the same mask.
    ``n0`` is a multiple of 8."""
    g = (tl.arange(0, BLOCK_N // 8) + n0 // 8).to(tl.int32)
    r = rows.to(tl.int32)
    c0 = g[None, :] + r[:, None] * 0
    c1 = r[:, None] + g[None, :] * 0
    c2 = c0 * 0 + bh.to(tl.int32)
    w0, w1, w2, w3 = tl.philox(seed, c0, c1, c2, c0 * 0)
    # key 8g + j takes the j-th 16-bit number of (w0, w1, w2, w3) low half first: interleaving twice orders the words
    # w0 w1 w2 w3, a third time their halves
    w = tl.interleave(tl.interleave(w0, w2), tl.interleave(w1, w3))
    u = tl.interleave(w & 0xFFFF, w >> 16)
    return u >= drop_thr


@triton.jit
def _tanh(x):
    """``tanh(x)`` in fp32, the same code in the interpreter and on the GPU: from one base-2 exponential,
    ``sign(x) (1 - e) / (1 + e)`` with ``e = exp(-2|x|)`` (no overflow; NaN stays NaN, +-inf give +-1), and below
    ``|x| = 0.3``, where ``1 - e`` would lose relative precision (6e-8 / |x|: a cap of 1e4 on scores of about 1 then
    moved them by 3e-4), the series to ``x**9``, relative error under 6e-8 there."""
    e = tl.math.exp2(-2.8853900817779268 * tl.abs(x))  # 2 / ln(2)
    t = (1.0 - e) / (1.0 + e)
    x2 = x * x
    series = x + x * x2 * (-0.3333333333333333 + x2 * (0.13333333333333333 + x2 * (-0.05396825396825397
                                                                                   + x2 * 0.021869488536155203)))
    return tl.where(tl.abs(x) < 0.3, series, tl.where(x < 0, -t, t))


@triton.jit
def _fwd_blocks(acc, acc2, l_i, m_i, q, q2, k_base, v_base, mask_base, rows, offs_n, offs_d, offs_d2, offs_dv,
                offs_dv2,
                stride_kn, stride_kd, stride_vn, stride_vd, stride_mm, stride_mk,
                lo, hi, mask_from, start, end, has_holes, Q_LEN, K_LEN, qk_scale, threshold, seed, bh, drop_thr,
                window, softcap, MASKED: tl.constexpr, MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr,
                BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DV: tl.constexpr,
                BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr, FOLD: tl.constexpr,
                DROPOUT: tl.constexpr, WINDOWED: tl.constexpr, SOFTCAP: tl.constexpr, D_TAIL: tl.constexpr,
                DV_TAIL: tl.constexpr):
    """Online softmax over key blocks ``[lo, hi)``. ``MASKED``: 0 for blocks every row fully sees (no mask, no
    bounds checks), 1 to evaluate the mask on every block, 2 on the blocks from ``mask_from`` on (one loop, one
    software pipeline, for the interior blocks and the trailing ones at the range's end and the diagonal).
    ``FOLD`` (a positive finite scale, no additive mask): the scale is applied inside the exponent's FMA,
    ``exp2(s * qk_scale - m)``, instead of by its own multiply of the score tile (the row max is scaled once).
    ``DROPOUT``: the row sums count every probability, ``P v`` only the kept ones (the caller scales the result).
    ``D_TAIL`` / ``DV_TAIL`` (a head dim split in two tiles, see ``_split_d``): the keys' / values' columns
    ``offs_d2`` / ``offs_dv2`` past the first ``BLOCK_D`` / ``BLOCK_DV``, ``q2`` and ``acc2`` their queries and
    output columns."""
    d_ok = offs_d < HEAD_D
    dv_ok = offs_dv < HEAD_DV
    d2_ok = offs_d2 < HEAD_D
    dv2_ok = offs_dv2 < HEAD_DV
    for n0 in range(lo, hi, BLOCK_N):
        cols = n0 + offs_n
        col_ok = cols < K_LEN
        k = _load_2d(k_base + offs_d[:, None] * stride_kd + cols[None, :] * stride_kn, d_ok, col_ok,
                     BLOCK_D > HEAD_D, MASKED != 0)
        if UPCAST:
            k = k.to(tl.float32)
        if D_TAIL > 0:
            k2 = _load_2d(k_base + offs_d2[:, None] * stride_kd + cols[None, :] * stride_kn, d2_ok, col_ok,
                          BLOCK_D + D_TAIL != HEAD_D, MASKED != 0)
            if UPCAST:
                k2 = k2.to(tl.float32)
        if MASKED != 0 and (MASK_KIND == 2 or MASK_KIND == 3):
            # a 4D mask's tile: loaded before the product, added to the scores as f32 (see _mask_tile)
            tile = _mask_tile(rows[:, None], cols[None, :], mask_base, stride_mm, stride_mk, Q_LEN, K_LEN, threshold,
                              MASK_KIND)
        s = tl.dot(q, k, input_precision=DOT_PREC)
        if D_TAIL > 0:
            s = tl.dot(q2, k2, s, input_precision=DOT_PREC)
        if SOFTCAP:
            s = _tanh(s * qk_scale) * softcap
        elif not FOLD:
            s = s * qk_scale
        if MASKED != 0 and (MASK_KIND == 2 or MASK_KIND == 3):
            # then only the keys past K_LEN, causality and the window: the tile masks every key outside the mask's
            # own bounds already (the range [start, end) is 0..K_LEN or those bounds), so no per-score test of them
            s = _mask_scores(s + tile, rows[:, None], cols[None, :], 0, K_LEN, has_holes, mask_base, stride_mm,
                             stride_mk, Q_LEN, K_LEN, threshold, window, 0, CAUSAL, WINDOWED, True)
        elif MASKED == 1:
            s = _mask_scores(s, rows[:, None], cols[None, :], start, end, has_holes, mask_base, stride_mm,
                             stride_mk, Q_LEN, K_LEN, threshold, window, MASK_KIND, CAUSAL, WINDOWED, True)
        elif MASKED == 2:
            if n0 >= mask_from:
                s = _mask_scores(s, rows[:, None], cols[None, :], start, end, has_holes, mask_base, stride_mm,
                                 stride_mk, Q_LEN, K_LEN, threshold, window, MASK_KIND, CAUSAL, WINDOWED, True)
        if FOLD:
            m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
        else:
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
        if MASKED != 0:
            # a row with nothing kept so far has m = -inf: shift by 0 so exp2 gives 0, not NaN
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_use = m_new
        if FOLD:
            p = tl.math.exp2(s * qk_scale - m_use[:, None])
        else:
            p = tl.math.exp2(s - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if DROPOUT:
            p = tl.where(_dropout_keep(seed, bh, rows, n0, drop_thr, BLOCK_N), p, 0.0)
        acc = acc * alpha[:, None]
        v = _load_2d(v_base + cols[:, None] * stride_vn + offs_dv[None, :] * stride_vd, col_ok, dv_ok,
                     MASKED != 0, BLOCK_DV > HEAD_DV)
        if UPCAST:
            v = v.to(tl.float32)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
        if DV_TAIL > 0:
            acc2 = acc2 * alpha[:, None]
            v2 = _load_2d(v_base + cols[:, None] * stride_vn + offs_dv2[None, :] * stride_vd, col_ok, dv2_ok,
                          MASKED != 0, BLOCK_DV + DV_TAIL != HEAD_DV)
            if UPCAST:
                v2 = v2.to(tl.float32)
            acc2 = tl.dot(p.to(v2.dtype), v2, acc2, input_precision=DOT_PREC)
        m_i = m_new
    return acc, acc2, l_i, m_i


@triton.jit
def _key_range(ranges_ptr, b, K_LEN, MASK_KIND: tl.constexpr):
    if MASK_KIND == 1:
        start = tl.load(ranges_ptr + b * 4 + 0)
        end = tl.load(ranges_ptr + b * 4 + 1)
        has_holes = tl.load(ranges_ptr + b * 4 + 2)
    else:
        start = tl.full([], 0, tl.int32)
        end = start + K_LEN
        has_holes = start
    return start, end, has_holes


@triton.jit
def _bounds_entry(b, h, H, PER_B: tl.constexpr, PER_H: tl.constexpr):
    """Which ``(batch entry, head)`` entry of ``masks.mask_bounds`` serves ``b, h``: the mask's own ones only."""
    base = b * 0
    if PER_B:
        base = b
    if PER_H:
        base = base * H + h
    return base


@triton.jit
def _chunk_bounds(at, c, n, SPAN: tl.constexpr):
    """The maxima of the ``(from_end, end)`` pairs at ``at`` (chunk ``c``) and the ``SPAN - 1`` after it (none for
    ``SPAN`` 0 or 1) that are below chunk ``n``. Scalar loads of uniform addresses, not a vector load and a
    reduction: the compiler then knows the bounds, and so the kernels' loop counts, are the same in every thread (from
    a reduction it moved the forward loop's wgmma descriptors into uniform registers on every key block: 25 R2UR, a
    SHFL, a WARPSYNC; Triton 3.6, sm_90)."""
    from_end = tl.load(at)
    end = tl.load(at + 1)
    for j in tl.static_range(1, SPAN):
        ok = c + j < n
        from_end = tl.maximum(from_end, tl.load(at + 2 * j, mask=ok, other=0))
        end = tl.maximum(end, tl.load(at + 2 * j + 1, mask=ok, other=0))
    return from_end, end


@triton.jit
def _mask_bounds(bounds_ptr, b, h, m0, H, Q_LEN, K_LEN, PER_B: tl.constexpr, PER_H: tl.constexpr,
                 SPAN: tl.constexpr, CHUNK: tl.constexpr):
    """``(start, end)``: the keys a 4D mask keeps for query rows ``[m0, m0 + SPAN * CHUNK)`` of batch entry ``b`` and
    head ``h`` (a superset: the union of the bounds of the ``CHUNK``-row chunks they lie in, see
    ``masks.mask_bounds``, which stores ``K - start``; ``SPAN`` 0: one bound for all rows). Nothing kept:
    ``start >= end``."""
    base = _bounds_entry(b, h, H, PER_B, PER_H)
    n_k = tl.cdiv(K_LEN, CHUNK)  # each (b, h) entry: its row chunks' key bounds, then its key chunks' row bounds
    n_c = 1
    c = m0 * 0
    if SPAN > 0:
        n_c = tl.cdiv(Q_LEN, CHUNK)
        c = m0 // CHUNK
    from_end, end = _chunk_bounds(bounds_ptr + (base * (n_c + n_k) + c) * 2, c, n_c, SPAN)
    return K_LEN - from_end, end


@triton.jit
def _mask_row_bounds(bounds_ptr, b, h, n0, H, Q_LEN, K_LEN, PER_B: tl.constexpr, PER_H: tl.constexpr,
                     ROW_CHUNKS: tl.constexpr, KSPAN: tl.constexpr, CHUNK: tl.constexpr):
    """``(first, end)``: the query rows for which a 4D mask keeps some key of ``[n0, n0 + KSPAN * CHUNK)``, batch entry
    ``b``, head ``h`` (the union over the key chunks, see ``masks.mask_bounds``). ``ROW_CHUNKS``: the mask has its
    own rows (else one row, broadcast). Nothing kept: ``first >= end``."""
    base = _bounds_entry(b, h, H, PER_B, PER_H)
    n_k = tl.cdiv(K_LEN, CHUNK)
    n_c = 1
    if ROW_CHUNKS:
        n_c = tl.cdiv(Q_LEN, CHUNK)
    c = n0 // CHUNK
    from_end, end = _chunk_bounds(bounds_ptr + (base * (n_c + n_k) + n_c + c) * 2, c, n_k, KSPAN)
    return Q_LEN - from_end, end


@triton.jit
def _block_key_bounds(start, end, has_holes, m0, split, NUM_SPLITS, Q_LEN, K_LEN, window,
                      MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr):
    """Key blocks for query rows ``[m0, m0 + BLOCK_M)``: this split's ``[s_lo, s_hi)`` (block aligned at the start)
    and inside it ``[full_lo, full_hi)``, the blocks every row sees whole (no mask to evaluate there). ``WINDOWED``:
    the blocks left of the first row's window are skipped, those left of the last row's are masked."""
    first = start
    diag = _diag(Q_LEN, K_LEN, window, CAUSAL)
    if WINDOWED:
        first = tl.maximum(start, m0 + (diag + 1) - window)
    lo = (first // BLOCK_N) * BLOCK_N
    hi = end
    if CAUSAL:
        hi = tl.minimum(hi, m0 + BLOCK_M + diag)
    hi = tl.maximum(hi, lo)
    per_split = tl.cdiv(tl.cdiv(hi - lo, BLOCK_N), NUM_SPLITS) * BLOCK_N
    if MASK_KIND == 2 or MASK_KIND == 3:
        # a multiple of BLOCK_N that the compiler can see (a minimum of two multiples), so that the mask tile's loads
        # keep their vector width within a 4D mask's key bounds; a split past the range gets s_lo > s_hi (by less
        # than a block), which leaves every loop below empty. (Clamped to hi, s_lo lost its known alignment: Triton
        # 3.6's bounded loop at D = 64 had 849 instructions against the unbounded 676; now 708 and 706. The 2D path
        # keeps the clamp: there the aligned form compiled larger, 625 against 601.)
        s_lo = lo + tl.minimum(split * per_split, tl.cdiv(hi - lo, BLOCK_N) * BLOCK_N)
    else:
        s_lo = tl.minimum(lo + split * per_split, hi)
    s_hi = tl.minimum(s_lo + per_split, hi)
    if MASK_KIND == 2 or MASK_KIND == 3:
        full_lo = s_lo
        full_hi = s_lo
    else:
        full_lo = tl.maximum(s_lo, tl.cdiv(start, BLOCK_N) * BLOCK_N)
        if WINDOWED:
            win_first = tl.maximum(m0 + BLOCK_M + diag - window, 0)  # the block's last row's first key
            full_lo = tl.maximum(full_lo, tl.cdiv(win_first, BLOCK_N) * BLOCK_N)
        full_end = end
        if CAUSAL:
            full_end = tl.minimum(full_end, m0 + diag + 1)
        full_hi = tl.minimum(s_hi, tl.maximum(full_end, 0) // BLOCK_N * BLOCK_N)
        if has_holes:
            full_lo = s_lo
            full_hi = s_lo
    return s_lo, s_hi, full_lo, full_hi


@fast_launch
@triton.jit
def _attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, mask_ptr, ranges_ptr, seed_ptr, sink_ptr,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_os, stride_ob, stride_oh, stride_om, stride_od,
    stride_ls, stride_lp,
    stride_mb, stride_mh, stride_mm, stride_mk,
    H, GROUP, Q_LEN, K_LEN, NUM_SPLITS, qk_scale, threshold, drop_thr, keep_scale, window, softcap,
    MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, BH_FIRST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DV: tl.constexpr,
    BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr, WIDE: tl.constexpr, FOLD: tl.constexpr,
    MERGE_TAIL: tl.constexpr,
    STORE_LSE: tl.constexpr, DROPOUT: tl.constexpr, WINDOWED: tl.constexpr, PACK: tl.constexpr, SOFTCAP: tl.constexpr,
    B4D: tl.constexpr, B4D_PER_B: tl.constexpr, B4D_PER_H: tl.constexpr, B4D_SPAN: tl.constexpr, SINK: tl.constexpr,
    D_TAIL: tl.constexpr, DV_TAIL: tl.constexpr,
):
    if BH_FIRST:
        # causal: (batch x head) fastest and query blocks in reverse, so the longest rows start first and the
        # short ones fill in the tail
        bh = tl.program_id(0).to(tl.int64)
        pid_m = tl.num_programs(1) - 1 - tl.program_id(1)
    else:
        # neighbouring programs share one head's keys and values in L2
        pid_m = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    if PACK:
        # grouped-query decoding: one program per key/value head, its GROUP query heads' rows in one tile (row r is
        # query r % Q_LEN of head h + r // Q_LEN), so the group's keys and values are read once, not GROUP times
        b = bh // (H // GROUP)
        hk = bh % (H // GROUP)
        h = hk * GROUP
    else:
        b = bh // H
        h = bh % H
        hk = h // GROUP

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    if WIDE:  # some tensor spans 2**31 elements or more: index math in int64
        rows = rows.to(tl.int64)
        offs_n = offs_n.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_D
    offs_dv = tl.arange(0, BLOCK_DV)  # the values' and the output's columns (HEAD_DV: HEAD_D but for MLA)
    dv_ok = offs_dv < HEAD_DV
    # a head dim split in two tiles (see _split_d): the columns past BLOCK_D / BLOCK_DV (unused without one)
    if D_TAIL > 0:
        offs_d2 = BLOCK_D + tl.arange(0, D_TAIL)
    else:
        offs_d2 = offs_d
    if DV_TAIL > 0:
        offs_dv2 = BLOCK_DV + tl.arange(0, DV_TAIL)
    else:
        offs_dv2 = offs_dv
    if PACK:
        qrows = rows % Q_LEN  # each row's query index (what masking and causality see)
        row_ok = rows < GROUP * Q_LEN
        q_off = (rows // Q_LEN) * stride_qh + qrows * stride_qm
        o_off = (rows // Q_LEN) * stride_oh + qrows * stride_om
        m0 = pid_m * 0  # every tile holds queries 0.. of its heads (Q_LEN <= BLOCK_M): bounds for all of them
    else:
        qrows = rows
        row_ok = rows < Q_LEN
        q_off = rows * stride_qm
        o_off = rows * stride_om
        m0 = pid_m * BLOCK_M

    mask_base = mask_ptr + b * stride_mb + h * stride_mh
    start, end, has_holes = _key_range(ranges_ptr, b, K_LEN, MASK_KIND)
    if B4D:  # a 4D mask's key bounds (ranges_ptr points to them): only the key blocks inside are visited
        # (16: masks.BOUNDS_CHUNK, the rows per bound)
        start, end = _mask_bounds(ranges_ptr, b, h, m0, H, Q_LEN, K_LEN, B4D_PER_B, B4D_PER_H, B4D_SPAN, 16)
    if MASK_KIND == 4:  # rows of one packed sequence: its blocks unmasked, as a padded row's (packed, all rows)
        start, end, has_holes = _segment_block(mask_base, stride_mm, stride_mk, m0,
                                               tl.minimum(m0 + BLOCK_M, Q_LEN) - 1, start, end, has_holes)
    s_lo, s_hi, full_lo, full_hi = _block_key_bounds(start, end, has_holes, m0, split, NUM_SPLITS,
                                                      Q_LEN, K_LEN, window, MASK_KIND, CAUSAL, WINDOWED,
                                                      BLOCK_M, BLOCK_N)

    q_base = q_ptr + b * stride_qb + h * stride_qh + q_off[:, None]
    q = _load_2d(q_base + offs_d[None, :] * stride_qd, row_ok, d_ok, True, BLOCK_D > HEAD_D)
    if UPCAST:
        q = q.to(tl.float32)
    q2 = q  # (unused without a split of the head dim)
    if D_TAIL > 0:
        q2 = _load_2d(q_base + offs_d2[None, :] * stride_qd, row_ok, offs_d2 < HEAD_D, True,
                      BLOCK_D + D_TAIL != HEAD_D)
        if UPCAST:
            q2 = q2.to(tl.float32)
    k_base = k_ptr + b * stride_kb + hk * stride_kh
    v_base = v_ptr + b * stride_vb + hk * stride_vh

    seed = start * 0
    if DROPOUT:
        seed = tl.load(seed_ptr)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    acc2 = acc  # (untouched without a split of the values' head dim)
    if DV_TAIL > 0:
        acc2 = tl.zeros([BLOCK_M, DV_TAIL], dtype=tl.float32)

    # leading partial block (left padding), interior blocks unmasked, trailing blocks (right edge, diagonal)
    acc, acc2, l_i, m_i = _fwd_blocks(acc, acc2, l_i, m_i, q, q2, k_base, v_base, mask_base, qrows, offs_n, offs_d,
                                      offs_d2, offs_dv, offs_dv2, stride_kn, stride_kd, stride_vn, stride_vd,
                                      stride_mm, stride_mk, s_lo, tl.minimum(full_lo, s_hi), s_lo, start, end,
                                      has_holes, Q_LEN, K_LEN, qk_scale, threshold, seed, bh, drop_thr, window,
                                      softcap, 1, MASK_KIND, CAUSAL, BLOCK_N, HEAD_D, BLOCK_D, HEAD_DV, BLOCK_DV,
                                      UPCAST, DOT_PREC, FOLD, DROPOUT, WINDOWED, SOFTCAP, D_TAIL, DV_TAIL)
    if MASK_KIND == 2 or MASK_KIND == 3:
        # a 4D mask: every block evaluates it, with no per-block branch on `mask_from` (a loaded value once the
        # mask's key bounds set it). The bounded blocks' extra cost (4-5x the unbounded ones') came from the mask
        # tile's layout and the loop start's hidden alignment (see _mask_tile, _block_key_bounds): an H100 at
        # e2c1a93 runs a block in the same time with bounds as without (NOTES.md, thirty-second session)
        acc, acc2, l_i, m_i = _fwd_blocks(acc, acc2, l_i, m_i, q, q2, k_base, v_base, mask_base, qrows, offs_n,
                                          offs_d, offs_d2, offs_dv, offs_dv2, stride_kn, stride_kd, stride_vn,
                                          stride_vd, stride_mm, stride_mk, s_lo, s_hi, s_lo, start, end, has_holes,
                                          Q_LEN, K_LEN, qk_scale, threshold, seed, bh, drop_thr, window, softcap, 1,
                                          MASK_KIND, CAUSAL, BLOCK_N, HEAD_D, BLOCK_D, HEAD_DV, BLOCK_DV, UPCAST,
                                          DOT_PREC, FOLD, DROPOUT, WINDOWED, SOFTCAP, D_TAIL, DV_TAIL)
    elif MERGE_TAIL:
        acc, acc2, l_i, m_i = _fwd_blocks(acc, acc2, l_i, m_i, q, q2, k_base, v_base, mask_base, qrows, offs_n,
                                          offs_d, offs_d2, offs_dv, offs_dv2, stride_kn, stride_kd, stride_vn,
                                          stride_vd, stride_mm, stride_mk, tl.minimum(full_lo, s_hi), s_hi, full_hi,
                                          start, end, has_holes, Q_LEN, K_LEN, qk_scale, threshold, seed, bh,
                                          drop_thr, window, softcap, 2, MASK_KIND, CAUSAL, BLOCK_N, HEAD_D, BLOCK_D,
                                          HEAD_DV, BLOCK_DV, UPCAST, DOT_PREC, FOLD, DROPOUT, WINDOWED, SOFTCAP,
                                          D_TAIL, DV_TAIL)
    else:
        acc, acc2, l_i, m_i = _fwd_blocks(acc, acc2, l_i, m_i, q, q2, k_base, v_base, mask_base, qrows, offs_n,
                                          offs_d, offs_d2, offs_dv, offs_dv2, stride_kn, stride_kd, stride_vn,
                                          stride_vd, stride_mm, stride_mk, full_lo, full_hi, full_hi, start, end,
                                          has_holes, Q_LEN, K_LEN, qk_scale, threshold, seed, bh, drop_thr, window,
                                          softcap, 0, MASK_KIND, CAUSAL, BLOCK_N, HEAD_D, BLOCK_D, HEAD_DV, BLOCK_DV,
                                          UPCAST, DOT_PREC, FOLD, DROPOUT, WINDOWED, SOFTCAP, D_TAIL, DV_TAIL)
        acc, acc2, l_i, m_i = _fwd_blocks(acc, acc2, l_i, m_i, q, q2, k_base, v_base, mask_base, qrows, offs_n,
                                          offs_d, offs_d2, offs_dv, offs_dv2, stride_kn, stride_kd, stride_vn,
                                          stride_vd, stride_mm, stride_mk, tl.maximum(full_lo, full_hi), s_hi, s_lo,
                                          start, end, has_holes, Q_LEN, K_LEN, qk_scale, threshold, seed, bh,
                                          drop_thr, window, softcap, 1, MASK_KIND, CAUSAL, BLOCK_N, HEAD_D, BLOCK_D,
                                          HEAD_DV, BLOCK_DV, UPCAST, DOT_PREC, FOLD, DROPOUT, WINDOWED, SOFTCAP,
                                          D_TAIL, DV_TAIL)

    empty = l_i == 0.0
    if SINK:
        # attention sinks: each query head's logit (sink_ptr, fp32, natural units) as one more key with a zero value,
        # after the keys (a row with nothing kept stays "empty": zero output, lse -inf, as without a sink)
        if PACK:
            sink = tl.load(sink_ptr + h + rows // Q_LEN, mask=row_ok, other=float("-inf"))
        else:
            sink = tl.load(sink_ptr + h)
        sink = sink * 1.4426950408889634
        m_new = tl.maximum(m_i, sink)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.math.exp2(sink - m_use)
        acc = acc * alpha[:, None]
        if DV_TAIL > 0:
            acc2 = acc2 * alpha[:, None]
        m_i = m_new
    l_div = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_div[:, None]
    if DROPOUT:
        out = out * keep_scale
    o_base = o_ptr + split * stride_os + b * stride_ob + h * stride_oh + o_off[:, None]
    if BLOCK_DV > HEAD_DV:
        tl.store(o_base + offs_dv[None, :] * stride_od, out.to(o_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & dv_ok[None, :])
    else:
        tl.store(o_base + offs_dv[None, :] * stride_od, out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None])
    if DV_TAIL > 0:
        out2 = acc2 / l_div[:, None]
        if DROPOUT:
            out2 = out2 * keep_scale
        tl.store(o_base + offs_dv2[None, :] * stride_od, out2.to(o_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & (offs_dv2 < HEAD_DV)[None, :])
    if STORE_LSE:
        lse, res = _lse_and_residual(m_i, l_i, empty)
        # packed, row r of the tile is row r of the group's [GROUP, Q_LEN] block of rows, from its first head h
        lse_ptrs = lse_ptr + split * stride_ls + (b * H + h) * Q_LEN + rows
        tl.store(lse_ptrs, lse, mask=row_ok)
        tl.store(lse_ptrs + stride_lp, res, mask=row_ok)


@triton.jit
def _lse_and_residual(m, l, empty):
    """A row's ``lse = m + log2(l)`` in fp32 and its rounding residual ``(m + log2(l)) - lse``, exact by Knuth's
    TwoSum (IEEE additions, never reassociated); ``(-inf, 0)`` where ``empty`` (nothing kept)."""
    m = tl.where(empty, 0.0, m)
    lg = tl.math.log2(tl.where(empty, 1.0, l))
    lse = m + lg
    bb = lse - m
    return tl.where(empty, float("-inf"), lse), (m - (lse - bb)) + (lg - bb)


@fast_launch
@triton.jit
def _split_combine_kernel(
    part_ptr, part_lse_ptr, o_ptr, lse_ptr, sink_ptr,
    stride_ps, stride_ls, stride_lp,
    stride_ob, stride_oh, stride_om, stride_od,
    H, Q_LEN, NUM_SPLITS,
    HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, STORE_LSE: tl.constexpr, SINK: tl.constexpr,
):
    """Merge the splits of one query row (partials are contiguous ``[S, B, H, Q, D]`` and ``[S, 2, B, H, Q]`` in
    fp32): weights ``2^((lse_s - max) + residual_s)``; a row empty in every split stays zero with ``lse = -inf``.
    ``SINK``: the head's sink logit joins the sum here (the splits leave it out), as a split with a zero output."""
    bh = tl.program_id(0).to(tl.int64)
    row = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < NUM_SPLITS
    d_ok = offs_d < HEAD_D
    lse_ptrs = part_lse_ptr + offs_s * stride_ls + bh * Q_LEN + row
    lse_s = tl.load(lse_ptrs, mask=s_ok, other=float("-inf"))
    res_s = tl.load(lse_ptrs + stride_lp, mask=s_ok, other=0.0)
    mx = tl.max(lse_s, axis=0)
    if SINK:
        sink = tl.load(sink_ptr + h) * 1.4426950408889634
        mx = tl.maximum(mx, sink)
    mx_use = tl.where(mx == float("-inf"), 0.0, mx)
    w = tl.math.exp2((lse_s - mx_use) + res_s)
    total = tl.sum(w, axis=0)
    parts = tl.load(part_ptr + offs_s[:, None] * stride_ps + (bh * Q_LEN + row) * HEAD_D + offs_d[None, :],
                    mask=s_ok[:, None] & d_ok[None, :], other=0.0)
    empty = total == 0.0
    if SINK:
        total += tl.math.exp2(sink - mx_use)
    out = tl.sum(parts * w[:, None], axis=0) / tl.where(total == 0.0, 1.0, total)
    tl.store(o_ptr + b * stride_ob + h * stride_oh + row * stride_om + offs_d * stride_od,
             out.to(o_ptr.dtype.element_ty), mask=d_ok)
    if STORE_LSE:
        lse, res = _lse_and_residual(mx_use, total, empty)
        tl.store(lse_ptr + bh * Q_LEN + row, lse)
        tl.store(lse_ptr + stride_lp + bh * Q_LEN + row, res)


@fast_launch
@triton.jit
def _bwd_delta_kernel(o_ptr, do_ptr, delta_ptr,
                      stride_ob, stride_oh, stride_om, stride_od,
                      stride_dob, stride_doh, stride_dom, stride_dod,
                      H, Q_LEN, BH_FIRST: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_D: tl.constexpr,
                      BLOCK_D: tl.constexpr):
    """``delta = rowsum(dO * O)`` in fp32, ``[B, H, Q]``; where ``O`` is 0 its product is 0, so a row with nothing
    kept (all-zero ``O``) gets ``delta = 0`` whatever its ``dO`` holds (NaN or inf included)."""
    if BH_FIRST:  # more than 65535 batch x head programs (see _bh_first)
        bh = tl.program_id(0).to(tl.int64)
        pid_m = tl.program_id(1)
    else:
        pid_m = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (rows < Q_LEN)[:, None] & (offs_d < HEAD_D)[None, :]
    o = tl.load(o_ptr + b * stride_ob + h * stride_oh + rows[:, None] * stride_om + offs_d[None, :] * stride_od,
                mask=ok, other=0.0).to(tl.float32)
    do = tl.load(do_ptr + b * stride_dob + h * stride_doh + rows[:, None] * stride_dom
                 + offs_d[None, :] * stride_dod, mask=ok, other=0.0).to(tl.float32)
    tl.store(delta_ptr + bh * Q_LEN + rows, tl.sum(tl.where(o == 0.0, 0.0, o * do), axis=1), mask=rows < Q_LEN)


@triton.jit
def _dkdv_blocks(dk, dv, k, v, q_base, do_base, lse_base, delta_base, mask_base, cols, offs_m, offs_d, offs_dv,
                 stride_qm, stride_qd, stride_dom, stride_dod, stride_mm, stride_mk, stride_lp,
                 lo, hi, full_from, full_to, start, end, has_holes, Q_LEN, K_LEN, qk_scale, threshold, seed, bh, n0,
                 drop_thr, keep_scale, window, softcap, MASKED: tl.constexpr, MASK_KIND: tl.constexpr,
                 CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr,
                 BLOCK_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr,
                 DOT_PREC: tl.constexpr, FOLD: tl.constexpr, DROPOUT: tl.constexpr, WINDOWED: tl.constexpr,
                 SOFTCAP: tl.constexpr):
    """Accumulate ``dk, dv`` of one key block over query blocks ``[lo, hi)`` of one query head. Works on the
    transposed tiles ``S^T = k q^T [BLOCK_N, BLOCK_M]`` so that no register tile needs transposing (but dropout's
    mask, drawn in the forward's orientation). With dropout ``Z`` (kept / (1 - p), else 0): ``dv += (P Z)^T dO`` and
    ``dP = Z (dO v^T)``. ``MASKED``: 0 for blocks every row sees whole, 1 to mask every block, 2 to mask the blocks
    outside ``[full_from, full_to)`` (one loop, one software pipeline: packed sequences)."""
    d_ok = offs_d < HEAD_D
    dv_ok = offs_dv < HEAD_DV
    for m0 in range(lo, hi, BLOCK_M):
        rows = m0 + offs_m
        row_ok = rows < Q_LEN
        qt = _load_2d(q_base + offs_d[:, None] * stride_qd + rows[None, :] * stride_qm, d_ok, row_ok,
                      BLOCK_D != HEAD_D, True)
        # Only a masked block can meet a row with nothing kept: its output is zero whatever dO holds, so its dO is
        # read as 0 and a NaN or inf there never reaches dk or dv. With a 2D mask (or none) those are exactly the
        # causal rows before the first kept key (the load's own predicate); with a 4D mask or a window (rows past a
        # right-padded range by a window or more), the rows with lse = -inf.
        do_ok = row_ok
        if MASKED and MASK_KIND <= 1 and CAUSAL:
            do_ok = row_ok & (rows + _diag(Q_LEN, K_LEN, window, CAUSAL) >= start)
        do = _load_2d(do_base + rows[:, None] * stride_dom + offs_dv[None, :] * stride_dod, do_ok, dv_ok,
                      True, BLOCK_DV != HEAD_DV)
        if UPCAST:
            qt = qt.to(tl.float32)
            do = do.to(tl.float32)
        lse = tl.load(lse_base + rows, mask=row_ok, other=float("inf"))
        if MASK_KIND == 3:
            res = tl.load(lse_base + stride_lp + rows, mask=row_ok, other=0.0)
        if MASKED and (MASK_KIND >= 2 or WINDOWED):
            do = tl.where((lse != float("-inf"))[:, None], do, 0.0)
        # a row with nothing kept has all-zero probabilities: lse = +inf gives exp2(s - lse) = 0
        lse = tl.where(lse == float("-inf"), float("inf"), lse)
        delta = tl.load(delta_base + rows, mask=row_ok, other=0.0)
        st = tl.dot(k, qt, input_precision=DOT_PREC)
        if SOFTCAP:
            tt = _tanh(st * qk_scale)
            st = tt * softcap
        elif not FOLD:
            st = st * qk_scale
        if MASKED == 2:
            if (m0 < full_from) | (m0 >= full_to):
                st = _mask_scores(st, rows[None, :], cols[:, None], start, end, has_holes, mask_base, stride_mm,
                                  stride_mk, Q_LEN, K_LEN, threshold, window, MASK_KIND, CAUSAL, WINDOWED, True)
        elif MASKED:
            st = _mask_scores(st, rows[None, :], cols[:, None], start, end, has_holes, mask_base, stride_mm,
                              stride_mk, Q_LEN, K_LEN, threshold, window, MASK_KIND, CAUSAL, WINDOWED, True)
        if MASK_KIND == 3:  # additive mask (never FOLD): the residual too, see the module docstring
            pt = tl.math.exp2((st - lse[None, :]) - res[None, :])
        elif FOLD:
            pt = tl.math.exp2(st * qk_scale - lse[None, :])
        else:
            pt = tl.math.exp2(st - lse[None, :])
        if DROPOUT:
            keep = tl.trans(_dropout_keep(seed, bh, rows, n0, drop_thr, BLOCK_N))
            dv = tl.dot(tl.where(keep, pt * keep_scale, 0.0).to(do.dtype), do, dv, input_precision=DOT_PREC)
            dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
            dpt = tl.where(keep, dpt * keep_scale, 0.0)
        else:
            dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=DOT_PREC)
            dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        dst = pt * (dpt - delta[None, :])
        if SOFTCAP:  # through the cap: d(c tanh(x / c)) / dx = 1 - tanh(x / c)**2
            dst = dst * (1.0 - tt * tt)
        dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk, input_precision=DOT_PREC)
    return dk, dv


@fast_launch
@triton.jit
def _bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, mask_ptr, ranges_ptr, seed_ptr,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    stride_mb, stride_mh, stride_mm, stride_mk,
    stride_lp,
    H, HKV, GROUP, Q_LEN, K_LEN, sm_scale, qk_scale, threshold, drop_thr, keep_scale, window, softcap,
    MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, BH_FIRST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DV: tl.constexpr,
    BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr, WIDE: tl.constexpr, FOLD: tl.constexpr,
    DROPOUT: tl.constexpr,
    WINDOWED: tl.constexpr, SOFTCAP: tl.constexpr,
    B4D: tl.constexpr, B4D_PER_B: tl.constexpr, B4D_PER_H: tl.constexpr, B4D_SPAN: tl.constexpr,
):
    """One key block of one key/value head; sums over the query heads of its GQA group (no atomics). ``B4D``: a 4D
    mask's row bounds (``masks.mask_bounds``) limit each head's query blocks to those that keep a key of the block."""
    if BH_FIRST:
        # (batch x kv head) fastest; key blocks in order: under causality the first see the most queries
        bhk = tl.program_id(0).to(tl.int64)
        n0 = tl.program_id(1) * BLOCK_N
    else:
        n0 = tl.program_id(0) * BLOCK_N
        bhk = tl.program_id(1).to(tl.int64)
    b = bhk // HKV
    hk = bhk % HKV
    cols = n0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    if WIDE:
        cols = cols.to(tl.int64)
        offs_m = offs_m.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    col_ok = cols < K_LEN
    d_ok = offs_d < HEAD_D
    offs_dv = tl.arange(0, BLOCK_DV)
    dv_ok = offs_dv < HEAD_DV

    start, end, has_holes = _key_range(ranges_ptr, b, K_LEN, MASK_KIND)
    diag = _diag(Q_LEN, K_LEN, window, CAUSAL)
    q_lo = start * 0
    if CAUSAL:
        q_lo = tl.maximum(n0 - diag, 0) // BLOCK_M * BLOCK_M
    q_hi = q_lo
    if (n0 < end) & (n0 + BLOCK_N > start):
        q_hi = q_lo * 0 + Q_LEN
    if WINDOWED:  # the rows whose window reaches this block's last key
        q_hi = tl.maximum(tl.minimum(q_hi, tl.cdiv(tl.maximum(n0 + BLOCK_N - 1 - diag + window, 0),
                                                    BLOCK_M) * BLOCK_M), q_lo)
    # query blocks past the diagonal see this key block whole, if the block lies inside the key range
    q_full = q_hi
    if MASK_KIND < 2:
        if (n0 >= start) & (n0 + BLOCK_N <= end) & (has_holes == 0):
            q_full = q_lo
            if CAUSAL:
                q_full = tl.minimum(tl.maximum(tl.cdiv(n0 + BLOCK_N - 1 - diag, BLOCK_M) * BLOCK_M,
                                               q_lo), q_hi)
    # WINDOWED: query blocks from q_wfull on lose keys of this block to the window (masked again)
    q_wfull = q_hi
    if WINDOWED:
        q_wfull = tl.minimum(tl.maximum(tl.maximum(n0 - diag + window, 0) // BLOCK_M * BLOCK_M, q_full),
                             q_hi)
    if MASK_KIND == 4:
        # packed sequences: the rows that see a key of this block are those of the runs of its first and last keys,
        # [run_first(n0), run_end(last)); a block inside one run [f, e) (and inside K_LEN) is seen whole by the
        # query blocks inside [f, e) past the diagonal and before the window's edge, [q_full, q_wfull): one loop over
        # [q_lo, q_hi) masks only the blocks outside them. (Three loops, as the 2D path's, made an H200's dk / dv
        # kernel 7% slower on bench_packed.py's llama-8k shape than masking every block; one loop, 2-15% faster)
        seg_base = mask_ptr + b * stride_mb
        n_last = tl.minimum(n0 + BLOCK_N, K_LEN) - 1
        run_f = tl.load(seg_base + n0 * stride_mm)
        run_e = tl.load(seg_base + stride_mk + n0 * stride_mm)
        rows_end = tl.load(seg_base + stride_mk + n_last * stride_mm)
        q_lo = tl.maximum(q_lo, run_f // BLOCK_M * BLOCK_M)
        q_hi = tl.maximum(tl.minimum(q_hi, rows_end), q_lo)
        full_from = tl.cdiv(run_f, BLOCK_M) * BLOCK_M
        if CAUSAL:
            full_from = tl.maximum(full_from, tl.cdiv(n0 + BLOCK_N - 1 - diag, BLOCK_M) * BLOCK_M)
        full_to = run_e // BLOCK_M * BLOCK_M
        if WINDOWED:
            full_to = tl.minimum(full_to, tl.maximum(n0 - diag + window, 0) // BLOCK_M * BLOCK_M)
        if (run_e != rows_end) | (n0 + BLOCK_N > K_LEN):  # keys of two runs, or past K_LEN: every block masked
            full_from = q_hi
        q_full = tl.minimum(tl.maximum(full_from, q_lo), q_hi)
        q_wfull = tl.minimum(tl.maximum(full_to, q_full), q_hi)

    k = _load_2d(k_ptr + b * stride_kb + hk * stride_kh + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                 col_ok, d_ok, True, BLOCK_D != HEAD_D)
    v = _load_2d(v_ptr + b * stride_vb + hk * stride_vh + cols[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
                 col_ok, dv_ok, True, BLOCK_DV != HEAD_DV)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    seed = start * 0
    if DROPOUT:
        seed = tl.load(seed_ptr)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    for h in range(hk * GROUP, hk * GROUP + GROUP):
        q_base = q_ptr + b * stride_qb + h * stride_qh
        do_base = do_ptr + b * stride_dob + h * stride_doh
        lse_base = lse_ptr + (b * H + h) * Q_LEN
        delta_base = delta_ptr + (b * H + h) * Q_LEN
        mask_base = mask_ptr + b * stride_mb + h * stride_mh
        if MASK_KIND == 4:  # one loop, masking the blocks outside [q_full, q_wfull)
            dk, dv = _dkdv_blocks(dk, dv, k, v, q_base, do_base, lse_base, delta_base, mask_base, cols, offs_m,
                                  offs_d, offs_dv, stride_qm, stride_qd, stride_dom, stride_dod, stride_mm, stride_mk,
                                  stride_lp, q_lo, q_hi, q_full, q_wfull, start, end, has_holes, Q_LEN, K_LEN,
                                  qk_scale, threshold, seed, b * H + h, n0, drop_thr, keep_scale, window, softcap, 2,
                                  MASK_KIND, CAUSAL, BLOCK_M, BLOCK_N, HEAD_D, BLOCK_D, HEAD_DV, BLOCK_DV, UPCAST,
                                  DOT_PREC, FOLD, DROPOUT, WINDOWED, SOFTCAP)
        else:
            h_lo = q_lo
            h_full = q_full
            if B4D:  # (a 4D mask: q_full is q_hi, every visited block masked)
                r_first, r_end = _mask_row_bounds(ranges_ptr, b, h, n0, H, Q_LEN, K_LEN, B4D_PER_B, B4D_PER_H,
                                                  B4D_SPAN > 0, BLOCK_N // 16, 16)
                h_lo = tl.maximum(q_lo, r_first // BLOCK_M * BLOCK_M)
                h_full = tl.maximum(tl.minimum(q_full, r_end), h_lo)
            dk, dv = _dkdv_blocks(dk, dv, k, v, q_base, do_base, lse_base, delta_base, mask_base, cols, offs_m,
                                  offs_d, offs_dv, stride_qm, stride_qd, stride_dom, stride_dod, stride_mm, stride_mk,
                                  stride_lp, h_lo, h_full, 0, 0, start, end, has_holes, Q_LEN, K_LEN, qk_scale,
                                  threshold, seed, b * H + h, n0, drop_thr, keep_scale, window, softcap, True,
                                  MASK_KIND, CAUSAL, BLOCK_M, BLOCK_N, HEAD_D, BLOCK_D, HEAD_DV, BLOCK_DV, UPCAST,
                                  DOT_PREC, FOLD, DROPOUT, WINDOWED, SOFTCAP)
            dk, dv = _dkdv_blocks(dk, dv, k, v, q_base, do_base, lse_base, delta_base, mask_base, cols, offs_m,
                                  offs_d, offs_dv, stride_qm, stride_qd, stride_dom, stride_dod, stride_mm, stride_mk,
                                  stride_lp, q_full, q_wfull, 0, 0, start, end, has_holes, Q_LEN, K_LEN, qk_scale,
                                  threshold, seed, b * H + h, n0, drop_thr, keep_scale, window, softcap, False,
                                  MASK_KIND, CAUSAL, BLOCK_M, BLOCK_N, HEAD_D, BLOCK_D, HEAD_DV, BLOCK_DV, UPCAST,
                                  DOT_PREC, FOLD, DROPOUT, WINDOWED, SOFTCAP)
            if WINDOWED:
                dk, dv = _dkdv_blocks(dk, dv, k, v, q_base, do_base, lse_base, delta_base, mask_base, cols, offs_m,
                                      offs_d, offs_dv, stride_qm, stride_qd, stride_dom, stride_dod, stride_mm,
                                      stride_mk, stride_lp, q_wfull, q_hi, 0, 0, start, end, has_holes, Q_LEN, K_LEN,
                                      qk_scale, threshold, seed, b * H + h, n0, drop_thr, keep_scale, window, softcap,
                                      True, MASK_KIND, CAUSAL, BLOCK_M, BLOCK_N, HEAD_D, BLOCK_D, HEAD_DV, BLOCK_DV,
                                      UPCAST, DOT_PREC, FOLD, DROPOUT, WINDOWED, SOFTCAP)
    dk = dk * sm_scale
    ok = col_ok[:, None] & d_ok[None, :]
    tl.store(dk_ptr + b * stride_dkb + hk * stride_dkh + cols[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
             dk.to(dk_ptr.dtype.element_ty), mask=ok)
    tl.store(dv_ptr + b * stride_dvb + hk * stride_dvh + cols[:, None] * stride_dvn + offs_dv[None, :] * stride_dvd,
             dv.to(dv_ptr.dtype.element_ty), mask=col_ok[:, None] & dv_ok[None, :])


@triton.jit
def _dq_blocks(dq, q, do, lse, res, delta, k_base, v_base, mask_base, rows, offs_n, offs_d, offs_dv,
               stride_kn, stride_kd, stride_vn, stride_vd, stride_mm, stride_mk,
               lo, hi, start, end, has_holes, Q_LEN, K_LEN, qk_scale, threshold, seed, bh, drop_thr, keep_scale,
               window, softcap, MASKED: tl.constexpr, MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr,
               BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DV: tl.constexpr,
               BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr, FOLD: tl.constexpr,
               DROPOUT: tl.constexpr, WINDOWED: tl.constexpr, SOFTCAP: tl.constexpr):
    """Accumulate ``dq`` of one query block over key blocks ``[lo, hi)``."""
    d_ok = offs_d < HEAD_D
    dv_ok = offs_dv < HEAD_DV
    for n0 in range(lo, hi, BLOCK_N):
        cols = n0 + offs_n
        col_ok = cols < K_LEN
        kt = _load_2d(k_base + offs_d[:, None] * stride_kd + cols[None, :] * stride_kn, d_ok, col_ok,
                      BLOCK_D != HEAD_D, MASKED)
        vt = _load_2d(v_base + offs_dv[:, None] * stride_vd + cols[None, :] * stride_vn, dv_ok, col_ok,
                      BLOCK_DV != HEAD_DV, MASKED)
        if UPCAST:
            kt = kt.to(tl.float32)
            vt = vt.to(tl.float32)
        s = tl.dot(q, kt, input_precision=DOT_PREC)
        if SOFTCAP:
            t = _tanh(s * qk_scale)
            s = t * softcap
        elif not FOLD:
            s = s * qk_scale
        if MASKED:
            s = _mask_scores(s, rows[:, None], cols[None, :], start, end, has_holes, mask_base, stride_mm,
                             stride_mk, Q_LEN, K_LEN, threshold, window, MASK_KIND, CAUSAL, WINDOWED, False)
        if MASK_KIND == 3:  # additive mask (never FOLD): the residual too, see the module docstring
            p = tl.math.exp2((s - lse[:, None]) - res[:, None])
        elif FOLD:
            p = tl.math.exp2(s * qk_scale - lse[:, None])
        else:
            p = tl.math.exp2(s - lse[:, None])
        dp = tl.dot(do, vt, input_precision=DOT_PREC)
        if DROPOUT:
            dp = tl.where(_dropout_keep(seed, bh, rows, n0, drop_thr, BLOCK_N), dp * keep_scale, 0.0)
        ds = p * (dp - delta[:, None])
        if SOFTCAP:
            ds = ds * (1.0 - t * t)
        dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=DOT_PREC)
    return dq


@fast_launch
@triton.jit
def _bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, mask_ptr, ranges_ptr, seed_ptr,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    stride_mb, stride_mh, stride_mm, stride_mk,
    stride_lp,
    H, GROUP, Q_LEN, K_LEN, sm_scale, qk_scale, threshold, drop_thr, keep_scale, window, softcap,
    MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, BH_FIRST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DV: tl.constexpr,
    BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr, WIDE: tl.constexpr, FOLD: tl.constexpr,
    DROPOUT: tl.constexpr,
    WINDOWED: tl.constexpr, SOFTCAP: tl.constexpr,
    B4D: tl.constexpr, B4D_PER_B: tl.constexpr, B4D_PER_H: tl.constexpr, B4D_SPAN: tl.constexpr,
):
    """One query block of one head; visits the same key blocks as the forward (``B4D``: within a 4D mask's key
    bounds, as the forward)."""
    if BH_FIRST:
        bh = tl.program_id(0).to(tl.int64)
        pid_m = tl.num_programs(1) - 1 - tl.program_id(1)
    else:
        pid_m = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    hk = h // GROUP
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    if WIDE:
        rows = rows.to(tl.int64)
        offs_n = offs_n.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < Q_LEN
    d_ok = offs_d < HEAD_D
    offs_dv = tl.arange(0, BLOCK_DV)
    dv_ok = offs_dv < HEAD_DV

    mask_base = mask_ptr + b * stride_mb + h * stride_mh
    start, end, has_holes = _key_range(ranges_ptr, b, K_LEN, MASK_KIND)
    if B4D:
        start, end = _mask_bounds(ranges_ptr, b, h, pid_m * BLOCK_M, H, Q_LEN, K_LEN, B4D_PER_B, B4D_PER_H, B4D_SPAN,
                                  16)
    if MASK_KIND == 4:  # as the forward
        start, end, has_holes = _segment_block(mask_base, stride_mm, stride_mk, pid_m * BLOCK_M,
                                               tl.minimum(pid_m * BLOCK_M + BLOCK_M, Q_LEN) - 1, start, end, has_holes)
    s_lo, s_hi, full_lo, full_hi = _block_key_bounds(start, end, has_holes, pid_m * BLOCK_M, 0, 1,
                                                      Q_LEN, K_LEN, window, MASK_KIND, CAUSAL, WINDOWED,
                                                      BLOCK_M, BLOCK_N)
    q = _load_2d(q_ptr + b * stride_qb + h * stride_qh + rows[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                 row_ok, d_ok, True, BLOCK_D != HEAD_D)
    do = _load_2d(do_ptr + b * stride_dob + h * stride_doh + rows[:, None] * stride_dom
                  + offs_dv[None, :] * stride_dod, row_ok, dv_ok, True, BLOCK_DV != HEAD_DV)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(lse_ptr + bh * Q_LEN + rows, mask=row_ok, other=float("inf"))
    res = lse  # the residual, read with an additive mask only
    if MASK_KIND == 3:
        res = tl.load(lse_ptr + stride_lp + bh * Q_LEN + rows, mask=row_ok, other=0.0)
    do = tl.where((lse != float("-inf"))[:, None], do, 0.0)  # a row with nothing kept: see _dkdv_blocks
    lse = tl.where(lse == float("-inf"), float("inf"), lse)  # nothing kept: zero probabilities (see _dkdv_blocks)
    delta = tl.load(delta_ptr + bh * Q_LEN + rows, mask=row_ok, other=0.0)
    k_base = k_ptr + b * stride_kb + hk * stride_kh
    v_base = v_ptr + b * stride_vb + hk * stride_vh
    seed = start * 0
    if DROPOUT:
        seed = tl.load(seed_ptr)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dq = _dq_blocks(dq, q, do, lse, res, delta, k_base, v_base, mask_base, rows, offs_n, offs_d, offs_dv, stride_kn,
                    stride_kd, stride_vn, stride_vd, stride_mm, stride_mk, s_lo, tl.minimum(full_lo, s_hi), start,
                    end, has_holes, Q_LEN, K_LEN, qk_scale, threshold, seed, bh, drop_thr, keep_scale, window,
                    softcap, True, MASK_KIND, CAUSAL, BLOCK_N, HEAD_D, BLOCK_D, HEAD_DV, BLOCK_DV, UPCAST, DOT_PREC,
                    FOLD, DROPOUT, WINDOWED, SOFTCAP)
    dq = _dq_blocks(dq, q, do, lse, res, delta, k_base, v_base, mask_base, rows, offs_n, offs_d, offs_dv, stride_kn,
                    stride_kd, stride_vn, stride_vd, stride_mm, stride_mk, full_lo, full_hi, start, end, has_holes,
                    Q_LEN, K_LEN, qk_scale, threshold, seed, bh, drop_thr, keep_scale, window, softcap, False,
                    MASK_KIND, CAUSAL, BLOCK_N, HEAD_D, BLOCK_D, HEAD_DV, BLOCK_DV, UPCAST, DOT_PREC, FOLD, DROPOUT,
                    WINDOWED, SOFTCAP)
    dq = _dq_blocks(dq, q, do, lse, res, delta, k_base, v_base, mask_base, rows, offs_n, offs_d, offs_dv, stride_kn,
                    stride_kd, stride_vn, stride_vd, stride_mm, stride_mk, tl.maximum(full_lo, full_hi), s_hi, start,
                    end, has_holes, Q_LEN, K_LEN, qk_scale, threshold, seed, bh, drop_thr, keep_scale, window,
                    softcap, True, MASK_KIND, CAUSAL, BLOCK_N, HEAD_D, BLOCK_D, HEAD_DV, BLOCK_DV, UPCAST, DOT_PREC,
                    FOLD, DROPOUT, WINDOWED, SOFTCAP)
    dq = dq * sm_scale
    tl.store(dq_ptr + b * stride_dqb + h * stride_dqh + rows[:, None] * stride_dqm + offs_d[None, :] * stride_dqd,
             dq.to(dq_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


# ---------------------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------------------

_SM_COUNT = {}
SPLIT_MIN_K = 1024  # decode rows shorter than this are never split across programs
FWD_MERGE_TAIL = True  # forward: interior and trailing key blocks in one loop (see _fwd_blocks)
# grouped-query decoding: one program per key/value head for its query heads' rows (see _attn_fwd_kernel's PACK).
# On by default since an H100 timed it (NOTES.md, twenty-ninth session: GQA decode over 8192 keys 0.102 ms packed
# against 0.181 unpacked, `bash evals/gpu_session.sh pack28`); HF_MASKED_SOFTMAX_GQA_PACK=0 turns it off
GQA_PACK = os.environ.get("HF_MASKED_SOFTMAX_GQA_PACK", "1") != "0"
# the kernels visit only the blocks inside a 4D mask's bounds (masks.mask_bounds, computed by ops._kernel_mask_args);
# HF_MASKED_SOFTMAX_MASK4D_BOUNDS=0 turns that off (every block then reads its mask tile)
MASK4D_BOUNDS = os.environ.get("HF_MASKED_SOFTMAX_MASK4D_BOUNDS", "1") != "0"
FWD_MAXNREG = None  # forward register cap per thread: None = _fwd_maxnreg's rule, 0 = none, N = cap at N
# the forward kernel runs a head dim that is no power of two (80, 96, 192 ...) as two tiles (see _split_d);
# HF_MASKED_SOFTMAX_SPLIT_HEAD_DIM=0 runs it as one tile padded to the next power of two, as before
SPLIT_HEAD_DIM = os.environ.get("HF_MASKED_SOFTMAX_SPLIT_HEAD_DIM", "1") != "0"
FOLD_MAX_SCALE = 1.0  # the largest scale applied inside the exponent (see _fold); HF's scales are D**-0.5 or 1


def _cdiv(a: int, b: int) -> int:
    # plain Python: triton.cdiv / next_power_of_2 are jit wrappers costing microseconds per call on the host
    return -(-a // b)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


_SMEM_OPTIN = {}


def _smem_optin(device: torch.device) -> int:
    """The most shared memory one program may take on ``device``, in bytes (CUDA's opt-in limit per block: 227 KB on
    Hopper, 163 KB on an A100, 99 KB on Ada); 0 off CUDA, which the launch settings read as "not known"."""
    if device.type != "cuda":
        return 0
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SMEM_OPTIN:
        props = torch.cuda.get_device_properties(idx)
        _SMEM_OPTIN[idx] = int(getattr(props, "shared_memory_per_block_optin", 0) or props.shared_memory_per_block)
    return _SMEM_OPTIN[idx]


# Head dim 256's launch settings by the shared memory they take, in bytes: the most over the mask paths (2D ranges,
# bool 4D with its bounds, additive 4D), causal or not, compiled for sm_90 with Triton 3.4, 3.6 and 3.9 on the CPU
# (evals/sass_attention.py --head-dim 256 --aligned-lengths --config ..., evals/sass_backward.py --head-dim 256
# --aligned --dkdv ... --dq ...). The first that fits the device is taken (the last if none does); with the limit
# not known (0), the setting these tables replaced.
_D256_FWD = (((128, 32, 8, 3), 172032), ((64, 32, 4, 2), 102400), ((64, 32, 4, 1), 53248))
_D256_DKDV = (((64, 64, 8, 2), 214016), ((32, 64, 8, 2), 139776), ((16, 32, 4, 2), 54528))
_D256_DQ = (((64, 16, 4, 3), 117248), ((32, 16, 4, 2), 54272))
# fp32 tiles take twice the bytes: head dim 256's prefill and the decode path at head dims above 64 drop a pipeline
# stage, head dim 256's backward takes 16-row, 16-key blocks, on cards with less than the measured need (99 KB on Ada)
_D256_FWD_FP32 = (((32, 32, 4, 2), 107008), ((32, 32, 4, 1), 69888))
_D256_BWD_FP32 = ((((16, 32, 4, 2), 119040), ((16, 16, 4, 2), 84224)),  # dkdv
                  (((32, 16, 4, 2), 102400), ((16, 16, 4, 2), 67584)))  # dq
_DECODE_FP32 = {128: (((16, 64, 4, 3), 151808), ((16, 64, 4, 2), 82176)),
                256: (((16, 32, 4, 3), 153856), ((16, 32, 4, 2), 86272))}


def _fitting(settings, smem: int, unknown):
    """The first of ``settings`` ((setting, shared memory) pairs) that fits ``smem`` bytes; ``unknown`` when 0."""
    if not smem:
        return unknown
    return next((cfg for cfg, need in settings if need <= smem), settings[-1][0])


def _block_d(D: int) -> int:
    return max(16, _next_pow2(D))


def _split_d(D: int, values: bool = False, decode: bool = False) -> tuple[int, int]:
    """The forward kernel's tiles over a head dim of ``D`` columns: ``(BLOCK_D, D_TAIL)``. ``D_TAIL`` 0: one tile of
    ``_block_d(D)`` columns, its columns past ``D`` masked. Otherwise (``SPLIT_HEAD_DIM``, ``D`` the sum of two powers
    of two of at least 16) those two tiles, every column of both valid: 48 as 32 + 16, 80 as 64 + 16, 96 as 64 + 32,
    144, 160, 192 as 128 + 64 (multi-head latent attention's queries and keys), where one tile did 64, 128, 128, 256,
    256 and 256 columns of products. ``values``: the values' and output's head dim (else the
    queries' and keys'); ``decode``: for a decode step. A decode step keeps the values in one tile: on an H100
    (``evals/bench_head_dims.py``, 6be88ff) Phi-3's decode step took 0.2184 ms with both head dims in two tiles,
    0.2070 with the keys' alone and 0.2052 with neither, while DeepSeek-V2-Lite's (keys 192, values 128) took 0.1707
    with the keys in two tiles against 0.1836."""
    whole = _block_d(D)
    if not SPLIT_HEAD_DIM or whole == D or D <= 16 or (values and decode):
        return whole, 0
    head = whole // 2
    tail = _block_d(D - head)
    # only where the second tile is all valid columns too (D the sum of two powers of two, 16 or more each): with
    # Triton 3.6 on an H100, a 16-column second value tile with masked columns (48 with 40-wide values, 40) gave NaN
    # or wrong values in its valid columns with 64-key blocks (the launcher's settings at these head dims), and an
    # illegal memory access with fewer pipeline stages; evals/probe_split_d.py --masked-tails, and a small kernel
    # alone, evals/repro_masked_dot.py (NOTES.md, forty-third and forty-fourth sessions). 48, 80, 96, 144, 160 and
    # 192 matched the fp64 reference on every mask path
    return (head, tail) if head + tail == D else (whole, 0)


def _fwd_config(D: int, Q: int, dtype: torch.dtype, decode: bool, causal: bool, dropout: bool = False,
                smem: int = 0):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the forward kernel. D <= 64 entries measured on an H100
    (evals/bench_attention.py --tune-only); causal prefers smaller query blocks (less work on the diagonal). With
    dropout at D <= 64, the fastest of 12 settings on an H200 for both GPT-2's and BERT's shapes
    (``evals/tune_attention.py --dropout 0.1 --stages 3``, 2026-12-03): BERT 0.1729 -> 0.1385 ms, GPT-2
    0.0946 -> 0.0907 ms (the random numbers' registers favour narrow key blocks). ``smem``: the device's shared memory
    per program (``_smem_optin``; 0 = not known), which picks among head dim 256's settings."""
    if _INTERPRET:
        return 16, 16, 4, 1
    bd = _block_d(D)
    if decode:
        setting = (16, 64 if bd <= 128 else 32, 4, 3)
        return _fitting(_DECODE_FP32[bd], smem, setting) if dtype == torch.float32 and bd > 64 else setting
    if dtype == torch.float32:
        if bd > 128:
            return _fitting(_D256_FWD_FP32, smem, (32, 32, 4, 2))
        return (64, 32, 4, 2) if bd <= 64 else (32, 32, 4, 2)
    if bd <= 64 and dropout:
        return 64, 32, 4, 3
    if bd <= 64:
        # not causal: 128-row blocks over two warpgroups, with the register cap of _fwd_maxnreg
        return (64, 64, 4, 3) if causal else (128, 64, 8, 3)
    if bd <= 128:
        # one warpgroup and 32-key blocks, from 24 settings (two and three stages) on an H100
        # (evals/tune_attention.py --head-dim 128 --what fwd --stages 2,3, 2026-12-06), against (128, 64, 8, 3):
        # GPT-2's padded causal shape 0.0964 -> 0.0903 ms (the fastest), without padding 0.1006 -> 0.0940 (the
        # fastest), BERT's 0.1518 -> 0.1398. BERT's fastest, 128-row blocks (128, 32, 4, 3) at 0.1363, spills with a
        # 4D mask (24-88 B of stack with Triton 3.6, 248-280 B with 3.9) and with 3.9 even without one
        # (evals/sass_attention.py --head-dim 128): 64 rows compile without spills on every path
        return 64, 32, 4, 3
    if dropout:  # (128, 32, 8, 3) spills with dropout's random numbers (16-144 B of stack, sm_90)
        return _fitting(_D256_FWD[1:], smem, (64, 32, 4, 2))
    # head dim 256: 128-row blocks over two warpgroups where they fit (H100, evals/tune_attention.py --head-dim 256
    # --what fwd --stages 2,3, 2026-12-06): GPT-2's padded causal shape 0.1968 -> 0.1813 ms, BERT's 0.2825 ->
    # 0.2677, against (64, 32, 4, 2); no stack on any mask path. Cards with less shared memory take smaller tiles
    return _fitting(_D256_FWD, smem, (64, 32, 4, 2))


def _fwd_maxnreg(D: int, dtype: torch.dtype, decode: bool, causal: bool, block_m: int, warps: int) -> dict:
    """Launch options capping the forward's registers per thread (``{}``: the compiler's choice), for prefill at
    D <= 64 in fp16 / bf16, so that more programs share a multiprocessor. Measured on an H200
    (evals/tune_attention.py --variants, 2026-12-02):

    * causal, 64-row blocks of 4 warps, 168 registers (three programs per multiprocessor): GPT-2's padded shape
      0.0523 -> 0.0484 ms;
    * not causal, 128-row blocks of 8 warps, 128 registers (two programs): BERT's shape 0.0973 -> 0.0744 ms, against
      0.0782 ms for the uncapped 4-warp blocks that were the default before (caps on those made them slower)."""
    if FWD_MAXNREG is not None:
        return {"maxnreg": FWD_MAXNREG} if FWD_MAXNREG else {}
    if _INTERPRET or decode or dtype == torch.float32 or _block_d(D) > 64:
        return {}
    if causal and block_m == 64 and warps == 4:
        return {"maxnreg": 168}
    if not causal and block_m == 128 and warps == 8:
        return {"maxnreg": 128}
    return {}


def _bwd_config(D: int, dtype: torch.dtype, causal: bool = False, dropout: bool = False, smem: int = 0):
    """Launch settings of the two backward kernels, each ``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` in that
    kernel's own terms: ``dkdv`` keeps ``BLOCK_N`` keys resident and walks query blocks of ``BLOCK_M``; ``dq`` keeps
    ``BLOCK_M`` queries resident and walks key blocks of ``BLOCK_N``. With dropout, ``dkdv``'s 128 resident keys
    spill registers: BERT's backward took 1.018 ms with them and 0.3995 ms with 64 (H200, ``evals/tune_attention.py
    --dropout 0.1 --stages 3``, 2026-12-03; the causal setting was already the fastest for GPT-2). ``smem`` as for
    ``_fwd_config``."""
    if _INTERPRET:
        return (16, 16, 4, 1), (16, 16, 4, 1)
    bd = _block_d(D)
    if dtype == torch.float32 and bd > 128:
        return _fitting(_D256_BWD_FP32[0], smem, (16, 32, 4, 2)), _fitting(_D256_BWD_FP32[1], smem, (32, 16, 4, 2))
    if dtype == torch.float32 or bd > 128 and dropout:
        return (16, 32, 4, 2), (32, 16, 4, 2)
    if bd > 128:
        # every dkdv setting spills registers at head dim 256; the widest tiles that fit the device still win (H100,
        # evals/tune_attention.py --head-dim 256 --what fwd,dkdv,dq --stages 2,3, 2026-12-06): dkdv (64, 64, 8, 2)
        # and dq (64, 16, 4, 3) on GPT-2's padded causal shape 0.786 ms against 1.670 for ((16, 32, 4, 2),
        # (32, 16, 4, 2)). dq (128, 32, 8, 3) was 5% faster still but needs 232 KB with an additive mask, more than
        # an H100 has
        return _fitting(_D256_DKDV, smem, (16, 32, 4, 2)), _fitting(_D256_DQ, smem, (32, 16, 4, 2))
    if bd <= 64 and dropout:
        return (32, 64, 4, 3), (64, 32, 4, 3)
    if bd <= 64:
        # the fastest of 36 settings per kernel on an H200 (evals/tune_attention.py, 2026-12-02): GPT-2's causal
        # shape 0.192 -> 0.154 ms, BERT's 0.322 -> 0.247 ms for the whole backward
        return (32, 64, 4, 3) if causal else (32, 128, 4, 3), (64, 32, 4, 3)
    # D <= 128: one warpgroup, three stages, the fastest of 24 settings per kernel on an H100 (evals/tune_attention.py
    # --head-dim 128 --what dkdv,dq --stages 2,3, 2026-12-06): the whole backward on GPT-2's padded causal shape
    # 0.7020 -> 0.2962 ms, on BERT's 1.1591 -> 0.4799 (its dq within 0.3% of the best, (64, 64, 4, 2)), against
    # ((32, 64, 8, 2), (64, 32, 8, 2)); SDPA's default without a mask 0.2622 / 0.4461 in the same run
    return (32, 64, 4, 3), (64, 32, 4, 3)


GRID_YZ_MAX = 65535  # CUDA's limit on grid axes 1 and 2 (axis 0 takes up to 2**31 - 1)


def _bh_first(causal: bool, bh: int, blocks: int) -> bool:
    """Grid order of ``bh`` (batch x head) programs times ``blocks`` query or key blocks: (batch x head) on axis 0
    for causal (heaviest blocks first), else the blocks on axis 0 (L2 reuse of one head's tensors); either way the
    count on axis 1 must stay within CUDA's 65535 (a long sequence's blocks, or a large batch's heads, go first)."""
    first = causal
    if first and blocks > GRID_YZ_MAX:
        first = False
    elif not first and bh > GRID_YZ_MAX:
        first = True
    if (blocks if first else bh) > GRID_YZ_MAX:
        raise ValueError(f"batch x heads = {bh} and {blocks} blocks of the sequence both exceed the GPU's 65535 "
                         "programs per grid axis; split the batch")
    return first


def _mask_args(kind, mask_t, dummy):
    """(pointer tensor, 4 strides [b, h, q, k]) for the kernels' mask arguments."""
    if kind == _K_BOOL or kind == _K_ADD:
        return mask_t, tuple(mask_t.stride())
    if kind == _K_RANGE:
        return mask_t, (mask_t.stride(0), 0, 0, mask_t.stride(1))
    if kind == _K_SEG:  # [2, B, L] runs: the planes' distance where a 4D mask has its key stride
        return mask_t, (mask_t.stride(1), 0, mask_t.stride(2), mask_t.stride(0))
    return dummy, (0, 0, 0, 0)


def _num_splits(B, H, Q, K, block_m, block_n, device) -> int:
    # Splitting costs a second launch and fp32 partials: on an H100 a B32 H12 step (384 programs) ran fastest
    # unsplit, so split only when there are fewer than two programs per multiprocessor.
    programs = B * H * _cdiv(Q, block_m)
    target = 2 * _sm_count(device)
    if programs == 0 or programs >= target or K < SPLIT_MIN_K:
        # short rows: the second launch costs more host time than the split saves on the GPU (generate() is
        # host-bound at these lengths)
        return 1
    # at least two key blocks per split, so the combine stays cheap next to the work
    return max(1, min(_cdiv(target, programs), _cdiv(K, 2 * block_n), 64))


def _wide(*tensors) -> bool:
    """Whether an element offset inside any of ``tensors`` (views included) can reach 2**31: then the kernels do
    their index math in int64 (a compile-time switch, so ordinary sizes keep the cheaper int32 math)."""
    for t in tensors:
        if t is None:
            continue
        try:
            # offsets inside a storage are below its size: the fast check (~2 us for five tensors on a CPU where the
            # exact sum below takes ~13)
            if t.untyped_storage().nbytes() < 2**31:
                continue
        except (RuntimeError, NotImplementedError):  # no real storage (meta / fake tensors): the exact check
            pass
        if sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride()) if n) >= 2**31 - 1:
            return True
    return False


def _fold(kind: int, scale: float) -> bool:
    """Whether the kernels may apply the scale inside the exponent (``FOLD``): it must commute with the row max
    (positive), an additive mask is added to already scaled scores, and it must be at most ``FOLD_MAX_SCALE``. Folded,
    a row's largest score gives ``exp2(fma(s, c, -round(s * c)))``, 2 to the power of the product's rounding error,
    instead of exactly 1: an error of up to half an ulp of the scaled score in the exponent. That is nothing for the
    scores a scale of at most 1 gives, but past 2**31 (a scale of 1e30 on an H200, 2026-12-02) exp2 overflows and the
    row turns NaN; larger scales keep their own multiply. (A soft-cap applies the scale inside its tanh: the plans
    never fold then.)"""
    return kind != _K_ADD and 0.0 < scale <= FOLD_MAX_SCALE


def _score_scales(scale: float, softcap: float) -> tuple[float, float]:
    """The kernels' ``(qk_scale, softcap)`` arguments: ``(scale * log2(e), 0)`` without a soft-cap (scores in base-2
    units straight from the product), else ``(scale / softcap, softcap * log2(e))``: the product times the first is
    the tanh's argument, and the tanh times the second the capped score in base-2 units."""
    if not softcap:
        return scale * _LOG2E, 0.0
    return scale / softcap, softcap * _LOG2E


def _is_decode(Q: int) -> bool:
    """Short query blocks (and possibly split keys) for a few queries: generation steps."""
    return Q <= 16


def _kernel_window(causal, window: int):
    """``(CAUSAL, window)`` as the kernels take them: a window without causality (bidirectional: query ``i`` sees keys
    ``|j - (i + K - Q)| < W``) is causality moved ``W - 1`` keys right (``CAUSAL`` 2, :func:`_diag`) with a window of
    ``2 W - 1`` keys; anything else as it is."""
    if window and not causal:
        return 2, 2 * window - 1
    return bool(causal), window


def _policy():
    """The module-level settings and functions a launch plan is derived from: part of every plan's key, so that
    changing one (the tuning scripts and tests do, to force a path) gets a new plan. Held by the key, so a replaced
    function's id cannot be reused while its plans exist."""
    return (_fwd_config, _fwd_maxnreg, _num_splits, _is_decode, _wide, _fold, _bh_first, _block_d, _sm_count,
            _bwd_config, _split_d, FWD_MERGE_TAIL, FWD_MAXNREG, SPLIT_HEAD_DIM, GQA_PACK, MASK4D_BOUNDS, SPLIT_MIN_K,
            FOLD_MAX_SCALE, GRID_YZ_MAX, _attn_fwd_kernel,
            _split_combine_kernel, _bwd_delta_kernel, _bwd_dkdv_kernel, _bwd_dq_kernel, _hopper.ENABLED,
            _hopper.CURSOR_REGS, _hopper.CAUSAL_OK, _hopper.SPLIT_LOOP, _hopper.BLOCK_M, _hopper.BLOCK_N,
            _hopper.WARPS, _hopper.PER_SM, _hopper.FINE_BLOCK_M, _hopper.FINE_PER_SM, _hopper.STAGES,
            _hopper.MIN_TILES_PER_SM, _hopper.SMALL_CALLS, _hopper.RUNTIME_COUNTS, _hopper.RUNTIME_ALL, _hopper.usable,
            _hopper.WIDE_HEADS, _hopper.WIDE_BLOCK_M, _hopper.WIDE_BLOCK_N, _hopper.WIDE_PER_SM, _hopper.SINKS_OK)


DROPOUT_BITS = 16  # dropout compares a 16-bit random number per score with round(p * 2**16)


def dropout_threshold(p: float) -> tuple[int, float]:
    """``(drop_thr, keep_scale)`` for dropout probability ``p`` in [0, 1]: a score is dropped iff its 16-bit random
    number is below ``drop_thr = round(p * 65536)``, so the probability applied is ``drop_thr / 65536`` (within
    2**-17 of ``p``), and kept ones are scaled by ``keep_scale = 1 / (1 - drop_thr / 65536)``, which keeps the
    expectation exact for the probability applied (0 when everything is dropped)."""
    thr = int(round(p * (1 << DROPOUT_BITS)))
    return thr, _keep_scale(thr)


def _keep_scale(drop_thr: int) -> float:
    full = 1 << DROPOUT_BITS
    return full / (full - drop_thr) if drop_thr < full else 0.0


_PLANS: dict = {}
_MAX_PLANS = 256  # a decoding step adds one (its key length); cleared when full


def _bounds_constexprs(mask_t, block_m) -> dict:
    """The kernels' constexprs for a 4D mask's bounds (``masks.mask_bounds``; ``mask_t`` None: none): one entry per
    batch entry and per head where the mask differs between them; ``B4D_SPAN`` the 16-row chunks of a ``block_m``-row
    query block (0: the mask has one chunk of rows, a bound for all rows)."""
    if mask_t is None:
        return dict(B4D=False, B4D_PER_B=False, B4D_PER_H=False, B4D_SPAN=0)
    layout = _masks.segment_layout(mask_t) if mask_t.dim() == 3 else _masks.bounds_layout(mask_t)
    span = 0 if layout.chunks == 1 else max(1, block_m // _masks.BOUNDS_CHUNK)
    return dict(B4D=True, B4D_PER_B=layout.per_b > 1, B4D_PER_H=layout.per_h > 1, B4D_SPAN=span)


class _ForwardPlan:
    """Everything ``_forward`` derives from its arguments' shapes, strides, dtypes, device and scalars (block sizes,
    split count, grid, the kernels' scalar arguments and constexprs), computed once per such signature: a call then
    allocates its outputs and launches. Generation calls attention with one signature in every layer of a step."""

    def __init__(self, q, k, v, kind, mask_t, threshold, causal, scale, need_lse=True, drop_thr=0, window=0,
                 bounded=False, softcap=0.0, sinks=False):
        causal, window = _kernel_window(causal, window)
        B, H, Q, D = q.shape
        Hkv, K, Dv = k.shape[1], k.shape[2], v.shape[3]  # Dv: D but where the values are narrower (MLA)
        decode = _is_decode(Q)
        Dt = max(D, Dv)  # the widest tile picks the launch settings
        block_m, block_n, warps, stages = _fwd_config(Dt, Q, q.dtype, decode, causal, drop_thr > 0,
                                                      _smem_optin(q.device))
        # a window: each row reads at most `window` keys (the splits divide its own range, see _block_key_bounds)
        split_k = min(K, window + block_m) if window else K
        group = H // Hkv
        # grouped-query decoding packs a key/value head's query heads into one tile (PACK): no dropout (its random
        # numbers are drawn per head), no 4D mask that differs between heads (a tile reads its first head's rows;
        # HF's masks broadcast over heads: stride 0), every query in one block of rows
        shared_mask = kind in (_K_NONE, _K_RANGE, _K_SEG) or mask_t.stride(1) == 0
        pack = GQA_PACK and decode and group > 1 and not drop_thr and shared_mask and Q <= block_m
        prog_heads, prog_rows = (Hkv, group * Q) if pack else (H, Q)
        self.splits = num_splits = (_num_splits(B, prog_heads, prog_rows, split_k, block_m, block_n, q.device)
                                    if decode else 1)
        self.out_shape, self.lse_shape = (B, Q, H, Dv), (2, B, H, Q)
        self.empty = B * Q * H * D * Dv == 0
        self.dtype, self.device = q.dtype, q.device
        self.uses_mask = kind in (_K_RANGE, _K_BOOL, _K_ADD, _K_SEG)
        self.need_lse = need_lse  # inference does not keep the log-sum-exp: neither allocated nor stored
        # the strides of the tensors this plan allocates: out is [B, H, Q, Dv] over [B, Q, H, Dv] memory
        out_strides = (Q * H * Dv, Dv, H * Dv, 1)
        if num_splits == 1:
            ostr, lstr = (0,) + out_strides, 0
        else:
            self.part_shapes = ((num_splits, B, H, Q, Dv), (num_splits, 2, B, H, Q))
            ostr, lstr = (B * H * Q * Dv, H * Q * Dv, Q * Dv, Dv, 1), 2 * B * H * Q
        mstr = _mask_args(kind, mask_t, q)[1]
        upcast = _INTERPRET and q.dtype == torch.bfloat16
        prec = "ieee" if (q.dtype == torch.float32 or upcast) else "tf32"
        bh_first = _bh_first(causal, B * prog_heads, _cdiv(prog_rows, block_m))
        grid = ((B * prog_heads, _cdiv(prog_rows, block_m), num_splits) if bh_first
                else (_cdiv(prog_rows, block_m), B * prog_heads, num_splits))
        # what this plan allocates is contiguous: its largest offset is its size minus one
        wide = _wide(q, k, v, mask_t) or num_splits * B * H * Q * Dv >= 2**31
        self.dropout = drop_thr > 0
        qk_scale, cap = _score_scales(scale, softcap)
        (bd, d_tail), (bdv, dv_tail) = _split_d(D, False, decode), _split_d(Dv, True, decode)
        scalars = (*q.stride(), *k.stride(), *v.stride(), *ostr, lstr, B * H * Q, *mstr,
                   H, H // Hkv, Q, K, num_splits, qk_scale, threshold, drop_thr, _keep_scale(drop_thr), window, cap)
        constexprs = dict(
            MASK_KIND=kind, CAUSAL=causal, BH_FIRST=bh_first, BLOCK_M=block_m, BLOCK_N=block_n, HEAD_D=D,
            BLOCK_D=bd, D_TAIL=d_tail, HEAD_DV=Dv, BLOCK_DV=bdv, DV_TAIL=dv_tail, UPCAST=upcast, DOT_PREC=prec,
            WIDE=wide,
            FOLD=not softcap and _fold(kind, scale),
            MERGE_TAIL=FWD_MERGE_TAIL, STORE_LSE=need_lse or num_splits > 1, DROPOUT=self.dropout,
            WINDOWED=window > 0, PACK=pack, SOFTCAP=softcap > 0, SINK=sinks and num_splits == 1,
            **_bounds_constexprs(mask_t if bounded else None, block_m),
            num_warps=warps, num_stages=stages,
            # dropout's random numbers need more registers than the caps leave (ptxas spills under them)
            **({} if self.dropout else _fwd_maxnreg(Dt, q.dtype, decode, causal, block_m, warps)),
        )
        self.launch = bind(_attn_fwd_kernel, grid, scalars, constexprs)
        # inference on an H100 / H200 (when it applies: see _hopper): the Gluon kernel instead
        self.hopper = None
        if (not (window or softcap or (sinks and not _hopper.SINKS_OK) or Dv != D)
                and _hopper.usable(q, k, v, kind, causal, _fold(kind, scale), need_lse, drop_thr, num_splits,
                                   _sm_count(q.device))):
            self.hopper = _hopper.HopperForward(q, k, v, kind, causal, scale, _sm_count(q.device), sinks=sinks)
        if num_splits > 1:
            self.combine = bind(
                _split_combine_kernel, (B * H, Q),
                (ostr[0], lstr, B * H * Q, *out_strides, H, Q, num_splits),
                dict(HEAD_D=Dv, BLOCK_D=_block_d(Dv), BLOCK_S=max(2, _next_pow2(num_splits)), STORE_LSE=need_lse,
                     SINK=sinks, num_warps=1),
            )

    def __call__(self, q, k, v, mask_t, ranges, seed=None, sinks=None):
        out = torch.empty(self.out_shape, dtype=self.dtype, device=self.device).transpose(1, 2)
        lse = torch.empty(self.lse_shape, dtype=torch.float32, device=self.device) if self.need_lse else None
        if self.empty:
            return out, lse
        mask_arg = mask_t if self.uses_mask else q
        ranges_arg = ranges if ranges is not None else q
        lse_arg = lse if lse is not None else q  # a pointer the kernels never write through (STORE_LSE off)
        seed_arg = seed if self.dropout else q
        sink_arg = sinks if sinks is not None else q
        if self.hopper is not None:
            self.hopper(q, k, v, out, mask_t, ranges, sinks)
        elif self.splits == 1:
            self.launch(q, k, v, out, lse_arg, mask_arg, ranges_arg, seed_arg, sink_arg)
        else:
            o_part = torch.empty(self.part_shapes[0], dtype=torch.float32, device=self.device)
            l_part = torch.empty(self.part_shapes[1], dtype=torch.float32, device=self.device)
            self.launch(q, k, v, o_part, l_part, mask_arg, ranges_arg, seed_arg, sink_arg)
            self.combine(o_part, l_part, out, lse_arg, sink_arg)
        return out, lse


def _forward(q, k, v, kind, mask_t, ranges, threshold, causal, scale, need_lse=True, signature=None, drop_thr=0,
             seed=None, window=0, softcap=0.0, sinks=None):
    """``(out, lse)``: ``lse`` holds each row's log-sum-exp and its rounding residual, ``[2, B, H, Q]`` fp32 (see the
    module docstring), None when not ``need_lse`` (inference). ``signature``: the caller's key for
    everything the plan depends on but pointer alignment, dropout and the module's settings (``ops`` passes its
    validated call signature), so that the key is not built twice per call. ``drop_thr > 0``: dropout (see
    :func:`dropout_threshold`) with the Philox key in ``seed``, a one-element int64 tensor on q's device; the
    log-sum-exp then stays that of the probabilities before dropout. ``window > 0``: with ``causal`` row ``i`` sees
    only keys ``j > i + K - Q - window`` (a sliding window), without it only ``|j - (i + K - Q)| < window``
    (:func:`_kernel_window`); ``attention`` passes 0 for a window no key falls out of. ``softcap > 0``: the scaled
    scores are soft-capped, ``softcap * tanh(s / softcap)``, before the mask.
    ``sinks``: None or each query head's sink logit, fp32 ``[H]`` contiguous (``lse`` then includes it; a row with
    nothing kept keeps ``lse = -inf``)."""
    if signature is None:
        signature = (q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), q.dtype, k.dtype, v.dtype,
                     q.device, kind, None if mask_t is None else (mask_t.shape, mask_t.stride(), mask_t.dtype),
                     ranges is None, threshold, causal, scale)
    key = (signature, need_lse, drop_thr, window, softcap, sinks is None, aligned(q, k, v, mask_t, sinks), _policy())
    plan = _PLANS.get(key)
    if plan is None:
        bounded = ranges is not None and kind in (_K_BOOL, _K_ADD, _K_SEG)  # a 4D mask's key bounds
        plan = _ForwardPlan(q, k, v, kind, mask_t, threshold, causal, scale, need_lse, drop_thr, window, bounded,
                            softcap, sinks is not None)
        remember(_PLANS, key, plan, _MAX_PLANS)
    return plan(q, k, v, mask_t, ranges, seed, sinks)


class _BackwardPlan:
    """What ``_backward`` derives from its arguments' shapes, strides, dtypes, device and scalars (block sizes, grids,
    the three kernels' scalar arguments and constexprs), computed once per such signature, as ``_ForwardPlan`` does
    for the forward: a training step calls the backward with one signature in every layer, and three launches through
    Triton's own path cost more host time than the kernels take on small batches."""

    def __init__(self, do, q, k, v, out, lse, kind, mask_t, threshold, causal, scale, drop_thr=0, window=0,
                 bounded=False, softcap=0.0):
        causal, window = _kernel_window(causal, window)
        B, H, Q, D = q.shape
        Hkv, K = k.shape[1], k.shape[2]
        self.empty = q.numel() == 0 or K == 0  # nothing was attended to: every gradient is zero
        if self.empty:
            return
        Dv = v.shape[3]  # D but where the values are narrower (MLA)
        bd, bdv = _block_d(D), _block_d(Dv)
        kv_cfg, q_cfg = _bwd_config(max(D, Dv), q.dtype, causal, drop_thr > 0, _smem_optin(q.device))
        self.uses_mask = kind in (_K_RANGE, _K_BOOL, _K_ADD, _K_SEG)
        delta_first = _bh_first(False, B * H, _cdiv(Q, 64))
        self.delta = bind(_bwd_delta_kernel, (B * H, _cdiv(Q, 64)) if delta_first else (_cdiv(Q, 64), B * H),
                          (*out.stride(), *do.stride(), H, Q), dict(BH_FIRST=delta_first, BLOCK_M=64, HEAD_D=Dv,
                                                                    BLOCK_D=bdv))
        # the gradients are allocated like q, k, v (empty_like keeps a dense tensor's strides)
        dq, dk, dv = (torch.empty_like(t, device="meta") for t in (q, k, v))
        mstr = _mask_args(kind, mask_t, q)[1]
        upcast = _INTERPRET and q.dtype == torch.bfloat16
        prec = "ieee" if (q.dtype == torch.float32 or upcast) else "tf32"
        self.dropout = drop_thr > 0
        common = dict(MASK_KIND=kind, CAUSAL=causal, HEAD_D=D, BLOCK_D=bd, HEAD_DV=Dv, BLOCK_DV=bdv, UPCAST=upcast,
                      DOT_PREC=prec, WIDE=_wide(q, k, v, do, mask_t), FOLD=not softcap and _fold(kind, scale),
                      DROPOUT=self.dropout, WINDOWED=window > 0, SOFTCAP=softcap > 0)
        qk_scale, cap = _score_scales(scale, softcap)
        drop = (drop_thr, _keep_scale(drop_thr), window, cap)
        qkv_strides = (*q.stride(), *k.stride(), *v.stride(), *do.stride())
        block_m, block_n, warps, stages = kv_cfg
        kv_first = _bh_first(causal, B * Hkv, _cdiv(K, block_n))
        self.dkdv = bind(
            _bwd_dkdv_kernel, (B * Hkv, _cdiv(K, block_n)) if kv_first else (_cdiv(K, block_n), B * Hkv),
            (*qkv_strides, *dk.stride(), *dv.stride(), *mstr, B * H * Q, H, Hkv, H // Hkv, Q, K, scale, qk_scale,
             threshold, *drop),
            dict(BH_FIRST=kv_first, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages, **common,
                 **_bounds_constexprs(mask_t if bounded else None, block_m)),
        )
        block_m, block_n, warps, stages = q_cfg
        q_first = _bh_first(causal, B * H, _cdiv(Q, block_m))
        self.dq = bind(
            _bwd_dq_kernel, (B * H, _cdiv(Q, block_m)) if q_first else (_cdiv(Q, block_m), B * H),
            (*qkv_strides, *dq.stride(), *mstr, B * H * Q, H, H // Hkv, Q, K, scale, qk_scale, threshold, *drop),
            dict(BH_FIRST=q_first, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages, **common,
                 **_bounds_constexprs(mask_t if bounded else None, block_m)),
        )

    def __call__(self, do, q, k, v, out, lse, mask_t, ranges, seed=None, delta_out=None):
        if self.empty:
            return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        delta = torch.empty(lse.shape[1:], dtype=torch.float32, device=lse.device)
        if delta_out is not None:  # the caller keeps rowsum(dO * O) (the sinks' gradient reads it)
            delta_out.append(delta)
        self.delta(out, do, delta)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        mask_arg = mask_t if self.uses_mask else q
        ranges_arg = ranges if ranges is not None else lse
        seed_arg = seed if self.dropout else lse
        self.dkdv(q, k, v, do, lse, delta, dk, dv, mask_arg, ranges_arg, seed_arg)
        self.dq(q, k, v, do, lse, delta, dq, mask_arg, ranges_arg, seed_arg)
        return dq, dk, dv


_BWD_PLANS: dict = {}


def _backward(do, q, k, v, out, lse, kind, mask_t, ranges, threshold, causal, scale, drop_thr=0, seed=None, window=0,
              softcap=0.0, delta_out=None):
    """``(dq, dk, dv)`` for the forward's ``out`` and ``lse``; ``drop_thr``, ``seed``, ``window`` and ``softcap`` as
    that forward's. ``delta_out``: a list that gets the fp32 ``[B, H, Q]`` tensor of ``rowsum(dO * O)`` the kernels
    computed (nothing where there was nothing to compute)."""
    key = (q.shape, q.stride(), k.shape, k.stride(), v.stride(), do.stride(), out.stride(), q.dtype, k.dtype, v.dtype,
           do.dtype, q.device, kind, None if mask_t is None else (mask_t.shape, mask_t.stride(), mask_t.dtype),
           ranges is None, threshold, causal, scale, drop_thr, window, softcap, aligned(do, q, k, v, out, mask_t),
           _policy())
    plan = _BWD_PLANS.get(key)
    if plan is None:
        bounded = ranges is not None and kind in (_K_BOOL, _K_ADD, _K_SEG)  # a 4D mask's bounds
        plan = _BackwardPlan(do, q, k, v, out, lse, kind, mask_t, threshold, causal, scale, drop_thr, window, bounded,
                             softcap)
        remember(_BWD_PLANS, key, plan, _MAX_PLANS)
    return plan(do, q, k, v, out, lse, mask_t, ranges, seed, delta_out)


# ---------------------------------------------------------------------------------------------------------------
# Autograd (eager)
# ---------------------------------------------------------------------------------------------------------------

class AttentionFunction(torch.autograd.Function):
    """Eager autograd over the launchers. Under torch.compile the custom operators in :mod:`hf_masked_softmax.ops`
    (same launchers, autograd registered on them) take its place. ``kind`` / ``mask_t`` / ``ranges`` are the
    kernels' mask arguments (``ops._kernel_mask_args``)."""

    @staticmethod
    def forward(ctx, q, k, v, kind, mask_t, ranges, threshold, causal, scale, signature=None, drop_thr=0, seed=None,
                window=0, softcap=0.0, sinks=None):
        with _device_of(q):
            out, lse = _forward(q, k, v, kind, mask_t, ranges, threshold, causal, scale, True, signature, drop_thr,
                                seed, window, softcap, sinks)
        # the mask too: autograd then refuses a backward after the mask was edited in place (as the operators do),
        # instead of one that reads the edited mask
        ctx.save_for_backward(q, k, v, out, lse, mask_t, sinks)
        ctx.mask = (kind, ranges, threshold, causal, scale, drop_thr, seed, window, softcap)
        return out

    @staticmethod
    @first_order_only  # no double backward: a clear error, never gradients taken for constants
    def backward(ctx, do):
        q, k, v, out, lse, mask_t, sinks = ctx.saved_tensors
        kind, ranges, threshold, causal, scale, drop_thr, seed, window, softcap = ctx.mask
        deltas = [] if ctx.needs_input_grad[14] else None
        with _device_of(q):
            # the backward kernels need nothing of the sinks: the saved lse includes them
            dq, dk, dv = _backward(do, q, k, v, out, lse, kind, mask_t, ranges, threshold, causal, scale, drop_thr,
                                   seed, window, softcap, deltas)
        dsinks = sink_gradient(sinks, out, do, lse, deltas[0] if deltas else None) if deltas is not None else None
        return dq, dk, dv, None, None, None, None, None, None, None, None, None, None, None, dsinks


def sink_gradient(sinks: torch.Tensor, out: torch.Tensor, do: torch.Tensor, lse: torch.Tensor,
                  delta: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The gradient of the sink logits, fp32 ``[H]``, from the forward's ``out`` and ``lse`` (``[2, B, H, Q]``: base-2
    log-sum-exp with the sinks, and its residual) and the output gradient ``do``. A sink is a key with a zero value,
    so its score gradient in a row is ``P_sink * (0 - delta)`` with ``delta = rowsum(dO * O)`` (dropout included, as
    for the keys; the backward kernels' own ``delta`` where given, else computed here) and
    ``P_sink = 2^((sink * log2(e) - lse) - residual)``; rows with nothing kept give 0."""
    if delta is None:
        delta = (do.float() * out.float()).sum(dim=-1)
    p_sink = torch.exp2((sinks.float()[None, :, None] * _LOG2E - lse[0]) - lse[1])
    return -torch.where(lse[0] == float("-inf"), 0.0, p_sink * delta).sum(dim=(0, 2))


_SAME_DEVICE = contextlib.nullcontext()


def _device_of(t: torch.Tensor):
    """Launch on ``t``'s CUDA device (Triton launches on the current device); a no-op for CPU tensors and when ``t``
    is on the current device already (a device switch costs microseconds of host time per call, twice)."""
    dev = t.device
    if dev.type != "cuda" or dev.index == torch.cuda.current_device():
        return _SAME_DEVICE
    return torch.cuda.device(dev)


# ---------------------------------------------------------------------------------------------------------------
# Public function
# ---------------------------------------------------------------------------------------------------------------

def real_number(value, name: str) -> float:
    """``value`` (a Python or NumPy real number, or a one-element real tensor that autograd need not differentiate)
    as a float, with the public functions' errors."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise TypeError(f"{name} must be a real number (a Python or NumPy number or a one-element tensor), "
                        f"got {type(value).__name__}")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a single number, got a tensor of shape {list(value.shape)}")
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} must be a real number, got a {value.dtype} tensor")
        if value.requires_grad and torch.is_grad_enabled():
            # the kernels take it as a number: a silently missing gradient would be worse than this error
            raise ValueError(f"{name} requires grad, but gradients w.r.t. {name} are not computed; pass "
                             f"{name}.detach() or a float")
    return float(value)


def _validate(q, k, v, dropout_p=0.0, any_value_dim=False):
    """The checks of q, k, v and dropout_p (``scale`` is masked_softmax's ``validate_scale``). ``any_value_dim``: v may
    have a head dim of its own (see ``ops.attention``)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            layout = "[batch, heads, q_len, head_dim]" if name == "q" else "[batch, kv_heads, k_len, head_dim]"
            raise ValueError(f"{name} must be 4D {layout}, got {t.dim()}D shape {list(t.shape)}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k and v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k and v must be on one device, got q {q.device}, k {k.device}, v {v.device}")
    if any_value_dim:
        if k.shape[:3] != v.shape[:3]:
            raise ValueError(f"k and v must have the same batch, heads and length, got k {list(k.shape)} and "
                             f"v {list(v.shape)}")
        if not 1 <= v.shape[3] <= 256:
            raise ValueError(f"v's head_dim must be in [1, 256], got v of shape {list(v.shape)}")
    elif k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {list(k.shape)} and v {list(v.shape)}")
    B, H, Q, D = q.shape
    if k.shape[0] != B:
        raise ValueError(f"q and k must have the same batch size, got q {B} and k {k.shape[0]}")
    if k.shape[3] != D:
        raise ValueError(f"q and k must have the same head_dim, got q {D} and k {k.shape[3]}")
    if k.shape[1] == 0 or H % k.shape[1]:
        raise ValueError(f"query heads ({H}) must be a multiple of key/value heads ({k.shape[1]})")
    if D > 256:
        raise ValueError(f"head_dim must be at most 256, got {D}")
    if D == 0:
        raise ValueError(f"head_dim must be at least 1, got q of shape {list(q.shape)}")
    if type(dropout_p) is not float:  # NumPy numbers and one-element tensors too, as for scale
        dropout_p = real_number(dropout_p, "dropout_p")
    if not 0.0 <= dropout_p <= 1.0:  # NaN fails too
        raise ValueError(f"dropout_p must be in [0, 1], got {dropout_p}")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    causal: bool = False,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
    window: Optional[int] = None,
    softcap: Optional[float] = None,
    sinks: Optional[torch.Tensor] = None,
    segments: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Masked softmax attention ``softmax(scale * q kᵀ + mask) v`` without materialising the scores.

    Args:
        q: ``[B, H, Q, D]`` queries; fp16, bf16 or fp32; any strides.
        k, v: ``[B, Hkv, K, D]`` keys and values, same dtype and device; ``H % Hkv == 0`` (GQA / MQA).
        attention_mask: None; 2D ``[B, K]`` padding mask (bool / integer, nonzero = attend); or 4D broadcastable to
            ``[B, H, Q, K]``: bool (True = attend) or floating additive (``-inf`` / ``<= finfo.min / 2`` = masked).
        causal: bottom-right causal masking: query ``i`` sees key ``j`` iff ``j <= i + K - Q``.
        scale: multiplies ``q kᵀ`` (default ``D ** -0.5``); a number or a one-element tensor (not differentiated),
            at most FLT_MAX / log2(e) = 2.36e38 in magnitude.
        dropout_p: attention dropout, as SDPA's ``dropout_p`` (applied whenever it is nonzero, training or not): each
            probability is zeroed with probability ``p``, ``dropout_p`` rounded to a multiple of 2**-16, and the
            kept ones are scaled by ``1 / (1 - p)``. The mask is drawn inside the kernels by Philox from a key taken
            from torch's generator for the tensors' device (``torch.manual_seed`` repeats it) and redrawn
            identically by the backward; nothing of size ``[B, H, Q, K]`` is stored. A number or a one-element
            tensor.
        window: a sliding window. With ``causal`` (Mistral's ``sliding_window``): query ``i`` sees key ``j`` iff
            ``i + K - Q - window < j <= i + K - Q``, its ``window`` most recent keys its own included. Without it, a
            bidirectional window (ModernBERT's local attention, which passes ``sliding_window = local_attention // 2
            + 1``): query ``i`` sees key ``j`` iff ``|j - (i + K - Q)| < window``, ``window - 1`` keys on each side
            and its own. Either way and with the mask; key blocks outside a query block's windows are skipped. None
            (default), or a window no key falls out of, is no window.
        softcap: logit soft-capping (Gemma 2's ``attn_logit_softcapping``): the scaled scores become
            ``softcap * tanh(scale * q kᵀ / softcap)`` before the mask is applied or added, in the forward and the
            backward. None (default) or 0 is none; otherwise a positive finite number.
        sinks: attention sinks (GPT-OSS's ``sinks``): None, or a floating tensor ``[H]`` on q's device, one logit
            per query head that joins every row's softmax (compared with the scaled, masked scores) as a key whose
            value is zero, so the probabilities over the real keys sum to less than 1. Differentiable (a parameter
            in GPT-OSS). ``-inf`` is no sink; ``+inf`` or NaN make the rows NaN, as in an eager softmax over the
            concatenated column. Rows with nothing to attend to stay zeros.
        segments: packed sequences (padding-free batches, transformers' ``DataCollatorWithFlattening``): None, or an
            integer tensor ``[B, K]`` on q's device, for self-attention (``Q == K``) without ``attention_mask``.
            Each run of equal consecutive ids is one sequence: query ``i`` sees key ``j`` only if no id changes
            between them (``[0, 0, 1, 1, 1, 0]`` holds three sequences). With ``causal``, ``window`` and the rest as
            usual, inside each sequence. No ``[B, Q, K]`` mask is built: the kernels read each token's run and
            visit only the key blocks of the runs a query block meets.

    Returns:
        ``[B, H, Q, D]`` in q's dtype, laid out in memory as ``[B, Q, H, D]`` (``out.transpose(1, 2)`` is
        contiguous). Rows with nothing to attend to are zeros. Differentiable w.r.t. q, k, v (and ``sinks``).

    Raises:
        ValueError: wrong rank or shapes, head_dim 0 or > 256, tensors on different devices, dropout_p outside
            [0, 1], scale out of range, a scale tensor or additive mask that requires grad while autograd records,
            a window below 1, a negative, infinite or NaN ``softcap``, ``sinks`` of another shape
            than ``[H]`` or on another device, ``segments`` of another shape than ``[B, K]``, on another device,
            with ``Q != K`` or beside an ``attention_mask``.
        TypeError: unsupported or mismatched dtypes, a non-tensor argument, integer ``sinks``, ``segments`` that
            are not integers.
    """
    # Through the custom operator, so torch.compile traces it as one node (ops imports this module: bound late, once).
    global _ops_attention
    if _ops_attention is None:
        from .ops import attention as _ops_attention
    return _ops_attention(q, k, v, attention_mask, causal=causal, scale=scale, dropout_p=dropout_p, window=window,
                          softcap=softcap, sinks=sinks, segments=segments)


_ops_attention = None


def window_size(window, causal, k_len: int, q_len: Optional[int] = None) -> int:
    """``attention``'s ``window`` as the kernels take it: 0 for none (None, or a window that no key of a ``q_len`` x
    ``k_len`` call falls out of: ``k_len`` keys or more, and with a bidirectional window also ``q_len``), else the
    validated number of keys."""
    if window is None:
        return 0
    if isinstance(window, bool) or not isinstance(window, numbers.Integral):
        raise TypeError(f"window must be an integer or None, got {type(window).__name__}")
    window = int(window)
    if window < 1:
        raise ValueError(f"window must be at least 1 (keys a query sees on each side, its own included), got {window}")
    if not causal:  # bidirectional: |j - (i + K - Q)| < window, whose largest distance is max(K, Q) - 1
        return 0 if window >= max(k_len, k_len if q_len is None else q_len) else window
    return 0 if window >= k_len else window


def softcap_value(softcap) -> float:
    """``attention``'s ``softcap`` as the kernels take it: 0.0 for none (None or 0), else the validated positive
    finite cap."""
    if softcap is None:
        return 0.0
    value = real_number(softcap, "softcap")
    if not (0.0 <= value < float("inf")):  # NaN fails too
        raise ValueError(f"softcap must be a positive finite number (or None / 0 for none), got {value}")
    return value


def attention_bqhd(q, k, v, attention_mask=None, *, causal=False, scale=None, dropout_p=0.0,
                   window=None, softcap=None, sinks=None, segments=None) -> torch.Tensor:
    """:func:`attention`, returned as the contiguous ``[B, Q, H, D]`` tensor Hugging Face attention modules want."""
    return attention(q, k, v, attention_mask, causal=causal, scale=scale, dropout_p=dropout_p,
                     window=window, softcap=softcap, sinks=sinks, segments=segments).transpose(1, 2).contiguous()
