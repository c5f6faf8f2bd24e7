"""Reversible, per-instance patching of Hugging Face models onto the ``hf_masked_softmax`` attention backend.

``patch_model(model, mode=...)`` points every config that ``model``'s modules hold at the backend registered in
``hf_masked_softmax.hf`` (attention implementation ``"hf_masked_softmax"``). To keep the change to this instance,
even when several models were built from one config object, each such config is replaced by a shallow copy on this
model's modules only; ``unpatch_model`` puts the original objects back (copying over any other setting changed in
the meantime) so the model runs exactly as before. The mode is stored on the same modules, where the attention
function reads it.

Registry: ``config.model_type`` -> ``ModelSpec`` (``patches/gpt2.py``, ``patches/bert.py``, BERT's relatives listed
in ``patches/encoders.py``, the Llama-style decoders listed in ``patches/decoders.py``, the BART-style
encoder-decoders listed in ``patches/seq2seq.py``, T5 and its copies in ``patches/t5.py``, and the vision, image-text
and speech encoders listed in ``patches/vision.py``). Composite wrappers without attention of their own
(``EncoderDecoderModel``) are accepted when all their parts are supported.
"""
from __future__ import annotations

import contextlib
import copy

import torch
import transformers
from transformers import PretrainedConfig

from .. import hf
from . import bert, decoders, encoders, gpt2, seq2seq, t5, vision

REGISTRY = {spec.model_type: spec for spec in (gpt2.SPEC, bert.SPEC, *encoders.SPECS, *decoders.SPECS, *seq2seq.SPECS,
                                               *t5.SPECS, *vision.SPECS)}
CONTAINERS = ("encoder-decoder",)
hf.set_supported_types(REGISTRY)
_STATE_ATTR = "_hf_masked_softmax_patch"

__all__ = ["patch_model", "unpatch_model", "patched", "REGISTRY", "NAME"]
NAME = hf.NAME


class _PatchState:
    def __init__(self, mode, holders, configs):
        self.mode = mode
        self.holders = holders  # [(module, its original config)]
        self.configs = configs  # id(original) -> (original, copy)
        # each copy's settings as patching left them: unpatch carries back only what changed on the copy since
        self.snapshots = {key: dict(twin.__dict__) for key, (_, twin) in configs.items()}


def _supported_text() -> str:
    return f"supported model_types: {sorted(REGISTRY)} (and {', '.join(CONTAINERS)} compositions of them)"


def _check_module(model) -> None:
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"expected a transformers model (a torch.nn.Module), got {type(model).__name__}; "
                         f"{_supported_text()}")


def _check_supported(model: torch.nn.Module) -> None:
    """Raise ValueError, touching nothing, unless every Hugging Face model inside ``model`` is supported."""
    submodels = [m for m in model.modules() if isinstance(m, transformers.PreTrainedModel)]
    if not submodels:
        raise ValueError(f"expected a transformers PreTrainedModel, got {type(model).__name__}; {_supported_text()}")
    types = {m.config.model_type for m in submodels}
    unsupported = sorted(t for t in types if t not in REGISTRY and t not in CONTAINERS)
    if unsupported:
        raise ValueError(f"cannot patch model_type {', '.join(map(repr, unsupported))}; {_supported_text()}")
    class_names = {type(m).__name__ for m in model.modules()}
    for t in sorted(types - set(CONTAINERS)):
        spec = REGISTRY[t]
        if not class_names.intersection(spec.attention_classes):
            raise ValueError(
                f"model_type {t!r} but none of its attention modules {spec.attention_classes} were found in "
                f"{type(model).__name__}; a custom attention class cannot be patched"
            )
        if spec.check is not None:
            for m in submodels:
                if m.config.model_type == t:
                    spec.check(m.config)
    for m in submodels:
        if getattr(m.config, "output_attentions", False):
            # transformers allows this setting with eager attention only: it refuses to set it, and to save a config
            # that has it, under any other implementation (save_pretrained would fail on the patched model)
            raise ValueError(
                f"{type(m).__name__}.config.output_attentions is True, which transformers allows with "
                "attn_implementation='eager' only (it would refuse to save the patched model); set "
                "config.output_attentions = False and pass output_attentions=True to the forward calls that want "
                "the probabilities (patch modes 'auto' and 'softmax' return them)"
            )


def _check_not_nested(model: torch.nn.Module) -> None:
    """Raise ValueError unless no part of ``model`` belongs to another patch: one patch inside another could not be
    undone in an arbitrary order (each would restore configs the other replaced)."""
    for name, m in model.named_modules():
        if _STATE_ATTR in m.__dict__:
            raise ValueError(
                f"{type(model).__name__}.{name} ({type(m).__name__}) is already patched on its own; "
                f"unpatch_model it first, or patch only one of the two"
            )
        if hf.MODE_ATTR in m.__dict__:
            raise ValueError(
                f"{type(model).__name__} is part of a model already patched by patch_model; patch, unpatch or use "
                f"patched() on that model"
            )


