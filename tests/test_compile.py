"""torch.compile and the custom operators of hf_masked_softmax/ops.py.

* the operators pass ``torch.library.opcheck`` (schema, fake implementation, autograd registration, AOT dispatch);
* ``masked_softmax`` and ``attention`` compile with ``fullgraph=True`` (a graph break would raise) for every mask
  form, forward and backward, and give the eager results;
* ``torch._dynamo.explain`` counts 0 graph breaks.

CPU runs use ``backend="aot_eager"`` (dynamo + AOT autograd with the fake implementations, no code generation:
inductor's C++ compile of every graph would cost minutes on the 2-core CI machine); one test uses inductor.
"""
import importlib
import math

import pytest
import torch

from hf_masked_softmax import attention, masked_softmax, ops
from hf_masked_softmax.masks import prepare_mask

BACKEND = "aot_eager"


def _mask(form, B, H, Q, K, device):
    g = torch.Generator().manual_seed(1)
    if form == "none":
        return None
    if form == "pad2d":
        m = torch.ones(B, K, dtype=torch.bool)
        m[0, : K // 3] = False  # left padding
        m[-1, K - 2:] = False  # right padding
        return m.to(device)
    if form == "bool4d":
        return (torch.rand(B, 1, Q, K, generator=g) < 0.7).to(device)
    add = torch.randn(1, H, 1, K, generator=g)
    add[..., :2] = torch.finfo(torch.float32).min
    return add.to(device)


FORMS = ["none", "pad2d", "bool4d", "add4d"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ----------------------------------------------------------------------------------------------------------------------
# The operators themselves
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["pad2d", "add4d"])
def test_opcheck_masked_softmax(form, device):
    B, H, Q, K = 2, 2, 3, 11
    scores = torch.randn(B, H, K, Q, device=device).transpose(2, 3).requires_grad_(True)
    mask = _mask(form, B, H, Q, K, device)
    spec = prepare_mask(mask, (B, H, Q, K), scores.device)
    torch.library.opcheck(ops.masked_softmax_op, (scores, mask, spec.kind, spec.threshold, True, 0.5, 8192, 4096))
    y = ops.masked_softmax_op(scores, mask, spec.kind, spec.threshold, True, 0.5, 8192, 4096).detach()
    torch.library.opcheck(ops.masked_softmax_backward_op,
                          (y, torch.randn_like(y), mask, spec.kind, spec.threshold, True, 0.5, 8192, 4096))


@pytest.mark.parametrize("form", ["pad2d", "bool4d"])
def test_opcheck_attention(form, device):
    B, H, Q, K, D = 2, 2, 5, 20, 16
    q = torch.randn(B, Q, H, D, device=device).transpose(1, 2).requires_grad_(True)
    k = torch.randn(B, 1, K, D, device=device).requires_grad_(True)
    v = torch.randn(B, 1, K, D, device=device).requires_grad_(True)
    mask = _mask(form, B, H, Q, K, device)
    spec = prepare_mask(mask, (B, H, Q, K), q.device)
    args = (q, k, v, mask, spec.kind, spec.threshold, True, 0.25)
    torch.library.opcheck(ops.attention_op, args)
    out, lse = ops.attention_op(*args)
    torch.library.opcheck(ops.attention_backward_op,
                          (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(), mask,
                           spec.kind, spec.threshold, True, 0.25))


@pytest.mark.parametrize("form", ["none", "pad2d", "add4d"])
def test_opcheck_attention_inference(form, device):
    B, H, Q, K, D = 2, 2, 5, 20, 16
    q = torch.randn(B, Q, H, D, device=device).transpose(1, 2)
    k, v = (torch.randn(B, 1, K, D, device=device) for _ in range(2))
    mask = _mask(form, B, H, Q, K, device)
    spec = prepare_mask(mask, (B, H, Q, K), q.device)
    args = (q, k, v, mask, spec.kind, spec.threshold, True, 0.25)
    torch.library.opcheck(ops.attention_inference_op, args)
    out = ops.attention_inference_op(*args)
    full, _ = ops.attention_op(*args)
    assert torch.equal(out, full) and out.stride() == full.stride()  # the same forward, without the lse


def test_compiled_inference_calls_the_operator_without_the_lse(device):
    # under torch.compile, a graph that records no autograd calls attention_inference (no log-sum-exp written; on an
    # H100 / H200 the Hopper kernel can take it); with gradients wanted, attention_forward as before
    B, H, Q, K, D = 2, 2, 5, 9, 16
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, Q, D, generator=g).to(device)
    k, v = (torch.randn(B, H, K, D, generator=g).to(device) for _ in range(2))
    mask = _mask("pad2d", B, H, Q, K, device)
    seen = []

    def backend(gm, example_inputs):
        seen.append({str(n.target) for n in gm.graph.nodes if n.op == "call_function"})
        return gm

    compiled = torch.compile(lambda q, k, v, m: attention(q, k, v, m), backend=backend, fullgraph=True)
    with torch.no_grad():
        out = compiled(q, k, v, mask)
    assert any("attention_inference" in t for t in seen[-1]), seen
    assert not any("attention_forward" in t for t in seen[-1]), seen
    assert torch.equal(out, attention(q, k, v, mask))
    qg = q.clone().requires_grad_(True)
    out_g = compiled(qg, k, v, mask)
    assert any("attention_forward" in t for t in seen[-1]), seen
    assert torch.equal(out_g.detach(), out)
    out_g.sum().backward()
    assert qg.grad is not None and torch.isfinite(qg.grad).all()


