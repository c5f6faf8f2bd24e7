"""Llama-style decoders (patches/decoders.py) patched vs eager on tiny random models with grouped-query attention.

Every config: 2 layers, hidden 64, 4 query heads sharing 2 key/value heads (head_dim 16), vocabulary 100; GPT-NeoX
and OPT have no grouped-query attention (4 key/value heads), GPT-BigCode's multi-query attention one key/value head.
On CPU the kernels run in Triton's interpreter (tests/conftest.py).
"""
import pytest
import torch
from transformers import (
    Cohere2Config, Cohere2ForCausalLM, CohereConfig, CohereForCausalLM, Gemma2Config, Gemma2ForCausalLM,
    Gemma3ForCausalLM, Gemma3TextConfig, GemmaConfig, GemmaForCausalLM, GPTBigCodeConfig, GPTBigCodeForCausalLM,
    GPTNeoXConfig, GPTNeoXForCausalLM, GptOssConfig, GptOssForCausalLM, GraniteConfig, GraniteForCausalLM, LlamaConfig,
    LlamaForCausalLM, MistralConfig, MistralForCausalLM, MixtralConfig, MixtralForCausalLM, Olmo2Config,
    Olmo2ForCausalLM, OlmoConfig, OlmoForCausalLM, OPTConfig, OPTForCausalLM, Phi3Config, Phi3ForCausalLM, PhiConfig, PhiForCausalLM, Qwen2Config,
    Qwen2ForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM, Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig,
    Qwen3MoeForCausalLM, StableLmConfig, StableLmForCausalLM, Starcoder2Config, Starcoder2ForCausalLM, VaultGemmaConfig,
    VaultGemmaForCausalLM,
)
from transformers import (
    Exaone4Config, Exaone4ForCausalLM, Glm4Config, Glm4ForCausalLM, GraniteMoeConfig, GraniteMoeForCausalLM,
    HeliumConfig, HeliumForCausalLM, Ministral3Config, Ministral3ForCausalLM, MinistralConfig, MinistralForCausalLM,
    Olmo3Config, Olmo3ForCausalLM, SeedOssConfig, SeedOssForCausalLM, SmolLM3Config, SmolLM3ForCausalLM,
)
from transformers import (
    ApertusConfig, ApertusForCausalLM, ArceeConfig, ArceeForCausalLM, BitNetConfig, BitNetForCausalLM,
    Ernie4_5_MoeConfig, Ernie4_5_MoeForCausalLM, Ernie4_5Config, Ernie4_5ForCausalLM, Glm4MoeConfig,
    Glm4MoeForCausalLM, GlmConfig, GlmForCausalLM, GraniteMoeSharedConfig, GraniteMoeSharedForCausalLM,
    HunYuanDenseV1Config, HunYuanDenseV1ForCausalLM, HunYuanMoEV1Config, HunYuanMoEV1ForCausalLM, JetMoeConfig,
    JetMoeForCausalLM, MiniMaxM2Config, MiniMaxM2ForCausalLM, NanoChatConfig, NanoChatForCausalLM, PhimoeConfig,
    PhimoeForCausalLM, SolarOpenConfig, SolarOpenForCausalLM,
)
from transformers import (
    DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM, Glm4MoeLiteConfig,
    Glm4MoeLiteForCausalLM, LongcatFlashConfig, LongcatFlashForCausalLM, Mistral4Config, Mistral4ForCausalLM,
    YoutuConfig, YoutuForCausalLM,
)
from transformers import (
    AfmoeConfig, AfmoeForCausalLM, BambaConfig, BambaForCausalLM, CwmConfig, CwmForCausalLM, Dots1Config,
    Dots1ForCausalLM, ExaoneMoeConfig, ExaoneMoeForCausalLM, FalconH1Config, FalconH1ForCausalLM, FlexOlmoConfig,
    FlexOlmoForCausalLM, GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM, Jais2Config, Jais2ForCausalLM,
    JambaConfig, JambaForCausalLM, Lfm2Config, Lfm2ForCausalLM, Lfm2MoeConfig, Lfm2MoeForCausalLM, NemotronHConfig,
    NemotronHForCausalLM, OlmoeConfig, OlmoeForCausalLM, OlmoHybridConfig, OlmoHybridForCausalLM, Qwen3NextConfig,
    Qwen3NextForCausalLM,
)
from transformers import BioGptConfig, BioGptForCausalLM, PersimmonConfig, PersimmonForCausalLM

from hf_masked_softmax import hf, patch_model, patched, unpatch_model
from hf_masked_softmax.patches import REGISTRY
from patch_helpers import (
    assert_gradients_close, assert_probs_close, assert_valid_close, eager_and_patched, logits_gradients,
    spy_fused, spy_fused_windows, spy_kernel_masks,
)
from tolerances import assert_close

