"""End-to-end speed of HF GPT-2, BERT, Llama, Qwen3 and BART: eager vs sdpa vs hf_masked_softmax's patch modes (GPU, fp16).

Settings (weights random, they do not matter for speed; configs of GPT-2 small / medium, BERT-base, SmolLM2-135M,
Qwen3-0.6B and bart-base):
  gpt2-small forward B8 x T1024, right padding with key lengths uniform in [512, 1024]; and without padding
  gpt2-small generate B8, 128-token left-padded prompts (lengths uniform in [64, 128]) + 64 new tokens, greedy; and
    with 128-token prompts without padding (issue 3's setting)
  gpt2-medium forward B8 x T1024 padded as above; generate as above
  bert-base encode B32 x T512: key lengths uniform in [256, 512]; ~59% fill (lengths uniform in [90, 512]); no padding
  llama-135m (Llama architecture at SmolLM2-135M's size: 30 layers, 9 query / 3 key-value heads, grouped-query
    attention) forward and generate as gpt2-small; "generate static" with HF's static cache (each step attends over
    the whole cache through a 4D mask), for llama-135m and qwen3-0.6b
  qwen3-0.6b (Qwen3 architecture at Qwen3-0.6B's size: 28 layers, 16 query / 8 key-value heads of head_dim 128)
    forward and generate as gpt2-small
  mistral-window (Mistral at SmolLM2-135M's widths, 30 layers, with a sliding window of 256 tokens) forward as
    gpt2-small: the window cuts keys off every row, so the patched model gets HF's 4D mask (the kernels' 4D path)
  gemma2-2b (Gemma 2 at Gemma-2-2B's size: 26 layers, 8 query / 4 key-value heads of head_dim 256, scores
    soft-capped at 50, a 4096-token window on every other layer) forward and generate as gpt2-small; transformers'
    sdpa ignores the cap (5.4, 5.17) or refuses Gemma 2 (5.25), so its rows have no sdpa column
  gpt-oss-4l (GPT-OSS at gpt-oss-20b's widths with 4 of its 24 layers: 64 query / 8 key-value heads of head_dim 64,
    attention sinks, a 128-token window on every other layer, 32 experts of which 4 per token) forward and generate
    as gpt2-small, in bf16 with --dtype bf16 (its training dtype); transformers has no sdpa path for GPT-OSS
  modernbert-base (ModernBERT at ModernBERT-base's size: 22 layers, 12 heads, two of every three layers local with
    a bidirectional 128-token window) encode B8 x T2048, key lengths uniform in [1024, 2048]
  bart-base (BART at bart-base's size: 6 + 6 layers, 12 heads): seq2seq forward of B8 x T1024 encoder inputs, right
    padding with lengths uniform in [512, 1024], and 128 decoder tokens (teacher-forced, no padding); generate from
    B8 x T512 encoder inputs (lengths uniform in [256, 512]), 64 new tokens, greedy
  gpt2-small train B8 x T512 and bert-base train B32 x T256, padded as their forward rows (lengths uniform in
    [T/2, T]): one training step without the optimizer (gradients cleared, forward in train mode, loss, backward;
    GPT-2's language-model loss on the valid tokens, BERT's mean square of its last hidden state). Every dropout is
    set to 0 for these rows, in every implementation, so that every implementation computes the same loss.
  llama-135m train packed: a padding-free batch (transformers' DataCollatorWithFlattening): B4 x T2048, each row
    documents of lengths uniform in [128, 1024] back to back, positions restarting at each, no attention mask, no
    cache; one training step as above, the language-model loss on every token. transformers gives eager and sdpa a
    block-diagonal 4D mask; the patched model's fused kernel gets the documents' ids (attention's segments).
    --keep-dropout times them with the models' dropout instead (HF's default 0.1; the fused kernel draws its
    attention dropout inside the kernel): rows named '... dropout', with no loss comparison.
  modernbert-base train window: B8 x T1024, right padding with key lengths uniform in [512, 1024]; one training step
    as bert-base's (the mean square of the last hidden state): the local layers' bidirectional windows in the
    backward too (eager and sdpa take HF's 4D mask with the window in it)
  deepseek-v2-lite-8l (DeepSeek-V2 with DeepSeek-V2-Lite's multi-head latent attention: 16 heads, queries and keys
    192 wide, values 128 wide; 8 layers, each with the dense MLP instead of experts) forward and generate as
    gpt2-small; the fused kernels read and write the 128-wide values as they are
Forward times: each implementation is timed by triton.testing.do_bench (CUDA events, median) once per round, in
--rounds rounds that visit every implementation in turn (interleaved, so that the host's drift hits all alike); the
row's ms is the median over rounds. A forward of GPT-2 small on an H200 host is partly host-bound (HF's Python
between launches), so on CUDA each forward row also gets device_ms: the summed kernel time per call from the
PyTorch profiler, with speedups on it (x eager dev, x sdpa dev). Generate times are the median of whole generate()
calls, timed in the same interleaved rounds (--generate-reps).
--impls IMPL+compile (e.g. sdpa+compile, fused+compile) adds the model on IMPL called through torch.compile
(--compile-backend, default inductor; static shapes) on the forward, encode and seq2seq rows; its first call, the
compile, is outside the timings, and rows get "x sdpa+compile" against the compiled sdpa model when that ran.
Peak memory is the allocator's peak during one call above what the model and inputs already hold. Speedups are
against eager and sdpa measured in the same run. Prints a table; writes JSON and a PNG bar chart.

    python evals/speed.py --out evals/results            # GPU; --only NAME,... runs a part (see gpu_session.sh)
    python evals/speed.py --tiny --device cpu             # smoke run of the script on tiny configs
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import _common

IMPLS = ("eager", "sdpa", "softmax", "fused", "auto")
COMPILED = "+compile"  # "IMPL+compile": the model on IMPL, called through torch.compile (forward-like rows only)
FORWARD_KINDS = ("forward", "encode", "seq2seq")

# Targets from the project's issues (H100, fp16): speedup of a patch mode over a baseline, per setting.
TARGETS = {
    ("gpt2-small fwd pad", "softmax", "eager"): 1.2,
    ("bert-base enc 59%", "softmax", "eager"): 1.35,
    ("gpt2-small generate", "softmax", "eager"): 1.3,
    ("gpt2-small fwd pad", "fused", "eager"): 1.5,
    ("gpt2-small fwd pad", "fused", "sdpa"): 1.03,
    ("bert-base enc 59%", "fused", "eager"): 2.2,
    ("bert-base enc 59%", "fused", "sdpa"): 1.12,
    ("gpt2-small generate", "fused", "sdpa"): 1.0,
    ("llama-135m fwd pad", "fused", "sdpa"): 1.0,
    ("llama-135m fwd pad", "auto", "sdpa"): 1.0,
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="folder for speed.json / speed.png (default $OUT or evals/results)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32"], help="default fp16 (GPU), fp32 (CPU)")
    p.add_argument("--impls", default=",".join(IMPLS),
                   help="subset of eager,sdpa,softmax,fused,auto; IMPL+compile (e.g. sdpa+compile,fused+compile) "
                        "times the model on IMPL called through torch.compile, on the forward, encode and seq2seq "
                        "rows (generate and training rows leave those out)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of the +compile impls (default inductor; aot_eager for a quick check)")
    p.add_argument("--only", default=None, help="comma-separated substrings: run only matching settings")
    p.add_argument("--skip-medium", action="store_true", help="leave out GPT-2 medium")
    p.add_argument("--generate-reps", type=int, default=5)
    p.add_argument("--cpu-reps", type=int, default=5, help="timed repetitions on a CPU (GPUs use do_bench)")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds per forward setting (default 3 on a GPU, 1 on a CPU)")
    p.add_argument("--tiny", action="store_true", help="tiny configs and shapes (a smoke test of the script)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-dropout", action="store_true",
                   help="training rows keep the models' dropout probabilities (HF's default 0.1; rows named '... "
                        "dropout', no loss comparison: every implementation draws its own masks)")
    p.add_argument("--json", default=None, help="JSON path (default OUT/speed.json)")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    args.impls = [i for i in args.impls.split(",") if i]
    bad = [i for i in args.impls if i.removesuffix(COMPILED) not in IMPLS]
    if bad:
        p.error(f"unknown impl(s) {bad}; choose from {list(IMPLS)}, each also as IMPL{COMPILED}")
    _common.require_positive(p, args, "rounds", "generate_reps", "cpu_reps")
    return args


def settings(tiny: bool, skip_medium: bool):
    """(name, arch, kind, batch, seq, (lo, hi) key lengths or None, padding side, new tokens: generated, or for
    "seq2seq" the decoder's teacher-forced length)."""
    if tiny:
        return [
            ("gpt2-small fwd pad", "gpt2-tiny", "forward", 2, 64, (32, 64), "right", 0),
            ("gpt2-small generate", "gpt2-tiny", "generate", 2, 16, (8, 16), "left", 4),
            ("bert-base enc 59%", "bert-tiny", "encode", 2, 64, (10, 64), "right", 0),
            ("llama-135m fwd pad", "llama-tiny", "forward", 2, 64, (32, 64), "right", 0),
            ("qwen3-0.6b fwd pad", "qwen3-tiny", "forward", 2, 64, (32, 64), "right", 0),
            ("mistral-window fwd pad", "mistral-window-tiny", "forward", 2, 64, (32, 64), "right", 0),
            ("bart-base seq2seq pad", "bart-tiny", "seq2seq", 2, 64, (32, 64), "right", 16),
            ("bart-base generate", "bart-tiny", "generate", 2, 32, (16, 32), "right", 4),
            ("gpt2-small train pad", "gpt2-tiny", "train", 2, 32, (16, 32), "right", 0),
            ("llama-135m generate static", "llama-tiny", "generate", 2, 16, (8, 16), "left", 4),
            ("gemma2-2b fwd pad", "gemma2-tiny", "forward", 2, 64, (32, 64), "right", 0),
            ("gpt-oss-4l fwd pad", "gpt-oss-tiny", "forward", 2, 64, (32, 64), "right", 0),
            ("modernbert-base enc pad", "modernbert-tiny", "encode", 2, 64, (32, 64), "right", 0),
            ("llama-135m train packed", "llama-tiny", "train", 2, 64, (8, 32), "right", 0),
            ("modernbert-base train window", "modernbert-tiny", "train", 2, 64, (32, 64), "right", 0),
            ("deepseek-v2-lite-8l fwd pad", "deepseek-v2-tiny", "forward", 2, 64, (32, 64), "right", 0),
            ("deepseek-v2-lite-8l generate", "deepseek-v2-tiny", "generate", 2, 16, (8, 16), "left", 4),
        ]
    out = [
        ("gpt2-small fwd pad", "gpt2", "forward", 8, 1024, (512, 1024), "right", 0),
        ("gpt2-small fwd nopad", "gpt2", "forward", 8, 1024, None, "right", 0),
        ("gpt2-small generate", "gpt2", "generate", 8, 128, (64, 128), "left", 64),
        ("gpt2-small generate nopad", "gpt2", "generate", 8, 128, None, "left", 64),  # issue 3's anchor setting
        ("bert-base enc [256,512]", "bert-base", "encode", 32, 512, (256, 512), "right", 0),
        ("bert-base enc 59%", "bert-base", "encode", 32, 512, (90, 512), "right", 0),
        ("bert-base enc nopad", "bert-base", "encode", 32, 512, None, "right", 0),
        ("llama-135m fwd pad", "llama-135m", "forward", 8, 1024, (512, 1024), "right", 0),
        ("llama-135m fwd nopad", "llama-135m", "forward", 8, 1024, None, "right", 0),
        ("llama-135m generate", "llama-135m", "generate", 8, 128, (64, 128), "left", 64),
        ("llama-135m generate static", "llama-135m", "generate", 8, 128, (64, 128), "left", 64),
        ("qwen3-0.6b fwd pad", "qwen3-0.6b", "forward", 8, 1024, (512, 1024), "right", 0),
        ("qwen3-0.6b generate", "qwen3-0.6b", "generate", 8, 128, (64, 128), "left", 64),
        ("qwen3-0.6b generate static", "qwen3-0.6b", "generate", 8, 128, (64, 128), "left", 64),
        ("mistral-window fwd pad", "mistral-window", "forward", 8, 1024, (512, 1024), "right", 0),
        ("gemma2-2b fwd pad", "gemma2-2b", "forward", 8, 1024, (512, 1024), "right", 0),
        ("gemma2-2b generate", "gemma2-2b", "generate", 8, 128, (64, 128), "left", 64),
        ("gpt-oss-4l fwd pad", "gpt-oss-4l", "forward", 8, 1024, (512, 1024), "right", 0),
        ("gpt-oss-4l generate", "gpt-oss-4l", "generate", 8, 128, (64, 128), "left", 64),
        ("modernbert-base enc pad", "modernbert-base", "encode", 8, 2048, (1024, 2048), "right", 0),
        ("bart-base seq2seq pad", "bart-base", "seq2seq", 8, 1024, (512, 1024), "right", 128),
        ("bart-base generate", "bart-base", "generate", 8, 512, (256, 512), "right", 64),
        ("gpt2-small train pad", "gpt2", "train", 8, 512, (256, 512), "right", 0),
        ("bert-base train pad", "bert-base", "train", 32, 256, (128, 256), "right", 0),
        ("llama-135m train packed", "llama-135m", "train", 4, 2048, (128, 1024), "right", 0),
        ("modernbert-base train window", "modernbert-base", "train", 8, 1024, (512, 1024), "right", 0),
        ("deepseek-v2-lite-8l fwd pad", "deepseek-v2-lite-8l", "forward", 8, 1024, (512, 1024), "right", 0),
        ("deepseek-v2-lite-8l generate", "deepseek-v2-lite-8l", "generate", 8, 128, (64, 128), "left", 64),
    ]
    if not skip_medium:
        out += [
            ("gpt2-medium fwd pad", "gpt2-medium", "forward", 8, 1024, (512, 1024), "right", 0),
            ("gpt2-medium generate", "gpt2-medium", "generate", 8, 128, (64, 128), "left", 64),
        ]
    return out


def build(arch: str, dtype, device):
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    if arch == "gpt2":
        model = GPT2LMHeadModel._from_config(GPT2Config(), attn_implementation="eager")
    elif arch == "gpt2-medium":
        model = GPT2LMHeadModel._from_config(GPT2Config(n_embd=1024, n_layer=24, n_head=16),
                                             attn_implementation="eager")
    elif arch == "gpt2-tiny":
        cfg = GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=1000, bos_token_id=999, eos_token_id=999)
        model = GPT2LMHeadModel._from_config(cfg, attn_implementation="eager")
    elif arch == "llama-135m":
        model = _common.llama_135m()
    elif arch == "llama-tiny":
        model = _common.llama_135m(n_layer=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=128, vocab_size=1000)
    elif arch == "qwen3-0.6b":
        model = _common.qwen3_0_6b()
    elif arch == "qwen3-tiny":
        model = _common.qwen3_0_6b(n_layer=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                   head_dim=32, intermediate_size=128, vocab_size=1000)
    elif arch == "mistral-window":
        model = _common.mistral_window(window=256)
    elif arch == "mistral-window-tiny":
        model = _common.mistral_window(n_layer=2, window=16, hidden_size=64, num_attention_heads=4,
                                       num_key_value_heads=2, head_dim=16, intermediate_size=128, vocab_size=1000)
    elif arch == "gemma2-2b":
        model = _common.gemma2_2b()
    elif arch == "gemma2-tiny":
        model = _common.gemma2_2b(n_layer=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                  head_dim=16, intermediate_size=128, vocab_size=1000, sliding_window=16)
    elif arch == "gpt-oss-4l":
        import torch

        with torch.device(device):  # built on the GPU: 4.4B parameters take minutes to initialise on the CPU
            model = _common.gpt_oss_20b(n_layer=4)
    elif arch == "gpt-oss-tiny":
        model = _common.gpt_oss_20b(n_layer=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                    head_dim=16, intermediate_size=64, num_local_experts=2, num_experts_per_tok=2,
                                    vocab_size=1000, sliding_window=16, experts_implementation="eager")
    elif arch == "modernbert-base":
        model = _common.modernbert_base()
    elif arch == "modernbert-tiny":
        model = _common.modernbert_base(n_layer=3, hidden_size=64, num_attention_heads=2, intermediate_size=96,
                                        vocab_size=1000, local_attention=16, pad_token_id=0, bos_token_id=1,
                                        eos_token_id=2, cls_token_id=1, sep_token_id=2)
    elif arch == "deepseek-v2-lite-8l":
        model = _common.deepseek_v2_lite_dense()
    elif arch == "deepseek-v2-tiny":
        model = _common.deepseek_v2_lite_dense(n_layer=2, hidden_size=64, num_attention_heads=4,
                                               num_key_value_heads=4, kv_lora_rank=32, qk_nope_head_dim=16,
                                               qk_rope_head_dim=8, head_dim=8, v_head_dim=16, intermediate_size=128,
                                               vocab_size=1000)
    elif arch == "bart-base":
        model = _common.bart_base()
    elif arch == "bart-tiny":
        model = _common.bart_base(n_layer=2, d_model=64, encoder_attention_heads=2, decoder_attention_heads=2,
                                  encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=1000)
    elif arch == "bert-base":
        model = BertModel._from_config(BertConfig(), attn_implementation="eager")
    else:
        model = BertModel._from_config(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                                  intermediate_size=128, vocab_size=1000),
                                       attn_implementation="eager")
    return model.to(device, dtype).eval()


