"""Self-test: ``python -m hf_masked_softmax.check`` on your own machine.

With a CUDA device: checks both kernels (forward and backward, every mask form, fp32/fp16/bf16) against an fp64
reference, then times them against PyTorch (``masked_softmax`` vs eager ``softmax(scale * s + mask)``, ``attention``
vs ``scaled_dot_product_attention`` with the same mask): median of ``triton.testing.do_bench``, inputs built outside
the timed calls. Prints a short report; exit status 0 when every check passes, 1 otherwise.

Without CUDA: runs small checks of the real kernels in Triton's CPU interpreter (it re-runs itself with
``TRITON_INTERPRET=1`` when that is not set) and says so; there is no benchmark.

Options: ``--quick`` (fewer cases), ``--no-bench``, ``--json PATH`` (write the results).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch

# (atol, rtol) against fp64, the same rows as the test-suite's table (tests/tolerances.py; a test keeps them equal).
TOLERANCES = {
    torch.float32: (1e-6, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (8e-3, 8e-3),
}
# Attention outputs and all gradients sum many rounded terms: the same widenings as the test-suite.
WIDEN = {"softmax": 1.0, "softmax_grad": 4.0, "attention": 4.0, "attention_grad": 10.0}


def _max_violation(out, ref, dtype, widen):
    """max(|out - ref| / (atol + rtol |ref|)) over the tensor: <= 1 passes; NaN or inf count as failures."""
    atol, rtol = TOLERANCES[dtype]
    out, ref = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out).all():
        return float("inf")
    if out.numel() == 0:
        return 0.0
    return float(((out - ref).abs() / (widen * (atol + rtol * ref.abs()))).max())


def _mask(form, B, H, Q, K, device):
    g = torch.Generator().manual_seed(0)
    if form == "none":
        return None
    if form == "pad2d":
        lengths = torch.randint(K // 2, K + 1, (B,), generator=g)
        return (torch.arange(K)[None, :] >= K - lengths[:, None]).to(device)  # left padding
    if form == "bool4d":
        return (torch.rand(B, 1, Q, K, generator=g) < 0.8).to(device)
    add = torch.randn(B, 1, 1, K, generator=g)
    add[..., : K // 4] = torch.finfo(torch.float32).min
    return add.to(device)


def _cases(device, quick):
    if device == "cuda":
        shapes = [(4, 12, 256, 256), (2, 8, 1, 4096), (1, 4, 200, 10000)]
        dtypes = [torch.float16, torch.bfloat16, torch.float32]
    else:
        shapes = [(2, 2, 5, 19)]
        dtypes = [torch.float32, torch.float16]
    forms = ["none", "pad2d", "bool4d", "add4d"]
    if quick:
        shapes, forms = shapes[:1], ["pad2d", "add4d"]
    return shapes, dtypes, forms


def check_masked_softmax(device, quick, report):
    from . import masked_softmax
    from .reference import masked_softmax_reference

    shapes, dtypes, forms = _cases(device, quick)
    for (B, H, Q, K) in shapes:
        for dtype in dtypes:
            for form in forms:
                causal = form in ("none", "pad2d")
                g = torch.Generator(device="cpu").manual_seed(1)
                s = (torch.randn(B, H, K, Q, generator=g) * 3).to(device, dtype).transpose(2, 3).requires_grad_(True)
                mask = _mask(form, B, H, Q, K, device)
                y = masked_softmax(s, mask, causal=causal, scale=0.5)
                dy = torch.randn(y.shape, generator=g).to(device, dtype)
                (ds,) = torch.autograd.grad(y, s, dy)
                s64 = s.detach().double().requires_grad_(True)
                ref = masked_softmax_reference(s64, mask, causal=causal, scale=0.5, compute_dtype=torch.float64,
                                               out_dtype=torch.float64)
                (ref_ds,) = torch.autograd.grad(ref, s64, dy.double())
                v = max(_max_violation(y, ref, dtype, WIDEN["softmax"]),
                        _max_violation(ds, ref_ds, dtype, WIDEN["softmax_grad"]))
                zeros_exact = bool(torch.all(y[ref == 0] == 0))
                report("masked_softmax", f"{B}x{H}x{Q}x{K}", dtype, form, v, zeros_exact)


def check_attention(device, quick, report):
    from . import attention
    from .reference import attention_reference

    if device == "cuda":
        shapes = [(4, 12, 12, 256, 256, 64), (2, 8, 2, 1, 4096, 128), (1, 8, 8, 300, 700, 80)]
        dtypes = [torch.float16, torch.bfloat16, torch.float32]
    else:
        shapes = [(2, 4, 2, 5, 20, 16)]
        dtypes = [torch.float32, torch.float16]
    forms = ["none", "pad2d", "bool4d", "add4d"]
    if quick:
        shapes, forms = shapes[:1], ["pad2d", "add4d"]
    for (B, H, Hkv, Q, K, D) in shapes:
        for dtype in dtypes:
            for form in forms:
                causal = form in ("none", "pad2d")
                g = torch.Generator(device="cpu").manual_seed(2)
                q = torch.randn(B, Q, H, D, generator=g).to(device, dtype).transpose(1, 2).requires_grad_(True)
                k = torch.randn(B, K, Hkv, D, generator=g).to(device, dtype).transpose(1, 2).requires_grad_(True)
                v = torch.randn(B, K, Hkv, D, generator=g).to(device, dtype).transpose(1, 2).requires_grad_(True)
                mask = _mask(form, B, H, Q, K, device)
                out = attention(q, k, v, mask, causal=causal)
                do = torch.randn(out.shape, generator=g).to(device, dtype)
                grads = torch.autograd.grad(out, (q, k, v), do)
                ref_in = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
                ref = attention_reference(*ref_in, mask, causal=causal, compute_dtype=torch.float64)
                ref_grads = torch.autograd.grad(ref, ref_in, do.double())
                worst = _max_violation(out, ref, dtype, WIDEN["attention"])
                for a, b in zip(grads, ref_grads):
                    worst = max(worst, _max_violation(a, b, dtype, WIDEN["attention_grad"]))
                report("attention", f"{B}x{H}/{Hkv}x{Q}x{K}x{D}", dtype, form, worst, True)


def benchmark(quick):
    """Median ms of ours vs PyTorch on a GPT-2-like layer (fp16, left padding, causal)."""
    import triton

    from . import attention, masked_softmax

    F = torch.nn.functional
    rows = []
    configs = [(8, 12, 1024, 64)] if quick else [(8, 12, 512, 64), (8, 12, 1024, 64), (32, 12, 1, 1024)]
    for B, H, T, D in configs:
        Q = T
        K = 1024 if T == 1 else T
        g = torch.Generator(device="cuda").manual_seed(0)
        dt = torch.float16
        q = torch.randn(B, H, Q, D, device="cuda", dtype=dt, generator=g)
        k = torch.randn(B, H, K, D, device="cuda", dtype=dt, generator=g)
        v = torch.randn(B, H, K, D, device="cuda", dtype=dt, generator=g)
        lengths = torch.randint(K // 2, K + 1, (B,), device="cuda", generator=g)
        pad = torch.arange(K, device="cuda")[None, :] >= K - lengths[:, None]
        causal4d = torch.ones(Q, K, dtype=torch.bool, device="cuda").tril(K - Q)
        mask4d = pad[:, None, None, :] & causal4d  # what SDPA needs for padding + causality
        additive = torch.zeros(mask4d.shape, dtype=dt, device="cuda").masked_fill(~mask4d, torch.finfo(dt).min)
        scale = D ** -0.5
        scores = torch.matmul(q, k.transpose(-1, -2))
        bench = lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")  # noqa: E731
        ours_sm = bench(lambda: masked_softmax(scores, pad, causal=True, scale=scale))
        torch_sm = bench(lambda: torch.softmax(scores * scale + additive, dim=-1))
        ours_at = bench(lambda: attention(q, k, v, pad, causal=True))
        sdpa_at = bench(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask4d))
        rows.append(dict(shape=f"B{B} H{H} Q{Q} K{K} D{D}", softmax_ms=ours_sm, eager_softmax_ms=torch_sm,
                         attention_ms=ours_at, sdpa_ms=sdpa_at))
        print(f"  {rows[-1]['shape']:<26} masked_softmax {ours_sm:8.3f} ms  eager softmax {torch_sm:8.3f} ms "
              f"({torch_sm / ours_sm:5.2f}x)   attention {ours_at:8.3f} ms  sdpa {sdpa_at:8.3f} ms "
              f"({sdpa_at / ours_at:5.2f}x)", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_masked_softmax.check", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer correctness cases and one benchmark shape")
    parser.add_argument("--no-bench", action="store_true", help="skip the micro-benchmark")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not cuda and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        # The interpreter must be chosen before the kernels are defined, i.e. before this package is imported.
        env = dict(os.environ, TRITON_INTERPRET="1")
        argv = sys.argv[1:] if argv is None else list(argv)
        return subprocess.call([sys.executable, "-m", "hf_masked_softmax.check", *argv], env=env)

    import triton

    import hf_masked_softmax

    device = "cuda" if cuda else "cpu"
    where = torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()})"
    print(f"hf_masked_softmax {hf_masked_softmax.__version__} | torch {torch.__version__} | triton "
          f"{triton.__version__} | {where}")
    if not cuda:
        print("No CUDA device: checking the real Triton kernels in Triton's CPU interpreter on small shapes "
              "(slow, no benchmark). Run on a GPU for the full check and the timings.")

    results = []

    def report(kernel, shape, dtype, form, violation, zeros_exact):
        ok = violation <= 1.0 and zeros_exact
        results.append(dict(kernel=kernel, shape=shape, dtype=str(dtype).replace("torch.", ""), mask=form,
                            error_over_tolerance=violation, masked_exact_zero=zeros_exact, ok=ok))
        print(f"  {'PASS' if ok else 'FAIL'}  {kernel:<15} {shape:<22} {results[-1]['dtype']:<9} {form:<7} "
              f"error/tolerance {violation:6.3f}{'' if zeros_exact else '  masked entries not exactly 0'}",
              flush=True)

    t0 = time.perf_counter()
    print("Correctness against an fp64 reference (forward and backward; 'error/tolerance' <= 1 passes):")
    check_masked_softmax(device, args.quick, report)
    check_attention(device, args.quick, report)
    bench = []
    if cuda and not args.no_bench:
        print("Micro-benchmark, fp16, left padding + causal (median of triton.testing.do_bench):")
        bench = benchmark(args.quick)
    failed = [r for r in results if not r["ok"]]
    print(f"{len(results) - len(failed)}/{len(results)} checks passed in {time.perf_counter() - t0:.1f} s"
          + ("" if not failed else f"; FAILED: {len(failed)}"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=where, torch=torch.__version__, triton=triton.__version__, checks=results,
                           benchmark=bench), f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
