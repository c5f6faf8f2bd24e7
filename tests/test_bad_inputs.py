"""The bad-input catalogue (issue 6): inputs nobody planned for, for ``masked_softmax`` and ``attention``.

Every case either gets the right answer (checked against the fp64 reference or a hand-derived result) or a clear
error naming the problem; none may give a silently wrong result or a NaN that masking caused. Semantics decided here
and documented in the README's ``masked_softmax`` and ``attention`` sections:

* NaN in a kept score (or a NaN entry in an additive mask at a kept position) makes its row NaN, as torch.softmax
  does; a NaN at a masked position is never read.
* ``+inf`` in a kept score, or in an additive mask, makes its row NaN (``inf - inf``), as torch.softmax and HF eager
  attention do. ``-inf`` anywhere counts as masked; a row left with nothing is all zeros.
* ``scale`` must be a real number finite in fp32 (the kernels' math): a Python or NumPy number or a one-element
  tensor; 0 gives a uniform distribution over the kept keys, negative scales are fine. Logits (scale x score, plus
  an additive mask) must stay within FLT_MAX / log2(e) = 2.36e38 in magnitude: the kernels exponentiate in base 2.
* An additive mask that requires grad is refused while autograd records (no gradient flows to masks).
* Empty dimensions (B, H, Q or K = 0) return empty results (K = 0: zeros for attention) with zero gradients.

On CPU the real kernels run in Triton's interpreter; GPU-only cases (> 2**31 elements, K = 262144 without padding)
carry the ``gpu`` marker.
"""
import math

import numpy as np
import pytest
import torch

from hf_masked_softmax import attention, masked_softmax
from hf_masked_softmax.reference import attention_reference, masked_softmax_reference
from tolerances import assert_close


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _scores(*shape, dtype=torch.float32, device="cpu", seed=0):
    return torch.randn(*shape, generator=_g(seed)).to(device, dtype)


def _qkv(B=2, H=2, Hkv=2, Q=3, K=20, D=16, dtype=torch.float32, device="cpu", seed=0):
    g = _g(seed)
    return (torch.randn(B, H, Q, D, generator=g).to(device, dtype),
            torch.randn(B, Hkv, K, D, generator=g).to(device, dtype),
            torch.randn(B, Hkv, K, D, generator=g).to(device, dtype))


def _ms_ref(scores, mask=None, causal=False, scale=1.0):
    return masked_softmax_reference(scores, mask, causal=causal, scale=scale, compute_dtype=torch.float64,
                                    out_dtype=torch.float64)


def _attn_ref(q, k, v, mask=None, causal=False, scale=None):
    return attention_reference(q.double(), k.double(), v.double(), mask, causal=causal, scale=scale,
                               compute_dtype=torch.float64)


def _pad(lengths, K, left=False, device="cpu"):
    m = torch.zeros(len(lengths), K, dtype=torch.bool, device=device)
    for b, n in enumerate(lengths):
        if left:
            m[b, K - n:] = True
        else:
            m[b, :n] = True
    return m