VOCAB = 100
TINY = dict(
    num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16, vocab_size=VOCAB, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    attn_implementation="eager",
)
ARCHS = {
    "llama": (LlamaForCausalLM, LlamaConfig, {}),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config, {}),  # use_sliding_window=False: its config drops the window
    "mistral": (MistralForCausalLM, MistralConfig, {"sliding_window": None}),
    "qwen3": (Qwen3ForCausalLM, Qwen3Config, {}),  # q/k RMS norms before the interface
    # a custom scale (not head_dim ** -0.5) and scaled embeddings / residuals / logits
    "granite": (GraniteForCausalLM, GraniteConfig, {"attention_multiplier": 0.3, "embedding_multiplier": 2.0,
                                                    "residual_multiplier": 0.5, "logits_scaling": 1.5}),
    "olmo2": (Olmo2ForCausalLM, Olmo2Config, {}),
    "gemma": (GemmaForCausalLM, GemmaConfig, {}),
    # soft-capped scores: a cap of 1 on scores of about that size (larger weights, query_pre_attn_scalar 1), so that
    # the cap changes the logits (test_soft_cap_reaches_the_kernels); windows on every other layer
    "gemma2": (Gemma2ForCausalLM, Gemma2Config, {"attn_logit_softcapping": 1.0, "initializer_range": 0.1,
                                                 "query_pre_attn_scalar": 1}),
    "gemma3_text": (Gemma3ForCausalLM, Gemma3TextConfig, {}),  # windows on both layers (five of six by default)
    # Gemma 2's attention (soft-capped as "gemma2"'s); Command R7B's (windows on three of four layers: both here)
    "vaultgemma": (VaultGemmaForCausalLM, VaultGemmaConfig, {"attn_logit_softcapping": 1.0, "initializer_range": 0.1,
                                                             "query_pre_attn_scalar": 1}),
    "cohere2": (Cohere2ForCausalLM, Cohere2Config, {}),
    "cohere": (CohereForCausalLM, CohereConfig, {"use_qk_norm": True, "logit_scale": 0.5}),
    "stablelm": (StableLmForCausalLM, StableLmConfig, {"qk_layernorm": True, "partial_rotary_factor": 0.5}),
    "phi": (PhiForCausalLM, PhiConfig, {"partial_rotary_factor": 0.5}),
    "gpt_neox": (GPTNeoXForCausalLM, GPTNeoXConfig, {"rotary_pct": 0.25}),
    "opt": (OPTForCausalLM, OPTConfig, {"ffn_dim": 128, "word_embed_proj_dim": 64, "dropout": 0.0}),
    # BioGPT: BART's attention class as a decoder (no grouped-query heads); Persimmon: partial rotary, q/k norms
    "biogpt": (BioGptForCausalLM, BioGptConfig, {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
                                                 "layerdrop": 0.0}),
    "persimmon": (PersimmonForCausalLM, PersimmonConfig, {"qk_layernorm": True, "partial_rotary_factor": 0.5,
                                                          "hidden_dropout": 0.0, "attention_dropout": 0.0}),
    "gpt_bigcode": (GPTBigCodeForCausalLM, GPTBigCodeConfig, {"n_embd": 64, "n_layer": 2, "n_head": 4,
                                                              "n_positions": 64, "multi_query": True, "attn_pdrop": 0.0,
                                                              "resid_pdrop": 0.0, "embd_pdrop": 0.0}),
    "phi3": (Phi3ForCausalLM, Phi3Config, {"sliding_window": None}),
    "starcoder2": (Starcoder2ForCausalLM, Starcoder2Config, {"sliding_window": None, "residual_dropout": 0.0,
                                                            "embedding_dropout": 0.0}),
    # mixtures of experts: every token through both experts, so that no routing choice can flip between two runs;
    # the experts' plain loop (transformers 5.4's default grouped matmul has no CPU kernel in torch 2.8)
    "mixtral": (MixtralForCausalLM, MixtralConfig, {"num_local_experts": 2, "num_experts_per_tok": 2,
                                                    "experts_implementation": "eager"}),
    "qwen2_moe": (Qwen2MoeForCausalLM, Qwen2MoeConfig, {"num_experts": 2, "num_experts_per_tok": 2,
                                                        "moe_intermediate_size": 32,
                                                        "shared_expert_intermediate_size": 32,
                                                        "experts_implementation": "eager"}),
    "qwen3_moe": (Qwen3MoeForCausalLM, Qwen3MoeConfig, {"num_experts": 2, "num_experts_per_tok": 2,
                                                        "moe_intermediate_size": 32,
                                                        "experts_implementation": "eager"}),
    # attention sinks (initialised near 0, a large share of each row next to scores of about 0); windows of 128
    # (wider than these rows) on every other layer
    "gpt_oss": (GptOssForCausalLM, GptOssConfig, {"num_local_experts": 2, "num_experts_per_tok": 2,
                                                  "experts_implementation": "eager"}),
    # Llama's attention function and call (transformers 5.4, 5.17, 5.25), each with its own blocks around it: q/k
    # norms (OLMo 3, EXAONE 4), layers without rotary (SmolLM3), partial rotary (GLM-4), Granite's scales with
    # experts, projections with bias (Seed-OSS); windows on every layer of these two-layer OLMo 3, Ministral and
    # EXAONE 4 configs (4096 tokens, wider than these rows; 4 in WINDOWED)
    "olmo3": (Olmo3ForCausalLM, Olmo3Config, {}),
    "smollm3": (SmolLM3ForCausalLM, SmolLM3Config, {}),
    "ministral": (MinistralForCausalLM, MinistralConfig, {}),
    # Ministral 3: the queries scaled by position before the call (Llama 4's rule; beta 0.5 over 8 positions here, so
    # these rows' positions take scales other than 1)
    "ministral3": (Ministral3ForCausalLM, Ministral3Config, {"rope_parameters": {
        "rope_type": "default", "rope_theta": 10000.0, "llama_4_scaling_beta": 0.5,
        "original_max_position_embeddings": 8}}),
    "glm4": (Glm4ForCausalLM, Glm4Config, {}),
    "exaone4": (Exaone4ForCausalLM, Exaone4Config, {}),
    "granitemoe": (GraniteMoeForCausalLM, GraniteMoeConfig, {"num_local_experts": 2, "num_experts_per_tok": 2,
                                                            "attention_multiplier": 0.3}),
    "helium": (HeliumForCausalLM, HeliumConfig, {}),
    "seed_oss": (SeedOssForCausalLM, SeedOssConfig, {}),
    # the fortieth session's (Llama's attention function and call in 5.4 and 5.25); the mixtures of experts
    # with two experts, both taken by every token, and their plain loop
    "glm": (GlmForCausalLM, GlmConfig, {}),
    "glm4_moe": (Glm4MoeForCausalLM, Glm4MoeConfig, {"n_routed_experts": 2, "num_experts_per_tok": 2,
                                                     "moe_intermediate_size": 32, "first_k_dense_replace": 1,
                                                     "use_qk_norm": True, "experts_implementation": "eager"}),
    "apertus": (ApertusForCausalLM, ApertusConfig, {}),
    "arcee": (ArceeForCausalLM, ArceeConfig, {}),
    "ernie4_5": (Ernie4_5ForCausalLM, Ernie4_5Config, {}),
    "ernie4_5_moe": (Ernie4_5_MoeForCausalLM, Ernie4_5_MoeConfig, {"moe_num_experts": 2, "moe_k": 2,
                                                                   "moe_intermediate_size": 32,
                                                                   "moe_num_shared_experts": 1,
                                                                   "experts_implementation": "eager"}),
    "hunyuan_v1_dense": (HunYuanDenseV1ForCausalLM, HunYuanDenseV1Config, {}),
    "hunyuan_v1_moe": (HunYuanMoEV1ForCausalLM, HunYuanMoEV1Config, {"num_experts": 2, "moe_topk": 2,
                                                                     "experts_implementation": "eager"}),
    "phimoe": (PhimoeForCausalLM, PhimoeConfig, {"num_local_experts": 2, "num_experts_per_tok": 2,
                                                 "experts_implementation": "eager"}),
    "bitnet": (BitNetForCausalLM, BitNetConfig, {}),
    "granitemoeshared": (GraniteMoeSharedForCausalLM, GraniteMoeSharedConfig, {
        "num_local_experts": 2, "num_experts_per_tok": 2, "shared_intermediate_size": 32,
        "attention_multiplier": 0.3}),
    "jetmoe": (JetMoeForCausalLM, JetMoeConfig, {"num_local_experts": 2, "num_experts_per_tok": 2}),
    "nanochat": (NanoChatForCausalLM, NanoChatConfig, {}),
    "solar_open": (SolarOpenForCausalLM, SolarOpenConfig, {"n_routed_experts": 2, "num_experts_per_tok": 2,
                                                           "moe_intermediate_size": 32,
                                                           "experts_implementation": "eager"}),
    "minimax_m2": (MiniMaxM2ForCausalLM, MiniMaxM2Config, {"num_local_experts": 2, "num_experts_per_tok": 2,
                                                           "experts_implementation": "eager"}),
}
# Multi-head latent attention: queries and keys 24 wide (16 without rotary + 8 with), values 16 wide (the fused
# kernel reads and writes 16 columns of them), one key/value head per query head; "youtu-wide-values" has 32-wide
# values
MLA = dict(num_key_value_heads=4, qk_nope_head_dim=16, qk_rope_head_dim=8, head_dim=8, v_head_dim=16,
           kv_lora_rank=32, q_lora_rank=None)  # head_dim: the rotary width, as these configs set it
