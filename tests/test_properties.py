"""Property-based tests (hypothesis): random shapes, strides, masks, dtypes, causality and scales against the fp64
reference, for ``masked_softmax`` and ``attention``, forward and backward.

Examples are few, tiny and derandomized (the same examples on every run), so CI stays deterministic and fast on the
CPU interpreter; a failure prints the drawn case, which reproduces it. Tolerances come from tests/tolerances.py.
"""
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")  # in CI's requirements; the GPU image may lack it
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import DEVICE  # noqa: E402  (hypothesis forbids function-scoped fixtures in @given tests)
from hf_masked_softmax import attention, masked_softmax, ops  # noqa: E402
from hf_masked_softmax.masks import prepare_mask  # noqa: E402
from hf_masked_softmax.reference import attention_reference, masked_softmax_reference  # noqa: E402
from tolerances import assert_close  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# Widenings of the table's row, as in test_attention.py: outputs sum K rounded products, gradients chain two matmuls.
ATTN_OUT_SCALE = 4.0
ATTN_GRAD_SCALE = {torch.float32: 8.0, torch.float16: 10.0, torch.bfloat16: 10.0}


# ----------------------------------------------------------------------------------------------------------------------
# Strategies: everything random is derived from a drawn seed, so a case is (sizes, choices, seed)
# ----------------------------------------------------------------------------------------------------------------------
@st.composite
def mask_cases(draw, B, H, Q, K):
    """(form, builder(generator, device) -> mask or None)."""
    form = draw(st.sampled_from(["none", "pad_right", "pad_left", "pad_holes", "bool4d", "add4d"]))
    # 4D masks broadcast over any subset of (B, H, Q) (and K, for a bool mask that keeps or drops whole rows)
    bshape = tuple(n if draw(st.booleans()) else 1 for n in (B, H, Q)) + (K,)
    add_dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))

    def build(g, device):
        if form == "none":
            return None
        if form.startswith("pad"):
            lengths = torch.randint(0, K + 1, (B,), generator=g)
            cols = torch.arange(K)[None, :]
            if form == "pad_right":
                m = cols < lengths[:, None]
            elif form == "pad_left":
                m = cols >= K - lengths[:, None]
            else:
                m = torch.rand(B, K, generator=g) < 0.6
            return m.to(device)
        if form == "bool4d":
            return (torch.rand(bshape, generator=g) < 0.7).to(device)
        add = (torch.randn(bshape, generator=g) * 2).to(add_dtype)
        fill = torch.rand(bshape, generator=g)
        add[fill < 0.2] = torch.finfo(add_dtype).min  # HF's fill value
        add[fill > 0.9] = float("-inf")
        return add.to(device)

    return form, build


def _scores_view(layout, B, H, Q, K, g, dtype, device):
    """A ``[B, H, Q, K]`` view with the drawn layout and its leaf (which receives the gradient)."""
    if layout == "contiguous":
        leaf = torch.randn(B, H, Q, K, generator=g)
        make = lambda t: t  # noqa: E731
    elif layout == "transposed":  # K-major storage, as after a matmul with swapped operands
        leaf = torch.randn(B, H, K, Q, generator=g)
        make = lambda t: t.transpose(2, 3)  # noqa: E731
    elif layout == "sliced":
        leaf = torch.randn(B, 2 * H, Q + 1, 2 * K + 3, generator=g)
        make = lambda t: t[:, ::2, 1:, 3::2]  # noqa: E731
    elif layout == "broadcast_heads":
        leaf = torch.randn(B, 1, Q, K, generator=g)
        make = lambda t: t.expand(B, H, Q, K)  # noqa: E731
    else:  # broadcast_queries
        leaf = torch.randn(B, H, 1, K, generator=g)
        make = lambda t: t.expand(B, H, Q, K)  # noqa: E731
    leaf = (leaf * 3).to(device, dtype)
    return leaf, make


# ----------------------------------------------------------------------------------------------------------------------
# masked_softmax
# ----------------------------------------------------------------------------------------------------------------------
@st.composite
def softmax_cases(draw):
    B, H = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    Q, K = draw(st.integers(1, 6)), draw(st.integers(1, 40))
    return dict(
        B=B, H=H, Q=Q, K=K,
        dtype=draw(st.sampled_from(DTYPES)),
        layout=draw(st.sampled_from(["contiguous", "transposed", "sliced", "broadcast_heads", "broadcast_queries"])),
        mask=draw(mask_cases(B, H, Q, K)),
        causal=draw(st.booleans()),
        scale=draw(st.sampled_from([1.0, 0.125, 0.7, -0.5, 2.5])),
        path=draw(st.sampled_from(["auto", "looped"])),
        seed=draw(st.integers(0, 2**16)),
    )


def _run_masked_softmax(scores, mask, causal, scale, path):
    if path == "auto":
        return masked_softmax(scores, mask, causal=causal, scale=scale)
    # Force the looped (long-row) kernels on short rows: rows over 8 keys loop in blocks of 8.
    spec = prepare_mask(mask, tuple(scores.shape), scores.device)
    return ops.masked_softmax_op(scores, mask, spec.kind, spec.threshold, causal, scale, 8, 8)


