"""Where packed sequences' time goes (GPU): the profiler's device time per kernel of
``attention(q, k, v, causal=True, segments=ids)``, forward and backward, on ``bench_packed.py``'s shapes and
documents. ``bench_packed.py`` times whole calls (the backward as plain calls, host included); this separates the
runs kernel, the forward, and the backward's delta, dk / dv and dq kernels, for A/B runs of two trees
(``bash evals/gpu_session.sh segfinal39``).

    python evals/probe_packed.py [--shapes llama-8k,gpt2-4k] [--rounds 2] [--calls 50] [--out DIR]

Prints one line per shape, pass and round (µs per call per kernel); writes ``probe_packed.json`` under ``--out`` /
$OUT.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchutil  # noqa: E402
import bench_packed  # noqa: E402


def short_name(kernel: str) -> str:
    """A kernel's name without its launch signature: ``_bwd_dq_kernel``, not ``_bwd_dq_kernel(...)``."""
    return kernel.split("(")[0].strip()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(bench_packed.SHAPES),
                    help="comma-separated subset of: " + ", ".join(bench_packed.SHAPES))
    ap.add_argument("--rounds", type=int, default=2, help="profiled rounds per shape and pass")
    ap.add_argument("--calls", type=int, default=50, help="calls per round")
    ap.add_argument("--out", default=None, help="output folder (default $OUT or ./out)")
    args = ap.parse_args(argv)
    names = benchutil.pick(ap, args.shapes, bench_packed.SHAPES, "shapes")
    if args.rounds < 1 or args.calls < 1:
        ap.error("--rounds and --calls must be at least 1")
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU")
    import hf_masked_softmax

    out = benchutil.out_dir(args.out)
    rows = []
    for name in names:
        inp = bench_packed.make_inputs(*bench_packed.SHAPES[name])
        q, k, v, ids = inp["q"], inp["k"], inp["v"], inp["ids"]
        for t in (q, k, v):
            t.requires_grad_(True)
        o = hf_masked_softmax.attention(q, k, v, causal=True, segments=ids)
        do = torch.randn_like(o)
        passes = {
            "forward": lambda: hf_masked_softmax.attention(q, k, v, causal=True, segments=ids),
            "backward": lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True),
        }
        for pas, fn in passes.items():
            for rnd in range(args.rounds):
                with torch.no_grad() if pas == "forward" else torch.enable_grad():
                    times = benchutil.kernel_times(fn, args.calls)
                kernels = {short_name(n): round(us, 2) for n, (us, _) in sorted(times.items())}
                rows.append({"shape": name, "pass": pas, "round": rnd, "us": kernels})
                print(f"{name:9s} {pas:8s} round {rnd}: "
                      + "  ".join(f"{n}={us:.1f}" for n, us in kernels.items() if us >= 1.0), flush=True)
        del inp, o, do
        torch.cuda.empty_cache()
    benchutil.write_json(out / "probe_packed.json", dict(environment=benchutil.environment(), rows=rows))
    print(f"wrote {out / 'probe_packed.json'}")


if __name__ == "__main__":
    main()
