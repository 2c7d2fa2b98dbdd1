"""When a jam's chunks belong in the song: honest about an engine slower than real time, never late.

A chunk is on time when it is handed out at least MARGIN_S before its song beat plays. An engine at real-time
factor r < 1 (seconds of audio made per second of generating) falls behind by (1/r - 1) seconds for every second
of audio, so keeping the next HORIZON_S of audio on time needs a head start of HORIZON_S x (1/r - 1): the first
chunk goes on the first bar line at least that far ahead (and never before the bar the jam was asked for). The first
placement plans with FIRST_RATE_FACTOR of the first chunks' rate: they are made at the shortest context of a
window, while later steps attend to more and each slide of the window re-prefills its kept frames. When a
chunk would be late anyway (the engine slowed down), the jam re-anchors once, on the first bar line that gives the
new rate the same head start, instead of slipping bar by bar. Beats are exact Fractions; times come from the
transport's clock. Pure arithmetic: the `Jam` feeds it the clock, the transport and the measured rate.
"""

from __future__ import annotations

import collections
from fractions import Fraction

from engine.bars import Tempo, format_bpm

from .transport import TransportState

HORIZON_S = 60.0  # how much audio ahead a placement keeps on time at the measured rate
MARGIN_S = 0.1  # a chunk is handed out at least this long before it plays (the device loads it meanwhile)
FIRST_RATE_FACTOR = 0.85  # a jam's later rate against its first placement's: 0.84-0.92 measured (benchmarks/RESULTS.md)
AHEAD_MIN_S = 4.0  # a jam runs at most this far (or two chunks) ahead of the song, unless its head start needs more


def head_start(rate: float, horizon_s: float = HORIZON_S) -> float:
    """Seconds of lead an engine at real-time factor `rate` needs to keep `horizon_s` of audio on time (0 at or
    above real time, and while the rate is unknown: 0)."""
    if rate <= 0 or rate >= 1:
        return 0.0
    return horizon_s * (1.0 / rate - 1.0)


class Pacer:
    """Placement of a jam's chunks on the song (see the module docstring); remembers the lead it planned."""

    def __init__(self, horizon_s: float = HORIZON_S, margin_s: float = MARGIN_S, ahead_min_s: float = AHEAD_MIN_S,
                 first_rate_factor: float = FIRST_RATE_FACTOR):
        self.horizon_s, self.margin_s, self.ahead_min_s = horizon_s, margin_s, ahead_min_s
        self.first_rate_factor = first_rate_factor
        self.planned_lead = 0.0

    def _on_time_bar(self, state: TransportState, now: float, rate: float) -> Fraction:
        lead = self.margin_s + head_start(rate, self.horizon_s)
        self.planned_lead = lead
        return state.next_bar_beat(now + lead)

    def first(self, earliest: Fraction, state: TransportState, now: float, rate: float) -> Fraction:
        """The song beat of a jam's first chunk, ready at `now`: `earliest` (the bar after /jam/start) or, when
        that would be late at this rate, the first bar line that is not."""
        if not state.playing:
            return earliest  # the song is not moving: nothing can be late yet
        return max(earliest, self._on_time_bar(state, now, rate * self.first_rate_factor))

    def late(self, song_beat: Fraction, state: TransportState, now: float, rate: float) -> Fraction | None:
        """None when a chunk for `song_beat`, ready at `now`, is on time; else the later bar line to move it to."""
        if not state.playing or state.time_of_beat(song_beat) >= now + self.margin_s:
            return None
        return max(self._on_time_bar(state, now, rate), state.tempo.next_bar_beat(song_beat, inclusive=False))

    def ahead_limit(self, chunk_s: float) -> float:
        """How far ahead of the song (seconds) the jam may run before it waits."""
        return max(self.ahead_min_s, 2 * chunk_s, self.planned_lead + chunk_s)

    @staticmethod
    def slow_message(moved: Fraction, tempo: Tempo, rate: float, to_beat: Fraction) -> str:
        bars = moved / tempo.beats_per_bar
        bars_text = f"{float(bars):g} bar{'s' if bars != 1 else ''}"
        return (f"the engine makes audio at {rate:.2f}x real time, too slow to keep up: the jam moved {bars_text} "
                f"({float(moved):g} beats) later, to song beat {float(to_beat):g} at {format_bpm(tempo.bpm)} bpm; "
                "a smaller model or --dtype int4 helps")


class RateMeter:
    """Real-time factor from a stream's decoder steps and the time spent getting them (not time spent waiting)."""

    WINDOW = 8  # chunks in `realtime`
    RECENT = 2  # chunks in `recent`: what a slowdown is judged by

    def __init__(self, frame_rate: float):
        self.frame_rate = frame_rate
        self._last: collections.deque[tuple[int, float]] = collections.deque(maxlen=self.WINDOW)

    def add(self, steps: int, seconds: float) -> None:
        if seconds > 0 and steps > 0:
            self._last.append((steps, seconds))

    def _rate(self, entries) -> float:
        steps = sum(s for s, _ in entries)
        seconds = sum(t for _, t in entries)
        return steps / seconds if seconds > 0 else 0.0

    @property
    def steps_per_s(self) -> float:
        return self._rate(self._last)

    @property
    def realtime(self) -> float:
        return self._rate(self._last) / self.frame_rate

    @property
    def recent(self) -> float:
        return self._rate(list(self._last)[-self.RECENT:]) / self.frame_rate
