"""The bridge's view of Live's transport: position extrapolated between messages, bar lines, tempo changes."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from bridge.transport import Transport, bpm_from_osc
from engine.errors import UserError


class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_float32_tempo_is_read_as_the_decimal_typed():
    for typed in ("120", "97.5", "123.456", "174.25", "60.01"):
        assert bpm_from_osc(float(np.float32(typed))) == Fraction(typed)


def test_position_runs_while_playing_and_holds_while_stopped():
    clock = Clock()
    tr = Transport(clock)
    assert not tr.snapshot().known and tr.snapshot().next_bar_time(clock()) is None
    tr.set_transport(True, 120.0, 4, 4, 6.0)
    clock.t += 1.0  # 2 beats later
    s = tr.snapshot()
    assert s.known and s.beats_at(clock()) == pytest.approx(8.0)
    assert s.next_bar_beat(clock()) == 8 and s.next_bar_beat(clock(), strictly_after=True) == 12
    assert s.next_bar_time(clock()) == pytest.approx(clock())  # on the bar line now
    assert s.next_bar_time(clock() + 0.01) == pytest.approx(clock() + 2.0)  # the next one, 4 beats on
    tr.set_transport(False, 120.0, 4, 4, 9.0)
    clock.t += 5
    s = tr.snapshot()
    assert s.beats_at(clock()) == 9.0 and s.next_bar_time(clock()) is None and s.next_bar_beat(clock()) == 12


def test_odd_meters_put_bar_lines_on_quarter_note_multiples():
    clock = Clock()
    tr = Transport(clock)
    tr.set_transport(True, 97.0, 7, 8, 0.5)
    s = tr.snapshot()
    assert s.next_bar_beat(clock()) == Fraction(7, 2)  # 7/8 is 3.5 quarter notes
    assert s.next_bar_time(clock()) == pytest.approx(clock() + 3.0 * 60 / 97)


def test_tempo_change_keeps_the_beats_counted_so_far():
    clock = Clock()
    tr = Transport(clock)
    tr.set_transport(True, 120.0, 4, 4, 0.0)
    clock.t += 1.0  # beat 2 at 120 bpm
    tempo = tr.set_tempo(60.0)
    assert tempo.bpm == 60 and (tempo.numerator, tempo.denominator) == (4, 4)
    clock.t += 1.0  # one more beat at 60 bpm
    assert tr.snapshot().beats_at(clock()) == pytest.approx(3.0)
    assert tr.set_tempo(90.0, 3, 4).beats_per_bar == 3


def test_meters_live_cannot_have_are_refused():
    tr = Transport(Clock())
    with pytest.raises(UserError, match="denominator"):
        tr.set_tempo(120.0, 4, 3)
    with pytest.raises(UserError, match="out of range"):
        tr.set_transport(True, 1000.0, 4, 4, 0.0)
    assert tr.snapshot().tempo.bpm == 120  # unchanged


def test_transport_and_tempo_are_anchored_at_their_arrival():
    clock = Clock(100.0)
    tr = Transport(clock)
    tr.set_transport(True, 120.0, 4, 4, 8.0, at=99.9)  # arrived 0.1 s before it was handled
    assert tr.snapshot().at == 99.9 and tr.snapshot().beats_at(100.0) == pytest.approx(8.2)
    tr.set_tempo(60.0, at=99.95)  # from 99.95 on, a beat per second
    assert tr.snapshot().beats_at(100.0) == pytest.approx(8.1 + 0.05)
    tr.set_transport(True, 120.0, 4, 4, 0.0, at=100.5)  # a stamp ahead of the clock counts as now
    assert tr.snapshot().at == 100.0
