"""No kernel touches memory outside the tensors it is given (CPU, Triton's interpreter).

On the GPU an access past a tensor is caught only by compute-sanitizer, and only where it leaves an allocation. Here
every load and store the interpreted kernels make is checked against the storages of the launch's tensor arguments:
each masked-in address must lie inside one of them. The shapes are odd on purpose (K not a multiple of the 16-column
load groups, ragged row blocks), and each tensor is its own storage, so a read past the last row is past the tensor.
"""
import os

import numpy as np
import pytest
import torch

from hf_masked_softmax import attention, masked_softmax

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="checks the interpreter's accesses")


@pytest.fixture
def bounds():
    """Wrap the interpreter's loads and stores; yields the list of out-of-bounds accesses seen."""
    from triton.runtime import interpreter as itp

    ranges: list = []
    bad: list = []
    mp = pytest.MonkeyPatch()
    orig_init = itp.GridExecutor._init_args_hst

    def init_args(self, args_dev, kwargs):
        args_hst, kwargs_hst = orig_init(self, args_dev, kwargs)
        ranges.clear()
        for a in list(args_hst) + list(kwargs_hst.values()):
            if isinstance(a, torch.Tensor):
                s = a.untyped_storage()
                ranges.append((s.data_ptr(), s.data_ptr() + s.nbytes()))
        return args_hst, kwargs_hst

    def check(ptrs, mask, what):
        addr = np.asarray(ptrs.data, dtype=np.uint64)
        if mask is not None:
            addr = addr[np.asarray(mask.data, dtype=bool)]
        if addr.size == 0:
            return
        size = np.dtype(itp._get_np_dtype(ptrs.get_element_ty())).itemsize
        inside = np.zeros(addr.shape, dtype=bool)
        for lo, hi in ranges:
            inside |= (addr >= lo) & (addr + size <= hi)
        if not inside.all():
            bad.append((what, int(addr[~inside][0]), int((~inside).sum())))

    orig_mload = itp.InterpreterBuilder.create_masked_load
    orig_load = itp.InterpreterBuilder.create_load
    orig_mstore = itp.InterpreterBuilder.create_masked_store
    orig_store = itp.InterpreterBuilder.create_store

    def mload(self, ptrs, mask, *a, **k):
        check(ptrs, mask, "load")
        return orig_mload(self, ptrs, mask, *a, **k)

    def load(self, ptrs, *a, **k):
        check(ptrs, None, "load")
        return orig_load(self, ptrs, *a, **k)

    def mstore(self, ptrs, value, mask, *a, **k):
        check(ptrs, mask, "store")
        return orig_mstore(self, ptrs, value, mask, *a, **k)

    def store(self, ptrs, value, *a, **k):
        check(ptrs, None, "store")
        return orig_store(self, ptrs, value, *a, **k)

    mp.setattr(itp.GridExecutor, "_init_args_hst", init_args)
    mp.setattr(itp.InterpreterBuilder, "create_masked_load", mload)
    mp.setattr(itp.InterpreterBuilder, "create_load", load)
    mp.setattr(itp.InterpreterBuilder, "create_masked_store", mstore)
    mp.setattr(itp.InterpreterBuilder, "create_store", store)
    yield bad
    mp.undo()


def _padding(B, K, g):
    lengths = torch.randint(1, K + 1, (B,), generator=g)
    return torch.arange(K)[None, :] >= (K - lengths)[:, None]  # left padding


def test_the_checker_sees_an_access_past_a_tensor(bounds):
    import triton
    import triton.language as tl

    @triton.jit
    def overrun(x_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n + 1), mask=offs < n)

    x = torch.zeros(5)
    overrun[(1,)](x, 5, BLOCK=8)
    assert [b[0] for b in bounds] == ["load"]


