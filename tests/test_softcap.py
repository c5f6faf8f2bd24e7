"""Logit soft-capping (``attention(..., softcap=c)``, Gemma 2's ``attn_logit_softcapping``): the scaled scores become
``c * tanh(scale * q k^T / c)`` before the mask, in the forward and both backward kernels, against the fp64
reference for every mask form, GQA, the decode split, windows, dropout, half precision, the custom operators and
torch.compile; plus the argument's errors. Scores here are large enough (q scaled by 3, caps of 1 to 3) that the
cap changes every row, which each test checks, so a kernel that ignored it would fail."""
import importlib
from unittest import mock

import pytest
import torch

import hf_masked_softmax
from hf_masked_softmax.reference import attention_backward_reference, attention_reference, dropout_keep_reference
from test_attention import GRAD_SCALE, OUT_SCALE, _assert_feature_matters, _check, _mask_case, _pad_mask, _qkv, _ref
from test_dropout import _seed_drawn_after
from tolerances import assert_close

attn_mod = importlib.import_module("hf_masked_softmax.attention")
ops = importlib.import_module("hf_masked_softmax.ops")


def _big_qkv(B, H, Hkv, Q, K, D, dtype, device, seed=0):
    """q, k, v with scores of a few units (q times 3), needing gradients."""
    q, k, v = _qkv(B, H, Hkv, Q, K, D, torch.float32, device, seed=seed)
    return tuple(t.to(dtype).requires_grad_(True) for t in (q * 3, k, v))


def _assert_the_cap_matters(q, k, v, mask, causal, softcap, **kw):
    """The reference with and without the cap differ by far more than any tolerance: the test could fail."""
    _assert_feature_matters(q, k, v, mask, causal, dict(softcap=softcap), **kw)


@pytest.mark.parametrize("mask_name", ["none", "pad-right", "pad-left", "pad-holes", "bool4d", "add4d",
                                       "add4d-bias"])
@pytest.mark.parametrize("causal", [False, True])
def test_forward_and_backward_match_the_reference(mask_name, causal, device):
    B, H, Hkv, Q, K, D = 3, 4, 2, 21, 45, 16
    q, k, v = _big_qkv(B, H, Hkv, Q, K, D, torch.float32, device)
    mask = _mask_case(mask_name, B, H, Q, K, device)
    _assert_the_cap_matters(q, k, v, mask, causal, 2.0)
    _check(q, k, v, mask, causal, grad=True, softcap=2.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype, device):
    q, k, v = _big_qkv(2, 2, 2, 19, 33, 64, dtype, device, seed=1)
    mask = _pad_mask([33, 20], 33, "left", device)
    _assert_the_cap_matters(q, k, v, mask, True, 1.0)
    _check(q, k, v, mask, True, grad=True, softcap=1.0)


@pytest.mark.parametrize("scale", [-0.3, 2.5])
def test_scales_that_are_not_folded(scale, device):
    # a negative scale, and one above FOLD_MAX_SCALE: the cap takes the scale inside its tanh either way
    q, k, v = _big_qkv(2, 2, 1, 17, 29, 16, torch.float32, device, seed=2)
    _assert_the_cap_matters(q, k, v, None, False, 1.5, scale=scale)
    _check(q, k, v, None, False, scale=scale, grad=True, softcap=1.5)


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("pack", [False, True])
def test_decode_split_and_grouped_query_packing(splits, pack, device, monkeypatch):
    monkeypatch.setattr(attn_mod, "GQA_PACK", pack)
    B, H, Hkv, Q, K, D = 3, 4, 2, 1, 70, 16
    q, k, v = _big_qkv(B, H, Hkv, Q, K, D, torch.float16, device, seed=3)
    mask = _pad_mask([K, 33, 5], K, "left", device)
    _assert_the_cap_matters(q, k, v, mask, True, 1.0)
    _check(q, k, v, mask, True, grad=True, decode=True, num_splits=splits, softcap=1.0)


def test_sliding_window(device):
    q, k, v = _big_qkv(2, 2, 2, 40, 55, 16, torch.float32, device, seed=4)
    mask = _pad_mask([55, 41], 55, "left", device)
    _assert_the_cap_matters(q, k, v, mask, True, 2.0, window=9)
    _check(q, k, v, mask, True, grad=True, window=9, softcap=2.0)


def test_dropout(device):
    B, H, Q, K, D, p, cap = 2, 2, 19, 33, 16, 0.2, 2.0
    q, k, v = _big_qkv(B, H, H, Q, K, D, torch.float32, device, seed=5)
    mask = _pad_mask([33, 21], K, "right", device)
    seed = _seed_drawn_after(5, device)
    torch.manual_seed(5)
    out = hf_masked_softmax.attention(q, k, v, mask, causal=True, dropout_p=p, softcap=cap)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(device)
    grads = torch.autograd.grad(out, (q, k, v), do)
    thr, keep_scale = attn_mod.dropout_threshold(p)
    keep = dropout_keep_reference(seed, (B, H, Q, K), thr, device=device)
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ref = attention_reference(qd, kd, vd, mask, causal=True, compute_dtype=torch.float64, dropout=(keep, keep_scale),
                              softcap=cap)
    ref_grads = torch.autograd.grad(ref, (qd, kd, vd), do.double())
    assert_close(out, ref, scale=OUT_SCALE[torch.float32])
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, scale=GRAD_SCALE[torch.float32])


