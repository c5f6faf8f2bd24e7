"""Attention on a static cache's steps on the GPU: HF's 4D mask over the whole cache, with and without the fused
kernel's key bounds.

A static cache (``generate(..., cache_implementation="static")``, the cache that ``torch.compile`` and CUDA graphs
want) holds ``K`` keys from the first step on; a step's 4D bool mask keeps the keys written so far (and the
prompt's causality and padding). Providers, on the same fp16 inputs (HF's layout, left padding, GQA where the shape
has it):

* ``fused-4d``: ``attention(q, k, v, mask4d)``, what a patched model runs on such a step: the mask's key bounds
  (one per sequence and 16 query rows, ``masks.mask_bounds``) computed by a small kernel, then only the key blocks
  inside them visited;
* ``fused-4d-unbounded``: the same call with ``attention.MASK4D_BOUNDS`` off (the kernel before the bounds: every key
  block of the cache read, its mask tile applied);
* ``sdpa-4d``: ``scaled_dot_product_attention`` with the 4D mask (HF's sdpa path on a static cache);
* ``fused-filled``: the fused kernel on the written keys only, with the 2D padding mask and causality (what a
  dynamic cache's step computes: the floor for the same result).

Forwards replayed in a CUDA graph (the bounds kernel included), medians; ``vs sdpa-4d`` is sdpa-4d's time over the
provider's. Every provider's output is checked against ``fused-filled``'s on the rows with a key to attend.

    python evals/bench_static.py [--shapes llama-decode,gpt2-decode,llama-prefill] [--out DIR]

Writes ``bench_static.json`` and ``bench_static.png`` under ``--out`` / $OUT.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchutil  # noqa: E402
from bench_attention import time_provider  # noqa: E402

# name -> (B, H, Hkv, Q, cache length K, D, keys written after the step, most left padding)
SHAPES = {
    "llama-decode": (8, 32, 8, 1, 4096, 128, 1024, 256),
    "gpt2-decode": (8, 12, 12, 1, 2048, 64, 512, 128),
    "llama-prefill": (2, 32, 8, 1024, 4096, 128, 1024, 256),
}
PROVIDERS = ("fused-4d", "fused-4d-unbounded", "sdpa-4d", "fused-filled")


def make_inputs(B, H, Hkv, Q, K, D, filled, max_pad, seed=0):
    """q for the step's ``Q`` queries (the last of ``filled`` written keys), a ``K``-key cache whose keys past
    ``filled`` are zeros (as a static cache leaves them), HF's 4D bool mask ``[B, 1, Q, K]``."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Q, H, D, generator=g).to("cuda", torch.float16).transpose(1, 2)
    k, v = (torch.randn(B, K, Hkv, D, generator=g).to("cuda", torch.float16).transpose(1, 2) for _ in range(2))
    k[:, :, filled:] = 0
    v[:, :, filled:] = 0
    pads = torch.randint(0, max_pad + 1, (B,), generator=g)
    j = torch.arange(K)
    pad = (j[None] >= pads[:, None]) & (j[None] < filled)  # [B, K]: each sequence's written, unpadded keys
    i = torch.arange(Q)[:, None] + (filled - Q)  # each query's own position
    mask4d = ((j[None] <= i)[None] & pad[:, None, :])[:, None].to("cuda")
    return dict(q=q, k=k, v=v, pad=pad[:, :filled].to("cuda"), mask4d=mask4d, filled=filled, B=B, H=H, Hkv=Hkv,
                Q=Q, K=K, D=D)


def providers(inp):
    import importlib

    import hf_masked_softmax
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    module = importlib.import_module("hf_masked_softmax.attention")
    q, k, v, pad, mask4d, filled = (inp[n] for n in ("q", "k", "v", "pad", "mask4d", "filled"))
    gqa = inp["H"] != inp["Hkv"]

    def unbounded():
        was = module.MASK4D_BOUNDS
        module.MASK4D_BOUNDS = False
        try:
            return hf_masked_softmax.attention(q, k, v, mask4d)
        finally:
            module.MASK4D_BOUNDS = was

    return {
        "fused-4d": lambda: hf_masked_softmax.attention(q, k, v, mask4d),
        "fused-4d-unbounded": unbounded,
        "sdpa-4d": lambda: sdpa(q, k, v, attn_mask=mask4d, enable_gqa=gqa),
        "fused-filled": lambda: hf_masked_softmax.attention(q, k[:, :, :filled], v[:, :, :filled], pad, causal=True),
    }


def plot(rows, path: Path) -> None:
    panels = [(shape, [r for r in rows if r["shape"] == shape]) for shape in SHAPES
              if any(r["shape"] == shape for r in rows)]
    benchutil.provider_bars(panels, "fused-4d", "static-cache steps (4D mask over the whole cache), fp16, "
                            f"{benchutil.environment()['gpu']}", path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated subset of: " + ", ".join(SHAPES))
    ap.add_argument("--out", default=None, help="output folder (default $OUT or ./out)")
    args = ap.parse_args(argv)
    names = benchutil.pick(ap, args.shapes, SHAPES, "shapes")
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU")
    out = benchutil.out_dir(args.out)
    rows = []
    for name in names:
        B, H, Hkv, Q, K, D, filled, max_pad = SHAPES[name]
        inp = make_inputs(B, H, Hkv, Q, K, D, filled, max_pad)
        print(f"{name}: B{B} H{H}/{Hkv} Q{Q} cache {K} D{D}, {filled} keys written, left padding up to {max_pad}",
              flush=True)
        provs = providers(inp)
        with torch.no_grad():
            ref = provs["fused-filled"]()
            # on the rows with a key to attend (SDPA gives NaN on the others)
            rows_kept = benchutil.rows_with_keys(inp)
            errors = {p: benchutil.max_error_on_rows(fn(), ref, rows_kept) for p, fn in provs.items()}
        times = {}
        for p, fn in provs.items():
            try:
                times[p] = time_provider(fn, inp, False, graph=True)
            except Exception as exc:  # noqa: BLE001 - one provider failing must not lose the others
                print(f"  {p}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        base = times.get("sdpa-4d")
        for p, ms in times.items():
            rows.append(dict(shape=name, provider=p, ms=ms, vs_sdpa_4d=(base / ms) if base else None,
                             max_err=errors.get(p)))
        benchutil.print_table([r for r in rows if r["shape"] == name], ["shape", "provider", "ms", "vs_sdpa_4d",
                                                                        "max_err"])
        del inp, provs, ref
        torch.cuda.empty_cache()
    benchutil.write_json(out / "bench_static.json",
                         dict(environment=benchutil.environment(), shapes={n: SHAPES[n] for n in names}, rows=rows))
    print(f"wrote {out / 'bench_static.json'}")
    plot(rows, out / "bench_static.png")


if __name__ == "__main__":
    main()
