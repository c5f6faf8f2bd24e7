"""Packed sequences: ``attention(q, k, v, causal=..., segments=ids)``, where each run of equal consecutive ids is one
sequence and a token sees only its own run (transformers' padding-free batches). Against the fp64 reference on a
dense mask built here from the runs, token by token: run layouts, causal and not, GQA, half precision, windows, the
decode split, key blocks of other runs never read (forward and backward), equality with the same mask given as 4D
(dropout, soft-cap and sinks included), the custom operators, their reference fallback and torch.compile, the runs'
cache, the errors. On CPU in the interpreter with 16-wide blocks."""
import contextlib
import importlib
from unittest import mock

import pytest
import torch

import hf_masked_softmax
from hf_masked_softmax import masks
from hf_masked_softmax.check import random_segment_ids
from hf_masked_softmax.reference import attention_reference
from test_attention import GRAD_SCALE, OUT_SCALE, _ref
from test_window import _qkv
from tolerances import assert_close

attn_mod = importlib.import_module("hf_masked_softmax.attention")
ops = importlib.import_module("hf_masked_softmax.ops")


def _ids(lengths, first=0):
    """Ids for runs of ``lengths``: run r gets id ``first + r``."""
    return torch.cat([torch.full((n,), first + r, dtype=torch.int64) for r, n in enumerate(lengths)])


# each layout: one row of ids per batch entry (two entries), 45 tokens
LAYOUTS = {
    "four-runs": [_ids([7, 20, 1, 17]), _ids([30, 15], first=5)],
    "one-run": [_ids([45]), _ids([45], first=3)],
    "singletons": [torch.arange(45), torch.arange(45) * 2],
    "ids-reused": [torch.tensor([0] * 10 + [1] * 10 + [0] * 25), torch.tensor([2] * 16 + [1] * 16 + [2] * 13)],
    "block-edges": [_ids([16, 16, 13]), _ids([15, 17, 13])],
}


def _segments(name, device):
    return torch.stack(LAYOUTS[name]).to(device)


def _dense_keep(ids):
    """``[B, 1, L, L]`` bool: query ``i`` keeps key ``j`` iff no id changes between them, built token by token."""
    B, L = ids.shape
    keep = torch.zeros(B, 1, L, L, dtype=torch.bool)
    rows = ids.tolist()
    for b in range(B):
        for i in range(L):
            lo = i
            while lo > 0 and rows[b][lo - 1] == rows[b][i]:
                lo -= 1
            hi = i + 1
            while hi < L and rows[b][hi] == rows[b][i]:
                hi += 1
            keep[b, 0, i, lo:hi] = True
    return keep.to(ids.device)


def _check(q, k, v, segments, causal, *, grad=False, decode=None, num_splits=None):
    """attention(..., segments=segments) (and with ``grad`` its gradients) against the fp64 reference on the dense
    mask, with test_attention's tolerances; ``decode`` / ``num_splits`` force the kernel's dispatch."""
    with contextlib.ExitStack() as stack:
        if decode is not None:
            stack.enter_context(mock.patch.object(attn_mod, "_is_decode", lambda Q: decode))
        if num_splits is not None:
            stack.enter_context(mock.patch.object(attn_mod, "_num_splits", lambda *a: num_splits))
        out = hf_masked_softmax.attention(q, k, v, causal=causal, segments=segments)
    assert out.shape == q.shape and out.dtype == q.dtype and torch.isfinite(out).all()
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.device, out.dtype) if grad \
        else None
    ref, ref_grads = _ref(q, k, v, _dense_keep(segments), causal, do=do)
    assert_close(out, ref, scale=OUT_SCALE[q.dtype])
    if grad:
        for g, r in zip(torch.autograd.grad(out, (q, k, v), do), ref_grads):
            assert torch.isfinite(g).all()
            assert_close(g, r, q.dtype, scale=GRAD_SCALE[q.dtype])


def _assert_runs_matter(q, k, v, segments, causal):
    qd, kd, vd = (t.detach().double() for t in (q, k, v))
    plain = attention_reference(qd, kd, vd, None, causal=causal, compute_dtype=torch.float64)
    packed = attention_reference(qd, kd, vd, _dense_keep(segments), causal=causal, compute_dtype=torch.float64)
    assert (plain - packed).abs().max() > 0.05


