"""`musicgen-bridge bench`: each row runs in its own process and reports real figures (tiny model here)."""

from __future__ import annotations

import pytest
import torch

from bridge.bench import format_table, read_bandwidth_gbs, run_row, step_bytes
from engine.assemble import bf16_kv_cache_fast
from engine import native
from engine.checkpoint import load_model
from engine.quantize import w8a8_supported


def test_bench_rows_on_a_tiny_checkpoint(tiny_mono):
    folder = tiny_mono[0]
    results = {row: run_row(row, folder, steps=30, threads=1, timeout=300) for row in ("hf-fp32", "ours-int8")}
    ours, theirs = results["ours-int8"], results["hf-fp32"]
    assert ours["steps"] == 30 and ours["steps_per_s"] > 0 and theirs["steps_per_s"] > 0
    assert 0 < ours["ttfa_s"] < 120 and ours["peak_rss_mb"] > ours["rss_base_mb"] > 0
    assert ours["lm_mb"] > 0
    assert ours["dtype"] == "int8" and ours["step_mb"] > 0
    results["bandwidth"] = {"gb_s": 2 * ours["step_mb"] * ours["steps_per_s"] / 1e3}  # so the row reads 50%
    table = format_table(results, auto="int8")
    assert "| ours-int8 (= auto) |" in table and "| hf-fp32 |" in table and "real-time factor" in table
    assert "| 50% |" in table and "read bandwidth" in table


@pytest.mark.parametrize("dtype", ["int8", pytest.param("w8a8", marks=pytest.mark.skipif(
    not w8a8_supported(), reason="no fbgemm int8 linear or no VNNI"))])
