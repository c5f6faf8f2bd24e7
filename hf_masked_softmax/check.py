"""Self-test: ``python -m hf_masked_softmax.check`` on your own machine.

With a CUDA device: checks both kernels (forward and backward, every mask form, fp32/fp16/bf16) against an fp64
reference, then times them against PyTorch (``masked_softmax`` vs eager ``softmax(scale * s + mask)``, ``attention``
vs ``scaled_dot_product_attention`` with the same mask): median of ``triton.testing.do_bench``, inputs built outside
the timed calls. Prints a short report; exit status 0 when every check passes, 1 otherwise.

Without CUDA: runs small checks of the real kernels in Triton's CPU interpreter (it re-runs itself with
``TRITON_INTERPRET=1`` when that is not set) and says so; there is no benchmark.

Options: ``--quick`` (fewer cases), ``--no-bench``, ``--json PATH`` (the results, rewritten after every check with
``"complete": false`` until the run ends, so that a run cut short leaves what it found), ``--fuzz N`` (also N random
cases: realistic sizes on CUDA, every head dim from 1 to 256, GQA, decode splits, each mask form, strided and
broadcast layouts, NaN inputs; ``--seed S``; ``--fuzz-case I`` reruns one of them).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch

# (atol, rtol) against fp64, the same rows as the test-suite's table (tests/tolerances.py; a test keeps them equal).
TOLERANCES = {
    torch.float32: (1e-6, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (8e-3, 8e-3),
}
# Attention outputs and all gradients sum many rounded terms: the same widenings as the test-suite.
WIDEN = {"softmax": 1.0, "softmax_grad": 4.0, "attention": 4.0, "attention_grad": 10.0}


def _max_violation(out, ref, dtype, widen):
    """max(|out - ref| / (atol + rtol |ref|)) over the tensor: <= 1 passes; NaN or inf count as failures."""
    atol, rtol = TOLERANCES[dtype]
    out, ref = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out).all():
        return float("inf")
    if out.numel() == 0:
        return 0.0
    return float(((out - ref).abs() / (widen * (atol + rtol * ref.abs()))).max())


def _mask(form, B, H, Q, K, device):
    g = torch.Generator().manual_seed(0)
    if form == "none":
        return None
    if form == "pad2d":
        lengths = torch.randint(K // 2, K + 1, (B,), generator=g)
        return (torch.arange(K)[None, :] >= K - lengths[:, None]).to(device)  # left padding
    if form == "bool4d":
        return (torch.rand(B, 1, Q, K, generator=g) < 0.8).to(device)
    add = torch.randn(B, 1, 1, K, generator=g)
    add[..., : K // 4] = torch.finfo(torch.float32).min
    return add.to(device)


def _cases(device, quick):
    if device == "cuda":
        shapes = [(4, 12, 256, 256), (2, 8, 1, 4096), (1, 4, 200, 10000)]
        dtypes = [torch.float16, torch.bfloat16, torch.float32]
    else:
        shapes = [(2, 2, 5, 19)]
        dtypes = [torch.float32, torch.float16]
    forms = ["none", "pad2d", "bool4d", "add4d"]
    if quick:
        shapes, forms = shapes[:1], ["pad2d", "add4d"]
    return shapes, dtypes, forms


def check_masked_softmax(device, quick, report):
    from . import masked_softmax
    from .reference import masked_softmax_reference

    shapes, dtypes, forms = _cases(device, quick)
    for (B, H, Q, K) in shapes:
        for dtype in dtypes:
            for form in forms:
                causal = form in ("none", "pad2d")
                g = torch.Generator(device="cpu").manual_seed(1)
                s = (torch.randn(B, H, K, Q, generator=g) * 3).to(device, dtype).transpose(2, 3).requires_grad_(True)
                mask = _mask(form, B, H, Q, K, device)
                y = masked_softmax(s, mask, causal=causal, scale=0.5)
                dy = torch.randn(y.shape, generator=g).to(device, dtype)
                (ds,) = torch.autograd.grad(y, s, dy)
                s64 = s.detach().double().requires_grad_(True)
                ref = masked_softmax_reference(s64, mask, causal=causal, scale=0.5, compute_dtype=torch.float64,
                                               out_dtype=torch.float64)
                (ref_ds,) = torch.autograd.grad(ref, s64, dy.double())
                v = max(_max_violation(y, ref, dtype, WIDEN["softmax"]),
                        _max_violation(ds, ref_ds, dtype, WIDEN["softmax_grad"]))
                zeros_exact = bool(torch.all(y[ref == 0] == 0))
                report("masked_softmax", f"{B}x{H}x{Q}x{K}", dtype, form, v, zeros_exact)


def random_segment_ids(B, T, lo, hi, g):
    """int64 ``[B, T]`` ids of packed sequences (``attention``'s ``segments``): runs 0, 1, ... of lengths uniform in
    ``[lo, hi]`` drawn from the CPU generator ``g``, the last one cut at ``T`` (also ``evals/bench_packed.py``'s
    documents and the segments tests' random runs)."""
    rows = []
    for _ in range(B):
        ids, n, run = [], 0, 0
        while n < T:
            length = min(int(torch.randint(lo, hi + 1, (1,), generator=g)), T - n)
            ids += [run] * length
            n, run = n + length, run + 1
        rows.append(torch.tensor(ids))
    return torch.stack(rows)


def check_attention(device, quick, report):
    from . import attention, ops
    from .masks import SEGMENTS, MaskSpec, keep_mask
    from .reference import attention_reference, dropout_keep_reference

    if device == "cuda":
        shapes = [(4, 12, 12, 256, 256, 64), (2, 8, 2, 1, 4096, 128), (1, 8, 8, 300, 700, 80)]
        dtypes = [torch.float16, torch.bfloat16, torch.float32]
    else:
        shapes = [(2, 4, 2, 5, 20, 16)]
        dtypes = [torch.float32, torch.float16]
    # "+dropout": attention dropout 0.1 in the kernels, against the reference under the same Philox mask;
    # "+window": a causal sliding window of a third of the keys; "+bidirectional": a bidirectional window of a sixth
    # of them, not causal (ModernBERT's local attention); "+softcap": scores soft-capped at 1 (Gemma 2's cap);
    # "+sinks": one sink logit per head, of the scores' size (GPT-OSS's attention sinks), with its gradient;
    # "segments": packed sequences, causal (as many queries as keys: the shape's Q is taken as K), runs of random
    # lengths up to a quarter of the keys
    forms = ["none", "pad2d", "bool4d", "add4d", "pad2d+dropout", "pad2d+window", "pad2d+bidirectional",
             "pad2d+softcap", "pad2d+sinks", "segments"]
    if quick:
        shapes, forms = shapes[:1], ["pad2d", "add4d", "pad2d+dropout", "pad2d+window", "pad2d+bidirectional",
                                     "pad2d+softcap", "pad2d+sinks", "segments"]
    for (B, H, Hkv, Q0, K, D) in shapes:
        for dtype in dtypes:
            for form in forms:
                Q = K if form == "segments" else Q0
                causal = ((form in ("none", "segments") or form.startswith("pad2d"))
                          and not form.endswith("+bidirectional"))
                p = 0.1 if form.endswith("+dropout") else 0.0
                window = max(1, K // 3) if form.endswith("+window") else None
                if form.endswith("+bidirectional"):
                    window = max(1, K // 6)
                softcap = 1.0 if form.endswith("+softcap") else None
                sinks = None
                if form.endswith("+sinks"):
                    sinks = (torch.randn(H, generator=torch.Generator().manual_seed(4)) + 1).to(device)
                    sinks.requires_grad_(True)
                g = torch.Generator(device="cpu").manual_seed(2)
                q = torch.randn(B, Q, H, D, generator=g).to(device, dtype).transpose(1, 2).requires_grad_(True)
                k = torch.randn(B, K, Hkv, D, generator=g).to(device, dtype).transpose(1, 2).requires_grad_(True)
                v = torch.randn(B, K, Hkv, D, generator=g).to(device, dtype).transpose(1, 2).requires_grad_(True)
                mask = None if form == "segments" else _mask(form.split("+")[0], B, H, Q, K, device)
                segments = ref_mask = None
                if form == "segments":
                    segments = random_segment_ids(B, K, 1, max(1, K // 4), g).to(device)
                    ref_mask = keep_mask(MaskSpec(SEGMENTS, segments), (B, 1, K, K), causal=False, device=device)
                dropout = None
                if p:
                    torch.manual_seed(3)  # the key the call below draws first
                    thr, keep_scale = ops._attn.dropout_threshold(p)
                    seed = int(ops._new_seed(device))
                    dropout = (dropout_keep_reference(seed, (B, H, Q, K), thr, device=device), keep_scale)
                    torch.manual_seed(3)
                out = attention(q, k, v, mask, causal=causal, dropout_p=p, window=window, softcap=softcap,
                                sinks=sinks, segments=segments)
                do = torch.randn(out.shape, generator=g).to(device, dtype)
                inputs = (q, k, v) + (() if sinks is None else (sinks,))
                grads = torch.autograd.grad(out, inputs, do)
                ref_in = [t.detach().double().requires_grad_(True) for t in inputs]
                ref = attention_reference(*ref_in[:3], mask if ref_mask is None else ref_mask, causal=causal,
                                          compute_dtype=torch.float64,
                                          dropout=dropout, window=window, softcap=softcap,
                                          sinks=ref_in[3] if sinks is not None else None)
                ref_grads = torch.autograd.grad(ref, ref_in, do.double())
                worst = _max_violation(out, ref, dtype, WIDEN["attention"])
                for a, b in zip(grads[:3], ref_grads[:3]):
                    worst = max(worst, _max_violation(a, b, dtype, WIDEN["attention_grad"]))
                if sinks is not None:  # a sum over B * Q rows: rounding grows as its square root
                    worst = max(worst, _max_violation(grads[3], ref_grads[3], dtype,
                                                      WIDEN["attention_grad"] * (B * Q) ** 0.5))
                report("attention", f"{B}x{H}/{Hkv}x{Q}x{K}x{D}", dtype, form, worst, True)


# ----------------------------------------------------------------------------------------------------------------------
# Random cases (--fuzz): realistic sizes on CUDA, tiny ones in the interpreter
# ----------------------------------------------------------------------------------------------------------------------
FUZZ_MASKS = ("none", "pad-left", "pad-right", "pad-holes", "pad-int", "pad-empty", "bool4d", "add4d")
FUZZ_LAYOUTS = ("contiguous", "bthd", "sliced", "broadcast")


def _fuzz_mask(rng, form, B, H, Q, K, device):
    """A mask of ``form`` for ``[B, H, Q, K]`` scores, built on the CPU from ``rng`` (a ``torch.Generator``)."""
    if form == "none":
        return None
    if form.startswith("pad"):
        lengths = torch.randint(0, K + 1, (B,), generator=rng)
        cols = torch.arange(K)[None, :]
        if form == "pad-holes":
            m = torch.rand(B, K, generator=rng) < 0.7
        elif form == "pad-left" or (form == "pad-int" and B % 2):
            m = cols >= K - lengths[:, None]
        else:
            m = cols < lengths[:, None]
        if form == "pad-empty":
            m[int(torch.randint(0, B, (1,), generator=rng))] = False  # a sequence with nothing to attend to
        return (m.to(torch.int64) if form == "pad-int" else m).to(device)
    # 4D: broadcast over a random subset of (B, H, Q)
    shape = tuple(n if bool(torch.rand(1, generator=rng) < 0.5) else 1 for n in (B, H, Q)) + (K,)
    if form == "bool4d":
        return (torch.rand(shape, generator=rng) < 0.75).to(device)
    dtype = (torch.float32, torch.float16, torch.bfloat16, torch.float64)[int(torch.randint(0, 4, (1,), generator=rng))]
    add = torch.randn(shape, generator=rng).to(dtype)
    fill = torch.rand(shape, generator=rng)
    add[fill < 0.2] = torch.finfo(dtype).min  # HF's fill value
    add[fill > 0.95] = float("-inf")
    return add.to(device)


def _pick(rng, options):
    return options[int(torch.randint(0, len(options), (1,), generator=rng))]


def _fuzz_attention_case(rng, cuda):
    """Sizes and choices of one random ``attention`` case."""
    regime = _pick(rng, ("prefill", "cross", "decode", "split"))
    if cuda:
        D = _pick(rng, (1, 8, 16, 32, 40, 64, 80, 96, 128, 160, 256))
        B, Hkv, group = int(torch.randint(1, 5, (1,), generator=rng)), _pick(rng, (1, 2, 4)), _pick(rng, (1, 2, 3))
        big = 1500
    else:
        D = _pick(rng, (4, 16, 24))
        B, Hkv, group = int(torch.randint(1, 3, (1,), generator=rng)), _pick(rng, (1, 2)), _pick(rng, (1, 2))
        big = 40
    if regime == "prefill":
        Q = K = int(torch.randint(1, big + 1, (1,), generator=rng))
    elif regime == "cross":
        Q, K = (int(x) for x in torch.randint(1, big + 1, (2,), generator=rng))
    elif regime == "decode":
        Q, K = int(torch.randint(1, 17, (1,), generator=rng)), int(torch.randint(1, 3 * big, (1,), generator=rng))
    else:  # few programs and long rows: the decode path splits each row's keys across programs
        B, Hkv, group, Q = 1, 1, _pick(rng, (1, 2)), _pick(rng, (1, 2))
        K = int(torch.randint(2 * big // 3, 4 * big, (1,), generator=rng))
    case = dict(regime=regime, B=B, H=Hkv * group, Hkv=Hkv, Q=Q, K=K, D=D,
                dtype=_pick(rng, (torch.float16, torch.bfloat16, torch.float32)),
                mask=_pick(rng, FUZZ_MASKS), causal=bool(torch.rand(1, generator=rng) < 0.5),
                scale=_pick(rng, (None, None, None, 1.0, 0.3, -0.5, 0.0, 3.0)), layout=_pick(rng, FUZZ_LAYOUTS),
                grad=bool(torch.rand(1, generator=rng) < 0.4), nan=bool(torch.rand(1, generator=rng) < 0.05))
    # a sliding window on a third of the cases (bidirectional where not causal), drawn from a generator of its own so
    # that every other draw of a case stays what it was before windows existed (earlier runs' case numbers still name
    # the same cases; before bidirectional windows the cases without causality had none)
    wrng = torch.Generator().manual_seed(rng.initial_seed() ^ 0x5EED)
    window = int(torch.randint(1, K + 1, (1,), generator=wrng))
    case["window"] = window if bool(torch.rand(1, generator=wrng) < 1 / 3) else None
    # a soft-cap on a quarter of the cases, from a generator of its own likewise
    crng = torch.Generator().manual_seed(rng.initial_seed() ^ 0xCA9)
    case["softcap"] = _pick(crng, (None, None, None, None, None, None, 0.5, 2.0, 30.0, 1e-3, 1e4, 5.0))
    # attention sinks on a quarter of the cases (one logit per head: N(mean, 2)), a generator of their own likewise
    srng = torch.Generator().manual_seed(rng.initial_seed() ^ 0x51C)
    case["sinks"] = _pick(srng, (None, None, None, -2.0, 0.0, 3.0, None, None, None, None, None, None))
    # on the CPU a tenth of the cases take head dim 48, which the forward runs as two tiles of 32 and 16 (on CUDA the
    # head dims drawn above include 80, 96 and 160), a generator of its own likewise
    drng = torch.Generator().manual_seed(rng.initial_seed() ^ 0x2D)
    if not cuda and bool(torch.rand(1, generator=drng) < 0.1):
        case["D"] = D = 48
    # values of a head dim of their own on a fifth of the cases (multi-head latent attention; the HF backend's private
    # entry), a generator of their own likewise
    vrng = torch.Generator().manual_seed(rng.initial_seed() ^ 0xD7)
    widths = (8, 64, 96, 128, 192) if cuda else (4, 8, 16, 24)
    case["Dv"] = _pick(vrng, widths) if bool(torch.rand(1, generator=vrng) < 0.2) else D
    return case


def _fuzz_softmax_case(rng, cuda):
    """Sizes and choices of one random ``masked_softmax`` case (long rows take the looped kernels)."""
    if cuda:
        K = _pick(rng, (int(torch.randint(1, 2049, (1,), generator=rng)), int(torch.randint(2049, 70000, (1,),
                                                                                             generator=rng))))
        rows = max(1, 2_000_000 // K)
    else:
        K, rows = int(torch.randint(1, 60, (1,), generator=rng)), 24
    B, H = int(torch.randint(1, 4, (1,), generator=rng)), int(torch.randint(1, 5, (1,), generator=rng))
    Q = int(torch.randint(1, max(2, min(rows // (B * H), 300)) + 1, (1,), generator=rng))
    case = dict(B=B, H=H, Q=Q, K=K, dtype=_pick(rng, (torch.float16, torch.bfloat16, torch.float32)),
                mask=_pick(rng, FUZZ_MASKS), causal=bool(torch.rand(1, generator=rng) < 0.5),
                scale=_pick(rng, (1.0, 0.125, 0.7, -0.5, 0.0, 4.0)),
                layout=_pick(rng, ("contiguous", "transposed", "sliced", "broadcast")),
                grad=bool(torch.rand(1, generator=rng) < 0.4), nan=bool(torch.rand(1, generator=rng) < 0.05))
    # attention sinks on a quarter of the cases, from a generator of their own (see _fuzz_attention_case)
    srng = torch.Generator().manual_seed(rng.initial_seed() ^ 0x51C)
    case["sinks"] = _pick(srng, (None, None, None, -2.0, 0.0, 3.0, None, None, None, None, None, None))
    return case


def _nan_aware_violation(out, ref, dtype, widen):
    """``_max_violation`` where the reference may hold NaN: NaN must appear exactly where the reference has it."""
    out, ref = out.detach().double(), ref.detach().double()
    if not torch.equal(torch.isnan(out), torch.isnan(ref)):
        return float("inf")
    keep = ~torch.isnan(ref)
    return _max_violation(out[keep], ref[keep], dtype, widen)


def _leaf(shape, rng, device, dtype, layout):
    """A tensor of ``shape`` ``[B, H, T, D]`` in the given memory layout (and the leaf that gets its gradient)."""
    B, H, T, D = shape
    if layout == "bthd":  # HF's projections: [B, T, H, D] seen as [B, H, T, D]
        leaf = torch.randn(B, T, H, D, generator=rng).to(device, dtype).requires_grad_(True)
        return leaf, lambda t: t.transpose(1, 2)
    if layout == "sliced":  # heads cut out of a wider last dimension, every other head
        leaf = torch.randn(B, 2 * H, T, 2 * D, generator=rng).to(device, dtype).requires_grad_(True)
        return leaf, lambda t: t[:, ::2, :, D:]
    if layout == "broadcast":  # one batch row shared by the batch (stride 0)
        leaf = torch.randn(1, H, T, D, generator=rng).to(device, dtype).requires_grad_(True)
        return leaf, lambda t: t.expand(B, H, T, D)
    leaf = torch.randn(B, H, T, D, generator=rng).to(device, dtype).requires_grad_(True)
    return leaf, lambda t: t


def _fuzz_attention(case, rng, device):
    from . import attention, ops
    from .reference import attention_reference

    B, H, Hkv, Q, K, D, dtype = (case[n] for n in ("B", "H", "Hkv", "Q", "K", "D", "dtype"))
    Dv = case.get("Dv", D)
    leaves, views = zip(*(_leaf(s, rng, device, dtype, case["layout"]) for s in
                          ((B, H, Q, D), (B, Hkv, K, D), (B, Hkv, K, Dv))))
    if case["nan"]:
        with torch.no_grad():
            leaves[0].view(-1)[int(torch.randint(0, leaves[0].numel(), (1,), generator=rng))] = float("nan")
    mask = _fuzz_mask(rng, case["mask"], B, H, Q, K, device)
    q, k, v = (f(t) for f, t in zip(views, leaves))
    grad = case["grad"] and not case["nan"] and _plain_scale(case["scale"], D ** -0.5)
    sinks = ref_sinks = None
    if case.get("sinks") is not None:
        sinks = (torch.randn(H, generator=rng) * 2 + case["sinks"]).to(device).requires_grad_(grad)
        ref_sinks = sinks.detach().double().requires_grad_(grad)
    own_width = {} if Dv == D else dict(_any_value_dim=True)  # (the public function takes one head dim)
    with torch.set_grad_enabled(grad):
        out = (ops.attention if own_width else attention)(q, k, v, mask, causal=case["causal"], scale=case["scale"],
                                                          window=case["window"], softcap=case["softcap"],
                                                          sinks=sinks, **own_width)
    ref_leaves = [t.detach().double().requires_grad_(grad) for t in leaves]
    ref = attention_reference(*(f(t) for f, t in zip(views, ref_leaves)), mask, causal=case["causal"],
                              scale=case["scale"], compute_dtype=torch.float64, window=case["window"],
                              softcap=case["softcap"], sinks=ref_sinks)
    worst = _nan_aware_violation(out, ref, dtype, WIDEN["attention"] * _logit_widening(case["scale"], D))
    if out.shape != (B, H, Q, Dv) or out.dtype != dtype:
        worst = float("inf")
    if grad:
        do = torch.randn(out.shape, generator=rng).to(device, dtype)
        extra, ref_extra = ((), ()) if sinks is None else ((sinks,), (ref_sinks,))
        grads = torch.autograd.grad(out, tuple(leaves) + extra, do)
        ref_grads = torch.autograd.grad(ref, tuple(ref_leaves) + ref_extra, do.double())
        terms = B if case["layout"] == "broadcast" else 1  # a shared batch row sums B rows' gradients
        for a, b in zip(grads[:3], ref_grads[:3]):
            worst = max(worst, _max_violation(a, b, dtype, WIDEN["attention_grad"] * terms))
        if sinks is not None:  # a sum over B * Q rows: rounding grows as its square root
            worst = max(worst, _max_violation(grads[3], ref_grads[3], dtype, WIDEN["attention_grad"] * (B * Q) ** 0.5))
    return worst, True


def _fuzz_softmax(case, rng, device):
    from . import masked_softmax
    from .reference import masked_softmax_reference

    B, H, Q, K, dtype, layout = (case[n] for n in ("B", "H", "Q", "K", "dtype", "layout"))
    if layout == "transposed":  # K-major storage, as after a matmul with swapped operands
        leaf, view = torch.randn(B, H, K, Q, generator=rng), lambda t: t.transpose(2, 3)
    elif layout == "sliced":
        leaf, view = torch.randn(B, H, Q + 1, 2 * K, generator=rng), lambda t: t[:, :, 1:, 1::2]
    elif layout == "broadcast":
        leaf, view = torch.randn(B, 1, Q, K, generator=rng), lambda t: t.expand(B, H, Q, K)
    else:
        leaf, view = torch.randn(B, H, Q, K, generator=rng), lambda t: t
    leaf = (leaf * 3).to(device, dtype).requires_grad_(True)
    if case["nan"]:
        with torch.no_grad():
            leaf.view(-1)[int(torch.randint(0, leaf.numel(), (1,), generator=rng))] = float("nan")
    mask = _fuzz_mask(rng, case["mask"], B, H, Q, K, device)
    grad = case["grad"] and not case["nan"] and _plain_scale(case["scale"], 1.0)
    sinks = ref_sinks = None
    if case.get("sinks") is not None:  # one logit per head, of the scaled scores' size
        sinks = (torch.randn(H, generator=rng) * 2 + case["sinks"]).to(device).requires_grad_(grad)
        ref_sinks = sinks.detach().double().requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        y = masked_softmax(view(leaf), mask, causal=case["causal"], scale=case["scale"], sinks=sinks)
    ref_leaf = leaf.detach().double().requires_grad_(grad)
    ref = masked_softmax_reference(view(ref_leaf), mask, causal=case["causal"], scale=case["scale"],
                                   compute_dtype=torch.float64, out_dtype=torch.float64, sinks=ref_sinks)
    worst = _nan_aware_violation(y, ref, dtype, WIDEN["softmax"])
    if y.shape != (B, H, Q, K) or y.dtype != dtype or not y.is_contiguous():
        worst = float("inf")
    zeros_exact = bool(torch.all(y[ref == 0] == 0))
    if grad:
        dy = torch.randn(y.shape, generator=rng).to(device, dtype)
        extra, ref_extra = ((), ()) if sinks is None else ((sinks,), (ref_sinks,))
        grads = torch.autograd.grad(y, (leaf,) + extra, dy)
        ref_grads = torch.autograd.grad(ref, (ref_leaf,) + ref_extra, dy.double())
        terms = H if layout == "broadcast" else 1  # a shared head row sums H rows' gradients
        worst = max(worst, _max_violation(grads[0], ref_grads[0], dtype, WIDEN["softmax_grad"] * terms))
        if sinks is not None:  # a sum over B * Q rows: rounding grows as its square root
            worst = max(worst, _max_violation(grads[1], ref_grads[1], dtype, WIDEN["softmax_grad"] * (B * Q) ** 0.5))
    return worst, zeros_exact


def _logit_widening(scale, D):
    """How much larger than at the default scale ``D ** -0.5`` the logits are. Rounding the scores costs an error in
    the exponent proportional to them, in any fp32 implementation: on three random H200 cases with scales 3.0 and
    -0.5, plain PyTorch fp32 math exceeded the table's fp32 row by 1.8x, 3.3x and 1.7x, as the kernel did by
    1.7x, 3.1x and 1.6x (2026-12-02)."""
    return 1.0 if scale is None else max(1.0, abs(scale) * D ** 0.5)


def _plain_scale(scale, default):
    """Whether gradients are checked at this scale: up to the default one. Larger scales sharpen the softmax, and
    the backward's ``rowsum(dO * O)`` from the output rounded to the input dtype (as in every FlashAttention-style
    backward) then costs more than the table's widening allows; their forward is still checked."""
    return scale is None or abs(scale) <= default


def _describe(case):
    sizes = "x".join(str(case[n]) for n in ("B", "H", "Q", "K"))
    if "D" in case:
        sizes = f"{case['B']}x{case['H']}/{case['Hkv']}x{case['Q']}x{case['K']}x{case['D']} {case['regime']}"
        if case.get("Dv", case["D"]) != case["D"]:
            sizes += f" v{case['Dv']}"
    flags = [case["layout"], f"scale={case['scale']}"] + [n for n in ("causal", "grad", "nan") if case[n]]
    if case.get("window") is not None:
        flags.append(f"window={case['window']}")
    if case.get("softcap") is not None:
        flags.append(f"softcap={case['softcap']}")
    if case.get("sinks") is not None:
        flags.append(f"sinks~{case['sinks']}")
    return sizes, " ".join(flags)


def fuzz(device, n, seed, report, only=None):
    """``n`` random cases, alternating ``attention`` and ``masked_softmax``; case ``i`` draws everything from the
    generator seeded with ``seed * 1_000_003 + i``, so ``--fuzz-case i`` reruns exactly that case."""
    from tqdm import tqdm

    cuda = device == "cuda"
    indices = [only] if only is not None else range(n)
    for i in tqdm(indices, desc="random cases", unit="case", disable=only is not None, leave=False):
        rng = torch.Generator().manual_seed(seed * 1_000_003 + i)
        if i % 2 == 0:
            kernel, case = "attention", _fuzz_attention_case(rng, cuda)
            run = _fuzz_attention
        else:
            kernel, case = "masked_softmax", _fuzz_softmax_case(rng, cuda)
            run = _fuzz_softmax
        try:
            worst, zeros_exact = run(case, rng, device)
            error = None
        except Exception as exc:  # noqa: BLE001 - a valid input that raises is a failure to report, not a crash
            worst, zeros_exact, error = float("inf"), False, f"{type(exc).__name__}: {str(exc)[:200]}"
        sizes, flags = _describe(case)
        report(f"{kernel} #{i}", sizes, case["dtype"], case["mask"], worst, zeros_exact, detail=flags, error=error,
               quiet=True)


def benchmark(quick):
    """Median ms of ours vs PyTorch on a GPT-2-like layer (fp16, left padding, causal)."""
    import triton

    from . import attention, masked_softmax

    F = torch.nn.functional
    rows = []
    configs = [(8, 12, 1024, 64)] if quick else [(8, 12, 512, 64), (8, 12, 1024, 64), (32, 12, 1, 1024)]
    for B, H, T, D in configs:
        Q = T
        K = 1024 if T == 1 else T
        g = torch.Generator(device="cuda").manual_seed(0)
        dt = torch.float16
        q = torch.randn(B, H, Q, D, device="cuda", dtype=dt, generator=g)
        k = torch.randn(B, H, K, D, device="cuda", dtype=dt, generator=g)
        v = torch.randn(B, H, K, D, device="cuda", dtype=dt, generator=g)
        lengths = torch.randint(K // 2, K + 1, (B,), device="cuda", generator=g)
        pad = torch.arange(K, device="cuda")[None, :] >= K - lengths[:, None]
        causal4d = torch.ones(Q, K, dtype=torch.bool, device="cuda").tril(K - Q)
        mask4d = pad[:, None, None, :] & causal4d  # what SDPA needs for padding + causality
        additive = torch.zeros(mask4d.shape, dtype=dt, device="cuda").masked_fill(~mask4d, torch.finfo(dt).min)
        scale = D ** -0.5
        scores = torch.matmul(q, k.transpose(-1, -2))
        bench = lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")  # noqa: E731
        ours_sm = bench(lambda: masked_softmax(scores, pad, causal=True, scale=scale))
        torch_sm = bench(lambda: torch.softmax(scores * scale + additive, dim=-1))
        ours_at = bench(lambda: attention(q, k, v, pad, causal=True))
        sdpa_at = bench(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask4d))
        rows.append(dict(shape=f"B{B} H{H} Q{Q} K{K} D{D}", softmax_ms=ours_sm, eager_softmax_ms=torch_sm,
                         attention_ms=ours_at, sdpa_ms=sdpa_at))
        print(f"  {rows[-1]['shape']:<26} masked_softmax {ours_sm:8.3f} ms  eager softmax {torch_sm:8.3f} ms "
              f"({torch_sm / ours_sm:5.2f}x)   attention {ours_at:8.3f} ms  sdpa {sdpa_at:8.3f} ms "
              f"({sdpa_at / ours_at:5.2f}x)", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_masked_softmax.check", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer correctness cases and one benchmark shape")
    parser.add_argument("--no-bench", action="store_true", help="skip the micro-benchmark")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--fuzz", type=int, default=0, metavar="N",
                        help="also run N random cases (sizes, layouts, masks, dtypes, GQA, decode splits, NaN)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random cases (default 0)")
    parser.add_argument("--fuzz-case", type=int, default=None, metavar="I",
                        help="run only random case I of --seed (as listed by a --fuzz run)")
    args = parser.parse_args(argv)
    if args.fuzz < 0 or (args.fuzz_case is not None and args.fuzz_case < 0):
        parser.error("--fuzz and --fuzz-case take non-negative integers")
    if args.json and (os.path.isdir(args.json) or not os.path.isdir(os.path.dirname(os.path.abspath(args.json)))):
        parser.error(f"--json {args.json!r}: a file path in an existing folder is needed")

    cuda = torch.cuda.is_available()
    if not cuda and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        # The interpreter must be chosen before the kernels are defined, i.e. before this package is imported.
        env = dict(os.environ, TRITON_INTERPRET="1")
        argv = sys.argv[1:] if argv is None else list(argv)
        return subprocess.call([sys.executable, "-m", "hf_masked_softmax.check", *argv], env=env)

    import triton

    import hf_masked_softmax

    device = "cuda" if cuda else "cpu"
    where = torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()})"
    print(f"hf_masked_softmax {hf_masked_softmax.__version__} | torch {torch.__version__} | triton "
          f"{triton.__version__} | {where}")
    if not cuda:
        print("No CUDA device: checking the real Triton kernels in Triton's CPU interpreter on small shapes "
              "(slow, no benchmark). Run on a GPU for the full check and the timings.")

    results, bench = [], []

    def save(complete):
        # written after every check, so that a run cut short (a time limit) still leaves what it found
        if args.json:
            tmp = f"{args.json}.tmp"
            with open(tmp, "w") as f:
                json.dump(dict(device=where, torch=torch.__version__, triton=triton.__version__, complete=complete,
                               checks=results, benchmark=bench), f, indent=1)
            os.replace(tmp, args.json)

    def report(kernel, shape, dtype, form, violation, zeros_exact, detail="", error=None, quiet=False):
        ok = violation <= 1.0 and zeros_exact
        results.append(dict(kernel=kernel, shape=shape, dtype=str(dtype).replace("torch.", ""), mask=form,
                            error_over_tolerance=violation, masked_exact_zero=zeros_exact, ok=ok))
        if detail:
            results[-1]["case"] = detail
        if error:
            results[-1]["error"] = error
        save(False)
        if quiet and ok:  # random cases: failures only (the summary counts the rest)
            return
        note = error or ("" if zeros_exact else "masked entries not exactly 0")
        print(f"  {'PASS' if ok else 'FAIL'}  {kernel:<15} {shape:<22} {results[-1]['dtype']:<9} {form:<19} "
              f"error/tolerance {violation:6.3f}{f'  {detail}' if detail else ''}{f'  {note}' if note else ''}",
              flush=True)

    t0 = time.perf_counter()
    print("Correctness against an fp64 reference (forward and backward; 'error/tolerance' <= 1 passes):")
    if args.fuzz_case is None:
        check_masked_softmax(device, args.quick, report)
        check_attention(device, args.quick, report)
    if args.fuzz or args.fuzz_case is not None:
        what = f"case {args.fuzz_case}" if args.fuzz_case is not None else f"{args.fuzz} cases"
        print(f"Random cases (seed {args.seed}, {what}; failures printed, rerun one with --fuzz-case I):")
        before = len(results)
        fuzz(device, args.fuzz, args.seed, report, only=args.fuzz_case)
        fuzz_failed = sum(not r["ok"] for r in results[before:])
        print(f"  {len(results) - before - fuzz_failed}/{len(results) - before} random cases passed", flush=True)
    if cuda and not args.no_bench and args.fuzz_case is None:
        print("Micro-benchmark, fp16, left padding + causal (median of triton.testing.do_bench):")
        bench.extend(benchmark(args.quick))
    failed = [r for r in results if not r["ok"]]
    print(f"{len(results) - len(failed)}/{len(results)} checks passed in {time.perf_counter() - t0:.1f} s"
          + ("" if not failed else f"; FAILED: {len(failed)}"))
    save(True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
