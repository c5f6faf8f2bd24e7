"""patch_model / unpatch_model / patched: errors, isolation between instances, exact undo, from_pretrained."""
import re

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, GPT2LMHeadModel, OlmoConfig, OlmoForCausalLM

from hf_masked_softmax import hf, patch_model, patched, unpatch_model
from hf_masked_softmax.patches import NAME as PATCH_NAME, REGISTRY
from patch_helpers import assert_valid_close, checkpointing, gpt2_config, padded_batch, spy_kernel_calls


def lm(device, config=None, seed=0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config or gpt2_config()).to(device).eval()


def test_registered_under_one_name():
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    assert PATCH_NAME == hf.NAME == "hf_masked_softmax"
    assert ALL_ATTENTION_FUNCTIONS[hf.NAME] is hf.attention_forward
    assert ALL_MASK_ATTENTION_FUNCTIONS[hf.NAME] is hf.mask_function
    assert sorted(REGISTRY) == [
        "afmoe", "albert", "apertus", "arcee", "audio-spectrogram-transformer", "bamba", "bart", "bert",
        "bert-generation", "biogpt", "bitnet", "blenderbot", "blenderbot-small", "camembert", "clip", "clip_text_model",
        "clip_vision_model", "cohere", "cohere2", "cwm", "data2vec-audio", "data2vec-text", "deepseek_v2",
        "deepseek_v3", "deit", "dinov2", "dinov2_with_registers", "distilbert", "dots1", "electra", "ernie", "ernie4_5",
        "ernie4_5_moe", "esm", "eurobert", "exaone4", "exaone_moe", "falcon_h1", "flex_olmo", "gemma", "gemma2",
        "gemma3_text", "glm", "glm4", "glm4_moe", "glm4_moe_lite", "gpt2", "gpt_bigcode", "gpt_neox", "gpt_oss",
        "granite", "granitemoe", "granitemoehybrid", "granitemoeshared", "helium", "hubert", "hunyuan_v1_dense",
        "hunyuan_v1_moe", "ijepa", "jais2", "jamba", "jetmoe", "layoutlm", "lfm2", "lfm2_moe", "llama", "longcat_flash",
        "m2m_100", "marian", "mbart", "metaclip_2", "metaclip_2_text_model", "metaclip_2_vision_model", "minimax_m2",
        "ministral", "ministral3", "mistral", "mistral4", "mixtral", "mobilebert", "modernbert", "mt5", "nanochat",
        "nemotron_h", "olmo2", "olmo3", "olmo_hybrid", "olmoe", "opt", "owlvit", "owlvit_text_model",
        "owlvit_vision_model", "pegasus", "persimmon", "phi", "phi3", "phimoe", "plbart", "qwen2", "qwen2_moe", "qwen3",
        "qwen3_moe", "qwen3_next", "roberta", "roberta-prelayernorm", "roc_bert", "seed_oss", "sew", "siglip",
        "siglip2", "siglip2_text_model", "siglip2_vision_model", "siglip_text_model", "siglip_vision_model", "smollm3",
        "solar_open", "stablelm", "starcoder2", "switch_transformers", "t5", "umt5", "unispeech", "unispeech-sat",
        "vaultgemma", "videomae", "vit", "vit_mae", "vit_msn", "vivit", "wav2vec2", "whisper", "xlm-roberta",
        "xlm-roberta-xl", "xmod", "yolos", "youtu",
    ]


def test_the_backend_knows_the_registry_from_import_so_no_call_assigns_a_global():
    # The by-name model-type check reads the registry from a module global. Filled lazily on a first call, that
    # assignment happened inside a torch.compile trace, and torch 2.8's Dynamo fails to replay it (frozenset).
    import subprocess
    import sys

    code = ("import hf_masked_softmax.hf as hf; from hf_masked_softmax.patches import REGISTRY; "
            "assert hf._SUPPORTED_TYPES == frozenset(REGISTRY), sorted(hf._SUPPORTED_TYPES)")
    subprocess.run([sys.executable, "-c", code], check=True)


