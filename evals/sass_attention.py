"""Compile the fused attention forward kernel for a GPU architecture on this machine (no GPU needed) and count its
machine instructions: registers, shared memory, and each loop's instruction mix.

Triton compiles to PTX and, with the ptxas it ships, to a cubin for any target; ``cuobjdump -sass`` (also shipped)
disassembles it. A loop is a backward branch. The launch is specialised as a real HF call is: pointers and strides
16-byte aligned, head-dim strides equal to 1.

    python evals/sass_attention.py [--causal] [--config 128/64/4/3] [--no-fold] [--no-merge] [--dropout] [--arch 90]
        [--out DIR]

The counts come from this machine's Triton, which may differ from a GPU machine's version.
"""
from __future__ import annotations

import argparse
import collections
import importlib
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from hf_masked_softmax._launch import OPTIONS, FastLaunch  # noqa: E402

attn = importlib.import_module("hf_masked_softmax.attention")
UNIT_STRIDES = ("stride_qd", "stride_kd", "stride_vd", "stride_od")
FLOATS = ("qk_scale", "threshold", "keep_scale", "softcap")
POINTERS = {"lse_ptr": "*fp32", "ranges_ptr": "*i32", "seed_ptr": "*i64", "sink_ptr": "*fp32"}
MASK_STRIDES = ("stride_mb", "stride_mh", "stride_mm", "stride_mk")
# lengths that Triton's launcher specialises as multiples of 16 when they are (1024 queries, 4096 keys)
ALIGNED_LENGTHS = ("Q_LEN", "K_LEN")


def _jit_fn(kernel):
    # the launch-shortcut wrapper forwards attribute lookups, so unwrap it by type, not by attribute
    return kernel.fn if isinstance(kernel, FastLaunch) else kernel


def compile_forward(causal, config, fold, merge, arch, dtype="fp16", head_d=64, maxnreg=None, dropout=False,
                    mask_kind=None, bounds=False, aligned_lengths=False, overrides=None):
    """``mask_kind``: the kernel's (default the 2D mask's key ranges); ``bounds`` (a 4D mask): its key bounds, one
    per sequence and 16 query rows, as ``attention._ForwardPlan._bounds`` sets them for a ``[B, 1, Q, K]`` mask.
    ``aligned_lengths``: the query and key lengths are multiples of 16, as the launcher then tells the compiler.
    ``overrides``: constexprs to set otherwise (``STORE_LSE=False``, say)."""
    block_m, block_n, warps, stages = config
    fn = _jit_fn(attn._attn_fwd_kernel)
    b4d = dict(B4D=False, B4D_PER_B=False, B4D_PER_H=False, B4D_SPAN=0)
    # the head dim's tiles as the launcher picks them (an older tree without the split: one tile)
    split = attn._split_d(head_d) if hasattr(attn, "_split_d") else (attn._block_d(head_d), 0)
    if mask_kind == attn._K_RANGE:
        mask_kind = None
    if bounds:
        b4d = dict(B4D=True, B4D_PER_B=True, B4D_PER_H=False, B4D_SPAN=max(1, block_m // 16))
    consts = dict(MASK_KIND=mask_kind or attn._K_RANGE, CAUSAL=causal, BH_FIRST=causal,
                  BLOCK_M=block_m, BLOCK_N=block_n, HEAD_D=head_d, BLOCK_D=split[0], D_TAIL=split[1],
                  HEAD_DV=head_d, BLOCK_DV=split[0], DV_TAIL=split[1], UPCAST=False,
                  DOT_PREC="ieee" if dtype == "fp32" else "tf32", WIDE=False, FOLD=fold, MERGE_TAIL=merge,
                  STORE_LSE=True, DROPOUT=dropout, WINDOWED=False, PACK=False, SOFTCAP=False, SINK=False, **b4d,
                  **{name: 1 for name in UNIT_STRIDES})
    consts.update(overrides or {})
    consts = {n: c for n, c in consts.items() if n in fn.arg_names}  # (an older tree's kernel: no SOFTCAP, no SINK)
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = POINTERS.get(name, f"*{dtype}")
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in FLOATS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            if (name.startswith("stride") and name not in MASK_STRIDES or name == "stride_mm" and mask_kind
                    or name in ALIGNED_LENGTHS and aligned_lengths):
                # (a 4D mask's row stride: its key length, a multiple of 16 in the shapes timed)
                attrs[(i,)] = [["tt.divisibility", 16]]
    options = dict(num_warps=warps, num_stages=stages, **OPTIONS)  # as the launches pass
    if maxnreg:
        options["maxnreg"] = maxnreg
    return triton.compile(ASTSource(fn, sig, consts, attrs=attrs), target=GPUTarget("cuda", arch, 32),
                          options=options)


def _tool(name):
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def analyse(cubin_path):
    """The cubin's registers and stack, its SASS, every instruction's opcode in order (``ops``) and each loop's
    instruction count, opcode counts (``ops``) and most frequent opcodes."""
    sass = subprocess.run([_tool("cuobjdump"), "-sass", cubin_path], capture_output=True, text=True,
                          check=True).stdout
    res = subprocess.run([_tool("cuobjdump"), "-res-usage", cubin_path], capture_output=True, text=True,
                         check=True).stdout
    regs = re.search(r"REG:(\d+)", res)
    stack = re.search(r"STACK:(\d+)", res)
    ins = []
    for line in sass.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2).strip()))
    loops = []
    for addr, text in ins:
        m = re.search(r"BRA.*?(0x[0-9a-f]+)", text)
        if m and int(m.group(1), 16) < addr:
            body = [t for a, t in ins if int(m.group(1), 16) <= a <= addr]
            ops = collections.Counter(_opcode(t) for t in body)
            loops.append(dict(start=int(m.group(1), 16), end=addr, instructions=len(body),
                              top=ops.most_common(8), ops=ops))
    return dict(registers=int(regs.group(1)) if regs else None, stack=int(stack.group(1)) if stack else None,
                instructions=len(ins), loops=loops, sass=sass, ops=[_opcode(t) for _, t in ins])


