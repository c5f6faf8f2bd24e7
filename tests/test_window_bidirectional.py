"""The fused attention's bidirectional window (``attention(..., window=W)`` without ``causal``: query ``i`` sees key
``j`` iff ``|j - (i + K - Q)| < W``, ModernBERT's local attention) against the fp64 reference: every mask form, GQA,
queries fewer or more than keys, the decode split, half precision, the key blocks outside every window never read,
rows with nothing left, and when a window is no window (dropout, the custom operators and their reference fallback,
and torch.compile are tests/test_window.py's, run with both kinds of window). The kernels run it as causality moved
``W - 1`` keys right with a window of ``2 W - 1`` (``attention._kernel_window``); on CPU in the interpreter with
16-wide blocks."""
import importlib
from unittest import mock

import pytest
import torch

import hf_masked_softmax
from hf_masked_softmax.masks import keep_mask, prepare_mask
from hf_masked_softmax.reference import attention_backward_reference, attention_reference
from test_attention import GRAD_SCALE
from test_attention import _check as attention_check
from test_window import OUT_SCALE, _mask, _qkv
from tolerances import assert_close

attn_mod = importlib.import_module("hf_masked_softmax.attention")
ops = importlib.import_module("hf_masked_softmax.ops")


def _check(q, k, v, mask, window, **kw):
    """attention(..., window=window) without causality and its gradients vs the fp64 reference (test_attention's
    check and tolerances)."""
    return attention_check(q, k, v, mask, False, window=window, **kw)


def _assert_the_window_matters(q, k, v, mask, window):
    q, k, v = (t.detach().double() for t in (q, k, v))
    plain = attention_reference(q, k, v, mask, compute_dtype=torch.float64)
    ref = attention_reference(q, k, v, mask, window=window, compute_dtype=torch.float64)
    assert not torch.allclose(plain, ref, atol=1e-3)


def test_the_reference_keeps_keys_within_the_window_on_both_sides():
    # the definition itself, on a 5 x 7 call (bottom-right: query i sits at key i + 2) with a window of 2
    keep = keep_mask(prepare_mask(None, (1, 1, 5, 7), "cpu"), (1, 1, 5, 7), causal=False, device="cpu", window=2)
    expected = torch.tensor([[abs(j - (i + 2)) < 2 for j in range(7)] for i in range(5)])
    assert torch.equal(keep[0, 0], expected)
    assert keep[0, 0].sum(1).tolist() == [3, 3, 3, 3, 2]


@pytest.mark.parametrize("mask_name", ["none", "pad-left", "pad-right", "pad-holes", "bool4d", "add4d-bias"])
@pytest.mark.parametrize("window", [1, 5, 16, 33])
def test_bidirectional_window_forward_backward_fp32_gqa(mask_name, window, device):
    B, H, Hkv, Q, K, D = 3, 4, 2, 70, 70, 16
    q, k, v = _qkv(B, H, Hkv, Q, K, D, torch.float32, device)
    mask = _mask(mask_name, B, H, Q, K, device)
    _check(q, k, v, mask, window, grad=True)
    _assert_the_window_matters(q, k, v, mask, window)


@pytest.mark.parametrize("Q,K,window", [(9, 70, 12), (20, 45, 30), (70, 45, 7), (1, 100, 33), (45, 20, 30)])
@pytest.mark.parametrize("mask_name", ["none", "pad-left", "pad-right"])
def test_bidirectional_window_with_queries_and_keys_of_other_lengths(Q, K, window, mask_name, device):
    q, k, v = _qkv(2, 2, 1, Q, K, 16, torch.float32, device, seed=1)
    _check(q, k, v, _mask(mask_name, 2, 2, Q, K, device), window, grad=True)


@pytest.mark.parametrize("Q", [1, 5])
@pytest.mark.parametrize("splits", [1, 3])
def test_bidirectional_window_decode_split_k(Q, splits, device):
    q, k, v = _qkv(3, 4, 2, Q, 90, 16, torch.float16, device, seed=2)
    _check(q, k, v, _mask("pad-left", 3, 4, Q, 90, device), 20, decode=True, num_splits=splits)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bidirectional_window_half_precision(dtype, device):
    q, k, v = _qkv(2, 2, 2, 60, 60, 32, dtype, device, seed=3)
    _check(q, k, v, _mask("pad-right", 2, 2, 60, 60, device), 9, grad=True)


