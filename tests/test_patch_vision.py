"""Vision, image-text and speech encoders (patches/vision.py) patched vs eager on tiny random models.

Vision transformers take 32x32 images in 8x8 patches (videos: 4 frames); CLIP's and SigLIP's text towers a padded
batch of token ids; SigLIP 2's vision tower a batch whose second image has half the first's patches (the rest
padding); the speech encoders 400 samples of audio, the second of 250 (39 frames, 24 of them real). Every model: 2
layers, hidden 32, 4 heads (head size 8). On CPU the kernels run in Triton's interpreter (tests/conftest.py).
"""
from dataclasses import dataclass

import pytest
import torch
import transformers

from hf_masked_softmax import hf, patch_model, patched, unpatch_model
from hf_masked_softmax.patches import REGISTRY, vision
from patch_helpers import (
    VOCAB, assert_probs_close, assert_valid_close, eager_and_patched, gradients, padded_batch, philox_dropout_step,
    assert_step_close, spy_kernel_masks,
)
from tolerances import assert_close

ENC = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
IMAGE = dict(image_size=32, patch_size=8, num_channels=3)
TEXT = dict(ENC, vocab_size=VOCAB, max_position_embeddings=16, pad_token_id=0, bos_token_id=1, eos_token_id=2)
AUDIO = dict(ENC, conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
             num_conv_pos_embedding_groups=4, mask_time_prob=0.0, layerdrop=0.0, hidden_dropout=0.0,
             attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0)
MODES = ["softmax", "fused"]


@dataclass
class Case:
    """A model, its forward's keyword arguments, and what to compare: ``outputs(result)`` -> [(tensor, valid [B, T]
    or None)]; ``masked``: whether its attention gets a padding mask (else none; ``"text"``: the text tower's
    layers only); ``calls``: kernel calls per forward."""
    model: torch.nn.Module
    inputs: dict
    outputs: object
    masked: bool | str
    calls: int = 2


def _randn(device, *shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device)


def _build(cls, config, device, seed):
    torch.manual_seed(seed)
    return getattr(transformers, cls)(config).to(device).eval()


def _config(name, **kwargs):
    return getattr(transformers, name)(**kwargs, attn_implementation="eager")


def _image_case(prefix, device, seed, **extra):
    model = _build(f"{prefix}Model", _config(f"{prefix}Config", **{**ENC, **IMAGE, **extra}), device, seed)
    return Case(model, {"pixel_values": _randn(device, 2, 3, 32, 32, seed=seed)},
                lambda o: [(o.last_hidden_state, None)], masked=False)


def _video_case(prefix, device, seed, **extra):
    model = _build(f"{prefix}Model", _config(f"{prefix}Config", **ENC, image_size=32, num_frames=4, **extra), device,
                   seed)
    return Case(model, {"pixel_values": _randn(device, 2, 4, 3, 32, 32, seed=seed)},
                lambda o: [(o.last_hidden_state, None)], masked=False)


def _text_inputs(device, seed):
    ids, mask = padded_batch(device, lengths=(9, 5), total=9, seed=seed)
    ids[0, 8] = ids[1, 4] = TEXT["eos_token_id"]  # CLIP pools at the end-of-text token
    return ids, mask


def _text_case(config, cls, device, seed):
    model = _build(cls, _config(config, **TEXT), device, seed)
    ids, mask = _text_inputs(device, seed)
    return Case(model, {"input_ids": ids, "attention_mask": mask},
                lambda o: [(o.last_hidden_state, mask.bool()), (o.pooler_output, None)], masked=True)


def _dual_case(prefix, device, seed):
    # the whole model: a padded text batch, two images; every layer of both towers
    config = _config(f"{prefix}Config", text_config=dict(TEXT), vision_config=dict(ENC, **IMAGE),
                     **({"projection_dim": 16} if prefix in ("CLIP", "MetaClip2", "OwlViT") else {}))
    model = _build(f"{prefix}Model", config, device, seed)
    ids, mask = _text_inputs(device, seed)
    return Case(model, {"input_ids": ids, "attention_mask": mask, "pixel_values": _randn(device, 2, 3, 32, 32,
                                                                                          seed=seed)},
                lambda o: [(o.text_model_output.last_hidden_state, mask.bool()), (o.text_embeds, None),
                           (o.vision_model_output.last_hidden_state, None), (o.image_embeds, None)],
                masked="text", calls=4)


