"""evals/sass_attention.py compiles the attention forward for sm_90 on this CPU (Triton's bundled ptxas) and counts
its instructions. Runs as a subprocess: the test session defines the kernels for the interpreter, which cannot
compile them. The check that matters: folding the scale into the exponent removes a multiply per score."""
import collections
import concurrent.futures
import importlib
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(tmp_path, *flags, config="64/64/4/2"):
    """The script's output; ``config`` None: the launcher's own setting for the flags' head dim."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cfg = ("--config", config) if config else ()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "evals", "sass_attention.py"), *cfg,
                           "--out", str(tmp_path), *flags], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _count(path, op):
    with open(path) as f:
        return len(re.findall(rf"\b{op}\b", f.read()))


def test_sass_of_the_forward_with_and_without_the_scale_folded(tmp_path):
    folded = _run(tmp_path / "fold")
    plain = _run(tmp_path / "plain", "--no-fold")
    for out in (folded, plain):
        assert re.search(r"registers \d+, stack \d+ B, shared \d+ B", out)
        assert re.search(r"loop 0x[0-9a-f]+-0x[0-9a-f]+: \d+ instructions", out)
    f_sass = tmp_path / "fold" / "attn_fwd_sm90_full_64_64_4_2_fold_merge.sass"
    p_sass = tmp_path / "plain" / "attn_fwd_sm90_full_64_64_4_2_merge.sass"
    assert _count(f_sass, "HGMMA") > 0  # Hopper's tensor-core instructions
    assert _count(f_sass, "FMUL") < _count(p_sass, "FMUL")
    assert _count(f_sass, "FFMA") > _count(p_sass, "FFMA")


def _loop_moves(out):
    """The ``in the loops:`` line's counts, ``{"R2UR": n, ...}`` (empty for none)."""
    line = re.search(r"in the loops: (.*)", out).group(1)
    return {} if line.startswith("no ") else {op: int(n) for op, n in re.findall(r"([\w.]+) (\d+)", line)}


def test_sass_of_the_bounded_4d_loop_is_as_uniform_as_the_unbounded(tmp_path):
    # the forward with a 4D mask's key bounds: bounds read by scalar loads keep the key loop's trip count provably
    # the same in every thread, so its warp-group MMAs need no more register-to-uniform moves, lane broadcasts or warp
    # syncs than the unbounded loop's (a vector load and a reduction put 25 R2UR, a SHFL.IDX and a WARPSYNC in it with
    # Triton 3.6)
    flags = ("--head-dim", "128", "--config", "128/64/8/3", "--aligned-lengths")
    plain = _loop_moves(_run(tmp_path / "plain", "--mask", "bool4d", *flags))
    bounded = _loop_moves(_run(tmp_path / "bounded", "--mask", "bool4d-bounds", *flags))
    for op in ("R2UR", "SHFL.IDX", "WARPSYNC"):
        assert bounded.get(op, 0) <= plain.get(op, 0), (op, bounded, plain)


def _loop_ops(folder, ops=("MUFU.EX2", "SHFL.BFLY")):
    """Per key loop of the kernel compiled into ``folder``, how many of each of ``ops`` it has (the script's own
    parse of the cubin's SASS; reading it compiles nothing)."""
    sys.path.insert(0, os.path.join(ROOT, "evals"))
    try:
        import sass_attention
    finally:
        sys.path.pop(0)
    info = sass_attention.analyse(str(next(folder.glob("*.cubin"))))
    return [{op: lp["ops"].get(op, 0) for op in ops} for lp in info["loops"]]