def test_huge_scores_stay_finite_and_exact(device):
    # products of 1e6: uncapped, a softmax over them is one-hot; capped at 4 they stay within +-4 and the output is
    # an average of several values, as the reference's
    q, k, v = _big_qkv(1, 2, 2, 18, 30, 16, torch.float32, device, seed=6)
    q = (q.detach() * 1e5).requires_grad_(True)
    _assert_the_cap_matters(q, k, v, None, False, 4.0)
    _check(q, k, v, None, False, grad=True, softcap=4.0)


def test_none_and_zero_are_no_cap_bit_for_bit(device):
    q, k, v = _big_qkv(2, 2, 2, 17, 29, 16, torch.float32, device, seed=7)
    mask = _pad_mask([29, 11], 29, "left", device)
    plain = hf_masked_softmax.attention(q, k, v, mask, causal=True)
    for off in (None, 0, 0.0):
        assert torch.equal(hf_masked_softmax.attention(q, k, v, mask, causal=True, softcap=off), plain)


def test_reference_backward_is_the_derivative_of_the_reference(device):
    # the written-out backward (the custom operator's CPU fallback) against autograd through the forward reference
    q, k, v = _big_qkv(2, 4, 2, 9, 13, 8, torch.float32, device, seed=8)
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    mask = _pad_mask([13, 6], 13, "right", device)
    out = attention_reference(qd, kd, vd, mask, causal=True, softcap=1.5, compute_dtype=torch.float64)
    do = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device)
    want = torch.autograd.grad(out, (qd, kd, vd), do)
    got = attention_backward_reference(qd.detach(), kd.detach(), vd.detach(), do, mask, causal=True, softcap=1.5,
                                       compute_dtype=torch.float64)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_the_plan_key_tells_caps_apart(device):
    # one signature, three caps: three plans, each output its own cap's
    q, k, v = (t.detach() for t in _big_qkv(1, 2, 2, 17, 29, 16, torch.float32, device, seed=9))
    outs = [hf_masked_softmax.attention(q, k, v, softcap=c) for c in (1.0, 2.0, 1.0)]
    assert not torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0], outs[2])


def test_the_hopper_forward_never_takes_a_cap(monkeypatch):
    # the Gluon kernel has no soft-cap: a plan with one keeps the Triton kernel even where the Gluon one applies
    monkeypatch.setattr(attn_mod._hopper, "usable", lambda *a, **kw: True)
    monkeypatch.setattr(attn_mod._hopper, "HopperForward", lambda *a, **kw: "hopper")
    q = torch.zeros(1, 2, 64, 64, dtype=torch.float16, device="meta")
    kind = attn_mod._K_NONE
    with mock.patch.object(attn_mod, "_smem_optin", lambda d: 0), mock.patch.object(attn_mod, "_sm_count",
                                                                                     lambda d: 132):
        plain = attn_mod._ForwardPlan(q, q, q, kind, None, 0.0, False, 0.125, need_lse=False)
        capped = attn_mod._ForwardPlan(q, q, q, kind, None, 0.0, False, 0.125, need_lse=False, softcap=50.0)
    assert plain.hopper == "hopper" and capped.hopper is None


def test_custom_operators(device):
    # the operators' own path (as under torch.compile), forward and backward, against the reference
    q, k, v = _big_qkv(2, 4, 2, 19, 37, 16, torch.float32, device, seed=10)
    mask = _pad_mask([37, 20], 37, "left", device)
    with mock.patch.object(ops, "call_path", lambda *a: "op"):
        out = ops.attention(q, k, v, mask, causal=True, softcap=2.0)
        do = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(device)
        grads = torch.autograd.grad(out, (q, k, v), do)
        inference = ops.attention_inference_op(q.detach(), k.detach(), v.detach(), mask, 1, 0.0, True, 0.25, 0, 2.0)
    ref, ref_grads = _ref(q, k, v, mask, True, do=do, softcap=2.0)
    assert_close(out, ref, scale=OUT_SCALE[torch.float32])
    assert_close(inference, ref, scale=OUT_SCALE[torch.float32])
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, scale=GRAD_SCALE[torch.float32])


def test_compiled_fullgraph_forward_and_backward(device):
    q, k, v = _big_qkv(2, 4, 2, 19, 37, 16, torch.float32, device, seed=11)
    mask = _pad_mask([37, 20], 37, "left", device)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(q, k, v, mask):
        return hf_masked_softmax.attention(q, k, v, mask, causal=True, softcap=2.0)

    out = f(q, k, v, mask)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(device)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref, ref_grads = _ref(q, k, v, mask, True, do=do, softcap=2.0)
    assert_close(out, ref, scale=OUT_SCALE[torch.float32])
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, scale=GRAD_SCALE[torch.float32])


