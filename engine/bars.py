"""Exact tempo and bar arithmetic: how many samples a bar, a beat or N bars last, and where bar lines fall.

Everything is kept as `Fraction` and rounded only when a sample index is needed, so bar k starts at the same
sample whatever sizes the audio was cut into (a running float sum of chunk lengths drifts; this does not).

Beats are quarter notes, as in Live's song time: a bar of num/den holds num * 4 / den beats.

Rounding rule (one for the whole module): a fractional sample position rounds half up, i.e. floor(x + 1/2).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Union

from engine.errors import UserError

Number = Union[int, float, str, Fraction]

# Live's tempo range, the one set of tempo limits for the whole project (CLI, OSC protocol, note lists): the
# device can send nothing else, and a tempo above it is a typo (e.g. 1200 for 120.0).
MIN_BPM = Fraction(20)
MAX_BPM = Fraction(999)
# Live's time signatures, likewise the one set for the project: numerators 1-99 over a power of two up to 16.
MAX_NUMERATOR = 99
DENOMINATORS = (1, 2, 4, 8, 16)


def exact(value: Number, what: str = "value") -> Fraction:
    """A number as an exact Fraction. Floats go through their shortest decimal repr, so 123.456 means
    123456/1000 (what the user typed or Live printed), not the nearest binary double."""
    if isinstance(value, bool):
        raise UserError(f"{what} must be a number, got {value!r}")
    if isinstance(value, (Fraction, int)):
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UserError(f"{what} must be a finite number, got {value!r}")
        return Fraction(repr(value))
    if isinstance(value, str):
        try:
            result = Fraction(value.strip())
        except (ValueError, ZeroDivisionError):
            raise UserError(f"{what} must be a decimal number like 120 or 97.5, got {value!r}") from None
        return result
    raise UserError(f"{what} must be a number, got {type(value).__name__} {value!r}")


def round_half_up(x: Fraction) -> int:
    """The module's one rounding rule: floor(x + 1/2). A pure function of x, so equal positions round equally."""
    return math.floor(x + Fraction(1, 2))


def parse_bpm(value: Number) -> Fraction:
    """A tempo in beats per minute from "97", 97.0, "123.456" or a Fraction; rejects non-positive, NaN, inf
    and values outside MIN_BPM..MAX_BPM."""
    try:
        bpm = exact(value, "tempo (bpm)")
    except UserError as e:
        raise UserError(f"{e}; give the song tempo in beats per minute, e.g. 120") from None
    if not MIN_BPM <= bpm <= MAX_BPM:
        raise UserError(
            f"tempo {value!r} bpm is out of range; give a tempo between {MIN_BPM} and {MAX_BPM} bpm"
        )
    return bpm


def _check_signature(numerator: int, denominator: int) -> None:
    for name, part in (("numerator", numerator), ("denominator", denominator)):
        if isinstance(part, bool) or not isinstance(part, int):
            raise UserError(f"time signature {name} must be an integer, got {part!r}")
    if not 1 <= numerator <= MAX_NUMERATOR:
        raise UserError(f"time signature numerator {numerator} is out of range; use 1 to {MAX_NUMERATOR}")
    if denominator not in DENOMINATORS:
        raise UserError(f"time signature denominator {denominator} must be one of "
                        f"{', '.join(map(str, DENOMINATORS))} (as in Live)")


def parse_time_signature(text: str) -> tuple[int, int]:
    """"7/8" -> (7, 8). Spaces around the parts are allowed."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise UserError(f"time signature must look like 4/4 or 7/8, got {text!r}")
    numerator, denominator = int(match.group(1)), int(match.group(2))
    _check_signature(numerator, denominator)
    return numerator, denominator


def _check_sample_rate(sample_rate: int) -> None:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise UserError(f"sample rate must be a positive integer (e.g. 32000), got {sample_rate!r}")


@dataclass(frozen=True)
class Tempo:
    """A tempo and time signature. `bpm` may be given as a string, int, float or Fraction; it is stored as an
    exact Fraction."""

    bpm: Fraction
    numerator: int = 4
    denominator: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "bpm", parse_bpm(self.bpm))
        _check_signature(self.numerator, self.denominator)

    @property
    def beats_per_bar(self) -> Fraction:
        """Quarter notes per bar: 7/8 -> 7/2."""
        return Fraction(self.numerator * 4, self.denominator)

    def samples_per_beat(self, sample_rate: int) -> Fraction:
        _check_sample_rate(sample_rate)
        return 60 * sample_rate / self.bpm

    def samples_per_bar(self, sample_rate: int) -> Fraction:
        return self.samples_per_beat(sample_rate) * self.beats_per_bar

    def bar_start_sample(self, k: int, sample_rate: int) -> int:
        """First sample of bar k (bar 0 starts at sample 0): round_half_up(k * samples_per_bar)."""
        return round_half_up(k * self.samples_per_bar(sample_rate))

    def bars_to_samples(self, bars: Number, sample_rate: int) -> int:
        """Length of `bars` bars in samples. For whole bars this is bar_start_sample(n), so audio cut at those
        samples is exactly n bars and loops without drift."""
        return round_half_up(exact(bars, "bars") * self.samples_per_bar(sample_rate))

    def beats_to_samples(self, beats: Number, sample_rate: int) -> int:
        return round_half_up(exact(beats, "beats") * self.samples_per_beat(sample_rate))

    def samples_to_beats(self, samples: int, sample_rate: int) -> Fraction:
        return Fraction(samples) / self.samples_per_beat(sample_rate)

    def seconds_per_bar(self) -> Fraction:
        return 60 * self.beats_per_bar / self.bpm

    def next_bar_beat(self, song_beats: Number, inclusive: bool = True) -> Fraction:
        """The song beat of the next bar line at or after `song_beats` (strictly after if not inclusive).
        Bar lines are at multiples of beats_per_bar from song beat 0, as in Live with one time signature."""
        beats = exact(song_beats, "song position (beats)")
        bars = beats / self.beats_per_bar
        k = math.ceil(bars) if inclusive else math.floor(bars) + 1
        return k * self.beats_per_bar


_STATES_TEMPO = re.compile(r"(?<![a-z])(bpm|beats per minute)(?![a-z])", re.IGNORECASE)


def format_bpm(bpm: Fraction) -> str:
    """120 -> "120", 123.456 -> "123.456" (at most 3 decimals)."""
    if bpm.denominator == 1:
        return str(bpm.numerator)
    return f"{float(bpm):.3f}".rstrip("0").rstrip(".")


def tempo_text(prompt: str, tempo: Tempo, enabled: bool = True) -> str:
    """The text prompt with the tempo appended ("lo-fi keys" -> "lo-fi keys, 120 bpm"): MusicGen's training
    descriptions often carry a bpm, so stating it nudges generation toward the song tempo. Left alone when
    disabled or when the prompt already states a tempo."""
    if not enabled or _STATES_TEMPO.search(prompt):
        return prompt
    stem = prompt.strip().rstrip(",;").rstrip()
    suffix = f"{format_bpm(tempo.bpm)} bpm"
    return f"{stem}, {suffix}" if stem else suffix
