"""The Hugging Face backend: one attention function and one mask function, registered under ``NAME``.

Importing this module registers ``NAME`` in transformers' ``AttentionInterface`` (the attention math) and
``AttentionMaskInterface`` (what the model hands to that math as ``attention_mask``). It is imported by the package,
so ``from_pretrained(..., attn_implementation="hf_masked_softmax")`` works after ``import hf_masked_softmax``;
``patch_model`` switches an already loaded model to the same name.

Masks. HF's eager and sdpa paths expand the tokenizer's ``[B, K]`` padding mask to a 4D ``[B, 1, Q, K]`` tensor with
causality baked in. The mask function here returns the compact ``[B, K]`` bool mask instead (``None`` when the model
got no mask; a mask without padding is returned as it is, since finding that out would synchronise with the GPU), and
the attention function adds causality itself from ``module.is_causal``, bottom-right aligned, which is exactly HF's
causal mask whenever the last query is the last key (no cache, or a dynamic cache). So is a one-query step on a
static cache (the query sees every key bottom-right) once the compact mask drops the cache's slots past the query's
position, which the mask function then does. Everything else
that HF can ask for (a static cache's prompt or multi-token step, packed sequences, custom ``or``/``and`` mask
functions) gets HF's own 4D boolean mask, which the attention function then uses as given, with no causality added,
as eager and sdpa do with any 4D mask (user-supplied 4D masks, bool or additive, take the same path).

Sliding windows (Mistral, Mixtral, Phi-3, StarCoder2, Qwen2/Qwen3 with ``use_sliding_window``): query ``i`` sees key
``j`` iff ``i - W < j <= i``. A window only matters once a call has more than ``W`` keys: a prompt longer than the
window, or a cache that keeps more than ``W`` keys. The mask function recognises transformers' sliding-window pattern
and returns the compact mask as for any causal call, tagged with ``W`` (an all-true one where the model got no mask
and the window cuts keys off); the attention function reads ``W`` from the tag, else from the ``sliding_window``
argument the model passes (a direct call). The fused kernel then applies the window itself and skips the key blocks
left of each query block's windows; softmax mode gets a 4D mask with the window. HF's own 4D mask, with the window in
it, is what a static cache's step whose keys start past position 0 gets (``generate()`` builds those masks before the
forward, which may be compiled), and what windowed calls get while compiling (the pattern is not recognised there).
ModernBERT's local layers have a bidirectional window (``|i - j| <= w``, transformers'
``sliding_window_bidirectional_mask_function``): recognised the same way, tagged as ``w + 1`` (``attention``'s terms),
and given to the fused kernel without causality.

Modes, read per call from the attention module's ``_hf_masked_softmax_mode`` (set by ``patch_model``):

* ``"softmax"``: scores by ``torch.matmul``, probabilities by ``masked_softmax`` with scale, mask and causality fused
  (no 4D mask is materialised), dropout on the probabilities in training, output by ``torch.matmul``. Returns the
  probabilities (after dropout, as HF's eager path does).
* ``"fused"``: ``hf_masked_softmax.attention``; scores never leave the kernel, so it returns no probabilities (asking
  for them is a ``ValueError``). Attention dropout in training runs inside the kernel (its own Philox stream, so the
  mask differs from the one eager draws from torch's generator; the distribution is the same).
* ``"auto"`` (default, and what ``from_pretrained(attn_implementation=NAME)`` gets): ``"fused"`` unless the caller
  wants attention probabilities (``output_attentions``); then ``"softmax"``. A recompute by activation checkpointing
  (a forward inside the backward pass) repeats the choice of the module's last forward, which is the pass it
  recomputes unless several forwards ran before one backward and asked for probabilities differently.

T5 and its copies pass a relative ``position_bias`` (``[1, H, Q, K]``) to add to the scores: fused mode folds it and the
mask into one additive 4D mask (made once per stack and forward, see ``_biased_mask``), softmax mode adds it to the
scores before the kernel; a bias that needs a gradient runs softmax mode's math in fused mode too (the fused kernel's
backward gives a mask no gradient), returning no probabilities.

Models that reach this backend by name (``from_pretrained(..., attn_implementation=NAME)``) rather than through
``patch_model`` are checked against the patcher's registry on every call: another model type gets a
``ValueError`` naming the supported ones. float64 models run the plain-PyTorch reference (no kernel takes float64).

Supported transformers: 5.4 and newer (the first release whose mask interface passes ``q_offset`` and whose GPT-2
passes ``scaling`` to the attention interface; BERT goes through the interface from 5.0 on).
"""
from __future__ import annotations

