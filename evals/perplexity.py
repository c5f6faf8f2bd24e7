"""Sliding-window perplexity of a causal LM, unpatched and patched by hf_masked_softmax, in one run.

With no arguments it runs offline on a CPU: the embedded tiny GPT-2 (evals/tiny_gpt2, trained by
evals/train_tiny_gpt2.py on Wikipedia and other text) on text it never saw, Python's bundled pydoc_data topics.

Windows of ``--max-length`` tokens advance by ``--stride``; only the tokens a window adds beyond the previous one
are scored (the overlap is context, its labels are -100), as in Hugging Face's perplexity guide. The negative
log-likelihoods are summed in float64 over exactly the same tokens for both models, so the two perplexities differ
only by the attention implementation. Exit status 1 when their relative difference exceeds the tolerance (1e-5
in fp32, 1e-3 in fp16/bf16).

    python evals/perplexity.py
    python evals/perplexity.py --model gpt2 --dataset wikitext --config wikitext-2-raw-v1 --split test --device cuda --dtype fp16
    python evals/perplexity.py --text-file my.txt --max-tokens 20000 --json ppl.json
    python evals/perplexity.py --model path/to/model.gguf --text-file my.txt     # llama.cpp checkpoint (gguf package)
    accelerate launch --num_processes 2 evals/perplexity.py     # GPUs: windows split across processes, sums gathered
    accelerate launch --multi_gpu --num_processes 2 evals/perplexity.py --device cpu   # the same with CPU processes
"""
from __future__ import annotations

import argparse
import inspect
import math
import os
import sys
import time

import _common

TOLERANCE = {"fp32": 1e-5, "fp16": 1e-3, "bf16": 1e-3}
CPU_DEFAULT_TOKENS = 65536


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="hub id, local folder, or GGUF file / folder holding one "
                   "(default: the embedded tiny GPT-2)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", default=None, help="datasets.load_dataset name, e.g. wikitext")
    src.add_argument("--text-file", default=None, help="a local text file (read by the datasets 'text' loader)")
    p.add_argument("--config", default=None, help="dataset configuration, e.g. wikitext-2-raw-v1")
    p.add_argument("--split", default="test")
    p.add_argument("--text-column", default="text")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--max-length", type=int, default=None, help="window length (default: min(512, n_positions))")
    p.add_argument("--stride", type=int, default=None, help="window step (default: max_length // 2)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward")
    p.add_argument("--max-tokens", type=int, default=None,
                   help=f"score only the first N tokens of the text; 0 = all (default: all on a GPU, the first "
                        f"{CPU_DEFAULT_TOKENS} on a CPU, which keeps the default run near two minutes on 2 cores)")
    p.add_argument("--mode", default="auto", choices=["auto", "softmax", "fused"], help="patch_model mode")
    p.add_argument("--baseline", default="eager", choices=["eager", "sdpa"],
                   help="attention implementation of the unpatched model")
    p.add_argument("--untrained", action="store_true",
                   help="also score a randomly initialised model of the same config (unpatched), for reference")
    p.add_argument("--seed", type=int, default=0, help="seed of the --untrained model")
    p.add_argument("--tolerance", type=float, default=None, help="override the relative tolerance")
    p.add_argument("--fp32-reference", action="store_true",
                   help="fp16/bf16: also score an fp32 copy of the model (unpatched) and report how far the unpatched "
                        "and the patched perplexities each are from it (the pass/fail rule is unchanged)")
    p.add_argument("--json", default=None, help="write the results to this file")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.config and not args.dataset:
        p.error("--config needs --dataset")
    if (args.split != "test" or args.text_column != "text") and not args.dataset:
        p.error("--split and --text-column need --dataset")
    if args.json and os.path.isdir(args.json):
        p.error(f"--json {args.json!r} is a folder; give the file's path")
    if args.max_tokens is not None and args.max_tokens < 0:
        p.error("--max-tokens must be >= 0")
    _common.require_positive(p, args, "max_length", "stride", "batch_size")
    if args.tolerance is not None and not args.tolerance >= 0:
        p.error(f"--tolerance must be >= 0, got {args.tolerance}")
    return args


