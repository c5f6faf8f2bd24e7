"""Hugging Face attention masks -> the compact forms the kernels read.

Three forms reach the kernels, never expanded in memory:

* ``PAD2D``  - a ``[B, K]`` padding mask as HF tokenizers give it (bool or integer, nonzero = attend).
* ``BOOL4D`` - a boolean mask broadcastable to ``[B, H, Q, K]`` (True = attend, the SDPA convention).
* ``ADD4D``  - a floating mask broadcastable to ``[B, H, Q, K]`` that is *added* to ``scale * scores`` (HF eager
  convention). ``-inf`` and values at or below half of the mask dtype's ``finfo.min`` count as masked: HF fills masked
  positions with ``finfo.min`` and may add two such masks, which must not wrap into a finite, attended score.
* ``SEGMENTS`` - packed sequences (the fused attention's ``segments``, padding-free training): ``[B, L]`` integer ids,
  ``Q == K == L``; each run of equal consecutive ids is one sequence, and a token sees only the tokens of its own run.
  The kernels read it as each token's run ``[first, end)`` (``segment_bounds``) and visit only the key blocks of
  the runs a query block meets (``segment_mask_bounds``, in ``mask_bounds``' layout).

4D masks become stride-0 ``expand`` views, so broadcasting costs no memory. Boolean tensors are reinterpreted as
``uint8`` (same storage) because that is the element type the kernels load. Both kernels read a 2D padding mask
through its per-sequence key range (``pad_ranges``): they skip everything outside it and read the mask itself only for
sequences with holes. The attention kernels read a 4D mask within its bounds (``mask_bounds``: the kept keys' extent
per sequence, head and 16 query rows, and the queries' per 16 keys) and skip the blocks outside them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from ._launch import fast_launch, kernels_take, weak_entry

NONE, PAD2D, BOOL4D, ADD4D, SEGMENTS = 0, 1, 2, 3, 4
KIND_NAMES = {NONE: "none", PAD2D: "2d-padding", BOOL4D: "4d-bool", ADD4D: "4d-additive", SEGMENTS: "segments"}

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class MaskSpec:
    """A validated mask. ``tensor`` is ``[B, K]`` (PAD2D) or a ``[B, H, Q, K]`` view (BOOL4D/ADD4D) or None."""

    kind: int
    tensor: Optional[torch.Tensor]
    threshold: float = 0.0  # ADD4D: values <= threshold are masked

    @property
    def name(self) -> str:
        return KIND_NAMES[self.kind]


def masked_threshold(dtype: torch.dtype) -> float:
    """The additive value at or below which an entry counts as masked (half of ``finfo(dtype).min``)."""
    return float(torch.finfo(dtype).min) / 2


def prepare_mask(attention_mask: Optional[torch.Tensor], shape, device: torch.device) -> MaskSpec:
    """Validate ``attention_mask`` against scores of ``shape == (B, H, Q, K)`` and classify it.

    Raises ``ValueError`` for shapes, ``TypeError`` for dtypes and ``ValueError`` for a device mismatch.
    """
    if attention_mask is None:
        return MaskSpec(NONE, None)
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor or None, got {type(attention_mask).__name__}")
    B, H, Q, K = shape
    if attention_mask.device != device:
        raise ValueError(
            f"attention_mask is on device {attention_mask.device} but the scores are on device {device}; move it there"
        )
    dt = attention_mask.dtype
    if attention_mask.dim() == 2:
        if dt.is_floating_point or dt.is_complex:
            raise TypeError(
                f"a 2D attention_mask must be bool or integer (nonzero = attend), got {dt}; a floating 2D mask is "
                "ambiguous (0/1 keep-mask or 0/-inf additive) - pass it as bool, or as an additive 4D mask"
            )
        if tuple(attention_mask.shape) != (B, K):
            raise ValueError(
                f"a 2D attention_mask must have shape [batch, k_len] = [{B}, {K}], got {list(attention_mask.shape)}"
            )
        t = attention_mask.view(torch.uint8) if dt == torch.bool else attention_mask
        return MaskSpec(PAD2D, t)
    if attention_mask.dim() == 4:
        try:
            view = attention_mask.expand(B, H, Q, K)
        except RuntimeError:
            raise ValueError(
                f"a 4D attention_mask must broadcast to the scores' shape [B, H, Q, K] = [{B}, {H}, {Q}, {K}], "
                f"got {list(attention_mask.shape)}"
            ) from None
        if dt == torch.bool:
            return MaskSpec(BOOL4D, view.view(torch.uint8) if view.numel() else view)
        if dt in _FLOAT_DTYPES:
            if attention_mask.requires_grad and torch.is_grad_enabled():
                # the kernels differentiate w.r.t. the scores (q, k, v) only; a silently missing gradient would be worse
                raise ValueError(
                    "attention_mask requires grad, but gradients w.r.t. the mask are not computed; pass "
                    "attention_mask.detach() (or build the mask under torch.no_grad())"
                )
            return MaskSpec(ADD4D, view, masked_threshold(dt))
        raise TypeError(
            f"a 4D attention_mask must be bool (True = attend) or floating (additive), got {dt}"
        )
    raise ValueError(
        f"attention_mask must be 2D [batch, k_len] or 4D broadcastable to [B, H, Q, K]; got {attention_mask.dim()}D "
        f"shape {list(attention_mask.shape)}"
    )


def prepare_segments(segments, attention_mask, shape, device: torch.device) -> MaskSpec:
    """Validate the fused attention's ``segments`` (packed sequences) for scores of ``shape == (B, H, Q, K)``: a
    ``[B, K]`` integer tensor on ``device``, ``Q == K``, and no ``attention_mask`` beside it. Returns
    ``MaskSpec(SEGMENTS, segments)``."""
    if not isinstance(segments, torch.Tensor):
        raise TypeError(f"segments must be a torch.Tensor or None, got {type(segments).__name__}")
    B, _, Q, K = shape
    if segments.dtype.is_floating_point or segments.dtype.is_complex or segments.dtype == torch.bool:
        raise TypeError(f"segments must be an integer tensor (one id per token), got {segments.dtype}")
    if segments.dim() != 2 or tuple(segments.shape) != (B, K):
        raise ValueError(f"segments must have shape [batch, k_len] = [{B}, {K}], got {list(segments.shape)}")
    if Q != K:
        raise ValueError(f"segments need q_len == k_len (packed self-attention without a cache), got q_len {Q} and "
                         f"k_len {K}")
    if segments.device != device:
        raise ValueError(f"segments is on device {segments.device} but q is on device {device}; move it there")
    if attention_mask is not None:
        raise ValueError("segments cannot be combined with attention_mask: give padding tokens a segment id of "
                         "their own (they then see only each other), or pass a 4D mask alone")
    return MaskSpec(SEGMENTS, segments)


def segment_runs(segments: torch.Tensor) -> torch.Tensor:
    """int64 ``[B, L]``: each token's run index in its row (0, 1, ...): a new run wherever the id changes."""
    change = torch.ones(segments.shape, dtype=torch.int64, device=segments.device)
    if segments.shape[1] > 1:
        change[:, 1:] = (segments[:, 1:] != segments[:, :-1]).to(torch.int64)
    return torch.cumsum(change, dim=1) - 1


