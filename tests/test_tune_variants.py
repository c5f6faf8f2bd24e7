"""evals/tune_attention.py --variants on CPU (kernels in the interpreter, tiny shapes, timing stubbed): every variant
runs, each is recorded under its label, the kernels' outputs do not depend on the variant beyond rounding, and the
module's switches are restored afterwards, also when a timing fails."""
import importlib
import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "evals"))

import bench_attention  # noqa: E402
import tune_attention  # noqa: E402

attn_mod = importlib.import_module("hf_masked_softmax.attention")

TINY = {
    "gpt2-pad-right": (1, 2, 40, 40, True, (20, 40), "right"),
    "bert": (2, 2, 33, 33, False, (16, 33), "right"),
    "decode": (2, 2, 1, 70, True, (30, 70), "left"),
}


def _cpu_inputs(name, D, dtype, seed=0):
    return bench_attention.make_inputs(name, D, dtype, seed, device="cpu")


@pytest.fixture
def stubbed(monkeypatch):
    """Tiny CPU shapes; graph_ms runs the callable once, keeps the forward launcher's output and returns 0.5 ms."""
    outputs = []

    def fake_graph_ms(fn):
        out = fn()
        if isinstance(out, tuple) and len(out) == 2:  # attention._forward: (out, lse)
            outputs.append(out[0].detach().double().clone())
        return 0.5

    monkeypatch.setattr(tune_attention, "make_inputs", _cpu_inputs)
    monkeypatch.setattr(tune_attention, "graph_ms", fake_graph_ms)
    monkeypatch.setattr(tune_attention.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(tune_attention.benchutil, "environment", lambda: {"gpu": "stub"})
    for name, shape in TINY.items():
        monkeypatch.setitem(bench_attention.SHAPES, name, shape)
    return outputs


def _state():
    return (attn_mod._fold, attn_mod.FWD_MERGE_TAIL, attn_mod.FWD_MAXNREG, attn_mod._fwd_config,
            attn_mod._num_splits)


def test_variants_run_record_and_restore(stubbed, tmp_path):
    before = _state()
    tune_attention.main(["--variants", "--shapes", "gpt2-pad-right", "--fwd-configs", "16/32/4/1",
                         "--maxnreg", "0,128", "--splits", "1,2", "--dtype", "float16", "--out", str(tmp_path)])
    assert _state() == before
    with open(tmp_path / "tune_attention.json") as f:
        payload = json.load(f)
    labels = [(r["kind"], r["variant"]) for r in payload["records"]]
    # forward: 2 settings x 3 caps with everything on, then each switch off at the default setting; splits 2 x 2
    fwd = [v for k, v in labels if k == "fwd"]
    assert len(fwd) == 2 * 3 + 1 + 2 + 2 * 2
    assert ("fwd", "fold=True merge=True cfg=(16, 32, 4, 1) maxnreg=128") in labels
    assert ("fwd", "fold=False merge=False cfg=(16, 16, 4, 1) maxnreg=None") in labels
    assert [v for k, v in labels if k == "bwd"] == ["fold=True", "fold=False"]
    assert all(r["ms"] == 0.5 for r in payload["records"] if r["kind"] != "sdpa")
    # every forward variant computes the same attention (fp16 outputs; other block sizes sum in another order)
    assert len(stubbed) == len(fwd)
    for o in stubbed[1:]:
        torch.testing.assert_close(o, stubbed[0], atol=2e-3, rtol=0)


def test_variants_restore_switches_after_a_failure(stubbed, monkeypatch, tmp_path):
    before = _state()
    calls = {"n": 0}

    def failing(fn):
        calls["n"] += 1
        if calls["n"] == 4:  # in the middle of the variants, with switches changed
            raise RuntimeError("boom")
        fn()
        return 0.5

    monkeypatch.setattr(tune_attention, "graph_ms", failing)
    with pytest.raises(RuntimeError, match="boom"):
        tune_attention.main(["--variants", "--shapes", "gpt2-pad-right", "--maxnreg", "0", "--dtype", "float16",
                             "--out", str(tmp_path)])
    assert _state() == before


@pytest.mark.parametrize("flag,value", [("--fwd-configs", "64/64/4"), ("--fwd-configs", "a/b/c/d"),
                                        ("--maxnreg", "12x"), ("--splits", "1,two")])
def test_variants_reject_malformed_lists(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        tune_attention.main(["--variants", flag, value])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err
