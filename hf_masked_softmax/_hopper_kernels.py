"""The Hopper (sm_90) forward in Gluon, Triton's lower-level dialect: see :mod:`hf_masked_softmax._hopper` for when the
library uses it. Imported only there (and by a compile test), never under Triton's interpreter, which cannot run
Gluon.

One warpgroup per program and a fixed number of programs (two or three per multiprocessor) that walk the tiles
``pid, pid + nprog, ...`` (in the order :func:`_tile_pos` gives); a tile is ``BLOCK_M`` query rows of one (batch,
head). Q, K, V and O move by TMA through 4D descriptors ``[B, heads, L, D]`` with the tensors' own strides (so a tile
never reads or writes another sequence's rows: TMA fills rows past ``L`` with zeros and drops stores past it). Keys
and values stream through a ring of ``STAGES`` shared-memory slots, one mbarrier each for K and V; the ring runs on
across tiles (a load cursor hands each freed slot the next block of this program's current or next tile), the next
tile's Q loads during this one, and outputs leave by TMA without a wait. Per key block j of a tile:

    issue S_j = Q K_j^T (async), then O = alpha O + P_{j-1} V_{j-1} (async); refill block j - 2's slots
    wait for S_j only; mask (edge blocks) and online softmax of S_j while P_{j-1} V_{j-1} runs on the tensor cores
    wait for V_j's copy (ends a basic block: ptxas would otherwise hoist the next wait above the softmax), then O

with the blocks that need no mask and those that do in two loops (``SPLIT``: the mask code then takes no registers
from the unmasked loop).

The numerics are those of the Triton forward: fp32 scores, the scale folded into ``exp2`` (``FOLD``), the row max
scaled once, P rounded to the input dtype for ``P v``, ``O / l`` at the end (zeros for a row with no key).
Masks: none (``MASK_KIND`` 0) or per-sequence key ranges ``[start, end)`` with a has-holes flag from the 2D padding
mask (1; a sequence with holes reads its mask row in every block); either with bottom-right causality (``CAUSAL``).
The experiment it grew from, with its measurements, is ``evals/probe_gluon.py``.
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait)

# Gluon's TMA copies were renamed after Triton 3.6 (the GPU image's); 3.9 has only the new names
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
_tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global


@gluon.constexpr_function
def _wgmma_layout(num_warps, n):
    """Registers of a warpgroup product's ``[rows, n]`` accumulator (m16 x n x k16 instructions)."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, n, 16])