def _siglip2_vision_inputs(device, seed):
    # 16 patches of 8x8x3 per image; the second image is 2x4 patches, the other 8 padding
    pixels = _randn(device, 2, 16, 3 * 8 * 8, seed=seed)
    mask = torch.ones(2, 16, dtype=torch.long, device=device)
    mask[1, 8:] = 0
    shapes = torch.tensor([[4, 4], [2, 4]], device=device)
    return pixels, mask, shapes


def _siglip2_vision_case(device, seed):
    config = _config("Siglip2VisionConfig", **ENC, num_patches=16, patch_size=8, num_channels=3)
    model = _build("Siglip2VisionModel", config, device, seed)
    pixels, mask, shapes = _siglip2_vision_inputs(device, seed)
    return Case(model, {"pixel_values": pixels, "pixel_attention_mask": mask, "spatial_shapes": shapes},
                lambda o: [(o.last_hidden_state, mask.bool()), (o.pooler_output, None)], masked=True)


def _siglip2_case(device, seed):
    config = _config("Siglip2Config", text_config=dict(TEXT),
                     vision_config=dict(ENC, num_patches=16, patch_size=8, num_channels=3))
    model = _build("Siglip2Model", config, device, seed)
    ids, mask = _text_inputs(device, seed)
    pixels, pmask, shapes = _siglip2_vision_inputs(device, seed)
    return Case(model, {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels,
                        "pixel_attention_mask": pmask, "spatial_shapes": shapes},
                lambda o: [(o.text_model_output.last_hidden_state, mask.bool()), (o.text_embeds, None),
                           (o.vision_model_output.last_hidden_state, pmask.bool()), (o.image_embeds, None)],
                masked=True, calls=4)


def _audio_case(prefix, device, seed, **extra):
    model = _build(f"{prefix}Model", _config(f"{prefix}Config", **{**AUDIO, **extra}), device, seed)
    audio = _randn(device, 2, 400, seed=seed)
    mask = torch.ones(2, 400, dtype=torch.long, device=device)
    mask[1, 250:] = 0

    def outputs(o):
        valid = model._get_feature_vector_attention_mask(o.last_hidden_state.shape[1], mask)
        assert valid.sum(1).tolist() == [o.last_hidden_state.shape[1], valid[1].sum().item()] and not valid[1].all()
        return [(o.last_hidden_state, valid)]

    return Case(model, {"input_values": audio, "attention_mask": mask}, outputs, masked=True)


def _image_text_family(model_type, prefix):
    """A contrastive image-text model whole and its two towers, each a model type of its own."""
    return {
        model_type: lambda d, s: _dual_case(prefix, d, s),
        f"{model_type}_text_model": lambda d, s: _text_case(f"{prefix}TextConfig", f"{prefix}TextModel", d, s),
        f"{model_type}_vision_model": lambda d, s: _image_case(f"{prefix}Vision", d, s),
    }


CASES = {
    "vit": lambda d, s: _image_case("ViT", d, s),
    "deit": lambda d, s: _image_case("DeiT", d, s),  # a class token and a distillation token
    "dinov2": lambda d, s: _image_case("Dinov2", d, s),
    "dinov2_with_registers": lambda d, s: _image_case("Dinov2WithRegisters", d, s, num_register_tokens=3),
    "vit_msn": lambda d, s: _image_case("ViTMSN", d, s),
    "ijepa": lambda d, s: _image_case("IJepa", d, s),
    # ViT-MAE keeps a random quarter of the patches: the noise that picks them, fixed
    "vit_mae": lambda d, s: _with(_image_case("ViTMAE", d, s), noise=torch.rand(2, 16, generator=_gen(s)).to(d)),
    "yolos": lambda d, s: _image_case("Yolos", d, s, image_size=[32, 32], num_detection_tokens=5),
    "videomae": lambda d, s: _video_case("VideoMAE", d, s, patch_size=8, tubelet_size=2),
    "vivit": lambda d, s: _video_case("Vivit", d, s, tubelet_size=[2, 8, 8]),
    "audio-spectrogram-transformer": lambda d, s: _spectrogram_case(d, s),
    **_image_text_family("clip", "CLIP"),
    **_image_text_family("metaclip_2", "MetaClip2"),
    **_image_text_family("owlvit", "OwlViT"),
    **_image_text_family("siglip", "Siglip"),
    "siglip2": lambda d, s: _siglip2_case(d, s),
    "siglip2_text_model": lambda d, s: _text_case("Siglip2TextConfig", "Siglip2TextModel", d, s),
    "siglip2_vision_model": lambda d, s: _siglip2_vision_case(d, s),
    "wav2vec2": lambda d, s: _audio_case("Wav2Vec2", d, s),
    "hubert": lambda d, s: _audio_case("Hubert", d, s),
    "unispeech": lambda d, s: _audio_case("UniSpeech", d, s),
    "unispeech-sat": lambda d, s: _audio_case("UniSpeechSat", d, s),
    "data2vec-audio": lambda d, s: _audio_case("Data2VecAudio", d, s, num_conv_pos_embeddings=2,
                                               conv_pos_kernel_size=5),
    "sew": lambda d, s: _audio_case("SEW", d, s, squeeze_factor=2),
}


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _with(case, **inputs):
    case.inputs.update(inputs)
    return case


