"""The int8 KV cache (`MusicGenLM.kv_dtype = torch.int8`): each position's head packed as d int8 values and their
fp32 scale (`pack_int8_rows`), read by the native decode kernel; which models get it, what it saves, attention and
logits within bounds (with negative controls), the native write. The traced step and per-row writes are tested
for both narrow caches in tests/test_kv_cache.py.

Bounds, measured here (benchmarks/RESULTS.md): rounding each row to 127 steps of its largest magnitude gives an
attention output ~8.5e-3 from fp32's (relative norm; bf16 ~3e-3) and, teacher-forced on the tiny model of
tests/test_kv_cache.py with fp32 weights, logits at cosine ~0.99996, KL ~1.1e-4 nats, top-1 ~0.97. Bounds:
attention 2.5e-2 (3x), logits cosine >= 0.9995, KL <= 1e-3 (9x), top-1 >= 0.93. Rows rounded to 5 bits (8x
coarser) miss both, as do values 5 % off.
"""

from __future__ import annotations

import pytest
import torch

from engine import native
from engine.assemble import build_lm, narrow_kv_dtype
from engine.batch_cache import BatchCache, kv_bytes_per_row
from engine.lm import CrossAttention, KVCache, attend, pack_int8_rows, unpack_int8_rows
from engine.quantize import logit_agreement
from tests.test_kv_cache import ATTENTION_CASES, _relative_error, attention_case, cache_agreement
from tests.test_kv_cache import tiny  # noqa: F401 (the same tiny model, a fixture)

CPU = torch.device("cpu")
ATTENTION_BOUND = 2.5e-2
LOGIT_BOUNDS = (0.9995, 1e-3, 0.93)  # mean cosine >=, mean KL <= (nats), top-1 agreement >=
needs_kernel = pytest.mark.skipif(not native.supports("decode_attention_int8"), reason="the int8 cache's kernel needs AVX2")
pytestmark = needs_kernel


