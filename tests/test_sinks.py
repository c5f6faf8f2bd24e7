"""Attention sinks (``attention(..., sinks=s)``, ``masked_softmax(..., sinks=s)``; GPT-OSS's ``sinks``): one logit
per query head that joins every row's softmax as a key with a zero value. Checked against the fp64 reference
(forward, and the gradients of q, k, v and the sinks) for every mask form, GQA, the decode split and grouped-query
packing, windows, dropout, soft-capping, half precision, the custom operators and torch.compile; plus fully masked
rows, the edge values of a sink, and the argument's errors. The sinks here are of the scores' size (a few units), so
they take a visible share of every row, which each test checks: a kernel that ignored them would fail."""
import importlib
from unittest import mock

import pytest
import torch

import hf_masked_softmax
from hf_masked_softmax.masks import prepare_mask
from hf_masked_softmax.reference import (attention_backward_reference, attention_lse_reference, attention_reference,
                                         dropout_keep_reference, masked_softmax_reference)
from test_attention import (GRAD_SCALE, OUT_SCALE, _assert_feature_matters, _assert_matches_reference, _check,
                            _mask_case, _pad_mask, _qkv, _ref)
from test_dropout import _seed_drawn_after
from tolerances import assert_close

attn_mod = importlib.import_module("hf_masked_softmax.attention")
ms_mod = importlib.import_module("hf_masked_softmax.masked_softmax")
ops = importlib.import_module("hf_masked_softmax.ops")


def _inputs(B, H, Hkv, Q, K, D, dtype, device, seed=0):
    """q, k, v (scores of a few units) and sinks of the same size, all needing gradients."""
    q, k, v = _qkv(B, H, Hkv, Q, K, D, torch.float32, device, seed=seed)
    sinks = torch.randn(H, generator=torch.Generator().manual_seed(seed + 100)) * 2 + 1
    return (*(t.to(dtype).requires_grad_(True) for t in (q * 2, k, v)), sinks.to(device).requires_grad_(True))


def _assert_the_sinks_matter(q, k, v, mask, causal, sinks, **kw):
    """The reference with and without the sinks differ by far more than any tolerance: the test could fail."""
    _assert_feature_matters(q, k, v, mask, causal, dict(sinks=sinks), **kw)


@pytest.mark.parametrize("mask_name", ["none", "pad-right", "pad-left", "pad-holes", "bool4d", "add4d",
                                       "add4d-bias"])
@pytest.mark.parametrize("causal", [False, True])
def test_forward_and_backward_match_the_reference(mask_name, causal, device):
    B, H, Hkv, Q, K, D = 3, 4, 2, 21, 45, 16
    q, k, v, sinks = _inputs(B, H, Hkv, Q, K, D, torch.float32, device)
    mask = _mask_case(mask_name, B, H, Q, K, device)
    _assert_the_sinks_matter(q, k, v, mask, causal, sinks)
    _check(q, k, v, mask, causal, grad=True, sinks=sinks)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype, device):
    q, k, v, sinks = _inputs(2, 2, 2, 19, 33, 64, dtype, device, seed=1)
    mask = _pad_mask([33, 20], 33, "left", device)
    _assert_the_sinks_matter(q, k, v, mask, True, sinks)
    _check(q, k, v, mask, True, grad=True, sinks=sinks)


