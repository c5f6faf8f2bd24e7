"""Encoder-decoder models whose attention layers are BART's: translation, summarisation and speech recognition.

BART, mBART, Marian, Pegasus, M2M100 (and NLLB's dense checkpoints), Blenderbot, Whisper, PLBART and Blenderbot-small
use one attention class each (``{prefix}Attention``) for the encoder's self-attention (``is_causal=False``), the
decoder's self-attention (``is_causal=True``, with a KV cache in generation) and the decoder's cross-attention
(``is_causal=False``, keys from the encoder, cached after the first step). They hand the AttentionInterface plain
scaled dot-product attention (``scaling = head_dim ** -0.5``; Whisper scales its queries in the projection and passes
1.0), and build their masks with ``create_bidirectional_mask`` / ``create_causal_mask``, which the backend's mask
function answers with the compact ``[B, K]`` padding mask (Whisper's encoder and cross-attention take no mask: audio
frames are never padded).
Their eager attention functions differ from Llama's only in having no key/value repeat and in running the softmax in
the scores' dtype, where the kernels keep fp32 (checked for transformers 5.4, 5.17 and 5.25).

Only model types listed in ``SPECS`` are accepted, each covered by tests/test_patch_seq2seq.py. To add a type, append
a line below and a case to that test.
"""
from __future__ import annotations

from .spec import ModelSpec

SPECS = tuple(
    ModelSpec(model_type=model_type, attention_classes=(f"{prefix}Attention",))
    for model_type, prefix in (
        ("bart", "Bart"),
        ("mbart", "MBart"),
        ("marian", "Marian"),
        ("pegasus", "Pegasus"),
        ("m2m_100", "M2M100"),
        ("blenderbot", "Blenderbot"),
        ("whisper", "Whisper"),
        # (these two: BART's eager function and attention class but for names, in transformers 5.4, 5.17 and 5.25)
        ("plbart", "PLBart"),
        ("blenderbot-small", "BlenderbotSmall"),
    )
)