def _coarse(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Rows rounded to `levels` steps of their largest magnitude (what the cache does with 127), in fp32."""
    top = x.abs().amax(-1, keepdim=True).clamp(min=1e-30)
    return (x / top * levels).round() / levels * top


def test_rows_pack_within_half_a_step_and_keep_zero_and_nan_rows_apart():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 64, generator=g) * torch.logspace(-3, 2, 5)[None, :, None]  # rows of very different ranges
    x[1, 2] = 0
    x[2, 4, 7] = float("nan")
    packed = pack_int8_rows(x)
    assert packed.dtype == torch.int8 and packed.shape == (3, 5, 68)
    back = unpack_int8_rows(packed)
    scale = x.abs().amax(-1, keepdim=True) / 127
    ok = torch.ones(3, 5, dtype=torch.bool)
    ok[2, 4] = False
    assert bool(((back - x).abs() <= scale / 2 * 1.0001 + 1e-12)[ok].all())
    assert torch.equal(back[1, 2], torch.zeros(64))  # an all-zero row: zeros, not NaN
    assert bool(back[2, 4].isnan().all()) and bool(back[2, :4].isfinite().all())  # a NaN row stays in its row


@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_attention_over_an_int8_cache_is_within_rounding(case, isa):
    q, k, v, mask = attention_case(case)
    want = attend(q, k, v, mask)
    got = attend(q, pack_int8_rows(k), pack_int8_rows(v), mask)
    assert got.dtype == torch.float32 and _relative_error(got, want) < ATTENTION_BOUND
    # The kernel computes exactly the dequantized cache's attention (up to float sums in another order).
    exact = attend(q, unpack_int8_rows(pack_int8_rows(k)), unpack_int8_rows(pack_int8_rows(v)), mask)
    assert _relative_error(got, exact) < 1e-5
    # Negative controls: rows rounded to 5 bits, and values 5 % off, miss the bound.
    assert _relative_error(attend(q, _coarse(k, 15), _coarse(v, 15), mask), want) > ATTENTION_BOUND
    assert _relative_error(attend(q, pack_int8_rows(k), pack_int8_rows(v * 1.05), mask), want) > ATTENTION_BOUND


def test_masked_keys_weigh_exactly_nothing_in_the_int8_kernel(isa):
    g = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(3, 4, 1, 64, generator=g), torch.randn(3, 4, 40, 64, generator=g), torch.randn(3, 4, 40, 64, generator=g)
    kp, vp = pack_int8_rows(k), pack_int8_rows(v)
    vp[2, :, 30:] = pack_int8_rows(torch.full((4, 10, 64), float("nan")))  # garbage past row 2's length
    mask = torch.zeros(3, 1, 1, 40)
    for b, n in enumerate((40, 23, 30)):
        mask[b, ..., n:] = float("-inf")
    op = torch.ops.musicgen_bridge.decode_attention
    together = op(q, kp, vp, mask, 0.125)
    for b, n in enumerate((40, 23, 30)):
        assert torch.equal(together[b : b + 1], op(q[b : b + 1], kp[b : b + 1, :, :n], vp[b : b + 1, :, :n], None, 0.125))


def test_the_one_pass_softmax_follows_a_maximum_that_rises_block_after_block(isa):
    # The kernel keeps the softmax online, rescaling what it summed when a later block of keys (16, 8 on AVX2) holds a larger
    # score: keys whose scores climb through every block, a leading block wholly masked (a left-padded row), and
    # scores far apart (a rescale that underflows what came before) must all give the dequantized cache's answer.
    g = torch.Generator().manual_seed(3)
    L, d = 77, 64
    q = torch.randn(2, 2, 1, d, generator=g)
    k = torch.randn(2, 2, L, d, generator=g) * 0.1
    k += q * torch.linspace(0.0, 3.0, L)[:, None]  # key l's score grows with l
    k[1, 1] = q[1, 1] * torch.tensor([1.0 if l % 16 else 60.0 for l in range(L)])[:, None]  # a jump each block
    v = torch.randn(2, 2, L, d, generator=g)
    mask = torch.zeros(2, 1, 1, L)
    mask[1, ..., :20] = float("-inf")
    kp, vp = pack_int8_rows(k), pack_int8_rows(v)
    got = torch.ops.musicgen_bridge.decode_attention(q, kp, vp, mask, 0.125)
    want = attend(q, unpack_int8_rows(kp), unpack_int8_rows(vp), mask)
    assert _relative_error(got, want) < 1e-5
    # Negative control: the same keys without their rising part attend elsewhere (the check can tell).
    flat = attend(q, unpack_int8_rows(pack_int8_rows(k * 0 + 0.1)), unpack_int8_rows(vp), mask)
    assert _relative_error(flat, want) > 1e-2


@pytest.mark.parametrize("d", [32, 64, 96, 128, 256])
def test_every_head_size_the_kernel_takes_attends_as_the_dequantized_cache(d, isa):
    # MusicGen's heads (64) have their own compiled path; other multiples of 32 take the general one. 77 keys: a
    # last block part-filled on both paths (blocks of 16, 8 on AVX2).
    g = torch.Generator().manual_seed(d)
    q, k, v = torch.randn(2, 3, 1, d, generator=g), torch.randn(2, 3, 77, d, generator=g), torch.randn(2, 3, 77, d, generator=g)
    kp, vp = pack_int8_rows(k), pack_int8_rows(v)
    got = torch.ops.musicgen_bridge.decode_attention(q, kp, vp, None, d**-0.5)
    want = attend(q, unpack_int8_rows(kp), unpack_int8_rows(vp), None)
    assert _relative_error(got, want) < 1e-5
    # Negative control: a last value row dropped (the part-filled block ignored) is told apart.
    short = attend(q, unpack_int8_rows(kp[:, :, :76]), unpack_int8_rows(vp[:, :, :76]), None)
    assert _relative_error(short, want) > 1e-4


def _within(got):
    cos, kl, top1 = LOGIT_BOUNDS
    return got["cosine"] >= cos and got["kl"] <= kl and got["top1"] >= top1


def test_logits_with_an_int8_cache_stay_within_bounds_and_coarser_rows_do_not(tiny, monkeypatch):
    got, reference, candidate = cache_agreement(tiny, torch.int8)
    assert _within(got), got
    # Negative control: the same cache with its rows first rounded to 5 bits.
    update = KVCache.update

    def coarse_update(self, input_pos, kv):
        return update(self, input_pos, _coarse(kv.float(), 15) if self.kv.dtype == torch.int8 else kv)

    monkeypatch.setattr(KVCache, "update", coarse_update)
    assert not _within(logit_agreement(reference, candidate, tiny[2], tiny[3]))


def test_text_keys_pack_to_int8_where_only_the_int8_kernel_runs_and_stay_within_bounds(tiny, monkeypatch):
    # A CPU with AVX2 alone (no bf16 kernel, and no VNNI: the cross-attention is not folded into the text, so the
    # text keys are what it reads): the text keys and values are packed int8 rows, read by the same kernel as the
    # cache. Logits within the cache's bounds; text keys rounded to 5 bits miss them.
    supports = native.supports
    avx2_alone = lambda kernel: native.KERNELS[kernel] is torch.cpu._is_avx2_supported and supports(kernel)  # noqa: E731
    monkeypatch.setattr(native, "supports", avx2_alone)
    got, reference, candidate = cache_agreement(tiny, torch.int8)
    assert candidate.cross_dtype == torch.int8
    cross = candidate.layers[0].cross
    assert cross.k.dtype == torch.int8 and cross.k.shape[-1] == tiny[0].head_dim + 4
    assert cross.p is None  # not folded: the decode steps read these keys
    assert _within(got), got
    set_condition = CrossAttention.set_condition

    def coarse_text(self, cond, dtype=None, live=None):
        set_condition(self, cond, dtype, live)
        if self.k.dtype == torch.int8:  # the candidate's (negative control)
            self.k = pack_int8_rows(_coarse(unpack_int8_rows(self.k), 15))
            self.v = pack_int8_rows(_coarse(unpack_int8_rows(self.v), 15))

    monkeypatch.setattr(CrossAttention, "set_condition", coarse_text)
    assert not _within(logit_agreement(reference, candidate, tiny[2], tiny[3]))


def test_integer_weights_get_the_int8_cache_and_its_bytes(tiny):
    cfg, state = tiny[0], tiny[1]
    lm = build_lm(cfg, dict(state), CPU, torch.int8)
    assert narrow_kv_dtype("w8a8") == narrow_kv_dtype("int4") == narrow_kv_dtype("int8")
    # the text keys in bf16 where the bf16 kernel reads them (AVX512_BF16), else packed int8 (CPUs with AVX2 alone)
    cross = torch.bfloat16 if native.supports("decode_attention") else torch.int8
    assert lm.cache_dtype == torch.int8 and lm.cross_dtype == cross
    assert narrow_kv_dtype("bfloat16") != torch.int8  # bf16 weights keep a bf16 (or fp32) cache
    lm.setup_caches(2, 16)
    assert lm.layers[0].attn.kv_cache.kv.shape == (2, 2, cfg.n_heads, 16, cfg.head_dim + 4)
    # Per position: 2 (k, v) x heads x (head_dim int8 + a 4-byte scale), about half of bf16's 2 x dim x 2.
    assert kv_bytes_per_row(lm, 10) == 2 * cfg.n_layers * cfg.n_heads * (cfg.head_dim + 4) * 10
    cache = BatchCache(lm)
    cache.ensure(rows=2, length=16, cross_len=5, used=0)
    assert cache.kvs[0].shape[-1] == cfg.head_dim + 4 and cache.cross_k[0].dtype == cross
    assert cache.cross_k[0].shape[-1] == cfg.head_dim + (4 if cross == torch.int8 else 0)


@pytest.mark.parametrize("dtype", [torch.int8, torch.bfloat16])
def test_the_native_write_refuses_a_position_outside_the_cache(dtype):
    cache = KVCache(1, 2, 8, 32, dtype, CPU)
    before = cache.kv.clone()
    with pytest.raises(RuntimeError, match="position 8 outside the cache's 8"):
        cache.update(torch.tensor([8]), torch.randn(2, 1, 2, 1, 32))
    assert torch.equal(cache.kv, before)  # nothing written
