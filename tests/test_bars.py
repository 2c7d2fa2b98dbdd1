"""Bar arithmetic: exact lengths, bar starts as a pure function of the bar index, and clear errors."""

import math
from decimal import Decimal
from fractions import Fraction

import pytest

from engine.bars import (
    Tempo,
    format_bpm,
    parse_time_signature,
    tempo_text,
)
from engine.errors import UserError

SR = 32000


def test_three_bars_of_7_8_at_97_bpm():
    tempo = Tempo("97", *parse_time_signature("7/8"))
    assert tempo.beats_per_bar == Fraction(7, 2)
    # Independent route: seconds = bars * quarter notes per bar * 60 / bpm, in Decimal with plenty of digits.
    seconds = Decimal(3) * Decimal(7) * 4 / Decimal(8) * 60 / Decimal(97)
    expected = seconds * SR  # 207835.05...
    n = tempo.bars_to_samples(3, SR)
    assert abs(Decimal(n) - expected) <= Decimal("0.5")
    assert n == int(expected.to_integral_value())
    assert tempo.bar_start_sample(3, SR) == n
    assert tempo.samples_per_bar(SR) * 97 == 7 * 4 * 60 * SR / 8  # exact, no float in sight


def test_123_456_bpm_in_5_4_is_exact():
    for given in ("123.456", 123.456, Fraction(123456, 1000)):
        tempo = Tempo(given, 5, 4)
        assert tempo.bpm == Fraction(123456, 1000)
    tempo = Tempo("123.456", 5, 4)
    per_bar = Decimal(5) * 60 / Decimal("123.456") * SR
    for bars in (1, 2, 7, 64, 1000):
        assert abs(Decimal(tempo.bars_to_samples(bars, SR)) - per_bar * bars) <= Decimal("0.5")
    # Bar lengths alternate between floor and ceil but never drift: sum of bar lengths == position of bar N.
    lengths = [tempo.bar_start_sample(k + 1, SR) - tempo.bar_start_sample(k, SR) for k in range(1000)]
    assert set(lengths) <= {math.floor(per_bar), math.ceil(per_bar)}
    assert sum(lengths) == tempo.bars_to_samples(1000, SR)


def test_n_bars_are_exactly_n_bars_long():
    for bpm, num, den in [("120", 4, 4), ("97", 7, 8), ("174.5", 3, 4), ("60", 6, 8), ("999", 99, 16), ("20", 1, 1)]:
        tempo = Tempo(bpm, num, den)
        for n in range(1, 17):
            samples = tempo.bars_to_samples(n, SR)
            exact_samples = n * Fraction(num * 4, den) * 60 * SR / Fraction(bpm)
            assert abs(samples - exact_samples) <= Fraction(1, 2)
            assert samples == tempo.bar_start_sample(n, SR)
    assert Tempo("120").bars_to_samples(4, 32000) == 4 * 2 * 32000  # 2 s per bar of 4/4 at 120


def test_beats_and_samples_round_trip():
    tempo = Tempo("97", 7, 8)
    assert tempo.beats_to_samples(1, SR) == round(60 / 97 * SR)
    assert tempo.samples_to_beats(tempo.beats_to_samples(97, SR), SR) == 97  # 97 beats = 60 s, an integer
    assert tempo.samples_to_beats(SR * 60, SR) == 97
    assert tempo.beats_to_samples("3.5", SR) == tempo.bars_to_samples(1, SR)


def test_next_bar_beat():
    tempo = Tempo("120", 7, 8)  # bars every 3.5 beats
    assert tempo.next_bar_beat(0) == 0
    assert tempo.next_bar_beat(0.01) == Fraction(7, 2)
    assert tempo.next_bar_beat(3.5) == Fraction(7, 2)
    assert tempo.next_bar_beat(3.5, inclusive=False) == 7
    assert tempo.next_bar_beat(10.4) == Fraction(21, 2)
    assert Tempo(120).next_bar_beat(17.2) == 20


def test_parse_time_signature():
    assert parse_time_signature("7/8") == (7, 8)
    assert parse_time_signature(" 12 / 16 ") == (12, 16)
    assert parse_time_signature("99/16") == (99, 16)
    for bad in ("7/6", "0/4", "100/4", "4/32", "4", "four/4", "4/4/4", ""):
        with pytest.raises(UserError):
            parse_time_signature(bad)


@pytest.mark.parametrize(
    "bpm", [0, -120, "0", "nan", float("nan"), float("inf"), "inf", 1000, "999.001", "1200", "fast", "", True, None,
            0.5, 1, "19.999"]
)
def test_bad_tempo_is_a_user_error(bpm):
    with pytest.raises(UserError, match="bpm|tempo"):
        Tempo(bpm)


@pytest.mark.parametrize("num,den", [(0, 4), (100, 4), (4, 3), (4, 0), (4, 32), (4.0, 4)])
def test_bad_signature_is_a_user_error(num, den):
    with pytest.raises(UserError, match="signature"):
        Tempo(120, num, den)


def test_bad_sample_rate():
    with pytest.raises(UserError):
        Tempo(120).samples_per_bar(0)


def test_tempo_text():
    assert tempo_text("lo-fi keys", Tempo(120)) == "lo-fi keys, 120 bpm"
    assert tempo_text("lo-fi keys", Tempo(120.0)) == "lo-fi keys, 120 bpm"
    assert tempo_text("lo-fi keys,", Tempo("123.456")) == "lo-fi keys, 123.456 bpm"
    assert tempo_text("lo-fi keys", Tempo("97.50")) == "lo-fi keys, 97.5 bpm"
    assert tempo_text("", Tempo(90)) == "90 bpm"
    assert tempo_text("techno at 130 BPM", Tempo(120)) == "techno at 130 BPM"
    assert tempo_text("techno, 130bpm", Tempo(120)) == "techno, 130bpm"
    assert tempo_text("lo-fi keys", Tempo(120), enabled=False) == "lo-fi keys"
    assert format_bpm(Fraction(1, 3)) == "0.333"


@pytest.mark.parametrize("bpm, ok", [(19.99, False), (20, True), (999, True), (999.01, False)])
def test_one_set_of_tempo_limits(bpm, ok):
    # The bar arithmetic (CLI, /transport), the OSC table and the note-list melody path accept the same tempi.
    from bridge import protocol
    from bridge.midi_chroma import Note, chroma_from_notes
    from engine.errors import BadMidi

    outcomes = []
    checks = ((lambda: Tempo(bpm), UserError), (lambda: protocol.validate("/tempo", [bpm]), protocol.ProtocolError),
              (lambda: chroma_from_notes([Note(60, 0, 1)], bpm), BadMidi))
    for check, error in checks:
        try:
            check()
            outcomes.append(True)
        except error:
            outcomes.append(False)
    assert outcomes == [ok, ok, ok]


@pytest.mark.parametrize("num, den, ok", [(99, 16, True), (100, 4, False), (7, 32, False), (1, 1, True)])
def test_one_set_of_signature_limits(num, den, ok):
    # The bar arithmetic and the OSC table take Live's time signatures, no more: 99/16 passes both, 100/4 and 7/32
    # fail both.
    from bridge import protocol

    outcomes = []
    for check, error in ((lambda: Tempo(120, num, den), UserError),
                         (lambda: protocol.validate("/transport", [1, 120.0, num, den, 0.0]), protocol.ProtocolError)):
        try:
            check()
            outcomes.append(True)
        except error:
            outcomes.append(False)
    assert outcomes == [ok, ok]