import os

import torch
import transformers
from packaging.version import Version
from transformers import masking_utils
from transformers.modeling_utils import AttentionInterface
from transformers.utils import output_capturing
from transformers.utils.import_utils import is_tracing

from . import masks as _masks
from ._launch import weak_entry
from .masked_softmax import masked_softmax
from .ops import attention  # the custom-operator entry of hf_masked_softmax.attention
from .reference import masked_softmax_reference

NAME = "hf_masked_softmax"
MODES = ("auto", "softmax", "fused")
MODE_ATTR = "_hf_masked_softmax_mode"
AUTO_CHOICE_ATTR = "_hf_masked_softmax_auto_choice"  # what "auto" ran on a module's last forward (see _pick_mode)
MIN_TRANSFORMERS = "5.4.0"

TRANSFORMERS_SUPPORTED = Version(transformers.__version__).release >= Version(MIN_TRANSFORMERS).release
# Whether a one-query step (decoding) asks the GPU whether its 2D mask pads anything, and runs without the mask when
# not (see _mask_function). ``HF_MASKED_SOFTMAX_DECODE_PAD_CHECK=0`` keeps the mask on every step.
DECODE_PAD_CHECK = os.environ.get("HF_MASKED_SOFTMAX_DECODE_PAD_CHECK", "1").strip().lower() not in (
    "0", "false", "no", "off")


def _attention_probabilities_requested(kwargs) -> bool:
    """Whether the model's caller asked for attention probabilities on this forward pass.

    transformers 5 does not reliably pass ``output_attentions`` down to the attention function (GPT-2 drops it):
    the model's ``capture_outputs`` wrapper records the attention modules' second output through forward hooks while
    a collector naming ``attentions`` / ``cross_attentions`` is active. Read that collector.
    """
    if kwargs.get("output_attentions"):
        return True
    collector = output_capturing._active_collector.get()
    return bool(collector) and ("attentions" in collector or "cross_attentions" in collector)


def _causal_for(module, attention_mask, is_causal) -> bool:
    # A 4D mask already holds whatever causality the model wants (HF builds it so; users pass it so).
    if attention_mask is not None and attention_mask.dim() == 4:
        return False
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    return bool(is_causal)


# The attribute that marks a compact mask made by _mask_function with the (kv_offset, kv_length, sliding window or
# None) it answers: the attention function reads the window from it (Qwen2-MoE passes none of its own).
_COMPACT_TAG = "_hf_masked_softmax_keys"
# The attribute that marks a compact mask made for packed sequences with their ``[B, L]`` ids (see _packed_pattern):
# the attention function hands them to the kernels as ``segments``.
_SEGMENTS_TAG = "_hf_masked_softmax_segments"

# mask.data_ptr() -> (weakref to the mask, what "auto" ran on the forward that got it); see _pick_mode. Keyed by
# storage, not object: reentrant checkpointing hands the recompute detached copies of the layer's tensor arguments.
_AUTO_BY_MASK: dict = {}


# Gemma's config flag: its attention modules turn non-causal while the model still builds a causal mask, so HF's
# eager attention (which applies the mask) is causal and its sdpa (which drops a mask without padding and then goes by
# the module) is not. The compact mask here leaves causality to the module, so it would run bidirectional where eager
# is causal: refused rather than run one way or the other.
BIDIRECTIONAL_CONFLICT = (
    "config.use_bidirectional_attention=True makes its attention modules non-causal while the model still builds a "
    "causal mask, so transformers' own eager and sdpa attention disagree whenever nothing is padded (eager stays "
    "causal); hf_masked_softmax does not pick one. Run it with attn_implementation='eager' or 'sdpa'"
)

