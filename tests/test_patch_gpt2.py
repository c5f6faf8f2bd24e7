"""GPT-2 patched vs eager on tiny random models: logits, generation, probabilities, dropout, gradients, masks.

On CPU the kernels run in Triton's interpreter (tests/conftest.py), so every model here is tiny.
"""
import inspect

import pytest
import torch
from transformers import GPT2LMHeadModel, GPT2Model

from hf_masked_softmax import hf, patch_model, patched, unpatch_model
from patch_helpers import (
    assert_gradients_close, assert_probs_close, assert_step_close, assert_valid_close, eager_and_patched, gpt2_config,
    logits_gradients, padded_batch, philox_dropout_step, spy_kernel_calls, spy_kernel_masks,
)

MODES = ["softmax", "fused"]


def lm(device, seed=0, **overrides):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(gpt2_config(**overrides)).to(device).eval()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_logits_padded(device, mode, side):
    model = lm(device)
    ids, mask = padded_batch(device, side=side)
    ref, out = eager_and_patched(model, lambda m: m(ids, attention_mask=mask).logits, mode)
    assert_valid_close(out, ref, mask.bool())


@pytest.mark.parametrize("mode", MODES)
def test_logits_unpadded_and_without_mask(device, mode):
    model = lm(device)
    ids, mask = padded_batch(device, lengths=(10, 10), total=10)
    ref, out = eager_and_patched(model, lambda m: (m(ids, attention_mask=mask).logits, m(ids).logits), mode)
    for o, r in zip(out, ref):
        assert_valid_close(o, r, mask.bool())


@pytest.mark.parametrize("mode", MODES)
def test_generate_dynamic_cache_left_padded(device, mode):
    model = lm(device, seed=1)
    ids, mask = padded_batch(device, lengths=(9, 5, 2), total=9, side="left", seed=1)

    def gen(m):
        return m.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, min_new_tokens=6)

    ref, out = eager_and_patched(model, gen, mode)
    assert ref.shape == (3, 15)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padded, check", [(False, True), (True, True), (False, False)])
def test_decode_steps_drop_a_mask_that_pads_nothing(device, mode, padded, check, monkeypatch):
    # One-query steps on a cache ask whether their 2D mask pads anything (DECODE_PAD_CHECK, on by default) and run
    # without it when not; the prefill keeps its mask (asking there would make the host wait for the GPU). Driven by
    # hand: generate() in transformers 5.25 drops a mask of ones before the first forward.
    monkeypatch.setattr(hf, "DECODE_PAD_CHECK", check)
    calls = spy_kernel_masks(monkeypatch, mode)
    model = lm(device, seed=6)
    ids, mask = padded_batch(device, lengths=(7, 4) if padded else (7, 7), total=7, side="left", seed=6)

    # the cache's name: `cache` from transformers 5.25 (`past_key_values` deprecated), `past_key_values` before
    name = "cache" if "cache" in inspect.signature(GPT2LMHeadModel.forward).parameters else "past_key_values"

    def steps(m):
        out = m(ids, attention_mask=mask, use_cache=True)
        step_mask, logits = mask, [out.logits[:, -1]]
        for _ in range(3):
            step_mask = torch.cat([step_mask, torch.ones_like(step_mask[:, :1])], dim=1)
            out = m(logits[-1].argmax(-1, keepdim=True), attention_mask=step_mask, use_cache=True,
                    **{name: getattr(out, name)})
            logits.append(out.logits[:, -1])
        return torch.stack(logits, 1)

    ref, out = eager_and_patched(model, steps, mode)
    assert_valid_close(out, ref, torch.ones(out.shape[:2], dtype=torch.bool, device=device))
    kept = padded or not check
    assert calls == [(7, 7, (2, 7))] * 2 + [(1, k, (2, k) if kept else None) for k in range(8, 11) for _ in range(2)]


@pytest.mark.parametrize("mode", MODES)
def test_beam_search_left_padded(device, mode, monkeypatch):
    # Beam search reorders the cache's rows after every step and repeats each prompt's padding mask per beam.
    calls = spy_kernel_calls(monkeypatch, mode)
    model = lm(device, seed=3)
    ids, mask = padded_batch(device, lengths=(8, 5, 2), total=8, side="left", seed=3)

    def gen(m):
        return m.generate(ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5, num_beams=3,
                          num_return_sequences=2, do_sample=False)

    ref, out = eager_and_patched(model, gen, mode)
    assert ref.shape == (6, 13)
    assert torch.equal(out, ref)
    # 2 layers x (prefill + 4 one-token steps), each on 3 prompts x 3 beams
    assert calls == [(9, 8, 8)] * 2 + [(9, 1, k) for k in range(9, 13) for _ in range(2)]


