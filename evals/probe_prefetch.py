"""Probe: does prefetching the next programs' tiles into L2 shorten the fused forward's fixed cost?

The length sweep of the fourth session (NOTES.md, "Where BERT's forward time goes") found 23 µs of BERT's forward
that does not grow with the keys, and Nsight Compute found the forward bound by latency (no eligible warp in 44% of
cycles, two programs per multiprocessor). Each program starts by waiting for its query tile and its first key and
value blocks from DRAM. With ``attention.FWD_PREFETCH = (distance, keys)`` each program first issues
``prefetch.global.L2`` for the query tile, and the first ``keys`` key and value rows, of the program ``distance``
places later in launch order, which takes a slot about when this one ends if ``distance`` is the number of programs
resident at once (132 multiprocessors times 2 for BERT's setting, 3 for GPT-2's).

Times the forward launcher replayed in a CUDA graph (fp16, D = 64, the shapes of ``bench_attention.py``), every
setting in each of ``--rounds`` rounds, alternating, and checks that each setting's output is bit-identical to the
output without prefetching. Writes ``probe_prefetch.json``.

    python evals/probe_prefetch.py [--shapes bert,gpt2-pad-right,gpt2-nopad,decode] [--rounds 2] [--out DIR]
"""
from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import benchutil  # noqa: E402
from bench_attention import SHAPES, make_inputs  # noqa: E402
from tune_attention import graph_ms, launcher_args  # noqa: E402

attn = importlib.import_module("hf_masked_softmax.attention")

SETTINGS = [None, (132, 0), (264, 0), (264, 64), (264, 128), (396, 0), (396, 128), (528, 128)]


def _label(setting) -> str:
    return "off" if setting is None else f"{setting[0]}/{setting[1]}"


def _setting(text: str):
    if text == "off":
        return None
    parts = text.split("/")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[0]) < 1:
        raise argparse.ArgumentTypeError(f"a setting is 'off' or DIST/KEYS with DIST >= 1, got {text!r}")
    return int(parts[0]), int(parts[1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="bert,gpt2-pad-right,gpt2-nopad,decode",
                    help="comma-separated subset of: " + ", ".join(SHAPES))
    ap.add_argument("--settings", default=",".join(_label(s) for s in SETTINGS),
                    help="comma-separated 'off' or DIST/KEYS (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None, help="output folder (default $OUT or ./out)")
    args = ap.parse_args(argv)
    shapes = args.shapes.split(",")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        ap.error(f"unknown shapes {unknown}; choose from {sorted(SHAPES)}")
    try:
        settings = [_setting(t) for t in args.settings.split(",")]
    except argparse.ArgumentTypeError as exc:
        ap.error(str(exc))
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if not torch.cuda.is_available():
        sys.exit("probe_prefetch.py needs a CUDA GPU")
    out_dir = benchutil.out_dir(args.out)

    orig = attn.FWD_PREFETCH
    rows = []
    try:
        for name in shapes:
            inp = make_inputs(name, 64, torch.float16)
            q, k, v = inp["q"], inp["k"], inp["v"]
            margs = launcher_args(inp)
            attn.FWD_PREFETCH = None
            with torch.no_grad():
                ref, _ = attn._forward(q, k, v, *margs)
            times = {_label(s): [] for s in settings}
            same = {}
            for rnd in range(args.rounds):
                for s in settings:
                    attn.FWD_PREFETCH = s
                    with torch.no_grad():
                        if rnd == 0:
                            out, _ = attn._forward(q, k, v, *margs)
                            same[_label(s)] = bool(torch.equal(out, ref))
                        times[_label(s)].append(graph_ms(lambda: attn._forward(q, k, v, *margs)))
            base = statistics.median([t for t in times["off"] if t is not None]) if "off" in times else None
            for s in settings:
                ms = [t for t in times[_label(s)] if t is not None]
                med = statistics.median(ms) if ms else None
                rows.append(dict(shape=name, setting=_label(s), ms_rounds=times[_label(s)], ms=med,
                                 vs_off=(med / base if med and base else None), identical=same[_label(s)]))
                r = rows[-1]
                rounds = " / ".join("-" if t is None else f"{t:.4f}" for t in r["ms_rounds"])
                ratio = "" if r["vs_off"] is None else f"  ({r['vs_off']:.3f}x off)"
                print(f"  {name:15s} prefetch {r['setting']:8s} {rounds} ms{ratio}"
                      f"{'' if r['identical'] else '  OUTPUT DIFFERS'}", flush=True)
    finally:
        attn.FWD_PREFETCH = orig
    path = out_dir / "probe_prefetch.json"
    benchutil.write_json(path, dict(benchutil.environment(), rows=rows, rounds=args.rounds))
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