# Model types whose own code asks the mask function for a mask it then uses outside the AttentionInterface, where
# only HF's 4D mask is understood: SigLIP 2's vision pooling head in transformers 5.4-5.17 builds its probe's cross
# mask with create_bidirectional_mask and hands it, repeated over heads, to nn.MultiheadAttention (5.25 passes the 2D
# mask as key_padding_mask instead and asks for nothing). Its towers' own calls are self-attention (queries = keys);
# a call with fewer queries than keys gets HF's 4D mask.
_MASK_READ_OUTSIDE = frozenset({"siglip2_vision_model"})

_SUPPORTED_TYPES: frozenset = frozenset()  # the patcher's registry: set_supported_types, when patches is imported


def set_supported_types(model_types) -> None:
    """The model types that ``attn_implementation=NAME`` runs (the patcher's registry; ``patches`` imports this
    module, so it hands the registry over when it is imported, which the package does on import). Set once at import
    rather than on a first call: a call traced by ``torch.compile`` that assigned this global would make Dynamo
    rebuild the frozenset, which torch 2.8's Dynamo cannot do (``AssertionError: frozenset not in co_names``)."""
    global _SUPPORTED_TYPES
    _SUPPORTED_TYPES = frozenset(model_types)


def _check_model_type(config) -> None:
    """ValueError for a model type outside the patcher's registry, for models that reach this backend by name
    (``from_pretrained(..., attn_implementation=NAME)``) rather than through ``patch_model``, which checks first."""
    model_type = getattr(config, "model_type", None)
    if model_type is None:  # not a transformers config (a hand-made call): nothing to check against
        return
    if model_type not in _SUPPORTED_TYPES:
        raise ValueError(
            f"attn_implementation={NAME!r} does not run model_type {model_type!r}; supported model_types: "
            f"{sorted(_SUPPORTED_TYPES)}. Load this model with attn_implementation='sdpa' or 'eager'"
        )


def _pick_mode(module, kwargs, attention_mask=None) -> str:
    mode = module.__dict__.get(MODE_ATTR)
    if mode is None:  # loaded with attn_implementation=NAME, not patched: "auto", for a supported type only
        _check_model_type(module.__dict__.get("config"))
        mode = "auto"
    if mode != "auto":
        if mode == "fused" and _attention_probabilities_requested(kwargs):
            raise ValueError(
                "patch mode 'fused' cannot provide attention probabilities (output_attentions=True): the fused kernel "
                "never materialises them. Patch with mode='auto' (switches to 'softmax' for such calls) or "
                "mode='softmax'."
            )
        return mode
    if torch.compiler.is_compiling():  # (no recompute bookkeeping in a traced graph)
        return "softmax" if _attention_probabilities_requested(kwargs) else "fused"
    if torch._C._current_graph_task_id() != -1:
        # A forward inside a backward pass: activation checkpointing recomputing this module. The caller's wish for
        # probabilities is not visible there (GPT-2 passes it only through the output collector, which is not active
        # in the backward), and a recompute must save what the first pass saved (and draw the same dropout): repeat
        # the choice of the forward it recomputes. The recompute gets that forward's mask (one fresh tensor per
        # forward, shared by its layers); without a mask, the module's latest choice.
        if attention_mask is not None and attention_mask.numel():
            entry = _AUTO_BY_MASK.get(attention_mask.data_ptr())
            if entry is not None and entry[0]() is not None:
                return entry[1]
        last = module.__dict__.get(AUTO_CHOICE_ATTR)
        if last is not None:
            return last
    choice = "softmax" if _attention_probabilities_requested(kwargs) else "fused"
    module.__dict__[AUTO_CHOICE_ATTR] = choice
    # checkpointing recomputes training forwards only
    if attention_mask is not None and module.training and attention_mask.numel():
        key = attention_mask.data_ptr()
        entry = _AUTO_BY_MASK.get(key)
        if entry is None or entry[0]() is not attention_mask or entry[1] != choice:
            weak_entry(_AUTO_BY_MASK, key, attention_mask, choice)
    return choice


# The attribute of a position bias that keeps its last _biased_mask: (the mask, the bias's version, the result)
_BIASED_TAG = "_hf_masked_softmax_biased"


