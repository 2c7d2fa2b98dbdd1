"""Cross-attention folded into the text (`engine.lm.CrossAttention`): the native op against attention through the
projections, the keys a mask rules out and the null condition read nothing, logits within bounds of the unfolded
model (with negative controls), which requests fold, and a batch of folded, unfolded and mixed requests giving each
the codes it gets alone.

Bounds, measured here: the op's result is ~7e-3 from fp32 attention through the projections (relative norm: p and u
rounded to 127 steps of each row's largest magnitude); bound 1.5e-2 (2x). Teacher-forced on the tiny int8-weight model
of tests/test_kv_cache.py, folded against unfolded logits: cosine ~0.99996, KL ~1.3e-4 nats, top-1 ~0.99; bounds
cosine >= 0.9998, KL <= 4e-4 (3x), top-1 >= 0.96. Values 3 % off (KL ~5.2e-4) and p without the 1/sqrt(d) scale
(KL ~0.12) miss them.
"""

from __future__ import annotations

import math
import threading

import pytest
import torch

from engine.assemble import build_lm
from engine.batch_engine import BatchEngine
from engine.generate import open_stream
from engine.lm import CrossAttention, pack_int8_rows, unpack_int8_rows
from engine.quantize import logit_agreement, module_bytes
from engine.sampling import SamplingSettings
from engine.tiny import WORDS, tiny_config, tiny_reference_model, tiny_tokenizer
from tests.test_kv_cache import _state

CPU = torch.device("cpu")
OP_BOUND = 1.5e-2
LOGIT_BOUNDS = (0.9998, 4e-4, 0.96)  # mean cosine >=, mean KL <= (nats), top-1 agreement >=
pytestmark = pytest.mark.skipif(not torch.cpu._is_avx512_supported(), reason="the folded kernel needs AVX-512")


