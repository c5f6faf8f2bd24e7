"""Shared bits of the GPU benchmark scripts: environment record, copy-bandwidth ceiling, timing, output files."""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch


def git_sha() -> str:
    """The commit measured: $GIT_SHA when set (the GPU machine gets a copy of the working tree, whose .git may lag)."""
    if os.environ.get("GIT_SHA"):
        return os.environ["GIT_SHA"]
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=root, text=True, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("GIT_SHA", "unknown")


def environment() -> dict:
    """GPU name and library versions, recorded next to every number."""
    import transformers
    import triton

    env = {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "git_sha": git_sha(),
        "command": " ".join(["python", *sys.argv]),  # what produced these numbers
    }
    if torch.cuda.is_available():
        env["sm_count"] = torch.cuda.get_device_properties(0).multi_processor_count
    return env


def median_ms(fn, *, warmup: int = 25, rep: int = 100, cuda_graph: bool = False, grad_to_none=None) -> float:
    """Median milliseconds of ``fn`` by CUDA events (triton.testing); optionally replayed inside a CUDA graph."""
    import triton.testing

    if cuda_graph:
        return float(triton.testing.do_bench_cudagraph(fn, rep=rep, return_mode="median"))
    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none, return_mode="median"))


def kernel_times(fn, n: int = 20) -> dict:
    """Per kernel name: ``(device µs per call, launches per call)`` of ``fn``'s kernels (and copies) recorded by the
    PyTorch profiler over ``n`` calls, after one unrecorded call."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    totals = {}
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            us, count = totals.get(e.name, (0.0, 0))
            totals[e.name] = (us + e.device_time_total, count + 1)
    return {name: (us / n, count / n) for name, (us, count) in totals.items()}


def kernel_ms(fn, n: int = 20) -> float | None:
    """GPU kernel time per call of ``fn``: the sum of :func:`kernel_times`. Device time without launch gaps, the same
    measure for every provider, where a CUDA graph cannot capture the call (autograd backward). None if the profiler
    fails."""
    try:
        total_us = sum(us for us, _ in kernel_times(fn, n).values())
        return total_us / 1e3 if total_us > 0 else None
    except Exception as exc:  # noqa: BLE001 - a profiler problem must not lose the other numbers
        print(f"    (no profiler timing: {type(exc).__name__}: {str(exc)[:100]})")
        return None


def padded_bthd(B: int, H: int, T: int, lo: int, hi: int, d: int = 64, seed: int = 0):
    """Seeded fp16 ``q, k, v`` in HF's ``[B, T, H, d]`` layout on the GPU, int32 key counts uniform in ``[lo, hi]`` and
    the matching ``[B, T]`` bool padding mask (right padding): the probes' padded attention inputs."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, d, generator=g).to("cuda", torch.float16) for _ in range(3))
    lens = torch.randint(lo, hi + 1, (B,), generator=g).to("cuda", torch.int32)
    pad = torch.arange(T, device="cuda")[None] < lens[:, None].long()
    return q, k, v, lens, pad


def copy_bandwidth_gbs(n_bytes: int = 2**30) -> float:
    """Measured device-to-device copy bandwidth, counting bytes read plus bytes written."""
    src = torch.empty(n_bytes // 2, dtype=torch.float16, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    return 2 * n_bytes / (ms * 1e-3) / 1e9


def out_dir(path: str | None) -> Path:
    """``--out`` if given, else $OUT (the device machine's result folder), else ./out."""
    p = Path(path or os.environ.get("OUT") or "out")
    p.mkdir(parents=True, exist_ok=True)
    return p


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str))


def print_table(rows: list[dict], columns: list[str]) -> None:
    """A plain fixed-width table of ``rows`` (dicts) restricted to ``columns``."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def shape_pass_bars(rows: list[dict], shapes, highlight: str, title: str, path: Path) -> None:
    """:func:`provider_bars` with one panel per (shape, pass) of ``rows`` (dicts with ``shape``, ``pass``,
    ``provider`` and ``ms``), the shapes in the order of ``shapes``."""
    order = list(shapes)
    groups = sorted({(r["shape"], r["pass"]) for r in rows}, key=lambda t: (order.index(t[0]), t[1]))
    panels = [(f"{shape}, {pas}", [r for r in rows if r["shape"] == shape and r["pass"] == pas])
              for shape, pas in groups]
    provider_bars(panels, highlight, title, path)


def provider_setup(doc: str, argv, shapes, providers, always: str):
    """The command line the provider benchmarks share: ``--shapes``, ``--no-backward``, ``--providers`` (``always``
    runs whatever is picked) and ``--out``, checked, and a CUDA GPU required. Returns ``(args, shape names, providers
    picked or None for all, output folder)``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(shapes), help="comma-separated subset of: " + ", ".join(shapes))
    ap.add_argument("--no-backward", action="store_true", help="forward only")
    ap.add_argument("--providers", default=None,
                    help="comma-separated subset of: " + ", ".join(providers) + f" ({always} always runs)")
    ap.add_argument("--out", default=None, help="output folder (default $OUT or ./out)")
    args = ap.parse_args(argv)
    names = pick(ap, args.shapes, shapes, "shapes")
    only = None if args.providers is None else pick(ap, args.providers, providers, "providers")
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU")
    return args, names, only, out_dir(args.out)


