"""`bench --streams 1,2,4,8`: one BatchEngine, many streams, on musicgen-small's shape (random weights).

Two measurements, in one process so every ratio is taken on the same machine at the same time:
- Token streams: N guided streams of `steps` decoder steps each, started together: aggregate steps/s, per-stream
  real-time factor (50 steps = 1 s of audio), and what the joining requests' prefills cost the running rows.
- Requests (the issue's goals): N concurrent 2-bar `/generate`-like requests (T5, decoder, codec: a whole
  `StreamSpec` through `Engine.open`), and N takes of one request (`engine.takes`), each timed against one alone
  in the same round; every round is printed, since other work on a shared machine moves single figures.
"""

from __future__ import annotations

import threading
import time
from fractions import Fraction
from pathlib import Path

FRAME_RATE = 50
PROMPT = "90s rock song with loud guitars and heavy drums"


def _settings(seed: int):
    from engine.sampling import SamplingSettings

    return SamplingSettings(top_k=250, cfg=3.0, temperature=1.0, seed=seed)


def token_round(engine, n: int, steps: int) -> dict:
    """N guided token streams at once; aggregate steps/s and per-stream real-time factor."""
    frames = steps - engine.model.pattern.max_delay
    streams = [engine.token_stream(f"{PROMPT} {i}", _settings(100 + i), frames=frames) for i in range(n)]
    before = (engine.stats.prefill_seconds, engine.stats.prefills)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=s.run) for s in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    total = sum(s.steps for s in streams)
    return {"streams": n, "wall_s": wall, "steps_per_s": total / wall, "rtf_per_stream": total / n / wall / FRAME_RATE,
            "prefill_s": engine.stats.prefill_seconds - before[0], "prefills": engine.stats.prefills - before[1]}


def _requests(engine, specs) -> float:
    """Seconds until every spec's stream has yielded its last chunk (all opened at once)."""
    streams = [engine.open(s) for s in specs]
    t0 = time.perf_counter()
    threads = [threading.Thread(target=lambda s=s: [None for _ in s]) for s in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def _takes(engine, spec, n: int) -> float:
    from engine.takes import render_takes

    t0 = time.perf_counter()
    render_takes(engine, spec, n)
    return time.perf_counter() - t0


def run_streams_bench(folder: Path, counts: list[int], dtype: str, steps: int, rounds: int, bars: int = 2,
                      out=print, device: str = "cpu", step_mode: str = "auto") -> None:
    """Print (with `out`) each table line as it is measured: on a busy machine a run is long."""
    from engine.bars import Tempo
    from engine.batch_cache import kv_bytes_per_row
    from engine.batch_engine import BatchEngine, rows_from_memory
    from engine.checkpoint import load_model
    from engine.generate import warm_up
    from engine.interface import StreamSpec
    from engine.threads import in_own_thread

    model = load_model(str(folder), device=device, dtype=dtype)
    in_own_thread(warm_up, model)  # not on this thread: it would keep an OpenMP team beside the engine's
    engine = BatchEngine(model, max_rows=2 * max(counts + [4]), step_mode=step_mode)
    out(f"dtype {dtype}, {engine.step_mode} steps; KV cache per row: {kv_bytes_per_row(model.lm, engine.full_len) / 1e6:.1f} MB at a full "
             f"{model.max_seconds:.0f} s window ({kv_bytes_per_row(model.lm, 1) / 1e3:.0f} kB per position); "
             f"row cap from memory on this machine now: {rows_from_memory(model)} rows")
    try:
        engine.warm_up()  # trace the step for every batch bucket before timing, as `serve` does
        token_round(engine, max(counts), 8)
        out(f"\n| streams | steps/s (all) | real-time factor per stream | wall (s) for {steps} steps each | "
            "prefill time (s) |\n|---:|---:|---:|---:|---:|")
        for n in counts:
            r = token_round(engine, n, steps)
            out(f"| {n} | {r['steps_per_s']:.1f} | {r['rtf_per_stream']:.2f} | {r['wall_s']:.1f} | "
                         f"{r['prefill_s']:.2f} ({r['prefills']}) |")
        tempo = Tempo(Fraction(120), 4, 4)
        spec = StreamSpec(PROMPT, _settings(7), tempo=tempo, bars=bars, chunk_bars=1)
        out(f"\n{bars}-bar requests at 120 bpm:\n| round | 1 request (s) | 4 requests (s) | ratio | 1 take (s) | "
            "4 takes (s) | ratio |\n|---:|---:|---:|---:|---:|---:|---:|")
        for k in range(rounds):
            one = _requests(engine, [spec.with_seed(10 * k)])
            four = _requests(engine, [StreamSpec(f"{PROMPT}, take {i}", _settings(10 * k + i), tempo=tempo, bars=bars,
                                                 chunk_bars=1) for i in range(4)])
            t1, t4 = _takes(engine, spec.with_seed(10 * k), 1), _takes(engine, spec.with_seed(10 * k), 4)
            out(f"| {k + 1} | {one:.1f} | {four:.1f} | {four / one:.2f} | {t1:.1f} | {t4:.1f} | {t4 / t1:.2f} |")
    finally:
        engine.close()
