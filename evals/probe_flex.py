"""Why FlexAttention's forward looked slow in this project's benchmarks (GPU), and which way of calling it is fair.

On an H100 (torch 2.11) ``bench_window.py``'s ``modernbert-local`` shape gave FlexAttention's forward 1.68 ms and its
backward 0.315 ms, and ``bench_packed.py``'s ``gpt2-4k`` 0.387 ms forward against 0.586 backward: a forward should
cost well under half its backward. This times the forward of both shapes' FlexAttention calls, as the benchmarks
build them (``benchutil.compiled_flex``), in several variants:

* ``graph``: CUDA-graph replays, as the benchmarks time forwards; ``plain``: plain calls (host included);
* ``contiguous``: q, k and v copied to ``[B, H, L, D]`` memory first (the benchmarks pass HF's ``[B, L, H, D]``
  memory, seen as ``[B, H, L, D]``); the copy is outside the timing;
* ``grad``: inputs that require grad, the forward under autograd (the backward's setting, log-sum-exp kept);
* ``blocks64``: ``kernel_options`` BLOCK_M = BLOCK_N = 64;

and, for each, the profiler's kernels of one call (name, µs). Prints a table; writes ``probe_flex.json``.

    python evals/probe_flex.py [--shapes modernbert-local,gpt2-4k] [--out DIR]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchutil  # noqa: E402


def shape_inputs(name: str):
    """(q, k, v, mask_mod, Q, K, gqa) of ``name`` as its benchmark builds them."""
    if name == "modernbert-local":
        import bench_window

        inp = bench_window.make_inputs(*bench_window.SHAPES[name], causal=False)
        mask_mod = bench_window.flex_mask_mod(inp)
    else:
        import bench_packed

        inp = bench_packed.make_inputs(*bench_packed.SHAPES[name])
        mask_mod = bench_packed.document_mask_mod(inp["ids"])
    return inp["q"], inp["k"], inp["v"], mask_mod, inp["Q"], inp["K"], inp["H"] != inp["Hkv"]


SHAPES = ("modernbert-local", "gpt2-4k")
VARIANTS = ("graph", "plain", "contiguous", "grad", "blocks64", "contiguous+blocks64")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated subset of: " + ", ".join(SHAPES))
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="comma-separated subset of: " + ", ".join(VARIANTS))
    ap.add_argument("--out", default=None, help="output folder (default $OUT or ./out)")
    args = ap.parse_args(argv)
    names = benchutil.pick(ap, args.shapes, dict.fromkeys(SHAPES), "shapes")
    variants = benchutil.pick(ap, args.variants, dict.fromkeys(VARIANTS), "variants")
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU")
    out = benchutil.out_dir(args.out)
    rows = []
    for name in names:
        q, k, v, mask_mod, Q, K, gqa = shape_inputs(name)
        ref = None
        for var in variants:
            qq, kk, vv = (t.contiguous() for t in (q, k, v)) if "contiguous" in var else (q, k, v)
            # tiles given, so that compiled_flex does not pick its faster pair: {} is FlexAttention's own choice
            kw = dict(enable_gqa=gqa, kernel_options={"BLOCK_M": 64, "BLOCK_N": 64} if "blocks64" in var else {})
            if var == "grad":
                qq, kk, vv = (t.detach().requires_grad_(True) for t in (q, k, v))
            fn = benchutil.compiled_flex(f"{name} {var}", qq, kk, vv, mask_mod, Q, K, **kw)
            if fn is None:
                continue
            ctx = torch.enable_grad() if var == "grad" else torch.no_grad()
            with ctx:
                o = fn()
                err = 0.0 if ref is None else (o.float() - ref).abs().max().item()
                ref = o.detach().float() if ref is None else ref
                ms = benchutil.median_ms(fn, cuda_graph=(var != "plain" and var != "grad"))
                kernels = benchutil.kernel_times(fn, n=10)
            top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:4]
            row = dict(shape=name, variant=var, ms=ms, kernel_ms=sum(us for us, _ in kernels.values()) / 1e3,
                       max_diff_vs_first=err,
                       kernels=[(n.split("(")[0][:60], round(us, 2), c) for n, (us, c) in top])
            rows.append(row)
            print(f"{name:17s} {var:20s} {ms:8.4f} ms  kernels {row['kernel_ms']:8.4f} ms  diff {err:.2e}  "
                  + "; ".join(f"{n} {us}us x{c:g}" for n, us, c in row["kernels"]), flush=True)
            del fn, o
        torch._dynamo.reset()
    benchutil.write_json(out / "probe_flex.json", {"env": benchutil.environment(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