def test_ops_are_registered_under_the_namespace():
    for name in ("masked_softmax", "masked_softmax_backward", "attention_forward", "attention_backward",
                 "attention_inference"):
        assert hasattr(torch.ops.hf_masked_softmax, name)


def test_fake_attention_output_has_the_kernel_layout(device):
    # The fake implementation must promise the strides the kernel really returns ([B, Q, H, D] memory), or compiled
    # code that relies on them (a free transpose(1, 2).contiguous()) would read the wrong elements.
    q, k, v = torch.randn(2, 3, 5, 16, device=device), torch.randn(2, 3, 7, 16, device=device), \
        torch.randn(2, 3, 7, 16, device=device)
    real, _ = ops.attention_op(q, k, v, None, 0, 0.0, False, 0.25)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fq, fk, fv = (mode.from_tensor(t) for t in (q, k, v))
        fake, fake_lse = ops.attention_op(fq, fk, fv, None, 0, 0.0, False, 0.25)
    assert fake.shape == real.shape and fake.stride() == real.stride()
    assert fake_lse.shape == (2, 2, 3, 5) and fake_lse.dtype == torch.float32  # lse and its rounding residual


# ----------------------------------------------------------------------------------------------------------------------
# torch.compile of the public functions
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_compiled_masked_softmax_fullgraph_forward_backward(form, device):
    B, H, Q, K = 2, 2, 4, 13
    mask = _mask(form, B, H, Q, K, device)
    causal = form in ("none", "pad2d")

    def fn(s, m):
        return masked_softmax(s * 1.0, m, causal=causal, scale=0.3)

    compiled = torch.compile(fn, backend=BACKEND, fullgraph=True)
    base = torch.randn(B, H, Q, K, device=device)
    s1, s2 = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
    dy = torch.randn(B, H, Q, K, device=device)
    out_c = compiled(s1, mask)
    out_e = fn(s2, mask)
    torch.testing.assert_close(out_c, out_e, atol=0, rtol=0)
    (g_c,) = torch.autograd.grad(out_c, s1, dy)
    (g_e,) = torch.autograd.grad(out_e, s2, dy)
    torch.testing.assert_close(g_c, g_e, atol=0, rtol=0)


@pytest.mark.parametrize("form", FORMS)
def test_compiled_attention_fullgraph_forward_backward(form, device):
    B, H, Hkv, Q, K, D = 2, 4, 2, 5, 18, 16
    mask = _mask(form, B, H, Q, K, device)
    causal = form in ("none", "pad2d")

    def fn(q, k, v, m):
        # HF's layout round trip: [B, T, H, D] projections in, [B, Q, H, D] out
        out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), m, causal=causal)
        return out.transpose(1, 2).reshape(B, Q, H * D)

    compiled = torch.compile(fn, backend=BACKEND, fullgraph=True)
    g = torch.Generator().manual_seed(0)
    qkv = [torch.randn(B, T, h, D, generator=g).to(device) for T, h in ((Q, H), (K, Hkv), (K, Hkv))]
    a = [t.clone().requires_grad_(True) for t in qkv]
    b = [t.clone().requires_grad_(True) for t in qkv]
    out_c, out_e = compiled(*a, mask), fn(*b, mask)
    torch.testing.assert_close(out_c, out_e, atol=0, rtol=0)
    do = torch.randn(out_c.shape, generator=g).to(device)
    for gc, ge in zip(torch.autograd.grad(out_c, a, do), torch.autograd.grad(out_e, b, do)):
        torch.testing.assert_close(gc, ge, atol=0, rtol=0)


