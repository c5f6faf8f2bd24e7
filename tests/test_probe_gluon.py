"""evals/probe_gluon.py (a Gluon flash forward for Hopper, an experiment) compiles its kernel for sm_90 on this CPU
and ptxas keeps the overlap it is written for: the key loop's softmax runs while the previous block's ``P v`` is
on the tensor cores. If ptxas hoists the wait for ``P v`` above the softmax, or serialises the products, no
exponential is left between the two waits. Runs as a subprocess: the test session sets the interpreter, which
cannot run Gluon."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.gluon
def test_gluon_probe_compiles_for_sm90_with_the_softmax_under_p_v():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "evals", "probe_gluon.py"), "--compile-only",
                           "--configs", "128/64/3/4"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("(")]
    assert len(lines) == 1, proc.stdout[-3000:]
    for line in lines:
        assert "Error" not in line, line
        regs = int(re.search(r"regs=(\d+)", line).group(1))
        assert regs <= 255, line
        assert int(re.search(r"HGMMA=(\d+)", line).group(1)) > 0, line  # Hopper tensor-core products
        assert int(re.search(r"UTMALDG=(\d+)", line).group(1)) > 0, line  # TMA copies
        # a 128 x 64 score tile over 128 threads: 64 exponentials per thread per key block, all under P v
        assert int(re.search(r"exps-under-PV=(\d+)", line).group(1)) >= 64, line