def loop_uniform_moves(info) -> collections.Counter:
    """In :func:`analyse`'s loops, the register-to-uniform moves (``R2UR``), lane broadcasts (``SHFL.IDX``) and warp
    syncs (``WARPSYNC``): what ptxas adds around warp-group MMAs whose loop it cannot prove the same in every thread
    (a trip count from a reduction's result, say)."""
    found = collections.Counter()
    for lp in info["loops"]:
        for op, n in lp["ops"].items():
            name = "SHFL.IDX" if op.startswith("SHFL.IDX") else op.split(".")[0]
            if name in ("R2UR", "WARPSYNC", "SHFL.IDX"):
                found[name] += n
    return found


def _opcode(text):
    """An instruction's opcode with its modifiers (``HGMMA.64x64x16.F32``), past a predicate (``@P0``)."""
    return text.split()[1] if text.startswith("@") else text.split()[0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--config", default=None, help="BLOCK_M/BLOCK_N/warps/stages (default: the launcher's)")
    ap.add_argument("--no-fold", action="store_true", help="scale by its own multiply (FOLD=False)")
    ap.add_argument("--no-merge", action="store_true", help="trailing key blocks in their own loop")
    ap.add_argument("--maxnreg", type=int, default=None)
    ap.add_argument("--dropout", action="store_true", help="the training forward with attention dropout (DROPOUT)")
    ap.add_argument("--mask", choices=["2d", "bool4d", "bool4d-bounds", "add4d"], default="2d",
                    help="the mask path: 2D key ranges (default), a 4D bool mask, one with its key bounds, or a 4D "
                         "additive mask (in the inputs' dtype, as HF builds it)")
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16", help="the inputs' dtype")
    ap.add_argument("--aligned-lengths", action="store_true",
                    help="query and key lengths multiples of 16 (the launcher specialises them: 1024, 4096, ...)")
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (90 = Hopper)")
    ap.add_argument("--out", default=None, help="folder for the .ptx / .cubin / .sass (default $OUT or ./out)")
    args = ap.parse_args(argv)
    _common.check_compile_target(args.arch, "sass_attention.py")
    if args.config:
        try:
            config = tuple(int(x) for x in args.config.split("/"))
        except ValueError:
            sys.exit(f"--config wants BLOCK_M/BLOCK_N/warps/stages as integers, got {args.config!r}")
        if len(config) != 4:
            sys.exit("--config wants BLOCK_M/BLOCK_N/warps/stages")
    else:
        import torch

        # the card's shared memory per program picks head dim 256's setting
        smem = _common.SMEM_BY_ARCH.get(args.arch, 0)
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
        config = attn._fwd_config(args.head_dim, 1024, dtype, False, args.causal, args.dropout, smem)
    kind = {"2d": attn._K_RANGE, "add4d": attn._K_ADD}.get(args.mask, attn._K_BOOL)
    fold = not args.no_fold and kind != attn._K_ADD  # an additive mask is added before the scale (attention._fold)
    kernel = compile_forward(args.causal, config, fold, not args.no_merge, args.arch, dtype=args.dtype,
                             head_d=args.head_dim, maxnreg=args.maxnreg, dropout=args.dropout, mask_kind=kind,
                             bounds=args.mask == "bool4d-bounds", aligned_lengths=args.aligned_lengths)
    out = args.out or os.environ.get("OUT") or "out"
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, f"attn_fwd_sm{args.arch}_{'causal' if args.causal else 'full'}_"
                             f"{'_'.join(map(str, config))}{'_fold' if fold else ''}"
                             f"{'' if args.no_merge else '_merge'}{'_dropout' if args.dropout else ''}"
                             f"{'' if args.mask == '2d' else '_' + args.mask}"
                             f"{'' if args.head_dim == 64 else f'_d{args.head_dim}'}"
                             f"{'_aligned' if args.aligned_lengths else ''}"
                             f"{'' if args.dtype == 'fp16' else '_' + args.dtype}")
    with open(stem + ".ptx", "w") as f:
        f.write(kernel.asm["ptx"])
    with open(stem + ".cubin", "wb") as f:
        f.write(kernel.asm["cubin"])
    info = analyse(stem + ".cubin")
    with open(stem + ".sass", "w") as f:
        f.write(info["sass"])
    print(f"triton {triton.__version__}, sm_{args.arch}, causal={args.causal}, config {config}, "
          f"{args.dtype}, fold={fold}, merge={not args.no_merge}, maxnreg={args.maxnreg}, dropout={args.dropout}, "
          f"mask {args.mask}, head dim {args.head_dim}, aligned lengths {args.aligned_lengths}")
    print(f"registers {info['registers']}, stack {info['stack']} B, shared {kernel.metadata.shared} B, "
          f"{info['instructions']} instructions")
    for lp in info["loops"]:
        print(f"  loop {lp['start']:#x}-{lp['end']:#x}: {lp['instructions']} instructions; "
              + ", ".join(f"{op} {n}" for op, n in lp["top"]))
    moves = loop_uniform_moves(info)
    print("  in the loops: " + (", ".join(f"{op} {n}" for op, n in sorted(moves.items())) or "no R2UR, SHFL.IDX or "
                                                                                          "WARPSYNC"))
    print(f"wrote {stem}.{{ptx,cubin,sass}}")
    return info


if __name__ == "__main__":
    main()
