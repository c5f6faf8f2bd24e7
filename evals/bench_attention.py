"""Benchmark the fused attention kernel against PyTorch's attention paths (GPU only).

Shapes (fp16, D=64 by default), key lengths drawn uniformly per sequence:

* gpt2-pad-right / gpt2-pad-left: B8 H12 1024x1024 causal, lengths in [512, 1024] (right padding as in scoring,
  left padding as in batched generation);
* gpt2-nopad: the same with no padding (the no-mask SDPA/cuDNN case);
* bert: B32 H12 512x512 non-causal, lengths in [256, 512], right padding;
* decode: B32 H12 Q=1 K=2048, lengths in [1024, 2048], left padding (one generation step with a KV cache).

Providers: ``ours`` (key ranges cached per mask tensor, as every layer after the first sees them),
``ours+ranges`` (range computation included), SDPA default dispatch and flash backend without a mask (they compute
the whole rectangle: the speed anchor, not the same result on padded shapes), SDPA with the boolean padding mask
(efficient and cuDNN backends), FlexAttention with a block mask (torch.compile'd), and the HF eager recipe
(matmul, additive mask, fp32 softmax, matmul). Forward and backward (``dq, dk, dv``), median ms by
``triton.testing.do_bench``; TFLOP/s count only the (query, key) pairs each provider's own problem keeps
(backward = 2.5x forward). Forward ``ms`` is the median of CUDA-graph replays (device time: in a model the Python
and launch overhead hides behind earlier kernels); ``ms_plain`` times plain calls and ``us_per_call_b2b`` the wall
time of back-to-back calls, which shows the host cost where the CPU is the bottleneck (decoding). Backward ``ms`` is
its kernel time by the PyTorch profiler (plain calls are host-bound for ours), ``ms_plain`` the plain timing.
``--tune`` also sweeps our block sizes. ``--dropout P``: attention dropout in every provider that has it (ours in
the kernels; SDPA's ``dropout_p``; eager's ``F.dropout`` on the probabilities; FlexAttention has none and is left
out), the training case. Writes a table, ``bench_attention.json`` and ``bench_attention.png`` to ``--out`` (default
$OUT or ./out).

    python evals/bench_attention.py [--shapes gpt2-pad-right,bert,decode] [--tune] [--dropout 0.1] [--out DIR]
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchutil  # noqa: E402

attn_mod = importlib.import_module("hf_masked_softmax.attention")
masks_mod = importlib.import_module("hf_masked_softmax.masks")

SHAPES = {
    # name: (B, H, Q, K, causal, (lo, hi) lengths or None, padding side)
    "gpt2-pad-right": (8, 12, 1024, 1024, True, (512, 1024), "right"),
    "gpt2-pad-left": (8, 12, 1024, 1024, True, (512, 1024), "left"),
    "gpt2-nopad": (8, 12, 1024, 1024, True, None, "right"),
    "bert": (32, 12, 512, 512, False, (256, 512), "right"),
    "decode": (32, 12, 1, 2048, True, (1024, 2048), "left"),
}


def make_inputs(name, D, dtype, seed=0, device="cuda"):
    B, H, Q, K, causal, lengths, side = SHAPES[name]
    g = torch.Generator().manual_seed(seed)
    # HF layout: projections give [B, T, H, D]; attention sees transposed views
    q = torch.randn(B, Q, H, D, generator=g).to(device, dtype).transpose(1, 2)
    k = torch.randn(B, K, H, D, generator=g).to(device, dtype).transpose(1, 2)
    v = torch.randn(B, K, H, D, generator=g).to(device, dtype).transpose(1, 2)
    if lengths is None:
        lens = [K] * B
    else:
        lens = torch.randint(lengths[0], lengths[1] + 1, (B,), generator=g).tolist()
    pad = torch.zeros(B, K, dtype=torch.bool)
    for b, n in enumerate(lens):
        if side == "right":
            pad[b, :n] = True
        else:
            pad[b, K - n:] = True
    # one mask object whose key ranges every call shares, as the layers of a patched model's forward do
    pad = masks_mod.share_ranges(pad.to(device))
    keep = pad[:, None, None, :].expand(B, 1, Q, K)
    if causal:
        i = torch.arange(Q, device=device)[:, None]
        j = torch.arange(K, device=device)[None, :]
        keep = keep & (j <= i + K - Q)
    return dict(q=q, k=k, v=v, pad=None if lengths is None else pad, keep4d=keep.contiguous(), causal=causal,
                lens=lens, B=B, H=H, Q=Q, K=K, D=D)


def kept_pairs(inp, masked: bool) -> int:
    """Kept (query, key) pairs over the batch for one head, with the padding mask (masked) or causal only."""
    if masked:
        return int(inp["keep4d"].sum().item())
    Q, K, B = inp["Q"], inp["K"], inp["B"]
    if not inp["causal"]:
        return B * Q * K
    i = torch.arange(Q)[:, None]
    j = torch.arange(K)[None, :]
    return B * int((j <= i + K - Q).sum().item())


PROVIDER_NAMES = ("ours", "ours+ranges", "sdpa-default-nomask", "sdpa-flash-nomask", "sdpa-efficient-mask",
                  "sdpa-cudnn-mask", "flex-blockmask", "eager")  # every name providers() can return


def providers(inp, dropout=0.0):
    """name -> (forward callable, its problem keeps the padding mask?); ``dropout``: every provider's attention
    dropout probability (FlexAttention, which has none, is then left out)."""
    q, k, v, pad, keep, causal = inp["q"], inp["k"], inp["v"], inp["pad"], inp["keep4d"], inp["causal"]
    has_pad = pad is not None
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def ours():
        return attn_mod.attention(q, k, v, pad, causal=causal, dropout_p=dropout)

    def ours_ranges():
        masks_mod.RANGE_CACHE.clear()
        return attn_mod.attention(q, k, v, pad, causal=causal, dropout_p=dropout)

    # SDPA cannot take is_causal together with a mask: causal is folded into the boolean mask, as HF does.
    causal_nomask = causal and inp["Q"] > 1

    def sdpa_default_nomask():
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal_nomask, dropout_p=dropout)

    def sdpa_flash_nomask():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal_nomask, dropout_p=dropout)

    def sdpa_mask(backend):
        def run():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout)
        return run

    additive = torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill(~keep, torch.finfo(q.dtype).min)

    def eager():
        s = torch.matmul(q, k.transpose(-1, -2)) * (inp["D"] ** -0.5) + additive
        p = torch.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
        if dropout:
            p = F.dropout(p, dropout)
        return torch.matmul(p, v)

    out = {"ours": (ours, True)}
    if has_pad:
        out["ours+ranges"] = (ours_ranges, True)
    out["sdpa-default-nomask"] = (sdpa_default_nomask, False)
    out["sdpa-flash-nomask"] = (sdpa_flash_nomask, False)
    out["sdpa-efficient-mask"] = (sdpa_mask(SDPBackend.EFFICIENT_ATTENTION), True)
    out["sdpa-cudnn-mask"] = (sdpa_mask(SDPBackend.CUDNN_ATTENTION), True)
    flex = flex_provider(inp) if not dropout else None
    if flex is not None:
        out["flex-blockmask"] = (flex, True)
    out["eager"] = (eager, True)
    return out


def flex_provider(inp):
    q, k, v, causal = inp["q"], inp["k"], inp["v"], inp["causal"]
    B, Q, K = inp["B"], inp["Q"], inp["K"]
    pad = inp["pad"] if inp["pad"] is not None else torch.ones(B, K, dtype=torch.bool, device="cuda")
    offset = K - Q

    def mask_mod(b, h, qi, kj):
        ok = pad[b, kj]
        if causal:
            ok = ok & (kj <= qi + offset)
        return ok

    return benchutil.compiled_flex("flex-blockmask", q, k, v, mask_mod, Q, K)


def time_provider(fn, inp, backward: bool, graph: bool = True, extra=()):
    """Median ms of the forward (or of ``dq, dk, dv`` given a fixed forward). ``graph=True`` replays the call in a
    CUDA graph: device time without the Python/launch overhead (which a model hides behind earlier kernels);
    ``graph=False`` times plain calls, host overhead included. ``extra``: names of more inputs in ``inp`` whose
    gradients the backward also takes (left unused by providers that do not read them)."""
    ts = tuple(inp[n] for n in ("q", "k", "v", *extra))
    if not backward:
        with torch.no_grad():
            fn()
            return benchutil.median_ms(fn, cuda_graph=graph)
    for t in ts:
        t.requires_grad_(True)
    try:
        out = fn()
        do = torch.randn_like(out)
        unused = bool(extra)
        torch.autograd.grad(out, ts, do, retain_graph=True, allow_unused=unused)
        return benchutil.median_ms(lambda: torch.autograd.grad(out, ts, do, retain_graph=True, allow_unused=unused),
                                   cuda_graph=graph)
    finally:
        for t in ts:
            t.requires_grad_(False)


def backward_kernel_ms(fn, inp):
    """Kernel time of one ``torch.autograd.grad`` of ``fn``'s output (profiler; see benchutil.kernel_ms)."""
    q, k, v = inp["q"], inp["k"], inp["v"]
    for t in (q, k, v):
        t.requires_grad_(True)
    try:
        out = fn()
        do = torch.randn_like(out)
        return benchutil.kernel_ms(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True))
    finally:
        for t in (q, k, v):
            t.requires_grad_(False)