def keep_mask(spec: MaskSpec, shape, *, causal: bool, device, window: Optional[int] = None) -> torch.Tensor:
    """The dense boolean ``[B, H, Q, K]`` keep-mask of ``spec`` plus causality (reference path only); ``window``:
    query ``i`` keeps only keys ``j > i + K - Q - window`` (a sliding window; None or 0: none), and without
    causality also ``j < i + K - Q + window`` (a bidirectional window: ``|j - (i + K - Q)| < window``)."""
    B, H, Q, K = shape
    keep = torch.ones(shape, dtype=torch.bool, device=device)
    if spec.kind == PAD2D:
        keep = keep & (spec.tensor != 0)[:, None, None, :]
    elif spec.kind == BOOL4D:
        keep = keep & (spec.tensor != 0)
    elif spec.kind == ADD4D:
        m = spec.tensor
        keep = keep & ~((m == float("-inf")) | (m <= spec.threshold))
    elif spec.kind == SEGMENTS:
        run = segment_runs(spec.tensor)
        keep = keep & (run[:, None, :, None] == run[:, None, None, :])
    if causal or window:
        diag = torch.arange(Q, device=device)[:, None] + (K - Q)  # each query's own key index
        j = torch.arange(K, device=device)[None, :]
        if causal:
            keep = keep & (j <= diag)
        if window:
            keep = keep & (j > diag - window)
            if not causal:
                keep = keep & (j < diag + window)
    return keep


