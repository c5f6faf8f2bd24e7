"""``python -m hf_masked_softmax.check``: the self-test passes on good kernels, fails on a broken one, and uses the
test-suite's tolerance table."""
import json

import pytest
import torch

import hf_masked_softmax
from hf_masked_softmax import check
from tolerances import TOLERANCES


def test_check_uses_the_test_suite_tolerances():
    assert check.TOLERANCES == TOLERANCES


def test_check_quick_passes_and_writes_json(tmp_path, capsys):
    path = tmp_path / "check.json"
    assert check.main(["--quick", "--json", str(path)]) == 0
    printed = capsys.readouterr().out
    if not torch.cuda.is_available():
        assert "interpreter" in printed
    data = json.loads(path.read_text())
    kernels = {r["kernel"] for r in data["checks"]}
    assert kernels == {"masked_softmax", "attention"} and all(r["ok"] for r in data["checks"])


def test_check_reports_a_broken_kernel(monkeypatch, capsys):
    real = hf_masked_softmax.masked_softmax

    def off_by_a_bit(scores, mask=None, **kw):
        return real(scores, mask, **kw) * 1.01  # 1% too large: far outside every tolerance

    monkeypatch.setattr(hf_masked_softmax, "masked_softmax", off_by_a_bit)
    monkeypatch.setattr(check, "check_attention", lambda *a: None)
    assert check.main(["--quick", "--no-bench"]) == 1
    assert "FAIL  masked_softmax" in capsys.readouterr().out


def _fuzz_rows(path):
    return [r for r in json.loads(path.read_text())["checks"] if "#" in r["kernel"]]


def test_fuzz_runs_random_cases_of_both_kernels(tmp_path, capsys):
    path = tmp_path / "fuzz.json"
    assert check.main(["--quick", "--no-bench", "--fuzz", "6", "--seed", "3", "--json", str(path)]) == 0
    rows = _fuzz_rows(path)
    assert [r["kernel"] for r in rows] == [f"{'attention' if i % 2 == 0 else 'masked_softmax'} #{i}" for i in range(6)]
    assert all(r["ok"] and r["case"] and 0 <= r["error_over_tolerance"] <= 1 for r in rows)
    assert "6/6 random cases passed" in capsys.readouterr().out


def test_the_json_holds_every_check_done_before_a_run_is_cut_short(tmp_path, monkeypatch):
    path = tmp_path / "cut.json"
    real = check._fuzz_softmax

    def time_limit(*args):
        raise KeyboardInterrupt  # what a timeout's signal amounts to, here in the second random case

    monkeypatch.setattr(check, "_fuzz_softmax", time_limit)
    with pytest.raises(KeyboardInterrupt):  # --quick: the full fixed checks took 241 s on a cold H200 (compiles)
        check.main(["--quick", "--no-bench", "--fuzz", "4", "--seed", "1", "--json", str(path)])
    data = json.loads(path.read_text())
    assert data["complete"] is False
    rows = [r for r in data["checks"] if "#" in r["kernel"]]
    assert [r["kernel"] for r in rows] == ["attention #0"] and rows[0]["ok"]
    assert {r["kernel"] for r in data["checks"]} == {"masked_softmax", "attention", "attention #0"}
    monkeypatch.setattr(check, "_fuzz_softmax", real)
    assert check.main(["--no-bench", "--fuzz-case", "0", "--json", str(path)]) == 0
    assert json.loads(path.read_text())["complete"] is True


def test_fuzz_case_reruns_one_case_exactly(tmp_path):
    full, one = tmp_path / "full.json", tmp_path / "one.json"
    assert check.main(["--quick", "--no-bench", "--fuzz", "4", "--json", str(full)]) == 0
    assert check.main(["--no-bench", "--fuzz-case", "3", "--json", str(one)]) == 0
    (row,) = json.loads(one.read_text())["checks"]  # the fixed checks are skipped
    assert row == _fuzz_rows(full)[3]


def test_fuzz_reports_a_broken_kernel(monkeypatch, capsys):
    real = hf_masked_softmax.attention

    def off_by_a_bit(q, k, v, mask=None, **kw):
        return real(q, k, v, mask, **kw) + 0.5  # far outside every tolerance, also where the output is 0

    monkeypatch.setattr(hf_masked_softmax, "attention", off_by_a_bit)
    assert check.main(["--no-bench", "--fuzz-case", "0"]) == 1
    assert "FAIL  attention #0" in capsys.readouterr().out