MLA_MOE = dict(MLA, n_routed_experts=2, num_experts_per_tok=2, moe_intermediate_size=32, n_group=1, topk_group=1,
               first_k_dense_replace=1, experts_implementation="eager")
ARCHS.update({
    "deepseek_v2": (DeepseekV2ForCausalLM, DeepseekV2Config, MLA_MOE),
    "deepseek_v3": (DeepseekV3ForCausalLM, DeepseekV3Config, MLA_MOE),
    "glm4_moe_lite": (Glm4MoeLiteForCausalLM, Glm4MoeLiteConfig, MLA_MOE),
    # Mistral 4: DeepSeek-V2's latent attention with Llama 4's query scale by position (beta 0.5 over 8 positions
    # here, so that these rows' positions take scales other than 1) and its default yarn rotary over half of
    # head_dim (partial_rotary_factor 0.5: head_dim twice the rotary width)
    "mistral4": (Mistral4ForCausalLM, Mistral4Config, dict(MLA_MOE, q_lora_rank=16, head_dim=16, rope_parameters={
        **Mistral4Config().rope_parameters, "llama_4_scaling_beta": 0.5, "original_max_position_embeddings": 8})),
    # Youtu's default initializer_range is 2 / sqrt(5 * hidden), 0.11 here: weights that large amplify fp32 rounding
    # past the table's tolerance in eager as in a patched model, so the usual 0.02
    "youtu": (YoutuForCausalLM, YoutuConfig, dict(MLA, initializer_range=0.02)),
    "youtu-wide-values": (YoutuForCausalLM, YoutuConfig, dict(MLA, initializer_range=0.02, v_head_dim=32)),
    # two attention calls per layer (num_hidden_layers counts them: twice num_layers); its queries always low-rank
    "longcat_flash": (LongcatFlashForCausalLM, LongcatFlashConfig, dict(
        MLA, q_lora_rank=16, num_layers=2, ffn_hidden_size=128, n_routed_experts=2, moe_topk=2,
        zero_expert_num=1, expert_ffn_hidden_size=32)),
})
# the forty-first session's: Llama's attention function and call (transformers 5.4 and 5.25). Two experts, both
# taken by every token, with their plain loop. The hybrids have one layer of their other kind (linear attention,
# convolutions, Mamba: untouched by the patch, run by transformers' PyTorch fallbacks on the CPU) and one attention
# layer; Falcon-H1 runs both kinds side by side in every layer.
EXPERTS = dict(num_experts=2, num_experts_per_tok=2, experts_implementation="eager")
MAMBA2 = dict(mamba_n_heads=4, mamba_d_head=32, mamba_d_state=8, mamba_n_groups=1)
ARCHS.update({
    "olmoe": (OlmoeForCausalLM, OlmoeConfig, EXPERTS),  # OLMoE
    "dots1": (Dots1ForCausalLM, Dots1Config, dict(
        EXPERTS, n_routed_experts=2, n_shared_experts=1, moe_intermediate_size=32, first_k_dense_replace=1, n_group=1,
        topk_group=1)),
    "exaone_moe": (ExaoneMoeForCausalLM, ExaoneMoeConfig, dict(EXPERTS, moe_intermediate_size=32)),
    "jais2": (Jais2ForCausalLM, Jais2Config, {}),
    "flex_olmo": (FlexOlmoForCausalLM, FlexOlmoConfig, EXPERTS),
    "afmoe": (AfmoeForCausalLM, AfmoeConfig, dict(EXPERTS, moe_intermediate_size=32)),  # Arcee Trinity
    "cwm": (CwmForCausalLM, CwmConfig, {}),  # Code World Model
    "qwen3_next": (Qwen3NextForCausalLM, Qwen3NextConfig, dict(
        EXPERTS, moe_intermediate_size=32, layer_types=["linear_attention", "full_attention"], linear_num_key_heads=2,
        linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16)),
    "lfm2": (Lfm2ForCausalLM, Lfm2Config, {"layer_types": ["conv", "full_attention"]}),
    "lfm2_moe": (Lfm2MoeForCausalLM, Lfm2MoeConfig, dict(EXPERTS, moe_intermediate_size=32,
                                                         layer_types=["conv", "full_attention"])),
    "jamba": (JambaForCausalLM, JambaConfig, dict(
        attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1, num_experts=2,
        num_experts_per_tok=2, mamba_d_state=8, mamba_expand=2, mamba_dt_rank=8, experts_implementation="eager")),
    "bamba": (BambaForCausalLM, BambaConfig, dict(MAMBA2, attn_layer_indices=[1])),
    "falcon_h1": (FalconH1ForCausalLM, FalconH1Config, dict(MAMBA2, mamba_d_ssm=128)),
    "granitemoehybrid": (GraniteMoeHybridForCausalLM, GraniteMoeHybridConfig, dict(
        MAMBA2, layer_types=["mamba", "attention"], num_local_experts=2, num_experts_per_tok=2,
        shared_intermediate_size=32)),
    "nemotron_h": (NemotronHForCausalLM, NemotronHConfig, dict(
        hybrid_override_pattern="M*", mamba_num_heads=4, mamba_head_dim=32, ssm_state_size=8, n_groups=1)),
    "olmo_hybrid": (OlmoHybridForCausalLM, OlmoHybridConfig, {"layer_types": ["linear_attention", "full_attention"]}),
})
HYBRIDS = ("qwen3_next", "lfm2", "lfm2_moe", "jamba", "bamba", "granitemoehybrid", "nemotron_h", "olmo_hybrid")
MAIN = ["llama", "qwen2", "mistral"]
MODES = ["softmax", "fused"]


