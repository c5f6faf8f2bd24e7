"""BERT's relatives: encoders whose attention layers are BERT's, one spec shape, a list of model types.

RoBERTa, XLM-RoBERTa, CamemBERT, ELECTRA, ERNIE, Data2Vec-Text, RoBERTa-PreLayerNorm, XLM-RoBERTa-XL, RoCBert, X-MOD
and BertGeneration (``BertGenerationEncoder`` / ``BertGenerationDecoder``) copy BERT's attention modules
(self-attention with ``is_causal = config.is_decoder``, cross-attention with ``is_causal=False``,
``scaling = head_size ** -0.5``), so they also run as decoders with a KV cache (``...ForCausalLM``,
``BertGenerationDecoder``) and inside an ``EncoderDecoderModel``. DistilBERT, ALBERT, LayoutLM, MobileBERT and ESM
are patched as encoders (``DistilBertSelfAttention``, ``AlbertAttention``, ``LayoutLMSelfAttention``,
``MobileBertSelfAttention``, ``EsmSelfAttention``).
All of them but LayoutLM build their masks with transformers' ``create_bidirectional_mask`` / ``create_causal_mask``,
which the backend's mask function answers with the compact ``[B, K]`` padding mask, and hand the AttentionInterface
nothing but that mask, the dropout and the scale (checked for transformers 5.4, 5.17 and 5.25).

Only model types listed in ``SPECS`` are accepted, each covered by tests/test_patch_encoders.py. To add a type, append
a line below and a case to that test.
"""
from __future__ import annotations

from .spec import ModelSpec


def encoder_spec(model_type: str, prefix: str, *, cross_attention: bool = True) -> ModelSpec:
    """A ``ModelSpec`` for a BERT-style model whose attention classes are ``{prefix}SelfAttention`` (and
    ``{prefix}CrossAttention`` where the family has a decoder with cross-attention)."""
    classes = (f"{prefix}SelfAttention", f"{prefix}CrossAttention") if cross_attention else (f"{prefix}SelfAttention",)
    return ModelSpec(model_type=model_type, attention_classes=classes)


SPECS = (
    encoder_spec("roberta", "Roberta"),
    encoder_spec("xlm-roberta", "XLMRoberta"),
    encoder_spec("camembert", "Camembert"),
    encoder_spec("electra", "Electra"),
    encoder_spec("ernie", "Ernie"),
    encoder_spec("data2vec-text", "Data2VecText"),
    encoder_spec("roberta-prelayernorm", "RobertaPreLayerNorm"),
    encoder_spec("xlm-roberta-xl", "XLMRobertaXL"),
    # (these three: BERT's eager function and attention classes line for line, comments aside, in transformers 5.4,
    # 5.17 and 5.25)
    encoder_spec("roc_bert", "RoCBert"),
    encoder_spec("xmod", "Xmod"),
    encoder_spec("bert-generation", "BertGeneration"),
    # LayoutLM (the forty-fourth session): an encoder only, whose eager function upcasts the softmax to fp32 (as the
    # kernels compute it) and whose model builds its own additive [B, 1, 1, K] mask of finfo.min (mask or not), which
    # the kernels take on their 4D path; the same source, type hints aside, in transformers 5.4, 5.17 and 5.25
    encoder_spec("layoutlm", "LayoutLM", cross_attention=False),
    encoder_spec("distilbert", "DistilBert", cross_attention=False),
    ModelSpec(model_type="albert", attention_classes=("AlbertAttention",)),
    # MobileBERT (its attention inside a bottleneck) and ESM (rotary embeddings before the call): the plain eager
    # function, masks from create_bidirectional_mask, the same classes in 5.4, 5.17 and 5.25 (ESM's rotary moved from
    # a module inside the class to the model's embeddings; the interface's arguments are the same)
    ModelSpec(model_type="mobilebert", attention_classes=("MobileBertSelfAttention",)),
    ModelSpec(model_type="esm", attention_classes=("EsmSelfAttention",)),
    # ModernBERT: rotary, a fused QKV projection, and a bidirectional window (query i sees |i - j| <= local_attention
    # // 2) on two layers of three; its global layers as BERT's. The window's mask function is recognised
    # (hf._window_pattern) and the window goes to the kernels (attention(..., window=W) without causality)
    ModelSpec(model_type="modernbert", attention_classes=("ModernBertAttention",)),
    # EuroBERT: Llama's attention (rotary, grouped-query heads, Llama's eager function) without causality
    # (is_causal=False, create_bidirectional_mask); tests/test_patch_eurobert.py
    ModelSpec(model_type="eurobert", attention_classes=("EuroBertAttention",)),
)
