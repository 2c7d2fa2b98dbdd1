"""Audio back to Live: WAV files in the out-dir, and an optional live output stream to an audio device.

Files: every result and streamed chunk is a WAV written atomically (temp file + rename) under the out-dir, named
`YYYYmmdd-HHMMSS-NNNNNN-rRRRR-KIND[-cIIII].wav`: local time, a counter that only grows (it continues after the
highest one already in the folder, so restarts never collide), the request id, the kind (gen, cont, jam, mic)
and the chunk index. Names sort in the order they were made. Paths from clients are never written to.

Live output: a sounddevice OutputStream on a device such as BlackHole or JACK, fed from a pre-allocated ring
buffer that the job fills. A "take" (one result or one jam) starts at a wall-clock time the job chooses (the next
bar line); the callback only copies, and zero-fills when the job falls behind (an underrun). Ring positions are
absolute sample counts from the take's start, so after an underrun the take stays on the song's grid: late
samples are dropped, not played late.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from engine.errors import Cancelled, UserError

from .audio_io import atomic_output, write_wav_atomic

log = logging.getLogger(__name__)

KINDS = ("gen", "cont", "jam", "mic")
_NAME = re.compile(r"^\d{8}-\d{6}-(\d{6,})-r\d+-[a-z]+(?:-c\d+)?\.wav$")
START_MARGIN_S = 0.05  # a take never starts sooner than this after its first audio is ready
RING_SECONDS = 90.0


class WavNamer:
    """Unique, sortable WAV paths inside one folder (thread-safe)."""

    def __init__(self, out_dir: str | Path, clock: Callable[[], datetime] = datetime.now):
        self.out_dir = Path(out_dir).resolve()
        if not self.out_dir.is_dir():
            raise UserError(f"--out-dir {out_dir} is not a folder: create it first", code="bad_args")
        if not os.access(self.out_dir, os.W_OK):
            raise UserError(f"--out-dir {out_dir} is not writable", code="bad_args")
        self._clock = clock
        self._lock = threading.Lock()
        counters = [int(m.group(1)) for p in os.listdir(self.out_dir) if (m := _NAME.match(p))]
        self._counter = max(counters, default=-1) + 1

    def path(self, req: int, kind: str, index: int | None = None) -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown WAV kind {kind!r}")
        with self._lock:
            while True:
                n, self._counter = self._counter, self._counter + 1
                name = f"{self._clock():%Y%m%d-%H%M%S}-{n:06d}-r{max(req, 0):04d}-{kind}"
                if index is not None:
                    name += f"-c{index:04d}"
                path = self.out_dir / f"{name}.wav"
                if not path.exists():  # only another process writing here could make this happen
                    return path


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Write [channels, n] float audio as 16-bit stereo WAV, atomically. Mono goes to both channels: the device
    plays files with `buffer~ replace` (which takes the file's channel count) into `groove~ 2`, which is silent on
    a channel the buffer lacks, so a mono file would play on the left only."""
    audio = np.asarray(audio)
    if audio.ndim == 1 or audio.shape[0] == 1:
        audio = np.repeat(audio.reshape(1, -1), 2, axis=0)
    write_wav_atomic(path, audio, sample_rate)
    return path


class TakeWriter:
    """A WAV written piece by piece (a whole jam) that appears under its name, complete, only on `close()`."""

    def __init__(self, path: Path, sample_rate: int, channels: int):
        self.path, self.sample_rate, self.frames = Path(path), sample_rate, 0
        self._ctx = atomic_output(self.path)
        self._tmp = self._ctx.__enter__()
        self._file = sf.SoundFile(str(self._tmp), "w", samplerate=sample_rate, channels=channels,
                                  subtype="PCM_16", format="WAV")

    def write(self, audio: np.ndarray) -> None:
        self._file.write(np.clip(audio, -1.0, 1.0).T)  # clip: libsndfile wraps out-of-range floats
        self.frames += audio.shape[1]

    def close(self) -> Path:
        self._file.close()
        self._ctx.__exit__(None, None, None)
        return self.path

    def discard(self) -> None:
        self._file.close()
        try:
            self._ctx.__exit__(Cancelled, Cancelled(), None)  # removes the temp file
        except Cancelled:
            pass


