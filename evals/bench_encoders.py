"""Vision and speech encoders (and T5) end to end on the GPU: a whole forward, patched against transformers' own attention.

Models (random init, fp16, inference), at their base sizes (the library's defaults for each config):

* ``vit-base``: ViT-B/16 at 224x224 (197 tokens), batch 64; no mask.
* ``clip-base``: CLIP ViT-B/32 (text tower 12 x 512, vision tower 50 tokens), batch 64; texts of 8 to 77 tokens,
  right-padded to 77.
* ``siglip2-naflex``: SigLIP 2's base vision tower with NaFlex inputs: batch 16, each image 256 to 1024 patches of
  16x16 (32 rows of patches, 8 to 32 columns), padded to 1024; the padding is the model's ``pixel_attention_mask``.
* ``wav2vec2-base``: wav2vec 2.0 base, batch 8 of 8 to 16 s of 16 kHz audio (the longest 799 frames), padded.
* ``t5-small``: T5 at t5-small's size (6 + 6 layers of 8 heads, d_model 512), batch 32 of 256 to 512 source tokens
  (right-padded to 512) and 128 decoder tokens; the decoder's last hidden state is compared.

Providers: ``eager`` and ``sdpa`` (transformers' own, ``set_attn_implementation``), ``fused`` (``patch_model(model,
mode="fused")``) and ``softmax`` (``mode="softmax"``). Each time is the median of a whole forward (CUDA events,
triton's ``do_bench``). Errors: each provider's largest difference from an fp32 copy of the model run eager, on the
real (unpadded) positions of the last hidden state; flash-attn's rule for fp16 is that a patched model's error be at
most twice eager's.

    python evals/bench_encoders.py [--models vit-base,clip-base,siglip2-naflex,wav2vec2-base,t5-small]
        [--providers eager,sdpa,fused,softmax] [--out DIR]

Writes ``bench_encoders.json`` and ``bench_encoders.png`` under ``--out`` / $OUT.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import benchutil  # noqa: E402

_common.ensure_repo_on_path()

MODELS = ("vit-base", "clip-base", "siglip2-naflex", "wav2vec2-base", "t5-small")
PROVIDERS = ("eager", "sdpa", "fused", "softmax")


def build(name: str, g: torch.Generator):
    """(model in fp32 on the GPU, its forward's keyword arguments, the output to compare -> (tensor, valid or None))"""
    import transformers as T

    dev = "cuda"
    if name == "vit-base":
        model = T.ViTModel(T.ViTConfig(), add_pooling_layer=False)
        inputs = {"pixel_values": torch.randn(64, 3, 224, 224, generator=g)}
        return model, inputs, lambda o, inp: (o.last_hidden_state, None)
    if name == "clip-base":
        model = T.CLIPModel(T.CLIPConfig())
        B, T_ = 64, 77
        lengths = torch.randint(8, T_ + 1, (B,), generator=g)
        mask = (torch.arange(T_)[None] < lengths[:, None]).long()
        ids = torch.randint(0, 49406, (B, T_), generator=g) * mask
        ids[torch.arange(B), lengths - 1] = 49407  # end of text: where CLIP pools
        inputs = {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.randn(B, 3, 224, 224, generator=g)}
        return model, inputs, lambda o, inp: (o.text_model_output.last_hidden_state, inp["attention_mask"].bool())
    if name == "siglip2-naflex":
        model = T.Siglip2VisionModel(T.Siglip2VisionConfig(num_patches=1024))
        B, N, rows = 16, 1024, 32
        cols = torch.randint(8, N // rows + 1, (B,), generator=g)
        mask = (torch.arange(N)[None] < (rows * cols)[:, None]).long()
        shapes = torch.stack([torch.full_like(cols, rows), cols], dim=1)
        inputs = {"pixel_values": torch.randn(B, N, 3 * 16 * 16, generator=g), "pixel_attention_mask": mask,
                  "spatial_shapes": shapes}
        return model, inputs, lambda o, inp: (o.last_hidden_state, inp["pixel_attention_mask"].bool())
    if name == "wav2vec2-base":
        model = T.Wav2Vec2Model(T.Wav2Vec2Config())
        B, S = 8, 16 * 16000
        lengths = torch.randint(8 * 16000, S + 1, (B,), generator=g)
        mask = (torch.arange(S)[None] < lengths[:, None]).long()
        inputs = {"input_values": torch.randn(B, S, generator=g) * mask, "attention_mask": mask}

        def output(o, inp):
            frames = o.last_hidden_state.shape[1]
            return o.last_hidden_state, model._get_feature_vector_attention_mask(frames, inp["attention_mask"]).bool()

        return model, inputs, output
    if name == "t5-small":
        model = T.T5Model(T.T5Config())
        B, S, D = 32, 512, 128
        lengths = torch.randint(256, S + 1, (B,), generator=g)
        mask = (torch.arange(S)[None] < lengths[:, None]).long()
        inputs = {"input_ids": torch.randint(2, 32000, (B, S), generator=g) * mask, "attention_mask": mask,
                  "decoder_input_ids": torch.randint(2, 32000, (B, D), generator=g)}
        return model, inputs, lambda o, inp: (o.last_hidden_state, None)
    raise ValueError(name)


def set_provider(model, provider: str) -> None:
    from hf_masked_softmax import patch_model, unpatch_model

    if "_hf_masked_softmax_patch" in model.__dict__:
        unpatch_model(model)
    if provider in ("eager", "sdpa"):
        model.set_attn_implementation(provider)
    else:
        model.set_attn_implementation("eager")
        patch_model(model, mode=provider)


def fp16_inputs(inputs: dict) -> dict:
    return {k: (v.half() if v.is_floating_point() else v) for k, v in inputs.items()}


def run_model(name: str, providers, g) -> list[dict]:
    model, inputs, output = build(name, g)
    model = model.to("cuda").eval()
    inputs = {k: v.to("cuda") for k, v in inputs.items()}
    model.set_attn_implementation("eager")
    with torch.inference_mode():
        ref, valid = output(model(**inputs), inputs)
        ref = ref.double()
        half = copy.deepcopy(model).half()
        del model
        torch.cuda.empty_cache()
        inp16 = fp16_inputs(inputs)
        rows = []
        for provider in providers:
            set_provider(half, provider)
            out, _ = output(half(**inp16), inp16)
            diff = (out.double() - ref).abs()
            err = float((diff[valid] if valid is not None else diff).max())
            ms = benchutil.median_ms(lambda: half(**inp16), warmup=50, rep=300)
            rows.append(dict(model=name, provider=provider, ms=ms, max_err_vs_fp32=err))
            print(f"  {provider:8s} {ms:8.3f} ms   max error vs fp32 eager {err:.3g}", flush=True)
        set_provider(half, "eager")
    base = {r["provider"]: r["ms"] for r in rows}
    eager_err = next((r["max_err_vs_fp32"] for r in rows if r["provider"] == "eager"), None)
    for r in rows:
        for peer in ("eager", "sdpa"):
            if peer in base:
                r[f"speedup_vs_{peer}"] = base[peer] / r["ms"]
        if eager_err:
            r["err_over_eager"] = r["max_err_vs_fp32"] / eager_err
    del half
    torch.cuda.empty_cache()
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    models = benchutil.pick(ap, args.models, MODELS, "models")
    providers = benchutil.pick(ap, args.providers, PROVIDERS, "providers")
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU (the timings are of GPU kernels)")
    _common.go_offline()
    out = benchutil.out_dir(args.out)
    g = torch.Generator().manual_seed(0)
    rows = []
    for name in models:
        print(f"{name}:", flush=True)
        rows += run_model(name, providers, g)
    benchutil.print_table(rows, ["model", "provider", "ms", "speedup_vs_eager", "speedup_vs_sdpa", "max_err_vs_fp32",
                                 "err_over_eager"])
    benchutil.write_json(out / "bench_encoders.json", dict(environment=benchutil.environment(), rows=rows))
    print(f"wrote {out / 'bench_encoders.json'}")
    benchutil.provider_bars([(m, [r for r in rows if r["model"] == m]) for m in models], "fused",
                            "Encoders end to end, fp16 forward (median ms)", out / "bench_encoders.png")


if __name__ == "__main__":
    main()