# ----------------------------------------------------------------------------------------------------------------------
# Per-sequence key ranges of a 2D padding mask
# ----------------------------------------------------------------------------------------------------------------------
RANGES_WIDTH = 4  # int32 row per sequence: start, end, has_holes, (padding to 16 bytes)


@fast_launch
@triton.jit
def _pad_ranges_kernel(mask_ptr, ranges_ptr, stride_mb, stride_mk, K_LEN, BLOCK: tl.constexpr):
    """Per sequence ``b`` of a ``[B, K]`` padding mask: first kept key, last kept key + 1, and whether the kept keys
    have holes. A sequence with no kept key gets ``start = K, end = 0`` (an empty range)."""
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    first = K_LEN
    last = -1
    count = 0
    for n0 in range(0, K_LEN, BLOCK):
        cols = n0 + offs
        kept = tl.load(mask_ptr + b * stride_mb + cols * stride_mk, mask=cols < K_LEN, other=0) != 0
        first = tl.minimum(first, tl.min(tl.where(kept, cols, K_LEN), axis=0))
        last = tl.maximum(last, tl.max(tl.where(kept, cols, -1), axis=0))
        count += tl.sum(kept.to(tl.int32), axis=0)
    end = last + 1
    holes = (count > 0) & (count != end - first)
    tl.store(ranges_ptr + b * 4 + 0, first)
    tl.store(ranges_ptr + b * 4 + 1, end)
    tl.store(ranges_ptr + b * 4 + 2, holes.to(tl.int32))


# id(mask) -> (weakref to mask, version, ranges), see _launch.weak_entry
RANGE_CACHE: dict = {}
# id(mask) -> (weakref to mask,): the masks whose ranges may be cached (see ``share_ranges``)
_SHARED: dict = {}


def share_ranges(mask: torch.Tensor) -> torch.Tensor:
    """Let calls that get this ``[B, K]`` mask object share its key ranges; returns ``mask``.

    For a mask that its maker hands to every layer of one forward and to nothing else: the Hugging Face mask
    function makes a fresh one per forward. Other masks get their ranges computed on every call, because some writes
    change a tensor without bumping the version counter the cache checks (through ``.data``, or through the NumPy
    array ``torch.from_numpy`` shares memory with).
    """
    weak_entry(_SHARED, id(mask), mask)
    return mask


def _cache_version(cache_key: Optional[torch.Tensor], tensor: torch.Tensor) -> Optional[int]:
    """The version of ``cache_key`` under which a result computed from ``tensor`` may be cached, or None: not a
    mask passed to ``share_ranges``, an inference tensor (no version counter), or a CUDA graph being captured (the
    kernel is recorded in the graph, so a replay after an in-place update of the mask does not read a result computed
    at capture time)."""
    if cache_key is None:
        return None
    shared = _SHARED.get(id(cache_key))
    if shared is None or shared[0]() is not cache_key:
        return None
    if tensor.is_cuda and torch.cuda.is_current_stream_capturing():
        return None
    try:
        return cache_key._version
    except RuntimeError:  # inference tensors carry no version counter: never cache them
        return None