def test_segment_bounds_are_each_tokens_run():
    ids = torch.tensor([[4, 4, 1, 1, 1, 4, 9], [0, 0, 0, 0, 0, 0, 0]])
    runs = masks.segment_bounds(ids)
    assert runs.dtype == torch.int32 and runs.shape == (2, 2, 7)
    assert runs[0].tolist() == [[0, 0, 2, 2, 2, 5, 6], [0] * 7]
    assert runs[1].tolist() == [[2, 2, 5, 5, 5, 6, 7], [7] * 7]
    assert masks.segment_runs(ids).tolist() == [[0, 0, 1, 1, 1, 2, 3], [0] * 7]


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_keep_mask_of_segments_is_the_dense_runs(name):
    ids = _segments(name, "cpu")
    keep = masks.keep_mask(masks.MaskSpec(masks.SEGMENTS, ids), (2, 3, 45, 45), causal=False, device="cpu")
    assert torch.equal(keep, _dense_keep(ids).expand(2, 3, 45, 45))


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_segment_mask_bounds_cover_exactly_the_runs_of_each_chunk(name):
    # per 16 rows: from the first row's run start to the last row's run end, the union of the rows' kept keys; and
    # per 16 keys the same for the queries (the mask is symmetric)
    ids = _segments(name, "cpu")
    keep = _dense_keep(ids)[:, 0]
    bounds = masks.segment_mask_bounds(masks.segment_bounds(ids))
    chunks = 3  # 45 tokens
    assert bounds.shape == (2, 1, 2 * chunks, 2)
    kb = masks.key_bounds(bounds, 45)
    rb = masks.row_bounds(bounds, 45, 45)
    for b in range(2):
        for c in range(chunks):
            kept = keep[b, 16 * c: 16 * c + 16].any(dim=0).nonzero().flatten()
            assert kb[b, 0, c].tolist() == [kept.min().item(), kept.max().item() + 1]
            seen = keep[b, :, 16 * c: 16 * c + 16].any(dim=1).nonzero().flatten()
            assert rb[b, 0, c].tolist() == [seen.min().item(), seen.max().item() + 1]


@pytest.mark.parametrize("L", [1, 15, 16, 17, 1500])
def test_the_runs_kernel_matches_pytorch_on_random_rows_and_layouts(L, device):
    # the kernel's runs (blocks of up to 1024 tokens, carried across blocks both ways) and the bounds it writes
    # alongside, against the runs found token by token and segment_mask_bounds' PyTorch version; int32 ids, and
    # ids broadcast over the batch (stride 0), as HF's packed ids may come
    g = torch.Generator().manual_seed(L)
    ids = torch.cumsum((torch.rand(3, L, generator=g) < 0.05).to(torch.int32), dim=1, dtype=torch.int32)
    for given in (ids.to(device), ids[:1].to(device).expand(3, L)):
        runs, bounds = masks.segment_tensors(given)
        keep = _dense_keep(given.cpu().long())[:, 0]
        first = keep.to(torch.int8).argmax(dim=-1)
        end = L - keep.flip(-1).to(torch.int8).argmax(dim=-1)
        assert torch.equal(runs[0].cpu().long(), first) and torch.equal(runs[1].cpu().long(), end)
        assert torch.equal(bounds, masks.segment_mask_bounds(runs))


def test_the_runs_of_tensors_the_kernels_do_not_take_come_from_pytorch():
    # CPU tensors on a machine without the interpreter (on a CUDA machine, say): the same runs and bounds, no launch
    ids = torch.cumsum((torch.rand(3, 300, generator=torch.Generator().manual_seed(3)) < 0.05).long(), dim=1)
    kernel = masks.segment_tensors(ids)
    with mock.patch.object(masks, "kernels_take", lambda t: False), \
            mock.patch.object(masks, "_segment_runs_kernel", None):
        fallback = masks.segment_tensors(ids)
    assert torch.equal(kernel[0], fallback[0]) and torch.equal(kernel[1], fallback[1])


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_segments_forward_backward_fp32_gqa(name, causal, device):
    q, k, v = _qkv(2, 4, 2, 45, 45, 16, torch.float32, device, seed=1)
    segments = _segments(name, device)
    _check(q, k, v, segments, causal, grad=True)
    if name != "one-run":
        _assert_runs_matter(q, k, v, segments, causal)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_segments_half_precision(dtype, device):
    q, k, v = _qkv(2, 2, 2, 45, 45, 32, dtype, device, seed=2)
    _check(q, k, v, _segments("four-runs", device), True, grad=True)


