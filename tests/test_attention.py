"""Fused attention against the fp64 reference: every mask form, causal, GQA, odd lengths, dtypes, head dims, the
decode (split-K) path, backward, layouts and errors. On CPU the real Triton kernels run in the interpreter, so the
shapes stay tiny (blocks are 16 wide there, so lengths of 20..50 already cross several blocks)."""
import contextlib
import importlib
import math
from unittest import mock

import numpy as np
import pytest
import torch

import hf_masked_softmax
from hf_masked_softmax import attention as attention_fn
from hf_masked_softmax.reference import attention_reference, masked_softmax_reference
from conftest import DEVICE
from tolerances import assert_close

attn_mod = importlib.import_module("hf_masked_softmax.attention")
launch_mod = importlib.import_module("hf_masked_softmax._launch")


def _qkv(B, H, Hkv, Q, K, D, dtype, device, grad=False, seed=0, bthd=False):
    g = torch.Generator(device="cpu").manual_seed(seed)
    if bthd:  # HF layout: [B, T, H, D] storage seen as [B, H, T, D] views
        q = torch.randn(B, Q, H, D, generator=g).to(device, dtype).transpose(1, 2)
        k = torch.randn(B, K, Hkv, D, generator=g).to(device, dtype).transpose(1, 2)
        v = torch.randn(B, K, Hkv, D, generator=g).to(device, dtype).transpose(1, 2)
    else:
        q = torch.randn(B, H, Q, D, generator=g).to(device, dtype)
        k = torch.randn(B, Hkv, K, D, generator=g).to(device, dtype)
        v = torch.randn(B, Hkv, K, D, generator=g).to(device, dtype)
    if grad:
        for t in (q, k, v):
            t.requires_grad_(True)
    return q, k, v


def _ref(q, k, v, mask, causal, scale=None, do=None, window=None, softcap=None, sinks=None):
    """The fp64 reference's output and, given ``do``, its gradients (q, k, v, and the sinks' where given)."""
    qd, kd, vd = (t.detach().double().requires_grad_(do is not None) for t in (q, k, v))
    sd = None if sinks is None else sinks.detach().double().requires_grad_(do is not None)
    out = attention_reference(qd, kd, vd, mask, causal=causal, scale=scale, compute_dtype=torch.float64,
                              window=window, softcap=softcap, sinks=sd)
    if do is None:
        return out, None
    return out, torch.autograd.grad(out, (qd, kd, vd) + (() if sd is None else (sd,)), do.double())


def _assert_feature_matters(q, k, v, mask, causal, feature: dict, **kw):
    """The fp64 reference with the keyword arguments ``feature`` (a soft-cap, sinks) and without them differ by far
    more than any tolerance: a test of that feature could fail."""
    qd, kd, vd = (t.detach().double() for t in (q, k, v))
    feature = {n: x.detach().double() if isinstance(x, torch.Tensor) else x for n, x in feature.items()}
    on = attention_reference(qd, kd, vd, mask, causal=causal, compute_dtype=torch.float64, **feature, **kw)
    off = attention_reference(qd, kd, vd, mask, causal=causal, compute_dtype=torch.float64, **kw)
    assert (on - off).abs().max() > 0.05


def _assert_matches_reference(out, q, k, v, mask, causal, **kw):
    """``out`` and its gradients (q, k, v, and ``sinks`` where given) for a fixed random output gradient against the
    fp64 reference's, fp32 widenings."""
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.device, out.dtype)
    inputs = (q, k, v) + ((kw["sinks"],) if kw.get("sinks") is not None else ())
    grads = torch.autograd.grad(out, inputs, do)
    ref, ref_grads = _ref(q, k, v, mask, causal, do=do, **kw)
    assert_close(out, ref, scale=OUT_SCALE[q.dtype])
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, q.dtype, scale=GRAD_SCALE[q.dtype])


def _pad_mask(lengths, K, side, device, dtype=torch.bool):
    m = torch.zeros(len(lengths), K, dtype=torch.bool)
    for b, n in enumerate(lengths):
        if side == "right":
            m[b, :n] = True
        else:
            m[b, K - n:] = True
    return m.to(device=device, dtype=dtype)


# Output and gradient tolerance widenings (multiples of the table's row): an attention output sums K rounded
# products, a gradient two chained matmuls of them; fp16/bf16 also round P to the input dtype before P.V.
OUT_SCALE = {torch.float32: 4.0, torch.float16: 4.0, torch.bfloat16: 4.0}
GRAD_SCALE = {torch.float32: 8.0, torch.float16: 10.0, torch.bfloat16: 10.0}


def _force_reference(stack):
    """Make the public attention() take the plain-PyTorch fallback (CPU without the interpreter), in this process
    where the kernels run: no kernels, and no call signature validated for them before (those go straight there)."""
    ops_mod = importlib.import_module("hf_masked_softmax.ops")
    stack.enter_context(mock.patch.object(ops_mod, "kernels_take", lambda t: False))
    stack.enter_context(mock.patch.object(ops_mod, "_VALIDATED", {}))


def _check(q, k, v, mask, causal, *, scale=None, grad=False, decode=None, num_splits=None, window=None,
           softcap=None, sinks=None):
    """Public attention() vs the fp64 reference; ``decode`` / ``num_splits`` force the kernel's dispatch. With
    ``grad``, the gradients of q, k, v (and of ``sinks``, given one that requires grad)."""
    with contextlib.ExitStack() as stack:
        if decode is not None:
            stack.enter_context(mock.patch.object(attn_mod, "_is_decode", lambda Q: decode))
        if num_splits is not None:
            stack.enter_context(mock.patch.object(attn_mod, "_num_splits", lambda *a: num_splits))
        kw = {} if sinks is None else dict(sinks=sinks)
        out = attention_fn(q, k, v, mask, causal=causal, scale=scale, window=window, softcap=softcap, **kw)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all()
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.device, out.dtype) if grad \
        else None
    ref, ref_grads = _ref(q, k, v, mask, causal, scale, do, window, softcap, sinks)
    assert_close(out, ref, scale=OUT_SCALE[q.dtype])
    if grad:
        inputs = (q, k, v) + ((sinks,) if sinks is not None else ())
        grads = torch.autograd.grad(out, inputs, do)
        for name, g, r in zip(("q", "k", "v", "sinks"), grads, ref_grads):
            assert g.shape == r.shape, name
            assert torch.isfinite(g).all(), name
            assert_close(g, r, q.dtype, scale=GRAD_SCALE[q.dtype])
    return out


# ---------------------------------------------------------------------------------------------------------------
# Mask forms x causal, fp32 (forward and backward)
# ---------------------------------------------------------------------------------------------------------------

def _mask_case(name, B, H, Q, K, device):
    g = torch.Generator().manual_seed(3)
    if name == "none":
        return None
    if name == "pad-right":
        return _pad_mask([K, K - 13, 5][:B], K, "right", device)
    if name == "pad-left":
        return _pad_mask([K - 17, K, 9][:B], K, "left", device)
    if name == "pad-int64":
        return _pad_mask([K - 3, 20, 7][:B], K, "left", device, torch.int64)
    if name == "pad-holes":
        m = _pad_mask([K, K - 5, 30][:B], K, "right", device)
        m[0, 3] = False
        m[0, 17:21] = False
        m[1, 0] = False
        return m
    if name == "bool4d":
        return (torch.rand(B, 1, Q, K, generator=g) > 0.3).to(device)
    if name == "bool4d-full":
        return (torch.rand(B, H, Q, K, generator=g) > 0.5).to(device)
    if name == "add4d":  # HF eager style: 0 / finfo.min, broadcast over heads and queries
        keep = torch.rand(B, 1, 1, K, generator=g) > 0.25
        return torch.zeros(B, 1, 1, K).masked_fill(~keep, torch.finfo(torch.float32).min).to(device)
    if name == "add4d-bias":  # finite bias plus -inf entries, broadcast over batch
        m = torch.randn(1, H, Q, K, generator=g)
        m[..., ::7] = float("-inf")
        return m.to(device)
    raise AssertionError(name)


MASKS = ["none", "pad-right", "pad-left", "pad-int64", "pad-holes", "bool4d", "bool4d-full", "add4d", "add4d-bias"]


@pytest.mark.parametrize("mask_name", MASKS)
@pytest.mark.parametrize("causal", [False, True])
def test_masks_forward_fp32(mask_name, causal, device):
    B, H, Q, K, D = 3, 2, 21, 45, 16
    q, k, v = _qkv(B, H, H, Q, K, D, torch.float32, device)
    _check(q, k, v, _mask_case(mask_name, B, H, Q, K, device), causal)


@pytest.mark.parametrize("mask_name", ["none", "pad-left", "pad-holes", "bool4d", "add4d-bias"])
def test_masks_backward_fp32_gqa(mask_name, device):
    B, H, Hkv, Q, K, D = 2, 4, 2, 19, 37, 16
    q, k, v = _qkv(B, H, Hkv, Q, K, D, torch.float32, device, grad=True)
    _check(q, k, v, _mask_case(mask_name, B, H, Q, K, device), True, grad=True)


