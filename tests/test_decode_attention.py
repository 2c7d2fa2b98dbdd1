"""The native decode attention (engine/native/decode_attention.cpp): one query per row against the bf16 KV cache.

It must give SDPA's bf16 numbers (query rounded to bf16, fp32 sums) over cache views of any length, keep a
masked key's weight exactly zero (a batch of streams at different lengths), keep a NaN row to itself, and be what
the traced step runs where the CPU has AVX512_BF16.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine import native
from engine.lm import attend

pytestmark = pytest.mark.skipif(not torch.cpu._is_avx512_bf16_supported(), reason="the kernel needs AVX512_BF16")


@pytest.fixture(scope="module")
def op():
    assert native.supports("decode_attention"), native.why_not()
    return torch.ops.musicgen_bridge.decode_attention


def _cache(B: int, H: int, L: int, d: int, seed: int = 0):
    """q [B, H, 1, d] fp32 and k, v as views of a longer bf16 cache [2, B, H, L + 13, d], as the step slices it."""
    g = torch.Generator().manual_seed(seed)
    kv = (torch.randn(2, B, H, L + 13, d, generator=g) * 2).to(torch.bfloat16)
    q = torch.randn(B, H, 1, d, generator=g)
    return q, kv[0, :, :, :L], kv[1, :, :, :L]


def _reference(q, k, v, mask=None):
    """fp32 math on the numbers the kernel reads: the query rounded to bf16, the cache's bf16 values."""
    scores = q.bfloat16().float() @ k.float().transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores + mask
    return scores.softmax(-1) @ v.float()


@pytest.mark.parametrize("L", [1, 16, 37, 1000])
def test_equals_the_fp32_reference_over_cache_views(op, L):
    q, k, v = _cache(2, 4, L, 64)
    got = op(q, k, v, None, 1.0 / 8.0)
    expected = _reference(q, k, v)
    assert got.shape == (2, 4, 1, 64) and got.dtype == torch.float32
    err = (got - expected).abs().max().item()
    assert err <= 2e-5 * expected.abs().max().item()
    if L > 1:
        # Negative control: one key fewer (an off-by-one in the tail) misses the bound by far.
        short = _reference(q, k[:, :, :-1], v[:, :, :-1])
        assert (short - expected).abs().max().item() > 20 * 2e-5 * expected.abs().max().item()


def test_matches_sdpa_bf16_path_it_replaces(op):
    q, k, v = _cache(2, 16, 300, 64, seed=1)
    sdpa = F.scaled_dot_product_attention(q.bfloat16(), k, v).float()
    got = op(q, k, v, None, 1.0 / 8.0)
    # SDPA rounds its output to bf16; the kernel returns fp32: they differ by bf16's rounding, no more.
    assert (got - sdpa).abs().max().item() <= 2 ** -8 * sdpa.abs().max().item()


def test_masked_keys_weigh_exactly_nothing(op):
    """Rows of a batch at different lengths: each row's result is bit-identical to its own keys alone."""
    q, k, v = _cache(3, 4, 40, 64, seed=2)
    lengths = [40, 23, 7]
    mask = torch.zeros(3, 1, 1, 40)
    for b, n in enumerate(lengths):
        mask[b, ..., n:] = float("-inf")
    together = op(q, k, v, mask, 0.125)
    for b, n in enumerate(lengths):
        alone = op(q[b : b + 1], k[b : b + 1, :, :n], v[b : b + 1, :, :n], None, 0.125)
        assert torch.equal(together[b : b + 1], alone)
    assert (together - _reference(q, k, v, mask)).abs().max().item() <= 2e-5 * together.abs().max().item()


def test_a_nan_row_stays_in_its_row(op):
    q, k, v = _cache(2, 2, 20, 32, seed=3)
    clean = op(q, k, v, None, 0.2)
    q[1, 0, 0, 5] = float("nan")
    dirty = op(q, k, v, None, 0.2)
    assert bool(dirty[1, 0].isnan().all())
    assert torch.equal(dirty[0], clean[0]) and torch.equal(dirty[1, 1], clean[1, 1])


def test_bad_shapes_are_refused(op):
    q, k, v = _cache(1, 2, 10, 64)
    with pytest.raises(RuntimeError, match="head size 48"):
        op(q[..., :48], k[..., :48], v[..., :48], None, 0.1)
    with pytest.raises(RuntimeError, match="k and v are bf16"):
        op(q, k.float(), v, None, 0.1)


def test_attend_uses_it(op):
    q, k, v = _cache(2, 4, 30, 64)
    assert torch.equal(attend(q, k, v, None), op(q, k, v, None, 0.125))


TRACE_FIRST = """
import torch
from engine.lm import LMConfig, MusicGenLM
from engine.steps import TracedStep
cfg = LMConfig(dim=128, n_heads=4, n_layers=2, ffn_dim=256, n_codebooks=4, card=64)
lm = MusicGenLM(cfg).eval()
lm.kv_dtype = torch.bfloat16
lm.setup_caches(2, 32)
lm.set_condition(torch.randn(2, 5, 128))
step = TracedStep(lm)
tokens = torch.randint(0, 64, (2, 4, 1))
for pos in range(3):
    ip = torch.tensor([pos])
    step(lm.positioned(lm.embed(tokens), ip), ip, pos + 1)
assert not step.failed, "the step was not traced"
(graph,) = step.graphs.values()
assert "musicgen_bridge::decode_attention" in str(graph.inlined_graph), "the traced step does not run the kernel"
print("ok")
"""


def test_the_traced_step_runs_it_when_the_trace_loads_the_kernels(op):
    """In a fresh process whose first question about the kernels comes while the step is being traced (a bf16 or
    int8 model: nothing loads them before): the tracer must not fail (an op returning a bool once made it fail, and
    the step quietly ran eagerly), and the graph must call the kernel."""
    done = subprocess.run([sys.executable, "-c", TRACE_FIRST], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
