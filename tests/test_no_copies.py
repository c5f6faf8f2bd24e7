"""No hidden copies of q, k, v, the scores or the upstream gradients (issue 6, item 4).

Three views of the same promise:

1. every aten op the public functions run (recorded by a ``TorchDispatchMode``) is a view, a small mask op or one of
   our custom operators: no ``clone`` / ``contiguous`` / ``_to_copy`` / ``copy_`` on the inputs;
2. the Triton kernels receive the caller's tensors themselves: same storage pointer and same strides (transposed,
   sliced and stride-0 broadcast views are read through their strides, never materialised);
3. the host functions allocate only the outputs (plus tiny per-sequence key ranges): counted with the dispatch mode.

A GPU test checks the same with ``torch.cuda.max_memory_allocated``.
"""
import importlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hf_masked_softmax import attention, masked_softmax
from hf_masked_softmax.masks import prepare_mask

ms_mod = importlib.import_module("hf_masked_softmax.masked_softmax")
attn_mod = importlib.import_module("hf_masked_softmax.attention")
masks_mod = importlib.import_module("hf_masked_softmax.masks")

COPY_OPS = {"clone", "contiguous", "_to_copy", "copy_", "copy", "to", "_copy_from", "index", "gather",
            "repeat", "repeat_interleave", "cat", "stack"}


class Recorder(TorchDispatchMode):
    """Records (op name, input tensors, output tensors) of every op dispatched while active."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.paused:
            return out
        flat_in = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        flat_out = [o for o in torch.utils._pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
        self.calls.append((func, flat_in, flat_out))
        return out


def _storage(t):
    return t.untyped_storage().data_ptr()


def _copies_of(recorder, tensors):
    """Ops of the copy family that read any of ``tensors``' storages."""
    ptrs = {_storage(t) for t in tensors}
    bad = []
    for func, ins, _ in recorder.calls:
        name = func.__name__.split(".")[0]
        if name in COPY_OPS and any(_storage(t) in ptrs for t in ins if t.device.type != "meta"):
            bad.append(str(func))
    return bad


def _allocations(recorder, min_numel):
    """Outputs of non-view ops with at least ``min_numel`` elements (fresh memory of that size)."""
    sizes = []
    for func, ins, outs in recorder.calls:
        if func.is_view:
            continue
        in_ptrs = {_storage(t) for t in ins}
        for o in outs:
            if o.numel() >= min_numel and _storage(o) not in in_ptrs:
                sizes.append((str(func), tuple(o.shape)))
    return sizes


# ----------------------------------------------------------------------------------------------------------------------
# 1. the public functions run no copy op on their inputs
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask_form", ["pad2d", "bool4d", "add4d"])
def test_masked_softmax_public_path_copies_nothing(mask_form, device):
    base = torch.randn(2, 3, 20, 5, device=device)
    scores = base.transpose(2, 3)  # [2, 3, 5, 20], K-major
    mask = {"pad2d": torch.tensor([[1] * 20, [0] * 5 + [1] * 15], device=device, dtype=torch.bool),
            "bool4d": torch.rand(2, 1, 5, 20, device=device) > 0.3,
            "add4d": torch.zeros(1, 1, 1, 20, device=device)}[mask_form]
    scores.requires_grad_(True)
    with Recorder() as rec:
        out = masked_softmax(scores, mask, causal=True, scale=0.5)
        # autograd.grad, not backward(): accumulating into a transposed leaf would add autograd's own layout copy
        torch.autograd.grad(out, scores, torch.randn(2, 3, 20, 5, device=device).transpose(2, 3))
    assert any("hf_masked_softmax.masked_softmax" in str(f) for f, _, _ in rec.calls)
    assert any("hf_masked_softmax.masked_softmax_backward" in str(f) for f, _, _ in rec.calls)
    assert _copies_of(rec, [base, mask]) == []
    # fresh memory of the scores' size: the output, the gradient, and the upstream grad built above (its randn)
    big = [a for a in _allocations(rec, scores.numel()) if "randn" not in a[0]]
    assert len(big) == 2, big


def test_attention_public_path_copies_nothing(device):
    B, H, Hkv, Q, K, D = 2, 4, 2, 5, 20, 16
    q = torch.randn(B, Q, H, D, device=device).transpose(1, 2).requires_grad_(True)  # HF's layout
    k = torch.randn(B, K, Hkv, D, device=device).transpose(1, 2).requires_grad_(True)
    v = torch.randn(1, Hkv, K, D, device=device).expand(B, -1, -1, -1)  # stride-0 batch
    pad = torch.ones(B, K, dtype=torch.bool, device=device)
    pad[1, :7] = False
    with Recorder() as rec:
        out = attention(q, k, v, pad, causal=True)
        torch.autograd.grad(out, (q, k), torch.randn(B, Q, H, D, device=device).transpose(1, 2))
    assert any("hf_masked_softmax.attention" in str(f) for f, _, _ in rec.calls)
    assert _copies_of(rec, [q, k, v, pad]) == []


