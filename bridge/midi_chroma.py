"""Melody chroma from MIDI: a .mid file, or the note list the Max device sends.

The result is the same one-hot [frames, 12] grid as `engine.chroma.chroma_from_audio` (frame i centered at
i * 4096 / 32000 s), built from what the audio recipe would see if the notes were played as steady sine tones:

- a note contributes to a frame in proportion to the part of the frame's 16384-sample Hann window it covers
  (the integral of the window over the note, so a note at the window's center counts most), times its
  velocity / 127 as amplitude, squared (power, as the STFT measures it);
- that power is spread over the 12 bins exactly as the recipe's filterbank spreads a sine at the note's pitch
  (so very low or very high notes count less, as in the audio path);
- the dominant bin wins. Frames with no note under their window are silence: bin 0 (C), like the recipe.

Timing: a .mid file's tempo map (every tempo change) converts ticks to seconds; `bpm`, if given, replaces the
whole tempo map with one constant tempo (so a clip exported at a default 120 BPM follows the set's tempo).
Drum notes (MIDI channel 10, index 9) are ignored: they carry no melody.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mido
import numpy as np

from engine.chroma import (
    CHROMA_HOP,
    CHROMA_NFFT,
    CHROMA_SR,
    N_CHROMA,
    chroma_filterbank,
    chroma_frames_for_seconds,
    one_hot,
)
from engine.bars import MAX_BPM, MIN_BPM
from engine.errors import BadMidi

log = logging.getLogger(__name__)

DRUM_CHANNEL = 9  # "channel 10" counting from 1
_DEFAULT_TEMPO = 500_000  # µs per beat (120 BPM) until the first set_tempo, per the MIDI spec


@dataclass(frozen=True)
class Note:
    """One note as the Max device sends it: MIDI pitch, start and length in beats, velocity 1-127."""

    pitch: int
    start_beat: float
    duration_beats: float
    velocity: int = 100


@dataclass(frozen=True)
class TimedNote:
    """A note placed in seconds (after the tempo map)."""

    pitch: int
    start_s: float
    end_s: float
    velocity: int = 100


@functools.lru_cache(maxsize=1)
def _pitch_profiles() -> np.ndarray:
    """[128, 12]: the recipe's chroma energy of a steady unit sine at each MIDI pitch (window fully covered)."""
    window = np.hanning(CHROMA_NFFT + 1)[:-1]  # periodic Hann, as the STFT uses
    t = np.arange(CHROMA_NFFT) / CHROMA_SR
    freqs = 440.0 * 2.0 ** ((np.arange(128) - 69) / 12.0)
    spectra = np.abs(np.fft.rfft(np.sin(2 * np.pi * freqs[:, None] * t) * window, axis=1)) ** 2
    profiles = spectra @ chroma_filterbank().T.astype(np.float64)
    return profiles / profiles.max()


def _window_coverage(start_s: float, end_s: float, centers_s: np.ndarray) -> np.ndarray:
    """Fraction (0..1) of each frame's Hann window integral that lies inside [start_s, end_s]."""
    half = CHROMA_NFFT / CHROMA_SR / 2
    a = np.clip(start_s - centers_s, -half, half)
    b = np.clip(end_s - centers_s, -half, half)

    def integral(u: np.ndarray) -> np.ndarray:
        # ∫ (1 + cos(pi u / half)) / 2 du, the Hann window centered on the frame
        return u / 2 + half / (2 * np.pi) * np.sin(np.pi * u / half)

    return (integral(b) - integral(a)) / half


def chroma_from_timed_notes(notes: Sequence[TimedNote], length_s: float | None = None) -> np.ndarray:
    """One-hot [frames, 12] for notes in seconds; the grid covers ``length_s`` (default: up to the last note end)."""
    end = max((n.end_s for n in notes), default=0.0)
    length_s = end if length_s is None else max(float(length_s), end)
    frames = chroma_frames_for_seconds(length_s)
    hop_s = CHROMA_HOP / CHROMA_SR
    half = CHROMA_NFFT / CHROMA_SR / 2
    profiles = _pitch_profiles()
    energy = np.zeros((frames, N_CHROMA))
    for note in notes:
        if note.end_s <= note.start_s:
            continue
        # only frames whose window reaches the note
        first = max(0, math.floor((note.start_s - half) / hop_s))
        last = min(frames - 1, math.ceil((note.end_s + half) / hop_s))
        if first > last:
            continue
        centers = np.arange(first, last + 1) * hop_s
        amplitude = note.velocity / 127.0 * _window_coverage(note.start_s, note.end_s, centers)
        energy[first : last + 1] += (amplitude**2)[:, None] * profiles[note.pitch][None, :]
    # All-zero frames (no notes) → argmax 0 → "C", the recipe's silence.
    return one_hot(energy.argmax(axis=1))


