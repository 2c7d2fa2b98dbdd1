"""Engines for tests of the bridge's jobs (no tests here): a model-free fake whose audio is a running sample
counter (so continuity and repeats are visible), and wrappers that slow a real engine down or lose it once."""

from __future__ import annotations

import threading
import time
from typing import Iterator

import numpy as np

from engine.errors import Cancelled, EngineLost
from engine.interface import Engine, EngineInfo, StreamSpec
from engine.session import Chunk


class CounterEngine:
    """Chunks of `spec.chunk_bars` bars whose samples count up across all streams (sample n has value n)."""

    capacity = 1

    def __init__(self, sample_rate: int = 1000, lose_after: int | None = None):
        self.info = EngineInfo(name="counter", sample_rate=sample_rate, channels=1, frame_rate=50.0,
                               max_seconds=30.0, melody=False, dtype="float32", device="cpu")
        self.specs: list[StreamSpec] = []
        self.counter = 0
        self.lose_after = lose_after  # the first stream raises EngineLost instead of its chunk number N

    def open(self, spec: StreamSpec) -> "CounterStream":
        self.specs.append(spec)
        return CounterStream(self, spec, lose_after=self.lose_after if len(self.specs) == 1 else None)

    def close(self) -> None:
        pass


class CounterStream:
    def __init__(self, engine: CounterEngine, spec: StreamSpec, lose_after: int | None):
        self.engine, self.spec, self.lose_after = engine, spec, lose_after
        self.seed, self.prompt_text = 7, spec.prompt
        self.steps = 0
        self.busy_seconds = None  # steps only while read
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    def stop(self) -> None:
        self._cancelled.set()

    def __iter__(self) -> Iterator[Chunk]:
        s, sr = self.spec, self.engine.info.sample_rate
        j = 0
        while True:
            if self._cancelled.is_set():
                raise Cancelled()
            if j == self.lose_after:
                raise EngineLost("the engine at ws://test went away")
            start = s.tempo.bars_to_samples(s.chunk_bars * j, sr)
            n = s.tempo.bars_to_samples(s.chunk_bars * (j + 1), sr) - start
            audio = (self.engine.counter + np.arange(n, dtype=np.float32))[None]
            self.engine.counter += n
            self.steps += max(1, round(n / sr * self.engine.info.frame_rate))
            beat = s.chunk_bars * j * s.tempo.beats_per_bar
            yield Chunk(j, audio, start, beat, s.chunk_bars * s.tempo.beats_per_bar, False)
            j += 1


class SlowEngine:
    """A real engine whose streams sleep `delay_s` before each chunk (changeable while they run); with
    `lose_at`, the chunk with that number (counted over all streams) raises EngineLost instead, once."""

    def __init__(self, inner: Engine, delay_s: float = 0.0, lose_at: int | None = None):
        self.inner, self.delay_s, self.lose_at = inner, delay_s, lose_at
        self.info, self.capacity = inner.info, inner.capacity
        self.chunks = 0

    def open(self, spec: StreamSpec):
        return _SlowStream(self, self.inner.open(spec))

    def close(self) -> None:
        self.inner.close()


class _SlowStream:
    busy_seconds = None  # its delays are outside the inner engine's steps: reading a chunk times them

    def __init__(self, engine: SlowEngine, inner):
        self.engine, self.inner = engine, inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __iter__(self):
        it = iter(self.inner)
        try:
            while True:
                delay = self.engine.delay_s
                if delay:
                    time.sleep(delay)
                try:
                    chunk = next(it)
                except StopIteration:
                    return
                if self.engine.chunks == self.engine.lose_at:
                    self.engine.lose_at = None
                    raise EngineLost("the connection to the engine dropped (a test)")
                self.engine.chunks += 1
                yield chunk
        finally:
            it.close()



class PoolEngine:
    """Several engines as one of capacity len(engines) (a stand-in for a batching engine): each stream runs on
    the inner engine with the fewest streams."""

    def __init__(self, engines: list):
        self.engines = engines
        self.info, self.capacity = engines[0].info, len(engines)
        self.load = [0] * len(engines)
        self._lock = threading.Lock()

    def open(self, spec: StreamSpec):
        with self._lock:
            i = self.load.index(min(self.load))
            self.load[i] += 1
        return _PooledStream(self, i, self.engines[i].open(spec))

    def close(self) -> None:
        for e in self.engines:
            e.close()


class _PooledStream:
    def __init__(self, pool: PoolEngine, index: int, inner):
        self.pool, self.index, self.inner = pool, index, inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __iter__(self):
        try:
            yield from self.inner
        finally:
            with self.pool._lock:
                self.pool.load[self.index] -= 1
