"""masked_softmax against the fp64 reference: every mask form, causality, strides, both paths, backward, errors.

On CPU these run the real Triton kernels in the interpreter (conftest sets TRITON_INTERPRET=1); on a GPU, for real.
"""
import math

import pytest
import torch

from hf_masked_softmax import masked_softmax
from hf_masked_softmax.ops import masked_softmax_op
from hf_masked_softmax.masks import prepare_mask
from hf_masked_softmax.reference import masked_softmax_reference
from tolerances import assert_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Forces the looped (long-row) path on small inputs: rows longer than 16 loop over blocks of 8 columns.
LOOPED = dict(max_single_pass_k=16, loop_block_k=8)


def ref64(scores, mask=None, causal=False, scale=1.0):
    return masked_softmax_reference(
        scores, mask, causal=causal, scale=scale, compute_dtype=torch.float64, out_dtype=torch.float64
    )


def run(scores, mask=None, causal=False, scale=1.0, path="auto"):
    if path == "looped":
        spec = prepare_mask(mask, tuple(scores.shape), scores.device)
        return masked_softmax_op(
            scores, mask, spec.kind, spec.threshold, causal, scale, LOOPED["max_single_pass_k"], LOOPED["loop_block_k"]
        )
    return masked_softmax(scores, mask, causal=causal, scale=scale)


def padding_mask(lengths, K, *, left=False, dtype=torch.long, device="cpu"):
    m = torch.zeros(len(lengths), K, dtype=dtype, device=device)
    for b, n in enumerate(lengths):
        if left:
            m[b, K - n:] = 1
        else:
            m[b, :n] = 1
    return m


def check(out, scores, mask=None, causal=False, scale=1.0):
    expected = ref64(scores, mask, causal, scale)
    assert out.shape == scores.shape and out.dtype == scores.dtype and out.is_contiguous()
    assert_close(out, expected, scores.dtype)
    # Masked entries are exactly zero, wherever the reference has an exact zero from masking.
    keep = expected != 0
    assert torch.all(out[~keep] == 0)
    assert not torch.isnan(out).any()


@pytest.mark.parametrize("path", ["single", "looped"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [1, 7, 16, 33])
def test_no_mask(device, dtype, K, path):
    scores = torch.randn(2, 3, 5, K, device=device).to(dtype) * 3
    check(run(scores, scale=0.7, path=path), scores, scale=0.7)


@pytest.mark.parametrize("path", ["single", "looped"])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.long, torch.int32, torch.uint8])
@pytest.mark.parametrize("left", [False, True])
def test_2d_padding(device, mask_dtype, left, path):
    K = 37
    scores = torch.randn(3, 2, 4, K, device=device)
    mask = padding_mask([K, 20, 1], K, left=left, dtype=mask_dtype, device=device)
    check(run(scores, mask, scale=0.125, path=path), scores, mask, scale=0.125)


@pytest.mark.parametrize("path", ["single", "looped"])
def test_2d_mask_with_holes_and_empty_row(device, path):
    K = 21
    scores = torch.randn(3, 2, 3, K, device=device, dtype=torch.float16)
    mask = (torch.rand(3, K, device=device) > 0.5).long()
    mask[2] = 0  # a sequence with no key at all -> its rows are all zeros
    out = run(scores, mask, path=path)
    check(out, scores, mask)
    assert torch.all(out[2] == 0)


@pytest.mark.parametrize("path", ["single", "looped"])
@pytest.mark.parametrize("shape", [(2, 1, 1, 19), (2, 1, 4, 19), (1, 3, 4, 19), (2, 3, 4, 19), (1, 1, 1, 1)])
def test_4d_bool_broadcast(device, shape, path):
    scores = torch.randn(2, 3, 4, 19, device=device)
    mask = torch.rand(shape, device=device) > 0.3
    check(run(scores, mask, path=path), scores, mask)


@pytest.mark.parametrize("path", ["single", "looped"])
@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_4d_additive(device, mask_dtype, path):
    B, H, Q, K = 2, 3, 4, 23
    scores = torch.randn(B, H, Q, K, device=device, dtype=torch.float16)
    mask = (torch.randn(B, 1, Q, K, device=device) * 2).to(mask_dtype)  # finite biases are added
    mask[0, :, :, 5:9] = torch.finfo(mask_dtype).min  # HF's fill value: masked
    mask[1, :, :, 10:] = float("-inf")  # masked
    mask[1, :, 2, :] = torch.finfo(mask_dtype).min / 2  # exactly the threshold: masked, whole row -> zeros
    mask[0, :, 1, 0] = -1e4 if mask_dtype != torch.float16 else -6e4  # large but above the threshold: added
    out = run(scores, mask, scale=0.5, path=path)
    check(out, scores, mask, scale=0.5)
    assert torch.all(out[1, :, 2, :] == 0)
    assert torch.all(out[1, :, :, 10:] == 0)


