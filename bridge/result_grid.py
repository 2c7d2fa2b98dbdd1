"""What the `lock` and `loop` settings do to a finished /generate or /continue result.

The job asks the engine for `bars_to_render(bars, lock, loop)` bars and hands the audio to `put_on_grid`, which
returns exactly `bars` bars: locked onto the grid (bridge/tempo_lock.py) and/or made to loop seamlessly
(bridge/seamless_loop.py). The extra bar feeds the loop's crossfade, and gives tempo lock the music it needs
when the result was played a little slower than the grid (its beats then need more audio than N bars hold).
"""

from __future__ import annotations

import logging
from fractions import Fraction

import numpy as np

from engine.bars import Tempo

from .seamless_loop import EXTRA_BARS, make_seamless
from .tempo_lock import TempoLock

log = logging.getLogger(__name__)


def bars_to_render(bars: int | Fraction, *, lock: bool, loop: bool) -> int | Fraction:
    """Bars to ask the engine for: one more when the result is to be locked or looped."""
    return bars + EXTRA_BARS if lock or loop else bars


def put_on_grid(audio: np.ndarray, tempo: Tempo, sample_rate: int, bars: int | Fraction, *, lock: bool,
                loop: bool) -> tuple[np.ndarray, str]:
    """`audio` rendered with bars_to_render(bars, ...) bars -> exactly `bars` bars, and what was done, in words."""
    notes = []
    keep = bars + EXTRA_BARS if loop else bars  # the loop's crossfade needs the bar after the last
    if lock:
        result = TempoLock(tempo, sample_rate).lock(audio, keep)
        notes.append(result.message if result.locked else f"not locked: {result.message}")
        audio = result.audio
    audio = audio[:, : tempo.bars_to_samples(keep, sample_rate)]
    if loop:
        audio = make_seamless(audio, tempo, sample_rate, bars)
        notes.append("made to loop seamlessly")
    return audio, "; ".join(notes)