def test_fuzz_draws_values_of_their_own_head_dim(tmp_path, monkeypatch, capsys):
    # a fifth of the attention cases give the values a head dim of their own (seed 0: case 4 has D 4 and values 16
    # wide, case 18 D 16 and values 4 wide, case 20 the split decode path with values 24 wide); they go through the
    # HF backend's private entry, and a broken one fails them
    from hf_masked_softmax import ops

    for i, width in ((4, "v16"), (18, "v4"), (20, "v24")):
        path = tmp_path / f"{i}.json"
        assert check.main(["--no-bench", "--fuzz-case", str(i), "--json", str(path)]) == 0
        (row,) = json.loads(path.read_text())["checks"]
        assert row["ok"] and row["shape"].endswith(width), row
    real = ops.attention

    def off_by_a_bit(*args, **kw):
        return real(*args, **kw) + 0.5

    monkeypatch.setattr(ops, "attention", off_by_a_bit)
    capsys.readouterr()
    assert check.main(["--no-bench", "--fuzz-case", "4"]) == 1
    assert "FAIL  attention #4" in capsys.readouterr().out


def test_fuzz_draws_head_dims_in_two_tiles(tmp_path, monkeypatch, capsys):
    # on the CPU a tenth of the attention cases take head dim 48, which the forward runs as two tiles (seed 0: case 2
    # a prefill with values in two tiles too, case 16 a decode step with gradients); a tiling that drops the second
    # tile's columns fails them
    import importlib

    attn_mod = importlib.import_module("hf_masked_softmax.attention")
    for i in (2, 16):
        path = tmp_path / f"{i}.json"
        assert check.main(["--no-bench", "--fuzz-case", str(i), "--json", str(path)]) == 0
        (row,) = json.loads(path.read_text())["checks"]
        assert row["ok"] and "x48 " in row["shape"], row
    split_d = attn_mod._split_d
    monkeypatch.setattr(attn_mod, "_split_d", lambda D, *a: (32, 0) if split_d(D, *a)[1] else split_d(D, *a))
    capsys.readouterr()
    assert check.main(["--no-bench", "--fuzz-case", "2"]) == 1
    assert "FAIL  attention #2" in capsys.readouterr().out


def test_fuzz_rejects_negative_counts():
    for argv in (["--fuzz", "-1"], ["--fuzz-case", "-2"]):
        try:
            check.main(argv)
        except SystemExit as exc:
            assert exc.code == 2
        else:
            raise AssertionError(f"{argv} was accepted")


@pytest.mark.parametrize("where", ["folder", "missing-folder"])
def test_json_path_is_checked_before_any_work(tmp_path, where, capsys):
    # a folder, or a file in a folder that does not exist, is refused at once (it once failed after the first check)
    path = tmp_path if where == "folder" else tmp_path / "nosuch" / "x.json"
    with pytest.raises(SystemExit) as info:
        check.main(["--no-bench", "--json", str(path)])
    assert info.value.code == 2
    assert "a file path in an existing folder" in capsys.readouterr().err


def test_nan_must_appear_exactly_where_the_reference_has_it():
    ref = torch.tensor([1.0, float("nan"), 0.5], dtype=torch.float64)
    assert check._nan_aware_violation(ref.clone(), ref, torch.float32, 1.0) == 0.0
    assert check._nan_aware_violation(torch.tensor([1.0, 0.0, 0.5]), ref, torch.float32, 1.0) == float("inf")
    assert check._nan_aware_violation(torch.tensor([float("nan"), float("nan"), 0.5]), ref, torch.float32,
                                      1.0) == float("inf")



def test_fuzz_draws_sliding_windows_causal_and_bidirectional(device):
    # a third of the attention cases carry a window of 1..K keys, causal or (without causality) bidirectional; one
    # of each runs
    cuda = device == "cuda"
    cases = [check._fuzz_attention_case(torch.Generator().manual_seed(5 * 1_000_003 + i), cuda)
             for i in range(0, 240, 2)]
    windowed = [(i, c) for i, c in zip(range(0, 240, 2), cases) if c["window"] is not None]
    assert 20 <= len(windowed) <= 60
    assert all(1 <= c["window"] <= c["K"] for _, c in windowed)
    for causal in (True, False):
        assert any(c["causal"] == causal for _, c in windowed)
        i, case = next((i, c) for i, c in windowed if c["window"] < c["K"] and c["causal"] == causal)
        worst, _ = check._fuzz_attention(case, torch.Generator().manual_seed(5 * 1_000_003 + i), device)
        assert worst <= 1.0