@settings(max_examples=30, **SETTINGS)
@given(case=softmax_cases())
def test_masked_softmax_matches_reference(case):
    device = DEVICE
    B, H, Q, K, dtype = case["B"], case["H"], case["Q"], case["K"], case["dtype"]
    g = torch.Generator().manual_seed(case["seed"])
    leaf, make = _scores_view(case["layout"], B, H, Q, K, g, dtype, device)
    _, build_mask = case["mask"]
    mask = build_mask(g, device)
    causal, scale = case["causal"], case["scale"]

    leaf.requires_grad_(True)
    out = _run_masked_softmax(make(leaf), mask, causal, scale, case["path"])
    dy = torch.randn(out.shape, generator=g).to(device, dtype)
    (grad,) = torch.autograd.grad(out, leaf, dy)

    ref_leaf = leaf.detach().double().requires_grad_(True)
    ref = masked_softmax_reference(make(ref_leaf), mask, causal=causal, scale=scale, compute_dtype=torch.float64,
                                   out_dtype=torch.float64)
    (ref_grad,) = torch.autograd.grad(ref, ref_leaf, dy.double())

    assert out.shape == (B, H, Q, K) and out.dtype == dtype and out.is_contiguous()
    assert not torch.isnan(out).any() and not torch.isnan(grad).any()
    assert_close(out, ref, dtype)
    assert torch.all(out[ref == 0] == 0)  # masked entries exactly zero
    kept_rows = ref.sum(-1) > 0
    assert_close(out.double().sum(-1)[kept_rows], torch.ones_like(ref.sum(-1)[kept_rows]), dtype, scale=4)
    assert grad.dtype == dtype
    # broadcast (stride-0) leaves sum the gradient over the broadcast dimension: widen with the number of terms
    terms = (H if case["layout"] == "broadcast_heads" else 1) * (Q if case["layout"] == "broadcast_queries" else 1)
    assert_close(grad, ref_grad, dtype, scale=4 * terms)


# ----------------------------------------------------------------------------------------------------------------------
# attention
# ----------------------------------------------------------------------------------------------------------------------
@st.composite
def attention_cases(draw):
    B, Hkv, groups = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.sampled_from([1, 2]))
    H = Hkv * groups
    Q, K = draw(st.integers(1, 20)), draw(st.integers(1, 40))
    return dict(
        B=B, H=H, Hkv=Hkv, Q=Q, K=K,
        D=draw(st.sampled_from([4, 16, 24])),
        dtype=draw(st.sampled_from(DTYPES)),
        layout=draw(st.sampled_from(["bhtd", "bthd", "sliced_d", "broadcast_kv_batch"])),
        mask=draw(mask_cases(B, H, Q, K)),
        causal=draw(st.booleans()),
        scale=draw(st.sampled_from([None, 0.3, -0.2])),
        backward=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


def _qkv_views(case, g, device):
    """(leaves, views_of): the leaves receive the gradients; ``views_of(leaves)`` are the ``[B, H, T, D]`` inputs."""
    B, H, Hkv, Q, K, D, dtype = (case[n] for n in ("B", "H", "Hkv", "Q", "K", "D", "dtype"))
    layout = case["layout"]
    if layout == "bhtd":
        shapes = [(B, H, Q, D), (B, Hkv, K, D), (B, Hkv, K, D)]
        views = [lambda t: t] * 3
    elif layout == "bthd":  # Hugging Face's [B, T, H, D] projections seen as [B, H, T, D]
        shapes = [(B, Q, H, D), (B, K, Hkv, D), (B, K, Hkv, D)]
        views = [lambda t: t.transpose(1, 2)] * 3
    elif layout == "sliced_d":  # heads cut out of a wider last dimension (as from a fused qkv projection)
        shapes = [(B, H, Q, 2 * D), (B, Hkv, K, 2 * D), (B, Hkv, K, 2 * D)]
        views = [lambda t: t[..., D:]] * 3
    else:  # one key/value cache shared by every sequence: stride-0 batch
        shapes = [(B, H, Q, D), (1, Hkv, K, D), (1, Hkv, K, D)]
        views = [lambda t: t] + [lambda t: t.expand(B, -1, -1, -1)] * 2
    leaves = [torch.randn(s, generator=g).to(device, dtype) for s in shapes]
    return leaves, lambda ts: tuple(view(t) for view, t in zip(views, ts))


@settings(max_examples=30, **SETTINGS)
@given(case=attention_cases())
def test_attention_matches_reference(case):
    device = DEVICE
    dtype = case["dtype"]
    g = torch.Generator().manual_seed(case["seed"])
    leaves, views_of = _qkv_views(case, g, device)
    _, build_mask = case["mask"]
    mask = build_mask(g, device)
    causal, scale, backward = case["causal"], case["scale"], case["backward"]
    for t in leaves:
        t.requires_grad_(backward)

    q, k, v = views_of(leaves)
    out = attention(q, k, v, mask, causal=causal, scale=scale)
    ref_leaves = [t.detach().double().requires_grad_(backward) for t in leaves]
    rq, rk, rv = views_of(ref_leaves)
    ref = attention_reference(rq, rk, rv, mask, causal=causal, scale=scale, compute_dtype=torch.float64)

    assert out.shape == q.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    assert_close(out, ref, dtype, scale=ATTN_OUT_SCALE)
    if backward:
        do = torch.randn(out.shape, generator=g).to(device, dtype)
        grads = torch.autograd.grad(out, leaves, do)
        ref_grads = torch.autograd.grad(ref, ref_leaves, do.double())
        widen = ATTN_GRAD_SCALE[dtype] * (case["B"] if case["layout"] == "broadcast_kv_batch" else 1)
        for name, gr, r in zip("qkv", grads, ref_grads):
            assert gr.shape == r.shape and gr.dtype == dtype, name
            assert torch.isfinite(gr).all(), name
            assert_close(gr, r, dtype, scale=widen)


def test_property_settings_are_deterministic():
    # CI must see the same examples on every run: derandomize, and no example database carried between runs.
    for fn in (test_masked_softmax_matches_reference, test_attention_matches_reference):
        s = fn._hypothesis_internal_use_settings
        assert s.derandomize and s.database is None and s.deadline is None and s.max_examples <= 30
