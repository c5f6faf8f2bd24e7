"""Probe: a flash-attention forward written in Gluon (Triton's lower-level dialect) for Hopper.

Issue 5's BERT target (B32 H12 512x512, key lengths uniform in [256, 512], fp16, D = 64: <= 0.060 ms) is missed by
the library's Triton forward (0.074-0.077 ms on an H200). Its SASS shows why: each key block's ``QK^T`` is followed by
a wait for that product, then the softmax, then ``P v``, and a barrier of the whole program; nothing overlaps the
softmax with a matrix product except a second program on the multiprocessor. Triton decides where the waits go and
would not let the next block's product run during this block's softmax (seventh session).

In Gluon the program says where each wait goes. This kernel (``evals/_probe_gluon_kernels.py``) does, per key block j:

    issue S_j = Q K_j^T (async); refill block j - 2's K and V slots with block j - 2 + STAGES (TMA)
    issue O = alpha O + P_{j-1} V_{j-1} (async)
    wait for S_j only, then the softmax of S_j while P_{j-1} V_{j-1} runs on the tensor cores
    wait for O

One warpgroup per program, K and V through a ring of TMA copies with one mbarrier per slot, no causality, no GQA,
the padding mask as one key count per sequence (right padding), inputs in HF's ``[B, T, H, D]`` layout with
``T % BLOCK_M == 0``; a key block past a sequence's keys reads the next sequence's rows (masked in the scores,
multiplied by zero in ``P v``). It is an experiment, not used by the library: its output is checked against an fp64
reference and timed in a CUDA graph beside ``hf_masked_softmax.attention`` and SDPA in the same run (NOTES.md,
sixteenth session). Its persistent version (a fixed number of programs walking the tiles with one K / V ring across
them), which this file held until 2026-12-04 (e653c0b, with a snake tile order), grew into the library's Hopper
forward, ``hf_masked_softmax._hopper_kernels``; ``evals/bench_hopper.py`` times that one. (So on an H100 / H200 the
``hf_masked_softmax.attention`` rows below run that kernel since then, the Triton one before.)

    python evals/probe_gluon.py [--shapes bert,bert-full] [--configs 128/64/4/4] [--out DIR]
    python evals/probe_gluon.py --compile-only [--arch 90]  # any machine: registers, SASS counts, exps under P v
"""
from __future__ import annotations

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402


def _kernels():
    """evals/_probe_gluon_kernels.py, or exit naming what this Triton lacks (Gluon's Hopper API: Triton >= 3.5)."""
    try:
        import _probe_gluon_kernels
    except ImportError as e:
        import triton

        sys.exit(f"probe_gluon.py needs Gluon's Hopper API, which triton {triton.__version__} lacks ({e})")
    return _probe_gluon_kernels


def sass_summary(kernel):
    """``(sass, counts)`` of a compiled kernel: sass_attention.py's analysis of its cubin, plus how many of a few
    Hopper instructions it holds (prefix match, so that ``HGMMA`` counts every shape)."""
    import tempfile

    import sass_attention

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        info = sass_attention.analyse(f.name)
    counts = {"registers": info["registers"]}
    for line in info["sass"].splitlines():
        m = re.match(r"\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?(\S+)", line)
        for key in ("HGMMA", "WARPGROUP.DEPBAR", "WARPGROUP.ARRIVE", "BAR.SYNC", "MUFU.EX2", "UTMALDG", "UTMASTG"):
            if m and m.group(1).startswith(key):
                counts[key] = counts.get(key, 0) + 1
    return info["sass"], counts


def exps_under_pv(sass):
    """``MUFU.EX2`` between the key loop's wait that leaves one product group running (``P v``) and the next wait
    for none: the exponentials that run while ``P v`` is on the tensor cores. 0 if ptxas serialised the products or
    moved that wait above the softmax."""
    ops = [line.split("*/", 1)[1].split(";")[0].strip() for line in sass.splitlines()
           if re.match(r"\s*/\*[0-9a-f]{4,}\*/", line)]
    best = 0
    for i, op in enumerate(ops):
        if op.startswith("WARPGROUP.DEPBAR.LE") and op.endswith("0x1"):
            n = 0
            for later in ops[i + 1:]:
                if later.startswith("WARPGROUP.DEPBAR.LE"):
                    break
                n += later.startswith("MUFU.EX2")
            best = max(best, n)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="bert,bert-full")
    ap.add_argument("--configs", default="64/64/3/4,64/64/3/4/128,64/64/4/4,64/64/4/4/128,128/64/3/8,128/64/4/8,"
                                         "128/64/3/4,64/128/3/4,128/128/3/8",
                    help="BLOCK_M/BLOCK_N/STAGES/warps[/register cap (0: none)[/one barrier per slot (0/1)[/explicit "
                         "program barrier (0/1, default 1)]]], comma-separated")
    ap.add_argument("--compile-only", action="store_true")
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--out", default=None)
    ap.add_argument("--sass", default=None, help="with --compile-only: write the first config's SASS here")
    args = ap.parse_args(argv)
    configs = [tuple(int(x) for x in c.split("/")) for c in args.configs.split(",") if c]
    if args.compile_only:
        import _common

        _common.check_compile_target(args.arch, "probe_gluon.py --compile-only")
        compile_only = _kernels().compile_only
        for i, cfg in enumerate(configs):
            try:
                kern = compile_only(args.arch, cfg)
            except Exception as e:  # noqa: BLE001 - report and go on
                print(f"{cfg}: {type(e).__name__}: {str(e)[:3000]}")
                continue
            sass, counts = sass_summary(kern)
            keys = ["HGMMA", "WARPGROUP.DEPBAR", "WARPGROUP.ARRIVE", "BAR.SYNC", "MUFU.EX2", "UTMALDG", "UTMASTG"]
            print(f"{cfg}: regs={counts['registers']} shared={kern.metadata.shared} "
                  + " ".join(f"{k}={counts.get(k, 0)}" for k in keys)
                  + f" exps-under-PV={exps_under_pv(sass)}", flush=True)
            if args.sass and i == 0:
                with open(args.sass, "w") as f:
                    f.write(sass)
        return
    run_gpu(args, configs)


