"""Where a GPU decode step's time goes (musicgen-small's shape, random weights, guidance on): the whole step as
generation runs it, the CUDA-graph replay alone, guidance and sampling alone, and torch.profiler's top kernels.

    python benchmarks/gpu_step_profile.py [--cache-dir DIR] [--steps 200] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import time

import torch


def timed(fn, n: int) -> float:
    """Mean ms per call of `fn` over `n` calls, the GPU drained before and after."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache-dir", default="/tmp/ckpt-small")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--dtype", default="bfloat16")
    a = p.parse_args()

    from bridge.bench import PROMPT, _settings, ensure_checkpoint
    from engine.checkpoint import load_model
    from engine.generate import open_stream
    from engine.sampling import guide, sample
    from engine.steps import graphed_step

    model = load_model(str(ensure_checkpoint(a.cache_dir)), device="cuda", dtype=a.dtype)
    stream = open_stream(model, PROMPT, _settings(), frames=3 * a.steps + 100)
    for _ in range(20):  # prefill, capture, warm-up
        stream.step()
    print(f"step mode {stream.step_mode}, cache length {model.lm.max_len}")
    whole = timed(stream.step, a.steps)

    graph = graphed_step(model.lm)
    tokens, pos = graph.tokens.clone(), graph.input_pos.clone()
    replay = timed(lambda: graph(tokens, pos), a.steps)
    logits = graph(tokens, pos)[:, :, -1].clone()
    settings = stream.settings
    sampling = timed(lambda: sample(guide(logits, settings.cfg), settings, stream.generator), a.steps)
    synced = timed(lambda: sample(guide(logits, settings.cfg), settings, stream.generator).cpu(), a.steps)
    print(f"| part | ms per step |\n|---|---:|\n| whole step (generation) | {whole:.3f} |\n"
          f"| graph replay alone, back to back | {replay:.3f} |\n| guide + sample, back to back | {sampling:.3f} |\n"
          f"| guide + sample + .cpu() each | {synced:.3f} |")

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(50):
            stream.step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=50)
    print("top by self CPU time (50 steps):\n" + table)
    table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=18, max_name_column_width=50)
    print("top by self CUDA time (50 steps):\n" + table)


if __name__ == "__main__":
    main()
