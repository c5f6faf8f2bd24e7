"""Head dims that are no power of two on the GPU: the forward kernel's two tiles against one padded tile.

Phi-2 has heads of 80, Phi-3-mini of 96, and multi-head latent attention (DeepSeek-V2 / V3) queries and keys of 192
with values of 128. The forward kernel runs such a head dim as two power-of-two tiles (80 as 64 + 16, 96 as 64 + 32,
192 as 128 + 64: ``attention._split_d``) where it ran one tile padded to the next power of two (128, 128, 256), a
quarter to a third of its products on zero columns. This script times both on the same fp16 inputs (left-padded
batches, causal, HF's ``[B, T, H, D]`` layout):

* ``fused``: the library's default (two tiles);
* ``fused-one-tile``: the same call with ``attention.SPLIT_HEAD_DIM`` off (one padded tile, the path before);
* ``fused-keys-split``: the queries' and keys' head dim in two tiles, the values' in one padded tile;
* ``sdpa-4d``: SDPA with the 4D bool mask, as transformers' sdpa runs a padded batch;
* ``sdpa-nomask``: SDPA's default dispatch on the whole rectangle, causal, no padding (another result: not compared);
* ``flex``: FlexAttention (torch.compile'd) with a block mask of padding and causality.

The forward only, as medians of CUDA-graph replays: the backward kernels keep one padded tile (the split is the
forward's). ``vs_fused_one_tile`` is the one tile's time over the provider's. The outputs are checked against
``fused``'s on the rows with a key to attend.

    python evals/bench_head_dims.py [--shapes phi3-prefill,...] [--providers fused-one-tile,sdpa-4d] [--out DIR]

Writes ``bench_head_dims.json`` and ``bench_head_dims.png`` under ``--out`` / $OUT.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchutil  # noqa: E402
from bench_attention import time_provider  # noqa: E402

# name -> (B, H, Q, K, query / key head dim, value head dim, shortest key length)
SHAPES = {
    "phi2-prefill": (8, 32, 1024, 1024, 80, 80, 512),
    "phi3-prefill": (8, 32, 1024, 1024, 96, 96, 512),
    "phi3-decode": (32, 32, 1, 2048, 96, 96, 1024),
    "mla-prefill": (8, 16, 1024, 1024, 192, 128, 512),
    "mla-decode": (32, 16, 1, 2048, 192, 128, 1024),
}
PROVIDERS = ("fused", "fused-one-tile", "fused-keys-split", "sdpa-4d", "sdpa-nomask", "flex")
COMPARED = ("fused", "fused-one-tile", "fused-keys-split", "sdpa-4d", "flex")


def make_inputs(B, H, Q, K, Dqk, Dv, lo, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Q, H, Dqk, generator=g).to("cuda", torch.float16).transpose(1, 2)
    k = torch.randn(B, K, H, Dqk, generator=g).to("cuda", torch.float16).transpose(1, 2)
    v = torch.randn(B, K, H, Dv, generator=g).to("cuda", torch.float16).transpose(1, 2)
    pad, mask4d, _ = benchutil.left_padded_causal(B, Q, K, lo, g, torch.float16)
    return dict(q=q, k=k, v=v, pad=pad, mask4d=mask4d, B=B, H=H, Q=Q, K=K, Dqk=Dqk, Dv=Dv)


def providers(inp, only=None):
    from hf_masked_softmax import ops
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    attn_mod = importlib.import_module("hf_masked_softmax.attention")
    q, k, v, pad, mask4d = (inp[n] for n in ("q", "k", "v", "pad", "mask4d"))
    scale = inp["Dqk"] ** -0.5

    def fused():
        return ops.attention(q, k, v, pad, causal=True, scale=scale, _any_value_dim=True)

    def one_tile():
        before = attn_mod.SPLIT_HEAD_DIM
        attn_mod.SPLIT_HEAD_DIM = False
        try:
            return fused()
        finally:
            attn_mod.SPLIT_HEAD_DIM = before

    def keys_split():
        split_d = attn_mod._split_d
        attn_mod._split_d = lambda D, values=False, decode=False: (
            (attn_mod._block_d(D), 0) if values else split_d(D, values, decode))
        try:
            return fused()
        finally:
            attn_mod._split_d = split_d

    out = {
        "fused": fused,
        "fused-one-tile": one_tile,
        "fused-keys-split": keys_split,
        "sdpa-4d": lambda: sdpa(q, k, v, attn_mask=mask4d, scale=scale),
        "sdpa-nomask": lambda: sdpa(q, k, v, is_causal=inp["Q"] > 1, scale=scale),
    }
    if only is None or "flex" in only:
        flex = benchutil.padded_causal_flex(inp, scale=scale)
        if flex is not None:
            out["flex"] = flex
    return {p: fn for p, fn in out.items() if only is None or p in only or p == "fused"}


def plot(rows, path: Path) -> None:
    title = f"head dims of no power of two, fp16 forward, {benchutil.environment()['gpu']}"
    benchutil.shape_pass_bars(rows, SHAPES, "fused", title, path)


def main(argv=None):
    args, names, only, out = benchutil.provider_setup(__doc__, argv, SHAPES, PROVIDERS, "fused")
    attn_mod = importlib.import_module("hf_masked_softmax.attention")
    rows = []
    for name in names:
        B, H, Q, K, Dqk, Dv, lo = SHAPES[name]
        inp = make_inputs(B, H, Q, K, Dqk, Dv, lo)
        tiles = attn_mod._split_d(Dqk, False, Q == 1), attn_mod._split_d(Dv, True, Q == 1)
        print(f"{name}: B{B} H{H} Q{Q} K{K} q/k {Dqk} v {Dv}, key lengths in [{lo}, {K}]; tiles (first, second) "
              f"q/k {tiles[0]}, v {tiles[1]}", flush=True)
        provs = providers(inp, only)
        rows += benchutil.compared_shape_rows(
            name, provs, PROVIDERS, "fused", COMPARED, benchutil.rows_with_keys(inp), ["forward"],
            lambda fn, pas, inp=inp: time_provider(fn, inp, False, graph=True),
            "the head dim in two tiles", baseline="fused-one-tile" if "fused-one-tile" in provs else "fused")
        del inp, provs
        torch.cuda.empty_cache()
    benchutil.write_json(out / "bench_head_dims.json",
                         dict(environment=benchutil.environment(), shapes={n: SHAPES[n] for n in names}, rows=rows))
    print(f"wrote {out / 'bench_head_dims.json'}")
    plot(rows, out / "bench_head_dims.png")


if __name__ == "__main__":
    main()
