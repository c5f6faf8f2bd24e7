"""The Hopper forward (hf_masked_softmax._hopper, a Gluon kernel): which calls it takes, that it compiles for sm_90 on
this CPU with the overlap it is written for, and, on an H100 / H200, its outputs against the fp64 reference for
every case it takes (padding on either side, holes, an empty sequence, Q != K, GQA, partial query tiles, fused-QKV
strides, bf16; each causal too), inside a CUDA graph, and in a patched BERT and GPT-2."""
import contextlib
import importlib
import os
import subprocess
import sys
from unittest import mock

import pytest
import torch

from hf_masked_softmax import attention as attention_fn
from test_attention import OUT_SCALE, _pad_mask, _qkv, _ref
from tolerances import assert_close

hopper = importlib.import_module("hf_masked_softmax._hopper")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _hf_qkv(B, H, Hkv, Q, K, dtype, device="cpu", fused=False, seed=0, d=64):
    """q, k, v as HF's projections give them: ``[B, L, heads, d]`` memory seen as ``[B, heads, L, d]``; ``fused``:
    views into one ``[B, L, 3, H, d]`` tensor (a fused QKV projection, Q == K and H == Hkv)."""
    if fused:
        g = torch.Generator(device="cpu").manual_seed(seed)
        qkv = torch.randn(B, Q, 3, H, d, generator=g).to(device, dtype)
        return tuple(qkv[:, :, i].transpose(1, 2) for i in range(3))
    return _qkv(B, H, Hkv, Q, K, d, dtype, device, seed=seed, bthd=True)


# ---------------------------------------------------------------------------------------------------------------
# Which calls it takes (CPU: the rules on the tensors' shapes and strides)
# ---------------------------------------------------------------------------------------------------------------

def _ok(q, k, v, kind=1, causal=False, fold=True, need_lse=False, drop_thr=0, splits=1, sm_count=8):
    return hopper.call_ok(q, k, v, kind, causal, fold, need_lse, drop_thr, splits, sm_count)


@mock.patch.object(hopper, "SMALL_CALLS", False)  # its default follows the launch path: on with Triton 3.6's
def test_call_ok_takes_large_inference_calls_and_nothing_else():
    q, k, v = _hf_qkv(2, 12, 12, 256, 256, torch.float16)
    assert _ok(q, k, v) and _ok(q, k, v, kind=0)
    assert _ok(*_hf_qkv(2, 12, 12, 256, 256, torch.bfloat16))
    assert _ok(*_hf_qkv(2, 12, 12, 256, 256, torch.float16, fused=True))  # row stride 3 * H * D
    assert _ok(*_hf_qkv(2, 12, 4, 200, 333, torch.float16))  # GQA, Q != K, a partial query tile
    # what it leaves to the Triton kernel
    assert not _ok(q, k, v, kind=2) and not _ok(q, k, v, kind=3)  # 4D masks
    assert _ok(q, k, v, causal=True) and _ok(q, k, v, kind=0, causal=True)  # GPT-2's prefill, bottom-right
    with mock.patch.object(hopper, "CAUSAL_OK", False):
        assert not _ok(q, k, v, causal=True) and _ok(q, k, v)
    assert not _ok(q, k, v, fold=False)  # a scale that cannot go inside the exponent
    assert not _ok(q, k, v, need_lse=True)  # training: the backward reads the Triton forward's log-sum-exp
    assert not _ok(q, k, v, drop_thr=100)
    assert not _ok(q, k, v, splits=2)
    # 2 x 12 x 2 = 48 tiles of 128 rows: enough for 12 multiprocessors (4 each), not for 13, causal or not; smaller
    # calls only with SMALL_CALLS (their host time, eagerly)
    for causal in (False, True):
        assert _ok(q, k, v, causal=causal, sm_count=12) and not _ok(q, k, v, causal=causal, sm_count=13)
        with mock.patch.object(hopper, "SMALL_CALLS", True):
            assert _ok(q, k, v, causal=causal, sm_count=132)
            assert _ok(*_hf_qkv(1, 1, 1, 128, 1, torch.float16), causal=causal, sm_count=132)
    assert not _ok(*_hf_qkv(2, 12, 12, 256, 256, torch.float32))
    assert not _ok(*_qkv(2, 12, 12, 256, 256, 32, torch.float16, "cpu", bthd=True))  # head dim 32
    assert not _ok(*_hf_qkv(2, 12, 12, 127, 256, torch.float16))  # fewer queries than a tile
    assert _ok(*_qkv(2, 12, 12, 256, 256, 64, torch.float16, "cpu"))  # [B, H, L, D] memory (a KV cache's) too
    # a dimension of size 1 whatever its stride (never stepped along); an expanded one (stride 0) is not for TMA
    one = torch.randn(1, 256, 12, 64, dtype=torch.float16).transpose(1, 2)
    assert _ok(one, one, one, sm_count=1)
    assert _ok(q[:, :1], k[:, :1], v[:, :1], sm_count=1)
    assert not _ok(q, k[:, :1].expand(-1, 12, -1, -1), v)
    assert not _ok(q, k.transpose(2, 3).contiguous().transpose(2, 3), v)  # head dim not contiguous
    # an odd row stride (not a multiple of 16 bytes), and a start 2 bytes past alignment
    base = torch.randn(2, 256, 12 * 64 + 1, dtype=torch.float16)
    odd = base[..., :768].view(2, 256, 12, 64).transpose(1, 2)
    assert not _ok(odd, k, v) and not _ok(q, odd, v)
    shifted = base[..., 1:769].view(2, 256, 12, 64).transpose(1, 2)
    assert not _ok(q, k, shifted)


