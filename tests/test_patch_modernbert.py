"""ModernBERT patched vs eager on tiny random models: its local layers' bidirectional window (query i sees keys
|i - j| <= local_attention // 2) reaches the fused kernel as ``window=W`` without causality, and softmax mode as a 4D
mask with it; global layers get the compact padding mask as BERT's. Logits with left and right padding or none,
the task heads, the probabilities, gradients, unpatch.

Config: 3 layers (one global, then two local with local_attention 8: a window of 4 keys on each side), hidden 32,
4 heads, vocabulary 64, on sequences of up to 24 tokens, so the windows cut most keys off. On CPU the kernels run in
Triton's interpreter (tests/conftest.py).
"""
import pytest
import torch
import transformers

from hf_masked_softmax import hf, patch_model, unpatch_model
from hf_masked_softmax.patches import REGISTRY
from patch_helpers import (
    VOCAB, assert_gradients_close, assert_probs_close, assert_valid_close, eager_and_patched, gradients,
    padded_batch, spy_fused_windows, spy_kernel_masks,
)
from tolerances import assert_close

MODES = ["softmax", "fused"]
T = 24


def config(**overrides):
    kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
              local_attention=8, global_attn_every_n_layers=3, max_position_embeddings=64, pad_token_id=0,
              bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2, attention_dropout=0.0,
              embedding_dropout=0.0, mlp_dropout=0.0, initializer_range=0.2, attn_implementation="eager")
    kw.update(overrides)
    return transformers.ModernBertConfig(**kw)


def model(device, head="Model", seed=0, **overrides):
    torch.manual_seed(seed)
    return getattr(transformers, f"ModernBert{head}")(config(**overrides)).to(device).eval()


def batch(device, side):
    if side == "none":
        ids, _ = padded_batch(device, lengths=(T, T, T), total=T)
        return ids, None
    return padded_batch(device, lengths=(T, 17, 9), total=T, side=side)


def test_registered_with_its_attention_class():
    assert REGISTRY["modernbert"].attention_classes == ("ModernBertAttention",)
    assert config().layer_types == ["full_attention", "sliding_attention", "sliding_attention"]


def test_window_pattern_recognises_the_bidirectional_window_only():
    mu = transformers.masking_utils
    assert hf._window_pattern(mu.sliding_window_bidirectional_mask_function(4)) == (5, False)
    assert hf._window_pattern(mu.sliding_window_causal_mask_function(4)) == (4, True)
    assert hf._sliding_window_of(mu.sliding_window_bidirectional_mask_function(4)) is None
    assert hf._window_pattern(mu.bidirectional_mask_function) is None
    extra = mu.and_masks(mu.sliding_window_bidirectional_mask_function(4), lambda b, h, q, kv: kv != 3)
    assert hf._window_pattern(extra) is None
    swapped = mu.and_masks(mu.sliding_window_bidirectional_overlay(4), mu.causal_mask_function)
    assert hf._window_pattern(swapped) is None
    assert hf._window_cuts(5, False, 9, 9) and not hf._window_cuts(9, False, 9, 9)
    assert hf._window_cuts(5, False, 3, 5) is False and hf._window_cuts(5, True, 9, 6)


def test_the_window_matters_for_this_config(device):
    # eager with the window and with one wider than the sequences: the outputs differ (the tests below could fail;
    # weights 10x the default initialisation, so that the scores are not all alike)
    ids, mask = batch(device, "right")
    with torch.no_grad():
        local = model(device)(ids, attention_mask=mask).last_hidden_state
        wide = model(device, local_attention=64)(ids, attention_mask=mask).last_hidden_state
    assert (local - wide)[mask.bool()].abs().max() > 1e-2


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("side", ["left", "right", "none"])
def test_padded_hidden_states_match_eager_and_the_window_reaches_the_kernel(device, mode, side, monkeypatch):
    fused = mode == "fused"
    calls = spy_fused_windows(monkeypatch) if fused else spy_kernel_masks(monkeypatch, mode)
    m = model(device)
    ids, mask = batch(device, side)
    ref, out = eager_and_patched(m, lambda m: m(ids, attention_mask=mask).last_hidden_state, mode)
    assert_valid_close(out, ref, torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool())
    global_mask = None if mask is None else (3, T)
    if fused:  # (queries, keys, mask shape, window): a compact mask on every layer, the window on the local ones
        local_mask = (3, T)  # without padding an all-true mask carries the window
        assert calls == [(T, T, global_mask, None), (T, T, local_mask, 5), (T, T, local_mask, 5)]
    else:  # softmax mode: the window as a 4D mask (from the all-true mask too)
        assert calls == [(T, T, global_mask), (T, T, (3, 1, T, T)), (T, T, (3, 1, T, T))]


