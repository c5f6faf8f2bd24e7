"""T5 and its copies (patches/t5.py) patched vs eager on tiny random models: T5, mT5, UMT5 (a position bias per
layer) and Switch Transformers (T5 with mixture-of-experts feed-forward layers).

Every config: 2 encoder and 2 decoder layers, d_model 32, 4 heads of 8, 8 relative-position buckets up to distance
16, vocabulary 64, padding id 0, every dropout 0. T5 adds a learned position bias to its unscaled scores; the backend
folds it into an additive 4D mask for the fused kernel, or adds it to the scores in softmax mode. transformers 5.4's T5
does not call the AttentionInterface: there patching is refused (the first test). On CPU the kernels run in Triton's
interpreter (tests/conftest.py).
"""
import pytest
import torch
import transformers

from hf_masked_softmax import hf, patch_model, patched, unpatch_model
from hf_masked_softmax.patches import REGISTRY, t5
from patch_helpers import (
    VOCAB, assert_gradients_close, assert_probs_close, assert_valid_close, eager_and_patched, gradients, padded_batch,
    spy_fused,
)

COMMON = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
              relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
              decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
# model_type -> (config class, model class, config overrides)
ARCHS = {
    "t5": ("T5Config", "T5ForConditionalGeneration", {}),
    "mt5": ("MT5Config", "MT5ForConditionalGeneration", {}),
    "umt5": ("UMT5Config", "UMT5ForConditionalGeneration", {}),
    "switch_transformers": ("SwitchTransformersConfig", "SwitchTransformersForConditionalGeneration",
                            {"num_experts": 2, "expert_capacity": 64, "encoder_sparse_step": 1,
                             "decoder_sparse_step": 1, "router_jitter_noise": 0.0}),
}
MODES = ["softmax", "fused"]
INTERFACE = t5.calls_interface("t5")
needs_interface = pytest.mark.skipif(not INTERFACE, reason="this transformers' T5 does not call the interface "
                                                           "(patching it is refused: test_patching_refused_...)")


def model(arch, device, seed=0, cls=None, **overrides):
    config_cls, model_cls, extra = ARCHS[arch]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**{**COMMON, **extra, **overrides}, attn_implementation="eager")
    return getattr(transformers, cls or model_cls)(config).to(device).eval()


def batch(device, side="right", seed=5):
    """A padded source batch (lengths 10, 6, 2) and padded decoder inputs (7, 7, 4)."""
    ids, mask = padded_batch(device, lengths=(10, 6, 2), total=10, side=side, seed=seed)
    dec, dec_mask = padded_batch(device, lengths=(7, 7, 4), total=7, side="right", seed=seed + 1)
    return dict(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)


def assert_logits_close(out, ref, valid):
    """Logits on the valid positions, against their own magnitude: mT5's and UMT5's untied heads give logits of 10
    and more next to ones near 0, and fp32 rounding of the attention reaches both alike."""
    size = ref.abs().max().clamp_min(1.0)
    assert_valid_close(out / size, ref / size, valid)


def spy_masks(monkeypatch):
    """Record (the mask's shape or None, its dtype, causal) of every fused-kernel call."""
    return spy_fused(monkeypatch, lambda q, k, v, mask=None, **kw: (
        None if mask is None else tuple(mask.shape), None if mask is None else mask.dtype, kw.get("causal")))


def test_every_listed_type_is_registered_and_tested():
    assert {s.model_type for s in t5.SPECS} == set(ARCHS) == set(t5.FAMILY)
    assert all(REGISTRY[s.model_type] is s for s in t5.SPECS)
    for arch in ARCHS:
        assert getattr(transformers, ARCHS[arch][0])().model_type == arch


@pytest.mark.parametrize("arch", list(ARCHS))
def test_patching_refused_where_the_interface_is_not_called(device, arch):
    # transformers 5.4: a ValueError naming the reason, the model untouched; 5.17 and newer: patched
    m = model(arch, device)
    if t5.calls_interface(arch):
        patch_model(m)
        assert m.config._attn_implementation == hf.NAME
        unpatch_model(m)
    else:
        with pytest.raises(ValueError, match="without the AttentionInterface"):
            patch_model(m)
    assert m.config._attn_implementation == "eager"


@needs_interface
@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_logits_match_eager(device, arch, mode, side, monkeypatch):
    calls = spy_masks(monkeypatch)
    m = model(arch, device)
    inputs = batch(device, side=side)
    with torch.no_grad():
        ref, out = eager_and_patched(m, lambda m: m(**inputs).logits, mode)
    assert_logits_close(out, ref, inputs["decoder_attention_mask"].bool())
    if mode == "fused":
        # encoder self-attention, decoder self- and cross-attention, two layers each: every call gets the bias and
        # the padding as one additive [B, H, Q, K] mask, causality as the kernel's own flag
        assert sorted(calls, key=str) == sorted([((3, 4, 10, 10), torch.float32, False)] * 2
                                                + [((3, 4, 7, 7), torch.float32, True)] * 2
                                                + [((3, 4, 7, 10), torch.float32, False)] * 2, key=str)
    else:
        assert calls == []


@needs_interface
@pytest.mark.parametrize("arch", list(ARCHS))
def test_generate_with_cache(device, arch, monkeypatch):
    calls = spy_masks(monkeypatch)
    m = model(arch, device, seed=1)
    ids, mask = padded_batch(device, lengths=(8, 3), total=8, side="left", seed=2)

    def gen(m):
        return m.generate(ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5, do_sample=False)

    ref, out = eager_and_patched(m, gen, "auto")
    assert ref.shape == (2, 6)
    assert torch.equal(out, ref)
    # the encoder, then each step's layers: self-attention of one query against the cache (its bias [1, H, 1, K]
    # alone: nothing padded on the decoder's side) and cross-attention (zeros with the source's padding folded in)
    f32 = torch.float32
    steps = [[((1, 4, 1, k), f32, True), ((2, 4, 1, 8), f32, False)] * 2 for k in range(1, 6)]
    assert calls == [((2, 4, 8, 8), f32, False)] * 2 + sum(steps, [])


