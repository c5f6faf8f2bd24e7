"""EuroBERT patched vs eager on tiny random models: Llama's attention (rotary embeddings, 4 query heads sharing 2
key/value heads) without causality, the compact padding mask from ``create_bidirectional_mask``. Hidden states and
task heads with left, right or no padding, the probabilities, gradients, unpatch.

Config: 2 layers, hidden 64, head_dim 16, vocabulary 64. On CPU the kernels run in Triton's interpreter
(tests/conftest.py).
"""
import pytest
import torch
import transformers

from hf_masked_softmax import patch_model, unpatch_model
from hf_masked_softmax.patches import REGISTRY
from patch_helpers import (
    VOCAB, assert_gradients_close, assert_probs_close, assert_valid_close, eager_and_patched, logits_gradients,
    padded_batch, spy_fused, spy_kernel_masks,
)
from tolerances import assert_close

MODES = ["softmax", "fused"]


def model(device, head="Model", seed=0, **overrides):
    kw = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
              eos_token_id=2, mask_token_id=3, attn_implementation="eager")
    kw.update(overrides)
    torch.manual_seed(seed)
    return getattr(transformers, f"EuroBert{head}")(transformers.EuroBertConfig(**kw)).to(device).eval()


def test_registered_with_its_attention_class():
    assert REGISTRY["eurobert"].attention_classes == ("EuroBertAttention",)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("side", ["left", "right", "none"])
def test_hidden_states_match_eager(device, monkeypatch, mode, side):
    # every layer's call: bidirectional (no causality), the [B, K] mask (none without padding), grouped heads
    m = model(device)
    if side == "none":
        ids, _ = padded_batch(device, lengths=(12, 12, 12))
        mask = None
    else:
        ids, mask = padded_batch(device, side=side)
    calls = spy_kernel_masks(monkeypatch, mode)
    ref, out = eager_and_patched(m, lambda m: m(ids, attention_mask=mask).last_hidden_state, mode)
    if mask is None:
        assert_close(out, ref)
    else:
        assert_valid_close(out, ref, mask.bool())
    assert calls == [(12, 12, None if mask is None else (3, 12))] * 2


def test_fused_calls_are_bidirectional_with_grouped_heads(device, monkeypatch):
    calls = spy_fused(monkeypatch, lambda q, k, v, attention_mask=None, **kw: (
        q.shape[1], k.shape[1], kw["causal"], None if attention_mask is None else tuple(attention_mask.shape)))
    m = model(device)
    ids, mask = padded_batch(device, side="right")
    ref, out = eager_and_patched(m, lambda m: m(ids, attention_mask=mask).last_hidden_state, "fused")
    assert calls == [(4, 2, False, (3, 12))] * 2
    # and the model is bidirectional: a key after a query changes that query's output
    later = ids.clone()
    later[0, 11] = 4 if later[0, 11] != 4 else 5  # the last key of the first row (12 tokens, no padding)
    changed = m(later, attention_mask=mask).last_hidden_state
    assert (changed[0, 0] - ref[0, 0]).abs().max() > 1e-4


@pytest.mark.parametrize("head", ["ForMaskedLM", "ForSequenceClassification", "ForTokenClassification"])
def test_task_heads_and_probabilities(device, head):
    # "auto": the fused kernel for the logits, softmax mode where the caller asks for the probabilities
    m = model(device, head=head, seed=1)
    ids, mask = padded_batch(device, lengths=(9, 4), total=9, side="right", seed=1)
    ref, out = eager_and_patched(m, lambda m: m(ids, attention_mask=mask).logits, "auto")
    if head == "ForSequenceClassification":
        assert_close(out, ref)
    else:
        assert_valid_close(out, ref, mask.bool())
    ref, out = eager_and_patched(m, lambda m: m(ids, attention_mask=mask, output_attentions=True).attentions, "auto")
    assert len(out) == len(ref) == 2
    for o, r in zip(out, ref):
        assert_probs_close(o, r, mask.bool())


@pytest.mark.parametrize("mode", MODES)
def test_gradients_match_eager(device, mode):
    m = model(device, head="ForMaskedLM", seed=7).train()
    ids, mask = padded_batch(device, seed=7)
    ref, out = eager_and_patched(m, logits_gradients(ids, mask, VOCAB, seed=8), mode)
    assert_gradients_close(out, ref)


def test_unpatch_is_bit_identical(device):
    m = model(device, head="ForMaskedLM", seed=9)
    ids, mask = padded_batch(device, seed=9)
    before = m(ids, attention_mask=mask).logits
    patch_model(m)
    unpatch_model(m)
    assert torch.equal(m(ids, attention_mask=mask).logits, before)
