"""Attention dropout inside the fused kernels: the mask the kernels draw is the reference's Philox mask bit for bit
(read straight off the forward's output), forward and backward match the fp64 reference under that mask for every
mask form, the rate and seeds behave, the edge probabilities are exact, and the errors come at the boundary."""
import importlib
from unittest import mock

import numpy as np
import pytest
import torch

import hf_masked_softmax
from hf_masked_softmax.reference import attention_reference, dropout_keep_reference, philox4x32
from test_attention import _pad_mask as _pad
from tolerances import assert_close

attn_mod = importlib.import_module("hf_masked_softmax.attention")
ops = importlib.import_module("hf_masked_softmax.ops")

OUT_SCALE = 4.0
GRAD_SCALE = {torch.float32: 8.0, torch.float16: 10.0, torch.bfloat16: 10.0}


def _seed_drawn_after(manual_seed, device):
    """The Philox key a dropout call draws first after ``torch.manual_seed(manual_seed)``."""
    torch.manual_seed(manual_seed)
    return int(ops._new_seed(device))


def _qkv(B, H, Hkv, Q, K, D, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=g).to(device, dtype).requires_grad_(True)
                 for shape in ((B, H, Q, D), (B, Hkv, K, D), (B, Hkv, K, D)))


def _mask(form, B, H, Q, K, device):
    """(mask, causal) for one mask form; lengths cross the interpreter's 16-wide blocks."""
    g = torch.Generator().manual_seed(3)
    if form == "none":
        return None, False
    if form in ("pad-left-causal", "pad-right"):
        side = "right" if form == "pad-right" else "left"
        return _pad([K, K - 13, 5][:B], K, side, device), form.endswith("causal")
    if form == "pad-holes":  # a padding mask that is no key range: read block by block
        m = torch.ones(B, K, dtype=torch.bool)
        m[0, 5:9] = False
        m[-1, 20:] = False
        return m.to(device), True
    keep = torch.rand(B, 1, Q, K, generator=g) > 0.3
    if form == "bool4d":
        return keep.to(device), False
    assert form == "add4d"
    return torch.zeros(B, 1, Q, K).masked_fill(~keep, float("-inf")).to(device), False


