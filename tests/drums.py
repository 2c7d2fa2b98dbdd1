"""Synthetic drum loops played by a slightly sloppy drummer: the test material for tempo lock.

One hit per beat (kick on odd beats, snare on even ones), so "one detected onset per beat" is well defined. The
drummer's tempo drifts slowly (linearly from `bpm` to `bpm * (1 + drift)`) and each hit is off by a random
human timing error. Used by tests/test_tempo_lock.py and benchmarks/tempo_lock.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SR = 32000


def _fade(hit: np.ndarray) -> np.ndarray:
    """A hit ends smoothly (a cut-off tail would be an onset of its own)."""
    return (hit * np.cos(np.linspace(0, np.pi / 2, hit.size)) ** 2).astype(np.float32)


def _kick(sr: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.25 * sr)) / sr
    freq = 45 + 90 * np.exp(-t / 0.03)  # the pitch sweep of a synthesized kick
    phase = 2 * np.pi * np.cumsum(freq) / sr
    click = rng.standard_normal(t.size) * np.exp(-t / 0.002) * 0.3
    return _fade((np.sin(phase) * np.exp(-t / 0.12) + click))


def _snare(sr: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.2 * sr)) / sr
    noise = rng.standard_normal(t.size) * np.exp(-t / 0.06)
    tone = np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.05)
    return _fade(0.5 * noise + 0.6 * tone)


@dataclass
class DrumLoop:
    audio: np.ndarray  # [1, samples] float32
    hits: np.ndarray  # the sample at which each hit starts (one per beat)
    sample_rate: int


def beat_times(beats: int, bpm: float, drift: float) -> np.ndarray:
    """Seconds of each beat for a tempo going linearly from bpm to bpm * (1 + drift) over the loop."""
    tempos = bpm * (1 + drift * np.arange(beats) / max(1, beats - 1))
    return np.concatenate([[0.0], np.cumsum(60.0 / tempos[:-1])])


def drum_loop(beats: int = 32, bpm: float = 95.0, *, drift: float = 0.02, jitter_ms: float = 8.0,
              seed: int = 0, lead_ms: float = 0.0, sr: int = SR, pad_beats: float = 1.0) -> DrumLoop:
    """`beats` hits, human timing (normal, `jitter_ms` sd, clipped at 2.5 sd), tempo drifting by `drift`.

    The first hit is at `lead_ms`; the audio runs `pad_beats` beats past the last hit (so the last beat has its
    full length)."""
    rng = np.random.default_rng(seed)
    times = beat_times(beats, bpm, drift) + lead_ms / 1000
    times += np.clip(rng.standard_normal(beats), -2.5, 2.5) * jitter_ms / 1000
    times[0] = max(times[0], 0.0)
    n = int((times[-1] + pad_beats * 60 / bpm) * sr)
    audio = np.zeros(n, np.float32)
    hits = np.round(times * sr).astype(int)
    for i, at in enumerate(hits):
        hit = (_kick if i % 2 == 0 else _snare)(sr, rng) * rng.uniform(0.6, 0.9)
        end = min(n, at + hit.size)
        audio[at:end] += hit[: end - at]
    # A quiet noise floor, as any real recording has.
    audio += rng.standard_normal(n).astype(np.float32) * 1e-3
    return DrumLoop(audio[None, :], hits, sr)


def detect_onsets(audio: np.ndarray, sr: int = SR) -> np.ndarray:
    """Onsets (sample positions) as an independent listener finds them: librosa's onset detector, 4 ms hop, at
    most one per 100 ms. Leading zeros let it see a hit at sample 0."""
    import librosa

    x = audio.mean(axis=0) if audio.ndim == 2 else audio
    pad, hop = 4096, 128
    env = librosa.onset.onset_strength(y=np.concatenate([np.zeros(pad, np.float32), x]), sr=sr, hop_length=hop)
    return librosa.onset.onset_detect(onset_envelope=env, sr=sr, hop_length=hop, units="samples",
                                      wait=round(0.1 * sr / hop)) - pad


def grid_errors(onsets: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each onset, the grid beat nearest to it and the distance (samples)."""
    nearest = np.abs(onsets[:, None] - grid[None, :]).argmin(axis=1)
    return nearest, np.abs(onsets - grid[nearest])
