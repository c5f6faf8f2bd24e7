"""Two GPUs (issue 7): kernels launch on their tensors' device; a device_map-split patched model equals one GPU.

Skipped unless CUDA has at least two devices (marker ``gpu``; plus an explicit device-count condition).
"""
import copy

import pytest
import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

from hf_masked_softmax import attention, masked_softmax, patched
from hf_masked_softmax.reference import attention_reference, masked_softmax_reference
from tolerances import assert_close

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices"),
]


def _left_padding_mask(lengths, K, device):
    return (torch.arange(K, device=device)[None, :] >= K - torch.tensor(lengths, device=device)[:, None]).long()


def test_kernels_run_on_the_tensors_device_not_the_current_one():
    torch.cuda.set_device(0)
    dev = torch.device("cuda:1")
    scores = torch.randn(2, 3, 17, 40, device=dev, dtype=torch.float16)
    mask = _left_padding_mask([40, 23], 40, dev)
    y = masked_softmax(scores, mask, causal=True, scale=0.3)
    assert y.device == dev
    ref = masked_softmax_reference(scores, mask, causal=True, scale=0.3, compute_dtype=torch.float64,
                                   out_dtype=torch.float64)
    assert_close(y, ref, torch.float16)

    q = torch.randn(2, 4, 33, 64, device=dev, dtype=torch.float16, requires_grad=True)
    k = torch.randn(2, 2, 40, 64, device=dev, dtype=torch.float16, requires_grad=True)
    v = torch.randn(2, 2, 40, 64, device=dev, dtype=torch.float16, requires_grad=True)
    out = attention(q, k, v, mask, causal=True)
    assert out.device == dev and torch.cuda.current_device() == 0
    ref = attention_reference(q.double(), k.double(), v.double(), mask, causal=True, compute_dtype=torch.float64)
    assert_close(out, ref, torch.float16, scale=4)
    out.float().sum().backward()
    assert q.grad.device == dev and torch.isfinite(q.grad).all()


def _split_map(n_layers, prefix, head_modules, tail_modules):
    """Half the layers on each GPU; embeddings on GPU 0, final norm and heads on GPU 1."""
    device_map = {m: 0 for m in head_modules}
    device_map.update({f"{prefix}.{i}": (0 if i < n_layers // 2 else 1) for i in range(n_layers)})
    device_map.update({m: 1 for m in tail_modules})
    return device_map


@pytest.mark.parametrize("mode", ["softmax", "fused"])
def test_device_map_split_gpt2_equals_single_gpu(mode):
    from accelerate import dispatch_model

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=4, attn_implementation="eager")).half().eval()
    ids = torch.randint(0, 50257, (3, 256))
    mask = _left_padding_mask([256, 130, 17], 256, "cpu")
    single = copy.deepcopy(model).to("cuda:0")
    with torch.no_grad(), patched(single, mode=mode):
        ref = single(ids.to("cuda:0"), attention_mask=mask.to("cuda:0")).logits.float().cpu()
    device_map = _split_map(4, "transformer.h", ["transformer.wte", "transformer.wpe", "transformer.drop"],
                            ["transformer.ln_f", "lm_head"])
    split = dispatch_model(model, device_map=device_map)
    with torch.no_grad(), patched(split, mode=mode):
        out = split(ids.to("cuda:0"), attention_mask=mask.to("cuda:0")).logits.float().cpu()
    valid = mask.bool()
    torch.testing.assert_close(out[valid], ref[valid], atol=0, rtol=0)


@pytest.mark.parametrize("mode", ["softmax", "fused"])
def test_device_map_split_bert_equals_single_gpu(mode):
    from accelerate import dispatch_model

    torch.manual_seed(0)
    model = BertModel(BertConfig(num_hidden_layers=4, attn_implementation="eager")).half().eval()
    ids = torch.randint(0, 30522, (3, 128))
    mask = _left_padding_mask([128, 70, 9], 128, "cpu").flip(-1)  # right padding
    single = copy.deepcopy(model).to("cuda:0")
    with torch.no_grad(), patched(single, mode=mode):
        ref = single(ids.to("cuda:0"), attention_mask=mask.to("cuda:0")).last_hidden_state.float().cpu()
    device_map = _split_map(4, "encoder.layer", ["embeddings"], ["pooler"])
    split = dispatch_model(model, device_map=device_map)
    with torch.no_grad(), patched(split, mode=mode):
        out = split(ids.to("cuda:0"), attention_mask=mask.to("cuda:0")).last_hidden_state.float().cpu()
    valid = mask.bool()
    torch.testing.assert_close(out[valid], ref[valid], atol=0, rtol=0)