@pytest.mark.parametrize("value_dim", [8, 40])
def test_values_of_their_own_head_dim_compile_and_pass_opcheck(device, value_dim):
    # multi-head latent attention's values (the HF backend's private entry): the operators' fake implementations give
    # the output [B, H, Q, Dv] in the kernel's layout (opcheck compares them with the real ones), and a compiled call
    # equals the eager one, forward and gradients, with no graph break
    B, H, Hkv, Q, K, D = 2, 4, 2, 5, 18, 16
    g = torch.Generator().manual_seed(value_dim)
    q = torch.randn(B, H, Q, D, generator=g).to(device)
    k = torch.randn(B, Hkv, K, D, generator=g).to(device)
    v = torch.randn(B, Hkv, K, value_dim, generator=g).to(device)
    mask = _mask("pad2d", B, H, Q, K, device)
    spec = prepare_mask(mask, (B, H, Q, K), q.device)
    args = (q, k, v, mask, spec.kind, spec.threshold, True, 0.25)
    torch.library.opcheck(ops.attention_op, tuple(t.requires_grad_(True) if isinstance(t, torch.Tensor) and
                                                  t.is_floating_point() else t for t in args))
    torch.library.opcheck(ops.attention_inference_op, tuple(t.detach() if isinstance(t, torch.Tensor) else t
                                                            for t in args))

    def fn(q, k, v, m):
        return ops.attention(q, k, v, m, causal=True, _any_value_dim=True)

    compiled = torch.compile(fn, backend=BACKEND, fullgraph=True)
    a = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    b = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out_c, out_e = compiled(*a, mask), fn(*b, mask)
    assert out_c.shape == (B, H, Q, value_dim)
    torch.testing.assert_close(out_c, out_e, atol=0, rtol=0)
    do = torch.randn(out_c.shape, generator=g).to(device)
    for gc, ge in zip(torch.autograd.grad(out_c, a, do), torch.autograd.grad(out_e, b, do)):
        torch.testing.assert_close(gc, ge, atol=0, rtol=0)


def test_explain_counts_zero_graph_breaks(device):
    q = torch.randn(2, 4, 6, 16, device=device)
    kv = torch.randn(2, 2, 6, 16, device=device)
    pad = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], dtype=torch.bool, device=device)

    def block(q, k, v, m):
        s = torch.matmul(q, k.repeat_interleave(2, dim=1).transpose(-1, -2))
        p = masked_softmax(s, m, causal=True, scale=0.25)
        return attention(q, k, v, m, causal=True) + torch.matmul(p, v.repeat_interleave(2, dim=1))

    explanation = torch._dynamo.explain(block)(q, kv, kv, pad)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_dynamic_shapes_one_graph_for_new_lengths(device):
    counts = {"frames": 0}

    def backend(gm, example_inputs):
        counts["frames"] += 1
        return gm.forward

    compiled = torch.compile(lambda q, k, v, m: attention(q, k, v, m, causal=True), backend=backend,
                             fullgraph=True, dynamic=True)
    for K in (9, 14, 23):
        q, k, v = torch.randn(1, 2, 3, 16, device=device), torch.randn(1, 2, K, 16, device=device), \
            torch.randn(1, 2, K, 16, device=device)
        m = torch.ones(1, K, dtype=torch.bool, device=device)
        m[0, :2] = False
        torch.testing.assert_close(compiled(q, k, v, m), attention(q, k, v, m, causal=True), atol=0, rtol=0)
    assert counts["frames"] == 1  # symbolic K: the fake implementations serve every length


