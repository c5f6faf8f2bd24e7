"""Which head dims in two tiles give the fp64 reference's output on the GPU (forty-third session).

On an H100 at 0e0f39d, head dim 48 with 40-wide values (the values' second tile 8 of its 16 columns valid, 128-row
blocks of 8 warps) came out with NaN columns and then an illegal memory access, in fp16 with an additive 4D mask
(``test_head_dim_split_into_two_tiles_matches_the_reference[add4d-mla]``); since then ``attention._split_d`` takes two
tiles only where the second one is all valid columns. Each case here: fp16, GQA 4 -> 2, an additive 4D mask, a 2D
padding mask, and the padding mask with causality, against the reference; the launcher's register cap and none.

    python evals/probe_split_d.py [--cases 48/40,80/80,...]    # query-key / value head dims
    python evals/probe_split_d.py --masked-tails --configs 128/64/8/3,64/64/4/3 --isolate --cases 48/40

``--masked-tails`` takes the rule of before c95bac8 (a second tile with masked columns too, as for 40, 72 or 48 /
40); ``--configs`` forces the forward's launch settings (BLOCK_M/BLOCK_N/warps/stages, each in turn); ``--isolate``
runs each case in a process of its own, so that a fault (which leaves the CUDA context unusable, every later case
then failing too) is reported and the next case still runs.
"""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import torch
from repro_masked_dot import launch_settings

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


def _masked_tail_rule(attn):
    """``attention._split_d`` as before c95bac8: the two tiles of half the padded width and the rest, the second
    one's columns past the head dim masked."""
    def split_d(D, values=False, decode=False):
        whole = attn._block_d(D)
        if not attn.SPLIT_HEAD_DIM or whole == D or D <= 16 or (values and decode):
            return whole, 0
        return whole // 2, attn._block_d(D - whole // 2)
    return split_d


def run_case(D, Dv, mask_kind, causal, Q=200, K=333, B=2, H=4, config=None, masked_tails=False):
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
    split_d, fwd_config = attn._split_d, attn._fwd_config
    try:
        if masked_tails:
            attn._split_d = _masked_tail_rule(attn)
        if config is not None:
            attn._fwd_config = lambda *a, cfg=tuple(config): cfg
        for label, cap in (("default", None), ("nocap", 0)):
            attn.FWD_MAXNREG = cap
            o = ops.attention(q, k, v, mask, causal=causal, _any_value_dim=True)
            out[label] = (bool(torch.isnan(o).any()), float((o.double() - ref).abs().nan_to_num(1e9).max()))
            if label == "default":
                bad = _bad_places(o, ref)
        tiles = attn._split_d(D), attn._split_d(Dv, True)
    finally:
        attn.FWD_MAXNREG = None
        attn._split_d, attn._fwd_config = split_d, fwd_config
    cfg = "" if config is None else " config " + "/".join(map(str, config))
    print(f"D {D:3d} Dv {Dv:3d} {mask_kind:4s} causal {int(causal)} tiles {tiles[0]} {tiles[1]}{cfg}: "
          + ", ".join(f"{k} nan={n} err={e:.3g}" for k, (n, e) in out.items())
          + (f"; wrong (default): {bad}" if bad else ""), flush=True)


def _spans(values) -> str:
    """Sorted integers as runs: ``0-7,32-39``."""
    values, runs = sorted(values), []
    for x in values:
        if runs and x == runs[-1][1] + 1:
            runs[-1][1] = x
        else:
            runs.append([x, x])
    return ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


def _bad_places(o, ref, tol=1e-2) -> str:
    """Where ``o`` (``[B, H, Q, Dv]``) is NaN or off the reference by more than ``tol``: its heads, columns and
    query rows, as runs (which tile, which rows of a block)."""
    wrong = ((o.double() - ref).abs() > tol) | torch.isnan(o)
    if not wrong.any():
        return ""
    _, h, r, c = wrong.nonzero(as_tuple=True)
    return f"heads {_spans(set(h.tolist()))} rows {_spans(set(r.tolist()))} columns {_spans(set(c.tolist()))}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=_cases, default=_cases(DEFAULT_CASES),
                    help=f"comma-separated D/Dv pairs (default {DEFAULT_CASES})")
    ap.add_argument("--configs", type=launch_settings, default=[None],
                    help="comma-separated forward launch settings BLOCK_M/BLOCK_N/warps/stages to force, each in "
                         "turn (default: the launcher's own)")
    ap.add_argument("--masked-tails", action="store_true",
                    help="split head dims whose second tile has masked columns too (the rule before c95bac8)")
    ap.add_argument("--masks", default="add,pad,pad-causal",
                    help="comma-separated mask paths out of add, pad, pad-causal (default all three)")
    ap.add_argument("--isolate", action="store_true", help="each case in a process of its own")
    ap.add_argument("--_one", nargs=5, help=argparse.SUPPRESS)  # D Dv mask causal config: one case (for --isolate)
    args = ap.parse_args(argv)
    paths = {"add": ("add", False), "pad": ("pad", False), "pad-causal": ("pad", True)}
    masks = [m.strip() for m in args.masks.split(",")]
    bad = [m for m in masks if m not in paths]
    if bad:
        ap.error(f"--masks: unknown {bad}; choose from {sorted(paths)}")
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU")
    if args._one:
        D, Dv, mask_kind, causal, cfg = args._one
        run_case(int(D), int(Dv), mask_kind, causal == "1", config=None if cfg == "-" else launch_settings(cfg)[0],
                 masked_tails=args.masked_tails)
        torch.cuda.synchronize()
        return
    for D, Dv in args.cases:
        for config in args.configs:
            for mask_kind, causal in (paths[m] for m in masks):
                label = f"D {D} Dv {Dv} {mask_kind} causal {int(causal)} config {config}"
                if args.isolate:
                    cmd = [sys.executable, __file__, "--_one", str(D), str(Dv), mask_kind, str(int(causal)),
                           "-" if config is None else "/".join(map(str, config))]
                    if args.masked_tails:
                        cmd.append("--masked-tails")
                    try:
                        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                    except subprocess.TimeoutExpired:
                        print(f"{label}: timed out", flush=True)
                        continue
                    err = (done.stderr.strip().splitlines() or [""])[-1][:160]
                    status = "" if done.returncode == 0 else f" [exit {done.returncode}: {err}]"
                    print(f"{done.stdout.strip() or label + ':'}{status}", flush=True)
                    continue
                try:
                    run_case(D, Dv, mask_kind, causal, config=config, masked_tails=args.masked_tails)
                except Exception as exc:  # noqa: BLE001 - a failing case is the finding, reported, the next one run
                    print(f"{label}: {type(exc).__name__}: {str(exc)[:100]}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