def test_philox_reference_known_answers():
    # Random123's published Philox-4x32-10 test vectors: the reference is Philox itself, not a lookalike
    def words(key, counter):
        return [int(w) for w in philox4x32(key, *(torch.tensor([c]) for c in counter))]

    assert words(0, (0, 0, 0, 0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert words(2**64 - 1, (2**32 - 1,) * 4) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert words(0x299F31D0A4093822, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344)) == [
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


@pytest.mark.parametrize("path", ["prefill", "split-keys"])
@pytest.mark.parametrize("causal", [False, True])
def test_the_kernel_draws_the_reference_mask(device, path, causal):
    # q = 0 makes every kept probability 1/n (n keys a row sees); v = the identity puts key j's weight in output
    # column j, so the output shows the forward's dropout mask entry by entry.
    B, H, Q, K, D = 2, 3, 21 if path == "prefill" else 5, 29, 32
    q = torch.zeros(B, H, Q, D, device=device)
    k = torch.randn(B, H, K, D, device=device)
    v = torch.eye(K, D, device=device).expand(B, H, K, D)
    pad = torch.ones(B, K, dtype=torch.bool, device=device)
    pad[1, 20:] = False
    p = 0.3
    seed = _seed_drawn_after(11, device)
    torch.manual_seed(11)
    with mock.patch.object(attn_mod, "_is_decode", lambda n: path != "prefill"), \
            mock.patch.object(attn_mod, "_num_splits", lambda *a: 1 if path == "prefill" else 3):
        out = hf_masked_softmax.attention(q, k, v, pad, causal=causal, dropout_p=p)
    thr, keep_scale = attn_mod.dropout_threshold(p)
    keep = dropout_keep_reference(seed, (B, H, Q, K), thr, device=device)
    sees = pad[:, None, None, :].expand(B, H, Q, K).clone()
    if causal:
        sees &= torch.ones(Q, K, dtype=torch.bool, device=device).tril(K - Q)
    n = sees.sum(-1, keepdim=True).clamp(min=1)
    expected = (keep & sees).double() * keep_scale / n
    assert_close(out[..., :K], expected, scale=OUT_SCALE)
    assert torch.equal(out[..., :K] > 0, keep & sees)
    assert 0.55 < keep[sees].float().mean().item() < 0.85  # dropout was active at about its rate


@pytest.mark.parametrize("form", ["none", "pad-left-causal", "pad-right", "pad-holes", "bool4d", "add4d"])
def test_forward_and_backward_match_the_reference_under_the_kernels_mask(device, form):
    B, H, Hkv, Q, K, D = 3, 4, 2, 23, 37, 32
    q, k, v = _qkv(B, H, Hkv, Q, K, D, torch.float32, device)
    mask, causal = _mask(form, B, H, Q, K, device)
    _check_against_reference(q, k, v, mask, causal, 0.2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_matches_the_reference(device, dtype):
    q, k, v = _qkv(2, 2, 2, 19, 33, 64, dtype, device, seed=1)
    mask, causal = _mask("pad-left-causal", 2, 2, 19, 33, device)
    _check_against_reference(q, k, v, mask, causal, 0.1)


def _check_against_reference(q, k, v, mask, causal, p):
    B, H, Q, _ = q.shape
    K = k.shape[2]
    seed = _seed_drawn_after(5, q.device)
    torch.manual_seed(5)
    out = hf_masked_softmax.attention(q, k, v, mask, causal=causal, dropout_p=p)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.device, out.dtype)
    grads = torch.autograd.grad(out, (q, k, v), do)
    thr, keep_scale = attn_mod.dropout_threshold(p)
    keep = dropout_keep_reference(seed, (B, H, Q, K), thr, device=q.device)
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ref = attention_reference(qd, kd, vd, mask, causal=causal, compute_dtype=torch.float64,
                              dropout=(keep, keep_scale))
    ref_grads = torch.autograd.grad(ref, (qd, kd, vd), do.double())
    assert not torch.equal(keep, torch.ones_like(keep))
    assert_close(out, ref, q.dtype, scale=OUT_SCALE)
    for g, r in zip(grads, ref_grads):
        assert torch.isfinite(g).all()
        assert_close(g, r, q.dtype, scale=GRAD_SCALE[q.dtype])


def test_the_reference_mask_has_the_rate_and_no_pattern():
    # statistics on 2M draws of the reference (the tests above show the kernels draw exactly it)
    B, H, Q, K = 4, 8, 256, 256
    p = 0.1
    thr, _ = attn_mod.dropout_threshold(p)
    keep = dropout_keep_reference(1234567, (B, H, Q, K), thr).float()
    applied = thr / 65536
    sigma = (applied * (1 - applied) / keep.numel()) ** 0.5
    assert abs((1 - keep.mean().item()) - applied) < 5 * sigma
    # each of the eight keys that share one Philox block, each head and each row parity drops at the same rate
    for lanes in (keep.unflatten(-1, (K // 8, 8)).mean(dim=(0, 1, 2, 3)), keep.mean(dim=(0, 2, 3)),
                  keep.unflatten(2, (Q // 2, 2)).mean(dim=(0, 1, 2, 4))):
        n = keep.numel() / lanes.numel()
        assert ((1 - lanes - applied).abs() < 5 * (applied * (1 - applied) / n) ** 0.5).all()
    # neighbouring keys (same block and across blocks) and neighbouring rows are uncorrelated
    x = keep - keep.mean()
    for a, b in ((x[..., 1:], x[..., :-1]), (x[..., 8:], x[..., :-8]), (x[:, :, 1:], x[:, :, :-1])):
        corr = (a * b).mean() / x.var()
        assert abs(corr.item()) < 5 / a.numel() ** 0.5
    other = dropout_keep_reference(1234568, (B, H, Q, K), thr).float()
    agree = (keep == other).float().mean().item()
    assert abs(agree - ((1 - applied) ** 2 + applied ** 2)) < 0.01  # another key: an independent mask


def test_seeds_repeat_under_manual_seed_and_calls_differ(device):
    q, k, v = _qkv(2, 2, 2, 17, 24, 16, torch.float32, device)
    torch.manual_seed(0)
    a = hf_masked_softmax.attention(q, k, v, dropout_p=0.5)
    b = hf_masked_softmax.attention(q, k, v, dropout_p=0.5)
    torch.manual_seed(0)
    a2 = hf_masked_softmax.attention(q, k, v, dropout_p=0.5)
    assert torch.equal(a, a2)
    assert not torch.equal(a, b)


def test_activation_checkpointing_recomputes_the_same_mask(device):
    # torch.utils.checkpoint restores torch's generators before recomputing the forward, so the recomputation draws
    # the same key and mask: gradients equal those of the plain run (HF's gradient_checkpointing relies on this)
    q, k, v = _qkv(2, 2, 2, 20, 26, 16, torch.float32, device)
    mask, causal = _mask("pad-left-causal", 2, 2, 20, 26, device)

    def f(q, k, v):
        return hf_masked_softmax.attention(q, k, v, mask, causal=causal, dropout_p=0.3) * 2.0

    do = torch.randn(2, 2, 20, 16, generator=torch.Generator().manual_seed(1)).to(device)
    torch.manual_seed(4)
    plain = torch.autograd.grad(f(q, k, v), (q, k, v), do)
    torch.manual_seed(4)
    out = torch.utils.checkpoint.checkpoint(f, q, k, v, use_reentrant=False)
    torch.manual_seed(99)  # the recomputation must not depend on the generator's state at backward time
    recomputed = torch.autograd.grad(out, (q, k, v), do)
    for a, b in zip(plain, recomputed):
        assert torch.equal(a, b)


def test_probability_zero_is_no_dropout_and_one_drops_everything(device):
    q, k, v = _qkv(2, 2, 1, 18, 30, 16, torch.float32, device)
    pad = torch.ones(2, 30, dtype=torch.bool, device=device)
    pad[0, 25:] = False
    plain = hf_masked_softmax.attention(q, k, v, pad, causal=True)
    assert torch.equal(hf_masked_softmax.attention(q, k, v, pad, causal=True, dropout_p=0.0), plain)
    # below half of 2**-16 the probability rounds to 0: no dropout, exactly
    assert torch.equal(hf_masked_softmax.attention(q, k, v, pad, causal=True, dropout_p=1e-6), plain)
    out = hf_masked_softmax.attention(q, k, v, pad, causal=True, dropout_p=1.0)
    assert torch.equal(out, torch.zeros_like(out))
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_dropout_threshold_rounds_to_sixteen_bits():
    assert attn_mod.dropout_threshold(0.0) == (0, 1.0)
    thr, keep_scale = attn_mod.dropout_threshold(0.1)
    assert thr == 6554 and keep_scale == pytest.approx(1 / (1 - 6554 / 65536), rel=1e-15)
    assert abs(thr / 65536 - 0.1) <= 2**-17
    assert attn_mod.dropout_threshold(1.0) == (65536, 0.0)


@pytest.mark.parametrize("bad, error", [(-0.1, ValueError), (1.5, ValueError), (float("nan"), ValueError),
                                        (True, TypeError), ("0.1", TypeError), (torch.ones(2) * 0.1, ValueError),
                                        (torch.tensor(0.1, requires_grad=True), ValueError)])
def test_bad_dropout_probabilities_are_refused(device, bad, error):
    q, k, v = _qkv(1, 1, 1, 4, 4, 16, torch.float32, device)
    with pytest.raises(error, match="dropout_p"):
        hf_masked_softmax.attention(q, k, v, dropout_p=bad)


@pytest.mark.parametrize("make", [lambda: np.float32(0.25), lambda: np.float64(0.25), lambda: torch.tensor(0.25),
                                  lambda: torch.tensor([0.25])], ids=["np32", "np64", "tensor0d", "tensor1"])
def test_dropout_p_takes_the_numbers_scale_takes(device, make):
    # NumPy numbers and one-element tensors, as scale: the same mask and output as the float under the same seed
    q, k, v = _qkv(1, 2, 2, 8, 20, 16, torch.float32, device)
    torch.manual_seed(3)
    expected = hf_masked_softmax.attention(q, k, v, dropout_p=0.25)
    torch.manual_seed(3)
    assert torch.equal(hf_masked_softmax.attention(q, k, v, dropout_p=make()), expected)


def test_reference_fallback_draws_the_same_mask(device):
    # without kernels (CPU without the interpreter) the public function and the operators take the reference path,
    # which applies the kernels' own Philox mask: the same result and gradients
    q, k, v = _qkv(2, 2, 2, 20, 26, 16, torch.float32, device)
    mask, causal = _mask("pad-left-causal", 2, 2, 20, 26, device)
    results = []
    for take in (True, False):
        with mock.patch.object(ops, "kernels_take", lambda t: take):
            torch.manual_seed(9)
            out = hf_masked_softmax.attention(q, k, v, mask, causal=causal, dropout_p=0.25)
            grads = torch.autograd.grad(out.sum(), (q, k, v))
            seed = torch.tensor([77], dtype=torch.int64, device=device)
            out_op, lse = ops.attention_op(q, k, v, mask, 1, 0.0, causal, 0.25, 16384, seed)
            grads_op = ops.attention_backward_op(torch.ones_like(out_op), q, k, v, out_op, lse, mask, 1, 0.0, causal,
                                                 0.25, 16384, seed)
        results.append((out, *grads, out_op, *grads_op))
    for a, b in zip(*results):
        assert_close(a, b.double(), scale=GRAD_SCALE[torch.float32])


def test_compiled_dropout_runs_forward_and_backward(device, monkeypatch):
    # the compiled graph draws its key through its own generator: check the rate (q = 0, v = identity shows the
    # mask, as above) and that gradients flow. Inductor's on-disk graph cache stays out of it: it keys graphs by the
    # operators' names, so a graph compiled by another version of this package could come back with stale shapes.
    import torch._inductor.config

    monkeypatch.setattr(torch._inductor.config, "fx_graph_cache", False)
    B, H, Q, K, D = 2, 2, 20, 26, 32
    q = torch.zeros(B, H, Q, D, device=device, requires_grad=True)
    k = torch.randn(B, H, K, D, device=device, requires_grad=True)
    v = torch.eye(K, D, device=device).expand(B, H, K, D).clone().requires_grad_(True)
    fn = torch.compile(lambda q, k, v: hf_masked_softmax.attention(q, k, v, dropout_p=0.5), fullgraph=True)
    out = fn(q, k, v)
    assert 0.4 < (out[..., :K] == 0).float().mean().item() < 0.6
    kept = out[..., :K][out[..., :K] > 0]
    assert_close(kept, torch.full_like(kept, 2.0 / K, dtype=torch.float64), scale=OUT_SCALE)
    q, k, v = _qkv(B, H, H, Q, K, D, torch.float32, device)
    out = fn(q, k, v)
    grads = torch.autograd.grad((out * torch.randn_like(out)).sum(), (q, k, v))
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


# ---------------------------------------------------------------------------------------------------------------
# GPU, real sizes: the compiled kernels (their tiles, register layouts and bf16 dots) against the reference mask
# ---------------------------------------------------------------------------------------------------------------

def _gpu_pad(B, K, lo, side, seed):
    lengths = torch.randint(lo, K + 1, (B,), generator=torch.Generator().manual_seed(seed)).tolist()
    return _pad(lengths, K, side, "cuda")


def _bthd(B, H, T, D, dtype, seed):
    # HF's layout: [B, T, H, D] projections seen as [B, H, T, D]
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, T, H, D, generator=g).to("cuda", dtype).transpose(1, 2).requires_grad_(True)
                 for _ in range(3))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", ["gpt2-left", "bert-right", "d128-left"])
def test_gpu_real_sizes_match_the_reference_under_the_kernels_mask(dtype, shape):
    if shape == "gpt2-left":
        B, H, T, D, causal, side = 2, 12, 1024, 64, True, "left"
    elif shape == "d128-left":  # head dim 128's own launch settings with dropout
        B, H, T, D, causal, side = 2, 8, 768, 128, True, "left"
    else:
        B, H, T, D, causal, side = 4, 12, 512, 64, False, "right"
    q, k, v = _bthd(B, H, T, D, dtype, seed=4)
    _check_against_reference(q, k, v, _gpu_pad(B, T, T // 2, side, 5), causal, 0.1)


@pytest.mark.gpu
def test_gpu_the_kernel_draws_the_reference_mask_at_real_tiles():
    # the v = identity read-out of the forward's mask with the GPU's block sizes (64 and 128 keys per tile)
    B, H, Q, K, D = 2, 12, 256, 128, 128
    q = torch.zeros(B, H, Q, D, device="cuda", dtype=torch.float16)
    k = torch.randn(B, H, K, D, device="cuda", dtype=torch.float16)
    v = torch.eye(K, D, device="cuda", dtype=torch.float16).expand(B, H, K, D)
    seed = _seed_drawn_after(21, "cuda")
    torch.manual_seed(21)
    out = hf_masked_softmax.attention(q, k, v, dropout_p=0.5)
    keep = dropout_keep_reference(seed, (B, H, Q, K), attn_mod.dropout_threshold(0.5)[0], device="cuda")
    assert torch.equal(out[..., :K] > 0, keep)
