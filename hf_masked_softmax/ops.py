"""The two kernels as PyTorch custom operators, so that ``torch.compile`` traces through them without a graph break.

Operators (namespace ``hf_masked_softmax``), all taking tensors and scalars only:

* ``masked_softmax(scores, mask, mask_kind, threshold, causal, scale, max_single_pass_k, loop_block_k, sinks=None)
  -> y`` (``sinks``: fp32 ``[H]``, :func:`hf_masked_softmax.masked_softmax`'s attention sinks)
* ``masked_softmax_backward(y, dy, mask, mask_kind, threshold, causal, scale, max_single_pass_k, loop_block_k) -> ds``
* ``attention_forward(q, k, v, mask, mask_kind, threshold, causal, scale, drop_thr=0, seed=None, window=0,
  softcap=0.0, sinks=None) -> (out, lse)``,
  ``lse`` being ``[2, B, H, Q]`` fp32: each row's base-2 log-sum-exp and its rounding residual
  (:mod:`hf_masked_softmax.attention`)
* ``attention_backward(do, q, k, v, out, lse, mask, mask_kind, threshold, causal, scale, drop_thr=0, seed=None,
  window=0, softcap=0.0, sinks=None) -> (dq, dk, dv)``
* ``attention_inference(q, k, v, mask, mask_kind, threshold, causal, scale, window=0, softcap=0.0, sinks=None)
  -> out``: the forward without the log-sum-exp or autograd, which compiled graphs call where nothing needs gradients
  and there is no dropout

``mask`` is the caller's mask tensor exactly as given (``[B, K]`` padding mask or a 4D mask that broadcasts to the
scores; for ``SEGMENTS``, packed sequences' ``[B, L]`` ids), ``mask_kind`` one of :mod:`hf_masked_softmax.masks`'
``NONE / PAD2D / BOOL4D / ADD4D / SEGMENTS`` and ``threshold`` the additive value at or below which an entry counts as
masked; ``drop_thr`` and ``seed`` are the attention's dropout
(:func:`hf_masked_softmax.attention.dropout_threshold`, a one-element int64 Philox key), ``window`` its sliding
window (0: none; :func:`hf_masked_softmax.attention.window_size`), ``softcap`` its logit soft-cap (0.0: none;
:func:`hf_masked_softmax.attention.softcap_value`) and ``sinks`` its attention sinks (None, or fp32 ``[H]``: the
sinks' gradient is computed next to the backward operator, from ``out``, ``dO`` and ``lse``). The public functions
validate their arguments once (that host code is plain PyTorch and traces fine) and then pick a path
(:func:`call_path`): under torch.compile, for tensor subclasses and under dispatch modes, one operator call
(``masked_softmax()`` in its own module, ``attention()`` through :func:`attention` below); in eager mode the launchers
directly (inference) or the modules' plain ``autograd.Function`` (training), because the dispatcher's host cost
outweighs small kernels. The implementations are
the kernels' host functions (``_forward`` / ``_backward`` of :mod:`~hf_masked_softmax.masked_softmax` and
:mod:`~hf_masked_softmax.attention`). Fake (meta) implementations give the output shapes and strides, and autograd is
registered with the backward operators, so compiled graphs hold one opaque node per kernel call, forward and backward.

The eager paths cache the key ranges of a 2D padding mask per mask object (Hugging Face hands the same mask to every
layer); the operators compute them on every call (see :func:`hf_masked_softmax.masks.pad_ranges`).
"""

import importlib
from typing import Optional

import torch

from . import masks as _masks
from ._launch import kernels_take, remember
from .reference import (attention_backward_reference, attention_lse_reference, attention_reference,
                        dropout_keep_reference, masked_softmax_backward_reference, masked_softmax_reference)

# The package re-exports functions under the modules' names, so reach the modules themselves through importlib.
_ms = importlib.import_module(__package__ + ".masked_softmax")
_attn = importlib.import_module(__package__ + ".attention")

NAMESPACE = "hf_masked_softmax"