def test_key_blocks_outside_every_window_are_never_read(device):
    # 300 queries over 300 keys, a window of 20. Rows [0, 128) see keys below 147 only, so NaN from key 256 on
    # (whatever the block size, up to 128) reaches them only if their query block reads a key block right of its
    # windows; rows from 256 see keys from 237 on, so NaN below key 128 reaches them only through a block left of
    # theirs. Their outputs and dq must be those of the clean inputs
    q, k, v = _qkv(1, 2, 2, 300, 300, 16, torch.float32, device, seed=4)
    for bad, rows in ((slice(256, None), slice(0, 128)), (slice(0, 128), slice(256, None))):
        dirty = [q.detach().clone().requires_grad_(True)] + [t.detach().clone() for t in (k, v)]
        clean = [t.detach().clone() for t in (q, k, v)]
        with torch.no_grad():
            for t in dirty[1:]:
                t[:, :, bad] = float("nan")
            for t in clean[1:]:
                t[:, :, bad] = 0.0
        for decode in (False, True):
            with mock.patch.object(attn_mod, "_is_decode", lambda Q: decode):
                out = hf_masked_softmax.attention(*dirty, window=20)
                (dq,) = torch.autograd.grad(out[:, :, rows].sum(), (dirty[0],))
            ref = attention_reference(*(t.double() for t in clean), window=20, compute_dtype=torch.float64)
            do = torch.zeros_like(ref)
            do[:, :, rows] = 1.0
            ref_dq = attention_backward_reference(*(t.double() for t in clean), do, window=20,
                                                  compute_dtype=torch.float64)[0]
            assert torch.isfinite(out[:, :, rows]).all() and torch.isfinite(dq[:, :, rows]).all()
            assert_close(out[:, :, rows], ref[:, :, rows], scale=OUT_SCALE)
            assert_close(dq[:, :, rows], ref_dq[:, :, rows], torch.float32, scale=GRAD_SCALE[torch.float32])


def test_rows_whose_window_holds_only_padding_are_zero_and_keep_nan_gradients_out(device):
    # right padding: rows 25 and on of sequence 1 are 6 or more keys past its last real key (19), so their windows
    # hold only padding
    B, H, Q, K, D = 2, 2, 40, 40, 16
    q, k, v = _qkv(B, H, H, Q, K, D, torch.float32, device, seed=5)
    mask = torch.ones(B, K, dtype=torch.bool, device=device)
    mask[1, 20:] = False
    out = hf_masked_softmax.attention(q, k, v, mask, window=6)
    assert torch.equal(out[1, :, 25:], torch.zeros_like(out[1, :, 25:]))
    assert (out[1, :, 24].abs().sum(-1) > 0).all()  # row 24 still sees key 19
    do = torch.randn_like(out)
    do[1, :, 25:] = float("nan")
    grads = torch.autograd.grad(out, (q, k, v), do)
    assert all(torch.isfinite(g).all() for g in grads)
    do_clean = do.clone()
    do_clean[1, :, 25:] = 0.0
    ref = attention_backward_reference(*(t.detach().double() for t in (q, k, v)), do_clean.double(), mask,
                                       window=6, compute_dtype=torch.float64)
    for g, r in zip(grads, ref):
        assert_close(g, r, torch.float32, scale=GRAD_SCALE[torch.float32])


def test_a_window_no_key_falls_out_of_is_no_window(device):
    # bidirectional: the largest distance from a query's position is max(K, Q) - 1
    q, k, v = (t.detach() for t in _qkv(2, 2, 2, 30, 40, 16, torch.float32, device, seed=6))
    mask = _mask("pad-left", 2, 2, 30, 40, device)
    plain = hf_masked_softmax.attention(q, k, v, mask)
    for window in (40, 41, 10**9):
        assert torch.equal(hf_masked_softmax.attention(q, k, v, mask, window=window), plain)
    assert not torch.allclose(hf_masked_softmax.attention(q, k, v, mask, window=39), plain)
    assert attn_mod.window_size(40, False, 40, 30) == 0 and attn_mod.window_size(39, False, 40, 30) == 39
    assert attn_mod.window_size(39, False, 30, 40) == 39 and attn_mod.window_size(40, False, 30, 40) == 0
    assert attn_mod._kernel_window(False, 5) == (2, 9) and attn_mod._kernel_window(True, 5) == (True, 5)
    assert attn_mod._kernel_window(False, 0) == (False, 0)


def test_validated_signature_tells_causal_and_bidirectional_windows_apart(device):
    q, k, v = (t.detach() for t in _qkv(2, 2, 2, 24, 24, 16, torch.float32, device, seed=7))
    mask = _mask("pad-right", 2, 2, 24, 24, device)
    calls = [(False, 5), (True, 5), (False, 5), (False, None), (True, 5)]
    outs = [hf_masked_softmax.attention(q, k, v, mask, causal=c, window=w) for c, w in calls]
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[4])
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[0], outs[3])
    for (causal, window), out in zip(calls, outs):
        ref = attention_reference(q.double(), k.double(), v.double(), mask, causal=causal, window=window,
                                  compute_dtype=torch.float64)
        assert_close(out, ref, scale=OUT_SCALE)


# ---------------------------------------------------------------------------------------------------------------
# GPU, real sizes: ModernBERT's local layers (a window of 65: 64 keys on each side), the compiled kernels' tiles
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("window", [65, 257])
def test_gpu_bidirectional_window(dtype, window):
    B, H, T, D = 4, 12, 1024, 64
    q, k, v = _qkv(B, H, H, T, T, D, dtype, "cuda", seed=12)
    mask = torch.ones(B, T, dtype=torch.bool, device="cuda")
    mask[1, 700:] = False  # right padding
    mask[2, :300] = False  # left padding
    _check(q, k, v, mask, window, grad=True)