def test_plans_tile_causal_and_small_calls_by_64_rows_three_programs_per_multiprocessor():
    # built here without a GPU (the kernel is only launched on one); Gluon's import is what it needs
    if hopper.kernels() is None:
        pytest.skip("this Triton has no Gluon Hopper API")
    q, k, v = _hf_qkv(2, 12, 12, 256, 256, torch.float16)
    # 2 x 12 x 2 = 48 tiles of 128 rows: four per multiprocessor on 12 of them, not on 13
    for causal, sm_count, rows, per_sm in ((False, 12, 128, 2), (False, 10, 128, 2), (False, 13, 64, 3),
                                           (False, 132, 64, 3), (True, 12, 64, 3), (True, 132, 64, 3)):
        assert hopper.tile_shape(causal, 48, sm_count) == (rows, per_sm)
        plan = hopper.HopperForward(q, k, v, 1, causal, 0.125, sm_count)
        assert plan.block_m == rows  # the Q and O descriptors' blocks
        assert plan.consts["BLOCK_M"] == rows and plan.consts["CAUSAL"] == causal
        assert plan.n_tiles == 2 * 12 * (256 // rows)
        assert plan.grid == (min(plan.n_tiles, per_sm * sm_count),)
        # without causality the tile count and grid size are runtime arguments (0 as constants: one compiled
        # kernel for every batch size); the query blocks per head, and a causal call's counts, are constants
        counts = (plan.n_tiles, plan.grid[0], plan.n_m)
        assert plan.n_m == 256 // rows
        assert (plan.consts["N_TILES"], plan.consts["NPROG"], plan.consts["N_M"]) == (
            counts if causal else (0, 0, plan.n_m))
        for flags, expected in (((False, False), counts), ((True, True), (0, 0, 0)), ((False, True), (0, 0, 0))):
            with mock.patch.object(hopper, "RUNTIME_COUNTS", flags[0]), mock.patch.object(hopper, "RUNTIME_ALL",
                                                                                          flags[1]):
                other = hopper.HopperForward(q, k, v, 1, causal, 0.125, sm_count)
            assert (other.consts["N_TILES"], other.consts["NPROG"], other.consts["N_M"]) == expected


def test_a_plan_launches_by_the_c_function_with_descriptors_encoded_once_per_address(monkeypatch):
    # Triton 3.6's launch path with fakes for the JIT, the launcher and the driver (no GPU here): the first call
    # goes through the JIT; later ones pass each descriptor expanded as Triton's wrapper would (the encoded
    # descriptor, its shape, its strides) and encode a descriptor only for an address not seen before
    if hopper.kernels() is None:
        pytest.skip("this Triton has no Gluon Hopper API")
    from test_launch import FakeCLaunch, FakeLauncher, _wrap_descriptors

    from hf_masked_softmax import _launch

    log, fills = [], []
    meta = [{"swizzle": 128, "elem_size": 2, "elem_type": 8, "block_size": [1, 1, b, 64], "fp4_padded": False}
            for b in (128, 64, 64, 128)]

    class Compiled:
        function, packed_metadata = "fn", ("meta",)
        metadata = type("Meta", (), {"tensordesc_meta": meta})()
        run = FakeLauncher(log, _wrap_descriptors(FakeCLaunch(log), meta))

    class Jit:
        arg_names = hopper.kernels()._attn_fwd_persistent.arg_names

        def __getitem__(self, grid):
            return lambda *args, **kw: (log.append(("jit", grid)), Compiled())[1]

    class Utils:
        @staticmethod
        def fill_tma_descriptor(ptr, *rest):
            fills.append((ptr, rest))
            return ("map", ptr, rest[4] == [1, 1, 64, 64])

    class Driver:
        utils = Utils()

        def get_current_device(self):
            return 0

        def get_current_stream(self, device):
            return 99

    monkeypatch.setattr(_launch, "ENABLED", True)
    monkeypatch.setattr(_launch, "RAW", True)
    monkeypatch.setattr(_launch, "_DRIVER", Driver())
    q, k, v = _hf_qkv(4, 12, 12, 512, 512, torch.float16)
    plan = hopper.HopperForward(q, k, v, 1, False, 0.125, 8)
    plan.kernel = Jit()
    out = torch.empty(4, 512, 12, 64, dtype=torch.float16).transpose(1, 2)
    mask = torch.ones(4, 512, dtype=torch.bool)
    ranges = torch.zeros(4, 4, dtype=torch.int32)
    plan(q, k, v, out, mask, ranges)
    assert [e[0] for e in log] == ["jit"] and plan.raw is not None
    for _ in range(2):
        plan(q, k, v, out, mask, ranges)
    assert [e[0] for e in log] == ["jit", "raw", "raw"]
    assert len(fills) == 4  # the second raw launch reused all four encodings
    args = log[-1][1]
    assert args[:13] == (plan.grid[0], 1, 1, 99, "fn", False, True, None, None, ("meta",), None, None, None)
    expanded = args[13:13 + 36]
    for i, (t, (shape, strides), block) in enumerate(zip((q, k, v, out), plan.views, (128, 64, 64, 128))):
        cu_map, *dims = expanded[9 * i: 9 * i + 9]
        assert cu_map[:2] == ("map", t.data_ptr()) and dims == [*shape, *strides]
        assert fills[i] == (t.data_ptr(), (128, 2, 10, [1, 1, block, 64], shape, strides, 0))  # device enum 8 -> host 10
    assert args[49:60] == (ranges, mask, plan.dummy, 512, 1, 512, 512, plan.qk_scale, plan.n_tiles, plan.grid[0],
                           plan.n_m)  # no sinks: the dummy pointer
    assert args[60:] == plan.tail and len(plan.tail) == len(plan.consts)  # the constexprs, num_warps included
    # a tensor at a new address gets its own encoding; the others are reused
    k2 = torch.empty_like(k.transpose(1, 2)).transpose(1, 2)
    plan(q, k2, v, out, mask, ranges)
    assert len(fills) == 5 and fills[-1][0] == k2.data_ptr()
    assert log[-1][1][13 + 9][1] == k2.data_ptr()
    monkeypatch.setattr(_launch, "RAW", False)  # off: through the launcher with Triton's own descriptors
    plan(q, k, v, out, mask, ranges)
    assert log[-1][0] == "direct" and len(fills) == 5
    sinks = torch.zeros(12)  # a plan with sinks passes them where the dummy was
    sunk = hopper.HopperForward(q, k, v, 1, False, 0.125, 8, sinks=True)
    assert sunk.consts["SINK"] and not plan.consts["SINK"]
    sunk.kernel = Jit()
    monkeypatch.setattr(_launch, "RAW", True)
    sunk(q, k, v, out, mask, ranges, sinks)
    sunk(q, k, v, out, mask, ranges, sinks)
    assert log[-1][0] == "raw" and log[-1][1][51] is sinks


@mock.patch.object(hopper, "SMALL_CALLS", False)
def test_head_dim_128_only_with_wide_heads_on_its_own_tiles():
    # head dim 128: refused unless WIDE_HEADS; then every call (causal or not, any size above the floor) on 64-row
    # tiles of 32-key blocks, two programs per multiprocessor; other head dims still refused
    q, k, v = _hf_qkv(2, 12, 12, 256, 256, torch.float16, d=128)
    with mock.patch.object(hopper, "WIDE_HEADS", False):
        assert hopper.head_dims() == (64,)
        assert not _ok(q, k, v) and not _ok(q, k, v, causal=True)
    with mock.patch.object(hopper, "WIDE_HEADS", True):
        assert hopper.head_dims() == (64, 128)
        assert _ok(q, k, v) and _ok(q, k, v, causal=True) and _ok(q, k, v, kind=0)
        assert _ok(*_hf_qkv(2, 12, 4, 200, 333, torch.bfloat16, d=128))  # GQA, Q != K
        assert _ok(*_hf_qkv(2, 12, 12, 256, 256, torch.float16, fused=True, d=128))
        for d in (32, 80, 96, 256):
            assert not _ok(*_hf_qkv(2, 12, 12, 256, 256, torch.float16, d=d)), d
        assert not _ok(q, k, v, need_lse=True) and not _ok(q, k, v, drop_thr=100) and not _ok(q, k, v, kind=2)
    for causal in (False, True):
        assert hopper.tile_shape(causal, 48 * 132, 132, 128) == (64, 2)
    assert hopper.block_n(128) == 32 and hopper.block_n(64) == 64
    if hopper.kernels() is None:
        return
    plan = hopper.HopperForward(q, k, v, 1, False, 0.125, 12)
    assert (plan.block_m, plan.block_n) == (64, 32) and plan.grid == (min(plan.n_tiles, 2 * 12),)
    assert plan.consts["HEAD_D"] == 128 and plan.consts["BLOCK_N"] == 32 and plan.consts["BLOCK_M"] == 64
    assert plan.n_tiles == 2 * 12 * (256 // 64)


def test_disabled_on_cpu_and_under_the_interpreter():
    q, k, v = _hf_qkv(2, 12, 12, 256, 256, torch.float16)
    assert _ok(q, k, v)
    assert not hopper.usable(q, k, v, 1, False, True, False, 0, 1, 8)  # CPU tensors
    with mock.patch.object(hopper, "ENABLED", False):
        assert not hopper.usable(q, k, v, 1, False, True, False, 0, 1, 8)


# ---------------------------------------------------------------------------------------------------------------
# It compiles for sm_90 here (a subprocess: this session runs the interpreter, which cannot run Gluon)
# ---------------------------------------------------------------------------------------------------------------

_COMPILE = r"""
import sys
sys.path[:0] = [{root!r}, {evals!r}]
import tempfile
import probe_gluon, sass_attention
from hf_masked_softmax import _hopper
# large calls (128-row tiles), a causal one and a small one without causality (64-row tiles); then every count at
# run time (RUNTIME_ALL) for a causal call, and compile-time counts for a large call without causality
# (and with attention sinks: GPT-OSS's causal prefill with grouped queries, and a large call without causality)
for dtype, kind, group, causal, batch, counts, sink in (("fp16", 1, 1, False, 32, "default", False),
                                                        ("bf16", 0, 3, False, 32, "default", False),
                                                        ("fp16", 1, 1, True, 32, "default", False),
                                                        ("bf16", 1, 1, False, 2, "default", False),
                                                        ("fp16", 1, 1, True, 32, "all", False),
                                                        ("fp16", 1, 1, False, 32, "none", False),
                                                        ("bf16", 1, 4, True, 32, "default", True),
                                                        ("fp16", 1, 1, False, 32, "default", True)):
    _hopper.RUNTIME_ALL, _hopper.RUNTIME_COUNTS = counts == "all", counts != "none"
    kern = _hopper.compile_for(90, dtype, kind, group=group, causal=causal, batch=batch, sink=sink)
    rows, per_sm = _hopper.tile_shape(causal, batch * 12 * 4, 132)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kern.asm["cubin"])
        f.flush()
        info = sass_attention.analyse(f.name)
    sass = info["sass"]
    count = lambda p: sum(n.startswith(p) for n in info["ops"])
    print(f"RESULT {{dtype}} {{kind}} regs={{info['registers']}} HGMMA={{count('HGMMA')}} UTMALDG={{count('UTMALDG')}} "
          f"UTMASTG={{count('UTMASTG')}} exps-under-PV={{probe_gluon.exps_under_pv(sass)}} "
          f"rows={{rows}} per_sm={{per_sm}} smem={{kern.metadata.shared}} counts={{counts}} sink={{sink}}")
"""


def _compile_results(template, n):
    """Run a compile script (``template``, formatted with the checkout's paths) outside the interpreter; its ``n``
    ``RESULT`` lines, each as ``(line, {field: value})``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = template.format(root=ROOT, evals=os.path.join(ROOT, "evals"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert len(lines) == n, proc.stdout[-3000:]
    return [(line, dict(f.split("=") for f in line.split()[3:])) for line in lines]


def _programs_fit_together(line, fields):
    """Its programs per multiprocessor fit there together: registers (64K, allocated per thread in steps of 8) and
    shared memory (228 KB on sm_90, 1 KB of it reserved per program)."""
    per_sm = int(fields["per_sm"])
    assert int(fields["regs"]) <= 65536 // (128 * per_sm) // 8 * 8, line
    assert per_sm * (int(fields["smem"]) + 1024) <= 228 * 1024, line


@pytest.mark.gluon
def test_hopper_kernel_compiles_for_sm90_with_the_softmax_under_p_v():
    results = _compile_results(_COMPILE, 8)
    assert [fields["rows"] for _, fields in results] == ["128", "128", "64", "64", "64", "128", "64", "128"]
    for line, fields in results:
        assert int(fields["regs"]) <= 255, line
        assert int(fields["HGMMA"]) > 0 and int(fields["UTMALDG"]) > 0 and int(fields["UTMASTG"]) > 0, line
        # a rows x 64 score tile over 128 threads (64 or 32 exponentials per thread per key block), all while P v
        # runs
        assert int(fields["exps-under-PV"]) >= int(fields["rows"]) * 64 // 128, line
        _programs_fit_together(line, fields)


_COMPILE_WIDE = r"""
import sys
sys.path[:0] = [{root!r}, {evals!r}]
import tempfile
import probe_gluon, sass_attention
from hf_masked_softmax import _hopper
for dtype, kind, group, causal in (("fp16", 1, 1, False), ("bf16", 0, 4, False), ("fp16", 1, 1, True)):
    kern = _hopper.compile_for(90, dtype, kind, group=group, causal=causal, batch=8, queries=1024, head_d=128)
    rows, per_sm = _hopper.tile_shape(causal, 8 * 12 * 8, 132, 128)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kern.asm["cubin"])
        f.flush()
        info = sass_attention.analyse(f.name)
    count = lambda p: sum(n.startswith(p) for n in info["ops"])
    print(f"RESULT {{dtype}} {{kind}} regs={{info['registers']}} HGMMA={{count('HGMMA')}} STL={{count('STL')}} "
          f"exps-under-PV={{probe_gluon.exps_under_pv(info['sass'])}} rows={{rows}} per_sm={{per_sm}} "
          f"smem={{kern.metadata.shared}}")
"""


@pytest.mark.gluon
def test_hopper_kernel_compiles_at_head_dim_128_without_spills():
    # WIDE_HEADS' tiles: 64 rows, 32-key blocks; registers and shared memory for two programs per multiprocessor,
    # nothing spilled to local memory, and the softmax's exponentials (64 x 32 over 128 threads) under P v
    for line, fields in _compile_results(_COMPILE_WIDE, 3):
        assert (int(fields["rows"]), int(fields["per_sm"])) == (64, 2), line
        assert int(fields["STL"]) == 0 and int(fields["HGMMA"]) > 0, line
        assert int(fields["exps-under-PV"]) >= 64 * 32 // 128, line
        _programs_fit_together(line, fields)


# ---------------------------------------------------------------------------------------------------------------
# GPU (an H100 / H200): against the fp64 reference
# ---------------------------------------------------------------------------------------------------------------

def _hopper_gpu():
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the Hopper kernel runs on compute capability 9.0 only")
    if hopper.kernels() is None:
        pytest.skip("this Triton has no Gluon Hopper API")


@contextlib.contextmanager
def _count_launches():
    calls = []
    real = hopper.HopperForward.__call__

    def counting(self, *args):
        calls.append(self.consts["MASK_KIND"])
        return real(self, *args)

    with mock.patch.object(hopper.HopperForward, "__call__", counting):
        yield calls


def _mask(case, B, K, device):
    g = torch.Generator().manual_seed(7)
    lens = torch.randint(1, K + 1, (B,), generator=g).tolist()
    if case == "none":
        return None
    if case in ("right", "left"):
        return _pad_mask(lens, K, case, device)
    m = _pad_mask(lens, K, "right", device, dtype=torch.int64)
    if case == "holes":
        m[0, 5:70] = 0  # a sequence with holes: its mask row read in every block
        m[1, ::3] = 0
    elif case == "empty":
        m[0] = 0  # a sequence with no key at all: zeros
    return m


CASES = {  # name: (B, H, Hkv, Q, K, mask, fused QKV, causal); most make at least 576 tiles of 128 queries
    "bert-right": (12, 12, 12, 512, 512, "right", False, False),
    "bert-left": (12, 12, 12, 512, 512, "left", False, False),
    "no-mask-partial-tiles": (24, 12, 12, 200, 200, "none", False, False),
    "q-ne-k-gqa": (16, 12, 4, 300, 517, "right", False, False),
    "holes": (24, 12, 12, 256, 256, "holes", False, False),
    "empty-sequence": (24, 12, 12, 256, 300, "empty", False, False),
    "fused-qkv": (16, 12, 12, 384, 384, "left", True, False),
    # causal (bottom-right): GPT-2's prefill, rows with no key (left padding, Q > K), the diagonal off the tiles
    "causal-gpt2-right": (8, 12, 12, 1024, 1024, "right", True, True),
    "causal-left": (12, 12, 12, 512, 512, "left", False, True),
    "causal-no-mask-partial-tiles": (24, 12, 12, 200, 200, "none", False, True),
    "causal-q-lt-k-gqa": (16, 12, 4, 300, 517, "right", False, True),
    "causal-q-gt-k": (16, 12, 12, 517, 300, "none", False, True),
    "causal-holes": (24, 12, 12, 256, 256, "holes", False, True),
    "causal-empty-sequence": (24, 12, 12, 256, 300, "empty", False, True),
    # small calls without causality (below four 128-row tiles per SM; with SMALL_CALLS): 64-row tiles
    "small-right": (2, 12, 12, 512, 512, "right", False, False),
    "small-q-ne-k-gqa-holes": (2, 12, 4, 300, 517, "holes", False, False),
    "small-no-mask": (1, 4, 4, 128, 200, "none", False, False),
}


def _case(case, dtype, d=64, batch_div=1):
    """``CASES[case]`` on the GPU at head dim ``d`` (the batch divided by ``batch_div``): q, k, v in HF's layout, the
    mask, its kind and whether the call is causal."""
    B, H, Hkv, Q, K, mask_case, fused, causal = CASES[case]
    B = max(1, B // batch_div)
    q, k, v = _hf_qkv(B, H, Hkv, Q, K, dtype, "cuda", fused=fused, d=d)
    return q, k, v, _mask(mask_case, B, K, "cuda"), mask_case, causal


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
def test_gpu_hopper_forward_matches_reference(case, dtype):
    _hopper_gpu()
    q, k, v, mask, mask_case, causal = _case(case, dtype)
    B, Q, K = q.shape[0], q.shape[2], k.shape[2]
    with _count_launches() as calls, torch.no_grad(), mock.patch.object(hopper, "SMALL_CALLS",
                                                                         case.startswith("small-")):
        out = attention_fn(q, k, v, mask, causal=causal)
    assert calls == [0 if mask is None else 1], "the Hopper kernel did not run"
    assert out.shape == q.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    ref, _ = _ref(q, k, v, mask, causal)
    assert_close(out, ref, dtype, scale=OUT_SCALE[dtype])
    if mask_case == "empty":
        assert (out[0] == 0).all()
    if causal and Q > K:
        assert (out[:, :, : Q - K] == 0).all()  # rows before the first key they may see
    if causal and mask_case == "left":
        starts = (mask == 0).sum(1)  # left padding: rows before a sequence's first key see nothing
        for b in range(B):
            assert (out[b, :, : int(starts[b])] == 0).all()
    # and the Triton kernel's result, as a second opinion at the same rounding of P
    with mock.patch.object(hopper, "ENABLED", False), _count_launches() as calls, torch.no_grad():
        triton_out = attention_fn(q, k, v, mask, causal=causal)
    assert calls == []
    assert_close(out, triton_out.double(), dtype, scale=OUT_SCALE[dtype])


WIDE_CASES = ["bert-right", "q-ne-k-gqa", "holes", "empty-sequence", "fused-qkv", "causal-gpt2-right", "causal-left",
              "causal-q-gt-k", "small-no-mask"]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", WIDE_CASES)
def test_gpu_hopper_forward_at_head_dim_128_matches_reference(case, dtype):
    # WIDE_HEADS on: head dim 128 on its own tiles, against fp64 and the Triton kernel
    _hopper_gpu()
    q, k, v, mask, mask_case, causal = _case(case, dtype, d=128, batch_div=2)  # twice the bytes per head
    with _count_launches() as calls, torch.no_grad(), mock.patch.object(hopper, "WIDE_HEADS", True), \
            mock.patch.object(hopper, "SMALL_CALLS", True):
        out = attention_fn(q, k, v, mask, causal=causal)
    assert calls == [0 if mask is None else 1], "the Hopper kernel did not run"
    assert out.shape == q.shape and torch.isfinite(out).all()
    ref, _ = _ref(q, k, v, mask, causal)
    assert_close(out, ref, dtype, scale=OUT_SCALE[dtype])
    if mask_case == "empty":
        assert (out[0] == 0).all()
    with mock.patch.object(hopper, "WIDE_HEADS", False), _count_launches() as calls, torch.no_grad():
        triton_out = attention_fn(q, k, v, mask, causal=causal)
    assert calls == []
    assert_close(out, triton_out.double(), dtype, scale=OUT_SCALE[dtype])


@pytest.mark.gpu
def test_gpu_repeated_calls_launch_by_the_c_function_and_reuse_descriptors_only_for_their_address():
    from hf_masked_softmax import _launch

    _hopper_gpu()
    if not _launch.RAW:
        pytest.skip(f"the C launch is not used with this Triton ({_launch.triton.__version__})")
    plans = []
    real = hopper.HopperForward.__call__

    def keep(self, *args):
        plans.append(self)
        return real(self, *args)

    mask = _mask("right", 12, 512, "cuda")
    q, k, v = _hf_qkv(12, 12, 12, 512, 512, torch.float16, "cuda", seed=1)
    q2, k2, v2 = _hf_qkv(12, 12, 12, 512, 512, torch.float16, "cuda", seed=2)
    with torch.no_grad(), mock.patch.object(hopper.HopperForward, "__call__", keep):
        outs = [attention_fn(q, k, v, mask) for _ in range(3)]
        plan = plans[-1]
        assert plan.raw is not None and plan.compiled is not None
        maps = [len(m) for m in plan.maps]
        other = attention_fn(q2, k2, v2, mask)  # new addresses: new encodings
        assert all(len(m) > n for m, n in zip(plan.maps[:3], maps[:3]))  # q, k and v each at a new address
        for t, t2 in ((q, q2), (k, k2), (v, v2)):
            t.copy_(t2)  # the first tensors' memory now holds the second's values: the cached encodings again
        again = attention_fn(q, k, v, mask)
        with mock.patch.object(_launch, "RAW", False):
            plain = attention_fn(q, k, v, mask)
    assert len({id(p) for p in plans}) == 1
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])
    ref, _ = _ref(q2, k2, v2, mask, False)
    for out in (other, again, plain):
        assert_close(out, ref, torch.float16, scale=OUT_SCALE[torch.float16])
    assert torch.equal(again, other) and torch.equal(plain, again)


@pytest.mark.gpu
@pytest.mark.parametrize("setting", ["batch sizes", "batch sizes and lengths, causal too"])
def test_gpu_runtime_counts_share_one_compiled_kernel(setting):
    # counts passed at run time: plans for other shapes with the same dtype, mask form, heads and tile shape run
    # the same compiled kernel, and each is right. RUNTIME_COUNTS (the default): calls without causality, any batch
    # size; RUNTIME_ALL: any call, any batch size and query length
    _hopper_gpu()
    every = setting.endswith("too")
    if every:
        shapes = ((12, 512, 512, False), (16, 512, 512, False), (20, 640, 640, False), (12, 384, 448, False),
                  (12, 512, 512, True), (4, 768, 768, True), (2, 208, 304, True))
    else:
        shapes = ((12, 512, 512, False), (16, 512, 512, False), (24, 512, 448, False))
    # (lengths all multiples of 16: Triton specialises integer arguments on that, the lengths too)
    plans = []
    real = hopper.HopperForward.__call__

    def keep(self, *args):
        plans.append(self)
        return real(self, *args)

    with torch.no_grad(), mock.patch.object(hopper.HopperForward, "__call__", keep), \
            mock.patch.object(hopper, "RUNTIME_ALL", every), mock.patch.object(hopper, "RUNTIME_COUNTS", True):
        for B, Q, K, causal in shapes:
            q, k, v = _hf_qkv(B, 12, 12, Q, K, torch.float16, "cuda", seed=B)
            mask = _mask("right", B, K, "cuda")
            for _ in range(2):  # the second call runs the kernel the first one compiled, through the C launch
                out = attention_fn(q, k, v, mask, causal=causal)
            ref, _ = _ref(q, k, v, mask, causal)
            assert_close(out, ref, torch.float16, scale=OUT_SCALE[torch.float16])
    by_shape = {}
    for p in plans:
        by_shape.setdefault((p.n_tiles, p.n_m, p.block_m, p.consts["CAUSAL"]), p)
    assert len(by_shape) == len(shapes) and all(p.compiled is not None for p in by_shape.values())
    kernels = {}
    for (_, _, rows, causal), p in by_shape.items():
        kernels.setdefault((rows, causal), set()).add(id(p.compiled))
    assert all(len(ids) == 1 for ids in kernels.values()), kernels


@pytest.mark.gpu
def test_gpu_hopper_forward_in_a_cuda_graph():
    _hopper_gpu()
    q, k, v = _hf_qkv(16, 12, 12, 512, 512, torch.float16, "cuda")
    mask = _mask("right", 16, 512, "cuda")
    with torch.no_grad():
        eager = attention_fn(q, k, v, mask)
        graph = torch.cuda.CUDAGraph()
        with _count_launches() as calls, torch.cuda.graph(graph):
            out = attention_fn(q, k, v, mask)
        assert calls == [1]
        q.copy_(torch.randn_like(q))  # replays read the tensors' new contents
        graph.replay()
        torch.cuda.synchronize()
        ref, _ = _ref(q, k, v, mask, False)
    assert_close(out, ref, torch.float16, scale=OUT_SCALE[torch.float16])
    assert not torch.equal(out, eager)


SINK_CASES = ["bert-left", "q-ne-k-gqa", "empty-sequence", "causal-gpt2-right", "causal-left", "causal-q-gt-k",
              "small-right"]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", SINK_CASES)
def test_gpu_hopper_forward_with_sinks_matches_reference(case, dtype):
    # GPT-OSS's attention sinks in the Hopper kernel's epilogue: against fp64 and the Triton kernel's (SINKS_OK
    # off); one head's sink is -inf (no sink), one is large enough to take most of its rows' weight
    _hopper_gpu()
    q, k, v, mask, mask_case, causal = _case(case, dtype)
    sinks = torch.randn(q.shape[1], generator=torch.Generator().manual_seed(5)) * 2
    sinks[0], sinks[1] = float("-inf"), 12.0
    sinks = sinks.cuda()
    with _count_launches() as calls, torch.no_grad(), mock.patch.object(hopper, "SMALL_CALLS",
                                                                         case.startswith("small-")):
        out = attention_fn(q, k, v, mask, causal=causal, sinks=sinks)
        plain = attention_fn(q, k, v, mask, causal=causal)
    assert calls == [0 if mask is None else 1] * 2, "the Hopper kernel did not run"
    assert torch.isfinite(out).all()
    ref, _ = _ref(q, k, v, mask, causal, sinks=sinks)
    assert_close(out, ref, dtype, scale=OUT_SCALE[dtype])
    assert torch.equal(out[:, 0], plain[:, 0])  # a sink of -inf is no sink, bit for bit
    assert (ref - _ref(q, k, v, mask, causal)[0]).abs().max() > 0.1  # the sinks matter: the check could fail
    if mask_case == "empty":
        assert (out[0] == 0).all()
    with mock.patch.object(hopper, "SINKS_OK", False), _count_launches() as calls, torch.no_grad():
        triton_out = attention_fn(q, k, v, mask, causal=causal, sinks=sinks)
    assert calls == []
    assert_close(out, triton_out.double(), dtype, scale=OUT_SCALE[dtype])


@pytest.mark.gpu
def test_gpu_training_keeps_the_triton_forward():
    _hopper_gpu()
    q, k, v = _hf_qkv(12, 12, 12, 256, 256, torch.float16, "cuda")
    for t in (q, k, v):
        t.requires_grad_(True)
    mask = _mask("right", 12, 256, "cuda")
    with _count_launches() as calls:
        out = attention_fn(q, k, v, mask)
        out.float().square().sum().backward()
    assert calls == []  # the backward needs the log-sum-exp, which the Hopper kernel does not write
    assert q.grad is not None and torch.isfinite(q.grad).all()


def _patched_model_check(model, mask, output):
    """A 2-layer model (fp32, eager attention) on the GPU against its fp16 copy patched in fused mode: the Hopper
    kernel runs once per layer, and on the valid positions the patched fp16 error against fp32 is at most twice
    eager fp16's (flash-attn's rule, as tests/test_patch_gpu.py)."""
    import hf_masked_softmax

    B, T = mask.shape
    ids = torch.randint(0, model.config.vocab_size, (B, T), device="cuda")
    with torch.no_grad():
        ref = output(model(input_ids=ids, attention_mask=mask))
        model.half()
        eager16 = output(model(input_ids=ids, attention_mask=mask))
        hf_masked_softmax.patch_model(model, mode="fused")
        with _count_launches() as calls:
            out = output(model(input_ids=ids, attention_mask=mask))
    assert calls == [1, 1], "the Hopper kernel did not run once per layer"
    keep = mask.bool()
    err = (out.float() - ref)[keep].abs().max()
    eager_err = (eager16.float() - ref)[keep].abs().max()
    assert err <= 2 * eager_err, (float(err), float(eager_err))


@pytest.mark.gpu
def test_gpu_patched_bert_inference_runs_the_hopper_kernel():
    _hopper_gpu()
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(num_hidden_layers=2, attn_implementation="eager")).cuda().eval()
    _patched_model_check(model, _mask("right", 24, 256, "cuda"), lambda o: o.last_hidden_state)  # 576 tiles


@pytest.mark.gpu
@pytest.mark.parametrize("side", ["right", "left"])
def test_gpu_patched_gpt2_inference_runs_the_hopper_kernel(side):
    # causal, and (use_cache by default) keys and values from the KV cache's [B, H, T, D] memory
    _hopper_gpu()
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, attn_implementation="eager")).cuda().eval()
    B, T = 8, 768  # 576 tiles
    g = torch.Generator().manual_seed(3)
    mask = _pad_mask(torch.randint(T // 2, T + 1, (B,), generator=g).tolist(), T, side, "cuda", dtype=torch.int64)
    _patched_model_check(model, mask, lambda o: o.logits)


@pytest.mark.gpu
def test_gpu_compiled_inference_runs_the_hopper_kernel():
    # torch.compile'd inference calls the attention_inference operator, whose forward can take the Hopper kernel
    _hopper_gpu()
    torch._dynamo.reset()
    q, k, v = _hf_qkv(24, 12, 12, 256, 256, torch.float16, "cuda")
    mask = _mask("left", 24, 256, "cuda")
    compiled = torch.compile(lambda q, k, v, m: attention_fn(q, k, v, m), backend="aot_eager", fullgraph=True)
    with torch.no_grad(), _count_launches() as calls:
        out = compiled(q, k, v, mask)
        eager = attention_fn(q, k, v, mask)
    assert calls == [1, 1]
    assert torch.equal(out, eager)
    torch._dynamo.reset()
