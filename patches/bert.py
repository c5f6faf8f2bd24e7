"""BERT (``model_type="bert"``): encoder, decoder (``is_decoder``) and cross-attention (``add_cross_attention``).

``BertSelfAttention.is_causal`` is ``config.is_decoder`` and ``BertCrossAttention.is_causal`` is False, which is all
the generic backend needs; the task heads (MaskedLM, SequenceClassification, ...) wrap the same ``BertModel``.
"""
from .spec import ModelSpec

SPEC = ModelSpec(model_type="bert", attention_classes=("BertSelfAttention", "BertCrossAttention"))