def _spec(mask: Optional[torch.Tensor], kind: int, threshold: float, shape) -> _masks.MaskSpec:
    """Rebuild the kernels' :class:`MaskSpec` from an operator's (mask, kind, threshold); the mask was validated."""
    if kind == _masks.NONE:
        return _masks.MaskSpec(_masks.NONE, None)
    assert mask is not None
    if kind == _masks.SEGMENTS:  # packed sequences' [B, L] ids
        return _masks.MaskSpec(kind, mask)
    if kind != _masks.PAD2D:
        mask = mask.expand(shape)
    if mask.dtype == torch.bool and mask.numel():
        mask = mask.view(torch.uint8)  # the element type the kernels load
    return _masks.MaskSpec(kind, mask, threshold)


on_device = _attn._device_of  # launch on a tensor's CUDA device (Triton launches on the current one)


def _dispatch_modes_active() -> bool:
    try:
        return torch._C._len_torch_dispatch_stack() > 0
    except AttributeError:  # private API: when in doubt, dispatch
        return True


def _transforms_active() -> bool:
    """Whether a torch.func transform (vmap, grad, jvp) or forward-mode AD is active: their tensors look like plain
    ones but have no storage or carry tangents, which the launchers would lose. The custom operators run under vmap
    (torch's per-sample fallback), torch raises its own error for them under torch.func.grad, and forward mode is
    refused (``_refuse_forward_ad``)."""
    try:
        return (torch._C._functorch.peek_interpreter_stack() is not None
                or torch.autograd.forward_ad._current_level >= 0)
    except AttributeError:  # private API: when in doubt, dispatch
        return True


def _refuse_forward_ad(tensors) -> None:
    """NotImplementedError under torch.func.jvp, or when an input carries a forward-mode tangent: the operators have
    no forward-mode formula, and torch would otherwise treat their outputs as constants (a zero tangent, silently)."""
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    forward = any(i.key() == TransformType.Jvp for i in retrieve_all_functorch_interpreters())
    if not forward and torch.autograd.forward_ad._current_level >= 0:
        forward = any(torch.autograd.forward_ad.unpack_dual(t).tangent is not None for t in tensors)
    if forward:
        raise NotImplementedError(
            "hf_masked_softmax has no forward-mode derivative (torch.func.jvp, torch.autograd.forward_ad): the tangent "
            "would be lost. Use reverse mode (backward, torch.autograd.grad), or hf_masked_softmax.reference's "
            "plain-PyTorch functions"
        )


def call_path(*tensors: torch.Tensor) -> str:
    """How a public call reaches the kernels:

    * ``"op"``: the custom operator, while torch.compile traces (the graph keeps one node, autograd included), and for
      tensor subclasses, under dispatch modes (fake tensors, functionalization) and under torch.func transforms or
      forward-mode AD;
    * ``"function"``: eager calls that autograd must record, through a plain ``torch.autograd.Function``;
    * ``"direct"``: eager inference, straight to the launcher.

    Eager calls avoid the dispatcher because its Python costs more than a small kernel (measured on the H100 host:
    ~100 us per forward call, and several hundred per backward through the operator's registered autograd)."""
    if torch.compiler.is_compiling():
        return "op"
    for t in tensors:  # loops, not generator expressions: this runs on every call, where microseconds count
        if type(t) is not torch.Tensor:
            return "op"
    if _dispatch_modes_active():
        return "op"
    if _transforms_active():
        if kernels_take(tensors[0]):  # the plain-PyTorch reference path has every derivative
            _refuse_forward_ad(tensors)
        return "op"
    if torch.is_grad_enabled():
        for t in tensors:
            if t.requires_grad:
                return "function"
    return "direct"