def decoder(arch, device, seed=0, **overrides):
    cls, config_cls, extra = ARCHS[arch]
    torch.manual_seed(seed)
    return cls(config_cls(**{**TINY, **extra, **overrides})).to(device).eval()


def left_padded(device, lengths=(12, 8, 3), seed=0):
    """``input_ids [B, max(lengths)]`` left padded with id 0, and its 0/1 ``attention_mask``."""
    total = max(lengths)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (len(lengths), total), generator=g)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, total - n:] = 1
    return ids.masked_fill(mask == 0, 0).to(device), mask.to(device)


@pytest.mark.parametrize("arch,mode", [(a, m) for a in ARCHS for m in MODES])
def test_logits_left_padded(device, arch, mode):
    model = decoder(arch, device)
    ids, mask = left_padded(device)
    ref, out = eager_and_patched(model, lambda m: m(ids, attention_mask=mask).logits, mode)
    assert_valid_close(out, ref, mask.bool())


@pytest.mark.parametrize("arch", MAIN)
def test_logits_unpadded_without_mask(device, arch):
    model = decoder(arch, device, seed=1)
    ids, _ = left_padded(device, lengths=(10, 10), seed=1)
    ref, out = eager_and_patched(model, lambda m: m(ids).logits, "auto")
    assert_close(out, ref)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_generate_left_padded(device, arch):
    model = decoder(arch, device, seed=2)
    ids, mask = left_padded(device, lengths=(8, 5, 2), seed=2)

    def gen(m):
        return m.generate(ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False)

    ref, out = eager_and_patched(model, gen, "auto")
    assert ref.shape == (3, 12)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("arch,mode", [("llama", "fused"), ("qwen2", "softmax"), ("mistral", "fused"),
                                       ("gpt_bigcode", "fused"), ("opt", "softmax"), ("phi3", "fused"),
                                       ("mixtral", "softmax"), ("deepseek_v3", "fused"),
                                       ("youtu-wide-values", "fused"), ("qwen3_next", "fused")])
def test_gradients_match_eager(device, arch, mode):
    model = decoder(arch, device, seed=3).train()
    ids, mask = left_padded(device, seed=3)
    ref, out = eager_and_patched(model, logits_gradients(ids, mask, VOCAB, seed=4), mode)
    assert_gradients_close(out, ref, ("k_proj", "c_attn", "qkv_proj", "kv_b_proj"))


@pytest.mark.parametrize("arch", ["gemma2", "vaultgemma"])
@pytest.mark.parametrize("mode", MODES)
def test_soft_cap_reaches_the_kernels(device, monkeypatch, mode, arch):
    # Gemma 2 (and VaultGemma) pass attn_logit_softcapping as `softcap`: the fused kernel gets it (every layer),
    # softmax mode caps the scores before its kernel; both give eager's logits and probabilities, which the cap changes
    model = decoder(arch, device)
    ids, mask = left_padded(device)
    calls = []
    real = hf.attention

    def spy(q, k, v, attention_mask=None, **kwargs):
        calls.append(kwargs["softcap"])
        return real(q, k, v, attention_mask, **kwargs)

    monkeypatch.setattr(hf, "attention", spy)
    run = (lambda m: m(ids, attention_mask=mask).logits) if mode == "fused" else (
        lambda m: m(ids, attention_mask=mask, output_attentions=True).attentions)
    ref, out = eager_and_patched(model, run, mode)
    assert calls == ([1.0, 1.0] if mode == "fused" else [])
    if mode == "fused":
        assert_valid_close(out, ref, mask.bool())
    else:
        for o, r in zip(out, ref):
            assert_probs_close(o, r, mask.bool())
    uncapped = decoder(arch, device, attn_logit_softcapping=None)
    plain = run(uncapped)
    differs = (plain - ref) if mode == "fused" else (plain[0] - ref[0])
    assert differs.abs().max() > 0.1


@pytest.mark.parametrize("mode", MODES)
def test_soft_capped_gradients_match_eager(device, mode):
    # Gemma's gradients reach 100 (its embeddings are scaled by sqrt(hidden)) and an entry near 0 carries the fp32
    # rounding of its tensor's large ones: each gradient within 1e-5 of its largest entry (the fp32 row's rtol),
    # and the cap changes the key projections' gradients, so the soft-cap's backward is what is compared
    model = decoder("gemma2", device, seed=3).train()
    ids, mask = left_padded(device, seed=3)
    ref, out = eager_and_patched(model, logits_gradients(ids, mask, VOCAB, seed=4), mode)
    assert ref.keys() == out.keys() and len(ref) > 10
    for name in ref:
        assert (out[name] - ref[name]).abs().max() <= 1e-5 * ref[name].abs().max(), name
    uncapped = logits_gradients(ids, mask, VOCAB, seed=4)(
        decoder("gemma2", device, seed=3, attn_logit_softcapping=None).train())
    k_proj = [n for n in ref if "k_proj" in n]
    assert k_proj and all((uncapped[n] - ref[n]).abs().max() > 0.1 * ref[n].abs().max() for n in k_proj)


