"""The key bounds of 4D masks (``masks.mask_bounds``): computed right for every layout, and the forward visits only
the key blocks inside them, so a static cache's unfilled keys are never read. Keys and values outside the bounds are
NaN here: a kernel that reads and masks them (probability 0 times NaN) returns NaN, one that skips them does not."""
import importlib

import pytest
import torch

from hf_masked_softmax import attention
from hf_masked_softmax.masks import BOUNDS_CHUNK, bounds_layout, key_bounds, mask_bounds, prepare_mask, row_bounds
from hf_masked_softmax.reference import attention_reference
from tolerances import assert_close

attn_mod = importlib.import_module("hf_masked_softmax.attention")
masks_mod = importlib.import_module("hf_masked_softmax.masks")


def _expected_bounds(keep, layout):
    """The key bounds per row chunk from a dense ``[B, H, Q, K]`` keep-mask, in plain PyTorch."""
    B, H, Q, K = keep.shape
    out = torch.empty(layout.per_b, layout.per_h, layout.chunks, 2, dtype=torch.int64)
    for b in range(layout.per_b):
        for h in range(layout.per_h):
            for c in range(layout.chunks):
                rows = keep[b, h, c * BOUNDS_CHUNK: min((c + 1) * BOUNDS_CHUNK, layout.rows)]
                cols = rows.any(0).nonzero().flatten()
                out[b, h, c] = torch.tensor([cols.min(), cols.max() + 1] if cols.numel() else [K, 0])
    return out


