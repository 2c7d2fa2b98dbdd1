"""The bf16 KV cache (`MusicGenLM.kv_dtype`): which models get it and what it saves, attention over it within bf16
rounding of the fp32 cache's, the LM's logits within bounds (with negative controls); and for both narrow caches
(the int8 one's own tests: tests/test_kv_cache_int8.py) the traced step equal to the eager one and per-row writes.

Bounds, measured here (benchmarks/RESULTS.md, issue 11.3):
- attention output, relative error (norm of the difference / norm of the fp32 result): bf16 keys and values
  give ~3.9e-3 (bf16 keeps 8 significant bits: each of q, k, v and the output is rounded by up to 2^-9). Bound
  1e-2. Keys and values rounded to fp8 e4m3 (3 bits, 16x coarser) give ~4e-2, values off by 2% ~2e-2: both miss.
- logits, teacher-forced on the tiny model of tests/test_quantize.py with fp32 weights, fp32 cache against
  bf16 cache: cosine ~0.999992, KL ~2.3e-5 nats, top-1 ~0.99. Bounds: cosine >= 0.9999, KL <= 2.5e-4 (about
  10x), top-1 >= 0.95 (bf16 weights' bounds). e4m3 rounding of the cache (KL ~3.4e-3) and int8 with a wrong
  fixed scale (clipping at 1, KL ~0.7) miss them.
"""

from __future__ import annotations

import pytest
import torch

from engine import native
from engine.assemble import bf16_kv_cache_fast, build_lm, lm_config, lm_state_from_hf
from engine.batch_cache import BatchCache, kv_bytes_per_row
from engine.lm import KVCache, attend, pack_int8_rows
from engine.quantize import int4_supported, logit_agreement
from engine.steps import traced_step
from engine.tiny import tiny_config, tiny_reference_model

CPU = torch.device("cpu")
ATTENTION_BOUND = 1e-2
LOGIT_BOUNDS = (0.9999, 2.5e-4, 0.95)  # mean cosine >=, mean KL <= (nats), top-1 agreement >=


def _state(dim=128, layers=2, heads=4, seed=3):
    ref = tiny_reference_model(tiny_config(dim=dim, layers=layers, heads=heads), seed=seed)
    cfg = lm_config(ref.config.decoder.to_dict(), cross_attention=True)
    return cfg, lm_state_from_hf({k: v for k, v in ref.state_dict().items() if k.startswith("decoder.")}, cfg)


@pytest.fixture(scope="module")
def tiny():
    cfg, state = _state()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 2048, (2, 4, 60), generator=g)
    cond = torch.randn(2, 12, cfg.dim, generator=g)
    cond[1] = 0  # the unconditional row
    return cfg, state, tokens, cond


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8", pytest.param("int4", marks=pytest.mark.skipif(
    not int4_supported(), reason="no int4 kernel"))])
def test_narrow_weights_get_a_bf16_cache(tiny, dtype):
    cfg, state = tiny[0], tiny[1]
    lm = build_lm(cfg, dict(state), CPU, getattr(torch, dtype))
    if dtype in ("int8", "int4") and lm.cache_dtype == torch.int8:  # integer weights: tests/test_kv_cache_int8.py
        return
    narrow = dtype != "float32" and bf16_kv_cache_fast()  # fp32 models keep fp32 (exact against transformers)
    assert lm.cache_dtype == (torch.bfloat16 if narrow else torch.float32)
    assert lm.act_dtype == torch.float32
    lm.setup_caches(2, 16)
    assert lm.layers[0].attn.kv_cache.kv.dtype == lm.cache_dtype
    assert kv_bytes_per_row(lm, 10) == 2 * cfg.n_layers * cfg.dim * 10 * (2 if narrow else 4)
    cache = BatchCache(lm)
    cache.ensure(rows=2, length=16, cross_len=5, used=0)
    # The text keys and values follow the cache (one query's cross-attention takes the same decode kernel)
    assert cache.kvs[0].dtype == cache.cross_k[0].dtype == cache.cross_v[0].dtype == lm.cache_dtype == lm.cross_dtype
    lm.set_condition(torch.randn(2, 5, cfg.dim))
    assert lm.layers[0].cross.k.dtype == lm.layers[0].cross.v.dtype == lm.cross_dtype


