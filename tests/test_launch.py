"""The launch shortcut (hf_masked_softmax._launch): which launches reuse a compiled kernel, and with what arguments.

Triton's launch path cannot run on CPU, so a fake JIT function stands in for it: it records the launches that go
through "Triton" and returns a fake compiled kernel that records direct runs. The real kernels go through the
shortcut in every GPU test (tests marked gpu, on the device)."""
from __future__ import annotations

import pytest
import torch

from hf_masked_softmax import _launch


class FakeCompiled:
    def __init__(self, log):
        self.log = log
        self.function = "fn-handle"
        self.packed_metadata = ("meta",)

    def run(self, *args):
        self.log.append(("direct", args))


class FakeJit:
    """Parameters: two pointers, two integers, a float, then the constexprs BLOCK and FLAG."""
    arg_names = ["x_ptr", "y_ptr", "n", "stride", "scale", "BLOCK", "FLAG"]

    def __init__(self):
        self.log = []
        self.compiled = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append(("triton", grid, args, kwargs))
            kernel = FakeCompiled(self.log)
            self.compiled.append(kernel)
            return kernel
        return launch


class FakeDriver:
    def get_current_device(self):
        return 0

    def get_current_stream(self, device):
        return 1234


@pytest.fixture
def kernel(monkeypatch):
    monkeypatch.setattr(_launch, "ENABLED", True)
    monkeypatch.setattr(_launch, "_DRIVER", FakeDriver())
    return _launch.FastLaunch(FakeJit())


def _launch_once(kernel, x, y, n=8, stride=16, scale=0.5, grid=(3, 2), **kw):
    meta = dict(BLOCK=64, FLAG=True, num_warps=4)
    meta.update(kw)
    kernel[grid](x, y, n, stride, scale, **meta)
    return kernel.fn.log[-1]


def test_the_second_identical_launch_runs_the_compiled_kernel_with_every_parameter_in_order(kernel):
    x, y = torch.zeros(64), torch.zeros(64)
    first = _launch_once(kernel, x, y)
    assert first[0] == "triton"
    second = _launch_once(kernel, x, y, grid=(5,))
    assert second[0] == "direct"
    grid_and_stream = second[1][:4]
    assert grid_and_stream == (5, 1, 1, 1234)
    assert second[1][4:9] == ("fn-handle", ("meta",), None, None, None)
    # runtime arguments, then the constexprs in parameter order (num_warps is an option, not a parameter)
    assert second[1][9:] == (x, y, 8, 16, 0.5, 64, True)


@pytest.mark.parametrize("change", ["int value", "int type", "float value", "constexpr", "option", "dtype",
                                    "alignment"])
def test_anything_triton_may_specialise_on_goes_back_through_triton(kernel, change):
    x, y = torch.zeros(64), torch.zeros(64)
    _launch_once(kernel, x, y)
    args = dict(n=8, stride=16, scale=0.5)
    meta = {}
    if change == "int value":
        args["stride"] = 17  # no longer divisible by 16
    elif change == "int type":
        args["stride"] = 16.0
    elif change == "float value":
        args["scale"] = 0.25
    elif change == "constexpr":
        meta["BLOCK"] = 128
    elif change == "option":
        meta["num_warps"] = 8
    elif change == "dtype":
        x = x.half()
    elif change == "alignment":
        x = torch.zeros(65)[1:]  # 4 bytes past an aligned allocation
    assert _launch_once(kernel, x, y, **args, **meta)[0] == "triton"
    # and the key it made is reused from then on
    assert _launch_once(kernel, x, y, **args, **meta)[0] == "direct"


def test_new_tensors_with_the_same_dtype_and_alignment_reuse_the_kernel(kernel):
    _launch_once(kernel, torch.zeros(64), torch.zeros(64))
    x, y = torch.zeros(32), torch.ones(128)
    last = _launch_once(kernel, x, y)
    assert last[0] == "direct" and last[1][9] is x and last[1][10] is y


