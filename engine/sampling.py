"""Choosing the next token of every codebook: classifier-free guidance, temperature, top-k, top-p, greedy.

Meta's recipe: logits = uncond + (cond - uncond) * cfg; softmax(logits / temperature); top-k on the
probabilities keeping ties with the k-th, or top-p when top_p > 0; renormalize; one draw per codebook from a
generator owned by the request, so a seed gives the same music whatever else is running.

The draw is the exponential race that `torch.multinomial` runs for one sample (argmax of p_i / E_i with E_i ~
Exp(1) picks i with probability p_i), with the exponentials made from `torch.rand`: on CPU `exponential_` with
a generator costs several times as much (benchmarks/RESULTS.md, "Sampling").
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.errors import UserError


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    cfg: float = 3.0
    greedy: bool = False
    seed: int | None = None

    def validate(self, card: int = 2048) -> "SamplingSettings":
        def bad(name, value, rule):
            raise UserError(f"{name}={value!r} is out of range: it must be {rule}", code="bad_args")

        for name in ("temperature", "top_p", "cfg"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(name, v, "a finite number")
        if self.temperature < 0 or self.temperature > 100:
            bad("temperature", self.temperature, "between 0 and 100 (0 means greedy)")
        if not 0.0 <= self.top_p <= 1.0:
            bad("top_p", self.top_p, "between 0 and 1 (0 turns it off)")
        if not isinstance(self.top_k, int) or not 0 <= self.top_k <= card:
            bad("top_k", self.top_k, f"an integer between 0 and {card} (0 turns it off)")
        if self.cfg < 0 or self.cfg > 100:
            bad("cfg", self.cfg, "between 0 and 100 (1 turns guidance off)")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < 2**63):
            bad("seed", self.seed, "a non-negative integer")
        return self

    @property
    def uses_guidance(self) -> bool:
        return self.cfg != 1.0

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0


def guide(logits: Tensor, cfg: float) -> Tensor:
    """[2B, K, V] logits of [cond; uncond] -> [B, K, V] guided logits ([B, K, V] passes through)."""
    if logits.shape[0] == 1:
        return logits
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + (cond - uncond) * cfg


def sample(logits: Tensor, settings: SamplingSettings, generator: torch.Generator | None) -> Tensor:
    """Guided logits [B, K, V] -> tokens [B, K]."""
    if settings.is_greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / settings.temperature, dim=-1)
    if settings.top_p > 0.0:
        probs = _top_p(probs, settings.top_p)
    elif settings.top_k > 0:
        kth = torch.topk(probs, settings.top_k, dim=-1).values[..., -1:]
        probs = probs * (probs >= kth)  # >= keeps every token tied with the k-th
    return draw(probs, generator)


def draw(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One index per row of non-negative weights [..., V] (need not sum to 1), index i with probability p_i / sum p."""
    u = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=torch.float32)
    # E = -log(1 - u) ~ Exp(1); u = 0 gives E = 0, kept finite so a zero weight never wins by 0/0.
    race = probs / (-torch.log1p(-u)).clamp_min_(1e-30)
    return race.argmax(dim=-1)


def _top_p(probs: Tensor, p: float) -> Tensor:
    sorted_probs, idx = torch.sort(probs, dim=-1, descending=True)
    # Drop a token once the mass before it already exceeds p; the most likely token always stays.
    drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) > p
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter_(-1, idx, sorted_probs)


def resolve_seed(seed: int | None) -> int:
    """The seed a request runs with: its own, or a fresh one that can be reported so a take can be redone."""
    return seed if seed is not None else secrets.randbits(62)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator owned by one request, independent of torch's global RNG and of other requests."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def take_seed(seed: int, index: int) -> int:
    """The seed of take `index` (0-based) of a request whose resolved seed is `seed`: take 0 is the request
    itself, so asking for one take or several gives the same first take. Wraps inside the valid seed range."""
    return (seed + index) % 2**63