# ----------------------------------------------------------------------------------------------------------------------
# masked_softmax
# ----------------------------------------------------------------------------------------------------------------------
@torch.library.custom_op(f"{NAMESPACE}::masked_softmax", mutates_args=())
def masked_softmax_op(
    scores: torch.Tensor,
    mask: Optional[torch.Tensor],
    mask_kind: int,
    threshold: float,
    causal: bool,
    scale: float,
    max_single_pass_k: int,
    loop_block_k: int,
    sinks: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    spec = _spec(mask, mask_kind, threshold, tuple(scores.shape))
    if not kernels_take(scores):
        return masked_softmax_reference(scores, spec, causal=causal, scale=scale, sinks=sinks)
    with on_device(scores):
        return _ms._forward(scores, spec, causal, scale, (max_single_pass_k, loop_block_k), sinks=sinks)


@masked_softmax_op.register_fake
def _(scores, mask, mask_kind, threshold, causal, scale, max_single_pass_k, loop_block_k, sinks=None):
    return scores.new_empty(scores.shape)


@torch.library.custom_op(f"{NAMESPACE}::masked_softmax_backward", mutates_args=())
def masked_softmax_backward_op(
    y: torch.Tensor,
    dy: torch.Tensor,
    mask: Optional[torch.Tensor],
    mask_kind: int,
    threshold: float,
    causal: bool,
    scale: float,
    max_single_pass_k: int,
    loop_block_k: int,
) -> torch.Tensor:
    if not kernels_take(y):
        return masked_softmax_backward_reference(y, dy, scale)
    spec = _spec(mask, mask_kind, threshold, tuple(y.shape))
    with on_device(y):
        return _ms._backward(y, dy, spec, causal, scale, (max_single_pass_k, loop_block_k))


@masked_softmax_backward_op.register_fake
def _(y, dy, mask, mask_kind, threshold, causal, scale, max_single_pass_k, loop_block_k):
    return y.new_empty(y.shape)


def _masked_softmax_setup(ctx, inputs, output):
    _, mask, mask_kind, threshold, causal, scale, max_single_pass_k, loop_block_k, sinks = inputs
    ctx.save_for_backward(output, mask)
    ctx.args = (mask_kind, threshold, causal, scale, max_single_pass_k, loop_block_k)
    ctx.sinks_grad = sinks is not None and sinks.requires_grad


def _masked_softmax_backward(ctx, dy):
    y, mask = ctx.saved_tensors
    ds = masked_softmax_backward_op(y, dy, mask, *ctx.args)  # the sink column takes no part in the scores' gradient
    dsinks = _ms.sink_gradient(y, dy) if ctx.sinks_grad else None
    return ds, None, None, None, None, None, None, None, dsinks


masked_softmax_op.register_autograd(_masked_softmax_backward, setup_context=_masked_softmax_setup)


# ----------------------------------------------------------------------------------------------------------------------
# attention
# ----------------------------------------------------------------------------------------------------------------------
_KERNEL_KIND = {_masks.NONE: _attn._K_NONE, _masks.PAD2D: _attn._K_RANGE, _masks.BOOL4D: _attn._K_BOOL,
                _masks.ADD4D: _attn._K_ADD, _masks.SEGMENTS: _attn._K_SEG}


def _kernel_mask_args(spec: _masks.MaskSpec, cache_key=None, bounds_threshold=None, row_bounds=True):
    """(kernel kind, mask tensor, key ranges) of a validated mask: the kernels turn a 2D padding mask into
    per-sequence key ranges, cached per ``cache_key`` (the eager paths pass the caller's mask: HF hands one mask to
    every layer; the operators pass none and compute them on every call, see masks.pad_ranges).

    A float64 additive mask goes to the kernels as a float32 copy of its own elements (broadcast dimensions stay
    broadcast). The kernels compare and add mask values in fp32 anyway, so the result is the same; float64 tiles
    asked for more shared memory than an H200 has at head dim 80 (262144 of 232448 bytes with Triton 3.6:
    ``python -m hf_masked_softmax.check --seed 8 --fuzz-case 76``).

    ``bounds_threshold`` (the attention forwards pass the threshold their kernel compares with): a 4D mask gets its
    key bounds (``masks.mask_bounds``, cached per ``cache_key`` likewise) in place of the key ranges, unless
    ``attention.MASK4D_BOUNDS`` is off; with their row part (what the backward's dk / dv kernel reads) unless
    ``row_bounds`` is off, for a forward whose backward, if any, computes its own.

    Packed sequences (``SEGMENTS``) go to the kernels as each token's run (``masks.segment_bounds``) with the runs'
    bounds in the 4D masks' layout (both cached per ``cache_key``, the ids object), whatever the other arguments."""
    mask_t = spec.tensor
    if spec.kind == _masks.SEGMENTS:  # packed sequences: each token's run and the runs' bounds (always used)
        runs, bounds = _masks.segment_tensors(mask_t, cache_key)
        return _attn._K_SEG, runs, bounds
    if spec.kind == _masks.ADD4D and mask_t.dtype == torch.float64:
        own = mask_t[tuple(slice(0, 1) if st == 0 else slice(None) for st in mask_t.stride())]
        mask_t = own.to(torch.float32).expand(mask_t.shape)
    if (bounds_threshold is not None and spec.kind in (_masks.BOOL4D, _masks.ADD4D) and _attn.MASK4D_BOUNDS
            and _masks.bounds_layout(mask_t).chunks <= _attn.GRID_YZ_MAX):  # (its grid: a chunk per 16 query rows)
        bounds = _masks.mask_bounds(mask_t, spec.kind == _masks.ADD4D, bounds_threshold, cache_key, row_bounds)
        return _KERNEL_KIND[spec.kind], mask_t, bounds
    return _KERNEL_KIND[spec.kind], mask_t, _masks.spec_ranges(spec, cache_key)


def _attn_mask_args(mask, mask_kind, threshold, shape, row_bounds=True):
    """(kernel kind, mask tensor, key ranges or a 4D mask's key bounds, threshold) for the attention operators
    (``row_bounds``: see :func:`_kernel_mask_args`; the forward operators pass False, the backward operator computes
    its own)."""
    spec = _spec(mask, mask_kind, threshold, shape)
    return (*_kernel_mask_args(spec, None, threshold, row_bounds), threshold)


def _reference_mask(mask, mask_kind):
    """An operator's mask as the references take it: packed sequences' ids as their :class:`MaskSpec` (a ``[B, L]``
    integer tensor alone would read as a padding mask)."""
    return _masks.MaskSpec(mask_kind, mask) if mask_kind == _masks.SEGMENTS else mask


def _reference_dropout(q, k, drop_thr, seed):
    """``(keep, keep_scale)`` for the references: the kernels' own dropout mask (None without dropout)."""
    if drop_thr <= 0:
        return None
    B, H, Q, _ = q.shape
    keep = dropout_keep_reference(int(seed), (B, H, Q, k.shape[2]), drop_thr, device=q.device)
    return keep, _attn._keep_scale(drop_thr)


def _attention_reference(q, k, v, mask, causal, scale, drop_thr=0, seed=None, window=0, softcap=0.0, sinks=None):
    """The CPU fallback (no interpreter): the reference, with half-precision probabilities rounded to q's dtype
    before the product with v, as the GPU kernel does, and the kernels' dropout mask. ``mask``: the caller's mask,
    or a validated :class:`~hf_masked_softmax.masks.MaskSpec` (packed sequences)."""
    half = q.dtype in (torch.float16, torch.bfloat16)
    out = attention_reference(q, k, v, mask, causal=causal, scale=scale, prob_dtype=q.dtype if half else None,
                              dropout=_reference_dropout(q, k, drop_thr, seed), window=window, softcap=softcap,
                              sinks=sinks)
    # the kernel's layout: [B, H, Q, D] whose memory is [B, Q, H, D] (the documented out.transpose(1, 2) is contiguous)
    return out.transpose(1, 2).contiguous().transpose(1, 2)


# Named ``attention_forward`` since its second output gained the residual plane: the earlier operator named
# ``attention`` returned a [B, H, Q] lse, and Inductor's on-disk cache keys a compiled graph by the operators'
# names, not their fake implementations, so a graph compiled before would have been reused with the old shapes.
@torch.library.custom_op(f"{NAMESPACE}::attention_forward", mutates_args=())
def attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor],
    mask_kind: int,
    threshold: float,
    causal: bool,
    scale: float,
    drop_thr: int = 0,
    seed: Optional[torch.Tensor] = None,
    window: int = 0,
    softcap: float = 0.0,
    sinks: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    if not kernels_take(q):
        mask = _reference_mask(mask, mask_kind)
        out = _attention_reference(q, k, v, mask, causal, scale, drop_thr, seed, window, softcap, sinks)
        lse = attention_lse_reference(q, k, mask, causal=causal, scale=scale, window=window, softcap=softcap,
                                      sinks=sinks)
        return out, torch.stack((lse, torch.zeros_like(lse)))  # the kernel's [2, B, H, Q]: lse, residual (none)
    B, H, Q, _ = q.shape
    kind, mask_t, ranges, threshold = _attn_mask_args(mask, mask_kind, threshold, (B, H, Q, k.shape[2]), False)
    with on_device(q):
        return _attn._forward(q, k, v, kind, mask_t, ranges, threshold, causal, scale, True, None, drop_thr, seed,
                              window, softcap, sinks)


