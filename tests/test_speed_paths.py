"""The fast paths compute what the plain path computes: prepacked linears, the decode-step attention, the static
full-cache step (what CUDA graphs replay), memory-saving loading, and the CUDA-graph step itself on a GPU."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

from engine.assemble import build_lm, lm_config, lm_state_from_hf, narrow_while_reading
from engine.checkpoint import load_model
from engine.tensors import read_hf_tensors
from engine.errors import UserError
from engine.generate import open_stream
from engine.lm import attend
from engine.steps import traced_step
from engine.devices import CPU_AUTO, DTYPES, auto_dtype, dtype_name, resolve_dtype
from engine.quantize import (Int4Linear, Int8Linear, NativeW8A16Linear, PackedLinear, W8A8Linear, bf16_supported, int4_supported,
                             onednn_available, plan_precision, prepare_for_cpu, w8a8_supported)
from engine.sampling import SamplingSettings
from engine.tiny import tiny_config, tiny_reference_model

CPU = torch.device("cpu")
GREEDY = SamplingSettings(greedy=True, cfg=3.0)
needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN")


def _tiny_lm(dtype=torch.float32, melody=False, seed=2):
    ref = tiny_reference_model(tiny_config(dim=64, layers=2, heads=4, melody=melody), seed=seed)
    cfg = lm_config(ref.config.decoder.to_dict(), cross_attention=not melody)
    state = lm_state_from_hf({k: v for k, v in ref.state_dict().items() if k.startswith("decoder.")}, cfg)
    return build_lm(cfg, state, CPU, dtype)


@needs_onednn
@pytest.mark.parametrize("rows", [1, 2, 7, 130])
def test_packed_linear_equals_linear(rows):
    w, x = torch.randn(96, 64), torch.randn(rows, 64)
    assert torch.allclose(PackedLinear(w, torch.float32)(x), F.linear(x, w), rtol=1e-5, atol=1e-5)
    # bf16 weights: the product of the bf16-rounded operands, accumulated in fp32, returned in bf16.
    expected = F.linear(x.bfloat16().float(), w.bfloat16().float())
    got = PackedLinear(w, torch.bfloat16)(x)
    if bf16_supported():
        assert got.dtype == torch.bfloat16 and torch.allclose(got.float(), expected, rtol=1e-2, atol=2e-2)
    else:  # a CPU without native bf16 holds the same rounded weights in fp32: fp32 rows in, fp32 out
        assert got.dtype == torch.float32
        assert torch.allclose(got, F.linear(x, w.bfloat16().float()), rtol=1e-5, atol=1e-5)
    # 3-d inputs (prefill: [B, T, D]) keep their leading shape.
    assert PackedLinear(w, torch.float32)(x[None]).shape == (1, rows, 96)


def test_int8_linear_equals_its_dequantized_weights():
    w, x = torch.randn(96, 64), torch.randn(2, 3, 64)
    lin = Int8Linear(w)
    expected = F.linear(x.bfloat16().float(), lin.dequantized())
    got = lin(x)
    assert got.shape == (2, 3, 96) and got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), expected, rtol=2e-2, atol=5e-2)
    assert (lin.dequantized() - w).abs().max() <= w.abs().max() / 127  # within one quantization step


def test_one_query_attention_equals_sdpa():
    q, k, v = torch.randn(2, 4, 1, 16), torch.randn(2, 4, 37, 16), torch.randn(2, 4, 37, 16)
    assert torch.allclose(attend(q, k, v, None), F.scaled_dot_product_attention(q, k, v), atol=1e-6)


@pytest.mark.parametrize("melody", [False, True])
def test_static_full_cache_step_equals_sliced_step(melody):
    """The CUDA-graph path attends over the whole cache under a mask; it must give the sliced path's logits."""
    lm = _tiny_lm(melody=melody)
    B, K, T, max_len, prefill = 2, 4, 24, 40, 5
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 2048, (B, K, T), generator=g)
    if not melody:
        cond = torch.randn(B, 7, lm.cfg.dim, generator=g)
        cond[1] = 0
    outs = {}
    for mode in ("sliced", "static"):
        lm.setup_caches(B, max_len)
        for layer in lm.layers:  # a cache full of stale values: the static path must mask them, not rely on zeros
            layer.attn.kv_cache.k.normal_()
            layer.attn.kv_cache.v.normal_()
        if not melody:
            lm.set_condition(cond)
        with torch.inference_mode():
            pos = torch.arange(prefill)
            logits = [lm(lm.embed(tokens[..., :prefill]), pos, kv_len=prefill if mode == "sliced" else None)]
            for t in range(prefill, T):
                pos = torch.tensor([t])
                logits.append(lm(lm.embed(tokens[..., t : t + 1]), pos, kv_len=t + 1 if mode == "sliced" else None))
        outs[mode] = torch.cat(logits, dim=2)
        lm.max_len = 0  # a fresh cache for the other mode
    assert outs["sliced"].shape == (B, K, T - prefill + 1, lm.cfg.card)
    assert torch.allclose(outs["sliced"], outs["static"], atol=1e-5, rtol=1e-5)


