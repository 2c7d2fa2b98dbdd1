"""The in-process engine (the default): streams run on the caller's thread against a model in this process.

This version advances one stream at a time: a stream holds the model from its first chunk to its end, and a
second stream's iteration waits for it (see `engine.interface.Engine`).
"""

from __future__ import annotations

import threading
from typing import Iterator

from engine.codec_worker import CodecWorker
from engine.devices import dtype_name
from engine.errors import Cancelled
from engine.interface import EngineInfo, StreamSpec
from engine.model import MusicGen
from engine.session import Chunk, StreamSession


def engine_info(model: MusicGen) -> EngineInfo:
    return EngineInfo(name=model.name, sample_rate=model.sample_rate, channels=model.channels,
                      frame_rate=model.frame_rate, max_seconds=model.max_seconds, melody=model.melody is not None,
                      dtype=dtype_name(model.lm.dtype), device=model.device.type)


class SessionStream:
    """An `engine.interface.EngineStream` over a `StreamSession` that is made when iteration starts (so a stream
    can be cancelled or stopped before it holds any of the engine). Subclasses say how they iterate."""

    def __init__(self, model: MusicGen, spec: StreamSpec):
        self.model, self.spec = model, spec
        self.seed: int | None = None
        self.prompt_text: str | None = None
        self._session: StreamSession | None = None
        self._cancelled = threading.Event()
        self._stopped = False

    def cancel(self) -> None:
        self._cancelled.set()
        session = self._session
        if session is not None:
            session.cancel()

    def stop(self) -> None:
        self._stopped = True
        session = self._session
        if session is not None:
            session.stop()

    @property
    def steps(self) -> int:
        session = self._session
        return session.steps if session is not None else 0

    @property
    def busy_seconds(self) -> float | None:
        session = self._session
        return session.busy_seconds if session is not None else None

    def _open_session(self, **extra) -> StreamSession:
        """The spec's session (`extra`: StreamSession's own options), with any cancel or stop already asked."""
        if self._cancelled.is_set():
            raise Cancelled()
        s = self.spec
        session = StreamSession(
            self.model, s.prompt, s.sampling, seconds=s.seconds, bars=s.bars, tempo=s.tempo,
            chunk_seconds=s.chunk_seconds, chunk_bars=s.chunk_bars, audio_prompt=s.audio_prompt,
            melody=s.melody, context_seconds=s.context_seconds, tempo_in_prompt=s.tempo_in_prompt, **extra)
        self._session, self.seed, self.prompt_text = session, session.seed, session.prompt_text
        if self._cancelled.is_set():
            session.cancel()
        if self._stopped:
            session.stop()
        return session


class LocalStream(SessionStream):
    """A session run under the engine's lock: one stream at a time."""

    def __init__(self, engine: "LocalEngine", spec: StreamSpec):
        super().__init__(engine.model, spec)
        self.engine = engine

    def __iter__(self) -> Iterator[Chunk]:
        with self.engine.lock:
            yield from self._open_session(codec=self.engine.codec)


class LocalEngine:
    """`engine.interface.Engine` over a model loaded in this process."""

    capacity = 1

    def __init__(self, model: MusicGen):
        self.model = model
        self.info = engine_info(model)
        self.lock = threading.Lock()
        self.codec = CodecWorker()  # decodes while the stream's thread goes on stepping the LM

    def open(self, spec: StreamSpec) -> LocalStream:
        return LocalStream(self, spec)

    def close(self) -> None:
        self.codec.close()