@pytest.mark.parametrize("mode", MODES)
def test_assisted_generation_verifies_several_tokens_on_a_cache(device, mode, monkeypatch):
    # The assistant drafts tokens; the model checks them in one forward of several queries on its cache (bottom-right
    # causality with Q > 1 and K > Q), then crops the cache back to the tokens it accepted.
    calls = spy_kernel_calls(monkeypatch, mode)
    model = lm(device, seed=4)
    torch.manual_seed(5)
    assistant = GPT2LMHeadModel(gpt2_config(n_layer=1)).to(device).eval()
    ids, mask = padded_batch(device, lengths=(7,), total=7, seed=4)

    def gen(m):
        return m.generate(ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                          assistant_model=assistant)

    ref, out = eager_and_patched(model, gen, mode)
    assert ref.shape == (1, 15)
    assert torch.equal(out, ref)
    assert any(1 < q < k for _, q, k in calls), calls


def test_generate_static_cache_left_padded(device, monkeypatch):
    # A static cache is longer than what it holds: the mask function hands the prompt HF's 4D mask instead of the 2D
    # one, and each one-token step the compact mask cut at its position (bottom-right, one query sees every key).
    # Uncompiled: on CUDA transformers compiles static-cache decoding by itself, and a compiled step always gets the
    # 4D mask (its cache position is traced; tests/test_compile.py covers that path).
    mask_dims = []
    real = hf.attention
    monkeypatch.setattr(hf, "attention", lambda q, k, v, m=None, **kw: mask_dims.append(m.dim()) or real(q, k, v, m, **kw))
    model = lm(device, seed=2)
    ids, mask = padded_batch(device, lengths=(8, 4), total=8, side="left", seed=2)

    def gen(m):
        return m.generate(
            ids, attention_mask=mask, max_new_tokens=4, do_sample=False, min_new_tokens=4,
            cache_implementation="static", disable_compile=True,
        )

    ref, out = eager_and_patched(model, gen, "auto")
    assert ref.shape == (2, 12)
    assert torch.equal(out, ref)
    # 2 layers x (prefill + 3 one-token steps)
    assert mask_dims == [4] * 2 + [2] * 6


@pytest.mark.parametrize("mode", MODES)
def test_scale_by_inverse_layer_idx_and_reorder_and_upcast(device, mode):
    model = lm(device, scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True)
    ids, mask = padded_batch(device, side="left")
    ref, out = eager_and_patched(model, lambda m: m(ids, attention_mask=mask).logits, mode)
    assert_valid_close(out, ref, mask.bool())


def test_reorder_and_upcast_scores_are_fp32(device, monkeypatch):
    # The interface bypasses GPT-2's private upcast method; the backend must still compute fp32 scores for it.
    model = lm(device, reorder_and_upcast_attn=True)
    seen = []
    real = hf.masked_softmax

    def spy(scores, *args, **kwargs):
        seen.append(scores.dtype)
        return real(scores, *args, **kwargs)

    monkeypatch.setattr(hf, "masked_softmax", spy)
    ids, mask = padded_batch(device)
    with patched(model, mode="softmax"), torch.autocast(device, dtype=torch.bfloat16):
        model(ids, attention_mask=mask)
    assert seen == [torch.float32] * 2


@pytest.mark.parametrize("mode", MODES)
def test_cross_attention(device, mode):
    torch.manual_seed(3)
    model = GPT2Model(gpt2_config(add_cross_attention=True)).to(device).eval()
    ids, mask = padded_batch(device, side="left")
    enc = torch.randn(3, 5, 32, device=device)
    enc_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], device=device)

    def run(m):
        return m(ids, attention_mask=mask, encoder_hidden_states=enc, encoder_attention_mask=enc_mask).last_hidden_state

    ref, out = eager_and_patched(model, run, mode)
    assert_valid_close(out, ref, mask.bool())


def test_output_attentions(device):
    torch.manual_seed(3)
    model = GPT2Model(gpt2_config(add_cross_attention=True)).to(device).eval()
    ids, mask = padded_batch(device, side="left")
    enc = torch.randn(3, 5, 32, device=device)
    enc_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], device=device)

    def run(m):
        return m(ids, attention_mask=mask, encoder_hidden_states=enc, encoder_attention_mask=enc_mask,
                 output_attentions=True)

    ref, out = eager_and_patched(model, run, "auto")  # auto must switch to softmax mode to return probabilities
    assert len(out.attentions) == len(ref.attentions) == 2
    assert len(out.cross_attentions) == len(ref.cross_attentions) == 2
    for o, r in zip(out.attentions + out.cross_attentions, ref.attentions + ref.cross_attentions):
        assert_probs_close(o, r, mask.bool())
    assert_valid_close(out.last_hidden_state, ref.last_hidden_state, mask.bool())


def test_fused_mode_refuses_probabilities(device):
    model = lm(device)
    ids, mask = padded_batch(device)
    with patched(model, mode="fused"):
        with pytest.raises(ValueError, match="output_attentions"):
            model(ids, attention_mask=mask, output_attentions=True)