def time_both(fn, inp, backward):
    """(device ms or None, plain ms, host us per call). Forward device time: CUDA-graph replays. Backward: never
    graph-captured (a failed capture of the autograd engine leaves the CUDA context unusable); its device time is the
    kernel time the profiler records. Plain backward calls are host-bound for launch-heavy providers (ours: three
    kernels behind a Python autograd node)."""
    plain = time_provider(fn, inp, backward, graph=False)
    graphed = backward_kernel_ms(fn, inp) if backward else None
    if not backward:
        try:
            graphed = time_provider(fn, inp, backward, graph=True)
        except Exception as exc:  # noqa: BLE001 - some providers cannot be captured
            print(f"    (no CUDA-graph timing: {type(exc).__name__}: {str(exc).splitlines()[0][:100]})")
            torch.cuda.synchronize()
    host_us = None
    if not backward:
        # back-to-back calls, one sync: when the CPU is the bottleneck this is the host cost of one call
        import time

        with torch.no_grad():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(200):
                fn()
            torch.cuda.synchronize()
            host_us = (time.perf_counter() - t0) / 200 * 1e6
    return graphed, plain, host_us


def check_ours(inp):
    """Max abs error of ours vs an fp32 reference on this shape (a sanity check next to the timings)."""
    from hf_masked_softmax.reference import attention_reference

    with torch.no_grad():
        out = attn_mod.attention(inp["q"], inp["k"], inp["v"], inp["pad"], causal=inp["causal"])
        B = min(inp["B"], 4)
        pad = inp["pad"][:B] if inp["pad"] is not None else None
        ref = attention_reference(inp["q"][:B].float(), inp["k"][:B].float(), inp["v"][:B].float(), pad,
                                  causal=inp["causal"])
    return float((out[:B].float() - ref).abs().max().item())