def pad_ranges(mask: torch.Tensor, cache_key: Optional[torch.Tensor] = None) -> torch.Tensor:
    """int32 ``[B, RANGES_WIDTH]`` (start, end, has_holes, unused) of a ``[B, K]`` padding mask, by a tiny kernel.

    With ``cache_key`` (the caller's mask object), if that was passed to ``share_ranges``, the result is cached while
    that tensor's version is unchanged: HF passes one mask object to every layer. Only eager calls pass a key: inside
    compiled graphs (whose CUDA-graph trees forbid allocations that outlive a replay) and while a CUDA graph is
    captured the kernel runs every time.
    """
    version = _cache_version(cache_key, mask)
    key = id(cache_key)
    if version is not None:
        hit = RANGE_CACHE.get(key)
        if hit is not None and hit[0]() is cache_key and hit[1] == version:
            return hit[2]
    B, K = mask.shape
    ranges = torch.empty((B, RANGES_WIDTH), dtype=torch.int32, device=mask.device)
    block = 1 << (max(K, 16) - 1).bit_length()  # plain Python: triton.next_power_of_2 costs microseconds here
    _pad_ranges_kernel[(B,)](mask, ranges, mask.stride(0), mask.stride(1), K, BLOCK=min(1024, block))
    if version is not None:
        weak_entry(RANGE_CACHE, key, cache_key, version, ranges)
    return ranges


