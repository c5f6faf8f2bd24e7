"""Where a model forward spends its GPU time, per attention implementation: a torch.profiler trace of a few
forwards of one evals/speed.py setting, summed by kernel name.

speed.py says how long a forward takes under each implementation; this says which kernels make up the difference
(attention kernels, mask building, copies, elementwise work). For each implementation it prints the device time
per forward, the wall time per forward, and the kernels with the most device time; JSON goes to
OUT/profile_model.json.

    python evals/profile_model.py [--setting "gpt2-small fwd pad"] [--impls sdpa,fused] [--top 15] [--out DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import benchutil  # noqa: E402
import speed  # noqa: E402


def profile_impl(model, fn, impl, calls, top):
    import torch

    undo = speed.set_impl(model, impl)
    try:
        fn()
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t0) / calls * 1e3
        times = benchutil.kernel_times(fn, calls)
    finally:
        undo()
    ranked = sorted((dict(name=name, us_per_forward=us, launches_per_forward=count)
                     for name, (us, count) in times.items() if us > 0), key=lambda k: -k["us_per_forward"])
    total_ms = sum(k["us_per_forward"] for k in ranked) / 1e3
    return dict(impl=impl, wall_ms=wall_ms, device_ms=total_ms, kernels=ranked[:top],
                kernel_names=len(ranked), launches_per_forward=sum(k["launches_per_forward"] for k in ranked))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", default="gpt2-small fwd pad", help="a forward / encode setting of evals/speed.py")
    ap.add_argument("--impls", default="sdpa,fused", help="subset of " + ",".join(speed.IMPLS))
    ap.add_argument("--calls", type=int, default=5, help="forwards per profile")
    ap.add_argument("--top", type=int, default=15, help="kernels listed per implementation")
    ap.add_argument("--out", default=None, help="output folder (default $OUT or ./out)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        sys.exit("profile_model.py needs a CUDA GPU")
    impls = [i for i in args.impls.split(",") if i]
    bad = [i for i in impls if i not in speed.IMPLS]
    if bad:
        sys.exit(f"unknown impl(s) {bad}; choose from {list(speed.IMPLS)}")
    by_name = {s[0]: s for s in speed.settings(False, False)}
    if args.setting not in by_name:
        sys.exit(f"unknown setting {args.setting!r}; choose from {sorted(by_name)}")
    name, arch, kind, batch, seq, lengths, side, _new = by_name[args.setting]
    if kind == "generate":
        sys.exit("profile_model.py profiles forwards; generate() is host-bound (see bench_host.py)")
    _common.go_offline()
    torch.manual_seed(args.seed)
    model = speed.build(arch, torch.float16, "cuda")
    gen = torch.Generator().manual_seed(args.seed)
    ids, mask = speed.make_inputs(model.config.vocab_size, batch, seq, lengths, side, gen, "cuda")

    def fn():
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask)

    results = []
    for impl in impls:
        r = profile_impl(model, fn, impl, args.calls, args.top)
        results.append(r)
        print(f"\n[{name}] {impl}: device {r['device_ms']:.3f} ms per forward (kernels summed), wall "
              f"{r['wall_ms']:.3f} ms, {r['launches_per_forward']:.0f} launches per forward")
        for k in r["kernels"]:
            print(f"  {k['us_per_forward']:9.1f} us  x{k['launches_per_forward']:5.1f}  {k['name'][:100]}")
    payload = dict(env=_common.system_info(), setting=name, dtype="float16", calls=args.calls, results=results,
                   command=" ".join(["python", "evals/profile_model.py"] + (argv or sys.argv[1:])))
    out = args.out or os.environ.get("OUT") or "out"
    os.makedirs(out, exist_ok=True)
    _common.write_json(os.path.join(out, "profile_model.json"), payload)
    print(f"wrote {os.path.join(out, 'profile_model.json')}")


if __name__ == "__main__":
    main()