def test_inductor_masked_softmax(device):
    # One real inductor compile (C++ codegen for the surrounding ops on CPU): the custom op stays an opaque call.
    def fn(s, m):
        return masked_softmax(s.float() * 2.0, m, causal=True, scale=0.5).sum(-1)

    s = torch.randn(2, 2, 3, 9, device=device)
    m = torch.tensor([[1] * 9, [0, 0, 0] + [1] * 6], device=device)
    torch.testing.assert_close(torch.compile(fn, fullgraph=True)(s, m), fn(s, m))


# ----------------------------------------------------------------------------------------------------------------------
# A patched Hugging Face model under torch.compile
# ----------------------------------------------------------------------------------------------------------------------
def _tiny_gpt2(device, seed=0):
    from patch_helpers import gpt2_config
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(gpt2_config()).to(device).eval()


@pytest.mark.parametrize("mode", ["fused", "softmax"])
def test_patched_gpt2_forward_has_no_graph_break(mode, device):
    from patch_helpers import padded_batch

    import hf_masked_softmax as hms

    model = _tiny_gpt2(device)
    ids, mask = padded_batch(device, side="left")
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        with hms.patched(model, mode=mode):
            explanation = torch._dynamo.explain(model)(input_ids=ids, attention_mask=mask)
            compiled = torch.compile(model, backend=BACKEND, fullgraph=True)
            out = compiled(input_ids=ids, attention_mask=mask).logits
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    op = "hf_masked_softmax.attention" if mode == "fused" else "hf_masked_softmax.masked_softmax"
    assert op in explanation.graphs[0].code  # the kernels are in the graph, as custom-op nodes
    valid = mask.bool()
    torch.testing.assert_close(out[valid], ref[valid], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type, mode", [("gpt2", "auto"), ("bert", "softmax")])
def test_torch_export_of_a_patched_model_with_dynamic_shapes(model_type, mode, device):
    # torch.export (AOTInductor, ExecuTorch and the like start from it): one exported program, batch and length
    # dynamic, with the kernels as custom-operator nodes, equals eager on a batch of another shape and padding
    from patch_helpers import bert_config, padded_batch
    from transformers import BertModel

    import hf_masked_softmax as hms

    side = "left" if model_type == "gpt2" else "right"
    if model_type == "gpt2":
        model = _tiny_gpt2(device)
    else:
        torch.manual_seed(0)
        model = BertModel(bert_config()).to(device).eval()
    ids, mask = padded_batch(device, side=side)
    batch, length = torch.export.Dim("batch", max=16), torch.export.Dim("length", max=32)
    kwargs = dict(input_ids=ids, attention_mask=mask, use_cache=False)
    dims = dict(input_ids={0: batch, 1: length}, attention_mask={0: batch, 1: length}, use_cache=None)
    with hms.patched(model, mode=mode):
        program = torch.export.export(model, (), kwargs, dynamic_shapes=dims)
    ops_in_graph = {str(node.target) for node in program.graph.nodes if "hf_masked_softmax" in str(node.target)}
    expected = "attention_forward" if mode == "auto" else "masked_softmax"
    assert any(expected in op for op in ops_in_graph), ops_in_graph
    assert model.config._attn_implementation == "eager"  # unpatched again: the reference below is HF's eager

    ids2, mask2 = padded_batch(device, lengths=(9, 4), total=9, side=side, seed=1)
    kwargs2 = dict(input_ids=ids2, attention_mask=mask2, use_cache=False)
    with torch.no_grad():
        out = program.module()(**kwargs2)
        ref = model(**kwargs2)
    key = "logits" if model_type == "gpt2" else "last_hidden_state"
    valid = mask2.bool()
    torch.testing.assert_close(out[key][valid], ref[key][valid], atol=1e-5, rtol=1e-5)


def test_patched_gpt2_compiled_training_step_matches_eager(device):
    from patch_helpers import padded_batch

    import hf_masked_softmax as hms

    ids, mask = padded_batch(device, side="right")
    grads = []
    for compile_it in (False, True):
        model = _tiny_gpt2(device, seed=3)
        hms.patch_model(model, mode="fused")

        def step(ids, mask):
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))

        fn = torch.compile(step, backend=BACKEND, fullgraph=True) if compile_it else step
        fn(ids, mask).backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_patched_gpt2_static_cache_compiled_generate_equals_eager(device):
    # generate() compiles the decoding step when the cache is static (on CUDA by default; on CPU when asked to).
    # fullgraph=True turns any graph break into an error.
    from patch_helpers import padded_batch
    from torch._dynamo.utils import counters
    from transformers.generation.configuration_utils import CompileConfig

    import hf_masked_softmax as hms

    model = _tiny_gpt2(device, seed=2)
    ids, mask = padded_batch(device, lengths=(8, 4), total=8, side="left", seed=2)

    def gen(compile_config=None):
        return model.generate(ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                              cache_implementation="static", compile_config=compile_config)

    eager = gen()
    hms.patch_model(model)
    config = CompileConfig(fullgraph=True, backend=BACKEND, mode=None) if device == "cpu" else CompileConfig(
        fullgraph=True)
    config._compile_all_devices = True
    counters.clear()
    compiled = gen(config)
    assert hasattr(model, "_compiled_call")  # the decoding steps really ran compiled
    assert counters["stats"]["unique_graphs"] >= 1
    assert not counters["graph_break"]
    assert torch.equal(compiled, eager)