def test_additive_mask_sum_of_two_fills_still_masked(device):
    # HF can add two finfo.min masks; the sum is -inf in that dtype and must stay masked, never NaN.
    scores = torch.randn(1, 1, 2, 6, device=device, dtype=torch.float16)
    m = torch.zeros(1, 1, 2, 6, device=device, dtype=torch.float16)
    m[..., :3] = torch.finfo(torch.float16).min
    m = m + m
    out = masked_softmax(scores, m)
    check(out, scores, m)
    assert torch.all(out[..., :3] == 0)


@pytest.mark.parametrize("path", ["single", "looped"])
@pytest.mark.parametrize("QK", [(5, 5), (3, 29), (1, 29), (1, 1)])
def test_causal_bottom_right(device, QK, path):
    Q, K = QK
    scores = torch.randn(2, 2, Q, K, device=device)
    out = run(scores, causal=True, path=path)
    check(out, scores, causal=True)
    i = torch.arange(Q, device=device)[:, None]
    j = torch.arange(K, device=device)[None, :]
    assert torch.all(out[..., j > i + K - Q] == 0)
    if Q == 1:  # a decode step sees every key
        assert torch.all(out > 0)


@pytest.mark.parametrize("path", ["single", "looped"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_left_padding_plus_causal(device, dtype, path):
    K = 19
    scores = torch.randn(3, 2, K, K, device=device).to(dtype)
    mask = padding_mask([K, 11, 3], K, left=True, device=device)
    out = run(scores, mask, causal=True, path=path)
    check(out, scores, mask, causal=True)
    # Query rows of left padding see only padding: all zeros, not NaN.
    assert torch.all(out[1, :, : K - 11] == 0)


@pytest.mark.parametrize("path", ["single", "looped"])
def test_neg_inf_scores(device, path):
    scores = torch.randn(2, 1, 3, 25, device=device)
    scores[0, 0, 0] = float("-inf")  # whole row -inf -> zeros
    scores[1, 0, 1, ::2] = float("-inf")  # part of a row -> those entries 0, the rest a softmax
    out = run(scores, path=path)
    check(out, scores)
    assert torch.all(out[0, 0, 0] == 0)
    assert torch.all(out[1, 0, 1, ::2] == 0)


@pytest.mark.parametrize("path", ["single", "looped"])
def test_nan_propagates_to_its_row_only(device, path):
    scores = torch.randn(1, 1, 3, 20, device=device)
    scores[0, 0, 1, 4] = float("nan")
    mask = torch.ones(1, 20, dtype=torch.long, device=device)
    mask[0, 15:] = 0
    out = run(scores, mask, path=path)
    assert torch.isnan(out[0, 0, 1, :15]).all()
    assert torch.all(out[0, 0, 1, 15:] == 0)  # masked entries stay exactly 0
    assert not torch.isnan(out[0, 0, [0, 2]]).any()
    check(out[:, :, [0, 2]], scores[:, :, [0, 2]], mask)


def test_nan_in_masked_position_is_never_read(device):
    scores = torch.randn(1, 1, 4, 4, device=device)
    scores[0, 0, 0, 3] = float("nan")  # hidden by causality
    out = masked_softmax(scores, causal=True)
    check(out, torch.nan_to_num(scores), causal=True)


@pytest.mark.parametrize("path", ["single", "looped"])
def test_strided_views(device, path):
    base = torch.randn(3, 4, 6, 40, device=device, dtype=torch.float16)
    mask = padding_mask([17, 17, 9], 17, device=device)
    views = {
        "transposed_qk": base[..., :17].transpose(2, 3)[:, :, :6, :],  # [3,4,6?]: rows strided, cols not unit
        "sliced": base[:, 1:3, ::2, 3:20],
        "heads_first": base.permute(1, 0, 2, 3)[:, :3, :, :17].transpose(0, 1).contiguous().transpose(1, 2),
        "broadcast_heads": base[:, :1, :, :17].expand(3, 5, 6, 17),
        "broadcast_rows": base[:, :, :1, :17].expand(3, 4, 7, 17),
    }
    for name, s in views.items():
        m = mask if s.shape[0] == 3 and s.shape[-1] == 17 else None
        out = run(s, m, scale=0.3, path=path)
        check(out, s, m, scale=0.3)


def test_scores_from_hf_layout_are_not_copied(device):
    # HF computes q @ k^T from [B, T, H, D] views; a non-contiguous score tensor must give the same result.
    q = torch.randn(2, 9, 3, 8, device=device).transpose(1, 2)
    k = torch.randn(2, 11, 3, 8, device=device).transpose(1, 2)
    s = torch.matmul(q, k.transpose(-1, -2)).transpose(2, 3).contiguous().transpose(2, 3)
    assert not s.is_contiguous()
    check(masked_softmax(s, scale=8 ** -0.5), s, scale=8 ** -0.5)


@pytest.mark.parametrize("path", ["single", "looped"])
def test_int64_index_math(device, path, monkeypatch):
    # the int64 variant (used when an offset can reach 2**31) on a small strided view, 4D and 2D masks
    ms_mod = __import__("sys").modules["hf_masked_softmax.masked_softmax"]
    assert not ms_mod._wide((8, 12, 1024, 1024), (12 << 20, 1 << 20, 1024, 1), (1024, 0, 0, 1))
    assert ms_mod._wide((2, 16, 8192, 8192), (1 << 30, 1 << 26, 8192, 1))  # 2**31 elements
    assert ms_mod._wide((1, 1, 2, 2**20), (2**21, 2**21, 2**20, 1), (0, 0, 0, 2**12))  # a mask's offsets
    monkeypatch.setattr(ms_mod, "_wide", lambda *a: True)
    g = torch.Generator().manual_seed(5)
    scores = torch.randn(2, 3, 29, 6, generator=g).to(device).transpose(-1, -2)  # K stride 29
    mask = (torch.rand(2, 1, 6, 29, generator=g) > 0.3).to(device)
    check(run(scores, mask, causal=True, path=path), scores, mask, causal=True)
    pad = padding_mask([29, 11], 29, left=True, device=device)
    check(run(scores, pad, causal=True, path=path), scores, pad, causal=True)


def test_single_and_looped_paths_agree(device):
    scores = torch.randn(2, 2, 5, 40, device=device)
    mask = padding_mask([40, 13], 40, left=True, device=device)
    a = run(scores, mask, causal=True, path="single")
    b = run(scores, mask, causal=True, path="looped")
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_empty_dims(device):
    for shape in [(0, 2, 3, 4), (2, 0, 3, 4), (2, 2, 0, 4)]:
        out = masked_softmax(torch.randn(shape, device=device))
        assert out.shape == shape


def test_k_zero(device):
    out = masked_softmax(torch.randn(2, 2, 3, 0, device=device), causal=True)
    assert out.shape == (2, 2, 3, 0)


def test_scale_zero_is_uniform_over_kept(device):
    scores = torch.randn(1, 1, 2, 10, device=device)
    mask = padding_mask([4], 10, device=device)
    out = masked_softmax(scores, mask, scale=0.0)
    assert_close(out[..., :4], torch.full((1, 1, 2, 4), 0.25, dtype=torch.float64, device=device))
    assert torch.all(out[..., 4:] == 0)


# --------------------------------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["single", "looped"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", ["none", "pad2d_causal", "bool4d", "add4d"])
def test_backward(device, dtype, form, path):
    B, H, Q, K = 2, 2, 5, 21
    base = torch.randn(B, H, K, Q, device=device).to(dtype)
    leaf = base.clone().requires_grad_(True)
    scores = leaf.transpose(2, 3)  # a strided input; the gradient lands on `leaf`
    causal, mask = False, None
    if form == "pad2d_causal":
        causal, mask = True, padding_mask([K, 8], K, left=True, device=device)
    elif form == "bool4d":
        mask = torch.rand(B, 1, Q, K, device=device) > 0.4
    elif form == "add4d":
        mask = torch.randn(B, 1, 1, K, device=device)
        mask[..., :3] = torch.finfo(torch.float32).min
    out = run(scores, mask, causal=causal, scale=0.6, path=path)
    dy = torch.randn_like(out)
    (out * dy).sum().backward()

    ref_leaf = base.double().clone().requires_grad_(True)
    ref_out = ref64(ref_leaf.transpose(2, 3), mask, causal, 0.6)
    (ref_out * dy.double()).sum().backward()
    assert leaf.grad.dtype == dtype
    assert_close(leaf.grad, ref_leaf.grad, dtype, scale=4)
    assert not torch.isnan(leaf.grad).any()


@pytest.mark.parametrize("path", ["single", "looped"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("form", ["pad2d_causal", "pad2d_holes", "bool4d", "add4d", "neg_inf_scores"])
def test_backward_ignores_nan_and_inf_upstream_grads_at_dropped_entries(device, dtype, form, path):
    # Every entry the forward drops has Y = 0 exactly. The backward ignores dY there and writes dS = +0, so a NaN or
    # inf that an upstream op leaves at a masked position never reaches the row; it reads neither the mask nor dY
    # outside each row's key window.
    B, H, Q, K = 2, 2, 5, 21
    scores = torch.randn(B, H, Q, K, device=device).to(dtype)
    causal, mask = False, None
    if form == "pad2d_causal":
        causal, mask = True, padding_mask([K, 8], K, left=True, device=device)
    elif form == "pad2d_holes":
        mask = padding_mask([K, 15], K, device=device)
        mask[0, 4:9] = 0
    elif form == "bool4d":
        mask = torch.rand(B, 1, Q, K, device=device) > 0.4
    elif form == "add4d":
        mask = torch.zeros(B, 1, Q, K, device=device)
        mask[..., 2::3] = torch.finfo(torch.float32).min
    else:
        scores[:, :, :, 5:12] = float("-inf")
    scores.requires_grad_(True)
    out = run(scores, mask, causal=causal, scale=0.7, path=path)
    dropped = out.detach() == 0  # kept probabilities are far from underflow at these sizes
    assert dropped.any() and not dropped.all()
    dy = torch.randn(out.shape, device=device).to(dtype)
    poison = torch.tensor([float("nan"), float("inf"), -float("inf")], device=device).to(dtype)
    bad = dy.clone()
    bad[dropped] = poison.repeat(int(dropped.sum()) // 3 + 1)[: int(dropped.sum())]
    (grad,) = torch.autograd.grad(out, scores, bad)
    ref_s = scores.detach().double().requires_grad_(True)
    (ref,) = torch.autograd.grad(ref64(ref_s, mask, causal, 0.7), ref_s, dy.double().masked_fill(dropped, 0))
    assert torch.isfinite(grad).all()
    assert_close(grad, ref, dtype, scale=4)
    assert torch.all(grad[dropped] == 0) and not torch.signbit(grad[dropped]).any()


def test_backward_fully_masked_rows_have_zero_grad(device):
    scores = torch.randn(1, 1, 4, 6, device=device, requires_grad=True)
    mask = torch.zeros(1, 6, dtype=torch.long, device=device)
    out = masked_softmax(scores, mask)
    out.sum().backward()
    assert torch.all(out == 0) and torch.all(scores.grad == 0)


def test_backward_with_strided_upstream_grad(device):
    scores = torch.randn(1, 2, 3, 12, device=device, requires_grad=True)
    out = masked_softmax(scores, causal=True)
    g = torch.randn(1, 2, 12, 3, device=device).transpose(2, 3)  # non-contiguous dY
    (gs,) = torch.autograd.grad(out, scores, g)
    ref_s = scores.detach().double().requires_grad_(True)
    (gr,) = torch.autograd.grad(ref64(ref_s, causal=True), ref_s, g.double())
    assert_close(gs, gr, torch.float32, scale=4)


# --------------------------------------------------------------------------------------------------------------------
# Errors at the public boundary
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, kwargs, exc, words",
    [
        ((torch.randn(3, 4, 5),), {}, ValueError, "4D"),
        ((torch.randn(1, 1, 2, 3, 4),), {}, ValueError, "4D"),
        ((torch.randn(1, 1, 2, 3).double(),), {}, TypeError, "float64"),
        ((torch.randint(0, 3, (1, 1, 2, 3)),), {}, TypeError, "int64"),
        (([1.0, 2.0],), {}, TypeError, "Tensor"),
        ((torch.randn(2, 1, 2, 3), torch.ones(2, 4, dtype=torch.long)), {}, ValueError, "[2, 3]"),
        ((torch.randn(2, 1, 2, 3), torch.ones(3, 3, dtype=torch.long)), {}, ValueError, "[2, 3]"),
        ((torch.randn(2, 1, 2, 3), torch.ones(2, 3)), {}, TypeError, "floating 2D"),
        ((torch.randn(2, 1, 2, 3), torch.ones(2, 2, 2, 4, dtype=torch.bool)), {}, ValueError, "broadcast"),
        ((torch.randn(2, 1, 2, 3), torch.ones(2, 1, 3, dtype=torch.bool)), {}, ValueError, "3D"),
        ((torch.randn(2, 1, 2, 3), torch.ones(2, 1, 2, 3, dtype=torch.int32)), {}, TypeError, "bool"),
        ((torch.randn(2, 1, 2, 3), "mask"), {}, TypeError, "attention_mask"),
        ((torch.randn(2, 1, 2, 3),), {"scale": float("nan")}, ValueError, "scale"),
        ((torch.randn(2, 1, 2, 3),), {"scale": math.inf}, ValueError, "scale"),
    ],
)
def test_errors(args, kwargs, exc, words):
    with pytest.raises(exc, match=None) as info:
        masked_softmax(*args, **kwargs)
    assert words in str(info.value)


def test_mask_on_other_device_is_an_error():
    if not torch.cuda.is_available():
        scores = torch.randn(1, 1, 2, 3, device="meta")
        with pytest.raises(ValueError, match="device"):
            masked_softmax(scores, torch.ones(1, 3, dtype=torch.long))
    else:
        with pytest.raises(ValueError, match="device"):
            masked_softmax(torch.randn(1, 1, 2, 3, device="cuda"), torch.ones(1, 3, dtype=torch.long))


# --------------------------------------------------------------------------------------------------------------------
# GPU: real sizes (skipped without CUDA)
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape, causal, pad",
    [((8, 12, 1024, 1024), True, True), ((32, 12, 512, 512), False, True), ((32, 12, 1, 2048), False, True),
     ((1, 4, 1024, 8192), True, False), ((2, 2, 64, 16384), True, True)],
)
def test_gpu_real_sizes(dtype, shape, causal, pad):
    B, H, Q, K = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    scores = torch.randn(shape, device="cuda", dtype=dtype, generator=g) * 4
    mask = None
    if pad:
        lengths = torch.randint(K // 2, K + 1, (B,), device="cuda", generator=g)
        mask = (torch.arange(K, device="cuda")[None, :] >= K - lengths[:, None]).long()  # left padding
    out = masked_softmax(scores, mask, causal=causal, scale=0.125)
    ref = ref64(scores, mask, causal, 0.125)
    assert_close(out, ref, dtype)
    assert not torch.isnan(out).any()
    assert torch.all(out[ref == 0] == 0)


@pytest.mark.gpu
def test_gpu_k_262144_causal_and_padding():
    K = 262144
    scores = torch.randn(2, 1, 3, K, device="cuda", dtype=torch.float16)
    mask = torch.ones(2, K, dtype=torch.bool, device="cuda")
    mask[1, : K // 3] = False
    out = masked_softmax(scores, mask, causal=True)
    assert_close(out, ref64(scores, mask, True), torch.float16)
    assert torch.allclose(out.float().sum(-1), torch.ones(2, 1, 3, device="cuda"), atol=2e-2)


@pytest.mark.gpu
def test_gpu_over_2_pow_31_elements():
    B, H, Q, K = 1, 1, 8193, 262144  # 2,147,745,792 elements > 2**31
    assert B * H * Q * K > 2**31
    if torch.cuda.get_device_properties(0).total_memory < 20 * 2**30:
        pytest.skip("needs ~10 GB of GPU memory")
    scores = torch.empty(B, H, Q, K, device="cuda", dtype=torch.float16).normal_()
    out = masked_softmax(scores, causal=True)
    # The last rows live past element 2**31. Row i sees keys j <= i + K - Q: compare that prefix unmasked.
    for i in [0, 4096, Q - 2, Q - 1]:
        lim = i + K - Q
        r = masked_softmax_reference(
            scores[:, :, i : i + 1, : lim + 1], compute_dtype=torch.float64, out_dtype=torch.float64
        )
        assert_close(out[:, :, i : i + 1, : lim + 1], r, torch.float16)
        assert torch.all(out[:, :, i, lim + 1 :] == 0)


@pytest.mark.parametrize("Q", [8, 7])  # 32 rows fill two 16-row programs exactly; 28 rows leave a ragged program
@pytest.mark.parametrize("K", [64, 61])
@pytest.mark.parametrize("form", ["none", "left_causal", "right", "holes", "bool4d", "add4d"])
def test_chunked_programs_fwd_bwd(device, Q, K, form):
    # 16 rows per program, 8-column chunks: whole chunks skipped, unmasked chunks, masked chunks, ragged edges
    g = torch.Generator().manual_seed(Q * K)
    B, H = 2, 2
    scores = torch.randn(B, H, Q, K, generator=g).to(device)
    causal = form == "left_causal"
    mask = None
    if form in ("left_causal", "right", "holes"):
        mask = padding_mask([K - 21, K], K, left=form == "left_causal", device=device)
        if form == "holes":
            mask[1, 30:35] = 0
    elif form == "bool4d":
        mask = (torch.rand(B, 1, Q, K, generator=g) > 0.4).to(device)
    elif form == "add4d":
        mask = torch.zeros(B, 1, 1, K).masked_fill(torch.rand(B, 1, 1, K, generator=g) > 0.7, float("-inf")).to(device)
    spec = prepare_mask(mask, tuple(scores.shape), scores.device)
    x = scores.clone().requires_grad_(True)
    out = masked_softmax_op(x, mask, spec.kind, spec.threshold, causal, 0.5, 16, 8)
    check(out.detach(), scores, mask, causal, 0.5)
    dy = torch.randn(scores.shape, generator=g).to(device)
    (grad,) = torch.autograd.grad(out, x, dy)
    xd = scores.double().requires_grad_(True)
    ref = masked_softmax_reference(xd, mask, causal=causal, scale=0.5, compute_dtype=torch.float64,
                                   out_dtype=torch.float64)
    (expected,) = torch.autograd.grad(ref, xd, dy.double())
    assert_close(grad, expected, torch.float32)


@pytest.mark.parametrize("path", ["single", "looped"])
def test_streaming_store_hint_changes_no_value(device, path, monkeypatch):
    # STREAM_STORES only adds a cache hint to the stores: forward and backward are bit-identical with and without it
    ms_mod = __import__("sys").modules["hf_masked_softmax.masked_softmax"]
    g = torch.Generator().manual_seed(11)
    scores = torch.randn(2, 3, 9, 37, generator=g).to(device)
    mask = padding_mask([37, 20], 37, left=True, device=device)
    dy = torch.randn(scores.shape, generator=g).to(device)
    results = []
    for stream in (False, True, None):  # None: the default (the forward's chunked path streams)
        monkeypatch.setattr(ms_mod, "STREAM_STORES", stream)
        x = scores.clone().requires_grad_(True)
        out = run(x, mask, causal=True, scale=0.7, path=path)
        (grad,) = torch.autograd.grad(out, x, dy)
        results.append((out.detach(), grad))
    check(results[1][0], scores, mask, causal=True, scale=0.7)
    for out, grad in results[1:]:
        assert torch.equal(results[0][0], out) and torch.equal(results[0][1], grad)


def test_launch_plans_are_reused_per_signature_and_follow_the_settings(device, monkeypatch):
    # host work is done once per call signature (shape, strides, dtypes, mask form, scalars, module settings)
    ms_mod = __import__("sys").modules["hf_masked_softmax.masked_softmax"]
    monkeypatch.setattr(ms_mod, "_PLANS", {})
    g = torch.Generator().manual_seed(12)
    scores = torch.randn(2, 3, 9, 37, generator=g).to(device)
    mask = padding_mask([37, 20], 37, left=True, device=device)
    first = masked_softmax(scores, mask, causal=True, scale=0.7)
    check(first, scores, mask, causal=True, scale=0.7)
    assert torch.equal(masked_softmax(scores.clone(), mask.clone(), causal=True, scale=0.7), first)
    assert len(ms_mod._PLANS) == 1
    masked_softmax(scores.transpose(2, 3).contiguous().transpose(2, 3), mask, causal=True, scale=0.7)
    assert len(ms_mod._PLANS) == 2  # other strides: another plan
    for stream in (True, False):  # a module setting the plans derive from: a new plan, which uses it
        monkeypatch.setattr(ms_mod, "STREAM_STORES", stream)
        assert torch.equal(masked_softmax(scores, mask, causal=True, scale=0.7), first)
        assert list(ms_mod._PLANS.values())[-1].kwargs["STREAM"] is stream
    assert len(ms_mod._PLANS) == 4