def test_causal_square_with_left_padding_backward(device):
    # GPT-2 batched generation prefill: left padding + causal, Q == K, so leading rows see nothing at all
    B, H, T, D = 2, 2, 40, 16
    q, k, v = _qkv(B, H, H, T, T, D, torch.float32, device, grad=True, bthd=True)
    mask = _pad_mask([T - 21, T], T, "left", device)
    out = _check(q, k, v, mask, True, grad=True)
    assert torch.equal(out[0, :, :21], torch.zeros_like(out[0, :, :21]))


def test_q_longer_than_k_causal_rows_empty(device):
    # bottom-right causal with Q > K: the first Q - K rows see no key
    q, k, v = _qkv(1, 2, 1, 30, 12, 16, torch.float32, device, grad=True)
    out = _check(q, k, v, None, True, grad=True)
    assert torch.equal(out[:, :, :18], torch.zeros_like(out[:, :, :18]))


def test_fully_masked_rows_are_zero_not_nan(device):
    B, H, Q, K, D = 3, 2, 17, 23, 16
    q, k, v = _qkv(B, H, H, Q, K, D, torch.float32, device, grad=True)
    pad = _pad_mask([K, 0, 4], K, "right", device)  # sequence 1 has no key at all
    out = _check(q, k, v, pad, False, grad=True)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    bool4d = torch.ones(B, H, Q, K, dtype=torch.bool, device=device)
    bool4d[:, :, 5] = False
    out = _check(q, k, v, bool4d, True, grad=True)
    assert torch.equal(out[:, :, 5], torch.zeros_like(out[:, :, 5]))
    add4d = torch.zeros(B, 1, Q, K, device=device)
    add4d[:, :, 2] = float("-inf")
    add4d[:, :, 3] = torch.finfo(torch.float32).min
    out = _check(q, k, v, add4d, False, grad=True)
    assert torch.equal(out[:, :, 2:4], torch.zeros_like(out[:, :, 2:4]))


@pytest.mark.parametrize("head_d", [16, 80])
def test_float64_additive_mask_reaches_the_kernels_as_float32_broadcast(head_d, device):
    """A float64 additive mask: the kernels get an fp32 copy of its own elements (still broadcast over heads), and
    the result and gradients are the reference's (at D = 80 float64 tiles overflowed an H200's shared memory)."""
    from hf_masked_softmax import masks, ops

    B, H, Q, K = 2, 3, 19, 37
    q, k, v = _qkv(B, H, H, Q, K, head_d, torch.float16, device, grad=True)
    g = torch.Generator().manual_seed(3)
    add = torch.randn(B, 1, Q, K, generator=g, dtype=torch.float64)
    fill = torch.rand(B, 1, Q, K, generator=g)
    add[fill < 0.2] = torch.finfo(torch.float64).min
    add[fill > 0.95] = float("-inf")
    add[0, 0, 4] = torch.finfo(torch.float64).min  # a row with nothing kept
    add = add.to(device)
    kind, mask_t, _ = ops._kernel_mask_args(masks.prepare_mask(add, (B, H, Q, K), add.device))
    assert mask_t.dtype == torch.float32 and mask_t.shape == (B, H, Q, K) and mask_t.stride(1) == 0
    assert torch.equal(mask_t, add.float().expand(B, H, Q, K))
    out = _check(q, k, v, add, False, grad=True)
    assert torch.equal(out[0, :, 4], torch.zeros_like(out[0, :, 4]))


# ---------------------------------------------------------------------------------------------------------------
# Dtypes, head dims, scale, layouts
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dtypes_forward_backward(dtype, device):
    B, H, Hkv, Q, K, D = 2, 2, 1, 23, 41, 32
    q, k, v = _qkv(B, H, Hkv, Q, K, D, dtype, device, grad=True, bthd=True)
    _check(q, k, v, _pad_mask([K - 9, K], K, "left", device), True, grad=True)


@pytest.mark.parametrize("D", [24, 64, 80, 96, 128])
def test_head_dims(D, device):
    q, k, v = _qkv(1, 2, 2, 9, 20, D, torch.float16, device)
    _check(q, k, v, _pad_mask([15], 20, "right", device), True)


def test_head_dim_256_backward(device):
    q, k, v = _qkv(1, 1, 1, 5, 18, 256, torch.float32, device, grad=True)
    _check(q, k, v, None, False, grad=True)


def test_custom_scale(device):
    q, k, v = _qkv(1, 2, 2, 7, 19, 16, torch.float32, device, grad=True)
    _check(q, k, v, None, True, scale=0.37, grad=True)


@pytest.mark.parametrize("scale", [-0.3, 0.0])
def test_scale_that_cannot_be_folded_into_the_exponent(scale, device):
    # The kernels fold a positive finite scale into exp2's FMA; zero and negative scales take the unfolded path
    # (a zero scale times a masked -inf score would give NaN there). Padding on both sides plus causality.
    assert not attn_mod._fold(attn_mod._K_RANGE, scale) and attn_mod._fold(attn_mod._K_RANGE, 0.37)
    # above 1 (a scale of 1e30 turned rows NaN on an H200 when folded) the scale keeps its own multiply
    assert attn_mod._fold(attn_mod._K_RANGE, 1.0) and not attn_mod._fold(attn_mod._K_RANGE, 1.5)
    assert not attn_mod._fold(attn_mod._K_RANGE, 1e30) and not attn_mod._fold(attn_mod._K_ADD, 0.37)
    q, k, v = _qkv(2, 2, 1, 21, 37, 16, torch.float32, device, grad=True)
    mask = _pad_mask([30, 37], 37, "left", device)
    mask[0, 30:] = False  # left-padded row with its tail cut off too: a contiguous range inside [0, K)
    mask[0, 7:30] = True
    out = _check(q, k, v, mask, True, scale=scale, grad=True)
    if scale == 0.0:  # uniform weights over each row's kept keys
        ref = attention_reference(q.detach(), k.detach(), v.detach(), mask, causal=True, scale=1e-30)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("merge", [False, True])
@pytest.mark.parametrize("mask_name", ["none", "pad-right", "pad-left", "pad-holes", "add4d"])
def test_forward_tail_blocks_merged_or_separate(merge, mask_name, device):
    # FWD_MERGE_TAIL=True walks the interior and trailing key blocks in one loop that masks from the first trailing
    # block on; False walks them in two loops. Both must match the reference, causal and not, with Q != K.
    B, H, Q, K = 3, 2, 37, 50
    q, k, v = _qkv(B, H, H, Q, K, 16, torch.float16, device)
    mask = _mask_case(mask_name, B, H, Q, K, device)
    with mock.patch.object(attn_mod, "FWD_MERGE_TAIL", merge):
        for causal in (False, True):
            _check(q, k, v, mask, causal)


def test_forward_register_cap_rule():
    # GPU launch option only: at D <= 64 in half precision, causal prefill with 64-row, 4-warp blocks gets 168
    # registers per thread and non-causal 128-row, 8-warp blocks 128; everything else the compiler's choice;
    # FWD_MAXNREG overrides (0 = no cap).
    fp16 = torch.float16
    with mock.patch.object(attn_mod, "_INTERPRET", False):
        assert attn_mod._fwd_maxnreg(64, fp16, False, True, 64, 4) == {"maxnreg": 168}
        assert attn_mod._fwd_maxnreg(64, torch.bfloat16, False, True, 64, 4) == {"maxnreg": 168}
        assert attn_mod._fwd_maxnreg(64, fp16, False, False, 128, 8) == {"maxnreg": 128}  # BERT's default blocks
        assert attn_mod._fwd_config(64, 512, fp16, False, False) == (128, 64, 8, 3)
        assert attn_mod._fwd_config(64, 1024, fp16, False, True) == (64, 64, 4, 3)
        assert attn_mod._fwd_maxnreg(64, fp16, False, False, 128, 4) == {}
        assert attn_mod._fwd_maxnreg(64, fp16, False, True, 128, 8) == {}
        assert attn_mod._fwd_maxnreg(64, fp16, True, True, 16, 4) == {}  # decode
        assert attn_mod._fwd_maxnreg(128, fp16, False, True, 64, 4) == {}
        assert attn_mod._fwd_maxnreg(64, torch.float32, False, True, 64, 4) == {}
        with mock.patch.object(attn_mod, "FWD_MAXNREG", 0):
            assert attn_mod._fwd_maxnreg(64, fp16, False, True, 64, 4) == {}
        with mock.patch.object(attn_mod, "FWD_MAXNREG", 200):
            assert attn_mod._fwd_maxnreg(64, fp16, False, False, 128, 4) == {"maxnreg": 200}
    assert attn_mod._fwd_maxnreg(64, fp16, False, True, 64, 4) == ({} if attn_mod._INTERPRET else {"maxnreg": 168})