def test_a_non_tensor_in_a_pointer_slot_is_never_cached(kernel):
    x = torch.zeros(64)
    for _ in range(2):
        kernel[(1,)](x, None, 8, 16, 0.5, BLOCK=64, FLAG=True)
        assert kernel.fn.log[-1][0] == "triton"
    assert not kernel.cache


def test_a_tensor_where_a_value_goes_is_never_cached(kernel):
    x, y = torch.zeros(64), torch.zeros(64)
    for _ in range(2):
        kernel[(1,)](x, y, torch.tensor(8), 16, 0.5, BLOCK=64, FLAG=True)
        assert kernel.fn.log[-1][0] == "triton"
    assert not kernel.cache


def test_a_constexpr_by_position_keeps_parameter_order_and_a_missing_one_is_never_cached(kernel):
    x, y = torch.zeros(64), torch.zeros(64)
    for _ in range(2):
        kernel[(1,)](x, y, 8, 16, 0.5, 64, FLAG=True)  # BLOCK by position
    assert kernel.fn.log[-1] == ("direct", (1, 1, 1, 1234, "fn-handle", ("meta",), None, None, None,
                                            x, y, 8, 16, 0.5, 64, True))
    kernel.cache.clear()
    for _ in range(2):
        kernel[(1,)](x, y, 8, 16, 0.5, BLOCK=64)  # FLAG missing (a default in a real kernel)
        assert kernel.fn.log[-1][0] == "triton"
    assert not kernel.cache


def test_a_launch_hook_sends_every_launch_through_triton(kernel, monkeypatch):
    x, y = torch.zeros(64), torch.zeros(64)
    _launch_once(kernel, x, y)

    class Chain:  # like Triton's HookChain
        def __init__(self, calls):
            self.calls = calls

    class Runtime:
        launch_enter_hook = Chain([])
        launch_exit_hook = None

    class Knobs:
        runtime = Runtime()

    monkeypatch.setattr(_launch, "_KNOBS", Knobs())
    assert _launch_once(kernel, x, y)[0] == "direct"  # an empty chain calls nothing
    Runtime.launch_enter_hook = Chain([print])
    assert _launch_once(kernel, x, y)[0] == "triton"
    Runtime.launch_enter_hook, Runtime.launch_exit_hook = None, lambda *a: None  # a plain function
    assert _launch_once(kernel, x, y)[0] == "triton"


def test_disabled_means_triton_every_time(kernel, monkeypatch):
    monkeypatch.setattr(_launch, "ENABLED", False)
    x, y = torch.zeros(64), torch.zeros(64)
    _launch_once(kernel, x, y)
    assert _launch_once(kernel, x, y)[0] == "triton"


def test_the_cache_is_bounded(kernel, monkeypatch):
    monkeypatch.setattr(_launch, "_MAX_ENTRIES", 4)
    x, y = torch.zeros(64), torch.zeros(64)
    for n in range(10):
        _launch_once(kernel, x, y, n=n)
        assert len(kernel.cache) <= 4


# ----------------------------------------------------------------------------------------------------------------------
# Bound launches (everything but the pointers fixed once per signature: the launchers' plans)
# ----------------------------------------------------------------------------------------------------------------------
def _bound(kernel, grid=(3, 2)):
    return _launch.bind(kernel, grid, (8, 16, 0.5), dict(BLOCK=64, FLAG=True, num_warps=4))


def test_a_bound_launch_goes_through_triton_once_then_runs_the_compiled_kernel(kernel):
    bound = _bound(kernel)
    x, y = torch.zeros(64), torch.zeros(64)
    bound(x, y)
    assert kernel.fn.log[-1] == ("triton", (3, 2), (x, y, 8, 16, 0.5),
                                 dict(enable_fp_fusion=True, BLOCK=64, FLAG=True, num_warps=4))
    x2, y2 = torch.ones(64), torch.ones(32)
    bound(x2, y2)
    assert kernel.fn.log[-1] == ("direct", (3, 2, 1, 1234, "fn-handle", ("meta",), None, None, None,
                                            x2, y2, 8, 16, 0.5, 64, True))
    assert len(kernel.fn.compiled) == 1