@pytest.mark.parametrize("causal,window", [(True, 5), (False, 4), (True, 40)])
def test_segments_with_a_window_inside_each_run(causal, window, device):
    # the window counts within a run (positions restart there, the distance does not change)
    q, k, v = _qkv(2, 4, 2, 45, 45, 16, torch.float32, device, seed=3)
    segments = _segments("four-runs", device)
    keep = _dense_keep(segments)
    out = hf_masked_softmax.attention(q, k, v, causal=causal, window=window, segments=segments)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(device)
    ref, ref_grads = _ref(q, k, v, keep, causal, do=do, window=window)
    assert_close(out, ref, scale=OUT_SCALE[torch.float32])
    for g, r in zip(torch.autograd.grad(out, (q, k, v), do), ref_grads):
        assert_close(g, r, torch.float32, scale=GRAD_SCALE[torch.float32])


@pytest.mark.parametrize("splits", [1, 2])
def test_segments_on_the_decode_path(splits, device):
    # 12 tokens: the decode kernel (split across programs or not) with the runs
    q, k, v = _qkv(3, 4, 2, 12, 12, 16, torch.float16, device, seed=4)
    segments = torch.tensor([[0] * 5 + [1] * 7, [3] * 12, list(range(12))], device=device)
    _check(q, k, v, segments, True, decode=True, num_splits=splits)
    _check(q, k, v, segments, False, decode=True, num_splits=splits)


def test_key_blocks_of_other_runs_are_never_read(device):
    # two runs of 128 tokens (a multiple of every query and key block): NaN in the first run's keys, values and
    # output gradients never reaches the second run's outputs or gradients, so no block of it is read there
    q, k, v = _qkv(1, 2, 2, 256, 256, 16, torch.float32, device, seed=5)
    segments = _ids([128, 128]).to(device)[None]
    with torch.no_grad():
        k[:, :, :128] = float("nan")
        v[:, :, :128] = float("nan")
    out = hf_masked_softmax.attention(q, k, v, causal=True, segments=segments)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(device)
    do[:, :, :128] = float("nan")
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    tail = (slice(None), slice(None), slice(128, None))
    ref, (rq, rk, rv) = _ref(q[tail], k[tail], v[tail], None, True, do=do[tail])
    assert_close(out[tail], ref, scale=OUT_SCALE[torch.float32])
    for g, r in zip((dq[tail], dk[tail], dv[tail]), (rq, rk, rv)):
        assert torch.isfinite(g).all()
        assert_close(g, r, torch.float32, scale=GRAD_SCALE[torch.float32])


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_segments_equal_the_same_mask_given_as_4d_with_dropout_softcap_and_sinks(causal, device):
    # the same scores on both paths (the dropout mask is a function of the indices and the seed): bit-identical
    q, k, v = _qkv(2, 4, 2, 45, 45, 16, torch.float32, device, seed=6)
    segments = _segments("four-runs", device)
    sinks = torch.randn(4, generator=torch.Generator().manual_seed(8)).to(device).requires_grad_(True)
    kw = dict(causal=causal, dropout_p=0.25, softcap=3.0, sinks=sinks)
    results = []
    for mask, seg in ((_dense_keep(segments), None), (None, segments)):
        torch.manual_seed(9)
        out = hf_masked_softmax.attention(q, k, v, mask, segments=seg, **kw)
        results.append((out, *torch.autograd.grad(out.square().sum(), (q, k, v, sinks))))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("take", [True, False], ids=["operators", "reference-fallback"])
def test_operators_and_the_reference_fallback_take_the_segments(take, device):
    # the custom operators (what torch.compile records) and the plain-PyTorch fallback (CPU without the interpreter)
    q, k, v = _qkv(2, 4, 2, 45, 45, 16, torch.float32, device, seed=10)
    segments = _segments("ids-reused", device)
    keep = _dense_keep(segments)
    with mock.patch.object(ops, "kernels_take", lambda t: take), mock.patch.object(ops, "call_path", lambda *t: "op"):
        out = hf_masked_softmax.attention(q, k, v, causal=True, segments=segments)
        grads = torch.autograd.grad(out.sum(), (q, k, v))
        inf = ops.attention_inference_op(q.detach(), k.detach(), v.detach(), segments, masks.SEGMENTS, 0.0, True, 0.25)
    ref, ref_grads = _ref(q, k, v, keep, True, do=torch.ones_like(out))
    assert_close(out, ref, scale=OUT_SCALE[torch.float32])
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, torch.float32, scale=GRAD_SCALE[torch.float32])
    ref = attention_reference(q.double(), k.double(), v.double(), keep, causal=True, scale=0.25,
                              compute_dtype=torch.float64)
    assert_close(inf, ref, scale=OUT_SCALE[torch.float32])