def load_text(args) -> tuple[str, str]:
    """The text to score and a description of where it came from."""
    if args.dataset is None and args.text_file is None:
        return _common.pydoc_text(), "pydoc_data.topics (held out from the embedded model's training)"
    try:
        import datasets
    except ImportError:
        sys.exit("error: --dataset/--text-file need the `datasets` package (pip install datasets)")
    if args.text_file is not None:
        if not os.path.isfile(args.text_file):
            sys.exit(f"error: --text-file {args.text_file!r} does not exist")
        ds = datasets.load_dataset("text", data_files=args.text_file, split="train", sample_by="document")
        return "\n".join(ds["text"]), f"file {args.text_file}"
    try:
        ds = datasets.load_dataset(args.dataset, args.config, split=args.split)
    except (OSError, ValueError) as exc:  # not cached and no hub here, or a wrong config / split name
        sys.exit(f"error: --dataset {args.dataset!r} could not be loaded (offline: it must be cached): "
                 f"{_common.first_line(exc)}")
    if args.text_column not in ds.column_names:
        sys.exit(f"error: dataset has no column {args.text_column!r}; columns: {ds.column_names}")
    return "\n\n".join(ds[args.text_column]), f"{args.dataset}/{args.config or ''}:{args.split}"


def make_windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, n_scored) per window: the last ``n_scored`` tokens of [begin, end) are predicted."""
    windows, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        windows.append((begin, end, end - prev_end))
        prev_end = end
        if end == n_tokens:
            break
    return windows


def batched_nll(model, ids, windows, device, keep_logits: bool = True):
    """Summed NLL (float64) and count of the scored tokens of a group of windows, right-padded into one batch.

    The very first token of the text has no context and is never scored. With ``keep_logits`` only the positions
    that predict scored tokens go through the LM head (``logits_to_keep``): the vocabulary projection is most of
    a small model's work.
    """
    import torch
    import torch.nn.functional as F

    width = max(e - b for b, e, _ in windows)
    x = torch.zeros(len(windows), width, dtype=torch.long)
    mask = torch.zeros(len(windows), width, dtype=torch.long)
    labels = torch.full((len(windows), width), -100, dtype=torch.long)
    for row, (b, e, n) in enumerate(windows):
        x[row, :e - b] = ids[b:e]
        mask[row, :e - b] = 1
        labels[row, e - b - n:e - b] = ids[e - n:e]
    # Position p predicts token p + 1: the earliest prediction needed sits at (e - b) - n - 1 in its row.
    keep = max(width - (e - b) + n + 1 for b, e, n in windows)
    keep = min(keep, width)
    x, mask, labels = x.to(device), mask.to(device), labels.to(device)
    kwargs = {"logits_to_keep": keep} if keep_logits else {}
    with torch.no_grad():
        logits = model(input_ids=x, attention_mask=mask, **kwargs).logits
    logits = logits[:, -keep:] if keep_logits else logits
    target = labels[:, width - keep + 1:]
    pred = logits[:, :keep - 1] if keep > 1 else logits[:, :0]
    valid = target != -100
    nll = F.cross_entropy(pred[valid].float(), target[valid], reduction="none")
    return nll.double().sum().item(), int(valid.sum())


def _sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None):
    args = parse_args(argv)
    hub_model = args.model is not None and not os.path.exists(args.model)
    _common.go_offline(needs_hub=args.dataset is not None or hub_model)
    _common.ensure_repo_on_path()
    t_start = time.time()
    import torch
    from tqdm.auto import tqdm

    import hf_masked_softmax

    if args.device is not None:
        _common.resolve_device(args.device)  # a clear error for a device this machine lacks or torch does not know
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        from accelerate import PartialState
        from accelerate.utils import gather

        # Without cpu=True accelerate only forms a process group on accelerators.
        state = PartialState(cpu=(args.device == "cpu") or not torch.cuda.is_available())
        rank, world, device = state.process_index, state.num_processes, str(state.device)
        if args.device is not None and not str(device).startswith(args.device):
            print(f"note: under accelerate the device is {device} (--device {args.device} ignored)", file=sys.stderr)
    else:
        rank, world = 0, 1
        device = _common.resolve_device(args.device)
    main_process = rank == 0
    dtype = _common.parse_dtype(args.dtype)
    tolerance = args.tolerance if args.tolerance is not None else TOLERANCE[args.dtype]

    model = _common.load_causal_lm(args.model, dtype, device, attn_implementation=args.baseline)
    tok = _common.load_tokenizer(args.model)
    text, source = load_text(args)
    ids = torch.tensor(tok(text)["input_ids"], dtype=torch.long)
    max_tokens = args.max_tokens
    if max_tokens is None and not device.startswith("cuda"):
        max_tokens = CPU_DEFAULT_TOKENS
    n_text_tokens = len(ids)
    if max_tokens:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        sys.exit("error: the text has fewer than 2 tokens")
    n_positions = _common.n_positions(model.config) or 512
    max_length = args.max_length or min(512, n_positions)
    if max_length > n_positions:
        sys.exit(f"error: --max-length {max_length} exceeds the model's {n_positions} positions")
    if max_length < 2:
        sys.exit("error: --max-length must be at least 2 (a window's first token is context only)")
    stride = args.stride or max(1, max_length // 2)
    if stride >= max_length:
        # each window scores the tokens it adds with the ones before as context: with no overlap, the first token
        # of every window would have none and would go unscored
        sys.exit(f"error: --stride {stride} must be smaller than --max-length {max_length}, so that every token "
                 f"but the text's first is scored with context")
    windows = make_windows(len(ids), max_length, stride)
    mine = windows[rank::world]
    batches = [mine[i:i + args.batch_size] for i in range(0, len(mine), args.batch_size)]

    untrained = None
    if args.untrained:
        torch.manual_seed(args.seed)
        from transformers import AutoModelForCausalLM

        untrained = AutoModelForCausalLM.from_config(model.config, dtype=dtype, attn_implementation=args.baseline)
        untrained = untrained.to(device).eval()
    reference = None
    if args.fp32_reference and args.dtype != "fp32":
        reference = _common.load_causal_lm(args.model, torch.float32, device, attn_implementation=args.baseline)

    if main_process:
        print(f"model: {args.model or 'embedded tiny GPT-2 (' + _common.EMBEDDED_GPT2 + ')'} {args.dtype} on "
              f"{device}{f' x{world} processes' if world > 1 else ''}; text: {source}, {len(ids)} of {n_text_tokens} "
              f"tokens; {len(windows)} windows of {max_length} (stride {stride}), batch {args.batch_size}")
        print(f"patched path: mode={args.mode!r} -> {_common.patched_path(device, args.mode)}; "
              f"baseline: {args.baseline}", flush=True)

    keep_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    # Warm-up outside the timings: first calls pay for allocations and (on a GPU) kernel compilation.
    b0, e0, _ = windows[0]
    warm = [(b0, min(e0, b0 + 64), min(e0, b0 + 64) - b0)]
    batched_nll(model, ids, warm, device, keep_logits)
    with hf_masked_softmax.patched(model, mode=args.mode):
        batched_nll(model, ids, warm, device, keep_logits)

    groups = ("base", "patched", "untrained", "fp32")
    sums = {key: [0.0, 0, 0.0] for key in groups}  # nll, tokens, seconds
    bar = tqdm(batches, desc="perplexity", unit="batch", disable=args.no_progress or not main_process)
    for group in bar:
        # Interleave the two so that both see the same machine load; (un)patching stays outside the timed part.
        runs = [("base", model, False), ("patched", model, True)]
        if untrained is not None:
            runs.append(("untrained", untrained, False))
        if reference is not None:
            runs.append(("fp32", reference, False))
        for key, m, patch in runs:
            if patch:
                hf_masked_softmax.patch_model(m, mode=args.mode)
            try:
                _sync(device)
                t0 = time.perf_counter()
                nll, n = batched_nll(m, ids, group, device, keep_logits)
                _sync(device)
                dt = time.perf_counter() - t0
            finally:
                if patch:
                    hf_masked_softmax.unpatch_model(m)
            sums[key][0] += nll
            sums[key][1] += n
            sums[key][2] += dt
        bar.set_postfix(ppl=f"{math.exp(sums['patched'][0] / max(1, sums['patched'][1])):.3f}")

    flat = torch.tensor([v for key in groups for v in sums[key]], dtype=torch.float64)
    if distributed:
        every = gather(flat.to(device)).cpu().view(world, -1)
        _common.end_distributed()  # the last collective
        totals = every.sum(0)
        for k in range(2, 3 * len(groups), 3):  # wall time: the slowest process
            totals[k] = every[:, k].max()
    else:
        totals = flat
    if not main_process:
        return 0

    base_nll, n_tokens, base_s, patched_nll, n_tokens_p, patched_s, un_nll, _, _, ref_nll, _, _ = totals.tolist()
    assert int(n_tokens) == int(n_tokens_p) == len(ids) - 1, (n_tokens, n_tokens_p, len(ids))
    ppl_base = math.exp(base_nll / n_tokens)
    ppl_patched = math.exp(patched_nll / n_tokens)
    rel = abs(ppl_patched - ppl_base) / ppl_base
    ok = rel <= tolerance
    result = {
        "model": args.model or "embedded tiny GPT-2",
        "text": source,
        "tokens_scored": int(n_tokens),
        "tokens_in_text": n_text_tokens,
        "windows": len(windows),
        "max_length": max_length,
        "stride": stride,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "device": device,
        "processes": world,
        "mode": args.mode,
        "patched_path": _common.patched_path(device, args.mode),
        "baseline": args.baseline,
        "perplexity_unpatched": ppl_base,
        "perplexity_patched": ppl_patched,
        "relative_difference": rel,
        "tolerance": tolerance,
        "passed": ok,
        "tokens_per_s_unpatched": n_tokens / base_s,
        "tokens_per_s_patched": n_tokens / patched_s,
        "speedup": base_s / patched_s,
        "seconds_total": time.time() - t_start,
        "system": _common.system_info(),
    }
    if untrained is not None:
        result["perplexity_untrained"] = math.exp(un_nll / n_tokens)
    if reference is not None:
        ppl_ref = math.exp(ref_nll / n_tokens)
        result["perplexity_fp32"] = ppl_ref
        result["unpatched_relative_error_vs_fp32"] = abs(ppl_base - ppl_ref) / ppl_ref
        result["patched_relative_error_vs_fp32"] = abs(ppl_patched - ppl_ref) / ppl_ref
    print(f"perplexity unpatched ({args.baseline}): {ppl_base:.6f}   {result['tokens_per_s_unpatched']:.0f} tokens/s")
    print(f"perplexity patched ({args.mode}):   {ppl_patched:.6f}   {result['tokens_per_s_patched']:.0f} tokens/s")
    if untrained is not None:
        print(f"perplexity untrained (same config): {result['perplexity_untrained']:.1f}  "
              f"(ratio {result['perplexity_untrained'] / ppl_base:.1f}x)")
    if reference is not None:
        print(f"perplexity fp32 ({args.baseline}, unpatched): {result['perplexity_fp32']:.6f}; relative error vs fp32: "
              f"unpatched {result['unpatched_relative_error_vs_fp32']:.3e}, "
              f"patched {result['patched_relative_error_vs_fp32']:.3e}")
    print(f"relative difference {rel:.3e} (tolerance {tolerance:.0e}): {'OK' if ok else 'FAILED'}; "
          f"speedup {result['speedup']:.3f}x; {result['seconds_total']:.1f}s in total")
    if args.json:
        _common.write_json(args.json, result)
    if not ok:
        print(f"error: patched perplexity differs from unpatched by {rel:.3e} > {tolerance:.0e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    _common.exit_process(main())
