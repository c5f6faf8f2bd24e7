"""GPU, fp16, real model sizes (random init): flash-attn's rule for patched models.

The patched fp16 model's error against the fp32 eager model must be at most twice the fp16 eager model's error
(max abs over real positions): the kernels may not add error beyond what fp16 eager itself has.
"""
import copy

import pytest
import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

from hf_masked_softmax import patched

pytestmark = pytest.mark.gpu


def padded(vocab, lengths, total, side, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (len(lengths), total), generator=g)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    if side == "left":
        mask = mask.flip(-1)
    return ids.cuda(), mask.cuda()


def max_err(x, ref, valid):
    return (x.float() - ref.float())[valid].abs().max().item()


def fp32_and_fp16(model):
    model = model.cuda().eval()
    return model, copy.deepcopy(model).half()


def assert_fp16_rule(label, run, m32, m16, mode, valid):
    """flash-attn's rule on ``run(model)``'s output at the ``valid`` positions: the patched fp16 model's error against
    the fp32 model is at most twice the eager fp16 model's."""
    with torch.no_grad():
        ref, eager = run(m32), run(m16)
        with patched(m16, mode=mode):
            ours = run(m16)
    e_eager, e_ours = max_err(eager, ref, valid), max_err(ours, ref, valid)
    print(f"{label} fp16 {mode}: eager err {e_eager:.3e}, patched err {e_ours:.3e}")
    assert 0 < e_eager and torch.isfinite(ours[valid]).all()
    assert e_ours <= 2 * e_eager


@pytest.mark.parametrize("mode", ["softmax", "fused"])
def test_gpt2_small_fp16_forward(mode):
    torch.manual_seed(0)
    m32, m16 = fp32_and_fp16(GPT2LMHeadModel(GPT2Config(attn_implementation="eager")))
    ids, mask = padded(50257, (512, 397, 200, 31), 512, "left")
    assert_fp16_rule("gpt2", lambda m: m(ids, attention_mask=mask).logits, m32, m16, mode, mask.bool())


@pytest.mark.parametrize("arch", ["Bert", "Roberta", "DistilBert"])
@pytest.mark.parametrize("mode", ["softmax", "fused"])
def test_bert_base_fp16_forward(mode, arch):
    # BERT-base and two of its relatives at their default (base) sizes
    torch.manual_seed(0)
    config = getattr(transformers, f"{arch}Config")(attn_implementation="eager")
    m32, m16 = fp32_and_fp16(getattr(transformers, f"{arch}Model")(config))
    ids, mask = padded(config.vocab_size, (256, 180, 77, 9), 256, "right")
    assert_fp16_rule(arch, lambda m: m(ids, attention_mask=mask).last_hidden_state, m32, m16, mode, mask.bool())


@pytest.mark.parametrize("mode", ["softmax", "fused"])
def test_qwen3_fp16_forward(mode):
    # a Llama-family decoder at Qwen3-0.6B's widths (head_dim 128, 16 query / 8 key-value heads, per-head query and key
    # norms), 8 of its 28 layers, left padding
    torch.manual_seed(0)
    config = transformers.Qwen3Config(hidden_size=1024, num_hidden_layers=8, num_attention_heads=16,
                                      num_key_value_heads=8, head_dim=128, intermediate_size=3072,
                                      vocab_size=151936, attn_implementation="eager")
    m32, m16 = fp32_and_fp16(transformers.Qwen3ForCausalLM(config))
    ids, mask = padded(config.vocab_size, (512, 397, 200, 31), 512, "left", seed=3)
    assert_fp16_rule("qwen3", lambda m: m(ids, attention_mask=mask).logits, m32, m16, mode, mask.bool())


