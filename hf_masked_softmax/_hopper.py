"""When the fused forward runs the Hopper kernel of :mod:`hf_masked_softmax._hopper_kernels` instead of the Triton one.

That kernel, written in Gluon (Triton's lower-level dialect), places its own waits for the tensor cores so that the
softmax of one key block runs while the previous block's ``P v`` is on them, keeps persistent programs on the
multiprocessors (two per multiprocessor on tiles of 128 query rows; three on 64-row tiles for causal calls), and
moves every tile by TMA. On an H200 it ran BERT's padded forward (B32 H12 512x512, keys uniform in [256, 512], fp16)
in 0.0674-0.0691 ms where the Triton kernel took 0.0754-0.0766 in the same calls, and GPT-2's causal prefill (B8 H12
1024x1024, keys in [512, 1024]) in 0.0463-0.0475 against 0.0493, with bit-identical output
(``evals/bench_hopper.py``, NOTES.md, seventeenth to nineteenth sessions).

It covers large inference calls (encoders, causal prefill): a plan uses it when all of these hold, and the Triton
kernel otherwise.

* a CUDA device of compute capability 9.0 (H100 / H200), Triton with Gluon's Hopper API (3.6 runs it on the GPU;
  3.9 compiles it for sm_90 in the CPU tests), not under ``TRITON_INTERPRET=1``, and ``HF_MASKED_SOFTMAX_HOPPER``
  not ``0`` (or :data:`ENABLED` set False);
* fp16 or bf16, head dim 64 (or 128 with :data:`WIDE_HEADS`), causal (bottom-right) or not, no dropout, no
  log-sum-exp wanted (autograd is not recording; training keeps the Triton forward, whose log-sum-exp the backward
  reads), no decode split, no window, no soft-cap (attention sinks are taken);
* no mask or a 2D padding mask (any padding, holes included); a positive scale of at most 1 (applied inside the
  exponent, as the Triton kernel does);
* at least 128 queries. Calls without causality that make at least four tiles of 128 query rows per multiprocessor
  (:data:`MIN_TILES_PER_SM`) run 128-row tiles, two programs per multiprocessor; causal calls and smaller ones run
  64-row tiles, three programs per multiprocessor (:func:`tile_shape`). Smaller calls take the kernel with
  :data:`SMALL_CALLS`, on by default where kernels launch by the C function (``_launch.RAW``, Triton 3.6): through
  Triton's launcher the descriptors' host cost outweighed what they gain;
* q, k, v ``[B, heads, L, D]`` with the head dim contiguous, 16-byte aligned, and every other stride a positive
  multiple of 16 bytes (TMA's rules): HF's projections (``[B, L, heads, D]`` memory, a fused QKV's rows included)
  and a KV cache's ``[B, heads, L, D]`` memory both qualify.

``HF_MASKED_SOFTMAX_HOPPER=0`` turns it off. Its outputs are checked against the fp64 reference on the GPU
(``tests/test_hopper.py``).
"""
from __future__ import annotations

import os

import torch

from . import _launch
from ._launch import INTERPRETED