def test_step_bytes_counts_the_weights_a_step_reads_and_the_filled_cache(tiny_mono, dtype):
    lm = load_model(str(tiny_mono[0]), device="cpu", dtype=dtype).lm
    lm.setup_caches(2, 40)
    lm.set_condition(torch.zeros(2, 5, lm.cfg.dim))
    cfg = lm.cfg
    # Per layer wqkv, wo, cross wq, cross wo, fc1, fc2 (cross wkv runs once per generation), one byte per weight;
    # per output row int8 has a bf16 scale (an fp32 one on the native kernel, its rows padded as w8a8's), w8a8 on fbgemm its scale, zero point and column offset (12 bytes),
    # w8a8 on the native kernel a scale and a column sum (8 bytes) over rows and columns padded to its blocks
    # (64 rows, 4 columns), plus the norms moved into them. The heads (int8 weights; a scale per row); K and V at 10
    # positions (bf16 where the model gets a bf16 cache, fp32 elsewhere); the cross keys and values (in the cache's dtype).
    D, F, L = cfg.dim, cfg.ffn_dim, cfg.n_layers
    kernel = {getattr(m, "kernel", None) for m in lm.modules()} - {None}

    w16 = native.supports("w8a16_linear")  # int8's linears and the integer formats' heads on the native kernel

    def matrix(n: int, k: int) -> int:
        if dtype == "int8" and w16:  # 64-row blocks of 4-column steps, an fp32 scale per row
            return -(-n // 64) * 64 * (-(-k // 4) * 4 + 4)
        if dtype == "int8":
            return n * k + 2 * n
        if kernel == {"fbgemm"}:
            return n * k + 12 * n
        assert kernel == {"native"}, kernel
        n = -(-n // 64) * 64
        return n * (-(-k // 4) * 4) + 8 * n

    per_layer = sum(matrix(n, k) for n, k in [(3 * D, D), (D, D), (D, D), (D, D), (F, D), (D, F)])
    # the three LayerNorms moved into wqkv, cross wq and fc1 on the native kernels: weight and bias, fp32
    if kernel == {"native"} or (dtype == "int8" and w16):
        per_layer += 3 * 2 * D * 4
    heads = cfg.n_codebooks * cfg.card
    if w16:  # the native head kernel: blocks as above, a scale per row
        heads = -(-heads // 64) * 64 * (-(-D // 4) * 4 + 4)
    else:  # weight-only int8, a bf16 scale per row
        heads *= D + 2
    weights = L * per_layer + heads
    kv = L * 2 * 2 * 10 * D * (2 if bf16_kv_cache_fast() else 4)
    cross = L * 2 * 2 * 5 * D * (2 if bf16_kv_cache_fast() else 4)
    assert step_bytes(lm, batch=2, context=10) == weights + kv + cross
    assert step_bytes(lm, batch=2, context=20) - step_bytes(lm, batch=2, context=10) == kv


@pytest.mark.skipif(not torch.cpu._is_avx512_supported(), reason="the folded kernel needs AVX-512")
def test_step_bytes_of_a_folded_cross_attention_counts_its_rows_not_the_projections():
    from engine.assemble import build_lm
    from engine.quantize import module_bytes
    from tests.test_kv_cache import _state

    cfg, state = _state(dim=128)
    cond = torch.randn(2, 5, cfg.dim)
    cond[1] = 0  # guidance's null condition: not folded, reads nothing
    folded, plain = (build_lm(cfg, dict(state), torch.device("cpu"), torch.int8) for _ in range(2))
    plain.can_fold = lambda: False
    for lm in (folded, plain):
        lm.setup_caches(2, 40)
        lm.set_condition(cond)
    assert folded.layers[0].cross.p is not None and plain.layers[0].cross.p is None
    c = plain.layers[0].cross
    projections = module_bytes(c.wq) + module_bytes(c.wo)
    keys_values = 2 * c.k.numel() * c.k.element_size()
    rows = 2 * 1 * cfg.n_heads * 5 * (cfg.dim + 4)  # p and u of the one row with a prompt, packed int8
    saved = cfg.n_layers * (projections + keys_values - rows)
    assert step_bytes(plain, batch=2, context=10) - step_bytes(folded, batch=2, context=10) == saved > 0


def test_read_bandwidth_is_a_plausible_rate():
    assert 0.1 < read_bandwidth_gbs(mb=64, repeats=2) < 10_000


@pytest.mark.parametrize("no_cudnn", [False, True])
def test_transformers_row_without_cudnn_attention_runs_generate_with_it_off(tiny_mono, monkeypatch, no_cudnn):
    from transformers import MusicgenForConditionalGeneration

    from bridge.bench import worker_transformers

    seen = []
    generate = MusicgenForConditionalGeneration.generate

    def recording(self, *a, **k):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return generate(self, *a, **k)

    monkeypatch.setattr(MusicgenForConditionalGeneration, "generate", recording)
    got = worker_transformers(tiny_mono[0], "float32", steps=8, no_cudnn=no_cudnn)
    assert got["steps"] == 8 and got["steps_per_s"] > 0
    assert seen == [not no_cudnn] * 2  # the time-to-first-audio call and the timed one
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored afterwards


def test_medium_shape_is_the_published_decoder():
    from bridge.bench import small_shape_config

    d = small_shape_config(shape="medium").decoder
    assert (d.hidden_size, d.num_hidden_layers, d.num_attention_heads, d.ffn_dim) == (1536, 48, 24, 6144)
    d = small_shape_config().decoder
    assert (d.hidden_size, d.num_hidden_layers, d.num_attention_heads, d.ffn_dim) == (1024, 24, 16, 4096)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer where no GPU is visible")
def test_bench_on_a_missing_gpu_is_one_clear_line_and_exit_2(capsys):
    from bridge.bench import main

    assert main(["--device", "cuda", "--rows", "bandwidth"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA GPU" in err and "--device cpu" in err


@pytest.mark.parametrize("mode,named", [("eager", "eager steps"), ("auto", "traced steps")])
def test_streams_bench_runs_the_batch_in_the_step_mode_asked(tiny_mono, mode, named):
    from bridge.bench_streams import run_streams_bench

    lines = []
    run_streams_bench(tiny_mono[0], [1, 2], "float32", steps=12, rounds=0, out=lines.append, step_mode=mode)
    assert named in lines[0]
    rows = [l for l in lines if l.startswith("| 1 |") or l.startswith("| 2 |")]
    assert len(rows) == 2 and all(float(r.split("|")[2]) > 0 for r in rows)  # steps/s measured for 1 and 2 streams


def test_bench_picks_rows_for_the_device_and_refuses_cpu_only_rows_on_a_gpu(monkeypatch, capsys):
    """On a GPU the default rows leave out the CPU-only integer formats, and asking for one is one clear line and
    exit 2 before anything runs (a GPU is faked: the device resolves to cuda, the rows are recorded, not run)."""
    import bridge.bench as bench
    import engine.devices

    monkeypatch.setattr(engine.devices, "resolve_device", lambda name: torch.device("cuda"))
    ran = []
    monkeypatch.setattr(bench, "run_row", lambda row, *a, **k: ran.append(row) or {"gb_s": 1.0})
    monkeypatch.setattr(bench, "ensure_checkpoint", lambda folder, shape="small": folder)
    monkeypatch.setattr(bench, "machine", lambda device="cpu": "a fake GPU machine")
    monkeypatch.setattr(bench, "format_table", lambda results, auto=None: "table")
    monkeypatch.setattr(engine.devices, "auto_dtype", lambda device: (torch.bfloat16, "fake"))
    assert bench.main(["--device", "cuda", "--cache-dir", "/nonexistent"]) == 0
    assert ran == list(bench.GPU_DEFAULT_ROWS)
    capsys.readouterr()  # the first run's progress lines
    assert bench.main(["--device", "cuda", "--rows", "ours-bf16,ours-w8a8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ours-w8a8" in err and "--device cpu" in err
    assert ran == list(bench.GPU_DEFAULT_ROWS)  # nothing more ran