def test_compiled_segments_forward_and_backward(device):
    q, k, v = _qkv(2, 2, 2, 45, 45, 16, torch.float32, device, seed=11)
    segments = _segments("four-runs", device)
    fn = torch.compile(lambda q, k, v: hf_masked_softmax.attention(q, k, v, causal=True, segments=segments),
                       fullgraph=True, backend="aot_eager")
    out = fn(q, k, v)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    eager = hf_masked_softmax.attention(q, k, v, causal=True, segments=segments)
    eager_grads = torch.autograd.grad(eager.sum(), (q, k, v))
    assert_close(out, eager.double(), scale=OUT_SCALE[torch.float32])
    for g, r in zip(grads, eager_grads):
        assert_close(g, r.double(), torch.float32, scale=GRAD_SCALE[torch.float32])
    with torch.no_grad():  # the inference operator
        assert_close(fn(q, k, v), eager.double(), scale=OUT_SCALE[torch.float32])


def test_runs_are_cached_per_shared_ids_until_they_change():
    ids = masks.share_ranges(_ids([3, 4]).repeat(2, 1))
    first = masks.segment_tensors(ids, ids)
    assert masks.segment_tensors(ids, ids) is first
    ids[0, 0] = 7  # an in-place change bumps the version: computed again
    again = masks.segment_tensors(ids, ids)
    assert again is not first and again[0][1, 0, 0].item() == 1
    other = _ids([3, 4]).repeat(2, 1)  # not shared: never cached
    assert masks.segment_tensors(other, other) is not masks.segment_tensors(other, other)


def test_empty_segments(device):
    q, k, v = _qkv(2, 2, 2, 0, 0, 16, torch.float32, device)
    out = hf_masked_softmax.attention(q, k, v, causal=True, segments=torch.zeros(2, 0, dtype=torch.long,
                                                                                     device=device))
    assert out.shape == q.shape
    grads = torch.autograd.grad(out.sum(), (q, k, v), allow_unused=True)
    assert all(g is None or g.numel() == 0 for g in grads)


@pytest.mark.parametrize("case,error,match", [
    ("float", TypeError, "integer"),
    ("bool", TypeError, "integer"),
    ("shape", ValueError, r"\[batch, k_len\]"),
    ("q-len", ValueError, "q_len == k_len"),
    ("with-mask", ValueError, "cannot be combined"),
    ("not-a-tensor", TypeError, "torch.Tensor"),
])
def test_segments_errors(case, error, match, device):
    Q = 10 if case == "q-len" else 20
    q, k, v = _qkv(2, 2, 2, Q, 20, 16, torch.float32, device)
    segments = torch.zeros(2, 20, dtype=torch.long, device=device)
    mask = None
    if case == "float":
        segments = segments.float()
    elif case == "bool":
        segments = segments.bool()
    elif case == "shape":
        segments = segments[:, :19]
    elif case == "with-mask":
        mask = torch.ones(2, 20, dtype=torch.bool, device=device)
    elif case == "not-a-tensor":
        segments = [0] * 20
    with pytest.raises(error, match=match):
        hf_masked_softmax.attention(q, k, v, mask, segments=segments)


# ---------------------------------------------------------------------------------------------------------------
# GPU, real sizes: the compiled kernels' tiles (64 / 128 wide) and bf16 dots
# ---------------------------------------------------------------------------------------------------------------

def _random_runs(B, T, longest, seed):
    """``[B, T]`` ids of runs of random lengths in ``[1, longest]``."""
    return random_segment_ids(B, T, 1, longest, torch.Generator().manual_seed(seed))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_gpu_segments(dtype, D, causal):
    B, H, Hkv, T = 2, 8, 2, 2048
    q, k, v = _qkv(B, H, Hkv, T, T, D, dtype, "cuda", seed=12)
    _check(q, k, v, _random_runs(B, T, 600, seed=13).cuda(), causal, grad=True)
