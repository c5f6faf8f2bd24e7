"""Shared memory per program of the fused attention's default launch settings, compiled on this machine for a GPU
architecture (no GPU needed), against a card's limit: the settings that ``attention._fwd_config`` and
``_bwd_config`` pick for a card with ``--smem`` bytes, and whether each fits on every mask path (2D key ranges, bool
4D with its key bounds, additive 4D). A setting that does not fit fails at launch with Triton's OutOfResources.

    python evals/shared_memory.py [--smem 101376] [--head-dims 64,128,256] [--dtypes fp16,fp32] [--no-backward]
        [--modes prefill,causal,dropout,decode] [--arch 90] [--json FILE]

``--smem`` is what ``torch.cuda.get_device_properties(i).shared_memory_per_block_optin`` reports: 232448 on an H100 or
H200, 166912 on an A100, 101376 on Ada and consumer Ampere cards. The compiles use this machine's Triton, whose
figures may differ from a GPU machine's by a few KB. Exit status 1 when a setting does not fit.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import tempfile

import _common

MODES = ("prefill", "causal", "dropout", "decode")
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smem", type=int, default=_common.SMEM_BY_ARCH[89],
                    help="the card's shared memory per program, bytes (default: Ada's)")
    ap.add_argument("--head-dims", default="64,128,256")
    ap.add_argument("--dtypes", default="fp16,fp32", help=f"comma-separated subset of {', '.join(DTYPES)}")
    ap.add_argument("--modes", default=",".join(MODES),
                    help="forward calls: prefill (not causal), causal, dropout (causal, training), decode (one query)")
    ap.add_argument("--no-backward", action="store_true", help="the forward's settings only")
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 to compile for")
    ap.add_argument("--json", default=None, help="write the rows here too")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        head_dims = _ints(args.head_dims)
    except ValueError:
        ap.error(f"--head-dims wants integers, got {args.head_dims!r}")
    dtypes = [d for d in args.dtypes.split(",") if d]
    modes = [m for m in args.modes.split(",") if m]
    if not head_dims or any(not 1 <= d <= 256 for d in head_dims):
        ap.error("--head-dims: each between 1 and 256")
    if not dtypes or any(d not in DTYPES for d in dtypes):
        ap.error(f"--dtypes: a comma-separated subset of {', '.join(DTYPES)}")
    if not modes or any(m not in MODES for m in modes):
        ap.error(f"--modes: a comma-separated subset of {', '.join(MODES)}")
    if args.smem <= 0:
        ap.error("--smem: a positive number of bytes")
    _common.check_compile_target(args.arch, "shared_memory.py")
    _common.ensure_repo_on_path()
    import torch
    from tqdm.auto import tqdm

    import sass_attention as sa

    attn = importlib.import_module("hf_masked_softmax.attention")
    masks = ((attn._K_RANGE, False, "2d"), (attn._K_BOOL, True, "bool4d-bounds"), (attn._K_ADD, False, "add4d"))
    jobs = []  # (kernel, head dim, dtype, mode, setting)
    for d in head_dims:
        for dt in dtypes:
            tdt = getattr(torch, DTYPES[dt])
            for mode in modes:
                decode, causal, dropout = mode == "decode", mode != "prefill", mode == "dropout"
                cfg = attn._fwd_config(d, 1 if decode else 512, tdt, decode, causal, dropout, args.smem)
                jobs.append(("forward", d, dt, mode, cfg))
            if not args.no_backward:
                for causal in (False, True):
                    kv, dq = attn._bwd_config(d, tdt, causal, False, args.smem)
                    jobs.append(("backward", d, dt, "causal" if causal else "prefill", (kv, dq)))
    rows, seen = [], {}
    script = os.path.join(_common.EVALS_DIR, "sass_backward.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory() as tmp:
        for kernel, d, dt, mode, cfg in tqdm(jobs, desc="compiling", disable=args.no_progress):
            key = (kernel, d, dt, mode == "dropout", cfg)
            if key not in seen:  # a setting two modes share is compiled once
                if kernel == "forward":
                    seen[key] = {"forward": max(
                        sa.compile_forward(mode != "prefill", cfg, kind == attn._K_RANGE, True, args.arch, dtype=dt,
                                           head_d=d, dropout=mode == "dropout", mask_kind=kind, bounds=bounds,
                                           aligned_lengths=True).metadata.shared for kind, bounds, _ in masks)}
                else:
                    bd = attn._block_d(d)
                    proc = subprocess.run([sys.executable, script, "--head-dim", str(bd), "--dtype", dt, "--aligned",
                                           "--arch", str(args.arch), "--dkdv", "/".join(map(str, cfg[0])), "--dq",
                                           "/".join(map(str, cfg[1])), "--out", tmp], capture_output=True,
                                          text=True, env=env)
                    if proc.returncode:
                        sys.exit(f"sass_backward.py failed:\n{proc.stderr[-2000:]}")
                    seen[key] = {k: max(int(n) for n in re.findall(rf"^{k},[^\n]*shared (\d+) B", proc.stdout, re.M))
                                 for k in ("dkdv", "dq")}
            settings = {"forward": cfg} if kernel == "forward" else {"dkdv": cfg[0], "dq": cfg[1]}
            for name, setting in settings.items():
                need = seen[key][name]
                rows.append(dict(kernel=name, head_dim=d, dtype=dt, mode=mode, setting=list(setting), shared=need,
                                 fits=need <= args.smem))
    print(f"triton {sa.triton.__version__}, sm_{args.arch}, a card with {args.smem} B of shared memory per program; "
          "bytes: the most over the 2D, bool 4D (bounds) and additive 4D mask paths")
    print(_common.fmt_table(["kernel", "head dim", "dtype", "call", "setting", "shared B", "fits"],
                            [[r["kernel"], r["head_dim"], r["dtype"], r["mode"], tuple(r["setting"]), r["shared"],
                              "yes" if r["fits"] else "NO"] for r in rows]))
    over = [r for r in rows if not r["fits"]]
    print(f"{len(rows) - len(over)} of {len(rows)} settings fit" + (f"; {len(over)} do not" if over else ""))
    if args.json:
        _common.write_json(args.json, dict(smem=args.smem, arch=args.arch, triton=sa.triton.__version__, rows=rows,
                                           command=" ".join(["python", "evals/shared_memory.py"] + sys.argv[1:])))
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
