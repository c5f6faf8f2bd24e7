"""BERT's relatives (patches/encoders.py) patched vs eager on tiny random models: RoBERTa, XLM-RoBERTa, CamemBERT,
ELECTRA, ERNIE, Data2Vec-Text, RoBERTa-PreLayerNorm, XLM-RoBERTa-XL, RoCBert, X-MOD, BertGeneration, LayoutLM
(its own additive 4D mask), DistilBERT, ALBERT, MobileBERT, ESM.

Every config: 2 layers, hidden 32, 4 heads (head size 8), vocabulary 64, padding id 0. On CPU the kernels run in
Triton's interpreter (tests/conftest.py).
"""
import pytest
import torch
import transformers

from hf_masked_softmax import hf, patch_model, unpatch_model
from hf_masked_softmax.patches import REGISTRY, encoders
from patch_helpers import (
    VOCAB, assert_gradients_close, assert_probs_close, assert_valid_close, check_encoder_decoder, eager_and_patched,
    logits_gradients, padded_batch, spy_kernel_calls,
)
from tolerances import assert_close

BERT_LIKE = dict(
    num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=64, vocab_size=VOCAB,
    max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
)
# model_type -> (class-name prefix, config overrides, whether the family has a decoder: ...ForCausalLM and
# cross-attention)
ARCHS = {
    "roberta": ("Roberta", {}, True),
    "xlm-roberta": ("XLMRoberta", {}, True),
    "camembert": ("Camembert", {}, True),
    "electra": ("Electra", {"embedding_size": 16}, True),  # embeddings projected up to the hidden size
    "ernie": ("Ernie", {"use_task_id": True, "task_type_vocab_size": 3}, True),
    "data2vec-text": ("Data2VecText", {}, True),
    "roberta-prelayernorm": ("RobertaPreLayerNorm", {}, True),
    "xlm-roberta-xl": ("XLMRobertaXL", {}, True),
    # RoCBert's pronunciation and glyph-shape embeddings (ids optional, as here), small
    "roc_bert": ("RoCBert", {"pronunciation_vocab_size": 16, "shape_vocab_size": 16, "pronunciation_embed_dim": 8,
                             "shape_embed_dim": 8}, True),
    # X-MOD's per-language adapters: without lang_ids every row takes the default language's
    "xmod": ("Xmod", {"languages": ("en_XX", "de_DE"), "default_language": "en_XX"}, True),
    "bert-generation": ("BertGeneration", {}, True),
    "layoutlm": ("LayoutLM", {}, False),  # (no bounding boxes passed: all zeros)
    "distilbert": ("DistilBert", {"n_layers": 2, "n_heads": 4, "dim": 32, "hidden_dim": 64, "dropout": 0.0,
                                  "attention_dropout": 0.0}, False),
    "albert": ("Albert", {"embedding_size": 16, "num_hidden_groups": 1}, False),  # one layer's weights, run twice
    # MobileBERT: attention inside a bottleneck (queries and keys from the narrow hidden state, values from the wide)
    "mobilebert": ("MobileBert", {"embedding_size": 16, "intra_bottleneck_size": 32, "true_hidden_size": 32,
                                  "num_feedforward_networks": 2}, False),
    # ESM (protein language models): rotary embeddings applied before the call
    "esm": ("Esm", {"mask_token_id": 3, "position_embedding_type": "rotary", "token_dropout": False}, False),
}
DECODERS = [a for a, (_, _, dec) in ARCHS.items() if dec]
MODES = ["softmax", "fused"]
# the classes of the model types whose heads are named otherwise (BertGeneration: an encoder and a decoder only)
CLASSES = {("bert-generation", "Model"): "BertGenerationEncoder",
           ("bert-generation", "ForCausalLM"): "BertGenerationDecoder"}


def config(arch, **overrides):
    prefix, extra, _ = ARCHS[arch]
    cls = getattr(transformers, f"{prefix}Config")
    base = {k: v for k, v in BERT_LIKE.items() if arch != "distilbert" or k in ("vocab_size", "max_position_embeddings",
                                                                              "pad_token_id")}
    return cls(**{**base, **extra, **overrides, "attn_implementation": "eager"})


def model(arch, device, head="Model", seed=0, **overrides):
    torch.manual_seed(seed)
    cls = getattr(transformers, CLASSES.get((arch, head), f"{ARCHS[arch][0]}{head}"))
    return cls(config(arch, **overrides)).to(device).eval()


