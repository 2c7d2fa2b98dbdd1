"""Where a decode step's time goes: torch.profiler over traced steps of musicgen-small's decoder (random weights),
batch 2 (guidance), per-row positions as the batching engine runs them, on a thread of its own (engine/threads.py).

    python benchmarks/step_profile.py [--dtype qint8] [--threads 2] [--context 100] [--steps 10]

Prints ms per step, then the ops with the most self time per step and their calls per step.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.kv_context import build
from engine.assemble import narrow_kv_dtype
from engine.steps import decode_step
from engine.threads import in_own_thread


WEIGHTS = {"qint8": "w8a8"}  # --dtype's torch name -> the engine's weight format name


def profile(lm, context: int, steps: int, rows: int = 20) -> None:
    lm.setup_caches(2, 1504)
    lm.set_condition(torch.randn(2, 12, lm.cfg.dim))
    decode = decode_step(lm, "traced")
    tokens, pos = torch.full((2, lm.cfg.n_codebooks, 1), 5), torch.full((2, 1), context - 1)
    with torch.inference_mode():
        for _ in range(5):
            decode(tokens, pos, context)
        t = time.perf_counter()
        for _ in range(2 * steps):
            decode(tokens, pos, context)
        print(f"{(time.perf_counter() - t) / (2 * steps) * 1000:.1f} ms/step (unprofiled)")
        with torch.profiler.profile() as prof:
            for _ in range(steps):
                decode(tokens, pos, context)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events) / steps / 1000
    print(f"| op | ms/step (self) | share | calls/step |\n|---|---:|---:|---:|")
    for e in events[:rows]:
        ms = e.self_cpu_time_total / steps / 1000
        print(f"| {e.key} | {ms:.2f} | {ms / total:.0%} | {e.count // steps} |")
    print(f"| all ops | {total:.2f} | | |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="qint8", help="linear weights (qint8 = w8a8, the CPU default)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--context", type=int, default=100)
    p.add_argument("--steps", type=int, default=10)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    lm = in_own_thread(build, getattr(torch, a.dtype))
    lm.kv_dtype = narrow_kv_dtype(WEIGHTS.get(a.dtype, a.dtype), lm.cfg.head_dim)  # the cache the engine picks
    in_own_thread(profile, lm, a.context, a.steps)


if __name__ == "__main__":
    main()
