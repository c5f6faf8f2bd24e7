"""A small Triton kernel alone that repeats what went wrong in the forward's second value tile (forty-fourth session).

On an H100 (Triton 3.6), head dim 48 with 40-wide values through ``attention._split_d``'s rule of before c95bac8 (the
values as a 32-column tile and a 16-column tile whose last 8 columns are masked) gave NaN or wrong values in output
columns 32-39, every head and row, with 64-key blocks (128-row blocks of 8 warps, 64-row blocks of 4 warps), and
an illegal memory access with one or two pipeline stages; 32-key blocks and 64-row blocks of 8 warps were right
(``evals/probe_split_d.py --masked-tails``, NOTES.md). This kernel has only that part: probabilities made in
registers (``exp`` of a loaded tile), ``P @ V`` over key blocks into two accumulators, the first over the values'
columns ``[0, 32)``, the second over ``[32, 48)`` loaded with a mask on the columns past the head dim, and the
output stored under the same mask. Each row: a launch setting and head dim, against the product in fp64.

    python evals/repro_masked_dot.py [--configs 128/64/8/3,...] [--head-dims 40,48] [--keys 333]

With ``TRITON_INTERPRET=1`` it runs on the CPU (Triton's interpreter); there every row is right.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import triton
import triton.language as tl

DEFAULT_CONFIGS = "128/64/8/3,64/64/4/3,64/64/8/3,128/32/8/3,64/32/4/3"


@triton.jit
def _masked_dot_kernel(s_ptr, v_ptr, o_ptr, M, K, stride_sm, stride_vn, stride_om, HEAD_DV: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DV: tl.constexpr, DV_TAIL: tl.constexpr,
                       P_IN_REGISTERS: tl.constexpr, FIRST_TILE: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_dv2 = BLOCK_DV + tl.arange(0, DV_TAIL)
    dv2_ok = offs_dv2 < HEAD_DV
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_M, DV_TAIL], dtype=tl.float32)
    for n0 in range(0, K, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < K
        tile = s_ptr + rows[:, None] * stride_sm + cols[None, :]
        if P_IN_REGISTERS:  # made in registers, as the forward's probabilities are
            s = tl.load(tile, mask=row_ok[:, None] & col_ok[None, :], other=float("-inf"))
            p = tl.exp(s.to(tl.float32)).to(s.dtype)
        else:  # the probabilities themselves (made on the host): the product's operand straight from memory
            p = tl.load(tile, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        if FIRST_TILE:
            v = tl.load(v_ptr + cols[:, None] * stride_vn + offs_dv[None, :], mask=col_ok[:, None], other=0.0)
            acc = tl.dot(p.to(v.dtype), v, acc)
        v2 = tl.load(v_ptr + cols[:, None] * stride_vn + offs_dv2[None, :], mask=col_ok[:, None] & dv2_ok[None, :],
                     other=0.0)
        acc2 = tl.dot(p.to(v2.dtype), v2, acc2)
    o = o_ptr + rows[:, None] * stride_om
    tl.store(o + offs_dv[None, :], acc, mask=row_ok[:, None])
    tl.store(o + offs_dv2[None, :], acc2, mask=row_ok[:, None] & dv2_ok[None, :])


def run(config, head_dv, M=200, K=333, device="cuda", p_in_registers=True, first_tile=True):
    """The kernel's output error against fp64 for one launch setting and values' head dim (32 < head_dv <= 48):
    ``(max |error| over columns [0, 32), over [32, head_dv), any NaN)``. ``p_in_registers``: the probabilities made
    in the kernel (else loaded, made on the host); ``first_tile``: the product over columns [0, 32) too (else only
    the second tile's; the first columns' error is then reported as 0)."""
    block_m, block_n, warps, stages = config
    g = torch.Generator().manual_seed(head_dv)
    s = (torch.randn(M, K, generator=g) - 3.0).to(device, torch.float16)
    v = torch.randn(K, head_dv, generator=g).to(device, torch.float16)
    p = torch.exp(s.double()).to(torch.float16)
    out = torch.zeros(M, head_dv, device=device, dtype=torch.float32)
    _masked_dot_kernel[(triton.cdiv(M, block_m),)](s if p_in_registers else p, v, out, M, K, s.stride(0), v.stride(0),
                                                   out.stride(0), HEAD_DV=head_dv, BLOCK_M=block_m, BLOCK_N=block_n,
                                                   BLOCK_DV=32, DV_TAIL=16, P_IN_REGISTERS=p_in_registers,
                                                   FIRST_TILE=first_tile, num_warps=warps, num_stages=stages)
    ref = p.double() @ v.double()
    if not first_tile:
        ref[:, :32] = 0.0
    err = (out.double() - ref).abs().nan_to_num(float("inf"))
    return float(err[:, :32].max()), float(err[:, 32:].max()), bool(torch.isnan(out).any())


def _ints(text, n, what):
    out = []
    for item in text.split(","):
        try:
            vals = tuple(int(x) for x in item.split("/"))
        except ValueError:
            vals = ()
        if len(vals) != n or min(vals) < 1:
            raise argparse.ArgumentTypeError(f"{what}, got {item!r}")
        out.append(vals if n > 1 else vals[0])
    return out


def launch_settings(text):
    """``--configs``' value: comma-separated ``BLOCK_M/BLOCK_N/warps/stages`` (also ``probe_split_d.py``'s)."""
    return _ints(text, 4, "--configs wants BLOCK_M/BLOCK_N/warps/stages like 128/64/8/3")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, type=launch_settings,
                    help=f"launch settings, each in turn (default {DEFAULT_CONFIGS})")
    ap.add_argument("--head-dims", default="40,48", type=lambda t: _ints(t, 1, "--head-dims wants integers"),
                    help="the values' head dims, each in 33..48 (default 40,48: 8 and 16 valid columns in the "
                         "second tile)")
    ap.add_argument("--keys", type=int, default=333, help="key length (default 333)")
    ap.add_argument("--p-from-memory", action="store_true",
                    help="load the probabilities (made on the host) instead of making them in the kernel")
    ap.add_argument("--second-tile-only", action="store_true", help="leave out the product over columns [0, 32)")
    args = ap.parse_args(argv)
    bad = [d for d in args.head_dims if not 32 < d <= 48]
    if bad:
        ap.error(f"--head-dims must be in 33..48 (a second tile of 16 columns), got {bad}")
    if args.keys < 1:
        ap.error("--keys must be at least 1")
    device = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        ap.error("needs a CUDA GPU (or TRITON_INTERPRET=1 for the CPU)")
    print(f"triton {triton.__version__}, torch {torch.__version__}, "
          f"{torch.cuda.get_device_name() if device == 'cuda' else 'interpreter'}")
    worst = 0.0
    for config in args.configs:
        for head_dv in args.head_dims:
            try:
                lo, hi, nan = run(config, head_dv, K=args.keys, device=device,
                                  p_in_registers=not args.p_from_memory, first_tile=not args.second_tile_only)
            except Exception as exc:  # noqa: BLE001 - a failing launch is the finding: reported, then stop
                print(f"config {'/'.join(map(str, config))} head dim {head_dv}: {type(exc).__name__}: "
                      f"{str(exc)[:120]}", flush=True)
                return 1
            worst = max(worst, lo, hi)
            print(f"config {'/'.join(map(str, config))} head dim {head_dv}: max |error| columns 0-31 {lo:.3g}, "
                  f"32-{head_dv - 1} {hi:.3g}, NaN {nan}", flush=True)
    return 0 if worst < 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