# ----------------------------------------------------------------------------------------------------------------------
# Clear errors: (function, arguments builder, exception, words the message must contain)
# ----------------------------------------------------------------------------------------------------------------------
S = (2, 1, 3, 5)  # scores [B, H, Q, K]
ERROR_CASES = {
    # masked_softmax
    "ms_rank3": (masked_softmax, lambda d: ((torch.zeros(2, 3, 5, device=d),), {}), ValueError, "4D"),
    "ms_rank5": (masked_softmax, lambda d: ((torch.zeros(1, *S, device=d),), {}), ValueError, "4D"),
    "ms_float64": (masked_softmax, lambda d: ((torch.zeros(S, dtype=torch.float64, device=d),), {}), TypeError,
                   "float64"),
    "ms_int": (masked_softmax, lambda d: ((torch.zeros(S, dtype=torch.int32, device=d),), {}), TypeError, "int32"),
    "ms_complex": (masked_softmax, lambda d: ((torch.zeros(S, dtype=torch.complex64, device=d),), {}), TypeError,
                   "complex64"),
    "ms_not_tensor": (masked_softmax, lambda d: (([[1.0]],), {}), TypeError, "Tensor"),
    "ms_mask2d_wrong_len": (masked_softmax, lambda d: ((torch.zeros(S, device=d), torch.ones(2, 4, device=d).bool()),
                                                       {}), ValueError, "[2, 5]"),
    "ms_mask2d_wrong_batch": (masked_softmax, lambda d: ((torch.zeros(S, device=d),
                                                          torch.ones(3, 5, device=d).bool()), {}), ValueError,
                              "[2, 5]"),
    "ms_mask2d_float": (masked_softmax, lambda d: ((torch.zeros(S, device=d), torch.ones(2, 5, device=d)), {}),
                        TypeError, "floating 2D"),
    "ms_mask4d_not_broadcastable": (masked_softmax, lambda d: ((torch.zeros(S, device=d),
                                                                torch.ones(2, 1, 3, 4, device=d).bool()), {}),
                                    ValueError, "broadcast"),
    "ms_mask4d_int": (masked_softmax, lambda d: ((torch.zeros(S, device=d),
                                                  torch.ones(2, 1, 3, 5, dtype=torch.int64, device=d)), {}),
                      TypeError, "bool"),
    "ms_mask3d": (masked_softmax, lambda d: ((torch.zeros(S, device=d), torch.ones(2, 3, 5, device=d).bool()), {}),
                  ValueError, "3D"),
    "ms_mask1d": (masked_softmax, lambda d: ((torch.zeros(S, device=d), torch.ones(5, device=d).bool()), {}),
                  ValueError, "1D"),
    "ms_mask_other_device": (masked_softmax, lambda d: ((torch.zeros(S, device=d),
                                                         torch.ones(2, 5, dtype=torch.bool, device="meta")), {}),
                             ValueError, "device"),
    "ms_scores_on_meta": (masked_softmax, lambda d: ((torch.zeros(S, device="meta"),), {}), ValueError, "meta"),
    "ms_scale_nan": (masked_softmax, lambda d: ((torch.zeros(S, device=d),), {"scale": math.nan}), ValueError,
                     "scale"),
    "ms_scale_inf": (masked_softmax, lambda d: ((torch.zeros(S, device=d),), {"scale": -math.inf}), ValueError,
                     "scale"),
    "ms_scale_fp32_overflow": (masked_softmax, lambda d: ((torch.zeros(S, device=d),), {"scale": 1e39}), ValueError,
                               "float32"),
    "ms_scale_string": (masked_softmax, lambda d: ((torch.zeros(S, device=d),), {"scale": "0.5"}), TypeError,
                        "scale"),
    "ms_scale_bool": (masked_softmax, lambda d: ((torch.zeros(S, device=d),), {"scale": True}), TypeError, "scale"),
    # attention
    "attn_q_rank3": (attention, lambda d: ((lambda q, k, v: (q[0], k, v))(*_qkv(device=d)), {}), ValueError,
                     "q must be 4D"),
    "attn_v_rank5": (attention, lambda d: ((lambda q, k, v: (q, k, v[None]))(*_qkv(device=d)), {}), ValueError,
                     "v must be 4D"),
    "attn_float64": (attention, lambda d: (tuple(t.double() for t in _qkv(device=d)), {}), TypeError, "float64"),
    "attn_dtype_mix": (attention, lambda d: ((lambda q, k, v: (q, k.half(), v))(*_qkv(device=d)), {}), TypeError,
                       "share one dtype"),
    "attn_k_on_meta": (attention, lambda d: ((lambda q, k, v: (q, k.to("meta"), v))(*_qkv(device=d)), {}),
                       ValueError, "one device"),
    "attn_mask_on_meta": (attention, lambda d: (_qkv(device=d) + (torch.ones(2, 20, dtype=torch.bool,
                                                                              device="meta"),), {}),
                          ValueError, "device"),
    "attn_mask2d_wrong_len": (attention, lambda d: (_qkv(device=d) + (torch.ones(2, 19, dtype=torch.bool,
                                                                                  device=d),), {}),
                              ValueError, "[2, 20]"),
    "attn_mask2d_float": (attention, lambda d: (_qkv(device=d) + (torch.ones(2, 20, device=d),), {}), TypeError,
                          "floating 2D"),
    "attn_mask4d_int": (attention, lambda d: (_qkv(device=d) + (torch.ones(2, 1, 3, 20, dtype=torch.int32,
                                                                            device=d),), {}),
                        TypeError, "bool"),
    "attn_mask4d_not_broadcastable": (attention, lambda d: (_qkv(device=d) + (torch.ones(2, 1, 4, 20, device=d),),
                                                            {}), ValueError, "broadcast"),
    "attn_gqa_heads": (attention, lambda d: (_qkv(H=3, Hkv=2, device=d), {}), ValueError, "multiple"),
    "attn_head_dim_mismatch": (attention, lambda d: ((lambda q, k, v: (q[..., :8], k, v))(*_qkv(device=d)), {}),
                               ValueError, "head_dim"),
    "attn_head_dim_too_big": (attention, lambda d: (_qkv(B=1, Q=2, K=3, D=264, device=d), {}), ValueError,
                              "at most 256"),
    "attn_kv_len_mismatch": (attention, lambda d: ((lambda q, k, v: (q, k, v[:, :, :7]))(*_qkv(device=d)), {}),
                             ValueError, "same shape"),
    "attn_scale_nan": (attention, lambda d: (_qkv(device=d), {"scale": math.nan}), ValueError, "scale"),
    "attn_scale_inf": (attention, lambda d: (_qkv(device=d), {"scale": math.inf}), ValueError, "scale"),
    "attn_scale_fp32_overflow": (attention, lambda d: (_qkv(device=d), {"scale": -1e39}), ValueError, "float32"),
    "attn_scale_string": (attention, lambda d: (_qkv(device=d), {"scale": "0.1"}), TypeError, "scale"),
    "attn_scale_bool": (attention, lambda d: (_qkv(device=d), {"scale": True}), TypeError, "scale"),
    "ms_scale_two_values": (masked_softmax, lambda d: ((torch.zeros(S, device=d),), {"scale": torch.ones(2)}),
                            ValueError, "scale must be a single number"),
    "attn_scale_two_values": (attention, lambda d: (_qkv(device=d), {"scale": torch.ones(2)}), ValueError,
                              "scale must be a single number"),
    # gradients w.r.t. an additive mask are not computed: refused rather than silently None
    "ms_add4d_requires_grad": (masked_softmax, lambda d: ((torch.zeros(S, device=d),
                                                           torch.zeros(2, 1, 3, 5, device=d, requires_grad=True)),
                                                          {}), ValueError, "requires grad"),
    "attn_add4d_requires_grad": (attention, lambda d: (_qkv(device=d) + (torch.zeros(2, 1, 1, 20, device=d,
                                                                                     requires_grad=True),), {}),
                                 ValueError, "requires grad"),
    # so does a scale tensor that requires grad (a learned temperature: pass it as the scores' factor instead)
    "ms_scale_requires_grad": (masked_softmax, lambda d: ((torch.zeros(S, device=d),),
                                                          {"scale": torch.tensor(0.5, requires_grad=True)}),
                               ValueError, "scale requires grad"),
    "attn_scale_requires_grad": (attention, lambda d: (_qkv(device=d), {"scale": torch.tensor([0.5],
                                                                                              requires_grad=True)}),
                                 ValueError, "scale requires grad"),
    # finite in fp32, but not once multiplied by log2(e) in the kernels (every row would turn NaN)
    "ms_scale_past_log2e": (masked_softmax, lambda d: ((torch.zeros(S, device=d),), {"scale": 3e38}), ValueError,
                            "2.36e38"),
    "attn_scale_past_log2e": (attention, lambda d: (_qkv(device=d), {"scale": -2.4e38}), ValueError, "2.36e38"),
    "attn_head_dim_zero": (attention, lambda d: ((lambda q, k, v: (q[..., :0], k[..., :0], v[..., :0]))(
        *_qkv(device=d)), {}), ValueError, "head_dim must be at least 1"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_clear_error(case, device):
    fn, build, exc, words = ERROR_CASES[case]
    args, kwargs = build(device)
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    assert words in str(info.value), str(info.value)


def test_attn_on_a_device_without_kernels_uses_the_reference():
    # Devices other than CUDA (and CPU under the interpreter) take the PyTorch reference; on "meta" that is shape
    # inference, with the kernel's output layout not promised.
    q, k, v = (t.to("meta") for t in _qkv(H=4, Hkv=2))
    out = attention(q, k, v, torch.ones(2, 20, dtype=torch.bool, device="meta"), causal=True)
    assert out.device.type == "meta" and out.shape == q.shape and out.dtype == q.dtype


# ----------------------------------------------------------------------------------------------------------------------
# Empty dimensions
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(0, 2, 3, 4), (2, 0, 3, 4), (2, 2, 0, 4), (2, 2, 3, 0)])
@pytest.mark.parametrize("mask_form", ["none", "pad2d", "bool4d", "add4d"])
def test_ms_empty_dims(shape, mask_form, device):
    B, H, Q, K = shape
    scores = torch.randn(shape, device=device, requires_grad=True)
    mask = {"none": None, "pad2d": torch.ones(B, K, dtype=torch.bool, device=device),
            "bool4d": torch.ones(B, 1, Q, K, dtype=torch.bool, device=device),
            "add4d": torch.zeros(B, 1, 1, K, device=device)}[mask_form]
    out = masked_softmax(scores, mask, causal=True)
    assert out.shape == shape and out.dtype == scores.dtype
    (g,) = torch.autograd.grad(out.sum(), scores)
    assert g.shape == shape


