"""Kernel launches with less host time: ``kernel[grid](*args, **constexprs)`` through the compiled kernel.

Each ``jit_fn[grid](...)`` call makes Triton bind the arguments, compute a specialisation per argument (type,
16-byte alignment of pointers, divisibility by 16 of integers), build a cache key and look the compiled kernel up.
On an H200's host an empty kernel with 40 arguments took 32.8 us per launch that way and 8.4 us through its compiled
kernel (``evals/bench_host.py --attention-profile``). Decoding, and the fused attention's backward (three launches),
are bound by that host time.

:func:`fast_launch` wraps a ``@triton.jit`` kernel. The first launch for a new key goes through Triton as usual and
keeps the compiled kernel it returns; later launches with the same key call it directly. The key holds more than
Triton's specialisation depends on: each pointer argument's dtype and whether it is 16-byte aligned, the exact value
and type of every other argument (sizes, strides, scales), every constexpr and launch option, and the device. Two
launches with equal keys therefore get the same compiled kernel from Triton, and the shortcut never runs a kernel
compiled for other arguments. A model calls each kernel with a handful of distinct sizes (a decoding step changes the
key length once for all its layers), so the cache stays small; it is bounded and cleared when full.

Where it is used: Triton 3.4 to 3.6 on CUDA, whose launch path is the same
(``CompiledKernel.run(grid, stream, function, packed metadata, launch metadata, hooks, *every parameter)``; read in
each version's source, run on a GPU with 3.6). Never under ``TRITON_INTERPRET=1``, and not while a launch hook (a
profiler) is installed. ``HF_MASKED_SOFTMAX_FAST_LAUNCH=0`` turns it off, ``=1`` forces it on for other versions.

With Triton 3.6 it goes one step further (:data:`RAW`, :func:`raw_launch`): it calls the launcher's C function itself,
with the arguments the launcher's Python would have built (no scratch buffers for these kernels). For the Gluon
Hopper kernel that wrapper also encoded its four TMA descriptors on every launch; its plans keep the encoded
descriptors per address instead (``_hopper.HopperForward``). ``HF_MASKED_SOFTMAX_RAW_LAUNCH=0`` turns just this off.
"""
from __future__ import annotations

import functools
import os
import weakref

import torch
import triton

# Whether the kernels were defined under Triton's interpreter: decided once, at import, because setting
# TRITON_INTERPRET later changes nothing for kernels already defined (they would still need a GPU).
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
_CHECKED_VERSIONS = ("3.4", "3.5", "3.6")  # launch path read in each; run on a GPU: 3.6
# compile options every launch passes: fused multiply-adds on, as Triton 3.6's default has them (the folded scale
# of the attention forward is one FMA per score); Triton 3.9 warns that its default turns them off in 3.10
OPTIONS = {"enable_fp_fusion": True}
_MAX_ENTRIES = 256  # per kernel: a bound in case something varies that should not (cleared when reached)


_NO_SECOND = ("hf_masked_softmax's kernels have no second derivative (double backward, create_graph=True); "
              "hf_masked_softmax.reference has plain-PyTorch versions of both functions")


class _FirstOrderGradients(torch.autograd.Function):
    """Identity on the first ``n`` tensors (gradients), tied to the rest (the inputs they depend on); differentiating
    through it raises."""

    @staticmethod
    def forward(ctx, n, *tensors):
        return tuple(t.clone() for t in tensors[:n])

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_NO_SECOND)