class _NoSync(torch.Tensor):
    """A mask whose value may not be read on the host: on a GPU that read would wait for all the queued work."""

    def __bool__(self):
        raise AssertionError("the mask function read a mask value on the host")

    def item(self):
        raise AssertionError("the mask function read a mask value on the host")

    def tolist(self):
        raise AssertionError("the mask function read a mask value on the host")


@pytest.mark.parametrize("kv_length, padded", [(6, False), (6, True), (8, False)])
def test_the_mask_function_never_reads_the_mask_on_the_host(kv_length, padded):
    mask = torch.ones(2, 6, dtype=torch.long)
    if padded:
        mask[1, :2] = 0
    out = hf._mask_function(2, kv_length, kv_length, q_offset=0, kv_offset=0,
                            attention_mask=mask.as_subclass(_NoSync))
    # the compact mask, padding or not (a mask shorter than the keys is padded with masked keys)
    expected = torch.nn.functional.pad(mask.bool(), (0, kv_length - 6), value=False)
    assert out.shape == (2, kv_length) and out.dtype == torch.bool
    assert torch.equal(out.as_subclass(torch.Tensor), expected)
    assert hf._mask_function(2, kv_length, kv_length, q_offset=0, kv_offset=0, attention_mask=None) is None


@pytest.mark.parametrize("check", [True, False])
def test_a_decode_step_asks_whether_its_mask_pads_anything(check, monkeypatch):
    # One query on a cache (bottom-right: the last query is the last key): a mask that pads nothing is dropped when
    # DECODE_PAD_CHECK is on, as HF's sdpa mask function does; kept as the compact mask otherwise, or when it pads.
    monkeypatch.setattr(hf, "DECODE_PAD_CHECK", check)
    full = torch.ones(2, 6, dtype=torch.long)
    out = hf._mask_function(2, 1, 6, q_offset=5, kv_offset=0, attention_mask=full)
    assert out is None if check else torch.equal(out, full.bool())
    padded = full.clone()
    padded[0, 0] = 0
    out = hf._mask_function(2, 1, 6, q_offset=5, kv_offset=0, attention_mask=padded)
    assert torch.equal(out, padded.bool())
    # a mask shorter than the keys pads the rest: kept
    out = hf._mask_function(2, 1, 7, q_offset=6, kv_offset=0, attention_mask=full)
    assert torch.equal(out, torch.nn.functional.pad(full.bool(), (0, 1), value=False))


@pytest.mark.parametrize("form", ["full", "padded", "none"])
def test_a_static_cache_step_gets_the_compact_mask_up_to_its_position(form):
    # One query at position 5 of a 10-key static cache: with bottom-right causality it sees all 10 keys, so the
    # compact mask drops keys 6..9 itself (also from a tokenizer mask that covers them, or from no mask at all), and
    # equals the row of HF's 4D mask
    from transformers import masking_utils

    pad = None if form == "none" else torch.ones(2, 10, dtype=torch.long)
    if form == "padded":
        pad[1, :3] = 0
    out = hf._mask_function(2, 1, 10, q_offset=5, kv_offset=0, attention_mask=pad, device="cpu")
    want = masking_utils.sdpa_mask(batch_size=2, q_length=1, kv_length=10, q_offset=5, kv_offset=0,
                                   attention_mask=None if pad is None else pad.bool(), allow_is_causal_skip=False,
                                   device="cpu")
    assert out.dim() == 2 and out.dtype == torch.bool
    assert torch.equal(out, want.expand(2, 1, 1, 10)[:, 0, 0])
    # a window, or keys that start past position 0, keep HF's 4D mask
    assert hf._mask_function(2, 1, 10, q_offset=5, kv_offset=2, attention_mask=pad, device="cpu").dim() == 4


def unlisted(**kw):
    """A tiny OLMo (the first one): a type outside the registry that goes through the attention interface in every
    supported transformers."""
    return OlmoForCausalLM(OlmoConfig(num_hidden_layers=1, hidden_size=16, intermediate_size=32,
                                      num_attention_heads=2, num_key_value_heads=2, vocab_size=32,
                                      max_position_embeddings=16, pad_token_id=0, bos_token_id=1, eos_token_id=2, **kw))