@pytest.mark.parametrize("sink_dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_the_sinks_gradient_comes_back_in_their_dtype(sink_dtype, device):
    # GPT-OSS keeps its sinks in the model's dtype: the kernels read fp32, autograd hands the gradient back as given
    q, k, v, sinks = _inputs(2, 2, 1, 9, 17, 16, torch.float32, device, seed=2)
    s = sinks.detach().to(sink_dtype).requires_grad_(True)
    out = hf_masked_softmax.attention(q, k, v, causal=True, sinks=s)
    (g,) = torch.autograd.grad(out.sum(), (s,))
    assert g.dtype == sink_dtype and g.shape == s.shape
    _, ref_grads = _ref(q, k, v, None, True, do=torch.ones_like(out), sinks=s.detach().float())
    assert_close(g.float(), ref_grads[3], sink_dtype if sink_dtype != torch.float64 else torch.float32,
                 scale=GRAD_SCALE[torch.float32])


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("pack", [False, True])
def test_decode_split_and_grouped_query_packing(splits, pack, device, monkeypatch):
    # the split combine adds the sink (the splits leave it out); packed, each row reads its own head's sink
    monkeypatch.setattr(attn_mod, "GQA_PACK", pack)
    B, H, Hkv, Q, K, D = 3, 4, 2, 2, 70, 16
    q, k, v, sinks = _inputs(B, H, Hkv, Q, K, D, torch.float16, device, seed=3)
    mask = _pad_mask([K, 33, 5], K, "left", device)
    _assert_the_sinks_matter(q, k, v, mask, True, sinks)
    _check(q, k, v, mask, True, grad=True, decode=True, num_splits=splits, sinks=sinks)


def test_sliding_window_and_soft_cap(device):
    q, k, v, sinks = _inputs(2, 2, 2, 40, 55, 16, torch.float32, device, seed=4)
    mask = _pad_mask([55, 41], 55, "left", device)
    _assert_the_sinks_matter(q, k, v, mask, True, sinks, window=9)
    _check(q, k, v, mask, True, grad=True, window=9, sinks=sinks)
    _check(q, k, v, mask, True, grad=True, softcap=1.5, sinks=sinks)


def test_dropout(device):
    # the probabilities are normalised with the sink before dropout (as GPT-OSS's eager attention drops them)
    B, H, Q, K, D, p = 2, 2, 19, 33, 16, 0.2
    q, k, v, sinks = _inputs(B, H, H, Q, K, D, torch.float32, device, seed=5)
    mask = _pad_mask([33, 21], K, "right", device)
    seed = _seed_drawn_after(5, device)
    torch.manual_seed(5)
    out = hf_masked_softmax.attention(q, k, v, mask, causal=True, dropout_p=p, sinks=sinks)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(device)
    grads = torch.autograd.grad(out, (q, k, v, sinks), do)
    thr, keep_scale = attn_mod.dropout_threshold(p)
    keep = dropout_keep_reference(seed, (B, H, Q, K), thr, device=device)
    qd, kd, vd, sd = (t.detach().double().requires_grad_(True) for t in (q, k, v, sinks))
    ref = attention_reference(qd, kd, vd, mask, causal=True, compute_dtype=torch.float64, dropout=(keep, keep_scale),
                              sinks=sd)
    ref_grads = torch.autograd.grad(ref, (qd, kd, vd, sd), do.double())
    assert_close(out, ref, scale=OUT_SCALE[torch.float32])
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, scale=GRAD_SCALE[torch.float32])


def test_fully_masked_rows_stay_zero_with_zero_gradients(device):
    # rows with nothing kept: zero output, and no gradient reaches q, k, v or the sinks from them, even with a huge
    # sink; the kept rows match the reference
    B, H, Q, K, D = 2, 2, 8, 12, 16
    q, k, v, sinks = _inputs(B, H, H, Q, K, D, torch.float32, device, seed=6)
    mask = torch.ones(B, 1, Q, K, dtype=torch.bool, device=device)
    mask[0, :, 2] = False
    mask[1, :, 5:] = False
    sinks = torch.tensor([30.0, -3.0], device=device, requires_grad=True)
    out = _check(q, k, v, mask, False, grad=True, sinks=sinks)
    assert torch.equal(out[0, :, 2], torch.zeros_like(out[0, :, 2]))
    assert torch.equal(out[1, :, 5:], torch.zeros_like(out[1, :, 5:]))
    lse = attention_lse_reference(q.detach().double(), k.detach().double(), mask, sinks=sinks.detach().double())
    assert torch.isinf(lse[1, :, 5:]).all() and torch.isfinite(lse[1, :, :5]).all()


def test_edge_values_of_a_sink(device):
    # -inf is no sink, bit for bit; None too; a sink far above every score takes (almost) the whole row, and the
    # output shrinks by the reference's factor (to 1e-13 or so: compared within 1e-5 of its largest entry); a NaN
    # sink makes its head's rows NaN and leaves the other head alone
    q, k, v, _ = _inputs(2, 2, 2, 17, 29, 16, torch.float32, device, seed=7)
    q, k, v = (t.detach() for t in (q, k, v))
    mask = _pad_mask([29, 11], 29, "left", device)
    plain = hf_masked_softmax.attention(q, k, v, mask, causal=True)
    off = torch.full((2,), float("-inf"), device=device)
    assert torch.equal(hf_masked_softmax.attention(q, k, v, mask, causal=True, sinks=off), plain)
    assert torch.equal(hf_masked_softmax.attention(q, k, v, mask, causal=True, sinks=None), plain)
    big = torch.tensor([40.0, 25.0], device=device)
    out = hf_masked_softmax.attention(q, k, v, mask, causal=True, sinks=big)
    ref, _ = _ref(q, k, v, mask, True, sinks=big)
    assert out.abs().max() < 1e-6
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    nan = hf_masked_softmax.attention(q, k, v, mask, causal=True, sinks=torch.tensor([float("nan"), 0.0],
                                                                                       device=device))
    assert torch.isnan(nan[:, 0]).all() and torch.isfinite(nan[:, 1]).all()


