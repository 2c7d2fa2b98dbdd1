"""A jam as a sequence of (chunk, song beat): endless bar-aligned audio from an engine, following the song.

A `Jam` opens one engine stream and hands out its chunks, each with the beat it starts on counted from the jam's
first chunk (`start_beat`) and, when the song's transport is known, the song beat it belongs on (`song_beat`).
It reopens the stream, continuing the audio tail it holds, when
- the tempo or the prompt it follows changes (the new stream starts where the last chunk ended),
- the engine is lost (`engine.errors.EngineLost`): the new stream starts on the bar line after the last chunk
  delivered, so nothing delivered is lost or repeated.
With tempo lock each chunk goes out once the next one is made (`bridge.tempo_lock.ChunkLock`), and is placed on
the song at that moment. It never sends a chunk whose song beat has passed, and runs no further ahead of the song
than it needs to (`bridge.jam_pacing`). It does no I/O: the runner writes WAVs, sends /chunk and feeds the live output.
`stop()` ends the iteration after what was delivered; `cancel()` makes it raise `Cancelled`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterator

import numpy as np

from engine.bars import Tempo, format_bpm
from engine.errors import Cancelled, EngineLost
from engine.interface import Engine, EngineStream, StreamSpec
from engine.sampling import SamplingSettings
from engine.threads import side_work

from .jam_pacing import Pacer, RateMeter
from .tempo_lock import ChunkLock
from .transport import Transport

log = logging.getLogger(__name__)

LOST_RETRY_S = (0.25, 0.5, 1.0, 2.0, 4.0)  # waits between attempts to reopen a lost engine (the last repeats)

Follow = Callable[[], tuple[Tempo, str]]  # the (tempo, prompt text) the jam should follow now
Notify = Callable[[str, str], None]  # notify(code, message): "slow" or "engine_lost", for the device


@dataclass(frozen=True)
class JamChunk:
    index: int
    audio: np.ndarray  # [channels, samples]
    start_beat: Fraction  # beats of jam audio before this chunk
    beats: Fraction
    song_beat: Fraction | None  # where it belongs in the song (None: no transport known)
    tempo: Tempo


@dataclass(frozen=True)
class JamSettings:
    """What the jam's streams are opened with, apart from the prompt and tempo (which may follow the song)."""

    sampling: SamplingSettings
    chunk_bars: int = 1
    context_seconds: float = 10.0
    tempo_in_prompt: bool = True
    # Tempo lock (bridge.tempo_lock.ChunkLock): a chunk is warped onto the grid once the next one is made, and is
    # placed on the song only then, so the on-time check sees when it really goes out.
    lock: bool = False


