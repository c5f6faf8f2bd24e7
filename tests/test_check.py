"""``python -m hf_masked_softmax.check``: the self-test passes on good kernels, fails on a broken one, and uses the
test-suite's tolerance table."""
import json

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
