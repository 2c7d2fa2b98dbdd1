"""Where the time of N concurrent requests (or N takes) goes on the batching engine, against one alone.

Wraps the phases of a request in timers (no change to the engine): T5 (`TextConditioner.encode`), prefills, the
batched decoder call, sampling (`BatchedStream.take`), the streaming codec (`StreamingDecoder.push/flush`), and
the consumers' waiting for frames (`BatchedStream.step`). Seconds are wall time summed over threads, so phases on
different threads can add up to more than the wall; `sched cpu` / `callers cpu` are the CPU seconds of the
scheduler thread's rounds (time.thread_time) and of the whole process, which show what competes for the cores.

    python benchmarks/batch_profile.py [--rounds 2] [--bars 2] [--threads 2] [--dtype auto]
"""

from __future__ import annotations

import argparse
import collections
import functools
import logging
import threading
import time
from fractions import Fraction

import torch

PHASES = ("t5", "prefill", "step", "sample", "codec", "wait")


class Timers:
    def __init__(self):
        self.lock = threading.Lock()
        self.sec = collections.Counter()
        self.calls = collections.Counter()
        self.cpu = collections.Counter()

    def add(self, name: str, seconds: float) -> None:
        with self.lock:
            self.sec[name] += seconds
            self.calls[name] += 1

    def wrap(self, owner, attr: str, name: str) -> None:
        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.add(name, time.perf_counter() - t0)

        setattr(owner, attr, timed)

    def reset(self) -> None:
        self.sec.clear(), self.calls.clear(), self.cpu.clear()


def install(timers: Timers, engine) -> None:
    from engine import batch_engine
    from engine.batched_stream import BatchedStream
    from engine.stream_decode import StreamingDecoder
    from engine.text import TextConditioner

    timers.wrap(TextConditioner, "encode", "t5")
    timers.wrap(batch_engine, "prefill_logits", "prefill")
    timers.wrap(BatchedStream, "take", "sample")
    timers.wrap(BatchedStream, "step", "wait")
    try:
        from engine import codec_worker  # the codec on the engine's worker thread

        timers.wrap(codec_worker, "decode_together", "codec")
    except ImportError:  # before there was one: on each request's thread
        timers.wrap(StreamingDecoder, "push", "codec")
        timers.wrap(StreamingDecoder, "flush", "codec")
    decode = engine.decode

    def step(*a):
        t0 = time.perf_counter()
        try:
            return decode(*a)
        finally:
            timers.add("step", time.perf_counter() - t0)

    engine.decode = step
    round_ = engine._round

    def timed_round(*args):
        c0 = time.thread_time()
        try:
            return round_(*args)
        finally:
            with timers.lock:
                timers.cpu["sched"] += time.thread_time() - c0

    engine._round = timed_round


def run_threads(timers: Timers, fns) -> float:
    t0, c0 = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=fn) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    timers.cpu["process"] = time.process_time() - c0
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--bars", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="auto")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)

    from bridge.bench import DEFAULT_CACHE, ensure_checkpoint
    from bridge.bench_streams import PROMPT, _settings
    from engine.bars import Tempo
    from engine.batch_engine import BatchEngine
    from engine.checkpoint import load_model
    from engine.generate import warm_up
    from engine.interface import StreamSpec
    from engine.takes import render_takes

    model = load_model(str(ensure_checkpoint(DEFAULT_CACHE)), device="cpu", dtype=a.dtype)
    warm_up(model)
    engine = BatchEngine(model, max_rows=8)
    engine.warm_up()
    timers = Timers()
    install(timers, engine)
    tempo = Tempo(Fraction(120), 4, 4)

    def spec(prompt, seed):
        return StreamSpec(prompt, _settings(seed), tempo=tempo, bars=a.bars, chunk_bars=1)

    def drain(s):
        return lambda: [None for _ in engine.open(s)]

    cases = {
        "1 request": lambda k: [drain(spec(PROMPT, 10 * k))],
        "4 requests": lambda k: [drain(spec(f"{PROMPT}, take {i}", 10 * k + i)) for i in range(4)],
        "1 take": lambda k: [lambda: render_takes(engine, spec(PROMPT, 10 * k), 1)],
        "4 takes": lambda k: [lambda: render_takes(engine, spec(PROMPT, 10 * k), 4)],
    }
    print(f"dtype {model.lm.dtype}, {a.threads} threads, {a.bars}-bar requests at 120 bpm; seconds summed over threads")
    print("| round | case | wall | " + " | ".join(PHASES) + " | rounds | rows/round | sched cpu | process cpu |")
    print("|---:|---|---:|" + "---:|" * (len(PHASES) + 4))
    try:
        for k in range(a.rounds):
            for name, make in cases.items():
                timers.reset()
                r0, rows0 = engine.stats.rounds, engine.stats.rows
                wall = run_threads(timers, make(k))
                rounds = engine.stats.rounds - r0
                cols = " | ".join(f"{timers.sec[ph]:.2f} ({timers.calls[ph]})" if ph in ("t5", "prefill") else
                                  f"{timers.sec[ph]:.2f}" for ph in PHASES)
                print(f"| {k + 1} | {name} | {wall:.2f} | {cols} | {rounds} | "
                      f"{(engine.stats.rows - rows0) / max(rounds, 1):.1f} | {timers.cpu['sched']:.2f} | "
                      f"{timers.cpu['process']:.2f} |", flush=True)
    finally:
        engine.close()


if __name__ == "__main__":
    main()