@pytest.mark.parametrize("dims", [dict(B=0), dict(Q=0), dict(K=0), dict(H=0, Hkv=0)])
def test_attn_empty_dims(dims, device):
    if dims.get("H") == 0:
        # zero key/value heads cannot be grouped: a clear error, not a division by zero
        with pytest.raises(ValueError, match="multiple"):
            attention(*_qkv(**dims, device=device))
        return
    q, k, v = _qkv(**dims, device=device)
    B, K = q.shape[0], k.shape[2]
    for t in (q, k, v):
        t.requires_grad_(True)
    out = attention(q, k, v, torch.ones(B, K, dtype=torch.bool, device=device), causal=True)
    assert out.shape == q.shape
    assert torch.equal(out, torch.zeros_like(out))  # no queries, no batch, or no keys: nothing but zeros
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    for g, t in zip(grads, (q, k, v)):
        assert g.shape == t.shape and torch.equal(g, torch.zeros_like(g))


# ----------------------------------------------------------------------------------------------------------------------
# Non-finite scores
# ----------------------------------------------------------------------------------------------------------------------
def test_ms_nan_in_kept_score_poisons_only_its_row(device):
    scores = _scores(2, 1, 3, 12, device=device)
    scores[1, 0, 2, 4] = math.nan
    mask = _pad([12, 9], 12, device=device)
    out = masked_softmax(scores, mask)
    assert torch.isnan(out[1, 0, 2, :9]).all() and torch.all(out[1, 0, 2, 9:] == 0)
    keep_rows = torch.ones(2, 1, 3, dtype=torch.bool)
    keep_rows[1, 0, 2] = False
    assert_close(out[keep_rows], _ms_ref(scores, mask)[keep_rows])


