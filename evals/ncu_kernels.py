"""Run one kernel of the project a few times, for Nsight Compute to profile (GPU).

    ncu --clock-control none --set full -k regex:'^_bwd_kernel$' --launch-skip 1 --launch-count 1 \
        --csv --page details python evals/ncu_kernels.py softmax-bwd-gpt2

Each case builds the inputs of one shape of the benchmarks (``bench_softmax.py`` / ``bench_attention.py``, fp16) and
calls one launcher ``--reps`` times (the first call compiles): the kernel named in ``CASES`` is what to filter on.
``copy`` and ``zeros`` are the ceilings for a memory-bound kernel: an elementwise copy (reads + writes) and a fill
(writes only) of 201 MB, the size of the GPT-2 scores. ``bash evals/gpu_session.sh ncu`` profiles every case and
``--summary`` prints the headline metrics of the CSV files it wrote.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# case -> (kernel name as Nsight Compute lists it, what it runs)
CASES = {
    "softmax-bwd-gpt2": ("_bwd_kernel", "masked_softmax backward, 8x12x1024x1024 causal + left padding"),
    "softmax-fwd-gpt2": ("_fwd_kernel", "masked_softmax forward, the same shape"),
    "attn-fwd-bert": ("_attn_fwd_kernel", "attention forward, B32 H12 512x512, right padding, D 64"),
    "attn-fwd-gpt2": ("_attn_fwd_kernel", "attention forward, B8 H12 1024x1024 causal, right padding, D 64"),
    "hopper-fwd-bert": ("_attn_fwd_persistent", "the Hopper (Gluon) forward, BERT's shape as bench_hopper.py's bert"),
    "copy": ("vectorized_elementwise_kernel", "torch.neg of 201 MB into another buffer (reads + writes)"),
    "zeros": ("vectorized_elementwise_kernel", "torch zero_ of 201 MB (writes only)"),
}

# (section, metric) pairs that --summary prints, under short labels
SUMMARY = [
    ("duration", "GPU Speed Of Light Throughput", "Duration"),
    ("dram %", "GPU Speed Of Light Throughput", "DRAM Throughput"),
    ("memory %", "GPU Speed Of Light Throughput", "Memory Throughput"),
    ("compute %", "GPU Speed Of Light Throughput", "Compute (SM) Throughput"),
    ("L2 hit %", "Memory Workload Analysis", "L2 Hit Rate"),
    ("occupancy %", "Occupancy", "Achieved Occupancy"),
    ("theor. occ. %", "Occupancy", "Theoretical Occupancy"),
    ("regs/thread", "Launch Statistics", "Registers Per Thread"),
    ("issued IPC", "Compute Workload Analysis", "Issued Ipc Active"),
    ("eligible warps", "Scheduler Statistics", "Eligible Warps Per Scheduler"),
    ("no eligible %", "Scheduler Statistics", "No Eligible"),
    ("cycles/instr", "Warp State Statistics", "Warp Cycles Per Issued Instruction"),
]


def _launcher(case: str):
    """A no-argument callable that launches the case's kernel once (inputs made here, outside the calls)."""
    if case in ("copy", "zeros"):
        x = torch.randn(8 * 12 * 1024 * 1024, device="cuda", dtype=torch.float16)
        y = torch.empty_like(x)
        # neg, not copy_: a same-dtype copy_ is a cudaMemcpy, which Nsight Compute does not profile
        return (lambda: torch.neg(x, out=y)) if case == "copy" else (lambda: y.zero_())
    if case.startswith("softmax"):
        from bench_softmax import make_case

        ms = importlib.import_module("hf_masked_softmax.masked_softmax")
        from hf_masked_softmax.masks import pad_ranges, prepare_mask

        shape = (8, 12, 1024, 1024)
        scores, mask2d, _, _ = make_case(shape, True, True, torch.float16)
        spec = prepare_mask(mask2d, shape, scores.device)
        ranges = pad_ranges(spec.tensor)
        blocks = (ms.MAX_SINGLE_PASS_K, ms.LOOP_BLOCK_K)
        if case == "softmax-fwd-gpt2":
            return lambda: ms._forward(scores, spec, True, 0.125, blocks, ranges)
        y = ms._forward(scores, spec, True, 0.125, blocks, ranges)
        dy = torch.randn_like(scores)
        return lambda: ms._backward(y, dy, spec, True, 0.125, blocks, ranges)
    if case == "hopper-fwd-bert":
        import bench_hopper

        import hf_masked_softmax as hms

        qt, kt, vt, _, shared = bench_hopper._inputs("bert")
        return lambda: hms.attention(qt, kt, vt, shared)  # no input needs gradients: inference, no log-sum-exp
    from bench_attention import make_inputs
    from tune_attention import attn_mod, launcher_args

    inp = make_inputs("bert" if case == "attn-fwd-bert" else "gpt2-pad-right", 64, torch.float16)
    margs = launcher_args(inp)
    return lambda: attn_mod._forward(inp["q"], inp["k"], inp["v"], *margs)


def summary(paths) -> list[dict]:
    """The ``SUMMARY`` metrics of Nsight Compute ``--csv --page details`` files, one row per file."""
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            lines = [ln for ln in f if ln.startswith('"')]  # ncu prints its own log lines before the CSV
        values = {}
        for rec in csv.DictReader(lines):
            values.setdefault((rec.get("Section Name"), rec.get("Metric Name")),
                              f'{rec.get("Metric Value")} {rec.get("Metric Unit") or ""}'.strip())
        row = {"file": os.path.basename(path)}
        for label, section, metric in SUMMARY:
            row[label] = values.get((section, metric), "-")
        rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("case", nargs="?", choices=sorted(CASES), help="what to run")
    ap.add_argument("--reps", type=int, default=3, help="launches (the first compiles)")
    ap.add_argument("--list", action="store_true", help="print each case's kernel name and what it runs")
    ap.add_argument("--summary", nargs="+", metavar="CSV", help="print the headline metrics of ncu CSV files")
    args = ap.parse_args(argv)
    if args.list:
        for name, (kernel, what) in CASES.items():
            print(f"{name:18s} {kernel:18s} {what}")
        return
    if args.summary:
        from benchutil import print_table

        missing = [f for f in args.summary if not os.path.isfile(f)]
        if missing:
            ap.error(f"--summary: no such file(s) {missing}")

        rows = summary(args.summary)
        print_table(rows, ["file"] + [label for label, _, _ in SUMMARY])
        return
    if args.case is None:
        ap.error("name a case (or --list / --summary)")
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    if not torch.cuda.is_available():
        sys.exit("ncu_kernels.py needs a CUDA GPU")
    fn = _launcher(args.case)
    for _ in range(args.reps):
        fn()
    torch.cuda.synchronize()
    print(f"{args.case}: {args.reps} launches of {CASES[args.case][0]}")


if __name__ == "__main__":
    main()
