"""The fused attention's causal sliding window (``attention(..., causal=True, window=W)``) against the fp64 reference
(the bidirectional window, without ``causal``, is tests/test_window_bidirectional.py's):
every mask form, queries fewer than keys, GQA, the decode split, dropout, the custom operators, torch.compile, the
blocks left of every window never read, and the argument's errors. On CPU the kernels run in the interpreter with
16-wide blocks, so lengths of 40..100 cross many of them."""
import importlib
from unittest import mock

import numpy as np
import pytest
import torch

import hf_masked_softmax
from hf_masked_softmax.reference import (attention_backward_reference, attention_lse_reference, attention_reference,
                                         dropout_keep_reference)
from test_attention import GRAD_SCALE
from test_attention import OUT_SCALE as OUT_SCALES
from test_attention import _check as attention_check
from tolerances import assert_close

attn_mod = importlib.import_module("hf_masked_softmax.attention")
ops = importlib.import_module("hf_masked_softmax.ops")

OUT_SCALE = OUT_SCALES[torch.float32]


def _qkv(B, H, Hkv, Q, K, D, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, h, n, D, generator=g).to(device, dtype).requires_grad_(True)
                 for h, n in ((H, Q), (Hkv, K), (Hkv, K)))


def _mask(name, B, H, Q, K, device):
    g = torch.Generator().manual_seed(5)
    if name == "none":
        return None
    if name in ("pad-left", "pad-right"):
        m = torch.zeros(B, K, dtype=torch.bool)
        for b, n in enumerate([K, K - 13, 9, K - 30][:B]):
            if name == "pad-left":
                m[b, K - n:] = True
            else:
                m[b, :n] = True
        return m.to(device)
    if name == "pad-holes":
        m = torch.rand(B, K, generator=g) > 0.2
        m[0] = True
        return m.to(device)
    if name == "bool4d":
        return (torch.rand(B, 1, Q, K, generator=g) > 0.3).to(device)
    if name == "add4d-bias":
        m = torch.randn(1, H, Q, K, generator=g)
        m[..., ::7] = float("-inf")
        return m.to(device)
    raise AssertionError(name)


def _check(q, k, v, mask, window, *, grad=True, decode=None, num_splits=None, scale=None):
    """attention(..., causal=True, window=window) and its gradients vs the fp64 reference with the same window
    (test_attention's check, whose tolerances these are)."""
    return attention_check(q, k, v, mask, True, scale=scale, grad=grad, decode=decode, num_splits=num_splits,
                           window=window)


@pytest.mark.parametrize("mask_name", ["none", "pad-left", "pad-right", "pad-holes", "bool4d", "add4d-bias"])
@pytest.mark.parametrize("window", [1, 7, 16, 33])
def test_window_forward_backward_fp32_gqa(mask_name, window, device):
    B, H, Hkv, Q, K, D = 3, 4, 2, 50, 50, 16
    q, k, v = _qkv(B, H, Hkv, Q, K, D, torch.float32, device)
    mask = _mask(mask_name, B, H, Q, K, device)
    _check(q, k, v, mask, window)
    # the window changes the result (a test that could not tell it from plain causality would prove nothing)
    q, k, v = (t.detach().double() for t in (q, k, v))
    plain = attention_reference(q, k, v, mask, causal=True, compute_dtype=torch.float64)
    ref = attention_reference(q, k, v, mask, causal=True, window=window, compute_dtype=torch.float64)
    assert not torch.allclose(plain, ref, atol=1e-3)


@pytest.mark.parametrize("Q,K,window", [(9, 70, 12), (20, 45, 30), (70, 45, 7), (1, 100, 33)])
@pytest.mark.parametrize("mask_name", ["none", "pad-left", "pad-right"])
def test_window_with_queries_and_keys_of_other_lengths(Q, K, window, mask_name, device):
    # bottom-right: query i is at key position i + K - Q (a continuation on a cache; more queries than keys too)
    q, k, v = _qkv(2, 2, 1, Q, K, 16, torch.float32, device, seed=1)
    _check(q, k, v, _mask(mask_name, 2, 2, Q, K, device), window)