def test_sass_of_the_4d_bool_loop_is_close_to_the_2d_loop(tmp_path):
    # a bool 4D mask added as `where(mask, 0, -inf)` (an f32 tile, loaded before the product): the key loop stays
    # in the warp-group MMA's layout, with no more exponentials or butterfly shuffles (row reductions) than the 2D
    # path's loop. Applied as a bool `keep` (before 2026-12-05), Triton 3.6 and 3.9 also reduced the row maxima in
    # the mask's blocked layout: Triton 3.6 computed the exponentials twice (72 MUFU.EX2 in a 1126-instruction loop
    # against the 2D path's 34 in 684), Triton 3.9 spilled 400 B (388 SHFL.BFLY in a 1982-instruction loop); loaded
    # after the product, Triton 3.9 still did where the scale is not folded
    flags = ("--head-dim", "128", "--config", "128/64/8/3", "--aligned-lengths")
    for fold in ((), ("--no-fold",)):
        tag = "_nofold" if fold else ""
        _run(tmp_path / f"2d{tag}", *flags, *fold)
        limit = {op: max(c[op] for c in _loop_ops(tmp_path / f"2d{tag}")) for op in ("MUFU.EX2", "SHFL.BFLY")}
        for mask in ("bool4d", "bool4d-bounds"):
            out = _run(tmp_path / f"{mask}{tag}", "--mask", mask, *flags, *fold)
            if not fold:
                assert re.search(r"stack 0 B", out), (mask, out)
            counts = _loop_ops(tmp_path / f"{mask}{tag}")
            assert counts, (mask, fold, out)
            for c in counts:
                assert all(c[op] <= n for op, n in limit.items()), (mask, fold, counts, limit)


def test_sass_of_the_launchers_head_dim_128_setting_spills_nothing(tmp_path):
    # the forward's launch setting at head dim 128 (attention._fwd_config), causal or not: no stack on the 2D path
    # nor with a bool 4D mask, its bounds, or an unfolded scale. 128-row blocks of 32 keys on one warpgroup, the
    # fastest on BERT's shape, had 24-88 B of stack with a 4D mask on Triton 3.6 and 16-280 B on Triton 3.9
    for causal in ((), ("--causal",)):
        for mask, fold in (("2d", ()), ("bool4d", ()), ("bool4d-bounds", ()), ("bool4d", ("--no-fold",))):
            out = _run(tmp_path / f"{mask}{len(causal)}{len(fold)}", "--head-dim", "128", "--aligned-lengths",
                       "--mask", mask, *causal, *fold, config=None)
            assert re.search(r"registers \d+, stack 0 B", out), (mask, causal, fold, out[:300])


