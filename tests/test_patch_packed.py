"""Packed sequences (padding-free batches: no attention mask, ``position_ids`` that restart at every sequence, no
cache) through a patched model: transformers builds a block-diagonal mask for them, which the backend recognises and
hands to the fused kernel as ``segments`` (no ``[B, L, L]`` mask). Patched vs eager and vs each sequence run on its
own, logits and gradients, Llama (causal) and Mistral (a sliding window inside each sequence), in every mode; the
recognition itself; what still gets HF's 4D mask. Tiny random models; on CPU the kernels run in the interpreter."""
import pytest
import torch
from transformers import (
    BertConfig, BertModel, DataCollatorWithFlattening, LlamaConfig, LlamaForCausalLM, MistralConfig,
    MistralForCausalLM, masking_utils,
)

from hf_masked_softmax import hf, patched
from patch_helpers import gradients
from tolerances import assert_close

VOCAB = 100
TINY = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, vocab_size=VOCAB, max_position_embeddings=64, attn_implementation="eager")
LENGTHS = [(7, 20, 1, 17), (30, 15)]  # two rows of packed sequences, 45 tokens each


def _model(arch, device):
    torch.manual_seed(0)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**TINY)).to(device).eval()
    return MistralForCausalLM(MistralConfig(sliding_window=5, **TINY)).to(device).eval()


def _packed(device, seed=0):
    """(input_ids [2, 45], position_ids restarting at each sequence)."""
    ids = torch.randint(3, VOCAB, (2, 45), generator=torch.Generator().manual_seed(seed))
    pos = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in LENGTHS])
    return ids.to(device), pos.to(device)


def _separately(model, ids):
    """The logits of every sequence run alone, concatenated as packed."""
    rows = []
    for b, row in enumerate(LENGTHS):
        parts, start = [], 0
        for n in row:
            parts.append(model(input_ids=ids[b: b + 1, start: start + n], use_cache=False).logits)
            start += n
        rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows)


def _spy_segments(monkeypatch):
    calls = []
    real = hf.attention

    def spy(q, k, v, mask=None, **kw):
        calls.append((None if mask is None else tuple(mask.shape), kw.get("segments") is not None))
        return real(q, k, v, mask, **kw)

    monkeypatch.setattr(hf, "attention", spy)
    return calls


@pytest.mark.parametrize("mode", ["auto", "fused", "softmax"])
@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_packed_logits_equal_eager_and_each_sequence_alone(arch, mode, device, monkeypatch):
    model = _model(arch, device)
    ids, pos = _packed(device)
    calls = _spy_segments(monkeypatch)
    with torch.no_grad():
        ref = model(input_ids=ids, position_ids=pos, use_cache=False).logits
        alone = _separately(model, ids)
        with patched(model, mode=mode):
            out = model(input_ids=ids, position_ids=pos, use_cache=False).logits
    assert_close(ref, alone.double(), scale=4)  # eager's packed mask is the sequences' separation
    assert_close(out, ref.double(), scale=4)
    if mode != "softmax":  # the fused kernel got the ids, no mask: every layer
        assert calls == [(None, True)] * 2
    # the packing matters: the same tokens as one sequence give other logits
    with torch.no_grad():
        whole = model(input_ids=ids, use_cache=False).logits
    assert (whole - ref).abs().max() > 1e-2


@pytest.mark.parametrize("mode", ["fused", "softmax"])
def test_packed_gradients_equal_eager(mode, device):
    model = _model("llama", device)
    ids, pos = _packed(device, seed=1)
    weights = torch.randn(2, 45, VOCAB, generator=torch.Generator().manual_seed(2)).to(device)
    run = gradients(lambda m: (m(input_ids=ids, position_ids=pos, use_cache=False).logits * weights).sum())
    ref = run(model)
    with patched(model, mode=mode):
        out = run(model)
    assert ref.keys() == out.keys() and any("k_proj" in n for n in ref)
    for name in ref:
        assert_close(out[name], ref[name], scale=10)


def test_a_flattening_collators_batch_trains_as_eager(device):
    # transformers' own padding-free collator: one row of the examples back to back, positions restarting, labels
    # -100 at each example's first token; the loss and every gradient of a patched model equal eager's
    model = _model("llama", device)
    g = torch.Generator().manual_seed(3)
    examples = [{"input_ids": torch.randint(3, VOCAB, (n,), generator=g).tolist()} for n in (9, 4, 17, 1, 12)]
    batch = {k: t.to(device) for k, t in DataCollatorWithFlattening()(examples).items()}
    assert set(batch) == {"input_ids", "labels", "position_ids"} and batch["input_ids"].shape == (1, 43)
    run = gradients(lambda m: m(**batch, use_cache=False).loss)
    losses = []
    ref = run(model)
    losses.append(model(**batch, use_cache=False).loss.item())
    with patched(model, mode="auto"):
        out = run(model)
        losses.append(model(**batch, use_cache=False).loss.item())
    assert abs(losses[1] - losses[0]) <= 1e-6 * abs(losses[0])
    assert ref.keys() == out.keys()
    for name in ref:
        assert_close(out[name], ref[name], scale=10)