def test_softmax_mode_dropout_in_training_matches_eager(device):
    # Same seed, same random stream: HF eager and softmax mode draw the dropout mask on the same [B, H, Q, K] tensor.
    model = lm(device, attn_pdrop=0.3, resid_pdrop=0.1, embd_pdrop=0.1).train()
    ids, mask = padded_batch(device, side="left")

    def run(m):
        torch.manual_seed(123)
        a = m(ids, attention_mask=mask).logits
        b = m(ids, attention_mask=mask).logits
        return a, b

    ref, out = eager_and_patched(model, run, "softmax")
    assert_valid_close(out[0], ref[0], mask.bool())
    assert_valid_close(out[1], ref[1], mask.bool())
    assert not torch.allclose(ref[0][mask.bool()], ref[1][mask.bool()])  # dropout was really active


@pytest.mark.parametrize("mode", ["auto", "fused"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_fused_dropout_in_training_matches_eager_under_the_same_mask(device, mode, side):
    # "auto" keeps the fused kernel in training with attention dropout; made to drop exactly what eager drops,
    # logits and every gradient match
    model = lm(device, seed=7, attn_pdrop=0.3).train()
    ids, mask = padded_batch(device, side=side, seed=7)
    weights = torch.randn(*ids.shape, 64, generator=torch.Generator().manual_seed(8)).to(device)

    ref, out = eager_and_patched(
        model, lambda m: philox_dropout_step(m, lambda m: m(ids, attention_mask=mask).logits, weights, mask.bool()),
        mode)
    assert_step_close(out, ref, mask.bool())
    plain = model.eval()(ids, attention_mask=mask).logits
    assert not torch.allclose(plain[mask.bool()], ref[0][mask.bool()], atol=1e-3)  # dropout was really active


def test_fused_dropout_repeats_under_manual_seed(device):
    model = lm(device, attn_pdrop=0.3).train()
    ids, mask = padded_batch(device)

    def run():
        torch.manual_seed(5)
        return model(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits

    with patched(model, mode="fused"):
        a, b = run()
        a2, _ = run()
    assert torch.equal(a, a2)
    assert not torch.allclose(a[mask.bool()], b[mask.bool()])


@pytest.mark.parametrize("mode", ["auto", "softmax"])
def test_gradients_match_eager(device, mode):
    model = lm(device, seed=4).train()
    ids, mask = padded_batch(device, side="left", seed=4)
    ref, out = eager_and_patched(model, logits_gradients(ids, mask, 64, seed=5), mode)
    assert_gradients_close(out, ref, ("c_attn",))


def test_finetuning_step_reduces_loss(device):
    model = lm(device, seed=6).train()
    ids, mask = padded_batch(device, side="right", seed=6)
    labels = ids.masked_fill(mask == 0, -100)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with patched(model):
        losses = []
        for _ in range(3):
            opt.zero_grad()
            loss = model(ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_user_4d_mask(device, kind):
    model = lm(device)
    ids, mask = padded_batch(device, side="right")
    T = ids.shape[1]
    keep = torch.tril(torch.ones(T, T, dtype=torch.bool, device=device))[None, None] & mask.bool()[:, None, None, :]
    additive = torch.zeros(keep.shape, device=device).masked_fill(~keep, torch.finfo(torch.float32).min)
    ref = model(ids, attention_mask=additive).logits  # eager takes only additive 4D masks
    with patched(model, mode="softmax"):
        out = model(ids, attention_mask=keep if kind == "bool" else additive).logits
    assert_valid_close(out, ref, mask.bool())


def test_kernels_receive_compact_2d_mask(device, monkeypatch):
    calls = []
    real = hf.masked_softmax

    def spy(scores, attention_mask=None, **kwargs):
        calls.append((None if attention_mask is None else (attention_mask.dtype, tuple(attention_mask.shape)), kwargs))
        return real(scores, attention_mask, **kwargs)

    monkeypatch.setattr(hf, "masked_softmax", spy)
    model = lm(device)
    ids, mask = padded_batch(device, lengths=(12, 7, 3), total=12)
    patch_model(model, mode="softmax")
    model(ids, attention_mask=mask)
    # a mask without padding is passed on as it is: finding out that nothing is padded would wait for the GPU
    model(ids, attention_mask=torch.ones_like(mask))
    model(ids)  # no mask at all: None
    unpatch_model(model)
    assert [c[0] for c in calls] == [(torch.bool, (3, 12))] * 4 + [None] * 2
    assert all(c[1]["causal"] is True and c[1]["scale"] == pytest.approx(8 ** -0.5) for c in calls)


def test_auto_picks_fused_unless_probabilities_requested(device, monkeypatch):
    used = []
    real_softmax, real_attention = hf.masked_softmax, hf.attention
    monkeypatch.setattr(hf, "masked_softmax", lambda *a, **k: used.append("softmax") or real_softmax(*a, **k))
    monkeypatch.setattr(hf, "attention", lambda *a, **k: used.append("fused") or real_attention(*a, **k))
    model = lm(device)
    ids, mask = padded_batch(device)
    with patched(model):
        model(ids, attention_mask=mask)
        model(ids, attention_mask=mask, output_attentions=True)
    assert used == ["fused"] * 2 + ["softmax"] * 2
