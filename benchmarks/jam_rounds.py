"""Where a jam's time goes: `bench --jam` with the batching engine's rounds, the codec's pushes and the tempo locks
timed one by one.

Reports the jam's figures (as `bench --jam`), then the rounds' durations (median, 10th and 90th percentile, sum),
the codec's and the tempo lock's calls, and the median round among those that overlapped a codec push or a tempo
lock against the others: what side work costs the LM's steps (engine/threads.py).

    python benchmarks/jam_rounds.py [--seconds 16] [--threads 2] [--dtype w8a8] [--cache-dir /tmp/benchckpt]
"""

from __future__ import annotations

import argparse
import functools
import logging
import statistics
import time


def timed(cls, name: str, into: list) -> None:
    """Record (start, seconds) of every call of cls.name."""
    fn = getattr(cls, name)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into.append((t, time.perf_counter() - t))

    setattr(cls, name, wrapper)


def overlapping(calls: list, busy: list) -> tuple[list, list]:
    spans = [(t, t + d) for t, d in busy]
    hit, free = [], []
    for t, d in calls:
        (hit if any(a < t + d and t < b for a, b in spans) else free).append(d * 1000)
    return hit, free


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=16.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default=None, help="weight format (default: serve's)")
    p.add_argument("--cache-dir", default=None, help="where the small-shape checkpoint is kept (default: bench's)")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import bridge.tempo_lock as tempo_lock
    import engine.batch_engine as batch_engine
    import engine.codec_worker as codec_worker
    from bridge.bench import DEFAULT_CACHE, ensure_checkpoint
    from bridge.jam_bench import format_jam, run_jam_bench

    rounds, pushes, locks = [], [], []
    timed(batch_engine.BatchEngine, "_round", rounds)
    timed(codec_worker.CodecWorker, "_run", pushes)
    timed(tempo_lock.ChunkLock, "push", locks)
    model = str(ensure_checkpoint(a.cache_dir or DEFAULT_CACHE))
    result = run_jam_bench(model, a.seconds, dtype=a.dtype, threads=a.threads)
    print(format_jam(result, "small shape, random weights"))
    ms = sorted(d * 1000 for _, d in rounds)
    print(f"\nrounds: {len(ms)}, median {statistics.median(ms):.1f} ms, p10 {ms[len(ms) // 10]:.1f}, "
          f"p90 {ms[len(ms) * 9 // 10]:.1f}, sum {sum(ms) / 1000:.1f} s")
    for name, calls in (("codec pushes", pushes), ("tempo locks", locks)):
        if calls:
            print(f"{name}: {len(calls)}, median {statistics.median(d for _, d in calls) * 1000:.0f} ms, "
                  f"sum {sum(d for _, d in calls):.1f} s")
    hit, free = overlapping(rounds, pushes + locks)
    if hit and free:
        print(f"rounds beside a codec push or tempo lock: {len(hit)}, median {statistics.median(hit):.1f} ms; "
              f"the others: {len(free)}, median {statistics.median(free):.1f} ms")


if __name__ == "__main__":
    main()
