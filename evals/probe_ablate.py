"""Ablations of the Hopper kernel: its forward timed with pieces of its work taken out of the source, to see which
resource bounds it (GPU; the outputs of every variant but ``base`` are wrong on purpose).

Each variant copies ``hf_masked_softmax`` into a temporary folder, edits ``_hopper_kernels.py`` there (every edit
must match the source exactly once, so a stale variant fails instead of timing the unchanged kernel) and times
``hf_masked_softmax.attention`` from that copy in a subprocess, the variants alternating over the rounds:

* ``base``: the kernel as it is;
* ``no-exp``: the probabilities without their exponential (``p = s * scale - m``): no ``MUFU.EX2`` for them;
* ``no-pv``: no ``P v`` product inside the key loop (the tile's last block keeps its own);
* ``no-exp-no-pv``: both;
* ``no-exp-no-max``: ``no-exp`` without the running row maximum either (no ``FMNMX`` and no shuffles for it);
* ``tree1-max`` / ``tree3-max``: not an ablation, the same row maximum as a tree: the column pairs one thread holds
  maxed first (one or three such halvings), so that the chain of dependent ``FMNMX`` before the shuffles is shorter.

If ``no-exp`` is much faster than ``base`` the exponentials (16 per clock per multiprocessor on sm_90) hold it back;
if ``no-pv`` is, the tensor cores do.

    python evals/probe_ablate.py [--shapes bert,gpt2] [--variants base,no-exp,...] [--rounds 3] [--out DIR]
    python evals/probe_ablate.py --compile-only     # each variant compiled for sm_90 on this machine (no GPU):
                                                    # registers, shared memory, MUFU.EX2 / HGMMA / FMNMX counts
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EVALS = ROOT / "evals"

_EXP = ("    p = gl.exp2(s * qk_scale - m_use[:, None])\n", "    p = s * qk_scale - m_use[:, None]\n")
_PV = ("    o_tok = warpgroup_mma(p16, v_smem.index((g + STAGES - 1) % STAGES).reshape([BLOCK_N, HEAD_D]), acc,\n"
       "                          is_async=True)\n", "    o_tok = acc\n")
_MAX = ("    m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)\n", "    m_new = m_i\n")
# the row maximum as a tree (_tree_fn), so that the in-thread chain of dependent maxima is shorter
_TREE = ("    m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)\n",
         "    m_new = gl.maximum(m_i, gl.convert_layout(_tree_max(s), m_i.type.layout) * qk_scale)\n")


def _tree_fn(halvings: int):
    """The edit that adds ``_tree_max`` (``halvings`` in-thread halvings, then ``gl.max``) above ``_online_softmax``.
    The first halving splits adjacent columns; later ones pair columns ``N / 4``, ``N / 8``, ... apart, which the
    same thread holds too."""
    steps = ["    a, b = gl.split(gl.reshape(s, [M, N // 2, 2]))", "    s = gl.maximum(a, b)"]
    for i in range(2, halvings + 1):
        steps += [f"    a, b = gl.split(gl.permute(gl.reshape(s, [M, 2, N // {2 ** i}]), (0, 2, 1)))",
                  "    s = gl.maximum(a, b)"]
    body = "\n".join(["@gluon.jit", "def _tree_max(s):", "    M: gl.constexpr = s.shape[0]",
                      "    N: gl.constexpr = s.shape[1]", *steps, "    return gl.max(s, axis=1)", "", "", ""])
    return "@gluon.jit\ndef _online_softmax(", body + "@gluon.jit\ndef _online_softmax("


VARIANTS = {"base": [], "no-exp": [_EXP], "no-pv": [_PV], "no-exp-no-pv": [_EXP, _PV], "no-exp-no-max": [_EXP, _MAX],
            "tree1-max": [_TREE, _tree_fn(1)], "tree3-max": [_TREE, _tree_fn(3)]}

# the child: times (or compiles) the copy's kernel on one shape and prints one JSON line
_CHILD = r"""
import json, sys
sys.path[:0] = [{copy!r}, {evals!r}]
import hf_masked_softmax
assert hf_masked_softmax.__file__.startswith({copy!r}), hf_masked_softmax.__file__
if {compile_only!r}:
    from hf_masked_softmax import _hopper
    import tempfile, sass_attention
    kern = _hopper.compile_for(90, "fp16", 1, causal={causal!r})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kern.asm["cubin"])
        f.flush()
        info = sass_attention.analyse(f.name)
    count = lambda p: sum(n.startswith(p) for n in info["ops"])
    print("RESULT " + json.dumps(dict(registers=info["registers"], shared=kern.metadata.shared,
                                      mufu_ex2=count("MUFU.EX2"), hgmma=count("HGMMA"), fmnmx=count("FMNMX"))))
    sys.exit(0)
