"""BART-style encoder-decoders (patches/seq2seq.py) patched vs eager on tiny random models: BART, mBART, Marian,
Pegasus, M2M100, Blenderbot, Whisper, PLBART, Blenderbot-small.

Every config: 2 encoder and 2 decoder layers, d_model 32, 4 heads (head size 8), vocabulary 64, padding id 0, every
dropout 0; Whisper takes 8 mel bins over 32 frames (16 encoder positions). On CPU the kernels run in Triton's
interpreter (tests/conftest.py).
"""
import pytest
import torch
import transformers

from hf_masked_softmax import hf
from hf_masked_softmax.patches import REGISTRY, seq2seq
from patch_helpers import (
    VOCAB, assert_gradients_close, assert_probs_close, assert_valid_close, eager_and_patched, gradients, padded_batch,
    spy_kernel_calls, spy_kernel_masks,
)
from tolerances import assert_close

COMMON = dict(
    vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
    decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, dropout=0.0, attention_dropout=0.0,
    activation_dropout=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
)
# model_type -> (config class, model class, config overrides)
ARCHS = {
    "bart": ("BartConfig", "BartForConditionalGeneration", {"max_position_embeddings": 64}),
    "mbart": ("MBartConfig", "MBartForConditionalGeneration", {"max_position_embeddings": 64}),
    "marian": ("MarianConfig", "MarianMTModel", {"max_position_embeddings": 64}),
    "pegasus": ("PegasusConfig", "PegasusForConditionalGeneration", {"max_position_embeddings": 64}),
    "m2m_100": ("M2M100Config", "M2M100ForConditionalGeneration", {"max_position_embeddings": 64}),
    "blenderbot": ("BlenderbotConfig", "BlenderbotForConditionalGeneration", {"max_position_embeddings": 64}),
    "whisper": ("WhisperConfig", "WhisperForConditionalGeneration",
                {"num_mel_bins": 8, "max_source_positions": 16, "max_target_positions": 32}),
    "plbart": ("PLBartConfig", "PLBartForConditionalGeneration", {"max_position_embeddings": 64}),
    "blenderbot-small": ("BlenderbotSmallConfig", "BlenderbotSmallForConditionalGeneration",
                         {"max_position_embeddings": 64}),
}
MODES = ["softmax", "fused"]
SRC = (10, 6, 2)  # source lengths (right-padded to 10)
TGT = (7, 7, 4)  # decoder input lengths (right-padded to 7)


def model(arch, device, seed=0):
    config_cls, model_cls, extra = ARCHS[arch]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**COMMON, **extra, attn_implementation="eager")
    return getattr(transformers, model_cls)(config).to(device).eval()


def encoder_inputs(arch, device, seed=5):
    """The encoder's keyword arguments and the source length: padded token ids, or Whisper's unpadded features."""
    if arch == "whisper":
        feats = torch.randn(len(SRC), 8, 32, generator=torch.Generator().manual_seed(seed)).to(device)
        return {"input_features": feats}, 16
    ids, mask = padded_batch(device, lengths=SRC, total=max(SRC), side="right", seed=seed)
    return {"input_ids": ids, "attention_mask": mask}, max(SRC)


def test_every_listed_type_is_registered_and_tested():
    assert {s.model_type for s in seq2seq.SPECS} == set(ARCHS)
    assert all(REGISTRY[s.model_type] is s for s in seq2seq.SPECS)
    for arch in ARCHS:
        assert model(arch, "cpu").config.model_type == arch


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("mode", MODES)
def test_forward_padded(device, arch, mode, monkeypatch):
    calls = spy_kernel_calls(monkeypatch, mode)
    m = model(arch, device)
    enc, src = encoder_inputs(arch, device)
    dec, dec_mask = padded_batch(device, lengths=TGT, total=max(TGT), side="right", seed=6)

    def run(m):
        return m(**enc, decoder_input_ids=dec, decoder_attention_mask=dec_mask).logits

    ref, out = eager_and_patched(m, run, mode)
    assert_valid_close(out, ref, dec_mask.bool())
    b, t = len(TGT), max(TGT)
    # the encoder's two self-attentions, then each decoder layer's self- and cross-attention
    assert calls == [(b, src, src)] * 2 + [(b, t, t), (b, t, src)] * 2