def _problem(B=2, H=4, S=7, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = H * d
    wq, wo = (torch.randn(D, D, generator=g) / math.sqrt(D) for _ in range(2))
    k, v = torch.randn(B, H, S, d, generator=g), torch.randn(B, H, S, d, generator=g)
    return wq, wo, k, v, torch.randn(B, 1, D, generator=g)


def _through_projections(x, wq, wo, k, v, mask=None):
    H, d = k.shape[1], k.shape[3]
    q = (x @ wq.T).unflatten(-1, (H, d)).transpose(1, 2)
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return y.transpose(1, 2).flatten(2) @ wo.T


def _fold(wq, wo, k, v):
    H, d, D = k.shape[1], k.shape[3], wq.shape[1]
    p = torch.einsum("bhsd,hdD->bhsD", k, wq.view(H, d, D)) / math.sqrt(d)
    u = torch.einsum("bhsd,Dhd->bhsD", v, wo.view(D, H, d))
    return pack_int8_rows(p), pack_int8_rows(u)


def _folded(x, p, u, mask=None, live=None):
    live = torch.ones(x.shape[0], dtype=torch.bool) if live is None else live
    return torch.ops.musicgen_bridge.cross_attention_folded(x, p, u, mask, live)


def _err(got, want):
    return ((got - want).norm() / want.norm()).item()


@pytest.mark.parametrize("heads", [4, 3, 5], ids=["width 128", "width 96", "width 160"])  # whole, short, long blocks
def test_the_folded_op_is_attention_through_the_projections(heads):
    wq, wo, k, v, x = _problem(H=heads)
    want = _through_projections(x, wq, wo, k, v)
    assert _err(_folded(x, *_fold(wq, wo, k, v)), want) < OP_BOUND
    # Negative controls: the heads' blocks of wq in the wrong order, and values 2 % off, miss the bound.
    H, d, D = k.shape[1], k.shape[3], wq.shape[1]
    rolled = wq.view(H, d, D).roll(1, 0).reshape(D, D)
    assert _err(_folded(x, *_fold(rolled, wo, k, v)), want) > OP_BOUND
    assert _err(_folded(x, *_fold(wq, wo, k, v * 1.02)), want) > OP_BOUND


def test_more_keys_than_one_run_of_int32_sums_holds():
    """The kernel sums values in int32 over 512 keys at a time (engine/native/decode_attention.cpp, kWideKeys):
    1500 keys of nearly uniform weight over the same value would overflow a single run (checked: it does)."""
    wq, wo, k, v, x = _problem(S=1500)
    k, v = k * 0.01, v[:, :, :1].expand_as(v).contiguous()  # nearly uniform weights, every value row the same
    assert _err(_folded(x, *_fold(wq, wo, k, v)), _through_projections(x, wq, wo, k, v)) < OP_BOUND


def test_masked_keys_and_rows_without_a_prompt_read_nothing():
    wq, wo, k, v, x = _problem(S=9)
    p, u = _fold(wq, wo, k, v)
    mask = torch.zeros(2, 1, 1, 9)
    mask[0, ..., 5:] = float("-inf")  # row 0's prompt is 5 keys, padded to 9
    p[0, :, 5:], u[0, :, 5:] = 127, 127
    p[0, :, 5:, -4:] = u[0, :, 5:, -4:] = torch.tensor([0, 0, -64, 127], dtype=torch.int8)  # their scales NaN
    assert bool(unpack_int8_rows(p[0, :, 5:]).isnan().all())
    got = _folded(x, p, u, mask)
    want = _folded(x[:1], p[:1, :, :5].contiguous(), u[:1, :, :5].contiguous())
    assert torch.equal(got[:1], want)  # the padded keys changed nothing, NaN as they are
    # A row that is not live is exactly zero, whatever its rows hold.
    got = _folded(x, p, u, mask, torch.tensor([False, True]))
    assert torch.equal(got[0], torch.zeros_like(got[0])) and bool(got[1].abs().sum() > 0)


def test_a_query_with_a_nan_or_infinity_gives_its_row_nan_and_no_other():
    # As attention through the projections would. The query is rounded to int16 on its largest magnitude: a NaN
    # there once rounded to an arbitrary integer and the row came out finite.
    wq, wo, k, v, x = _problem()
    p, u = _fold(wq, wo, k, v)
    clean = _folded(x, p, u)
    for bad in (float("nan"), float("inf")):
        y = x.clone()
        y[0, 0, 3] = bad
        got = _folded(y, p, u)
        assert bool(got[0].isnan().all()), bad
        assert torch.equal(got[1], clean[1])


@pytest.fixture(scope="module")
def tiny128():
    cfg, state = _state(dim=128)  # head 32: the int8 cache and the fold both run
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 2048, (2, 4, 60), generator=g)
    cond = torch.randn(2, 12, cfg.dim, generator=g)
    cond[1] = 0  # guidance's null condition
    return cfg, state, tokens, cond


def _unfolded(lm):
    lm.can_fold = lambda: False
    return lm


def _within(got):
    cos, kl, top1 = LOGIT_BOUNDS
    return got["cosine"] >= cos and got["kl"] <= kl and got["top1"] >= top1


def test_folded_logits_stay_within_bounds_of_the_unfolded_model(tiny128):
    cfg, state, tokens, cond = tiny128
    reference = _unfolded(build_lm(cfg, dict(state), CPU, torch.int8))
    candidate = build_lm(cfg, dict(state), CPU, torch.int8)
    got = logit_agreement(reference, candidate, tokens, cond)
    assert candidate.layers[0].cross.p is not None and reference.layers[0].cross.p is None
    assert candidate.layers[0].cross.live.tolist() == [True, False]  # the null condition is not folded
    assert _within(got) and got["kl"] > 0, got


@pytest.mark.parametrize("broken", ["values 3 % off", "p without 1/sqrt(d)"])
def test_the_logit_bounds_catch_a_broken_fold(tiny128, broken, monkeypatch):
    cfg, state, tokens, cond = tiny128
    reference = _unfolded(build_lm(cfg, dict(state), CPU, torch.int8))
    fold = CrossAttention.folded

    def folded(self, k, v):
        p, u = fold(self, k, v)
        if broken == "values 3 % off":
            return p, pack_int8_rows(unpack_int8_rows(u) * 1.03)
        return pack_int8_rows(unpack_int8_rows(p) * math.sqrt(self.head_dim)), u

    monkeypatch.setattr(CrossAttention, "folded", folded)
    assert not _within(logit_agreement(reference, build_lm(cfg, dict(state), CPU, torch.int8), tokens, cond))