def test_precision_plans():
    assert plan_precision(CPU, torch.int8).weights == "int8"
    assert plan_precision(CPU, torch.int8).activations == torch.float32
    if onednn_available():
        assert plan_precision(CPU, torch.float32).weights == "float32"
    assert plan_precision(torch.device("cuda"), torch.float16).weights is None  # GPUs: the dtype throughout
    for narrow in (torch.int8, torch.qint8, torch.int4):
        with pytest.raises(UserError, match="is for CPUs"):
            plan_precision(torch.device("cuda"), narrow)
    if w8a8_supported():
        assert plan_precision(CPU, resolve_dtype("w8a8")).weights == "w8a8"


def test_w8a8_without_the_kernel_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("engine.quantize.w8a8_supported", lambda: False)
    with pytest.raises(UserError, match="w8a8 needs fbgemm's int8 linear"):
        plan_precision(CPU, torch.qint8)
    monkeypatch.setattr("engine.devices.CPU_AUTO", "w8a8")
    assert auto_dtype(CPU)[0] == torch.int8  # auto falls back to weight-only int8


def test_int4_without_the_kernel_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("engine.quantize.int4_supported", lambda: False)
    with pytest.raises(UserError, match="int4 needs the project's int4 kernel .* or torch's CPU int4 kernel"):
        plan_precision(CPU, torch.int4)


def test_auto_dtype_per_device(monkeypatch):
    # CPU_AUTO where its kernel runs (w8a8: VNNI), else weight-only int8
    chosen = DTYPES[CPU_AUTO] if w8a8_supported() else torch.int8
    assert resolve_dtype("auto", CPU) == chosen == auto_dtype(CPU)[0]
    assert resolve_dtype("AUTO") == chosen  # no device: the CPU's choice
    assert DTYPES[dtype_name(chosen)] == chosen  # what the log and /status name, as --dtype spells it
    if w8a8_supported():  # the w8a8 choice, named as --dtype spells it
        monkeypatch.setattr("engine.devices.CPU_AUTO", "w8a8")
        assert auto_dtype(CPU)[0] == torch.qint8 and dtype_name(torch.qint8) == "w8a8"
        monkeypatch.undo()
    assert auto_dtype(torch.device("mps"))[0] == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert auto_dtype(torch.device("cuda"))[0] == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert auto_dtype(torch.device("cuda"))[0] == torch.float16
    assert resolve_dtype("int4") == torch.int4 and resolve_dtype("bf16") == torch.bfloat16
    with pytest.raises(UserError, match="unknown dtype 'float7'"):
        resolve_dtype("float7")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8",
                                   pytest.param("w8a8", marks=pytest.mark.skipif(not w8a8_supported(), reason="no fbgemm int8 linear or no VNNI")),
                                   pytest.param("int4", marks=pytest.mark.skipif(not int4_supported(), reason="no int4 kernel")),
                                   "auto"])