def test_the_plan_key_tells_sinks_apart(device):
    q, k, v, sinks = (t.detach() for t in _inputs(1, 2, 2, 17, 29, 16, torch.float32, device, seed=8))
    with_sinks = hf_masked_softmax.attention(q, k, v, sinks=sinks)
    plain = hf_masked_softmax.attention(q, k, v)
    assert not torch.equal(with_sinks, plain)
    assert torch.equal(hf_masked_softmax.attention(q, k, v, sinks=sinks), with_sinks)
    assert torch.equal(hf_masked_softmax.attention(q, k, v), plain)


def test_the_hopper_forward_takes_sinks_unless_turned_off(monkeypatch):
    monkeypatch.setattr(attn_mod._hopper, "usable", lambda *a, **kw: True)
    monkeypatch.setattr(attn_mod._hopper, "HopperForward", lambda *a, sinks=False, **kw: ("hopper", sinks))
    q = torch.zeros(1, 2, 64, 64, dtype=torch.float16, device="meta")
    kind = attn_mod._K_NONE

    def plan(**kw):
        return attn_mod._ForwardPlan(q, q, q, kind, None, 0.0, False, 0.125, need_lse=False, **kw).hopper

    with mock.patch.object(attn_mod, "_smem_optin", lambda d: 0), mock.patch.object(attn_mod, "_sm_count",
                                                                                     lambda d: 132):
        assert plan() == ("hopper", False) and plan(sinks=True) == ("hopper", True)
        monkeypatch.setattr(attn_mod._hopper, "SINKS_OK", False)
        assert plan() == ("hopper", False) and plan(sinks=True) is None


def test_custom_operators(device):
    q, k, v, sinks = _inputs(2, 4, 2, 19, 37, 16, torch.float32, device, seed=9)
    mask = _pad_mask([37, 20], 37, "left", device)
    with mock.patch.object(ops, "call_path", lambda *a: "op"):
        _assert_matches_reference(ops.attention(q, k, v, mask, causal=True, sinks=sinks), q, k, v, mask, True,
                                  sinks=sinks)
        inference = ops.attention_inference_op(q.detach(), k.detach(), v.detach(), mask, 1, 0.0, True, 0.25, 0, 0.0,
                                               sinks.detach())
    assert_close(inference, _ref(q, k, v, mask, True, sinks=sinks)[0], scale=OUT_SCALE[torch.float32])


def test_compiled_fullgraph_forward_and_backward(device):
    q, k, v, sinks = _inputs(2, 4, 2, 19, 37, 16, torch.float32, device, seed=10)
    mask = _pad_mask([37, 20], 37, "left", device)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(q, k, v, mask, sinks):
        return hf_masked_softmax.attention(q, k, v, mask, causal=True, sinks=sinks)

    _assert_matches_reference(f(q, k, v, mask, sinks), q, k, v, mask, True, sinks=sinks)


def test_cpu_without_the_interpreter_runs_the_reference(monkeypatch):
    monkeypatch.setattr(ops, "kernels_take", lambda t: False)
    monkeypatch.setattr(ops, "_VALIDATED", {})
    q, k, v, sinks = _inputs(2, 2, 2, 9, 13, 16, torch.float32, "cpu", seed=11)
    _assert_matches_reference(hf_masked_softmax.attention(q, k, v, causal=True, sinks=sinks), q, k, v, None, True,
                              sinks=sinks)


def test_reference_backward_is_the_derivative_of_the_reference(device):
    q, k, v, sinks = _inputs(2, 4, 2, 9, 13, 8, torch.float32, device, seed=12)
    qd, kd, vd, sd = (t.detach().double().requires_grad_(True) for t in (q, k, v, sinks))
    mask = _pad_mask([13, 6], 13, "right", device)
    out = attention_reference(qd, kd, vd, mask, causal=True, sinks=sd, compute_dtype=torch.float64)
    do = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device)
    want = torch.autograd.grad(out, (qd, kd, vd, sd), do)
    got = attention_backward_reference(qd.detach(), kd.detach(), vd.detach(), do, mask, causal=True, sinks=sd,
                                       compute_dtype=torch.float64)
    lse = attention_lse_reference(qd.detach(), kd.detach(), mask, causal=True, scale=8 ** -0.5, sinks=sd,
                                  compute_dtype=torch.float64)
    got_sinks = attn_mod.sink_gradient(sd.detach(), out.detach(), do, torch.stack((lse, torch.zeros_like(lse))))
    for g, w in zip((*got, got_sinks), want):
        torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------------
