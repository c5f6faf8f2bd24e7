"""Decoder-only language models whose attention layers are Llama's: one spec shape, a list of model types.

These models hand the AttentionInterface plain scaled dot-product attention: rotary embeddings and any q/k norms are
applied before the call, grouped-query attention arrives as key/value tensors with fewer heads
(``num_key_value_groups = num_attention_heads // num_key_value_heads``; GPT-BigCode's multi-query attention has
one), ``module.is_causal`` is True and ``scaling`` is passed explicitly (``head_dim ** -0.5``, Granite's
``attention_multiplier``, OPT's 1.0). Their eager attention functions are Llama's, or Llama's without the key/value
repeat for the types without grouped-query attention (checked for transformers 5.4, 5.17 and 5.25). The mask comes
from ``create_causal_mask``, which the backend's mask function answers with the compact ``[B, K]`` padding mask.

Gemma's and Gemma 2's ``use_bidirectional_attention=True`` is refused (see ``hf.BIDIRECTIONAL_CONFLICT``); Gemma 3's
text model builds a bidirectional mask to go with it and is accepted. Gemma 2 and VaultGemma also pass
``softcap``, their ``attn_logit_softcapping``, which both modes apply to the scaled scores; GPT-OSS passes its
attention sinks as ``s_aux``, which both kernels add to every row's softmax. Sliding windows
(Mistral's default ``sliding_window=4096``, Phi-3's 2047, Qwen2/Qwen3 with ``use_sliding_window=True``) come with
their own mask factory, which the backend's mask function recognises: calls with no more keys than the window get the
compact mask (the window cuts nothing off there), longer ones HF's 4D mask with the window in it (see ``hf.py``).

Only model types listed in ``SPECS`` are accepted, each covered by tests/test_patch_llama.py: an unknown type may
route the same interface through code that changes the semantics (score biases, sinks, per-layer windows), so it is
refused rather than guessed at. To add a type, append a line below and a case to that test.
"""
from __future__ import annotations

from .. import hf
from .spec import ModelSpec


def _checker(model_type: str, bidirectional: bool):
    def check(config) -> None:
        if getattr(config, "use_bidirectional_attention", False) and not bidirectional:
            raise ValueError(f"cannot patch this {model_type} model: {hf.BIDIRECTIONAL_CONFLICT}")

    return check


def decoder_spec(model_type: str, attention_class: str, bidirectional: bool = False) -> ModelSpec:
    """A ``ModelSpec`` for a Llama-style decoder whose attention module class is ``attention_class``;
    ``bidirectional``: the type builds a mask that matches ``use_bidirectional_attention=True`` (else refused)."""
    return ModelSpec(model_type=model_type, attention_classes=(attention_class,),
                     check=_checker(model_type, bidirectional))


