"""Autograd beyond one backward: double backward, masks edited between forward and backward, torch.func transforms,
forward-mode AD, autocast, and torch.compile's guards on the public function. Each either works (checked against the
fp64 reference) or raises a clear error; none may return silently wrong derivatives."""
import importlib

import pytest
import torch

import hf_masked_softmax
from hf_masked_softmax import attention, masked_softmax
from hf_masked_softmax.reference import attention_reference, masked_softmax_reference
from tolerances import assert_close

attn_mod = importlib.import_module("hf_masked_softmax.attention")
ops_mod = importlib.import_module("hf_masked_softmax.ops")


def _qkv(device, B=2, H=2, Hkv=1, Q=5, K=20, D=16, grad=True, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, h, n, D, generator=g).to(device, dtype) for h, n in ((H, Q), (Hkv, K), (Hkv, K)))
    return tuple(t.requires_grad_(grad) for t in (q, k, v))


def _pad(device, lengths=(20, 11), K=20):
    return (torch.arange(K)[None] < torch.tensor(lengths)[:, None]).to(device)


@pytest.mark.parametrize("fn", ["attention", "masked_softmax"])
def test_double_backward_is_a_clear_error_and_first_order_still_right(fn, device):
    if fn == "attention":
        inputs = _qkv(device)
        leaves = [t.detach().double().requires_grad_(True) for t in inputs]
        out = attention(*inputs, _pad(device), causal=True)
        ref = attention_reference(*leaves, _pad(device), causal=True, compute_dtype=torch.float64)
    else:
        scores = torch.randn(2, 2, 5, 20, generator=torch.Generator().manual_seed(1)).to(device).requires_grad_(True)
        inputs, leaves = (scores,), [scores.detach().double().requires_grad_(True)]
        out = masked_softmax(scores, _pad(device), causal=True, scale=0.5)
        ref = masked_softmax_reference(leaves[0], _pad(device), causal=True, scale=0.5, compute_dtype=torch.float64,
                                       out_dtype=torch.float64)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(device)
    grads = torch.autograd.grad((out * w).sum(), inputs, create_graph=True)
    ref_grads = torch.autograd.grad((ref * w.double()).sum(), leaves)
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, scale=8)
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(sum(g.sum() for g in grads), inputs)
    # mixed with terms that do have second derivatives, it still raises instead of dropping the kernels' part
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(grads[0].sum() + (inputs[0] ** 2).sum(), inputs[0])


@pytest.mark.parametrize("form", ["pad-holes", "bool4d", "add4d"])
def test_mask_edited_between_forward_and_backward_is_refused(form, device):
    # the eager function saves the mask as autograd does any saved tensor: an in-place edit makes the backward raise
    # (as the custom operator's registered autograd does) rather than differentiate a forward that never ran
    q, k, v = _qkv(device)
    if form == "pad-holes":
        mask = _pad(device)
        mask[0, 5] = False
    elif form == "bool4d":
        mask = (torch.rand(2, 1, 5, 20, generator=torch.Generator().manual_seed(3)) > 0.3).to(device)
    else:
        mask = torch.zeros(2, 1, 1, 20, device=device)
        mask[1, ..., 13:] = torch.finfo(torch.float32).min
    out = attention(q, k, v, mask)
    if form == "add4d":
        mask[0, ..., 3] = torch.finfo(torch.float32).min
    else:
        mask[0, ..., 7] = False
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_vmap_runs_the_operators_and_matches_a_loop(device):
    q, k, v = _qkv(device, grad=False)
    batched = torch.func.vmap(lambda x: attention(x[None], k[:1], v[:1], causal=True)[0])(q[0][:, None])
    assert_close(batched[:, 0], attention(q[:1], k[:1], v[:1], causal=True)[0], scale=4)
    scores = torch.randn(3, 2, 4, 9, generator=torch.Generator().manual_seed(4)).to(device)
    y = torch.func.vmap(lambda s: masked_softmax(s[None], causal=True)[0])(scores)
    torch.testing.assert_close(y, masked_softmax(scores, causal=True), rtol=0, atol=0)


@pytest.mark.parametrize("fn", ["attention", "masked_softmax"])
@pytest.mark.parametrize("how", ["jvp", "forward_ad"])
def test_forward_mode_ad_is_a_clear_error_not_a_lost_tangent(fn, how, device):
    from torch.autograd import forward_ad

    q, k, v = _qkv(device, grad=False)
    call = (lambda x: attention(x, k, v)) if fn == "attention" else (lambda x: masked_softmax(x))
    with pytest.raises(NotImplementedError, match="forward-mode"):
        if how == "jvp":
            torch.func.jvp(call, (q,), (torch.ones_like(q),))
        else:
            with forward_ad.dual_level():
                call(forward_ad.make_dual(q, torch.ones_like(q)))
    with forward_ad.dual_level():  # inside a forward-AD level, inputs without tangents run as usual
        assert_close(call(q), call(q.clone()), scale=1)


def test_forward_mode_ad_works_on_the_reference_path(monkeypatch):
    # where the kernels do not run (the plain-PyTorch reference), forward mode has its derivative
    monkeypatch.setattr(ops_mod, "kernels_take", lambda t: False)
    monkeypatch.setattr(importlib.import_module("hf_masked_softmax.masked_softmax"), "kernels_take", lambda t: False)
    q, k, v = _qkv("cpu", grad=False)
    tangent = torch.randn(q.shape, generator=torch.Generator().manual_seed(5))
    _, t = torch.func.jvp(lambda x: attention(x, k, v, causal=True), (q,), (tangent,))
    _, t_ref = torch.func.jvp(lambda x: attention_reference(x, k, v, causal=True), (q,), (tangent,))
    torch.testing.assert_close(t, t_ref)


def test_autocast_runs_the_fused_kernel_in_the_autocast_dtype(device):
    # as SDPA under autocast: fp32 q and k with bf16 v (a Llama layer after its rotary embedding) is not an error
    q, k, v = _qkv(device, grad=False)
    dt = torch.bfloat16
    with torch.autocast(device_type=torch.device(device).type, dtype=dt):
        out = attention(q, k, v.to(dt), _pad(device), causal=True)
    assert out.dtype == dt
    ref = attention_reference(*(t.to(dt).double() for t in (q, k, v)), _pad(device), causal=True,
                              compute_dtype=torch.float64)
    assert_close(out, ref, scale=4)
    out64 = None
    with torch.autocast(device_type=torch.device(device).type, dtype=dt):
        with pytest.raises(TypeError, match="float64"):  # autocast leaves float64 alone, and the kernels refuse it
            out64 = attention(q.double(), k.double(), v.double())
    assert out64 is None


def test_the_public_function_is_bound_at_import():
    # a binding that changed on the first call made torch.compile guard on it and compile a second time
    assert attn_mod._ops_attention is ops_mod.attention
    assert hf_masked_softmax.attention is attn_mod.attention
