"""Which head dims in two tiles give the fp64 reference's output on the GPU (forty-third session).

On an H100 at 0e0f39d, head dim 48 with 40-wide values (the values' second tile 8 of its 16 columns valid, 128-row
blocks of 8 warps) came out with NaN columns and then an illegal memory access, in fp16 with an additive 4D mask
(``test_head_dim_split_into_two_tiles_matches_the_reference[add4d-mla]``); since then ``attention._split_d`` takes two
tiles only where the second one is all valid columns. Each case here: fp16, GQA 4 -> 2, an additive 4D mask, a 2D
padding mask, and the padding mask with causality, against the reference; the launcher's register cap and none.

    python evals/probe_split_d.py [--cases 48/40,80/80,...]    # query-key / value head dims

A failed case can leave the CUDA context unusable (every later case then fails too): run suspects on their own.
"""
from __future__ import annotations

import argparse
import importlib
import sys

import torch

DEFAULT_CASES = "48/40,48/48,40/40,80/80,96/96,144/144,160/160,192/128,192/192"


def _cases(text: str):
    out = []
    for item in text.split(","):
        try:
            d, dv = (int(x) for x in item.split("/"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--cases wants D/Dv pairs like 48/40, got {item!r}") from None
        if not (1 <= d <= 256 and 1 <= dv <= 256):
            raise argparse.ArgumentTypeError(f"head dims must be in 1..256, got {item!r}")
        out.append((d, dv))
    return out


def run_case(D, Dv, mask_kind, causal, Q=200, K=333, B=2, H=4):
    from hf_masked_softmax import ops
    from hf_masked_softmax.reference import attention_reference

    attn = importlib.import_module("hf_masked_softmax.attention")
    g = torch.Generator().manual_seed(D * 1000 + Dv)
    q = torch.randn(B, H, Q, D, generator=g).cuda().half()
    k = torch.randn(B, 2, K, D, generator=g).cuda().half()
    v = torch.randn(B, 2, K, Dv, generator=g).cuda().half()
    if mask_kind == "pad":
        mask = torch.ones(B, K, dtype=torch.bool)
        mask[1, :100] = False
    else:
        mask = torch.randn(B, 1, Q, K, generator=g).masked_fill(torch.rand(B, 1, Q, K, generator=g) < 0.3,
                                                                 float("-inf"))
    mask = mask.cuda()
    ref = attention_reference(q.double(), k.double(), v.double(), mask, causal=causal, compute_dtype=torch.float64)
    out = {}
    try:
        for label, cap in (("default", None), ("nocap", 0)):
            attn.FWD_MAXNREG = cap
            o = ops.attention(q, k, v, mask, causal=causal, _any_value_dim=True)
            out[label] = (bool(torch.isnan(o).any()), float((o.double() - ref).abs().nan_to_num(1e9).max()))
    finally:
        attn.FWD_MAXNREG = None
    print(f"D {D:3d} Dv {Dv:3d} {mask_kind:4s} causal {int(causal)} tiles {attn._split_d(D)} "
          f"{attn._split_d(Dv, True)}: " + ", ".join(f"{k} nan={n} err={e:.3g}" for k, (n, e) in out.items()),
          flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=_cases, default=_cases(DEFAULT_CASES),
                    help=f"comma-separated D/Dv pairs (default {DEFAULT_CASES})")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU")
    for D, Dv in args.cases:
        for mask_kind, causal in (("add", False), ("pad", False), ("pad", True)):
            try:
                run_case(D, Dv, mask_kind, causal)
            except Exception as exc:  # noqa: BLE001 - a failing case is the finding, reported and the next one run
                print(f"D {D} Dv {Dv} {mask_kind} causal {int(causal)}: {type(exc).__name__}: {str(exc)[:100]}",
                      file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