def test_cpus_without_fast_bf16_attention_keep_the_fp32_cache(tiny, monkeypatch):
    monkeypatch.setattr("engine.assemble.bf16_kv_cache_fast", lambda: False)
    monkeypatch.setattr("engine.native.supports", lambda kernel: False)  # and no native kernel for an int8 cache
    lm = build_lm(tiny[0], dict(tiny[1]), CPU, torch.int8)
    assert lm.cache_dtype == torch.float32 and kv_bytes_per_row(lm, 1) == 2 * tiny[0].n_layers * tiny[0].dim * 4


def _relative_error(got, want):
    return ((got.float() - want).norm() / want.norm()).item()


ATTENTION_CASES = ["one query", "row mask", "prefill"]


def attention_case(case: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """q, k, v [2, 16, T|L, 64] and the mask of one of `ATTENTION_CASES`: one query (no mask), a batch of streams
    (row 1 shorter: its padded keys get -inf), a prefill (a causal boolean mask)."""
    g = torch.Generator().manual_seed(0)
    T, L = (24, 64) if case == "prefill" else (1, 300)
    q, k, v = (torch.randn(2, 16, n, 64, generator=g) for n in (T, L, L))
    if case == "prefill":
        mask = torch.ones(T, L, dtype=torch.bool).tril(L - T)[None, None]
    elif case == "row mask":
        mask = torch.zeros(2, 1, 1, L)
        mask[1, ..., 200:] = float("-inf")
    else:
        mask = None
    return q, k, v, mask


@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_attention_over_a_bf16_cache_is_within_rounding(case):
    q, k, v, mask = attention_case(case)
    want = attend(q, k, v, mask)
    got = attend(q, k.bfloat16(), v.bfloat16(), mask)
    assert got.dtype == torch.float32 and _relative_error(got, want) < ATTENTION_BOUND
    # Negative controls: a cache 16x coarser (fp8 e4m3), and values 2% off (a wrong scale), miss the bound.
    e4m3 = attend(q, k.to(torch.float8_e4m3fn).bfloat16(), v.to(torch.float8_e4m3fn).bfloat16(), mask)
    assert _relative_error(e4m3, want) > ATTENTION_BOUND
    assert _relative_error(attend(q, k.bfloat16(), (v * 1.02).bfloat16(), mask), want) > ATTENTION_BOUND


def _within(got):
    cos, kl, top1 = LOGIT_BOUNDS
    return got["cosine"] >= cos and got["kl"] <= kl and got["top1"] >= top1


def cache_agreement(tiny, dtype: torch.dtype) -> tuple[dict[str, float], object, object]:
    """Logits of the fp32 model over a `dtype` cache against the same model over the fp32 cache (the same weights:
    the cache alone differs), teacher-forced; returns them with (reference, candidate)."""
    cfg, state, tokens, cond = tiny
    reference = build_lm(cfg, dict(state), CPU, torch.float32)
    candidate = build_lm(cfg, dict(state), CPU, torch.float32)
    candidate.kv_dtype = dtype
    got = logit_agreement(reference, candidate, tokens, cond)
    assert candidate.layers[0].attn.kv_cache.kv.dtype == dtype
    assert got["kl"] > 0, f"the candidate computed exactly fp32: the {dtype} cache was not used"
    return got, reference, candidate


def test_logits_with_a_bf16_cache_stay_within_bounds(tiny):
    got, _, _ = cache_agreement(tiny, torch.bfloat16)
    assert _within(got), got


BROKEN = {
    "e4m3 rounding": lambda kv: kv.to(torch.float8_e4m3fn).float(),
    "int8, wrong scale": lambda kv: (kv * 127).round().clamp(-127, 127) / 127,  # a fixed scale that clips at 1
}


@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_the_logit_bounds_catch_a_broken_cache(tiny, broken, monkeypatch):
    cfg, state, tokens, cond = tiny
    reference = build_lm(cfg, dict(state), CPU, torch.float32)
    candidate = build_lm(cfg, dict(state), CPU, torch.float32)
    candidate.kv_dtype = torch.bfloat16
    update = KVCache.update

    def broken_update(self, input_pos, kv):  # only the candidate's (bf16) caches are broken
        return update(self, input_pos, BROKEN[broken](kv) if self.kv.dtype == torch.bfloat16 else kv)

    monkeypatch.setattr(KVCache, "update", broken_update)
    got = logit_agreement(reference, candidate, tokens, cond)
    assert not _within(got), got


NEEDS_INT8_KERNEL = pytest.mark.skipif(not native.supports("decode_attention_int8"), reason="the int8 cache's kernels need AVX2")


@pytest.mark.parametrize("dtype,dim", [(torch.bfloat16, 64),
                                       pytest.param(torch.int8, 128, marks=NEEDS_INT8_KERNEL, id="int8-native kernel (head 32)"),
                                       pytest.param(torch.int8, 64, marks=NEEDS_INT8_KERNEL, id="int8-unpacked (head 16)")])
def test_traced_step_equals_eager_step_over_a_narrow_cache(dtype, dim):
    cfg, state = _state(dim=dim, seed=2)
    traced, eager = (build_lm(cfg, dict(state), CPU, torch.int8) for _ in range(2))
    for lm in (traced, eager):
        lm.kv_dtype = dtype  # whatever this CPU's default: the path under test
    step = traced_step(traced)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 2048, (2, 4, 20), generator=g)
    cond = torch.randn(2, 6, cfg.dim, generator=g)
    with torch.inference_mode():
        for lm in (traced, eager):
            lm.setup_caches(2, 24)
            lm.set_condition(cond)
            lm(lm.embed(tokens[..., :3]), torch.arange(3), kv_len=3)
        for t in range(3, 20):
            pos = torch.tensor([t])
            got = step(traced.positioned(traced.embed(tokens[..., t : t + 1]), pos), pos, t + 1)
            assert torch.equal(got, eager(eager.embed(tokens[..., t : t + 1]), pos, kv_len=t + 1)), t
    assert torch.equal(traced.layers[0].attn.kv_cache.kv, eager.layers[0].attn.kv_cache.kv)
    assert {key[2] for key in step.graphs} == {dtype}  # traced (not run eagerly) for this cache


