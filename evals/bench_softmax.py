"""Benchmark masked_softmax against the real alternatives (GPU).

Providers, all computing softmax(scale * S + mask) over [B, H, Q, K] scores in the scores' dtype:
  ours        hf_masked_softmax.masked_softmax with the compact 2D padding mask and causal=True/False
  hf_eager    HF's eager recipe: add a prebuilt 4D additive mask, softmax in fp32, cast back
  compiled    torch.compile of that recipe
  softmax     torch.softmax without any mask (reads and writes everything; no masking work)
  zeros       torch.zeros_like(scores) (--quick only): writing the output alone, a floor no masked softmax beats

"Bytes that must move": the kept scores read once, the whole output written once, the 2D mask read once (forward);
the kept Y and dY read once and dS written once (backward). GB/s and % of the measured copy bandwidth use those bytes
for every provider, so they compare time directly.

    python evals/bench_softmax.py [--dtype float16] [--out DIR] [--quick]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import copy_bandwidth_gbs, environment, median_ms, out_dir, print_table, write_json  # noqa: E402
from hf_masked_softmax import masked_softmax  # noqa: E402

SHAPES = [
    # name, (B, H, Q, K), causal, padded
    ("gpt2_prefill", (8, 12, 1024, 1024), True, True),
    ("bert", (32, 12, 512, 512), False, True),
    ("causal_8192", (1, 16, 8192, 8192), True, False),
    ("decode", (32, 12, 1, 2048), False, True),
]
SWEEP_ELEMENTS = 2**26
SWEEP_K = [2**p for p in range(7, 17)]


def make_case(shape, causal, padded, dtype, seed=0):
    B, H, Q, K = shape
    g = torch.Generator(device="cuda").manual_seed(seed)
    scores = torch.randn(shape, device="cuda", dtype=dtype, generator=g)
    mask2d = None
    keep = torch.ones(B, 1, Q, K, dtype=torch.bool, device="cuda")
    if padded:
        lengths = torch.randint(K // 2, K + 1, (B,), device="cuda", generator=g)
        # Left padding (generation style): the valid keys are the last `length` ones.
        mask2d = (torch.arange(K, device="cuda")[None, :] >= (K - lengths)[:, None]).long()
        keep &= mask2d.bool()[:, None, None, :]
    if causal:
        i = torch.arange(Q, device="cuda")[:, None]
        j = torch.arange(K, device="cuda")[None, :]
        keep &= (j <= i + (K - Q))[None, None]
    additive = None
    if padded or causal:
        additive = torch.zeros(keep.shape, dtype=dtype, device="cuda").masked_fill_(~keep, torch.finfo(dtype).min)
    kept = int(keep.sum().item()) * H
    return scores, mask2d, additive, kept


def hf_eager_recipe(scores, additive, scale):
    x = scores * scale
    if additive is not None:
        x = x + additive
    return torch.softmax(x, dim=-1, dtype=torch.float32).to(scores.dtype)


_compiled_recipe = None


def providers(scores, mask2d, additive, causal, scale):
    global _compiled_recipe
    if _compiled_recipe is None:
        # The backward-only timing replays one graph (retain_graph=True), which donated buffers forbid.
        torch._functorch.config.donated_buffer = False
        _compiled_recipe = torch.compile(hf_eager_recipe, dynamic=False)
    return {
        "ours": lambda s: masked_softmax(s, mask2d, causal=causal, scale=scale),
        "hf_eager": lambda s: hf_eager_recipe(s, additive, scale),
        "compiled": lambda s: _compiled_recipe(s, additive, scale),
        "softmax": lambda s: torch.softmax(s, dim=-1),
        "zeros": lambda s: torch.zeros_like(s),
    }


def time_provider(fn, scores, modes):
    """{mode: median ms} for forward, forward+backward and backward alone."""
    out = {}
    if "fwd" in modes:
        out["fwd"] = median_ms(lambda: fn(scores))
    if "fwd_bwd" in modes or "bwd" in modes:
        x = scores.detach().clone().requires_grad_(True)
        dy = torch.randn_like(scores)

        def fwd_bwd():
            fn(x).backward(dy)

        fwd_bwd()
        if "fwd_bwd" in modes:
            out["fwd_bwd"] = median_ms(fwd_bwd, grad_to_none=[x])
        if "bwd" in modes:
            y = fn(x)
            out["bwd"] = median_ms(lambda: torch.autograd.grad(y, x, dy, retain_graph=True))
            del y
    return out


def backward_kernel_ms(scores, mask2d, causal, scale):
    """Median ms of the backward kernel alone (its launcher replayed in a CUDA graph; the 2D mask's key ranges computed
    once outside, as the eager backward reuses the forward's)."""
    ms = sys.modules["hf_masked_softmax.masked_softmax"]  # the package re-exports the function under this name
    from hf_masked_softmax import masks as _masks

    spec = _masks.prepare_mask(mask2d, tuple(scores.shape), scores.device)
    ranges = _masks.pad_ranges(spec.tensor) if spec.kind == _masks.PAD2D else None
    blocks = (ms.MAX_SINGLE_PASS_K, ms.LOOP_BLOCK_K)
    y = masked_softmax(scores, mask2d, causal=causal, scale=scale)
    dy = torch.randn_like(scores)
    return median_ms(lambda: ms._backward(y, dy, spec, causal, scale, blocks, ranges), cuda_graph=True)


def bytes_moved(shape, kept, elem, mask_bytes):
    numel = shape[0] * shape[1] * shape[2] * shape[3]
    return {
        "fwd": kept * elem + numel * elem + mask_bytes,
        "bwd": 2 * kept * elem + numel * elem + mask_bytes,
        "fwd_bwd": 3 * kept * elem + 2 * numel * elem + 2 * mask_bytes,
    }


def run_case(name, shape, causal, padded, dtype, copy_gbs, names, modes, graph=False):
    scores, mask2d, additive, kept = make_case(shape, causal, padded, dtype)
    scale = 0.125
    must = bytes_moved(shape, kept, scores.element_size(), 0 if mask2d is None else mask2d.numel() * 8)
    rows = []
    provs = providers(scores, mask2d, additive, causal, scale)
    for prov in names:
        # torch.zeros_like has no backward: it is a forward-only floor
        times = time_provider(provs[prov], scores, ["fwd"] if prov == "zeros" else modes)
        for mode, ms in times.items():
            gbs = must[mode] / (ms * 1e-3) / 1e9
            rows.append(dict(shape=name, dims="x".join(map(str, shape)), causal=causal, padded=padded,
                             provider=prov, mode=mode, ms=ms, gbs=gbs, pct_copy=100 * gbs / copy_gbs))
    if graph:
        # the kernel alone: replayed in a CUDA graph, no host work between launches
        graph_ms = {"fwd": median_ms(lambda: provs["ours"](scores), cuda_graph=True)}
        if "bwd" in modes or "fwd_bwd" in modes:
            graph_ms["bwd"] = backward_kernel_ms(scores, mask2d, causal, scale)
        for mode, ms in graph_ms.items():
            gbs = must[mode] / (ms * 1e-3) / 1e9
            rows.append(dict(shape=name, dims="x".join(map(str, shape)), causal=causal, padded=padded,
                             provider="ours_cuda_graph", mode=mode, ms=ms, gbs=gbs, pct_copy=100 * gbs / copy_gbs))
    del scores, mask2d, additive
    torch.cuda.empty_cache()
    return rows


def add_speedups(rows):
    base = {(r["shape"], r["mode"]): r["ms"] for r in rows if r["provider"] == "ours"}
    for r in rows:
        ours = base.get((r["shape"], r["mode"]))
        r["ours_speedup"] = r["ms"] / ours if ours else float("nan")


def plot(rows, copy_gbs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5))
    colors = {"ours": "tab:blue", "compiled": "tab:orange", "hf_eager": "tab:green", "softmax": "tab:red"}
    named = [s[0] for s in SHAPES]
    provs = ["ours", "compiled", "hf_eager", "softmax"]
    width = 0.2
    for n, prov in enumerate(provs):
        vals = [next((r["ms"] for r in rows if r["shape"] == s and r["provider"] == prov and r["mode"] == "fwd"), 0)
                for s in named]
        ax1.bar([i + n * width for i in range(len(named))], vals, width, label=prov, color=colors[prov])
    ax1.set_xticks([i + 1.5 * width for i in range(len(named))])
    ax1.set_xticklabels(named)
    ax1.set_yscale("log")
    ax1.set_ylabel("forward median ms (log)")
    ax1.set_title("masked softmax forward")
    ax1.legend()
    for prov in ["ours", "hf_eager", "softmax"]:
        pts = sorted((int(r["dims"].split("x")[3]), r["gbs"]) for r in rows
                     if r["shape"].startswith("sweep") and r["provider"] == prov and r["mode"] == "fwd")
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=prov, color=colors[prov])
    ax2.axhline(copy_gbs, color="gray", linestyle="--", label=f"copy {copy_gbs:.0f} GB/s")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("K (2D padding, lengths in [K/2, K])")
    ax2.set_ylabel("GB/s over the bytes that must move")
    ax2.set_title("forward K sweep")
    ax2.legend()
    fig.suptitle(f"{torch.cuda.get_device_name()}  {rows[0].get('dtype', '')}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def tune(dtype, only=None, streams=(False,), configs_only=None):
    """Kernel-only forward and backward ms (CUDA graphs) of ours on the named shapes for several launch settings:
    rows per program, chunk width (chunk >= K: one register chunk) and warps; ``streams``: store hints to try
    (True: the streaming hint ``.cs``); ``configs_only``: (block_m, chunk, warps) settings to keep."""
    ms = sys.modules["hf_masked_softmax.masked_softmax"]  # the package re-exports the function under this name
    from hf_masked_softmax.masks import pad_ranges, prepare_mask

    default = ms._launch_config
    rows = []
    for name, shape, causal, padded in SHAPES:
        if only and name not in only:
            continue
        scores, mask2d, _, _ = make_case(shape, causal, padded, dtype)
        spec = prepare_mask(mask2d, shape, scores.device)
        ranges = pad_ranges(spec.tensor) if mask2d is not None else None  # once, as the eager calls cache them
        K = shape[3]
        n_rows = shape[0] * shape[1] * shape[2]
        configs = []
        for chunk in sorted({256, 512, 1024, 2048, 4096, triton_next_pow2(K)}):
            if chunk > triton_next_pow2(K) or (chunk >= K and chunk > 8192):
                continue
            for tile in (1024, 2048, 4096, 8192):
                block_m = tile // chunk
                if block_m < 1 or block_m > 16 or (n_rows < 2000 and block_m > 1):
                    continue
                for per_thread in (8, 16, 32, 64):
                    warps = tile // (32 * per_thread)
                    if 1 <= warps <= 16 and (not configs_only or (block_m, chunk, warps) in configs_only):
                        configs.append((block_m, chunk, chunk >= K, warps))
        dy = torch.randn_like(scores)
        blocks = (ms.MAX_SINGLE_PASS_K, ms.LOOP_BLOCK_K)
        stream_default = ms.STREAM_STORES
        for cfg in configs:
            for stream in streams:
                ms._launch_config = lambda *a, cfg=cfg, **kw: cfg
                ms.STREAM_STORES = stream
                y = ms._forward(scores, spec, causal, 0.125, blocks, ranges)
                fwd = median_ms(lambda: ms._forward(scores, spec, causal, 0.125, blocks, ranges), cuda_graph=True,
                                rep=40)
                bwd = median_ms(lambda: ms._backward(y, dy, spec, causal, 0.125, blocks, ranges), cuda_graph=True,
                                rep=40)
                rows.append(dict(shape=name, block_m=cfg[0], chunk=cfg[1], one_chunk=cfg[2], warps=cfg[3],
                                 stream=stream, fwd=fwd, bwd=bwd))
        ms._launch_config = default
        ms.STREAM_STORES = stream_default
        rows.append(dict(shape=name, block_m="default", chunk=str(default(K, n_rows, ms.MAX_SINGLE_PASS_K,
                                                                            ms.LOOP_BLOCK_K, 132)),
                         fwd=median_ms(lambda: masked_softmax(scores, mask2d, causal=causal, scale=0.125),
                                       cuda_graph=True, rep=40)))
        del scores, mask2d, dy
    print_table(rows, ["shape", "block_m", "chunk", "one_chunk", "warps", "stream", "fwd", "bwd"])
    best = {}
    for r in rows:
        if isinstance(r["block_m"], int):
            for mode in ("fwd", "bwd"):
                k = (r["shape"], mode)
                if k not in best or r[mode] < best[k][0]:
                    best[k] = (r[mode], r["block_m"], r["chunk"], r["warps"], "stream" if r["stream"] else "")
    for k, v in sorted(best.items()):
        print("best", k, v)


def triton_next_pow2(n):
    return 1 << (n - 1).bit_length()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--out", default=None, help="folder for bench_softmax.json/.png (default $OUT or ./out)")
    ap.add_argument("--quick", action="store_true", help="named shapes only, forward only, no torch.compile")
    ap.add_argument("--modes", default=None, help="comma-separated subset of fwd,fwd_bwd,bwd (overrides --quick's)")
    ap.add_argument("--tune-shapes", default=None, help="comma-separated named shapes for --tune (default all)")
    ap.add_argument("--tune", action="store_true", help="time the single-pass kernel under several tile shapes")
    ap.add_argument("--tune-stream", action="store_true",
                    help="--tune: with and without the streaming store hint (.cs) everywhere (default: off only)")
    ap.add_argument("--tune-configs", default=None,
                    help="--tune: only these block_m/chunk/warps settings, e.g. '1/1024/2,8/256/4'")
    args = ap.parse_args(argv)
    if args.tune:
        named = [s[0] for s in SHAPES]
        unknown = [s for s in (args.tune_shapes or "").split(",") if s and s not in named]
        if unknown:
            ap.error(f"unknown --tune-shapes {unknown}; choose from {named}")
        only_cfg = None
        if args.tune_configs:
            try:
                only_cfg = {tuple(int(x) for x in c.split("/")) for c in args.tune_configs.split(",") if c}
            except ValueError:
                ap.error(f"--tune-configs wants block_m/chunk/warps settings such as 1/1024/2, got {args.tune_configs!r}")
            if any(len(c) != 3 for c in only_cfg):
                ap.error(f"--tune-configs wants three numbers per setting (block_m/chunk/warps), got {args.tune_configs!r}")
    if not torch.cuda.is_available():
        sys.exit("bench_softmax.py needs a CUDA GPU")
    if args.tune:
        return tune(getattr(torch, args.dtype), args.tune_shapes.split(",") if args.tune_shapes else None,
                    (False, True) if args.tune_stream else (False,), only_cfg)
    dtype = getattr(torch, args.dtype)
    copy_gbs = copy_bandwidth_gbs()
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {copy_gbs:.0f} GB/s (read + write)")
    names = ["ours", "hf_eager", "softmax", "zeros"] if args.quick else ["ours", "hf_eager", "compiled", "softmax"]
    modes = ["fwd"] if args.quick else ["fwd", "fwd_bwd", "bwd"]
    if args.modes:
        modes = [m for m in args.modes.split(",") if m]
    rows = []
    for name, shape, causal, padded in SHAPES:
        rows += run_case(name, shape, causal, padded, dtype, copy_gbs, names, modes, graph=True)
    if not args.quick:
        for K in SWEEP_K:
            shape = (1, 16, max(1, SWEEP_ELEMENTS // (16 * K)), K)
            rows += run_case(f"sweep_K{K}", shape, False, True, dtype, copy_gbs, ["ours", "hf_eager", "softmax"],
                             ["fwd", "bwd"])
    for r in rows:
        r["dtype"] = args.dtype
    add_speedups(rows)
    print_table(rows, ["shape", "dims", "provider", "mode", "ms", "gbs", "pct_copy", "ours_speedup"])
    out = out_dir(args.out)
    write_json(out / "bench_softmax.json", {"environment": environment(), "copy_gbs": copy_gbs, "rows": rows})
    plot(rows, copy_gbs, out / "bench_softmax.png")
    print(f"wrote {out / 'bench_softmax.json'} and {out / 'bench_softmax.png'}")


if __name__ == "__main__":
    main()