@pytest.mark.parametrize("arch", list(ARCHS))
def test_probabilities_in_auto_mode(device, arch):
    m = model(arch, device, seed=1)
    enc, _ = encoder_inputs(arch, device, seed=1)
    dec, dec_mask = padded_batch(device, lengths=TGT, total=max(TGT), side="right", seed=2)
    ref, out = eager_and_patched(
        m, lambda m: m(**enc, decoder_input_ids=dec, decoder_attention_mask=dec_mask, output_attentions=True), "auto")
    assert_valid_close(out.logits, ref.logits, dec_mask.bool())
    assert len(out.encoder_attentions) == len(out.decoder_attentions) == len(out.cross_attentions) == 2
    for o, r in zip(out.decoder_attentions + out.cross_attentions, ref.decoder_attentions + ref.cross_attentions):
        assert_probs_close(o, r, dec_mask.bool())
    src_valid = enc.get("attention_mask")
    for o, r in zip(out.encoder_attentions, ref.encoder_attentions):
        if src_valid is None:
            assert_close(o, r)
        else:
            assert_probs_close(o, r, src_valid.bool())


@pytest.mark.parametrize("arch", list(ARCHS))
def test_generate_with_cache(device, arch):
    # decoder self-attention on a growing cache, cross-attention on the encoder's cached keys
    m = model(arch, device, seed=3)
    enc, _ = encoder_inputs(arch, device, seed=3)

    def gen(m):
        return m.generate(**enc, max_new_tokens=5, min_new_tokens=5, do_sample=False)

    ref, out = eager_and_patched(m, gen, "auto")
    assert ref.shape[0] == len(SRC) and ref.shape[1] >= 5
    assert torch.equal(out, ref)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padded", [False, True])
def test_decode_steps_drop_a_source_mask_that_pads_nothing(device, mode, padded, monkeypatch):
    # One-query decoder steps ask whether the source mask pads anything (hf.DECODE_PAD_CHECK, on by default): the
    # cross-attention then runs mask-free; the encoder's forward keeps the mask, padded or not.
    calls = spy_kernel_masks(monkeypatch, mode)
    m = model("bart", device, seed=8)
    ids, mask = padded_batch(device, lengths=SRC if padded else (10,) * 3, total=10, side="right", seed=8)

    def gen(m):
        return m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False)

    ref, out = eager_and_patched(m, gen, mode)
    assert torch.equal(out, ref)
    assert calls[:2] == [(10, 10, (3, 10))] * 2  # the encoder's two layers
    cross = [c for c in calls[2:] if c[1] == 10]  # one query on the 10 source keys, per step and decoder layer
    assert len(cross) == 2 * (out.shape[1] - 1) and all(q == 1 for q, _, _ in cross)
    assert {c[2] for c in cross} == {(3, 10) if padded else None}


def test_beam_search(device):
    m = model("bart", device, seed=4)
    enc, _ = encoder_inputs("bart", device, seed=4)

    def gen(m):
        return m.generate(**enc, max_new_tokens=5, min_new_tokens=5, num_beams=3, num_return_sequences=2,
                          do_sample=False)

    ref, out = eager_and_patched(m, gen, "fused")
    assert ref.shape == (2 * len(SRC), 6)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("arch,mode", [("bart", "fused"), ("marian", "softmax"), ("whisper", "fused")])
def test_gradients_match_eager(device, arch, mode):
    m = model(arch, device, seed=7).train()
    enc, _ = encoder_inputs(arch, device, seed=7)
    labels, label_mask = padded_batch(device, lengths=TGT, total=max(TGT), side="right", seed=8)
    labels = labels.masked_fill(label_mask == 0, -100)

    ref, out = eager_and_patched(m, gradients(lambda m: m(**enc, labels=labels).loss), mode)
    assert_gradients_close(out, ref, ("encoder_attn.k_proj",))


def test_from_pretrained_by_name(device, tmp_path):
    # transformers loads these types with the registered name, though their classes do not all declare
    # _supports_attention_backend: the same tokens as the patched eager model
    m = model("marian", device, seed=9)
    enc, _ = encoder_inputs("marian", device, seed=9)

    def gen(m):
        return m.generate(**enc, max_new_tokens=4, min_new_tokens=4, do_sample=False)

    eager, patched_out = eager_and_patched(m, gen, "auto")
    m.save_pretrained(tmp_path)
    loaded = type(m).from_pretrained(tmp_path, attn_implementation=hf.NAME).to(device).eval()
    assert loaded.config._attn_implementation == hf.NAME
    assert torch.equal(gen(loaded), patched_out) and torch.equal(patched_out, eager)