def _as_cache(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Keys or values as a cache of `dtype` stores them (an int8 cache: packed rows)."""
    return pack_int8_rows(x) if dtype == torch.int8 else x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, pytest.param(torch.int8, marks=NEEDS_INT8_KERNEL)])
def test_per_row_positions_write_only_their_columns(dtype):
    """A batch of streams writes one column per row at its own position into a view of a larger batch cache
    (`BatchCache.bind`): exactly those columns change, in this view and nowhere else."""
    g = torch.Generator().manual_seed(1)
    big = _as_cache(torch.randn(2, 8, 4, 32, 16, generator=g), dtype)
    before = big.clone()
    cache = KVCache(1, 4, 32, 16, dtype, CPU)
    cache.kv = big[:, 2:5]  # rows 2..4 of the batch, as a bound view
    pos = torch.tensor([[3], [31], [0]])
    new = torch.randn(2, 3, 4, 1, 16, generator=g)
    out = cache.update(pos, new)
    assert out.data_ptr() == big[:, 2:5].data_ptr()
    expect = before.clone()
    for r, p in enumerate(pos[:, 0].tolist()):
        expect[:, 2 + r, :, p] = _as_cache(new[:, r, :, 0], dtype)
    assert torch.equal(big, expect)


def test_bind_points_at_the_rows_and_follows_new_buffers(tiny):
    """`BatchCache.bind` keeps its views between rounds: after the buffers grow, or the LM makes new caches,
    it must point at the new ones, and put back what was there before."""
    lm = build_lm(tiny[0], dict(tiny[1]), CPU, torch.float32)
    lm.setup_caches(2, 16)
    own = lm.layers[-1].attn.kv_cache.kv
    cache = BatchCache(lm)
    cache.ensure(rows=4, length=16, cross_len=5, used=0)

    def bound(start, stop, cross_len=None):
        with cache.bind(start, stop, cross_len):
            layer = lm.layers[-1]
            return layer.attn.kv_cache.kv, layer.cross.k, layer.cross.mask

    for _ in range(2):  # the second time from the kept views
        kv, k, mask = bound(2, 4)
        assert kv.data_ptr() == cache.kvs[-1][:, 2:4].data_ptr() and kv.shape[1] == 2
        assert k.shape[0] == 2 and k.shape[2] == 5 and mask.shape[0] == 2
    assert bound(0, 2, cross_len=3)[1].shape[2] == 3 and bound(0, 2, cross_len=3)[2] is None
    assert lm.layers[-1].attn.kv_cache.kv is own  # put back
    cache.ensure(rows=4, length=32, cross_len=5, used=4)  # new, longer buffers
    kv, _, _ = bound(2, 4)
    assert kv.shape[3] == 32 and kv.data_ptr() == cache.kvs[-1][:, 2:4].data_ptr()
    lm.setup_caches(2, 24)  # new cache modules in the layers
    kv, _, _ = bound(0, 2)
    assert kv.data_ptr() == cache.kvs[-1].data_ptr()
    assert lm.layers[-1].attn.kv_cache.kv.shape[3] == 24  # the new module got its own buffer back