def _biased_mask(bias: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """T5's additive position bias (``[1 or B, H, Q, K]``) with ``attention_mask`` folded in: one additive 4D mask for
    the fused kernel. The bias alone where there is no mask (broadcast over the batch as it is, nothing copied); a
    compact ``[B, K]`` mask or a 4D bool one fills the masked entries with the dtype's minimum (a ``[B, H, Q, K]``
    tensor, as transformers' eager and sdpa build); a 4D additive mask is added, as eager adds it.

    T5 hands one bias tensor and one mask to every layer of a stack, so the result is kept on the bias (and freed with
    it, after the forward) and made once per stack and forward."""
    if attention_mask is None:
        return bias
    tracing = torch.compiler.is_compiling()
    if not tracing:
        kept = getattr(bias, _BIASED_TAG, None)
        if kept is not None and kept[0] is attention_mask and kept[1] == bias._version:
            return kept[2]
    mask = attention_mask[:, None, None, :] if attention_mask.dim() == 2 else attention_mask
    if mask.dtype == torch.bool:
        combined = bias.masked_fill(~mask, torch.finfo(bias.dtype).min)
    else:
        combined = bias + mask
    if not tracing:
        setattr(bias, _BIASED_TAG, (attention_mask, bias._version, combined))
    return combined


def _closure_of(fn) -> dict:
    code = getattr(fn, "__code__", None)
    cells = getattr(fn, "__closure__", None) or ()
    return dict(zip(code.co_freevars, cells)) if code is not None else {}


def _code_of(make, *args):
    """The code object of the closures that ``masking_utils.<make>(*args)`` returns (None where it is missing)."""
    factory = getattr(masking_utils, make, None)
    return None if factory is None else getattr(factory(*args), "__code__", None)


_AND_MASKS_CODE = _code_of("and_masks", masking_utils.causal_mask_function)
_WINDOW_OVERLAY_CODE = _code_of("sliding_window_overlay", 1)
_BIDIRECTIONAL_OVERLAY_CODE = _code_of("sliding_window_bidirectional_overlay", 1)
_PACKED_CODE = _code_of("packed_sequence_mask_function", torch.zeros(1, 1, dtype=torch.long))
_REMAP_CODE = _code_of("remap_positions_for_packed_sequence", masking_utils.causal_mask_function,
                       torch.zeros(1, 1, dtype=torch.long))


def _packed_pattern(mask_function):
    """``(inner, ids)`` when ``mask_function`` is transformers' mask for packed sequences (a padding-free batch: no
    2D mask, ``position_ids`` that restart, no cache), else None. transformers builds it as ``and_masks(inner,
    packed_sequence_mask_function(ids))`` (5.4, 5.17), from 5.25 on with ``inner`` wrapped in
    ``remap_positions_for_packed_sequence(inner, position_ids)``, which changes nothing inside a sequence (its
    positions are consecutive: a new sequence starts wherever they are not). ``ids`` (``[B, L]``) number the sequences
    of each row, increasing: equal ids are one run, as the kernels' ``segments`` take them. ``inner`` is the pattern
    within each sequence (causal, bidirectional, a sliding window), None where the wrapper holds no function."""
    if (_PACKED_CODE is None or _AND_MASKS_CODE is None
            or getattr(mask_function, "__code__", None) is not _AND_MASKS_CODE):
        return None
    cell = _closure_of(mask_function).get("mask_functions")
    parts = cell.cell_contents if cell is not None else None
    if not (isinstance(parts, tuple) and len(parts) == 2) or getattr(parts[1], "__code__", None) is not _PACKED_CODE:
        return None
    cell = _closure_of(parts[1]).get("packed_sequence_mask")
    ids = cell.cell_contents if cell is not None else None
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        return None
    inner = parts[0]
    if _REMAP_CODE is not None and getattr(inner, "__code__", None) is _REMAP_CODE:
        cell = _closure_of(inner).get("mask_function")
        inner = cell.cell_contents if cell is not None else None
    return (inner, ids) if callable(inner) else None


def _window_pattern(mask_function):
    """``(W, causal)`` when ``mask_function`` is exactly one of transformers' sliding-window patterns, with ``W`` in
    :func:`hf_masked_softmax.attention`'s terms; else None.

    * ``sliding_window_causal_mask_function(w)`` = ``and_masks(sliding_window_overlay(w), causal_mask_function)``:
      query ``i`` sees ``i - w < j <= i``, so ``(w, True)``;
    * ``sliding_window_bidirectional_mask_function(w)`` = ``and_masks(sliding_window_bidirectional_overlay(w),
      bidirectional_mask_function)`` (ModernBERT's local layers): ``|i - j| <= w``, so ``(w + 1, False)``.

    Each is a new closure on every call, so it is recognised by its code objects and read from its cells (the same
    in transformers 5.4, 5.17 and 5.25). Anything else (extra ``and``/``or`` terms, packed sequences, another layout
    in some version) gives None, and with it HF's 4D mask, which is right for any pattern.
    """
    if _AND_MASKS_CODE is None or getattr(mask_function, "__code__", None) is not _AND_MASKS_CODE:
        return None
    cell = _closure_of(mask_function).get("mask_functions")
    parts = cell.cell_contents if cell is not None else None
    if not (isinstance(parts, tuple) and len(parts) == 2):
        return None
    code = getattr(parts[0], "__code__", None)
    if (code is not None and code is _WINDOW_OVERLAY_CODE and parts[1] is masking_utils.causal_mask_function):
        causal = True
    elif (code is not None and code is _BIDIRECTIONAL_OVERLAY_CODE
          and parts[1] is getattr(masking_utils, "bidirectional_mask_function", None)):
        causal = False
    else:
        return None
    cell = _closure_of(parts[0]).get("sliding_window")
    window = cell.cell_contents if cell is not None else None
    if isinstance(window, bool) or not isinstance(window, int) or window < (1 if causal else 0):
        return None
    return (window, True) if causal else (window + 1, False)


def _sliding_window_of(mask_function) -> int | None:
    """``W`` when ``mask_function`` is exactly transformers' ``sliding_window_causal_mask_function(W)``, else None
    (:func:`_window_pattern`)."""
    pattern = _window_pattern(mask_function)
    return pattern[0] if pattern is not None and pattern[1] else None


def _window_cuts(window: int, causal: bool, q_len: int, k_len: int) -> bool:
    """Whether a window (``attention``'s terms) leaves some query of a ``q_len`` x ``k_len`` call without some key
    it would otherwise see: causal, more than ``window`` keys; bidirectional, a distance of ``window`` or more."""
    return k_len > window if causal else max(q_len, k_len) > window


def _window_for(attention_mask, kwargs) -> int | None:
    """The sliding window of an attention call: the one the mask function recognised, kept on its compact mask,
    else the ``sliding_window`` the model passes (a direct call's mask carries none)."""
    tag = getattr(attention_mask, _COMPACT_TAG, None) if attention_mask is not None else None
    if tag is not None and tag[2] is not None:
        return tag[2]
    window = kwargs.get("sliding_window")
    return None if window is None else int(window)


def _windowed_mask(attention_mask, q_len: int, k_len: int, window: int, causal: bool, device) -> torch.Tensor:
    """4D bool ``[B or 1, 1, Q, K]``: the 2D padding mask (if any), bottom-right causality (if ``causal``) and the
    window (bidirectional without causality), as the kernels apply them (``masks.keep_mask``)."""
    shape = (1 if attention_mask is None else attention_mask.shape[0], 1, q_len, k_len)
    return _masks.keep_mask(_masks.prepare_mask(attention_mask, shape, device), shape, causal=causal, device=device,
                            window=window)


def _attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
):
    """``AttentionInterface`` entry: ``query [B, H, Q, D]``, ``key [B, Hkv, K, D]``, ``value [B, Hkv, K, Dv]`` ->
    (``[B, Q, H, Dv]``, probs); ``Dv`` is ``D`` but for multi-head latent attention (DeepSeek-V2/V3 and their
    kin: 192-wide queries and keys, 128-wide values), which the kernels take as it is.

    ``attention_mask`` is what the mask function below produced (``None`` or ``[B, K]`` bool) or a 4D bool / additive
    mask. Returns the probabilities ``[B, H, Q, K]`` in softmax mode, ``None`` in fused mode.
    """
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    causal = _causal_for(module, attention_mask, is_causal)
    # T5's (and its copies') relative position bias, added to the scaled scores before the mask: folded into an
    # additive 4D mask for the fused kernel, added to the scores in softmax mode. The fused kernel's backward gives no
    # gradient for a mask, so a bias that needs one (a training step of the layer that owns the bias's embedding, or
    # any layer under activation checkpointing, which marks T5's zero bias as needing one) runs in softmax mode, where
    # autograd carries it.
    bias = kwargs.get("position_bias")
    window = None
    if attention_mask is None or attention_mask.dim() == 2:
        # A 4D mask already holds any window, as eager and sdpa assume; a compact one leaves it to the kernels.
        window = _window_for(attention_mask, kwargs)
        if window is not None and not _window_cuts(window, causal, query.shape[-2], key.shape[-2]):
            window = None  # no key falls out of any query's window
    mode = _pick_mode(module, kwargs, attention_mask)
    # (a bias that needs a gradient: softmax mode's math, still no probabilities returned in fused mode)
    fused = (mode == "fused" and query.dtype != torch.float64
             and not (bias is not None and bias.requires_grad and torch.is_grad_enabled()))
    softcap = kwargs.get("softcap")
    sinks = kwargs.get("s_aux")  # GPT-OSS: one logit per query head in every row's softmax, attending to nothing
    # packed sequences: the mask function's all-true compact mask carries their ids (see _packed_pattern)
    segments = getattr(attention_mask, _SEGMENTS_TAG, None) if attention_mask is not None else None

    if fused:
        if bias is not None:
            attention_mask = _biased_mask(bias, attention_mask)
        out = attention(query, key, value, None if segments is not None else attention_mask, causal=causal,
                        scale=scaling, dropout_p=float(dropout), window=window,
                        softcap=None if softcap is None else float(softcap), sinks=sinks, segments=segments,
                        _any_value_dim=True)
        return out.transpose(1, 2).contiguous(), None
    if segments is not None:  # the softmax kernel has no segments: a 4D mask with them (and any window)
        shape = (query.shape[0], 1, query.shape[-2], key.shape[-2])
        attention_mask = _masks.keep_mask(_masks.MaskSpec(_masks.SEGMENTS, segments), shape, causal=causal,
                                          device=query.device, window=window)
        causal = False
    elif window is not None:  # the softmax kernel has no window: a 4D mask with it
        attention_mask = _windowed_mask(attention_mask, query.shape[-2], key.shape[-2], window, causal, query.device)
        causal = False

    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    wide = query.dtype == torch.float64
    if getattr(module, "reorder_and_upcast_attn", False) and not wide:
        # GPT-2's reorder_and_upcast_attn: scores in fp32 even under autocast, so fp16 QK^T cannot overflow.
        with torch.autocast(query.device.type, enabled=False):
            scores = torch.matmul(query.float(), key.float().transpose(-1, -2))
    else:
        scores = torch.matmul(query, key.transpose(-1, -2))
    if softcap is not None:
        # Gemma 2's soft-capping, step by step in the scores' dtype as its eager attention does, then the kernel at
        # scale 1 for the mask and the softmax
        scores = torch.tanh(scores * scaling / softcap) * softcap
        scaling = 1.0
    if bias is not None:  # T5's eager: scores * scaling + position_bias in the scores' dtype, then the mask
        scores = scores * scaling + bias
        scaling = 1.0
    if wide:
        # No kernel takes float64 (a model in double precision, for gradcheck or numerical comparisons): the
        # plain-PyTorch reference with the same semantics, in float64, differentiated by autograd.
        probs = masked_softmax_reference(scores, attention_mask, causal=causal, scale=scaling,
                                         compute_dtype=torch.float64, sinks=sinks)
    else:
        probs = masked_softmax(scores, attention_mask, causal=causal, scale=scaling, sinks=sinks).to(value.dtype)
    # The scores are dead from here (autograd keeps the probabilities, not them): free them before the next
    # [B, H, Q, K]-sized tensors appear, or the peak memory exceeds HF eager's, which rebinds one name.
    del scores
    if dropout > 0.0:
        probs = torch.nn.functional.dropout(probs, p=dropout, training=True)
    out = torch.matmul(probs, value)
    # fused mode: float64 comes here too, and a call whose position bias needs a gradient
    return out.transpose(1, 2).contiguous(), (None if mode == "fused" else probs)


