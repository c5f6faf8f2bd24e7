"""Masked softmax over attention scores ``[B, H, Q, K]``: Triton kernels, launchers, public function.

Forward, for every row ``r = (b, h, i)``::

    x_j = scale * S[b,h,i,j] (+ A[b,h,i,j] for an additive mask)   for kept j
    Y[b,h,i,j] = exp(x_j - max_kept x) / sum_kept exp(x - max_kept x) for kept j, 0 elsewhere

where ``j`` is kept when the mask keeps it and, with ``causal``, ``j <= i + K - Q`` (bottom-right alignment). All math
runs in fp32. A row with nothing kept (or whose kept scores are all ``-inf``) is all zeros. The exponent is taken in
base 2, with ``x`` in log2 units (``scale * log2(e)`` is one multiply): a finite logit beyond FLT_MAX / log2(e) =
2.36e38 in magnitude overflows there (its row turns NaN, or zero). Subtracting the max before scaling by log2(e) would
lift that limit at one more multiply per score, 1.4-2.3% of the forward's time on an H200 (2026-12-03,
``bench_softmax.py --quick``), for logits no attention produces.

Backward (``Y`` saved, ``dY`` incoming)::

    dS = scale * Y * (dY - sum_j dY_j Y_j)

Every entry the forward drops (mask, causality, a ``-inf`` score) has ``Y = 0`` exactly, so the backward needs no
mask: it reads ``Y`` and ``dY`` only inside each row's key window, ignores ``dY`` wherever ``Y = 0`` (a NaN or inf
there never reaches the row) and writes ``dS = 0`` there.

Paths, chosen by the launcher from ``K`` and the number of rows (``_launch_config``; settings from a sweep on an
H100):

* one register chunk: the whole row is one tile, read once. Rows of up to ``SHORT_K`` keys (several rows per
  program, so small ``K`` still moves wide tiles), rows of up to ``MAX_SINGLE_PASS_K`` keys when there are too few rows
  to fill the GPU (a decode step), and the backward up to ``MAX_SINGLE_PASS_K``;
* chunked: rows in two passes over column chunks, an online max/sum pass over the chunks some row of the program sees,
  then a normalise-and-store pass. There is no upper limit on ``K``.

A 2D padding mask is first summarised per sequence as a key window ``[lo, hi)`` plus a "holes inside" flag (a tiny
kernel, ``masks.pad_ranges``); with causality the window ends at ``i + K - Q``. Chunks outside every row's window are
stored as zeros without being read or computed; chunks inside every row's window skip the per-element masks. Load
predicates are rounded out to aligned 16-column groups (so the compiler keeps 16-byte loads) and, when K is not a
multiple of 16, stop at K (the last group would run past the row, and past the tensor on its last row): scores outside
a row's window are never read. Index math is int32, or int64 when an offset can reach 2**31 (``WIDE``), so tensors
of more than 2**31 elements work. Scores are read through their strides (transposed, sliced and stride-0 views) and
never copied; the output is a fresh contiguous tensor, stored with the streaming cache hint on the forward's chunked
path (``STREAM_STORES``). Eager autograd is :class:`MaskedSoftmaxFunction`; under torch.compile the custom operator
in :mod:`hf_masked_softmax.ops` (same launchers) takes its place.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from . import masks as _masks
from ._launch import aligned as _aligned
from ._launch import bind as _bind
from ._launch import fast_launch, first_order_only, kernels_take
from ._launch import remember as _remember
from .attention import _next_pow2, _sm_count, real_number  # host helpers and a check shared by both functions
from . import ops as _ops
from .reference import masked_softmax_reference

MAX_SINGLE_PASS_K = 8192  # rows up to this many keys may be held in registers whole (decode steps)
SHORT_K = 512  # rows up to this many keys always are
LOOP_BLOCK_K = 2048  # longer rows go in chunks of at most this many columns
TILE = 2048  # elements per program and chunk: rows per program = TILE // chunk
LOAD_GROUP = 16  # load predicates are constant over aligned groups of this many columns (16-byte fp16 loads)
# Stores with the streaming cache hint (.cs): None = the forward's chunked path only (on an H200, kernel alone: 8192
# causal 0.947 -> 0.927 ms, GPT-2 prefill 0.0912 -> 0.0904 ms; no gain elsewhere); True / False force it everywhere /
# nowhere (bench_softmax.py --tune --tune-stream times both).
STREAM_STORES = None
_LOG2E = 1.4426950408889634
_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------------------------
@triton.jit
def _rows_and_windows(ranges_ptr, n_rows, H, Q, K, MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr,
                      BLOCK_M: tl.constexpr, WIDE: tl.constexpr):
    """This program's rows and, per row, the keys ``[lo, hi)`` it may see and whether its padding mask has holes.

    Rows past ``n_rows`` get the empty window ``[K, 0)``. Row math is int32 unless ``WIDE`` (int64 division is slow).
    """
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    if WIDE:
        rows = rows.to(tl.int64)
    row_ok = rows < n_rows
    q = rows % Q
    bh = rows // Q
    b = bh // H
    h = bh % H
    lo = tl.zeros([BLOCK_M], tl.int32)
    hi = lo + K
    holes = lo
    if MASK_KIND == 1:
        # rows of masks.pad_ranges: (start, end, has_holes, unused)
        lo = tl.load(ranges_ptr + b * 4, mask=row_ok, other=0)
        hi = tl.load(ranges_ptr + b * 4 + 1, mask=row_ok, other=0)
        holes = tl.load(ranges_ptr + b * 4 + 2, mask=row_ok, other=0)
    if CAUSAL:
        hi = tl.minimum(hi, (q + (K - Q) + 1).to(tl.int32))
    lo = tl.where(row_ok, lo, K)
    hi = tl.where(row_ok, hi, 0)
    return rows, row_ok, b, h, q, lo, hi, holes


@triton.jit
def _program_bounds(lo, hi, holes, K, MASK_KIND: tl.constexpr, CHUNK: tl.constexpr):
    """Scalar bounds for the program's rows: chunks ``[c_lo, c_hi)`` hold every key any row sees (chunk-aligned start),
    and chunks inside ``[f_lo, f_hi)`` are seen whole by every row (no per-element mask there)."""
    c_lo = tl.min(lo, axis=0) // CHUNK * CHUNK
    c_hi = tl.max(hi, axis=0)
    f_lo = tl.cdiv(tl.max(lo, axis=0), CHUNK) * CHUNK
    f_hi = tl.maximum(tl.min(hi, axis=0), 0) // CHUNK * CHUNK
    any_holes = tl.max(holes, axis=0)
    if MASK_KIND >= 2:  # 4D masks decide per element everywhere
        f_hi = f_lo
    if any_holes != 0:
        f_hi = f_lo
    return c_lo, c_hi, f_lo, f_hi, any_holes


@triton.jit
def _window_pred(cols, lo, hi, K, GROUP: tl.constexpr, ALIGNED: tl.constexpr):
    """Load predicate of a ``[BLOCK_M, CHUNK]`` chunk: each row's key window ``[lo, hi)`` rounded out to aligned groups
    of ``GROUP`` columns. Constant over such groups, it lets the compiler keep 16-byte loads while whole groups outside
    the window are never read. Where ``K`` is not a multiple of ``GROUP`` (``ALIGNED`` false) it also stops at ``K``
    (the last group runs past the row, and past the tensor on its last row)."""
    lo2 = lo[:, None]
    hi2 = hi[:, None]
    g = cols // GROUP
    pred = (g >= lo2 // GROUP) & (g <= (hi2 - 1) // GROUP) & (hi2 > lo2)
    if not ALIGNED:
        pred = pred & (cols < K)
    return pred


@triton.jit
def _chunk_keep(cols, lo, hi, holes, any_holes, mask_ptr, b, h, q, add_threshold,
                mask_stride_b, mask_stride_h, mask_stride_q, mask_stride_k, K,
                MASK_KIND: tl.constexpr, GROUP: tl.constexpr, ALIGNED: tl.constexpr):
    """(keep, load predicate, additive values in log2 units) of a ``[BLOCK_M, CHUNK]`` chunk that needs masking.

    ``keep`` is exact; the load predicate is ``_window_pred``'s, except for 4D masks, which decide per element: there
    the predicate is ``keep`` itself."""
    keep = (cols >= lo[:, None]) & (cols < hi[:, None])
    pred = _window_pred(cols, lo, hi, K, GROUP, ALIGNED)
    add = tl.zeros([1, 1], tl.float32)  # used by additive masks only (dead code elsewhere)
    if MASK_KIND == 1:  # 2D padding mask [B, K]: read only for sequences with holes
        if any_holes != 0:
            m = tl.load(mask_ptr + b[:, None] * mask_stride_b + cols * mask_stride_k,
                        mask=keep & (holes[:, None] != 0), other=1)
            keep = keep & (m != 0)
    elif MASK_KIND == 2:  # 4D boolean mask, True = attend
        off = (b * mask_stride_b + h * mask_stride_h + q * mask_stride_q)[:, None] + cols * mask_stride_k
        m = tl.load(mask_ptr + off, mask=keep, other=0)
        keep = keep & (m != 0)
        pred = keep
    elif MASK_KIND == 3:  # 4D additive mask; -inf and values <= threshold mean "masked"
        off = (b * mask_stride_b + h * mask_stride_h + q * mask_stride_q)[:, None] + cols * mask_stride_k
        m = tl.load(mask_ptr + off, mask=keep, other=0).to(tl.float32)
        keep = keep & ~(m <= add_threshold)  # NaN is kept (and poisons its row), never silently masked
        add = tl.where(keep, m, 0.0) * 1.4426950408889634
        pred = keep
    return keep, pred, add


@triton.jit
def _scores_chunk(s_row, cols, stride_k, scale2, keep, pred, add, MASKED: tl.constexpr, MASK_KIND: tl.constexpr):
    """Scores of a chunk in log2 units (``scale * log2(e) * S (+ mask)``); -inf where not kept."""
    if MASKED:
        x = tl.load(s_row + cols * stride_k, mask=pred).to(tl.float32) * scale2
        if MASK_KIND == 3:
            x = x + add
        x = tl.where(keep, x, float("-inf"))
    else:
        x = tl.load(s_row + cols * stride_k).to(tl.float32) * scale2
    return x


@triton.jit
def _store(ptrs, val, mask, MASKED: tl.constexpr, STREAM: tl.constexpr):
    """``tl.store``; ``STREAM``: with the streaming cache hint (``.cs``: this kernel never reads its output back)."""
    if STREAM:
        if MASKED:
            tl.store(ptrs, val, mask=mask, cache_modifier=".cs")
        else:
            tl.store(ptrs, val, cache_modifier=".cs")
    else:
        if MASKED:
            tl.store(ptrs, val, mask=mask)
        else:
            tl.store(ptrs, val)


@triton.jit
def _store_rows(ptrs, val, row_ok, cols, K, EVEN: tl.constexpr, STREAM: tl.constexpr):
    """Store a ``[BLOCK_M, CHUNK]`` tile of whole-chunk values; unmasked when every row and column is in bounds."""
    _store(ptrs, val, row_ok[:, None] & (cols < K), not EVEN, STREAM)


@fast_launch
@triton.jit
def _fwd_kernel(
    s_ptr, y_ptr, mask_ptr, ranges_ptr, sink_ptr,
    s_stride_b, s_stride_h, s_stride_q, s_stride_k,
    mask_stride_b, mask_stride_h, mask_stride_q, mask_stride_k,
    n_rows, H, Q, K, scale2, add_threshold,
    MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, CHUNK: tl.constexpr,
    ONE_CHUNK: tl.constexpr, EVEN: tl.constexpr, GROUP: tl.constexpr, ALIGNED: tl.constexpr, WIDE: tl.constexpr,
    STREAM: tl.constexpr, SINK: tl.constexpr,
):
    """``BLOCK_M`` rows per program. ``ONE_CHUNK`` (``K <= CHUNK``): the rows stay in registers, one read. Otherwise
    two passes over ``CHUNK``-wide column chunks: online max / sum over the chunks some row sees, then normalise and
    store; chunks no row sees are stored as zeros without being read or computed. ``SINK``: each head's sink logit
    (``sink_ptr``, fp32 ``[H]``, natural units) joins every row's max and sum as one more, never stored, column."""
    rows, row_ok, b, h, q, lo, hi, holes = _rows_and_windows(ranges_ptr, n_rows, H, Q, K, MASK_KIND, CAUSAL,
                                                             BLOCK_M, WIDE)
    if SINK:
        sink = tl.load(sink_ptr + h, mask=row_ok, other=float("-inf")) * 1.4426950408889634  # base 2, as the scores
    offs = tl.arange(0, CHUNK)[None, :]
    if WIDE:
        offs = offs.to(tl.int64)
    s_row = s_ptr + (b * s_stride_b + h * s_stride_h + q * s_stride_q)[:, None]
    y_row = y_ptr + rows[:, None] * K
    c_lo, c_hi, f_lo, f_hi, any_holes = _program_bounds(lo, hi, holes, K, MASK_KIND, CHUNK)
    if ONE_CHUNK:
        keep, pred, add = _chunk_keep(offs, lo, hi, holes, any_holes, mask_ptr, b, h, q, add_threshold,
                                      mask_stride_b, mask_stride_h, mask_stride_q, mask_stride_k, K, MASK_KIND, GROUP,
                                    ALIGNED)
        x = _scores_chunk(s_row, offs, s_stride_k, scale2, keep, pred, add, True, MASK_KIND)
        m = tl.max(x, axis=1)
        if SINK:
            m = tl.maximum(m, sink)
        m = tl.where(m == float("-inf"), 0.0, m)  # an empty row shifts by 0: exp2(-inf) = 0, never NaN
        e = tl.math.exp2(x - m[:, None])
        denom = tl.sum(e, axis=1)
        if SINK:
            denom += tl.math.exp2(sink - m)
        # masked entries are exactly 0 even in a row that a NaN score poisons
        y = tl.where(keep, e * (1.0 / tl.where(denom == 0.0, 1.0, denom))[:, None], 0.0)
        _store(y_row + offs, y.to(y_ptr.dtype.element_ty), row_ok[:, None] & (offs < K), True, STREAM)
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        if SINK:  # the sink as the first column seen: a -inf sink (none) leaves (-inf, 0)
            m_i = sink
            l_i = tl.where(sink == float("-inf"), 0.0, 1.0)
        for c0 in range(c_lo, c_hi, CHUNK):
            cols = c0 + offs
            if (c0 >= f_lo) & (c0 + CHUNK <= f_hi):
                x = _scores_chunk(s_row, cols, s_stride_k, scale2, None, None, None, False, MASK_KIND)
            else:
                keep, pred, add = _chunk_keep(cols, lo, hi, holes, any_holes, mask_ptr, b, h, q, add_threshold,
                                              mask_stride_b, mask_stride_h, mask_stride_q, mask_stride_k, K,
                                              MASK_KIND, GROUP, ALIGNED)
                x = _scores_chunk(s_row, cols, s_stride_k, scale2, keep, pred, add, True, MASK_KIND)
            m_new = tl.maximum(m_i, tl.max(x, axis=1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            l_i = l_i * tl.math.exp2(m_i - m_use) + tl.sum(tl.math.exp2(x - m_use[:, None]), axis=1)
            m_i = m_new
        m_i = tl.where(m_i == float("-inf"), 0.0, m_i)
        inv = 1.0 / tl.where(l_i == 0.0, 1.0, l_i)
        zero = tl.zeros([BLOCK_M, CHUNK], y_ptr.dtype.element_ty)
        for c0 in range(0, K, CHUNK):
            cols = c0 + offs
            if (c0 + CHUNK <= c_lo) | (c0 >= c_hi):
                _store_rows(y_row + cols, zero, row_ok, cols, K, EVEN, STREAM)
            elif (c0 >= f_lo) & (c0 + CHUNK <= f_hi):
                x = _scores_chunk(s_row, cols, s_stride_k, scale2, None, None, None, False, MASK_KIND)
                y = tl.math.exp2(x - m_i[:, None]) * inv[:, None]
                _store_rows(y_row + cols, y.to(y_ptr.dtype.element_ty), row_ok, cols, K, EVEN, STREAM)
            else:
                keep, pred, add = _chunk_keep(cols, lo, hi, holes, any_holes, mask_ptr, b, h, q, add_threshold,
                                              mask_stride_b, mask_stride_h, mask_stride_q, mask_stride_k, K,
                                              MASK_KIND, GROUP, ALIGNED)
                x = _scores_chunk(s_row, cols, s_stride_k, scale2, keep, pred, add, True, MASK_KIND)
                y = tl.where(keep, tl.math.exp2(x - m_i[:, None]) * inv[:, None], 0.0)
                _store(y_row + cols, y.to(y_ptr.dtype.element_ty), row_ok[:, None] & (cols < K), True, STREAM)


@triton.jit
def _grad_chunk(y_ptrs, dy_ptrs, pred, MASKED: tl.constexpr):
    """``Y`` and ``dY`` of a chunk in fp32, both 0 outside the load predicate (``MASKED``), and ``dY`` 0 wherever
    ``Y = 0``."""
    if MASKED:
        y = tl.load(y_ptrs, mask=pred, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptrs, mask=pred, other=0.0).to(tl.float32)
    else:
        y = tl.load(y_ptrs).to(tl.float32)
        dy = tl.load(dy_ptrs).to(tl.float32)
    return y, tl.where(y != 0.0, dy, 0.0)


@triton.jit
def _grad(y, dy, scale, sdot):
    """``scale * Y * (dY - dot)`` as ``(scale * Y) * dY - Y * (scale * dot)``: +0 exactly wherever ``Y = +0`` (and
    ``dY = 0``), whatever the sign of ``dot``, without a select (whose mask would stay live across the row's sum)."""
    return (scale * y) * dy - y * sdot


@fast_launch
@triton.jit
def _bwd_kernel(
    y_ptr, dy_ptr, ds_ptr, ranges_ptr,
    dy_stride_b, dy_stride_h, dy_stride_q, dy_stride_k,
    n_rows, H, Q, K, scale,
    MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, CHUNK: tl.constexpr,
    ONE_CHUNK: tl.constexpr, EVEN: tl.constexpr, GROUP: tl.constexpr, ALIGNED: tl.constexpr, WIDE: tl.constexpr,
    STREAM: tl.constexpr,
):
    """``dS = scale * Y * (dY - sum(dY * Y))`` with the forward's chunking. Every entry the forward dropped (padding,
    a 4D mask, causality, a ``-inf`` score) has ``Y = 0`` exactly, so the mask is never read again: ``Y`` and ``dY``
    are read inside each row's key window only (``MASK_KIND`` 1: a 2D mask's key ranges, else all keys, with
    causality's bound), and wherever ``Y = 0`` ``dY`` is ignored and ``dS`` is 0 (a NaN or inf in ``dY`` there never
    reaches the row). Outside the window ``dS`` is stored as zeros without reading anything."""
    rows, row_ok, b, h, q, lo, hi, holes = _rows_and_windows(ranges_ptr, n_rows, H, Q, K, MASK_KIND, CAUSAL,
                                                             BLOCK_M, WIDE)
    offs = tl.arange(0, CHUNK)[None, :]
    if WIDE:
        offs = offs.to(tl.int64)
    dy_row = dy_ptr + (b * dy_stride_b + h * dy_stride_h + q * dy_stride_q)[:, None]
    y_row = y_ptr + rows[:, None] * K
    ds_row = ds_ptr + rows[:, None] * K
    c_lo, c_hi, f_lo, f_hi, any_holes = _program_bounds(lo, hi, holes, K, MASK_KIND, CHUNK)
    if ONE_CHUNK:
        y, dy = _grad_chunk(y_row + offs, dy_row + offs * dy_stride_k,
                            _window_pred(offs, lo, hi, K, GROUP, ALIGNED), True)
        sdot = scale * tl.sum(y * dy, axis=1)[:, None]
        ds = _grad(y, dy, scale, sdot)
        _store(ds_row + offs, ds.to(ds_ptr.dtype.element_ty), row_ok[:, None] & (offs < K), True, STREAM)
    else:
        acc = tl.zeros([BLOCK_M, CHUNK], tl.float32)
        for c0 in range(c_lo, c_hi, CHUNK):
            cols = c0 + offs
            if (c0 >= f_lo) & (c0 + CHUNK <= f_hi):
                y, dy = _grad_chunk(y_row + cols, dy_row + cols * dy_stride_k, None, False)
            else:
                y, dy = _grad_chunk(y_row + cols, dy_row + cols * dy_stride_k,
                                    _window_pred(cols, lo, hi, K, GROUP, ALIGNED), True)
            acc += y * dy
        sdot = scale * tl.sum(acc, axis=1)[:, None]
        zero = tl.zeros([BLOCK_M, CHUNK], ds_ptr.dtype.element_ty)
        for c0 in range(0, K, CHUNK):
            cols = c0 + offs
            if (c0 + CHUNK <= c_lo) | (c0 >= c_hi):
                _store_rows(ds_row + cols, zero, row_ok, cols, K, EVEN, STREAM)
            else:
                if (c0 >= f_lo) & (c0 + CHUNK <= f_hi):
                    y, dy = _grad_chunk(y_row + cols, dy_row + cols * dy_stride_k, None, False)
                else:
                    y, dy = _grad_chunk(y_row + cols, dy_row + cols * dy_stride_k,
                                        _window_pred(cols, lo, hi, K, GROUP, ALIGNED), True)
                ds = _grad(y, dy, scale, sdot)
                _store_rows(ds_row + cols, ds.to(ds_ptr.dtype.element_ty), row_ok, cols, K, EVEN, STREAM)


# ----------------------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------------------
def _launch_config(K: int, n_rows: int, max_single_pass_k: int, loop_block_k: int, sms: int, backward: bool = False):
    """(BLOCK_M, CHUNK, ONE_CHUNK, num_warps) for ``n_rows`` rows of ``K`` keys.

    From a sweep on an H100 (fp16, ``python evals/bench_softmax.py --tune``):

    * too few rows to fill the GPU (a decode step), up to ``max_single_pass_k`` keys: one register chunk, one row per
      program, 16 elements per thread;
    * forward, up to ``SHORT_K`` keys: one register chunk, ``1024 // K`` rows per program, one warp per 1024
      elements;
    * forward, longer rows: chunks of ``K / 4`` columns (256..``loop_block_k``), 2048-4096 elements per program, 16 per
      thread (GPT-2's 1024 keys: 8 rows x 256 columns, 4 warps; 8192 keys: 2 rows x 2048, 8 warps);
    * backward, up to ``max_single_pass_k`` keys: one register chunk; rows of 1024+ keys one per program, shorter
      ones 4096 elements per program, 16 to 32 elements per thread.
    """
    chunk = _next_pow2(K)
    if n_rows < 4 * sms and K <= max_single_pass_k:
        return 1, chunk, True, max(1, min(16, chunk // 512))
    if backward and K <= max_single_pass_k:
        if chunk >= 1024:
            return 1, chunk, True, max(1, min(16, chunk // (1024 if chunk >= 4096 else 512)))
        block_m = max(1, min(16, 4096 // chunk))
        return block_m, chunk, True, max(1, block_m * chunk // 1024)
    if not backward and K <= min(max_single_pass_k, SHORT_K):
        block_m = max(1, min(16, 1024 // chunk))
        return block_m, chunk, True, max(1, block_m * chunk // 1024)
    chunk = max(1, min(loop_block_k, max(256, min(2048, chunk // 4))))
    block_m = max(1, min(16, (2048 if K <= 4096 else 4096) // chunk))
    return block_m, chunk, K <= chunk, max(1, min(16, block_m * chunk // 512))


def _wide(shape, *stride_sets) -> bool:
    """Whether an element offset can reach 2**31 in the output (contiguous ``shape``) or in a strided input: then the
    kernels index in int64 (a compile-time switch: int32 index math, int64 division above all, is much cheaper)."""
    # written out for four dims: generator expressions here cost several microseconds per launch on the host
    b, h, q, k = shape
    if b * h * q * k >= 2**31 - 1:
        return True
    if not (b and h and q and k):
        return False
    for s0, s1, s2, s3 in stride_sets:
        if (b - 1) * abs(s0) + (h - 1) * abs(s1) + (q - 1) * abs(s2) + (k - 1) * abs(s3) >= 2**31 - 1:
            return True
    return False


def _mask_args(spec: _masks.MaskSpec, dummy: torch.Tensor, ranges=None):
    """(mask tensor, its 4 strides, per-sequence key ranges) for the kernels; dummies where unused. The key ranges of
    a 2D padding mask are ``ranges`` when the caller has them (eager calls: cached per mask object, and the backward
    reuses the forward's), else computed here."""
    t = spec.tensor
    if spec.kind == _masks.NONE:
        return dummy, (0, 0, 0, 0), dummy
    if spec.kind == _masks.PAD2D:
        return t, (t.stride(0), 0, 0, t.stride(1)), ranges if ranges is not None else _masks.pad_ranges(t)
    return t, tuple(t.stride()), dummy


def _stream(setting, forward: bool, one_chunk: bool) -> bool:
    """Whether a launch stores with the streaming hint (see ``STREAM_STORES``)."""
    return (forward and not one_chunk) if setting is None else bool(setting)


def _policy():
    """The module-level settings and functions a launch plan is derived from: part of every plan's key, so that
    changing one (the tuning scripts and tests do) gets a new plan (see ``attention._policy``)."""
    return (_launch_config, _wide, _mask_args, _stream, _sm_count, STREAM_STORES, LOAD_GROUP, SHORT_K)


_PLANS: dict = {}
_MAX_PLANS = 256  # a decoding step adds one (its key length); cleared when full


def _plan(kernel, tensors, strides, spec, shape, causal, scale, blocks, sink=False):
    """The bound launch of one kernel call signature: everything but the pointers, computed once."""
    B, H, Q, K = shape
    n_rows = B * H * Q
    backward = len(tensors) == 3
    _, mstr, _ = _mask_args(spec, tensors[0], tensors[0])
    block_m, chunk, one, num_warps = _launch_config(K, n_rows, *blocks, _sm_count(tensors[0].device),
                                                    backward=backward)
    if backward:  # the backward reads no mask: a 2D mask's key ranges bound its windows, others leave them whole
        rest = (*strides, n_rows, H, Q, K, scale)
        kind, wide = int(spec.kind == _masks.PAD2D), _wide(shape, strides)
    else:
        rest = (*strides, *mstr, n_rows, H, Q, K, scale, spec.threshold)
        kind, wide = spec.kind, _wide(shape, strides, mstr)
    return _bind(kernel, (-(-n_rows // block_m),), rest, dict(
        MASK_KIND=kind, CAUSAL=causal, BLOCK_M=block_m, CHUNK=chunk, ONE_CHUNK=one,
        EVEN=(K % chunk == 0 and n_rows % block_m == 0), GROUP=min(LOAD_GROUP, chunk),
        ALIGNED=K % min(LOAD_GROUP, chunk) == 0,
        WIDE=wide, STREAM=_stream(STREAM_STORES, not backward, one), num_warps=num_warps,
        **({} if backward else dict(SINK=sink)),
    ))


def _launch(kernel, tensors, strides, spec, shape, causal, scale, blocks, ranges=None, sinks=None):
    mask = spec.tensor
    key = (kernel, tuple([t.dtype for t in tensors]), tuple(shape), tuple(strides), tensors[0].device, spec.kind,
           None if mask is None else (mask.shape, mask.stride(), mask.dtype), spec.threshold, causal, scale, blocks,
           sinks is None, _aligned(mask, sinks, *tensors), _policy())
    launch = _PLANS.get(key)
    if launch is None:
        launch = _plan(kernel, tensors, strides, spec, shape, causal, scale, blocks, sinks is not None)
        _remember(_PLANS, key, launch, _MAX_PLANS)
    mask_t, _, ranges = _mask_args(spec, tensors[0], ranges)
    if len(tensors) == 3:
        launch(*tensors, ranges)
    else:
        launch(*tensors, mask_t, ranges, sinks if sinks is not None else tensors[0])


def _forward(scores, spec, causal, scale, blocks, ranges=None, sinks=None):
    """``sinks``: None, or each head's sink logit, fp32 ``[H]`` contiguous on the scores' device."""
    y = torch.empty(scores.shape, dtype=scores.dtype, device=scores.device)
    if y.numel():
        _launch(_fwd_kernel, (scores, y), scores.stride(), spec, scores.shape, causal, float(scale) * _LOG2E, blocks,
                ranges, sinks)
    return y


def _backward(y, dy, spec, causal, scale, blocks, ranges=None):
    ds = torch.empty_like(y)
    if ds.numel():
        _launch(_bwd_kernel, (y, dy, ds), dy.stride(), spec, y.shape, causal, float(scale), blocks, ranges)
    return ds


# ----------------------------------------------------------------------------------------------------------------------
# Autograd (eager)
# ----------------------------------------------------------------------------------------------------------------------
class MaskedSoftmaxFunction(torch.autograd.Function):
    """Eager autograd over the launchers. Under torch.compile the custom operators in :mod:`hf_masked_softmax.ops`
    (same launchers, autograd registered on them) take its place."""

    @staticmethod
    def forward(ctx, scores, spec, causal, scale, blocks, ranges, sinks=None):
        # a 2D mask's key ranges serve the backward too: one launch less there (host time is what a backward of this
        # size is short of)
        with _ops.on_device(scores):
            y = _forward(scores, spec, causal, scale, blocks, ranges, sinks)
        ctx.save_for_backward(y)
        ctx.spec, ctx.causal, ctx.scale, ctx.blocks, ctx.ranges = spec, causal, scale, blocks, ranges
        return y

    @staticmethod
    @first_order_only  # no double backward: a clear error, never gradients taken for constants
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        with _ops.on_device(y):
            ds = _backward(y, dy, ctx.spec, ctx.causal, ctx.scale, ctx.blocks, ctx.ranges)
        dsinks = sink_gradient(y, dy) if ctx.needs_input_grad[6] else None
        return ds, None, None, None, None, None, dsinks


def sink_gradient(y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """The gradient of each head's sink logit, fp32 ``[H]``, from the probabilities ``y`` (sink excluded) and their
    gradient ``dy``: the sink's probability in a row is ``1 - sum(y)``, and ``d sink = -(1 - sum(y)) * sum(y * dy)``
    summed over the batch and the rows (a row's ``dy`` counts only where ``y`` is nonzero, as the scores' gradient)."""
    y32 = y.float()
    sdot = torch.where(y32 != 0, y32 * dy.float(), 0.0).sum(dim=-1)
    return -((1.0 - y32.sum(dim=-1)).clamp_min(0.0) * sdot).sum(dim=(0, 2))


def sinks_tensor(sinks, heads: int, device) -> Optional[torch.Tensor]:
    """``sinks`` as the kernels take it: None, or fp32 ``[heads]`` contiguous (differentiable: autograd carries the
    gradient back to the caller's dtype), after the public functions' checks."""
    if sinks is None:
        return None
    if not isinstance(sinks, torch.Tensor):
        raise TypeError(f"sinks must be a torch.Tensor of shape [{heads}] or None, got {type(sinks).__name__}")
    if not sinks.is_floating_point():
        raise TypeError(f"sinks must be a floating-point tensor, got {sinks.dtype}")
    if tuple(sinks.shape) != (heads,):
        raise ValueError(f"sinks must have shape [{heads}] (one logit per query head), got {list(sinks.shape)}")
    if sinks.device != device:
        raise ValueError(f"sinks must be on the inputs' device {device}, got {sinks.device}")
    return sinks if sinks.dtype == torch.float32 and sinks.is_contiguous() else sinks.to(torch.float32).contiguous()


# ----------------------------------------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------------------------------------
def validate_scores(scores) -> None:
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 4:
        raise ValueError(
            f"scores must be 4D [batch, heads, q_len, k_len], got {scores.dim()}D shape {list(scores.shape)}"
        )
    if scores.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"scores must be float32, float16 or bfloat16, got {scores.dtype}")


_SCALE_MAX = float(torch.finfo(torch.float32).max) / _LOG2E  # scale * log2(e) stays finite in fp32


def validate_scale(scale) -> float:
    """``scale`` as a float that stays finite in the kernels' fp32 math, where it is multiplied by log2(e) (1e39 is
    a finite double but fp32 inf, and so is 3e38 * log2(e))."""
    if type(scale) is not float:  # the common case skips the (slow) abstract-class checks
        scale = real_number(scale, "scale")
    if not abs(scale) <= _SCALE_MAX:
        raise ValueError(f"scale must stay finite in float32 once multiplied by log2(e) (|scale| <= "
                         f"FLT_MAX / log2(e) = 2.36e38), got {scale}")
    return scale


def masked_softmax(
    scores: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    causal: bool = False,
    scale: float = 1.0,
    sinks: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Softmax of ``scale * scores`` over the last dim with padding / boolean / additive masks and causality fused.

    Args:
        scores: ``[B, H, Q, K]`` float32/float16/bfloat16, any strides (never copied).
        attention_mask: ``None``; ``[B, K]`` bool/integer (nonzero = attend, as HF tokenizers give it); or 4D
            broadcastable to ``[B, H, Q, K]``: bool (True = attend) or floating additive (added to
            ``scale * scores``; ``-inf`` and values <= ``finfo(mask.dtype).min / 2`` are masked).
        causal: query ``i`` sees key ``j`` iff ``j <= i + K - Q`` (bottom-right, as with a KV cache).
        scale: multiplies the scores before the mask is added; a number or a one-element tensor (not
            differentiated), at most FLT_MAX / log2(e) = 2.36e38 in magnitude.
        sinks: attention sinks (GPT-OSS): None, or a floating tensor ``[H]`` on the scores' device, one logit per
            head that joins every row's softmax as an extra column (compared with ``scale * scores`` + mask) and is
            left out of the result, so a row sums to less than 1; a fully masked row stays all 0. ``-inf`` is no
            sink; ``+inf`` or NaN make the row NaN, as they do in a softmax over the concatenated column.

    Returns:
        ``[B, H, Q, K]`` contiguous, ``scores.dtype``; masked entries exactly 0, fully masked rows all 0.
        Differentiable w.r.t. ``scores`` and ``sinks``.

    CUDA tensors run the Triton kernels. CPU tensors run them in Triton's interpreter when ``TRITON_INTERPRET=1``
    was set before import (setting it later changes nothing), and otherwise the plain-PyTorch reference with the
    same semantics.
    """
    validate_scores(scores)
    scale = validate_scale(scale)
    spec = _masks.prepare_mask(attention_mask, tuple(scores.shape), scores.device)
    if scores.device.type not in ("cuda", "cpu"):
        raise ValueError(f"masked_softmax runs on CUDA (or CPU) tensors, got a tensor on {scores.device}")
    sinks = sinks_tensor(sinks, scores.shape[1], scores.device)
    if not kernels_take(scores):
        return masked_softmax_reference(scores, spec, causal=bool(causal), scale=scale, sinks=sinks)
    path = _ops.call_path(scores) if sinks is None else _ops.call_path(scores, sinks)
    blocks = (MAX_SINGLE_PASS_K, LOOP_BLOCK_K)
    if path != "op":  # eager: a 2D mask's key ranges cached per mask object (HF hands one mask to every layer)
        with _ops.on_device(scores):
            ranges = _masks.spec_ranges(spec, attention_mask) if scores.numel() else None
            if path == "direct":  # inference: straight to the launcher (the dispatcher costs more than small kernels)
                return _forward(scores, spec, bool(causal), scale, blocks, ranges, sinks)
        return MaskedSoftmaxFunction.apply(scores, spec, bool(causal), scale, blocks, ranges, sinks)  # eager autograd
    # One custom-operator call (torch.compile keeps it as one node, autograd records it); the mask travels as given.
    return _ops.masked_softmax_op(
        scores, attention_mask, spec.kind, spec.threshold, bool(causal), scale, MAX_SINGLE_PASS_K, LOOP_BLOCK_K, sinks
    )