def test_dropout_launch_settings_and_no_register_cap():
    # GPU launch settings with dropout at D <= 64 in half precision: narrower forward key blocks, 64 resident keys
    # in dkdv (128 spill registers), and no forward register cap (a plan with dropout leaves _fwd_maxnreg out)
    fp16 = torch.float16
    with mock.patch.object(attn_mod, "_INTERPRET", False):
        for causal in (False, True):
            assert attn_mod._fwd_config(64, 512, fp16, False, causal, True) == (64, 32, 4, 3)
            assert attn_mod._bwd_config(64, fp16, causal, True) == ((32, 64, 4, 3), (64, 32, 4, 3))
        assert attn_mod._bwd_config(64, fp16, False) == ((32, 128, 4, 3), (64, 32, 4, 3))
        # D 128 (and the head dims padded to it): one warpgroup, 64 rows, 32-key blocks, causal or not, dropout or
        # not; both backward kernels on one warpgroup with three stages, dropout or not
        for causal in (False, True):
            for drop in (False, True):
                assert attn_mod._fwd_config(128, 512, fp16, False, causal, drop) == (64, 32, 4, 3)
        assert attn_mod._fwd_config(96, 512, torch.bfloat16, False, True) == (64, 32, 4, 3)
        for causal in (False, True):
            for drop in (False, True):
                assert attn_mod._bwd_config(128, torch.bfloat16, causal, drop) == ((32, 64, 4, 3), (64, 32, 4, 3))
        assert attn_mod._bwd_config(256, fp16, False) == ((16, 32, 4, 2), (32, 16, 4, 2))  # the card not known


def test_head_dim_256_launch_settings_by_the_cards_shared_memory():
    # head dim 256 (and fp32 decoding above 64) take the widest setting that fits the card's shared memory per
    # program (attention._smem_optin: H100 232448 B, A100 166912, Ada 101376), the old setting when it is not known
    # (0), and the smallest table entry on a card that fits none; dropout keeps the old settings where they fit
    fp16, fp32 = torch.float16, torch.float32
    h100, a100, ada, small = 232448, 166912, 101376, 40000
    with mock.patch.object(attn_mod, "_INTERPRET", False):
        fwd = {smem: attn_mod._fwd_config(256, 512, fp16, False, True, False, smem) for smem in (h100, a100, ada, 0)}
        assert fwd == {h100: (128, 32, 8, 3), a100: (64, 32, 4, 2), ada: (64, 32, 4, 1), 0: (64, 32, 4, 2)}
        assert attn_mod._fwd_config(256, 512, fp16, False, False, False, small) == (64, 32, 4, 1)
        assert attn_mod._fwd_config(256, 512, fp16, False, False, True, h100) == (64, 32, 4, 2)  # dropout
        assert attn_mod._fwd_config(256, 512, fp16, False, False, True, ada) == (64, 32, 4, 1)
        assert attn_mod._fwd_config(256, 1, fp16, True, True, False, ada) == (16, 32, 4, 3)  # fp16 decode fits all
        assert attn_mod._fwd_config(128, 512, fp16, False, False, False, ada) == (64, 32, 4, 3)  # D 128: no table
        bwd = {smem: attn_mod._bwd_config(256, torch.bfloat16, True, False, smem) for smem in (h100, a100, ada, 0)}
        assert bwd == {h100: ((64, 64, 8, 2), (64, 16, 4, 3)), a100: ((32, 64, 8, 2), (64, 16, 4, 3)),
                       ada: ((16, 32, 4, 2), (32, 16, 4, 2)), 0: ((16, 32, 4, 2), (32, 16, 4, 2))}
        assert attn_mod._bwd_config(256, fp16, False, True, h100) == ((16, 32, 4, 2), (32, 16, 4, 2))  # dropout
        assert attn_mod._bwd_config(256, fp32, False, False, h100) == ((16, 32, 4, 2), (32, 16, 4, 2))
        assert attn_mod._bwd_config(256, fp32, True, True, ada) == ((16, 16, 4, 2), (16, 16, 4, 2))
        assert attn_mod._bwd_config(256, fp32, False, False, 0) == ((16, 32, 4, 2), (32, 16, 4, 2))
        assert attn_mod._bwd_config(128, fp32, False, False, ada) == ((16, 32, 4, 2), (32, 16, 4, 2))
        for smem, setting in ((h100, (32, 32, 4, 2)), (ada, (32, 32, 4, 1)), (0, (32, 32, 4, 2))):
            assert attn_mod._fwd_config(256, 512, fp32, False, False, False, smem) == setting
        for d, wide, narrow in ((128, (16, 64, 4, 3), (16, 64, 4, 2)), (256, (16, 32, 4, 3), (16, 32, 4, 2))):
            assert attn_mod._fwd_config(d, 1, fp32, True, True, False, a100) == wide
            assert attn_mod._fwd_config(d, 1, fp32, True, True, False, ada) == narrow
            assert attn_mod._fwd_config(d, 1, fp32, True, True, False, 0) == wide
        assert attn_mod._fwd_config(64, 1, fp32, True, True, False, ada) == (16, 64, 4, 3)
    assert attn_mod._smem_optin(torch.device("cpu")) == 0
    seen = []
    real = attn_mod._fwd_maxnreg
    with mock.patch.object(attn_mod, "_fwd_maxnreg", lambda *a: seen.append(a) or real(*a)):
        q, k, v = _qkv(1, 2, 2, 20, 20, 16, torch.float32, DEVICE)
        attn_mod._forward(q, k, v, attn_mod._K_NONE, None, None, 0.0, False, 0.25, False, None, 100,
                          torch.tensor([1], device=DEVICE))
        assert seen == []
        attn_mod._forward(q, k, v, attn_mod._K_NONE, None, None, 0.0, False, 0.25, False)
        assert len(seen) == 1


@pytest.mark.parametrize("path", ["kernels", "reference"])
def test_output_layout_is_bqhd(device, path):
    q, k, v = _qkv(2, 3, 3, 5, 9, 16, torch.float16, device)
    with contextlib.ExitStack() as stack:
        if path == "reference":  # the plain-PyTorch fallback keeps the documented layout too
            _force_reference(stack)
        out = hf_masked_softmax.attention(q, k, v)
        assert out.transpose(1, 2).is_contiguous()
        out.transpose(1, 2).view(2, 5, 48)  # what HF's attention code does with it
        bqhd = attn_mod.attention_bqhd(q, k, v)
    assert bqhd.shape == (2, 5, 3, 16) and bqhd.is_contiguous()
    torch.testing.assert_close(bqhd, out.transpose(1, 2), atol=0, rtol=0)


def test_broadcast_kv_strides(device):
    # stride-0 key/value heads (an expanded MQA cache) and a sliced query
    q, _, _ = _qkv(2, 4, 4, 12, 12, 16, torch.float32, device)
    kv = torch.randn(2, 1, 30, 16, device=device)
    k = kv.expand(2, 4, 30, 16)
    v = (kv * 0.5).expand(2, 4, 30, 16)
    _check(q[:, :, 2:11], k, v, _pad_mask([28, 30], 30, "left", device), True)


@pytest.mark.parametrize("shared", [False, True], ids=["plain", "shared"])
def test_padding_range_cache_sees_in_place_edits(shared, device):
    masks = importlib.import_module("hf_masked_softmax.masks")
    q, k, v = _qkv(2, 2, 2, 6, 33, 16, torch.float32, device)
    mask = _pad_mask([33, 20], 33, "right", device)
    if shared:  # as the HF mask function marks its masks: the key ranges are cached per mask object
        masks.share_ranges(mask)
    _check(q, k, v, mask, False)
    assert (id(mask) in masks.RANGE_CACHE) is shared
    mask[1, 20:25] = True  # same tensor object, new contents: the cached key ranges must not be reused
    _check(q, k, v, mask, False)
    mask[0, 4] = False  # now with a hole
    _check(q, k, v, mask, False)


@pytest.mark.parametrize("write", ["data", "numpy"])
@pytest.mark.parametrize("fn", ["attention", "masked_softmax"])
def test_mask_writes_that_skip_the_version_counter_are_seen(fn, write, device):
    # `.data` writes and writes through a NumPy array sharing the memory leave the tensor's version as it was: a
    # plain mask's key ranges are therefore never cached across calls
    if write == "numpy" and device != "cpu":
        pytest.skip("torch.from_numpy shares memory with CPU tensors only")
    arr = np.zeros((2, 33), dtype=np.bool_)
    arr[0, :33] = arr[1, :20] = True
    mask = torch.from_numpy(arr) if write == "numpy" else torch.from_numpy(arr.copy()).to(device)
    q, k, v = _qkv(2, 2, 2, 6, 33, 16, torch.float32, device)
    scores = torch.randn(2, 2, 6, 33, generator=torch.Generator().manual_seed(1)).to(device)

    def run_and_check():
        if fn == "attention":
            _check(q, k, v, mask, True)
        else:
            assert_close(hf_masked_softmax.masked_softmax(scores, mask, causal=True),
                         masked_softmax_reference(scores, mask, causal=True, compute_dtype=torch.float64,
                                                  out_dtype=torch.float64))

    run_and_check()
    version = mask._version
    if write == "numpy":
        arr[1, 5:] = False
    else:
        mask.data[1, 5:] = False
    assert mask._version == version
    run_and_check()