def _gpt_oss_with_sinks(device, seed=0, sinks=(1.5, -1.0, 0.5, 2.0), **overrides):
    """A tiny GPT-OSS whose sinks (one per query head, the same in both layers) take a large share of each row."""
    model = decoder("gpt_oss", device, seed=seed, **overrides)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.sinks.copy_(torch.tensor(sinks))
    return model


@pytest.mark.parametrize("mode", MODES)
def test_attention_sinks_reach_the_kernels(device, monkeypatch, mode):
    # GPT-OSS passes its sinks as `s_aux`: each kernel gets them (every layer), and the patched logits and
    # probabilities are eager's, which the sinks change (the same weights with sinks of -inf: none)
    model = _gpt_oss_with_sinks(device)
    ids, mask = left_padded(device)
    name = "attention" if mode == "fused" else "masked_softmax"
    calls = []
    real = getattr(hf, name)

    def spy(x, *args, **kwargs):
        calls.append(kwargs["sinks"])
        return real(x, *args, **kwargs)

    monkeypatch.setattr(hf, name, spy)
    run = (lambda m: m(ids, attention_mask=mask).logits) if mode == "fused" else (
        lambda m: m(ids, attention_mask=mask, output_attentions=True).attentions)
    ref, out = eager_and_patched(model, run, mode)
    layers = model.model.layers
    assert len(calls) == 2 and all(c is layer.self_attn.sinks for c, layer in zip(calls, layers))
    if mode == "fused":
        assert_valid_close(out, ref, mask.bool())
    else:
        for o, r in zip(out, ref):
            assert_probs_close(o, r, mask.bool())
    plain = run(_gpt_oss_with_sinks(device, sinks=(float("-inf"),) * 4))
    differs = (plain - ref) if mode == "fused" else (plain[0] - ref[0])
    assert differs.abs().max() > 0.1


@pytest.mark.parametrize("mode", MODES)
def test_attention_sinks_gradients_match_eager(device, mode):
    # training GPT-OSS: every gradient, the sinks' among them (a parameter), as eager's
    model = _gpt_oss_with_sinks(device, seed=3).train()
    ids, mask = left_padded(device, seed=3)
    ref, out = eager_and_patched(model, logits_gradients(ids, mask, VOCAB, seed=4), mode)
    sinks = [n for n in ref if n.endswith("self_attn.sinks")]
    assert len(sinks) == 2 and all(ref[n].abs().max() > 1e-3 for n in sinks)
    assert_gradients_close(out, ref)


def test_fused_kernel_gets_grouped_kv_heads_and_compact_mask(device, monkeypatch):
    # GQA reaches the fused kernel as 2 key/value heads for 4 query heads (no repeat), the mask as [B, K] bool.
    calls = spy_fused(monkeypatch, lambda q, k, v, attention_mask=None, **kwargs: (
        q.shape[1], k.shape[1], v.shape[1], attention_mask.dtype, tuple(attention_mask.shape), kwargs))
    model = decoder("llama", device)
    ids, mask = left_padded(device)
    with patched(model, mode="fused"):
        model(ids, attention_mask=mask)
    assert [c[:5] for c in calls] == [(4, 2, 2, torch.bool, (3, 12))] * 2
    assert all(c[5] == {"causal": True, "scale": pytest.approx(16 ** -0.5), "dropout_p": 0.0,
                          "window": None, "softcap": None, "sinks": None, "segments": None,
                          "_any_value_dim": True} for c in calls)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_layer_reaches_the_fused_kernel_causal_with_the_compact_mask(device, monkeypatch, arch):
    # a listed type runs its attention through the interface: one fused call per attention module (one per layer,
    # LongCat-Flash's two, the hybrids' one attention layer of two), causal, the [B, K] mask, queries and keys of one
    # head dim, values of the model's (v_head_dim for multi-head latent attention, unpadded)
    calls = spy_fused(monkeypatch, lambda q, k, v, attention_mask=None, **kwargs: (
        None if attention_mask is None else tuple(attention_mask.shape), kwargs["causal"],
        q.shape[-1] == k.shape[-1], v.shape[-1]))
    model = decoder(arch, device)
    value_dim = getattr(model.config, "v_head_dim", None) or getattr(model.config, "head_dim", None) \
        or model.config.hidden_size // model.config.num_attention_heads
    ids, mask = left_padded(device)
    with patched(model, mode="fused"):
        model(ids, attention_mask=mask)
    modules = [m for m in model.modules() if type(m).__name__ in REGISTRY[model.config.model_type].attention_classes]
    assert len(modules) == (1 if arch in HYBRIDS else model.config.num_hidden_layers)
    assert calls == [((3, 12), True, True, value_dim)] * len(modules)


# Sliding windows: (arch, config overrides). Qwen2/Qwen3 put the window on the layers below max_window_layers only.
WINDOWED = [
    ("mistral", {"sliding_window": 4}),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1}),
    ("qwen3", {"use_sliding_window": True, "sliding_window": 5, "max_window_layers": 0}),
    ("phi3", {"sliding_window": 4}),
    ("starcoder2", {"sliding_window": 5}),
    ("mixtral", {"sliding_window": 4}),
    ("gemma2", {"sliding_window": 4}),  # the first of its two layers
    ("gemma3_text", {"sliding_window": 5}),
    ("vaultgemma", {"sliding_window": 4}),
    ("cohere2", {"sliding_window": 4}),
    ("qwen2_moe", {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1}),
    ("qwen3_moe", {"use_sliding_window": True, "sliding_window": 4}),
    ("gpt_oss", {"sliding_window": 4}),  # the first of its two layers
    ("olmo3", {"sliding_window": 4}),
    ("ministral", {"sliding_window": 4}),
    ("ministral3", {"sliding_window": 4}),
    ("exaone4", {"sliding_window": 4}),
    ("exaone_moe", {"sliding_window": 4}),
    ("afmoe", {"sliding_window": 4}),
    ("cwm", {"sliding_window": 4}),  # its second layer
    ("dots1", {"sliding_window": 4, "max_window_layers": 0}),
]