def bench_shape(name, args, rows):
    inp = make_inputs(name, args.head_dim, args.dtype)
    err = check_ours(inp)
    print(f"[{name}] B{inp['B']} H{inp['H']} Q{inp['Q']} K{inp['K']} D{inp['D']} causal={inp['causal']} "
          f"mean key length {sum(inp['lens']) / len(inp['lens']):.0f}; ours max|err| vs fp32 ref {err:.2e}")
    pairs = {True: kept_pairs(inp, True), False: kept_pairs(inp, False)}
    H, D = inp["H"], inp["D"]
    passes = ["fwd"] if inp["Q"] <= 16 else ["fwd", "bwd"]
    for prov, (fn, masked) in providers(inp, args.dropout).items():
        if args.providers and prov not in args.providers:
            continue
        for p in passes:
            try:
                ms_device, ms_plain, host_us = time_both(fn, inp, p == "bwd")
                ms = ms_device if ms_device is not None else ms_plain
            except Exception as exc:  # noqa: BLE001
                msg = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
                print(f"  {prov:22s} {p}: not run ({type(exc).__name__}: {msg})")
                rows.append(dict(shape=name, provider=prov, pass_=p, ms=None, error=msg))
                continue
            flops = 4 * D * H * pairs[masked] * (2.5 if p == "bwd" else 1.0)
            row = dict(shape=name, provider=prov, pass_=p, dropout=args.dropout, ms=ms, ms_device=ms_device,
                       ms_plain=ms_plain,
                       us_per_call_b2b=host_us,
                       tflops=flops / ms / 1e9, problem="padded" if masked else "no-mask")
            if inp["Q"] <= 16 and masked:
                # bytes that must move: the valid keys and values once, q and out
                nbytes = 2 * H * D * q_bytes(inp) * sum(inp["lens"])
                row["gbs"] = nbytes / ms / 1e6
            rows.append(row)
            print(f"  {prov:22s} {p}: {ms:.4f} ms (plain {ms_plain:.4f}, back-to-back {host_us} us)  "
                  f"{row['tflops']:.1f} TFLOP/s" +
                  (f"  {row['gbs']:.0f} GB/s" if "gbs" in row else ""))
    return inp