@attention_op.register_fake
def _(q, k, v, mask, mask_kind, threshold, causal, scale, drop_thr=0, seed=None, window=0, softcap=0.0, sinks=None):
    B, H, Q, _ = q.shape
    # [B, H, Q, Dv] laid out as [B, Q, H, Dv], exactly as the kernel writes it (Dv: v's head dim)
    out = q.new_empty((B, Q, H, v.shape[-1])).transpose(1, 2)
    lse = q.new_empty((2, B, H, Q), dtype=torch.float32)  # each row's lse and its rounding residual (attention.py)
    return out, lse


@torch.library.custom_op(f"{NAMESPACE}::attention_backward", mutates_args=())
def attention_backward_op(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    mask: Optional[torch.Tensor],
    mask_kind: int,
    threshold: float,
    causal: bool,
    scale: float,
    drop_thr: int = 0,
    seed: Optional[torch.Tensor] = None,
    window: int = 0,
    softcap: float = 0.0,
    sinks: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)``; ``sinks`` only reaches the plain-PyTorch fallback (the kernels read them in ``lse``)."""
    if not kernels_take(q):
        return attention_backward_reference(q, k, v, do, _reference_mask(mask, mask_kind), causal=causal, scale=scale,
                                            dropout=_reference_dropout(q, k, drop_thr, seed), window=window,
                                            softcap=softcap, sinks=sinks)
    B, H, Q, _ = q.shape
    kind, mask_t, ranges, threshold = _attn_mask_args(mask, mask_kind, threshold, (B, H, Q, k.shape[2]))
    with on_device(q):
        return _attn._backward(do, q, k, v, out, lse, kind, mask_t, ranges, threshold, causal, scale, drop_thr, seed,
                               window, softcap)


@attention_backward_op.register_fake
def _(do, q, k, v, out, lse, mask, mask_kind, threshold, causal, scale, drop_thr=0, seed=None, window=0, softcap=0.0,
      sinks=None):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _attention_setup(ctx, inputs, output):
    q, k, v, mask, mask_kind, threshold, causal, scale, drop_thr, seed, window, softcap, sinks = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, mask, seed, sinks)
    ctx.args = (mask_kind, threshold, causal, scale, drop_thr)
    ctx.window, ctx.softcap = window, softcap
    ctx.sinks_grad = sinks is not None and sinks.requires_grad


def _attention_backward(ctx, do, _dlse):
    q, k, v, out, lse, mask, seed, sinks = ctx.saved_tensors
    dq, dk, dv = attention_backward_op(do, q, k, v, out, lse, mask, *ctx.args, seed, ctx.window, ctx.softcap, sinks)
    dsinks = _attn.sink_gradient(sinks, out, do, lse) if ctx.sinks_grad else None
    return dq, dk, dv, None, None, None, None, None, None, None, None, None, dsinks


attention_op.register_autograd(_attention_backward, setup_context=_attention_setup)


@torch.library.custom_op(f"{NAMESPACE}::attention_inference", mutates_args=())
def attention_inference_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor],
    mask_kind: int,
    threshold: float,
    causal: bool,
    scale: float,
    window: int = 0,
    softcap: float = 0.0,
    sinks: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``attention_forward`` without the log-sum-exp and without autograd: what compiled graphs call where nothing
    needs gradients (the eager launcher's inference path: neither allocates nor stores the log-sum-exp, and on an
    H100 / H200 can take the Hopper kernel, :mod:`hf_masked_softmax._hopper`). No dropout."""
    if not kernels_take(q):
        return _attention_reference(q, k, v, _reference_mask(mask, mask_kind), causal, scale, 0, None, window,
                                    softcap, sinks)
    B, H, Q, _ = q.shape
    kind, mask_t, ranges, threshold = _attn_mask_args(mask, mask_kind, threshold, (B, H, Q, k.shape[2]), False)
    with on_device(q):
        return _attn._forward(q, k, v, kind, mask_t, ranges, threshold, causal, scale, False, window=window,
                              softcap=softcap, sinks=sinks)[0]


