"""Soft-capped attention (Gemma 2) on the GPU: the fused kernel's cap against the ways to get the same result without
it.

Providers, each on the same fp16 inputs (left-padded batches, Gemma 2's grouped-query heads of head dim 256, scale
``query_pre_attn_scalar ** -0.5`` = 1/16, cap 50):

* ``fused-softcap``: ``attention(q, k, v, pad, causal=True, softcap=50)``, what a patched Gemma 2 runs;
* ``eager``: transformers' Gemma 2 ``eager_attention_forward`` with HF's 4D additive mask (repeat the key/value
  heads, ``QK^T * scale``, ``/ cap``, ``tanh``, ``* cap``, add the mask, fp32 softmax, ``P V``): what an unpatched
  Gemma 2 runs by default (transformers' sdpa ignores the cap in 5.4 and 5.17 and refuses Gemma 2 in 5.25);
* ``flex-softcap``: FlexAttention (torch.compile'd) with the cap as its ``score_mod`` and a block mask of padding and
  causality;
* ``fused-nocap`` and ``sdpa-nocap`` (SDPA with the 4D bool mask): the same attention without the cap, not the same
  result, for the cap's cost.

Forward (and backward for the prefill shape) as medians: forwards replayed in a CUDA graph, backwards as plain calls.
``vs eager`` is eager's time over the provider's. The outputs of the soft-capped providers are checked against
``fused-softcap``'s on the rows with a key to attend.

    python evals/bench_softcap.py [--shapes gemma2-prefill,gemma2-decode] [--no-backward] [--out DIR]

Writes ``bench_softcap.json`` and ``bench_softcap.png`` under ``--out`` / $OUT.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchutil  # noqa: E402
from bench_attention import time_provider  # noqa: E402

# name -> (B, H, Hkv, Q, K, D, shortest key length); Gemma-2-2B's attention: 8 query / 4 key-value heads of 256
SHAPES = {
    "gemma2-prefill": (4, 8, 4, 2048, 2048, 256, 1024),
    "gemma2-decode": (16, 8, 4, 1, 4096, 256, 2048),
}
PROVIDERS = ("fused-softcap", "eager", "flex-softcap", "fused-nocap", "sdpa-nocap")
CAPPED = ("fused-softcap", "eager", "flex-softcap")
CAP = 50.0
SCALE = 256 ** -0.5


def make_inputs(B, H, Hkv, Q, K, D, lo, seed=0):
    g = torch.Generator().manual_seed(seed)
    # HF's layout ([B, T, H, D] memory seen as [B, H, T, D]); scores of a few units, so that the cap bends them
    q = (torch.randn(B, Q, H, D, generator=g) * 4).to("cuda", torch.float16).transpose(1, 2)
    k, v = (torch.randn(B, K, Hkv, D, generator=g).to("cuda", torch.float16).transpose(1, 2) for _ in range(2))
    pad, mask4d, additive = benchutil.left_padded_causal(B, Q, K, lo, g, torch.float16)
    return dict(q=q, k=k, v=v, pad=pad, mask4d=mask4d, additive=additive, B=B, H=H, Hkv=Hkv, Q=Q, K=K, D=D)


def providers(inp, only=None):
    import hf_masked_softmax
    from torch.nn.functional import scaled_dot_product_attention as sdpa
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    q, k, v, pad, mask4d, additive = (inp[n] for n in ("q", "k", "v", "pad", "mask4d", "additive"))
    module = types.SimpleNamespace(num_key_value_groups=inp["H"] // inp["Hkv"], training=False, head_dim=inp["D"])
    out = {
        "fused-softcap": lambda: hf_masked_softmax.attention(q, k, v, pad, causal=True, scale=SCALE, softcap=CAP),
        # (eager returns [B, Q, H, D]: transposed back, a view, to compare)
        "eager": lambda: eager_attention_forward(module, q, k, v, additive, scaling=SCALE,
                                                 softcap=CAP)[0].transpose(1, 2),
        "fused-nocap": lambda: hf_masked_softmax.attention(q, k, v, pad, causal=True, scale=SCALE),
        "sdpa-nocap": lambda: sdpa(q, k, v, attn_mask=mask4d, scale=SCALE, enable_gqa=inp["H"] != inp["Hkv"]),
    }
    if only is None or "flex-softcap" in only:
        flex = flex_provider(inp)
        if flex is not None:
            out["flex-softcap"] = flex
    return {p: fn for p, fn in out.items() if only is None or p in only or p == "fused-softcap"}


def flex_provider(inp):
    def score_mod(score, b, h, qi, kj):
        return torch.tanh(score / CAP) * CAP

    return benchutil.padded_causal_flex(inp, "flex-softcap", score_mod=score_mod, scale=SCALE,
                                        enable_gqa=inp["H"] != inp["Hkv"])


def cap_effect(inp) -> float:
    """Largest change the cap makes to the fused output (the cap must bend these scores for the check to mean
    anything)."""
    import hf_masked_softmax

    q, k, v, pad = inp["q"], inp["k"], inp["v"], inp["pad"]
    with torch.no_grad():
        capped = hf_masked_softmax.attention(q, k, v, pad, causal=True, scale=SCALE, softcap=CAP)
        plain = hf_masked_softmax.attention(q, k, v, pad, causal=True, scale=SCALE)
    return benchutil.max_error_on_rows(capped, plain, benchutil.rows_with_keys(inp))


def plot(rows, path: Path) -> None:
    title = f"soft-capped attention (Gemma 2), fp16, {benchutil.environment()['gpu']}"
    benchutil.shape_pass_bars(rows, SHAPES, "fused-softcap", title, path)


def main(argv=None):
    args, names, only, out = benchutil.provider_setup(__doc__, argv, SHAPES, PROVIDERS, "fused-softcap")
    rows = []
    for name in names:
        B, H, Hkv, Q, K, D, lo = SHAPES[name]
        inp = make_inputs(B, H, Hkv, Q, K, D, lo)
        print(f"{name}: B{B} H{H}/{Hkv} Q{Q} K{K} D{D} cap {CAP}, key lengths in [{lo}, {K}]", flush=True)
        provs = providers(inp, only)
        passes = ["forward"] + ([] if args.no_backward or Q == 1 else ["backward"])
        rows += benchutil.compared_shape_rows(
            name, provs, PROVIDERS, "fused-softcap", CAPPED, benchutil.rows_with_keys(inp), passes,
            lambda fn, pas, inp=inp: time_provider(fn, inp, pas == "backward", graph=pas == "forward"),
            f"the cap changes the output by up to {cap_effect(inp):.3g}")
        del inp, provs
        torch.cuda.empty_cache()
    benchutil.write_json(out / "bench_softcap.json",
                         dict(environment=benchutil.environment(), shapes={n: SHAPES[n] for n in names}, cap=CAP,
                              scale=SCALE, rows=rows))
    print(f"wrote {out / 'bench_softcap.json'}")
    plot(rows, out / "bench_softcap.png")


if __name__ == "__main__":
    main()
