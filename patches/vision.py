"""Vision, contrastive image-text and speech encoders: bidirectional attention through transformers' eager function.

Every type here calls the AttentionInterface from one module class per family with ``query [B, H, T, D]``, the
mask, ``scaling = head_dim ** -0.5`` and the dropout, nothing else the kernels would have to apply; the eager
function it replaces is the plain one (scores times the scale, plus the mask, softmax, dropout, times the values;
the softmax in fp32 in transformers 5.17 and 5.25, in the input dtype in 5.4's vision encoders: the kernels' fp32
softmax is the closer of the two to fp64). Checked function by function for transformers 5.4, 5.17 and 5.25, types
hints, docstrings and comments aside.

* Vision transformers (``ViT``, ``DeiT``, ``DINOv2`` with and without registers, ``ViT-MSN``, ``I-JEPA``, ``ViT-MAE``,
  ``YOLOS``, ``VideoMAE``, ``ViViT``, the Audio Spectrogram Transformer): no mask, ``is_causal = False``. Their
  attention class was ``{prefix}SelfAttention`` up to 5.4 and is ``{prefix}Attention`` since (DINOv2: since 5.25;
  YOLOS and VideoMAE kept the old name), so both names are listed.
* CLIP, MetaCLIP 2, OWL-ViT and SigLIP / SigLIP 2, whole or one tower (``clip_text_model`` / ``clip_vision_model``
  and the like: the towers of a ``CLIPModel`` are models of those types): the text towers build their masks with
  ``create_causal_mask`` (CLIP and its copies, which also pass ``is_causal=True``) or ``create_bidirectional_mask``
  (SigLIP), answered with the compact ``[B, K]`` mask; SigLIP 2's vision tower masks padded patches the same way.
* Speech encoders (wav2vec 2.0, HuBERT, UniSpeech, UniSpeech-SAT, Data2Vec-Audio, SEW): BART's attention class used
  as an encoder, the frames' padding mask from ``create_bidirectional_mask`` (SEW in 5.4: its own additive
  ``[B, 1, T, T]`` mask, which the kernels take on their 4D path).

Only model types listed in ``SPECS`` are accepted, each covered by tests/test_patch_vision.py.
"""
from __future__ import annotations

from .spec import ModelSpec


def vision_spec(model_type: str, prefix: str) -> ModelSpec:
    """A vision encoder whose attention class is ``{prefix}Attention`` (or ``{prefix}SelfAttention``, older)."""
    return ModelSpec(model_type=model_type, attention_classes=(f"{prefix}SelfAttention", f"{prefix}Attention"))


def one_class(model_types, class_name: str) -> tuple[ModelSpec, ...]:
    """Specs for model types (a model and its towers) that share one attention class."""
    return tuple(ModelSpec(model_type=t, attention_classes=(class_name,)) for t in model_types)


SPECS = (
    vision_spec("vit", "ViT"),
    vision_spec("deit", "DeiT"),
    vision_spec("dinov2", "Dinov2"),
    vision_spec("dinov2_with_registers", "Dinov2WithRegisters"),
    vision_spec("vit_msn", "ViTMSN"),
    vision_spec("ijepa", "IJepa"),
    vision_spec("vit_mae", "ViTMAE"),
    vision_spec("yolos", "Yolos"),
    vision_spec("videomae", "VideoMAE"),
    vision_spec("vivit", "Vivit"),
    vision_spec("audio-spectrogram-transformer", "AST"),
    *one_class(("clip", "clip_text_model", "clip_vision_model"), "CLIPAttention"),
    *one_class(("siglip", "siglip_text_model", "siglip_vision_model"), "SiglipAttention"),
    *one_class(("siglip2", "siglip2_text_model", "siglip2_vision_model"), "Siglip2Attention"),
    *one_class(("metaclip_2", "metaclip_2_text_model", "metaclip_2_vision_model"), "MetaClip2Attention"),
    *one_class(("owlvit", "owlvit_text_model", "owlvit_vision_model"), "OwlViTAttention"),
    *one_class(("wav2vec2",), "Wav2Vec2Attention"),
    *one_class(("hubert",), "HubertAttention"),
    *one_class(("unispeech",), "UniSpeechAttention"),
    *one_class(("unispeech-sat",), "UniSpeechSatAttention"),
    *one_class(("data2vec-audio",), "Data2VecAudioAttention"),
    *one_class(("sew",), "SEWAttention"),
)
