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
    args = ap.parse_args(argv)
    from hf_masked_softmax import masks

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

if __name__ == "__main__":
    main()