SPECS = (
    decoder_spec("llama", "LlamaAttention"),  # also SmolLM/SmolLM2, TinyLlama, Llama 2/3.x (RoPE scaling is pre-call)
    decoder_spec("mistral", "MistralAttention"),  # a window on every layer when sliding_window is set (7B v0.1)
    decoder_spec("qwen2", "Qwen2Attention"),  # a window on the "sliding_attention" layers with use_sliding_window
    decoder_spec("qwen3", "Qwen3Attention"),
    decoder_spec("granite", "GraniteAttention"),  # scaling = config.attention_multiplier
    decoder_spec("olmo2", "Olmo2Attention"),
    decoder_spec("gemma", "GemmaAttention"),  # Gemma 1
    # Gemma 2: soft-capped scores (`softcap`, both kernels apply it) and a window on every other layer
    decoder_spec("gemma2", "Gemma2Attention"),
    # Gemma 3's text model (Gemma3ForCausalLM; the multimodal "gemma3" is not listed: its image tokens attend
    # bidirectionally): windows on five layers of six, q/k norms before the call, no soft-cap passed. With
    # use_bidirectional_attention (EmbeddingGemma) it builds bidirectional masks itself, which the backend takes as 4D
    decoder_spec("gemma3_text", "Gemma3Attention", bidirectional=True),
    decoder_spec("vaultgemma", "VaultGemmaAttention"),  # Gemma 2's attention (soft-cap, windows), trained privately
    decoder_spec("cohere2", "Cohere2Attention"),  # Command R7B: windows on three layers of four, rotary on those only
    # GPT-OSS: attention sinks (`s_aux`, one learned logit per query head; both kernels take them, with gradients)
    # and a 128-token window on every other layer; mixture-of-experts feed-forward
    decoder_spec("gpt_oss", "GptOssAttention"),
    decoder_spec("cohere", "CohereAttention"),  # Command-R (optional q/k norms before the call)
    decoder_spec("stablelm", "StableLmAttention"),  # partial rotary, optional q/k layer norms before the call
    decoder_spec("phi", "PhiAttention"),  # Phi-1, 1.5 and 2 (partial rotary before the call)
    decoder_spec("gpt_neox", "GPTNeoXAttention"),  # Pythia, GPT-NeoX-20B (partial rotary before the call)
    decoder_spec("opt", "OPTAttention"),  # queries scaled by the projection: scaling=1.0
    decoder_spec("biogpt", "BioGptAttention"),  # BART's attention class as a decoder (the forty-fifth session)
    decoder_spec("persimmon", "PersimmonAttention"),  # partial rotary, optional q/k layer norms before the call
    decoder_spec("gpt_bigcode", "GPTBigCodeAttention"),  # StarCoder, SantaCoder: multi-query, one key/value head
    decoder_spec("phi3", "Phi3Attention"),  # Phi-3 / 3.5 (fused qkv projection; 4k checkpoints slide 2047 tokens)
    decoder_spec("starcoder2", "Starcoder2Attention"),  # projections with bias; a window when sliding_window is set
    decoder_spec("mixtral", "MixtralAttention"),  # mixture-of-experts feed-forward; Mistral's attention
    decoder_spec("qwen2_moe", "Qwen2MoeAttention"),
    decoder_spec("qwen3_moe", "Qwen3MoeAttention"),  # q/k RMS norms before the call, as Qwen3
    decoder_spec("olmo3", "Olmo3Attention"),  # OLMo 3: q/k norms before the call, windows on three layers of four
    decoder_spec("smollm3", "SmolLM3Attention"),  # SmolLM3: no rotary on every fourth layer (before the call)
    decoder_spec("ministral", "MinistralAttention"),  # Ministral: windows on the "sliding_attention" layers
    # Ministral 3 (the forty-fourth session; Llama's attention function in 5.4, 5.17 and 5.25): Mistral's window on
    # every layer when sliding_window is set, queries scaled by position (Llama 4's rule) before the call; 5.25 also
    # passes position_ids, which the call does not read
    decoder_spec("ministral3", "Ministral3Attention"),
    decoder_spec("glm4", "Glm4Attention"),  # GLM-4: partial rotary, extra norms around the blocks
    decoder_spec("exaone4", "Exaone4Attention"),  # EXAONE 4: q/k norms, windows on three layers of four
    decoder_spec("granitemoe", "GraniteMoeAttention"),  # Granite's scaling with a mixture of experts
    decoder_spec("helium", "HeliumAttention"),
    decoder_spec("seed_oss", "SeedOssAttention"),  # Seed-OSS: projections with bias
    # the fortieth session's: Llama's attention function and call in the sources of transformers 5.4 and 5.25 (5.17:
    # their tests passed on a GPU with it)
    decoder_spec("glm", "GlmAttention"),  # GLM-4-9B (0414's predecessor): partial rotary
    decoder_spec("glm4_moe", "Glm4MoeAttention"),  # GLM-4.5 / 4.6: optional q/k norms, experts after dense layers
    decoder_spec("apertus", "ApertusAttention"),  # Apertus: q/k norms, xIELU MLP
    decoder_spec("arcee", "ArceeAttention"),  # Arcee AFM: ReLU-squared MLP
    decoder_spec("ernie4_5", "Ernie4_5Attention"),  # ERNIE 4.5 (interleaved rotary before the call)
    decoder_spec("ernie4_5_moe", "Ernie4_5_MoeAttention"),
    decoder_spec("hunyuan_v1_dense", "HunYuanDenseV1Attention"),  # Hunyuan: q/k norms after rotary
    decoder_spec("hunyuan_v1_moe", "HunYuanMoEV1Attention"),
    decoder_spec("phimoe", "PhimoeAttention"),  # Phi-3.5-MoE
    decoder_spec("bitnet", "BitNetAttention"),  # BitNet b1.58: a norm on the attention output, after the call
    decoder_spec("granitemoeshared", "GraniteMoeSharedAttention"),  # Granite's scales, shared experts
    decoder_spec("jetmoe", "JetMoeAttention"),  # JetMoE: query and output projections by a mixture of experts
    decoder_spec("nanochat", "NanoChatAttention"),  # nanochat: q/k norms, no bias
    decoder_spec("solar_open", "SolarOpenAttention"),
    decoder_spec("minimax_m2", "MiniMaxM2Attention"),  # MiniMax-M2: q/k norms over all heads
    # multi-head latent attention: queries and keys of qk_nope_head_dim + qk_rope_head_dim (192 in DeepSeek-V3),
    # values of v_head_dim (128), one head of each per query head; the fused kernel takes them as they are
    decoder_spec("deepseek_v2", "DeepseekV2Attention"),  # DeepSeek-V2 / V2-Lite
    decoder_spec("deepseek_v3", "DeepseekV3Attention"),  # DeepSeek-V3 / R1, Kimi K2 (their latents cached, 5.25)
    decoder_spec("glm4_moe_lite", "Glm4MoeLiteAttention"),  # GLM-4.7-Flash
    # Mistral 4 (the forty-fourth session; Llama's attention function in 5.4, 5.17, 5.25): queries scaled by position
    # before the call (Llama 4's rule); 5.25 also passes position_ids, which the call does not read
    decoder_spec("mistral4", "Mistral4Attention"),
    decoder_spec("youtu", "YoutuAttention"),  # Youtu-LLM: dense, MLA
    decoder_spec("longcat_flash", "LongcatFlashMLA"),  # LongCat-Flash: two MLA calls per layer
    # the forty-first session's, also Llama's attention function and call in 5.4 and 5.25: mixtures of experts and
    # windowed decoders, then hybrids, whose other layers (linear attention, short convolutions, Mamba) take the raw
    # 2D mask, not the mask function's, and are left as they are
    decoder_spec("olmoe", "OlmoeAttention"),  # OLMoE
    decoder_spec("dots1", "Dots1Attention"),  # dots.llm1: windows on the layers from max_window_layers on
    decoder_spec("exaone_moe", "ExaoneMoeAttention"),  # EXAONE 4's windows with experts
    decoder_spec("jais2", "Jais2Attention"),  # Jais 2
    decoder_spec("flex_olmo", "FlexOlmoAttention"),  # FlexOlmo
    decoder_spec("afmoe", "AfmoeAttention"),  # Arcee Trinity: windows, a gate on the attention output after the call
    decoder_spec("cwm", "CwmAttention"),  # Code World Model: windows on three layers of four
    decoder_spec("qwen3_next", "Qwen3NextAttention"),  # Qwen3-Next: gated attention between gated DeltaNet layers
    decoder_spec("lfm2", "Lfm2Attention"),  # LFM2: attention between short-convolution layers
    decoder_spec("lfm2_moe", "Lfm2MoeAttention"),
    decoder_spec("jamba", "JambaAttention"),  # Jamba: attention between Mamba layers
    decoder_spec("bamba", "BambaAttention"),  # Bamba: attention between Mamba-2 layers
    decoder_spec("falcon_h1", "FalconH1Attention"),  # Falcon-H1: attention and Mamba-2 side by side in every layer
    decoder_spec("granitemoehybrid", "GraniteMoeHybridAttention"),  # Granite 4.0 (H): Mamba-2 and attention layers
    decoder_spec("nemotron_h", "NemotronHAttention"),  # Nemotron-H: Mamba-2, attention and MLP layers
    decoder_spec("olmo_hybrid", "OlmoHybridAttention"),  # OLMo hybrid: gated DeltaNet and attention layers
)