@pytest.mark.parametrize("causal", [False, True])
def test_grid_axis_limit_swaps_the_grid_order(causal, device, monkeypatch):
    # CUDA allows 65535 programs on grid axes 1 and 2: a long sequence's blocks (causal) or a large batch's heads
    # (otherwise) go on axis 0 instead. Forced here with a limit of 2, forward and all backward kernels.
    assert attn_mod._bh_first(causal, 4, 3) is causal
    assert attn_mod._bh_first(True, 4, 70000) is False
    assert attn_mod._bh_first(False, 70000, 4) is True
    with pytest.raises(ValueError, match="65535"):
        attn_mod._bh_first(causal, 70000, 70000)
    monkeypatch.setattr(attn_mod, "GRID_YZ_MAX", 2)
    orders = []
    real = attn_mod._bh_first
    monkeypatch.setattr(attn_mod, "_bh_first", lambda c, bh, n: orders.append((c, real(c, bh, n))) or orders[-1][1])
    if causal:  # 2 heads x at least 3 blocks (16-row blocks under the interpreter): the blocks go first
        B, H, Hkv, T = 1, 2, 1, (40 if device == "cpu" else 300)
        lengths = [T - 11]
    else:  # 4 heads x at most 2 blocks: the heads go first (the backward's delta kernel too)
        B, H, Hkv, T, lengths = 2, 2, 2, 20, [20, 11]
    q, k, v = _qkv(B, H, Hkv, T, T, 16, torch.float32, device, grad=True)
    mask = _pad_mask(lengths, T, "left", device)
    _check(q, k, v, mask, causal, grad=True)
    assert len(orders) == 4  # forward, delta, dk/dv, dq; every one but causal's delta (never causal) swapped
    assert all(first is not c for c, first in orders if c == causal)


# ---------------------------------------------------------------------------------------------------------------
# Decode (split-K) path
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("Q", [1, 5])
@pytest.mark.parametrize("splits", [1, 3])
def test_decode_split_k(Q, splits, device):
    B, H, Hkv, K, D = 3, 4, 2, 70, 16
    q, k, v = _qkv(B, H, Hkv, Q, K, D, torch.float16, device, grad=True)
    mask = _pad_mask([K, 33, 0], K, "left", device)
    out = _check(q, k, v, mask, True, grad=True, decode=True, num_splits=splits)
    assert torch.equal(out[2], torch.zeros_like(out[2]))


@pytest.mark.parametrize("Q,group,splits", [(1, 4, 1), (1, 2, 3), (3, 3, 2), (5, 2, 1), (16, 2, 1)])
@pytest.mark.parametrize("mask_side", [None, "left", "right"])
def test_gqa_decode_packs_a_group_into_one_tile(Q, group, splits, mask_side, device, monkeypatch):
    # grouped-query decoding: one program per key/value head holds its query heads' rows, so the grid has B * Hkv
    # head programs; the result is the reference's, forward and backward (training takes the same forward)
    B, Hkv, K, D = 2, 2, 70, 16
    H = Hkv * group
    monkeypatch.setattr(attn_mod, "GQA_PACK", True)  # the default; the environment may turn it off
    monkeypatch.setattr(attn_mod, "_PLANS", {})
    q, k, v = _qkv(B, H, Hkv, Q, K, D, torch.float32, device, grad=True, seed=Q + group)
    mask = None if mask_side is None else _pad_mask([K, 29], K, mask_side, device)
    out = _check(q, k, v, mask, True, grad=True, decode=True, num_splits=splits)
    plans = list(attn_mod._PLANS.values())
    assert plans and all(p.launch.kwargs["PACK"] for p in plans)
    for p in plans:
        assert B * Hkv in p.launch.grid[:2] and p.launch.grid[2] == splits
    # the same rows as with one program per query head (the setting is part of the plans' key)
    monkeypatch.setattr(attn_mod, "GQA_PACK", False)
    with mock.patch.object(attn_mod, "_is_decode", lambda Q: True), \
            mock.patch.object(attn_mod, "_num_splits", lambda *a: splits):
        unpacked = attention_fn(q, k, v, mask, causal=True)
    assert not list(attn_mod._PLANS.values())[-1].launch.kwargs["PACK"]
    assert_close(out.detach(), unpacked.detach().double(), scale=OUT_SCALE[torch.float32])


@pytest.mark.parametrize("mask_form", ["bool", "additive", "bool-one-row", "additive-one-sequence"])
@pytest.mark.parametrize("splits", [1, 3])
def test_gqa_decode_packs_with_a_4d_mask_shared_by_the_heads(mask_form, splits, device, monkeypatch):
    # a 4D mask that broadcasts over the heads (HF's: [B, 1, Q, K], head stride 0) is the same for every row of a
    # packed tile's heads, so such calls pack too; rows with nothing kept stay zero
    B, H, Hkv, Q, K, D = 3, 6, 2, 2, 70, 16
    monkeypatch.setattr(attn_mod, "GQA_PACK", True)
    monkeypatch.setattr(attn_mod, "_PLANS", {})
    q, k, v = _qkv(B, H, Hkv, Q, K, D, torch.float32, device, grad=True, seed=5)
    g = torch.Generator().manual_seed(splits)
    shape = {"bool-one-row": (B, 1, 1, K), "additive-one-sequence": (1, 1, Q, K)}.get(mask_form, (B, 1, Q, K))
    keep = torch.rand(*shape, generator=g) > 0.4
    if mask_form != "additive-one-sequence":
        keep[-1] = False  # the last sequence keeps nothing
    mask = keep if mask_form.startswith("bool") else torch.where(keep, torch.randn(*shape, generator=g), -torch.inf)
    mask = mask.to(device)
    out = _check(q, k, v, mask, False, grad=True, decode=True, num_splits=splits)
    plans = list(attn_mod._PLANS.values())
    assert plans and all(p.launch.kwargs["PACK"] for p in plans)
    assert all(B * Hkv in p.launch.grid[:2] for p in plans)
    if mask_form != "additive-one-sequence":
        assert not out[-1].any()


@pytest.mark.parametrize("case", ["no-gqa", "dropout", "4d-mask-per-head", "long-q"])
def test_gqa_packing_only_where_it_applies(case, device, monkeypatch):
    # no GQA, dropout (drawn per head), a 4D mask that differs between heads and prefill keep one program per query
    # head
    monkeypatch.setattr(attn_mod, "GQA_PACK", True)
    monkeypatch.setattr(attn_mod, "_PLANS", {})
    Hkv = 4 if case == "no-gqa" else 2
    Q = 40 if case == "long-q" else 2
    q, k, v = _qkv(2, 4, Hkv, Q, 50, 16, torch.float32, device)
    mask = (torch.rand(2, 4, Q, 50, generator=torch.Generator().manual_seed(0)) > 0.3).to(device) \
        if case == "4d-mask-per-head" else None
    attention_fn(q, k, v, mask, causal=case != "4d-mask-per-head", dropout_p=0.2 if case == "dropout" else 0.0)
    (plan,) = attn_mod._PLANS.values()
    assert not plan.launch.kwargs["PACK"]


def test_decode_split_k_with_4d_mask(device):
    q, k, v = _qkv(2, 2, 2, 2, 50, 16, torch.float32, device)
    mask = (torch.rand(2, 1, 2, 50, generator=torch.Generator().manual_seed(1)) > 0.5).to(device)
    _check(q, k, v, mask, False, decode=True, num_splits=4)