def test_every_dtype_loads_and_generates(tiny_mono, dtype):
    model = load_model(str(tiny_mono[0]), device="cpu", dtype=dtype)
    codes = open_stream(model, "techno drums", GREEDY, frames=15).run()
    assert codes.shape == (4, 15) and int(codes.max()) < 2048
    # No full-width copy of any linear weight is kept: fp32 2-d tensors are the embeddings only.
    wide = [n for n, t in [*model.lm.named_parameters(), *model.lm.named_buffers()]
            if t.dim() == 2 and t.dtype == torch.float32 and not t.is_mkldnn and not n.startswith(("embeddings.", "pos_table"))]
    if dtype != "float32":
        assert wide == [], wide
    kinds = {type(m).__name__ for m in model.lm.modules()}
    if dtype == "auto":
        assert model.lm.dtype == auto_dtype(CPU)[0]
    elif dtype == "int8":
        assert kinds & {"Int8Linear", "NativeW8A16Linear"} and "Linear" not in kinds
    elif dtype == "int4":
        assert kinds & {"Int4Linear", "NativeInt4Linear"} and isinstance(model.lm.heads, (Int8Linear, NativeW8A16Linear))
        assert "Linear" not in kinds
    elif dtype == "w8a8":
        assert any(isinstance(m, W8A8Linear) for m in model.lm.modules())
        assert isinstance(model.lm.heads, (Int8Linear, NativeW8A16Linear)) and "Linear" not in kinds
    elif plan_precision(CPU, getattr(torch, dtype)).weights is not None:  # oneDNN here (and native bf16 for bf16)
        assert "PackedLinear" in kinds and "Linear" not in kinds


def test_narrowing_happens_while_reading(tiny_mono):
    sd = read_hf_tensors(tiny_mono[0], ("decoder.", "text_encoder."), convert=narrow_while_reading(torch.bfloat16))
    assert sd["decoder.model.decoder.layers.0.fc1.weight"].dtype == torch.bfloat16
    assert sd["decoder.lm_heads.0.weight"].dtype == torch.bfloat16
    assert sd["decoder.model.decoder.layers.0.self_attn_layer_norm.weight"].dtype == torch.float32
    assert sd["decoder.model.decoder.embed_tokens.0.weight"].dtype == torch.float32
    assert all(v.dtype == torch.float32 for k, v in sd.items() if k.startswith("text_encoder."))
    # T5 narrowed too (bf16 and int8 models), but for the `wo` layers transformers keeps in fp32.
    sd = read_hf_tensors(tiny_mono[0], ("text_encoder.",), convert=narrow_while_reading(torch.bfloat16, torch.bfloat16))
    assert {v.dtype for k, v in sd.items() if ".wo." in k} == {torch.float32}
    assert {v.dtype for k, v in sd.items() if ".wo." not in k} == {torch.bfloat16}


def test_kv_cache_follows_the_request(mono_model):
    stream = open_stream(mono_model, "house", GREEDY, frames=10)
    assert mono_model.lm.max_len == mono_model.pattern.columns(10)
    stream.run()
    open_stream(mono_model, "house", GREEDY, frames=None, window_frames=50)  # endless: one whole window
    assert mono_model.lm.max_len == mono_model.pattern.columns(50)


@needs_onednn
def test_prepare_for_cpu_swaps_in_place():
    lm = _tiny_lm()
    before = sum(isinstance(m, torch.nn.Linear) for m in lm.modules())
    prepare_for_cpu(lm, "int8")
    assert sum(isinstance(m, (Int8Linear, NativeW8A16Linear)) for m in lm.modules()) == before
    with pytest.raises(ValueError):
        prepare_for_cpu(lm, "int3")


def test_bench_command_parses_and_rejects_unknown_rows(capsys):
    from bridge.bench import add_bench_parser, format_table, run_bench

    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--rows", "ours-int8,nope", "--steps", "20"])
    assert run_bench(args) == 2
    assert "nope" in capsys.readouterr().err
    table = format_table({"ours-int8": {"steps_per_s": 50.0, "ttfa_s": 1.5, "peak_rss_mb": 1000.0, "lm_mb": 500.0},
                          "decode": {"ms_per_chunk": 30.0, "first_chunk_ms": 40.0, "latency_ms": 80.0, "peak_rss_mb": 400.0}})
    assert "| ours-int8 | 50.0 | 1.00 | 1.50 | 1000 | 500 |" in table and "| decode | 30.0 |" in table


