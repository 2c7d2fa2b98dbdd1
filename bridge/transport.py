"""What the bridge knows of Live's transport: tempo, meter, playing, and where the song is, in beats.

The device sends `/tempo` on changes and `/transport` on play/stop, on jumps and at most once per bar while
playing. Between messages the song position is extrapolated from the last one on the monotonic clock (the same
clock in every process on the machine), which is enough to find the wall-clock time of the next bar line.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import numpy as np

from engine.bars import Tempo

log = logging.getLogger(__name__)

DEFAULT_TEMPO = Tempo(120, 4, 4)


def bpm_from_osc(value: float) -> Fraction:
    """An OSC float32 tempo as the decimal the user typed: 97.5 stays 97.5 and 123.456 (sent as the float32
    123.45600128...) becomes 123456/1000, so bar lengths come out as Live computes them."""
    return Fraction(str(np.float32(value)))


@dataclass(frozen=True)
class TransportState:
    """One consistent snapshot: `song_beats` was the song position at monotonic time `at`."""

    tempo: Tempo
    playing: bool
    song_beats: float
    at: float
    known: bool  # False until the device sent /transport: the position is a guess (0)

    def beats_at(self, t: float) -> float:
        """Song position at monotonic time `t` (frozen while stopped)."""
        if not self.playing:
            return self.song_beats
        return self.song_beats + (t - self.at) * float(self.tempo.bpm) / 60.0

    def time_of_beat(self, beat: float | Fraction) -> float:
        """Monotonic time at which the song reaches `beat` (meaningful while playing)."""
        return self.at + (float(beat) - self.song_beats) * 60.0 / float(self.tempo.bpm)

    def next_bar_beat(self, t: float, strictly_after: bool = False) -> Fraction:
        """The song beat of the first bar line at (or strictly after) the position at time `t`."""
        beats = self.beats_at(t)
        return self.tempo.next_bar_beat(max(0.0, beats), inclusive=not strictly_after)

    def next_bar_time(self, t: float) -> float | None:
        """Monotonic time of the first bar line at or after time `t`; None while stopped (no bar is coming)."""
        if not self.playing:
            return None
        return self.time_of_beat(self.next_bar_beat(t))


class Transport:
    """Thread-safe transport state, updated from OSC messages."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._state = TransportState(DEFAULT_TEMPO, False, 0.0, clock(), False)

    def snapshot(self) -> TransportState:
        with self._lock:
            return self._state

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    def _when(self, at: float | None) -> float:
        # A message cannot have arrived in the future: a stamp ahead of the clock is clamped to now.
        now = self._clock()
        return now if at is None else min(at, now)

    def set_tempo(self, bpm: float, numerator: int | None = None, denominator: int | None = None, *,
                  at: float | None = None) -> Tempo:
        """`/tempo`: a new tempo (and meter) from time `at` on (its message's arrival; None: now). The position
        is re-anchored there, so the beats counted so far at the old tempo stay where they were. Raises
        UserError for a meter Live cannot have (e.g. x/3)."""
        with self._lock:
            old = self._state
            now = self._when(at)
            tempo = Tempo(bpm_from_osc(bpm), old.tempo.numerator if numerator is None else numerator,
                          old.tempo.denominator if denominator is None else denominator)
            self._state = TransportState(tempo, old.playing, old.beats_at(now), now, old.known)
        log.debug("tempo %s bpm %d/%d", tempo.bpm, tempo.numerator, tempo.denominator)
        return tempo

    def set_transport(self, playing: bool, bpm: float, numerator: int, denominator: int,
                      song_beats: float, *, at: float | None = None) -> TransportState:
        """`/transport`: everything at once, with the song at `song_beats` at time `at` (its message's arrival
        on this transport's clock; None: now)."""
        tempo = Tempo(bpm_from_osc(bpm), numerator, denominator)
        with self._lock:
            self._state = TransportState(tempo, bool(playing), float(song_beats), self._when(at), True)
            state = self._state
        log.debug("transport %s at beat %.3f, %s bpm %d/%d", "playing" if playing else "stopped", song_beats,
                  tempo.bpm, numerator, denominator)
        return state