@pytest.mark.parametrize("Q", [1, 5])
@pytest.mark.parametrize("splits", [1, 3])
def test_window_decode_split_k(Q, splits, device):
    B, H, Hkv, K, D = 3, 4, 2, 90, 16
    q, k, v = _qkv(B, H, Hkv, Q, K, D, torch.float16, device, seed=2)
    mask = _mask("pad-left", B, H, Q, K, device)
    _check(q, k, v, mask, 20, decode=True, num_splits=splits)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_window_half_precision(dtype, device):
    q, k, v = _qkv(2, 2, 2, 40, 40, 32, dtype, device, seed=3)
    _check(q, k, v, _mask("pad-right", 2, 2, 40, 40, device), 9)


def test_blocks_left_of_every_window_are_never_read(device):
    # 8 queries at the end of 300 keys with a window of 100: every row's window starts at key 193 or later, so the
    # key blocks below 128 (whatever the block size, up to 128) lie left of all of them. NaN there changes nothing
    # (a block that was read and masked would still carry 0 * NaN into P.V, or into dq / dk / dv): they are skipped
    q, k, v = _qkv(2, 4, 2, 8, 300, 16, torch.float32, device, seed=4)
    with torch.no_grad():
        for t in (k, v):
            t[:, :, :128] = float("nan")
    clean = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    with torch.no_grad():
        for t in clean[1:]:
            t[:, :, :128] = 0.0
    for decode in (False, True):
        with mock.patch.object(attn_mod, "_is_decode", lambda Q: decode):
            out = hf_masked_softmax.attention(q, k, v, causal=True, window=100)
            grads = torch.autograd.grad(out.sum(), (q, k, v))
        ref = attention_reference(*(t.detach().double() for t in clean), causal=True, window=100,
                                  compute_dtype=torch.float64)
        assert_close(out, ref, scale=OUT_SCALE)
        ref_grads = attention_backward_reference(*(t.detach().double() for t in clean), torch.ones_like(ref),
                                                 causal=True, window=100, compute_dtype=torch.float64)
        for g, r in zip(grads, ref_grads):
            assert torch.isfinite(g).all()
            assert_close(g, r, torch.float32, scale=GRAD_SCALE[torch.float32])
        assert torch.equal(grads[1][:, :, :128], torch.zeros_like(grads[1][:, :, :128]))


def test_rows_past_a_right_padded_range_by_a_window_are_zero_and_keep_nan_gradients_out(device):
    # right padding: the last rows' windows hold only padding, so they attend to nothing (zeros), and a NaN in
    # their upstream gradient reaches no other gradient
    B, H, Q, K, D = 2, 2, 40, 40, 16
    q, k, v = _qkv(B, H, H, Q, K, D, torch.float32, device, seed=5)
    mask = torch.ones(B, K, dtype=torch.bool, device=device)
    mask[1, 20:] = False
    out = hf_masked_softmax.attention(q, k, v, mask, causal=True, window=6)
    assert torch.equal(out[1, :, 25:], torch.zeros_like(out[1, :, 25:]))
    do = torch.randn_like(out)
    do[1, :, 25:] = float("nan")
    grads = torch.autograd.grad(out, (q, k, v), do)
    assert all(torch.isfinite(g).all() for g in grads)
    do_clean = do.clone()
    do_clean[1, :, 25:] = 0.0
    ref = attention_backward_reference(q.detach().double(), k.detach().double(), v.detach().double(),
                                       do_clean.double(), mask, causal=True, window=6, compute_dtype=torch.float64)
    for g, r in zip(grads, ref):
        assert_close(g, r, torch.float32, scale=GRAD_SCALE[torch.float32])


