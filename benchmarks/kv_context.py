"""What a decode step costs as the context fills: a step at a 1 s context (50 frames) against one at 10 s (500),
for each KV cache dtype, on musicgen-small's shape (random weights, guidance on: batch 2).

The LM is built once (`--dtype`, default int8 = what `--dtype auto` picks on CPU) and gets one full-window cache
(`--max-len` positions, 1504 = 30 s) per cache dtype, filled with random keys and values; the traced CPU step
(engine/steps.py) then runs `--steps` steps at each context, the cache dtypes and contexts interleaved in every
round (every other round in reverse order), so a change in the host's load hits all of them alike. A round's
figure for a row is its fastest step (best of `--steps`: on a shared host most slow steps are other work's
stalls, not this step's cost). Reports every round, the best and median round per row, and per cache dtype the ratio
500 / 50 of the best rounds and the median of the rounds' own ratios (the two contexts measured seconds apart).

    python benchmarks/kv_context.py [--threads 2] [--rounds 8] [--steps 20] [--kv float32,bfloat16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from engine.assemble import build_lm
from engine.lm import KVCache, LMConfig, MusicGenLM
from engine.steps import traced_step


def build(dtype: torch.dtype, seed: int = 0) -> MusicGenLM:
    """musicgen-small's decoder with random weights, prepared as `build_lm` prepares a checkpoint."""
    torch.manual_seed(seed)
    cfg = LMConfig()
    return build_lm(cfg, MusicGenLM(cfg).state_dict(), torch.device("cpu"), dtype)


@torch.inference_mode()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=20, help="steps per row and round (the fastest counts)")
    p.add_argument("--contexts", default="50,500", help="cache positions attended to (50 frames = 1 s)")
    p.add_argument("--kv", default="float32,bfloat16", help="KV cache dtypes to compare")
    p.add_argument("--dtype", default="int8", help="linear weight format (int8 = the CPU default)")
    p.add_argument("--max-len", type=int, default=1504, help="cache positions allocated (1504 = a 30 s window)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    contexts = [int(c) for c in a.contexts.split(",")]
    kv_dtypes = [getattr(torch, k) for k in a.kv.split(",")]
    lm = build(getattr(torch, a.dtype))
    cfg, B = lm.cfg, 2
    lm.setup_caches(B, a.max_len)
    g = torch.Generator().manual_seed(1)
    cond = torch.randn(B, 24, cfg.dim, generator=g)
    cond[1] = 0  # the unconditional row
    lm.set_condition(cond)
    caches = {}
    for dt in kv_dtypes:
        caches[dt] = [KVCache(B, cfg.n_heads, a.max_len, cfg.head_dim, dt, lm.device) for _ in lm.layers]
        for c in caches[dt]:
            c.kv.copy_(torch.randn(c.kv.shape, generator=g))
    step = traced_step(lm)
    tokens = torch.randint(0, cfg.card, (B, cfg.n_codebooks, 1), generator=g)

    def run(dt: torch.dtype, ctx: int, n: int) -> float:
        for layer, c in zip(lm.layers, caches[dt]):
            layer.attn.kv_cache = c
        pos = torch.tensor([ctx - 1])
        h = lm.positioned(lm.embed(tokens), pos)
        best = float("inf")
        for _ in range(n):  # the fastest of n steps: a step the host's other work did not stall
            t = time.perf_counter()
            step(h, pos, ctx)
            best = min(best, time.perf_counter() - t)
        return best * 1e3

    rows = [(dt, ctx) for dt in kv_dtypes for ctx in contexts]
    for dt, ctx in rows:  # trace and warm every row once
        run(dt, ctx, 2)
    ms: dict[tuple, list[float]] = {r: [] for r in rows}
    loads = []
    for i in range(a.rounds):
        for r in rows if i % 2 == 0 else rows[::-1]:  # every other round backwards: slow drifts hit all rows alike
            ms[r].append(run(*r, a.steps))
        loads.append(os.getloadavg()[0])
        ratios = ", ".join(f"{name(dt)} {ms[(dt, contexts[-1])][-1] / ms[(dt, contexts[0])][-1]:.3f}" for dt in kv_dtypes)
        print(f"round {i + 1}: " + ", ".join(f"{name(dt)}@{ctx} {ms[(dt, ctx)][-1]:.1f}" for dt, ctx in rows)
              + f" ms; {contexts[-1]}/{contexts[0]}: {ratios}", flush=True)
    print(f"\n{a.dtype} weights, {a.threads} threads, batch {B}, {a.rounds} rounds x {a.steps} steps, "
          f"load average {min(loads):.1f}-{max(loads):.1f}")
    print("| KV cache | " + " | ".join(f"ms/step at {c} (best / median)" for c in contexts)
          + f" | {contexts[-1]} / {contexts[0]}: best rounds | median of the rounds' ratios | MB of cache read at {contexts[-1]} |")
    print("|---|" + "---:|" * (len(contexts) + 3))
    for dt in kv_dtypes:
        best = [min(ms[(dt, c)]) for c in contexts]
        med = [statistics.median(ms[(dt, c)]) for c in contexts]
        ratio = statistics.median(x / y for x, y in zip(ms[(dt, contexts[-1])], ms[(dt, contexts[0])]))
        mb = 2 * cfg.n_layers * B * cfg.dim * contexts[-1] * torch.empty(0, dtype=dt).element_size() / 1e6
        print(f"| {name(dt)} | " + " | ".join(f"{b:.1f} / {m:.1f}" for b, m in zip(best, med))
              + f" | {best[-1] / best[0]:.3f} | {ratio:.3f} | {mb:.0f} |")


def name(dt: torch.dtype) -> str:
    return str(dt).removeprefix("torch.")


if __name__ == "__main__":
    main()
