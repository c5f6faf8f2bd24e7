"""Fused attention. PLACEHOLDER until the fused Triton kernel lands (issue 5): delegates to the reference."""
from .reference import attention_reference


def attention(q, k, v, attention_mask=None, *, causal=False, scale=None):
    return attention_reference(q, k, v, attention_mask, causal=causal, scale=scale)
