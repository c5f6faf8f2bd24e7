"""Host (CPU) cost per call of the pieces of a patched decode step, and where generate() spends its time (GPU).

Generation with a KV cache is host-bound: each layer's attention on a B8 x 1-query step is a few microseconds of GPU
work, while the Python and launch code around it takes far longer. This script measures that code.

1. Microbenchmarks: wall-clock microseconds per call of back-to-back calls (synchronised once at the end, so the GPU
   never holds the host back: these are host costs), for the decode-step shape of speed.py's GPT-2 generate row
   (q [8, 12, 1, 64], k/v [8, 12, 192, 64], a left-padded [8, 192] mask): an empty Triton kernel with one and with
   forty arguments, ``torch.empty``, SDPA with the mask, ``hf_masked_softmax.attention`` and ``masked_softmax``
   with and without the mask, and the launcher alone; one GPT-2 layer's whole attention call in HF eager and in each
   patch mode; and a decode step without padding (the mask function, then twelve layers' fused attention) with the
   one-query pad check on and off (``hf.DECODE_PAD_CHECK``), each step ending in a wait for the GPU as generate()'s
   stop check does, so that the check's own wait finds the GPU idle, as in generate().
2. ``cProfile`` of one short GPT-2 ``generate()`` per implementation (eager, sdpa, softmax, fused): the top functions by
   own time are written to ``OUT/generate_profile_<impl>.txt``.
3. ``--python-only``: the library's own Python per call, with the kernel launchers replaced by stubs that return
   ready-made outputs. Microseconds per call and, independent of the host's speed, the number of Python and C function
   calls per call (``sys.setprofile``). Runs on a CPU too, under ``TRITON_INTERPRET=1`` (where CPU tensors take the
   kernels' path). Point ``PYTHONPATH`` at another checkout to compare two versions of the library.

``--smoke`` (CPU, ``TRITON_INTERPRET=1``) runs items 1 and 2 on a 2 x 2-head, 32-key step and two generated tokens
of a tiny model: it checks that the script runs (about 40 s on a 2-core CPU); its numbers are the interpreter's.

    python evals/bench_host.py [--out DIR] [--no-profile | --attention-profile | --python-only] [--smoke]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import triton  # noqa: E402

import benchutil  # noqa: E402


@triton.jit
def _empty1(x_ptr):
    pass


@triton.jit
def _empty40(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9,
             c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, d0, d1, d2, d3, d4, d5, d6, d7, d8, d9):
    pass


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


N_CALLS = 300  # back-to-back calls per round (--smoke: 2)


def us_per_call(fn, n=None) -> float:
    """Median over 5 rounds of the wall time of ``n`` back-to-back calls, in microseconds per call."""
    n = n or N_CALLS
    fn()
    _sync()
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t1 = time.perf_counter()  # host time only: the GPU may still be busy
        _sync()
        rounds.append((t1 - t0) / n * 1e6)
    rounds.sort()
    return rounds[len(rounds) // 2]


class _Progress(dict):
    """Rows that print as they are measured (in a CPU smoke run every call goes through Triton's interpreter)."""

    def __setitem__(self, what, us):
        super().__setitem__(what, us)
        print(f"  {what}: {us:.1f} us per call", flush=True)


def micro(dev: str, small: bool = False) -> list[dict]:
    """Host microseconds per call of each piece (see the module docstring, item 1), printed as each is measured.
    ``small``: a 2 x 2-head, 32-key shape instead of the decode step's (the CPU smoke run, where every call runs the
    kernels in Triton's interpreter)."""
    import importlib

    import hf_masked_softmax as hms
    from hf_masked_softmax import masks

    attn_mod = importlib.import_module("hf_masked_softmax.attention")  # the module (the package exports a function)
    B, H, K, D = (2, 2, 32, 16) if small else (8, 12, 192, 64)
    q = torch.randn(B, H, 1, D, device=dev, dtype=torch.float16)
    k = torch.randn(B, H, K, D, device=dev, dtype=torch.float16)
    v = torch.randn_like(k)
    lens = torch.randint(K // 2, K + 1, (B,), device=dev)
    # shared key ranges, as the layers of a patched model's forward share the mask function's mask
    pad = masks.share_ranges(torch.arange(K, device=dev)[None] >= (K - lens)[:, None])
    bool4d = pad[:, None, None, :]
    scores = torch.randn(B, H, 1, K, device=dev, dtype=torch.float16)
    x = torch.empty(16, device=dev)
    ints = list(range(3, 43))
    ranges = masks.pad_ranges(pad.view(torch.uint8), pad)
    out = _Progress()
    with torch.no_grad():
        out["triton empty kernel, 1 arg"] = us_per_call(lambda: _empty1[(1,)](x))
        out["triton empty kernel, 1 tensor + 39 ints"] = us_per_call(lambda: _empty40[(1,)](x, *ints[1:]))
        out["torch.empty"] = us_per_call(lambda: torch.empty((B, 1, H, D), device=dev, dtype=torch.float16))
        out["sdpa, bool mask"] = us_per_call(
            lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bool4d))
        out["sdpa, no mask"] = us_per_call(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
        out["attention, 2D mask"] = us_per_call(lambda: hms.attention(q, k, v, pad, causal=True))
        out["attention, no mask"] = us_per_call(lambda: hms.attention(q, k, v, causal=True))
        out["attention launcher alone"] = us_per_call(
            lambda: attn_mod._forward(q, k, v, attn_mod._K_RANGE, pad.view(torch.uint8), ranges, 0.0, True, 0.125))
        out["masked_softmax, 2D mask"] = us_per_call(lambda: hms.masked_softmax(scores, pad, causal=True, scale=0.125))
        out["masked_softmax, no mask"] = us_per_call(lambda: hms.masked_softmax(scores, causal=True, scale=0.125))
        out["hf eager recipe (add, softmax fp32, cast)"] = us_per_call(
            lambda: torch.softmax(scores.float() + torch.where(bool4d, 0.0, -1e4), -1).half())
        # one GPT-2 layer's whole attention call as the model makes it, output reshaped as GPT2Attention does
        from transformers.models.gpt2.modeling_gpt2 import eager_attention_forward

        from hf_masked_softmax import hf

        additive = torch.where(bool4d, 0.0, torch.finfo(torch.float16).min).to(torch.float16)
        for mode in ("softmax", "fused"):
            module = torch.nn.Module().eval()
            module.is_causal = True
            setattr(module, hf.MODE_ATTR, mode)
            out[f"GPT-2 layer attention, patched {mode}"] = us_per_call(
                lambda: hf.attention_forward(module, q, k, v, pad, scaling=0.125)[0].reshape(B, 1, -1).contiguous())
        out["GPT-2 layer attention, HF eager"] = us_per_call(
            lambda: eager_attention_forward(module, q, k, v, additive, scaling=0.125)[0].reshape(B, 1, -1).contiguous())
        # A decode step without padding: the mask function (one call per forward) and twelve layers' fused attention,
        # with the one-query check on (the mask read on the host, then dropped) and off (the mask of ones passed on)
        ones = torch.ones(B, K, dtype=torch.long, device=dev)
        setattr(module, hf.MODE_ATTR, "fused")

        def step():  # ends as generate()'s step does on CUDA: its stop check waits for the GPU
            mask = hf._mask_function(B, 1, K, q_offset=K - 1, kv_offset=0, attention_mask=ones)
            for _ in range(12):
                hf.attention_forward(module, q, k, v, mask, scaling=0.125)
            _sync()

        saved = hf.DECODE_PAD_CHECK
        try:
            for check in (True, False):
                hf.DECODE_PAD_CHECK = check
                what = "on: mask dropped" if check else "off: mask of ones passed on"
                out[f"mask function, decode step without padding, check {what}"] = us_per_call(
                    lambda: hf._mask_function(B, 1, K, q_offset=K - 1, kv_offset=0, attention_mask=ones))
                out[f"decode step without padding (mask function + 12 fused layers), check {what}"] = us_per_call(
                    step, max(1, (N_CALLS // 12)))
        finally:
            hf.DECODE_PAD_CHECK = saved
    return [{"what": w, "us_per_call": u} for w, u in out.items()]


def profile_generate(out_dir, dev, tiny=False, impls=("eager", "sdpa", "softmax", "fused"), new_tokens=16) -> list[dict]:
    import speed

    model = speed.build("gpt2-tiny" if tiny else "gpt2", torch.float16 if dev == "cuda" else torch.float32, dev)
    gen = torch.Generator().manual_seed(0)
    batch = 2 if tiny else 8
    if tiny:  # the smoke run: every token runs the kernels in Triton's interpreter
        new_tokens = 2
    ids, mask = speed.make_inputs(model.config.vocab_size, batch, 16 if tiny else 128, (8, 16) if tiny else (64, 128),
                                  "left", gen, dev)
    rows = []
    for impl in impls:
        undo = speed.set_impl(model, impl)

        def fn():
            with torch.no_grad():
                return model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                      do_sample=False, pad_token_id=model.config.eos_token_id)
        try:
            fn()
            _sync()
            t0 = time.perf_counter()
            fn()
            _sync()
            wall = time.perf_counter() - t0
            prof = cProfile.Profile()
            prof.enable()
            fn()
            _sync()
            prof.disable()
        finally:
            undo()
        _write_profile(prof, out_dir / f"generate_profile_{impl}.txt", cumulative=45)
        rows.append({"impl": impl, "ms_per_step": wall * 1e3 / new_tokens})
        print(f"{impl}: {wall * 1e3 / new_tokens:.2f} ms per generated token (B{batch}, {new_tokens} new tokens)",
              flush=True)
    return rows


def profile_attention(out_dir, dev) -> list[dict]:
    """cProfile of back-to-back fused attention calls: the forward on the decode-step shape of ``micro`` and the
    autograd backward on the BERT shape of bench_attention.py (B32 H12 512x512, right padding), where the backward's
    host cost exceeds its device time; host cost per call of those and of the training forward (autograd recording),
    beside SDPA's. Writes ``OUT/attention_profile_{fwd,bwd}.txt``."""
    import hf_masked_softmax as hms
    from hf_masked_softmax import masks

    rows = []
    g = torch.Generator().manual_seed(0)
    B, H, K, D = 8, 12, 192, 64
    q = torch.randn(B, H, 1, D, generator=g).to(dev, torch.float16)
    k = torch.randn(B, H, K, D, generator=g).to(dev, torch.float16)
    v = torch.randn_like(k)
    pad = torch.arange(K)[None] >= torch.randint(0, K // 2, (B, 1), generator=g)
    pad = masks.share_ranges(pad.to(dev))  # as a patched model's layers share it
    n_fwd, n_bwd = (2, 2) if dev == "cpu" else (300, 100)
    if dev == "cuda":
        # what a launch through the compiled kernel (Triton's specialisation and cache lookup skipped) would save
        x = torch.empty(16, device=dev)
        ints = list(range(4, 43))
        ck = _empty40[(1,)](x, *ints)
        runner = ck[(1, 1, 1)]
        stream = torch.cuda.current_stream().cuda_stream
        rows.append({"what": "triton empty kernel, 40 args, jit launch", "us_per_call": us_per_call(
            lambda: _empty40[(1,)](x, *ints))})
        rows.append({"what": "same, compiled kernel's runner", "us_per_call": us_per_call(lambda: runner(x, *ints))})
        rows.append({"what": "same, compiled kernel's run with the stream", "us_per_call": us_per_call(
            lambda: ck.run(1, 1, 1, stream, ck.function, ck.packed_metadata, None, None, None, x, *ints))})
    with torch.no_grad():
        fwd = lambda: hms.attention(q, k, v, pad, causal=True)  # noqa: E731
        rows.append({"what": "attention forward, decode step, 2D mask", "us_per_call": us_per_call(fwd)})
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n_fwd):
            fwd()
        prof.disable()
    _write_profile(prof, out_dir / "attention_profile_fwd.txt", header=f"{n_fwd} calls\n")
    B, Q = (2, 24) if dev == "cpu" else (32, 512)
    qb, kb, vb = (torch.randn(B, Q, H, D, generator=g).to(dev, torch.float16).transpose(1, 2).requires_grad_(True)
                  for _ in range(3))
    padb = masks.share_ranges((torch.arange(Q)[None] < torch.randint(Q // 2, Q + 1, (B, 1), generator=g)).to(dev))
    rows.append({"what": "attention forward with autograd, BERT shape", "us_per_call": us_per_call(
        lambda: hms.attention(qb, kb, vb, padb), n_bwd)})
    rows.append({"what": "sdpa forward with autograd, BERT shape, no mask", "us_per_call": us_per_call(
        lambda: torch.nn.functional.scaled_dot_product_attention(qb, kb, vb), n_bwd)})
    out = hms.attention(qb, kb, vb, padb)
    do = torch.randn_like(out)
    bwd = lambda: torch.autograd.grad(out, (qb, kb, vb), do, retain_graph=True)  # noqa: E731
    rows.append({"what": "attention autograd backward, BERT shape", "us_per_call": us_per_call(bwd, n_bwd)})
    o_sd = torch.nn.functional.scaled_dot_product_attention(qb, kb, vb)
    rows.append({"what": "sdpa autograd backward, BERT shape, no mask", "us_per_call": us_per_call(
        lambda: torch.autograd.grad(o_sd, (qb, kb, vb), do, retain_graph=True), n_bwd)})
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n_bwd):
        bwd()
    prof.disable()
    _sync()
    _write_profile(prof, out_dir / "attention_profile_bwd.txt", header=f"{n_bwd} calls\n")
    return rows


def _calls_per_call(fn) -> tuple[int, int]:
    """(Python function calls, C function calls) that one call of ``fn`` makes, after a first call."""
    fn()
    counts = [0, 0]

    def profiler(frame, event, arg):
        if event == "call":
            counts[0] += 1
        elif event == "c_call":
            counts[1] += 1

    sys.setprofile(profiler)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return counts[0] - 1, counts[1]  # less the profiler's own exit from setprofile


def python_cost(dev) -> list[dict]:
    """Host cost of the library's Python on the decode-step shape of ``micro``, kernels stubbed out (see the module
    docstring, item 3)."""
    import importlib

    import hf_masked_softmax as hms
    from hf_masked_softmax import hf, masks

    ms_mod = importlib.import_module("hf_masked_softmax.masked_softmax")
    attn_mod = importlib.import_module("hf_masked_softmax.attention")
    B, H, K, D = 8, 12, 192, 64
    dt = torch.float16 if dev == "cuda" else torch.float32  # CPU matmuls in fp16 would dwarf the Python measured
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, 1, D, generator=g).to(dev, dt)
    k = torch.randn(B, H, K, D, generator=g).to(dev, dt)
    v = torch.randn_like(k)
    scores = torch.randn(B, H, 1, K, generator=g).to(dev, dt)
    pad = (torch.arange(K)[None] >= torch.randint(0, K // 2, (B, 1), generator=g)).to(dev)
    if hasattr(masks, "share_ranges"):  # as a patched model's layers share it (older versions cache by object)
        masks.share_ranges(pad)
    probs, out, ranges = torch.empty_like(scores), torch.empty_like(q), torch.zeros(B, 4, dtype=torch.int32, device=dev)
    module = torch.nn.Module().eval()
    module.is_causal = True
    calls = {
        "masked_softmax, no mask": lambda: hms.masked_softmax(scores, causal=True, scale=0.125),
        "masked_softmax, 2D mask": lambda: hms.masked_softmax(scores, pad, causal=True, scale=0.125),
        "attention, no mask": lambda: hms.attention(q, k, v, causal=True),
        "attention, 2D mask": lambda: hms.attention(q, k, v, pad, causal=True),
    }
    for mode in ("softmax", "fused"):
        calls[f"GPT-2 layer attention, patched {mode}"] = (
            lambda mode=mode: (setattr(module, hf.MODE_ATTR, mode),
                               hf.attention_forward(module, q, k, v, pad, scaling=0.125)))
    saved = (ms_mod._forward, attn_mod._forward, masks.pad_ranges)
    ms_mod._forward = lambda *a, **kw: probs
    attn_mod._forward = lambda *a, **kw: (out, None)
    masks.pad_ranges = lambda *a, **kw: ranges
    rows = []
    try:
        with torch.no_grad():
            for what, fn in calls.items():
                py, c = _calls_per_call(fn)
                rows.append({"what": what, "us_per_call": us_per_call(fn), "python_calls": py, "c_calls": c})
    finally:
        ms_mod._forward, attn_mod._forward, masks.pad_ranges = saved
    return rows


def _write_profile(prof, path, header: str = "", cumulative: int = 0):
    """The top 30 functions by own time (and the top ``cumulative`` by cumulative time) of a cProfile run."""
    s = io.StringIO()
    s.write(header)
    st = pstats.Stats(prof, stream=s)
    st.sort_stats("tottime").print_stats(30)
    if cumulative:
        st.sort_stats("cumulative").print_stats(cumulative)
    path.write_text(s.getvalue())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--attention-profile", action="store_true",
                    help="only cProfile the fused attention's forward (decode) and backward (BERT shape) calls")
    ap.add_argument("--python-only", action="store_true",
                    help="the library's Python alone, kernels stubbed: us and function calls per call (CPU too)")
    ap.add_argument("--smoke", action="store_true", help="CPU smoke run (TRITON_INTERPRET=1): tiny model; not timings")
    args = ap.parse_args(argv)
    if args.python_only and args.attention_profile:
        ap.error("--python-only and --attention-profile are separate runs")
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if not torch.cuda.is_available() and not (args.smoke or (args.python_only and interpreted)):
        sys.exit("bench_host.py needs a CUDA device (or TRITON_INTERPRET=1 with --smoke or --python-only)")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    global N_CALLS
    if args.smoke:
        N_CALLS = 2
    out_dir = benchutil.out_dir(args.out)
    if args.python_only:
        N_CALLS = 2 if args.smoke else 3000
        import hf_masked_softmax

        print(f"library: {os.path.dirname(hf_masked_softmax.__file__)}")
        rows = python_cost(dev)
        benchutil.print_table(rows, ["what", "us_per_call", "python_calls", "c_calls"])
        benchutil.write_json(out_dir / "bench_host_python.json", {"env": benchutil.environment(), "python_only": rows})
        return
    if args.attention_profile:
        rows = profile_attention(out_dir, dev)
        benchutil.print_table(rows, ["what", "us_per_call"])
        benchutil.write_json(out_dir / "bench_host_attention.json", {"env": benchutil.environment(), "micro": rows})
        return
    rows = micro(dev, small=args.smoke)
    benchutil.print_table(rows, ["what", "us_per_call"])
    gen_rows = [] if args.no_profile else profile_generate(out_dir, dev, tiny=args.smoke)
    benchutil.write_json(out_dir / "bench_host.json", {"env": benchutil.environment(), "micro": rows,
                                                        "generate": gen_rows})


if __name__ == "__main__":
    main()