def test_a_bound_launch_takes_triton_while_disabled_or_hooked(kernel, monkeypatch):
    bound = _bound(kernel)
    x, y = torch.zeros(64), torch.zeros(64)
    bound(x, y)
    monkeypatch.setattr(_launch, "ENABLED", False)
    bound(x, y)
    assert kernel.fn.log[-1][0] == "triton"
    monkeypatch.setattr(_launch, "ENABLED", True)
    monkeypatch.setattr(_launch, "_hooks_installed", lambda: True)
    bound(x, y)
    assert kernel.fn.log[-1][0] == "triton"


def test_a_bound_launch_never_keeps_a_kernel_for_non_tensor_pointers_or_missing_constexprs(kernel):
    x = torch.zeros(64)
    for _ in range(2):
        _bound(kernel)(x, None)
        assert kernel.fn.log[-1][0] == "triton"
    bound = _launch.bind(kernel, (1,), (8, 16, 0.5), dict(BLOCK=64))  # FLAG left to a default
    for _ in range(2):
        bound(x, x)
        assert kernel.fn.log[-1][0] == "triton"


def test_bind_on_anything_else_launches_with_its_grid():
    calls = []

    class Spy:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: calls.append((grid, args, kwargs))

    _launch.bind(Spy(), (4,), (1, 2), dict(BLOCK=8))("p", "q")
    assert calls == [((4,), ("p", "q", 1, 2), dict(enable_fp_fusion=True, BLOCK=8))]


@pytest.mark.parametrize("enabled", [True, False])
def test_every_launch_asks_for_fused_multiply_adds(kernel, monkeypatch, enabled):
    # Triton 3.6 fuses by default and 3.10 will not: the folded scale is one FMA per score, so launches say so (and
    # a caller's own choice wins)
    monkeypatch.setattr(_launch, "ENABLED", enabled)
    x = torch.zeros(64)
    assert _launch_once(kernel, x, x)[3]["enable_fp_fusion"] is True
    assert _launch_once(kernel, x, x, enable_fp_fusion=False)[3]["enable_fp_fusion"] is False
    _bound(kernel)(x, x)
    assert kernel.fn.log[-1][3]["enable_fp_fusion"] is True


@pytest.mark.parametrize("value, expected", [("0", False), ("off", False), ("1", True), ("yes", True)])
def test_the_environment_variable_decides(monkeypatch, value, expected):
    monkeypatch.setenv("HF_MASKED_SOFTMAX_FAST_LAUNCH", value)
    assert _launch._enabled() is expected


@pytest.mark.parametrize("version, expected", [("3.6.0", True), ("3.4.1", True), ("3.3.1", False), ("3.9.0", False)])
def test_on_by_default_only_for_the_triton_versions_whose_launch_path_was_checked(monkeypatch, version, expected):
    monkeypatch.delenv("HF_MASKED_SOFTMAX_FAST_LAUNCH", raising=False)
    monkeypatch.setattr(_launch.triton, "__version__", version)
    assert _launch._enabled() is (expected and torch.version.hip is None)


def test_the_package_kernels_are_wrapped_and_pointer_parameters_counted():
    import importlib

    attn = importlib.import_module("hf_masked_softmax.attention")
    ms = importlib.import_module("hf_masked_softmax.masked_softmax")
    masks = importlib.import_module("hf_masked_softmax.masks")
    expected = {attn._attn_fwd_kernel: 9, attn._bwd_dkdv_kernel: 11, attn._bwd_dq_kernel: 10,
                attn._bwd_delta_kernel: 3, attn._split_combine_kernel: 5, ms._fwd_kernel: 5, ms._bwd_kernel: 4,
                masks._pad_ranges_kernel: 2, masks._mask4d_bounds_kernel: 2}
    for k, n_ptr in expected.items():
        assert isinstance(k, _launch.FastLaunch)
        assert k.n_ptr == n_ptr
        assert all(name.endswith("_ptr") for name in k.arg_names[:n_ptr])