# ----------------------------------------------------------------------------------------------------------------------
# 2. the kernels read the caller's tensors in place
# ----------------------------------------------------------------------------------------------------------------------
class KernelSpy:
    """Stands in for a Triton kernel (``kernel[grid](*args)``), records its tensor arguments, then launches it.

    With a ``recorder``, recording pauses during the launch: Triton's CPU interpreter stages every argument in host
    buffers of its own, which a GPU launch does not do.
    """

    def __init__(self, kernel, log, recorder=None):
        self.kernel, self.log, self.recorder = kernel, log, recorder

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append([a for a in args if isinstance(a, torch.Tensor)])
            if self.recorder is not None:
                self.recorder.paused = True
            try:
                return self.kernel[grid](*args, **kwargs)
            finally:
                if self.recorder is not None:
                    self.recorder.paused = False

        return launch


def _spy_on_all_kernels(modules, monkeypatch, recorder):
    log = []
    for module in modules:
        for name, obj in list(vars(module).items()):
            if name.endswith("_kernel") and hasattr(obj, "__getitem__") and not isinstance(obj, KernelSpy):
                monkeypatch.setattr(module, name, KernelSpy(obj, log, recorder))
    return log


def _same(a, b):
    return a.data_ptr() == b.data_ptr() and a.stride() == b.stride() and a.shape == b.shape


@pytest.mark.parametrize("path", ["single", "looped"])
@pytest.mark.parametrize("view", ["transposed", "sliced", "broadcast"])
def test_masked_softmax_kernels_get_the_scores_themselves(view, path, device, monkeypatch):
    log = []
    for name in ("_fwd_kernel", "_bwd_kernel"):
        monkeypatch.setattr(ms_mod, name, KernelSpy(getattr(ms_mod, name), log))
    if view == "transposed":
        leaf = torch.randn(2, 2, 24, 3, device=device)
        scores = leaf.transpose(2, 3)
    elif view == "sliced":
        leaf = torch.randn(2, 4, 6, 60, device=device)
        scores = leaf[:, ::2, 1::2, 5:29]
    else:
        leaf = torch.randn(2, 1, 1, 24, device=device)
        scores = leaf.expand(2, 3, 4, 24)
    leaf.requires_grad_(True)
    mask = torch.ones(2, 24, dtype=torch.bool, device=device)
    mask[0, :9] = False
    from hf_masked_softmax import ops

    spec = prepare_mask(mask, tuple(scores.shape), scores.device)
    blocks = (8192, 512) if path == "single" else (8, 8)
    out = ops.masked_softmax_op(scores, mask, spec.kind, spec.threshold, True, 0.5, *blocks)
    dy = torch.randn(scores.shape[0], scores.shape[1], scores.shape[3], scores.shape[2], device=device).transpose(2, 3)
    out.backward(dy)
    assert len(log) == 2
    fwd, bwd = log
    assert _same(fwd[0], scores.detach())  # read through its strides
    assert _same(bwd[1], dy)  # the upstream gradient too
    assert _same(bwd[0], out)  # the saved output, not a copy of it


def test_attention_kernels_get_q_k_v_themselves(device, monkeypatch):
    log = []
    for name in ("_attn_fwd_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel"):
        monkeypatch.setattr(attn_mod, name, KernelSpy(getattr(attn_mod, name), log))
    B, H, Hkv, Q, K, D = 2, 4, 2, 20, 24, 16
    q = torch.randn(B, Q, H, D, device=device).transpose(1, 2).requires_grad_(True)
    k = torch.randn(B, K, Hkv, 2 * D, device=device).transpose(1, 2)[..., :D]
    v = torch.randn(1, Hkv, K, D, device=device).expand(B, -1, -1, -1)
    mask = torch.randn(1, 1, Q, K, device=device)  # additive, broadcast over batch and heads
    out = attention(q, k, v, mask)
    do = torch.randn(B, H, D, Q, device=device).transpose(2, 3)
    out.backward(do)
    fwd, dkdv, dq = log
    assert _same(fwd[0], q.detach()) and _same(fwd[1], k) and _same(fwd[2], v)
    for launch in (dkdv, dq):
        assert _same(launch[0], q.detach()) and _same(launch[1], k) and _same(launch[2], v)
        assert _same(launch[3], do)
    mask_arg = fwd[5]
    assert mask_arg.data_ptr() == mask.data_ptr() and mask_arg.stride()[:2] == (0, 0)  # broadcast, not expanded