def q_bytes(inp):
    return inp["q"].element_size()


def tune(args, results):
    """Sweep decode split counts, forward (CUDA-graph timing) and backward (plain timing) block configurations."""
    fwd_cfgs = [(128, 64, 4, 3), (64, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 4)]
    # (inner, resident, warps, stages) for both backward kernels; evals/tune_attention.py sweeps each on its own
    bwd_cfgs = [(32, 128, 4, 3), (32, 128, 8, 3), (64, 64, 4, 3), (32, 64, 4, 3), (64, 128, 8, 3), (32, 128, 4, 2)]
    orig_f, orig_b, orig_splits = attn_mod._fwd_config, attn_mod._bwd_config, attn_mod._num_splits

    def record(kind, shape, cfg, fn, inp, backward, **extra):
        try:
            ms = time_provider(fn, inp, backward, graph=not backward)
        except Exception as exc:  # noqa: BLE001
            ms = None
            print(f"  tune {kind} {shape} {cfg} {extra}: failed {type(exc).__name__}: {str(exc)[:100]}")
        results.append(dict(kind=kind, shape=shape, cfg=cfg, ms=ms, **extra))
        print(f"  tune {kind} {shape} {cfg} {extra}: {ms}")

    try:
        inp = make_inputs("decode", args.head_dim, args.dtype)
        for bn in (64,) if args.tune_what == "all" else ():
            attn_mod._fwd_config = lambda *a, bn=bn: (16, bn, 4, 3)
            for splits in (1, 2, 4):
                attn_mod._num_splits = lambda *a, s=splits: s
                fn = lambda inp=inp: attn_mod.attention(inp["q"], inp["k"], inp["v"], inp["pad"], causal=True)
                record("decode", "decode", (16, bn, 4, 3), fn, inp, False, splits=splits)
        attn_mod._fwd_config, attn_mod._num_splits = orig_f, orig_splits
        for name in ("gpt2-pad-right", "gpt2-nopad", "bert"):
            inp = make_inputs(name, args.head_dim, args.dtype)
            fn = lambda inp=inp: attn_mod.attention(inp["q"], inp["k"], inp["v"], inp["pad"], causal=inp["causal"])
            for cfg in fwd_cfgs if args.tune_what == "all" else ():
                attn_mod._fwd_config = lambda *a, cfg=cfg: cfg
                record("fwd", name, cfg, fn, inp, False)
            attn_mod._fwd_config = orig_f
            if name != "gpt2-pad-right":
                continue
            for cfg in bwd_cfgs:
                attn_mod._bwd_config = lambda *a, cfg=cfg: _bwd_pair(cfg)
                record("bwd", name, cfg, fn, inp, True)
            attn_mod._bwd_config = orig_b
    finally:
        attn_mod._fwd_config, attn_mod._bwd_config, attn_mod._num_splits = orig_f, orig_b, orig_splits