@pytest.mark.parametrize("how", ["pad2d", "causal", "bool4d", "add4d"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_ms_non_finite_at_masked_position_is_never_read(how, bad, device):
    scores = _scores(2, 1, 4, 8, device=device)
    clean = scores.clone()
    mask, causal = None, False
    if how == "pad2d":
        mask = _pad([8, 5], 8, device=device)
        scores[1, :, :, 6] = bad
    elif how == "causal":
        causal = True
        scores[:, :, 0, 7] = bad
    elif how == "bool4d":
        mask = torch.ones(2, 1, 4, 8, dtype=torch.bool, device=device)
        mask[0, 0, 1, 3] = False
        scores[0, 0, 1, 3] = bad
    else:
        mask = torch.zeros(2, 1, 4, 8, device=device)
        mask[0, 0, 1, 3] = -math.inf
        scores[0, 0, 1, 3] = bad
    out = masked_softmax(scores, mask, causal=causal)
    assert torch.isfinite(out).all()
    assert_close(out, _ms_ref(clean, mask, causal))


def test_ms_pos_inf_kept_score_row_is_nan_like_torch(device):
    scores = _scores(1, 1, 2, 6, device=device)
    scores[0, 0, 0, 2] = math.inf
    out = masked_softmax(scores)
    torch_says = torch.softmax(scores.double(), dim=-1)
    assert torch.isnan(out[0, 0, 0]).all() and torch.isnan(torch_says[0, 0, 0]).all()
    assert_close(out[0, 0, 1], torch_says[0, 0, 1])


def test_ms_neg_inf_scores_are_masked_and_empty_rows_zero(device):
    scores = _scores(1, 2, 3, 10, device=device)
    scores[0, 0, 0] = -math.inf  # a whole row: zeros, not NaN
    scores[0, 1, 1, ::3] = -math.inf  # some entries: exactly 0 there
    mask = _pad([7], 10, device=device)
    scores[0, 0, 2, :7] = -math.inf  # all kept entries -inf, the rest padded: zeros
    out = masked_softmax(scores, mask)
    assert not torch.isnan(out).any()
    assert torch.all(out[0, 0, 0] == 0) and torch.all(out[0, 0, 2] == 0)
    assert torch.all(out[0, 1, 1, ::3] == 0)
    assert_close(out, _ms_ref(scores, mask))


def test_attn_nan_in_query_poisons_only_its_row(device):
    q, k, v = _qkv(device=device)
    q[0, 1, 2, 5] = math.nan
    mask = _pad([20, 11], 20, left=True, device=device)
    out = attention(q, k, v, mask)
    assert torch.isnan(out[0, 1, 2]).all()
    rows = torch.ones(2, 2, 3, dtype=torch.bool)
    rows[0, 1, 2] = False
    assert torch.isfinite(out[rows]).all()
    assert_close(out[rows], _attn_ref(q, k, v, mask)[rows], scale=4)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_attn_non_finite_key_at_masked_position_is_ignored(bad, device):
    q, k, v = _qkv(device=device)
    mask = _pad([20, 13], 20, device=device)
    clean = k.clone()
    k[1, :, 15] = bad  # a padded key inside a block that is partly kept
    out = attention(q, k, v, mask)
    assert torch.isfinite(out).all()
    assert_close(out, _attn_ref(q, clean, v, mask), scale=4)


def test_attn_nan_value_at_masked_key_is_like_eager(device):
    # A masked key's *value* row is multiplied by a probability of exactly 0; 0 * NaN is NaN in the P.V product of
    # the block that holds it, exactly as in HF eager attention and SDPA. Only that sequence is affected.
    q, k, v = _qkv(device=device)
    mask = _pad([20, 13], 20, device=device)
    v[1, :, 15] = math.nan
    out = attention(q, k, v, mask)
    eager = torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * 0.25 + torch.where(
        mask[:, None, None, :], 0.0, -math.inf), dim=-1), v)
    assert torch.isnan(eager[1]).all() and torch.isnan(out[1]).all()
    assert_close(out[0], _attn_ref(q, k, v, mask)[0], scale=4)


