"""evals/probe_ablate.py times the Hopper kernel with pieces of its work edited out of a copy of its source. Here
every variant's edits still apply to the kernel as it is (each must match exactly once) and, compiled for sm_90 on
this CPU, take out what they say: the probabilities' exponentials, the key loop's ``P v`` products, the running row
maximum; its two tree forms of the row maximum keep every instruction of it. Runs as a subprocess: the test session
sets the interpreter, which cannot run Gluon."""
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.gluon
def test_each_ablation_compiles_for_sm90_without_what_it_takes_out():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "evals", "probe_ablate.py"), "--compile-only"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    counts = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"\[\d+/\d+\] bert\s+round 0 (\S+)\s+(\{.*\})$", line)
        if m:
            counts[m.group(1)] = json.loads(m.group(2))
    assert set(counts) == {"base", "no-exp", "no-pv", "no-exp-no-pv", "no-exp-no-max", "tree1-max", "tree3-max"}, \
        proc.stdout[-3000:]
    base = counts["base"]
    assert base["mufu_ex2"] > 0 and base["hgmma"] > 0 and base["fmnmx"] > 0
    # without the probabilities' exponentials only the per-row rescale factors' remain (a few per block)
    for v in ("no-exp", "no-exp-no-pv", "no-exp-no-max"):
        assert counts[v]["mufu_ex2"] * 4 < base["mufu_ex2"], (v, counts[v])
    for v in ("no-pv", "no-exp-no-pv"):
        assert counts[v]["hgmma"] < base["hgmma"], (v, counts[v])
    for v in ("no-exp", "no-pv"):
        assert counts[v]["fmnmx"] == base["fmnmx"], (v, counts[v])
    assert counts["no-exp-no-max"]["fmnmx"] == 0
    # the tree variants reorder the row maximum's work, they do not remove any
    for v in ("tree1-max", "tree3-max"):
        assert {k: counts[v][k] for k in ("mufu_ex2", "hgmma", "fmnmx")} == \
            {k: base[k] for k in ("mufu_ex2", "hgmma", "fmnmx")}, (v, counts[v])
    for v, c in counts.items():
        assert c["registers"] <= 255 and c["shared"] == base["shared"], (v, c)
