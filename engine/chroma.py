"""Melody conditioning for MusicGen-melody: the one-hot chromagram the model reads.

The recipe (Meta's `ChromaExtractor`, Hugging Face's `MusicgenMelodyFeatureExtractor`):

1. mono audio at 32 kHz; if shorter than one window (16384 samples) it is zero-padded on both sides to 16384;
2. power spectrogram: centered STFT (reflect padding), n_fft = window = 16384, periodic Hann window, hop 4096,
   normalized by the window's energy (torchaudio's ``normalized=True``);
3. librosa's chroma filterbank (12 bins starting at C, tuning 0) applied to it;
4. each frame divided by its max (eps 1e-6), then only the argmax bin is kept (one-hot).

A frame is centered on sample ``i * 4096``, so ``n`` samples give ``1 + n // 4096`` frames (30 s: 235).

Silence: an all-zero frame has argmax 0, so silence reads as "C" (bin 0). Meta's "no melody" is exactly that.
Very quiet noise is *not* silence: its argmax is whatever bin the noise happens to favour, as in the recipe.

Resampling uses librosa (soxr) rather than torchaudio/julius; the chroma is too coarse for the difference to
matter away from note boundaries.

Length: Meta tiles a melody shorter than the model's chroma length and truncates a longer one (``fit_chroma``),
and for generation past 30 s keeps reading the melody from where the new window starts, wrapping around its end:
both are ``chroma_window`` (the first from frame 0). Hugging Face zero-pads instead, which turns the tail into a held "C".
"""

from __future__ import annotations

import functools

import librosa
import numpy as np
import torch

from .errors import BadAudio, UserError
from .resample import resample

CHROMA_SR = 32000
CHROMA_HOP = 4096
CHROMA_NFFT = 16384
N_CHROMA = 12
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")

_NORM_EPS = 1e-6


@functools.lru_cache(maxsize=1)
def chroma_filterbank() -> np.ndarray:
    """librosa's chroma filterbank for the recipe, [12, n_fft // 2 + 1] float32 (bin 0 = C, tuning 0)."""
    return librosa.filters.chroma(sr=CHROMA_SR, n_fft=CHROMA_NFFT, tuning=0.0, n_chroma=N_CHROMA).astype(np.float32)


def chroma_frames_for_samples(n_samples: int) -> int:
    """Frames the recipe gives for ``n_samples`` of 32 kHz audio (short audio is padded to one window first)."""
    return 1 + max(int(n_samples), CHROMA_NFFT) // CHROMA_HOP


def chroma_frames_for_seconds(seconds: float) -> int:
    """Frames the recipe gives for ``seconds`` of audio (30 s → 235)."""
    if not np.isfinite(seconds) or seconds < 0:
        raise UserError(f"a duration must be a non-negative number of seconds, got {seconds!r}")
    return chroma_frames_for_samples(round(seconds * CHROMA_SR))