class Jam:
    """Iterate for `JamChunk`s until `stop()`; see the module docstring."""

    def __init__(self, engine: Engine, settings: JamSettings, tempo: Tempo, prompt: str, *,
                 song_beat: Fraction | None = None, transport: Transport | None = None,
                 tail: tuple[np.ndarray, int] | None = None, follow: Follow | None = None,
                 melody_for: Callable[[Tempo], np.ndarray | None] = lambda tempo: None,
                 notify: Notify = lambda code, message: None, pacer: Pacer | None = None, name: str = "jam"):
        self.engine, self.settings, self.tempo, self.prompt = engine, settings, tempo, prompt
        self.transport = transport or Transport()
        self.tail = tail
        self.follow = follow
        self.melody_for = melody_for
        self.notify = notify
        self.name = name
        self.sample_rate = engine.info.sample_rate
        self.pacer = pacer or Pacer()
        self.meter = RateMeter(engine.info.frame_rate)
        self._song_beat = song_beat  # where the first chunk belongs, at the earliest
        self._stream: EngineStream | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._cancelled = threading.Event()
        self.seed: int | None = None
        self.chunks = 0
        self.beats = Fraction(0)  # jam audio handed out, in beats
        self.bars = Fraction(0)
        self._made_s, self._t_first = 0.0, 0.0
        self._resuming = False  # the next chunk is the first after a lost engine

    # --- from any thread ---

    def stop(self) -> None:
        """End after the chunks already delivered (the iteration returns)."""
        self._stopped.set()
        self._cancel_stream()

    def cancel(self) -> None:
        """End now; the iteration raises Cancelled."""
        self._cancelled.set()
        self._cancel_stream()

    @property
    def realtime(self) -> float:
        """Measured real-time factor (seconds of audio made per second of generating); 0 before any."""
        return self.meter.realtime

    @property
    def steps_per_s(self) -> float:
        return self.meter.steps_per_s

    def _cancel_stream(self) -> None:
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.cancel()

    def _ended(self) -> bool:
        if self._cancelled.is_set():
            raise Cancelled()
        return self._stopped.is_set()

    # --- the jam's thread ---

    def _open(self) -> EngineStream:
        s = self.settings
        spec = StreamSpec(self.prompt, s.sampling, tempo=self.tempo, chunk_bars=s.chunk_bars,
                          audio_prompt=self.tail, melody=self.melody_for(self.tempo),
                          context_seconds=s.context_seconds, tempo_in_prompt=s.tempo_in_prompt)
        stream = self.engine.open(spec)
        with self._lock:
            self._stream = stream
        if self._cancelled.is_set() or self._stopped.is_set():
            stream.cancel()
        return stream

    def __iter__(self) -> Iterator[JamChunk]:
        for audio, beats, tempo in self._locked(self._made()):
            yield self._place(audio, beats, tempo)

    def _locked(self, made: Iterator[tuple[np.ndarray, Fraction, Tempo]]) -> Iterator[tuple[np.ndarray, Fraction, Tempo]]:
        """The made chunks, tempo-locked when asked: each one chunk late, same length; a new lock for each tempo;
        the last one flushed when the jam stops (not when it is cancelled: that raises)."""
        if not self.settings.lock:
            yield from made
            return
        locker, held = None, None
        for audio, beats, tempo in made:
            if locker is not None and tempo != locker.tempo:
                yield locker.flush(), held[0], held[1]
                locker, held = None, None
            locker = locker or ChunkLock(tempo, self.sample_rate)
            with side_work():  # beside the LM's steps: they take a thread fewer meanwhile (engine/threads.py)
                locked = locker.push(audio)
            if held is not None:
                yield locked, held[0], held[1]
            held = (beats, tempo)
        if held is not None:
            yield locker.flush(), held[0], held[1]
            log.info("%s tempo lock: %s (%d beats dropped or repeated)", self.name, locker.message, locker.splices)

    def _made(self) -> Iterator[tuple[np.ndarray, Fraction, Tempo]]:
        """(audio, beats, tempo) of each chunk as the engine makes it, across reopened streams, paced."""
        lost_tries = 0
        while not self._ended():
            try:
                stream = self._open()
                it = iter(stream)
            except EngineLost as exc:  # a remote engine may be unreachable at open
                self._lost(exc, lost_tries)
                lost_tries += 1
                continue
            try:
                # An engine that steps on its own (and may run ahead while the jam waits) says how long its steps
                # took, from nothing at the stream's start; otherwise reading a chunk times them.
                mark = (0, 0.0)
                while True:
                    t0, steps0 = time.perf_counter(), stream.steps
                    try:
                        chunk = next(it)
                    except StopIteration:
                        return  # an endless stream ends only when stopped
                    except Cancelled:
                        if self._ended():
                            return
                        raise
                    except EngineLost as exc:
                        if self._ended():
                            return
                        self._lost(exc, lost_tries)
                        lost_tries += 1
                        break
                    lost_tries = 0
                    now = (stream.steps, stream.busy_seconds)
                    if now[1] is not None:
                        self.meter.add(now[0] - mark[0], now[1] - mark[1])
                    else:
                        self.meter.add(now[0] - steps0, time.perf_counter() - t0)
                    mark = now
                    if self.seed is None and stream.seed is not None:
                        self.seed = stream.seed
                        log.info("%s at %s bpm %d/%d: %r, seed %d", self.name, format_bpm(self.tempo.bpm),
                                 self.tempo.numerator, self.tempo.denominator, stream.prompt_text, stream.seed)
                    self._keep_tail(chunk.audio)
                    yield chunk.audio, chunk.beats, self.tempo
                    if self._ended():
                        return
                    self._pace()
                    if self._ended():
                        return
                    if self._changed():
                        break
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()  # an in-process stream holds the model until its generator is closed
                with self._lock:
                    self._stream = None

    def _place(self, audio: np.ndarray, beats: Fraction, tempo: Tempo) -> JamChunk:
        """The chunk as handed out now: its jam beat and, with a transport, its song beat (moved later if it would
        be late; see Pacer)."""
        song_beat = None
        if self._song_beat is not None:
            state, now = self.transport.snapshot(), self.transport.clock()
            if self.chunks == 0:
                song_beat = self.pacer.first(self._song_beat, state, now, self.meter.realtime)
                self._song_beat = song_beat
            else:
                song_beat = self._song_beat + self.beats
                later = self.pacer.late(song_beat, state, now, self.meter.recent)
                if later is not None:
                    moved = later - song_beat
                    if self._resuming:  # the device heard of the loss already: the resumed audio just moves on
                        log.info("%s resumes %s beats later, on song beat %s", self.name, moved, later)
                    else:
                        self.notify("slow", self.pacer.slow_message(moved, state.tempo, self.meter.recent, later))
                        log.warning("%s re-anchored %s beats later (real-time factor %.2f)", self.name, moved,
                                    self.meter.recent)
                    self._song_beat += moved
                    song_beat = later
        self._resuming = False
        out = JamChunk(self.chunks, audio, self.beats, beats, song_beat, tempo)
        if self.chunks == 0:
            self._t_first = time.monotonic()
        self._made_s += audio.shape[1] / self.sample_rate
        self.chunks += 1
        self.beats += beats
        self.bars += beats / tempo.beats_per_bar
        return out

    def _keep_tail(self, audio: np.ndarray) -> None:
        keep = max(1, round(self.settings.context_seconds * self.sample_rate))
        if self.tail is None or self.tail[1] != self.sample_rate:
            joined = audio
        else:
            joined = np.concatenate([self.tail[0], audio], axis=1)
        self.tail = (joined[:, -keep:], self.sample_rate)

    def _pace(self) -> None:
        """Wait while the audio made so far reaches further ahead of the song than the pacer allows."""
        limit = self.pacer.ahead_limit(float(self.tempo.seconds_per_bar() * self.settings.chunk_bars))
        while not self._ended():
            state, now = self.transport.snapshot(), self.transport.clock()
            if self._song_beat is not None and state.playing:
                lead = state.time_of_beat(self._song_beat + self.beats) - now
            else:  # no song to follow: against the wall clock from the first chunk
                lead = self._made_s - (time.monotonic() - self._t_first)
            if lead <= limit:
                return
            time.sleep(min(lead - limit, 0.02))

    def _changed(self) -> bool:
        if self.follow is None:
            return False
        tempo, prompt = self.follow()
        if tempo == self.tempo and prompt == self.prompt:
            return False
        log.info("%s follows a change: %s bpm %d/%d, prompt %r", self.name, format_bpm(tempo.bpm),
                 tempo.numerator, tempo.denominator, prompt)
        self.tempo, self.prompt = tempo, prompt
        return True

    def _lost(self, exc: EngineLost, tries: int) -> None:
        """The engine went away mid-stream: say so once, wait, and let the loop reopen from the tail."""
        self._resuming = True
        if tries == 0:
            log.warning("%s: engine lost after %d chunks: %s; resuming from the tail", self.name, self.chunks, exc)
            self.notify("engine_lost", f"{exc}; the jam resumes on the next bar line when the engine is back")
        delay = LOST_RETRY_S[min(tries, len(LOST_RETRY_S) - 1)]
        if self._stopped.wait(delay) or self._cancelled.is_set():
            return
