"""Tempo lock: find the beats of a piece of audio and warp it so that every beat falls on the song's grid.

Beats: librosa's dynamic-programming beat tracker (Ellis 2007) on an onset envelope with a 4 ms hop, seeded with
the target tempo so it picks that metrical level, then each beat is moved to the onset peak nearest to it (the
tracker's beats are regular; a human drummer's are not). librosa rather than a neural tracker: madmom's last
release (2018) does not build against numpy 2, and beat_this and BeatNet fetch their weights or need madmom;
on the drum loops of tests/test_tempo_lock.py librosa plus peak snapping puts every beat within a few ms.

Warp: piecewise, one segment per inter-beat interval, each stretched by Rubber Band (its R3 engine, through
`pedalboard.time_stretch`, which ships the library in its wheel: no system package) to exactly the grid's length
for it. Segments are cut PRE_BEAT_S before each beat and joined with a short crossfade that ends before the
attack, so transients are never blended. A segment that needs more than MAX_STRETCH (8 %) means the audio is not
near the tempo (or the tracker got lost); then, as with silence or no clear beat, the audio is left as it is and
the result says why.

The grid: beat k of the output is at Tempo.beats_to_samples(k) (engine/bars.py's exact arithmetic); the first
beat found is put on the grid beat nearest to it, i.e. the audio is taken to start on the grid (as results of
/generate and loops exported from Live do).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from fractions import Fraction

import librosa
import numpy as np

from engine.bars import Tempo

log = logging.getLogger(__name__)

MAX_STRETCH = 0.08  # at most +-8 % longer or shorter, per segment
PRE_BEAT_S = 0.015  # segments are cut this far before a beat, in the quiet just before its attack
CROSSFADE_S = 0.008  # between segments; ends PRE_BEAT_S - CROSSFADE_S / 2 before the attack
MARGIN_S = 0.1  # extra input each Rubber Band call gets either side, so its edge effects fall outside the segment
ENVELOPE_HOP_S = 0.004
SNAP_S = 0.05  # a tracked beat moves to the strongest onset within this distance
SILENT_PEAK = 1e-4  # -80 dBFS
MIN_BEATS = 4
MIN_CLARITY = 10.0  # median onset strength at the beats over the envelope's median (drum loops: 80; noise 1.3; a pad 4)


@dataclass(frozen=True)
class BeatTrack:
    """The beats found in some audio: sample positions, the tempo they imply, and how clear they were."""

    beats: np.ndarray  # float sample positions, increasing
    bpm: float
    clarity: float  # median onset strength at the beats / median onset strength; 0 when there are none

    @property
    def interval(self) -> float:
        """Median samples between beats."""
        return float(np.median(np.diff(self.beats))) if len(self.beats) > 1 else 0.0


def _mono(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    return audio.mean(axis=0) if audio.ndim == 2 else audio


def track_beats(audio: np.ndarray, sample_rate: int, bpm_hint: float | None = None) -> BeatTrack:
    """Beats of `audio` ([channels, n] or [n]) as sample positions, snapped to the onsets."""
    x = _mono(audio)
    if x.size == 0 or float(np.abs(x).max()) < SILENT_PEAK:
        return BeatTrack(np.zeros(0), 0.0, 0.0)
    hop = max(32, round(sample_rate * ENVELOPE_HOP_S))
    pad = 4 * hop + 2048  # leading zeros: an onset at sample 0 is then seen like any other
    env = librosa.onset.onset_strength(y=np.concatenate([np.zeros(pad, np.float32), x]), sr=sample_rate,
                                       hop_length=hop)
    # The tempo from a coarser envelope (the tempogram on the 4 ms one costs ~10x more), the beats on the fine one.
    coarse = 4
    env_coarse = env[: env.size // coarse * coarse].reshape(-1, coarse).max(axis=1)
    tempo = librosa.feature.tempo(onset_envelope=env_coarse, sr=sample_rate, hop_length=hop * coarse,
                                  start_bpm=bpm_hint or 120.0)[0]
    _, frames = librosa.beat.beat_track(onset_envelope=env, sr=sample_rate, hop_length=hop, bpm=tempo,
                                        tightness=100, trim=False)
    if len(frames) < 2:
        return BeatTrack(np.zeros(0), 0.0, 0.0)
    reach = max(1, round(SNAP_S * sample_rate / hop))
    snapped = []
    for f in frames:
        lo, hi = max(0, f - reach), min(env.size, f + reach + 1)
        snapped.append(lo + int(np.argmax(env[lo:hi])))
    snapped = np.unique(np.array(snapped))
    strength = env[snapped]
    typical = float(np.median(strength))
    keep = strength >= 0.25 * typical  # beats the tracker carried through silence (the padding, a break)
    snapped = snapped[keep]
    positions = snapped * hop - pad
    positions = positions[positions >= -hop].clip(0).astype(float)
    floor = float(np.median(env)) + 1e-3 * float(env.max()) + 1e-9
    clarity = float(np.median(env[snapped])) / floor if len(snapped) else 0.0
    if len(positions) < 2:
        return BeatTrack(positions, 0.0, clarity)
    bpm = 60.0 * sample_rate / float(np.median(np.diff(positions)))
    return BeatTrack(positions, bpm, clarity)


@dataclass(frozen=True)
class Segment:
    """Input [in_start, in_end) (float samples; may reach outside the audio: silence there) is rendered to
    output [out_start, out_end)."""

    in_start: float
    in_end: float
    out_start: int
    out_end: int

    @property
    def ratio(self) -> float:
        """Output length over input length (> 1: stretched, slower)."""
        return (self.out_end - self.out_start) / (self.in_end - self.in_start)


def _stretch(audio: np.ndarray, sample_rate: int, ratio: float) -> np.ndarray:
    import pedalboard  # imported here: the bridge starts without it

    return pedalboard.time_stretch(np.ascontiguousarray(audio, dtype=np.float32), float(sample_rate),
                                   stretch_factor=1.0 / ratio, high_quality=True)


def _slice(audio: np.ndarray, start: int, end: int) -> np.ndarray:
    """audio[:, start:end], zeros where that reaches outside it."""
    n = audio.shape[1]
    out = np.zeros((audio.shape[0], end - start), np.float32)
    lo, hi = max(start, 0), min(end, n)
    if hi > lo:
        out[:, lo - start: hi - start] = audio[:, lo:hi]
    return out


def _merge_untouched(segments: list[Segment]) -> list[Segment]:
    """Neighbouring unstretched segments of contiguous input as one: their samples are then copied exactly (two
    crossfade ramps summing to one are exact only up to float rounding)."""
    merged: list[Segment] = []
    for seg in sorted(segments, key=lambda s: s.out_start):
        prev = merged[-1] if merged else None
        if (prev is not None and abs(prev.ratio - 1) < 1e-9 and abs(seg.ratio - 1) < 1e-9
                and prev.out_end == seg.out_start and prev.in_end == seg.in_start):
            merged[-1] = Segment(prev.in_start, seg.in_end, prev.out_start, seg.out_end)
        else:
            merged.append(seg)
    return merged


def render(audio: np.ndarray, sample_rate: int, segments: list[Segment], out_start: int, out_end: int) -> np.ndarray:
    """Output samples [out_start, out_end) of the warp the segments describe ([channels, out_end - out_start]).

    Each segment is stretched on its own (with MARGIN_S of input either side) and faded in and out over
    CROSSFADE_S around its ends; the fades are complementary (they sum to one), which is right for the
    neighbouring pieces of one recording. Output outside every segment is silence."""
    segments = _merge_untouched(segments)
    channels = audio.shape[0]
    out = np.zeros((channels, out_end - out_start), np.float32)
    xf = max(2, round(CROSSFADE_S * sample_rate))
    margin = round(MARGIN_S * sample_rate)
    starts, ends = {s.out_start for s in segments}, {s.out_end for s in segments}
    for seg in segments:
        lo_out, hi_out = max(seg.out_start - xf // 2, out_start), min(seg.out_end + xf - xf // 2, out_end)
        if hi_out <= lo_out:
            continue
        ratio = seg.ratio
        if abs(ratio - 1.0) < 1e-9:  # untouched: the samples themselves
            shift = seg.in_start - seg.out_start
            first = int(np.floor(lo_out + shift))
            piece = _slice(audio, first, first + hi_out - lo_out)
        else:
            in_lo = int(np.floor(seg.in_start)) - margin
            in_hi = int(np.ceil(seg.in_end)) + margin
            y = _stretch(_slice(audio, in_lo, in_hi), sample_rate, ratio)
            # Output sample t of this segment reads y at (t - out_start) + (in_start - in_lo) * ratio.
            first = round(lo_out - seg.out_start + (seg.in_start - in_lo) * ratio)
            piece = np.zeros((channels, hi_out - lo_out), np.float32)
            avail = y[:, max(first, 0): first + hi_out - lo_out]
            piece[:, max(0, -first): max(0, -first) + avail.shape[1]] = avail
        t = np.arange(lo_out, hi_out) + 0.5
        # Linear ramps centred on each end that meets another segment: rising from seg.out_start - xf/2 to
        # seg.out_start + xf/2, falling mirror-wise at the other end; a free end is cut, not faded.
        w = np.ones(t.size)
        if seg.out_start in ends:
            w *= np.clip((t - (seg.out_start - xf / 2)) / xf, 0, 1)
        else:
            w *= t >= seg.out_start
        if seg.out_end in starts:
            w *= np.clip(((seg.out_end + xf / 2) - t) / xf, 0, 1)
        else:
            w *= t < seg.out_end
        out[:, lo_out - out_start: hi_out - out_start] += piece * w.astype(np.float32)
    return out


@dataclass(frozen=True)
class LockResult:
    """What `TempoLock.lock` did: `audio` is the locked audio, or the input unchanged when `locked` is False;
    `message` says what was done or why not, in words for a person."""

    audio: np.ndarray
    locked: bool
    message: str
    beats: int = 0
    stretch: tuple[float, float] = field(default=(0.0, 0.0))  # the smallest and largest segment stretch, -0.03 = 3 % shorter


class NotLockable(Exception):
    """Why some audio cannot be locked (silence, no clear beat, a stretch past the limit)."""


class TempoLock:
    """Locks whole pieces of audio (a /generate result, a file) onto the grid of `tempo`."""

    def __init__(self, tempo: Tempo, sample_rate: int, *, max_stretch: float = MAX_STRETCH):
        self.tempo = tempo
        self.sample_rate = sample_rate
        self.max_stretch = max_stretch

    def grid(self, beat: int) -> int:
        """Output sample of grid beat `beat`."""
        return self.tempo.beats_to_samples(beat, self.sample_rate)

    def lock(self, audio: np.ndarray, bars: int | Fraction | None = None) -> LockResult:
        """Warp `audio` [channels, n] so its beats fall on the grid, `bars` bars long exactly (default: the whole
        bars the locked audio fills). When it cannot be locked the audio comes back unchanged (trimmed or padded
        to `bars` only if its length was already within a beat of it), with the reason."""
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim == 1:
            audio = audio[None, :]
        try:
            segments, track, out_len = self.plan(audio, bars)
        except NotLockable as why:
            log.info("tempo lock: %s", why)
            return LockResult(audio, False, f"{why}; the audio is left as it is")
        locked = render(audio, self.sample_rate, segments, 0, out_len)
        inner = [s.ratio - 1 for s in segments[1:-1] if s.out_start >= 0] or [0.0]
        message = (f"locked {len(track.beats)} beats at {track.bpm:.1f} bpm onto the grid at "
                   f"{float(self.tempo.bpm):g} bpm (stretch {100 * min(inner):+.1f} % to {100 * max(inner):+.1f} %)")
        log.info("tempo lock: %s", message)
        return LockResult(locked, True, message, len(track.beats), (min(inner), max(inner)))

    def plan(self, audio: np.ndarray, bars: int | Fraction | None = None) -> tuple[list[Segment], BeatTrack, int]:
        """The segments that put the beats of `audio` on the grid, the beats, and the output length.
        Raises NotLockable with the reason."""
        sr, n = self.sample_rate, audio.shape[1]
        if n == 0 or float(np.abs(audio).max()) < SILENT_PEAK:
            raise NotLockable("the audio is silent: there is no beat to lock")
        track = track_beats(audio, sr, bpm_hint=float(self.tempo.bpm))
        if len(track.beats) < MIN_BEATS or track.clarity < MIN_CLARITY:
            raise NotLockable(f"no clear beat was found ({len(track.beats)} beats, clarity {track.clarity:.1f}, "
                              f"need {MIN_BEATS} and {MIN_CLARITY:g}): ambient or beatless audio is not locked")
        beats = track.beats
        grid_interval = float(self.tempo.samples_per_beat(sr))
        first = round(beats[0] / track.interval)  # the grid beat of the first beat found
        grid = np.array([self.grid(first + j) for j in range(len(beats))], dtype=float)
        ratios = np.diff(grid) / np.diff(beats)
        if bars is None:
            end = grid[-1] + (n - beats[-1]) * float(np.median(ratios))
            bars = max(1, round(end / float(self.tempo.samples_per_bar(sr))))
        out_len = self.tempo.bars_to_samples(bars, sr)
        used = max(1, int(np.searchsorted(grid, out_len)))  # segments that start inside the output
        worst = int(np.argmax(np.abs(ratios[:used] - 1)))
        if abs(ratios[worst] - 1) > self.max_stretch:
            raise NotLockable(
                f"the beat at {beats[worst + 1] / sr:.2f} s would need a stretch of {100 * (ratios[worst] - 1):+.1f} % "
                f"(the audio is at about {track.bpm:.1f} bpm, the grid at {float(self.tempo.bpm):g}); at most "
                f"{100 * self.max_stretch:g} % is allowed")
        pre = PRE_BEAT_S * sr
        cuts_in, cuts_out = beats - pre, grid - pre
        typical = float(np.clip(grid_interval / track.interval, 1 - self.max_stretch, 1 + self.max_stretch))
        segments = []
        # Before the first beat: map the input's start onto the output's if that stretch is allowed, else keep the
        # typical ratio anchored at the first beat (a few ms of the input are then dropped, or of silence added).
        head = cuts_out[0] / cuts_in[0] if cuts_in[0] > 0 and cuts_out[0] > 0 else 0.0
        head = head if abs(head - 1) <= self.max_stretch else typical
        if cuts_out[0] > 0:
            segments.append(Segment(cuts_in[0] - cuts_out[0] / head, cuts_in[0], 0, round(cuts_out[0])))
        for j in range(len(beats) - 1):
            if cuts_out[j] >= out_len:
                break
            segments.append(Segment(cuts_in[j], cuts_in[j + 1], round(cuts_out[j]), round(cuts_out[j + 1])))
        if cuts_out[-1] < out_len:  # after the last beat: the typical ratio to the end of the output
            last_in, last_out = cuts_in[-1], round(cuts_out[-1])
            segments.append(Segment(last_in, last_in + (out_len - last_out) / typical, last_out, out_len))
        # Segments starting before sample 0 of the output (a first beat found at a negative grid position) are
        # clipped by render(); keep only those that reach into the output.
        segments = [s for s in segments if s.out_end > 0 and s.out_start < out_len]
        return segments, track, out_len


MAX_BARS = 1000


def lock_file(in_path: str, out_path: str, bpm: str, time_signature: str = "4/4",
              bars: str | None = None) -> LockResult:
    """`musicgen-bridge lock`: lock a file onto the grid and write the result (or the audio unchanged, when it
    cannot be locked) to `out_path`, atomically, at the input's rate and channels. Raises UserError for bad
    arguments or an unreadable file."""
    import soundfile as sf

    from engine.bars import exact, parse_time_signature
    from engine.errors import UserError

    from .audio_io import load_audio, write_wav_atomic

    if not str(out_path).lower().endswith(".wav"):
        raise UserError(f"--out {out_path} should end in .wav", code="bad_args")
    tempo = Tempo(bpm, *parse_time_signature(time_signature))
    n_bars = None
    if bars is not None:
        n_bars = exact(bars, "--bars")
        if not 0 < n_bars <= MAX_BARS:
            raise UserError(f"--bars must be more than 0 and at most {MAX_BARS}, got {bars}", code="bad_args")
    audio, sr = load_audio(in_path, allow_silence=True)
    result = TempoLock(tempo, sr).lock(audio, n_bars)
    # 16-bit in, 16-bit out; anything finer (24-bit, float) is kept as 32-bit float.
    write_wav_atomic(out_path, result.audio, sr, float32=sf.info(str(in_path)).subtype != "PCM_16")
    return result


HISTORY_S = 8.0  # the beat is tracked over this much of a stream's past (one chunk alone is too short)
SPLICE_BEATS = 0.6  # a stream whose read head drifts this far (in beats) from the grid drops or repeats a beat


class ChunkLock:
    """Locks a stream of chunks (a jam) onto the grid of `tempo`, each chunk exactly as long as it came in.

    Chunks come out one chunk late: chunk k is warped once chunk k+1 has arrived, because its last beat's
    place is only known from what follows it (and Rubber Band needs input past the segment's end). Beats are
    tracked over the last HISTORY_S of the stream, segments are committed as the output reaches them and never
    change afterwards, so the stream is continuous across chunks.

    A stream whose tempo is not the grid's drifts against it; the warp absorbs that up to MAX_STRETCH per beat,
    and whenever the input runs SPLICE_BEATS ahead of or behind the output, one beat is dropped or repeated (cut
    just before its attack, like the segments), which keeps every beat on the grid and the latency bounded.
    Stretches of no clear beat pass through unchanged. The output stream starts on grid beat 0.

    `push(chunk)` returns the previous chunk, locked (None for the first); `flush()` returns the last one.
    """

    def __init__(self, tempo: Tempo, sample_rate: int, *, max_stretch: float = MAX_STRETCH,
                 history_seconds: float = HISTORY_S):
        self.tempo = tempo
        self.sample_rate = sample_rate
        self.max_stretch = max_stretch
        self.history = round(history_seconds * sample_rate)
        self.message = "waiting for the next chunk"
        self.locked = False  # whether the last chunk returned was locked (some beat placed on the grid)
        self.splices = 0
        self._buffer: np.ndarray | None = None  # input kept, [channels, m], starting at absolute sample _in0
        self._in0 = 0
        self._pending: list[int] = []  # lengths of the chunks not yet returned
        self._out = 0  # output samples returned so far
        self._segments: list[Segment] = []  # committed, absolute positions
        self._head: tuple[float, int] | None = None  # (input, output) where the last committed segment ends
        self._beat = 0  # the grid beat at the head
        self._track: BeatTrack | None = None
        self._pre = PRE_BEAT_S * sample_rate
        self._grid_interval = float(tempo.samples_per_beat(sample_rate))

    @property
    def arrived(self) -> int:
        return self._in0 + (self._buffer.shape[1] if self._buffer is not None else 0)

    def grid(self, beat: int) -> int:
        return self.tempo.beats_to_samples(beat, self.sample_rate)

    def push(self, audio: np.ndarray) -> np.ndarray | None:
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim == 1:
            audio = audio[None, :]
        self._buffer = audio.copy() if self._buffer is None else np.concatenate([self._buffer, audio], axis=1)
        self._pending.append(audio.shape[1])
        if len(self._pending) < 2:
            return None
        return self._emit()

    def flush(self) -> np.ndarray | None:
        """The last chunk pushed, locked as far as the input allows; None when there is none."""
        return self._emit() if self._pending else None

    # --- internals ---

    def _emit(self) -> np.ndarray:
        length = self._pending.pop(0)
        start, end = self._out, self._out + length
        self._track = self._track_history()
        xf = max(2, round(CROSSFADE_S * self.sample_rate))
        while self._head is None or self._head[1] < end + xf:
            if not self._extend():
                # The input does not reach the next beat (only at the stream's end, or with chunks shorter than
                # a beat): the rest of this chunk from the rest of the input.
                self._segments.append(self._closing_segment(end + xf, end))
                break
        segments = [Segment(s.in_start - self._in0, s.in_end - self._in0, s.out_start, s.out_end)
                    for s in self._segments if s.out_end + xf > start and s.out_start - xf < end]
        out = render(self._buffer, self.sample_rate, segments, start, end)
        self.locked = any(abs(s.ratio - 1) > 1e-9 for s in segments)
        self._out = end
        self._forget(start)
        return out

    def _track_history(self) -> BeatTrack | None:
        track = track_beats(self._buffer, self.sample_rate, bpm_hint=float(self.tempo.bpm))
        if len(track.beats) < MIN_BEATS or track.clarity < MIN_CLARITY:
            self.message = (f"no clear beat in the last {self._buffer.shape[1] / self.sample_rate:.1f} s (clarity "
                            f"{track.clarity:.1f}): chunks pass unchanged")
            return None
        ratio = self._grid_interval / track.interval
        if abs(ratio - 1) > self.max_stretch:
            self.message = (f"the stream is at about {track.bpm:.1f} bpm, more than {100 * self.max_stretch:g} % "
                            f"from the grid's {float(self.tempo.bpm):g}: chunks pass unchanged")
            return None
        self.message = f"locked: the stream is at about {track.bpm:.1f} bpm"
        return BeatTrack(track.beats + self._in0, track.bpm, track.clarity)

    def _extend(self) -> bool:
        """Commit the segment up to the next grid beat; False when the input does not reach far enough."""
        track, pre = self._track, self._pre
        margin = MARGIN_S * self.sample_rate
        if self._head is None:
            first = 0.0
            if track is not None:  # the stream's first beat, if there is one right at its start, goes on beat 0
                near = track.beats[np.abs(track.beats).argmin()]
                first = near if abs(near) <= SNAP_S * self.sample_rate else 0.0
            self._head = (first - pre, -round(pre)) if first else (0.0, 0)
        head_in, head_out = self._head
        while self.grid(self._beat + 1) - round(pre) <= head_out:  # after a closing segment: the next beat ahead
            self._beat += 1
        target = self.grid(self._beat + 1) - round(pre)
        passthrough = track is None
        if not passthrough:
            typical = float(np.clip(self._grid_interval / track.interval, 1 - self.max_stretch, 1 + self.max_stretch))
            expected = head_in + (target - head_out) / typical
            cuts = track.beats - pre
            nearest = cuts[np.abs(cuts - expected).argmin()]
            known = nearest + pre + margin <= self.arrived  # a beat right at the end of the input may still move
            end_in = nearest if known and abs(nearest - expected) <= 0.25 * track.interval else expected
            seg = Segment(head_in, end_in, head_out, target)
            if abs(seg.ratio - 1) > self.max_stretch:  # as near the beat as the limit allows; the next one catches up
                ratio = float(np.clip(seg.ratio, 1 - self.max_stretch, 1 + self.max_stretch))
                seg = Segment(head_in, head_in + (target - head_out) / ratio, head_out, target)
        else:
            seg = Segment(head_in, head_in + (target - head_out), head_out, target)
        if seg.in_end > self.arrived:
            return False
        self._segments.append(seg)
        self._beat += 1
        self._head = (seg.in_end, seg.out_end)
        if not passthrough:
            self._splice_if_drifted(track)
        return True

    def _splice_if_drifted(self, track: BeatTrack) -> None:
        head_in, head_out = self._head
        drift = head_in - head_out  # > 0: the input is read ahead of where it arrived (the music is slower)
        if abs(drift) <= SPLICE_BEATS * track.interval:
            return
        step = -track.interval if drift > 0 else track.interval
        cuts = track.beats - self._pre
        wanted = head_in + step
        nearest = cuts[np.abs(cuts - wanted).argmin()]
        jump_to = nearest if abs(nearest - wanted) <= 0.25 * track.interval else wanted
        self._head = (jump_to, head_out)
        self.splices += 1
        log.info("tempo lock: the stream drifted %.0f ms from the grid: %s a beat", 1000 * drift / self.sample_rate,
                 "repeating" if drift > 0 else "dropping")

    def _closing_segment(self, out_end: int, needed: int) -> Segment:
        """The stream's end: output up to `out_end` from the rest of the input, at the stream's rate, or
        stretched (within the limit) so the output up to `needed` does not read past the input."""
        head_in, head_out = self._head
        track = self._track
        ratio = 1.0 if track is None else self._grid_interval / track.interval
        # Stretch a little more rather than read past the input (silence), within the limit.
        fits = (needed - head_out) / max(1.0, self.arrived - head_in)
        ratio = float(np.clip(max(ratio, fits), 1 - self.max_stretch, 1 + self.max_stretch))
        if abs(ratio - 1) < 1e-9:
            ratio = 1.0
        seg = Segment(head_in, head_in + (out_end - head_out) / ratio, head_out, out_end)
        self._head = (seg.in_end, seg.out_end)
        return seg

    def _forget(self, emitted: int) -> None:
        """Drop segments and input no longer needed."""
        xf = max(2, round(CROSSFADE_S * self.sample_rate))
        self._segments = [s for s in self._segments if s.out_end + xf > emitted]
        needed = min([s.in_start for s in self._segments] + [self._head[0] if self._head else self.arrived])
        keep_from = int(min(needed - MARGIN_S * self.sample_rate - 2 * self._grid_interval, self.arrived - self.history))
        cut = keep_from - self._in0
        if cut > 0:
            self._buffer = self._buffer[:, cut:]
            self._in0 += cut


def warm_up() -> None:
    """Pay librosa's one-time costs (importing librosa.beat compiles its gufuncs with numba: seconds, holding the
    GIL) before the first result needs it. Never raises: a failure here shows again, with its reason, when a
    result is locked."""
    t = np.arange(2 * 16000) / 16000
    clicks = (np.sin(2 * np.pi * 100 * t) * np.exp(-(t % 0.5) / 0.03)).astype(np.float32)
    try:
        track_beats(clicks, 16000, 120.0)
    except Exception as exc:  # noqa: BLE001 - a warm-up only
        log.warning("tempo lock warm-up failed: %s: %s", type(exc).__name__, exc)
