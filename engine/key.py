"""The key of a melody: Krumhansl-Schmuckler key finding over its pitch-class distribution.

The pitch classes' durations (a chromagram summed over frames: the one-hot melody chroma the model reads counts
frames) are correlated with the Krumhansl-Kessler probe-tone profiles of the 24 major and minor keys, and the
best match wins (Krumhansl 1990, "Cognitive Foundations of Musical Pitch"). A melody with fewer than
MIN_PITCH_CLASSES distinct notes, or whose best match is weak, has no key worth stating.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Krumhansl & Kessler (1982) probe-tone ratings, tonic first.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
# Conventional spellings (what a prompt, and MusicGen's training captions, would say).
MAJOR_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MINOR_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")
MIN_PITCH_CLASSES = 3
MIN_CORRELATION = 0.5


@dataclass(frozen=True)
class Key:
    tonic: int  # pitch class, 0 = C
    mode: str  # "major" or "minor"
    correlation: float  # with the key's profile, -1..1

    @property
    def name(self) -> str:
        """E.g. "A minor", "Eb major"."""
        return f"{(MAJOR_NAMES if self.mode == 'major' else MINOR_NAMES)[self.tonic]} {self.mode}"


def key_scores(profile: np.ndarray) -> list[Key]:
    """All 24 keys scored against a pitch-class profile [12] (0 = C), best first."""
    profile = np.asarray(profile, dtype=float)
    keys = []
    for mode, template in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE)):
        for tonic in range(12):
            r = np.corrcoef(profile, np.roll(template, tonic))[0, 1]
            keys.append(Key(tonic, mode, float(np.nan_to_num(r))))
    return sorted(keys, key=lambda k: -k.correlation)


def estimate_key(chroma: np.ndarray) -> Key | None:
    """The key of a chromagram [frames, 12] (or a pitch-class profile [12]); None when it does not say."""
    chroma = np.asarray(chroma, dtype=float)
    profile = chroma.sum(axis=0) if chroma.ndim == 2 else chroma
    if profile.shape != (12,) or np.count_nonzero(profile > 0.02 * profile.max(initial=0)) < MIN_PITCH_CLASSES:
        return None
    best = key_scores(profile)[0]
    return best if best.correlation >= MIN_CORRELATION else None


def key_for_prompt(key: str | None, melody: np.ndarray | None) -> tuple[str | None, str]:
    """The key that fills {key}: the one given (/set key, else the preset's), else the melody's estimate; and
    where it came from, for the log."""
    if key:
        return key, "given"
    if melody is not None:
        found = estimate_key(melody)
        if found is not None:
            return found.name, f"estimated from the melody (correlation {found.correlation:.2f})"
        return None, "the melody does not say (too few notes or no clear key)"
    return None, "none given and no melody"