def _expected_row_bounds(keep, layout):
    """The query bounds per chunk of 16 keys from a dense ``[B, H, Q, K]`` keep-mask (every query row of it)."""
    B, H, Q, K = keep.shape
    n_k = -(-K // BOUNDS_CHUNK)
    out = torch.empty(layout.per_b, layout.per_h, n_k, 2, dtype=torch.int64)
    for b in range(layout.per_b):
        for h in range(layout.per_h):
            for c in range(n_k):
                rows = keep[b, h, :, c * BOUNDS_CHUNK: (c + 1) * BOUNDS_CHUNK].any(1).nonzero().flatten()
                out[b, h, c] = torch.tensor([rows.min(), rows.max() + 1] if rows.numel() else [Q, 0])
    return out


@pytest.mark.parametrize("own_shape", [(3, 1, 1, 45), (3, 1, 37, 45), (1, 2, 37, 45), (3, 2, 5, 45), (1, 1, 1, 45),
                                       (3, 2, 16, 45), (3, 2, 17, 45)])
@pytest.mark.parametrize("form", ["bool", "additive"])
def test_bounds_of_every_layout_match_the_keep_mask(own_shape, form, device):
    B, H, Q, K = 3, 2, own_shape[2] if own_shape[2] > 1 else 7, 45
    g = torch.Generator().manual_seed(sum(own_shape))
    keep = torch.rand(own_shape, generator=g) > 0.8
    keep[..., :3] = False  # bounds that start past key 0 and end before the last key
    keep[..., -4:] = False
    if own_shape[0] == 3:
        keep[1] = False  # a sequence that keeps nothing: (K, 0)
    if form == "bool":
        mask = keep
    else:  # finite values, -inf, HF's finfo.min and NaN (kept, as the kernels keep it)
        mask = torch.where(keep, torch.randn(own_shape, generator=g), torch.finfo(torch.float32).min)
        mask[..., 3:5] = float("-inf")
        keep[..., 3:5] = False
        if own_shape[0] == 3:
            mask[2, ..., 41] = float("nan")
            keep[2, ..., 41] = True
    mask = mask.to(device)
    spec = prepare_mask(mask, (B, H, Q, K), mask.device)
    layout = bounds_layout(spec.tensor)
    assert (layout.per_b, layout.per_h) == (B if own_shape[0] > 1 else 1, H if own_shape[1] > 1 else 1)
    assert layout.rows == (Q if own_shape[2] > 1 else 1)
    raw = mask_bounds(spec.tensor, form == "additive", spec.threshold)
    assert raw.dtype == torch.int32
    assert tuple(raw.shape) == (layout.per_b, layout.per_h, layout.chunks + -(-K // BOUNDS_CHUNK), 2)
    dense = keep.expand(B, H, Q, K)
    assert torch.equal(key_bounds(raw, K).cpu().long(), _expected_bounds(dense, layout))
    assert torch.equal(row_bounds(raw, Q, K).cpu().long(), _expected_row_bounds(dense, layout))


def _nan_outside(k, v, first_out):
    k, v = k.clone(), v.clone()
    k[:, :, first_out:] = float("nan")
    v[:, :, first_out:] = float("nan")
    return k, v


@pytest.mark.parametrize("own_shape", [(2, 1, 1, 9000), (2, 1, 17, 16484)])
def test_bounds_of_long_rows_merge_the_key_programs(own_shape, device):
    # one row over 9000 keys: three programs of 4096 keys; 17 rows over 16484 keys: 64 programs of 256 keys, some
    # looping twice. Each sequence keeps keys in one program's share only (first / last), or spread over several.
    B, _, Q, K = own_shape
    keep = torch.zeros(own_shape, dtype=torch.bool)
    keep[0, ..., K - 5] = True  # the last program's share only
    keep[1, ..., 7] = True  # the first's only ...
    keep[1, :, -1, K // 2] = True  # ... and the middle's, in the last row (chunk 1 of two where Q = 17)
    mask = keep.to(device)
    spec = prepare_mask(mask, (B, 3, Q, K), mask.device)
    layout = bounds_layout(spec.tensor)
    raw = mask_bounds(spec.tensor, False, 0.0)
    assert torch.equal(key_bounds(raw, K).cpu().long(), _expected_bounds(keep.expand(B, 3, Q, K), layout))
    assert torch.equal(row_bounds(raw, Q, K).cpu().long(), _expected_row_bounds(keep.expand(B, 3, Q, K), layout))


@pytest.mark.parametrize("case", ["static-decode", "static-decode-gqa-split", "static-prefill", "documents"])
def test_forward_skips_the_keys_outside_a_4d_masks_bounds(case, device, monkeypatch):
    # HF's static cache: K is the cache's length, the mask keeps the keys written so far (and causality); the keys
    # past them are all outside every row's bounds. Keys from 128 on (a multiple of every key block) are NaN.
    monkeypatch.setattr(attn_mod, "_PLANS", {})
    g = torch.Generator().manual_seed(len(case))
    B, H, Hkv, D, K = 2, 4, 2 if "gqa" in case else 4, 16, 200
    Q = {"static-prefill": 37, "documents": 40}.get(case, 1)
    q = torch.randn(B, H, Q, D, generator=g).to(device)
    k = torch.randn(B, Hkv, K, D, generator=g).to(device)
    v = torch.randn(B, Hkv, K, D, generator=g).to(device)
    j = torch.arange(K)
    if case.startswith("static-decode"):
        pos = torch.tensor([90, 127])  # each sequence's position; left padding of 30 keys in the first
        keep = (j[None, :] <= pos[:, None]) & ~((torch.arange(B)[:, None] == 0) & (j[None, :] < 30))
        mask = keep[:, None, None, :]
        additive = False
    elif case == "static-prefill":  # a 37-token prompt into a 200-key cache: causal over its own keys
        i = torch.arange(Q)
        mask = (j[None, :] <= i[:, None])[None, None].expand(B, 1, Q, K)
        additive = True
    else:  # packed documents, block-diagonal: rows 0-15 see keys 0-15, rows 16-39 keys 16-39
        i = torch.arange(Q)
        doc = (i >= 16).long()
        kdoc = torch.where(j < 16, 0, torch.where(j < 40, 1, 2))
        mask = (doc[:, None] == kdoc[None, :])[None, None].expand(B, 1, Q, K).clone()
        additive = False
    if additive:
        mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    mask = mask.to(device)
    kn, vn = _nan_outside(k, v, 128)
    splits = 3 if "split" in case else 1
    monkeypatch.setattr(attn_mod, "_num_splits", lambda *a: splits)
    out = attention(q, kn, vn, mask)
    ref = attention_reference(q.double(), k.double(), v.double(), mask.double() if additive else mask)
    assert torch.isfinite(out).all()
    assert_close(out, ref, scale=4.0)
    (plan,) = attn_mod._PLANS.values()
    assert plan.launch.kwargs["B4D"]
    if "gqa" in case:
        assert plan.launch.kwargs["PACK"]
    # without the bounds every key block is read and masked: NaN times a probability of 0
    monkeypatch.setattr(attn_mod, "MASK4D_BOUNDS", False)
    assert torch.isnan(attention(q, kn, vn, mask)).any()


def test_documents_skip_the_other_documents_blocks(device, monkeypatch):
    # block-diagonal rows see only their own document: NaN in another document's keys (whole key blocks of every
    # backend: 128 keys) leaves them untouched
    monkeypatch.setattr(attn_mod, "_PLANS", {})
    g = torch.Generator().manual_seed(3)
    B, H, D, T = 1, 2, 16, 256
    q = torch.randn(B, H, T, D, generator=g).to(device)
    k = torch.randn(B, H, T, D, generator=g).to(device)
    v = torch.randn(B, H, T, D, generator=g).to(device)
    doc = (torch.arange(T) >= 128).long()
    mask = (doc[:, None] == doc[None, :])[None, None].to(device)
    out = attention(q[:, :, :128], torch.where(doc[:, None].to(device) == 1, float("nan"), k),
                    torch.where(doc[:, None].to(device) == 1, float("nan"), v), mask[:, :, :128], causal=True)
    ref = attention_reference(q[:, :, :128].double(), k.double(), v.double(), mask[:, :, :128], causal=True)
    assert torch.isfinite(out).all()
    assert_close(out, ref, scale=4.0)


@pytest.mark.parametrize("form", ["bool-per-head", "additive-documents"])
def test_gradients_with_4d_mask_bounds(form, device, monkeypatch):
    # training takes the bounds too: the dq kernel visits the forward's key blocks, dk / dv per key block the query
    # blocks that keep one of its keys; gradients against the fp64 reference, and both kernels are bounded
    monkeypatch.setattr(attn_mod, "_PLANS", {})
    monkeypatch.setattr(attn_mod, "_BWD_PLANS", {})
    g = torch.Generator().manual_seed(9)
    B, H, Q, K, D = 2, 2, 37, 53, 16
    q, k, v = (torch.randn(B, H, n, D, generator=g).to(device).requires_grad_(True) for n in (Q, K, K))
    i, j = torch.arange(Q)[:, None], torch.arange(K)[None, :]
    if form == "bool-per-head":  # head 0 causal over the first 30 keys, head 1 a window of 8
        mask = torch.stack([(j <= i) & (j < 30), (j <= i) & (j > i - 8)])[None].expand(B, H, Q, K).clone()
        mask[1, :, :, :3] = False
    else:  # two documents: rows 0-19 see keys 0-19, rows 20-36 keys 20-52
        same = (i >= 20) == (j >= 20)
        mask = torch.zeros(1, 1, Q, K).masked_fill(~same, float("-inf"))
    mask = mask.to(device)
    out = attention(q, k, v, mask)
    do = torch.randn(out.shape, generator=g).to(device)
    grads = torch.autograd.grad(out, (q, k, v), do)
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ref = attention_reference(qd, kd, vd, mask.double() if mask.is_floating_point() else mask)
    ref_grads = torch.autograd.grad(ref, (qd, kd, vd), do.double())
    assert_close(out, ref.detach(), scale=4.0)
    for got, want in zip(grads, ref_grads):
        assert_close(got, want, scale=8.0)
    (plan,) = attn_mod._BWD_PLANS.values()
    assert plan.dq.kwargs["B4D"] and plan.dkdv.kwargs["B4D"]


@pytest.mark.parametrize("Q, K", [(0, 5), (3, 0), (20, 1)])
def test_empty_and_tiny_4d_masks(Q, K, device):
    # no queries or no keys: nothing to read (an empty mask's data must not be), zeros out; one key: a bound of it
    g = torch.Generator().manual_seed(Q + K)
    q = torch.randn(2, 2, Q, 16, generator=g).to(device)
    k, v = (torch.randn(2, 2, K, 16, generator=g).to(device) for _ in range(2))
    mask = (torch.rand(2, 1, Q, K, generator=g) > 0.5).to(device)
    out = attention(q, k, v, mask)
    assert out.shape == q.shape and torch.isfinite(out).all()
    assert_close(out, attention_reference(q.double(), k.double(), v.double(), mask), scale=4.0)


def test_the_backward_skips_the_other_documents_rows(device, monkeypatch):
    # two packed documents of 128 tokens (whole blocks on every backend): a NaN in the second document's dO reaches
    # neither the first document's dk / dv (the row bounds keep its key blocks from the second's rows) nor its dq
    monkeypatch.setattr(attn_mod, "_BWD_PLANS", {})
    g = torch.Generator().manual_seed(11)
    B, H, T, D = 1, 2, 256, 16
    q, k, v = (torch.randn(B, H, T, D, generator=g).to(device).requires_grad_(True) for _ in range(3))
    doc = torch.arange(T) >= 128
    mask = (doc[:, None] == doc[None, :])[None, None].to(device)
    out = attention(q, k, v, mask, causal=True)
    do = torch.randn(out.shape, generator=g).to(device)
    do[:, :, 128:] = float("nan")
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ref = attention_reference(qd, kd, vd, mask, causal=True)
    want = torch.autograd.grad(ref, (qd, kd, vd), do.double().nan_to_num(0.0))
    for got, exp in zip((dq, dk, dv), want):
        assert torch.isfinite(got[:, :, :128]).all()
        assert_close(got[:, :, :128], exp[:, :, :128], scale=8.0)


def test_the_bounds_of_a_shared_mask_are_computed_once(device, monkeypatch):
    # HF's mask function marks the 4D masks it makes (share_ranges): every layer then reuses one bounds tensor, while
    # an in-place edit (a new version) gets new bounds
    calls = []
    real = masks_mod._mask4d_bounds_kernel
    monkeypatch.setattr(masks_mod, "_mask4d_bounds_kernel", _Counting(real, calls))
    monkeypatch.setattr(attn_mod, "_PLANS", {})
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 3, 16, generator=g).to(device) for _ in range(3))
    k, v = torch.randn(2, 2, 60, 16, generator=g).to(device), torch.randn(2, 2, 60, 16, generator=g).to(device)
    mask = (torch.arange(60)[None, None, None, :] < torch.tensor([50, 20])[:, None, None, None]).expand(2, 1, 3, 60)
    mask = mask.contiguous().to(device)
    masks_mod.share_ranges(mask)
    first = attention(q, k, v, mask)
    again = attention(q, k, v, mask)
    assert len(calls) == 1 and torch.equal(first, again)
    mask[1, :, :, 20:40] = True  # same object, new contents
    edited = attention(q, k, v, mask)
    assert len(calls) == 2
    ref = attention_reference(q.double(), k.double(), v.double(), mask)
    assert_close(edited, ref, scale=4.0)
    plain = mask.clone()  # not shared: computed on every call
    attention(q, k, v, plain)
    attention(q, k, v, plain)
    assert len(calls) == 4


class _Counting:
    """A kernel stand-in that counts its launches and runs the real kernel."""

    def __init__(self, real, calls):
        self.real, self.calls = real, calls

    def __getitem__(self, grid):
        self.calls.append(grid)
        return self.real[grid]


def test_forward_only_bounds_leave_the_row_part_to_the_backward(device, monkeypatch):
    # a forward that autograd does not record reads only the key part: rows=False leaves the row part at zero; the
    # cache then does not serve a training call with it (the dk / dv kernel would skip every query), while bounds
    # with their row part serve an inference call
    g = torch.Generator().manual_seed(12)
    B, H, Q, K = 2, 2, 37, 53
    keep = torch.rand(B, 1, Q, K, generator=g) > 0.6
    keep[0, :, :, 40:] = False
    mask = keep.to(device)
    spec = prepare_mask(mask, (B, H, Q, K), mask.device)
    layout = bounds_layout(spec.tensor)
    full = mask_bounds(spec.tensor, False, 0.0)
    keys_only = mask_bounds(spec.tensor, False, 0.0, rows=False)
    assert torch.equal(key_bounds(keys_only, K), key_bounds(full, K))
    assert torch.equal(key_bounds(full, K).cpu().long(), _expected_bounds(spec.tensor.cpu() != 0, layout))
    assert not row_bounds(keys_only, Q, K)[..., 1].any()  # (first, end) with end 0: nothing, never a bound to read

    calls = []
    monkeypatch.setattr(masks_mod, "_mask4d_bounds_kernel", _Counting(masks_mod._mask4d_bounds_kernel, calls))
    monkeypatch.setattr(attn_mod, "_PLANS", {})
    monkeypatch.setattr(attn_mod, "_BWD_PLANS", {})
    q, k, v = (torch.randn(B, H, n, 16, generator=g).to(device) for n in (Q, K, K))
    masks_mod.share_ranges(mask)
    with torch.no_grad():
        inference = attention(q, k, v, mask)
    assert len(calls) == 1
    qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
    out = attention(qg, kg, vg, mask)  # needs the row part: computed again, then cached with it
    assert len(calls) == 2
    with torch.no_grad():
        attention(q, k, v, mask)
    assert len(calls) == 2
    do = torch.randn(out.shape, generator=g).to(device)
    _assert_like_fp64(inference, torch.autograd.grad(out, (qg, kg, vg), do), q, k, v, mask, do)


def _assert_like_fp64(out, grads, q, k, v, mask, do):
    """``out`` and the gradients ``grads`` of ``(out * do).sum()`` against the fp64 reference of a bool mask."""
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ref = attention_reference(qd, kd, vd, mask)
    want = torch.autograd.grad(ref, (qd, kd, vd), do.double())
    assert_close(out, ref.detach(), scale=4.0)
    for got, exp in zip(grads, want):
        assert_close(got, exp, scale=8.0)


def test_the_operators_backward_computes_the_row_bounds(device, monkeypatch):
    # the custom operator (torch.compile's path): its forward computes the key part only, its backward the bounds
    # with their row part; gradients against the fp64 reference
    monkeypatch.setattr(attn_mod, "_PLANS", {})
    monkeypatch.setattr(attn_mod, "_BWD_PLANS", {})
    ops = importlib.import_module("hf_masked_softmax.ops")
    seen = []
    real = masks_mod.mask_bounds
    monkeypatch.setattr(masks_mod, "mask_bounds", lambda *a, **kw: seen.append(a[4] if len(a) > 4 else kw.get(
        "rows", True)) or real(*a, **kw))
    g = torch.Generator().manual_seed(13)
    B, H, Q, K = 1, 2, 40, 40
    q, k, v = (torch.randn(B, H, Q, 16, generator=g).to(device).requires_grad_(True) for _ in range(3))
    i, j = torch.arange(Q)[:, None], torch.arange(K)[None, :]
    mask = ((i >= 20) == (j >= 20))[None, None].to(device)
    spec = prepare_mask(mask, (B, H, Q, K), mask.device)
    out, _ = ops.attention_op(q, k, v, mask, spec.kind, spec.threshold, False, 16 ** -0.5)
    do = torch.randn(out.shape, generator=g).to(device)
    grads = torch.autograd.grad(out, (q, k, v), do)
    assert seen == [False, True]
    _assert_like_fp64(out, grads, q, k, v, mask, do)


@pytest.mark.parametrize("additive", [False, True])
@pytest.mark.parametrize("splits", [4, 7])
def test_decode_splits_past_a_short_bounded_range_add_nothing(additive, splits, device, monkeypatch):
    # a one-token step whose 4D mask keeps a few keys in one or two key blocks, split over more programs than it has
    # blocks: the splits past the range (their first key block rounded up past its end) must visit nothing and merge
    # as empty
    monkeypatch.setattr(attn_mod, "_PLANS", {})
    monkeypatch.setattr(attn_mod, "_num_splits", lambda *a: splits)
    g = torch.Generator().manual_seed(splits)
    B, H, D, K = 2, 3, 16, 200
    q = torch.randn(B, H, 1, D, generator=g).to(device)
    k = torch.randn(B, H, K, D, generator=g).to(device)
    v = torch.randn(B, H, K, D, generator=g).to(device)
    j = torch.arange(K)
    keep = torch.stack([(j >= 61) & (j < 70), (j >= 3) & (j < 101) & (j % 5 != 0)])[:, None, None, :]
    mask = keep
    if additive:
        mask = torch.randn(keep.shape, generator=g).masked_fill(~keep, torch.finfo(torch.float32).min)
    mask = mask.to(device)
    kn, vn = _nan_outside(k, v, 128)
    out = attention(q, kn, vn, mask)
    ref = attention_reference(q.double(), k.double(), v.double(), mask.double() if additive else mask)
    assert torch.isfinite(out).all()
    assert_close(out, ref, scale=4.0)
    (plan,) = attn_mod._PLANS.values()
    assert plan.launch.kwargs["B4D"] and plan.splits == splits
