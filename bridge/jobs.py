"""The bridge's jobs: requests from a bounded queue, run against an engine (`engine.interface.Engine`), their
results written as WAVs, announced over OSC and played on the live output.

Up to `engine.capacity` jobs run at once, each on its own worker thread (the in-process engine advances one
stream at a time: capacity 1, one job at a time, the others wait in the queue; a batching engine runs several).
Requests past MAX_QUEUED waiting are refused with `/error req busy` rather than piling up latency. Everything
that reaches the engine is data (prompt text, audio and chroma arrays), never a path, so a remote engine works.

The kinds of job and what they send (every job starts with `/ack`, sent by the server on acceptance):
- generate: exactly N bars at the tempo and meter the request was made with; `/progress` (at most
  PROGRESS_MAX_PER_SECOND per second), then `/done req wav seconds bars`. With `takes` > 1, that many streams
  (seeds: `engine.sampling.take_seed`), each answered with `/take req index wav` as it completes, then `/done` naming take 0
  (the take that plays live).
- continue: the same, continuing the last `prompt_bars` bars of a WAV (default DEFAULT_PROMPT_BARS, or the whole
  file when shorter); only the new audio is written.
- jam: endless, bar-aligned chunks from a `bridge.jam.Jam`, each written as a WAV and announced with `/chunk req
  index wav start_beat beats [song_beat]`: start_beat counts from the jam's first chunk (the device anchors that
  on a bar line), song_beat is the song beat it belongs on (sent once the bridge has had /transport): the first
  bar line after /jam/start, plus start_beat, unless the engine is too slow for that (the Jam then starts later,
  or re-anchors with `/error req slow`; see bridge/jam_pacing.py). The Jam follows tempo changes (and prompt
  changes, when started with an empty prompt) and a lost engine (`/error -1 engine_lost`) by opening a new
  stream that continues the jam's last seconds. `/jam/stop` ends it with `/done` and a WAV of the whole jam.
Cancelling (`/cancel req`) removes a queued job or stops a running one within one decoder step; either way the
job ends with `/error req cancelled` (a jam too: its WAVs so far stay, the whole-jam WAV is dropped). Other jobs
are not touched.

With a live output (`serve --audio-device`), each result is also played as it is made: it starts on the song's
next bar line after its first audio is ready (a jam: on the bar its first /chunk names), replacing the previous
result exactly there. `/jam/stop` lets it play to the next bar line; a cancel silences it at once. When jobs run
side by side, the live output plays the one that started first, until it ends (take 0 of a multi-take request).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import numpy as np

from engine.bars import Tempo, format_bpm
from engine.errors import Cancelled, UserError
from engine.key import key_for_prompt
from engine.interface import Engine, EngineStream, StreamSpec
from engine.sampling import SamplingSettings
from engine.takes import take_specs

from . import protocol
from .audio_io import load_audio
from .audio_out import START_MARGIN_S, LiveOutput, TakeWriter, WavNamer, write_wav
from .audio_process import LiveOutputProcess
from .jam import Jam, JamSettings
from .jam_pacing import RateMeter
from .presets import render_prompt
from .result_grid import bars_to_render, put_on_grid
from .transport import Transport

log = logging.getLogger(__name__)

MAX_QUEUED = 4
PROGRESS_CHUNK_SECONDS = 0.5  # streams for /generate hand out audio this often: progress and live output follow
DEFAULT_PROMPT_BARS = 4

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
    song_beat: Fraction | None = None  # jam: the earliest song beat its first chunk belongs on (None: no transport)
    follow: Callable[[], tuple[Tempo, str]] | None = None  # jam: the current (tempo, prompt template) to follow
    takes: int = 1  # generate: variations rendered at once (seeds: engine.sampling.take_seed)
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
        self._work: list = []  # streams and jams that cancel() and stop() reach
        self._lock = threading.Lock()
        self._send = send
        self._last_progress = -1e9

    def cancel(self) -> None:
        self.cancel_event.set()
        with self._lock:
            work = list(self._work)
        for w in work:
            w.cancel()

    def stop(self) -> None:
        self.stop_event.set()
        with self._lock:
            work = list(self._work)
        for w in work:
            (w.stop if isinstance(w, Jam) else w.cancel)()

    def check(self) -> None:
        if self.cancel_event.is_set() or self.stop_event.is_set():
            raise Cancelled()

    def attach(self, work):
        """Make a stream or jam reachable by cancel() and stop(); it is told at once if they came meanwhile."""
        with self._lock:
            self._work.append(work)
        if self.cancel_event.is_set():
            work.cancel()
        elif self.stop_event.is_set():
            (work.stop if isinstance(work, Jam) else work.cancel)()
        return work

    def progress(self, fraction: float) -> None:
        """Throttled to PROGRESS_MAX_PER_SECOND; the end needs none (/done says it)."""
        now = time.monotonic()
        if now - self._last_progress >= 1.0 / protocol.PROGRESS_MAX_PER_SECOND:
            self._last_progress = now
            self._send("/progress", self.req, min(1.0, max(0.0, float(fraction))))


class JobRunner:
    """The queue and its workers (one per stream the engine can advance at once)."""

    def __init__(self, send: Send, namer: WavNamer, *, live: LiveOutput | LiveOutputProcess | None = None,
                 transport: Transport | None = None, max_queued: int = MAX_QUEUED,
                 on_change: Callable[[], None] | None = None):
        self._send = send
        self.namer = namer
        self.live = live
        self.transport = transport or Transport()
        self.max_queued = max_queued
        self._on_change = on_change or (lambda: None)
        self._engine: Engine | None = None
        self.steps_per_s = 0.0  # the last measured, of any job
        self.realtime = 0.0  # seconds of audio made per second of generating, the last measured
        self._lock = threading.Condition()
        self._queue: collections.deque[Job] = collections.deque()
        self._running: list[Job] = []
        self._live_owner: Job | None = None  # the job that feeds the live output
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._add_workers(1)

    # --- called from the server's threads ---

    @property
    def engine(self) -> Engine | None:
        return self._engine

    @engine.setter
    def engine(self, engine: Engine) -> None:
        self._engine = engine
        self._add_workers(max(1, engine.capacity))

    def _add_workers(self, total: int) -> None:
        while len(self._threads) < total:
            t = threading.Thread(target=self._worker, name=f"engine-worker-{len(self._threads)}", daemon=True)
            self._threads.append(t)
            t.start()

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._queue)

    @property
    def running(self) -> list[Job]:
        with self._lock:
            return list(self._running)

    def submit(self, request: Request, ack: str | None = None) -> Job:
        """Queue a request; `/ack req ACK` goes out first when `ack` is given (before a worker can send
        anything about it). UserError 'busy' when the queue is full, 'bad_args' for a request id in use."""
        job = Job(request, self._send)
        with self._lock:
            if self._closed:
                raise UserError("the bridge is shutting down", code="busy")
            if self._find(request.req) is not None:
                raise UserError(f"request id {request.req} is already in use; use a new id for each request",
                                code="bad_args")
            if len(self._queue) >= self.max_queued:
                running = ", ".join(f"#{j.req} ({j.kind})" for j in self._running) or "nothing"
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
            queued = job in self._queue
            if queued:
                self._queue.remove(job)
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
            if job in self._queue:
                self._queue.remove(job)
                self._send("/error", req, "cancelled", f"jam {req} was stopped before it started")
                return True
            job.stop()
        return True

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel everything and wait for the workers to end."""
        with self._lock:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            running = list(self._running)
            self._lock.notify_all()
        for job in pending + running:
            job.cancel()
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))

    def _find(self, req: int) -> Job | None:
        return next((j for j in (*self._running, *self._queue) if j.req == req), None)

    # --- the workers ---

    def _worker(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                job = self._queue.popleft()
                self._running.append(job)
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
                with self._lock:
                    self._running.remove(job)
                    if self._live_owner is job:
                        self._live_owner = None
                self._on_change()

    def _run(self, job: Job) -> None:
        job.check()
        engine = self._engine
        if engine is None:
            raise UserError("no model is loaded", code="not_ready")
        r = job.request
        started = time.perf_counter()
        log.info("#%d %s: %s", job.req, r.kind, r.prompt or "(no prompt)")
        if r.kind == "jam":
            self._jam(job, engine)
        else:
            self._render(job, engine)
        log.info("#%d done in %.2f s", job.req, time.perf_counter() - started)

    # --- inputs, resolved to data before the engine sees them ---

    def _melody(self, job: Job, engine: Engine, tempo: Tempo) -> np.ndarray | None:
        """The request's melody as a chroma for this tempo (None without one)."""
        self._check_melody(job, engine)
        return None if job.request.melody is None else job.request.melody(tempo, job.cancel_event)

    @staticmethod
    def _check_melody(job: Job, engine: Engine) -> None:
        if job.request.melody is not None and not engine.info.melody:
            raise UserError(f"{engine.info.name} is not a melody model: a musicgen-melody model is needed to follow "
                            "a melody (start the bridge with --model facebook/musicgen-melody), or send "
                            "/melody/clear to generate from text alone", code="bad_args")

    @staticmethod
    def _prompt(template: str, tempo: Tempo, key: str | None) -> str:
        return render_prompt(template, bpm=format_bpm(tempo.bpm), key=key)

    @staticmethod
    def _wav_tail(path: str, samples: Callable[[int, int], int]) -> tuple[np.ndarray, int]:
        """The last `samples(length, rate)` samples of a WAV, as (audio, rate)."""
        wav, sr = load_audio(path)
        n = min(wav.shape[1], samples(wav.shape[1], sr))
        return wav[:, wav.shape[1] - n:], sr

    # --- live output ---

    def _start_at(self, first_beat: Fraction | None = None) -> Callable[[float], float]:
        """When a take should start: on `first_beat` of the song (a jam's, already announced to the device with
        the pacer's own margin) if that has not passed, else on the next bar line at least START_MARGIN_S after
        the audio is ready, else (transport stopped) right away."""
        def when(ready: float) -> float:
            state = self.transport.snapshot()
            if state.playing and first_beat is not None and state.time_of_beat(first_beat) >= ready:
                return state.time_of_beat(first_beat)
            earliest = ready + START_MARGIN_S
            return state.next_bar_time(earliest) or earliest
        return when

    def _live_take(self, job: Job):
        """A take on the live output for this job, unless another running job plays there (LiveOutput is fed by
        one job at a time; with several streams at once, the first to start keeps it until it ends)."""
        if self.live is None:
            return None
        with self._lock:
            if self._live_owner is not None and self._live_owner is not job:
                return None
            self._live_owner = job
        return self.live.begin_take()

    def _next_bar_time(self) -> float | None:
        state = self.transport.snapshot()
        return state.next_bar_time(self.transport.clock() + START_MARGIN_S)

    def _measured(self, steps_per_s: float, realtime: float) -> None:
        if steps_per_s > 0:
            self.steps_per_s, self.realtime = steps_per_s, realtime

    # --- the kinds of job ---

    def _render(self, job: Job, engine: Engine) -> None:
        """/generate and /continue: exactly `bars` bars, then one WAV and /done; with takes, one WAV and a /take
        per take as each completes (take 0 plays live), then /done naming take 0."""
        r, info = job.request, engine.info
        sr = info.sample_rate
        audio_prompt = None
        if r.kind == "continue":
            bars = r.prompt_bars or DEFAULT_PROMPT_BARS
            audio_prompt = self._wav_tail(r.wav_path, lambda n, rate: min(
                r.tempo.bars_to_samples(bars, rate), round(r.context_seconds * rate)))
            log.info("#%d continuing the last %.2f s of %s", job.req, audio_prompt[0].shape[1] / audio_prompt[1],
                     r.wav_path)
        melody = self._melody(job, engine, r.tempo)
        job.check()
        key, source = key_for_prompt(r.key, melody)
        log.info("#%d key %s (%s)", job.req, key or "-", source)
        shaped = r.lock or r.loop  # the result is reshaped once whole: live output gets it then
        render_bars = bars_to_render(r.bars, lock=r.lock, loop=r.loop)
        total = r.tempo.bars_to_samples(render_bars, sr)
        slide = total / sr > info.max_seconds  # longer than one window: slide it
        spec = StreamSpec(self._prompt(r.prompt, r.tempo, key), r.sampling, tempo=r.tempo, bars=render_bars,
                          chunk_seconds=PROGRESS_CHUNK_SECONDS, audio_prompt=audio_prompt, melody=melody,
                          context_seconds=r.context_seconds if slide else None, tempo_in_prompt=r.tempo_in_prompt)
        specs = take_specs(spec, r.takes) if r.takes > 1 else [spec]
        streams = [job.attach(engine.open(s)) for s in specs]
        kind = "gen" if r.kind == "generate" else "cont"
        made = [0] * len(streams)
        meters = [RateMeter(info.frame_rate) for _ in streams]

        def render(i: int) -> np.ndarray:
            stream, pieces = streams[i], []
            take = self._live_take(job) if i == 0 else None
            start_at = self._start_at()
            try:
                t0 = time.perf_counter()
                for chunk in stream:
                    if not pieces:
                        log.info("#%d %sprompt %r, seed %s, %d samples", job.req,
                                 f"take {i}: " if len(streams) > 1 else "", stream.prompt_text, stream.seed, total)
                    pieces.append(chunk.audio)
                    made[i] += chunk.audio.shape[1]
                    if take is not None and not shaped:
                        self.live.push(take, chunk.audio, start_at, job.cancel_event)
                    if sum(made) < total * len(streams):
                        job.progress(sum(made) / (total * len(streams)))
                meters[i].add(stream.steps, time.perf_counter() - t0)
                audio = np.concatenate(pieces, axis=1)
                if audio.shape[1] != total:  # the engine promises exact bars; a mismatch is a bug worth failing on
                    raise RuntimeError(f"rendered {audio.shape[1]} samples for {render_bars} bars, expected {total}")
                if shaped:
                    audio, note = put_on_grid(audio, r.tempo, sr, r.bars, lock=r.lock, loop=r.loop)
                    log.info("#%d %s%s", job.req, f"take {i}: " if len(streams) > 1 else "", note)
                    if take is not None:
                        self.live.push(take, audio, start_at, job.cancel_event)
            except BaseException:
                if take is not None:
                    self.live.stop(take)  # a cancelled result falls silent at once
                raise
            if take is not None:
                self.live.finish(take)
            return audio

        paths = {}
        for i, audio in self._each_take(job, streams, render):
            paths[i] = write_wav(self.namer.path(job.req, kind, i if len(streams) > 1 else None), audio, sr)
            if len(streams) > 1:
                self._send("/take", job.req, i, str(paths[i]))
        steps = sum(m.steps_per_s for m in meters) / len(meters)
        self._measured(steps, steps / info.frame_rate)
        # Exactly `bars` bars by the bar arithmetic's rounding rule (bar lines fall on whole samples), so say so.
        self._send("/done", job.req, str(paths[0]), r.tempo.bars_to_samples(r.bars, sr) / sr, float(r.bars))

    def _each_take(self, job: Job, streams: list[EngineStream], render: Callable[[int], np.ndarray]):
        """(index, audio) of each take as it completes: one after another when the engine runs one stream at a
        time (take 0 first, as it plays live), side by side (threads) when it runs several."""
        width = min(len(streams), max(1, self._engine.capacity if self._engine else 1))
        if width == 1:
            for i in range(len(streams)):
                yield i, render(i)
            return
        with ThreadPoolExecutor(width, thread_name_prefix=f"take-{job.req}") as pool:
            futures = {pool.submit(render, i): i for i in range(len(streams))}
            try:
                for future in as_completed(futures):
                    yield futures[future], future.result()
            except BaseException:
                for stream in streams:  # one take failed or the job was cancelled: the others end too
                    stream.cancel()
                raise

    def _jam(self, job: Job, engine: Engine) -> None:
        """Chunks from a Jam until /jam/stop: each a WAV, a /chunk and live audio; the whole jam a WAV at the end."""
        r, info = job.request, engine.info
        sr = info.sample_rate
        tail = None
        if r.wav_path:
            tail = self._wav_tail(r.wav_path, lambda n, rate: round(r.context_seconds * rate))
        self._check_melody(job, engine)  # before any chunk
        key, source = key_for_prompt(r.key, self._melody(job, engine, r.tempo) if not r.key else None)
        log.info("#%d key %s (%s)", job.req, key or "-", source)
        def follow_song() -> tuple[Tempo, str]:
            tempo, template = r.follow()
            return tempo, self._prompt(template, tempo, key)

        def notify(code: str, message: str) -> None:
            self._send("/error", -1 if code == "engine_lost" else job.req, code, message)

        jam = job.attach(Jam(engine, JamSettings(r.sampling, r.chunk_bars, r.context_seconds, r.tempo_in_prompt,
                                                       lock=r.lock),
                             r.tempo, self._prompt(r.prompt, r.tempo, key), song_beat=r.song_beat,
                             transport=self.transport, tail=tail,
                             follow=follow_song if r.follow is not None else None,
                             melody_for=lambda tempo: self._melody(job, engine, tempo),
                             notify=notify, name=f"#{job.req} jam"))
        writer = TakeWriter(self.namer.path(job.req, "jam"), sr, info.channels)
        take = self._live_take(job)
        start_at = None
        try:
            for chunk in jam:
                path = write_wav(self.namer.path(job.req, "jam", chunk.index), chunk.audio, sr)
                writer.write(chunk.audio)
                args = [job.req, chunk.index, str(path), float(chunk.start_beat), float(chunk.beats)]
                if chunk.song_beat is not None:
                    args.append(float(chunk.song_beat))
                self._send("/chunk", *args)
                self._measured(jam.steps_per_s, jam.realtime)
                if take is not None:
                    start_at = start_at or self._start_at(chunk.song_beat)
                    self.live.push(take, chunk.audio, start_at, job.cancel_event)
        except BaseException:
            if take is not None:
                self.live.stop(take)  # a cancel (or a failure): silence now
            writer.discard()
            raise
        if take is not None:  # /jam/stop: what is queued plays to the next bar line
            self.live.stop(take, self._next_bar_time())
        if writer.frames == 0:
            writer.discard()
            raise Cancelled()
        path = writer.close()
        seconds = writer.frames / sr
        self._send("/done", job.req, str(path), seconds, float(jam.bars))
        log.info("#%d jam stopped after %d chunks (%.2f s)", job.req, jam.chunks, seconds)
