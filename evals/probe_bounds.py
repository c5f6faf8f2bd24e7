"""Where the time of a static-cache step with a 4D mask goes (GPU): the profiler's kernel times of each provider of
``bench_static.py``, and the mask-bounds kernel alone at other block widths and warp counts.

    python evals/probe_bounds.py [--shapes llama-decode,llama-prefill]
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
    args = ap.parse_args(argv)
    from hf_masked_softmax import masks

    if args.variants:
        return variants()

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
        print(f"  mask_bounds (memset + kernel): {benchutil.median_ms(lambda: masks.mask_bounds(view, False, 0.0), cuda_graph=True) * 1e3:8.2f} us")
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
                            view, out, *view.stride(), layout.per_h, layout.rows, K, 0.0, ADDITIVE=False,
                            CHUNK=masks.BOUNDS_CHUNK, TILE_ROWS=tile_rows, BLOCK=block, num_warps=warps)
                    run()
                    ok = torch.equal(out, ref)
                    print(f"  BLOCK {block:5d} key programs {grid[2]:3d} warps {warps}: "
                          f"{benchutil.median_ms(run, cuda_graph=True) * 1e3:8.2f} us same={ok}")

def variants(name="llama-prefill"):
    """The forward kernel alone (profiler time of ``_attn_fwd_kernel``) on the prefill shape's 4D mask, under
    settings forced through the module: which of them makes the bounded kernel slower per key block than the
    unbounded one."""
    import importlib

    from hf_masked_softmax import masks

    attn = importlib.import_module("hf_masked_softmax.attention")
    inp = bench_static.make_inputs(*bench_static.SHAPES[name])
    q, k, v = inp["q"], inp["k"], inp["v"]
    B, H, Q, K = inp["B"], inp["H"], inp["Q"], inp["K"]
    spec = masks.prepare_mask(inp["mask4d"], (B, H, Q, K), q.device)
    view = spec.tensor
    bounds = masks.mask_bounds(view, False, 0.0)
    wide = bounds.clone()
    wide[..., 0], wide[..., 1] = K, K  # every key: the unbounded kernel's blocks, through the bounded code
    layout = masks.bounds_layout(view)
    one = torch.zeros(layout.per_b, 1, 1, 2, dtype=torch.int32, device="cuda")  # one bound per sequence
    one[..., 0] = bounds[..., 0].amax(dim=(1, 2)).view(-1, 1, 1)
    one[..., 1] = bounds[..., 1].amax(dim=(1, 2)).view(-1, 1, 1)
    real_config = attn._fwd_config

    def run(ranges, config=None, view_=view):
        attn._PLANS.clear()
        if config is not None:
            attn._fwd_config = lambda *a, **kw: config
        try:
            fn = lambda: attn._forward(q, k, v, attn._K_BOOL, view_, ranges, 0.0, False, 128 ** -0.5, False)  # noqa
            with torch.no_grad():
                times = benchutil.kernel_times(fn)
            return sum(us for name, (us, _) in times.items() if "attn_fwd" in name)
        finally:
            attn._fwd_config = real_config
            attn._PLANS.clear()

    print(f"== {name} variants: _attn_fwd_kernel us")
    print(f"  unbounded                      {run(None):9.2f}")
    print(f"  bounded                        {run(bounds):9.2f}")
    print(f"  bounded, every key             {run(wide):9.2f}")
    # one bound per sequence needs a mask whose layout has one row chunk: row 0's mask broadcast over the rows
    print(f"  bounded, one per sequence      {run(one, view_=view[:, :, :1].expand(B, H, Q, K)):9.2f}  (row 0's mask)")
    for cfg in ((128, 64, 8, 1), (128, 64, 8, 2), (128, 64, 8, 3), (64, 64, 4, 3), (64, 64, 4, 2), (128, 32, 8, 3)):
        print(f"  config {str(cfg):20s} unbounded {run(None, cfg):9.2f}  bounded {run(bounds, cfg):9.2f}")


if __name__ == "__main__":
    main()