def _bwd_pair(cfg):
    """(dkdv, dq) launch settings from one (inner, resident, warps, stages), or a pair given as such."""
    if len(cfg) == 2:
        return tuple(tuple(c) for c in cfg)
    inner, resident, warps, stages = cfg
    return (inner, resident, warps, stages), (resident, inner, warps, stages)


def plot(rows, env, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib not installed: no PNG (rerun with --plot-from on the JSON elsewhere)")
        return
    shapes = list(dict.fromkeys(r["shape"] for r in rows if r.get("ms")))
    fig, axes = plt.subplots(2, len(shapes), figsize=(3.4 * len(shapes), 7), squeeze=False)
    for col, shape in enumerate(shapes):
        for row, p in enumerate(("fwd", "bwd")):
            ax = axes[row][col]
            sel = [r for r in rows if r["shape"] == shape and r["pass_"] == p and r.get("ms")]
            if not sel:
                ax.axis("off")
                continue
            names = [r["provider"] for r in sel]
            colors = ["tab:red" if n.startswith("ours") else "tab:gray" if "nomask" in n else "tab:blue"
                      for n in names]
            ax.barh(names, [r["ms"] for r in sel], color=colors)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            drop = max((r.get("dropout") or 0.0) for r in sel)
            ax.set_title(f"{shape} {p}" + (f", dropout {drop:g}" if drop else ""), fontsize=9)
            ax.set_xlabel("ms (median, log scale)", fontsize=8)
            ax.tick_params(axis="both", labelsize=7)
            ax.invert_yaxis()
    fig.suptitle(f"fused attention vs PyTorch on {env.get('gpu')}, torch {env.get('torch')}, triton "
                 f"{env.get('triton')} (red: ours; gray: no mask, a different problem on padded shapes)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated subset of: " + ", ".join(SHAPES))
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    ap.add_argument("--tune", action="store_true", help="also sweep our block sizes and decode splits")
    ap.add_argument("--bwd-config", default=None,
                    help="override our backward blocks: 'inner,resident,warps,stages' (both kernels), "
                         "'M,N,warps,stages/M,N,warps,stages' (dkdv/dq) or a tune JSON to take the fastest from")
    ap.add_argument("--tune-what", default="all", choices=["all", "bwd"], help="what --tune sweeps")
    ap.add_argument("--tune-only", action="store_true", help="only the sweep (writes bench_attention_tune.json)")
    ap.add_argument("--dropout", type=float, default=0.0,
                    help="attention dropout probability for every provider (training; FlexAttention left out)")
    ap.add_argument("--providers", default=None,
                    help="comma-separated subset of the providers to time (default: all; names as in the table, "
                         "e.g. ours,sdpa-default-nomask)")
    ap.add_argument("--out", default=None, help="output folder (default $OUT or ./out)")
    ap.add_argument("--plot-from", default=None, help="only redraw the PNG from an earlier JSON")
    args = ap.parse_args(argv)
    if args.providers is not None:
        args.providers = [p for p in args.providers.split(",") if p]
        unknown = sorted(set(args.providers) - set(PROVIDER_NAMES))
        if unknown or not args.providers:
            what = f"unknown {unknown}" if unknown else "empty"
            ap.error(f"--providers: {what}; choose from {', '.join(PROVIDER_NAMES)}")
    out = benchutil.out_dir(args.out)
    if args.plot_from:
        import json

        if not os.path.isfile(args.plot_from):
            ap.error(f"--plot-from {args.plot_from!r}: no such file")
        data = json.load(open(args.plot_from))
        plot(data["rows"], data["env"], out / "bench_attention.png")
        return
    unknown = [s for s in args.shapes.split(",") if s and s not in SHAPES]
    if unknown:
        ap.error(f"unknown --shapes {unknown}; choose from {', '.join(SHAPES)}")
    if not 1 <= args.head_dim <= 256:
        ap.error(f"--head-dim must be in 1..256, got {args.head_dim}")
    if not 0.0 <= args.dropout < 1.0:
        ap.error(f"--dropout must be in [0, 1), got {args.dropout}")
    if not torch.cuda.is_available():
        sys.exit("bench_attention.py needs a CUDA GPU")
    args.dtype = getattr(torch, args.dtype)
    if args.bwd_config:
        if os.path.isfile(args.bwd_config):
            import json

            tuned = [t for t in json.load(open(args.bwd_config))["tuning"] if t["kind"] == "bwd" and t.get("ms")]
            cfg = tuple(min(tuned, key=lambda t: t["ms"])["cfg"])
        else:
            try:
                parts = [tuple(int(x) for x in part.split(",")) for part in args.bwd_config.split("/")]
            except ValueError:
                ap.error(f"--bwd-config wants 'M,N,warps,stages' (or two of them joined by '/') or a tune JSON, "
                         f"got {args.bwd_config!r}")
            cfg = parts[0] if len(parts) == 1 else tuple(parts)
        cfg = _bwd_pair(cfg)
        print(f"backward blocks overridden: dkdv {cfg[0]}, dq {cfg[1]}")
        attn_mod._bwd_config = lambda *a, cfg=cfg: cfg
    env = benchutil.environment()
    print(env)
    ceil = {"copy_gbs": benchutil.copy_bandwidth_gbs()}
    a = torch.randn(8192, 8192, device="cuda", dtype=args.dtype)
    ceil["matmul_tflops"] = 2 * 8192 ** 3 / benchutil.median_ms(lambda: a @ a) / 1e9
    del a
    print(f"ceilings: copy {ceil['copy_gbs']:.0f} GB/s, matmul {ceil['matmul_tflops']:.0f} TFLOP/s")
    rows, tuning = [], []
    if args.tune_only:
        args.tune, args.shapes = True, ""
    payload = dict(env=env, ceilings=ceil, dtype=str(args.dtype), head_dim=args.head_dim, dropout=args.dropout,
                   shapes=SHAPES,
                   bwd_config_override=args.bwd_config and [list(c) for c in
                                                            attn_mod._bwd_config(args.head_dim, args.dtype)],
                   rows=rows, tuning=tuning, command=" ".join(["python", "evals/bench_attention.py"] + sys.argv[1:]),
                   timing="ms: device time: median of CUDA-graph replays for forward, kernel time by the profiler for "
                          "backward (plain do_bench where the profiler fails); "
                          "ms_plain: plain do_bench (host overhead included when the CPU is the bottleneck); "
                          "us_per_call_b2b: wall time per call over 200 back-to-back calls")
    failed = []
    for name in filter(None, args.shapes.split(",")):
        try:
            bench_shape(name, args, rows)
        except Exception:  # noqa: BLE001 - keep the other shapes' numbers
            traceback.print_exc()
            failed.append(name)
        benchutil.write_json(out / "bench_attention.json", payload)  # after each shape: partial runs keep data
    if args.tune:
        tune(args, tuning)
    if args.tune_only:
        benchutil.write_json(out / "bench_attention_tune.json", dict(env=env, tuning=tuning))
        return
    print()
    for r in rows:
        r["pass"] = r["pass_"]
        base = next((x for x in rows if x["shape"] == r["shape"] and x["pass_"] == r["pass_"]
                     and x["provider"] == "ours" and x.get("ms")), None)
        if r.get("ms") and base:
            r["ours_speedup"] = r["ms"] / base["ms"]
    benchutil.write_json(out / "bench_attention.json", payload)
    benchutil.print_table([r for r in rows if r.get("ms")],
                          ["shape", "pass", "provider", "ms", "ms_plain", "us_per_call_b2b", "tflops", "gbs",
                           "ours_speedup", "problem"])
    plot(rows, env, out / "bench_attention.png")
    if failed:
        sys.exit(f"error: shape(s) {failed} failed (tracebacks above); the other shapes' numbers were written")


if __name__ == "__main__":
    main()