# masked_softmax (softmax mode's kernel)
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mask_name", ["none", "pad-left", "pad-holes", "bool4d", "add4d"])
@pytest.mark.parametrize("chunked", [False, True])
def test_masked_softmax_with_sinks(mask_name, chunked, device):
    # the public function (one register chunk per row), and the operator with 8-column chunks (the two-pass loop:
    # the sink starts each row's running max and sum)
    B, H, Q, K = 2, 3, 7, 45
    g = torch.Generator().manual_seed(13)
    scores = (torch.randn(B, H, Q, K, generator=g) * 3).to(device).requires_grad_(True)
    sinks = (torch.randn(H, generator=g) * 2 + 2).to(device).requires_grad_(True)
    mask = _mask_case(mask_name, B, H, Q, K, device)
    if chunked:
        spec = prepare_mask(mask, (B, H, Q, K), scores.device)
        y = ops.masked_softmax_op(scores, mask, spec.kind, spec.threshold, True, 0.7, 16, 8, sinks)
    else:
        y = hf_masked_softmax.masked_softmax(scores, mask, causal=True, scale=0.7, sinks=sinks)
    sd, ssd = scores.detach().double().requires_grad_(True), sinks.detach().double().requires_grad_(True)
    ref = masked_softmax_reference(sd, mask, causal=True, scale=0.7, sinks=ssd, compute_dtype=torch.float64)
    plain = masked_softmax_reference(sd.detach(), mask, causal=True, scale=0.7, compute_dtype=torch.float64)
    assert (ref - plain).abs().max() > 0.05
    assert_close(y, ref)
    dy = torch.randn(y.shape, generator=g).to(device)
    grads = torch.autograd.grad(y, (scores, sinks), dy)
    ref_grads = torch.autograd.grad(ref, (sd, ssd), dy.double())
    assert_close(grads[0], ref_grads[0], scale=2.0)
    assert_close(grads[1], ref_grads[1], scale=GRAD_SCALE[torch.float32])


def test_masked_softmax_operator_and_compile(device):
    g = torch.Generator().manual_seed(14)
    scores = (torch.randn(2, 3, 6, 21, generator=g) * 3).to(device).requires_grad_(True)
    sinks = (torch.randn(3, generator=g) + 1).to(device).requires_grad_(True)
    mask = _pad_mask([21, 8], 21, "left", device)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(scores, mask, sinks):
        return hf_masked_softmax.masked_softmax(scores, mask, causal=True, sinks=sinks)

    y = f(scores, mask, sinks)
    dy = torch.randn(y.shape, generator=g).to(device)
    grads = torch.autograd.grad(y, (scores, sinks), dy)
    sd, ssd = scores.detach().double().requires_grad_(True), sinks.detach().double().requires_grad_(True)
    ref = masked_softmax_reference(sd, mask, causal=True, sinks=ssd, compute_dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref, (sd, ssd), dy.double())
    assert_close(y, ref)
    for got, want in zip(grads, ref_grads):
        assert_close(got, want, scale=GRAD_SCALE[torch.float32])


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad,error,match", [
    (torch.zeros(3), ValueError, r"sinks must have shape \[2\]"),
    (torch.zeros(1, 2), ValueError, r"sinks must have shape \[2\]"),
    (torch.zeros(2, dtype=torch.int64), TypeError, "floating-point"),
    ([0.0, 1.0], TypeError, "sinks must be a torch.Tensor"),
    (torch.zeros(2, device="meta"), ValueError, "inputs' device"),
])
def test_bad_sinks_are_refused(bad, error, match, device):
    q, k, v = (t.detach() for t in _qkv(1, 2, 2, 5, 7, 16, torch.float32, device))
    with pytest.raises(error, match=match):
        hf_masked_softmax.attention(q, k, v, sinks=bad)
    with pytest.raises(error, match=match):
        hf_masked_softmax.masked_softmax(torch.zeros(1, 2, 5, 7, device=device), sinks=bad)


# ---------------------------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D", [64, 128])
def test_gpu_real_sizes(D, dtype):
    # GPT-OSS's heads (64 query / 8 key-value, head dim 64) and a wider head dim: prefill (causal, left padding)
    # with gradients, a window, and a decode step over 2048 keys (split and packed as the card picks)
    B, H, Hkv, Q, K = 2, 64, 8, 300, 300
    q, k, v, sinks = _inputs(B, H, Hkv, Q, K, D, dtype, "cuda")
    mask = _pad_mask([K, 170], K, "left", "cuda")
    _assert_the_sinks_matter(q, k, v, mask, True, sinks)
    _check(q, k, v, mask, True, grad=True, sinks=sinks)
    _check(q, k, v, mask, True, grad=True, window=128, sinks=sinks)
    qd, kd, vd, sd = (t.detach() for t in _inputs(8, H, Hkv, 1, 2048, D, dtype, "cuda", seed=1))
    step = _pad_mask([2048, 1500, 1024, 700, 2048, 1, 900, 1999], 2048, "left", "cuda")
    _check(qd, kd, vd, step, True, sinks=sd)