# ----------------------------------------------------------------------------------------------------------------------
# Non-finite additive masks
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", ["ms", "attn"])
def test_additive_neg_inf_and_fill_values_are_masked(fn, device):
    add = torch.zeros(2, 1, 3, 20, dtype=torch.float16, device=device)
    add[0, :, :, :4] = -math.inf
    add[1, :, 1, :] = torch.finfo(torch.float16).min  # a whole row masked: zeros
    add = add + add  # HF may add two masks: finfo.min + finfo.min = -inf, still masked
    if fn == "ms":
        scores = _scores(2, 2, 3, 20, device=device)
        out = masked_softmax(scores, add)
        assert torch.all(out[0, :, :, :4] == 0) and torch.all(out[1, :, 1] == 0)
        assert_close(out, _ms_ref(scores, add))
    else:
        q, k, v = _qkv(device=device)
        out = attention(q, k, v, add)
        assert torch.all(out[1, :, 1] == 0)
        assert_close(out, _attn_ref(q, k, v, add), scale=4)
    assert not torch.isnan(out).any()


@pytest.mark.parametrize("fn", ["ms", "attn"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_additive_nan_or_pos_inf_poisons_its_row_never_silently_finite(fn, bad, device):
    # NaN is not "masked" (that would turn a corrupt mask into a plausible result) and +inf is not a valid bias:
    # both make the row NaN, as HF eager attention (scores + mask, softmax) does.
    add = torch.zeros(2, 1, 3, 20, device=device)
    add[0, 0, 1, 6] = bad
    if fn == "ms":
        scores = _scores(2, 2, 3, 20, device=device)
        out = masked_softmax(scores, add)
        ref = _ms_ref(scores, add)
    else:
        q, k, v = _qkv(device=device)
        out = attention(q, k, v, add)
        ref = _attn_ref(q, k, v, add)
    assert torch.isnan(out[0, :, 1]).all() and torch.isnan(ref[0, :, 1]).all()
    rows = torch.ones(out.shape[:3], dtype=torch.bool)
    rows[0, :, 1] = False
    assert torch.isfinite(out[rows]).all()
    assert_close(out[rows], ref[rows], torch.float32, scale=4)


@pytest.mark.parametrize("fn", ["ms", "attn"])
def test_additive_nan_at_causally_hidden_position_is_never_read(fn, device):
    add = torch.zeros(1, 1, 4, 20, device=device)
    add[0, 0, 0, 19] = math.nan  # query 0 sees keys <= 16 with causal (K - Q = 16)
    if fn == "ms":
        scores = _scores(1, 2, 4, 20, device=device)
        out = masked_softmax(scores, add, causal=True)
        ref = _ms_ref(scores, torch.zeros_like(add), causal=True)
    else:
        q, k, v = _qkv(B=1, Q=4, device=device)
        out = attention(q, k, v, add, causal=True)
        ref = _attn_ref(q, k, v, torch.zeros_like(add), causal=True)
    assert torch.isfinite(out).all()
    assert_close(out, ref, torch.float32, scale=4)


# ----------------------------------------------------------------------------------------------------------------------
# Odd scales
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [0.0, -0.7, 1e30, 1e-30, 3])
def test_ms_odd_scales(scale, device):
    scores = _scores(2, 1, 3, 11, device=device)
    mask = _pad([11, 4], 11, device=device)
    out = masked_softmax(scores, mask, causal=True, scale=scale)
    assert torch.isfinite(out).all()
    assert_close(out, _ms_ref(scores, mask, True, scale))
    if scale == 0.0:  # uniform over what each row may see
        kept = (_ms_ref(scores, mask, True, 1.0) > 0).double()
        assert_close(out, kept / kept.sum(-1, keepdim=True).clamp_min(1))


@pytest.mark.parametrize("fn", ["ms", "attn"])
def test_additive_mask_that_requires_grad_is_fine_without_autograd(fn, device):
    mask = torch.zeros(2, 1, 1, 20, device=device, requires_grad=True)
    with torch.no_grad():
        if fn == "ms":
            scores = _scores(2, 1, 3, 20, device=device)
            assert_close(masked_softmax(scores, mask), _ms_ref(scores, mask.detach()))
        else:
            q, k, v = _qkv(device=device)
            assert_close(attention(q, k, v, mask), _attn_ref(q, k, v, mask.detach()), scale=4)


@pytest.mark.parametrize("make", [lambda: np.float32(0.3), lambda: np.float64(0.3), lambda: torch.tensor(0.3),
                                  lambda: torch.tensor([0.3])], ids=["np32", "np64", "tensor0d", "tensor1"])
@pytest.mark.parametrize("fn", ["ms", "attn"])
def test_scale_as_numpy_or_one_element_tensor(fn, make, device):
    # both functions take the same numbers for scale, and give what its float gives
    scale = make()
    if fn == "ms":
        scores = _scores(2, 1, 3, 11, device=device)
        torch.testing.assert_close(masked_softmax(scores, scale=scale), masked_softmax(scores, scale=float(scale)),
                                   rtol=0, atol=0)
    else:
        q, k, v = _qkv(device=device)
        torch.testing.assert_close(attention(q, k, v, scale=scale), attention(q, k, v, scale=float(scale)),
                                   rtol=0, atol=0)


@pytest.mark.parametrize("path", ["single", "chunked"])
@pytest.mark.parametrize("case", ["scores", "scale", "negative_scale", "additive"])
def test_ms_logits_up_to_fp32_max_over_log2e(case, path, device):
    # the kernels take the exponent in base 2 with the logits in log2 units: every logit up to FLT_MAX / log2(e)
    # = 2.36e38 in magnitude keeps torch's softmax (the documented limit; beyond it x * log2(e) overflows)
    from hf_masked_softmax.masks import prepare_mask
    from hf_masked_softmax.ops import masked_softmax_op

    big = 2.3e38
    scores, mask, scale = torch.zeros(1, 1, 2, 40), None, 1.0
    if case == "scores":
        scores[0, 0, :, 5], scores[0, 0, :, 9], scores[0, 0, 1, 30] = big, -big, 2.2e38
    elif case == "scale":
        scores[0, 0, :, 7] = 1.0
        scale = big
    elif case == "negative_scale":  # every kept logit is -2.3e38: a uniform row, not an empty one
        scores += 1.0
        scale = -big
    else:
        mask = torch.zeros(1, 1, 2, 40).index_fill_(3, torch.tensor([11]), big).to(device)
    scores = scores.to(device)
    if path == "single":
        out = masked_softmax(scores, mask, scale=scale)
    else:  # 8-column chunks: the online max and sum over the chunks
        spec = prepare_mask(mask, tuple(scores.shape), scores.device)
        out = masked_softmax_op(scores, mask, spec.kind, spec.threshold, False, scale, 16, 8)
    expected = torch.softmax(scores.double() * scale + (0 if mask is None else mask.double()), dim=-1)
    assert torch.isfinite(out).all()
    assert_close(out, expected)


@pytest.mark.parametrize("scale", [0.0, -0.5, 1e30, 2])
def test_attn_odd_scales(scale, device):
    q, k, v = _qkv(device=device)
    mask = _pad([20, 9], 20, left=True, device=device)
    out = attention(q, k, v, mask, causal=True, scale=scale)
    assert torch.isfinite(out).all()
    assert_close(out, _attn_ref(q, k, v, mask, True, scale), scale=4)


# ----------------------------------------------------------------------------------------------------------------------
# Long rows and big tensors
# ----------------------------------------------------------------------------------------------------------------------
def test_ms_k_262144_one_row(device):
    K = 262144
    scores = _scores(1, 1, 1, K, device=device) * 3
    mask = torch.ones(1, K, dtype=torch.bool, device=device)
    mask[0, :1000] = False
    out = masked_softmax(scores, mask, causal=True)
    assert_close(out, _ms_ref(scores, mask, True))
    assert torch.all(out[0, 0, 0, :1000] == 0)


def test_attn_k_262144_left_padded_decode(device):
    # Decode over a 262144-key cache of which the last 300 keys are real: the kernel walks only the kept range.
    K = 262144
    q, k, v = _qkv(B=1, H=1, Hkv=1, Q=1, K=K, D=16, device=device)
    mask = torch.zeros(1, K, dtype=torch.bool, device=device)
    mask[0, -300:] = True
    out = attention(q, k, v, mask, causal=True)
    assert_close(out, _attn_ref(q, k, v, mask, True), scale=4)


@pytest.mark.gpu
def test_gpu_attn_k_262144_full():
    K = 262144
    q, k, v = _qkv(B=2, H=4, Hkv=2, Q=3, K=K, D=64, dtype=torch.float16, device="cuda")
    mask = torch.ones(2, K, dtype=torch.bool, device="cuda")
    mask[1, : K // 3] = False
    out = attention(q, k, v, mask, causal=True)
    assert_close(out, _attn_ref(q, k, v, mask, True), scale=4)


@pytest.mark.gpu
def test_gpu_ms_over_2_pow_31_strided_scores():
    # A transposed view whose largest offset is past 2**31: the kernel must use 64-bit offsets on strided input.
    B, H, Q, K = 1, 2, 65537, 16385
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs ~12 GB of GPU memory")
    base = torch.empty(B, H, K, Q, device="cuda", dtype=torch.float16).normal_()
    scores = base.transpose(2, 3)
    assert scores.numel() > 2**31
    out = masked_softmax(scores, causal=True, scale=0.5)
    for h, i in [(0, 0), (0, Q - K - 1), (1, Q - K), (1, Q // 2), (1, Q - 1)]:
        lim = i + K - Q  # the last key row i sees; negative: nothing
        row = out[:, h:h + 1, i:i + 1]
        if lim < 0:
            assert torch.all(row == 0)
            continue
        assert_close(row[..., : lim + 1], _ms_ref(scores[:, h:h + 1, i:i + 1, : lim + 1], scale=0.5), torch.float16)
        assert torch.all(row[..., lim + 1:] == 0)


@pytest.mark.gpu
def test_gpu_attn_over_2_pow_31_element_kv():
    # k and v of more than 2**31 elements each (4 GiB fp16 apiece): decode over 2**25 + 64 keys.
    K, D = 2**25 + 64, 64
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs ~10 GB of GPU memory")
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 1, 1, D, device="cuda", dtype=torch.float16, generator=g)
    k = torch.randn(1, 1, K, D, device="cuda", dtype=torch.float16, generator=g)
    v = torch.randn(1, 1, K, D, device="cuda", dtype=torch.float16, generator=g)
    assert k.numel() > 2**31
    mask = torch.ones(1, K, dtype=torch.bool, device="cuda")
    mask[0, : K - 1000] = False  # only the last keys (offsets past 2**31) are kept
    out = attention(q, k, v, mask)
    ref = _attn_ref(q, k[:, :, K - 1000:], v[:, :, K - 1000:])
    assert_close(out, ref, scale=4)
    out = attention(q, k, v)  # and every key; the fp64 reference in chunks of 2**22 keys
    chunks = range(0, K, 2**22)
    s = torch.cat([k[0, 0, c:c + 2**22].double() @ q[0, 0, 0].double() for c in chunks]) * D ** -0.5
    p = torch.softmax(s, -1)
    ref = sum(p[c:c + 2**22] @ v[0, 0, c:c + 2**22].double() for c in chunks)
    assert_close(out[0, 0, 0], ref, torch.float16, scale=4)
