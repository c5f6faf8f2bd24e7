"""Sweep the fused attention kernel's launch settings on the GPU: forward, and each backward kernel on its own.

Times the launchers themselves (``attention._forward`` / ``attention._backward``) replayed in a CUDA graph, so the
numbers are device time, with no autograd or Python overhead. The backward sweep is a coordinate descent: first the
``dkdv`` kernel's settings with ``dq`` at its default, then ``dq``'s with ``dkdv`` at the best found, each timed as
the whole backward (delta + dkdv + dq). SDPA's default dispatch without a mask (forward and backward, the issue's
anchor) is timed in the same run. Prints the best settings per shape and writes ``tune_attention.json``.

    python evals/tune_attention.py [--shapes gpt2-pad-right,bert] [--what fwd,dkdv,dq] [--dropout P] [--stages 3]
        [--out DIR]
    python evals/tune_attention.py --variants [...]      # compile-time variants, see variants_shape
    python evals/tune_attention.py --length-sweep [...]  # forward time against key length, see lengths_shape
"""
from __future__ import annotations

import argparse
import importlib
import itertools
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchutil  # noqa: E402
from bench_attention import SHAPES, make_inputs  # noqa: E402
attn_mod = importlib.import_module("hf_masked_softmax.attention")  # the module (the package exports the function)
masks_mod = importlib.import_module("hf_masked_softmax.masks")
ops_mod = importlib.import_module("hf_masked_softmax.ops")

FWD_GRID = dict(block_m=(64, 128), block_n=(32, 64, 128), warps=(4, 8), stages=(2, 3, 4))
# dkdv: BLOCK_N keys resident, BLOCK_M the query blocks it walks; dq: BLOCK_M queries resident, BLOCK_N the keys
DKDV_GRID = dict(block_m=(16, 32, 64), block_n=(32, 64, 128), warps=(4, 8), stages=(2, 3, 4))
DQ_GRID = dict(block_m=(64, 128), block_n=(16, 32, 64), warps=(4, 8), stages=(2, 3, 4))
REP_MS = 40  # per config: the sweep has ~100 of them per shape


def _stages(spec, args):
    """The grid with ``--stages`` in place of its pipeline depths (a third of the configurations for one depth)."""
    return dict(spec, stages=tuple(args.stages)) if args.stages else spec


def grid(spec):
    return [tuple(c) for c in itertools.product(spec["block_m"], spec["block_n"], spec["warps"], spec["stages"])]


def launcher_args(inp):
    """Arguments of ``_forward`` / ``_backward`` for a shape's inputs, as ``ops.attention`` builds them."""
    q, k = inp["q"], inp["k"]
    B, H, Q, D = q.shape
    spec = masks_mod.prepare_mask(inp["pad"], (B, H, Q, k.shape[2]), q.device)
    kind, mask_t, ranges = ops_mod._kernel_mask_args(spec, inp["pad"])
    return kind, mask_t, ranges, spec.threshold, inp["causal"], D ** -0.5


def graph_ms(fn) -> float | None:
    try:
        fn()
        torch.cuda.synchronize()
        return benchutil.median_ms(fn, cuda_graph=True, rep=REP_MS)
    except Exception as exc:  # noqa: BLE001 - a config that does not compile (shared memory) is skipped
        print(f"    failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}")
        torch.cuda.synchronize()
        return None


def autograd_backward_times(fn, inp, do) -> dict:
    """The backward as a training step runs it (``torch.autograd.grad`` through the public call): ``plain_ms`` by
    do_bench (what bench_attention.py reports) and ``b2b_us``, wall time per call over back-to-back calls with one
    sync (the host cost, where it exceeds the device time)."""
    q, k, v = (t.detach().requires_grad_(True) for t in (inp["q"], inp["k"], inp["v"]))
    o = fn(q, k, v)

    def step():
        return torch.autograd.grad(o, (q, k, v), do, retain_graph=True)

    step()
    plain = benchutil.median_ms(step)
    torch.cuda.synchronize()
    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    torch.cuda.synchronize()
    return dict(plain_ms=plain, b2b_us=(time.perf_counter() - t0) / n * 1e6, kernel_ms=benchutil.kernel_ms(step))


