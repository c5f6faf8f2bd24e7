"""GPT-2 (``model_type="gpt2"``).

GPT-2's attention goes through the AttentionInterface whenever ``config._attn_implementation`` is not ``"eager"``,
so the generic backend covers it: causal self-attention (``GPT2Attention.is_causal``), cross-attention
(``add_cross_attention``: ``is_causal=False``), ``scale_attn_weights`` / ``scale_attn_by_inverse_layer_idx`` (folded
into the ``scaling`` GPT-2 passes). The one GPT-2 quirk is ``reorder_and_upcast_attn``, which eager honours in a
private method that the interface bypasses; the backend reads ``module.reorder_and_upcast_attn`` and computes the
scores in fp32 for it, so no method needs swapping.
"""
from .spec import ModelSpec

SPEC = ModelSpec(model_type="gpt2", attention_classes=("GPT2Attention",))