def first_order_only(backward):
    """Decorates an ``autograd.Function.backward`` built on kernels that have no derivative of their own.

    Run with ``create_graph=True``, torch would take such a backward's gradients for constants, so a second derivative
    through them would silently lack their part (``torch.autograd.function.once_differentiable`` raises only when
    the incoming gradient requires grad). Here the gradients returned while grad mode is on are tied to the tensors
    the Function saved (its inputs or output) through a node that raises when anything differentiates through it.
    """
    @functools.wraps(backward)
    def wrapper(ctx, *grad_outputs):
        with torch.no_grad():
            grads = backward(ctx, *grad_outputs)
        if not torch.is_grad_enabled():  # a plain backward: nothing will differentiate these
            return grads
        deps = [t for t in ctx.saved_tensors if t is not None and t.requires_grad]
        present = [i for i, g in enumerate(grads) if g is not None]
        if not deps or not present:
            return grads
        tied = _FirstOrderGradients.apply(len(present), *(grads[i] for i in present), *deps)
        out = list(grads)
        for i, g in zip(present, tied):
            out[i] = g
        return tuple(out)

    return wrapper


def kernels_take(t: torch.Tensor) -> bool:
    """Whether the Triton kernels can run on ``t``'s device: CUDA, or CPU when they were defined under
    ``TRITON_INTERPRET=1``. Everything else takes the plain-PyTorch reference."""
    dev = t.device.type
    return dev == "cuda" or (dev == "cpu" and INTERPRETED)


def _enabled() -> bool:
    env = os.environ.get("HF_MASKED_SOFTMAX_FAST_LAUNCH")
    if env is not None:
        return env.strip().lower() not in ("0", "false", "no", "off", "")
    # CUDA only: other backends specialise pointers on more than alignment
    return torch.version.hip is None and ".".join(triton.__version__.split(".")[:2]) in _CHECKED_VERSIONS


ENABLED = not INTERPRETED and _enabled()
# The compiled kernel's C launch function called directly (:func:`raw_launch`), past the launcher's Python wrapper
# (two scratch-buffer checks per launch, and for a Gluon kernel the expansion of its tensor descriptors, which
# encodes each TMA descriptor on the host again). Read in Triton 3.6's source (``CudaLauncher``,
# ``wrap_handle_tensordesc``, ``make_tensordesc_arg``) and run on a GPU with it; other versions keep ``kernel.run``.
# ``HF_MASKED_SOFTMAX_RAW_LAUNCH=0`` keeps Triton's launcher (the rest of the shortcut stays).
_RAW_VERSIONS = ("3.6",)
RAW = (ENABLED and ".".join(triton.__version__.split(".")[:2]) in _RAW_VERSIONS
       and os.environ.get("HF_MASKED_SOFTMAX_RAW_LAUNCH", "1").strip().lower() not in ("0", "false", "no", "off"))


class FastLaunch:
    """A ``@triton.jit`` kernel whose ``kernel[grid](*args, **kw)`` launches skip Triton's per-call
    specialisation once a compiled kernel for the same key exists (see the module docstring)."""

    def __init__(self, fn):
        self.fn = fn
        self.cache = {}
        # the leading pointer parameters (named *_ptr): keyed by dtype and alignment; every later argument by value
        names = list(fn.arg_names)
        self.n_ptr = next((i for i, n in enumerate(names) if not n.endswith("_ptr")), len(names))
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__name__ = getattr(fn, "__name__", "kernel")

    def __getattr__(self, name):  # the JITFunction's own attributes (cache, arg_names, ...)
        return getattr(self.fn, name)

    def __getitem__(self, grid):
        if not ENABLED or callable(grid):
            launcher = self.fn[grid]
            return lambda *args, **kwargs: launcher(*args, **{**OPTIONS, **kwargs})
        return lambda *args, **kwargs: self._launch(grid, args, {**OPTIONS, **kwargs})

    def _launch(self, grid, args, kwargs):
        if _hooks_installed():
            return self.fn[grid](*args, **kwargs)
        device = _driver().get_current_device()
        n = self.n_ptr
        try:
            ptrs = tuple([(a.dtype, (a.data_ptr() & 15) == 0) for a in args[:n]])
        except AttributeError:  # not a tensor where a pointer goes: Triton's own path
            return self.fn[grid](*args, **kwargs)
        rest = args[n:]
        # types too: 1, 1.0 and True compare equal but are specialised differently
        key = (device, ptrs, rest, tuple(map(type, rest)), tuple(kwargs.items()))
        kernel = self.cache.get(key)
        if kernel is None:
            kernel = self.fn[grid](*args, **kwargs)
            names = _keepable(self.fn, kernel, args[:n], rest, kwargs)
            if names is not None:
                remember(self.cache, key, (kernel, names, raw_launch(kernel)), _MAX_ENTRIES)
            return kernel
        kernel, names, raw = kernel
        _run(kernel, grid, device, (*args, *[kwargs[n] for n in names]), raw)
        return kernel


