"""The decode step alone, per weight format, A against B in one process: musicgen-small's decoder shape (random
weights), guidance batch 2, the traced step the token stream runs, at a context of `--context` positions (100).

Rounds interleave the formats (each round runs `--steps` steps of every format in turn), so a host whose load
changes moves all of them alike. Per round it reports wall ms per step and this process's CPU ms per step: with
1 thread the CPU time is what the step costs even when other work takes the core part of the time (with 2
threads it also counts OpenMP's spinning).

    python benchmarks/step_formats.py [--formats int8,w8a8,int4] [--threads 1] [--rounds 5] [--steps 10]
        [--context 100] [--profile]

`w8a8` runs on the kernels `--dtype w8a8` picks here (the native ones where they build: the int8 linear with the
norms and GELU moved into it, the decode attention). The variants, each one change from `w8a8`:
`w8a8-4k` keeps the weights and the KV cache on 4 KB pages; `w8a8-unfused` keeps the norms and GELU as separate ops; `w8a8-sdpa` runs the attention on PyTorch's SDPA;
`w8a8-fbgemm` runs the same weights and rounding on fbgemm's int8 linear (the norms and GELU separate);
`w8a8-onednn` on oneDNN's `qlinear_pointwise` (before fbgemm).
"""

from __future__ import annotations

import argparse
import contextlib
import time
import warnings

import torch

from benchmarks.step_weights import OneDNNW8A8
from engine.assemble import narrow_kv_dtype
from engine.lm import LMConfig, MusicGenLM
import engine.lm
from engine import hugepages, quantize
from engine.quantize import FbgemmW8A8Linear, Int8Linear, _swap_linears, prepare_for_cpu
from engine.steps import traced_step


@contextlib.contextmanager
def _patched(module, name: str, value):
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


def make_lm(weights: str, cond: torch.Tensor, max_len: int) -> MusicGenLM:
    torch.manual_seed(0)
    lm = MusicGenLM(LMConfig()).eval().requires_grad_(False)
    with torch.no_grad():
        for p in lm.parameters():
            p.normal_(0.0, 0.02)
    kernels = {"w8a8-onednn": OneDNNW8A8, "w8a8-fbgemm": FbgemmW8A8Linear}
    if weights in kernels:  # w8a8's weights, rounding and heads on another kernel
        lm.heads = Int8Linear(lm.heads.weight)
        _swap_linears(lm, kernels[weights])
    elif weights == "w8a8-4k":
        with _patched(hugepages, "_madvise", None):
            prepare_for_cpu(lm, "w8a8")
    elif weights == "w8a8-unfused":
        with _patched(quantize, "fuse_into_native_linears", lambda lm: 0):
            prepare_for_cpu(lm, "w8a8")
    else:
        prepare_for_cpu(lm, weights.removesuffix("-sdpa"))
    lm.kv_dtype = narrow_kv_dtype("w8a8" if weights.startswith("w8a8") else weights, lm.cfg.head_dim)  # as assemble picks
    with _patched(hugepages, "_madvise", None) if weights == "w8a8-4k" else contextlib.nullcontext():
        lm.setup_caches(2, max_len)
    lm.set_condition(cond)
    return lm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--formats", default="int8,w8a8,int4")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="steps per format per round")
    p.add_argument("--context", type=int, default=100, help="positions already in the cache")
    p.add_argument("--profile", action="store_true", help="then torch.profiler's op table per format")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    warnings.simplefilter("ignore")
    formats = a.formats.split(",")
    cond = torch.randn(2, 12, 1024, generator=torch.Generator().manual_seed(1))
    tokens = torch.randint(0, 2048, (2, 4, 1), generator=torch.Generator().manual_seed(2))
    ctx = a.context
    lms = {f: make_lm(f, cond, ctx + a.steps + 64) for f in formats}
    steps = {f: traced_step(lm) for f, lm in lms.items()}

    def step(f: str, pos: int) -> None:
        lm, ip = lms[f], torch.tensor([pos])
        steps[f](lm.positioned(lm.embed(tokens), ip), ip, pos + 1)

    rows: dict[str, list[tuple[float, float]]] = {f: [] for f in formats}
    with torch.inference_mode():
        for f in formats:  # trace (a -sdpa format without the native attention) and warm up
            with _patched(engine.lm, "_native_decode", lambda q, k, mask: False) if f.endswith("-sdpa") else contextlib.nullcontext():
                for i in range(3):
                    step(f, ctx - 4 + i)
        for _ in range(a.rounds):
            for f in formats:
                c0, t0 = time.process_time(), time.perf_counter()
                for i in range(a.steps):
                    step(f, ctx + i)
                rows[f].append(((time.perf_counter() - t0) / a.steps * 1e3, (time.process_time() - c0) / a.steps * 1e3))
    print(f"| format | wall ms/step, every round | CPU ms/step, every round | median wall ms | median CPU ms |  "
          f"({a.threads} threads, context {ctx})")
    print("|---|---|---|---:|---:|")
    for f, r in rows.items():
        wall, cpu = sorted(w for w, _ in r), sorted(c for _, c in r)
        print(f"| {f} | {', '.join(f'{w:.1f}' for w, _ in r)} | {', '.join(f'{c:.1f}' for _, c in r)} | "
              f"{wall[len(wall) // 2]:.1f} | {cpu[len(cpu) // 2]:.1f} |")
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        for f in formats:
            with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
                for i in range(a.steps):
                    step(f, ctx + i)
            print(f"\n{f}, {a.steps} steps\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