@attention_inference_op.register_fake
def _(q, k, v, mask, mask_kind, threshold, causal, scale, window=0, softcap=0.0, sinks=None):
    B, H, Q, _ = q.shape
    return q.new_empty((B, Q, H, v.shape[-1])).transpose(1, 2)  # the kernel's layout, as attention_forward's


# Signatures of eager calls already validated (no mask or a 2D padding mask) -> (kernel kind, scale, drop_thr, window,
# softcap).
_VALIDATED: dict = {}
_MAX_VALIDATED = 256  # a decoding step adds one (its key length); cleared when full


def _eager_signature(q, k, v, mask, causal, scale, dropout_p, window=None, softcap=None, sinks=None):
    """Everything ``attention``'s checks and mask classification depend on, or None where the shortcut does not
    apply (a 4D mask, or arguments of other types: those always take the checks)."""
    if type(causal) is not bool or (scale is not None and type(scale) is not float) or type(dropout_p) is not float:
        return None
    if window is not None and type(window) is not int or softcap is not None and type(softcap) is not float:
        return None
    if mask is None:
        msig = None
    elif type(mask) is torch.Tensor and mask.dim() == 2:
        msig = (mask.shape, mask.stride(), mask.dtype, mask.device)
    else:
        return None
    return (q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), q.dtype, k.dtype, v.dtype, q.device,
            k.device, v.device, msig, causal, scale, dropout_p, window, softcap, sinks is None)