# ---------------------------------------------------------------------------------------------------------------
# The C launch function called directly (raw_launch): fakes shaped like Triton 3.6's CudaLauncher
# ---------------------------------------------------------------------------------------------------------------

class FakeCLaunch:
    """Stands in for the launcher module's C ``launch`` (a builtin: no ``__code__``)."""

    def __init__(self, log):
        self.log = log

    def __call__(self, *args):
        self.log.append(("raw", args))


def _wrap_descriptors(launcher, tensordesc_meta):
    """Shaped like Triton 3.6's ``wrap_handle_tensordesc``: a closure over the C launch and the descriptors' meta."""
    def inner(*args):
        return launcher(*args, tensordesc_meta)
    return inner


class FakeLauncher:
    def __init__(self, log, launch, scratch=0, profile=0):
        self.log, self.launch = log, launch
        self.global_scratch_size, self.profile_scratch_size = scratch, profile
        self.launch_cooperative_grid, self.launch_pdl = False, True

    def __call__(self, *args):
        self.log.append(("direct", args))


class FakeCompiledRaw(FakeCompiled):
    def __init__(self, log, **kw):
        super().__init__(log)
        self.run = FakeLauncher(log, FakeCLaunch(log), **kw)


def test_raw_launch_takes_the_c_function_only_where_the_wrapper_can_be_skipped(monkeypatch):
    monkeypatch.setattr(_launch, "RAW", True)
    log = []
    plain = FakeCompiledRaw(log)
    fn, coop, pdl = _launch.raw_launch(plain)
    assert fn is plain.run.launch and (coop, pdl) == (False, True)
    assert _launch.raw_launch(plain, descriptors=True) is None  # no descriptor wrapper: nothing to expand
    # scratch memory would have to be allocated per launch: the launcher's own path
    assert _launch.raw_launch(FakeCompiledRaw(log, scratch=64)) is None
    assert _launch.raw_launch(FakeCompiledRaw(log, profile=8)) is None
    # a tensor-descriptor wrapper: its C function, and only for a caller that expands descriptors itself
    wrapped = FakeCompiledRaw(log)
    c_fn = wrapped.run.launch
    wrapped.run.launch = _wrap_descriptors(c_fn, [{"swizzle": 128}])
    assert _launch.raw_launch(wrapped) is None
    assert _launch.raw_launch(wrapped, descriptors=True)[0] is c_fn
    # any other Python function in its place: unknown, so never skipped
    wrapped.run.launch = lambda *args: None
    assert _launch.raw_launch(wrapped, descriptors=True) is None
    assert _launch.raw_launch(FakeCompiled(log)) is None  # kernel.run without a launcher's attributes
    monkeypatch.setattr(_launch, "RAW", False)
    assert _launch.raw_launch(plain) is None


def test_run_calls_the_c_function_with_the_launchers_argument_order(kernel, monkeypatch):
    monkeypatch.setattr(_launch, "RAW", True)
    log = []
    compiled = FakeCompiledRaw(log)
    raw = _launch.raw_launch(compiled)
    _launch._run(compiled, (7, 2), 0, ("a", 3), raw)
    # grid, stream, function, cooperative grid, PDL, no global / profile scratch, packed metadata, no launch
    # metadata, no enter / exit hooks, then the parameters
    assert log[-1] == ("raw", (7, 2, 1, 1234, "fn-handle", False, True, None, None, ("meta",), None, None, None,
                               "a", 3))
    monkeypatch.setattr(_launch, "RAW", False)  # switched off after binding: the launcher again
    _launch._run(compiled, (7,), 0, ("a", 3), raw)
    assert log[-1] == ("direct", (7, 1, 1, 1234, "fn-handle", ("meta",), None, None, None, "a", 3))


