"""Where the time of a static-cache step with a 4D mask goes (GPU): the profiler's kernel times of each provider of
``bench_static.py``, and the mask-bounds kernel alone at other block widths and warp counts.

    python evals/probe_bounds.py [--shapes llama-decode,llama-prefill]
    python evals/probe_bounds.py --variants [--sass-out DIR]
    ncu ... python evals/probe_bounds.py --launch wide   # one variant's forward, three launches, for Nsight Compute
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchutil  # noqa: E402
import bench_static  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="llama-decode,llama-prefill")
    ap.add_argument("--variants", action="store_true",
                    help="only the prefill kernel's variants: stages, block sizes, bounds forced wide or per sequence")
    ap.add_argument("--launch", choices=VARIANTS, default=None,
                    help="only launch one variant's forward three times (for Nsight Compute), print nothing else")
    ap.add_argument("--sass-out", default=None,
                    help="with --variants: write each compiled forward kernel's SASS there, with its registers")
    args = ap.parse_args(argv)
    from hf_masked_softmax import masks

    if args.launch:
        return launch(args.launch)
    if args.variants:
        return variants(sass_out=args.sass_out)

    for name in args.shapes.split(","):
        inp = bench_static.make_inputs(*bench_static.SHAPES[name])
        provs = bench_static.providers(inp)
        print(f"== {name}")
        with torch.no_grad():
            for p, fn in provs.items():
                times = benchutil.kernel_times(fn)
                for k, (us, n) in sorted(times.items(), key=lambda t: -t[1][0]):
                    print(f"  {p:20s} {us:9.2f} us x{n:.0f}  {k[:90]}")
        spec = masks.prepare_mask(inp["mask4d"], (inp["B"], inp["H"], inp["Q"], inp["K"]), inp["q"].device)
        view = spec.tensor
        layout = masks.bounds_layout(view)
        ref = masks.mask_bounds(view, False, 0.0)
        for rows in (True, False):
            ms = benchutil.median_ms(lambda: masks.mask_bounds(view, False, 0.0, rows=rows), cuda_graph=True)
            print(f"  mask_bounds (memset + kernel), row bounds {rows!s:5s}: {ms * 1e3:8.2f} us")
        out = torch.zeros_like(ref)
        K = inp["K"]
        tile_rows = 1 if layout.rows == 1 else masks.BOUNDS_CHUNK
        for block in (256, 1024, 4096 // tile_rows):
            for programs in (1, 16, 64):
                for warps in (4, 8):
                    grid = (layout.per_b * layout.per_h, layout.chunks, min(programs, -(-K // block)))

                    def run():
                        out.zero_()
                        masks._mask4d_bounds_kernel[grid](
                            view, out, *view.stride(), layout.per_h, layout.rows, view.shape[2], K, 0.0,
                            ADDITIVE=False,
                            CHUNK=masks.BOUNDS_CHUNK, TILE_ROWS=tile_rows, BLOCK=block, ROW_BOUNDS=True,
                            num_warps=warps)
                    run()
                    ok = torch.equal(out, ref)
                    print(f"  BLOCK {block:5d} key programs {grid[2]:3d} warps {warps}: "
                          f"{benchutil.median_ms(run, cuda_graph=True) * 1e3:8.2f} us same={ok}")

VARIANTS = ("unbounded", "bounded", "wide")


def _setup(name="llama-prefill"):
    """The prefill shape's inputs, its 4D mask's bounds and those bounds widened to every key."""
    from hf_masked_softmax import masks

    inp = bench_static.make_inputs(*bench_static.SHAPES[name])
    spec = masks.prepare_mask(inp["mask4d"], (inp["B"], inp["H"], inp["Q"], inp["K"]), inp["q"].device)
    bounds = masks.mask_bounds(spec.tensor, False, 0.0)
    wide = bounds.clone()
    # every key: the unbounded kernel's blocks, through the bounded code
    wide[..., 0], wide[..., 1] = inp["K"], inp["K"]
    return inp, spec.tensor, bounds, wide


def _forward(attn, inp, view, ranges):
    """The inference forward's launcher on ``inp``'s q, k, v with the bool 4D mask ``view`` and its bounds
    ``ranges`` (None: unbounded)."""
    return attn._forward(inp["q"], inp["k"], inp["v"], attn._K_BOOL, view, ranges, 0.0, False, inp["D"] ** -0.5,
                         False)


def launch(variant):
    """Three launches of the prefill forward of one of ``VARIANTS`` (the first compiles), for a profiler."""
    import importlib

    attn = importlib.import_module("hf_masked_softmax.attention")
    inp, view, bounds, wide = _setup()
    ranges = dict(unbounded=None, bounded=bounds, wide=wide)[variant]
    with torch.no_grad():
        for _ in range(3):
            _forward(attn, inp, view, ranges)
    torch.cuda.synchronize()


def _dump_sass(attn, out, seen):
    """Write the SASS of every compiled forward kernel not in ``seen`` under ``out`` (``fwdN.sass``, and its cache
    key, registers and spills in ``fwdN.json``); print its registers and spills."""
    import json
    import os

    from sass_attention import _jit_fn

    os.makedirs(out, exist_ok=True)
    for dev, cache in getattr(_jit_fn(attn._attn_fwd_kernel), "device_caches", {}).items():
        for key, kern in cache[0].items():
            if id(kern) in seen:
                continue
            seen.add(id(kern))
            kern._init_handles()
            tag = f"fwd{len(seen)}"
            with open(os.path.join(out, tag + ".sass"), "w") as f:
                try:
                    f.write(kern.asm["sass"])  # disassembled on first access
                except Exception as exc:  # noqa: BLE001 (no disassembler: the counts still print)
                    f.write(f"no SASS: {exc!r}\n")
            with open(os.path.join(out, tag + ".json"), "w") as f:
                json.dump(dict(key=str(key), n_regs=kern.n_regs, n_spills=kern.n_spills), f)
            print(f"    {tag}: {kern.n_regs} registers, {kern.n_spills} spilled")


def variants(name="llama-prefill", sass_out=None):
    """The forward kernel alone (profiler time of ``_attn_fwd_kernel``) on the prefill shape's 4D mask, under
    settings forced through the module: which of them makes the bounded kernel slower per key block than the
    unbounded one. ``sass_out``: each compiled kernel's SASS is written there."""
    import importlib

    from hf_masked_softmax import masks

    attn = importlib.import_module("hf_masked_softmax.attention")
    inp, view, bounds, wide = _setup(name)
    B, H, Q, K = inp["B"], inp["H"], inp["Q"], inp["K"]
    layout = masks.bounds_layout(view)
    # one bound per sequence: the layout of a mask with one row (one row chunk, then the key chunks' row bounds),
    # its key bound the union of every row chunk's (the entry's first `chunks` pairs; the row bounds follow them)
    broadcast = view[:, :, :1].expand(B, H, Q, K)
    one = masks.mask_bounds(broadcast, False, 0.0)
    one[:, :, 0] = bounds[:, :, :layout.chunks].amax(dim=2)
    real_config = attn._fwd_config

    def run(ranges, config=None, view_=view):
        attn._PLANS.clear()
        if config is not None:
            attn._fwd_config = lambda *a, **kw: config
        try:
            fn = lambda: _forward(attn, inp, view_, ranges)  # noqa: E731
            with torch.no_grad():
                times = benchutil.kernel_times(fn)
            return sum(us for name, (us, _) in times.items() if "attn_fwd" in name)
        finally:
            attn._fwd_config = real_config
            attn._PLANS.clear()
            if sass_out:
                try:
                    _dump_sass(attn, sass_out, seen)
                except Exception as exc:  # noqa: BLE001 (Triton's cache layout differs between versions: times go on)
                    print(f"    no SASS written: {exc!r}")

    seen = set()

    print(f"== {name} variants: _attn_fwd_kernel us")
    print(f"  unbounded                      {run(None):9.2f}")
    print(f"  bounded                        {run(bounds):9.2f}")
    print(f"  bounded, every key             {run(wide):9.2f}")
    # one bound per sequence needs a mask whose layout has one row chunk: row 0's mask broadcast over the rows
    print(f"  bounded, one per sequence      {run(one, view_=broadcast):9.2f}  (row 0's mask)")
    for cfg in ((128, 64, 8, 1), (128, 64, 8, 2), (128, 64, 8, 3), (64, 64, 4, 3), (64, 64, 4, 2), (128, 32, 8, 3),
                (128, 32, 4, 3), (64, 32, 4, 3)):  # the last two: D 128's settings since ea10b41
        print(f"  config {str(cfg):20s} unbounded {run(None, cfg):9.2f}  bounded {run(bounds, cfg):9.2f}")


if __name__ == "__main__":
    main()
