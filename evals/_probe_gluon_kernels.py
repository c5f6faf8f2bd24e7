"""The kernel of ``evals/probe_gluon.py`` (a Gluon flash forward for Hopper, one tile per program), its host
launcher and its compile-only path. Kept apart so that the script's ``--help`` and its SASS helpers import without
Gluon: a Triton older than 3.5 has no Gluon Hopper API, and the script says so instead of failing on import."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.experimental.gluon.language.nvidia.hopper import (  # noqa: E402
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait)

from hf_masked_softmax._hopper_kernels import _tma_load, _tma_store, _wgmma_layout  # noqa: E402,F401 - shared

LOG2E = 1.4426950408889634
# Gluon's program barrier was renamed after Triton 3.6 (the GPU image's); 3.9 has only the new name (the TMA copies'
# shims are the library's)
_cta_barrier = getattr(gl, "thread_barrier", None) or gl.barrier


@gluon.jit
def _issue_kv(k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, row, col, slot, pred, ONE_BAR: gl.constexpr):
    kb = k_bars.index(slot)
    if ONE_BAR:
        mbarrier.expect(kb, k_desc.block_type.nbytes + v_desc.block_type.nbytes, pred=pred)
        _tma_load(k_desc, [row, col], kb, k_smem.index(slot), pred=pred)
        _tma_load(v_desc, [row, col], kb, v_smem.index(slot), pred=pred)
    else:
        vb = v_bars.index(slot)
        mbarrier.expect(kb, k_desc.block_type.nbytes, pred=pred)
        _tma_load(k_desc, [row, col], kb, k_smem.index(slot), pred=pred)
        mbarrier.expect(vb, v_desc.block_type.nbytes, pred=pred)
        _tma_load(v_desc, [row, col], vb, v_smem.index(slot), pred=pred)


@gluon.jit
def _online_softmax(s, m_i, l_i, qk_scale):
    m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
    p = gl.exp2(s * qk_scale - m_new[:, None])
    alpha = gl.exp2(m_i - m_new)
    l_i = l_i * alpha + gl.sum(p, axis=1)
    return p, m_new, l_i, alpha


@gluon.jit
def _gluon_fwd_kernel(q_desc, k_desc, v_desc, o_desc, len_ptr, T, qk_scale,
                      N_HEADS: gl.constexpr, HEAD_D: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                      STAGES: gl.constexpr, ONE_BAR: gl.constexpr, CTA_BAR: gl.constexpr, num_warps: gl.constexpr):
    """q, k, v, o as 2D views ``[B * T, H * D]``; keys at or past ``len[b]`` are padding; ``len[b] >= 1``.
    ``ONE_BAR``: one mbarrier per slot for its K and V copies (else one each). ``CTA_BAR``: an explicit barrier of
    the program before a slot is refilled (Gluon's own hazard analysis also puts barriers around the copies)."""
    gl.static_assert(STAGES >= 3, "block j - 2's slots are refilled in iteration j: at least 3 stages")
    pid_m = gl.program_id(0)
    pid_bh = gl.program_id(1)
    b = pid_bh // N_HEADS
    h = pid_bh % N_HEADS
    n_keys = gl.load(len_ptr + b)
    q_row = b * T + pid_m * BLOCK_M
    kv_row = b * T
    col0 = h * HEAD_D
    n_blocks = gl.cdiv(n_keys, BLOCK_N)

    s_layout: gl.constexpr = _wgmma_layout(num_warps, BLOCK_N)  # the score tile's registers
    o_layout: gl.constexpr = _wgmma_layout(num_warps, HEAD_D)  # the output's
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    col_s: gl.constexpr = gl.SliceLayout(0, s_layout)

    q_smem = gl.allocate_shared_memory(q_desc.dtype, [BLOCK_M, HEAD_D], q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES, BLOCK_N, HEAD_D], k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES, BLOCK_N, HEAD_D], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    if ONE_BAR:
        v_bars = k_bars
    else:
        v_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_bars.index(i), count=1)
        if not ONE_BAR:
            mbarrier.init(v_bars.index(i), count=1)
    fence_async_shared()

    mbarrier.expect(q_bar, q_desc.block_type.nbytes)
    _tma_load(q_desc, [q_row, col0], q_bar, q_smem)
    for i in gl.static_range(STAGES):
        _issue_kv(k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, kv_row + i * BLOCK_N, col0, i, i < n_blocks,
                  ONE_BAR)

    cols = gl.arange(0, BLOCK_N, layout=col_s)
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, layout=row_s)
    l_i = gl.zeros([BLOCK_M], gl.float32, layout=row_s)
    acc = gl.zeros([BLOCK_M, HEAD_D], gl.float32, layout=o_layout)
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=s_layout)

    # block 0: its scores and probabilities
    mbarrier.wait(q_bar, 0)
    mbarrier.wait(k_bars.index(0), 0)
    s_tok = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    s = warpgroup_mma_wait(0, deps=[s_tok])
    if BLOCK_N > n_keys:
        s = gl.where(cols[None, :] < n_keys, s, float("-inf"))
    p, m_i, l_i, alpha = _online_softmax(s, m_i, l_i, qk_scale)
    mbarrier.wait(v_bars.index(0), 0)

    # the product P_{j-1} V_{j-1} is issued after S_j, and the softmax of block j runs while it is on the tensor
    # cores; both are done at the end of the iteration, so the next one refills block j - 1's slots
    for j in range(1, n_blocks):
        slot = j % STAGES
        mbarrier.wait(k_bars.index(slot), (j // STAGES) & 1)
        s_tok = warpgroup_mma(q_smem, k_smem.index(slot).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        # block j - 2's K and V slots are free (their products were waited for): load block j - 2 + STAGES there
        nxt = j - 2 + STAGES
        free = (j + STAGES - 2) % STAGES
        if CTA_BAR:
            _cta_barrier()  # every warp's part of those products is done before a copy reuses their slots
        _issue_kv(k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, kv_row + nxt * BLOCK_N, col0, free,
                  (j >= 2) & (nxt < n_blocks), ONE_BAR)
        prev = (j - 1) % STAGES
        acc = acc * gl.convert_layout(alpha, row_o)[:, None]
        p16 = gl.convert_layout(p.to(gl.float16), p_layout)
        o_tok = warpgroup_mma(p16, v_smem.index(prev), acc, is_async=True)
        s = warpgroup_mma_wait(1, deps=[s_tok])
        n0 = j * BLOCK_N
        if n0 + BLOCK_N > n_keys:
            s = gl.where(cols[None, :] < n_keys - n0, s, float("-inf"))
        p, m_i, l_i, alpha = _online_softmax(s, m_i, l_i, qk_scale)
        # V_j for the next product; the wait loop also ends this basic block, so that ptxas cannot move the
        # wait below above the softmax
        mbarrier.wait(v_bars.index(slot), (j // STAGES) & 1)
        acc, p16 = warpgroup_mma_wait(0, deps=[o_tok, p16])

    last = (n_blocks - 1) % STAGES
    mbarrier.wait(v_bars.index(last), ((n_blocks - 1) // STAGES) & 1)
    acc = acc * gl.convert_layout(alpha, row_o)[:, None]
    p16 = gl.convert_layout(p.to(gl.float16), p_layout)
    o_tok = warpgroup_mma(p16, v_smem.index(last), acc, is_async=True)
    acc, p16 = warpgroup_mma_wait(0, deps=[o_tok, p16])

    acc = acc / gl.convert_layout(l_i, row_o)[:, None]
    q_smem.store(acc.to(q_desc.dtype))  # Q's tile is free: every product that read it is done
    fence_async_shared()
    _tma_store(o_desc, [q_row, col0], q_smem)
    tma.store_wait(pendings=0)
    mbarrier.invalidate(q_bar)
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(k_bars.index(i))
        if not ONE_BAR:
            mbarrier.invalidate(v_bars.index(i))


def _layout(block, dtype):
    return gl.NVMMASharedLayout.get_default_for(block, dtype)


def _descriptors(q, k, v, out, block_m, block_n):
    """The output (``out`` or a new tensor like q) and TMA descriptors of q, k, v, o as ``[B * T, H * D]`` views."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    B, T, H, D = q.shape
    if T % block_m:
        raise ValueError(f"T = {T} must be a multiple of BLOCK_M = {block_m}")
    o = torch.empty_like(q) if out is None else out
    blocks = (block_m, block_n, block_n, block_m)
    return o, [TensorDescriptor.from_tensor(x.view(B * T, H * D), [blk, D], _layout([blk, D], gl.float16))
               for x, blk in zip((q, k, v, o), blocks)]


def gluon_forward(q, k, v, lens, block_m=64, block_n=64, stages=3, warps=4, maxnreg=None, one_bar=False,
                  cta_bar=True, out=None):
    """q, k, v: ``[B, T, H, D]`` fp16, contiguous; ``lens``: int32 ``[B]``, each in ``[1, T]``."""
    B, T, H, D = q.shape
    o, (qd, kd, vd, od) = _descriptors(q, k, v, out, block_m, block_n)
    grid = (T // block_m, B * H)
    scale = D ** -0.5 * LOG2E

    def run():
        extra = {"maxnreg": maxnreg} if maxnreg else {}
        return _gluon_fwd_kernel[grid](qd, kd, vd, od, lens, T, scale, N_HEADS=H, HEAD_D=D, BLOCK_M=block_m,
                                       BLOCK_N=block_n, STAGES=stages, ONE_BAR=one_bar, CTA_BAR=cta_bar,
                                       num_warps=warps, **extra)
    return run, o


def _compile(fn, arch, block_m, block_n, head_d, scalars, consts, options):
    """Compile Gluon kernel ``fn`` for ``sm_{arch}`` without a GPU (its four TMA descriptors first, then
    ``scalars``: name -> type); returns the compiled kernel (asm: ttgir, ptx, cubin)."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    sig = {}
    for name, block in (("q_desc", block_m), ("k_desc", block_n), ("v_desc", block_n), ("o_desc", block_m)):
        sig[name] = f"tensordesc<fp16[{block}, {head_d}],{_layout([block, head_d], gl.float16)!r}>"
    sig.update(scalars)
    sig.update({c: "constexpr" for c in consts})
    attrs = {(fn.arg_names.index("len_ptr"),): [["tt.divisibility", 16]]}
    return triton.compile(GluonASTSource(fn, sig, consts, attrs=attrs), target=GPUTarget("cuda", arch, 32),
                          options=options)


def compile_only(arch, config, head_d=64):
    """The one-tile-per-program kernel for ``sm_{arch}``; ``config``: BLOCK_M, BLOCK_N, STAGES, warps[, register
    cap[, one barrier per slot[, explicit program barrier]]]."""
    block_m, block_n, stages, warps = config[:4]
    flags = tuple(config[5:7]) + (0, 1)[len(config[5:7]):]
    consts = dict(N_HEADS=12, HEAD_D=head_d, BLOCK_M=block_m, BLOCK_N=block_n, STAGES=stages,
                  ONE_BAR=bool(flags[0]), CTA_BAR=bool(flags[1]), num_warps=warps)
    options = dict(num_warps=warps, **({"maxnreg": config[4]} if len(config) > 4 and config[4] else {}))
    return _compile(_gluon_fwd_kernel, arch, block_m, block_n, head_d, dict(len_ptr="*i32", T="i32", qk_scale="fp32"),
                    consts, options)