# ----------------------------------------------------------------------------------------------------------------------
# GPU: inductor's default static-cache compile (CUDA graphs) and a hand-captured decode step
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_gpu_static_cache_generate_default_compile_equals_eager():
    # On CUDA, generate() auto-compiles static-cache decoding with inductor, mode="reduce-overhead" (CUDA graphs).
    from patch_helpers import padded_batch

    import hf_masked_softmax as hms

    model = _tiny_gpt2("cuda", seed=4)
    ids, mask = padded_batch("cuda", lengths=(8, 5, 2), total=8, side="left", seed=4)

    def gen():
        return model.generate(ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                              cache_implementation="static")

    eager = gen()
    hms.patch_model(model)
    assert torch.equal(gen(), eager)
    assert hasattr(model, "_compiled_call")


@pytest.mark.gpu
def test_gpu_static_cache_generate_compiled_without_cuda_graphs_equals_eager():
    # inductor without CUDA graphs: the compiled decode step as compute-sanitizer can run it (CUDA-graph trees refuse
    # to run without the caching allocator, which the sanitizer needs off to see overruns)
    from patch_helpers import padded_batch
    from torch._dynamo.utils import counters
    from transformers.generation.configuration_utils import CompileConfig

    import hf_masked_softmax as hms

    model = _tiny_gpt2("cuda", seed=5)
    ids, mask = padded_batch("cuda", lengths=(8, 3, 6), total=8, side="left", seed=5)

    def gen(**kwargs):
        return model.generate(ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                              cache_implementation="static", **kwargs)

    eager = gen(disable_compile=True)  # on CUDA a static cache is compiled with CUDA graphs unless told not to
    hms.patch_model(model)
    counters.clear()
    compiled = gen(compile_config=CompileConfig(fullgraph=True, mode=None, options={"triton.cudagraphs": False}))
    assert hasattr(model, "_compiled_call")
    assert counters["stats"]["unique_graphs"] >= 1
    assert not counters["graph_break"]
    assert torch.equal(compiled, eager)


@pytest.mark.gpu
@pytest.mark.parametrize("mask_form", ["pad2d", "bool4d"])
def test_gpu_cuda_graph_capture_of_decode_attention(mask_form):
    # A decode step (1 query, a 300-key cache) captured in a CUDA graph and replayed on new queries and cache contents.
    B, H, K, D = 3, 4, 300, 64
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, H, 1, D, device="cuda", dtype=torch.float16, generator=g)
    k = torch.randn(B, H, K, D, device="cuda", dtype=torch.float16, generator=g)
    v = torch.randn(B, H, K, D, device="cuda", dtype=torch.float16, generator=g)
    pad = torch.ones(B, K, dtype=torch.bool, device="cuda")
    pad[1, :100] = False
    pad[2, :299] = False
    mask = pad if mask_form == "pad2d" else pad[:, None, None, :].clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up (Triton compiles) outside the capture
        attention(q, k, v, mask, causal=True)
        masked_softmax(torch.matmul(q, k.transpose(-1, -2)), mask, causal=True)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = attention(q, k, v, mask, causal=True)
        probs = masked_softmax(torch.matmul(q, k.transpose(-1, -2)), mask, causal=True, scale=D ** -0.5)
    for step in range(3):
        q.copy_(torch.randn(q.shape, device="cuda", dtype=q.dtype, generator=g))
        k[:, :, -1].normal_(generator=g)
        if step == 1:  # the padding changes in place between replays: the captured graph must see it
            mask[0, ..., : 40] = False
        graph.replay()
        torch.cuda.synchronize()
        ref_out = attention(q, k, v, mask, causal=True)
        ref_probs = masked_softmax(torch.matmul(q, k.transpose(-1, -2)), mask, causal=True, scale=D ** -0.5)
        torch.testing.assert_close(out, ref_out, atol=0, rtol=0)
        torch.testing.assert_close(probs, ref_probs, atol=0, rtol=0)
        assert torch.all(probs[2, :, :, :299] == 0)
        assert step < 1 or torch.all(probs[0, :, :, :40] == 0)