@gluon.jit
def _tile_pos(t, n_tiles, nprog, n_m, N_HEADS: gl.constexpr, GROUP: gl.constexpr,
              CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr):
    """Tile ``t``: batch, first query row, head, key / value head (index arithmetic only).

    Without causality the query blocks of one head are consecutive tiles. With it, a tile's work grows with its
    query block, so the tiles go heaviest first (last query block of every head, then the one before, ...) in
    rounds of ``nprog`` whose direction alternates (the last round, partial or not, runs forward): program ``p``
    takes list positions ``p`` and ``2 nprog - 1 - p``, then again, which evens out the programs' shares."""
    if CAUSAL:
        r = t // nprog
        pos = t - r * nprog
        i = gl.where((r % 2 == 1) & (r != (n_tiles - 1) // nprog), r * nprog + nprog - 1 - pos, t)
        n_bh = n_tiles // n_m
        mb = n_m - 1 - i // n_bh
        bh = i % n_bh
    else:
        bh = t // n_m
        mb = t % n_m
    h = bh % N_HEADS
    return bh // N_HEADS, mb * BLOCK_M, h, h // GROUP


@gluon.jit
def _key_range(b, ranges_ptr, K_LEN, MASK_KIND: gl.constexpr):
    """Sequence ``b``'s key range ``[start, end)`` and whether it has holes (loads for ``MASK_KIND`` 1)."""
    if MASK_KIND == 1:
        start = gl.load(ranges_ptr + b * 4)
        end = gl.load(ranges_ptr + b * 4 + 1)
        holes = gl.load(ranges_ptr + b * 4 + 2)
    else:
        start = K_LEN * 0
        end = K_LEN + 0
        holes = K_LEN * 0
    return start, end, holes


@gluon.jit
def _key_blocks(start, end, holes, m0, Q_LEN, K_LEN, CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr,
                BLOCK_N: gl.constexpr):
    """A tile's ``[full_lo, full_hi)`` (its key blocks, counted from its first, that need no mask), first key block
    and number of key blocks (at least 1: a tile with no key still runs one fully masked block, which keeps the K / V
    ring's order simple)."""
    lo = start // BLOCK_N
    if CAUSAL:  # bottom-right: row r sees keys below r + K - Q + 1
        n_blocks = gl.maximum(gl.cdiv(gl.maximum(gl.minimum(end, m0 + BLOCK_M + K_LEN - Q_LEN), 0), BLOCK_N) - lo, 1)
        full_end = gl.maximum(gl.minimum(end, m0 + K_LEN - Q_LEN + 1), 0)
    else:
        n_blocks = gl.maximum(gl.cdiv(end, BLOCK_N) - lo, 1)
        full_end = end
    full_lo = (start % BLOCK_N != 0).to(gl.int32)
    full_hi = gl.where(holes != 0, 0, full_end // BLOCK_N - lo)
    return full_lo, full_hi, lo, n_blocks


@gluon.jit
def _tile(t, ranges_ptr, Q_LEN, K_LEN, n_tiles, nprog, n_m, N_HEADS: gl.constexpr,
          GROUP: gl.constexpr, MASK_KIND: gl.constexpr, CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr,
          BLOCK_N: gl.constexpr, HEAD_D: gl.constexpr):
    """:func:`_tile_pos`, then the tile's key blocks (:func:`_key_blocks`)."""
    b, m0, h, hk = _tile_pos(t, n_tiles, nprog, n_m, N_HEADS, GROUP, CAUSAL, BLOCK_M)
    start, end, holes = _key_range(b, ranges_ptr, K_LEN, MASK_KIND)
    full_lo, full_hi, lo, n_blocks = _key_blocks(start, end, holes, m0, Q_LEN, K_LEN, CAUSAL, BLOCK_M, BLOCK_N)
    return b, m0, h, hk, full_lo, full_hi, lo, n_blocks


@gluon.jit
def _issue_kv(k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, b, head, row, slot, pred):
    kb = k_bars.index(slot)
    vb = v_bars.index(slot)
    mbarrier.expect(kb, k_desc.block_type.nbytes, pred=pred)
    _tma_load(k_desc, [b, head, row, 0], kb, k_smem.index(slot), pred=pred)
    mbarrier.expect(vb, v_desc.block_type.nbytes, pred=pred)
    _tma_load(v_desc, [b, head, row, 0], vb, v_smem.index(slot), pred=pred)


@gluon.jit
def _issue_next(k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, slot, lt, lj, lnb, llo, lb, lhk, n_tiles, nprog,
                ranges_ptr, Q_LEN, K_LEN, n_m, N_HEADS: gl.constexpr, GROUP: gl.constexpr,
                MASK_KIND: gl.constexpr, CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                HEAD_D: gl.constexpr, CURSOR_REGS: gl.constexpr, pred):
    """Load key block ``lj`` of tile ``lt`` (the load cursor; the tile's key blocks start at block ``llo``, ``lnb``
    of them) into ``slot``, when ``pred``; then advance the cursor, to this program's next tile after a tile's last
    block. ``CURSOR_REGS``: ``llo`` and ``lnb`` are carried in registers and read from the key ranges only when the
    cursor moves to a tile, as are the tile's batch ``lb`` and key / value head ``lhk`` (so the tile order's
    divisions come once per tile); else all four are worked out for every block (the bounds' two loads, whose
    latency the refill waits for)."""
    # past the last tile the cursor's copies are predicated off; its index is clamped so nothing reads past ranges
    if CURSOR_REGS:
        b = lb
        hk = lhk
    else:
        b, _, _, hk, _, _, llo, lnb = _tile(gl.minimum(lt, n_tiles - 1), ranges_ptr, Q_LEN, K_LEN, n_tiles, nprog,
                                            n_m, N_HEADS, GROUP, MASK_KIND, CAUSAL, BLOCK_M, BLOCK_N, HEAD_D)
    _issue_kv(k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, b, hk, (llo + lj) * BLOCK_N, slot,
              pred & (lt < n_tiles))
    if pred:  # the cursor moves only when a slot was handed out
        lj = lj + 1
        if lj >= lnb:
            lt = lt + nprog
            lj = lj * 0
            if CURSOR_REGS:
                lb, _, _, lhk, _, _, llo, lnb = _tile(gl.minimum(lt, n_tiles - 1), ranges_ptr, Q_LEN, K_LEN,
                                                      n_tiles, nprog, n_m, N_HEADS, GROUP, MASK_KIND, CAUSAL,
                                                      BLOCK_M, BLOCK_N, HEAD_D)
    return lt, lj, lnb, llo, lb, lhk


@gluon.jit
def _mask_block(s, cols, m0, n0, b, start, end, holes, mask_ptr, stride_mb, stride_mk, Q_LEN, K_LEN,
                MASK_KIND: gl.constexpr, CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, row_s: gl.constexpr):
    """Scores of keys ``n0 + cols`` outside the sequence's key range ``[start, end)``, past row ``r``'s causal bound
    ``r + K - Q + 1`` (the tile's rows start at ``m0``) or, for a sequence with holes, where its mask row is 0, set
    to -inf. Called for the blocks :func:`_key_blocks`'s ``[full_lo, full_hi)`` leaves out only."""
    c = n0 + cols
    if MASK_KIND == 1:
        keep = (c >= start) & (c < end)
        if holes != 0:
            pm = gl.load(mask_ptr + b.to(gl.int64) * stride_mb + c.to(gl.int64) * stride_mk, mask=c < K_LEN, other=0)
            keep = keep & (pm != 0)
    else:
        keep = c < K_LEN
    if CAUSAL:
        rows = gl.arange(0, BLOCK_M, layout=row_s) + (m0 + K_LEN - Q_LEN + 1)
        keep2 = keep[None, :] & (c[None, :] < rows[:, None])
    else:
        keep2 = keep[None, :]
    return gl.where(keep2, s, float("-inf"))


@gluon.jit
def _online_softmax(s, m_i, l_i, qk_scale, GUARD: gl.constexpr):
    m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
    m_use = m_new
    if GUARD:  # a row with no key so far: every score -inf, and -inf - -inf would be NaN
        m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
    p = gl.exp2(s * qk_scale - m_use[:, None])
    alpha = gl.exp2(m_i - m_use)
    l_i = l_i * alpha + gl.sum(p, axis=1)
    return p, m_new, l_i, alpha


@gluon.jit
def _step(j, acc, p16, p, m_i, l_i, alpha, g, lt, lj, lnb, llo, lb, lhk, q_tile, s_zero, cols, m0, lo, b, start, end,
          holes, full_lo, full_hi, k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, n_tiles, nprog, ranges_ptr, mask_ptr,
          stride_mb, stride_mk, Q_LEN, K_LEN, qk_scale, MASKED: gl.constexpr, GUARD: gl.constexpr, n_m,
          N_HEADS: gl.constexpr, GROUP: gl.constexpr, MASK_KIND: gl.constexpr, CAUSAL: gl.constexpr,
          BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_D: gl.constexpr, STAGES: gl.constexpr,
          CURSOR_REGS: gl.constexpr, p_layout: gl.constexpr, row_o: gl.constexpr, row_s: gl.constexpr):
    """Key block ``j`` (> 0) of a tile, the ``g``-th this program consumes: issue ``S_j``, then ``P_{j-1} V_{j-1}``;
    refill block g - 2's slots; softmax of ``S_j`` while ``P v`` runs. ``MASKED``: 0 never mask (the caller knows
    block j needs none), 1 always, 2 where ``[full_lo, full_hi)`` leaves it out."""
    dtype: gl.constexpr = p16.dtype
    slot = g % STAGES
    mbarrier.wait(k_bars.index(slot), (g // STAGES) & 1)
    s_tok = warpgroup_mma(q_tile, k_smem.index(slot).reshape([BLOCK_N, HEAD_D]).permute((1, 0)), s_zero,
                          use_acc=False, is_async=True)
    acc = acc * gl.convert_layout(alpha, row_o)[:, None]
    p16 = gl.convert_layout(p.to(dtype), p_layout)
    o_tok = warpgroup_mma(p16, v_smem.index((g + STAGES - 1) % STAGES).reshape([BLOCK_N, HEAD_D]), acc,
                          is_async=True)
    # with both products on the tensor cores: refill block g - 2's slots (the cursor's tile bounds are loads, whose
    # latency would otherwise hold back the issue of P v)
    lt, lj, lnb, llo, lb, lhk = _issue_next(k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, (g + STAGES - 2) % STAGES,
                                            lt, lj, lnb, llo, lb, lhk, n_tiles, nprog, ranges_ptr, Q_LEN, K_LEN, n_m,
                                            N_HEADS, GROUP, MASK_KIND, CAUSAL, BLOCK_M, BLOCK_N, HEAD_D, CURSOR_REGS,
                                            g >= 2)
    s = warpgroup_mma_wait(1, deps=[s_tok])
    if MASKED == 1:
        s = _mask_block(s, cols, m0, (lo + j) * BLOCK_N, b, start, end, holes, mask_ptr, stride_mb, stride_mk, Q_LEN,
                        K_LEN, MASK_KIND, CAUSAL, BLOCK_M, row_s)
    elif MASKED == 2:
        if (j < full_lo) | (j >= full_hi):
            s = _mask_block(s, cols, m0, (lo + j) * BLOCK_N, b, start, end, holes, mask_ptr, stride_mb, stride_mk,
                            Q_LEN, K_LEN, MASK_KIND, CAUSAL, BLOCK_M, row_s)
    p, m_i, l_i, alpha = _online_softmax(s, m_i, l_i, qk_scale, GUARD)
    mbarrier.wait(v_bars.index(slot), (g // STAGES) & 1)  # also ends the basic block (module docstring)
    acc, p16 = warpgroup_mma_wait(0, deps=[o_tok, p16])
    return acc, p16, p, m_i, l_i, alpha, g + 1, lt, lj, lnb, llo, lb, lhk


@gluon.jit
def _buffers(q_desc, k_desc, v_desc, o_desc, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_D: gl.constexpr,
             STAGES: gl.constexpr):
    """A program's shared memory: two Q buffers, the output's, the ``STAGES`` K and V slots, and their mbarriers
    (initialised)."""
    dtype: gl.constexpr = q_desc.dtype
    q_smem = gl.allocate_shared_memory(dtype, [2, 1, 1, BLOCK_M, HEAD_D], q_desc.layout)
    o_smem = gl.allocate_shared_memory(dtype, [1, 1, BLOCK_M, HEAD_D], o_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, 1, 1, BLOCK_N, HEAD_D], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, 1, 1, BLOCK_N, HEAD_D], v_desc.layout)
    q_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    k_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(q_bars.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_bars.index(i), count=1)
        mbarrier.init(v_bars.index(i), count=1)
    fence_async_shared()
    return q_smem, o_smem, k_smem, v_smem, q_bars, k_bars, v_bars


@gluon.jit
def _start(pid, q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bars, k_bars, v_bars, ranges_ptr, Q_LEN, K_LEN,
           n_tiles, nprog, n_m, N_HEADS: gl.constexpr, GROUP: gl.constexpr, MASK_KIND: gl.constexpr,
           CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_D: gl.constexpr,
           STAGES: gl.constexpr, CURSOR_REGS: gl.constexpr):
    """The load cursor at this program's first tile (``pid``), the ring's first ``STAGES`` blocks and that tile's Q
    issued: the cursor (:func:`_issue_next`) and the tile's batch, first query row and head."""
    lt = pid
    lj = pid * 0
    b0, m00, h0, lhk, _, _, llo, lnb = _tile(pid, ranges_ptr, Q_LEN, K_LEN, n_tiles, nprog, n_m, N_HEADS, GROUP,
                                             MASK_KIND, CAUSAL, BLOCK_M, BLOCK_N, HEAD_D)
    lb = b0
    for i in gl.static_range(STAGES):
        lt, lj, lnb, llo, lb, lhk = _issue_next(k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, i, lt, lj, lnb, llo,
                                                lb, lhk, n_tiles, nprog, ranges_ptr, Q_LEN, K_LEN, n_m, N_HEADS, GROUP,
                                                MASK_KIND, CAUSAL, BLOCK_M, BLOCK_N, HEAD_D, CURSOR_REGS, True)
    mbarrier.expect(q_bars.index(0), q_desc.block_type.nbytes)
    _tma_load(q_desc, [b0, h0, m00, 0], q_bars.index(0), q_smem.index(0))
    return lt, lj, lnb, llo, lb, lhk, b0, m00, h0


@gluon.jit(do_not_specialize=["tiles_rt", "nprog_rt", "n_m_rt"])
def _attn_fwd_persistent(q_desc, k_desc, v_desc, o_desc, ranges_ptr, mask_ptr, sink_ptr, stride_mb, stride_mk, Q_LEN,
                         K_LEN, qk_scale, tiles_rt, nprog_rt, n_m_rt, N_TILES: gl.constexpr, NPROG: gl.constexpr,
                         MASK_KIND: gl.constexpr,
                         CAUSAL: gl.constexpr, N_M: gl.constexpr, N_HEADS: gl.constexpr, GROUP: gl.constexpr,
                         HEAD_D: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                         CURSOR_REGS: gl.constexpr, SPLIT: gl.constexpr, SINK: gl.constexpr,
                         num_warps: gl.constexpr):
    """q / o: ``[B, H, Q, D]`` descriptors with ``[1, 1, BLOCK_M, D]`` blocks; k / v: ``[B, Hkv, K, D]`` with
    ``[1, 1, BLOCK_N, D]``; ``N_TILES`` = B * H * ``N_M`` tiles (``N_M`` query blocks per head) over ``NPROG``
    programs; ``N_TILES`` and ``NPROG`` 0: the runtime ``tiles_rt`` and ``nprog_rt`` instead (one compiled kernel for
    every batch size), ``N_M`` 0: ``n_m_rt`` (and for every query length). ``ranges``: int32 ``[B, 4]``
    (start, end, has holes, unused) for ``MASK_KIND`` 1, with ``mask`` the ``[B, K]`` padding mask it came from;
    ``CAUSAL``: bottom-right (query ``i`` sees keys ``j <= i + K - Q``); ``qk_scale`` = scale * log2(e) > 0;
    ``SINK``: ``sink_ptr`` is each query head's sink logit (fp32 ``[H]``, natural units), counted by every row as one
    more key with a zero value after its keys, as in the Triton forward (a row with no key stays zeros)."""
    GUARD: gl.constexpr = (MASK_KIND == 1) | CAUSAL  # rows can have no key
    gl.static_assert(STAGES >= 3, "block g - 2's slots are refilled when block g starts: at least 3 stages")
    pid = gl.program_id(0)
    # compile-time counts (the tile order's divisions become multiplies), or runtime ones (divisions once per tile:
    # the load cursor carries its tile's batch and head)
    if N_TILES > 0:
        n_tiles = N_TILES
        nprog = NPROG
    else:
        n_tiles = tiles_rt
        nprog = nprog_rt
    if N_M > 0:
        n_m = N_M
    else:
        n_m = n_m_rt
    dtype: gl.constexpr = q_desc.dtype

    s_layout: gl.constexpr = _wgmma_layout(num_warps, BLOCK_N)  # the score tile's registers
    o_layout: gl.constexpr = _wgmma_layout(num_warps, HEAD_D)  # the output's
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    col_s: gl.constexpr = gl.SliceLayout(0, s_layout)

    q_smem, o_smem, k_smem, v_smem, q_bars, k_bars, v_bars = _buffers(q_desc, k_desc, v_desc, o_desc, BLOCK_M,
                                                                      BLOCK_N, HEAD_D, STAGES)
    lt, lj, lnb, llo, lb, lhk, b0, m00, h0 = _start(pid, q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bars,
                                                    k_bars, v_bars, ranges_ptr, Q_LEN, K_LEN, n_tiles, nprog, n_m,
                                                    N_HEADS, GROUP, MASK_KIND, CAUSAL, BLOCK_M, BLOCK_N, HEAD_D, STAGES,
                                                    CURSOR_REGS)

    cols = gl.arange(0, BLOCK_N, layout=col_s)
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=s_layout)
    g = pid * 0  # key blocks consumed by this program so far: block g sits in slot g % STAGES
    it = pid * 0  # tiles done by this program
    # this program's first key range; later ones are loaded a tile ahead (their latency off the tile's start)
    r_start, r_end, r_holes = _key_range(b0, ranges_ptr, K_LEN, MASK_KIND)
    for t in range(pid, n_tiles, nprog):
        qb = it % 2
        b, m0, h, _ = _tile_pos(t, n_tiles, nprog, n_m, N_HEADS, GROUP, CAUSAL, BLOCK_M)
        if SINK:  # loaded here, read after the key blocks: its latency is off the tile's end
            sink = gl.load(sink_ptr + h) * 1.4426950408889634
        start = r_start
        end = r_end
        holes = r_holes
        full_lo, full_hi, lo, n_blocks = _key_blocks(start, end, holes, m0, Q_LEN, K_LEN, CAUSAL, BLOCK_M, BLOCK_N)
        # the next tile's Q, into the buffer the previous tile's products are done with, and its key range
        tn = t + nprog
        bn, m0n, hn, _ = _tile_pos(tn % n_tiles, n_tiles, nprog, n_m, N_HEADS, GROUP, CAUSAL, BLOCK_M)
        r_start, r_end, r_holes = _key_range(bn, ranges_ptr, K_LEN, MASK_KIND)
        mbarrier.expect(q_bars.index(1 - qb), q_desc.block_type.nbytes, pred=tn < n_tiles)
        _tma_load(q_desc, [bn, hn, m0n, 0], q_bars.index(1 - qb), q_smem.index(1 - qb), pred=tn < n_tiles)
        q_tile = q_smem.index(qb).reshape([BLOCK_M, HEAD_D])
        mbarrier.wait(q_bars.index(qb), (it // 2) & 1)

        m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, layout=row_s)
        l_i = gl.zeros([BLOCK_M], gl.float32, layout=row_s)
        acc = gl.zeros([BLOCK_M, HEAD_D], gl.float32, layout=o_layout)
        p16 = gl.zeros([BLOCK_M, BLOCK_N], dtype, layout=p_layout)

        # the tile's first key block: its scores and probabilities
        slot = g % STAGES
        mbarrier.wait(k_bars.index(slot), (g // STAGES) & 1)
        s_tok = warpgroup_mma(q_tile, k_smem.index(slot).reshape([BLOCK_N, HEAD_D]).permute((1, 0)), s_zero,
                              use_acc=False, is_async=True)
        lt, lj, lnb, llo, lb, lhk = _issue_next(k_desc, v_desc, k_smem, v_smem, k_bars, v_bars,
                                                (g + STAGES - 2) % STAGES, lt, lj, lnb, llo, lb, lhk, n_tiles, nprog,
                                                ranges_ptr, Q_LEN, K_LEN, n_m, N_HEADS, GROUP, MASK_KIND, CAUSAL,
                                                BLOCK_M, BLOCK_N, HEAD_D, CURSOR_REGS, g >= 2)
        s = warpgroup_mma_wait(0, deps=[s_tok])
        if (full_lo > 0) | (full_hi < 1):
            s = _mask_block(s, cols, m0, lo * BLOCK_N, b, start, end, holes, mask_ptr, stride_mb, stride_mk, Q_LEN,
                            K_LEN, MASK_KIND, CAUSAL, BLOCK_M, row_s)
        p, m_i, l_i, alpha = _online_softmax(s, m_i, l_i, qk_scale, GUARD)
        mbarrier.wait(v_bars.index(slot), (g // STAGES) & 1)
        g += 1

        # the blocks that need no mask, then those that do (the diagonal's, the range's last); without SPLIT every
        # block goes through the second loop, which then masks where a block needs it
        mid = n_blocks * 0 + 1
        if SPLIT:
            mid = gl.maximum(gl.minimum(full_hi, n_blocks), 1)
        for j in range(1, mid):
            acc, p16, p, m_i, l_i, alpha, g, lt, lj, lnb, llo, lb, lhk = _step(
                j, acc, p16, p, m_i, l_i, alpha, g, lt, lj, lnb, llo, lb, lhk, q_tile, s_zero, cols, m0, lo, b, start,
                end, holes, full_lo, full_hi, k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, n_tiles, nprog,
                ranges_ptr, mask_ptr, stride_mb, stride_mk, Q_LEN, K_LEN, qk_scale, 0, GUARD, n_m, N_HEADS, GROUP,
                MASK_KIND, CAUSAL, BLOCK_M, BLOCK_N, HEAD_D, STAGES, CURSOR_REGS, p_layout, row_o, row_s)
        for j in range(mid, n_blocks):
            acc, p16, p, m_i, l_i, alpha, g, lt, lj, lnb, llo, lb, lhk = _step(
                j, acc, p16, p, m_i, l_i, alpha, g, lt, lj, lnb, llo, lb, lhk, q_tile, s_zero, cols, m0, lo, b, start,
                end, holes, full_lo, full_hi, k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, n_tiles, nprog,
                ranges_ptr, mask_ptr, stride_mb, stride_mk, Q_LEN, K_LEN, qk_scale, 2 - SPLIT, GUARD, n_m, N_HEADS,
                GROUP, MASK_KIND, CAUSAL, BLOCK_M, BLOCK_N, HEAD_D, STAGES, CURSOR_REGS, p_layout, row_o, row_s)

        acc = acc * gl.convert_layout(alpha, row_o)[:, None]
        p16 = gl.convert_layout(p.to(dtype), p_layout)
        o_tok = warpgroup_mma(p16, v_smem.index((g + STAGES - 1) % STAGES).reshape([BLOCK_N, HEAD_D]), acc,
                              is_async=True)
        acc, p16 = warpgroup_mma_wait(0, deps=[o_tok, p16])
        if SINK:  # the Triton forward's epilogue: the sink joins the row's max and sum
            m_new = gl.maximum(m_i, sink)
            m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = gl.exp2(m_i - m_use)
            l_i = l_i * alpha + gl.exp2(sink - m_use)
            acc = acc * gl.convert_layout(alpha, row_o)[:, None]
        l_o = gl.convert_layout(l_i, row_o)
        acc = acc / gl.where(l_o == 0.0, 1.0, l_o)[:, None]
        tma.store_wait(pendings=0)  # the previous tile's output has left o_smem
        o_smem.reshape([BLOCK_M, HEAD_D]).store(acc.to(dtype))
        fence_async_shared()
        _tma_store(o_desc, [b, h, m0, 0], o_smem)
        it += 1
    tma.store_wait(pendings=0)