@pytest.mark.parametrize("head", ["ForMaskedLM", "ForSequenceClassification", "ForTokenClassification"])
def test_task_heads_match_eager(device, head):
    m = model(device, head=head, seed=1)
    ids, mask = batch(device, "right")
    ref, out = eager_and_patched(m, lambda m: m(ids, attention_mask=mask).logits, "auto")
    if head == "ForSequenceClassification":
        assert_close(out, ref)
    else:
        assert_valid_close(out, ref, mask.bool())


def test_attention_probabilities_match_eager(device):
    # "auto" with output_attentions: softmax mode, its probabilities (the window's zeros included) as eager's on the
    # real queries' rows
    m = model(device, seed=2)
    ids, mask = batch(device, "left")
    run = lambda m: m(ids, attention_mask=mask, output_attentions=True).attentions  # noqa: E731
    ref, out = eager_and_patched(m, run, "auto")
    assert len(out) == 3
    for o, r in zip(out, ref):
        assert_probs_close(o, r, mask.bool())
    assert (out[1][0, :, -1, :T - 5] == 0).all()  # the last query of a local layer: nothing left of its window


@pytest.mark.parametrize("mode", MODES)
def test_gradients_match_eager(device, mode):
    # (the default initialisation: with the 10x larger weights one gradient entry of softmax mode missed the fp32
    # absolute tolerance by 1.8x, 2.4e-4 relative; the gradients grow with the weights)
    m = model(device, head="ForMaskedLM", seed=3, initializer_range=0.02)
    ids, mask = batch(device, "right")
    weights = torch.randn(*ids.shape, VOCAB, generator=torch.Generator().manual_seed(3)).to(device)
    run = gradients(lambda m: (m(ids, attention_mask=mask).logits * weights)[mask.bool()].sum())
    ref, out = eager_and_patched(m, run, mode)
    assert_gradients_close(out, ref, projections=("Wqkv",))


def test_unpatch_is_bit_identical(device):
    m = model(device, seed=4)
    ids, mask = batch(device, "left")
    with torch.no_grad():
        before = m(ids, attention_mask=mask).last_hidden_state
        patch_model(m)
        patched_out = m(ids, attention_mask=mask).last_hidden_state
        unpatch_model(m)
        after = m(ids, attention_mask=mask).last_hidden_state
    assert torch.equal(before, after)
    assert not torch.equal(before, patched_out)  # the kernels ran (their rounding differs from eager's)
    assert_valid_close(patched_out, before, mask.bool())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_modernbert_base_size_matches_fp32_within_twice_eagers_error(dtype):
    # ModernBERT-base's widths (768 hidden, 12 heads, local_attention 128), 4 layers, B4 x 1024 padded: the
    # patched half-precision error against the fp32 eager model at most twice eager's own (flash-attn's rule)
    torch.manual_seed(0)
    m = transformers.ModernBertModel(config(vocab_size=1000, hidden_size=768, intermediate_size=1152,
                                            num_hidden_layers=4, num_attention_heads=12, local_attention=128,
                                            max_position_embeddings=1024)).cuda().eval()
    ids, mask = padded_batch("cuda", lengths=(1024, 700, 333, 900), total=1024, side="right")
    ids = ids % 1000
    keep = mask.bool()
    with torch.no_grad():
        ref = m(ids, attention_mask=mask).last_hidden_state
        m.to(dtype)
        eager = m(ids, attention_mask=mask).last_hidden_state
        patch_model(m, mode="fused")
        out = m(ids, attention_mask=mask).last_hidden_state
    err = (out.float() - ref)[keep].abs().max()
    eager_err = (eager.float() - ref)[keep].abs().max()
    assert torch.isfinite(out[keep]).all() and err <= 2 * eager_err, (float(err), float(eager_err))