def test_graphed_step_logic_with_faked_cuda_graphs(monkeypatch):
    """A logic test, not a CUDA test: GraphedStep's static buffers and re-capture rules, with torch.cuda's graph,
    stream and capture calls faked by plain re-execution (a replay must compute from the static buffers exactly
    what the eager step computes). The real graphs are checked by the GPU tests at the end of this file."""
    from engine.steps import GraphedStep, graphed_step
    from tests.fake_cuda import fake_cuda_graph_calls

    captures = []

    class FakeGraph:  # replay = run the captured function again on the same static buffers
        def replay(self):
            captures[-1].logits.copy_(captures[-1]._run())

    static = fake_cuda_graph_calls(monkeypatch, FakeGraph)
    original = GraphedStep._capture
    monkeypatch.setattr(GraphedStep, "_capture", lambda self, *a: (captures.append(self), original(self, *a))[1])

    graphed, eager = _tiny_lm(), _tiny_lm()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 2048, (2, 4, 20), generator=g)
    cond = torch.randn(2, 6, graphed.cfg.dim, generator=g)
    step = graphed_step(graphed)
    assert graphed_step(graphed) is step
    for lm in (graphed, eager):
        lm.setup_caches(2, 32)
        lm.set_condition(cond)
    with torch.inference_mode():
        for lm in (graphed, eager):  # prefill (eager in both, as TokenStream does)
            lm(lm.embed(tokens[..., :3]), torch.arange(3), kv_len=3)
        for t in range(3, 20):
            pos = torch.tensor([t])
            got = step(tokens[..., t : t + 1], pos).clone()
            want = eager(eager.embed(tokens[..., t : t + 1]), pos, kv_len=t + 1)
            assert torch.allclose(got, want, atol=1e-5), t
    assert len(captures) == 1
    graphed.set_condition(cond * 2)  # same shape: written in place, the graph stays
    with torch.inference_mode():
        step(tokens[..., :1], torch.tensor([0]))
    assert len(captures) == 1
    graphed.set_condition(cond[:, :4])  # another shape: new tensors, captured again
    with torch.inference_mode():
        step(tokens[..., :1], torch.tensor([0]))
    assert len(captures) == 2
    graphed.setup_caches(2, 48)  # a new cache: captured again
    with torch.inference_mode():
        step(tokens[..., :1], torch.tensor([0]))
    assert len(captures) == 3
    assert static == [True] * 3  # each under static_shapes: cuDNN's attention may plan once, in the warm-up


def _prepared_lm(weights, melody=False):
    lm = _tiny_lm(melody=melody)
    return prepare_for_cpu(lm, weights) if weights else lm


@pytest.mark.parametrize("weights,melody", [(None, False), (None, True),
                                            pytest.param("bfloat16", False, marks=needs_onednn),
                                            pytest.param("float32", False, marks=needs_onednn), ("int8", False),
                                            pytest.param("int4", False, marks=pytest.mark.skipif(not int4_supported(), reason="no int4 kernel")),
                                            pytest.param("w8a8", False, marks=pytest.mark.skipif(not w8a8_supported(), reason="no fbgemm int8 linear or no VNNI"))])
