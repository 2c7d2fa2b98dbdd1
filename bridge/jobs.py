"""The engine side of the bridge: one worker thread runs requests one at a time from a bounded queue.

One worker, because one model on one device runs one generation at a time (a second would only halve the speed
of both). Requests past MAX_QUEUED waiting are refused with `/error req busy` rather than piling up latency.

The kinds of job and what they send (every job starts with `/ack`, sent by the server on acceptance):
- generate: exactly N bars at the tempo and meter the request was made with; `/progress` (at most
  PROGRESS_MAX_PER_SECOND per second), then `/done req wav seconds bars`.
- continue: the same, continuing the last `prompt_bars` bars of a WAV (default DEFAULT_PROMPT_BARS, or the whole
  file when shorter); only the new audio is written.
- jam: endless, bar-aligned chunks, each written as a WAV and announced with `/chunk req index wav start_beat
  beats [song_beat]`: start_beat counts from the jam's first chunk (the device anchors that on a bar line),
  song_beat is the song beat it belongs on (the first bar line after /jam/start, plus start_beat; sent once the
  bridge has had /transport). It follows tempo changes
  (and prompt changes, when started with an empty prompt) by starting a new session that continues the jam's
  last seconds. `/jam/stop` ends it with `/done` and a WAV of the whole jam.
Cancelling (`/cancel req`) removes a queued job or stops a running one within one decoder step; either way the
job ends with `/error req cancelled` (a jam too: its WAVs so far stay, the whole-jam WAV is dropped).

With a live output (`serve --audio-device`), each result is also played as it is made: it starts on the song's
next bar line after its first audio is ready (a jam: on the bar its first /chunk names, if that is still ahead),
replacing the previous result exactly there. `/jam/stop` lets it play to the next bar line; a cancel silences
it at once. A jam runs at most JAM_AHEAD_MIN_SECONDS (or two chunks) ahead of real time, so prompt and tempo
changes are heard soon and the out-dir does not fill up faster than the music plays.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import numpy as np

from engine.bars import Tempo, format_bpm
from engine.errors import Cancelled, UserError
from engine.key import key_for_prompt
from engine.model import MusicGen
from engine.sampling import SamplingSettings
from engine.session import StreamSession

from . import protocol
from .audio_io import load_audio
from .audio_out import START_MARGIN_S, LiveOutput, TakeWriter, WavNamer, write_wav
from .presets import render_prompt
from .result_grid import bars_to_render, put_on_grid
from .tempo_lock import ChunkLock
from .transport import Transport

log = logging.getLogger(__name__)

MAX_QUEUED = 4
PROGRESS_CHUNK_SECONDS = 0.5  # sessions for /generate hand out audio this often: progress and live output follow
DEFAULT_PROMPT_BARS = 4
JAM_AHEAD_MIN_SECONDS = 4.0  # a jam runs at most this far (or two chunks) ahead of real time

Send = Callable[..., None]  # send(address, *args)
MelodySource = Callable[[Tempo, threading.Event], np.ndarray]  # chroma [frames, 12] for this tempo


@dataclass
class Request:
    """Everything a job needs, captured when the message arrived (later /set or /tempo do not change it)."""

    req: int
    kind: str  # "generate", "continue" or "jam"
    prompt: str  # a template: {bpm} and {key} are filled when the job runs
    tempo: Tempo
    sampling: SamplingSettings
    bars: int | None = None
    chunk_bars: int = 1
    context_seconds: float = 10.0
    tempo_in_prompt: bool = True
    key: str | None = None
    melody: MelodySource | None = None
    wav_path: str | None = None
    prompt_bars: int | None = None
    song_beat: Fraction | None = None  # jam: the song beat its first chunk belongs on (None: no transport yet)
    follow: Callable[[], tuple[Tempo, str]] | None = None  # jam: the current (tempo, prompt) to follow
    lock: bool = True  # warp onto the beat grid (bridge/tempo_lock.py)
    loop: bool = False  # generate/continue: the end runs into the start (bridge/seamless_loop.py)


class Job:
    """A request on its way through the queue; `cancel()` and `stop()` work from any thread."""

    def __init__(self, request: Request, send: Send):
        self.request = request
        self.req = request.req
        self.kind = request.kind
        self.cancel_event = threading.Event()
        self.stop_event = threading.Event()  # a jam ends gracefully (with /done)
        self.session: StreamSession | None = None
        self._send = send
        self._last_progress = -1e9

    def cancel(self) -> None:
        self.cancel_event.set()
        session = self.session
        if session is not None:
            session.cancel()

    def stop(self) -> None:
        self.stop_event.set()
        session = self.session
        if session is not None:
            session.cancel()  # a jam stops now; the chunks already made are kept

    def check(self) -> None:
        if self.cancel_event.is_set() or self.stop_event.is_set():
            raise Cancelled()

    def attach(self, session: StreamSession) -> StreamSession:
        """Make `session` reachable by cancel(); raises Cancelled if a cancel came in meanwhile."""
        self.session = session
        self.check()
        return session

    def progress(self, fraction: float) -> None:
        """Throttled to PROGRESS_MAX_PER_SECOND; the end needs none (/done says it)."""
        now = time.monotonic()
        if now - self._last_progress >= 1.0 / protocol.PROGRESS_MAX_PER_SECOND:
            self._last_progress = now
            self._send("/progress", self.req, min(1.0, max(0.0, float(fraction))))


class JobRunner:
    """The queue and its worker thread."""

    def __init__(self, send: Send, namer: WavNamer, *, live: LiveOutput | None = None,
                 transport: Transport | None = None, max_queued: int = MAX_QUEUED,
                 on_change: Callable[[], None] | None = None):
        self._send = send
        self.namer = namer
        self.live = live
        self.transport = transport or Transport()
        self.max_queued = max_queued
        self._on_change = on_change or (lambda: None)
        self.model: MusicGen | None = None
        self.steps_per_s = 0.0
        self._lock = threading.Condition()
        self._queue: collections.deque[Job] = collections.deque()
        self._current: Job | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._worker, name="engine-worker", daemon=True)
        self._thread.start()

    # --- called from the server's thread ---

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._queue)

    @property
    def running(self) -> Job | None:
        return self._current

    def submit(self, request: Request, ack: str | None = None) -> Job:
        """Queue a request; `/ack req ACK` goes out first when `ack` is given (before the worker can send
        anything about it). UserError 'busy' when the queue is full, 'bad_args' for a request id in use."""
        job = Job(request, self._send)
        with self._lock:
            if self._closed:
                raise UserError("the bridge is shutting down", code="busy")
            if self._find(request.req) is not None:
                raise UserError(f"request id {request.req} is already in use; use a new id for each request",
                                code="bad_args")
            if len(self._queue) >= self.max_queued:
                running = f"#{self._current.req} ({self._current.kind})" if self._current else "nothing"
                raise UserError(f"{len(self._queue)} requests are waiting already (running: {running}); wait for "
                                "one to finish or /cancel one", code="busy")
            if ack:
                self._send("/ack", request.req, ack)
            self._queue.append(job)
            self._lock.notify()
        self._on_change()
        return job

    def cancel(self, req: int) -> bool:
        """Cancel a queued or running job; False if there is none with this id."""
        with self._lock:
            job = self._find(req)
            if job is None:
                return False
            if job is not self._current:
                self._queue.remove(job)
                queued = True
            else:
                queued = False
            job.cancel()
        if queued:
            self._send("/error", req, "cancelled", f"request {req} was cancelled before it started")
            self._on_change()
        return True

    def stop_jam(self, req: int) -> bool:
        """End the jam with this id (running or queued); False if there is none."""
        with self._lock:
            job = self._find(req)
            if job is None or job.kind != "jam":
                return False
            if job is not self._current:
                self._queue.remove(job)
                self._send("/error", req, "cancelled", f"jam {req} was stopped before it started")
                return True
            job.stop()
        return True

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel everything and wait for the worker to end."""
        with self._lock:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            current = self._current
            self._lock.notify_all()
        for job in pending:
            job.cancel()
        if current is not None:
            current.cancel()
        self._thread.join(timeout)

    def _find(self, req: int) -> Job | None:
        if self._current is not None and self._current.req == req:
            return self._current
        return next((j for j in self._queue if j.req == req), None)

    # --- the worker thread ---

    def _worker(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                job = self._current = self._queue.popleft()
            self._on_change()
            try:
                self._run(job)
            except Cancelled:
                log.info("#%d cancelled", job.req)
                self._send("/error", job.req, "cancelled", f"request {job.req} was cancelled")
            except UserError as exc:
                log.info("#%d: %s", job.req, exc)
                self._send("/error", job.req, exc.code, str(exc))
            except Exception as exc:  # a bug: say so, keep serving
                log.exception("#%d failed", job.req)
                self._send("/error", job.req, "internal", f"{type(exc).__name__}: {exc} (see the bridge's log)")
            finally:
                job.session = None
                with self._lock:
                    self._current = None
                self._on_change()

    def _run(self, job: Job) -> None:
        job.check()
        model = self.model
        if model is None:
            raise UserError("no model is loaded", code="not_ready")
        r = job.request
        started = time.perf_counter()
        log.info("#%d %s: %s", job.req, r.kind, r.prompt or "(no prompt)")
        if r.kind == "jam":
            self._jam(job, model)
        else:
            self._render(job, model)
        log.info("#%d done in %.2f s", job.req, time.perf_counter() - started)

    def _melody(self, job: Job, model: MusicGen, tempo: Tempo) -> np.ndarray | None:
        if job.request.melody is None:
            return None
        if model.melody is None:
            raise UserError(f"{model.name} is not a melody model: a musicgen-melody model is needed to follow a "
                            "melody (start the bridge with --model facebook/musicgen-melody), or send "
                            "/melody/clear to generate from text alone", code="bad_args")
        return job.request.melody(tempo, job.cancel_event)

    def _prompt(self, job: Job, template: str, tempo: Tempo, melody: np.ndarray | None) -> str:
        key, source = key_for_prompt(job.request.key, melody)
        log.info("#%d key %s (%s)", job.req, key or "-", source)
        return render_prompt(template, bpm=format_bpm(tempo.bpm), key=key)

    def _start_at(self, first_beat: Fraction | None = None) -> Callable[[float], float]:
        """When a take should start: on `first_beat` of the song if that is still ahead, else on the next bar
        line after the audio is ready, else (transport stopped) right away."""
        def when(ready: float) -> float:
            state = self.transport.snapshot()
            earliest = ready + START_MARGIN_S
            if state.playing and first_beat is not None and state.time_of_beat(first_beat) >= earliest:
                return state.time_of_beat(first_beat)
            return state.next_bar_time(earliest) or earliest
        return when

    def _next_bar_time(self) -> float | None:
        state = self.transport.snapshot()
        return state.next_bar_time(self.transport.clock() + START_MARGIN_S)

    def _measure(self, steps: int, seconds: float) -> None:
        if seconds > 0 and steps:
            self.steps_per_s = steps / seconds

    def _render(self, job: Job, model: MusicGen) -> None:
        """/generate and /continue: exactly `bars` bars, then one WAV and /done."""
        r, sr = job.request, model.sample_rate
        audio_prompt = None
        if r.kind == "continue":
            wav, wav_sr = load_audio(r.wav_path)
            bars = r.prompt_bars or DEFAULT_PROMPT_BARS
            n = min(wav.shape[1], r.tempo.bars_to_samples(bars, wav_sr), round(r.context_seconds * wav_sr))
            audio_prompt = (wav[:, wav.shape[1] - n:], wav_sr)
            log.info("#%d continuing the last %.2f s of %s", job.req, n / wav_sr, r.wav_path)
        melody = self._melody(job, model, r.tempo)
        job.check()
        shaped = r.lock or r.loop  # the result is reshaped once whole: live output gets it then
        render_bars = bars_to_render(r.bars, lock=r.lock, loop=r.loop)
        total = r.tempo.bars_to_samples(render_bars, sr)
        slide = total / sr > model.max_seconds  # longer than one window: slide it
        session = job.attach(StreamSession(
            model, self._prompt(job, r.prompt, r.tempo, melody), r.sampling, bars=render_bars, tempo=r.tempo,
            chunk_seconds=PROGRESS_CHUNK_SECONDS, audio_prompt=audio_prompt, melody=melody,
            context_seconds=r.context_seconds if slide else None, tempo_in_prompt=r.tempo_in_prompt))
        log.info("#%d prompt %r, seed %d, %d samples", job.req, session.prompt_text, session.seed, total)
        take = self.live.begin_take() if self.live else None
        start_at = self._start_at()
        pieces, done, t0 = [], 0, time.perf_counter()
        try:
            for chunk in session:
                pieces.append(chunk.audio)
                done += chunk.audio.shape[1]
                if take is not None and not shaped:
                    self.live.push(take, chunk.audio, start_at, job.cancel_event)
                if not chunk.last:
                    job.progress(done / total)
        except BaseException:
            if take is not None:
                self.live.stop(take)  # a cancelled result falls silent at once
            raise
        self._measure(session.steps, time.perf_counter() - t0)
        audio = np.concatenate(pieces, axis=1)
        if audio.shape[1] != total:  # the engine promises exact bars; a mismatch is a bug worth failing on
            raise RuntimeError(f"rendered {audio.shape[1]} samples for {render_bars} bars, expected {total}")
        if shaped:
            audio, note = put_on_grid(audio, r.tempo, sr, r.bars, lock=r.lock, loop=r.loop)
            log.info("#%d %s", job.req, note)
            total = audio.shape[1]
            if take is not None:
                try:
                    self.live.push(take, audio, start_at, job.cancel_event)
                except BaseException:
                    self.live.stop(take)
                    raise
        if take is not None:
            self.live.finish(take)
        path = write_wav(self.namer.path(job.req, "gen" if r.kind == "generate" else "cont"), audio, sr)
        # Exactly `bars` bars by the bar arithmetic's rounding rule (bar lines fall on whole samples), so say so.
        self._send("/done", job.req, str(path), total / sr, float(r.bars))

    def _jam(self, job: Job, model: MusicGen) -> None:
        """Endless bar-aligned chunks until /jam/stop; each a WAV and a /chunk; the whole jam a WAV at the end."""
        r, sr = job.request, model.sample_rate
        tail = None  # the jam's last seconds: the prompt of the next session after a tempo or prompt change
        if r.wav_path:
            wav, wav_sr = load_audio(r.wav_path)
            n = min(wav.shape[1], round(r.context_seconds * wav_sr))
            tail = (wav[:, wav.shape[1] - n:], wav_sr)
        tempo, template = r.tempo, r.prompt
        melody = self._melody(job, model, tempo)
        writer = TakeWriter(self.namer.path(job.req, "jam"), sr, model.channels)
        take = self.live.begin_take() if self.live else None
        start_at = self._start_at(r.song_beat)
        index, base, end, t_first, made, bars = 0, Fraction(0), Fraction(0), None, 0, Fraction(0)
        try:
            while True:
                job.check()
                session = job.attach(StreamSession(
                    model, self._prompt(job, template, tempo, melody), r.sampling, tempo=tempo, chunk_bars=r.chunk_bars,
                    context_seconds=r.context_seconds, audio_prompt=tail, melody=melody,
                    tempo_in_prompt=r.tempo_in_prompt))
                log.info("#%d jam at %s bpm %d/%d: %r, seed %d", job.req, format_bpm(tempo.bpm), tempo.numerator,
                         tempo.denominator, session.prompt_text, session.seed)
                chunk_s = float(tempo.seconds_per_bar() * r.chunk_bars)
                ahead_limit = max(JAM_AHEAD_MIN_SECONDS, 2 * chunk_s)
                changed, busy, resumed = None, 0.0, time.perf_counter()
                # Tempo lock: each chunk comes out of the ChunkLock one chunk late (locked once the next one has
                # shown where its last beat belongs); `held` is the chunk waiting for its audio.
                lock, held = (ChunkLock(tempo, sr) if r.lock else None), None

                def emit(chunk, audio: np.ndarray) -> None:
                    nonlocal index, made, end, bars, tail, t_first
                    path = write_wav(self.namer.path(job.req, "jam", index), audio, sr)
                    writer.write(audio)
                    start = base + chunk.start_beat
                    args = [job.req, index, str(path), float(start), float(chunk.beats)]
                    if r.song_beat is not None:
                        args.append(float(r.song_beat + start))
                    self._send("/chunk", *args)
                    if take is not None:
                        self.live.push(take, audio, start_at, job.cancel_event)
                    index, made = index + 1, made + audio.shape[1]
                    end = start + chunk.beats
                    bars += chunk.beats / tempo.beats_per_bar
                    tail = _append_tail(tail, audio, sr, r.context_seconds)  # the next session continues what played
                    t_first = t_first or time.monotonic()

                try:
                    for chunk in session:
                        busy += time.perf_counter() - resumed  # generating, not waiting
                        self._measure(session.steps, busy)
                        if lock is None:
                            emit(chunk, chunk.audio)
                        else:
                            locked = lock.push(chunk.audio)
                            if held is not None:
                                emit(held, locked)
                            held = chunk
                        # Pace: no further ahead of real time than the device needs to always hold the next chunk.
                        while t_first is not None and made / sr - (time.monotonic() - t_first) > ahead_limit:
                            job.check()
                            time.sleep(0.02)
                        if r.follow is not None:
                            new_tempo, new_template = r.follow()
                            if new_tempo != tempo or new_template != template:
                                changed = (new_tempo, new_template)
                                break
                        resumed = time.perf_counter()
                finally:
                    if held is not None and not job.cancel_event.is_set():  # the last chunk, on a change or a stop
                        emit(held, lock.flush())
                        log.info("#%d tempo lock: %s (%d beats dropped or repeated)", job.req, lock.message,
                                 lock.splices)
                if changed is None:
                    break
                log.info("#%d jam follows a change: %s bpm %d/%d, prompt %r", job.req, format_bpm(changed[0].bpm),
                         changed[0].numerator, changed[0].denominator, changed[1])
                tempo, template, base = changed[0], changed[1], end
                if melody is not None:
                    melody = self._melody(job, model, tempo)
        except BaseException as exc:
            stopped = isinstance(exc, Cancelled) and job.stop_event.is_set() and not job.cancel_event.is_set()
            if take is not None:
                # /jam/stop: what is queued plays to the next bar line; anything else: silence now.
                self.live.stop(take, self._next_bar_time() if stopped else None)
            if not stopped:
                writer.discard()
                raise
        finally:
            job.session = None
        if writer.frames == 0:
            writer.discard()
            raise Cancelled()
        path = writer.close()
        seconds = writer.frames / sr
        self._send("/done", job.req, str(path), seconds, float(bars))
        log.info("#%d jam stopped after %d chunks (%.2f s)", job.req, index, seconds)


def _append_tail(tail: tuple[np.ndarray, int] | None, audio: np.ndarray, sr: int, seconds: float):
    keep = max(1, round(seconds * sr))
    if tail is None or tail[1] != sr:
        joined = audio
    else:
        joined = np.concatenate([tail[0], audio], axis=1)
    return joined[:, -keep:], sr