def test_a_request_folds_when_its_rows_are_fewer_bytes_than_the_projections(tiny128):
    cfg, state = tiny128[:2]
    lm = build_lm(cfg, dict(state), CPU, torch.int8)
    projections = module_bytes(lm.layers[0].cross.wq) + module_bytes(lm.layers[0].cross.wo)
    per_key = cfg.n_heads * 2 * (cfg.dim + 4)  # p and u of one key: packed int8 rows of the model's width
    longest = (projections - 1) // per_key
    assert lm.folds_cross(1, longest) and not lm.folds_cross(1, longest + 1)
    assert lm.folds_cross(2, longest // 2) and not lm.folds_cross(2, longest)  # two rows with prompts: half as long
    assert not build_lm(cfg, dict(state), CPU, torch.float32).can_fold()  # fp32 weights keep the model's own path


@pytest.fixture(scope="module")
def folding_model(tmp_path_factory):
    """A text checkpoint of head size 32 loaded with int8 weights: the int8 cache and the fold both run."""
    from engine.checkpoint import load_model

    folder = tmp_path_factory.mktemp("tiny-128")
    tiny_reference_model(tiny_config(dim=128, heads=4), seed=5).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    model = load_model(str(folder), device="cpu", dtype="int8")
    assert model.lm.can_fold()
    return model


SHORT = ("warm keys", SamplingSettings(seed=1, top_k=50), 20)
LONG = (" ".join(WORDS[i % len(WORDS)] for i in range(60)), SamplingSettings(seed=2), 10)  # too long to fold; ends first


def _batched(engine, requests):
    out = [None] * len(requests)

    def run(i):
        prompt, settings, frames = requests[i]
        out[i] = engine.token_stream(prompt, settings, frames=frames).run().clone()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_each_request_gets_its_own_codes_in_a_batch_of_folded_and_unfolded_requests(folding_model, monkeypatch):
    model = folding_model
    requests = [SHORT, LONG, ("techno drums", SamplingSettings(seed=3, greedy=True), 16)]
    alone = [open_stream(model, p, s, frames=n).run().clone() for p, s, n in requests]
    folds = []
    for p, s, n in requests:  # which of them fold, alone
        open_stream(model, p, s, frames=1).run()
        folds.append(model.lm.layers[0].cross.p is not None)
    assert folds == [True, False, True]
    engine = BatchEngine(model)
    try:
        together = _batched(engine, requests)
        assert engine.stats.rows / engine.stats.rounds > 2  # they did share steps
    finally:
        engine.close()
    for request, codes, want in zip(requests, together, alone):
        assert torch.equal(codes, want), request[0]
    # The batch's traced steps (key: rows, ..., inputs): folded rounds (7 inputs) and mixed ones (8) among them.
    assert {7, 8} <= {key[-1] for key in model.lm.compiled_steps["traced"].graphs if key[3] == 2}


def test_unfolded_rows_in_a_mixed_batch_need_their_own_attention(folding_model, monkeypatch):
    """Negative control for the test above: with the unfolded request's rows dropped from the sum (std_rows 0), its
    codes change."""
    model = folding_model
    engine = BatchEngine(model)
    real = engine.cache.set_condition

    def drop_unfolded(row, cross, fold=None):
        real(row, cross, fold)
        engine.cache.std_rows.zero_()

    monkeypatch.setattr(engine.cache, "set_condition", drop_unfolded)
    try:
        together = _batched(engine, [SHORT, LONG])
    finally:
        engine.close()
    assert not torch.equal(together[1], open_stream(model, *LONG[:2], frames=LONG[2]).run())