def test_unsupported_model_is_refused_and_untouched(device):
    torch.manual_seed(0)
    model = unlisted(attn_implementation="eager")
    config = model.config
    before = {k: v.clone() for k, v in model.state_dict().items()}
    supported = re.escape(str(sorted(REGISTRY)))
    with pytest.raises(ValueError, match=r"'olmo'; supported model_types: " + supported):
        patch_model(model)
    assert model.config is config and config._attn_implementation == "eager"
    assert all(m.__dict__.get("config", config) is config for m in model.modules())
    assert not any(hf.MODE_ATTR in m.__dict__ for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="not patched"):
        unpatch_model(model)


def test_bad_arguments(device):
    model = lm(device)
    with pytest.raises(ValueError, match="mode must be one of"):
        patch_model(model, mode="flash")
    with pytest.raises(ValueError, match="mode must be one of"):
        with patched(model, mode="fast"):
            pass
    with pytest.raises(ValueError, match="expected a transformers PreTrainedModel"):
        patch_model(torch.nn.Linear(2, 2))
    assert model.config._attn_implementation == "eager"


@pytest.mark.parametrize("bad", [None, "gpt2", 3])
def test_non_modules_get_a_value_error(bad):
    for call in (lambda: patch_model(bad), lambda: unpatch_model(bad)):
        with pytest.raises(ValueError, match="expected a transformers model.*supported model_types"):
            call()
    with pytest.raises(ValueError, match="expected a transformers model"):
        with patched(bad):
            pass


def test_config_asking_for_attentions_is_refused_and_untouched(device):
    # transformers allows config.output_attentions with eager attention only (the patched model could not be saved)
    model = lm(device, gpt2_config(output_attentions=True))
    config = model.config
    with pytest.raises(ValueError, match="output_attentions is True.*pass output_attentions=True to the forward"):
        patch_model(model)
    assert model.config is config and config._attn_implementation == "eager"
    assert not any(hf.MODE_ATTR in m.__dict__ for m in model.modules())
    config.output_attentions = False
    with patched(model, mode="softmax"):
        assert model(padded_batch(device)[0], output_attentions=True).attentions is not None


def test_patching_again_after_set_attn_implementation_runs_the_kernels(device):
    from unittest import mock

    model = lm(device)
    ids, mask = padded_batch(device, side="left")
    ref = model(ids, attention_mask=mask, output_attentions=True)
    patch_model(model)
    model.set_attn_implementation("sdpa")  # something switched the backend of the patched model
    assert model.config._attn_implementation == "sdpa"
    with mock.patch.object(hf, "masked_softmax", wraps=hf.masked_softmax) as spy:
        with patched(model, mode="softmax"):
            assert model.config._attn_implementation == hf.NAME
            out = model(ids, attention_mask=mask, output_attentions=True)
    assert spy.call_count == model.config.n_layer
    assert_valid_close(out.logits, ref.logits, mask.bool())
    model.set_attn_implementation("sdpa")
    patch_model(model, mode="fused")
    assert model.config._attn_implementation == hf.NAME
    unpatch_model(model)
    assert model.config._attn_implementation == "eager"


@pytest.mark.parametrize("patched_before", [False, True])
def test_unpatching_inside_patched_leaves_the_model_unpatched_and_patchable(patched_before, device):
    model = lm(device)
    ids, mask = padded_batch(device)
    ref = model(ids, attention_mask=mask).logits
    if patched_before:
        patch_model(model, mode="softmax")
    with patched(model, mode="fused"):
        unpatch_model(model)
    assert model.config._attn_implementation == "eager"
    assert not any(hf.MODE_ATTR in m.__dict__ for m in model.modules())
    assert torch.equal(model(ids, attention_mask=mask).logits, ref)
    patch_model(model)  # patchable again
    unpatch_model(model)