@needs_interface
@pytest.mark.parametrize("arch", ["t5", "umt5"])
def test_probabilities_through_auto(device, arch):
    m = model(arch, device, seed=3)
    inputs = batch(device, seed=7)
    with torch.no_grad():
        ref, out = eager_and_patched(m, lambda m: m(**inputs, output_attentions=True), "auto")
    assert_logits_close(out.logits, ref.logits, inputs["decoder_attention_mask"].bool())
    src, tgt = inputs["attention_mask"].bool(), inputs["decoder_attention_mask"].bool()
    for name, rows in (("encoder_attentions", src), ("decoder_attentions", tgt), ("cross_attentions", tgt)):
        assert len(getattr(out, name)) == len(getattr(ref, name)) == 2
        for o, r in zip(getattr(out, name), getattr(ref, name)):
            assert_probs_close(o, r, rows)


def _loss(inputs, seed):
    weights = torch.randn(*inputs["decoder_input_ids"].shape, VOCAB, generator=torch.Generator().manual_seed(seed))
    valid = inputs["decoder_attention_mask"].bool()
    return lambda m: (m(**inputs).logits * weights.to(valid.device))[valid].sum()


@needs_interface
@pytest.mark.parametrize("arch", ["t5", "umt5"])
def test_gradients_reach_the_position_bias(device, arch, monkeypatch):
    # training with a learned bias: "fused" runs softmax mode's math for self-attention (the fused kernel's backward
    # gives a mask no gradient), so the bias's embedding gets its gradient; cross-attention's bias is zeros that need
    # none, and runs in the fused kernel
    calls = spy_masks(monkeypatch)
    m = model(arch, device, seed=4).train()
    ref, out = eager_and_patched(m, gradients(_loss(batch(device, seed=9), seed=10)), "fused")
    assert_gradients_close(out, ref, (".k.weight",))
    assert any("relative_attention_bias" in n for n in ref)
    assert calls == [((3, 4, 7, 10), torch.float32, False)] * 2


@needs_interface
def test_frozen_position_bias_trains_through_the_fused_kernel(device, monkeypatch):
    # the bias's embeddings frozen: it needs no gradient, the fused kernel runs forward and backward
    calls = spy_masks(monkeypatch)
    m = model("t5", device, seed=5).train()
    for name, p in m.named_parameters():
        if "relative_attention_bias" in name:
            p.requires_grad_(False)
    ref, out = eager_and_patched(m, gradients(_loss(batch(device, seed=11), seed=12)), "fused")
    assert_gradients_close(out, ref, (".k.weight",))
    assert not any("relative_attention_bias" in n for n in ref)
    assert len(calls) == 6


@needs_interface
def test_encoder_model_and_unpatch_bit_identical(device):
    m = model("t5", device, seed=6, cls="T5EncoderModel")
    ids, mask = padded_batch(device, seed=13)
    with torch.no_grad():
        before = m(ids, attention_mask=mask).last_hidden_state
        with patched(m, mode="fused"):
            out = m(ids, attention_mask=mask).last_hidden_state
        assert_valid_close(out, before, mask.bool())
        assert torch.equal(m(ids, attention_mask=mask).last_hidden_state, before)


def test_biased_mask_folds_padding_and_additive_masks():
    # hf._biased_mask: the bias alone (the same tensor), bool and compact masks filled with the minimum, additive
    # masks added; kept on the bias for the next layer with the same mask
    bias = torch.randn(1, 2, 3, 4)
    assert hf._biased_mask(bias, None) is bias
    pad = torch.tensor([[True, True, False, True]])
    folded = hf._biased_mask(bias, pad)
    assert folded.shape == (1, 2, 3, 4)
    assert torch.equal(folded[..., [0, 1, 3]], bias[..., [0, 1, 3]])
    assert (folded[..., 2] == torch.finfo(torch.float32).min).all()
    assert hf._biased_mask(bias, pad) is folded  # one per stack and forward
    assert torch.equal(hf._biased_mask(bias, pad[:, None, None, :].expand(1, 1, 3, 4)), folded)
    additive = torch.randn(1, 1, 3, 4)
    assert torch.equal(hf._biased_mask(bias, additive), bias + additive)
    bias.add_(1.0)  # changed in place: made again
    assert torch.equal(hf._biased_mask(bias, pad)[..., 0], bias[..., 0])


@needs_interface
@pytest.mark.parametrize("mode", MODES)
def test_compiled_encoder_has_no_graph_break(device, mode):
    # torch.compile (aot_eager on CPU, see test_compile.py): the bias folded or added inside the graph, one graph
    m = model("t5", device, seed=7, cls="T5EncoderModel")
    ids, mask = padded_batch(device, seed=14)
    with torch.no_grad():
        ref = m(ids, attention_mask=mask).last_hidden_state
        with patched(m, mode=mode):
            explanation = torch._dynamo.explain(m)(ids, attention_mask=mask)
            out = torch.compile(m, backend="aot_eager", fullgraph=True)(ids, attention_mask=mask).last_hidden_state
    assert explanation.graph_break_count == 0, explanation.break_reasons
    op = "hf_masked_softmax.attention" if mode == "fused" else "hf_masked_softmax.masked_softmax"
    assert op in explanation.graphs[0].code
    assert_valid_close(out, ref, mask.bool())