def sweep_shape(name, args, records):
    inp = make_inputs(name, args.head_dim, args.dtype)
    q, k, v = inp["q"], inp["k"], inp["v"]
    margs = launcher_args(inp)
    p = args.dropout  # attention dropout in our launchers and in SDPA (the training case)
    drop = dict(drop_thr=attn_mod.dropout_threshold(p)[0], seed=torch.tensor([2026], dtype=torch.int64, device="cuda"))
    causal = inp["causal"]
    with torch.no_grad():
        out, lse = attn_mod._forward(q, k, v, *margs, **drop)
    do = torch.randn_like(out)
    D = q.shape[-1]
    decode = attn_mod._is_decode(q.shape[2])
    smem = attn_mod._smem_optin(q.device)  # what a launch on this card picks
    default_fwd = attn_mod._fwd_config(D, q.shape[2], q.dtype, decode, causal, p > 0, smem)
    default_bwd = attn_mod._bwd_config(D, q.dtype, causal, p > 0, smem)
    orig_f, orig_b = attn_mod._fwd_config, attn_mod._bwd_config

    def rec(kind, cfg, ms, **extra):
        records.append(dict(shape=name, kind=kind, cfg=cfg, ms=ms, **extra))
        print(f"  {name:15s} {kind:5s} {str(cfg):40s} {'-' if ms is None else f'{ms:.4f} ms'}", flush=True)

    # peers: SDPA's default dispatch without a mask, forward and (autograd) backward
    causal_nomask = causal and inp["Q"] > 1
    sd_fwd = graph_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal_nomask, dropout_p=p))
    qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
    o_sd = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal_nomask, dropout_p=p)
    sd_bwd = benchutil.median_ms(lambda: torch.autograd.grad(o_sd, (qg, kg, vg), do, retain_graph=True))
    rec("sdpa", "default dispatch, no mask", sd_fwd, bwd_ms=sd_bwd)

    best = {}
    try:
        if "fwd" in args.what:
            results = []
            for cfg in [default_fwd] + [c for c in grid(_stages(FWD_GRID, args)) if c != default_fwd]:
                attn_mod._fwd_config = lambda *a, cfg=cfg: cfg
                ms = graph_ms(lambda: attn_mod._forward(q, k, v, *margs, **drop))
                rec("fwd", cfg, ms, default=cfg == default_fwd)
                if ms is not None:
                    results.append((ms, cfg))
            attn_mod._fwd_config = orig_f
            best["fwd"] = min(results)
        kv_best, q_best = default_bwd
        if "dkdv" in args.what:
            results = []
            for cfg in [default_bwd[0]] + [c for c in grid(_stages(DKDV_GRID, args)) if c != default_bwd[0]]:
                attn_mod._bwd_config = lambda *a, cfg=cfg: (cfg, default_bwd[1])
                ms = graph_ms(lambda: attn_mod._backward(do, q, k, v, out, lse, *margs, **drop))
                rec("dkdv", cfg, ms, default=cfg == default_bwd[0])
                if ms is not None:
                    results.append((ms, cfg))
            best["dkdv"] = min(results)
            kv_best = best["dkdv"][1]
        if "dq" in args.what:
            results = []
            for cfg in [default_bwd[1]] + [c for c in grid(_stages(DQ_GRID, args)) if c != default_bwd[1]]:
                attn_mod._bwd_config = lambda *a, cfg=cfg: (kv_best, cfg)
                ms = graph_ms(lambda: attn_mod._backward(do, q, k, v, out, lse, *margs, **drop))
                rec("dq", cfg, ms, default=cfg == default_bwd[1], dkdv=kv_best)
                if ms is not None:
                    results.append((ms, cfg))
            best["dq"] = min(results)
            q_best = best["dq"][1]
        attn_mod._bwd_config = orig_b
        default_bwd_ms = graph_ms(lambda: attn_mod._backward(do, q, k, v, out, lse, *margs, **drop))
        grads_default = attn_mod._backward(do, q, k, v, out, lse, *margs, **drop)
        attn_mod._bwd_config = lambda *a: (kv_best, q_best)
        best_bwd_ms = graph_ms(lambda: attn_mod._backward(do, q, k, v, out, lse, *margs, **drop))
        grads_best = attn_mod._backward(do, q, k, v, out, lse, *margs, **drop)
        # other tile sizes sum in another order: the gradients agree to rounding, never more
        grad_diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(grads_default, grads_best))
        grad_scale = max(float(a.float().abs().max()) for a in grads_default)
        pad = inp["pad"]
        ours_autograd = autograd_backward_times(
            lambda q, k, v: attn_mod.attention(q, k, v, pad, causal=causal, dropout_p=p), inp, do)
        sdpa_autograd = autograd_backward_times(
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal_nomask, dropout_p=p), inp, do)
    finally:
        attn_mod._fwd_config, attn_mod._bwd_config = orig_f, orig_b
    summary = dict(shape=name, sdpa_fwd_ms=sd_fwd, sdpa_bwd_ms=sd_bwd, default_fwd=default_fwd,
                   default_bwd=default_bwd, default_bwd_ms=default_bwd_ms, best_bwd=(kv_best, q_best),
                   best_bwd_ms=best_bwd_ms, grad_max_abs_diff=grad_diff, grad_max_abs=grad_scale,
                   ours_autograd_best=ours_autograd, sdpa_autograd=sdpa_autograd,
                   best={k: dict(ms=v[0], cfg=v[1]) for k, v in best.items()})
    print(f"  {name}: sdpa fwd {sd_fwd:.4f} bwd {sd_bwd:.4f} ms; backward default {default_bwd} "
          f"{default_bwd_ms:.4f} ms -> best {(kv_best, q_best)} {best_bwd_ms:.4f} ms "
          f"({default_bwd_ms / best_bwd_ms:.2f}x; {best_bwd_ms / sd_bwd:.2f}x sdpa); gradients of the two differ by "
          f"{grad_diff:.2e} (largest {grad_scale:.2e})", flush=True)
    print(f"  {name}: autograd backward with the best settings: ours {ours_autograd['plain_ms']:.4f} ms plain, "
          f"{ours_autograd['b2b_us']:.1f} us per call back to back, kernels {_fmt(ours_autograd['kernel_ms'])} ms; "
          f"sdpa {sdpa_autograd['plain_ms']:.4f} ms, {sdpa_autograd['b2b_us']:.1f} us, kernels "
          f"{_fmt(sdpa_autograd['kernel_ms'])} ms", flush=True)
    if "fwd" in best:
        print(f"  {name}: forward best {best['fwd'][1]} {best['fwd'][0]:.4f} ms "
              f"({best['fwd'][0] / sd_fwd:.2f}x sdpa)", flush=True)
    return summary