# FlexAttention's kernel tiles tried by compiled_flex, first its own choice: on an H100 (torch 2.11, evals/probe_flex.py,
# NOTES.md, fortieth session) its choice ran bench_window.py's bidirectional ModernBERT window in 1.67 ms and 64 x 64
# tiles in 0.124 ms, while on bench_packed.py's gpt2-4k documents its choice was the faster (0.198 ms against 0.243)
FLEX_TILES = (None, {"BLOCK_M": 64, "BLOCK_N": 64})


FLEX_RECOMPILE_LIMIT = 64


def _raise_recompile_limit() -> None:
    """Let Dynamo compile FlexAttention once per shape, tile choice and pass of a whole benchmark run. Its default
    limit (8 per function) was reached within bench_packed.py's second shape, and the calls past it ran FlexAttention
    uncompiled: a 37.7 ms backward instead of about 0.5 (gpt2-4k, H100, 2026-12-07)."""
    import torch._dynamo.config as dynamo_config

    name = recompile_limit_name()
    setattr(dynamo_config, name, max(getattr(dynamo_config, name), FLEX_RECOMPILE_LIMIT))


def recompile_limit_name() -> str:
    """The name of Dynamo's limit of compiles per function: ``recompile_limit`` (``cache_size_limit`` on older torch,
    an alias on newer)."""
    import torch._dynamo.config as dynamo_config

    return "recompile_limit" if "recompile_limit" in dynamo_config._config else "cache_size_limit"


def compiled_flex(name: str, q, k, v, mask_mod, Q: int, K: int, **kwargs):
    """FlexAttention (torch.compile'd, static shapes) over a block mask of ``mask_mod`` for ``q [B, H, Q, D]``,
    ``k, v [B, Hkv, K, D]``, as a no-argument callable, compiled here, outside any timed region; None (and a line
    naming ``name`` and why) where this torch has no FlexAttention or it does not run. ``kwargs`` go to every call
    (``score_mod``, ``scale``, ``enable_gqa``, ``kernel_options``). Without ``kernel_options`` the forward is timed
    with each tile shape of :data:`FLEX_TILES` and the faster one is kept (a line names it), so that FlexAttention is
    not compared at a tile shape that handicaps it; a backward runs with the tiles the forward chose."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    try:
        # the benchmarks time backward passes with retain_graph=True, which a compiled backward that donates its
        # buffers refuses ("non-empty donated buffers": bench_packed.py's gpt2-4k row on an H100, 2026-12-06)
        import torch._functorch.config as functorch_config

        functorch_config.donated_buffer = False
    except (ImportError, AttributeError):
        pass
    _raise_recompile_limit()
    try:
        block_mask = create_block_mask(mask_mod, q.shape[0], None, Q, K, device=q.device)
        # static shapes: a second shape in one process would otherwise recompile with dynamic sizes
        compiled = torch.compile(flex_attention, dynamic=False)
    except Exception as exc:  # noqa: BLE001 - a backend that does not run is reported, not fatal
        print(f"  {name} unavailable: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        return None
    tiles = [None] if "kernel_options" in kwargs else list(FLEX_TILES)
    best, failures = None, []
    for opts in tiles:
        kw = kwargs if opts is None else {**kwargs, "kernel_options": opts}
        try:
            compiled(q, k, v, block_mask=block_mask, **kw)
            if len(tiles) == 1:
                best = (0.0, kw, opts)
                break
            with torch.no_grad():
                ms = median_ms(lambda kw=kw: compiled(q, k, v, block_mask=block_mask, **kw), warmup=5, rep=20)
        except Exception as exc:  # noqa: BLE001 - a tile shape that does not compile or run is left out
            label = opts or kwargs.get("kernel_options") or "its own tiles"
            failures.append(f"{label}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
            continue
        if best is None or ms < best[0]:
            best = (ms, kw, opts)
    if best is None:
        print(f"  {name} unavailable: " + "; ".join(failures))
        return None
    _, kw, opts = best
    if len(tiles) > 1:
        print(f"  {name}: FlexAttention's forward fastest with {opts or 'its own tile choice'}", flush=True)
    return lambda: compiled(q, k, v, block_mask=block_mask, **kw)


def padded_causal_flex(inp: dict, name: str = "flex", **kwargs):
    """:func:`compiled_flex` over a provider benchmark's inputs (``q``, ``k``, ``v``, ``Q``, ``K`` and the ``pad
    [B, K]`` of :func:`left_padded_causal`): the padding's kept keys with bottom-right causality. ``kwargs`` as
    there."""
    pad, offset = inp["pad"], inp["K"] - inp["Q"]

    def mask_mod(b, h, qi, kj):
        return pad[b, kj] & (kj <= qi + offset)

    return compiled_flex(name, inp["q"], inp["k"], inp["v"], mask_mod, inp["Q"], inp["K"], **kwargs)


def time_each(provs: dict, order, time_one, label: str) -> dict:
    """``{provider: ms}`` of ``time_one(fn)`` for each provider of ``order`` in ``provs``; one that fails is reported
    (with ``label``) and left out, so that it does not lose the others."""
    times = {}
    for p in order:
        if p not in provs:
            continue
        try:
            times[p] = time_one(provs[p])
        except Exception as exc:  # noqa: BLE001 - one provider failing must not lose the others
            print(f"  {p} {label}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    return times


def left_padded_causal(B: int, Q: int, K: int, lo: int, g, dtype, window: int = 0, device="cuda"):
    """The provider benchmarks' masks: key lengths uniform in ``[lo, K]`` drawn from ``g``, left padding, bottom-right
    causality (and a causal ``window`` if nonzero). Returns ``pad [B, K]`` bool, ``mask4d [B, 1, Q, K]`` bool (True
    = attend) and ``additive``, the same as HF's eager mask in ``dtype`` (0 / ``finfo(dtype).min``)."""
    lengths = torch.randint(lo, K + 1, (B,), generator=g)
    pad = (torch.arange(K)[None] >= (K - lengths)[:, None]).to(device)
    i = torch.arange(Q, device=device)[:, None] + (K - Q)
    j = torch.arange(K, device=device)[None]
    keep = j <= i
    if window:
        keep = keep & (j > i - window)
    mask4d = keep[None, None] & pad[:, None, None, :]
    additive = torch.zeros(mask4d.shape, dtype=dtype, device=device).masked_fill(~mask4d, torch.finfo(dtype).min)
    return pad, mask4d, additive


