"""Sliding-window attention on the GPU: the fused kernel's own window against the ways to get the same result
without it.

Providers, each on the same fp16 inputs (left-padded batches, GQA as Mistral's):

* ``fused-window``: ``attention(q, k, v, pad, causal=True, window=W)``, the 2D padding mask and the window applied in
  the kernel, key blocks left of each query block's windows skipped (what a patched Mistral runs since 2026-12-05);
* ``fused-4d``: the same kernel given HF's 4D bool mask with the window in it (what a patched Mistral ran before:
  the mask tile loaded per key block; since the thirtieth session only the key blocks inside the mask's key bounds,
  per 16 query rows, are visited, see ``masks.mask_bounds``);
* ``sdpa-4d``: ``scaled_dot_product_attention`` with that 4D bool mask (HF's sdpa path for a windowed layer);
* ``flex-window``: FlexAttention (torch.compile'd) with a block mask of padding, causality and window;
* ``fused-causal``: the kernel without the window, for scale (full causal attention over the same keys; for the
  bidirectional shape, full attention).

``modernbert-local`` is a bidirectional window (ModernBERT-base's local layers: query ``i`` sees keys
``|j - i| < 65``, ``attention(q, k, v, pad, window=65)`` without causality), the others causal.

Forward (and backward for the prefill shapes) as medians: forwards replayed in a CUDA graph, backwards as plain calls; ``vs sdpa-4d`` is sdpa-4d's time over
the provider's. The output of every provider is checked against ``fused-window``'s on the rows with a key to attend.

    python evals/bench_window.py [--shapes mistral-prefill,small-window,decode,modernbert-local] [--no-backward]
                                 [--out DIR]

Writes ``bench_window.json`` and ``bench_window.png`` (bars per shape and provider) under ``--out`` / $OUT.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchutil  # noqa: E402
from bench_attention import time_provider  # noqa: E402

# name -> (B, H, Hkv, Q, K, D, window, shortest key length)
SHAPES = {
    "mistral-prefill": (2, 32, 8, 8192, 8192, 128, 4096, 4096),
    "small-window": (4, 12, 12, 4096, 4096, 64, 512, 2048),
    "decode": (16, 32, 8, 1, 8192, 128, 4096, 4096),
    "modernbert-local": (8, 12, 12, 2048, 2048, 64, 65, 1024),
}
BIDIRECTIONAL = ("modernbert-local",)  # windows without causality
PROVIDERS = ("fused-window", "fused-4d", "sdpa-4d", "flex-window", "fused-causal")


def make_inputs(B, H, Hkv, Q, K, D, window, lo, seed=0, causal=True):
    g = torch.Generator().manual_seed(seed)
    # HF's layout ([B, T, H, D] memory seen as [B, H, T, D]) and left padding, key lengths uniform in [lo, K]
    q = torch.randn(B, Q, H, D, generator=g).to("cuda", torch.float16).transpose(1, 2)
    k, v = (torch.randn(B, K, Hkv, D, generator=g).to("cuda", torch.float16).transpose(1, 2) for _ in range(2))
    lengths = torch.randint(lo, K + 1, (B,), generator=g)
    pad = (torch.arange(K)[None] >= (K - lengths)[:, None]).to("cuda")
    i = torch.arange(Q, device="cuda")[:, None] + (K - Q)
    j = torch.arange(K, device="cuda")[None]
    keep = ((j <= i) & (j > i - window)) if causal else ((j - i).abs() < window)
    mask4d = keep[None, None] & pad[:, None, None, :]
    return dict(q=q, k=k, v=v, pad=pad, mask4d=mask4d, window=window, causal=causal, B=B, H=H, Hkv=Hkv, Q=Q, K=K,
                D=D)


def providers(inp, only=None):
    import hf_masked_softmax
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    q, k, v, pad, mask4d, window, causal = (inp[n] for n in ("q", "k", "v", "pad", "mask4d", "window", "causal"))
    gqa = inp["H"] != inp["Hkv"]
    out = {
        "fused-window": lambda: hf_masked_softmax.attention(q, k, v, pad, causal=causal, window=window),
        "fused-4d": lambda: hf_masked_softmax.attention(q, k, v, mask4d),
        "sdpa-4d": lambda: sdpa(q, k, v, attn_mask=mask4d, enable_gqa=gqa),
        "fused-causal": lambda: hf_masked_softmax.attention(q, k, v, pad, causal=causal),
    }
    if only is None or "flex-window" in only:
        flex = flex_provider(inp)
        if flex is not None:
            out["flex-window"] = flex
    return {p: fn for p, fn in out.items() if only is None or p in only or p == "fused-window"}


def flex_mask_mod(inp):
    """FlexAttention's ``mask_mod`` for :func:`make_inputs`' padding and window (causal or not)."""
    pad, window = inp["pad"], inp["window"]
    offset = inp["K"] - inp["Q"]

    def mask_mod(b, h, qi, kj):
        if not inp["causal"]:
            return pad[b, kj] & ((kj - qi - offset).abs() < window)
        return pad[b, kj] & (kj <= qi + offset) & (kj > qi + offset - window)

    return mask_mod


def flex_provider(inp):
    q, k, v = inp["q"], inp["k"], inp["v"]
    return benchutil.compiled_flex("flex-window", q, k, v, flex_mask_mod(inp), inp["Q"], inp["K"],
                                   enable_gqa=inp["H"] != inp["Hkv"])


def time_ms(fn, inp, backward: bool) -> float:
    # forwards replayed in a CUDA graph; backwards as plain calls (autograd's backward is not captured in one), as
    # bench_attention.py times them
    return time_provider(fn, inp, backward, graph=not backward)


def plot(rows, path: Path) -> None:
    title = f"sliding-window attention, fp16, {benchutil.environment()['gpu']}"
    benchutil.shape_pass_bars(rows, SHAPES, "fused-window", title, path)


def main(argv=None):
    args, names, only, out = benchutil.provider_setup(__doc__, argv, SHAPES, PROVIDERS, "fused-window")
    rows = []
    for name in names:
        B, H, Hkv, Q, K, D, window, lo = SHAPES[name]
        inp = make_inputs(B, H, Hkv, Q, K, D, window, lo, causal=name not in BIDIRECTIONAL)
        print(f"{name}: B{B} H{H}/{Hkv} Q{Q} K{K} D{D} {'causal' if inp['causal'] else 'bidirectional'} window "
              f"{window}, key lengths in [{lo}, {K}]", flush=True)
        provs = providers(inp, only)
        with torch.no_grad():
            ref = provs["fused-window"]()
            rows_kept = benchutil.rows_with_keys(inp)
            errors = {p: benchutil.max_error_on_rows(fn(), ref, rows_kept) for p, fn in provs.items()
                      if p != "fused-causal"}
        passes = ["forward"] + ([] if args.no_backward or Q == 1 else ["backward"])
        for pas in passes:
            times = benchutil.time_each(provs, PROVIDERS, lambda fn, inp=inp: time_ms(fn, inp, pas == "backward"), pas)
            base = times.get("sdpa-4d")
            for p, ms in times.items():
                rows.append(dict(shape=name, **{"pass": pas}, provider=p, ms=ms,
                                 vs_sdpa_4d=(base / ms) if base else None, max_err=errors.get(p)))
        benchutil.print_table([r for r in rows if r["shape"] == name],
                              ["shape", "pass", "provider", "ms", "vs_sdpa_4d", "max_err"])
        del inp, provs, ref
        torch.cuda.empty_cache()
    benchutil.write_json(out / "bench_window.json",
                         dict(environment=benchutil.environment(), shapes={n: SHAPES[n] for n in names}, rows=rows))
    print(f"wrote {out / 'bench_window.json'}")
    plot(rows, out / "bench_window.png")


if __name__ == "__main__":
    main()