@pytest.mark.parametrize("arch", ["gemma2", "gemma3_text"])
@pytest.mark.parametrize("mode", ["softmax", "fused"])
def test_gemma_fp16_forward(mode, arch):
    # Gemma 2 / 3 at 2B / 1B widths (head_dim 256, 8 query / 4 key-value heads and 4 / 1), 6 layers, a 128-token
    # window on the sliding layers, left padding; Gemma 2 soft-caps its scores at 50 (scores of a few units: larger
    # weights than its default init, so that the cap bends them)
    torch.manual_seed(0)
    if arch == "gemma2":
        config = transformers.Gemma2Config(hidden_size=2304, num_hidden_layers=6, num_attention_heads=8,
                                           num_key_value_heads=4, head_dim=256, intermediate_size=9216,
                                           vocab_size=32000, sliding_window=128, initializer_range=0.05,
                                           attn_implementation="eager")
        model = transformers.Gemma2ForCausalLM(config)
    else:
        config = transformers.Gemma3TextConfig(hidden_size=1152, num_hidden_layers=6, num_attention_heads=4,
                                               num_key_value_heads=1, head_dim=256, intermediate_size=6912,
                                               vocab_size=32000, sliding_window=128, attn_implementation="eager")
        model = transformers.Gemma3ForCausalLM(config)
    m32, m16 = fp32_and_fp16(model)
    ids, mask = padded(config.vocab_size, (512, 397, 200, 31), 512, "left", seed=4)
    assert_fp16_rule(arch, lambda m: m(ids, attention_mask=mask).logits, m32, m16, mode, mask.bool())


@pytest.mark.parametrize("mode", ["softmax", "fused"])
def test_deepseek_v2_fp16_forward(mode):
    # multi-head latent attention at DeepSeek-V2-Lite's widths (16 heads, queries and keys 192 wide, values 128: the
    # fused mode pads the values), 4 layers with its dense MLP, left padding
    torch.manual_seed(0)
    config = transformers.DeepseekV2Config(hidden_size=2048, num_hidden_layers=4, num_attention_heads=16,
                                           num_key_value_heads=16, q_lora_rank=None, kv_lora_rank=512,
                                           qk_nope_head_dim=128, qk_rope_head_dim=64, head_dim=64, v_head_dim=128,
                                           intermediate_size=10944, first_k_dense_replace=4, vocab_size=32000,
                                           attn_implementation="eager")
    m32, m16 = fp32_and_fp16(transformers.DeepseekV2ForCausalLM(config))
    ids, mask = padded(config.vocab_size, (512, 397, 200, 31), 512, "left", seed=5)
    assert_fp16_rule("deepseek_v2", lambda m: m(ids, attention_mask=mask).logits, m32, m16, mode, mask.bool())


@pytest.mark.parametrize("mode", ["softmax", "fused"])
def test_bart_base_fp16_forward(mode):
    # an encoder-decoder at BART-base size: padded sources, padded decoder inputs, cross-attention
    torch.manual_seed(0)
    config = transformers.BartConfig(attn_implementation="eager")
    m32, m16 = fp32_and_fp16(transformers.BartForConditionalGeneration(config))
    ids, mask = padded(config.vocab_size, (256, 180, 77, 9), 256, "right", seed=1)
    dec, dec_mask = padded(config.vocab_size, (128, 100, 40, 128), 128, "right", seed=2)

    def run(m):
        return m(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask).logits

    assert_fp16_rule("bart", run, m32, m16, mode, dec_mask.bool())


@pytest.mark.parametrize("mode", ["softmax", "fused"])
def test_gpt2_small_fp16_gradients(mode):
    torch.manual_seed(0)
    m32, m16 = fp32_and_fp16(GPT2LMHeadModel(GPT2Config(attn_implementation="eager", n_layer=4)))
    ids, mask = padded(50257, (256, 190, 64, 20), 256, "right")
    labels = ids.masked_fill(mask == 0, -100)

    def grads(m):
        m.zero_grad()
        m(ids, attention_mask=mask, labels=labels).loss.backward()
        return torch.cat([p.grad.float().flatten() for p in m.parameters()])

    ref = grads(m32)
    eager = grads(m16)
    with patched(m16, mode=mode):
        ours = grads(m16)
    e_eager, e_ours = (eager - ref).abs().max().item(), (ours - ref).abs().max().item()
    print(f"gpt2 fp16 grads {mode}: eager err {e_eager:.3e}, patched err {e_ours:.3e}")
    assert 0 < e_eager and torch.isfinite(ours).all()
    assert e_ours <= 2 * e_eager