_LOG2E = 1.4426950408889634
BLOCK_M, BLOCK_N, STAGES, WARPS, PER_SM = 128, 64, 3, 4, 2
# fine tiles, for causal calls and small ones (tile_shape): 64 query rows and three programs per multiprocessor
# (141-161 registers, 74 KB of shared memory each: 12 warps per multiprocessor). H200, bit-identical outputs, three
# alternating rounds (evals/bench_hopper.py --ab tile64): GPT-2's padded prefill 0.0467 / 0.0476 / 0.0473 ms against
# 0.0481 / 0.0483 / 0.0482 with 128 rows and two programs, without padding 0.0491 / 0.0490 / 0.0490 against 0.0502
# each time; BERT's B32 (no causality) went the other way, 0.0708-0.0714 against 0.0673-0.0674. Below the floor,
# against the Triton kernel (BERT-like T512, keys in [256, 512]): B1 0.0082-0.0086 against 0.0108, B2 0.0106 against
# 0.0110, B4 0.0122-0.0123 against 0.0152-0.0153, B8 0.0196-0.0197 against 0.0220; 128-row tiles lost there
# (0.0120-0.0123 at B1, 0.0238-0.0239 at B8; NOTES.md, nineteenth session)
FINE_BLOCK_M, FINE_PER_SM = 64, 3
HEAD_D = 64
# head dim 128 (Llama, Mistral, Qwen): every call on tiles of 64 query rows and 32-key blocks, two programs per
# multiprocessor. Compiled for sm_90 on the CPU (Triton 3.6, 2026-12-06): 136 registers (144 causal), no spills, 98 KB
# of shared memory per program; 64-key blocks took 176-194 registers and 147 KB (one program per multiprocessor), and
# 128-row tiles spilled at 255. Off by default until timed against the Triton kernel on a GPU (bench_hopper.py
# --head-dim 128 --ab wide); HF_MASKED_SOFTMAX_HOPPER_D128=1 turns it on.
WIDE_HEAD_D = 128
WIDE_BLOCK_M, WIDE_BLOCK_N, WIDE_PER_SM = 64, 32, 2
WIDE_HEADS = os.environ.get("HF_MASKED_SOFTMAX_HOPPER_D128", "0").strip().lower() in ("1", "true", "yes", "on")
# fewer 128-row tiles than this per multiprocessor go to the Triton kernel: on an H200, with 128-row tiles B8 H12
# T512 (384 tiles on 132 multiprocessors) took 0.0243 ms and the Triton kernel 0.0221, B16 0.0376 and 0.0400
# (evals/bench_hopper.py)
MIN_TILES_PER_SM = 4
# calls below that floor on fine tiles instead: on where the kernels launch by the C function (_launch.RAW, Triton
# 3.6). On the GPU they were as fast as the Triton kernel or faster (H200, CUDA graph: BERT-like T512 B1 0.0087 ms
# against 0.0110, B8 0.0195 against 0.0220; B1 H12 T128 0.0051 against 0.0062). Through Triton's launcher, which
# encodes the four TMA descriptors on every launch, eager calls took 0.035-0.055 ms (host time included) against the
# Triton kernel's 0.016-0.032 (nineteenth session); with the C launch and the encoded descriptors kept, 0.0071-0.0129
# against 0.0082-0.0407 on the same six shapes (evals/bench_hopper.py --ab small; NOTES.md, twentieth session)
SMALL_CALLS = _launch.RAW
# The kernel is specialised on its tile count, query blocks per head and grid size unless they are passed at run
# time (a Gluon compile took 0.6-1.9 s on this project's CPU). RUNTIME_COUNTS: calls without causality pass the tile
# count and grid size at run time, so one compiled kernel serves every batch size (H200, CUDA graph, six rounds:
# BERT 0.0676-0.0688 ms against 0.0672-0.0681 with constants, all keys 0.0777-0.0779 against 0.0773-0.0775,
# bit-identical; evals/bench_hopper.py --ab counts). RUNTIME_ALL: every call passes all three (one kernel for every
# batch size and query length, causal or not), off: GPT-2's prefill 0.0453-0.0468 against 0.0447-0.0452, BERT
# 0.0681-0.0691 against 0.0677-0.0684, B8 T512 0.0201-0.0203 against 0.0194-0.0196 (--ab counts-all; NOTES.md,
# twentieth session)
RUNTIME_COUNTS = True
RUNTIME_ALL = False
# the K / V load cursor's tile bounds in registers (True) or read per block (False): _hopper_kernels._issue_next
CURSOR_REGS = True
# causal calls (bottom-right, GPT-2's prefill) take the kernel too
CAUSAL_OK = True
# calls with attention sinks (GPT-OSS) take the kernel too (the sink joins each row's max and sum after its keys);
# False leaves them to the Triton kernel (bench_sinks.py's fused-sinks-triton provider times the two)
SINKS_OK = True
# a tile's key blocks in two loops, those that need no mask and then the rest (_hopper_kernels._step), for causal
# calls always (their mask code in the one loop spilled registers there), for the others when this is True: BERT
# 0.0673 / 0.0682 / 0.0684 ms against 0.0680 / 0.0683 / 0.0684 with one loop, all keys 0.0779 / 0.0785 / 0.0779
# against 0.0788 / 0.0787 / 0.0793 (H200, evals/bench_hopper.py --ab split, three alternating rounds)
SPLIT_LOOP = True
ENABLED = os.environ.get("HF_MASKED_SOFTMAX_HOPPER", "1").strip().lower() not in ("0", "false", "no", "off")

