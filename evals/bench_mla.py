"""Multi-head latent attention (DeepSeek-V2 / V3) on the GPU: values narrower than the queries and keys.

A DeepSeek layer hands the attention interface queries and keys of ``qk_nope_head_dim + qk_rope_head_dim`` (192) and
values of ``v_head_dim`` (128), one head of each per query head. A patched model hands them to the fused kernels as
they are: they read 128 columns of values and write 128 of output (``ops.attention(..., _any_value_dim=True)``). This
script prices that against the alternatives on the same fp16 inputs (left-padded batches, causal):

* ``fused``: what a patched model runs (Triton's kernels: the Hopper forward takes one head dim);
* ``fused-padded``: the forty-first session's path: values padded with zeros to 192, the public
  ``attention(q, k, v, pad, causal=True)``, the output's first 128 columns;
* ``fused-same-width``: ``attention`` on values that are 192 wide already: the padded call without its copies (another
  result: its last 64 output columns are not in the others');
* ``eager``: transformers' DeepSeek-V2 ``eager_attention_forward`` with HF's 4D additive mask: an unpatched model's
  default;
* ``sdpa-4d``: SDPA with the 4D bool mask (SDPA takes a narrower value natively), as transformers' sdpa runs it;
* ``flex``: FlexAttention (torch.compile'd) with a block mask of padding and causality.

Forward (and backward for the prefill shape) as medians: forwards replayed in a CUDA graph, backwards as plain calls.
``vs eager`` is eager's time over the provider's. The outputs are checked against ``fused``'s on the rows with a key
to attend (``fused-same-width`` on its first 128 columns' inputs: not compared).

    python evals/bench_mla.py [--shapes dsv2-lite-prefill,dsv2-lite-decode] [--no-backward] [--out DIR]

Writes ``bench_mla.json`` and ``bench_mla.png`` under ``--out`` / $OUT.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchutil  # noqa: E402
from bench_attention import time_provider  # noqa: E402

# name -> (B, H, Q, K, query / key head dim, value head dim, shortest key length); DeepSeek-V2-Lite: 16 heads
SHAPES = {
    "dsv2-lite-prefill": (8, 16, 1024, 1024, 192, 128, 512),
    "dsv2-lite-decode": (32, 16, 1, 2048, 192, 128, 1024),
}
PROVIDERS = ("fused", "fused-padded", "fused-same-width", "eager", "sdpa-4d", "flex")
COMPARED = ("fused", "fused-padded", "eager", "sdpa-4d", "flex")


def make_inputs(B, H, Q, K, Dqk, Dv, lo, seed=0):
    g = torch.Generator().manual_seed(seed)
    # HF's layout ([B, T, H, D] memory seen as [B, H, T, D])
    q = torch.randn(B, Q, H, Dqk, generator=g).to("cuda", torch.float16).transpose(1, 2)
    k = torch.randn(B, K, H, Dqk, generator=g).to("cuda", torch.float16).transpose(1, 2)
    v = torch.randn(B, K, H, Dv, generator=g).to("cuda", torch.float16).transpose(1, 2)
    pad, mask4d, additive = benchutil.left_padded_causal(B, Q, K, lo, g, torch.float16)
    wide_v = torch.nn.functional.pad(v, (0, Dqk - Dv))
    return dict(q=q, k=k, v=v, wide_v=wide_v, pad=pad, mask4d=mask4d, additive=additive, B=B, H=H, Q=Q, K=K,
                Dqk=Dqk, Dv=Dv)


def providers(inp, only=None):
    import hf_masked_softmax
    from hf_masked_softmax import ops
    from torch.nn.functional import scaled_dot_product_attention as sdpa
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import eager_attention_forward

    q, k, v, pad, mask4d, additive = (inp[n] for n in ("q", "k", "v", "pad", "mask4d", "additive"))
    scale = inp["Dqk"] ** -0.5
    module = types.SimpleNamespace(num_key_value_groups=1, training=False)

    def fused_padded():
        vv = torch.nn.functional.pad(v, (0, inp["Dqk"] - inp["Dv"]))
        return hf_masked_softmax.attention(q, k, vv, pad, causal=True, scale=scale)[..., :inp["Dv"]]

    out = {
        "fused": lambda: ops.attention(q, k, v, pad, causal=True, scale=scale, _any_value_dim=True),
        "fused-padded": fused_padded,
        "fused-same-width": lambda: hf_masked_softmax.attention(q, k, inp["wide_v"], pad, causal=True, scale=scale),
        # (eager returns [B, Q, H, Dv]: transposed back, a view, to compare)
        "eager": lambda: eager_attention_forward(module, q, k, v, additive, scaling=scale)[0].transpose(1, 2),
        "sdpa-4d": lambda: sdpa(q, k, v, attn_mask=mask4d, scale=scale),
    }
    if only is None or "flex" in only:
        flex = benchutil.padded_causal_flex(inp, scale=scale)
        if flex is not None:
            out["flex"] = flex
    return {p: fn for p, fn in out.items() if only is None or p in only or p == "fused"}


def plot(rows, path: Path) -> None:
    title = f"multi-head latent attention (values 128, queries / keys 192), fp16, {benchutil.environment()['gpu']}"
    benchutil.shape_pass_bars(rows, SHAPES, "fused", title, path)


def main(argv=None):
    args, names, only, out = benchutil.provider_setup(__doc__, argv, SHAPES, PROVIDERS, "fused")
    rows = []
    for name in names:
        B, H, Q, K, Dqk, Dv, lo = SHAPES[name]
        inp = make_inputs(B, H, Q, K, Dqk, Dv, lo)
        print(f"{name}: B{B} H{H} Q{Q} K{K} q/k {Dqk} v {Dv}, key lengths in [{lo}, {K}]", flush=True)
        provs = providers(inp, only)
        passes = ["forward"] + ([] if args.no_backward or Q == 1 else ["backward"])
        rows += benchutil.compared_shape_rows(
            name, provs, PROVIDERS, "fused", COMPARED, benchutil.rows_with_keys(inp), passes,
            # (the gradients of v and of the wide values: each provider reads one of them)
            lambda fn, pas, inp=inp: time_provider(fn, inp, pas == "backward", graph=pas == "forward",
                                                   extra=("wide_v",)),
            f"values {Dv} wide against queries and keys of {Dqk}")
        del inp, provs
        torch.cuda.empty_cache()
    benchutil.write_json(out / "bench_mla.json",
                         dict(environment=benchutil.environment(), shapes={n: SHAPES[n] for n in names}, rows=rows))
    print(f"wrote {out / 'bench_mla.json'}")
    plot(rows, out / "bench_mla.png")


if __name__ == "__main__":
    main()