def test_every_listed_type_is_registered_and_tested():
    # (ModernBERT, whose config and windows differ, is tests/test_patch_modernbert.py's; EuroBERT, with Llama's
    # config keys, tests/test_patch_eurobert.py's)
    assert {s.model_type for s in encoders.SPECS} == set(ARCHS) | {"modernbert", "eurobert"}
    assert all(REGISTRY[s.model_type] is s for s in encoders.SPECS)
    for arch in ARCHS:
        assert config(arch).model_type == arch


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_encoder_padded(device, arch, mode, side, monkeypatch):
    calls = spy_kernel_calls(monkeypatch, mode)
    m = model(arch, device)
    ids, mask = padded_batch(device, side=side)
    ref, out = eager_and_patched(m, lambda m: m(ids, attention_mask=mask).last_hidden_state, mode)
    assert_valid_close(out, ref, mask.bool())
    assert calls == [(3, 12, 12)] * 2  # each layer's attention, patched only (ALBERT: one shared layer, run twice)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_sequence_classification_and_probabilities(device, arch):
    # "auto": the fused kernel for the logits; softmax mode where the caller asks for the probabilities
    # (BertGeneration has no classifier: its encoder's hidden states)
    head = "Model" if arch == "bert-generation" else "ForSequenceClassification"
    m = model(arch, device, head=head, seed=1)
    ids, mask = padded_batch(device, lengths=(9, 4), total=9, side="right", seed=1)
    ref, out = eager_and_patched(m, lambda m: m(ids, attention_mask=mask, output_attentions=True), "auto")
    if head == "Model":
        assert_valid_close(out.last_hidden_state, ref.last_hidden_state, mask.bool())
    else:
        assert_close(out.logits, ref.logits)
    assert len(out.attentions) == len(ref.attentions) == 2
    for o, r in zip(out.attentions, ref.attentions):
        assert_probs_close(o, r, mask.bool())


@pytest.mark.parametrize("arch", DECODERS)
def test_decoder_generate_with_cache(device, arch):
    m = model(arch, device, head="ForCausalLM", seed=2, is_decoder=True)
    ids, mask = padded_batch(device, lengths=(8, 3), total=8, side="left", seed=2)
    ref, out = eager_and_patched(m, lambda m: m(ids, attention_mask=mask).logits, "fused")
    assert_valid_close(out, ref, mask.bool())

    def gen(m):
        return m.generate(ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False)

    ref, out = eager_and_patched(m, gen, "auto")
    assert ref.shape == (2, 12)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("arch", ["roberta", "electra", "bert-generation"])
def test_encoder_decoder_cross_attention(device, arch):
    # roberta2roberta-style EncoderDecoderModel: the decoder's cross-attention modules ({prefix}CrossAttention)
    encoder = model(arch, device, seed=3)
    decoder = model(arch, device, head="ForCausalLM", seed=4, is_decoder=True, add_cross_attention=True)
    m = transformers.EncoderDecoderModel(encoder=encoder, decoder=decoder).to(device).eval()
    m.config._attn_implementation = "eager"  # the composite config defaults to sdpa; its setter reaches both parts
    check_encoder_decoder(m, device)


@pytest.mark.parametrize("arch,mode", [("roberta", "fused"), ("distilbert", "softmax"), ("albert", "fused")])
def test_gradients_match_eager(device, arch, mode):
    m = model(arch, device, head="ForMaskedLM", seed=7).train()
    ids, mask = padded_batch(device, seed=7)
    ref, out = eager_and_patched(m, logits_gradients(ids, mask, VOCAB, seed=8), mode)
    assert_gradients_close(out, ref, ("key", "k_lin"))


def test_from_pretrained_by_name_and_unpatch_bit_identical(device, tmp_path):
    m = model("xlm-roberta", device, seed=9)
    ids, mask = padded_batch(device, seed=9)
    before = m(ids, attention_mask=mask).last_hidden_state
    m.save_pretrained(tmp_path)
    loaded = transformers.AutoModel.from_pretrained(tmp_path, attn_implementation=hf.NAME).to(device).eval()
    assert type(loaded) is type(m) and loaded.config._attn_implementation == hf.NAME
    assert_valid_close(loaded(ids, attention_mask=mask).last_hidden_state, before, mask.bool())

    patch_model(m, mode="fused")
    assert m.config._attn_implementation == hf.NAME
    m(ids, attention_mask=mask)
    unpatch_model(m)
    assert m.config._attn_implementation == "eager"
    assert torch.equal(m(ids, attention_mask=mask).last_hidden_state, before)