# ----------------------------------------------------------------------------------------------------------------------
# 3. the host functions allocate the outputs and nothing of comparable size
# ----------------------------------------------------------------------------------------------------------------------
def test_masked_softmax_host_allocates_only_the_output(device, monkeypatch):
    scores = torch.randn(2, 2, 4, 24, device=device).transpose(2, 3).contiguous().transpose(2, 3)
    mask = torch.ones(2, 24, dtype=torch.bool, device=device)
    spec = prepare_mask(mask, tuple(scores.shape), scores.device)
    rec = Recorder()
    launches = _spy_on_all_kernels((ms_mod, masks_mod), monkeypatch, rec)
    with rec:
        y = ms_mod._forward(scores, spec, True, 0.5, (8192, 4096))
        ms_mod._backward(y, torch.randn_like(y), spec, True, 0.5, (8192, 4096))
    assert len(launches) == 4  # key ranges + forward, key ranges + backward
    big = [a for a in _allocations(rec, 2 * 24) if "randn" not in a[0]]
    assert [s for _, s in big] == [tuple(scores.shape)] * 2, big  # y, then dS; the key ranges are [B, 4]


def test_attention_host_allocates_only_outputs(device, monkeypatch):
    B, H, Q, K, D = 1, 2, 40, 24, 16  # Q > 16: the prefill path (decode may add fp32 split partials by design)
    q, k, v = (torch.randn(B, H, T, D, device=device) for T in (Q, K, K))
    rec = Recorder()
    launches = _spy_on_all_kernels((attn_mod, masks_mod), monkeypatch, rec)
    with rec:
        out, lse = attn_mod._forward(q, k, v, attn_mod._K_NONE, None, None, 0.0, True, 0.25)
    assert len(launches) == 1
    big = _allocations(rec, B * H * Q)
    assert sorted(s for _, s in big) == sorted([(B, Q, H, D), (2, B, H, Q)]), big  # out; lse and its residual


# ----------------------------------------------------------------------------------------------------------------------
# GPU: peak memory
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_gpu_peak_memory_is_inputs_plus_outputs():
    torch.cuda.synchronize()
    scores = torch.randn(8, 12, 1024, 1024, device="cuda", dtype=torch.float16).transpose(2, 3)
    mask = torch.ones(8, 1024, dtype=torch.bool, device="cuda")
    mask[::2, :300] = False
    masked_softmax(scores, mask, causal=True)  # compile outside the measurement
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    y = masked_softmax(scores, mask, causal=True)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra <= y.numel() * y.element_size() + 2**20, extra  # the output and < 1 MiB (key ranges)

    q = torch.randn(8, 1024, 12, 64, device="cuda", dtype=torch.float16).transpose(1, 2)
    k = torch.randn(8, 1024, 12, 64, device="cuda", dtype=torch.float16).transpose(1, 2)
    attention(q, k, k, mask, causal=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = attention(q, k, k, mask, causal=True)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    lse_bytes = 2 * 8 * 12 * 1024 * 4  # lse and its rounding residual, fp32
    assert extra <= out.numel() * out.element_size() + lse_bytes + 2**20, extra


def test_masked_softmax_backward_reuses_the_forwards_key_ranges(device, monkeypatch):
    # the eager backward takes the 2D mask's key ranges from its forward: no second ranges launch per backward
    from hf_masked_softmax import masks

    g = torch.Generator().manual_seed(3)
    scores = torch.randn(2, 2, 3, 21, generator=g).to(device).requires_grad_(True)
    mask = torch.ones(2, 21, dtype=torch.long, device=device)
    mask[1, :7] = 0
    y = masked_softmax(scores, mask, causal=True, scale=0.5)
    dy = torch.randn(y.shape, generator=g).to(device)
    calls = []
    real = masks.pad_ranges
    monkeypatch.setattr(masks, "pad_ranges", lambda *a, **k: calls.append(a) or real(*a, **k))
    (grad,) = torch.autograd.grad(y, scores, dy)
    assert calls == []
    yd = y.detach().double()
    expected = 0.5 * yd * (dy.double() - (yd * dy.double()).sum(-1, keepdim=True))
    torch.testing.assert_close(grad.double(), expected, atol=1e-6, rtol=1e-5)