def make_inputs(vocab, batch, seq, lengths, side, gen, device):
    import torch

    ids = torch.randint(0, vocab - 1, (batch, seq), generator=gen)
    if lengths is None:
        mask = torch.ones(batch, seq, dtype=torch.long)
    else:
        lens = torch.randint(lengths[0], lengths[1] + 1, (batch,), generator=gen)
        pos = torch.arange(seq)
        mask = (pos[None] < lens[:, None]) if side == "right" else (pos[None] >= (seq - lens)[:, None])
        mask = mask.long()
    return ids.to(device), mask.to(device)


def packed_positions(batch, seq, lengths, gen):
    """``[batch, seq]`` position ids of rows of documents back to back, lengths uniform in ``lengths`` (the last one
    cut at ``seq``): each document's positions start at 0."""
    import torch

    rows = []
    for _ in range(batch):
        parts, n = [], 0
        while n < seq:
            length = min(int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=gen)), seq - n)
            parts.append(torch.arange(length))
            n += length
        rows.append(torch.cat(parts))
    return torch.stack(rows)


class Timer:
    """Median milliseconds: CUDA events through triton.testing.do_bench on a GPU, perf_counter on a CPU."""

    def __init__(self, device):
        self.cuda = str(device).startswith("cuda")

    def sync(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def bench(self, fn, reps=None, cpu_reps=5, rep_ms=300):
        if self.cuda and reps is None:
            import triton.testing

            return float(triton.testing.do_bench(fn, warmup=25, rep=rep_ms, return_mode="median"))
        fn()  # warm-up
        times = []
        for _ in range(reps or cpu_reps):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    def once(self, fn):
        """Milliseconds of one synchronised call."""
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return (time.perf_counter() - t0) * 1e3

    def device_ms(self, fn, n=5):
        """Summed kernel time per call (PyTorch profiler); None off CUDA or if the profiler fails."""
        if not self.cuda:
            return None
        import benchutil

        return benchutil.kernel_ms(fn, n=n)

    def peak_mb(self, fn):
        if not self.cuda:
            return None
        import torch

        self.sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        self.sync()
        return (torch.cuda.max_memory_allocated() - base) / 2**20


def set_impl(model, impl, target=None, backend="inductor"):
    """Put ``model`` on ``impl``; returns an undo callable. For ``IMPL+compile``, ``target["model"]`` (what the
    setting's function calls) becomes ``torch.compile(model)`` until the undo."""
    import hf_masked_softmax

    base = impl.removesuffix(COMPILED)
    if base in ("eager", "sdpa"):
        _common.set_attn_implementation(model, base)
        undo = lambda: _common.set_attn_implementation(model, "eager")  # noqa: E731
    else:
        hf_masked_softmax.patch_model(model, mode=base)
        undo = lambda: hf_masked_softmax.unpatch_model(model)  # noqa: E731
    if base == impl:
        return undo
    import torch

    # a fresh wrapper each time; the compiled code is cached on the model's forward and guarded on its state, so a
    # round that comes back to an implementation finds its graph (one entry per implementation and shape)
    target["model"] = torch.compile(model, backend=backend, dynamic=False)

    def undo_compiled():
        target["model"] = model
        undo()

    return undo_compiled


# architectures transformers' sdpa gets wrong or refuses (Gemma 2: it cannot soft-cap; GPT-OSS: not supported)
NO_SDPA = ("gemma2", "gpt-oss")


def impls_for(kind, impls, arch=""):
    """The implementations a setting of ``kind`` runs: the +compile ones on forward-like rows only; no sdpa for the
    architectures transformers runs without it."""
    return [i for i in impls if (not i.endswith(COMPILED) or kind in FORWARD_KINDS)
            and not (i.startswith("sdpa") and arch.startswith(NO_SDPA))]


def run_setting(setting, args, device, dtype, timer, models, bar):
    import torch

    name, arch, kind, batch, seq, lengths, side, new = setting
    if arch not in models:
        models.clear()  # one architecture on the GPU at a time
        if any(i.endswith(COMPILED) for i in args.impls):
            torch._dynamo.reset()  # the previous architecture's compiled graphs
        torch.manual_seed(args.seed)
        models[arch] = build(arch, dtype, device)
    model = models[arch]
    target = {"model": model}  # what the forward-like settings call (torch.compile(model) for +compile impls)
    gen = torch.Generator().manual_seed(args.seed)
    ids, mask = make_inputs(model.config.vocab_size, batch, seq, lengths, side, gen, device)
    positions = None
    if name.endswith(" packed"):  # documents back to back: no mask, positions restarting (lengths: the documents')
        positions = packed_positions(batch, seq, lengths, gen).to(device)
        mask = torch.ones_like(mask)
    fill = mask.float().mean().item()

    if kind == "generate":
        eos = model.config.eos_token_id

        # "... static": HF's static cache (every step's keys are the whole cache, with a 4D mask over it)
        cache = {"cache_implementation": "static"} if name.endswith(" static") else {}

        def fn():
            with torch.no_grad():
                return model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                                      do_sample=False, num_beams=1, pad_token_id=eos, **cache)
    elif kind == "seq2seq":
        dec = torch.randint(0, model.config.vocab_size - 1, (batch, new), generator=gen).to(device)

        def fn():
            with torch.no_grad():
                return target["model"](input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
    elif kind == "train":
        fn = _train_step(model, ids, mask, positions)
    else:
        def fn():
            with torch.no_grad():
                return target["model"](input_ids=ids, attention_mask=mask)

    impls, restore = impls_for(kind, args.impls, arch), (lambda: None)
    if kind == "train":
        if args.keep_dropout:
            name += " dropout"
        restore = _train_mode(model, args.keep_dropout)
    try:
        return _time_impls(name, kind, batch, seq, lengths, new, fill, fn, model, target, impls, args, timer, bar)
    finally:
        restore()


def _train_mode(model, keep_dropout=False):
    """Train mode, with every dropout at 0 unless ``keep_dropout`` (see the module docstring); returns the undo."""
    import torch

    drops = [(m, m.p) for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    if not keep_dropout:
        for m, _ in drops:
            m.p = 0.0
    model.train()

    def restore():
        for m, p in drops:
            m.p = p
        model.zero_grad(set_to_none=True)
        model.eval()

    return restore


def _train_step(model, ids, mask, positions=None):
    """One training step without the optimizer: clear the gradients, forward, loss, backward. ``positions``: a
    packed batch's position ids (no attention mask then, and no cache, as a padding-free collator's batches)."""
    labels = ids.masked_fill(mask == 0, -100) if hasattr(model, "lm_head") else None

    def fn():
        model.zero_grad(set_to_none=True)
        if positions is not None:
            loss = model(input_ids=ids, position_ids=positions, labels=labels, use_cache=False).loss
        elif labels is not None:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        else:
            loss = model(input_ids=ids, attention_mask=mask).last_hidden_state.float().square().mean()
        loss.backward()
        return loss.detach()

    return fn


def _time_impls(name, kind, batch, seq, lengths, new, fill, fn, model, target, impls, args, timer, bar):
    rows, first_tokens, first_loss = [], None, None
    for impl in impls:
        undo = set_impl(model, impl, target, args.compile_backend)
        try:
            out = fn()  # compile / warm up, and check generations agree
            if kind == "generate":  # the new tokens (an encoder-decoder returns the decoder's tokens only)
                toks = (out if model.config.is_encoder_decoder else out[:, seq:]).cpu()
                agree = None if first_tokens is None else (toks == first_tokens).float().mean().item()
                first_tokens = toks if first_tokens is None else first_tokens
            elif kind == "train" and args.keep_dropout:
                agree = None  # dropout draws other masks in every call: no loss to compare
            elif kind == "train":  # the same loss in every implementation (relative difference to the first)
                loss = out.float().item()
                first_loss = loss if first_loss is None else first_loss
                agree = abs(loss - first_loss) / max(abs(first_loss), 1e-30)
            else:
                agree = None
            # the host drifts: every setting's timings are taken in interleaved rounds below
            peak = timer.peak_mb(fn)
            dev = None if kind == "generate" else timer.device_ms(fn)
        finally:
            undo()
        row = {"setting": name, "kind": kind, "impl": impl, "batch": batch, "seq": seq, "key_lengths": lengths,
               "fill": round(fill, 3), "ms": None, "peak_mb": peak}
        if dev is not None:
            row["device_ms"] = dev
        if kind == "generate":
            row["new_tokens"] = new
            row["token_agreement_with_first_impl"] = agree
        if kind == "train":
            row["loss_rel_diff_vs_first_impl"] = agree
        rows.append(row)
        bar.update(1)
    # Round-robin over the impls (generate: one whole generate() each per round; forward: one do_bench each): slow
    # drifts of the host's speed (seen at +-25% between rounds on an H200 host) then hit every impl alike. Median
    # per impl.
    times = {r["impl"]: [] for r in rows}
    rounds = args.generate_reps if kind == "generate" else (args.rounds or (3 if timer.cuda else 1))
    for _ in range(rounds):
        for impl in times:
            undo = set_impl(model, impl, target, args.compile_backend)
            try:
                if kind == "generate":
                    times[impl].append(timer.once(fn))
                else:
                    times[impl].append(timer.bench(fn, cpu_reps=args.cpu_reps, rep_ms=150))
            finally:
                undo()
    for r in rows:
        r["ms"] = statistics.median(times[r["impl"]])
        r["ms_rounds"] = times[r["impl"]]
        if kind == "generate":
            r["tokens_per_s"] = batch * new / (r["ms"] / 1e3)
        if kind in ("encode", "train", "seq2seq"):
            r["sequences_per_s"] = batch / (r["ms"] / 1e3)
    by_impl = {r["impl"]: r for r in rows}
    for r in rows:
        for base in ("eager", "sdpa", "sdpa" + COMPILED):
            if base in by_impl:
                r[f"speedup_vs_{base}"] = by_impl[base]["ms"] / r["ms"]
                if r.get("device_ms") and by_impl[base].get("device_ms"):
                    r[f"speedup_vs_{base}_device"] = by_impl[base]["device_ms"] / r["device_ms"]
    return rows


def check_targets(rows):
    results = []
    idx = {(r["setting"], r["impl"]): r for r in rows}
    for (setting, impl, base), target in TARGETS.items():
        r = idx.get((setting, impl))
        if r is None or f"speedup_vs_{base}" not in r:
            continue
        got = r[f"speedup_vs_{base}"]
        results.append({"setting": setting, "impl": impl, "vs": base, "target": target, "speedup": got,
                        "met": got >= target, "speedup_device": r.get(f"speedup_vs_{base}_device")})
    return results


def plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["setting"] for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    idx = {(r["setting"], r["impl"]): r for r in rows}
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(names)), 4.8))
    width = 0.8 / len(impls)
    for j, impl in enumerate(impls):
        xs, ys, labels = [], [], []
        for i, n in enumerate(names):
            r = idx.get((n, impl))
            if r is None or "speedup_vs_eager" not in r:
                continue
            xs.append(i + (j - (len(impls) - 1) / 2) * width)
            ys.append(r["speedup_vs_eager"])
            labels.append(f"{r['ms']:.3g}")
        bars = ax.bar(xs, ys, width, label=impl)
        for b, lab in zip(bars, labels):
            ax.text(b.get_x() + b.get_width() / 2, b.get_height(), lab, ha="center", va="bottom", fontsize=6,
                    rotation=90)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("speedup over eager (bar labels: ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    _common.go_offline()
    _common.ensure_repo_on_path()
    from tqdm.auto import tqdm

    device = _common.resolve_device(args.device)
    if not device.startswith("cuda") and not args.tiny:
        print("note: speed.py is meant for a GPU; on a CPU the patched path is "
              f"{_common.patched_path(device)}", file=sys.stderr)
    dtype = _common.parse_dtype(args.dtype or ("fp16" if device.startswith("cuda") else "fp32"))
    out_dir = args.out or os.environ.get("OUT") or os.path.join(_common.EVALS_DIR, "results")
    json_path = args.json or os.path.join(out_dir, "speed.json")
    todo = settings(args.tiny, args.skip_medium)
    if args.only:
        keys = [k for k in args.only.split(",") if k]
        todo = [s for s in todo if any(k in s[0] for k in keys)]
        if not todo:
            sys.exit(f"error: --only {args.only!r} matches no setting")

    timer = Timer(device)
    info = _common.system_info()
    rows, models = [], {}
    t0 = time.time()
    bar = tqdm(total=sum(len(impls_for(s[2], args.impls, s[1])) for s in todo), desc="speed")
    for s in todo:
        rows.extend(run_setting(s, args, device, dtype, timer, models, bar))
        # Written after every setting so that a run cut short still leaves its numbers.
        _common.write_json(json_path, {"rows": rows, "system": info, "dtype": str(dtype), "device": device})
    bar.close()
    models.clear()
    targets = check_targets(rows) if not args.tiny else []

    headers = ["setting", "impl", "fill", "ms", "x eager", "x sdpa", "dev ms", "x eager dev", "x sdpa dev", "peak MB",
               "tok/s | seq/s"]
    table = [[r["setting"], r["impl"], f"{r['fill']:.2f}", r["ms"], r.get("speedup_vs_eager", ""),
              r.get("speedup_vs_sdpa", ""), r.get("device_ms", ""), r.get("speedup_vs_eager_device", ""),
              r.get("speedup_vs_sdpa_device", ""), "" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}",
              r.get("tokens_per_s", r.get("sequences_per_s", ""))] for r in rows]
    if any("speedup_vs_sdpa+compile" in r for r in rows):  # against the compiled sdpa model too
        headers.insert(6, "x sdpa+compile")
        for line, r in zip(table, rows):
            line.insert(6, r.get("speedup_vs_sdpa+compile", ""))
    gpu = info.get("gpu") or "CPU"
    title = (f"{gpu}, {str(dtype).replace('torch.', '')}; torch {info['torch']}, triton {info['triton']}, "
             f"transformers {info['transformers']}")
    print(title)
    print(_common.fmt_table(headers, table))
    if targets:
        print("targets from the issues:")
        print(_common.fmt_table(["setting", "mode", "vs", "target", "speedup", "met", "speedup, device time"],
                                [[t["setting"], t["impl"], t["vs"], t["target"], t["speedup"],
                                  "yes" if t["met"] else "NO",
                                  "" if t["speedup_device"] is None else t["speedup_device"]] for t in targets]))
    _common.write_json(json_path, {"rows": rows, "targets": targets, "system": info, "dtype": str(dtype),
                                   "device": device, "seconds": time.time() - t0})
    if not args.no_plot:
        try:
            png = os.path.splitext(json_path)[0] + ".png"
            plot(rows, png, title)
            print(f"wrote {json_path} and {png}")
        except ImportError:
            print(f"wrote {json_path} (no PNG: matplotlib is not installed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