def _spectrogram_case(device, seed):
    # 48 frames of 32 mel bins in 16x16 patches at stride 8: 3 x 5 patches, a class and a distillation token
    config = _config("ASTConfig", **ENC, patch_size=16, frequency_stride=8, time_stride=8, max_length=48,
                     num_mel_bins=32)
    model = _build("ASTModel", config, device, seed)
    return Case(model, {"input_values": _randn(device, 2, 48, 32, seed=seed)},
                lambda o: [(o.last_hidden_state, None)], masked=False)


def _compare(out, ref, case):
    pairs_out, pairs_ref = case.outputs(out), case.outputs(ref)
    assert len(pairs_out) == len(pairs_ref) > 0
    for (o, valid), (r, _) in zip(pairs_out, pairs_ref):
        if valid is None:
            assert_valid_close(o, r, torch.ones(o.shape[:2], dtype=torch.bool, device=o.device))
        else:
            assert_valid_close(o, r, valid)


def test_every_listed_type_is_registered_and_tested(device):
    assert {s.model_type for s in vision.SPECS} == set(CASES)
    assert all(REGISTRY[s.model_type] is s for s in vision.SPECS)
    for arch, make in CASES.items():
        if arch in ("clip", "metaclip_2", "owlvit", "siglip", "siglip2"):
            continue  # (their builds run in the tests below; their towers are listed types of their own)
        assert make(device, 0).model.config.model_type == arch


@pytest.mark.parametrize("arch", list(CASES))
@pytest.mark.parametrize("mode", MODES)
def test_matches_eager(device, arch, mode, monkeypatch):
    masks = spy_kernel_masks(monkeypatch, mode)
    case = CASES[arch](device, 0)
    ref, out = eager_and_patched(case.model, lambda m: m(**case.inputs), mode)
    _compare(out, ref, case)
    assert len(masks) == case.calls  # patched calls only, every layer of every tower
    assert all(q == k for q, k, _ in masks)  # self-attention
    assert {shape is not None for _, _, shape in masks} == ({True, False} if case.masked == "text" else {case.masked})
    for _, keys, shape in masks:
        # a padding mask reaches the kernels compact ([B, K]), but SEW's own 4D mask in transformers 5.4
        assert shape is None or shape == (2, keys) or (arch == "sew" and len(shape) == 4)


@pytest.mark.parametrize("arch", ["wav2vec2", "hubert", "unispeech", "unispeech-sat"])
def test_speech_stable_layer_norm_encoder(device, arch, monkeypatch):
    # do_stable_layer_norm=True: the other encoder class (layer norm first), with its own call for the mask
    masks = spy_kernel_masks(monkeypatch, "fused")
    prefix = {"wav2vec2": "Wav2Vec2", "hubert": "Hubert", "unispeech": "UniSpeech", "unispeech-sat": "UniSpeechSat"}
    case = _audio_case(prefix[arch], device, 5, do_stable_layer_norm=True, feat_extract_norm="layer")
    assert "StableLayerNorm" in type(case.model.encoder).__name__
    ref, out = eager_and_patched(case.model, lambda m: m(**case.inputs), "fused")
    _compare(out, ref, case)
    assert [shape for _, _, shape in masks] == [(2, masks[0][1])] * 2