_KERNELS = None  # the kernel module once imported, False if Gluon's Hopper API is missing
_CAPABILITY: dict = {}


def kernels():
    """:mod:`._hopper_kernels`, or None where this Triton has no Gluon Hopper API (imported on first use only)."""
    global _KERNELS
    if _KERNELS is None:
        try:
            from . import _hopper_kernels
            from triton.experimental.gluon.nvidia.hopper import TensorDescriptor  # noqa: F401
            _KERNELS = _hopper_kernels
        except Exception:  # noqa: BLE001 - an older or newer Triton without these names: the Triton path
            _KERNELS = False
    return _KERNELS or None


def _tiles128(bh: int, q_len: int) -> int:
    """Tiles of 128 query rows of a call with ``bh`` (batch x heads) sequences of ``q_len`` queries: what the
    floor :data:`MIN_TILES_PER_SM` and :func:`tile_shape` count, whatever tile a call then runs."""
    return bh * -(-q_len // 128)


def head_dims():
    """The head dims the kernel takes: 64, and 128 with :data:`WIDE_HEADS`."""
    return (HEAD_D, WIDE_HEAD_D) if WIDE_HEADS else (HEAD_D,)


def block_n(head_d: int) -> int:
    """Keys per block at head dim ``head_d``."""
    return BLOCK_N if head_d == HEAD_D else WIDE_BLOCK_N


def tile_shape(causal: bool, tiles128: int, sm_count: int, head_d: int = HEAD_D):
    """Query rows per tile and programs per multiprocessor for a call with or without causality that makes
    ``tiles128`` tiles of 128 query rows (B x H x ceil(Q / 128)) on ``sm_count`` multiprocessors, at head dim
    ``head_d``."""
    if head_d != HEAD_D:
        return WIDE_BLOCK_M, WIDE_PER_SM
    if causal or tiles128 < MIN_TILES_PER_SM * sm_count:
        return FINE_BLOCK_M, FINE_PER_SM
    return BLOCK_M, PER_SM


def _capability(device: torch.device):
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _CAPABILITY:
        _CAPABILITY[idx] = torch.cuda.get_device_capability(idx)
    return _CAPABILITY[idx]


def _tma_strides(t: torch.Tensor):
    """``t``'s strides for a TMA descriptor of its ``[B, heads, L, D]`` shape: a dimension of size 1 gets the stride
    of a packed one (whatever its own stride is, it is never stepped along)."""
    strides = list(t.stride())
    for i in (2, 1, 0):
        if t.shape[i] == 1:
            strides[i] = strides[i + 1] * t.shape[i + 1]
    return strides


def _tma_view_ok(t: torch.Tensor) -> bool:
    """TMA can read ``t`` ``[B, heads, L, D]`` as it is: head dim contiguous, every other stride positive and a
    multiple of 16 bytes (HF's ``[B, L, heads, D]`` projections, a fused QKV's row stride, a KV cache's
    ``[B, heads, L, D]``), 16-byte aligned."""
    esize = t.element_size()
    *outer, sd = _tma_strides(t)
    return sd == 1 and all(s > 0 and (s * esize) % 16 == 0 for s in outer) and t.data_ptr() % 16 == 0


def call_ok(q, k, v, kind, causal, fold, need_lse, drop_thr, splits, sm_count) -> bool:
    """Whether a forward with these arguments is one the Hopper kernel computes (the module docstring's list, but
    for the device and Triton): ``kind`` is the Triton kernel's mask kind (0 none, 1 padding ranges), ``fold``
    whether the scale may go inside the exponent, ``sm_count`` the device's multiprocessors."""
    B, H, Q, D = q.shape
    K = k.shape[2]
    if (kind not in (0, 1) or (causal and not CAUSAL_OK) or not fold or need_lse or drop_thr or splits != 1
            or D not in head_dims() or q.dtype not in (torch.float16, torch.bfloat16) or Q < 128 or K < 1
            or not (SMALL_CALLS or MIN_TILES_PER_SM * sm_count <= _tiles128(B * H, Q))
            or B * H * -(-Q // FINE_BLOCK_M) >= 2**31):  # tile indices are int32
        return False
    return all(_tma_view_ok(t) for t in (q, k, v))


def usable(q, k, v, kind, causal, fold, need_lse, drop_thr, splits, sm_count) -> bool:
    """:func:`call_ok`, on an sm_90 CUDA device with Gluon's Hopper API, outside the interpreter, when enabled."""
    if not ENABLED or INTERPRETED or q.device.type != "cuda":
        return False
    if not call_ok(q, k, v, kind, causal, fold, need_lse, drop_thr, splits, sm_count):
        return False
    return _capability(q.device) == (9, 0) and kernels() is not None


def static_counts(causal: bool):
    """Whether a call's tile count and grid size, and its query blocks per head, are compile-time constants
    (:data:`RUNTIME_COUNTS`, :data:`RUNTIME_ALL`)."""
    return not (RUNTIME_ALL or (RUNTIME_COUNTS and not causal)), not RUNTIME_ALL


def kernel_consts(n_tiles, nprog, n_m, heads, group, kind, causal, block_m, cursor_regs=None, split=None,
                  head_d=HEAD_D, sink=False) -> dict:
    """The kernel's constexprs (and ``num_warps``) for a call of ``n_tiles`` tiles of ``block_m`` query rows over
    ``nprog`` programs, ``n_m`` per head, at head dim ``head_d``: a count passed at run time instead
    (:func:`static_counts`) is 0 here. ``cursor_regs`` / ``split``: None for :data:`CURSOR_REGS` /
    :data:`SPLIT_LOOP` (causal calls always split); ``sink``: the call has attention sinks."""
    static, static_m = static_counts(causal)
    return dict(N_TILES=n_tiles * static, NPROG=nprog * static, MASK_KIND=kind, CAUSAL=bool(causal),
                N_M=n_m * static_m, N_HEADS=heads, GROUP=group, HEAD_D=head_d, BLOCK_M=block_m,
                BLOCK_N=block_n(head_d),
                STAGES=STAGES, CURSOR_REGS=CURSOR_REGS if cursor_regs is None else cursor_regs,
                SPLIT=bool(causal or (SPLIT_LOOP if split is None else split)), SINK=bool(sink), num_warps=WARPS)


def compile_for(arch: int = 90, dtype: str = "fp16", kind: int = 1, n_m=None, heads: int = 12, group: int = 1,
                cursor_regs=None, causal: bool = False, split=None, batch: int = 32, sm_count: int = 132,
                queries: int = 512, head_d: int = HEAD_D, sink: bool = False):
    """The kernel compiled for ``sm_{arch}`` without a GPU (signature as the launcher builds it): for the tests and
    ``--compile-only`` inspection of its SASS. ``dtype``: "fp16" or "bf16"."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource

    mod = kernels()
    if mod is None:
        raise RuntimeError("this Triton has no Gluon Hopper API")
    gdt = gl.float16 if dtype == "fp16" else gl.bfloat16
    block_m, per_sm = tile_shape(causal, _tiles128(batch * heads, queries), sm_count, head_d)
    n_m = -(-queries // block_m) if n_m is None else n_m
    bn = block_n(head_d)
    sig = {}
    for name, block in (("q_desc", block_m), ("k_desc", bn), ("v_desc", bn), ("o_desc", block_m)):
        layout = gl.NVMMASharedLayout.get_default_for([1, 1, block, head_d], gdt)
        sig[name] = f"tensordesc<{dtype}[1, 1, {block}, {head_d}],{layout!r}>"
    sig.update(ranges_ptr="*i32", mask_ptr="*u8", sink_ptr="*fp32", stride_mb="i32", stride_mk="i32", Q_LEN="i32",
               K_LEN="i32", qk_scale="fp32", tiles_rt="i32", nprog_rt="i32", n_m_rt="i32")
    consts = kernel_consts(n_m * heads * batch, min(n_m * heads * batch, per_sm * sm_count), n_m, heads, group, kind,
                           causal, block_m, cursor_regs, split, head_d, sink)
    sig.update({c: "constexpr" for c in consts})
    src = GluonASTSource(mod._attn_fwd_persistent, sig, consts, attrs={})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=WARPS, **_launch.OPTIONS))


# encoded TMA descriptors kept per plan and tensor slot (by address; cleared when full)
_MAX_MAPS = 64


class _Desc:
    """What the compiled kernel's launcher reads of a host TMA descriptor (Triton 3.6's ``make_tensordesc_arg``:
    base, shape, strides, padding): built per call on the shortcut, where a ``TensorDescriptor`` (whose checks cost
    microseconds) was validated for the same shapes and strides at the plan's first launch."""

    __slots__ = ("base", "shape", "strides", "padding")

    def __init__(self, base, shape, strides):
        self.base, self.shape, self.strides, self.padding = base, shape, strides, "zero"


class HopperForward:
    """A forward plan's launch on the Hopper kernel: ``(q, k, v, out, mask, ranges, sinks)``, ``out`` the plan's
    ``[B, H, Q, D]`` view of fresh ``[B, Q, H, D]`` memory, ``sinks`` None or the fp32 ``[H]`` sink logits (a plan made
    with ``sinks=True``). The first launch goes through Gluon's JIT (about 130 us
    of host time per call on an H200's host, ``evals/bench_hopper.py``); later ones call the compiled kernel it
    returned (the launch shortcut of :mod:`._launch`, on the Triton versions it is checked for): the plan's key
    fixes everything the kernel was specialised on but the tensors' addresses, and those are 16-byte aligned in
    every call that reaches this plan. With Triton 3.6 they call the launcher's C function with the four TMA
    descriptors encoded once per address and plan (:meth:`_bind_raw`)."""

    def __init__(self, q, k, v, kind, causal, scale, sm_count, sinks=False):
        from triton.experimental.gluon import language as gl

        mod = kernels()
        self.kernel = mod._attn_fwd_persistent
        B, H, Q, D = q.shape
        Hkv, K = k.shape[1], k.shape[2]
        gdt = gl.float16 if q.dtype == torch.float16 else gl.bfloat16
        self.block_m, per_sm = tile_shape(causal, _tiles128(B * H, Q), sm_count, D)
        self.block_n = block_n(D)
        self.layouts = (gl.NVMMASharedLayout.get_default_for([1, 1, self.block_m, D], gdt),
                        gl.NVMMASharedLayout.get_default_for([1, 1, self.block_n, D], gdt))
        n_m = -(-Q // self.block_m)
        self.n_tiles = n_m * B * H
        self.grid = (min(self.n_tiles, per_sm * sm_count),)
        self.kind = kind
        self.n_m = n_m
        self.consts = kernel_consts(self.n_tiles, self.grid[0], n_m, H, H // Hkv, kind, causal, self.block_m,
                                    head_d=D, sink=sinks)
        self.Q, self.K = Q, K
        self.qk_scale = scale * _LOG2E
        self.dummy = torch.zeros(4, dtype=torch.int32, device=q.device)  # the range and mask pointers when unused
        # each descriptor's [B, heads, L, D] shape and strides, fixed by the plan's key
        self.views = [(list(t.shape), _tma_strides(t)) for t in (q, k, v)]
        self.views.append(([B, H, Q, D], _tma_strides(torch.empty(B, Q, H, D, device="meta").transpose(1, 2))))
        self.compiled, self.tail = None, ()
        # the C launch (_launch.raw_launch) and, per descriptor, fill_tma_descriptor's arguments but the address,
        # the shape and strides that follow the encoded descriptor, and the encoded descriptors by address
        self.raw, self.fill, self.fill_args, self.dims = None, None, (), ()
        self.maps = ({}, {}, {}, {})

    def __call__(self, q, k, v, out, mask_t, ranges, sinks=None):
        if self.kind == 1:
            mask, smb, smk = mask_t, mask_t.stride(0), mask_t.stride(1)
        else:
            ranges, mask, smb, smk = self.dummy, self.dummy, 0, 0
        sink = self.dummy if sinks is None else sinks
        scalars = (ranges, mask, sink, smb, smk, self.Q, self.K, self.qk_scale, self.n_tiles, self.grid[0], self.n_m)
        tensors = (q, k, v, out)
        compiled = self.compiled
        if compiled is not None and _launch.ENABLED and not _launch._hooks_installed():
            if self.raw is not None and _launch.RAW:
                # each descriptor expanded as Triton's wrapper would (make_tensordesc_arg): the encoded TMA
                # descriptor, then its shape and strides. The plan fixes all of an encoding but the address, so
                # one encoded for an address is reused whenever a tensor starts there again (a model's layers
                # often get the same few addresses from the caching allocator).
                args = []
                for t, maps, fill_args, dims in zip(tensors, self.maps, self.fill_args, self.dims):
                    ptr = t.data_ptr()
                    cu_map = maps.get(ptr)
                    if cu_map is None:
                        cu_map = self.fill(ptr, *fill_args)
                        _launch.remember(maps, ptr, cu_map, _MAX_MAPS)
                    args.append(cu_map)
                    args.extend(dims)
                _launch._run(compiled, self.grid, _launch._driver().get_current_device(),
                             (*args, *scalars, *self.tail), self.raw)
                return
            descs = [_Desc(t, shape, strides) for t, (shape, strides) in zip(tensors, self.views)]
            _launch._run(compiled, self.grid, _launch._driver().get_current_device(), (*descs, *scalars, *self.tail))
            return
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

        lm, ln = self.layouts
        blocks = (self.block_m, self.block_n, self.block_n, self.block_m)
        descs = [TensorDescriptor(t, shape, strides, [1, 1, block, t.shape[3]], layout)
                 for t, (shape, strides), block, layout in zip(tensors, self.views, blocks, (lm, ln, ln, lm))]
        kernel = self.kernel[self.grid](*descs, *scalars, **_launch.OPTIONS, **self.consts)
        names = self.kernel.arg_names[len(descs) + len(scalars):]
        if _launch.ENABLED and _launch._launchable(kernel) and all(n in self.consts for n in names):
            self.compiled, self.tail = kernel, tuple(self.consts[n] for n in names)
            self._bind_raw(kernel)

    def _bind_raw(self, kernel):
        """Prepare the C launch of ``kernel`` with encoded descriptors (Triton 3.6's ``make_tensordesc_arg`` for each
        of the four, with the plan's shapes and strides), where :func:`_launch.raw_launch` allows it."""
        raw = _launch.raw_launch(kernel, descriptors=True)
        meta = getattr(getattr(kernel, "metadata", None), "tensordesc_meta", None)
        if raw is None or not meta or len(meta) != len(self.views):
            return
        try:
            from triton.backends.nvidia.driver import TMA_DTYPE_DEVICE_TO_HOST
            fill = _launch._driver().utils.fill_tma_descriptor
            fill_args = tuple((m["swizzle"], m["elem_size"], TMA_DTYPE_DEVICE_TO_HOST[m["elem_type"]],
                               list(m["block_size"]), list(shape), list(strides), 0)  # 0: zero padding
                              for m, (shape, strides) in zip(meta, self.views) if not m.get("fp4_padded"))
        except (ImportError, AttributeError, KeyError, TypeError):  # another layout of these internals
            return
        if len(fill_args) != len(self.views):
            return
        self.raw, self.fill, self.fill_args = raw, fill, fill_args
        self.dims = tuple((*shape, *strides) for shape, strides in self.views)
