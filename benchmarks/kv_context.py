"""What a decode step costs as the context fills: a step at a 1 s context (50 frames) against one at 10 s (500),
for each KV cache dtype, on musicgen-small's shape (random weights, guidance on: batch 2).

The LM is built once (`--dtype`, default auto = what `serve` picks here) and gets one full-window cache
(`--max-len` positions, 1504 = 30 s) per cache dtype, filled with random keys and values; the traced CPU step
(engine/steps.py) then runs `--steps` steps at each context, the cache dtypes and contexts interleaved in every
round (every other round in reverse order), so a change in the host's load hits all of them alike. A round's
figure for a row is its fastest step (best of `--steps`: on a shared host most slow steps are other work's
stalls, not this step's cost). Reports every round, the best and median round per row, and per cache dtype the ratio
500 / 50 of the best rounds and the median of the rounds' own ratios (the two contexts measured seconds apart).

    python benchmarks/kv_context.py [--threads 2] [--rounds 8] [--steps 20] [--kv float32,bfloat16] [--per-row]

`--per-row` gives every row its own position ([B, 1]), as the batching engine's steps do (a row mask and one
cache write per row).

`--kernels` instead times the candidate attention formulations alone on the step's shapes (one query, batch 2,
16 heads, head dim 64, over 24 layers' caches of `--max-len` positions, so the keys come from memory as in a
step): microseconds per layer at each context, best and median of `--rounds` interleaved rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from engine.assemble import build_lm
from engine.devices import resolve_dtype
from engine.lm import KVCache, LMConfig, MusicGenLM, attend, cache_row_width, pack_int8_rows
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
    p.add_argument("--dtype", default="auto", help="linear weight format (auto = what serve picks here)")
    p.add_argument("--max-len", type=int, default=1504, help="cache positions allocated (1504 = a 30 s window)")
    p.add_argument("--kernels", action="store_true", help="time the attention candidates alone")
    p.add_argument("--per-row", action="store_true",
                   help="positions [B, 1], one per row, as the batching engine steps (default: one shared [1])")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    contexts = [int(c) for c in a.contexts.split(",")]
    if a.kernels:
        return kernels(contexts, a.max_len, a.rounds)
    kv_dtypes = [getattr(torch, k) for k in a.kv.split(",")]
    lm = build(resolve_dtype(a.dtype, torch.device("cpu")))
    cfg, B = lm.cfg, 2
    lm.setup_caches(B, a.max_len)
    g = torch.Generator().manual_seed(1)
    cond = torch.randn(B, 24, cfg.dim, generator=g)
    cond[1] = 0  # the unconditional row
    lm.set_condition(cond)
    caches = {}
    for dt in kv_dtypes:
        caches[dt] = [KVCache(B, cfg.n_heads, a.max_len, cfg.head_dim, dt, lm.device) for _ in lm.layers]
        for c in caches[dt]:  # random keys and values (an int8 cache: packed rows with their scales)
            shape = (*c.kv.shape[:-1], cfg.head_dim)
            c.kv.copy_(pack_int8_rows(torch.randn(shape, generator=g)) if dt == torch.int8 else torch.randn(shape, generator=g))
    step = traced_step(lm)
    tokens = torch.randint(0, cfg.card, (B, cfg.n_codebooks, 1), generator=g)

    def run(dt: torch.dtype, ctx: int, n: int) -> float:
        for layer, c in zip(lm.layers, caches[dt]):
            layer.attn.kv_cache = c
        pos = torch.full((B, 1), ctx - 1) if a.per_row else torch.tensor([ctx - 1])
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
    print(f"\n{a.dtype} weights, {'per-row' if a.per_row else 'shared'} positions, {a.threads} threads, batch {B}, "
          f"{a.rounds} rounds x {a.steps} steps, load average {min(loads):.1f}-{max(loads):.1f}")
    print("| KV cache | " + " | ".join(f"ms/step at {c} (best / median)" for c in contexts)
          + f" | {contexts[-1]} / {contexts[0]}: best rounds | median of the rounds' ratios | MB of cache read at {contexts[-1]} |")
    print("|---|" + "---:|" * (len(contexts) + 3))
    for dt in kv_dtypes:
        best = [min(ms[(dt, c)]) for c in contexts]
        med = [statistics.median(ms[(dt, c)]) for c in contexts]
        ratio = statistics.median(x / y for x, y in zip(ms[(dt, contexts[-1])], ms[(dt, contexts[0])]))
        width = cfg.n_heads * cache_row_width(cfg.head_dim, dt)
        mb = 2 * cfg.n_layers * B * width * contexts[-1] * torch.empty(0, dtype=dt).element_size() / 1e6
        print(f"| {name(dt)} | " + " | ".join(f"{b:.1f} / {m:.1f}" for b, m in zip(best, med))
              + f" | {best[-1] / best[0]:.3f} | {ratio:.3f} | {mb:.0f} |")


def kernels(contexts: list[int], max_len: int, rounds: int, layers: int = 24) -> None:
    """Attention candidates for one query over a cache view [:, :, :, :L] of [2, B, H, max_len, d]."""
    B, H, d = 2, 16, 64
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, 1, d, generator=g)
    caches = [torch.randn(2, B, H, max_len, d, generator=g) for _ in range(layers)]
    narrow = {dt: [c.to(dt) for c in caches] for dt in (torch.bfloat16, torch.int8)}
    scales = [torch.rand(2, B, H, max_len, 1, generator=g).bfloat16() for _ in range(layers)]

    def bmm(kvs, L):  # today's fp32 path (attend's baddbmm + bmm), also run on bf16 tensors
        qn = q.to(kvs[0].dtype).reshape(B * H, 1, d)
        for kv in kvs:
            s = torch.bmm(qn, kv[0, :, :, :L].reshape(B * H, L, d).transpose(1, 2)) / d**0.5
            torch.bmm(torch.softmax(s.float(), -1).to(kv.dtype), kv[1, :, :, :L].reshape(B * H, L, d))

    def sdpa(kvs, L):  # what attend does for a narrow cache (and SDPA itself for fp32)
        for kv in kvs:
            attend(q, kv[0, :, :, :L], kv[1, :, :, :L], None) if kv.dtype != q.dtype else F.scaled_dot_product_attention(q, kv[0, :, :, :L], kv[1, :, :, :L])

    def int8_dequantized(kvs, L):  # int8 with per-position scales, widened to bf16 for SDPA
        for kv, sc in zip(kvs, scales):
            x = kv[:, :, :, :L].to(torch.bfloat16).mul_(sc[:, :, :, :L])
            F.scaled_dot_product_attention(q.bfloat16(), x[0], x[1])

    candidates = {"fp32 bmm (today)": (bmm, caches), "fp32 SDPA": (sdpa, caches), "bf16 bmm": (bmm, narrow[torch.bfloat16]),
                  "bf16 SDPA (shipped on CPUs with AMX)": (sdpa, narrow[torch.bfloat16]), "int8 + scales, widened, SDPA": (int8_dequantized, narrow[torch.int8])}
    from engine import native

    if native.supports("decode_attention_int8"):  # the packed int8 cache on the native kernel (what ships)
        packed = [pack_int8_rows(c) for c in caches]

        def native_int8(kvs, L):
            for kv in kvs:
                torch.ops.musicgen_bridge.decode_attention(q, kv[0, :, :, :L], kv[1, :, :, :L], None, d**-0.5)

        candidates["int8 packed, native kernel (shipped for integer weights)"] = (native_int8, packed)
    print(f"attention alone, {torch.get_num_threads()} threads, us per layer (best / median of {rounds} rounds)")
    print("| candidate | " + " | ".join(f"L = {L}" for L in contexts) + " |")
    print("|---|" + "---:|" * len(contexts))
    us = {(n, L): [] for n in candidates for L in contexts}
    for i in range(rounds):
        for n, (fn, kvs) in candidates.items() if i % 2 == 0 else reversed(candidates.items()):
            for L in contexts:
                t = time.perf_counter()
                fn(kvs, L)
                us[(n, L)].append((time.perf_counter() - t) / layers * 1e6)
    for n in candidates:
        print(f"| {n} | " + " | ".join(f"{min(us[(n, L)]):.0f} / {statistics.median(us[(n, L)]):.0f}" for L in contexts) + " |")


def name(dt: torch.dtype) -> str:
    return str(dt).removeprefix("torch.")


if __name__ == "__main__":
    main()