def test_a_bound_launch_and_the_key_cache_use_the_c_function(monkeypatch):
    monkeypatch.setattr(_launch, "ENABLED", True)
    monkeypatch.setattr(_launch, "RAW", True)
    monkeypatch.setattr(_launch, "_DRIVER", FakeDriver())

    class RawJit(FakeJit):
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                self.log.append(("triton", grid, args, kwargs))
                return FakeCompiledRaw(self.log)
            return launch

    x, y = torch.zeros(64), torch.zeros(64)
    kernel = _launch.FastLaunch(RawJit())
    for _ in range(2):
        _launch_once(kernel, x, y)
    assert [e[0] for e in kernel.fn.log] == ["triton", "raw"]
    assert kernel.fn.log[-1][1][13:] == (x, y, 8, 16, 0.5, 64, True)
    bound = _bound(_launch.FastLaunch(RawJit()))
    bound(x, y)
    bound(x, y)
    assert [e[0] for e in bound.owner.fn.log] == ["triton", "raw"]
    assert bound.owner.fn.log[-1][1][:3] == (3, 2, 1)


# ---------------------------------------------------------------------------------------------------------------
# GPU: the real kernels through the shortcut
# ---------------------------------------------------------------------------------------------------------------

class _CountingJit:
    """Wraps a JITFunction and counts the launches that go through Triton's own path."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0
        self.arg_names = fn.arg_names

    def __getitem__(self, grid):
        self.calls += 1
        return self.fn[grid]


@pytest.mark.gpu
def test_gpu_repeated_launches_take_the_shortcut_and_alignment_changes_do_not(monkeypatch):
    import importlib

    from hf_masked_softmax import masked_softmax
    from hf_masked_softmax.reference import masked_softmax_reference

    if not _launch.ENABLED:
        pytest.skip(f"the shortcut is off for this Triton ({_launch.triton.__version__})")
    ms = importlib.import_module("hf_masked_softmax.masked_softmax")
    counter = _CountingJit(ms._fwd_kernel.fn)
    monkeypatch.setattr(ms._fwd_kernel, "fn", counter)
    monkeypatch.setattr(ms._fwd_kernel, "cache", {})
    monkeypatch.setattr(ms, "_PLANS", {})  # the launcher binds the kernel once per signature (alignment included)
    base = torch.randn(2, 3, 5, 40, device="cuda", dtype=torch.float16)
    mask = torch.ones(2, 37, dtype=torch.bool, device="cuda")
    mask[0, :4] = False
    # same sizes and strides; the second view starts 2 bytes later (not 16-byte aligned)
    aligned, shifted = base[..., :37], base[..., 1:38]
    results = []
    for scores in (aligned, aligned, aligned, shifted, shifted, aligned):
        results.append((scores, masked_softmax(scores, mask, causal=True, scale=0.3)))
    assert counter.calls == 2  # one per alignment; the other four launches ran the compiled kernels directly
    plans = list(ms._PLANS.values())
    assert len(plans) == 2 and all(p.compiled is not None for p in plans)
    for scores, out in results:
        ref = masked_softmax_reference(scores.double(), mask, causal=True, scale=0.3)
        assert (out.double() - ref).abs().max().item() < 1e-3


@pytest.mark.gpu
def test_gpu_attention_backward_through_the_shortcut_matches_triton_path(monkeypatch):
    from hf_masked_softmax import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 70, 64, generator=g).to("cuda", torch.float16).requires_grad_(True)
               for _ in range(3))
    mask = torch.ones(2, 70, dtype=torch.bool, device="cuda")
    mask[1, 50:] = False
    do = torch.randn(2, 4, 70, 64, generator=g).to("cuda", torch.float16)
    grads = []
    for enabled in (False, True, True):
        monkeypatch.setattr(_launch, "ENABLED", enabled)
        out = attention(q, k, v, mask, causal=True)
        grads.append((out, *torch.autograd.grad(out, (q, k, v), do)))
    for a, b in zip(grads[0], grads[2]):
        assert torch.equal(a, b)  # the same compiled kernels: bit-identical
