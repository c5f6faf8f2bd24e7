"""Probe: how close is the fused decode step to the fastest possible read of its keys and values?

Issue 5's decode target (B32 H12, one query, K = 2048, key lengths uniform in [1024, 2048], fp16, D = 64:
<= 0.035 ms) is missed by the library's forward (0.0426-0.0473 ms on an H200). The step must read every valid key and
value once (about 155 MB here); earlier notes compared that with the copy bandwidth (bytes read plus written), but a
decode step only reads. This script measures, in one run, CUDA-graph replays, medians:

* ``hf_masked_softmax.attention`` on the step, with the padding mask (left padding, as in generate), forced into
  1, 2 and 4 key splits as well as its default;
* a read floor with the same structure: a Triton kernel that loads exactly the valid key and value rows of each
  (batch, head) in the same tiles, sums them and writes one number per program (no products, no softmax), over a
  few block / warp / stage settings and 1, 2 or 4 programs per (batch, head);
* a flat read of the same number of bytes from one contiguous buffer (a Triton sum over large blocks, and
  ``torch.sum``), the best case for DRAM;
* a decode step without tensor cores (products and sums in registers: one query needs no matrix unit), one
  program per (batch, head), checked against SDPA like ours;
* SDPA's default on the whole rectangle without a mask, and the copy bandwidth.

Each in two layouts of K and V: the transposed views of HF's projections (``[B, T, H, D]`` seen as ``[B, H, T, D]``,
what ``bench_attention.py`` times) and contiguous ``[B, H, T, D]`` (what a KV cache holds).

    python evals/probe_decode.py [--rounds 2] [--out DIR] [--plot-from JSON]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import benchutil  # noqa: E402

B, H, K, D = 32, 12, 2048, 64
LENGTHS = (1024, 2048)


@triton.jit
def _read_rows_kernel(k_ptr, v_ptr, out_ptr, len_ptr, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh,
                      stride_vn, H, K_LEN, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, SPLITS: tl.constexpr):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = bh // H
    h = bh % H
    n = tl.load(len_ptr + b)
    lo = K_LEN - n  # left padding: the valid keys are the last n
    per = tl.cdiv(tl.cdiv(n, BLOCK_N), SPLITS) * BLOCK_N
    s_lo = tl.minimum(lo + split * per, K_LEN)
    s_hi = tl.minimum(s_lo + per, K_LEN)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_D)
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    acc = tl.zeros([HEAD_D], dtype=tl.float32)
    for n0 in range(s_lo, s_hi, BLOCK_N):
        cols = n0 + offs_n
        ok = cols < s_hi
        k = tl.load(k_base + cols[:, None] * stride_kn + offs_d[None, :], mask=ok[:, None], other=0.0)
        v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :], mask=ok[:, None], other=0.0)
        acc += tl.sum(k.to(tl.float32) + v.to(tl.float32), axis=0)
    tl.store(out_ptr + (bh * SPLITS + split) * HEAD_D + offs_d, acc)


@triton.jit
def _decode_nodot_kernel(q_ptr, k_ptr, v_ptr, o_ptr, len_ptr, stride_qb, stride_qh, stride_kb, stride_kh, stride_kn,
                         stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, H, K_LEN, qk_scale,
                         BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr):
    """One query per (batch, head) without tensor cores: products and sums in registers, online softmax in fp32."""
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    n = tl.load(len_ptr + b)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_D)
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + offs_d).to(tl.float32) * qk_scale
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    m_i = tl.full([], float("-inf"), tl.float32)
    l_i = tl.zeros([], tl.float32)
    acc = tl.zeros([HEAD_D], tl.float32)
    for n0 in range(K_LEN - n, K_LEN, BLOCK_N):
        cols = n0 + offs_n
        ok = cols < K_LEN
        k = tl.load(k_base + cols[:, None] * stride_kn + offs_d[None, :], mask=ok[:, None], other=0.0)
        s = tl.where(ok, tl.sum(k.to(tl.float32) * q[None, :], axis=1), float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=0))
        p = tl.math.exp2(s - m_new)
        alpha = tl.math.exp2(m_i - m_new)
        v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :], mask=ok[:, None], other=0.0)
        l_i = l_i * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
        m_i = m_new
    tl.store(o_ptr + b * stride_ob + h * stride_oh + offs_d, (acc / l_i).to(o_ptr.dtype.element_ty))


@triton.jit
def _read_flat_kernel(x_ptr, out_ptr, N, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < N, other=0.0)
    tl.store(out_ptr + pid, tl.sum(x.to(tl.float32), axis=0))


def make_step(layout: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if layout == "hf-view":
        q, k, v = (torch.randn(B, T, H, D, generator=g).to("cuda", torch.float16).transpose(1, 2)
                   for T in (1, K, K))
    else:
        q, k, v = (torch.randn(B, H, T, D, generator=g).to("cuda", torch.float16) for T in (1, K, K))
    lens = torch.randint(LENGTHS[0], LENGTHS[1] + 1, (B,), generator=g)
    pad = torch.arange(K)[None] >= (K - lens)[:, None]
    return q, k, v, lens.to("cuda", torch.int32), pad.to("cuda")


def plot(data: dict, path) -> None:
    """Horizontal bars: each row's best time per layout, the target and the flat read marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG (rerun with --plot-from on the JSON elsewhere)")
        return
    layouts = list(dict.fromkeys(r["layout"] for r in data["rows"]))
    whats = list(dict.fromkeys(r["what"] for r in data["rows"]))
    fig, axes = plt.subplots(1, len(layouts), figsize=(7 * len(layouts), 0.28 * len(whats) + 1.5), sharey=True,
                             squeeze=False)
    for ax, layout in zip(axes[0], layouts):
        best = {r["what"]: r["best_ms"] for r in data["rows"] if r["layout"] == layout}
        colors = ["tab:blue" if w.startswith("ours") else "tab:gray" if w.startswith("read floor") else
                  "tab:green" if w.startswith("flat") else "tab:orange" for w in whats]
        ax.barh(range(len(whats)), [best.get(w, 0) for w in whats], color=colors)
        ax.axvline(0.035, color="red", linestyle="--", label="issue 5 target 0.035 ms")
        ax.set_title(f"K and V {layout}")
        ax.set_xlabel("ms, CUDA-graph replay, best of rounds")
        ax.legend(loc="lower right", fontsize=8)
    axes[0][0].set_yticks(range(len(whats)), whats, fontsize=7)
    axes[0][0].invert_yaxis()
    env = data["env"]
    fig.suptitle(f"decode step B{B} H{H} Q1 K{K} D{D}, left padding, lengths {LENGTHS}: {env.get('gpu')}, "
                 f"torch {env.get('torch')}, triton {env.get('triton')}, {env.get('git_sha')}", fontsize=9)
    fig.tight_layout()
    fig.subplots_adjust(left=0.2)  # the long row names
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="times every row, in turn, this many times")
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot-from", default=None, help="only redraw the PNG from an earlier JSON")
    args = ap.parse_args(argv)
    if args.plot_from:
        if not os.path.isfile(args.plot_from):
            sys.exit(f"--plot-from {args.plot_from!r}: no such file")
        import json

        plot(json.load(open(args.plot_from)), benchutil.out_dir(args.out) / "probe_decode.png")
        return
    if args.rounds < 1:
        sys.exit("--rounds must be at least 1")
    if not torch.cuda.is_available():
        sys.exit("probe_decode.py needs a CUDA GPU")
    import hf_masked_softmax as hms
    import importlib

    attn_mod = importlib.import_module("hf_masked_softmax.attention")  # the module (the package exports the function)
    from hf_masked_softmax import masks

    out_dir = benchutil.out_dir(args.out)
    copy_gbs = benchutil.copy_bandwidth_gbs()
    print(f"copy bandwidth (read + written): {copy_gbs:.0f} GB/s", flush=True)
    rows = []
    default_splits = attn_mod._num_splits

    def forced(n):
        def num_splits(*a, **kw):
            return n
        return num_splits
    # one function per count, so that each forced count keeps one launch plan
    split_fns = {None: default_splits, 1: forced(1), 2: forced(2), 4: forced(4)}

    for layout in ("hf-view", "contiguous"):
        q, k, v, lens, pad = make_step(layout)
        valid_bytes = int(lens.sum()) * H * D * 2 * 2
        shared = masks.share_ranges(pad)
        ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                               attn_mask=pad[:, None, None, :])
        cases = {}
        for splits in (None, 1, 2, 4):
            def ours(splits=splits):
                attn_mod._num_splits = split_fns[splits]
                try:
                    with torch.no_grad():
                        return hms.attention(q, k, v, shared, causal=True)
                finally:
                    attn_mod._num_splits = default_splits
            cases[f"ours, {'default splits' if splits is None else f'{splits} split(s)'}"] = ours

        o_nodot = torch.empty(B, H, 1, D, device="cuda", dtype=torch.float16)
        for bn, w, st in ((64, 4, 3), (128, 4, 3), (64, 4, 4), (128, 8, 3), (32, 2, 4), (256, 8, 2)):
            def nodot(bn=bn, w=w, st=st):
                _decode_nodot_kernel[(B * H,)](
                    q, k, v, o_nodot, lens, q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
                    v.stride(0), v.stride(1), v.stride(2), o_nodot.stride(0), o_nodot.stride(1), H, K,
                    D ** -0.5 * 1.4426950408889634, BLOCK_N=bn, HEAD_D=D, num_warps=w, num_stages=st)
                return o_nodot
            cases[f"decode without tensor cores, {bn}x{D} w{w} s{st}"] = nodot
        cases["sdpa default, no mask (whole rectangle)"] = (
            lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
        for splits in (1, 2, 4):
            for bn, w, s in ((64, 4, 3), (128, 4, 3), (64, 4, 4), (128, 8, 3), (64, 2, 3), (256, 8, 2)):
                part = torch.empty(B * H * splits * D, device="cuda")

                def floor(bn=bn, w=w, s=s, splits=splits, part=part):
                    _read_rows_kernel[(B * H, splits)](
                        k, v, part, lens, k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1),
                        v.stride(2), H, K, BLOCK_N=bn, HEAD_D=D, SPLITS=splits, num_warps=w, num_stages=s)
                    return part
                cases[f"read floor, {splits} program(s) per head, {bn}x{D} w{w} s{s}"] = floor
        flat = torch.randn(valid_bytes // 2, device="cuda", dtype=torch.float16)
        for block in (4096, 16384):
            part = torch.empty(triton.cdiv(flat.numel(), block), device="cuda")

            def flat_read(block=block, part=part):
                _read_flat_kernel[(part.numel(),)](flat, part, flat.numel(), BLOCK=block, num_warps=8)
                return part
            cases[f"flat read, triton blocks of {block}"] = flat_read
        cases["flat read, torch.sum"] = lambda: flat.sum()

        # correctness of our rows, and the floor kernel's sum against torch's
        for name, fn in cases.items():
            if name.startswith(("ours", "decode without")):
                err = float((fn().float() - ref).abs().max())
                assert err < 2e-2, f"{layout} {name}: error {err}"
        times = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, fn in cases.items():
                times[name].append(benchutil.median_ms(fn, cuda_graph=True))
        for name, ts in times.items():
            best = min(ts)
            gbs = valid_bytes / (best * 1e-3) / 1e9
            row = {"layout": layout, "what": name, "ms": [round(t, 4) for t in ts], "best_ms": round(best, 4),
                   "valid_gb_per_s": round(gbs), "valid_bytes": valid_bytes}
            rows.append(row)
            print(f"{layout:10s} {name:58s} {' / '.join(f'{t:.4f}' for t in ts)} ms  {gbs:6.0f} GB/s "
                  f"(of the valid bytes)", flush=True)
    data = {"env": benchutil.environment(), "copy_gb_per_s": round(copy_gbs),
            "shape": {"B": B, "H": H, "Q": 1, "K": K, "D": D, "lengths": LENGTHS, "padding": "left"}, "rows": rows}
    benchutil.write_json(out_dir / "probe_decode.json", data)
    plot(data, out_dir / "probe_decode.png")


if __name__ == "__main__":
    main()