def test_a_window_of_all_the_keys_or_more_is_no_window(device):
    q, k, v = _qkv(2, 2, 2, 30, 30, 16, torch.float32, device, seed=6)
    mask = _mask("pad-left", 2, 2, 30, 30, device)
    plain = hf_masked_softmax.attention(q, k, v, mask, causal=True)
    for window in (30, 31, 10**9):
        assert torch.equal(hf_masked_softmax.attention(q, k, v, mask, causal=True, window=window), plain)
    assert not torch.allclose(hf_masked_softmax.attention(q, k, v, mask, causal=True, window=29), plain)
    assert attn_mod.window_size(None, False, 30) == 0 and attn_mod.window_size(30, True, 30) == 0
    assert attn_mod.window_size(np.int64(29), True, 30) == 29


@pytest.mark.parametrize("causal", [True, False])
def test_window_errors(causal, device):
    q, k, v = _qkv(1, 2, 2, 8, 8, 16, torch.float32, device)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="at least 1"):
            hf_masked_softmax.attention(q, k, v, causal=causal, window=bad)
    for bad in (4.0, True, "4", torch.tensor(4)):
        with pytest.raises(TypeError, match="window must be an integer"):
            hf_masked_softmax.attention(q, k, v, causal=causal, window=bad)


def test_validated_signature_keeps_the_window(device):
    # the eager shortcut (a signature validated before skips the checks): calls that differ only by the window
    # must not share it
    q, k, v = (t.detach() for t in _qkv(2, 2, 2, 24, 24, 16, torch.float32, device, seed=7))
    mask = _mask("pad-right", 2, 2, 24, 24, device)
    outs = [hf_masked_softmax.attention(q, k, v, mask, causal=True, window=w) for w in (3, 5, 3, None, 5)]
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[4])
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[3])
    for w, out in ((3, outs[0]), (5, outs[1])):
        ref = attention_reference(q.double(), k.double(), v.double(), mask, causal=True, window=w,
                                  compute_dtype=torch.float64)
        assert_close(out, ref, scale=OUT_SCALE)