def test_eager_calls_skip_the_dispatcher_with_and_without_autograd(monkeypatch, device):
    # eager calls go straight to the launchers (inference) or through a plain autograd.Function (training): the
    # dispatcher's host cost is larger than small kernels. The results and gradients equal the operators'. (On the
    # device the kernels run on: CUDA, or the CPU under the interpreter.)
    from hf_masked_softmax import attention, masked_softmax

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 2, 5, 9, generator=g).to(device)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :3] = 0
    mask = mask.to(device)
    q = torch.randn(2, 2, 5, 16, generator=g).to(device)
    k, v = (torch.randn(2, 2, 9, 16, generator=g).to(device) for _ in range(2))
    dy = torch.randn(2, 2, 5, 9, generator=g).to(device)
    do = torch.randn(2, 2, 5, 16, generator=g).to(device)
    spec = prepare_mask(mask, (2, 2, 5, 9), scores.device)

    x = scores.clone().requires_grad_(True)
    y_op = ops.masked_softmax_op(x, mask, spec.kind, spec.threshold, True, 1.0, 8192, 2048)
    (g_op,) = torch.autograd.grad(y_op, x, dy)
    qq = q.clone().requires_grad_(True)
    o_op, _ = ops.attention_op(qq, k, v, mask, spec.kind, spec.threshold, True, 0.25)
    (gq_op,) = torch.autograd.grad(o_op, qq, do)

    def refuse(*args, **kwargs):
        raise AssertionError("the custom operator was called")

    monkeypatch.setattr(ops, "masked_softmax_op", refuse)
    monkeypatch.setattr(ops, "attention_op", refuse)
    assert ops.call_path(scores) == "direct"
    assert torch.equal(masked_softmax(scores, mask, causal=True), y_op.detach())
    assert torch.equal(attention(q, k, v, mask, causal=True), o_op.detach())
    assert ops.call_path(x) == "function"
    y = masked_softmax(x, mask, causal=True)
    assert torch.equal(y.detach(), y_op.detach())
    assert torch.equal(torch.autograd.grad(y, x, dy)[0], g_op)
    o = attention(qq, k, v, mask, causal=True)
    assert torch.equal(o.detach(), o_op.detach())
    assert torch.equal(torch.autograd.grad(o, qq, do)[0], gq_op)
    with torch.no_grad():
        assert ops.call_path(x) == "direct"


def test_mask_function_with_a_traced_cache_position_never_guards_on_it():
    # A static cache under torch.compile hands the mask function its cache position as a tensor. A guard on its value
    # (is the last query the last key?) either fails fullgraph compilation (torch 2.11: a data-dependent guard) or
    # recompiles for every position. The compiled mask function must be one graph for every position and build the
    # mask HF's sdpa_mask builds.
    from torch._dynamo.testing import CompileCounter
    from transformers import masking_utils

    from hf_masked_softmax import hf

    pad = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1], [1] * 10]).bool()

    def masks(position):
        return hf._mask_function(2, 1, 10, q_offset=position, kv_offset=0, attention_mask=pad)

    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(masks, fullgraph=True, backend=counter, dynamic=True)
    for pos in (3, 9, 6):
        got = compiled(torch.tensor(pos))
        want = masking_utils.sdpa_mask(batch_size=2, q_length=1, kv_length=10, q_offset=torch.tensor(pos),
                                       kv_offset=0, attention_mask=pad, allow_is_causal_skip=False)
        if got.dim() == 2:  # the compact form is right where the last query is the last key (bottom-right causal)
            got = got[:, None, None, :] & (torch.arange(10) <= pos)
        assert torch.equal(got, want)
        assert torch.equal(got[:, 0, 0], pad & (torch.arange(10) <= pos))  # key j seen iff j <= pos and not padding
    assert counter.frame_count == 1


