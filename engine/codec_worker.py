"""The codec off the critical path: one thread that runs the streaming decoders' pushes for every session of an
engine, on its own small thread budget, while the LM goes on stepping.

A session hands a push (codes settled since its last one) or its final flush to `submit` and gets a `Future` of
the audio; it waits only when it needs that audio for a chunk, and meanwhile keeps stepping its token stream
(`engine.session`). Pushes that are queued together from decoders in the same state (streams started together
and cut alike: takes, a batch of requests) run as one batched codec call (`engine.stream_decode.decode_together`).

Thread budget: with torch's OpenMP backend the intra-op thread count is per calling thread (what
`torch.set_num_threads` sets in the thread that calls it, and the default a thread picks up on its first
parallel op), so the worker can decode on 1 thread while the LM's thread keeps its 2; benchmarks/RESULTS.md
(issue 11.4) measures what each budget does to the LM's steps/s and to a jam's real-time factor.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future

import torch

from engine.stream_decode import StreamingDecoder, decode_together
from engine.threads import set_thread_budget, side_work

log = logging.getLogger(__name__)

DEFAULT_THREADS = 1  # the codec's intra-op threads (benchmarks/RESULTS.md, issue 11.4)
GATHER_SECONDS = 0.003  # after a first push arrives, wait this long for the pushes of streams cut alike


class CodecWorker:
    """One decoding thread with `threads` intra-op threads; `batch` lets it join pushes of decoders in one state."""

    def __init__(self, threads: int | None = DEFAULT_THREADS, batch: bool = True, name: str = "codec"):
        self.threads, self.batch = threads, batch
        self.calls = 0  # codec calls run (a batched call counts once)
        self.jobs = 0  # pushes and flushes done
        self._queue: deque[tuple[StreamingDecoder, torch.Tensor | None, Future]] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, decoder: StreamingDecoder, codes: torch.Tensor | None) -> Future:
        """Queue a push of `codes` [K * channels, n] (None: the flush) on `decoder`; the Future gives its audio.
        One decoder's jobs run in the order submitted."""
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the codec worker is closed")
            self._queue.append((decoder, codes, fut))
            self._cv.notify()
        return fut

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        if self.threads is not None:
            set_thread_budget(self.threads)
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return
            if self.batch:
                time.sleep(GATHER_SECONDS)
            with self._cv:
                jobs, later, seen = [], deque(), set()
                for job in self._queue:  # one job per decoder per round: a decoder's jobs are in order
                    (later if id(job[0]) in seen else jobs).append(job)
                    seen.add(id(job[0]))
                self._queue = later
            self._run(jobs)

    def _run(self, jobs: list) -> None:
        groups: dict[tuple, list] = {}
        for job in jobs:
            decoder, codes = job[0], job[1]
            key = (decoder.state_key(), None if codes is None else codes.shape[1]) if self.batch else id(job)
            groups.setdefault(key, []).append(job)
        for group in groups.values():
            futures = [f for _, _, f in group]
            try:
                with side_work():  # the LM's step takes a thread fewer meanwhile (engine/threads.py)
                    audio = decode_together([d for d, _, _ in group], [c for _, c, _ in group])
            except BaseException as e:  # noqa: BLE001 - each waiting session gets the error
                for f in futures:
                    f.set_exception(e)
                continue
            self.calls += 1
            self.jobs += len(group)
            for f, a in zip(futures, audio):
                f.set_result(a)

