"""Masked softmax over attention scores ``[B, H, Q, K]``: Triton kernels, launchers, public function.

Forward, for every row ``r = (b, h, i)``::

    x_j = scale * S[b,h,i,j] (+ A[b,h,i,j] for an additive mask)   for kept j
    Y[b,h,i,j] = exp(x_j - max_kept x) / sum_kept exp(x - max_kept x) for kept j, 0 elsewhere

where ``j`` is kept when the mask keeps it and, with ``causal``, ``j <= i + K - Q`` (bottom-right alignment). All math
runs in fp32. A row with nothing kept (or whose kept scores are all ``-inf``) is all zeros.

Backward (``Y`` saved, ``dY`` incoming)::

    dS = scale * Y * (dY - sum_j dY_j Y_j)

Masked entries have ``Y = 0`` and therefore ``dS = 0``; the kernels write those zeros without reading ``dY``.

Two forward/backward paths, chosen by the launcher from ``K``:

* single pass: a whole row fits a register tile (``K <= MAX_SINGLE_PASS_K``); ``BLOCK_M`` rows per program for short
  rows, so small ``K`` still moves wide, coalesced tiles;
* looped: one row per program, ``BLOCK_K`` columns at a time; an online max/sum pass, then a normalise-and-store pass.
  There is no upper limit on ``K``.

A 2D padding mask is first summarised per sequence as a key window ``[lo, hi)`` plus a "holes inside" flag (a tiny
kernel); with causality the window ends at ``i + K - Q``. Loads are predicated on the window rounded out to aligned
16-column groups (so the compiler keeps 16-byte loads), and the looped path starts at the window's first block:
scores outside a row's window are never read. Offsets are int64, so tensors of more than 2**31 elements work. Scores
are read through their strides (transposed, sliced and stride-0 views) and never copied; the output is a fresh
contiguous tensor. Autograd is registered on the custom operator in :mod:`hf_masked_softmax.ops`, whose forward and
backward call ``_forward`` / ``_backward`` below.
"""
from __future__ import annotations

import numbers
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from . import masks as _masks
from . import ops as _ops
from .reference import masked_softmax_reference

MAX_SINGLE_PASS_K = 8192
LOOP_BLOCK_K = 4096
LOAD_GROUP = 16  # load predicates are constant over aligned groups of this many columns (16-byte fp16 loads)
_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------------------------
@triton.jit
def _row_coords(rows, H, Q):
    """Split flat row indices (int64) into (batch, head, query)."""
    q = rows % Q
    bh = rows // Q
    return bh // H, bh % H, q


@triton.jit
def _row_window(ranges_ptr, b, q, Q, K, MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr):
    """The keys ``[lo, hi)`` a row can see, and whether its padding mask has holes inside that window."""
    lo = tl.zeros_like(q).to(tl.int32)
    hi = lo + K
    holes = lo
    if MASK_KIND == 1:
        # rows of masks.pad_ranges: (start, end, has_holes, unused)
        lo = tl.load(ranges_ptr + b * 4)
        hi = tl.load(ranges_ptr + b * 4 + 1)
        holes = tl.load(ranges_ptr + b * 4 + 2)
    if CAUSAL:
        hi = tl.minimum(hi, (q + (K - Q) + 1).to(tl.int32))
    return lo, hi, holes


