"""The engine as the bridge sees it: one interface, implemented in-process (`engine.local_engine.LocalEngine`, the
default) and remotely (a client of `musicgen-bridge engine` or of the Ray Serve cluster).

Everything that crosses it is data: a `StreamSpec` holds the rendered prompt text, audio and chroma arrays, never
paths or callables, so a spec can travel over a network unchanged. A stream yields `engine.session.Chunk`s.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Iterator, Protocol

import numpy as np

from engine.bars import Tempo
from engine.sampling import SamplingSettings
from engine.session import Chunk


@dataclass(frozen=True)
class EngineInfo:
    """What the bridge needs to know of the model behind an engine."""

    name: str
    sample_rate: int
    channels: int
    frame_rate: float
    max_seconds: float  # one window; longer requests slide (`context_seconds`)
    melody: bool  # a melody model: it can follow a chroma
    dtype: str  # weight format in use, e.g. "int8"
    device: str  # e.g. "cpu", "cuda"


@dataclass(frozen=True)
class StreamSpec:
    """One generation, as data. Length: `bars` (with `tempo`), `seconds`, or neither for endless.

    Chunks: `chunk_bars` (with `tempo`) or `chunk_seconds`. `audio_prompt` is (audio [channels, samples], rate) to
    continue; `melody` a chroma [frames, 12] for melody models. `prompt` is the text as the model reads it
    (templates already filled); the tempo is appended to it unless `tempo_in_prompt` is False.
    """

    prompt: str
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    tempo: Tempo | None = None
    bars: Fraction | int | None = None
    seconds: float | None = None
    chunk_bars: Fraction | int | None = None
    chunk_seconds: float | None = None
    audio_prompt: tuple[np.ndarray, int] | None = None
    melody: np.ndarray | None = None
    context_seconds: float | None = None
    tempo_in_prompt: bool = True

    def with_seed(self, seed: int) -> "StreamSpec":
        return replace(self, sampling=replace(self.sampling, seed=seed))


class EngineStream(Protocol):
    """One running generation. Iterate for chunks; `cancel()` and `stop()` work from any thread.

    Iteration raises `engine.errors.Cancelled` after `cancel()`; after `stop()` an endless stream ends after the
    chunk in progress. `seed` and `prompt_text` are known once the first chunk has been yielded (or earlier).
    """

    seed: int | None
    prompt_text: str | None

    def __iter__(self) -> Iterator[Chunk]: ...

    def cancel(self) -> None: ...

    def stop(self) -> None: ...

    @property
    def steps(self) -> int:
        """Decoder steps this stream has taken so far."""
        ...

    @property
    def busy_seconds(self) -> float | None:
        """Seconds the engine has spent taking those steps, where it takes them on its own (a batching engine runs
        ahead of the reader); None where it steps only while the stream is read, so that reading a chunk times
        them."""
        ...


class Engine(Protocol):
    """Makes streams. `capacity` is how many streams it advances at once; more wait inside `open`'s stream until
    there is room (the bridge keeps its own queue in front and answers `busy` past it)."""

    info: EngineInfo
    capacity: int

    def open(self, spec: StreamSpec) -> EngineStream: ...

    def close(self) -> None: ...