@pytest.mark.parametrize("mode", ["auto", "softmax", "fused"])
def test_float64_model_runs_the_reference_in_float64(mode, device):
    model = lm(device).double()
    ids, mask = padded_batch(device, side="right")  # (the loss scores valid positions only)
    labels = ids.masked_fill(mask == 0, -100)
    ref = model(ids, attention_mask=mask, labels=labels)
    ref_grads = torch.autograd.grad(ref.loss, list(model.parameters()), allow_unused=True)
    with patched(model, mode=mode):
        out = model(ids, attention_mask=mask, labels=labels, output_attentions=mode == "softmax")
        grads = torch.autograd.grad(out.loss, list(model.parameters()), allow_unused=True)
    assert out.logits.dtype == torch.float64
    valid = mask.bool()
    torch.testing.assert_close(out.logits[valid], ref.logits[valid], rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        if r is not None:
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)
    if mode == "softmax":
        assert out.attentions[0].dtype == torch.float64


def test_attn_implementation_name_refuses_unsupported_model_types(device):
    model = unlisted(attn_implementation=hf.NAME).to(device)
    supported = re.escape(str(sorted(REGISTRY)))
    with pytest.raises(ValueError, match=r"does not run model_type 'olmo'; supported model_types: " + supported):
        model(torch.tensor([[3, 4, 5]], device=device), attention_mask=torch.ones(1, 3, device=device))


def _softmax_patched_lm(device):
    """A GPT-2 patched in softmax mode, its original config, a left-padded batch and its logits before patching."""
    model = lm(device)
    config = model.config
    ids, mask = padded_batch(device, side="left")
    before = model(ids, attention_mask=mask).logits
    patch_model(model, mode="softmax")
    return model, config, ids, mask, before


def test_unpatch_restores_bit_identical(device):
    model, config, ids, mask, before = _softmax_patched_lm(device)
    assert model.config is not config and model.config._attn_implementation == hf.NAME
    patched_logits = model(ids, attention_mask=mask).logits
    unpatch_model(model)
    after = model(ids, attention_mask=mask).logits
    assert torch.equal(before, after)
    assert not torch.equal(before, patched_logits)  # the patch did change the computation
    assert model.config is config and config._attn_implementation == "eager"
    assert all(m.__dict__.get("config", config) is config for m in model.modules())
    assert not any(hf.MODE_ATTR in m.__dict__ for m in model.modules())


def test_settings_changed_while_patched_survive_unpatch(device):
    model = lm(device)
    with patched(model):
        model.config.use_cache = False
    assert model.config.use_cache is False and model.config._attn_implementation == "eager"


def test_isolation_between_instances_sharing_a_config(device):
    config = gpt2_config()
    a, b = lm(device, config, seed=0), lm(device, config, seed=1)
    assert a.config is b.config
    ids, mask = padded_batch(device)
    b_before = b(ids, attention_mask=mask).logits
    patch_model(a, mode="softmax")
    assert b.config._attn_implementation == "eager" and config._attn_implementation == "eager"
    assert torch.equal(b(ids, attention_mask=mask).logits, b_before)
    assert not any(hf.MODE_ATTR in m.__dict__ for m in b.modules())
    patch_model(b, mode="fused")
    assert {m.__dict__[hf.MODE_ATTR] for m in a.modules() if hf.MODE_ATTR in m.__dict__} == {"softmax"}
    unpatch_model(a)
    assert b.config._attn_implementation == hf.NAME
    unpatch_model(b)
    assert a.config is b.config is config


@pytest.mark.parametrize("how", ["deepcopy", "torch.save"])
def test_a_copy_of_a_patched_model_is_patched_on_its_own(how, device, monkeypatch, tmp_path):
    # copy.deepcopy (EMA or teacher models) and whole-model torch.save / torch.load: the copy runs the kernels, and
    # unpatching either model leaves the other as it was.
    import copy

    calls = spy_kernel_calls(monkeypatch, "fused")
    model = lm(device, gpt2_config(reorder_and_upcast_attn=True))
    ids, mask = padded_batch(device, side="left")
    ref = model(ids, attention_mask=mask).logits
    patch_model(model, mode="fused")
    if how == "deepcopy":
        twin = copy.deepcopy(model)
    else:
        torch.save(model, tmp_path / "model.pt")
        twin = torch.load(tmp_path / "model.pt", weights_only=False)
    unpatch_model(model)
    assert torch.equal(model(ids, attention_mask=mask).logits, ref) and not calls
    out = twin(ids, attention_mask=mask).logits
    assert len(calls) == 2 and twin.config._attn_implementation == hf.NAME  # one call per layer
    assert_valid_close(out, ref, mask.bool())
    unpatch_model(twin)
    assert torch.equal(twin(ids, attention_mask=mask).logits, ref) and len(calls) == 2
    with pytest.raises(ValueError, match="not patched"):
        unpatch_model(model)