import torch
import benchutil, bench_hopper
qt, kt, vt, _, shared = bench_hopper._inputs({shape!r})
calls = []
real = hf_masked_softmax._hopper.HopperForward.__call__
def counting(self, *a):
    calls.append(1)
    return real(self, *a)
hf_masked_softmax._hopper.HopperForward.__call__ = counting
with torch.no_grad():
    fn = lambda: hf_masked_softmax.attention(qt, kt, vt, shared, causal={causal!r})
    fn()
    torch.cuda.synchronize()
    assert calls, "the call did not take the Hopper kernel"
    ms = benchutil.median_ms(fn, cuda_graph=True)
print("RESULT " + json.dumps(dict(ms=ms)))
"""


def make_copy(variant: str, into: Path) -> Path:
    """``hf_masked_softmax`` copied under ``into`` with ``variant``'s edits applied; the copy's root."""
    dest = into / variant
    for pkg in ("hf_masked_softmax", "patches"):  # a source tree's package loads its patches from the root
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    path = dest / "hf_masked_softmax" / "_hopper_kernels.py"
    src = path.read_text()
    for old, new in VARIANTS[variant]:
        if src.count(old) != 1:
            raise RuntimeError(f"variant {variant}: its edit matches the kernel source {src.count(old)} times, "
                               f"not once:\n{old}")
        src = src.replace(old, new)
    path.write_text(src)
    return dest


def run_child(copy: Path, shape: str, causal: bool, compile_only: bool, timeout: int) -> dict:
    code = _CHILD.format(copy=str(copy), evals=str(EVALS), compile_only=compile_only, causal=causal, shape=shape)
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout)[-1500:]}
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="bert", help="comma-separated shapes of evals/bench_hopper.py")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=int, default=120, help="seconds per child process")
    ap.add_argument("--compile-only", action="store_true", help="compile each variant for sm_90 instead (no GPU)")
    ap.add_argument("--out", default=None, help="folder for probe_ablate.json (default: evals/results)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(EVALS))
    import bench_hopper

    variants = [v for v in args.variants.split(",") if v]
    shapes = [s for s in args.shapes.split(",") if s]
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    for s in shapes:
        if s not in bench_hopper.SHAPES:
            ap.error(f"unknown shape {s!r}; choose from {', '.join(bench_hopper.SHAPES)}")
    rows, failed = [], False
    with tempfile.TemporaryDirectory() as tmp:
        copies = {v: make_copy(v, Path(tmp)) for v in variants}
        rounds = 1 if args.compile_only else args.rounds
        total, done = rounds * len(shapes) * len(variants), 0
        for rnd in range(rounds):
            for shape in shapes:
                causal = bench_hopper.SHAPES[shape][5]
                for v in variants:
                    res = run_child(copies[v], shape, causal, args.compile_only, args.timeout)
                    done += 1
                    rows.append({"shape": shape, "variant": v, "round": rnd, **res})
                    failed |= "error" in res
                    what = res.get("error", "").strip().splitlines()[-1:] if "error" in res else (
                        [f"{res['ms']:.4f} ms"] if "ms" in res else [json.dumps(res)])
                    print(f"[{done}/{total}] {shape:10s} round {rnd} {v:14s} {' '.join(what)}", flush=True)
    if not args.compile_only:
        import benchutil
        out = Path(args.out) if args.out else EVALS / "results"
        out.mkdir(parents=True, exist_ok=True)
        benchutil.write_json(out / "probe_ablate.json", {"env": benchutil.environment(), "rows": rows})
        for shape in shapes:
            for v in variants:
                ms = sorted(r["ms"] for r in rows if r["shape"] == shape and r["variant"] == v and "ms" in r)
                if ms:
                    print(f"{shape:10s} {v:14s} median {ms[len(ms) // 2]:.4f} ms over {len(ms)} rounds")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
