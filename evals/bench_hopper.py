"""The Hopper forward (hf_masked_softmax._hopper, Gluon) against the Triton forward and SDPA, in one run (GPU).

For each shape, inference (no autograd), fp16, D = 64 (``--head-dim 128``: 128), HF's ``[B, T, H, D]`` layout
(``gpt2-cache``: keys and values in a KV cache's ``[B, H, T, D]`` memory), right padding with key lengths uniform in
the shape's range, causal for the GPT-2 shapes: ``hf_masked_softmax.attention`` with the Hopper kernel on, with it
off (the Triton kernel), both again without a mask (every key kept), SDPA's default dispatch without a mask (the
whole rectangle, or the causal triangle) and SDPA with the bool padding mask (combined with the causal one). Each is
timed twice: replayed in a CUDA graph (GPU time alone) and called eagerly (host time included: both launch through
the library's launch shortcut). The batch sweep at T = 512 shows where the Hopper kernel starts to pay.

    python evals/bench_hopper.py [--shapes bert,bert-full,gpt2,...] [--out DIR]
    python evals/bench_hopper.py --ab split --shapes bert,gpt2   # a kernel switch on / off, alternating
    python evals/bench_hopper.py --head-dim 128 --ab wide --shapes bert,gpt2   # head dim 128: Hopper vs Triton

Writes a table, ``bench_hopper.json`` and ``bench_hopper.png`` (the batch sweep) to ``--out`` (default $OUT or
./out).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

SHAPES = {  # name: (B, H, T, lowest key length, highest, causal)
    "bert": (32, 12, 512, 256, 512, False),
    "bert-full": (32, 12, 512, 512, 512, False),
    "bert-T128": (128, 12, 128, 64, 128, False),
    "gpt2": (8, 12, 1024, 512, 1024, True),  # issue 5's GPT-2 prefill
    "gpt2-full": (8, 12, 1024, 1024, 1024, True),
    "gpt2-cache": (8, 12, 1024, 512, 1024, True),
    "gpt2-prompt128": (8, 12, 128, 64, 128, True),  # the generate benchmark's prefill (B8, prompts up to 128)
    "tiny-B1-T128": (1, 12, 128, 64, 128, False),
    "tiny-B1-H2-T128": (1, 2, 128, 64, 128, False),
    "tiny-B1-T256-causal": (1, 12, 256, 128, 256, True),
    **{f"sweep-B{b}": (b, 12, 512, 256, 512, False) for b in (1, 2, 4, 8, 16, 64)},
}
# --ab: settings of hf_masked_softmax._hopper timed one way and the other: {attribute: (on, off)}
SWITCHES = {"cursor": {"CURSOR_REGS": (True, False)}, "split": {"SPLIT_LOOP": (True, False)},
            # tiles of 64 query rows, three programs per multiprocessor (12 warps), against 128 rows and two, for
            # every call
            "tile64": {"BLOCK_M": (64, 128), "PER_SM": (3, 2), "FINE_BLOCK_M": (64, 128), "FINE_PER_SM": (3, 2)},
            # the Hopper kernel as the library runs it against the Triton kernel
            "hopper": {"ENABLED": (True, False)},
            # calls below the floor of four 128-row tiles per multiprocessor: on the Hopper kernel's 64-row tiles
            # against the Triton kernel
            "small": {"SMALL_CALLS": (True, False)},
            # the compiled kernels' C launch called directly (every kernel; the Hopper kernel's TMA descriptors
            # encoded once per address) against Triton's launcher: hf_masked_softmax._launch.RAW
            "launch": {"_launch.RAW": (True, False)},
            # the tile count and grid size of calls without causality as runtime arguments (one compiled kernel for
            # every batch size) against compile-time constants
            "counts": {"RUNTIME_COUNTS": (True, False)},
            # every call's counts, query blocks per head included, as runtime arguments against the default
            "counts-all": {"RUNTIME_ALL": (True, False)},
            # head dim 128 on the Hopper kernel (_hopper.WIDE_HEADS) against the Triton kernel: with --head-dim 128
            "wide": {"WIDE_HEADS": (True, False)}}


def _inputs(name, head_dim=64):
    """Shape ``name``'s q, k, v (``[B, H, T, head_dim]`` views of HF's layout), bool padding mask and that mask
    shared for its key ranges to be cached."""
    import benchutil
    from hf_masked_softmax import masks

    B, H, T, lo, hi, _ = SHAPES[name]
    q, k, v, _, pad = benchutil.padded_bthd(B, H, T, lo, hi, d=head_dim)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    if name.endswith("-cache"):
        kt, vt = kt.contiguous(), vt.contiguous()
    return qt, kt, vt, pad, masks.share_ranges(pad)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--out", default=None)
    ap.add_argument("--head-dim", type=int, choices=(64, 128), default=64,
                    help="head dim of every shape (128: the Hopper kernel takes it only with _hopper.WIDE_HEADS, "
                         "which --ab wide switches)")
    ap.add_argument("--ab", choices=sorted(SWITCHES), default=None,
                    help="instead: the Hopper kernel with one of its switches on and off, alternating, 3 rounds, "
                         "CUDA graph, and the largest difference between the two outputs (cursor: the load "
                         "cursor's tile bounds in registers or read per block, _hopper.CURSOR_REGS; split: a tile's "
                         "key blocks in an unmasked and a masked loop, _hopper.SPLIT_LOOP, for the calls without "
                         "causality; tile64: tiles of 64 query rows and three programs per multiprocessor against "
                         "128 rows and two for every call, _hopper's BLOCK_M, PER_SM, FINE_BLOCK_M, FINE_PER_SM; "
                         "hopper: the Hopper kernel as the library runs it against the Triton kernel, "
                         "_hopper.ENABLED; small: calls below the tile-count floor on the Hopper kernel's 64-row "
                         "tiles against the Triton kernel, _hopper.SMALL_CALLS; launch: the kernels' C launch "
                         "called directly, with the Hopper kernel's TMA descriptors encoded once per address, "
                         "against Triton's launcher, _launch.RAW; counts: the tile count and grid size of calls "
                         "without causality as runtime arguments against compile-time constants, "
                         "_hopper.RUNTIME_COUNTS; counts-all: every call's counts, query blocks per head "
                         "included, at run time against the default, _hopper.RUNTIME_ALL; wide: head dim 128 on the "
                         "Hopper kernel against the Triton kernel, _hopper.WIDE_HEADS, with --head-dim 128)")
    args = ap.parse_args(argv)
    unknown = [s for s in args.shapes.split(",") if s and s not in SHAPES]
    if unknown:
        ap.error(f"unknown --shapes {unknown}; choose from {sorted(SHAPES)}")
    if not [s for s in args.shapes.split(",") if s]:
        ap.error("--shapes is empty")
    if args.ab == "wide" and args.head_dim != 128:
        ap.error("--ab wide switches head dim 128's Hopper kernel: give --head-dim 128")
    if not torch.cuda.is_available():
        sys.exit("bench_hopper.py needs a CUDA GPU")
    import torch.nn.functional as F

    import benchutil
    import hf_masked_softmax as hms

    hopper = importlib.import_module("hf_masked_softmax._hopper")
    out_dir = benchutil.out_dir(args.out)
    if args.ab:
        return switch_ab(args, out_dir)
    if args.head_dim != 64:
        hopper.WIDE_HEADS = True  # the "hopper" providers at head dim 128; "triton" ones turn the kernel off
    rows = []
    for name in [s for s in args.shapes.split(",") if s]:
        B, H, T, lo, hi, causal = SHAPES[name]
        qt, kt, vt, pad, shared = _inputs(name, args.head_dim)
        bool_mask = pad[:, None, None, :]
        if causal:
            bool_mask = bool_mask & torch.ones(T, T, dtype=torch.bool, device=pad.device).tril()
        providers = {
            "hopper": lambda: hms.attention(qt, kt, vt, shared, causal=causal),
            "triton": lambda: hms.attention(qt, kt, vt, shared, causal=causal),
            # no mask at all (every key kept; the kernels' mask-free variants): on the shapes whose keys are all
            # valid this is the same attention as with the mask
            "hopper, no mask": lambda: hms.attention(qt, kt, vt, causal=causal),
            "triton, no mask": lambda: hms.attention(qt, kt, vt, causal=causal),
            "sdpa, no mask": lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal),
            "sdpa, bool mask": lambda: F.scaled_dot_product_attention(qt, kt, vt, attn_mask=bool_mask),
        }
        row = {"shape": name, "B": B, "H": H, "T": T, "D": args.head_dim, "keys": [lo, hi], "causal": causal}
        with torch.no_grad():
            calls = []
            real = hopper.HopperForward.__call__
            hopper.HopperForward.__call__ = lambda self, *a: (calls.append(1), real(self, *a))[1]
            try:
                hms.attention(qt, kt, vt, shared, causal=causal)
            finally:
                hopper.HopperForward.__call__ = real
            row["hopper_taken"] = bool(calls)
            ref = hms.attention(qt, kt, vt, shared, causal=causal)
            for what, fn in providers.items():
                hopper.ENABLED = not what.startswith("triton")
                try:
                    out = fn()
                    if what == "triton":
                        row["max_abs_diff_hopper_vs_triton"] = float((out.float() - ref.float()).abs().max())
                    row[f"{what} graph ms"] = round(benchutil.median_ms(fn, cuda_graph=True), 4)
                    row[f"{what} eager ms"] = round(benchutil.median_ms(fn), 4)
                finally:
                    hopper.ENABLED = True
        row["triton/hopper graph"] = round(row["triton graph ms"] / row["hopper graph ms"], 3)
        row["triton/hopper eager"] = round(row["triton eager ms"] / row["hopper eager ms"], 3)
        rows.append(row)
        print(f"{name:12s} taken={row['hopper_taken']} "
              + " ".join(f"{w}={row[f'{w} graph ms']:.4f}/{row[f'{w} eager ms']:.4f}" for w in providers)
              + f" ratio graph {row['triton/hopper graph']} eager {row['triton/hopper eager']}"
              + f" diff {row['max_abs_diff_hopper_vs_triton']:.2e}", flush=True)
    benchutil.write_json(out_dir / "bench_hopper.json", {"env": benchutil.environment(), "rows": rows})
    plot(rows, out_dir / "bench_hopper.png")


def switch_ab(args, out_dir):
    import benchutil
    import hf_masked_softmax as hms

    hopper = importlib.import_module("hf_masked_softmax._hopper")
    settings = SWITCHES[args.ab]

    def owner(attr):  # "NAME": hf_masked_softmax._hopper's; "_module.NAME": that module's
        if "." in attr:
            mod, attr = attr.rsplit(".", 1)
            return importlib.import_module(f"hf_masked_softmax.{mod}"), attr
        return hopper, attr

    def put(attr, value):
        setattr(*owner(attr), value)

    defaults = {attr: getattr(*owner(attr)) for attr in settings}
    label = ",".join(settings)
    rows = []
    for name in [s for s in args.shapes.split(",") if s]:
        causal = SHAPES[name][5]
        qt, kt, vt, _, shared = _inputs(name, args.head_dim)
        with torch.no_grad():
            outs = {}
            for rnd in range(3):
                for on in (True, False):
                    for attr, values in settings.items():
                        put(attr, values[0 if on else 1])
                    try:
                        fn = lambda: hms.attention(qt, kt, vt, shared, causal=causal)  # noqa: E731
                        if rnd == 0:
                            outs[on] = fn().float()
                        ms = benchutil.median_ms(fn, cuda_graph=True)
                        eager = benchutil.median_ms(fn)
                    finally:
                        for attr, value in defaults.items():
                            put(attr, value)
                    rows.append({"shape": name, "round": rnd, "switch": label, "on": on, "ms": round(ms, 4),
                                 "eager_ms": round(eager, 4)})
                    print(f"{name:12s} round {rnd} {args.ab}={on}: {ms:.4f} ms (eager, host time included: "
                          f"{eager:.4f})", flush=True)
            diff = float((outs[True] - outs[False]).abs().max())
            rows.append({"shape": name, "switch": label, "max_abs_diff_on_vs_off": diff})
            print(f"{name:12s} {args.ab} on vs off: largest difference {diff:.3e}", flush=True)
    benchutil.write_json(out_dir / f"bench_hopper_{args.ab}.json", {"env": benchutil.environment(), "rows": rows})


def plot(rows, path):
    sweep = sorted((r for r in rows if r["T"] == 512 and r["keys"] == [256, 512] and not r["causal"]),
                   key=lambda r: r["B"])
    if len(sweep) < 2:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG")
        return
    fig, ax = plt.subplots(figsize=(7, 4.2))
    bs = [r["B"] for r in sweep]
    for what, style in (("hopper", "o-"), ("triton", "s-"), ("sdpa, no mask", "^--"), ("sdpa, bool mask", "v--")):
        ax.plot(bs, [r[f"{what} graph ms"] for r in sweep], style, label=f"{what} (CUDA graph)")
    ax.plot(bs, [r["hopper eager ms"] for r in sweep], "o:", label="hopper (eager, host time included)")
    ax.plot(bs, [r["triton eager ms"] for r in sweep], "s:", label="triton (eager, host time included)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch (H12, T512, keys uniform in [256, 512], fp16, D64)")
    ax.set_ylabel("ms, median")
    ax.set_title(f"attention forward, inference: {torch.cuda.get_device_name()}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