@pytest.mark.parametrize("arch,overrides", WINDOWED)
@pytest.mark.parametrize("mode", MODES)
def test_sliding_window_logits_match_eager(device, arch, overrides, mode):
    # 12-token rows, left padded, against a window of 4 or 5: the window cuts keys off every long row
    model = decoder(arch, device, **overrides)
    ids, mask = left_padded(device)
    ref, out = eager_and_patched(model, lambda m: m(ids, attention_mask=mask).logits, mode)
    assert_valid_close(out, ref, mask.bool())
    # and the window does change the model here (a test that could not tell the window from plain causality
    # would prove nothing): the same weights with a window wider than the rows
    wide = decoder(arch, device, **{**overrides, "sliding_window": 64})(ids, attention_mask=mask).logits
    assert not torch.allclose(wide[mask.bool()], ref[mask.bool()], atol=1e-3)


@pytest.mark.parametrize("arch,overrides", WINDOWED[:2])
def test_sliding_window_generate_matches_eager(device, monkeypatch, arch, overrides):
    # prompts of 8, 5 and 2 tokens and 6 new ones: the steps cross the window with the dynamic cache
    model = decoder(arch, device, seed=2, **overrides)
    ids, mask = left_padded(device, lengths=(8, 5, 2), seed=2)

    def gen(m):
        return m.generate(ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False)

    calls = spy_fused_windows(monkeypatch)
    ref, out = eager_and_patched(model, gen, "auto")
    assert ref.shape == (3, 14)
    assert torch.equal(out, ref)
    # the 8-token prefill of a windowed layer: the compact mask and the window, for the kernel; every decode step the
    # compact mask or none, and no window, as the sliding cache hands a windowed layer one window of keys (4)
    assert (8, 8, (3, 8), 4) in calls
    steps = [c for c in calls if c[0] == 1]
    assert len(steps) == 5 * model.config.num_hidden_layers
    assert all(shape is None or len(shape) == 2 for _, _, shape, _ in steps)
    assert any(keys == 4 for _, keys, _, _ in steps)
    assert all(window is None for _, keys, _, window in steps if keys <= 4)


@pytest.mark.parametrize("arch,overrides", WINDOWED[:2])
@pytest.mark.parametrize("mode", MODES)
def test_sliding_window_static_cache_generate_matches_eager(device, arch, overrides, mode):
    # A static cache: generate() builds each step's masks before the forward. Mistral (one mask for all layers)
    # then passes that mask through the mask function again; its sliding layers' keys start past position 0.
    model = decoder(arch, device, seed=2, **overrides)
    ids, mask = left_padded(device, lengths=(8, 5, 2), seed=2)

    def gen(m):
        return m.generate(ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                          cache_implementation="static")

    ref, out = eager_and_patched(model, gen, mode)
    assert torch.equal(out, ref)


def test_a_compact_mask_handed_back_is_returned_as_it_is():
    fn, pad = window4_and_padding()
    compact = hf._mask_function(2, 1, 4, q_offset=8, kv_offset=5, mask_function=fn, attention_mask=pad)
    assert torch.equal(compact, pad[:, 5:].bool())
    # the same keys: the same tensor back (sliced again, its columns 5.. would be past its end)
    again = hf._mask_function(2, 1, 4, q_offset=8, kv_offset=5, mask_function=fn, attention_mask=compact)
    assert again is compact
    # other keys: read as a tokenizer's mask (the part past its end is not attended)
    other = hf._mask_function(2, 1, 4, q_offset=3, kv_offset=0, mask_function=fn, attention_mask=compact)
    assert other is not compact and torch.equal(other, compact)
    # keys past position 0 on a static cache's step (transformers turns the skip off there): HF's 4D mask
    out = hf._mask_function(2, 1, 4, q_offset=8, kv_offset=5, mask_function=fn, attention_mask=pad,
                            allow_is_causal_skip=False)
    assert out.shape == (2, 1, 1, 4) and torch.equal(out[:, 0, 0], pad[:, 5:].bool())


@pytest.mark.parametrize("window,keys_seen", [(4, 4), (64, 12)])
def test_sliding_window_probabilities_match_eager(device, window, keys_seen):
    # output_attentions=True: "auto" runs softmax mode and returns the probabilities, which hold the window (a row
    # of the last, unpadded sequence keeps min(window, 12) keys in its last query)
    model = decoder("mistral", device, sliding_window=window)
    ids, mask = left_padded(device)
    ref, out = eager_and_patched(model, lambda m: m(ids, attention_mask=mask, output_attentions=True).attentions)
    assert len(out) == len(ref) == 2
    for o, r in zip(out, ref):
        assert_probs_close(o, r, mask.bool())
        assert int((o[0, :, -1] > 0).sum(-1).max()) == keys_seen


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_sliding_window_continuation_past_the_window_matches_eager(device, mode, cache):
    # a prompt of 8, then 3 tokens at once on its cache (a chat's next turn): the sliding layers' keys start past
    # position 0 and number more than the window (3 kept + 3 new against 4): the compact mask and the kernel's window
    # on the dynamic cache, HF's 4D mask on the static one; through a compiled forward too
    from transformers import DynamicCache, StaticCache

    model = decoder("mistral", device, seed=5, sliding_window=4)
    ids, mask = left_padded(device, lengths=(11, 9, 6), seed=5)
    first, rest = ids[:, :8], ids[:, 8:]

    def run(m, compiled=False):
        if cache == "dynamic":
            kv = DynamicCache(config=m.config)
        else:
            kv = StaticCache(config=m.config, max_cache_len=16)
        m(first, attention_mask=mask[:, :8], past_key_values=kv, use_cache=True)
        forward = torch.compile(m, backend="aot_eager") if compiled else m
        return forward(rest, attention_mask=mask, past_key_values=kv, use_cache=True).logits

    ref, out = eager_and_patched(model, run, mode)
    assert_valid_close(out, ref, mask[:, 8:].bool())
    if cache == "static" and mode == "fused":
        ref, out = eager_and_patched(model, lambda m: run(m, compiled=True), mode)
        assert_valid_close(out, ref, mask[:, 8:].bool())


def test_sliding_window_gradients_match_eager(device):
    model = decoder("mistral", device, seed=3, sliding_window=4).train()
    ids, mask = left_padded(device, seed=3)
    ref, out = eager_and_patched(model, logits_gradients(ids, mask, VOCAB, seed=4), "fused")
    assert_gradients_close(out, ref, ("k_proj",))


