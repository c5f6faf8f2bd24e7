"""Experiment (2026-12-02, fourth session): the fused forward with persistent programs (FWD_PERSIST) against the
default one-program-per-tile grid. Launchers replayed in a CUDA graph; outputs compared with the default's.

    python evals/probe_persist.py
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchutil  # noqa: E402
import tune_attention as ta  # noqa: E402

attn = ta.attn_mod
rows = []
for name in ("bert", "gpt2-pad-right", "gpt2-nopad"):
    inp = ta.make_inputs(name, 64, torch.float16)
    q, k, v = inp["q"], inp["k"], inp["v"]
    margs = ta.launcher_args(inp)
    with torch.no_grad():
        ref = attn._forward(q, k, v, *margs)[0].float()
    for persist, per_sm in ((0, 0), (1, 2), (1, 3), (2, 2)):
        attn.FWD_PERSIST, attn.FWD_PERSIST_PER_SM = persist, per_sm or 2
        out = attn._forward(q, k, v, *margs)[0].float()
        diff = (out - ref).abs().max().item()
        ms = ta.graph_ms(lambda: attn._forward(q, k, v, *margs))
        rows.append(dict(shape=name, persist=persist, per_sm=per_sm, ms=ms, max_abs_diff=diff))
        print(f"{name:15s} persist={persist} per_sm={per_sm} {ta._fmt(ms)} ms  max |diff| {diff:.2e}", flush=True)
    attn.FWD_PERSIST, attn.FWD_PERSIST_PER_SM = 0, 2
out_dir = benchutil.out_dir(None)
benchutil.write_json(out_dir / "probe_persist.json", dict(env=benchutil.environment(), rows=rows))
