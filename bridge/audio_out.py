"""Audio back to Live: WAV files in the out-dir, and an optional live output stream to an audio device.

Files: every result and streamed chunk is a WAV written atomically (temp file + rename) under the out-dir, named
`YYYYmmdd-HHMMSS-NNNNNN-rRRRR-KIND[-cIIII].wav`: local time, a counter that only grows (it continues after the
highest one already in the folder, so restarts never collide), the request id, the kind (gen, cont, jam, mic)
and the chunk index. Names sort in the order they were made. Paths from clients are never written to.

Live output: a sounddevice OutputStream on a device such as BlackHole or JACK, fed from pre-allocated ring
buffers that the job fills. A "take" (one result or one jam) starts at a wall-clock time the job chooses (the next
bar line); the callback only copies, and zero-fills when the job falls behind (a dry spell). Ring positions are
absolute sample counts from the take's start, so after a dry spell the take stays on the song's grid: late
samples are dropped, not played late. Four pieces, one job each: `Ring` (the wrap-around arithmetic),
`SampleClock` (wall-clock time -> output sample index), `TakeScheduler` (which take plays each output sample,
hand-over on an exact sample) and `_DeviceStream` (the sounddevice stream); `LiveOutput` wires them together.

Headroom for the callback: it is Python, so it needs the GIL. The bridge runs this class in a process of its own
(`bridge.audio_process`), where nothing else wants the GIL for long; opening a live output also lowers the
switch interval to 1 ms, so a callback waits at most that long for the feeder thread.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
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
# A take never starts sooner than this after its first audio is ready: the audio still has to cross to the output
# process and into its ring (0.5 MB for 2 bars), which took more than 50 ms on a saturated 2-core host, and a take
# whose audio lands after its start loses its first samples (it keeps its grid).
START_MARGIN_S = 0.15
RING_SECONDS = 90.0
ANCHOR_SECONDS = 1.0  # SampleClock re-anchors at least this often (clock drift; blocks lost without a flag)
SWITCH_INTERVAL_S = 0.001  # the GIL hand-over bound while a live output runs (see the module docstring)


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


class Ring:
    """A fixed-capacity ring of [frames, channels] float32 audio addressed by absolute frame positions: the only
    place that knows about wrap-around. The caller keeps readers and writers within one capacity of each other."""

    def __init__(self, frames: int, channels: int):
        self.data = np.zeros((frames, channels), np.float32)
        self.capacity = frames

    def put(self, pos: int, frames: np.ndarray) -> None:
        """Store frames [n, C] at absolute positions pos .. pos + n."""
        n, i = len(frames), pos % self.capacity
        first = min(n, self.capacity - i)
        self.data[i:i + first] = frames[:first]
        if n > first:
            self.data[: n - first] = frames[first:]

    def get(self, pos: int, out: np.ndarray) -> None:
        """Copy len(out) frames from absolute position pos into out (no allocation: safe in the callback)."""
        n, i = len(out), pos % self.capacity
        first = min(n, self.capacity - i)
        out[:first] = self.data[i:i + first]
        if n > first:
            out[first:] = self.data[: n - first]


class _Take:
    """One piece of audio on the output: its ring positions (absolute samples from the take's start) and state.
    Only the producer moves `write_pos`; only the audio callback moves `read_pos`."""

    def __init__(self) -> None:
        self.ring: Ring | None = None  # one of the scheduler's two rings, chosen when it is scheduled
        self.write_pos = 0
        self.read_pos = 0
        self.start_sample: int | None = None  # output sample index of the take's sample 0
        self.started = False
        self.finished = False  # no more audio will come
        self.done = False  # finished and played out (or replaced, or stopped)
        self.end_pos: float = float("inf")  # stop() ends the take at this sample
        self.starving = False
        self.resampler = None


class TakeScheduler:
    """Which take plays each output sample. Two slots, the take that plays and the one scheduled next, so a new
    result takes over exactly at its start sample while the previous one plays until then (no gap, no cut
    mid-bar); two rings, so the next take fills its own while the current one plays.

    Pure logic on sample indices, with no device: `render` runs in the audio callback and never blocks (it only
    tries the lock; `schedule`, on the producer's thread, holds it for microseconds)."""

    def __init__(self, ring_frames: int, channels: int):
        self.rings = (Ring(ring_frames, channels), Ring(ring_frames, channels))
        self.playing: _Take | None = None
        self.next: _Take | None = None
        self._lock = threading.Lock()
        self.dry_spells = 0  # times a take ran dry because its producer fell behind (once per spell)

    def schedule(self, take: _Take, start_sample: int) -> None:
        """Play `take` from output sample `start_sample`, replacing what plays then. A take scheduled while
        another still waits for its start replaces the waiting one (there are two rings, not three)."""
        with self._lock:
            pending, playing = self.next, self.playing
            if pending is not None and not pending.started:
                if playing is None or playing.done:  # nothing plays: the pending one comes first
                    self.playing, self.next = pending, None
                else:
                    pending.done = True
                    self.next = None
            current = self.playing if self.playing is not None and not self.playing.done else None
            take.ring = self.rings[1] if current is not None and current.ring is self.rings[0] else self.rings[0]
            take.start_sample = start_sample
            self.next = take

    def clear(self) -> None:
        self.playing = self.next = None

    def render(self, out: np.ndarray, first: int) -> None:
        """Fill `out` [frames, C], whose first sample is output sample `first`."""
        if not self._lock.acquire(blocking=False):
            # The producer is scheduling a take (microseconds): play on; a take due now starts a block late,
            # its first samples skipped, so it still lands on its grid.
            self._play(self.playing, out, first)
            return
        try:
            split, nxt = len(out), self.next
            if nxt is not None and not nxt.done and nxt.start_sample - first < len(out):
                split = max(0, nxt.start_sample - first)  # the next take starts inside this block
            self._play(self.playing, out[:split], first)
            if split < len(out):
                if self.playing is not None:
                    self.playing.done = True
                self.playing, self.next = nxt, None
                self._play(nxt, out[split:], first + split)
        finally:
            self._lock.release()

    def _play(self, take: _Take | None, out: np.ndarray, first: int) -> None:
        if len(out) == 0:
            return
        if take is None or take.done:
            out.fill(0)
            return
        if not take.started:  # silence until its start sample, then from its first sample
            lead = take.start_sample - first
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
        n = min(need, max(0, min(take.write_pos, take.end_pos) - take.read_pos))
        if n:
            take.ring.get(take.read_pos, out[:n])
        if n < need:
            out[n:] = 0
            if take.finished:
                take.done = True
            elif not take.starving:
                take.starving = True
                self.dry_spells += 1
        else:
            take.starving = False
        take.read_pos += need  # keeps time when dry: what arrives late for these samples is dropped


class SampleClock:
    """Monotonic time -> output sample index.

    The callback counts output samples exactly and notes, per block, the stream time its first sample is heard;
    `heard - index / rate` (the time sample 0 is heard) is then the same for every block, up to the jitter of the
    host API's time estimates (a few ms under load, both ways; JACK's come from a 32-bit frame counter and can come
    out wrapped, 37 hours off). The clock keeps the last BASE_BLOCKS such values and anchors on their median, and
    maps all times to samples from that one anchor, so takes scheduled from it sit exactly where their times say
    relative to each other (mapping each take on its own let the jitter move a hand-over by a few samples). The
    anchor is renewed after ANCHOR_SECONDS (the audio and system clocks drift apart) and after the device reports
    an underflow (lost blocks leave the count behind the clock)."""

    BASE_BLOCKS = 16  # the last 128 ms at JACK's 8 ms periods: recent enough to follow a lost block

    def __init__(self, rate: int, stream_time: Callable[[], float], clock: Callable[[], float]):
        self.rate = rate
        self._stream_time, self._clock = stream_time, clock
        self._bases = np.zeros(self.BASE_BLOCKS)  # written by the callback, in place (it allocates nothing)
        self._n = 0  # values written since the last reset
        self._anchor: float | None = None  # monotonic time at which output sample 0 is heard
        self._anchored_at = -math.inf
        self.stale = False  # set by the callback when the device lost blocks

    def note_block(self, first: int, heard: float) -> None:
        """Called by the audio callback for each block."""
        self._bases[self._n % self.BASE_BLOCKS] = heard - first / self.rate
        self._n += 1

    def lost_blocks(self) -> None:
        """Called by the audio callback when the device reports an underflow: the count fell behind; start afresh."""
        self._n = 0
        self.stale = True

    def sample_at(self, t: float) -> int:
        """The output sample heard at monotonic time `t`."""
        if self._anchor is None or self.stale or self._clock() - self._anchored_at > ANCHOR_SECONDS:
            self._anchor = self._measure()
        return round((t - self._anchor) * self.rate)

    def _measure(self) -> float:
        end = self._clock() + 1.0
        while self._n < 8 and self._clock() < end:  # the stream has just started: a few blocks for the median
            time.sleep(0.005)
        self.stale = False
        self._anchored_at = self._clock()
        n = min(self._n, self.BASE_BLOCKS)
        for _ in range(3):
            offset = self._offset()
            if abs(self._stream_time() - offset - self._clock()) < 1.0:
                break  # (else a stream-time read came out wrapped: read again)
        if n == 0:  # no block yet (the device has not started): sample 0 is now
            return self._clock()
        return float(np.median(self._bases[:n])) - offset

    def _offset(self) -> float:
        """stream time - monotonic time, read between two clock reads close together, so a preemption between
        the reads cannot skew it."""
        best = None
        for _ in range(10):
            before = self._clock()
            now = self._stream_time()
            after = self._clock()
            if best is None or after - before < best[0]:
                best = (after - before, now - (before + after) / 2)
            if after - before < 20e-6:
                break
        return best[1]


class _DeviceStream:
    """The sounddevice OutputStream, and nothing else: open, time, latency, close."""

    def __init__(self, sd, device_index: int, rate: int, channels: int, callback):
        self._sd = sd
        self._stream = sd.OutputStream(device=device_index, samplerate=rate, channels=channels, dtype="float32",
                                       callback=callback)
        self._stream.start()

    @property
    def time(self) -> float:
        return self._stream.time

    @property
    def latency(self) -> float:
        return self._stream.latency

    def close(self) -> None:
        try:
            self._stream.abort()
            self._stream.close()
        except self._sd.PortAudioError as exc:
            log.warning("closing the audio output: %s", exc)


class LiveOutput:
    """A live output stream to an audio device, fed take by take from jobs (see the module docstring)."""

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
        self.scheduler = TakeScheduler(int(ring_seconds * self.rate), self.channels)
        self.sample_clock = SampleClock(self.rate, lambda: self._stream.time, clock)
        self._played = 0  # output samples handed to the device since the stream opened
        self.device_underflows = 0  # callbacks PortAudio flagged as output underflow (the audio system was late)
        self.callback_errors = 0  # callbacks that raised (each played silence instead)
        self._error: str | None = None  # the first callback error, until report_error() hands it out
        self._error_reported = False
        self.dac_latency = 0.0  # seconds from a callback to when its first sample is heard, as PortAudio says
        self._stream: _DeviceStream | None = None

    def open(self) -> "LiveOutput":
        try:
            self._stream = _DeviceStream(self._sd, self.device_index, self.rate, self.channels, self._callback)
        except self._sd.PortAudioError as exc:
            raise UserError(f"cannot open audio output {self.device_name!r}: {exc}", code="bad_args") from None
        if sys.getswitchinterval() > SWITCH_INTERVAL_S:
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        log.info("live output: %s, %d Hz, %d channel(s), latency %.1f ms%s", self.device_name, self.rate,
                 self.channels, self._stream.latency * 1000,
                 "" if self.rate == self.in_rate else f" (resampled from {self.in_rate} Hz)")
        return self

    @property
    def dry_spells(self) -> int:
        """Times a take ran dry because the job fell behind (counted once per dry spell)."""
        return self.scheduler.dry_spells

    @property
    def underruns(self) -> int:
        """Dry spells plus device underflows: what /status reports."""
        return self.scheduler.dry_spells + self.device_underflows

    def report_error(self) -> str | None:
        """The first callback error as one line, once (the server sends it as `/error -1 internal`); else None.
        Called off the audio thread."""
        if self._error is None or self._error_reported:
            return None
        self._error_reported = True
        log.error("live output: the audio callback failed (%d time(s) so far; each played silence): %s",
                  self.callback_errors, self._error)
        return f"live output: the audio callback failed and played silence: {self._error} (see the bridge's log)"

    def close(self) -> None:
        self.scheduler.clear()
        if self._stream is not None:
            self._stream.close()
            self._stream = None
            if self.callback_errors:
                log.warning("live output closed after %d failed callback(s)", self.callback_errors)

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
        if take.start_sample is None:
            self.schedule(take, start_at(self._clock()))
        self.write(take, audio, cancel)

    def schedule(self, take: _Take, when: float) -> None:
        """Start `take` at monotonic time `when` (on the sample that plays then)."""
        self.scheduler.schedule(take, self.sample_clock.sample_at(when))
        log.debug("live output: take starts in %.3f s", when - self._clock())

    def write(self, take: _Take, audio: np.ndarray, cancel: threading.Event | None = None) -> None:
        """Queue [channels, n] audio at the model's rate behind what the take already has; waits while the ring is
        full; raises Cancelled if `cancel` is set."""
        self._write(take, self._convert(take, audio, last=False), cancel)

    def finish(self, take: _Take) -> None:
        """No more audio for this take: running dry at its end is not a dry spell."""
        if take.resampler is not None and take.start_sample is not None:
            self._write(take, self._convert(take, np.zeros((self.in_channels, 0), np.float32), last=True), None)
        take.finished = True

    def stop(self, take: _Take, at: float | None = None) -> None:
        """End the take at monotonic time `at` (None: now), whatever is still queued."""
        if take.start_sample is None:
            take.done = True
            return
        end = 0 if at is None else max(0, self.sample_clock.sample_at(at) - take.start_sample)
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
        pos = 0
        while pos < len(frames):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            if take.done:  # replaced by a newer take
                return
            read = take.read_pos
            if take.write_pos < read:  # the callback already passed these samples (dry spell): drop them
                skip = min(read - take.write_pos, len(frames) - pos)
                pos += skip
                take.write_pos += skip
                continue
            space = take.ring.capacity - (take.write_pos - read)
            if space <= 0:
                time.sleep(0.01)
                continue
            n = min(space, len(frames) - pos)
            take.ring.put(take.write_pos, frames[pos:pos + n])
            take.write_pos += n
            pos += n

    # --- the audio callback (PortAudio's thread): copy or zero-fill, never raise, allocate nothing big ---

    def _callback(self, outdata, frames, time_info, status) -> None:
        first = self._played
        self._played += frames
        try:
            if status.output_underflow:
                self.device_underflows += 1
                self.sample_clock.lost_blocks()
            if time_info.outputBufferDacTime:
                self.dac_latency = time_info.outputBufferDacTime - time_info.currentTime
            self.sample_clock.note_block(first, time_info.outputBufferDacTime or time_info.currentTime)
            self.scheduler.render(outdata, first)
        except Exception as exc:  # an exception would stop the stream for good: count it, play silence
            self.callback_errors += 1
            if self._error is None:
                self._error = f"{type(exc).__name__}: {exc}"
            outdata.fill(0)
