"""Probe (GPU): the Hopper forward with the pipeline carried across tiles (7d807de's kernel, in
``evals/_probe_cross_kernel.py``), which hung on its first GPU test in the eighteenth session. Each case runs in a
subprocess with a time limit, so a hang is reported instead of stopping the run.

    python evals/probe_cross.py [--limit S]            # every case, each within S seconds (default 90)
    python evals/probe_cross.py --one XMODE CASE       # one case (what the parent runs)

XMODE 1: at a tile's end, its last ``P v`` is waited for before the next tile's first scores are issued (the
relocated structure without overlap); 2: the two are issued together (7d807de). Prints, per case, the largest
difference against the library's forward (the Triton kernel) and the median time in a CUDA graph against the
library's Hopper kernel in the same process.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CASES = {  # name: (B, H, T, lowest key length, highest, mask kind)
    "one-tile-each": (22, 12, 128, 64, 128, 1),    # 264 tiles on 264 programs: the cross-tile branch never runs
    "two-tiles-each": (44, 12, 128, 64, 128, 1),
    "two-tiles-nomask": (44, 12, 128, 128, 128, 0),
    "bert-nomask": (32, 12, 512, 512, 512, 0),
    "bert": (32, 12, 512, 256, 512, 1),
}


def one(xmode: int, case: str) -> None:
    import torch

    import benchutil
    import hf_masked_softmax as hms
    from hf_masked_softmax import _hopper, masks
    import _probe_cross_kernel as X

    B, H, T, lo, hi, kind = CASES[case]
    q, k, v, _, pad = benchutil.padded_bthd(B, H, T, lo, hi)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    mask = pad if kind == 1 else None
    ranges = masks.pad_ranges(pad) if kind == 1 else None
    sm = torch.cuda.get_device_properties(0).multi_processor_count
    scale = 64 ** -0.5
    # the probe kernel's counts are compile-time: the plan built with both runtime settings off
    saved = _hopper.RUNTIME_COUNTS, _hopper.RUNTIME_ALL
    _hopper.RUNTIME_COUNTS = _hopper.RUNTIME_ALL = False
    plan = _hopper.HopperForward(qt, kt, vt, kind, False, scale, sm)
    _hopper.RUNTIME_COUNTS, _hopper.RUNTIME_ALL = saved
    plan.kernel = X.attn_fwd_cross
    plan.consts["XMODE"] = xmode
    out = torch.empty(B, T, H, 64, device="cuda", dtype=torch.float16).transpose(1, 2)
    print(f"launching {case} xmode {xmode} grid {plan.grid} tiles {plan.n_tiles}", flush=True)
    plan(qt, kt, vt, out, mask, ranges)
    torch.cuda.synchronize()
    print("returned", flush=True)
    with torch.no_grad():
        _hopper.ENABLED = False
        ref = hms.attention(qt, kt, vt, mask, scale=scale)
        _hopper.ENABLED = True
    diff = (out.float() - ref.float()).abs().max().item()
    ms_x = benchutil.median_ms(lambda: plan(qt, kt, vt, out, mask, ranges), cuda_graph=True)
    with torch.no_grad():
        ms_lib = benchutil.median_ms(lambda: hms.attention(qt, kt, vt, mask, scale=scale), cuda_graph=True)
    print("RESULT " + json.dumps(dict(case=case, xmode=xmode, max_diff=diff, ms=round(ms_x, 4),
                                      library_hopper_ms=round(ms_lib, 4))), flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=90, help="seconds each case may take (default 90)")
    ap.add_argument("--one", nargs=2, metavar=("XMODE", "CASE"), help="run one case in this process")
    args = ap.parse_args(argv)
    if args.limit <= 0:
        ap.error("--limit must be positive")
    if args.one and (args.one[0] not in ("1", "2") or args.one[1] not in CASES):
        ap.error(f"--one takes XMODE 1 or 2 and a case of {sorted(CASES)}")
    import torch

    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        sys.exit("probe_cross.py needs a CUDA GPU of compute capability 9.0")
    if args.one:
        one(int(args.one[0]), args.one[1])
        return
    for xmode in (1, 2):
        for case in CASES:
            try:
                proc = subprocess.run([sys.executable, __file__, "--one", str(xmode), case], capture_output=True,
                                      text=True, timeout=args.limit)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
                print(lines[-1] if lines else f"FAILED {case} xmode {xmode} rc {proc.returncode}: "
                      f"{proc.stdout[-300:]} {proc.stderr[-800:]}", flush=True)
            except subprocess.TimeoutExpired as e:
                out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
                print(f"HANG {case} xmode {xmode} after {args.limit} s; stdout: {out[-300:]!r}", flush=True)


if __name__ == "__main__":
    main()
