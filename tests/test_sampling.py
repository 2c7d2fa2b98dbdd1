"""Top-k keeps ties, top-p keeps the nucleus, guidance is Meta's formula, greedy is argmax."""

from __future__ import annotations

import pytest
import torch

from engine.errors import UserError
from engine.sampling import SamplingSettings, draw, guide, make_generator, sample


def test_guidance_formula():
    cond, uncond = torch.randn(1, 4, 16), torch.randn(1, 4, 16)
    out = guide(torch.cat([cond, uncond]), 3.0)
    assert torch.allclose(out, uncond + (cond - uncond) * 3.0)
    assert guide(cond, 3.0) is cond


def test_top_k_keeps_ties_and_nothing_below():
    logits = torch.log(torch.tensor([[[0.3, 0.2, 0.2, 0.2, 0.1]]]))
    g = make_generator(0)
    seen = {int(sample(logits, SamplingSettings(top_k=2), g)) for _ in range(400)}
    assert seen == {0, 1, 2, 3}  # the 2nd place is a three-way tie: all kept; 0.1 never drawn


def test_draw_follows_the_weights():
    # 40,000 draws from 4 rows at once: every frequency within 4 standard errors of its weight, zeros never drawn.
    weights = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625, 0.0])
    g = make_generator(7)
    counts = torch.zeros(6)
    for _ in range(10_000):
        idx = draw(weights.expand(4, 6) * 3.0, g)  # unnormalized weights are fine
        counts += torch.bincount(idx, minlength=6)
    freq = counts / counts.sum()
    se = (weights * (1 - weights) / counts.sum()).sqrt()
    assert counts[-1] == 0
    assert ((freq - weights).abs() <= 4 * se + 1e-9).all(), freq


def test_draw_is_reproducible_per_generator():
    probs = torch.softmax(torch.randn(2, 4, 2048), -1)
    a = [draw(probs, make_generator(3)) for _ in range(2)]
    assert torch.equal(a[0], a[1])
    assert not torch.equal(draw(probs, make_generator(3)), draw(probs, make_generator(4)))


def test_top_p_nucleus():
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]]))
    g = make_generator(0)
    seen = {int(sample(logits, SamplingSettings(top_p=0.7), g)) for _ in range(400)}
    assert seen == {0, 1}


def test_greedy_and_temperature_zero_are_argmax():
    logits = torch.randn(1, 4, 32)
    for s in (SamplingSettings(greedy=True), SamplingSettings(temperature=0.0)):
        assert torch.equal(sample(logits, s, None), logits.argmax(-1))


@pytest.mark.parametrize("bad", [dict(top_k=-1), dict(top_k=5000), dict(top_p=1.5), dict(temperature=float("nan")),
                                 dict(cfg=-1.0), dict(temperature=-0.5), dict(seed=-3)])
def test_bad_settings(bad):
    with pytest.raises(UserError):
        SamplingSettings(**bad).validate()