def variants_shape(name, args, records):
    """The kernels' compile-time variants at the default launch settings (and at ``--fwd-configs``): scale folded
    into the exponent (``FOLD``) or not, the forward's trailing key blocks merged into the interior loop
    (``FWD_MERGE_TAIL``) or not, and the forward's register cap (``FWD_MAXNREG``; None in the labels is the default
    rule, 0 no cap). Forward and whole backward, launchers in a CUDA graph; SDPA's default dispatch without a mask
    and cuDNN with the mask alongside."""
    inp = make_inputs(name, args.head_dim, args.dtype)
    q, k, v = inp["q"], inp["k"], inp["v"]
    margs = launcher_args(inp)
    causal = inp["causal"]
    causal_nomask = causal and inp["Q"] > 1
    with torch.no_grad():
        out, lse = attn_mod._forward(q, k, v, *margs)
    do = torch.randn_like(out)
    D = q.shape[-1]
    default_fwd = attn_mod._fwd_config(D, q.shape[2], q.dtype, attn_mod._is_decode(q.shape[2]), causal, False,
                                       attn_mod._smem_optin(q.device))
    orig = dict(fold=attn_mod._fold, merge=attn_mod.FWD_MERGE_TAIL, maxnreg=attn_mod.FWD_MAXNREG,
                cfg=attn_mod._fwd_config, splits=attn_mod._num_splits)
    summary = dict(shape=name, default_fwd=default_fwd, variants=[])

    def rec(kind, label, ms, **extra):
        records.append(dict(shape=name, kind=kind, variant=label, ms=ms, **extra))
        summary["variants"].append(dict(kind=kind, variant=label, ms=ms, **extra))
        print(f"  {name:15s} {kind:5s} {label:58s} {'-' if ms is None else f'{ms:.4f} ms'}", flush=True)

    rec("sdpa", "default dispatch, no mask", graph_ms(
        lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal_nomask)))
    if inp["pad"] is not None:
        bool_mask = inp["keep4d"]
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                rec("sdpa", "cudnn, bool mask", graph_ms(
                    lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bool_mask)))
        except Exception as exc:  # noqa: BLE001 - a backend that refuses the shape is reported, not fatal
            print(f"    cudnn with the mask: {type(exc).__name__}")
    fwd_cfgs = [default_fwd] + args.fwd_configs
    try:
        for splits in args.splits:  # decode: the key range split across this many programs (default rule aside)
            attn_mod._num_splits = lambda *a, s=splits: s
            for cfg in fwd_cfgs:
                attn_mod._fwd_config = lambda *a, cfg=cfg: cfg
                rec("fwd", f"splits={splits} cfg={cfg}", graph_ms(lambda: attn_mod._forward(q, k, v, *margs)))
            attn_mod._num_splits, attn_mod._fwd_config = orig["splits"], orig["cfg"]
        for fold in (True, False):
            attn_mod._fold = orig["fold"] if fold else (lambda kind, scale: False)
            bwd = graph_ms(lambda: attn_mod._backward(do, q, k, v, out, lse, *margs))
            rec("bwd", f"fold={fold}", bwd)
            for merge in (True, False):
                attn_mod.FWD_MERGE_TAIL = merge
                for cfg in fwd_cfgs if (fold and merge) else fwd_cfgs[:1]:
                    for maxnreg in ((None,) + tuple(args.maxnreg)) if (fold and merge) else (None,):
                        attn_mod._fwd_config = lambda *a, cfg=cfg: cfg
                        attn_mod.FWD_MAXNREG = maxnreg
                        ms = graph_ms(lambda: attn_mod._forward(q, k, v, *margs))
                        rec("fwd", f"fold={fold} merge={merge} cfg={cfg} maxnreg={maxnreg}", ms)
                        attn_mod.FWD_MAXNREG = orig["maxnreg"]
                        attn_mod._fwd_config = orig["cfg"]
    finally:
        attn_mod._fold, attn_mod.FWD_MERGE_TAIL = orig["fold"], orig["merge"]
        attn_mod.FWD_MAXNREG, attn_mod._fwd_config = orig["maxnreg"], orig["cfg"]
        attn_mod._num_splits = orig["splits"]
    return summary


