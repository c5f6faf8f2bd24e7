"""Attention with sinks (GPT-OSS) on the GPU: the fused kernel's sinks against the ways to get the same result
without them.

Providers, each on the same bf16 inputs (left-padded batches; GPT-OSS-20B's attention: 64 query / 8 key-value heads
of head dim 64, one sink logit per query head, a 128-token window on every other layer):

* ``fused-sinks``: ``attention(q, k, v, pad, causal=True, sinks=s)`` (and ``window=128`` on the windowed shape),
  what a patched GPT-OSS runs (on an H100 / H200 its inference forward runs the Hopper kernel where that applies);
* ``fused-sinks-triton``: the same call with ``_hopper.SINKS_OK`` off, so always the Triton kernel (the Hopper
  kernel's gain with sinks);
* ``eager``: transformers' GPT-OSS ``eager_attention_forward`` with HF's 4D additive mask (repeat the key/value
  heads, ``QK^T * scale``, add the mask, concatenate the sink column, subtract the row max, softmax in bf16, drop
  the sink column, ``P V``): what an unpatched GPT-OSS runs (transformers has no sdpa path for it);
* ``flex-sinks``: FlexAttention (torch.compile'd, with the correction) returning its log-sum-exp, the output then
  scaled by ``sigmoid(lse - sink)``, the share of each row the keys keep next to the sink;
* ``fused-nosinks`` and ``sdpa-nosinks`` (SDPA with the 4D bool mask): the same attention without the sinks, not the
  same result, for the sinks' cost.

Forward (and backward for the prefill shapes: the gradients of q, k, v and the sinks) as medians: forwards replayed
in a CUDA graph, backwards as plain calls. ``vs eager`` is eager's time over the provider's. The outputs of the providers with sinks are checked against
``fused-sinks``'s on the rows with a key to attend.

    python evals/bench_sinks.py [--shapes gptoss-prefill,gptoss-window,gptoss-decode] [--no-backward] [--out DIR]

Writes ``bench_sinks.json`` and ``bench_sinks.png`` under ``--out`` / $OUT.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchutil  # noqa: E402
from bench_attention import time_provider  # noqa: E402

# name -> (B, H, Hkv, Q, K, D, shortest key length, window or 0); GPT-OSS-20B: 64 query / 8 key-value heads of 64
SHAPES = {
    "gptoss-prefill": (4, 64, 8, 2048, 2048, 64, 1024, 0),
    "gptoss-window": (4, 64, 8, 2048, 2048, 64, 1024, 128),
    "gptoss-decode": (16, 64, 8, 1, 4096, 64, 2048, 0),
}
PROVIDERS = ("fused-sinks", "fused-sinks-triton", "eager", "flex-sinks", "fused-nosinks", "sdpa-nosinks")
WITH_SINKS = ("fused-sinks", "fused-sinks-triton", "eager", "flex-sinks")
SCALE = 64 ** -0.5


def make_inputs(B, H, Hkv, Q, K, D, lo, window, seed=0):
    g = torch.Generator().manual_seed(seed)
    # HF's layout ([B, T, H, D] memory seen as [B, H, T, D]); scores of a few units and sinks of the same size, so
    # that each sink takes a visible share of its rows
    q = (torch.randn(B, Q, H, D, generator=g) * 2).to("cuda", torch.bfloat16).transpose(1, 2)
    k, v = (torch.randn(B, K, Hkv, D, generator=g).to("cuda", torch.bfloat16).transpose(1, 2) for _ in range(2))
    sinks = (torch.randn(H, generator=g) + 1.0).to("cuda", torch.bfloat16)
    pad, mask4d, additive = benchutil.left_padded_causal(B, Q, K, lo, g, torch.bfloat16, window)
    return dict(q=q, k=k, v=v, sinks=sinks, pad=pad, mask4d=mask4d, additive=additive, B=B, H=H, Hkv=Hkv, Q=Q, K=K,
                D=D, window=window or None)


def providers(inp, only=None):
    import hf_masked_softmax
    from torch.nn.functional import scaled_dot_product_attention as sdpa
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

    q, k, v, sinks, pad, mask4d, additive = (inp[n] for n in ("q", "k", "v", "sinks", "pad", "mask4d", "additive"))
    module = types.SimpleNamespace(num_key_value_groups=inp["H"] // inp["Hkv"], training=False, sinks=sinks)
    window = inp["window"]
    out = {
        "fused-sinks": lambda: hf_masked_softmax.attention(q, k, v, pad, causal=True, scale=SCALE, window=window,
                                                           sinks=sinks),
        # (eager returns [B, Q, H, D]: transposed back, a view, to compare)
        "fused-sinks-triton": lambda: triton_only(
            lambda: hf_masked_softmax.attention(q, k, v, pad, causal=True, scale=SCALE, window=window, sinks=sinks)),
        "eager": lambda: eager_attention_forward(module, q, k, v, additive, scaling=SCALE)[0].transpose(1, 2),
        "fused-nosinks": lambda: hf_masked_softmax.attention(q, k, v, pad, causal=True, scale=SCALE, window=window),
        "sdpa-nosinks": lambda: sdpa(q, k, v, attn_mask=mask4d, scale=SCALE, enable_gqa=inp["H"] != inp["Hkv"]),
    }
    if only is None or "flex-sinks" in only:
        flex = flex_provider(inp)
        if flex is not None:
            out["flex-sinks"] = flex
    return {p: fn for p, fn in out.items() if only is None or p in only or p == "fused-sinks"}


def triton_only(fn):
    """``fn()`` with the Hopper kernel's sinks turned off (``_hopper.SINKS_OK``, part of every launch plan's key)."""
    from hf_masked_softmax import _hopper

    before = _hopper.SINKS_OK
    _hopper.SINKS_OK = False
    try:
        return fn()
    finally:
        _hopper.SINKS_OK = before


def flex_provider(inp):
    """FlexAttention with the sinks applied afterwards from its log-sum-exp: ``out * sigmoid(lse - sink)`` (the keys'
    share of a row next to the sink), compiled as one function; None (and why) where it does not run."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    q, k, v, sinks, pad = inp["q"], inp["k"], inp["v"], inp["sinks"], inp["pad"]
    offset, window = inp["K"] - inp["Q"], inp["window"]

    def mask_mod(b, h, qi, kj):
        keep = pad[b, kj] & (kj <= qi + offset)
        return keep & (kj > qi + offset - window) if window else keep

    def with_sinks(q, k, v, block_mask):
        o, lse = flex_attention(q, k, v, block_mask=block_mask, scale=SCALE, enable_gqa=inp["H"] != inp["Hkv"],
                                return_lse=True)
        share = torch.sigmoid(lse - sinks.float()[None, :, None])  # -inf lse (nothing kept): 0
        return o * share[..., None].to(o.dtype)

    try:
        block_mask = create_block_mask(mask_mod, q.shape[0], None, inp["Q"], inp["K"], device=q.device)
        compiled = torch.compile(with_sinks)
        compiled(q, k, v, block_mask)
    except Exception as exc:  # noqa: BLE001 - a backend that does not run is reported, not fatal
        print(f"  flex-sinks unavailable: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        return None
    return lambda: compiled(q, k, v, block_mask)


def sink_effect(inp) -> float:
    """Largest change the sinks make to the fused output (they must matter for the check to mean anything)."""
    import hf_masked_softmax

    q, k, v, pad, window = inp["q"], inp["k"], inp["v"], inp["pad"], inp["window"]
    with torch.no_grad():
        sunk = hf_masked_softmax.attention(q, k, v, pad, causal=True, scale=SCALE, window=window, sinks=inp["sinks"])
        plain = hf_masked_softmax.attention(q, k, v, pad, causal=True, scale=SCALE, window=window)
    return benchutil.max_error_on_rows(sunk, plain, benchutil.rows_with_keys(inp))


def time_one(fn, inp, backward: bool) -> float:
    """Median ms: the forward replayed in a CUDA graph, or the gradients of q, k, v and the sinks (a parameter in
    GPT-OSS: its gradient is part of a training step's attention backward; providers without sinks leave it unused)
    for a fixed forward, as plain calls (``bench_attention.time_provider``)."""
    return time_provider(fn, inp, backward, graph=not backward, extra=("sinks",) if backward else ())


def plot(rows, path: Path) -> None:
    title = f"attention with sinks (GPT-OSS), bf16, {benchutil.environment()['gpu']}"
    benchutil.shape_pass_bars(rows, SHAPES, "fused-sinks", title, path)


def main(argv=None):
    args, names, only, out = benchutil.provider_setup(__doc__, argv, SHAPES, PROVIDERS, "fused-sinks")
    rows = []
    for name in names:
        B, H, Hkv, Q, K, D, lo, window = SHAPES[name]
        inp = make_inputs(B, H, Hkv, Q, K, D, lo, window)
        print(f"{name}: B{B} H{H}/{Hkv} Q{Q} K{K} D{D} window {window or 'none'}, key lengths in [{lo}, {K}]",
              flush=True)
        provs = providers(inp, only)
        passes = ["forward"] + ([] if args.no_backward or Q == 1 else ["backward"])
        rows += benchutil.compared_shape_rows(
            name, provs, PROVIDERS, "fused-sinks", WITH_SINKS, benchutil.rows_with_keys(inp), passes,
            lambda fn, pas, inp=inp: time_one(fn, inp, pas == "backward"),
            f"the sinks change the output by up to {sink_effect(inp):.3g}")
        del inp, provs
        torch.cuda.empty_cache()
    benchutil.write_json(out / "bench_sinks.json",
                         dict(environment=benchutil.environment(), shapes={n: SHAPES[n] for n in names}, scale=SCALE,
                              rows=rows))
    print(f"wrote {out / 'bench_sinks.json'}")
    plot(rows, out / "bench_sinks.png")


if __name__ == "__main__":
    main()