def _mask_function(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset=0,
    kv_offset: int = 0,
    mask_function=masking_utils.causal_mask_function,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
):
    """``AttentionMaskInterface`` entry: the compact ``[B, kv_length]`` bool padding mask, ``None``, or a 4D bool mask.

    The arguments are those of transformers' ``sdpa_mask``: ``attention_mask`` is the tokenizer's 2D mask (bool, may
    be shorter than ``kv_offset + kv_length``: the rest is not attended), ``mask_function`` the pattern.
    """
    config = kwargs.get("config")
    _check_model_type(config)
    given = mask_function
    # Packed sequences: the pattern inside them here, the sequences' ids to the kernels (below: an all-true compact
    # mask carries them); HF's 4D mask where anything else differs from a padding-free batch without a cache
    packed = None if torch.compiler.is_compiling() else _packed_pattern(mask_function)
    if packed is not None:
        if (attention_mask is None and not isinstance(kv_offset, torch.Tensor) and kv_offset == 0
                and not isinstance(q_offset, torch.Tensor) and q_offset == 0
                and q_length == kv_length == packed[1].shape[-1] and packed[1].shape[0] in (1, batch_size)):
            mask_function = packed[0]
        else:
            packed = None
    # (not while compiling: the closure's cells are not traced; such calls get HF's 4D mask, right for any window)
    pattern = None if torch.compiler.is_compiling() else _window_pattern(mask_function)
    window = None if pattern is None else pattern[0]
    if (attention_mask is not None and not torch.compiler.is_compiling()
            and getattr(attention_mask, _COMPACT_TAG, None) == (int(kv_offset), kv_length, window)):
        # This function's own answer for these keys, handed back as a 2D mask: generate() builds the masks of a
        # static cache's step before the forward, and a model without per-layer-type masks then passes that mask
        # through its mask function again. Sliced again it would lose its keys where the keys start past position 0
        # (a sliding layer's), so it is returned as it is.
        return attention_mask
    causal = mask_function is masking_utils.causal_mask_function or (pattern is not None and pattern[1])
    if causal and getattr(config, "use_bidirectional_attention", False):  # models loaded by name (see patches)
        raise ValueError(f"{NAME} cannot run this {config.model_type} model: {BIDIRECTIONAL_CONFLICT}")
    plain = causal or mask_function is masking_utils.bidirectional_mask_function or pattern is not None
    if packed is not None and not plain:  # packed, but some other pattern inside the sequences
        packed, mask_function, causal = None, given, False
        plain = False
    # Bottom-right causality equals HF's (query q_offset + i sees key kv_offset + j iff j + kv_offset <= q_offset + i)
    # exactly when the last query is the last key. A static cache longer than what it holds breaks that.
    if causal and isinstance(q_offset, torch.Tensor) and is_tracing(q_offset):
        # a cache position only known at run time (a static cache under torch.compile or CUDA-graph capture): no
        # guard on its value; the 4D mask below is right wherever the cache stands
        aligned = False
    else:
        aligned = not causal or int(q_offset) + q_length == kv_offset + kv_length
    # a window that cuts keys off this call (kv_length > window) stays with the compact mask: the attention function
    # reads it from the mask's tag and the fused kernel skips the key blocks left of each query block's windows
    cut = window is not None and _window_cuts(window, causal, q_length, kv_length)
    if getattr(config, "model_type", None) in _MASK_READ_OUTSIDE and q_length != kv_length:
        plain = False  # (see _MASK_READ_OUTSIDE: HF's 4D mask)
    if not isinstance(kv_offset, torch.Tensor) and kv_offset > 0 and kwargs.get("allow_is_causal_skip") is False:
        # Keys that start past position 0 (a sliding layer's) in a static cache (transformers turns the skip off for
        # those): generate() builds the step's masks before the forward, which may be compiled, and a compiled
        # forward cannot tell a compact mask handed back from the tokenizer's (it does not read the tag above): HF's
        # 4D mask.
        plain = False
    # A one-query step on a static cache (keys past the query's position are the cache's unwritten slots): with
    # bottom-right causality the query sees every key, so the compact mask with the keys past its position dropped is
    # exactly HF's mask (its key ranges then bound the step as a dynamic cache's are)
    static_step = (causal and not aligned and q_length == 1 and window is None and plain
                   and not torch.compiler.is_compiling() and not isinstance(kv_offset, torch.Tensor) and kv_offset == 0
                   and not (isinstance(q_offset, torch.Tensor) and is_tracing(q_offset))
                   and 0 <= int(q_offset) < kv_length
                   and (attention_mask is not None or kwargs.get("device") is not None))  # (a mask of ones needs it)
    if plain and (aligned or static_step):
        if attention_mask is None:
            if not cut and not static_step and packed is None:
                return None
            # no padding, but the window must reach the attention function: an all-true mask carries it
            cols = torch.ones(batch_size, kv_length, dtype=torch.bool, device=kwargs.get("device", "cpu"))
        else:
            cols = attention_mask[:, kv_offset: kv_offset + kv_length]
        # A mask without padding is passed on too: asking (``bool(mask.all())``) would copy a flag from the GPU and
        # so wait for everything queued before it, every forward; the host could then never run ahead of the GPU, and
        # a forward would take its host time plus its device time. Such a mask costs the kernels one key range per
        # sequence (one tiny launch per forward, shared by every layer: a fresh tensor each forward, so the layers
        # may share its ranges, see masks.share_ranges).
        # Except on a one-query step (decoding), where the question is cheap: generate() waits for the GPU after
        # every step (its stop check), so the flag's copy finds the GPU idle, and a step without padding then runs
        # every layer on the mask-free path, as HF's sdpa does (its mask function asks the same question there).
        if (q_length == 1 and DECODE_PAD_CHECK and not cut and not static_step and cols.shape[-1] == kv_length
                and not is_tracing(cols) and bool(cols.all())):
            return None
        # always a new tensor (a bool mask's slice would share the caller's memory): one per forward, see _pick_mode
        pad = cols.to(torch.bool, copy=True)
        if pad.shape[-1] < kv_length:
            pad = torch.nn.functional.pad(pad, (0, kv_length - pad.shape[-1]), value=False)
        if static_step:
            pad[:, int(q_offset) + 1:] = False  # the cache's slots past the query: not written yet
        if not torch.compiler.is_compiling():
            _masks.share_ranges(pad)
            setattr(pad, _COMPACT_TAG, (int(kv_offset), kv_length, window))
            if packed is not None:  # (HF's ids: a fresh tensor per forward, handed to every layer with this mask)
                setattr(pad, _SEGMENTS_TAG, _masks.share_ranges(packed[1].expand(batch_size, -1)))
        return pad
    kwargs.update(allow_is_causal_skip=False, allow_is_bidirectional_skip=False)
    full = masking_utils.sdpa_mask(
        batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset, kv_offset=kv_offset,
        mask_function=given, attention_mask=attention_mask, **kwargs,
    )
    if isinstance(full, torch.Tensor) and not torch.compiler.is_compiling():
        # a fresh tensor per forward, handed to every layer: the layers share its key bounds (masks.mask_bounds)
        _masks.share_ranges(full)
    return full


def attention_forward(module, query, key, value, attention_mask, **kwargs):
    """The registered attention function; see ``_attention_forward``. Under ``torch.compile`` it is traced like any
    PyTorch code: the kernels are custom operators (:mod:`hf_masked_softmax.ops`), one graph node each."""
    return _attention_forward(module, query, key, value, attention_mask, **kwargs)


def mask_function(*args, **kwargs):
    """The registered mask function; see ``_mask_function``."""
    return _mask_function(*args, **kwargs)


def register() -> None:
    """Register ``NAME`` with transformers (idempotent). Does nothing on transformers older than 5.4."""
    if not TRANSFORMERS_SUPPORTED:
        return
    AttentionInterface.register(NAME, attention_forward)
    masking_utils.AttentionMaskInterface.register(NAME, mask_function)


register()