class BoundLaunch:
    """One launch of a :class:`FastLaunch` kernel with everything but the pointer arguments fixed: the grid, the
    scalar arguments and the constexprs / launch options. ``bound(*pointers)`` launches it. The first call (and any
    call while the shortcut is off or a launch hook is installed) goes through Triton; later ones call the compiled
    kernel it returned, without building a key.

    The caller keeps what the compiled kernel was specialised on: every later call passes pointers of the same
    dtypes, each 16-byte aligned exactly when it was at the first call, on the same current device. The launchers
    bind once per such signature (see ``attention._forward``), so the per-call host work is the launch itself."""

    __slots__ = ("owner", "grid", "rest", "kwargs", "compiled", "tail", "raw")

    def __init__(self, owner, grid, rest, kwargs):
        self.owner, self.grid, self.rest, self.kwargs = owner, grid, tuple(rest), kwargs
        self.compiled, self.tail, self.raw = None, (), None

    def __call__(self, *ptrs):
        kernel = self.compiled
        if kernel is not None and ENABLED and not _hooks_installed():
            _run(kernel, self.grid, _driver().get_current_device(), (*ptrs, *self.rest, *self.tail), self.raw)
            return
        kernel = self.owner.fn[self.grid](*ptrs, *self.rest, **self.kwargs)
        names = _keepable(self.owner.fn, kernel, ptrs, self.rest, self.kwargs) if ENABLED else None
        if names is not None:
            self.compiled, self.tail = kernel, tuple(self.kwargs[n] for n in names)
            self.raw = raw_launch(kernel)


def bind(kernel, grid, rest, kwargs):
    """A :class:`BoundLaunch` of ``kernel`` (a :class:`FastLaunch`), or, for anything else that launches with
    ``kernel[grid](...)`` (a test's spy, say), a plain function doing that."""
    kwargs = {**OPTIONS, **kwargs}
    if isinstance(kernel, FastLaunch):
        return BoundLaunch(kernel, grid, rest, kwargs)
    rest = tuple(rest)
    return lambda *ptrs: kernel[grid](*ptrs, *rest, **kwargs)


def _keepable(fn, kernel, ptrs, rest, kwargs):
    """The parameters after the positional ones, in order, when Triton's compiled ``kernel`` may be run directly with
    these arguments (tensors exactly in the pointer slots, every later parameter given by name: no defaults); else
    None."""
    names = fn.arg_names[len(ptrs) + len(rest):]
    if (kernel is not None and _launchable(kernel) and all(n in kwargs for n in names)
            and all(isinstance(p, torch.Tensor) for p in ptrs)
            and not any(isinstance(a, torch.Tensor) for a in rest)):
        return names
    return None


def _run(kernel, grid, device, args, raw=None):
    """Launch a compiled kernel on the current stream: ``args`` is every parameter in order; ``raw`` the kernel's
    :func:`raw_launch` (None: through ``kernel.run``)."""
    stream = _driver().get_current_stream(device)
    g1 = grid[1] if len(grid) > 1 else 1
    g2 = grid[2] if len(grid) > 2 else 1
    if raw is not None and RAW:
        fn, coop, pdl = raw
        # no scratch buffers (raw_launch checked their sizes are 0), no launch metadata, no hooks
        fn(grid[0], g1, g2, stream, kernel.function, coop, pdl, None, None, kernel.packed_metadata, None, None, None,
           *args)
        return
    kernel.run(grid[0], g1, g2, stream, kernel.function, kernel.packed_metadata, None, None, None, *args)