SHAPES = {  # name: (B, H, T, lowest key length, highest)
    "bert": (32, 12, 512, 256, 512),
    "bert-full": (32, 12, 512, 512, 512),
    "gpt2-shape-nocausal": (8, 12, 1024, 512, 1024),
    **{f"bert-len{n}": (32, 12, 512, n, n) for n in (64, 128, 256, 384, 448)},
}


def run_gpu(args, configs):
    import torch.nn.functional as F

    import benchutil
    import hf_masked_softmax as hms
    from hf_masked_softmax import masks

    if not torch.cuda.is_available():
        sys.exit("probe_gluon.py needs a CUDA GPU (or --compile-only)")
    gluon_forward = _kernels().gluon_forward
    out_dir = benchutil.out_dir(args.out)
    rows = []
    for name in [s for s in args.shapes.split(",") if s]:
        B, H, T, lo, hi = SHAPES[name]
        q, k, v, lens, pad = benchutil.padded_bthd(B, H, T, lo, hi)
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        # fp64 reference on a few sequences (the whole batch in fp64 is large)
        nb = min(B, 4)
        ref = F.scaled_dot_product_attention(qt[:nb].double(), kt[:nb].double(), vt[:nb].double(),
                                             attn_mask=pad[:nb, None, None, :]).transpose(1, 2)
        shared = masks.share_ranges(pad)
        with torch.no_grad():
            lib = hms.attention(qt, kt, vt, shared).transpose(1, 2)
            lib_err = float((lib[:nb].double() - ref).abs().max())
            base = {
                "sdpa default, no mask (whole rectangle)": benchutil.median_ms(
                    lambda: F.scaled_dot_product_attention(qt, kt, vt), cuda_graph=True),
                "sdpa, bool padding mask": benchutil.median_ms(
                    lambda: F.scaled_dot_product_attention(qt, kt, vt, attn_mask=pad[:, None, None, :]),
                    cuda_graph=True),
                "hf_masked_softmax.attention": benchutil.median_ms(lambda: hms.attention(qt, kt, vt, shared),
                                                                   cuda_graph=True),
            }
        for what, ms in base.items():
            row = {"shape": name, "what": what, "ms": round(ms, 4)}
            if what == "hf_masked_softmax.attention":
                row["max_abs_err_vs_fp64"] = lib_err
            rows.append(row)
            print(f"{name:10s} {what:42s} {ms:.4f} ms" + (f"  err {lib_err:.2e}" if "err" in str(row) else ""),
                  flush=True)
        settings = []
        for cfg in configs:
            bm, bn, st, w = cfg[:4]
            cap = cfg[4] if len(cfg) > 4 and cfg[4] else None
            one_bar = bool(cfg[5]) if len(cfg) > 5 else False
            cta_bar = bool(cfg[6]) if len(cfg) > 6 else True
            what = (f"gluon {bm}x{bn} stages {st} warps {w}" + (f" cap {cap}" if cap else "")
                    + (" one-bar" if one_bar else "") + ("" if cta_bar else " no-cta-bar"))
            settings.append((what, dict(block_m=bm, block_n=bn, stages=st, warps=w, maxnreg=cap, one_bar=one_bar,
                                        cta_bar=cta_bar),
                             lambda c=(bm, bn, st, w, cap, one_bar, cta_bar): gluon_forward(q, k, v, lens, *c)))
        for what, info, make in settings:
            row = {"shape": name, "what": what, **info}
            try:
                run, o = make()
                compiled = run()
                torch.cuda.synchronize()
                row["registers"] = getattr(compiled, "n_regs", None)
                row["spills"] = getattr(compiled, "n_spills", None)
                row["max_abs_err_vs_fp64"] = float((o[:nb].double() - ref).abs().max())
                row["max_abs_diff_vs_library"] = float((o.float() - lib.float()).abs().max())
                row["nan"] = bool(torch.isnan(o).any())
                row["ms"] = round(benchutil.median_ms(run, cuda_graph=True), 4)
                row["vs_library"] = round(base["hf_masked_softmax.attention"] / row["ms"], 3)
            except Exception as e:  # noqa: BLE001 - a setting that fails is a result too
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            rows.append(row)
            print(f"{name:10s} {what:32s} regs={row.get('registers')} spills={row.get('spills')} "
                  f"err={row.get('max_abs_err_vs_fp64', float('nan')):.2e} "
                  f"vs lib={row.get('max_abs_diff_vs_library', float('nan')):.2e} {row.get('ms', row.get('error'))}",
                  flush=True)
    benchutil.write_json(out_dir / "probe_gluon.json", {"env": benchutil.environment(), "rows": rows})


if __name__ == "__main__":
    main()