def find_device(name: str, kind: str) -> dict:
    """The sounddevice device whose name contains `name` (case-insensitive), with `kind` ('input'/'output')
    channels. Raises UserError listing the devices there are."""
    import sounddevice as sd

    key = "max_output_channels" if kind == "output" else "max_input_channels"
    devices = [d for d in sd.query_devices() if d[key] > 0]
    exact = [d for d in devices if d["name"] == name]
    matches = exact or [d for d in devices if name.lower() in d["name"].lower()]
    if len(matches) == 1:
        return matches[0]
    listing = "; ".join(f"{d['name']} ({sd.query_hostapis(d['hostapi'])['name']})" for d in devices) or "none"
    if not matches:
        raise UserError(f"no {kind} audio device matches {name!r}; {kind} devices: {listing}", code="bad_args")
    raise UserError(f"{name!r} matches several {kind} devices; give more of the name: {listing}", code="bad_args")


class _Take:
    """One piece of audio on the output: ring positions (absolute samples from the take's start) and state.
    Only the producer moves `write_pos`; only the audio callback moves `read_pos`."""

    def __init__(self) -> None:
        self.ring: np.ndarray | None = None  # one of LiveOutput's two rings, chosen on the first push
        self.write_pos = 0
        self.read_pos = 0
        self.start_time: float | None = None  # stream clock time of sample 0
        self.started = False
        self.finished = False  # no more audio will come
        self.done = False  # finished and played out (or replaced, or stopped)
        self.end_pos: float = float("inf")  # stop() ends the take at this sample
        self.starving = False
        self.resampler = None