@pytest.mark.parametrize("mode", MODES)
def test_window_longer_than_the_keys_keeps_the_compact_mask(device, monkeypatch, mode):
    # Mistral's default window (4096) cuts nothing off a 12-token batch: the kernels get the [B, K] mask and add
    # causality themselves. A window of 11 on the same batch: the fused kernel gets the [B, K] mask and the window,
    # the softmax kernel (no window of its own) a 4D mask with it
    fused = mode == "fused"
    calls = spy_fused_windows(monkeypatch) if fused else spy_kernel_masks(monkeypatch, mode)
    ids, mask = left_padded(device)
    for window, expected, kernel_window in ((4096, (3, 12), None), (12, (3, 12), None),
                                            (11, (3, 12) if fused else (3, 1, 12, 12), 11)):
        model = decoder("mistral", device, sliding_window=window)
        calls.clear()
        ref, out = eager_and_patched(model, lambda m: m(ids, attention_mask=mask).logits, mode)
        assert_valid_close(out, ref, mask.bool())
        assert calls == [(12, 12, expected) + ((kernel_window,) if fused else ())] * 2, window


def test_sliding_window_of_recognises_only_the_plain_window():
    from transformers import masking_utils as mu

    assert hf._sliding_window_of(mu.sliding_window_causal_mask_function(7)) == 7
    assert hf._sliding_window_of(mu.causal_mask_function) is None
    assert hf._sliding_window_of(mu.and_masks(mu.causal_mask_function, mu.sliding_window_overlay(7))) is None
    extra = mu.and_masks(mu.sliding_window_overlay(7), mu.causal_mask_function, lambda b, h, q, kv: kv >= 0)
    assert hf._sliding_window_of(extra) is None
    assert hf._sliding_window_of(mu.or_masks(mu.sliding_window_overlay(7), mu.causal_mask_function)) is None
    assert hf._sliding_window_of(lambda b, h, q, kv: kv <= q) is None


def window4_and_padding():
    """transformers' mask function of a 4-token sliding window, and a [2, 9] 0/1 mask whose second row pads the first
    six positions."""
    from transformers import masking_utils as mu

    pad = torch.ones(2, 9, dtype=torch.long)
    pad[1, :6] = 0
    return mu.sliding_window_causal_mask_function(4), pad


def test_mask_function_answers_a_window_by_the_number_of_keys():
    fn, pad = window4_and_padding()
    # a decode step with the 4 keys a sliding cache keeps (positions 5..8): the window cuts nothing, compact mask
    out = hf._mask_function(2, 1, 4, q_offset=8, kv_offset=5, mask_function=fn, attention_mask=pad)
    assert torch.equal(out, pad[:, 5:].bool())
    assert getattr(out, hf._COMPACT_TAG) == (5, 4, 4)
    # 9 keys: the window cuts keys off; the compact mask still, tagged with the window for the attention function
    out = hf._mask_function(2, 9, 9, q_offset=0, kv_offset=0, mask_function=fn, attention_mask=pad)
    assert torch.equal(out, pad.bool()) and getattr(out, hf._COMPACT_TAG) == (0, 9, 4)
    # no mask from the model: none while the window cuts nothing; past it an all-true one, to carry the window
    assert hf._mask_function(2, 4, 4, mask_function=fn) is None
    out = hf._mask_function(2, 9, 9, mask_function=fn)
    assert out.dtype == torch.bool and bool(out.all()) and out.shape == (2, 9)
    assert getattr(out, hf._COMPACT_TAG) == (0, 9, 4)
    # a decode step without padding over more keys than the window (a cache that keeps every key): the mask stays,
    # window and all, where one without a window would be dropped
    out = hf._mask_function(2, 1, 9, q_offset=8, kv_offset=0, mask_function=fn, attention_mask=torch.ones(2, 9))
    assert out is not None and getattr(out, hf._COMPACT_TAG) == (0, 9, 4)
    from transformers import masking_utils as mu
    plain = hf._mask_function(2, 1, 9, q_offset=8, kv_offset=0, mask_function=mu.causal_mask_function,
                              attention_mask=torch.ones(2, 9))
    assert plain is None
    # the attention function reads the window from the tag, where the model passes none of its own (Qwen2-MoE)
    assert hf._window_for(out, {}) == 4 and hf._window_for(pad, {"sliding_window": 6}) == 6
    assert hf._window_for(None, {}) is None


@pytest.mark.parametrize("mode", MODES)
def test_attention_function_applies_a_window_given_a_compact_mask(device, mode):
    # a direct call: 2D mask, 8 keys, window 3 -> the same as the explicit 4D mask
    module = torch.nn.Module().eval()
    module.is_causal = True
    setattr(module, hf.MODE_ATTR, mode)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, n, 16, generator=g).to(device) for n in (5, 8, 8))
    pad = torch.ones(2, 8, dtype=torch.bool, device=device)
    pad[0, :2] = False
    out = hf.attention_forward(module, q, k, v, pad, scaling=0.25, sliding_window=3)[0]
    i, j = torch.arange(5, device=device)[:, None] + 3, torch.arange(8, device=device)[None]
    explicit = ((j <= i) & (j > i - 3))[None, None] & pad[:, None, None, :]
    ref = hf.attention_forward(module, q, k, v, explicit, scaling=0.25)[0]
    assert_close(out, ref)
    # a window that cuts nothing leaves the call as it was
    same = hf.attention_forward(module, q, k, v, pad, scaling=0.25, sliding_window=8)[0]
    assert_close(same, hf.attention_forward(module, q, k, v, pad, scaling=0.25)[0])
    # without causality the window is bidirectional (ModernBERT's): |j - (i + K - Q)| < 3
    module.is_causal = False
    out = hf.attention_forward(module, q, k, v, pad, scaling=0.25, sliding_window=3)[0]
    explicit = ((j - i).abs() < 3)[None, None] & pad[:, None, None, :]
    assert_close(out, hf.attention_forward(module, q, k, v, explicit, scaling=0.25)[0])