def test_repatch_changes_mode_and_patched_restores_it(device):
    model = lm(device)
    patch_model(model, mode="softmax")
    config = model.config
    patch_model(model, mode="fused")
    assert model.config is config
    attn = model.transformer.h[0].attn
    assert getattr(attn, hf.MODE_ATTR) == "fused"
    with patched(model, mode="softmax"):
        assert getattr(attn, hf.MODE_ATTR) == "softmax"
    assert getattr(attn, hf.MODE_ATTR) == "fused" and model.config._attn_implementation == hf.NAME
    unpatch_model(model)
    with patched(model):
        assert getattr(attn, hf.MODE_ATTR) == "auto"
    assert model.config._attn_implementation == "eager"


def test_from_pretrained_with_attn_implementation(device, tmp_path):
    model = lm(device)
    model.save_pretrained(tmp_path)
    ids, mask = padded_batch(device, side="left")
    ref = model(ids, attention_mask=mask).logits
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=hf.NAME).to(device).eval()
    assert loaded.config._attn_implementation == hf.NAME
    out = loaded(ids, attention_mask=mask).logits
    assert_valid_close(out, ref, mask.bool())
    loaded_eager = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    assert loaded_eager.config._attn_implementation == "eager"


def test_save_while_patched_keeps_checkpoint_clean(device, tmp_path):
    model = lm(device)
    with patched(model):
        model.save_pretrained(tmp_path)
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    assert "hf_masked_softmax" not in (tmp_path / "config.json").read_text()
    assert config.model_type == "gpt2"


def test_softmax_mode_frees_the_scores_before_the_value_matmul(monkeypatch):
    # peak memory: the [B, H, Q, K] scores must be gone when P @ V runs (HF eager holds one such tensor there too)
    import weakref

    from hf_masked_softmax import hf as hf_mod

    refs = []
    real_softmax = hf_mod.masked_softmax

    def spy_softmax(scores, *args, **kwargs):
        refs.append(weakref.ref(scores))
        return real_softmax(scores, *args, **kwargs)

    alive_at_pv = []
    real_matmul = torch.matmul

    def spy_matmul(a, b, *args, **kwargs):
        if refs:  # a matmul after the softmax: P @ V (the one layer's QK^T came before)
            alive_at_pv.append(refs[-1]() is not None)
        return real_matmul(a, b, *args, **kwargs)

    monkeypatch.setattr(hf_mod, "masked_softmax", spy_softmax)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=50, n_positions=16)
    model = transformers.GPT2Model(config).eval()
    patch_model(model, mode="softmax")
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        monkeypatch.setattr(torch, "matmul", spy_matmul)
        model(ids, attention_mask=torch.ones(2, 7, dtype=torch.long))
        monkeypatch.setattr(torch, "matmul", real_matmul)
    assert refs, "the softmax path was not taken"
    assert alive_at_pv and not any(alive_at_pv)


def test_changes_made_elsewhere_to_a_shared_config_survive_unpatch(device):
    # unpatching one model carries back what was set on its own copy of the config, and nothing else: another model
    # sharing the original keeps its changes
    config = gpt2_config()
    a, b = lm(device, config, seed=0), lm(device, config, seed=1)
    patch_model(a)
    b.config.use_cache = False  # b is not patched: this is the shared original
    b.config.output_hidden_states = True
    a.config.my_setting = 3  # set on a's copy while patched
    unpatch_model(a)
    assert a.config is b.config is config
    assert config.use_cache is False and config.output_hidden_states is True and config.my_setting == 3
    ids, mask = padded_batch(device)
    assert b(ids, attention_mask=mask).hidden_states is not None