def _refuse(*args, **kwargs):
    raise AssertionError("a kernel launcher was called")


@pytest.mark.parametrize("form", FORMS)
def test_operators_on_cpu_without_the_interpreter_run_the_reference(monkeypatch, form):
    # Kernels defined without TRITON_INTERPRET cannot take CPU tensors (on a GPU machine they fail at launch), so the
    # operators themselves, called directly, run the reference on CPU tensors: values, lse and gradients against fp64.
    from hf_masked_softmax.reference import attention_lse_reference, attention_reference, masked_softmax_reference
    from tolerances import assert_close

    launch = importlib.import_module("hf_masked_softmax._launch")
    ms_mod = importlib.import_module("hf_masked_softmax.masked_softmax")
    attn_mod = importlib.import_module("hf_masked_softmax.attention")
    monkeypatch.setattr(launch, "INTERPRETED", False)
    for mod in (ms_mod, attn_mod):
        monkeypatch.setattr(mod, "_forward", _refuse)
        monkeypatch.setattr(mod, "_backward", _refuse)
    B, H, Hkv, Q, K, D = 2, 4, 2, 5, 11, 16
    g = torch.Generator().manual_seed(5)
    mask = _mask(form, B, H, Q, K, "cpu")
    spec = prepare_mask(mask, (B, H, Q, K), torch.device("cpu"))
    scores = torch.randn(B, H, Q, K, generator=g, requires_grad=True)
    dy = torch.randn(B, H, Q, K, generator=g)
    y = ops.masked_softmax_op(scores, mask, spec.kind, spec.threshold, True, 0.5, 8192, 2048)
    (ds,) = torch.autograd.grad(y, scores, dy)
    s64 = scores.detach().double().requires_grad_(True)
    y64 = masked_softmax_reference(s64, mask, causal=True, scale=0.5, compute_dtype=torch.float64)
    (ds64,) = torch.autograd.grad(y64, s64, dy.double())
    assert_close(y, y64)
    assert_close(ds, ds64, scale=4)

    q = torch.randn(B, H, Q, D, generator=g, requires_grad=True)
    k, v = (torch.randn(B, Hkv, K, D, generator=g, requires_grad=True) for _ in range(2))
    do = torch.randn(B, H, Q, D, generator=g)
    out, lse = ops.attention_op(q, k, v, mask, spec.kind, spec.threshold, True, 0.3)
    assert out.shape == (B, H, Q, D) and out.transpose(1, 2).is_contiguous()  # the kernel's layout
    grads = torch.autograd.grad(out, (q, k, v), do)
    leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    out64 = attention_reference(*leaves, mask, causal=True, scale=0.3, compute_dtype=torch.float64)
    assert_close(out, out64, scale=4)
    for got, want in zip(grads, torch.autograd.grad(out64, leaves, do.double())):
        assert_close(got, want, scale=8)
    lse64 = attention_lse_reference(q.double(), k.double(), mask, causal=True, scale=0.3,
                                    compute_dtype=torch.float64)
    assert lse.shape == (2, B, H, Q)
    assert_close(lse[0], lse64)
    assert torch.equal(lse[1], torch.zeros_like(lse[1]))  # the reference's lse has no rounding residual to keep
    # the public functions take the same reference path (and masked_softmax ignores TRITON_INTERPRET set after import)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with torch.no_grad():
        assert torch.equal(masked_softmax(scores, mask, causal=True, scale=0.5), y)
        assert torch.equal(attention(q, k, v, mask, causal=True, scale=0.3), out)