def raw_launch(kernel, descriptors: bool = False):
    """``(C launch function, cooperative-grid flag, PDL flag)`` of a compiled kernel whose launcher (Triton 3.6's
    ``CudaLauncher``) can be skipped, else None: :data:`RAW` on, and the kernel needs neither global nor profile
    scratch memory. The launcher's ``launch`` is the C function itself, or for a kernel with tensor-descriptor
    parameters a Python wrapper that expands each descriptor (holding the C function as ``launcher``): such kernels
    only with ``descriptors`` True, and their caller then passes each descriptor expanded, as the wrapper would
    (``_hopper.HopperForward``)."""
    if not RAW:
        return None
    try:
        launcher = kernel.run
        if launcher.global_scratch_size or launcher.profile_scratch_size:
            return None
        coop, pdl, fn = bool(launcher.launch_cooperative_grid), bool(launcher.launch_pdl), launcher.launch
    except AttributeError:  # another launcher (a test's fake, another backend): kernel.run
        return None
    code = getattr(fn, "__code__", None)
    if code is not None:  # a Python function: the tensor-descriptor wrapper, or something unknown
        cells = dict(zip(code.co_freevars, fn.__closure__ or ()))
        if not descriptors or "launcher" not in cells or "tensordesc_meta" not in cells:
            return None
        fn = cells["launcher"].cell_contents
    elif descriptors:  # no wrapper: the kernel takes no descriptors
        return None
    return (fn, coop, pdl) if callable(fn) else None


def remember(cache: dict, key, value, limit: int) -> None:
    """``cache[key] = value``, clearing the cache first when it holds ``limit`` entries (a bound in case something
    varies from call to call that should not)."""
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value


def weak_entry(table: dict, key, obj, *values) -> None:
    """``table[key] = (weakref to obj, *values)``; the entry leaves the table when ``obj`` is freed (unless another
    replaced it meanwhile). For tables keyed by a tensor's identity or storage: tensors compare elementwise, so a
    WeakKeyDictionary would not do."""
    def forget(ref):
        entry = table.get(key)
        if entry is not None and entry[0] is ref:
            del table[key]

    table[key] = (weakref.ref(obj, forget), *values)


def aligned(*tensors) -> bool:
    """Whether every tensor given (None skipped) starts 16-byte aligned: Triton specialises pointers on it (fresh
    allocations always are)."""
    bits = 0
    for t in tensors:
        if t is not None:
            bits |= t.data_ptr()
    return bits & 15 == 0


def _launchable(kernel) -> bool:
    return all(hasattr(kernel, a) for a in ("run", "function", "packed_metadata"))


_DRIVER = None


def _driver():
    global _DRIVER
    if _DRIVER is None:
        from triton.runtime import driver

        _DRIVER = driver.active
    return _DRIVER


try:
    from triton import knobs as _KNOBS
except ImportError:  # pragma: no cover - Triton before 3.4 has no knobs: the shortcut is off there anyway
    _KNOBS = None


def _installed(hook) -> bool:
    if hook is None:
        return False
    calls = getattr(hook, "calls", None)  # Triton's HookChain: installed when it holds a function
    return calls is None or len(calls) > 0


def _hooks_installed() -> bool:
    """Whether a launch hook (a profiler such as proton) wants to see launches: then Triton's own path."""
    if _KNOBS is None:
        return False
    runtime = _KNOBS.runtime
    return _installed(runtime.launch_enter_hook) or _installed(runtime.launch_exit_hook)


def fast_launch(fn) -> FastLaunch:
    """Decorator (outside ``@triton.jit``): launch through the compiled kernel where it is safe."""
    return FastLaunch(fn)