def patch_model(model: torch.nn.Module, *, mode: str = "auto") -> torch.nn.Module:
    """Run ``model``'s attention through hf_masked_softmax's kernels; returns ``model`` (patched in place).

    ``mode``: ``"auto"`` (fused kernel unless attention probabilities are requested, then softmax mode),
    ``"softmax"`` (torch matmuls around the masked-softmax kernel, probabilities available) or ``"fused"`` (the fused
    attention kernel only). Attention dropout in training works in every mode (inside the fused kernel, or on the
    softmax mode's probabilities). Patching a patched model changes its mode.
    Raises ``ValueError`` (model untouched) for anything but a supported model (see ``REGISTRY``), an unknown mode,
    or a config with ``output_attentions=True`` (which transformers allows with eager attention only).
    """
    _check_module(model)
    if mode not in hf.MODES:
        raise ValueError(f"mode must be one of {hf.MODES}, got {mode!r}")
    if not hf.TRANSFORMERS_SUPPORTED:
        raise RuntimeError(
            f"hf_masked_softmax needs transformers >= {hf.MIN_TRANSFORMERS}, found {transformers.__version__}"
        )
    state = model.__dict__.get(_STATE_ATTR)
    if state is not None:
        _set_mode(state, mode)
        return model
    _check_not_nested(model)
    _check_supported(model)

    configs, holders = {}, []
    for m in model.modules():
        c = m.__dict__.get("config")
        if isinstance(c, PretrainedConfig):
            if id(c) not in configs:
                configs[id(c)] = (c, copy.copy(c))
            holders.append((m, c))
    for original, twin in configs.values():
        twin._attn_implementation_internal = NAME  # set directly: the property setter recurses into sub-configs
        for key in getattr(original, "sub_configs", {}):
            sub = getattr(original, key, None)
            if id(sub) in configs:
                setattr(twin, key, configs[id(sub)][1])
    for m, c in holders:
        m.config = configs[id(c)][1]
    state = _PatchState(mode, holders, configs)
    _set_mode(state, mode)
    model.__dict__[_STATE_ATTR] = state
    return model


def _set_mode(state: _PatchState, mode: str) -> None:
    """Set the patch mode; also points the model's configs at the backend again, should something have switched
    them meanwhile (``model.set_attn_implementation("sdpa")``): patching a patched model must leave it patched."""
    state.mode = mode
    for _, twin in state.configs.values():
        twin._attn_implementation_internal = NAME
    for m, _ in state.holders:
        setattr(m, hf.MODE_ATTR, mode)


def unpatch_model(model: torch.nn.Module) -> torch.nn.Module:
    """Undo ``patch_model``: the original config objects (and attention implementation) return; returns ``model``.

    Settings changed on the patched model's configs in the meantime (say ``model.config.use_cache``) are kept, and
    so are changes made meanwhile to the original config objects (shared with other models, say) where the patched
    model's copy left the same setting alone.
    Raises ``ValueError`` if ``model`` is not patched.
    """
    _check_module(model)
    state = model.__dict__.get(_STATE_ATTR)
    if state is None:
        if any(hf.MODE_ATTR in m.__dict__ for m in model.modules()):  # its attention runs the library's
            raise ValueError(f"{type(model).__name__} is part of a model patched by patch_model, not patched itself; "
                             f"unpatch_model that model")
        raise ValueError(f"{type(model).__name__} is not patched by hf_masked_softmax")
    twins = {id(twin) for _, twin in state.configs.values()}
    missing = object()
    for config_key, (original, twin) in state.configs.items():
        before = state.snapshots[config_key]
        for key, value in twin.__dict__.items():
            if key == "_attn_implementation_internal" or id(value) in twins:
                continue
            # only what was set on this model's copy while patched: the original may be shared with other models,
            # whose own changes to it in the meantime must stay
            if before.get(key, missing) is not value:
                original.__dict__[key] = value
    for m, c in state.holders:
        m.config = c
        m.__dict__.pop(hf.MODE_ATTR, None)
        m.__dict__.pop(hf.AUTO_CHOICE_ATTR, None)
    del model.__dict__[_STATE_ATTR]
    return model


@contextlib.contextmanager
def patched(model: torch.nn.Module, *, mode: str = "auto"):
    """``with patched(model): ...`` runs the block patched, then restores the previous state (patched or not).

    If the block itself unpatches (or re-patches) the model, the exit leaves it as the block left it."""
    _check_module(model)
    if mode not in hf.MODES:
        raise ValueError(f"mode must be one of {hf.MODES}, got {mode!r}")
    state = model.__dict__.get(_STATE_ATTR)
    if state is not None:
        previous = state.mode
        _set_mode(state, mode)
        try:
            yield model
        finally:
            if model.__dict__.get(_STATE_ATTR) is state:
                _set_mode(state, previous)
        return
    patch_model(model, mode=mode)
    state = model.__dict__[_STATE_ATTR]
    try:
        yield model
    finally:
        if model.__dict__.get(_STATE_ATTR) is state:
            unpatch_model(model)