def test_attention_bqhd_takes_the_window(device):
    q, k, v = (t.detach() for t in _qkv(2, 2, 2, 24, 24, 16, torch.float32, device, seed=8))
    out = attn_mod.attention_bqhd(q, k, v, causal=True, window=5)
    assert out.is_contiguous() and out.shape == (2, 24, 2, 16)
    assert torch.equal(out, hf_masked_softmax.attention(q, k, v, causal=True, window=5).transpose(1, 2))


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_window_with_dropout_matches_the_reference_with_the_kernels_mask(causal, device):
    # the operators with an explicit Philox key: forward, log-sum-exp and backward against the reference given the
    # kernels' own dropout mask and the window (bidirectional without causality)
    B, H, Q, K, D = 2, 2, 30, 40, 16
    q, k, v = (t.detach() for t in _qkv(B, H, H, Q, K, D, torch.float32, device, seed=9))
    mask = _mask("pad-left", B, H, Q, K, device)
    seed = torch.tensor([1234], dtype=torch.int64, device=device)
    drop_thr = 16384  # p = 0.25
    out, lse = ops.attention_op(q, k, v, mask, 1, 0.0, causal, 0.25, drop_thr, seed, 9)
    keep = dropout_keep_reference(1234, (B, H, Q, K), drop_thr, device=device)
    dropout = (keep, attn_mod._keep_scale(drop_thr))
    ref = attention_reference(q.double(), k.double(), v.double(), mask, causal=causal, scale=0.25, window=9,
                              dropout=dropout, compute_dtype=torch.float64)
    assert_close(out, ref, scale=OUT_SCALE)
    ref_lse = attention_lse_reference(q.double(), k.double(), mask, causal=causal, scale=0.25, window=9,
                                      compute_dtype=torch.float64)
    kept = torch.isfinite(ref_lse)
    assert_close(lse[0][kept], ref_lse[kept], scale=OUT_SCALE)
    do = torch.randn_like(out)
    grads = ops.attention_backward_op(do, q, k, v, out, lse, mask, 1, 0.0, causal, 0.25, drop_thr, seed, 9)
    ref_grads = attention_backward_reference(q.double(), k.double(), v.double(), do.double(), mask, causal=causal,
                                             scale=0.25, window=9, dropout=dropout, compute_dtype=torch.float64)
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, torch.float32, scale=GRAD_SCALE[torch.float32])


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("take", [True, False], ids=["kernels", "reference"])
def test_operators_and_the_reference_fallback_take_the_window(take, causal, device):
    # the custom operators (what torch.compile records) and the plain-PyTorch fallback (CPU without the
    # interpreter) apply the same window as the eager kernels
    q, k, v = _qkv(2, 4, 2, 20, 30, 16, torch.float32, device, seed=10)
    mask = _mask("pad-left", 2, 4, 20, 30, device)
    with mock.patch.object(ops, "kernels_take", lambda t: take), mock.patch.object(ops, "_VALIDATED", {}):
        out = hf_masked_softmax.attention(q, k, v, mask, causal=causal, window=6)
        grads = torch.autograd.grad(out.sum(), (q, k, v))
        inf = ops.attention_inference_op(q.detach(), k.detach(), v.detach(), mask, 1, 0.0, causal, 0.25, 6)
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ref = attention_reference(qd, kd, vd, mask, causal=causal, window=6, compute_dtype=torch.float64)
    assert_close(out, ref, scale=OUT_SCALE)
    for g, r in zip(grads, torch.autograd.grad(ref.sum(), (qd, kd, vd))):
        assert_close(g, r, torch.float32, scale=GRAD_SCALE[torch.float32])
    ref = attention_reference(q.double(), k.double(), v.double(), mask, causal=causal, window=6, scale=0.25,
                              compute_dtype=torch.float64)
    assert_close(inf, ref, scale=OUT_SCALE)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_compiled_window_forward_and_backward(causal, device):
    # the custom operators' fake implementations and registered autograd carry the window through a traced graph
    # (aot_eager: the graph as traced, no Inductor code generation)
    q, k, v = _qkv(2, 2, 2, 24, 24, 16, torch.float32, device, seed=11)
    mask = _mask("pad-right", 2, 2, 24, 24, device)
    fn = torch.compile(lambda q, k, v: hf_masked_softmax.attention(q, k, v, mask, causal=causal, window=5),
                       fullgraph=True, backend="aot_eager")
    out = fn(q, k, v)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    eager = hf_masked_softmax.attention(q, k, v, mask, causal=causal, window=5)
    eager_grads = torch.autograd.grad(eager.sum(), (q, k, v))
    assert_close(out, eager.double(), scale=OUT_SCALE)
    for g, r in zip(grads, eager_grads):
        assert_close(g, r.double(), torch.float32, scale=GRAD_SCALE[torch.float32])
    with torch.no_grad():  # the inference operator
        assert_close(fn(q, k, v), eager.double(), scale=OUT_SCALE)


# ---------------------------------------------------------------------------------------------------------------
# GPU, real sizes: the compiled kernels' tiles (64 / 128 wide) and bf16 dots
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("window", [100, 256, 1000])
def test_gpu_window_prefill(dtype, window):
    B, H, Hkv, T, D = 2, 8, 2, 1024, 64
    q, k, v = _qkv(B, H, Hkv, T, T, D, dtype, "cuda", seed=12)
    mask = torch.ones(B, T, dtype=torch.bool, device="cuda")
    mask[1, :300] = False  # left padding
    _check(q, k, v, mask, window)


@pytest.mark.gpu
@pytest.mark.parametrize("D", [64, 128])
def test_gpu_window_decode(D):
    B, H, Hkv, K = 4, 8, 2, 2048
    q, k, v = _qkv(B, H, Hkv, 1, K, D, torch.float16, "cuda", seed=13)
    mask = torch.ones(B, K, dtype=torch.bool, device="cuda")
    mask[0, :700] = False
    _check(q, k, v, mask, 512, grad=False)