def test_patching_part_of_a_patched_model_is_refused(device):
    model, config, ids, mask, before = _softmax_patched_lm(device)
    with pytest.raises(ValueError, match="part of a model already patched"):
        patch_model(model.transformer, mode="fused")
    with pytest.raises(ValueError, match="part of a model already patched"):
        with patched(model.transformer):
            pass
    with pytest.raises(ValueError, match="part of a model patched by patch_model, not patched itself"):
        unpatch_model(model.transformer)
    assert {m.__dict__[hf.MODE_ATTR] for m in model.modules() if hf.MODE_ATTR in m.__dict__} == {"softmax"}
    unpatch_model(model)
    patch_model(model.transformer)  # the other way round: the inner patch first
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel\.transformer \(GPT2Model\) is already patched"):
        patch_model(model)
    unpatch_model(model.transformer)
    assert torch.equal(model(ids, attention_mask=mask).logits, before)
    assert all(m.__dict__.get("config", config) is config for m in model.modules())
    assert not any(k.startswith("_hf_masked_softmax") for m in model.modules() for k in m.__dict__)


def _checkpointed_gpt2(device, reentrant):
    """A GPT-2 in training with attention dropout 0.3 and gradient checkpointing, and a left-padded batch."""
    model = lm(device, gpt2_config(attn_pdrop=0.3)).train()
    checkpointing(model, True, reentrant)
    return (model, *padded_batch(device, side="left"))


def _param_grads(model, loss_fn):
    model.zero_grad()
    torch.manual_seed(1)
    loss_fn().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(out, ref):
    assert ref.keys() == out.keys() and len(ref) > 10
    for name in ref:
        torch.testing.assert_close(out[name], ref[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("reentrant", [False, True])
def test_auto_mode_with_probabilities_under_gradient_checkpointing(reentrant, device):
    # GPT-2 passes output_attentions to its attention only through the output collector, which the backward pass's
    # recompute runs without: the recompute must repeat the forward's choice (softmax mode), saving the same tensors
    # and drawing the same dropout, or checkpointing fails (non-reentrant) or the gradients are wrong (reentrant)
    model, ids, mask = _checkpointed_gpt2(device, reentrant)

    def loss():
        out = model(ids, attention_mask=mask, output_attentions=True)
        assert len(out.attentions) == 2 and out.attentions[0] is not None
        return out.logits[mask.bool()].pow(2).mean()

    ref = _param_grads(model, loss)
    with patched(model):
        out = _param_grads(model, loss)
    _assert_same_grads(out, ref)
    assert not any(k.startswith("_hf_masked_softmax") for m in model.modules() for k in m.__dict__)


@pytest.mark.parametrize("reentrant", [False, True])
def test_auto_mode_checkpointing_with_two_forwards_before_one_backward(reentrant, device):
    # one forward asks for probabilities (softmax mode), the next does not (fused): each recompute repeats its own
    # forward's choice, found by that forward's mask (reentrant checkpointing hands over detached copies of it)
    model, ids, mask = _checkpointed_gpt2(device, reentrant)

    def loss():
        first = model(ids, attention_mask=mask, output_attentions=True).logits[mask.bool()].pow(2).mean()
        return first + model(ids, attention_mask=mask).logits[mask.bool()].pow(2).mean()

    with patched(model):
        checkpointing(model, False)
        ref = _param_grads(model, loss)  # the same patched model without checkpointing: same kernels, same dropout
        checkpointing(model, True, reentrant)
        out = _param_grads(model, loss)
    _assert_same_grads(out, ref)


@pytest.mark.skipif(not hasattr(transformers.PreTrainedModel, "activation_checkpointing_enable"),
                    reason="activation checkpointing's options are new in transformers 5.25")
def test_activation_checkpointing_of_every_other_layer_keeps_the_gradients(device):
    # transformers 5.25's every_n_layers: the checkpointed layers recompute their forward (the same dropout), the
    # others keep their activations. (Its `offload` needs pinned host memory, so CUDA, where the image has 5.17.)
    model, ids, mask = _checkpointed_gpt2(device, False)

    def loss():
        return model(ids, attention_mask=mask).logits[mask.bool()].pow(2).mean()

    with patched(model, mode="fused"):
        checkpointing(model, False)
        ref = _param_grads(model, loss)
        checkpointing(model, True, every_n_layers=2)
        out = _param_grads(model, loss)
    _assert_same_grads(out, ref)
