"""evals/tune_attention.py --variants on tiny shapes with the timing stubbed (on the kernels' device: the interpreter on
CPU, or CUDA): every variant runs, each is recorded under its label, the kernels' outputs do not depend on the variant beyond rounding, and the
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


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where the kernels run (conftest: the interpreter on CPU)


def _tiny_inputs(name, D, dtype, seed=0):
    return bench_attention.make_inputs(name, D, dtype, seed, device=DEVICE)


@pytest.fixture
def stubbed(monkeypatch):
    """Tiny shapes; graph_ms runs the callable once, keeps the forward launcher's output and returns 0.5 ms."""
    outputs = []

    def fake_graph_ms(fn):
        out = fn()
        if isinstance(out, tuple) and len(out) == 2:  # attention._forward: (out, lse)
            outputs.append(out[0].detach().double().clone())
        return 0.5

    monkeypatch.setattr(tune_attention, "make_inputs", _tiny_inputs)
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
    default = attn_mod._fwd_config(64, 40, torch.float16, False, True)  # the shape's default setting on this device
    assert ("fwd", f"fold=False merge=False cfg={default} maxnreg=None") in labels
    assert [v for k, v in labels if k == "bwd"] == ["fold=True", "fold=False"]
    assert all(r["ms"] == 0.5 for r in payload["records"] if r["kind"] != "sdpa")
    # every forward variant computes the same attention (fp16 outputs; other block sizes sum in another order)
    assert len(stubbed) == len(fwd)
    for o in stubbed[1:]:
        torch.testing.assert_close(o, stubbed[0], atol=2e-3, rtol=0)


def test_length_sweep_rows_and_fit(stubbed, monkeypatch, tmp_path):
    # --length-sweep: one row per fixed length (right padding; the full length without a mask), one at the shape's
    # own lengths, SDPA's; the line through the fixed-length rows; each timed forward computes what its label says
    from hf_masked_softmax.reference import attention_reference

    calls = {"n": 0}
    outputs = []

    def linear_ms(fn):  # the i-th timing returns 0.1 + 0.01 i ms: linear in the lengths 8, 16, 24, 32
        calls["n"] += 1
        out = fn()
        if isinstance(out, tuple):
            outputs.append(out[0].detach().double())
        return 0.1 + 0.01 * calls["n"]

    monkeypatch.setattr(tune_attention, "graph_ms", linear_ms)
    tune_attention.main(["--length-sweep", "--lengths", "8,16,24,33", "--shapes", "bert", "--dtype", "float16",
                         "--out", str(tmp_path)])
    with open(tmp_path / "tune_attention.json") as f:
        payload = json.load(f)
    labels = [(r["variant"], r["mean_len"]) for r in payload["records"]]
    assert labels[:4] == [("all 8", 8.0), ("all 16", 16.0), ("all 24", 24.0), ("all (no mask)", 33.0)]
    assert [v for v, _ in labels[4:]] == ["own lengths", "sdpa default, no mask"]
    summary = payload["summaries"][0]
    assert summary["per_key_ms"] > 0 and summary["fixed_ms"] < 0.11  # 8, 16, 24, 33 keys: nearly the 0.1 + i/800 line
    inp = _tiny_inputs("bert", 64, torch.float16)
    keep = torch.zeros(inp["B"], inp["K"], dtype=torch.bool, device=DEVICE)
    keep[:, :8] = True
    ref = attention_reference(inp["q"].double(), inp["k"].double(), inp["v"].double(), keep)
    torch.testing.assert_close(outputs[0], ref, atol=2e-3, rtol=0)
    ref = attention_reference(inp["q"].double(), inp["k"].double(), inp["v"].double(), None)
    torch.testing.assert_close(outputs[3], ref, atol=2e-3, rtol=0)


def test_variants_and_length_sweep_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exc:
        tune_attention.main(["--variants", "--length-sweep"])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err


@pytest.mark.parametrize("lengths", ["0", "34"])
def test_length_sweep_rejects_lengths_outside_the_shape(stubbed, lengths, tmp_path):
    with pytest.raises(SystemExit, match="outside 1..33"):
        tune_attention.main(["--length-sweep", "--lengths", lengths, "--shapes", "bert", "--out", str(tmp_path)])


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