def _check_notes(notes: Sequence[Note]) -> None:
    for i, n in enumerate(notes):
        where = f"note {i} ({n!r})"
        if isinstance(n.pitch, bool) or not isinstance(n.pitch, (int, np.integer)) or not 0 <= n.pitch <= 127:
            raise BadMidi(f"{where}: pitch must be a whole number 0-127")
        if not isinstance(n.velocity, (int, np.integer)) or not 1 <= n.velocity <= 127:
            raise BadMidi(f"{where}: velocity must be a whole number 1-127 (0 means note-off)")
        if not math.isfinite(n.start_beat) or n.start_beat < 0:
            raise BadMidi(f"{where}: start_beat must be a number >= 0")
        if not math.isfinite(n.duration_beats) or n.duration_beats <= 0:
            raise BadMidi(f"{where}: duration_beats must be a number > 0")


def _check_bpm(bpm: float) -> float:
    try:
        bpm = float(bpm)
    except (TypeError, ValueError):
        raise BadMidi(f"tempo must be a number of beats per minute, got {bpm!r}") from None
    if not math.isfinite(bpm) or not MIN_BPM <= bpm <= MAX_BPM:
        raise BadMidi(f"tempo must be between {MIN_BPM} and {MAX_BPM} BPM, got {bpm}")
    return bpm


def chroma_from_notes(notes: Sequence[Note], bpm: float, *, length_beats: float | None = None) -> np.ndarray:
    """One-hot [frames, 12] for a note list at a constant tempo.

    ``length_beats`` is the clip's loop length; give it so a looped melody tiles on the bar, not on its last
    note's end (default: the last note's end).
    """
    if not notes:
        raise BadMidi("the note list is empty; send at least one note")
    _check_notes(notes)
    sec_per_beat = 60.0 / _check_bpm(bpm)
    timed = [
        TimedNote(int(n.pitch), n.start_beat * sec_per_beat, (n.start_beat + n.duration_beats) * sec_per_beat,
                  int(n.velocity))
        for n in notes
    ]
    if length_beats is not None and (not math.isfinite(length_beats) or length_beats <= 0):
        raise BadMidi(f"length_beats must be a number > 0, got {length_beats}")
    length_s = None if length_beats is None else length_beats * sec_per_beat
    return chroma_from_timed_notes(timed, length_s)


class _TempoMap:
    """Ticks → seconds through a piecewise-constant tempo."""

    def __init__(self, changes: list[tuple[int, float]], ticks_per_beat: int):
        changes = sorted(changes, key=lambda c: c[0])
        if not changes or changes[0][0] > 0:
            changes.insert(0, (0, _DEFAULT_TEMPO))
        self._ticks_per_beat = ticks_per_beat
        self._starts: list[int] = []
        self._tempos: list[float] = []
        self._start_seconds: list[float] = []
        seconds = 0.0
        for tick, tempo in changes:
            if self._starts:
                if tick == self._starts[-1]:  # a later change at the same tick wins
                    self._tempos[-1] = tempo
                    continue
                seconds += mido.tick2second(tick - self._starts[-1], ticks_per_beat, self._tempos[-1])
            self._starts.append(tick)
            self._tempos.append(tempo)
            self._start_seconds.append(seconds)

    def seconds(self, tick: int) -> float:
        k = int(np.searchsorted(self._starts, tick, side="right")) - 1
        return self._start_seconds[k] + mido.tick2second(tick - self._starts[k], self._ticks_per_beat, self._tempos[k])


def _read_midi_file(path: str | Path) -> mido.MidiFile:
    path = Path(path)
    if not path.exists():
        raise BadMidi(f"MIDI file not found: {path}")
    if not path.is_file():
        raise BadMidi(f"{path} is not a file; give the path of a .mid file")
    try:
        mid = mido.MidiFile(str(path))
    except Exception as exc:  # mido raises OSError, EOFError, ValueError, KeyError... on bad data
        raise BadMidi(
            f"could not read {path} as a MIDI file ({type(exc).__name__}: {exc}); export it again as a "
            "standard MIDI file (.mid)"
        ) from None
    if not isinstance(mid.ticks_per_beat, int) or mid.ticks_per_beat <= 0 or mid.ticks_per_beat >= 0x8000:
        raise BadMidi(f"{path} uses SMPTE time division, which is not supported; export it with beat-based timing")
    return mid