@triton.jit
def _keep_tile(
    mask_ptr,
    b, h, q, cols, live, lo, hi, holes,
    mask_stride_b, mask_stride_h, mask_stride_q, mask_stride_k,
    add_threshold,
    MASK_KIND: tl.constexpr,
    GROUP: tl.constexpr,
):
    """(keep, load predicate, additive values) for a ``[rows, cols]`` tile.

    ``keep`` is exact. The load predicate covers the row's window ``[lo, hi)`` rounded out to aligned groups of
    ``GROUP`` columns: a predicate that is constant over such groups lets the compiler issue 16-byte loads, while
    whole groups outside the window are still never read. Masked entries inside the loaded groups are discarded by
    ``keep``. 4D masks decide per element, so there the predicate is ``keep`` itself.
    """
    keep = live & (cols >= lo) & (cols < hi)
    pred = live & (cols // GROUP >= lo // GROUP) & (cols // GROUP <= (hi - 1) // GROUP)
    add = tl.zeros(keep.shape, dtype=tl.float32)
    if MASK_KIND == 1:  # 2D padding mask [B, K]; only sequences with holes need their mask read
        if tl.max(holes + tl.zeros_like(keep).to(tl.int32), axis=None) != 0:  # one branch, not per-element predicates
            m = tl.load(mask_ptr + b * mask_stride_b + cols * mask_stride_k, mask=keep & (tl.zeros_like(cols) + holes != 0), other=1)
            keep = keep & (m != 0)
    elif MASK_KIND == 2:  # 4D boolean mask, True = attend
        off = b * mask_stride_b + h * mask_stride_h + q * mask_stride_q + cols * mask_stride_k
        m = tl.load(mask_ptr + off, mask=keep, other=0)
        keep = keep & (m != 0)
        pred = keep
    elif MASK_KIND == 3:  # 4D additive mask; -inf and values <= threshold mean "masked"
        off = b * mask_stride_b + h * mask_stride_h + q * mask_stride_q + cols * mask_stride_k
        m = tl.load(mask_ptr + off, mask=keep, other=0).to(tl.float32)
        keep = keep & ~(m <= add_threshold)  # NaN is kept (and poisons its row), never silently masked
        add = tl.where(keep, m, 0.0)
        pred = keep
    return keep, pred, add


@triton.jit
def _single_pass_tile(
    mask_ptr, ranges_ptr,
    mask_stride_b, mask_stride_h, mask_stride_q, mask_stride_k,
    n_rows, H, Q, K, add_threshold,
    MASK_KIND: tl.constexpr,
    CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP: tl.constexpr,
    WIDE: tl.constexpr,
):
    """This program's ``[BLOCK_M, BLOCK_K]`` tile of whole rows: indices, coordinates, bounds and masks."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_K)[None, :]
    if WIDE:  # an offset can reach 2**31: int64 index math (int32 otherwise: int64 division is slow)
        rows = rows.to(tl.int64)
        cols = cols.to(tl.int64)
    b, h, q = _row_coords(rows, H, Q)
    b, h, q = b[:, None], h[:, None], q[:, None]
    live = (rows < n_rows)[:, None] & (cols < K)
    lo, hi, holes = _row_window(ranges_ptr, b, q, Q, K, MASK_KIND, CAUSAL)
    keep, pred, add = _keep_tile(
        mask_ptr, b, h, q, cols, live, lo, hi, holes,
        mask_stride_b, mask_stride_h, mask_stride_q, mask_stride_k,
        add_threshold, MASK_KIND, GROUP,
    )
    return rows, cols, b, h, q, live, keep, pred, add


@triton.jit
def _fwd_single_pass_kernel(
    s_ptr, y_ptr, mask_ptr, ranges_ptr,
    s_stride_b, s_stride_h, s_stride_q, s_stride_k,
    mask_stride_b, mask_stride_h, mask_stride_q, mask_stride_k,
    n_rows, H, Q, K, scale, add_threshold,
    MASK_KIND: tl.constexpr,
    CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP: tl.constexpr,
    WIDE: tl.constexpr,
):
    rows, cols, b, h, q, live, keep, pred, add = _single_pass_tile(
        mask_ptr, ranges_ptr, mask_stride_b, mask_stride_h, mask_stride_q, mask_stride_k,
        n_rows, H, Q, K, add_threshold, MASK_KIND, CAUSAL, BLOCK_M, BLOCK_K, GROUP, WIDE,
    )
    s_row = s_ptr + (b * s_stride_b + h * s_stride_h + q * s_stride_q)
    x = tl.load(s_row + cols * s_stride_k, mask=pred, other=0.0).to(tl.float32) * scale + add
    x = tl.where(keep, x, float("-inf"))
    row_max = tl.max(x, axis=1)
    # Empty rows (max = -inf) shift by 0 so that exp() gives 0 instead of NaN.
    row_max = tl.where(row_max == float("-inf"), 0.0, row_max)
    e = tl.where(keep, tl.exp(x - row_max[:, None]), 0.0)
    denom = tl.sum(e, axis=1)
    # An empty row has denom 0 and all-zero numerators: divide by 1 instead.
    inv = 1.0 / tl.where(denom == 0.0, 1.0, denom)
    y = tl.where(keep, e * inv[:, None], 0.0)
    tl.store(y_ptr + rows[:, None] * K + cols, y.to(y_ptr.dtype.element_ty), mask=live)


@triton.jit
def _fwd_looped_kernel(
    s_ptr, y_ptr, mask_ptr, ranges_ptr,
    s_stride_b, s_stride_h, s_stride_q, s_stride_k,
    mask_stride_b, mask_stride_h, mask_stride_q, mask_stride_k,
    H, Q, K, scale, add_threshold,
    MASK_KIND: tl.constexpr,
    CAUSAL: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP: tl.constexpr,
    WIDE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b, h, q = _row_coords(row, H, Q)
    s_row = s_ptr + (b * s_stride_b + h * s_stride_h + q * s_stride_q)
    y_row = y_ptr + row * K
    lo, hi, holes = _row_window(ranges_ptr, b, q, Q, K, MASK_KIND, CAUSAL)
    # Blocks wholly outside [lo, hi) hold only zeros: pass 1 never visits them.
    first_block = (lo // BLOCK_K) * BLOCK_K

    # Pass 1: running max and running sum of exp(x - max), one block of columns at a time.
    run_max = tl.full([BLOCK_K], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_K], tl.float32)
    for start in range(first_block, hi, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        if WIDE:
            cols = cols.to(tl.int64)
        keep, pred, add = _keep_tile(
            mask_ptr, b, h, q, cols, cols < K, lo, hi, holes,
            mask_stride_b, mask_stride_h, mask_stride_q, mask_stride_k,
            add_threshold, MASK_KIND, GROUP,
        )
        x = tl.load(s_row + cols * s_stride_k, mask=pred, other=0.0).to(tl.float32) * scale + add
        x = tl.where(keep, x, float("-inf"))
        new_max = tl.maximum(run_max, x)
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        run_sum = run_sum * tl.exp(run_max - safe_max) + tl.where(keep, tl.exp(x - safe_max), 0.0)
        run_max = new_max
    row_max = tl.max(run_max, axis=0)
    safe_row_max = tl.where(row_max == float("-inf"), 0.0, row_max)
    lane_max = tl.where(run_max == float("-inf"), 0.0, run_max)
    denom = tl.sum(tl.where(run_sum == 0.0, 0.0, run_sum * tl.exp(lane_max - safe_row_max)), axis=0)
    inv = 1.0 / tl.where(denom == 0.0, 1.0, denom)

    # Pass 2: normalise and store; blocks outside the window are written as zeros without reading.
    for start in range(0, K, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        if WIDE:
            cols = cols.to(tl.int64)
        live = cols < K
        keep, pred, add = _keep_tile(
            mask_ptr, b, h, q, cols, live, lo, hi, holes,
            mask_stride_b, mask_stride_h, mask_stride_q, mask_stride_k,
            add_threshold, MASK_KIND, GROUP,
        )
        x = tl.load(s_row + cols * s_stride_k, mask=pred, other=0.0).to(tl.float32) * scale + add
        y = tl.where(keep, tl.exp(x - safe_row_max) * inv, 0.0)
        tl.store(y_row + cols, y.to(y_ptr.dtype.element_ty), mask=live)


@triton.jit
def _bwd_single_pass_kernel(
    y_ptr, dy_ptr, ds_ptr, mask_ptr, ranges_ptr,
    dy_stride_b, dy_stride_h, dy_stride_q, dy_stride_k,
    mask_stride_b, mask_stride_h, mask_stride_q, mask_stride_k,
    n_rows, H, Q, K, scale, add_threshold,
    MASK_KIND: tl.constexpr,
    CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP: tl.constexpr,
    WIDE: tl.constexpr,
):
    rows, cols, b, h, q, live, keep, pred, _ = _single_pass_tile(
        mask_ptr, ranges_ptr, mask_stride_b, mask_stride_h, mask_stride_q, mask_stride_k,
        n_rows, H, Q, K, add_threshold, MASK_KIND, CAUSAL, BLOCK_M, BLOCK_K, GROUP, WIDE,
    )
    y = tl.load(y_ptr + rows[:, None] * K + cols, mask=pred, other=0.0).to(tl.float32)
    dy_row = dy_ptr + (b * dy_stride_b + h * dy_stride_h + q * dy_stride_q)
    dy = tl.load(dy_row + cols * dy_stride_k, mask=pred, other=0.0).to(tl.float32)
    y = tl.where(keep, y, 0.0)
    dy = tl.where(keep, dy, 0.0)
    dot = tl.sum(y * dy, axis=1)
    ds = scale * y * (dy - dot[:, None])
    tl.store(ds_ptr + rows[:, None] * K + cols, ds.to(ds_ptr.dtype.element_ty), mask=live)


@triton.jit
def _bwd_looped_kernel(
    y_ptr, dy_ptr, ds_ptr, mask_ptr, ranges_ptr,
    dy_stride_b, dy_stride_h, dy_stride_q, dy_stride_k,
    mask_stride_b, mask_stride_h, mask_stride_q, mask_stride_k,
    H, Q, K, scale, add_threshold,
    MASK_KIND: tl.constexpr,
    CAUSAL: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP: tl.constexpr,
    WIDE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b, h, q = _row_coords(row, H, Q)
    y_row = y_ptr + row * K
    dy_row = dy_ptr + (b * dy_stride_b + h * dy_stride_h + q * dy_stride_q)
    ds_row = ds_ptr + row * K
    lo, hi, holes = _row_window(ranges_ptr, b, q, Q, K, MASK_KIND, CAUSAL)
    first_block = (lo // BLOCK_K) * BLOCK_K

    acc = tl.zeros([BLOCK_K], tl.float32)
    for start in range(first_block, hi, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        if WIDE:
            cols = cols.to(tl.int64)
        keep, pred, _ = _keep_tile(
            mask_ptr, b, h, q, cols, cols < K, lo, hi, holes,
            mask_stride_b, mask_stride_h, mask_stride_q, mask_stride_k,
            add_threshold, MASK_KIND, GROUP,
        )
        y = tl.load(y_row + cols, mask=pred, other=0.0).to(tl.float32)
        dy = tl.load(dy_row + cols * dy_stride_k, mask=pred, other=0.0).to(tl.float32)
        acc += tl.where(keep, y * dy, 0.0)
    dot = tl.sum(acc, axis=0)

    for start in range(0, K, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        if WIDE:
            cols = cols.to(tl.int64)
        keep, pred, _ = _keep_tile(
            mask_ptr, b, h, q, cols, cols < K, lo, hi, holes,
            mask_stride_b, mask_stride_h, mask_stride_q, mask_stride_k,
            add_threshold, MASK_KIND, GROUP,
        )
        y = tl.load(y_row + cols, mask=pred, other=0.0).to(tl.float32)
        dy = tl.load(dy_row + cols * dy_stride_k, mask=pred, other=0.0).to(tl.float32)
        ds = tl.where(keep, scale * y * (dy - dot), 0.0)
        tl.store(ds_row + cols, ds.to(ds_ptr.dtype.element_ty), mask=cols < K)


# ----------------------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------------------
def _launch_config(K: int, max_single_pass_k: int, loop_block_k: int):
    """Pick the path and tile: (single_pass, BLOCK_M, BLOCK_K, num_warps)."""
    if K <= max_single_pass_k:
        block_k = triton.next_power_of_2(K)
        # Several short rows per program keep the tile at >= 2048 elements: wide, coalesced loads for small K.
        block_m = max(1, min(64, 2048 // block_k))
        tile = block_m * block_k
        num_warps = 4 if tile <= 2048 else (8 if tile <= 4096 else 16)
        return True, block_m, block_k, num_warps
    return False, 1, loop_block_k, 8 if loop_block_k >= 2048 else 4


def _wide(shape, *stride_sets) -> bool:
    """Whether an element offset can reach 2**31 in the output (contiguous ``shape``) or in a strided input: then the
    kernels index in int64 (a compile-time switch: int32 index math, int64 division above all, is much cheaper)."""
    numel = 1
    for n in shape:
        numel *= n
    if numel >= 2**31 - 1:
        return True
    return any(sum((n - 1) * abs(st) for n, st in zip(shape, strides) if n) >= 2**31 - 1 for strides in stride_sets)


def _mask_args(spec: _masks.MaskSpec, dummy: torch.Tensor, cache_key=None):
    """(mask tensor, its 4 strides, per-sequence key ranges) for the kernels; dummies where unused."""
    t = spec.tensor
    if spec.kind == _masks.NONE:
        return dummy, (0, 0, 0, 0), dummy
    if spec.kind == _masks.PAD2D:
        return t, (t.stride(0), 0, 0, t.stride(1)), _masks.pad_ranges(t, cache_key)
    return t, tuple(t.stride()), dummy


def _launch(single_kernel, looped_kernel, tensors, strides, spec, shape, causal, scale, blocks, cache_key=None):
    B, H, Q, K = shape
    n_rows = B * H * Q
    mask_t, mstr, ranges = _mask_args(spec, tensors[0], cache_key)
    single, block_m, block_k, num_warps = _launch_config(K, *blocks)
    wide = _wide(shape, strides, mstr)
    common = dict(MASK_KIND=spec.kind, CAUSAL=causal, BLOCK_K=block_k, GROUP=min(LOAD_GROUP, block_k), WIDE=wide,
                  num_warps=num_warps)
    if single:
        single_kernel[(triton.cdiv(n_rows, block_m),)](
            *tensors, mask_t, ranges, *strides, *mstr, n_rows, H, Q, K, float(scale), spec.threshold,
            BLOCK_M=block_m, **common,
        )
    else:
        looped_kernel[(n_rows,)](
            *tensors, mask_t, ranges, *strides, *mstr, H, Q, K, float(scale), spec.threshold, **common,
        )


def _forward(scores, spec, causal, scale, blocks, cache_key=None):
    y = torch.empty(scores.shape, dtype=scores.dtype, device=scores.device)
    if y.numel():
        _launch(_fwd_single_pass_kernel, _fwd_looped_kernel, (scores, y), scores.stride(), spec, scores.shape,
                causal, scale, blocks, cache_key)
    return y


def _backward(y, dy, spec, causal, scale, blocks):
    ds = torch.empty_like(y)
    if ds.numel():
        _launch(_bwd_single_pass_kernel, _bwd_looped_kernel, (y, dy, ds), dy.stride(), spec, y.shape,
                causal, scale, blocks)
    return ds


# ----------------------------------------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------------------------------------
def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def validate_scores(scores) -> None:
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 4:
        raise ValueError(
            f"scores must be 4D [batch, heads, q_len, k_len], got {scores.dim()}D shape {list(scores.shape)}"
        )
    if scores.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"scores must be float32, float16 or bfloat16, got {scores.dtype}")


def validate_scale(scale) -> float:
    """``scale`` as a float that stays finite in the kernels' fp32 math (1e39 is a finite double but fp32 inf)."""
    if isinstance(scale, bool) or not isinstance(scale, (numbers.Real, torch.Tensor)):
        raise TypeError(f"scale must be a float, got {type(scale).__name__}")
    scale = float(scale)
    if not abs(scale) <= torch.finfo(torch.float32).max:
        raise ValueError(f"scale must be finite in float32 (|scale| <= 3.4e38), got {scale}")
    return scale


def masked_softmax(
    scores: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    causal: bool = False,
    scale: float = 1.0,
) -> torch.Tensor:
    """Softmax of ``scale * scores`` over the last dim with padding / boolean / additive masks and causality fused.

    Args:
        scores: ``[B, H, Q, K]`` float32/float16/bfloat16, any strides (never copied).
        attention_mask: ``None``; ``[B, K]`` bool/integer (nonzero = attend, as HF tokenizers give it); or 4D
            broadcastable to ``[B, H, Q, K]``: bool (True = attend) or floating additive (added to
            ``scale * scores``; ``-inf`` and values <= ``finfo(mask.dtype).min / 2`` are masked).
        causal: query ``i`` sees key ``j`` iff ``j <= i + K - Q`` (bottom-right, as with a KV cache).
        scale: multiplies the scores before the mask is added.

    Returns:
        ``[B, H, Q, K]`` contiguous, ``scores.dtype``; masked entries exactly 0, fully masked rows all 0.
        Differentiable w.r.t. ``scores``.

    CUDA tensors run the Triton kernels. CPU tensors run them in Triton's interpreter when ``TRITON_INTERPRET=1``
    was set before import, and otherwise the plain-PyTorch reference with the same semantics.
    """
    validate_scores(scores)
    scale = validate_scale(scale)
    spec = _masks.prepare_mask(attention_mask, tuple(scores.shape), scores.device)
    if scores.device.type == "cpu" and not _interpreting():
        return masked_softmax_reference(scores, spec, causal=bool(causal), scale=scale)
    if scores.device.type not in ("cuda", "cpu"):
        raise ValueError(f"masked_softmax runs on CUDA (or CPU) tensors, got a tensor on {scores.device}")
    if not _ops.needs_dispatch(scores):
        # eager inference: straight to the launcher (the dispatcher costs ~100 us of Python per call on a GPU host)
        with _ops.on_device(scores):
            return _forward(scores, spec, bool(causal), scale, (MAX_SINGLE_PASS_K, LOOP_BLOCK_K), attention_mask)
    # One custom-operator call (torch.compile keeps it as one node, autograd records it); the mask travels as given.
    return _ops.masked_softmax_op(
        scores, attention_mask, spec.kind, spec.threshold, bool(causal), scale, MAX_SINGLE_PASS_K, LOOP_BLOCK_K
    )
