"""The kernel of ``evals/probe_cross.py``: the Hopper forward of ``hf_masked_softmax._hopper_kernels`` with the
pipeline carried across tiles (as committed in 7d807de, the helpers shared with the library's kernel), and a switch
``XMODE``: 1 waits for a tile's last ``P v`` before the next tile's first scores are issued, 2 issues the two
together (7d807de). Imported only by the probe, on a GPU.
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait)

from hf_masked_softmax._hopper_kernels import (  # the library kernel's helpers, unchanged since 7d807de
    _buffers, _issue_next, _key_blocks, _key_range, _mask_block, _online_softmax, _start, _step, _tile_pos,
    _tma_load, _tma_store, _wgmma_layout)


@gluon.jit(do_not_specialize=["tiles_rt", "nprog_rt", "n_m_rt"])
def attn_fwd_cross(q_desc, k_desc, v_desc, o_desc, ranges_ptr, mask_ptr, stride_mb, stride_mk, Q_LEN, K_LEN,
                         qk_scale, tiles_rt, nprog_rt, n_m_rt, N_TILES: gl.constexpr, NPROG: gl.constexpr,
                         MASK_KIND: gl.constexpr, CAUSAL: gl.constexpr, N_M: gl.constexpr,
                         N_HEADS: gl.constexpr, GROUP: gl.constexpr, HEAD_D: gl.constexpr, BLOCK_M: gl.constexpr,
                         BLOCK_N: gl.constexpr, STAGES: gl.constexpr, CURSOR_REGS: gl.constexpr,
                         SPLIT: gl.constexpr, XMODE: gl.constexpr, num_warps: gl.constexpr):
    """The arguments of ``hf_masked_softmax._hopper_kernels._attn_fwd_persistent``, and ``XMODE`` (the module
    docstring). The tile count, query blocks per head and grid size always as the compile-time ``N_TILES``, ``N_M`` and
    ``NPROG`` (the plan is built with ``_hopper.RUNTIME_COUNTS`` off); ``tiles_rt``, ``n_m_rt`` and ``nprog_rt`` are
    unused."""
    GUARD: gl.constexpr = (MASK_KIND == 1) | CAUSAL  # rows can have no key
    gl.static_assert(STAGES >= 3, "block g - 2's slots are refilled when block g starts: at least 3 stages")
    pid = gl.program_id(0)
    # the tile count and the grid are compile-time constants: the tile order's divisions become multiplies
    n_tiles = N_TILES
    nprog = NPROG
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
                                                    k_bars, v_bars, ranges_ptr, Q_LEN, K_LEN, n_tiles, nprog, N_M,
                                                    N_HEADS, GROUP, MASK_KIND, CAUSAL, BLOCK_M, BLOCK_N, HEAD_D, STAGES,
                                                    CURSOR_REGS)

    cols = gl.arange(0, BLOCK_N, layout=col_s)
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=s_layout)
    g = pid * 0  # key blocks consumed by this program so far: block g sits in slot g % STAGES
    it = pid * 0  # tiles done by this program
    m_init = gl.full([BLOCK_M], float("-inf"), gl.float32, layout=row_s)
    l_init = gl.zeros([BLOCK_M], gl.float32, layout=row_s)
    acc_zero = gl.zeros([BLOCK_M, HEAD_D], gl.float32, layout=o_layout)

    # the first tile's start (a later tile starts inside the previous tile's last step): its key blocks, the next
    # tile's Q and key range, the first key block's scores and probabilities
    b = b0
    m0 = m00
    h = h0
    start, end, holes = _key_range(b0, ranges_ptr, K_LEN, MASK_KIND)
    full_lo, full_hi, lo, n_blocks = _key_blocks(start, end, holes, m0, Q_LEN, K_LEN, CAUSAL, BLOCK_M, BLOCK_N)
    tn = pid + nprog
    bn, m0n, hn, _ = _tile_pos(tn % n_tiles, n_tiles, nprog, N_M, N_HEADS, GROUP, CAUSAL, BLOCK_M)
    r_start, r_end, r_holes = _key_range(bn, ranges_ptr, K_LEN, MASK_KIND)
    mbarrier.expect(q_bars.index(1), q_desc.block_type.nbytes, pred=tn < n_tiles)
    _tma_load(q_desc, [bn, hn, m0n, 0], q_bars.index(1), q_smem.index(1), pred=tn < n_tiles)
    mbarrier.wait(q_bars.index(0), 0)
    acc = acc_zero
    p16 = gl.zeros([BLOCK_M, BLOCK_N], dtype, layout=p_layout)
    slot = g % STAGES
    mbarrier.wait(k_bars.index(slot), (g // STAGES) & 1)
    s_tok = warpgroup_mma(q_smem.index(0).reshape([BLOCK_M, HEAD_D]),
                          k_smem.index(slot).reshape([BLOCK_N, HEAD_D]).permute((1, 0)), s_zero, use_acc=False,
                          is_async=True)
    lt, lj, lnb, llo, lb, lhk = _issue_next(k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, (g + STAGES - 2) % STAGES,
                                            lt, lj, lnb, llo, lb, lhk, n_tiles, nprog, ranges_ptr, Q_LEN, K_LEN, N_M,
                                            N_HEADS, GROUP, MASK_KIND, CAUSAL, BLOCK_M, BLOCK_N, HEAD_D, CURSOR_REGS,
                                            g >= 2)
    s = warpgroup_mma_wait(0, deps=[s_tok])
    if (full_lo > 0) | (full_hi < 1):
        s = _mask_block(s, cols, m0, lo * BLOCK_N, b, start, end, holes, mask_ptr, stride_mb, stride_mk, Q_LEN, K_LEN,
                        MASK_KIND, CAUSAL, BLOCK_M, row_s)
    p, m_i, l_i, alpha = _online_softmax(s, m_init, l_init, qk_scale, GUARD)
    mbarrier.wait(v_bars.index(slot), (g // STAGES) & 1)
    g += 1

    for t in range(pid, n_tiles, nprog):
        qb = it % 2
        q_tile = q_smem.index(qb).reshape([BLOCK_M, HEAD_D])
        if SPLIT:  # blocks that need no mask, then those that do (the diagonal's, the range's last)
            mid = gl.maximum(gl.minimum(full_hi, n_blocks), 1)
            for j in range(1, mid):
                acc, p16, p, m_i, l_i, alpha, g, lt, lj, lnb, llo, lb, lhk = _step(
                    j, acc, p16, p, m_i, l_i, alpha, g, lt, lj, lnb, llo, lb, lhk, q_tile, s_zero, cols, m0, lo, b,
                    start, end, holes, full_lo, full_hi, k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, n_tiles,
                    nprog, ranges_ptr, mask_ptr, stride_mb, stride_mk, Q_LEN, K_LEN, qk_scale, 0, GUARD, N_M,
                    N_HEADS, GROUP, MASK_KIND, CAUSAL, BLOCK_M, BLOCK_N, HEAD_D, STAGES, CURSOR_REGS, p_layout, row_o,
                    row_s)
            for j in range(mid, n_blocks):
                acc, p16, p, m_i, l_i, alpha, g, lt, lj, lnb, llo, lb, lhk = _step(
                    j, acc, p16, p, m_i, l_i, alpha, g, lt, lj, lnb, llo, lb, lhk, q_tile, s_zero, cols, m0, lo, b,
                    start, end, holes, full_lo, full_hi, k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, n_tiles,
                    nprog, ranges_ptr, mask_ptr, stride_mb, stride_mk, Q_LEN, K_LEN, qk_scale, 1, GUARD, N_M,
                    N_HEADS, GROUP, MASK_KIND, CAUSAL, BLOCK_M, BLOCK_N, HEAD_D, STAGES, CURSOR_REGS, p_layout, row_o,
                    row_s)
        else:  # one loop that masks where a block needs it
            for j in range(1, n_blocks):
                acc, p16, p, m_i, l_i, alpha, g, lt, lj, lnb, llo, lb, lhk = _step(
                    j, acc, p16, p, m_i, l_i, alpha, g, lt, lj, lnb, llo, lb, lhk, q_tile, s_zero, cols, m0, lo, b,
                    start, end, holes, full_lo, full_hi, k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, n_tiles,
                    nprog, ranges_ptr, mask_ptr, stride_mb, stride_mk, Q_LEN, K_LEN, qk_scale, 2, GUARD, N_M,
                    N_HEADS, GROUP, MASK_KIND, CAUSAL, BLOCK_M, BLOCK_N, HEAD_D, STAGES, CURSOR_REGS, p_layout, row_o,
                    row_s)

        # the next tile: where it is, its key blocks (its range was loaded a tile ago); the Q and key range of the
        # tile after it, into the buffer this tile's products are done with
        tn = t + nprog
        bn, m0n, hn, _ = _tile_pos(tn % n_tiles, n_tiles, nprog, N_M, N_HEADS, GROUP, CAUSAL, BLOCK_M)
        n_start = r_start
        n_end = r_end
        n_holes = r_holes
        n_full_lo, n_full_hi, n_lo, n_blocks_n = _key_blocks(n_start, n_end, n_holes, m0n, Q_LEN, K_LEN, CAUSAL,
                                                             BLOCK_M, BLOCK_N)
        tnn = tn + nprog
        bnn, m0nn, hnn, _ = _tile_pos(tnn % n_tiles, n_tiles, nprog, N_M, N_HEADS, GROUP, CAUSAL, BLOCK_M)
        r_start, r_end, r_holes = _key_range(bnn, ranges_ptr, K_LEN, MASK_KIND)
        mbarrier.expect(q_bars.index(qb), q_desc.block_type.nbytes, pred=tnn < n_tiles)
        _tma_load(q_desc, [bnn, hnn, m0nn, 0], q_bars.index(qb), q_smem.index(qb), pred=tnn < n_tiles)
        l_old = l_i
        if XMODE == 1:
            if tn < n_tiles:
                acc = acc * gl.convert_layout(alpha, row_o)[:, None]
                p16 = gl.convert_layout(p.to(dtype), p_layout)
                o_tok = warpgroup_mma(p16, v_smem.index((g + STAGES - 1) % STAGES).reshape([BLOCK_N, HEAD_D]), acc,
                                      is_async=True)
                acc, p16 = warpgroup_mma_wait(0, deps=[o_tok, p16])
                mbarrier.wait(q_bars.index(1 - qb), ((it + 1) // 2) & 1)
                slot = g % STAGES
                mbarrier.wait(k_bars.index(slot), (g // STAGES) & 1)
                s_tok = warpgroup_mma(q_smem.index(1 - qb).reshape([BLOCK_M, HEAD_D]),
                                      k_smem.index(slot).reshape([BLOCK_N, HEAD_D]).permute((1, 0)), s_zero,
                                      use_acc=False, is_async=True)
                lt, lj, lnb, llo, lb, lhk = _issue_next(k_desc, v_desc, k_smem, v_smem, k_bars, v_bars,
                                               (g + STAGES - 2) % STAGES, lt, lj, lnb, llo, lb, lhk, n_tiles, nprog,
                                               ranges_ptr, Q_LEN, K_LEN, N_M, N_HEADS, GROUP, MASK_KIND, CAUSAL,
                                               BLOCK_M, BLOCK_N, HEAD_D, CURSOR_REGS, g >= 2)
                s = warpgroup_mma_wait(0, deps=[s_tok])
                if (n_full_lo > 0) | (n_full_hi < 1):
                    s = _mask_block(s, cols, m0n, n_lo * BLOCK_N, bn, n_start, n_end, n_holes, mask_ptr, stride_mb,
                                    stride_mk, Q_LEN, K_LEN, MASK_KIND, CAUSAL, BLOCK_M, row_s)
                p, m_i, l_i, alpha = _online_softmax(s, m_init, l_init, qk_scale, GUARD)
                mbarrier.wait(v_bars.index(slot), (g // STAGES) & 1)
                g += 1
            else:
                acc = acc * gl.convert_layout(alpha, row_o)[:, None]
                p16 = gl.convert_layout(p.to(dtype), p_layout)
                o_tok = warpgroup_mma(p16, v_smem.index((g + STAGES - 1) % STAGES).reshape([BLOCK_N, HEAD_D]), acc,
                                      is_async=True)
                acc, p16 = warpgroup_mma_wait(0, deps=[o_tok, p16])

        else:
            if tn < n_tiles:
                # the last P v of this tile runs while the next tile's first scores are computed and their softmax
                # taken (a _step whose Q, running max and sum are the next tile's)
                mbarrier.wait(q_bars.index(1 - qb), ((it + 1) // 2) & 1)
                acc, p16, p, m_i, l_i, alpha, g, lt, lj, lnb, llo, lb, lhk = _step(
                    0, acc, p16, p, m_init, l_init, alpha, g, lt, lj, lnb, llo, lb, lhk,
                    q_smem.index(1 - qb).reshape([BLOCK_M, HEAD_D]), s_zero, cols, m0n, n_lo, bn, n_start, n_end,
                    n_holes, n_full_lo, n_full_hi, k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, n_tiles, nprog,
                    ranges_ptr, mask_ptr, stride_mb, stride_mk, Q_LEN, K_LEN, qk_scale, 2, GUARD, N_M, N_HEADS, GROUP,
                    MASK_KIND, CAUSAL, BLOCK_M, BLOCK_N, HEAD_D, STAGES, CURSOR_REGS, p_layout, row_o, row_s)
            else:
                acc = acc * gl.convert_layout(alpha, row_o)[:, None]
                p16 = gl.convert_layout(p.to(dtype), p_layout)
                o_tok = warpgroup_mma(p16, v_smem.index((g + STAGES - 1) % STAGES).reshape([BLOCK_N, HEAD_D]), acc,
                                      is_async=True)
                acc, p16 = warpgroup_mma_wait(0, deps=[o_tok, p16])

        # this tile's output
        l_o = gl.convert_layout(l_old, row_o)
        acc = acc / gl.where(l_o == 0.0, 1.0, l_o)[:, None]
        tma.store_wait(pendings=0)  # the previous tile's output has left o_smem
        o_smem.reshape([BLOCK_M, HEAD_D]).store(acc.to(dtype))
        fence_async_shared()
        _tma_store(o_desc, [b, h, m0, 0], o_smem)

        # the next tile is the current one
        acc = acc_zero
        b = bn
        m0 = m0n
        h = hn
        start = n_start
        end = n_end
        holes = n_holes
        full_lo = n_full_lo
        full_hi = n_full_hi
        lo = n_lo
        n_blocks = n_blocks_n
        it += 1
    tma.store_wait(pendings=0)