@pytest.mark.parametrize("path", ["prefill", "decode-split"])
@pytest.mark.parametrize("big", [-1e30, -1.5e38])
def test_large_kept_additive_values_keep_the_gradients_and_the_split_merge_exact(path, big, device):
    # Additive values above half of finfo.min are added, not masked, however large. A row whose kept keys all carry
    # -1e30 has its max near -1.44e30 in base 2; the saved statistics keep that max apart from log2(l), or the
    # backward (and the split merge) would lose log2(l) to rounding and give each kept key a probability of 1
    # (gradients K times too large).
    B, H, Q, K, D = 2, 2, 3, 40, 16
    q, k, v = _qkv(B, H, H, Q, K, D, torch.float32, device, grad=True)
    mask = torch.zeros(B, 1, Q, K)
    mask[0] = big  # sequence 0: every key kept at `big`, so every row is uniform
    mask[1, :, 1] = big  # sequence 1: one uniform row, one with `big` on every other key (probability 0 there),
    mask[1, :, 0, ::2] = big
    mask[1, :, 2, 5:] = float("-inf")  # one with keys masked
    decode = path == "decode-split"
    out = _check(q, k, v, mask.to(device), False, grad=True, decode=decode, num_splits=3 if decode else None)
    torch.testing.assert_close(out[0].double(), v[0].double().mean(dim=1, keepdim=True).expand(H, Q, D),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mask_form", ["none", "pad2d", "additive"])
@pytest.mark.parametrize("logit", [1e2, 1e5, 1e7, 1e9])
def test_large_logits_keep_the_gradients_within_the_documented_bound(logit, mask_form, device):
    # The backward recomputes P from the saved lse, rounded to fp32, where the forward normalised with l itself. With
    # an additive mask it subtracts lse's exact residual too, so dv is exact at any logit; without one (as in
    # FlashAttention-2: the residual cost the backward 8% on an H200) P carries lse's rounding, at most
    # |lse| * 2**-24 * ln 2 relative (the module docstring), and logits of 1e9 are outside what it keeps.
    K, D, T = 8, 16, 3
    q = torch.full((1, 1, 2, D), logit / D)  # two rows; T keys score `logit` (exact in fp32), the others 0
    k = torch.cat([torch.ones(1, 1, T, D), torch.zeros(1, 1, K - T, D)], dim=2)
    v = torch.randn(1, 1, K, D, generator=torch.Generator().manual_seed(0))
    q, k, v = (t.to(device).requires_grad_(True) for t in (q, k, v))
    mask = {"none": None, "pad2d": torch.ones(1, K, dtype=torch.bool),
            "additive": torch.zeros(1, 1, 1, K)}[mask_form]
    mask = mask if mask is None else mask.to(device)
    lse = logit * 1.4426950408889634 + math.log2(T)
    bound = 0.0 if mask_form == "additive" else lse * 2.0**-24 * math.log(2)
    expected = torch.zeros(K, D)
    expected[:T] = 2 / T  # each of the two rows gives each tied key P = 1/T
    for decode in (False, True):
        with mock.patch.object(attn_mod, "_is_decode", lambda Q: decode):
            out = attention_fn(q, k, v, mask, scale=1.0)
        torch.testing.assert_close(out[0, 0].detach().cpu(), v[0, 0, :T].detach().cpu().mean(dim=0).expand(2, D),
                                   rtol=1e-6, atol=1e-6)
        dv = torch.autograd.grad(out, v, torch.ones_like(out))[0][0, 0].cpu()
        if bound < 1:
            torch.testing.assert_close(dv, expected, rtol=bound * 1.01 + 1e-6, atol=1e-30)  # e**-100 off the ties
        else:  # 1e9 without an additive mask: lse has lost log2(T); only a factor is left
            assert torch.equal(dv[T:], expected[T:]) and torch.isfinite(dv).all()


@pytest.mark.parametrize("path", ["kernels", "reference"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_gradient_at_a_row_with_nothing_kept_stays_out_of_the_others(bad, path, device):
    # Causal with left padding: rows 0 and 1 of sequence 1 see no key, and their output is zero whatever dO holds.
    # A NaN or inf there once reached dk of every key of the head (delta = NaN * 0, then dS = 0 * NaN).
    B, H, Q, K, D = 2, 2, 6, 6, 16
    q, k, v = _qkv(B, H, H, Q, K, D, torch.float32, device, grad=True)
    mask = _pad_mask([K, K - 2], K, "left", device)
    do = torch.randn(B, H, Q, D, generator=torch.Generator().manual_seed(5)).to(device)
    bad_do = do.clone()
    bad_do[1, :, :2] = bad
    clean_do = do.clone()
    clean_do[1, :, :2] = 0.0
    with contextlib.ExitStack() as stack:
        if path == "reference":  # the plain-PyTorch fallback (CPU without the interpreter)
            _force_reference(stack)
        for decode in (False, True):
            stack.enter_context(mock.patch.object(attn_mod, "_is_decode", lambda Q: decode))
            out = attention_fn(q, k, v, mask, causal=True)
            assert torch.equal(out[1, :, :2], torch.zeros_like(out[1, :, :2]))
            clean = torch.autograd.grad(out, (q, k, v), clean_do, retain_graph=True)
            dirty = torch.autograd.grad(out, (q, k, v), bad_do)
            for name, c, d in zip("qkv", clean, dirty):
                assert torch.isfinite(c).all(), name
                assert torch.equal(c, d), name


def test_prefill_path_for_short_q(device):
    q, k, v = _qkv(2, 2, 2, 3, 40, 16, torch.float32, device)
    _check(q, k, v, _pad_mask([40, 11], 40, "right", device), True, decode=False)


# ---------------------------------------------------------------------------------------------------------------
# Launch plans and validated signatures (host work done once per call signature)
# ---------------------------------------------------------------------------------------------------------------

def test_launch_plans_are_reused_per_signature_and_rebuilt_when_a_setting_changes(device, monkeypatch):
    built = []

    class CountingPlan(attn_mod._ForwardPlan):
        def __init__(self, *args):
            built.append(args[3])
            super().__init__(*args)

    monkeypatch.setattr(attn_mod, "_ForwardPlan", CountingPlan)
    monkeypatch.setattr(attn_mod, "_PLANS", {})
    q, k, v = _qkv(2, 4, 2, 3, 40, 16, torch.float32, device)
    mask = _pad_mask([40, 11], 40, "left", device)
    first = attention_fn(q, k, v, mask, causal=True)
    assert torch.equal(attention_fn(q, k, v, mask.clone(), causal=True), first) and len(built) == 1
    attention_fn(q, k, v, mask.to(torch.int64), causal=True)  # another mask dtype: another plan
    attention_fn(q.transpose(1, 2).contiguous().transpose(1, 2), k, v, mask, causal=True)  # other strides
    assert len(built) == 3
    # a setting plans derive from (here: decode path, three splits) gets its own plan, and it takes effect
    monkeypatch.setattr(attn_mod, "_is_decode", lambda Q: True)
    monkeypatch.setattr(attn_mod, "_num_splits", lambda *a: 3)
    split = attention_fn(q, k, v, mask, causal=True)
    assert len(built) == 4 and list(attn_mod._PLANS.values())[-1].splits == 3
    assert_close(split, first)


@pytest.mark.parametrize("setting", ["ENABLED", "CURSOR_REGS", "CAUSAL_OK", "SPLIT_LOOP", "BLOCK_M", "BLOCK_N",
                                     "WARPS", "PER_SM", "FINE_BLOCK_M", "FINE_PER_SM", "STAGES", "MIN_TILES_PER_SM",
                                     "SMALL_CALLS", "RUNTIME_COUNTS", "RUNTIME_ALL", "WIDE_HEADS", "WIDE_BLOCK_M",
                                     "WIDE_BLOCK_N", "WIDE_PER_SM"])
def test_every_setting_the_hopper_plan_reads_is_in_the_plan_key(setting, monkeypatch):
    # a plan built under one value must not serve a call made under another (bench_hopper.py --ab flips them)
    before = attn_mod._policy()
    value = getattr(attn_mod._hopper, setting)
    monkeypatch.setattr(attn_mod._hopper, setting, (not value) if isinstance(value, bool) else value + 1)
    assert attn_mod._policy() != before


@pytest.mark.parametrize("splits", [1, 3])
def test_inference_skips_the_log_sum_exp_and_writes_the_same_output(splits, device, monkeypatch):
    monkeypatch.setattr(attn_mod, "_PLANS", {})
    monkeypatch.setattr(attn_mod, "_is_decode", lambda Q: True)
    monkeypatch.setattr(attn_mod, "_num_splits", lambda *a: splits)
    q, k, v = _qkv(2, 4, 2, 3, 70, 16, torch.float32, device, grad=True)
    mask = _pad_mask([70, 23], 70, "left", device)
    with torch.no_grad():
        inference = [attention_fn(q, k, v, mask, causal=True) for _ in range(2)]  # checked, then the shortcut
    trained = attention_fn(q, k, v, mask, causal=True)
    plans = list(attn_mod._PLANS.values())
    assert [p.need_lse for p in plans] == [False, True]  # one inference plan served both calls
    assert all(p.splits == splits for p in plans)
    for out in inference:
        assert torch.equal(out, trained)
    assert_close(trained, _ref(q, k, v, mask, True)[0], scale=OUT_SCALE[q.dtype])
    # the training call's log-sum-exp is complete: its gradients match the reference
    do = torch.randn(trained.shape, generator=torch.Generator().manual_seed(3)).to(device)
    grads = torch.autograd.grad(trained, (q, k, v), do)
    for g, r in zip(grads, _ref(q, k, v, mask, True, do=do)[1]):
        assert_close(g, r, q.dtype, scale=GRAD_SCALE[q.dtype])


def test_backward_plans_are_reused_per_signature_and_rebuilt_when_a_setting_changes(device, monkeypatch):
    built = []

    class CountingPlan(attn_mod._BackwardPlan):
        def __init__(self, *args):
            built.append(args[1].stride())
            super().__init__(*args)

    monkeypatch.setattr(attn_mod, "_BackwardPlan", CountingPlan)
    monkeypatch.setattr(attn_mod, "_BWD_PLANS", {})
    mask = _pad_mask([40, 11], 40, "left", device)
    base = _qkv(2, 4, 2, 3, 40, 16, torch.float32, device)
    hf_layout = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in base]  # [B, T, H, D] memory
    first = None
    for tensors in (base, [t.clone() for t in base], hf_layout):  # the second reuses the first's plan, not the third
        q, k, v = (t.detach().requires_grad_(True) for t in tensors)
        out = attention_fn(q, k, v, mask, causal=True)
        grads = torch.autograd.grad(out.sum(), (q, k, v))
        first = first or grads
        for g, t, f in zip(grads, (q, k, v), first):
            assert g.stride() == t.stride()
            assert torch.equal(g, f)  # the same kernels on the same data: bit-identical in either layout
    assert built == [base[0].stride(), hf_layout[0].stride()]
    # a setting the plans derive from (here: the backward's block sizes) gets its own plan, and it takes effect
    monkeypatch.setattr(attn_mod, "_bwd_config", lambda *a: ((16, 32, 4, 1), (32, 16, 4, 1)))
    q, k, v = _qkv(2, 4, 2, 3, 40, 16, torch.float32, device, grad=True)
    _check(q, k, v, mask, True, grad=True)
    assert len(built) == 3
    # nothing to attend to: zero gradients, no launch
    q, k, v = _qkv(1, 2, 2, 3, 0, 16, torch.float32, device, grad=True)
    out = attention_fn(q, k, v, torch.zeros(1, 0, dtype=torch.bool, device=device))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in torch.autograd.grad(out.sum(), (q, k, v)))


def test_the_plan_cache_is_bounded(device, monkeypatch):
    monkeypatch.setattr(attn_mod, "_PLANS", {})
    monkeypatch.setattr(attn_mod, "_MAX_PLANS", 3)
    for K in range(10, 17):
        q, k, v = _qkv(1, 2, 2, 2, K, 16, torch.float32, device)
        _check(q, k, v, None, True)
        assert 1 <= len(attn_mod._PLANS) <= 3


def test_validated_signatures_skip_the_checks_and_nothing_else(device, monkeypatch):
    ops = importlib.import_module("hf_masked_softmax.ops")
    monkeypatch.setattr(ops, "_VALIDATED", {})
    q, k, v = _qkv(2, 4, 2, 5, 30, 16, torch.float32, device)
    mask = _pad_mask([30, 9], 30, "right", device)
    out = attention_fn(q, k, v, mask, causal=True)
    assert len(ops._VALIDATED) == 1

    def refuse(*args):
        raise AssertionError("checked again")

    with mock.patch.object(attn_mod, "_validate", refuse):
        assert torch.equal(attention_fn(q, k, v, mask, causal=True), out)
    # anything the checks depend on makes another signature, which is checked
    with pytest.raises(ValueError, match="move it"):
        attention_fn(q, k, v, mask.to("meta"), causal=True)
    with pytest.raises(ValueError, match="head_dim"):
        attention_fn(q, k[..., :8], v[..., :8], mask, causal=True)
    # 4D masks and scales or flags of other types are never recorded
    attention_fn(q, k, v, mask[:, None, None, :], causal=True)
    attention_fn(q, k, v, mask, causal=1, scale=1)
    assert len(ops._VALIDATED) == 1
    # training calls share the signature: checked once, then through the autograd function unchecked, with the
    # log-sum-exp the backward needs
    qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
    with mock.patch.object(attn_mod, "_validate", refuse):
        trained = attention_fn(qg, kg, vg, mask, causal=True)
    assert torch.equal(trained, out) and trained.grad_fn is not None
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(device)
    grads = torch.autograd.grad(trained, (qg, kg, vg), do)
    for g, r in zip(grads, _ref(q, k, v, mask, True, do=do)[1]):
        assert_close(g, r, q.dtype, scale=GRAD_SCALE[q.dtype])
    assert len(ops._VALIDATED) == 1


# ---------------------------------------------------------------------------------------------------------------
# Fallbacks and errors
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("decode", [False, True])
@pytest.mark.parametrize("mask_name", ["pad-left", "bool4d"])
def test_int64_index_math(mask_name, decode, device, monkeypatch):
    # the int64 variant of the kernels (used when a tensor spans 2**31 elements) on small tensors, fwd and bwd
    monkeypatch.setattr(attn_mod, "_wide", lambda *tensors: True)
    B, H, Q, K, D = 2, 2, (3 if decode else 21), 37, 16
    q, k, v = _qkv(B, H, H, Q, K, D, torch.float32, device, grad=not decode)
    _check(q, k, v, _mask_case(mask_name, B, H, Q, K, device), True, grad=not decode, decode=decode,
           num_splits=2 if decode else None)


def test_wide_threshold():
    small = torch.empty((4, 8), device="meta")
    assert not attn_mod._wide(small, None)
    big = torch.empty((2, 2**30 + 1), device="meta")  # last offset 2**31 + 1, no memory on the meta device
    assert attn_mod._wide(small, big)


def test_cpu_without_interpreter_uses_reference(monkeypatch):
    q, k, v = _qkv(1, 2, 2, 4, 6, 16, torch.float32, "cpu")
    monkeypatch.setattr(launch_mod, "INTERPRETED", False)
    monkeypatch.setattr(attn_mod, "_forward", None)  # would raise if the kernels were launched
    out = attn_mod.attention(q, k, v, causal=True)
    torch.testing.assert_close(out, attention_reference(q, k, v, causal=True), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_fallback_rounds_half_probabilities_like_the_kernel(monkeypatch, dtype):
    # fp32 scores and accumulation, probabilities rounded to the inputs' dtype before the product with v (the GPU
    # kernel feeds p to the tensor cores in that dtype; HF eager and sdpa round them too)
    q, k, v = _qkv(2, 4, 2, 5, 70, 16, dtype, "cpu", seed=3)
    mask = torch.ones(2, 70, dtype=torch.bool)
    mask[0, :9] = False
    monkeypatch.setattr(launch_mod, "INTERPRETED", False)
    monkeypatch.setattr(attn_mod, "_forward", None)  # would raise if the kernels were launched
    out = attn_mod.attention(q, k, v, mask, causal=True)
    rounded = attention_reference(q, k, v, mask, causal=True, prob_dtype=dtype)
    assert torch.equal(out, rounded)
    assert not torch.equal(out, attention_reference(q, k, v, mask, causal=True))  # the rounding is really there
    ref = attention_reference(q.double(), k.double(), v.double(), mask, causal=True, compute_dtype=torch.float64)
    assert_close(out, ref, dtype)


def test_empty_lengths(device):
    q, k, v = _qkv(1, 2, 2, 3, 0, 16, torch.float32, device, grad=True)  # no keys: zeros, zero gradients
    out = attn_mod.attention(q, k, v, torch.zeros(1, 0, dtype=torch.bool, device=device))
    assert torch.equal(out, torch.zeros_like(out))
    (gq,) = torch.autograd.grad(out.sum(), (q,))
    assert torch.equal(gq, torch.zeros_like(gq))
    q, k, v = _qkv(1, 2, 2, 0, 5, 16, torch.float32, device)  # no queries
    assert attn_mod.attention(q, k, v, causal=True).shape == (1, 2, 0, 16)


def test_errors(device):
    q, k, v = _qkv(2, 4, 2, 5, 7, 16, torch.float32, device)
    with pytest.raises(ValueError, match="q must be 4D"):
        attention_fn(q[0], k, v)
    with pytest.raises(ValueError, match="k must be 4D"):
        attention_fn(q, k[0], v)
    with pytest.raises(ValueError, match="k and v must have the same shape"):
        attention_fn(q, k, v[:, :, :3])
    with pytest.raises(ValueError, match="batch size"):
        attention_fn(q[:1], k, v)
    with pytest.raises(ValueError, match="head_dim"):
        attention_fn(q[..., :8], k, v)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        attention_fn(q[:, :3], k, v)
    with pytest.raises(ValueError, match="at most 256"):
        big = torch.zeros(1, 1, 2, 264, device=device)
        attention_fn(big, big, big)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        attention_fn(q.double(), k.double(), v.double())
    with pytest.raises(TypeError, match="share one dtype"):
        attention_fn(q, k.half(), v)
    with pytest.raises(TypeError, match="torch.Tensor"):
        attention_fn(q.tolist(), k, v)
    with pytest.raises(TypeError, match="scale"):
        attention_fn(q, k, v, scale="0.1")
    with pytest.raises(ValueError, match=r"\[batch, k_len\]"):
        attention_fn(q, k, v, torch.ones(2, 6, dtype=torch.bool, device=device))
    with pytest.raises(ValueError, match="broadcast"):
        attention_fn(q, k, v, torch.ones(2, 4, 5, 6, dtype=torch.bool, device=device))
    with pytest.raises(TypeError, match="bool or integer"):
        attention_fn(q, k, v, torch.ones(2, 7, device=device))


@pytest.mark.gpu
def test_device_mismatch_errors():
    q, k, v = _qkv(1, 2, 2, 4, 6, 16, torch.float16, "cuda")
    with pytest.raises(ValueError, match="one device"):
        attention_fn(q, k.cpu(), v)
    with pytest.raises(ValueError, match="move it"):
        attention_fn(q, k, v, torch.ones(1, 6, dtype=torch.bool))


def test_device_mismatch_error_cpu_meta():
    q, k, v = _qkv(1, 2, 2, 4, 6, 16, torch.float32, "cpu")
    with pytest.raises(ValueError, match="one device"):
        attention_fn(q, k.to("meta"), v)


# ---------------------------------------------------------------------------------------------------------------
# GPU, real sizes
# ---------------------------------------------------------------------------------------------------------------

def _gpu_lengths(B, K, lo, seed):
    return torch.randint(lo, K + 1, (B,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("side", ["right", "left"])
def test_gpu_gpt2_shape_causal_padding(dtype, side):
    B, H, T, D = 2, 12, 1024, 64
    q, k, v = _qkv(B, H, H, T, T, D, dtype, "cuda", grad=True, bthd=True)
    _check(q, k, v, _pad_mask(_gpu_lengths(B, T, 512, 0), T, side, "cuda"), True, grad=True)


@pytest.mark.gpu
@pytest.mark.parametrize("D", [32, 64, 80, 96, 128, 256])
def test_gpu_head_dims_bf16(D):
    B, H, Hkv, Q, K = 2, 4, 2, 300, 517
    q, k, v = _qkv(B, H, Hkv, Q, K, D, torch.bfloat16, "cuda", grad=True)
    _check(q, k, v, _pad_mask(_gpu_lengths(B, K, 200, 1), K, "right", "cuda"), True, grad=True)


@pytest.mark.gpu
@pytest.mark.parametrize("D", [128, 256])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask_name", ["pad-holes", "bool4d", "add4d"])
def test_gpu_wide_heads_fp16(mask_name, causal, D):
    # D 128's and 256's own launch settings (_fwd_config, _bwd_config: at 256 the widest that fit the card's shared
    # memory, two warpgroups) on every mask path, forward and backward against fp64
    B, H, Q, K = 3, 4, 260, 333
    q, k, v = _qkv(B, H, 2, Q, K, D, torch.float16, "cuda", grad=True)
    _check(q, k, v, _mask_case(mask_name, B, H, Q, K, "cuda"), causal, grad=True)


@pytest.mark.gpu
@pytest.mark.parametrize("mask_name", ["pad-holes", "bool4d", "add4d", "add4d-bias"])
def test_gpu_general_masks_fp16(mask_name):
    B, H, Q, K, D = 3, 2, 200, 333, 64
    q, k, v = _qkv(B, H, H, Q, K, D, torch.float16, "cuda", grad=True)
    _check(q, k, v, _mask_case(mask_name, B, H, Q, K, "cuda"), False, grad=True)


@pytest.mark.gpu
def test_gpu_fp32_exact_dots():
    q, k, v = _qkv(2, 4, 4, 256, 256, 64, torch.float32, "cuda", grad=True)
    _check(q, k, v, _pad_mask([256, 100], 256, "right", "cuda"), True, grad=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_decode(dtype):
    B, H, K, D = 8, 12, 2048, 64
    q, k, v = _qkv(B, H, H, 1, K, D, dtype, "cuda", bthd=True)
    _check(q, k, v, _pad_mask(_gpu_lengths(B, K, 1024, 2), K, "left", "cuda"), True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("Q", [1, 4])
@pytest.mark.parametrize("mask_form", ["2d", "additive-4d"])
def test_gpu_gqa_decode_packed(dtype, Q, mask_form, monkeypatch):
    # Llama-style grouped-query decoding (32 query heads on 8 key/value heads): one program per key/value head;
    # with the padding as a 2D mask, and as HF's additive [B, 1, Q, K] mask (a static cache's step)
    monkeypatch.setattr(attn_mod, "GQA_PACK", True)
    monkeypatch.setattr(attn_mod, "_PLANS", {})
    B, H, Hkv, K, D = 8, 32, 8, 4096, 128
    q, k, v = _qkv(B, H, Hkv, Q, K, D, dtype, "cuda", bthd=True)
    pad = _pad_mask(_gpu_lengths(B, K, 1024, 4), K, "left", "cuda")
    if mask_form == "2d":
        _check(q, k, v, pad, True)
    else:
        keep = pad.bool()[:, None, None, :] & torch.ones(Q, K, dtype=torch.bool, device="cuda").tril(K - Q)
        mask = torch.zeros(keep.shape, dtype=dtype, device="cuda").masked_fill(~keep, torch.finfo(dtype).min)
        _check(q, k, v, mask, False)
    plans = list(attn_mod._PLANS.values())
    assert plans and all(p.launch.kwargs["PACK"] for p in plans)


@pytest.mark.gpu
def test_gpu_more_than_65535_batch_x_heads_forward_and_backward():
    # B x H = 65536 programs: past grid axis 1's limit, so every kernel (the backward's delta one too) puts them on
    # axis 0
    B, H, Q, K, D = 4096, 16, 4, 8, 16
    q, k, v = _qkv(B, H, H, Q, K, D, torch.float16, "cuda", grad=True)
    _check(q, k, v, _pad_mask(_gpu_lengths(B, K, 1, 3), K, "right", "cuda"), False, grad=True)


@pytest.mark.gpu
def test_gpu_causal_sequence_of_more_than_65535_blocks():
    # causal grids put batch x heads first, so a sequence's blocks go on axis 1: past 65535 of them they swap
    Q, K, D = 65536 * 64 + 1, 40, 16  # queries past the keys' count see nothing (bottom-right): zeros, fast
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 1, Q, D, device="cuda", dtype=torch.float16, generator=g)
    k = torch.randn(1, 1, K, D, device="cuda", dtype=torch.float16, generator=g)
    v = torch.randn(1, 1, K, D, device="cuda", dtype=torch.float16, generator=g)
    out = attention_fn(q, k, v, causal=True)
    assert not out[:, :, : Q - K].any()
    ref, _ = _ref(q[:, :, Q - K:], k, v, None, True)  # the last K queries, aligned as before
    assert_close(out[:, :, Q - K:], ref, scale=OUT_SCALE[torch.float16])
    # and the key blocks of the dk/dv kernel: 16 queries over 2**21 + 1 keys in fp32 (32-key blocks)
    K = 2**21 + 1
    q, k, v = _qkv(1, 1, 1, 16, K, 16, torch.float32, "cuda", grad=True, seed=1)
    _check(q, k, v, None, True, grad=True)


def test_gqa_packing_is_on_by_default_and_switched_off_by_the_environment():
    import os
    import subprocess
    import sys

    code = "import importlib; print(importlib.import_module('hf_masked_softmax.attention').GQA_PACK)"
    for value, expected in ((None, "True"), ("1", "True"), ("0", "False")):
        env = {k: v for k, v in os.environ.items() if k != "HF_MASKED_SOFTMAX_GQA_PACK"}
        if value is not None:
            env["HF_MASKED_SOFTMAX_GQA_PACK"] = value
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected


# ---------------------------------------------------------------------------------------------------------------
# Values of a head dim of their own (private: the HF backend's multi-head latent attention)
# ---------------------------------------------------------------------------------------------------------------

def _mla_case(case, value_dim, dtype, device):
    """q, k, v with 24-wide queries and keys and ``value_dim``-wide values (GQA 4 -> 2), a mask and causality."""
    g = torch.Generator().manual_seed(value_dim)
    B, H, Hkv, Q, K = 3, 4, 2, 9, 13
    if case == "decode-splits":
        Q, K = 1, 40
    q = torch.randn(B, H, Q, 24, generator=g).to(device, dtype)
    k = torch.randn(B, Hkv, K, 24, generator=g).to(device, dtype)
    v = torch.randn(B, K, Hkv, value_dim, generator=g).to(device, dtype).transpose(1, 2)  # HF's layout
    if case == "bool4d":
        mask = (torch.rand(B, 1, Q, K, generator=g) < 0.6).to(device)
        mask[1, :, 2] = False  # a row with nothing kept
    else:
        mask = _pad_mask([K, 7, 2], K, "left", device)
    return q, k, v, mask, case != "bool4d"


@pytest.mark.parametrize("case", ["pad2d-causal", "bool4d", "decode-splits"])
@pytest.mark.parametrize("value_dim", [8, 24, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_values_of_their_own_head_dim(device, case, value_dim, dtype):
    # v [B, Hkv, K, Dv] with Dv narrower than, equal to and wider than the queries' and keys' 24: the kernels read
    # and write Dv columns of values, outputs and value gradients (no padding); output and gradients of q, k, v
    # against the fp64 reference; the decode case forces three key splits and their combine
    from hf_masked_softmax import ops

    q, k, v, mask, causal = _mla_case(case, value_dim, dtype, device)
    q, k, v = (t.requires_grad_(case != "decode-splits") for t in (q, k, v))
    with contextlib.ExitStack() as stack:
        if case == "decode-splits":
            stack.enter_context(mock.patch.object(attn_mod, "_is_decode", lambda Q: True))
            stack.enter_context(mock.patch.object(attn_mod, "_num_splits", lambda *a: 3))
        out = ops.attention(q, k, v, mask, causal=causal, scale=24 ** -0.5, _any_value_dim=True)
    assert out.shape == (*q.shape[:3], value_dim) and out.dtype == dtype
    assert out.transpose(1, 2).is_contiguous()  # the kernel's [B, Q, H, Dv] layout, as with one head dim
    assert torch.isfinite(out).all()
    if case == "decode-splits":
        ref, _ = _ref(q, k, v, mask, causal, 24 ** -0.5)
        assert_close(out, ref, scale=OUT_SCALE[dtype])
    else:
        _assert_matches_reference(out, q, k, v, mask, causal, scale=24 ** -0.5)


def test_values_of_their_own_head_dim_with_dropout_sinks_window_and_softcap(device):
    # the other kernel features along the narrower values: dropout's mask is the same as at one head dim for the
    # same seed (the kept probabilities do not depend on the values' width: the first 8 columns of a call on values
    # padded to 24 wide are the narrow call's), sinks, a window and a soft-cap against the reference
    from hf_masked_softmax import ops

    q, k, v, mask, causal = _mla_case("pad2d-causal", 8, torch.float32, device)
    sinks = torch.randn(4, generator=torch.Generator().manual_seed(1)).to(device)
    out = ops.attention(q, k, v, mask, causal=True, window=5, softcap=3.0, sinks=sinks, _any_value_dim=True)
    ref, _ = _ref(q, k, v, mask, True, window=5, softcap=3.0, sinks=sinks)
    assert_close(out, ref, scale=OUT_SCALE[torch.float32])
    wide_v = torch.nn.functional.pad(v, (0, 16))
    torch.manual_seed(5)
    narrow = ops.attention(q, k, v, mask, causal=True, dropout_p=0.3, _any_value_dim=True)
    torch.manual_seed(5)
    wide = ops.attention(q, k, wide_v, mask, causal=True, dropout_p=0.3)
    assert (narrow != 0).any() and not torch.equal(narrow, out)
    torch.testing.assert_close(narrow, wide[..., :8], atol=1e-6, rtol=1e-5)


def test_head_dim_split_into_two_tiles():
    # the forward's tiles over a head dim: a power of two as it is; the sum of two powers of two (16 or more each) as
    # those two tiles; anything else as one padded tile (a second tile with masked columns gave NaN on an H100 with
    # 8-warp blocks); the policy switch turns it off
    split = attn_mod._split_d
    assert [split(d) for d in (8, 16, 24, 32, 40, 48, 64, 72, 80, 96, 100, 112, 144, 160, 176, 192, 256)] == [
        (16, 0), (16, 0), (32, 0), (32, 0), (64, 0), (32, 16), (64, 0), (128, 0), (64, 16), (64, 32), (128, 0),
        (128, 0), (128, 16), (128, 32), (256, 0), (128, 64), (256, 0)]
    assert [split(d, values=True) for d in (80, 96, 192)] == [(64, 16), (64, 32), (128, 64)]
    # a decode step: the queries' and keys' head dim in two tiles, the values' in one
    assert [split(d, False, True) for d in (80, 96, 192)] == [(64, 16), (64, 32), (128, 64)]
    assert [split(d, True, True) for d in (80, 96, 192)] == [(128, 0), (128, 0), (256, 0)]
    with mock.patch.object(attn_mod, "SPLIT_HEAD_DIM", False):
        assert [split(d) for d in (48, 80, 96, 192)] == [(64, 0), (128, 0), (128, 0), (256, 0)]


class _ForwardTiles:
    """Stands in for the forward kernel: records each launch's ``(BLOCK_D, D_TAIL, BLOCK_DV, DV_TAIL)``, then runs
    the kernel."""

    def __init__(self, kernel):
        self.kernel, self.tiles = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.tiles.append((kw["BLOCK_D"], kw["D_TAIL"], kw["BLOCK_DV"], kw["DV_TAIL"]))
            return self.kernel[grid](*args, **kw)
        return launch


def _split_case(case, dtype, device):
    """q, k, v, mask, causal and the call's keywords of each head-dim split case (GQA 4 -> 2)."""
    D, Dv = {"pad2d-causal": (80, 80), "bool4d": (96, 96), "add4d-mla": (48, 40), "decode-splits": (80, 80),
             "decode-pack": (48, 24)}[case]
    g = torch.Generator().manual_seed(D + Dv)
    B, H, Hkv, Q, K = 3, 4, 2, 19, 21  # (up to 16 queries are a decode step's plan: values in one tile)
    if case.startswith("decode"):
        Q, K = 1, 40
    q = torch.randn(B, H, Q, D, generator=g).to(device, dtype)
    k = torch.randn(B, Hkv, K, D, generator=g).to(device, dtype)
    v = torch.randn(B, K, Hkv, Dv, generator=g).to(device, dtype).transpose(1, 2)  # HF's layout
    if case == "bool4d":
        mask = (torch.rand(B, 1, Q, K, generator=g) < 0.6).to(device)
        mask[1, :, 2] = False  # a row with nothing kept
    elif case == "add4d-mla":
        mask = torch.randn(B, 1, Q, K, generator=g).masked_fill(torch.rand(B, 1, Q, K, generator=g) < 0.3,
                                                                  float("-inf")).to(device)
    else:
        mask = _pad_mask([K, 7, 2], K, "left", device)
    return q, k, v, mask, case not in ("bool4d", "add4d-mla")


@pytest.mark.parametrize("case", ["pad2d-causal", "bool4d", "add4d-mla", "decode-splits", "decode-pack"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_head_dim_split_into_two_tiles_matches_the_reference(device, case, dtype, monkeypatch):
    # head dims of no power of two (80, 96, 48 with 40-wide values in one tile, 48 with 24-wide ones) through the
    # forward's two tiles, on every mask path, the decode splits and grouped-query packing: output and gradients
    # against the fp64 reference, and the one padded tile's output within the table's row (the columns' sums are
    # ordered otherwise, and in fp16 a probability rounded on the other side moves an output by an ulp)
    from hf_masked_softmax import ops

    spy = _ForwardTiles(attn_mod._attn_fwd_kernel)
    monkeypatch.setattr(attn_mod, "_attn_fwd_kernel", spy)
    q, k, v, mask, causal = _split_case(case, dtype, device)
    grad = not case.startswith("decode")
    q, k, v = (t.requires_grad_(grad) for t in (q, k, v))
    with contextlib.ExitStack() as stack:
        if case == "decode-splits":
            stack.enter_context(mock.patch.object(attn_mod, "_num_splits", lambda *a: 3))
        if case == "decode-pack":
            stack.enter_context(mock.patch.object(attn_mod, "GQA_PACK", True))
        out = ops.attention(q, k, v, mask, causal=causal, _any_value_dim=True)
        with mock.patch.object(attn_mod, "SPLIT_HEAD_DIM", False):
            one_tile = ops.attention(q, k, v, mask, causal=causal, _any_value_dim=True)
    D, Dv, decode = q.shape[-1], v.shape[-1], attn_mod._is_decode(q.shape[2])
    assert spy.tiles == [attn_mod._split_d(D, False, decode) + attn_mod._split_d(Dv, True, decode),
                         (attn_mod._block_d(D), 0, attn_mod._block_d(Dv), 0)]
    assert decode == case.startswith("decode")
    assert spy.tiles[0][1] > 0  # the first call took two tiles
    assert out.shape == (*q.shape[:3], Dv) and torch.isfinite(out).all()
    if case == "bool4d":
        assert torch.equal(out[1, :, 2], torch.zeros_like(out[1, :, 2]))
    assert_close(out, one_tile, scale=OUT_SCALE[dtype])
    if grad:
        _assert_matches_reference(out, q, k, v, mask, causal)
    else:
        ref, _ = _ref(q, k, v, mask, causal)
        assert_close(out, ref, scale=OUT_SCALE[dtype])


def test_head_dim_split_with_dropout_sinks_window_and_softcap(device, monkeypatch):
    # the kernel's other features along two tiles: sinks, a window and a soft-cap against the reference (with the
    # sinks' gradient), and dropout's kept probabilities the same as the one padded tile's for the same seed
    spy = _ForwardTiles(attn_mod._attn_fwd_kernel)
    monkeypatch.setattr(attn_mod, "_attn_fwd_kernel", spy)
    q, k, v = _qkv(2, 4, 2, 17, 23, 48, torch.float32, device, grad=True)
    mask = _pad_mask([23, 9], 23, "left", device)
    sinks = torch.randn(4, generator=torch.Generator().manual_seed(1)).to(device).requires_grad_(True)
    _check(q, k, v, mask, True, window=6, softcap=3.0, sinks=sinks, grad=True)
    assert spy.tiles[-1] == (32, 16, 32, 16)
    torch.manual_seed(5)
    split = attention_fn(q, k, v, mask, causal=True, dropout_p=0.3)
    with mock.patch.object(attn_mod, "SPLIT_HEAD_DIM", False):
        torch.manual_seed(5)
        one_tile = attention_fn(q, k, v, mask, causal=True, dropout_p=0.3)
    assert spy.tiles[-2:] == [(32, 16, 32, 16), (64, 0, 64, 0)]
    assert (split != 0).any()
    torch.testing.assert_close(split, one_tile, atol=1e-6, rtol=1e-5)


def test_public_attention_keeps_one_head_dim(device):
    # the public function still refuses values of another width, also after the private entry validated (and
    # cached) a call with the same shapes
    from hf_masked_softmax import ops

    q, k, v, mask, _ = _mla_case("pad2d-causal", 8, torch.float32, device)
    ops.attention(q, k, v, mask, causal=True, _any_value_dim=True)
    with pytest.raises(ValueError, match="k and v must have the same shape"):
        hf_masked_softmax.attention(q, k, v, mask, causal=True)
    with pytest.raises(ValueError, match="same batch, heads and length"):
        ops.attention(q, k, v[:, :, :5], mask, causal=True, _any_value_dim=True)
    with pytest.raises(ValueError, match=r"v's head_dim must be in \[1, 256\]"):
        ops.attention(q, k, torch.zeros(*v.shape[:3], 0, device=device), mask, _any_value_dim=True)