def test_traced_step_equals_eager_step(weights, melody):
    """The traced step computes exactly the eager step's logits, at every cache length, for two generations of
    other lengths and prompts (one trace serves them all), with the caches it writes equal too."""
    traced, eager = _prepared_lm(weights, melody), _prepared_lm(weights, melody)
    step = traced_step(traced)
    assert traced_step(traced) is step
    g = torch.Generator().manual_seed(3)
    for B, T, S, max_len in ((2, 18, 6, 24), (2, 30, 9, 40), (1, 12, 4, 16)):
        tokens = torch.randint(0, 2048, (B, 4, T), generator=g)
        for lm in (traced, eager):
            lm.setup_caches(B, max_len)
            if not melody:
                cond = torch.randn(B, S, lm.cfg.dim, generator=torch.Generator().manual_seed(S))
                lm.set_condition(cond)
        with torch.inference_mode():
            for lm in (traced, eager):
                lm(lm.embed(tokens[..., :3]), torch.arange(3), kv_len=3)
            for t in range(3, T):
                pos = torch.tensor([t])
                got = step(traced.positioned(traced.embed(tokens[..., t : t + 1]), pos), pos, t + 1)
                want = eager(eager.embed(tokens[..., t : t + 1]), pos, kv_len=t + 1)
                assert torch.equal(got, want), (B, t)
        assert torch.equal(traced.layers[0].attn.kv_cache.kv, eager.layers[0].attn.kv_cache.kv)
    # one trace per batch size (keys: batch, dtype, then the step's input form: 1-D positions, its argument count)
    assert sorted({key[:2] for key in step.graphs}) == [(1, torch.float32), (2, torch.float32)]
    assert len(step.graphs) == 2


def test_traced_step_keeps_no_old_cache_alive():
    """Caches and conditioning are inputs of the graph, not constants: a new generation's buffers replace the
    old ones, which are freed (an endless window's cache is ~600 MB at full size)."""
    import gc
    import weakref

    lm = _tiny_lm()
    lm.setup_caches(2, 40)
    lm.set_condition(torch.randn(2, 5, lm.cfg.dim))
    old_kv, old_k = weakref.ref(lm.layers[0].attn.kv_cache.kv), weakref.ref(lm.layers[0].cross.k)
    with torch.inference_mode():
        pos = torch.tensor([0])
        traced_step(lm)(lm.positioned(lm.embed(torch.zeros(2, 4, 1, dtype=torch.long)), pos), pos, 1)
    assert traced_step(lm).graphs
    lm.setup_caches(2, 48)
    lm.set_condition(torch.randn(2, 7, lm.cfg.dim))
    gc.collect()
    assert old_kv() is None and old_k() is None


def test_token_stream_uses_the_traced_step_and_matches_eager(tiny_mono):
    model = load_model(str(tiny_mono[0]), device="cpu", dtype="float32")
    sampled = SamplingSettings(top_k=50, cfg=3.0, seed=11)
    runs = {}
    for traced in (False, True):
        stream = open_stream(model, "techno drums", sampled, frames=40, step_mode="auto" if traced else "eager")
        assert stream.step_mode == ("traced" if traced else "eager")
        runs[traced] = stream.run().clone()
    assert torch.equal(runs[True], runs[False])
    assert traced_step(model.lm).graphs  # it was used


@pytest.mark.parametrize("which,dtype", [("tiny_mono", "float32"), ("tiny_mono", "int8"), ("tiny_melody", "bfloat16")])
def test_warm_up_traces_the_step_before_the_first_request(which, dtype, request):
    from engine.generate import warm_up

    model = load_model(str(request.getfixturevalue(which)[0]), device="cpu", dtype=dtype)
    assert not traced_step(model.lm).graphs
    assert warm_up(model) > 0
    # guided requests (batch 2) find it ready
    assert any(key[:2] == (2, torch.float32) for key in traced_step(model.lm).graphs)


def test_traced_step_falls_back_to_eager_when_tracing_fails(monkeypatch, caplog):
    lm, eager = _tiny_lm(), _tiny_lm()

    def refuse(*a, **k):
        raise RuntimeError("no tracer here")

    monkeypatch.setattr(torch.jit, "trace", refuse)
    step = traced_step(lm)
    tokens = torch.randint(0, 2048, (2, 4, 8), generator=torch.Generator().manual_seed(5))
    cond = torch.randn(2, 5, lm.cfg.dim)
    for m in (lm, eager):
        m.setup_caches(2, 8)
        m.set_condition(cond)
    with caplog.at_level("WARNING"), torch.inference_mode():
        for t in range(8):
            pos = torch.tensor([t])
            got = step(lm.positioned(lm.embed(tokens[..., t : t + 1]), pos), pos, t + 1)
            assert torch.equal(got, eager(eager.embed(tokens[..., t : t + 1]), pos, kv_len=t + 1))
    assert step.failed and not step.graphs
    assert sum("tracing the decode step failed" in r.message for r in caplog.records) == 1  # said once