def lengths_shape(name, args, records):
    """The default forward at fixed key lengths: every sequence of the shape's batch right-padded to the same ``n``
    keys (``n = K``: no mask), then the shape's own random lengths. A least-squares line ``ms = fixed + per_key * n``
    over the fixed lengths splits the time into a part that grows with the keys each query sees and one that does
    not (launch, loading Q, storing O, the first and last wave); the shape's own row, against the line at its mean
    length, shows what uneven lengths cost. SDPA's default dispatch on the whole rectangle alongside."""
    inp = make_inputs(name, args.head_dim, args.dtype)
    q, k, v = inp["q"], inp["k"], inp["v"]
    B, K = q.shape[0], k.shape[2]
    lengths = args.lengths or [K * i // 8 for i in range(1, 9)]
    bad = [n for n in lengths if not 1 <= n <= K]
    if bad:
        sys.exit(f"--lengths: {bad} outside 1..{K} for shape {name}")
    summary = dict(shape=name, rows=[])

    def rec(label, mean_len, ms):
        row = dict(shape=name, kind="len", variant=label, mean_len=mean_len, ms=ms)
        records.append(row)
        summary["rows"].append(row)
        print(f"  {name:15s} {label:24s} mean {mean_len:7.1f} keys  {_fmt(ms)} ms", flush=True)

    def forward_ms(pad):
        margs = launcher_args(dict(inp, pad=pad))
        return graph_ms(lambda: attn_mod._forward(q, k, v, *margs))

    for n in lengths:
        pad = None
        if n < K:
            pad = torch.zeros(B, K, dtype=torch.bool, device=q.device)
            pad[:, :n] = True
        rec(f"all {n}" if n < K else "all (no mask)", float(n), forward_ms(pad))
    if inp["pad"] is not None:
        rec("own lengths", sum(inp["lens"]) / B, forward_ms(inp["pad"]))
    rec("sdpa default, no mask", float(K), graph_ms(
        lambda: F.scaled_dot_product_attention(q, k, v, is_causal=inp["causal"] and inp["Q"] > 1)))
    pts = [(r["mean_len"], r["ms"]) for r in summary["rows"][:len(lengths)] if r["ms"] is not None]
    if len(pts) >= 2:
        mx = sum(x for x, _ in pts) / len(pts)
        my = sum(y for _, y in pts) / len(pts)
        sxx = sum((x - mx) ** 2 for x, _ in pts)
        if sxx > 0:
            slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
            summary.update(fixed_ms=my - slope * mx, per_key_ms=slope)
            print(f"  {name}: fit {summary['fixed_ms']:.4f} ms + {slope * 1e3:.4f} us per key", flush=True)
    return summary


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _config_list(text: str) -> list[tuple]:
    cfgs = []
    for c in filter(None, text.split(",")):
        parts = c.split("/")
        if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
            raise argparse.ArgumentTypeError(f"a setting is BLOCK_M/BLOCK_N/warps/stages, e.g. 64/64/4/3; got {c!r}")
        cfgs.append(tuple(int(p) for p in parts))
    return cfgs


def _fmt(ms):
    return "-" if ms is None else f"{ms:.4f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="gpt2-pad-right,bert", help="comma-separated subset of: " + ", ".join(SHAPES))
    ap.add_argument("--what", default="fwd,dkdv,dq",
                    help="comma-separated subset of fwd, dkdv, dq; 'none' times the defaults only")
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--variants", action="store_true",
                      help="time the compile-time variants (FOLD, FWD_MERGE_TAIL, FWD_MAXNREG) instead of sweeping "
                           "(--what is then ignored)")
    ap.add_argument("--fwd-configs", type=_config_list, default=[],
                    help="with --variants: extra forward settings BM/BN/warps/stages,...")
    ap.add_argument("--maxnreg", type=_int_list, default=[],
                    help="with --variants: forward register caps to try besides the default rule (0 = no cap), "
                         "e.g. 0,128,168")
    mode.add_argument("--length-sweep", action="store_true",
                      help="time the default forward at fixed key lengths (--lengths) and at the shape's own "
                           "lengths, instead of sweeping (--what is then ignored)")
    ap.add_argument("--lengths", type=_int_list, default=[],
                    help="with --length-sweep: key lengths, e.g. 64,128,256,512 (default: K/8, 2K/8, ..., K)")
    ap.add_argument("--splits", type=_int_list, default=[],
                    help="with --variants: decode split counts to force, e.g. 1,2,4")
    ap.add_argument("--dropout", type=float, default=0.0,
                    help="the sweep with attention dropout P in our kernels and in SDPA (the training case)")
    ap.add_argument("--stages", type=_int_list, default=[],
                    help="the sweep's pipeline depths only, e.g. 3 (default: each grid's own)")
    ap.add_argument("--out", default=None, help="output folder (default $OUT or ./out)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("tune_attention.py needs a CUDA GPU")
    args.dtype = getattr(torch, args.dtype)
    args.what = set(args.what.split(",")) - {"none"}
    unknown = args.what - {"fwd", "dkdv", "dq"}
    if unknown:
        sys.exit(f"--what: unknown {sorted(unknown)}; choose from fwd, dkdv, dq")
    out = benchutil.out_dir(args.out)
    env = benchutil.environment()
    print(env)
    records, summaries = [], []
    t0 = time.perf_counter()
    payload = dict(env=env, dtype=str(args.dtype), head_dim=args.head_dim, dropout=args.dropout, records=records,
                   summaries=summaries,
                   grids=dict(fwd=FWD_GRID, dkdv=DKDV_GRID, dq=DQ_GRID),
                   command=" ".join(["python", "evals/tune_attention.py"] + sys.argv[1:]),
                   timing="median ms of the launchers replayed in a CUDA graph (device time); SDPA backward: plain "
                          "autograd call")
    for name in filter(None, args.shapes.split(",")):
        if name not in SHAPES:
            sys.exit(f"unknown shape {name!r}; choose from {', '.join(SHAPES)}")
        run = lengths_shape if args.length_sweep else variants_shape if args.variants else sweep_shape
        summaries.append(run(name, args, records))
        benchutil.write_json(out / "tune_attention.json", payload)
    payload["seconds"] = time.perf_counter() - t0
    benchutil.write_json(out / "tune_attention.json", payload)
    print(f"wrote {out / 'tune_attention.json'} ({payload['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