def rows_with_keys(inp: dict):
    """The query rows ``[B, H, Q]`` of a provider benchmark's inputs (``mask4d`` ``[B, 1, Q, K]``, ``H``) with a key
    to attend, where the providers' outputs are compared (fully masked rows: zeros in some, NaN in SDPA's)."""
    return inp["mask4d"].any(-1).expand(-1, inp["H"], -1)


def max_error_on_rows(out, ref, rows) -> float:
    """Largest ``|out - ref|`` over ``rows``, a bool mask of ``out.shape[:-1]`` (see :func:`rows_with_keys`)."""
    return float((out.float() - ref.float()).abs()[rows].max())


def compared_shape_rows(name: str, provs: dict, order, reference: str, compared, rows, passes, time_one,
                        effect: str, baseline: str = "eager") -> list[dict]:
    """One shape of a provider benchmark: the largest error of each provider of ``compared`` against
    ``reference``'s output on ``rows`` (printed after ``effect``, a sentence on what the feature does to that
    output), then ``time_one(fn, pass)`` of each provider of ``order`` in ``provs`` for each of ``passes``. Returns
    the rows ``shape, pass, provider, ms, vs_eager`` (eager's time over the provider's, where eager ran; another
    ``baseline`` provider gives ``vs_<baseline>``, dashes as underscores) and ``max_err`` (None for the providers not
    compared), also printed as a table."""
    with torch.no_grad():
        ref = provs[reference]()
        errors = {p: max_error_on_rows(fn(), ref, rows) for p, fn in provs.items() if p in compared}
    print(f"  {effect}; max |error| against {reference}: " + ", ".join(f"{p} {e:.3g}" for p, e in errors.items()),
          flush=True)
    out = []
    versus = "vs_" + baseline.replace("-", "_")
    for pas in passes:
        times = time_each(provs, order, lambda fn, pas=pas: time_one(fn, pas), pas)
        base = times.get(baseline)
        for p, ms in times.items():
            out.append(dict(shape=name, **{"pass": pas}, provider=p, ms=ms, **{versus: (base / ms) if base else None},
                            max_err=errors.get(p)))
    print_table(out, ["shape", "pass", "provider", "ms", versus, "max_err"])
    return out


def provider_bars(panels: list[tuple[str, list[dict]]], highlight: str, title: str, path: Path) -> None:
    """One bar panel per ``(panel title, rows)``: each row's ``ms`` by its ``provider``, ``highlight`` in green;
    written to ``path`` (nothing but a note without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (no matplotlib: no plot)")
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (name, sel) in zip(axes[0], panels):
        ax.bar([r["provider"] for r in sel], [r["ms"] for r in sel],
               color=["tab:green" if r["provider"] == highlight else "tab:gray" for r in sel])
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("ms (median)")
        ax.tick_params(axis="x", rotation=45, labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def pick(ap, value: str, choices, what: str) -> list[str]:
    """The comma-separated names of ``value``, each one of ``choices``; else ``ap.error`` (an argparse parser)."""
    names = [n for n in value.split(",") if n]
    if not names:
        ap.error(f"--{what} is empty")
    for n in names:
        if n not in choices:
            ap.error(f"unknown {what.rstrip('s')} {n!r}; choose from {', '.join(choices)}")
    return names
