"""Run the GPU tests under compute-sanitizer (memcheck, and optionally racecheck/initcheck) and report the errors.

    python evals/memcheck.py                       # memcheck over the kernel test files, JSON to evals/results/
    python evals/memcheck.py --tool initcheck --tests tests/test_bad_inputs.py

PyTorch's caching allocator hides out-of-bounds accesses that land inside a cached block, so the tests run with
``PYTORCH_NO_CUDA_MEMORY_CACHING=1``: every tensor is its own allocation and a stray read or write past it is caught.
Tests marked as huge (more than 2**31 elements; minutes under the sanitizer) are deselected unless ``--huge``.
CUDA-graph capture (the compiled static-cache and graph-capture tests) needs the caching allocator: pass
``--caching-allocator`` for those (out-of-bounds accesses inside a cached block may then go unseen).
Exit status: 0 when the sanitizer reports 0 errors and pytest passed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

DEFAULT_TESTS = ["tests/test_masked_softmax.py", "tests/test_attention.py", "tests/test_bad_inputs.py",
                 "tests/test_properties.py", "tests/test_no_copies.py"]
HUGE = "over_2_pow_31 or 262144"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tool", default="memcheck", choices=["memcheck", "racecheck", "initcheck", "synccheck"])
    parser.add_argument("--tests", nargs="+", default=DEFAULT_TESTS)
    parser.add_argument("-k", default=None, help="pytest -k expression (added to the huge-test deselection)")
    parser.add_argument("--huge", action="store_true", help="include the > 2**31-element and K=262144 tests")
    parser.add_argument("--sanitizer", default=shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer")
    parser.add_argument("--caching-allocator", action="store_true",
                        help="keep PyTorch's caching allocator (CUDA-graph capture needs it)")
    parser.add_argument("--out", default="evals/results/memcheck.json", help="the JSON file to write")
    args = parser.parse_args(argv)
    if os.path.isdir(args.out):
        parser.error(f"--out {args.out!r} is a folder; give the JSON file's path")

    if not os.path.exists(args.sanitizer):
        print(f"compute-sanitizer not found at {args.sanitizer}; pass --sanitizer PATH", file=sys.stderr)
        return 2
    expr = [] if args.huge else [f"not ({HUGE})"]
    if args.k:
        expr.append(f"({args.k})")
    cmd = [args.sanitizer, f"--tool={args.tool}", "--target-processes=all", "--print-limit=50",
           sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *args.tests]
    if expr:
        cmd += ["-k", " and ".join(expr)]
    env = dict(os.environ)
    if not args.caching_allocator:
        env["PYTORCH_NO_CUDA_MEMORY_CACHING"] = "1"
    print("running:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    elapsed = time.perf_counter() - t0
    sys.stdout.write(proc.stdout[-20000:])
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    log_path = os.path.splitext(args.out)[0] + ".log"
    with open(log_path, "w") as f:
        f.write(proc.stdout)
    summaries = [int(n) for n in re.findall(r"ERROR SUMMARY: (\d+) error", proc.stdout)]
    errors = sum(summaries)
    passed = re.findall(r"(\d+) passed", proc.stdout)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, flags=re.M)
    result = dict(tool=args.tool, command=" ".join(cmd), seconds=round(elapsed, 1), pytest_returncode=proc.returncode,
                  sanitizer_errors=errors, error_summaries=summaries, passed=int(passed[-1]) if passed else 0,
                  failed_tests=failed, caching_allocator=args.caching_allocator,
                  first_errors=re.findall(r"=+ (?:Invalid|Uninitialized|Race|Barrier).*\n.*\n.*", proc.stdout)[:20],
                  log=log_path)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\n{args.tool}: {errors} errors over {result['passed']} passing tests ({len(failed)} failing: {failed}) "
          f"in {elapsed:.0f} s (pytest exit {proc.returncode}); written to {args.out}")
    if not summaries:
        print("no ERROR SUMMARY line found: did the sanitizer run?", file=sys.stderr)
        return 1
    return 0 if errors == 0 and proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