def _new_seed(device) -> torch.Tensor:
    """A fresh Philox key for one dropout call, drawn from torch's generator of ``device`` (so ``torch.manual_seed``
    repeats it), kept on the device for the kernels to read."""
    return torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device)


def _eager(path, q, k, v, kind, mask_t, ranges, threshold, causal, scale, signature, drop_thr, window, softcap,
           sinks=None):
    """The eager paths past the checks: inference straight to the launcher (no log-sum-exp kept), training through
    the autograd function. ``signature``: the validated call signature the launch plan is looked up by, or None."""
    seed = _new_seed(q.device) if drop_thr else None
    if path == "direct":
        with on_device(q):
            return _attn._forward(q, k, v, kind, mask_t, ranges, threshold, causal, scale, False, signature, drop_thr,
                                  seed, window, softcap, sinks)[0]
    return _attn.AttentionFunction.apply(q, k, v, kind, mask_t, ranges, threshold, causal, scale, signature, drop_thr,
                                         seed, window, softcap, sinks)


_AUTOCAST_DEVICES = ("cuda", "cpu")  # where the kernels run (asking torch about other device types can raise)


def _autocast_inputs(q, k, v):
    """Under ``torch.autocast``, as SDPA there: floating q, k, v in the autocast dtype (a Llama layer under bf16
    autocast has fp32 queries and keys after its rotary embedding, and bf16 values)."""
    dt = torch.get_autocast_dtype(q.device.type)
    half = (torch.float32, torch.float16, torch.bfloat16)  # autocast leaves float64 alone (here: a TypeError later)
    return tuple(t.to(dt) if isinstance(t, torch.Tensor) and t.dtype in half else t for t in (q, k, v))


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    causal: bool = False,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
    window: Optional[int] = None,
    softcap: Optional[float] = None,
    sinks: Optional[torch.Tensor] = None,
    segments: Optional[torch.Tensor] = None,
    _any_value_dim: bool = False,
) -> torch.Tensor:
    """:func:`hf_masked_softmax.attention` through the custom operator (same arguments, same contract).

    ``_any_value_dim`` (private, for :mod:`hf_masked_softmax.hf`): ``v`` may have a head dim of its own, ``[B, Hkv, K,
    Dv]`` with ``1 <= Dv <= 256``, and the result is ``[B, H, Q, Dv]`` (multi-head latent attention: DeepSeek-V2/V3's
    values are 128 wide against 192-wide queries and keys). The kernels read and write ``Dv`` columns of values,
    outputs and their gradients. The public function keeps one head dim, as DESIGN.md specifies."""
    if type(q) is torch.Tensor and q.device.type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(q.device.type):
        q, k, v = _autocast_inputs(q, k, v)
    if sinks is not None:  # fp32 [H] (checked here: the shortcut below skips the other checks)
        if not isinstance(q, torch.Tensor) or q.dim() != 4:
            _attn._validate(q, k, v, dropout_p, _any_value_dim)
        sinks = _ms.sinks_tensor(sinks, q.shape[1], q.device)
        path = call_path(q, k, v, sinks)
    else:
        path = call_path(q, k, v)
    sig = None
    # eager: a signature validated before skips the checks (a model calls one per layer; not for packed sequences)
    if path != "op" and segments is None:
        sig = _eager_signature(q, k, v, attention_mask, causal, scale, dropout_p, window, softcap, sinks)
        if sig is not None and _any_value_dim:
            sig = sig + ("any value dim",)  # validated under the looser check: never a hit for a public call
        hit = _VALIDATED.get(sig) if sig is not None else None
        if hit is not None:
            kind, scale, drop_thr, win, cap = hit
            mask_t, ranges = None, None
            if kind == _attn._K_RANGE:
                mask_t = attention_mask.view(torch.uint8) if attention_mask.dtype == torch.bool else attention_mask
                ranges = _masks.pad_ranges(mask_t, attention_mask)
            return _eager(path, q, k, v, kind, mask_t, ranges, 0.0, causal, scale, (path, sig), drop_thr, win, cap,
                          sinks)
    _attn._validate(q, k, v, dropout_p, _any_value_dim)
    drop_thr = _attn.dropout_threshold(float(dropout_p))[0]
    B, H, Q, D = q.shape
    K = k.shape[2]
    win = _attn.window_size(window, causal, K, Q)
    cap = _attn.softcap_value(softcap)
    if segments is not None:  # packed sequences: the ids are the mask (no other mask beside them)
        spec = _masks.prepare_segments(segments, attention_mask, (B, H, Q, K), q.device)
        cache_key, attention_mask = segments, segments
    else:
        spec = _masks.prepare_mask(attention_mask, (B, H, Q, K), q.device)
        cache_key = attention_mask
    scale = _ms.validate_scale(D ** -0.5 if scale is None else scale)
    if not kernels_take(q):
        seed = _new_seed(q.device) if drop_thr else None
        return _attention_reference(q, k, v, _reference_mask(attention_mask, spec.kind), causal, scale, drop_thr,
                                    seed, win, cap, sinks)
    threshold = spec.threshold
    if spec.kind == _masks.ADD4D:
        # masks wider than fp32 are compared after rounding to fp32, where their masked values become -inf
        threshold = max(threshold, float(torch.finfo(torch.float32).min))
    if path != "op":  # eager: the validated spec as it is, key ranges cached per mask object
        # (the autograd function's backward reads the bounds' row part; eager inference never does)
        kind, mask_t, ranges = _kernel_mask_args(spec, cache_key, threshold, path != "direct")
        known = None  # the plan's key: the validated signature where later calls look it up by it
        if sig is not None and spec.kind in (_masks.NONE, _masks.PAD2D):
            remember(_VALIDATED, sig, (kind, scale, drop_thr, win, cap), _MAX_VALIDATED)
            known = (path, sig)
        return _eager(path, q, k, v, kind, mask_t, ranges, threshold, bool(causal), scale, known, drop_thr, win, cap,
                      sinks)
    if not drop_thr and torch.compiler.is_compiling() and not _needs_grad(q, k, v, sinks):
        # a compiled graph that records no autograd (inference under torch.compile): no log-sum-exp
        return attention_inference_op(q, k, v, attention_mask, spec.kind, threshold, bool(causal), scale, win, cap,
                                      sinks)
    seed = _new_seed(q.device) if drop_thr else None
    out, _ = attention_op(q, k, v, attention_mask, spec.kind, threshold, bool(causal), scale, drop_thr, seed, win,
                          cap, sinks)
    return out


def _needs_grad(q, k, v, sinks=None) -> bool:
    return torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad
                                        or sinks is not None and sinks.requires_grad)


# The public ``hf_masked_softmax.attention`` calls this function; bound here, once, rather than looked up on its first
# call (a binding that changes on the first call would make torch.compile guard on it and compile twice).
_attn._ops_attention = attention
