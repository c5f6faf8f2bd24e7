"""Shared pieces of the patcher tests (tests/test_patch_*.py): tiny models, padded batches, eager-vs-patched runs."""
import contextlib
import importlib
import os
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import BertConfig, GPT2Config  # noqa: E402

from hf_masked_softmax import hf, patched  # noqa: E402
from hf_masked_softmax.reference import dropout_keep_reference  # noqa: E402
from tolerances import assert_close  # noqa: E402

VOCAB = 64


def gpt2_config(**overrides):
    kw = dict(
        n_layer=2, n_head=4, n_embd=32, vocab_size=VOCAB, n_positions=64, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, attn_implementation="eager",
    )
    kw.update(overrides)
    return GPT2Config(**kw)


def bert_config(**overrides):
    kw = dict(
        num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=64, vocab_size=VOCAB,
        max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager",
    )
    kw.update(overrides)
    return BertConfig(**kw)


def padded_batch(device, lengths=(12, 7, 3), total=12, side="right", seed=0):
    """``input_ids [B, total]`` (pad id 0) and the 0/1 ``attention_mask`` for sequences of ``lengths``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (len(lengths), total), generator=g)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for b, n in enumerate(lengths):
        if side == "right":
            mask[b, :n] = 1
        else:
            mask[b, total - n:] = 1
    ids = ids.masked_fill(mask == 0, 0)
    return ids.to(device), mask.to(device)


def checkpointing(model, on: bool, reentrant: bool = False, **options):
    """Activation checkpointing on or off, by transformers' own name for it: ``activation_checkpointing_*`` since
    5.25 (which also takes ``options`` such as ``every_n_layers``), ``gradient_checkpointing_*`` before."""
    new = hasattr(model, "activation_checkpointing_enable")
    if not on:
        return (model.activation_checkpointing_disable if new else model.gradient_checkpointing_disable)()
    if new:
        return model.activation_checkpointing_enable({"use_reentrant": reentrant}, **options)
    assert not options, "checkpointing options need transformers >= 5.25"
    return model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})


def eager_and_patched(model, run, mode="auto"):
    """``run(model)`` unpatched (the model is eager) and under ``patched(model, mode=mode)``."""
    assert model.config._attn_implementation == "eager"
    ref = run(model)
    with patched(model, mode=mode):
        out = run(model)
    return ref, out


def assert_valid_close(out, ref, valid, *, scale=1.0):
    """Patched ``out`` vs eager ``ref`` (same dtype) where ``valid [B, T]`` marks real (non-padding) positions."""
    assert out.shape == ref.shape
    assert_close(out[valid], ref[valid], dtype=out.dtype, scale=scale)


def assert_probs_close(out, ref, query_valid):
    """Attention probabilities ``[B, H, Q, K]`` compared on the rows of real queries (``query_valid [B, Q]``).

    Rows of padding queries differ by design: eager spreads them uniformly over masked keys, the kernels write zeros.
    """
    assert out.shape == ref.shape
    rows = query_valid[:, None, :].expand(-1, out.shape[1], -1)
    assert_close(out[rows], ref[rows], dtype=out.dtype)


@contextlib.contextmanager
def philox_dropout(seed=20261203):
    """Every attention dropout draws the fused kernels' Philox mask for key ``seed``: the patched fused path through
    a fixed key, HF eager's ``nn.functional.dropout`` on its ``[B, H, Q, K]`` probabilities through the reference's
    copy of that mask (other dropouts must be 0). Eager and fused then drop the very same probabilities."""
    ops = importlib.import_module("hf_masked_softmax.ops")
    attn = importlib.import_module("hf_masked_softmax.attention")
    plain = torch.nn.functional.dropout

    def dropout(x, p=0.5, training=True, inplace=False):
        if not training or p == 0.0:
            return x
        assert x.dim() == 4, "only attention dropout may be active"
        thr, keep_scale = attn.dropout_threshold(p)
        return x * dropout_keep_reference(seed, x.shape, thr, device=x.device) * keep_scale

    fixed = torch.tensor([seed], dtype=torch.int64)
    with mock.patch.object(ops, "_new_seed", lambda device: fixed.to(device)), \
            mock.patch.object(torch.nn.functional, "dropout", dropout):
        yield
    assert torch.nn.functional.dropout is plain


def philox_dropout_step(model, forward, weights, valid):
    """One backward of ``(forward(model) * weights)[valid].sum()`` under :func:`philox_dropout`: (the output, every
    parameter's gradient by name)."""
    model.zero_grad()
    with philox_dropout():
        y = forward(model)
    ((y * weights)[valid]).sum().backward()
    return y.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_step_close(out, ref, valid):
    """Two :func:`philox_dropout_step` results: outputs on the ``valid`` positions, then every gradient."""
    assert_valid_close(out[0], ref[0], valid)
    assert ref[1].keys() == out[1].keys() and len(ref[1]) > 10
    for name in ref[1]:
        assert_close(out[1][name], ref[1][name], scale=10)


def _spy_kernel(monkeypatch, mode, record):
    """Replace the kernel the patched attention calls in ``mode`` by one that appends ``record(first, *args, **kw)``
    to the returned list, then runs the kernel. softmax: ``(scores [B, H, Q, K], mask)``; fused: ``(q [B, H, Q, D],
    k, v, mask)``, then the keywords (``causal``, ``scale``, ``window``, ...)."""
    calls = []
    name = "masked_softmax" if mode == "softmax" else "attention"
    real = getattr(hf, name)

    def spy(x, *args, **kw):
        calls.append(record(x, *args, **kw))
        return real(x, *args, **kw)

    monkeypatch.setattr(hf, name, spy)
    return calls


def spy_kernel_calls(monkeypatch, mode):
    """Record (batch, queries, keys) of every kernel call the patched attention makes in ``mode``."""
    return _spy_kernel(monkeypatch, mode, lambda x, *args, **kw: (
        x.shape[0], x.shape[-2], x.shape[-1] if mode == "softmax" else args[0].shape[-2]))


def spy_kernel_masks(monkeypatch, mode):
    """Record (queries, keys, the mask's shape or None) of every kernel call the patched attention makes in ``mode``."""
    def record(x, *args, **kw):
        mask = args[0] if mode == "softmax" else args[2]
        keys = x.shape[-1] if mode == "softmax" else args[0].shape[-2]
        return x.shape[-2], keys, None if mask is None else tuple(mask.shape)

    return _spy_kernel(monkeypatch, mode, record)


def spy_fused(monkeypatch, record):
    """Record ``record(q, k, v, mask, **keywords)`` of every fused-kernel call the patched attention makes."""
    return _spy_kernel(monkeypatch, "fused", record)


def spy_fused_windows(monkeypatch):
    """Record (queries, keys, the mask's shape or None, window) of every fused-kernel call the patched attention
    makes."""
    return spy_fused(monkeypatch, lambda q, k, v, mask=None, **kw: (
        q.shape[-2], k.shape[-2], None if mask is None else tuple(mask.shape), kw.get("window")))


def gradients(loss):
    """``run(model)`` for :func:`eager_and_patched`: one backward of ``loss(model)``; every parameter's gradient by
    name."""
    def run(m):
        m.zero_grad()
        loss(m).backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    return run


def logits_gradients(ids, mask, vocab, seed):
    """:func:`gradients` of a random-weighted sum of the logits at the real positions of a padded batch."""
    weights = torch.randn(*ids.shape, vocab, generator=torch.Generator().manual_seed(seed)).to(ids.device)
    return gradients(lambda m: (m(ids, attention_mask=mask).logits * weights)[mask.bool()].sum())


def assert_gradients_close(out, ref, projections=("k_proj",)):
    """Two :func:`gradients` results: the same parameters (among them a key projection, named by one of
    ``projections``, so the attention's backward was exercised), each within 10x the fp32 tolerance."""
    assert ref.keys() == out.keys() and len(ref) > 10
    assert any(p in n for n in ref for p in projections)
    for name in ref:
        assert_close(out[name], ref[name], scale=10)


def check_encoder_decoder(model, device):
    """An eager ``EncoderDecoderModel`` (or any model taking ``decoder_input_ids``) patched vs eager on right-padded
    sources and decoder inputs: logits on the valid decoder positions in "auto" mode with the probabilities (decoder
    self- and cross-attention on the rows of real queries), then the logits again in "fused" mode."""
    ids, mask = padded_batch(device, lengths=(10, 6, 2), total=10, side="right", seed=5)
    dec_ids, dec_mask = padded_batch(device, lengths=(7, 7, 4), total=7, side="right", seed=6)

    def run(m, output_attentions=True):
        return m(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_ids, decoder_attention_mask=dec_mask,
                 output_attentions=output_attentions)

    ref, out = eager_and_patched(model, run, "auto")
    assert_valid_close(out.logits, ref.logits, dec_mask.bool())
    assert len(out.cross_attentions) == len(ref.cross_attentions) == 2
    for o, r in zip(out.cross_attentions + out.decoder_attentions, ref.cross_attentions + ref.decoder_attentions):
        assert_probs_close(o, r, dec_mask.bool())

    ref, out = eager_and_patched(model, lambda m: run(m, False).logits, "fused")
    assert_valid_close(out, ref, dec_mask.bool())
