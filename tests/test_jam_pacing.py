"""The jam's pacing arithmetic on a fake clock: where the first chunk goes at a given real-time factor, when a
chunk is late and where it moves, and that a placement keeps the next 60 s on time (with a negative control)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from bridge.jam_pacing import FIRST_RATE_FACTOR, Pacer, RateMeter, head_start
from bridge.transport import TransportState
from engine.bars import Tempo

TEMPO = Tempo(120, 4, 4)  # a beat is 0.5 s, a bar 2 s


def playing(at_beat: float = 0.0, at: float = 0.0, tempo: Tempo = TEMPO) -> TransportState:
    return TransportState(tempo, True, at_beat, at, True)


def test_head_start_is_the_lag_over_the_horizon():
    assert head_start(0.5) == pytest.approx(60.0)  # 60 s of audio take 120 s: 60 s behind at the end
    assert head_start(0.8) == pytest.approx(15.0)
    assert head_start(1.0) == head_start(1.7) == 0.0
    assert head_start(0.0) == 0.0  # unknown rate: no head start (the first chunk's own rate decides later)
    assert head_start(0.5, horizon_s=10) == pytest.approx(10.0)


def test_first_chunk_goes_on_the_requested_bar_when_the_engine_keeps_up():
    pacer = Pacer()
    # /jam/start at beat 1 asked for beat 4 (t = 2 s); the first chunk is ready at t = 1.0 s.
    assert pacer.first(Fraction(4), playing(), now=1.0, rate=1.5) == 4
    # Ready at 1.95 s: 0.05 s before beat 4, less than the margin: the next bar line.
    assert pacer.first(Fraction(4), playing(), now=1.95, rate=1.5) == 8


def test_first_chunk_moves_later_by_the_head_start_a_slow_engine_needs():
    pacer = Pacer(first_rate_factor=1.0)
    # Rate 0.5: 60 s of head start plus the 0.1 s margin: at t = 61.1 s the song is at beat 122.2: bar 124.
    assert pacer.first(Fraction(4), playing(), now=1.0, rate=0.5) == 124
    assert pacer.planned_lead == pytest.approx(60.1)
    # Rate 0.8: 15.1 s after t = 1: beat 32.2: bar 36. In 7/8 (3.5 beats a bar): bars at multiples of 7/2.
    assert Pacer(first_rate_factor=1.0).first(Fraction(4), playing(), now=1.0, rate=0.8) == 36
    assert Pacer(first_rate_factor=1.0).first(Fraction(7, 2), playing(tempo=Tempo(120, 7, 8)), now=1.0, rate=0.8) == Fraction(35)


def test_the_first_placement_plans_for_the_slower_steps_of_a_fuller_window():
    """By default the first chunks' rate counts at FIRST_RATE_FACTOR: rate 0.5 plans as 0.5 x the factor, a head
    start of 60 s x (1 / that - 1) + 0.1 s, and the first bar line after it (120 bpm: 2 beats a second). A first
    chunk at 1.0x real time still gets a head start; one at 1 / the factor gets none."""
    assert 0.5 < FIRST_RATE_FACTOR < 1
    pacer = Pacer()
    lead = 0.1 + head_start(0.5 * FIRST_RATE_FACTOR)
    assert pacer.first(Fraction(4), playing(), now=1.0, rate=0.5) == 4 * math.ceil(2 * (1.0 + lead) / 4)
    assert pacer.planned_lead == pytest.approx(lead)
    assert Pacer().first(Fraction(4), playing(), now=1.0, rate=1.0) > 8
    assert Pacer().first(Fraction(4), playing(), now=1.0, rate=1 / FIRST_RATE_FACTOR) == 4  # no head start
    # Stopped transport: nothing plays, nothing can be late.
    assert Pacer().first(Fraction(4), TransportState(TEMPO, False, 0.0, 0.0, True), now=100.0, rate=0.1) == 4


def test_a_late_chunk_moves_once_to_a_bar_line_that_keeps_the_new_rate_on_time():
    pacer = Pacer()
    assert pacer.late(Fraction(8), playing(), now=3.8, rate=0.8) is None  # beat 8 plays at 4.0 s: on time
    moved = pacer.late(Fraction(8), playing(), now=3.95, rate=0.8)  # inside the margin: late
    assert moved == 40  # 3.95 + 0.1 + 15 s = 19.05 s: beat 38.1: bar 40
    assert pacer.late(Fraction(8), playing(), now=3.95, rate=2.0) == 12  # fast again: just the next bar
    assert pacer.late(Fraction(8), TransportState(TEMPO, False, 0.0, 0.0, True), now=99.0, rate=0.5) is None


def simulate(pacer: Pacer, rate: float, seconds: float, chunk_bars: int = 1) -> tuple[Fraction, list[float]]:
    """A jam at a steady real-time factor on a fake clock: (first chunk's song beat, lateness of each chunk
    handed out within `seconds` of audio: positive = seconds before it plays)."""
    state = playing()
    chunk_s = float(TEMPO.seconds_per_bar() * chunk_bars)
    now = 1.0 + chunk_s / rate  # /jam/start at t = 1 s; the first chunk takes chunk_s / rate
    first = pacer.first(Fraction(4), state, now, rate)
    slack, beat = [], first
    while float(beat - first) * 0.5 < seconds:
        slack.append(state.time_of_beat(beat) - now)
        beat += TEMPO.beats_per_bar * chunk_bars
        now += chunk_s / rate  # the next chunk is ready one chunk's generation later
    return first, slack


@pytest.mark.parametrize("rate", [0.3, 0.5, 0.8, 0.95, 1.0, 2.0])
def test_a_placement_keeps_the_next_60_s_on_time(rate):
    first, slack = simulate(Pacer(), rate, 60.0)
    assert min(slack) >= Pacer().margin_s - 1e-9, (rate, min(slack))
    start_delay = (float(first) - 2.0) * 0.5  # seconds after /jam/start (beat 2 at t = 1 s)
    need = head_start(rate * Pacer().first_rate_factor)
    assert start_delay <= 1.0 + 2.0 / rate + need + 2.0 + 0.1 + 1e-9  # no more than a bar beyond need


def test_negative_control_without_the_head_start_a_slow_jam_is_late():
    _, slack = simulate(Pacer(horizon_s=0.0), 0.5, 60.0)
    assert min(slack) < 0  # a placement that ignores the rate would send chunks after their beat


def test_ahead_limit_keeps_the_planned_lead():
    pacer = Pacer(first_rate_factor=1.0)
    assert pacer.ahead_limit(1.0) == 4.0 and pacer.ahead_limit(3.0) == 6.0
    pacer.first(Fraction(4), playing(), now=1.0, rate=0.5)
    assert pacer.ahead_limit(2.0) == pytest.approx(62.1)  # a jam placed 60 s ahead is not held back to 4 s


def test_rate_meter_counts_steps_over_generating_time():
    meter = RateMeter(frame_rate=50)
    assert meter.realtime == 0.0 and meter.recent == 0.0
    for _ in range(4):
        meter.add(100, 1.0)  # 2 s of audio a second
    meter.add(50, 2.0)
    meter.add(50, 2.0)  # then a slowdown to 0.5 x
    assert meter.recent == pytest.approx(0.5)
    assert meter.realtime == pytest.approx(500 / 8.0 / 50)
    assert meter.steps_per_s == pytest.approx(500 / 8.0)
    meter.add(0, 1.0)  # nothing made: ignored
    assert meter.recent == pytest.approx(0.5)


def test_the_live_take_keeps_the_beat_the_pacer_announced(tmp_path):
    """The pacer hands a chunk out MARGIN_S before its beat; the live output's own start margin (longer: a whole
    result crossing to the output process) must not move an announced beat to the next bar line, or the device
    and the live output would play it a bar apart."""
    from bridge.audio_out import START_MARGIN_S, WavNamer
    from bridge.jam_pacing import MARGIN_S
    from bridge.jobs import JobRunner
    from bridge.transport import Transport

    now = [100.0]
    transport = Transport(lambda: now[0])
    transport.set_transport(True, 120.0, 4, 4, 0.0)  # bar lines at t = 100, 102, 104
    runner = JobRunner(lambda *a: None, WavNamer(str(tmp_path)), transport=transport)
    try:
        jam = runner._start_at(Fraction(4))
        assert jam(102.0 - MARGIN_S) == 102.0  # inside START_MARGIN_S, still on the announced beat
        assert jam(102.01) == 104.0  # the beat has passed: the next bar line with room
        result = runner._start_at()  # a /generate result: no beat announced, the full margin
        assert result(102.0 - START_MARGIN_S - 0.01) == 102.0
        assert result(102.0 - START_MARGIN_S + 0.01) == 104.0
    finally:
        runner.shutdown()
    assert MARGIN_S < START_MARGIN_S  # what makes the first assertion the case that matters