class LiveOutput:
    """A live output stream to an audio device, fed take by take from jobs.

    Two rings: the take that plays and the one scheduled next, so a new result takes over exactly at its bar
    line while the previous one keeps playing until then (no gap, no cut mid-bar).
    """

    def __init__(self, device: str, sample_rate: int, channels: int, *, ring_seconds: float = RING_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        import sounddevice as sd

        self._sd = sd
        info = find_device(device, "output")
        self.device_name = info["name"]
        self.device_index = info["index"]
        self.in_rate, self.in_channels = sample_rate, channels
        self.channels = max(1, min(2, info["max_output_channels"]))
        try:  # play at the model's rate when the device allows it; else resample to the device's own rate
            sd.check_output_settings(device=self.device_index, samplerate=sample_rate, channels=self.channels,
                                     dtype="float32")
            self.rate = sample_rate
        except sd.PortAudioError:
            self.rate = int(info["default_samplerate"])
        self._clock = clock
        self._rings = [np.zeros((int(ring_seconds * self.rate), self.channels), np.float32) for _ in range(2)]
        self._take: _Take | None = None  # playing
        self._next: _Take | None = None  # scheduled to take over at its start time
        self._slots = threading.Lock()  # guards the two slots; the callback only ever tries it, never waits
        self._underruns = 0  # takes that ran dry (counted once per dry spell)
        self._xruns = 0  # underflows PortAudio reported
        self._callback_errors = 0
        self.dac_latency = 0.0  # seconds from a callback to when its first sample is heard, as PortAudio says
        self._stream = None

    def open(self) -> "LiveOutput":
        sd = self._sd
        try:
            self._stream = sd.OutputStream(device=self.device_index, samplerate=self.rate, channels=self.channels,
                                           dtype="float32", callback=self._callback)
            self._stream.start()
        except sd.PortAudioError as exc:
            raise UserError(f"cannot open audio output {self.device_name!r}: {exc}", code="bad_args") from None
        log.info("live output: %s, %d Hz, %d channel(s), latency %.1f ms%s", self.device_name, self.rate,
                 self.channels, self._stream.latency * 1000,
                 "" if self.rate == self.in_rate else f" (resampled from {self.in_rate} Hz)")
        return self

    @property
    def starved(self) -> int:
        """Times a take ran dry because the job fell behind (counted once per dry spell)."""
        return self._underruns

    @property
    def xruns(self) -> int:
        """Callbacks PortAudio flagged as output underflow (the audio system itself was late)."""
        return self._xruns

    @property
    def underruns(self) -> int:
        """Both kinds: what /status reports."""
        return self._underruns + self._xruns

    def close(self) -> None:
        self._take = self._next = None
        if self._stream is not None:
            try:
                self._stream.abort()
                self._stream.close()
            except self._sd.PortAudioError as exc:
                log.warning("closing the audio output: %s", exc)
            self._stream = None

    # --- producer side (the job's thread; one job at a time) ---

    def begin_take(self) -> _Take:
        """A new take. It is scheduled by its first push and replaces what plays at its start time."""
        take = _Take()
        if self.rate != self.in_rate:
            import soxr

            take.resampler = soxr.ResampleStream(self.in_rate, self.rate, self.in_channels, dtype="float32")
        return take

    def push(self, take: _Take, audio: np.ndarray, start_at: Callable[[float], float],
             cancel: threading.Event | None = None) -> None:
        """Queue [channels, n] audio at the model's rate. The first push schedules the take at the monotonic
        time `start_at(ready_time)` returns. Waits while the ring is full; raises Cancelled if `cancel` is set."""
        frames = self._convert(take, audio, last=False)
        if take.start_time is None:
            with self._slots:
                pending, playing = self._next, self._take
                if pending is not None and not pending.started:
                    if playing is None or playing.done:  # nothing plays: the pending one comes first
                        self._take, self._next = pending, None
                    else:  # two rings: a third take cannot wait; the pending one is dropped
                        pending.done = True
                        self._next = None
                current = self._take if self._take is not None and not self._take.done else None
                take.ring = self._rings[1] if current is not None and current.ring is self._rings[0] else self._rings[0]
                when = start_at(self._clock())
                take.start_time = self._stream_time(when)
                self._next = take
            log.debug("live output: take starts in %.3f s", when - self._clock())
        self._write(take, frames, cancel)

    def _stream_time(self, t: float) -> float:
        """Monotonic time -> the stream's clock. Read between two clock reads close together, so a preemption
        between the reads cannot skew it (JACK's stream clock itself counts whole frames)."""
        best = None
        for _ in range(5):
            before = self._clock()
            now = self._stream.time
            after = self._clock()
            if best is None or after - before < best[0]:
                best = (after - before, now - (before + after) / 2)
            if after - before < 20e-6:
                break
        return t + best[1]

    def finish(self, take: _Take) -> None:
        """No more audio for this take: running dry at its end is not an underrun."""
        if take.resampler is not None and take.start_time is not None:
            self._write(take, self._convert(take, np.zeros((self.in_channels, 0), np.float32), last=True), None)
        take.finished = True

    def stop(self, take: _Take, at: float | None = None) -> None:
        """End the take at monotonic time `at` (None: now), whatever is still queued."""
        if take.start_time is None:
            take.done = True
            return
        end = 0 if at is None else max(0, round((self._stream_time(at) - take.start_time) * self.rate))
        take.end_pos = min(take.end_pos, end)
        take.finished = True
        if at is None:
            take.done = True

    def wait_played(self, take: _Take, timeout: float) -> bool:
        """Block until the take has played out (for tests and shutdown); False on timeout."""
        end = self._clock() + timeout
        while not take.done and self._clock() < end:
            time.sleep(0.01)
        return take.done

    def _convert(self, take: _Take, audio: np.ndarray, last: bool) -> np.ndarray:
        frames = np.ascontiguousarray(np.asarray(audio, np.float32).T)  # [n, C]
        if take.resampler is not None:
            frames = take.resampler.resample_chunk(frames, last=last)
        if frames.shape[1] == self.channels:
            return frames
        if frames.shape[1] == 1:
            return np.repeat(frames, self.channels, axis=1)
        return frames.mean(axis=1, keepdims=True) if self.channels == 1 else frames[:, : self.channels]

    def _write(self, take: _Take, frames: np.ndarray, cancel: threading.Event | None) -> None:
        ring = take.ring
        cap, pos = len(ring), 0
        while pos < len(frames):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            if take.done:  # replaced by a newer take
                return
            read = take.read_pos
            if take.write_pos < read:  # the callback already passed these samples (underrun): drop them
                skip = min(read - take.write_pos, len(frames) - pos)
                pos += skip
                take.write_pos += skip
                continue
            space = cap - (take.write_pos - read)
            if space <= 0:
                time.sleep(0.01)
                continue
            n = min(space, len(frames) - pos)
            i = take.write_pos % cap
            first = min(n, cap - i)
            ring[i:i + first] = frames[pos:pos + first]
            if n > first:
                ring[: n - first] = frames[pos + first:pos + n]
            take.write_pos += n
            pos += n

    # --- the audio callback (PortAudio's thread): copy or zero-fill, never raise, allocate nothing big ---

    def _callback(self, outdata, frames, time_info, status) -> None:
        try:
            if status.output_underflow:
                self._xruns += 1
            if time_info.outputBufferDacTime:
                self.dac_latency = time_info.outputBufferDacTime - time_info.currentTime
            dac = time_info.outputBufferDacTime or time_info.currentTime
            if not self._slots.acquire(blocking=False):
                # The producer is scheduling a take (microseconds): play on; a take due now starts a block
                # late, its first samples skipped, so it still lands on its grid.
                self._play(self._take, outdata, dac)
                return
            try:
                split, nxt = frames, self._next
                if nxt is not None and not nxt.done:
                    lead = int(round((nxt.start_time - dac) * self.rate))
                    if lead < frames:  # the next take starts inside this block
                        split = max(0, lead)
                self._play(self._take, outdata[:split], dac)
                if split < frames:
                    if self._take is not None:
                        self._take.done = True
                    self._take, self._next = nxt, None
                    self._play(nxt, outdata[split:], dac + split / self.rate)
            finally:
                self._slots.release()
        except Exception:  # an exception would stop the stream for good; count it and play silence
            self._callback_errors += 1
            outdata.fill(0)

    def _play(self, take: _Take | None, out: np.ndarray, dac: float) -> None:
        """Fill `out` (whose first sample is heard at stream time `dac`) from `take`."""
        if len(out) == 0:
            return
        if take is None or take.done:
            out.fill(0)
            return
        if not take.started:  # silence until its start time, then from its first sample
            lead = int(round((take.start_time - dac) * self.rate))
            if lead >= len(out):
                out.fill(0)
                return
            take.started = True
            if lead > 0:
                out[:lead] = 0
                out = out[lead:]
            else:
                take.read_pos = -lead  # a few samples late: skip them to land on the grid
        need = len(out)
        avail = min(take.write_pos, take.end_pos) - take.read_pos
        n = min(need, max(0, avail))
        if n:
            ring = take.ring
            cap = len(ring)
            i = take.read_pos % cap
            first = min(n, cap - i)
            out[:first] = ring[i:i + first]
            if n > first:
                out[first:n] = ring[: n - first]
        if n < need:
            out[n:] = 0
            if take.finished:
                take.done = True
            elif not take.starving:
                take.starving = True
                self._underruns += 1
            take.read_pos += need  # keep time: what arrives late for these samples is dropped
        else:
            take.starving = False
            take.read_pos += n
