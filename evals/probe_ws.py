"""Probe: does Triton's warp specialisation help a flash-attention forward on this GPU (Hopper)?

Issue 5's BERT target (B32 H12 512x512, key lengths uniform in [256, 512], fp16, D = 64: <= 0.060 ms) is missed by
the library's forward (0.074-0.076 ms on an H200), which Nsight Compute showed bound by latency: in 44% of cycles no
warp can issue. Warp specialisation (a producer warp issuing the loads, consumer warpgroups doing the products and
the softmax) is the usual answer on Hopper. Compiled for sm_90 on the CPU, Triton 3.9 specialised this forward's key
loop (``tl.range(..., warp_specialize=True)``) only when Q, K and V all came through device-side tensor descriptors
and the kernel had 4 warps: with 8 warps it left the loop alone, and with a pointer load anywhere its pass failed
("unsupported load type for producer commit"). The library's kernel loads through pointers.

This script times a deliberately small forward (no causality, no GQA, the padding mask as one key length per sequence)
in each variant: pointer loads or tensor descriptors, with and without warp specialisation, a few block shapes. It
records for each whether Triton's TTGIR holds a ``ttg.warp_specialize`` op, the registers and spills, the largest
error against SDPA, and the median time of the kernel replayed in a CUDA graph, beside SDPA's default (cuDNN) on the
whole rectangle and ``hf_masked_softmax.attention`` with the padding mask, in the same run.

    python evals/probe_ws.py [--shapes bert,bert-full] [--out DIR]
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


@triton.jit
def _probe_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, len_ptr, stride_b, stride_t, T, qk_scale,
                      N_HEADS: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      WS: tl.constexpr, DESC: tl.constexpr):
    """q, k, v, o: [B, T, H, D] (HF's layout before the transpose); keys at or past ``len[b]`` are padding."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // N_HEADS
    h = pid_bh % N_HEADS
    base = b.to(tl.int64) * stride_b + h * HEAD_D
    n_keys = tl.load(len_ptr + b)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rd = tl.arange(0, HEAD_D)
    if DESC:  # every load through a descriptor: Triton's Hopper warp specialisation takes no pointer loads
        dq = tl.make_tensor_descriptor(q_ptr + base, shape=[T, HEAD_D], strides=[stride_t, 1],
                                       block_shape=[BLOCK_M, HEAD_D])
        q = dq.load([pid_m * BLOCK_M, 0])
        dk = tl.make_tensor_descriptor(k_ptr + base, shape=[n_keys, HEAD_D], strides=[stride_t, 1],
                                       block_shape=[BLOCK_N, HEAD_D])
        dv = tl.make_tensor_descriptor(v_ptr + base, shape=[n_keys, HEAD_D], strides=[stride_t, 1],
                                       block_shape=[BLOCK_N, HEAD_D])
    else:
        q = tl.load(q_ptr + base + rm[:, None] * stride_t + rd[None, :], mask=rm[:, None] < T, other=0.0)
    m_i = tl.full([BLOCK_M], -float("inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_D], tl.float32)
    for start in tl.range(0, n_keys, BLOCK_N, warp_specialize=WS):
        rn = start + tl.arange(0, BLOCK_N)
        if DESC:  # rows past n_keys come back as zeros
            k = dk.load([start, 0])
            v = dv.load([start, 0])
        else:
            k = tl.load(k_ptr + base + rn[:, None] * stride_t + rd[None, :], mask=rn[:, None] < n_keys, other=0.0)
            v = tl.load(v_ptr + base + rn[:, None] * stride_t + rd[None, :], mask=rn[:, None] < n_keys, other=0.0)
        s = tl.dot(q, k.T)
        s = tl.where(rn[None, :] < n_keys, s * qk_scale, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(o_ptr + base + rm[:, None] * stride_t + rd[None, :], acc.to(o_ptr.dtype.element_ty), mask=rm[:, None] < T)


def _scratch(size, alignment, stream):
    return torch.empty(size, device="cuda", dtype=torch.int8)


def probe_launch(q, k, v, lens, block_m, block_n, warps, stages, ws, desc):
    B, T, H, D = q.shape
    o = torch.empty_like(q)
    grid = (triton.cdiv(T, block_m), B * H)
    scale = D ** -0.5 * 1.4426950408889634

    def run():
        return _probe_fwd_kernel[grid](q, k, v, o, lens, q.stride(0), q.stride(1), T, scale, N_HEADS=H, HEAD_D=D,
                                       BLOCK_M=block_m, BLOCK_N=block_n, WS=ws, DESC=desc, num_warps=warps,
                                       num_stages=stages)
    return run, o


SHAPES = {  # name: (B, H, T, lowest key length, highest)
    "bert": (32, 12, 512, 256, 512),
    "bert-full": (32, 12, 512, 512, 512),
}
VARIANTS = [  # (BLOCK_M, BLOCK_N, warps, stages, warp specialise, descriptors)
    (bm, bn, w, s, ws, desc)
    for desc in (False, True) for ws in (False, True) for (bm, bn, w) in ((128, 64, 4), (128, 128, 4), (128, 64, 8),
                                                                          (64, 64, 4))
    for s in (2, 3)
    if desc or not ws  # with pointer loads Triton 3.9's pass fails ("unsupported load type for producer commit")
]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="bert,bert-full", help=f"comma-separated, of: {', '.join(SHAPES)}")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        sys.exit(f"unknown shape(s) {unknown}; choose from {list(SHAPES)}")
    if not torch.cuda.is_available():
        sys.exit("probe_ws.py needs a CUDA GPU")
    import hf_masked_softmax as hms
    from hf_masked_softmax import masks

    triton.set_allocator(_scratch)  # device-side tensor descriptors need scratch memory
    out_dir = benchutil.out_dir(args.out)
    rows = []
    for name in shapes:
        B, H, T, lo, hi = SHAPES[name]
        q, k, v, lens, pad = benchutil.padded_bthd(B, H, T, lo, hi)
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        ref = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=pad[:, None, None, :])
        ref = ref.transpose(1, 2)
        base = {}
        base["sdpa default, no mask (whole rectangle)"] = benchutil.median_ms(
            lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt), cuda_graph=True)
        shared = masks.share_ranges(pad)
        with torch.no_grad():
            base["hf_masked_softmax.attention, padding mask"] = benchutil.median_ms(
                lambda: hms.attention(qt, kt, vt, shared), cuda_graph=True)
        for what, ms in base.items():
            rows.append({"shape": name, "what": what, "ms": round(ms, 4)})
            print(f"{name:9s} {what:45s} {ms:.4f} ms", flush=True)
        for bm, bn, w, s, ws, desc in VARIANTS:
            what = f"{bm}x{bn} w{w} s{s} {'desc' if desc else 'ptr'}{' +ws' if ws else ''}"
            row = {"shape": name, "what": what, "block_m": bm, "block_n": bn, "warps": w, "stages": s, "ws": ws,
                   "desc": desc}
            try:
                run, o = probe_launch(q, k, v, lens, bm, bn, w, s, ws, desc)
                compiled = run()
                torch.cuda.synchronize()
                row["warp_specialize_op"] = "ttg.warp_specialize" in compiled.asm.get("ttgir", "")
                row["registers"] = getattr(compiled, "n_regs", None)
                row["spills"] = getattr(compiled, "n_spills", None)
                row["max_abs_err"] = float((o.float() - ref.float()).abs().max())
                row["ms"] = round(benchutil.median_ms(run, cuda_graph=True), 4)
            except Exception as e:  # a variant Triton cannot compile here is a result too
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            rows.append(row)
            print(f"{name:9s} {what:28s} ws-op={row.get('warp_specialize_op')} regs={row.get('registers')} "
                  f"spills={row.get('spills')} err={row.get('max_abs_err', float('nan')):.2e} "
                  f"{row.get('ms', row.get('error'))}", flush=True)
    benchutil.write_json(out_dir / "probe_ws.json", {"env": benchutil.environment(), "rows": rows})


if __name__ == "__main__":
    main()
