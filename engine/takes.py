"""Takes: several variations of one request rendered in one pass on a batching engine, seeds derived from the
request's (`engine.sampling.take_seed`), so take i of a request can be redone alone with its own seed."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from engine.interface import Engine, StreamSpec
from engine.sampling import resolve_seed, take_seed

MAX_TAKES = 4


@dataclass
class Take:
    index: int  # 0-based
    seed: int
    audio: np.ndarray  # [channels, samples] float32
    codes: Tensor | None  # [K, frames], delay removed (None where the engine does not expose them)
    steps: int


def take_specs(spec: StreamSpec, n: int) -> list[StreamSpec]:
    """The `n` takes of `spec`: the same request with seeds take_seed(seed, 0 .. n-1) of its resolved seed."""
    if not 1 <= n <= MAX_TAKES:
        raise ValueError(f"takes must be 1 to {MAX_TAKES}, got {n}")
    seed = resolve_seed(spec.sampling.seed)
    return [spec.with_seed(take_seed(seed, i)) for i in range(n)]


def render_takes(engine: Engine, spec: StreamSpec, n: int) -> list[Take]:
    """Render the `n` takes of a finite `spec` at once (each stream on its own thread, so a batching engine
    advances them together); in take order. The first failure is raised once all have ended."""
    specs = take_specs(spec, n)
    takes: list[Take | None] = [None] * n
    errors: list[BaseException] = []
    streams = [engine.open(s) for s in specs]

    def run(i: int) -> None:
        try:
            audio = np.concatenate([c.audio for c in streams[i]], axis=1)
            session = getattr(streams[i], "_session", None)
            codes = session.stream.codes().clone() if session is not None else None
            takes[i] = Take(i, specs[i].sampling.seed, audio, codes, streams[i].steps)
        except BaseException as e:  # noqa: BLE001 - reported after the others end
            errors.append(e)
            for s in streams:
                s.cancel()

    threads = [threading.Thread(target=run, args=(i,), name=f"take-{i + 1}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return takes