def test_cpu_without_the_interpreter_runs_the_reference(monkeypatch):
    # no kernels (a CPU tensor outside the interpreter): the plain-PyTorch fallback applies the same cap
    monkeypatch.setattr(ops, "kernels_take", lambda t: False)
    monkeypatch.setattr(ops, "_VALIDATED", {})
    q, k, v = (t.detach() for t in _big_qkv(2, 2, 2, 9, 13, 16, torch.float32, "cpu", seed=12))
    out = hf_masked_softmax.attention(q, k, v, causal=True, softcap=1.0)
    ref = attention_reference(q.double(), k.double(), v.double(), causal=True, softcap=1.0,
                              compute_dtype=torch.float64)
    assert_close(out, ref, scale=OUT_SCALE[torch.float32])


@pytest.mark.parametrize("bad,error,match", [
    (-1.0, ValueError, "positive finite"), (float("nan"), ValueError, "positive finite"),
    (float("inf"), ValueError, "positive finite"), ("50", TypeError, "softcap must be a real number"),
    (True, TypeError, "softcap must be a real number"), (torch.ones(2), ValueError, "single number"),
])
def test_bad_caps_are_refused(bad, error, match, device):
    q, k, v = (t.detach() for t in _qkv(1, 2, 2, 5, 7, 16, torch.float32, device))
    with pytest.raises(error, match=match):
        hf_masked_softmax.attention(q, k, v, softcap=bad)


def test_a_cap_that_requires_grad_is_refused(device):
    q, k, v = (t.detach() for t in _qkv(1, 2, 2, 5, 7, 16, torch.float32, device))
    with pytest.raises(ValueError, match="softcap requires grad"):
        hf_masked_softmax.attention(q, k, v, softcap=torch.tensor(2.0, requires_grad=True))
    # a tensor that needs no gradient is a number like any other
    same = hf_masked_softmax.attention(q, k, v, softcap=torch.tensor(2.0))
    assert torch.equal(same, hf_masked_softmax.attention(q, k, v, softcap=2.0))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D", [64, 128, 256])
def test_gpu_real_sizes(D, dtype):
    # Gemma 2's shapes (8 query / 4 key-value heads, head dim 256) and two narrower ones: the launch settings each
    # head dim picks on the card, prefill (causal, left padding) with gradients and a decode step, cap 2 on scores
    # of a few units
    B, H, Hkv, Q, K = 2, 8, 4, 300, 300
    q, k, v = _big_qkv(B, H, Hkv, Q, K, D, dtype, "cuda")
    mask = _pad_mask([K, 170], K, "left", "cuda")
    _assert_the_cap_matters(q, k, v, mask, True, 2.0)
    _check(q, k, v, mask, True, grad=True, softcap=2.0)
    qd, kd, vd = (t.detach() for t in _big_qkv(8, H, Hkv, 1, 2048, D, dtype, "cuda", seed=1))
    step = _pad_mask([2048, 1500, 1024, 700, 2048, 1, 900, 1999], 2048, "left", "cuda")
    _check(qd, kd, vd, step, True, softcap=2.0)


def test_a_weak_cap_keeps_fp32_precision(device):
    # a cap far above the scores (1e4 on scores of about 1): tanh's argument is about 1e-4, where 1 - exp(-2x) loses
    # relative precision (before the series it moved the scores by ~3e-4 and failed the fp32 row 13x)
    q, k, v = _big_qkv(2, 2, 2, 6, 21, 24, torch.float32, device, seed=13)
    _check(q, k, v, _pad_mask([21, 9], 21, "left", device), True, grad=True, softcap=1e4)


def test_the_kernels_tanh(device):
    # the kernels' tanh on its own, against float64: relative error within 8 fp32 ulps over the exponential's range
    # and the series' (below 0.3; 3.4 ulps at most in the interpreter, where exp2 is exact, and the GPU's exp2 is an
    # approximation), NaN kept, +-inf to +-1
    import triton
    import triton.language as tl

    @triton.jit
    def tanh_kernel(x_ptr, y_ptr, N, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < N
        tl.store(y_ptr + offs, attn_mod._tanh(tl.load(x_ptr + offs, mask=ok)), mask=ok)

    pos = torch.cat([torch.logspace(-20, 1.5, 3000, dtype=torch.float64), torch.linspace(0.25, 0.35, 500,
                                                                                       dtype=torch.float64)])
    x = torch.cat([pos, -pos, torch.tensor([0.0, -0.0, 20.0, 1e30, float("inf"), -float("inf")],
                                           dtype=torch.float64)]).float().to(device)
    y = torch.empty_like(x)
    tanh_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), BLOCK=1024)
    ref = torch.tanh(x.double())
    assert torch.all((y.double() - ref).abs() <= 8 * 2 ** -24 * ref.abs())
    nan = torch.full((1,), float("nan"), device=device)
    tanh_kernel[(1,)](nan, y, 1, BLOCK=16)
    assert torch.isnan(y[0])