@pytest.mark.parametrize("shape", [(2, 3, 1, 300), (1, 2, 5, 37), (2, 1, 3, 1)])
@pytest.mark.parametrize("form", ["none", "pad", "bool4d"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_masked_softmax_stays_inside_its_tensors(bounds, shape, form, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    B, H, Q, K = shape
    scores = torch.randn(shape, generator=g).to(dtype).requires_grad_(True)
    mask = None if form == "none" else _padding(B, K, g)
    if form == "bool4d":
        mask = mask[:, None, None, :] & (torch.rand(B, 1, Q, K, generator=g) > 0.3)
    y = masked_softmax(scores, mask, causal=True, scale=0.5)
    y.backward(torch.randn(shape, generator=g).to(dtype))
    assert bounds == []


@pytest.mark.parametrize("B, H, Q, K", [(2, 2, 1, 37), (1, 2, 7, 19)])
def test_attention_stays_inside_its_tensors(bounds, B, H, Q, K):
    g = torch.Generator().manual_seed(Q * K)
    q = torch.randn(B, H, Q, 16, generator=g).requires_grad_(True)
    k = torch.randn(B, 1, K, 16, generator=g).requires_grad_(True)
    v = torch.randn(B, 1, K, 16, generator=g).requires_grad_(True)
    out = attention(q, k, v, _padding(B, K, g), causal=True)
    out.backward(torch.randn_like(out))
    assert bounds == []


@pytest.mark.parametrize("form", ["holes", "bool4d", "add4d", "none"])
@pytest.mark.parametrize("splits", [1, 3])
def test_attention_decode_and_split_paths_stay_inside(bounds, monkeypatch, form, splits):
    # one query against 37 keys, GQA 4/2, head dim 24 (padded to 32 inside the kernel), the key range split across
    # programs; every mask form
    import importlib

    attn_mod = importlib.import_module("hf_masked_softmax.attention")
    monkeypatch.setattr(attn_mod, "_num_splits", lambda *a: splits)
    g = torch.Generator().manual_seed(splits)
    B, H, Hkv, Q, K, D = 2, 4, 2, 1, 37, 24
    q = torch.randn(B, H, Q, D, generator=g).requires_grad_(True)
    k = torch.randn(B, Hkv, K, D, generator=g).requires_grad_(True)
    v = torch.randn(B, Hkv, K, D, generator=g).requires_grad_(True)
    mask = _padding(B, K, g)
    if form == "holes":
        mask[0, 20:25] = False
    elif form == "bool4d":
        mask = mask[:, None, None, :] & (torch.rand(B, 1, Q, K, generator=g) > 0.3)
    elif form == "add4d":
        mask = torch.zeros(B, 1, Q, K).masked_fill(~mask[:, None, None, :], float("-inf"))
    elif form == "none":
        mask = None
    out = attention(q, k, v, mask, causal=True)
    out.backward(torch.randn_like(out))
    assert bounds == []


@pytest.mark.parametrize("form", ["bool4d-per-head", "add4d-per-row"])
def test_attention_with_4d_mask_bounds_stays_inside(bounds, form):
    # prefill with a 4D mask's key bounds: one per head and 16-row chunk (bool), one per sequence and chunk (additive
    # [B, 1, Q, K]); 37 rows (a partial chunk), 41 keys
    g = torch.Generator().manual_seed(41)
    B, H, Q, K, D = 2, 2, 37, 41, 16
    q = torch.randn(B, H, Q, D, generator=g).requires_grad_(True)
    k = torch.randn(B, H, K, D, generator=g).requires_grad_(True)
    v = torch.randn(B, H, K, D, generator=g).requires_grad_(True)
    if form == "bool4d-per-head":
        mask = torch.rand(B, H, Q, K, generator=g) > 0.6
    else:
        mask = torch.zeros(B, 1, Q, K).masked_fill(torch.rand(B, 1, Q, K, generator=g) > 0.5, float("-inf"))
    out = attention(q, k, v, mask, causal=True)
    out.backward(torch.randn_like(out))
    assert bounds == []


def test_attention_transposed_inputs_stay_inside(bounds):
    # q/k/v as [B, S, H, D] memory viewed as [B, H, S, D] (HF's layout before the transpose), odd lengths
    g = torch.Generator().manual_seed(5)
    B, H, Q, K, D = 2, 3, 19, 23, 16
    q = torch.randn(B, Q, H, D, generator=g).transpose(1, 2).requires_grad_(True)
    k = torch.randn(B, K, H, D, generator=g).transpose(1, 2).requires_grad_(True)
    v = torch.randn(B, K, H, D, generator=g).transpose(1, 2).requires_grad_(True)
    out = attention(q, k, v, _padding(B, K, g), causal=False)
    out.backward(torch.randn_like(out))
    assert bounds == []


@pytest.mark.parametrize("form", ["pad", "holes", "add4d"])
def test_masked_softmax_chunked_path_on_a_transposed_view_stays_inside(bounds, form):
    # rows in 8-column chunks (the looped path, forced through the operator's block sizes), K = 61, scores read
    # through a transposed view
    from hf_masked_softmax.masks import prepare_mask
    from hf_masked_softmax.ops import masked_softmax_op

    g = torch.Generator().manual_seed(61)
    B, H, Q, K = 2, 2, 7, 61
    scores = torch.randn(B, H, K, Q, generator=g).transpose(2, 3).requires_grad_(True)
    mask = _padding(B, K, g)
    if form == "holes":
        mask[1, 30:35] = False
    elif form == "add4d":
        mask = torch.zeros(B, 1, 1, K).masked_fill(~mask[:, None, None, :], float("-inf"))
    spec = prepare_mask(mask, (B, H, Q, K), scores.device)
    y = masked_softmax_op(scores, mask, spec.kind, spec.threshold, True, 0.5, 16, 8)
    y.backward(torch.randn(y.shape, generator=g))
    assert bounds == []