# ------------------------------------------------------------------------------------------------ GPU only
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _assert_half_precision_parity(graphed: torch.Tensor, eager: torch.Tensor, dtype: torch.dtype) -> None:
    """Per-step logits of two greedy runs in half precision. Until the first step whose argmax differs, both runs
    fed the same tokens, so their logits must agree to rounding: the graph and eager paths order attention's
    reductions differently, which moves a result by a few units in the last place (ulp) at each rounding; 8 ulps
    at the logits' scale (8 x eps x the largest logit: 0.8 % of it in fp16, 6 % in bf16) bounds that for this
    2-layer model, while a real fault (a stale cache, a wrong position) moves logits by the order of the scale
    itself. A run may part from the other only where the eager top two were within that."""
    steps = eager.shape[0]
    differs = [s for s in range(steps) if not torch.equal(graphed[s].argmax(-1), eager[s].argmax(-1))]
    last = differs[0] if differs else steps - 1
    scale = eager[: last + 1].abs().max().item()
    tol = 8 * torch.finfo(dtype).eps * scale
    diff = (graphed[: last + 1] - eager[: last + 1]).abs().max().item()
    assert diff <= tol, f"logits differ by {diff:.4g} > {tol:.4g} before the runs parted"
    if differs:
        top2 = eager[last].topk(2, dim=-1).values
        assert (top2[..., 0] - top2[..., 1]).min().item() <= 2 * tol, "the runs parted where there was no near-tie"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_parity_bound_tells_rounding_from_faults(dtype):
    """The GPU parity check's bound, on CPU: rounding-sized differences pass, a fault-sized one does not."""
    g = torch.Generator().manual_seed(0)
    eager = (torch.randn(30, 4, 64, generator=g) * 5).to(dtype).float()
    ulp = torch.finfo(dtype).eps * eager.abs()
    rounded = eager + ulp * torch.randint(-2, 3, eager.shape, generator=g)  # a couple of ulps here and there
    _assert_half_precision_parity(rounded, eager, dtype)
    faulty = eager.clone()
    faulty[10:] += 0.1 * eager.abs().max() * torch.randn(20, 4, 64, generator=g)  # e.g. a stale cache from step 10
    with pytest.raises(AssertionError):
        _assert_half_precision_parity(faulty, eager, dtype)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_cuda_graph_step_equals_eager(tiny_mono, dtype):
    model = load_model(str(tiny_mono[0]), device="cuda", dtype=dtype)
    runs = {}
    for graphs in (False, True):
        stream = open_stream(model, "techno drums", GREEDY, frames=40, step_mode="graph" if graphs else "eager")
        assert stream.step_mode == ("graph" if graphs else "eager")
        logits = []
        while not stream.done:
            stream.step()
            logits.append(stream.last_logits.float().clone())
        runs[graphs] = (stream.codes().clone(), torch.stack(logits))
    if dtype == "float32":
        assert torch.equal(runs[True][0], runs[False][0])
        assert torch.allclose(runs[True][1], runs[False][1], atol=1e-4)
    else:
        _assert_half_precision_parity(runs[True][1], runs[False][1], getattr(torch, dtype))
    # A second generation of another length re-captures (a new cache) and still agrees.
    assert open_stream(model, "techno drums", GREEDY, frames=12).run().shape == (4, 12)


@pytest.mark.gpu
@gpu
def test_cuda_graph_generation_equals_transformers(tiny_mono):
    from engine.tiny import tiny_tokenizer
    from tests.reference import reference_generate

    folder, ref = tiny_mono
    model = load_model(str(folder), device="cuda", dtype="float32")
    expected, _ = reference_generate(ref, tiny_tokenizer(), "warm lo-fi piano", 60, model.pattern.max_delay)
    codes = open_stream(model, "warm lo-fi piano", GREEDY, frames=60).run()
    assert torch.equal(codes.cpu(), expected)