@pytest.mark.parametrize("arch", ["vit", "clip_text_model", "siglip2_vision_model", "wav2vec2"])
def test_probabilities_through_auto(device, arch):
    case = CASES[arch](device, 1)
    ref, out = eager_and_patched(case.model, lambda m: m(**case.inputs, output_attentions=True), "auto")
    _compare(out, ref, case)
    assert len(out.attentions) == len(ref.attentions) == 2
    valid = next((v for _, v in case.outputs(ref) if v is not None), None)
    for o, r in zip(out.attentions, ref.attentions):
        assert_probs_close(o, r, valid if valid is not None else torch.ones(o.shape[0], o.shape[2], dtype=torch.bool,
                                                                              device=o.device))


@pytest.mark.parametrize("arch,mode", [("vit", "fused"), ("clip", "softmax"), ("siglip2_vision_model", "fused"),
                                       ("wav2vec2", "fused"), ("hubert", "softmax")])
def test_gradients_match_eager(device, arch, mode):
    case = CASES[arch](device, 2)
    case.model.train()

    def loss(m):
        total = 0.0
        for i, (y, valid) in enumerate(case.outputs(m(**case.inputs))):
            w = _randn(device, *y.shape, seed=10 + i)
            total = total + ((y * w)[valid] if valid is not None else y * w).sum()
        return total

    ref, out = eager_and_patched(case.model, gradients(loss), mode)
    assert ref.keys() == out.keys() and len(ref) > 10
    assert any("k_proj" in n or ".key." in n for n in ref)
    for name in ref:
        # against the tensor's own magnitude: CLIP's and SigLIP's gradients reach 80 where others are near 0, and
        # fp32 rounding of the large ones lands on the small ones alike
        size = ref[name].abs().max().clamp_min(1.0)
        assert_close(out[name] / size, ref[name] / size, scale=10)


@pytest.mark.parametrize("arch", ["vit", "wav2vec2"])
def test_attention_dropout_in_training(device, arch):
    # the fused kernel's in-kernel dropout draws the Philox mask that eager's dropout replays (patch_helpers)
    case = CASES[arch](device, 3)
    key = "attention_probs_dropout_prob" if arch == "vit" else "attention_dropout"
    config = case.model.config.__class__(**{**case.model.config.to_dict(), key: 0.25, "attn_implementation": "eager"})
    case.model = _build(type(case.model).__name__, config, device, 3).train()
    y, valid = case.outputs(case.model(**case.inputs))[0]
    weights = _randn(device, *y.shape, seed=11)
    valid = valid if valid is not None else torch.ones(y.shape[:2], dtype=torch.bool, device=device)
    ref, out = eager_and_patched(case.model, lambda m: philox_dropout_step(
        m, lambda m: case.outputs(m(**case.inputs))[0][0], weights, valid), "fused")
    assert_step_close(out, ref, valid)
    with torch.no_grad():
        plain = case.outputs(case.model.eval()(**case.inputs))[0][0]
    assert not torch.allclose(ref[0][valid], plain[valid])  # the dropout did drop something


@pytest.mark.parametrize("arch", ["vit", "clip"])
def test_from_pretrained_by_name_and_unpatch_bit_identical(device, arch, tmp_path):
    case = CASES[arch](device, 4)
    m = case.model
    before = m(**case.inputs)
    m.save_pretrained(tmp_path)
    loaded = type(m).from_pretrained(tmp_path, attn_implementation=hf.NAME).to(device).eval()
    assert loaded.config._attn_implementation == hf.NAME
    for sub in getattr(loaded.config, "sub_configs", {}):  # CLIP's towers: the backend too
        assert getattr(loaded.config, sub)._attn_implementation == hf.NAME
    _compare(loaded(**case.inputs), before, case)

    patch_model(m, mode="fused")
    m(**case.inputs)
    unpatch_model(m)
    assert m.config._attn_implementation == "eager"
    after = m(**case.inputs)
    for (a, _), (b, _) in zip(case.outputs(after), case.outputs(before)):
        assert torch.equal(a, b)


def test_unsupported_vision_type_untouched(device):
    # BEiT adds a relative position bias inside its attention: not in the registry, refused, left as it was
    config = transformers.BeitConfig(**ENC, **IMAGE, use_relative_position_bias=True, attn_implementation="eager")
    m = transformers.BeitModel(config).to(device).eval()
    with pytest.raises(ValueError, match="cannot patch model_type 'beit'.*vit"):
        with patched(m):
            pass
    assert m.config._attn_implementation == "eager"