def _to_mono(wav: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().cpu().float().numpy()
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim == 2:
        if wav.shape[0] > wav.shape[1]:
            raise BadAudio(
                f"audio of shape {wav.shape} looks like [samples, channels]; pass it as [channels, samples] "
                "(transpose it)"
            )
        wav = wav.mean(axis=0)
    elif wav.ndim != 1:
        raise BadAudio(f"audio must be mono [samples] or [channels, samples], got shape {wav.shape}")
    if wav.size == 0:
        raise BadAudio("the audio is empty (0 samples); record or choose a longer melody")
    if not np.all(np.isfinite(wav)):
        raise BadAudio("the audio contains NaN or infinite samples; re-export it")
    return wav


def resample_mono(wav: np.ndarray | torch.Tensor, sample_rate: int, target_rate: int) -> np.ndarray:
    """Downmix ``[channels, n]`` (or take mono ``[n]``) and resample to ``target_rate``; float32 ``[n']``."""
    mono = _to_mono(wav)
    if sample_rate <= 0:
        raise BadAudio(f"sample rate must be positive, got {sample_rate}")
    if sample_rate != target_rate:
        mono = resample(mono, sample_rate, target_rate)
    return mono


def _pad_to_one_window(wav: np.ndarray) -> np.ndarray:
    # The recipe pads short audio symmetrically (the odd sample goes to the end) so one full window exists.
    if wav.shape[-1] >= CHROMA_NFFT:
        return wav
    pad = CHROMA_NFFT - wav.shape[-1]
    return np.pad(wav, (pad // 2, pad - pad // 2))


def chroma_energy(wav_32k: np.ndarray) -> np.ndarray:
    """Max-normalized chroma energy of mono 32 kHz audio, [frames, 12] float32 (before the one-hot step)."""
    wav = _pad_to_one_window(np.asarray(wav_32k, dtype=np.float32))
    window = librosa.filters.get_window("hann", CHROMA_NFFT, fftbins=True)  # periodic, as torch.hann_window
    spec = librosa.stft(
        wav, n_fft=CHROMA_NFFT, hop_length=CHROMA_HOP, win_length=CHROMA_NFFT, window=window,
        center=True, pad_mode="reflect",
    )
    power = (np.abs(spec) ** 2 / np.sum(window**2)).astype(np.float32)
    raw = chroma_filterbank() @ power  # [12, frames]
    peak = np.maximum(raw.max(axis=0, keepdims=True), _NORM_EPS)
    return (raw / peak).T.astype(np.float32)


def one_hot(pitch_classes: np.ndarray) -> np.ndarray:
    """Pitch classes [frames] (0 = C) → one-hot float32 [frames, 12]."""
    pcs = np.asarray(pitch_classes, dtype=np.int64)
    out = np.zeros((pcs.shape[0], N_CHROMA), dtype=np.float32)
    out[np.arange(pcs.shape[0]), pcs] = 1.0
    return out


def chroma_from_audio(wav: np.ndarray | torch.Tensor, sample_rate: int) -> np.ndarray:
    """The recipe's one-hot chromagram of a melody recording, float32 [frames, 12].

    ``wav`` is mono ``[n]`` or ``[channels, n]`` (downmixed) at any ``sample_rate`` (resampled to 32 kHz).
    All-zero frames come out as bin 0 (C), like the recipe.
    """
    mono = resample_mono(wav, sample_rate, CHROMA_SR)
    # np.argmax, like torch.argmax here, returns the first of equal maxima: all-zero → bin 0.
    return one_hot(chroma_energy(mono).argmax(axis=1))


def _check_chroma(chroma: np.ndarray) -> np.ndarray:
    chroma = np.asarray(chroma, dtype=np.float32)
    if chroma.ndim != 2 or chroma.shape[1] != N_CHROMA:
        raise UserError(f"a chromagram must have shape [frames, 12], got {chroma.shape}")
    if chroma.shape[0] == 0:
        raise UserError("the melody's chromagram is empty (0 frames); give a longer melody")
    return chroma


def chroma_window(chroma: np.ndarray, start_frame: int, frames: int) -> np.ndarray:
    """``frames`` rows of the melody starting at ``start_frame``, wrapping around its end.

    For streaming: when the model's context slides forward, its melody window slides with it and loops the
    melody, as Meta's extended generation does. (Meta wraps the *audio* sample-wise and recomputes the chroma;
    wrapping frames differs only on the frame or two straddling the loop point.)
    """
    chroma = _check_chroma(chroma)
    if frames <= 0:
        raise UserError(f"the chroma window length must be positive, got {frames}")
    rows = (int(start_frame) + np.arange(frames)) % chroma.shape[0]
    return chroma[rows].copy()


def pitch_class_names(chroma: np.ndarray) -> list[str]:
    """Note name of each frame's argmax (for logs and tests)."""
    return [NOTE_NAMES[i] for i in _check_chroma(chroma).argmax(axis=1)]


def melody_summary(chroma: np.ndarray, most: int = 4) -> str:
    """The melody in a few words: its most common pitch classes and their share of frames, e.g. 'D 34 %, A 19 %'."""
    from collections import Counter

    names = pitch_class_names(chroma)
    if not names:
        return ""
    return ", ".join(f"{n} {round(100 * c / len(names))} %" for n, c in Counter(names).most_common(most))