def _select_tracks(mid: mido.MidiFile, track: int | str | None, path: Path) -> list[int]:
    n = len(mid.tracks)
    listing = ", ".join(f"{i}: {t.name or '(unnamed)'}" for i, t in enumerate(mid.tracks))
    if track is None:
        return list(range(n))
    if isinstance(track, str):
        wanted = track.strip().casefold()
        named = [i for i, t in enumerate(mid.tracks) if t.name.strip().casefold() == wanted]
        if named:
            return named[:1]
        if not wanted.lstrip("-").isdigit():
            raise BadMidi(f"{path} has no track named {track!r}; its tracks are {listing}")
        track = int(wanted)
    if not 0 <= int(track) < n:
        raise BadMidi(f"{path} has no track {track} (it has {n}: {listing})")
    return [int(track)]


def read_midi_notes(
    path: str | Path, *, track: int | str | None = None, bpm: float | None = None
) -> tuple[list[TimedNote], float]:
    """The non-drum notes of a .mid file (all tracks, or one by index or name) in seconds, and the length in s."""
    path = Path(path)
    mid = _read_midi_file(path)
    chosen = _select_tracks(mid, track, path)
    tpb = mid.ticks_per_beat
    if bpm is not None:
        tempo_changes = [(0, 60e6 / _check_bpm(bpm))]
    else:
        # Types 0 and 1 share one tempo map (usually in track 0); type 2 tracks are independent songs.
        sources = chosen if mid.type == 2 else range(len(mid.tracks))
        tempo_changes = []
        for i in sources:
            tick = 0
            for msg in mid.tracks[i]:
                tick += msg.time
                if msg.type == "set_tempo":
                    tempo_changes.append((tick, msg.tempo))
    tempo = _TempoMap(tempo_changes, tpb)

    notes: list[TimedNote] = []
    drum_notes = 0
    end_tick = 0
    for i in chosen:
        tick = 0
        sounding: dict[tuple[int, int], deque[tuple[int, int]]] = defaultdict(deque)
        track_notes: list[tuple[int, int, int, int]] = []  # pitch, start tick, end tick, velocity
        for msg in mid.tracks[i]:
            tick += msg.time
            if msg.type not in ("note_on", "note_off"):
                continue
            if msg.channel == DRUM_CHANNEL:
                if msg.type == "note_on" and msg.velocity > 0:
                    drum_notes += 1
                continue
            key = (msg.channel, msg.note)
            if msg.type == "note_on" and msg.velocity > 0:
                sounding[key].append((tick, msg.velocity))
            elif sounding[key]:  # note_off, or note_on with velocity 0; first on, first off
                start, velocity = sounding[key].popleft()
                track_notes.append((msg.note, start, tick, velocity))
        # Notes never switched off last until the track ends.
        for (_, pitch), starts in sounding.items():
            track_notes.extend((pitch, start, tick, velocity) for start, velocity in starts)
        if track_notes:
            end_tick = max(end_tick, tick)
        notes.extend(
            TimedNote(pitch, tempo.seconds(s), tempo.seconds(e), velocity)
            for pitch, s, e, velocity in track_notes
            if e > s
        )

    if not notes:
        where = f"track {mid.tracks[chosen[0]].name or chosen[0]!r} of {path}" if track is not None else str(path)
        if drum_notes:
            raise BadMidi(f"{where} has only drum notes (MIDI channel 10), which carry no melody; "
                          "give a file or track with melodic notes")
        others = ", ".join(f"{i}: {t.name or '(unnamed)'}" for i, t in enumerate(mid.tracks)
                           if any(m.type == "note_on" for m in t))
        hint = f"; tracks with notes: {others}" if track is not None and others else ""
        raise BadMidi(f"{where} has no notes{hint}")
    notes.sort(key=lambda n: (n.start_s, n.pitch))
    length_s = max(tempo.seconds(end_tick), max(n.end_s for n in notes))
    log.debug("read %d notes, %.2f s, from %s", len(notes), length_s, path)
    return notes, length_s


def chroma_from_midi(path: str | Path, *, track: int | str | None = None, bpm: float | None = None) -> np.ndarray:
    """One-hot [frames, 12] melody chroma of a .mid file; the grid runs to the end of the chosen tracks."""
    notes, length_s = read_midi_notes(path, track=track, bpm=bpm)
    return chroma_from_timed_notes(notes, length_s)