def test_a_packed_bert_batch_equals_eager(device, monkeypatch):
    # BERT passes position_ids to transformers' bidirectional mask, which packs from 5.25 on (bidirectional
    # segments); older versions build no packed mask for encoders, and the patched model then gets none either
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=128, attn_implementation="eager")).to(device).eval()
    ids, pos = _packed(device, seed=4)
    calls = _spy_segments(monkeypatch)
    with torch.no_grad():
        ref = model(input_ids=ids, position_ids=pos).last_hidden_state
        with patched(model, mode="fused"):
            out = model(input_ids=ids, position_ids=pos).last_hidden_state
        alone = torch.cat([torch.cat([model(input_ids=ids[b: b + 1, s: s + n]).last_hidden_state
                                      for s, n in zip([0, *torch.tensor(row).cumsum(0)[:-1].tolist()], row)], dim=1)
                           for b, row in enumerate(LENGTHS)])
    assert_close(out, ref.double(), scale=4)
    packs = bool(torch.allclose(ref, alone, atol=1e-4))
    assert calls == [(None, True)] * 2 if packs else all(not seg for _, seg in calls)
    if hasattr(masking_utils, "remap_positions_for_packed_sequence"):  # 5.25 packs encoders
        assert packs


def test_the_packed_pattern_is_recognised_with_its_ids():
    ids = torch.tensor([[0, 0, 1, 1, 1, 2]])
    fn = masking_utils.and_masks(masking_utils.causal_mask_function,
                                 masking_utils.packed_sequence_mask_function(ids))
    inner, got = hf._packed_pattern(fn)
    assert inner is masking_utils.causal_mask_function and got is ids
    window = masking_utils.sliding_window_causal_mask_function(3)
    remap = getattr(masking_utils, "remap_positions_for_packed_sequence", None)
    if remap is not None:  # transformers 5.25 wraps the pattern in the positions' remap
        fn = masking_utils.and_masks(remap(window, torch.tensor([[0, 1, 0, 1, 2, 0]])),
                                     masking_utils.packed_sequence_mask_function(ids))
        inner, got = hf._packed_pattern(fn)
        assert inner is window and got is ids
    # anything else is not packing
    assert hf._packed_pattern(masking_utils.causal_mask_function) is None
    assert hf._packed_pattern(window) is None
    extra = masking_utils.and_masks(masking_utils.causal_mask_function, masking_utils.causal_mask_function)
    assert hf._packed_pattern(extra) is None


def test_the_mask_function_answers_packing_with_an_all_true_mask_carrying_the_ids():
    ids = torch.tensor([[0, 0, 1, 1, 1, 2]])
    fn = masking_utils.and_masks(masking_utils.causal_mask_function,
                                 masking_utils.packed_sequence_mask_function(ids))
    mask = hf._mask_function(batch_size=3, q_length=6, kv_length=6, mask_function=fn, device="cpu")
    assert mask.dtype == torch.bool and mask.shape == (3, 6) and bool(mask.all())
    assert torch.equal(getattr(mask, hf._SEGMENTS_TAG), ids.expand(3, 6))
    # a call that is not a padding-free one (here: a 2D mask beside the packing) gets HF's 4D mask
    pad = torch.tensor([[True, True, True, True, True, False]])
    full = hf._mask_function(batch_size=1, q_length=6, kv_length=6, mask_function=fn, attention_mask=pad,
                             device="cpu")
    assert full.dim() == 4 and not hasattr(full, hf._SEGMENTS_TAG)
    keep = torch.tensor([[k <= q and k < 5 and ids[0, k] == ids[0, q] for k in range(6)] for q in range(6)])
    assert torch.equal(full[0, 0].cpu(), keep)


def test_packing_inside_a_custom_pattern_gets_hfs_mask():
    # another function inside the packing (a user's and_mask): not a pattern the kernels know, so HF's 4D mask
    ids = torch.tensor([[0, 0, 1, 1, 1, 2]])
    odd = masking_utils.and_masks(masking_utils.causal_mask_function, lambda b, h, q, k: k != 1)
    fn = masking_utils.and_masks(odd, masking_utils.packed_sequence_mask_function(ids))
    full = hf._mask_function(batch_size=1, q_length=6, kv_length=6, mask_function=fn, device="cpu")
    assert full.dim() == 4
    keep = torch.tensor([[k != 1 and k <= q and ids[0, k] == ids[0, q] for k in range(6)] for q in range(6)])
    assert torch.equal(full[0, 0].cpu(), keep)
