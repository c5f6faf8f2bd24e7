"""Decoder-only language models whose attention layers are Llama's: one spec shape, a list of model types.

These models hand the AttentionInterface plain scaled dot-product attention: rotary embeddings and any q/k norms are
applied before the call, grouped-query attention arrives as key/value tensors with fewer heads
(``num_key_value_groups = num_attention_heads // num_key_value_heads``; GPT-BigCode's multi-query attention has
one), ``module.is_causal`` is True and ``scaling`` is passed explicitly (``head_dim ** -0.5``, Granite's
``attention_multiplier``, OPT's 1.0). Their eager attention functions are Llama's, or Llama's without the key/value
repeat for the types without grouped-query attention (checked for transformers 5.4, 5.17 and 5.25). The mask comes
from ``create_causal_mask``, which the backend's mask function answers with the compact ``[B, K]`` padding mask.

Gemma's ``use_bidirectional_attention=True`` is refused too (see ``hf.BIDIRECTIONAL_CONFLICT``). The one feature
of these types that the kernels do not do is sliding-window attention (Mistral's default
``sliding_window=4096``, Qwen2/Qwen3 with ``use_sliding_window=True``): such a configuration is refused when patching,
with the feature named. The attention function refuses it again at call time (``hf.py``, together with soft-capping,
sinks and position biases), for models that reach it through ``from_pretrained(..., attn_implementation=...)``
without ``patch_model``.

Only model types listed in ``SPECS`` are accepted, each covered by tests/test_patch_llama.py: an unknown type may
route the same interface through code that changes the semantics (score biases, sinks, per-layer windows), so it is
refused rather than guessed at. To add a type, append a line below and a case to that test.
"""
from __future__ import annotations

from .. import hf
from .spec import ModelSpec


def _sliding_window(config, window_follows_layer_types: bool):
    """The window some layer of the model applies, or None.

    Qwen2-style models apply ``config.sliding_window`` only on layers whose ``layer_types`` entry is
    ``"sliding_attention"`` (their configs also reset it to None unless ``use_sliding_window``); Mistral-style
    models apply it on every layer whenever it is set.
    """
    window = getattr(config, "sliding_window", None)
    if window is None:
        return None
    layer_types = getattr(config, "layer_types", None)
    if window_follows_layer_types and layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return window


def _checker(model_type: str, window_follows_layer_types: bool):
    def check(config) -> None:
        if getattr(config, "use_bidirectional_attention", False):
            raise ValueError(f"cannot patch this {model_type} model: {hf.BIDIRECTIONAL_CONFLICT}")
        window = _sliding_window(config, window_follows_layer_types)
        if window is not None:
            raise ValueError(
                f"cannot patch this {model_type} model: it uses sliding-window attention "
                f"(config.sliding_window={window}), which hf_masked_softmax's kernels do not implement; "
                "run it with attn_implementation='sdpa' or 'eager'"
            )

    return check


def decoder_spec(model_type: str, attention_class: str, *, window_follows_layer_types: bool = False) -> ModelSpec:
    """A ``ModelSpec`` for a Llama-style decoder whose attention module class is ``attention_class``."""
    return ModelSpec(
        model_type=model_type,
        attention_classes=(attention_class,),
        check=_checker(model_type, window_follows_layer_types),
    )


SPECS = (
    decoder_spec("llama", "LlamaAttention"),  # also SmolLM/SmolLM2, TinyLlama, Llama 2/3.x (RoPE scaling is pre-call)
    decoder_spec("mistral", "MistralAttention"),  # with sliding_window=None (Mistral 7B v0.2 and later)
    decoder_spec("qwen2", "Qwen2Attention", window_follows_layer_types=True),
    decoder_spec("qwen3", "Qwen3Attention", window_follows_layer_types=True),
    decoder_spec("granite", "GraniteAttention"),  # scaling = config.attention_multiplier
    decoder_spec("olmo2", "Olmo2Attention"),
    decoder_spec("gemma", "GemmaAttention"),  # Gemma 1 (Gemma 2 and 3 soft-cap and slide: not listed)
    decoder_spec("cohere", "CohereAttention"),  # Command-R (optional q/k norms before the call)
    decoder_spec("stablelm", "StableLmAttention"),  # partial rotary, optional q/k layer norms before the call
    decoder_spec("phi", "PhiAttention"),  # Phi-1, 1.5 and 2 (partial rotary before the call)
    decoder_spec("gpt_neox", "GPTNeoXAttention"),  # Pythia, GPT-NeoX-20B (partial rotary before the call)
    decoder_spec("opt", "OPTAttention"),  # queries scaled by the projection: scaling=1.0
    decoder_spec("gpt_bigcode", "GPTBigCodeAttention"),  # StarCoder, SantaCoder: multi-query, one key/value head
)
