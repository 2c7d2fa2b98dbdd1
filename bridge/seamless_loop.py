"""Seamless loops: an N-bar result whose end runs into its start without a click or a jump.

The job renders one bar more than asked (`loop_bars`); that extra bar is what the music does right after bar N,
so it is what a loop's start should sound like when it comes round after the end. `make_seamless` fades it into
the head of the loop: at sample 0 the loop plays the extra bar's first sample (the continuation of its own last
sample, so the seam is as smooth as any point inside), and over the crossfade the head's own music takes over.

The crossfade is matched to how alike the two are: equal power for unrelated material (no dip), equal gain for
the same material (a repeating groove, where equal power would swell by 3 dB), and the curve between for
anything in between (gains a, b with a^2 + b^2 + 2ab*r = 1, r the correlation of the two over the fade).
The result is exactly N bars (engine/bars.py's arithmetic), so the device loops it as before.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from engine.bars import Tempo
from engine.errors import UserError

EXTRA_BARS = 1


def loop_bars(bars: int | Fraction) -> int | Fraction:
    """Bars to ask the engine for when the result is to loop: one more, faded into the head."""
    return bars + EXTRA_BARS


def matched_gains(p: np.ndarray, correlation: float) -> tuple[np.ndarray, np.ndarray]:
    """Fade-in and fade-out gains along the shape p (0 -> 1) that keep the sum's power constant for two signals
    of equal power with this correlation (clipped to 0..1)."""
    r = float(np.clip(correlation, 0.0, 1.0))
    norm = np.sqrt(p ** 2 + (1 - p) ** 2 + 2 * p * (1 - p) * r)
    return p / norm, (1 - p) / norm


def make_seamless(audio: np.ndarray, tempo: Tempo, sample_rate: int, bars: int | Fraction,
                  crossfade_beats: int | Fraction | None = None) -> np.ndarray:
    """`audio` [channels, n] holds at least `bars` bars plus the crossfade (rendered with loop_bars(bars));
    returns exactly `bars` bars whose end runs into their start. The crossfade lasts `crossfade_beats` beats
    (default: one bar, all of the extra bar), never more than the loop itself."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None, :]
    n = tempo.bars_to_samples(bars, sample_rate)
    beats = tempo.beats_per_bar if crossfade_beats is None else Fraction(crossfade_beats)
    fade = min(tempo.beats_to_samples(beats, sample_rate), n)
    if audio.shape[1] < n + fade:
        raise UserError(f"a seamless loop of {bars} bars needs {n + fade} samples ({bars} bars and the crossfade), "
                        f"got {audio.shape[1]}: render loop_bars({bars}) bars", code="internal")
    head, extra = audio[:, :fade], audio[:, n:n + fade]
    power = np.sqrt(np.sum(head ** 2) * np.sum(extra ** 2))
    correlation = float(np.sum(head * extra) / power) if power > 0 else 0.0
    p = (np.arange(fade) + 0.5) / fade
    p = np.sin(np.pi / 2 * p) ** 2  # a smooth start and end of the fade (no corner in the gain)
    fade_in, fade_out = matched_gains(p, correlation)
    out = audio[:, :n].copy()
    out[:, :fade] = head * fade_in.astype(np.float32) + extra * fade_out.astype(np.float32)
    return out