def test_reference_lse_means_what_the_kernel_saves(device):
    # the operator saves each row's base-2 log-sum-exp of the kept scaled scores (-inf for empty rows), as the
    # reference computes it, and in a second plane the rounding residual of that fp32 number (0 for empty rows)
    from hf_masked_softmax.reference import attention_lse_reference

    g = torch.Generator().manual_seed(6)
    q = torch.randn(2, 2, 6, 16, generator=g).to(device)
    k = torch.randn(2, 1, 9, 16, generator=g).to(device)
    v = torch.randn(2, 1, 9, 16, generator=g).to(device)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, :7] = False  # with causality the first queries of sequence 0 see nothing
    mask = mask.to(device)
    spec = prepare_mask(mask, (2, 2, 6, 9), q.device)
    _, lse = ops.attention_op(q, k, v, mask, spec.kind, spec.threshold, True, 0.25)
    want = attention_lse_reference(q.double(), k.double(), mask, causal=True, scale=0.25, compute_dtype=torch.float64)
    assert lse.shape == (2, 2, 2, 6)
    assert torch.isneginf(want[0, :, 0]).all() and torch.isneginf(lse[0, 0, :, 0]).all()
    assert (lse[1, 0, :, 0] == 0).all()
    torch.testing.assert_close(lse[0].double(), want, atol=1e-5, rtol=1e-5)
    finite = torch.isfinite(lse[0])
    assert (lse[1][finite].abs() <= torch.finfo(torch.float32).eps * lse[0][finite].abs()).all()  # half an ulp at most
    # sequence 1 keeps every key; its query 2 sees keys 0..5 (bottom-right causal: j <= 2 + 9 - 6)
    x = 0.25 * (q[1, :, 2].double().cpu() @ k[1, 0, :6].double().cpu().T)
    lse2 = torch.logsumexp(x, dim=-1) / torch.log(torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(lse[0, 1, :, 2].double().cpu(), lse2, atol=1e-5, rtol=1e-5)


def test_the_residual_keeps_what_a_huge_lse_rounds_away(device):
    # every key kept at an additive -1e30: lse is about -1.44e30 in base 2, where fp32 steps are 2^77 wide, so log2(K)
    # vanishes from it and lives on, exactly, in the residual plane (what the backward subtracts as well)
    B, H, Q, K, D = 1, 2, 3, 20, 16
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(B, H, T, D, generator=g).to(device) for T in (Q, K, K))
    mask = torch.full((B, 1, Q, K), -1e30, device=device)
    spec = prepare_mask(mask, (B, H, Q, K), q.device)
    _, lse = ops.attention_op(q, k, v, mask, spec.kind, spec.threshold, False, 0.25)
    torch.testing.assert_close(lse[0].double().cpu(), torch.full((B, H, Q), -1e30 * math.log2(math.e),
                                                                  dtype=torch.float64), atol=0, rtol=1e-6)
    assert torch.equal(lse[0] + math.log2(K), lse[0])  # log2(20) is far below half a step: lse alone cannot hold it
    torch.testing.assert_close(lse[1].cpu(), torch.full((B, H, Q), math.log2(K)), atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["fused", "softmax"])
def test_compiled_sliding_window_model_matches_eager(mode, device):
    # under torch.compile the mask function leaves the window's closure alone and hands over HF's 4D mask, so a
    # windowed model compiles in one graph and keeps its window
    from test_patch_llama import decoder, left_padded

    import hf_masked_softmax as hms

    model = decoder("mistral", device, sliding_window=4)
    ids, mask = left_padded(device)
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        with hms.patched(model, mode=mode):
            out = torch.compile(model, backend=BACKEND, fullgraph=True)(ids, attention_mask=mask).logits
    valid = mask.bool()
    torch.testing.assert_close(out[valid], ref[valid], atol=1e-5, rtol=1e-5)


def test_compiled_forward_static_cache_generate_with_a_window_equals_eager(device):
    # generate() builds a static cache's step masks outside the compiled forward; the sliding layers' keys start
    # past position 0 once the window is full, and the compiled forward must still get the right mask
    from test_patch_llama import decoder, left_padded

    import hf_masked_softmax as hms

    model = decoder("mistral", device, seed=2, sliding_window=4)
    ids, mask = left_padded(device, lengths=(8, 5, 2), seed=2)

    def gen(m):
        return m.generate(ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                          cache_implementation="static")

    ref = gen(model)
    with hms.patched(model, mode="fused"):
        forward = model.forward
        model.forward = torch.compile(forward, backend=BACKEND)
        try:
            out = gen(model)
        finally:
            model.forward = forward
    assert torch.equal(out, ref)