def spec_ranges(spec: MaskSpec, cache_key: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """The key ranges of a validated 2D padding mask (cached per ``cache_key``, see ``pad_ranges``); None for other
    masks."""
    if spec.kind != PAD2D:
        return None
    return pad_ranges(spec.tensor, cache_key)


# ----------------------------------------------------------------------------------------------------------------------
# Key bounds of a 4D mask
# ----------------------------------------------------------------------------------------------------------------------
# id(mask) -> (weakref to mask, version, bounds, (layout, K, additive, threshold), with row bounds), see mask_bounds
BOUNDS_CACHE: dict = {}
BOUNDS_CHUNK = 16  # query rows per bound: the attention forward's query blocks are 16 rows or a multiple of 16


@dataclass(frozen=True)
class BoundsLayout:
    """Which of a ``[B, H, Q, K]`` 4D mask view's own elements one key bound covers: one bound per batch entry (or one
    for all, where the mask broadcasts over the batch), per head (or one for all), and per ``BOUNDS_CHUNK`` query
    rows (or one for all rows: a mask that broadcasts over the queries, or one of at most ``BOUNDS_CHUNK`` rows).
    ``per_b``/``per_h``: how many distinct batch entries / heads; ``rows``: the rows a chunk count covers."""

    per_b: int
    per_h: int
    rows: int

    @property
    def chunks(self) -> int:
        return -(-self.rows // BOUNDS_CHUNK)


def bounds_layout(view: torch.Tensor) -> BoundsLayout:
    """The :class:`BoundsLayout` of a ``[B, H, Q, K]`` mask view (a broadcast dimension has stride 0)."""
    B, H, Q, _ = view.shape
    sb, sh, sq, _ = view.stride()
    return BoundsLayout(B if sb != 0 and B > 1 else 1, H if sh != 0 and H > 1 else 1, Q if sq != 0 and Q > 1 else 1)


@fast_launch
@triton.jit
def _mask4d_bounds_kernel(mask_ptr, out_ptr, stride_mb, stride_mh, stride_mm, stride_mk, PER_H, ROWS, Q_LEN, K_LEN,
                          threshold, ADDITIVE: tl.constexpr, CHUNK: tl.constexpr, TILE_ROWS: tl.constexpr,
                          BLOCK: tl.constexpr, ROW_BOUNDS: tl.constexpr):
    """Program ``(i, c, n)``, ``i = b * PER_H + h``: the mask rows ``[c * CHUNK, (c + 1) * CHUNK)`` of batch entry ``b``
    and head ``h``, over the key blocks ``n, n + num_programs(2), ...``. Entry ``i`` of ``out`` holds
    ``num_programs(1)`` key bounds, one per row chunk: ``K - first kept key`` and ``last kept key + 1``; then
    ``cdiv(K, CHUNK)`` row bounds, one per chunk of ``CHUNK`` keys: ``Q - first query that keeps one of them`` and
    ``last such query + 1`` (a mask of one row, broadcast: every query, or none). All merged by atomic max from zeros
    (nothing kept). Kept is what the attention kernels keep: nonzero, or (additive) a value that is not
    ``<= threshold`` once rounded to fp32. ``TILE_ROWS``: ``CHUNK``, or 1 for a mask of one row. ``ROW_BOUNDS``
    off: the row bounds are left at zero (forward-only calls, which never read them). The atomics are relaxed: only
    the kernel's end result is read, by later kernels."""
    i = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    b = i // PER_H
    h = i % PER_H
    rows = c * CHUNK + tl.arange(0, TILE_ROWS)
    row_ok = rows < ROWS
    offs = tl.arange(0, BLOCK)
    base = mask_ptr + b * stride_mb + h * stride_mh + rows[:, None].to(tl.int64) * stride_mm
    entry = out_ptr + i * (tl.num_programs(1) + tl.cdiv(K_LEN, CHUNK)) * 2
    row_first = rows
    row_end = rows + 1
    if ROWS == 1:  # one row for every query
        row_first = rows * 0
        row_end = rows * 0 + Q_LEN
    from_end = tl.zeros([], dtype=tl.int32)  # K - the first kept key
    end = tl.zeros([], dtype=tl.int32)
    for n0 in range(tl.program_id(2) * BLOCK, K_LEN, tl.num_programs(2) * BLOCK):
        cols = n0 + offs
        ok = row_ok[:, None] & (cols < K_LEN)[None, :]
        m = tl.load(base + cols[None, :].to(tl.int64) * stride_mk, mask=ok, other=0)
        if ADDITIVE:
            kept = ok & ~(m.to(tl.float32) <= threshold)
        else:
            kept = ok & (m != 0)
        from_end = tl.maximum(from_end, tl.max(tl.max(tl.where(kept, K_LEN - cols[None, :], 0), axis=1), axis=0))
        end = tl.maximum(end, tl.max(tl.max(tl.where(kept, cols[None, :] + 1, 0), axis=1), axis=0))
        if ROW_BOUNDS:  # per key: the first and last rows keeping it, then per CHUNK keys
            col_from_end = tl.max(tl.where(kept, Q_LEN - row_first[:, None], 0), axis=0)
            col_end = tl.max(tl.where(kept, row_end[:, None], 0), axis=0)
            k_from_end = tl.max(tl.reshape(col_from_end, (BLOCK // CHUNK, CHUNK)), axis=1)
            k_end = tl.max(tl.reshape(col_end, (BLOCK // CHUNK, CHUNK)), axis=1)
            kc = n0 // CHUNK + tl.arange(0, BLOCK // CHUNK)
            k_ok = (kc < tl.cdiv(K_LEN, CHUNK)) & (k_end > 0)
            at = entry + (tl.num_programs(1) + kc) * 2
            tl.atomic_max(at, k_from_end, mask=k_ok, sem="relaxed")
            tl.atomic_max(at + 1, k_end, mask=k_ok, sem="relaxed")
    at = entry + c * 2
    tl.atomic_max(at, from_end, sem="relaxed")
    tl.atomic_max(at + 1, end, sem="relaxed")


def mask_bounds(view: torch.Tensor, additive: bool, threshold: float,
                cache_key: Optional[torch.Tensor] = None, rows: bool = True) -> torch.Tensor:
    """int32 ``[per_b, per_h, chunks + cdiv(K, 16), 2]`` (see :func:`bounds_layout`) of a 4D mask view
    ``[B, H, Q, K]`` (uint8 for a bool mask): per chunk of 16 rows, ``K`` minus the first kept key and the last kept
    key + 1; then per chunk of 16 keys, ``Q`` minus the first query that keeps one of them and the last such query
    + 1 (the backward's dk / dv kernel walks those rows only). ``(0, 0)`` where nothing is kept (so that zeros start
    the atomic maxima that merge the programs). :func:`key_bounds` reads the first part as ``(first, end)``,
    :func:`row_bounds` the second, which only backward passes read: ``rows=False`` (a forward that autograd does not
    record) leaves it at zero, which is then no bound to read. The attention kernels visit only the blocks inside
    the bounds, so that a static cache's unfilled keys, the future of a causal 4D mask or the other documents of a
    block-diagonal one are skipped rather than read and masked.

    Cached per ``cache_key`` as :func:`pad_ranges` caches (a mask passed to :func:`share_ranges`, unchanged version,
    same layout and threshold); otherwise computed on every call, reading each of the mask's own elements once: one
    memset and one small kernel, whose programs split the key blocks too, so that one row of a long cache is read in
    parallel."""
    layout = bounds_layout(view)
    K = view.shape[3]
    version = _cache_version(cache_key, view)
    tag = (layout, K, additive, threshold)
    if version is not None:
        hit = BOUNDS_CACHE.get(id(cache_key))
        # (bounds with their row part serve a call without it too)
        if hit is not None and hit[0]() is cache_key and hit[1] == version and hit[3] == tag and (hit[4] or not rows):
            return hit[2]
    key_chunks = -(-K // BOUNDS_CHUNK)
    out = torch.zeros((layout.per_b, layout.per_h, layout.chunks + key_chunks, 2), dtype=torch.int32,
                      device=view.device)
    tile_rows = 1 if layout.rows == 1 else BOUNDS_CHUNK
    block = min(4096 // tile_rows, 1 << (max(K, 16) - 1).bit_length())  # plain Python: next power of two
    key_programs = min(-(-K // block), 64)  # at most 64 programs per row chunk (each loops over its key blocks)
    grid = (layout.per_b * layout.per_h, layout.chunks, key_programs)
    if view.numel():  # (an empty mask, no queries or no keys: nothing kept, and nothing to read)
        sb, sh, sq, sk = view.stride()
        _mask4d_bounds_kernel[grid](view, out, sb, sh, sq, sk, layout.per_h, layout.rows, view.shape[2], K,
                                    float(threshold),
                                    ADDITIVE=additive, CHUNK=BOUNDS_CHUNK, TILE_ROWS=tile_rows, BLOCK=block,
                                    ROW_BOUNDS=bool(rows))
    if version is not None:
        weak_entry(BOUNDS_CACHE, id(cache_key), cache_key, version, out, tag, bool(rows))
    return out


def key_bounds(bounds: torch.Tensor, K: int) -> torch.Tensor:
    """``(first kept key, last kept key + 1)`` per row chunk from :func:`mask_bounds`' output; ``(K, 0)`` where
    nothing is kept."""
    out = bounds[:, :, : bounds.shape[2] - (-(-K // BOUNDS_CHUNK))].clone()
    out[..., 0] = K - out[..., 0]
    return out


def row_bounds(bounds: torch.Tensor, Q: int, K: int) -> torch.Tensor:
    """``(first query, last query + 1)`` keeping some key, per chunk of 16 keys, from :func:`mask_bounds`' output;
    ``(Q, 0)`` where no query keeps any."""
    out = bounds[:, :, bounds.shape[2] - (-(-K // BOUNDS_CHUNK)):].clone()
    out[..., 0] = Q - out[..., 0]
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Packed sequences (segments)
# ----------------------------------------------------------------------------------------------------------------------
# id(segments) -> (weakref to segments, version, (runs, bounds), rows), see segment_tensors
SEGMENT_CACHE: dict = {}


@triton.jit
def _max_fn(a, b):
    return tl.maximum(a, b)


@triton.jit
def _min_fn(a, b):
    return tl.minimum(a, b)


@fast_launch
@triton.jit
def _segment_runs_kernel(ids_ptr, runs_ptr, bounds_ptr, stride_ib, stride_it, L, PLANE, CHUNKS, BOUNDS: tl.constexpr,
                         CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """Program ``b``: row ``b`` of the ids. Each token's run start (a running maximum of the starts, blocks left to
    right) into plane 0 of ``runs``, its run end (a running minimum of the ends + 1, blocks right to left) into plane
    1; with ``BOUNDS``, per ``CHUNK`` tokens ``(L - the first token's start, the last token's end)``, twice over (the
    row's entry of :func:`segment_mask_bounds`' layout), stored by the tokens that hold them."""
    b = tl.program_id(0).to(tl.int64)
    row = ids_ptr + b * stride_ib
    offs = tl.arange(0, BLOCK)
    carry = tl.full([], 0, tl.int32)
    for n0 in range(0, L, BLOCK):
        t = n0 + offs
        ok = t < L
        x = tl.load(row + t * stride_it, mask=ok)
        prev = tl.load(row + (t - 1) * stride_it, mask=ok & (t > 0))
        start = (t == 0) | (x != prev)
        first = tl.maximum(tl.associative_scan(tl.where(start & ok, t, 0).to(tl.int32), 0, _max_fn), carry)
        tl.store(runs_ptr + b * L + t, first, mask=ok)
        if BOUNDS:  # a chunk's first token: its key bound's start, and its row bound's
            at = bounds_ptr + b * (4 * CHUNKS) + 2 * (t // CHUNK)
            lead = ok & (t % CHUNK == 0)
            tl.store(at, L - first, mask=lead)
            tl.store(at + 2 * CHUNKS, L - first, mask=lead)
        carry = tl.max(tl.where(ok, first, 0), axis=0)
    carry = tl.full([], 0, tl.int32) + L
    for n0 in range(0, L, BLOCK):
        t = L - 1 - (n0 + offs)  # right to left
        ok = t >= 0
        x = tl.load(row + t * stride_it, mask=ok)
        nxt = tl.load(row + (t + 1) * stride_it, mask=ok & (t < L - 1))
        end = (t == L - 1) | (x != nxt)
        last = tl.minimum(tl.associative_scan(tl.where(end & ok, t + 1, L).to(tl.int32), 0, _min_fn), carry)
        tl.store(runs_ptr + PLANE + b * L + t, last, mask=ok)
        if BOUNDS:  # a chunk's last token: its bounds' end
            at = bounds_ptr + b * (4 * CHUNKS) + 2 * (t // CHUNK) + 1
            tail = ok & ((t % CHUNK == CHUNK - 1) | (t == L - 1))
            tl.store(at, last, mask=tail)
            tl.store(at + 2 * CHUNKS, last, mask=tail)
        carry = tl.min(tl.where(ok, last, L), axis=0)


def segment_bounds(segments: torch.Tensor, bounds: Optional[torch.Tensor] = None) -> torch.Tensor:
    """int32 ``[2, B, L]``: each token's run of ``segments`` (``[B, L]`` ids) as ``[first, end)``: plane 0 the index
    of the run's first token, plane 1 one past its last. Query ``i`` keeps key ``j`` iff ``first[i] <= j <
    end[i]``. One small kernel (a program per row, no host sync); ``bounds`` (``segment_mask_bounds``' layout, one
    entry per row) is filled by the same kernel where given. Tensors the kernels do not take (CPU without the
    interpreter) get the same from PyTorch operations."""
    B, L = segments.shape
    out = torch.empty((2, B, L), dtype=torch.int32, device=segments.device)
    if segments.numel() == 0:
        return out
    if not kernels_take(segments):
        idx = torch.arange(L, device=segments.device).expand(B, L)
        starts = torch.ones((B, L), dtype=torch.bool, device=segments.device)
        starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
        ends = torch.ones_like(starts)
        ends[:, :-1] = starts[:, 1:]
        out[0] = torch.where(starts, idx, 0).cummax(dim=1).values
        out[1] = torch.where(ends, idx + 1, L).flip(1).cummin(dim=1).values.flip(1)
        if bounds is not None:
            bounds.copy_(segment_mask_bounds(out))
        return out
    block = min(1024, 1 << (max(L, 16) - 1).bit_length())
    _segment_runs_kernel[(B,)](segments, out, out if bounds is None else bounds, segments.stride(0),
                               segments.stride(1), L, B * L, -(-L // BOUNDS_CHUNK), BOUNDS=bounds is not None,
                               CHUNK=BOUNDS_CHUNK, BLOCK=block)
    return out


def segment_layout(runs: torch.Tensor) -> BoundsLayout:
    """The :class:`BoundsLayout` of :func:`segment_mask_bounds` for ``runs = segment_bounds(...)``: one entry per
    batch entry, one for all heads, a bound per 16 rows."""
    _, B, L = runs.shape
    return BoundsLayout(B if B > 1 else 1, 1, L)


def _zero_segment_bounds(runs_shape, device) -> torch.Tensor:
    """Zeros in :func:`segment_mask_bounds`' layout for runs of shape ``runs_shape`` (``[2, B, L]``)."""
    layout = segment_layout(torch.empty(runs_shape, device="meta"))
    return torch.zeros((layout.per_b, 1, 2 * layout.chunks, 2), dtype=torch.int32, device=device)


def segment_mask_bounds(runs: torch.Tensor) -> torch.Tensor:
    """:func:`mask_bounds`' int32 layout ``[per_b, 1, chunks + chunks, 2]`` for packed sequences (``runs`` from
    :func:`segment_bounds`, ``Q == K == L``): the keys of 16 rows run from the first row's run start to the last
    row's run end, and by symmetry the queries that see 16 keys likewise. Stored as ``(L - first, end)``. (In
    PyTorch, from ``runs``; :func:`segment_tensors` has the kernel write both at once.)"""
    _, B, L = runs.shape
    chunks = segment_layout(runs).chunks
    out = _zero_segment_bounds(runs.shape, runs.device)
    if L == 0:
        return out
    first = torch.arange(chunks, device=runs.device) * BOUNDS_CHUNK
    last = torch.clamp(first + (BOUNDS_CHUNK - 1), max=L - 1)
    pair = torch.stack((L - runs[0][:, first], runs[1][:, last]), dim=-1)  # [B, chunks, 2]
    out[:, 0, :chunks] = pair
    out[:, 0, chunks:] = pair
    return out


def segment_tensors(segments: torch.Tensor, cache_key: Optional[torch.Tensor] = None):
    """``(runs, bounds)``: :func:`segment_bounds` and :func:`segment_mask_bounds` of ``segments``, cached per
    ``cache_key`` as :func:`pad_ranges` caches (the Hugging Face mask function passes its packed ids to
    :func:`share_ranges`; HF hands them to every layer of one forward)."""
    version = _cache_version(cache_key, segments)
    if version is not None:
        hit = SEGMENT_CACHE.get(id(cache_key))
        if hit is not None and hit[0]() is cache_key and hit[1] == version:
            return hit[2]
    bounds = _zero_segment_bounds((2, *segments.shape), segments.device)
    result = (segment_bounds(segments, bounds), bounds)
    if version is not None:
        weak_entry(SEGMENT_CACHE, id(cache_key), cache_key, version, result)
    return result
