"""Probe: what the Hopper forward's padding-mask support costs (GPU).

On an H200 the library's Hopper kernel (hf_masked_softmax._hopper_kernels) took 0.0812 ms on BERT's shape with every
key valid when given the padding mask, and 0.0767 without a mask (``evals/bench_hopper.py``, seventeenth session):
the same blocks, all unmasked, so the difference is code the mask form adds to the key loop. This script builds
variants of the kernel's source with one such piece removed each and times them in one run, launched the way the
library launches the kernel (``_hopper.HopperForward``), in a CUDA graph, alternating, over rounds:

* ``library``: the kernel as it is;
* ``no holes code``: a sequence with holes no longer reads its mask row (wrong for such masks; none in these inputs);
* ``no empty guard``: the guard against a sequence with no key (NaN for such a sequence; none here);
* ``neither``; and the library kernel without a mask (``MASK_KIND`` 0).

Outputs are compared with the library kernel's (bit-identical expected: no holes and no empty sequence here).

    python evals/probe_hopper_variants.py [--shapes bert-full,bert] [--rounds 3] [--out DIR]
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

HOLES = """        if holes != 0:
            pm = gl.load(mask_ptr + b.to(gl.int64) * stride_mb + c.to(gl.int64) * stride_mk, mask=c < K_LEN, other=0)
            keep = keep & (pm != 0)
"""
GUARD = """    if GUARD:  # a row with no key so far: every score -inf, and -inf - -inf would be NaN
        m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
"""
VARIANTS = {"library": (), "no holes code": (HOLES,), "no empty guard": (GUARD,), "neither": (HOLES, GUARD)}


def _variant_modules(tmp):
    """Each variant's kernel module, written from the library's source with its pieces removed."""
    hk = importlib.import_module("hf_masked_softmax._hopper_kernels")
    src = open(hk.__file__).read()
    mods = {}
    for i, (name, cuts) in enumerate(VARIANTS.items()):
        text = src
        for cut in cuts:
            if cut not in text:
                sys.exit(f"probe_hopper_variants.py: the kernel's source changed, {name!r} no longer applies")
            text = text.replace(cut, "")
        path = os.path.join(tmp, f"hopper_variant_{i}.py")
        with open(path, "w") as f:
            f.write(text)
        spec = importlib.util.spec_from_file_location(f"hopper_variant_{i}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mods[name] = mod
    return mods


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="bert-full,bert")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import bench_hopper

    unknown = [s for s in args.shapes.split(",") if s and s not in bench_hopper.SHAPES]
    if unknown:
        ap.error(f"unknown --shapes {unknown}; choose from {sorted(bench_hopper.SHAPES)}")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if not torch.cuda.is_available():
        sys.exit("probe_hopper_variants.py needs a CUDA GPU")
    import benchutil
    from hf_masked_softmax import masks

    hopper = importlib.import_module("hf_masked_softmax._hopper")
    out_dir = benchutil.out_dir(args.out)
    rows = []
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        mods = _variant_modules(tmp)
        for shape in [s for s in args.shapes.split(",") if s]:
            qt, kt, vt, pad, _ = bench_hopper._inputs(shape)
            mask_t = pad.view(torch.uint8)
            ranges = masks.pad_ranges(mask_t)
            B, H, Q, D = qt.shape
            launches = {}
            for name, mod in mods.items():
                fwd = hopper.HopperForward(qt, kt, vt, 1, False, D ** -0.5, sms)
                fwd.kernel = mod._attn_fwd_persistent
                launches[name] = (fwd, 1)
            launches["library, no mask (MASK_KIND 0)"] = (hopper.HopperForward(qt, kt, vt, 0, False, D ** -0.5, sms), 0)
            outs = {}
            for name, (fwd, kind) in launches.items():
                out = torch.empty(B, Q, H, D, dtype=qt.dtype, device="cuda").transpose(1, 2)
                outs[name] = out
                fwd(qt, kt, vt, out, mask_t, ranges)
            torch.cuda.synchronize()
            ref = outs["library"]
            for rnd in range(args.rounds):
                for name, (fwd, kind) in launches.items():
                    out = outs[name]
                    ms = benchutil.median_ms(lambda: fwd(qt, kt, vt, out, mask_t, ranges), cuda_graph=True)
                    diff = float((out.float() - ref.float()).abs().max())
                    rows.append({"shape": shape, "variant": name, "round": rnd, "ms": round(ms, 4),
                                 "max_abs_diff_vs_library": diff})
                    print(f"{shape:10s} round {rnd} {name:32s} {ms:.4f} ms  diff vs library {diff:.1e}", flush=True)
    benchutil.write_json(out_dir / "probe_hopper_variants.json", {"env": benchutil.environment(), "rows": rows})


if __name__ == "__main__":
    main()