def test_sass_of_the_backward_at_head_dim_64_spills_nothing(tmp_path):
    # evals/sass_backward.py --aligned: the backward kernels as a real call specialises them (unit head-dim strides,
    # aligned strides and lengths), at the launcher's causal head-dim-64 settings, keep everything in registers
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = os.path.join(ROOT, "evals", "sass_backward.py")
    proc = subprocess.run([sys.executable, script, "--aligned", "--out", str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {m.group(1).strip(): int(m.group(2))
            for m in re.finditer(r"^(dkdv[^\n]*?|dq[^\n]*?)\s+registers \d+, stack (\d+) B", proc.stdout, re.M)}
    assert len(rows) == 6, proc.stdout
    assert all(stack == 0 for stack in rows.values()), rows
    bad = subprocess.run([sys.executable, script, "--dkdv", "32/64"], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "BLOCK_M/BLOCK_N/warps/stages" in bad.stderr


def _shared(out):
    return [int(n) for n in re.findall(r"shared (\d+) B", out)]


def test_head_dim_256_settings_fit_the_shared_memory_they_are_picked_by(tmp_path):
    # attention's tables of head dim 256 (and fp32 decode) settings pair each with the shared memory it needs, and
    # _fitting takes the first that fits the card: each figure must be at least what the kernels compile to on every
    # mask path (2D ranges, bool 4D with its bounds, additive 4D), or a card with exactly that much could not launch
    # it; within 16 KB of it (Triton 3.4, 3.6 and 3.9 differ by up to 8 KB), or a card that could would be refused;
    # and the tables run from the most to the least
    attn = importlib.import_module("hf_masked_softmax.attention")  # the package's name `attention` is the function

    tables = [attn._D256_FWD, attn._D256_DKDV, attn._D256_DQ, attn._D256_FWD_FP32, *attn._D256_BWD_FP32,
              *attn._DECODE_FP32.values()]
    for table in tables:
        needs = [need for _, need in table]
        assert needs == sorted(needs, reverse=True) and len(set(needs)) == len(needs), table
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    jobs = []  # (what to check, need, command): compiled two at a time (this machine's cores)
    forward = [(attn._D256_FWD, "fp16", 256), (attn._D256_FWD_FP32, "fp32", 256)]
    forward += [(table, "fp32", d) for d, table in attn._DECODE_FP32.items()]
    for table, dtype, d in forward:
        for cfg, need in table:
            setting = "/".join(map(str, cfg))
            for mask in ("2d", "bool4d-bounds", "add4d"):
                jobs.append(((dtype, d, cfg, "forward"), need,
                             [os.path.join(ROOT, "evals", "sass_attention.py"), "--config", setting, "--head-dim",
                              str(d), "--dtype", dtype, "--mask", mask, "--aligned-lengths", "--out",
                              str(tmp_path / f"{dtype}{d}{mask}{setting.replace('/', '_')}")]))
    pairs = [("fp16", *p) for p in zip(attn._D256_DKDV, attn._D256_DQ)]
    pairs += [("fp16", attn._D256_DKDV[-1], attn._D256_DQ[-1]), *(("fp32", *p) for p in zip(*attn._D256_BWD_FP32))]
    for dtype, (kv, kv_need), (dq, dq_need) in pairs:
        settings = ["/".join(map(str, kv)), "/".join(map(str, dq))]
        jobs.append(((dtype, 256, (kv, dq), "backward"), (kv_need, dq_need),
                     [os.path.join(ROOT, "evals", "sass_backward.py"), "--head-dim", "256", "--dtype", dtype,
                      "--aligned", "--dkdv", settings[0], "--dq", settings[1], "--out",
                      str(tmp_path / "bwd" / f"{dtype}_{'_'.join(settings)}")]))

    def compile_one(job):
        proc = subprocess.run([sys.executable, *job[2]], capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        outputs = list(pool.map(compile_one, jobs))
    shared = collections.defaultdict(list)  # (what, kernel) -> bytes on each mask path
    for (what, need, _), out in zip(jobs, outputs):
        if what[-1] == "forward":
            shared[what, "forward", need] += _shared(out)
        else:
            for kernel, kernel_need in zip(("dkdv", "dq"), need):
                shared[what, kernel, kernel_need] += [int(n) for n in re.findall(
                    rf"^{kernel},[^\n]*shared (\d+) B", out, re.M)]
    assert len(shared) == sum(len(table) for table, _, _ in forward) + 2 * len(pairs), list(shared)
    bad = [(what, kernel, need, got) for (what, kernel, need), got in shared.items()
           if not (len(got) == 3 and max(got) <= need <= max(got) + 16384)]
    assert not bad, bad


def test_shared_memory_script_reports_what_a_card_cannot_launch(tmp_path):
    # evals/shared_memory.py compiles the settings the launcher picks for a card's limit: head dim 256's fp16 decode
    # setting (16, 32, 4, 3) takes 73 KB, so it fits a 99 KB card and is flagged on a 70 KB one (exit status 1)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = os.path.join(ROOT, "evals", "shared_memory.py")
    base = [sys.executable, script, "--head-dims", "256", "--dtypes", "fp16", "--modes", "decode", "--no-backward",
            "--no-progress"]
    rows = {}
    for smem in (101376, 70000):
        path = tmp_path / f"{smem}.json"
        proc = subprocess.run([*base, "--smem", str(smem), "--json", str(path)], capture_output=True, text=True,
                              env=env, timeout=600)
        assert proc.returncode == (0 if smem == 101376 else 1), proc.stderr[-2000:]
        rows[smem] = json.loads(path.read_text())["rows"]
        assert ("NO" in proc.stdout) == (smem == 70000), proc.stdout
    for smem, got in rows.items():
        assert [(r["kernel"], r["setting"], r["fits"]) for r in got] == [("forward", [16, 32, 4, 3], smem > 80000)]
        assert 70000 < got[0]["shared"] <= 101376
    bad = subprocess.run([*base, "--dtypes", "fp8"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "--dtypes" in bad.stderr
