"""Melody chroma from a hummed or sung recording.

The plain audio recipe reads a voice badly: breath noise and pauses become random or "C" frames, and the
voice's harmonics compete with its fundamental. Instead this tracks the sung pitch with librosa's pYIN
(C2 65 Hz to C6 1047 Hz) and gives each chroma frame the pitch class most of the voiced pYIN frames under its
window agree on (weighted by the same Hann window the recipe's STFT uses, so timing matches the audio path).

Choices, made for how a melody sounds:
- Intonation: the singer's overall tuning offset (e.g. everyone's-a-bit-flat) is estimated from all voiced
  frames and removed before rounding to the nearest semitone, so a consistently flat C still reads as C.
- Gaps (breaths, short rests, consonants): the previous note is held. The one-hot chroma has no "no note"
  symbol: a silent frame would become bin 0, which the model hears as a C; holding the note keeps the harmony
  where the singer left it.
- Leading silence takes the first sung note (the melody starts "already there"; trailing silence holds the last).
- No voiced frame at all (silence, noise, speech-less recording): BadAudio "no pitched voice found".
"""

from __future__ import annotations

import logging

import librosa
import numpy as np
import torch

from engine.chroma import CHROMA_HOP, CHROMA_NFFT, CHROMA_SR, chroma_frames_for_samples, one_hot, resample_mono
from engine.errors import BadAudio

log = logging.getLogger(__name__)

PYIN_FMIN = 65.0  # C2
PYIN_FMAX = 1047.0  # C6
ANALYSIS_SR = 16000  # plenty for a voice up to C6 and keeps pYIN (slow) fast
_PYIN_FRAME = 1024  # 64 ms: more than two periods of C2
_PYIN_HOP = 256  # 16 ms
# pYIN's HMM marks short gaps and even white noise as "voiced" but with a tiny voicing probability (~0.01);
# a sung note sits at 0.5-1.0 after its first few ms.
MIN_VOICED_PROB = 0.25


def _track_pitch(mono: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pYIN on 16 kHz audio → (times in s of voiced frames, their MIDI pitch as float)."""
    f0, voiced, voiced_prob = librosa.pyin(
        mono, fmin=PYIN_FMIN, fmax=PYIN_FMAX, sr=ANALYSIS_SR, frame_length=_PYIN_FRAME, hop_length=_PYIN_HOP,
        center=True,
    )
    voiced &= np.isfinite(f0) & (voiced_prob >= MIN_VOICED_PROB)
    times = librosa.frames_to_time(np.flatnonzero(voiced), sr=ANALYSIS_SR, hop_length=_PYIN_HOP)
    return times, librosa.hz_to_midi(f0[voiced])


def _tuning_offset(midi: np.ndarray) -> float:
    """The singer's overall offset from equal temperament, in semitones [-0.5, 0.5).

    A circular mean of the distance to the nearest semitone. (librosa.pitch_tuning takes the histogram's mode,
    which vibrato pulls to the extremes of the pitch swing.)
    """
    angle = np.angle(np.mean(np.exp(2j * np.pi * midi)))
    return float(angle / (2 * np.pi))


def _frame_votes(times: np.ndarray, classes: np.ndarray, frames: int) -> np.ndarray:
    """Per chroma frame, the Hann-weighted majority pitch class of the voiced frames under its window; -1 if none."""
    hop_s = CHROMA_HOP / CHROMA_SR
    half = CHROMA_NFFT / CHROMA_SR / 2
    out = np.full(frames, -1, dtype=np.int64)
    for i in range(frames):
        center = i * hop_s
        lo, hi = np.searchsorted(times, [center - half, center + half])
        if lo == hi:
            continue
        weights = 0.5 + 0.5 * np.cos(np.pi * (times[lo:hi] - center) / half)
        out[i] = int(np.bincount(classes[lo:hi], weights=weights, minlength=12).argmax())
    return out


def _fill_gaps(pitch_classes: np.ndarray) -> np.ndarray:
    """Hold the previous note through gaps (-1); frames before the first note take the first note."""
    known = np.flatnonzero(pitch_classes >= 0)
    last_known = np.maximum.accumulate(np.where(pitch_classes >= 0, np.arange(len(pitch_classes)), -1))
    return pitch_classes[np.where(last_known >= 0, last_known, known[0])]


def hummed_pitch_classes(wav: np.ndarray | torch.Tensor, sample_rate: int) -> np.ndarray:
    """Pitch class (0 = C) per chroma frame of a voice recording, gaps filled as the module doc says."""
    mono = resample_mono(wav, sample_rate, ANALYSIS_SR)
    frames = chroma_frames_for_samples(round(mono.shape[-1] * CHROMA_SR / ANALYSIS_SR))
    times, midi = _track_pitch(mono)
    if times.size == 0:
        raise BadAudio("no pitched voice found in the recording; hum or sing one note at a time, closer to the mic")
    tuning = _tuning_offset(midi)
    classes = np.round(midi - tuning).astype(np.int64) % 12
    votes = _frame_votes(times, classes, frames)
    log.debug("humming: %d voiced pYIN frames, tuning %+.2f semitone, %d/%d chroma frames voiced",
              times.size, tuning, int((votes >= 0).sum()), frames)
    return _fill_gaps(votes)


def chroma_from_humming(wav: np.ndarray | torch.Tensor, sample_rate: int) -> np.ndarray:
    """One-hot [frames, 12] melody chroma of a hummed/sung recording (mono [n] or [channels, n], any rate)."""
    return one_hot(hummed_pitch_classes(wav, sample_rate))
