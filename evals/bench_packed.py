"""Packed sequences (padding-free batches) on the GPU: the fused kernel's ``segments`` against the ways to get the
same result without them.

Each row of a batch holds documents of random lengths back to back (transformers' ``DataCollatorWithFlattening``:
no padding, positions restarting at each document); every token attends causally within its own document. Providers,
on the same fp16 inputs in HF's ``[B, T, H, D]`` memory:

* ``fused-segments``: ``attention(q, k, v, causal=True, segments=ids)``: each token's document read by the kernels,
  key blocks of other documents skipped (what a patched model runs on a packed batch since 2026-12-06);
* ``fused-4d``: the same kernel given the block-diagonal causal 4D bool mask HF builds for packing (what a patched
  model ran before: the mask's key bounds per 16 rows skip other documents' blocks, the mask tile is read per
  block);
* ``sdpa-4d``: ``scaled_dot_product_attention`` with that 4D mask (HF's sdpa path for a packed batch);
* ``flex-document``: FlexAttention (torch.compile'd) with a document-causal block mask;
* ``fused-causal``: the kernel over each whole row without documents, for scale.

Forward (CUDA-graph replays) and backward (plain calls) medians; ``vs sdpa-4d`` is sdpa-4d's time over the
provider's. Every provider's output is checked against ``fused-segments``'.

    python evals/bench_packed.py [--shapes llama-8k,gpt2-4k] [--no-backward] [--out DIR]

Writes ``bench_packed.json`` and ``bench_packed.png`` under ``--out`` / $OUT.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchutil  # noqa: E402
from bench_attention import time_provider  # noqa: E402

# name -> (B, H, Hkv, T, D, shortest document, longest document)
SHAPES = {
    "llama-8k": (1, 32, 8, 8192, 128, 256, 2048),
    "gpt2-4k": (4, 12, 12, 4096, 64, 64, 1024),
}
PROVIDERS = ("fused-segments", "fused-4d", "sdpa-4d", "flex-document", "fused-causal")


def document_ids(B: int, T: int, lo: int, hi: int, seed: int = 0) -> torch.Tensor:
    """``[B, T]`` int64: document ids, lengths uniform in ``[lo, hi]`` (the last one cut at ``T``)."""
    from hf_masked_softmax.check import random_segment_ids

    return random_segment_ids(B, T, lo, hi, torch.Generator().manual_seed(seed))


def document_mask_mod(ids: torch.Tensor):
    """FlexAttention's ``mask_mod`` for documents ``ids [B, T]``, causal within each."""
    return lambda b, h, qi, kj: (ids[b, qi] == ids[b, kj]) & (kj <= qi)


def make_inputs(B, H, Hkv, T, D, lo, hi, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, D, generator=g).to("cuda", torch.float16).transpose(1, 2)
    k, v = (torch.randn(B, T, Hkv, D, generator=g).to("cuda", torch.float16).transpose(1, 2) for _ in range(2))
    ids = document_ids(B, T, lo, hi, seed).to("cuda")
    i = torch.arange(T, device="cuda")
    mask4d = ((ids[:, :, None] == ids[:, None, :]) & (i[None, None, :] <= i[None, :, None]))[:, None]
    docs = [int(r.max()) + 1 for r in ids.cpu()]
    return dict(q=q, k=k, v=v, ids=ids, mask4d=mask4d, B=B, H=H, Hkv=Hkv, Q=T, K=T, D=D, docs=docs)


def providers(inp, only=None):
    import hf_masked_softmax
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    q, k, v, ids, mask4d = (inp[n] for n in ("q", "k", "v", "ids", "mask4d"))
    gqa = inp["H"] != inp["Hkv"]
    out = {
        "fused-segments": lambda: hf_masked_softmax.attention(q, k, v, causal=True, segments=ids),
        "fused-4d": lambda: hf_masked_softmax.attention(q, k, v, mask4d),
        "sdpa-4d": lambda: sdpa(q, k, v, attn_mask=mask4d, enable_gqa=gqa),
        "fused-causal": lambda: hf_masked_softmax.attention(q, k, v, causal=True),
    }
    if only is None or "flex-document" in only:
        flex = benchutil.compiled_flex("flex-document", q, k, v, document_mask_mod(ids), inp["Q"],
            inp["K"], enable_gqa=gqa)
        if flex is not None:
            out["flex-document"] = flex
    return {p: fn for p, fn in out.items() if only is None or p in only or p == "fused-segments"}


def plot(rows, path: Path) -> None:
    title = f"packed sequences (causal within documents), fp16, {benchutil.environment()['gpu']}"
    benchutil.shape_pass_bars(rows, SHAPES, "fused-segments", title, path)


def main(argv=None):
    args, names, only, out = benchutil.provider_setup(__doc__, argv, SHAPES, PROVIDERS, "fused-segments")
    rows = []
    for name in names:
        B, H, Hkv, T, D, lo, hi = SHAPES[name]
        inp = make_inputs(B, H, Hkv, T, D, lo, hi)
        print(f"{name}: B{B} H{H}/{Hkv} T{T} D{D}, documents of {lo}..{hi} tokens ({inp['docs']} per row)",
              flush=True)
        provs = providers(inp, only)
        passes = ["forward"] + ([] if args.no_backward else ["backward"])
        rows += benchutil.compared_shape_rows(
            name, provs, PROVIDERS, "fused-segments", [p for p in provs if p != "fused-causal"],
            benchutil.rows_with_keys(inp), passes,
            lambda fn, pas, inp=inp: time_provider(fn, inp, pas == "backward", graph=pas == "forward"),
            "every token attends within its document", baseline="sdpa-4d")
        del inp, provs
        torch.cuda.empty_cache()
    benchutil.write_json(out / "bench_packed.json",
                         dict(environment=benchutil.environment(), shapes={n: SHAPES[n] for n in names}, rows=rows))
    print(f"wrote {out / 'bench_packed.json'}")
    plot(rows, out / "bench_packed.png")


if __name__ == "__main__":
    main()