def test_sliding_window_by_name_matches_eager(device):
    # attn_implementation at construction (as from_pretrained(..., attn_implementation=NAME) does), no patch_model
    ids, mask = left_padded(device)
    ref = decoder("mistral", device, sliding_window=4)(ids, attention_mask=mask).logits
    model = decoder("mistral", device, sliding_window=4, attn_implementation=hf.NAME)
    assert_valid_close(model(ids, attention_mask=mask).logits, ref, mask.bool())


@pytest.mark.parametrize("mode", MODES)
def test_gemma3_bidirectional_text_model_matches_eager(device, mode):
    # EmbeddingGemma's setting: Gemma 3 builds bidirectional masks itself (windowed ones on its sliding layers), which
    # reach the kernels as HF's 4D masks with non-causal calls; padded, unpadded and without a mask, the last hidden
    # states equal eager's, and differ from the causal model's (the flag is what is tested)
    model = decoder("gemma3_text", device, use_bidirectional_attention=True, sliding_window=6).model
    ids, mask = left_padded(device)
    ref, out = eager_and_patched(model, lambda m: m(ids, attention_mask=mask).last_hidden_state, mode)
    assert_valid_close(out, ref, mask.bool())
    causal = decoder("gemma3_text", device, sliding_window=6).model(ids, attention_mask=mask).last_hidden_state
    assert (causal - ref)[mask.bool()].abs().max() > 1e-2
    full, _ = left_padded(device, lengths=(8, 8), seed=1)  # nothing padded
    for kw in (dict(attention_mask=torch.ones_like(full)), {}):
        ref, out = eager_and_patched(model, lambda m: m(full, **kw).last_hidden_state, mode)
        assert_close(out, ref)


def test_gemma_bidirectional_flag_refused_when_patching_and_by_name(device):
    # use_bidirectional_attention turns Gemma's attention modules non-causal while the model still builds a causal
    # mask: eager then stays causal and sdpa without padding does not (checked here), so the patch refuses the model
    model = decoder("gemma", device, use_bidirectional_attention=True)
    ids, mask = left_padded(device, lengths=(10, 10))
    eager = model(ids, attention_mask=mask).logits
    model.set_attn_implementation("sdpa")
    assert not torch.allclose(model(ids, attention_mask=mask).logits, eager, atol=1e-3)
    model.set_attn_implementation("eager")
    config = model.config
    with pytest.raises(ValueError, match="gemma model: config.use_bidirectional_attention=True makes"):
        patch_model(model)
    assert model.config is config and config._attn_implementation == "eager"
    assert not any(hf.MODE_ATTR in m.__dict__ for m in model.modules())
    model.set_attn_implementation(hf.NAME)
    with pytest.raises(ValueError, match="cannot run this gemma model: config.use_bidirectional_attention"):
        model(ids, attention_mask=mask)


def test_qwen2_window_on_no_layer_is_accepted(device):
    # use_sliding_window with max_window_layers >= num_hidden_layers: every layer is full attention.
    model = decoder("qwen2", device, use_sliding_window=True, sliding_window=4, max_window_layers=2)
    assert model.config.sliding_window == 4 and "sliding_attention" not in model.config.layer_types
    ids, mask = left_padded(device)
    ref, out = eager_and_patched(model, lambda m: m(ids, attention_mask=mask).logits, "fused")
    assert_valid_close(out, ref, mask.bool())


def test_unlisted_decoder_is_refused_and_untouched(device):
    torch.manual_seed(0)
    model = OlmoForCausalLM(OlmoConfig(**TINY)).eval()  # OLMo 1: Llama's attention, but not in the list
    config = model.config
    with pytest.raises(ValueError, match=r"'olmo'.*supported model_types: \[.*'llama', .*'mistral', .*'qwen2'"):
        patch_model(model)
    assert model.config is config and config._attn_implementation == "eager"


def test_unpatch_restores_bit_identical(device):
    model = decoder("qwen2", device)
    ids, mask = left_padded(device)
    before = model(ids, attention_mask=mask).logits
    patch_model(model, mode="fused")
    model(ids, attention_mask=mask)
    unpatch_model(model)
    assert torch.equal(model(ids, attention_mask=mask).logits, before)


@pytest.mark.parametrize("mode", ["auto", "fused", "softmax"])
def test_autocast_bf16_matches_sdpa(device, mode):
    # under bf16 autocast a Llama layer hands attention fp32 queries and keys (the rotary embedding multiplies by fp32
    # cos / sin) and bf16 values; eager and SDPA run, and so must every mode (the fused kernel in bf16, as SDPA)
    model = decoder("llama", device)
    ids, mask = left_padded(device)
    valid = mask.bool()
    dev = torch.device(device).type

    def run(m):
        with torch.autocast(device_type=dev, dtype=torch.bfloat16):
            return m(ids, attention_mask=mask).logits.float()

    model.set_attn_implementation("sdpa")
    ref = run(model)
    model.set_attn_implementation("eager")
    with patched(model, mode=mode):
        out = run(model)
    assert torch.isfinite(out[valid]).all()
    torch.testing.assert_close(out[valid], ref[valid], atol=0.05, rtol=0.05)


@pytest.mark.parametrize("value_dim", [8, 24, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_values_of_another_head_dim_through_the_fused_kernel(device, value_dim, dtype):
    # the attention interface's entry hands the kernels values of their own width (no padding) and returns
    # [B, Q, H, Dv]: against the fp64 reference, output and the gradients of q, k and v, GQA and left padding; 24 wide
    # queries and keys as the MLA tests'
    from test_attention import _assert_matches_reference, _pad_mask

    g = torch.Generator().manual_seed(value_dim)
    q = torch.randn(3, 4, 9, 24, generator=g).to(device, dtype).requires_grad_(True)
    k = torch.randn(3, 2, 13, 24, generator=g).to(device, dtype).requires_grad_(True)
    v = torch.randn(3, 2, 13, value_dim, generator=g).to(device, dtype).requires_grad_(True)
    mask = _pad_mask([13, 7, 2], 13, "left", device)
    module = torch.nn.Module()  # an attention module patched in fused mode, causal
    module.is_causal = True
    module.__dict__[hf.MODE_ATTR] = "fused"
    out, probs = hf._attention_forward(module, q, k, v, mask, scaling=24 ** -0.5)
    assert probs is None and out.shape == (3, 9, 4, value_dim)
    _assert_matches_reference(out.transpose(1, 2), q, k, v, mask, True, scale=24 ** -0.5)
