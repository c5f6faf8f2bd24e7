"""Compile the fused attention's backward kernels (and the forward and the split merge) for a GPU architecture on this
machine, no GPU needed, and print each one's registers, stack, shared memory, instruction count and loop sizes: a way
to compare two versions of the kernels (``--tree old_tree``) where no GPU time is left to time them.

Settings are GPT-2's causal backward (``dkdv`` 32x64, ``dq`` 64x32, 4 warps, 3 stages, D = 64, fp16; the launcher's
setting at D = 128 too, so ``--head-dim 128`` compiles what a Llama-style backward runs) with the 2D
padding mask (key ranges, scale folded) and with a 4D additive mask. Unlike ``sass_attention.py`` the launch is not
specialised for aligned strides, so the counts compare versions; they are not what a real call runs. ``--aligned``
specialises it as a real call is: head-dim strides equal to 1, the other tensor strides and the lengths multiples of
16 (1024 queries, say), the mask's strides left alone.

    python evals/sass_backward.py [--tree DIR] [--arch 90] [--head-dim 128|256] [--dtype fp32] [--aligned]
        [--dkdv 32/64/4/3] [--dq 64/32/4/3]
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

import _common  # the script's own folder (it imports nothing of the package)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    help="the checkout whose kernels to compile (default: this one)")
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (90 = Hopper)")
    ap.add_argument("--out", default=None, help="folder for the .cubin files (default $OUT or ./out)")
    ap.add_argument("--head-dim", type=int, choices=(16, 32, 64, 128, 256), default=64)
    ap.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16", help="the inputs' dtype")
    ap.add_argument("--dkdv", default="32/64/4/3", help="the dkdv kernel's BLOCK_M/BLOCK_N/warps/stages")
    ap.add_argument("--dq", default="64/32/4/3", help="the dq kernel's BLOCK_M/BLOCK_N/warps/stages")
    ap.add_argument("--aligned", action="store_true",
                    help="specialise the launch as a real call's: unit head-dim strides, other strides and the "
                         "lengths multiples of 16")
    args = ap.parse_args(argv)
    try:
        kv_cfg, q_cfg = (tuple(int(x) for x in c.split("/")) for c in (args.dkdv, args.dq))
    except ValueError:
        ap.error("--dkdv / --dq want BLOCK_M/BLOCK_N/warps/stages as integers")
    if len(kv_cfg) != 4 or len(q_cfg) != 4:
        ap.error("--dkdv / --dq want BLOCK_M/BLOCK_N/warps/stages")
    _common.check_compile_target(args.arch, "sass_backward.py")
    if not os.path.isdir(os.path.join(args.tree, "hf_masked_softmax")):
        sys.exit(f"--tree {args.tree!r}: no hf_masked_softmax package there")
    sys.path.insert(0, os.path.join(args.tree, "evals"))
    sys.path.insert(0, args.tree)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import sass_attention as sa

    attn = importlib.import_module("hf_masked_softmax.attention")
    out = args.out or os.environ.get("OUT") or "out"
    os.makedirs(out, exist_ok=True)
    fp32_ptrs = ("lse_ptr", "delta_ptr", "part_ptr", "part_lse_ptr", "sink_ptr")
    floats = ("qk_scale", "threshold", "keep_scale", "sm_scale", "softcap")

    def compile_one(kernel, consts, warps, stages, tag):
        fn = sa._jit_fn(kernel)
        consts = {n: c for n, c in consts.items() if n in fn.arg_names}  # (an older --tree's kernels: no SOFTCAP, no SINK)
        sig, attrs = {}, {}
        if args.aligned:  # a tensor's head-dim stride: stride_<tensor>d
            consts = dict(consts, **{n: 1 for n in fn.arg_names if n.startswith("stride_") and n.endswith("d")
                                     and n not in sa.MASK_STRIDES})
        for i, name in enumerate(fn.arg_names):
            if name in consts:
                sig[name] = "constexpr"
            elif name.endswith("_ptr"):
                sig[name] = "*fp32" if name in fp32_ptrs else sa.POINTERS.get(name, f"*{args.dtype}")
                attrs[(i,)] = [["tt.divisibility", 16]]
            else:
                sig[name] = "fp32" if name in floats else "i32"
                if args.aligned and (name.startswith("stride_") and name not in sa.MASK_STRIDES
                                     and name != "stride_lp" or name in sa.ALIGNED_LENGTHS):
                    attrs[(i,)] = [["tt.divisibility", 16]]
        compiled = triton.compile(ASTSource(fn, sig, consts, attrs=attrs), target=GPUTarget("cuda", args.arch, 32),
                                  options=dict(num_warps=warps, num_stages=stages, enable_fp_fusion=True))
        path = os.path.join(out, f"{tag}_sm{args.arch}.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        info = sa.analyse(path)
        loops = ", ".join(str(loop["instructions"]) for loop in info["loops"])
        # register-to-uniform moves, shuffles and warp syncs inside the loops: what a trip count the compiler cannot
        # prove uniform costs around warp-group MMAs
        uniform = sum(sa.loop_uniform_moves(info).values())
        print(f"{tag:22s} registers {info['registers']}, stack {info['stack']} B, shared {compiled.metadata.shared} B, "
              f"{info['instructions']} instructions, "
              f"loops of [{loops}], R2UR/SHFL.IDX/WARPSYNC in loops {uniform}", flush=True)

    aligned = ", aligned launch" if args.aligned else ""
    print(f"triton {triton.__version__}, sm_{args.arch}, {args.dtype}, head dim {args.head_dim}{aligned}, kernels of "
          f"{os.path.abspath(args.tree)}")
    d = args.head_dim
    common = dict(HEAD_D=d, BLOCK_D=d, HEAD_DV=d, BLOCK_DV=d, UPCAST=False,
                  DOT_PREC="ieee" if args.dtype == "fp32" else "tf32", WIDE=False, DROPOUT=False, WINDOWED=False,
                  SOFTCAP=False, CAUSAL=True, BH_FIRST=True)
    no_bounds = dict(B4D=False, B4D_PER_B=False, B4D_PER_H=False, B4D_SPAN=0)  # no 4D mask's key bounds
    for kind, fold, name in ((attn._K_RANGE, True, "2D mask"), (attn._K_ADD, False, "additive")):
        compile_one(attn._bwd_dkdv_kernel, dict(MASK_KIND=kind, BLOCK_M=kv_cfg[0], BLOCK_N=kv_cfg[1], FOLD=fold,
                                                **no_bounds, **common), *kv_cfg[2:], f"dkdv, {name}")
        compile_one(attn._bwd_dq_kernel, dict(MASK_KIND=kind, BLOCK_M=q_cfg[0], BLOCK_N=q_cfg[1], FOLD=fold,
                                              **no_bounds, **common), *q_cfg[2:], f"dq, {name}")
    bounds = dict(B4D=True, B4D_PER_B=True, B4D_PER_H=False)  # a [B, 1, Q, K] mask's bounds, 16 rows a chunk
    compile_one(attn._bwd_dkdv_kernel, dict(MASK_KIND=attn._K_BOOL, BLOCK_M=kv_cfg[0], BLOCK_N=kv_cfg[1], FOLD=True,
                                            B4D_SPAN=max(1, kv_cfg[0] // 16), **bounds, **common), *kv_cfg[2:],
                "dkdv, bool 4D bounds")
    compile_one(attn._bwd_dq_kernel, dict(MASK_KIND=attn._K_BOOL, BLOCK_M=q_cfg[0], BLOCK_N=q_cfg[1], FOLD=True,
                                          B4D_SPAN=max(1, q_cfg[0] // 16), **bounds, **common), *q_cfg[2:],
                "dq, bool 4D bounds")
    compile_one(attn._attn_fwd_kernel, dict(MASK_KIND=attn._K_RANGE, BLOCK_M=64, BLOCK_N=64, FOLD=True,
                                            MERGE_TAIL=True, STORE_LSE=True, PACK=False, SINK=False, D_TAIL=0,
                                            DV_TAIL=0, **no_bounds,
                                            **common), 4, 3,
                "forward, 2D mask")
    compile_one(attn._split_combine_kernel, dict(HEAD_D=d, BLOCK_D=d, BLOCK_S=4, STORE_LSE=True, SINK=False), 1, 1,
                "split merge")


if __name__ == "__main__":
    main()
