"""engine.chroma: the published melody-chroma recipe, tiling and windowing."""

import numpy as np
import pytest
import torch
from transformers.audio_utils import chroma_filter_bank

from engine.chroma import (
    CHROMA_HOP,
    CHROMA_NFFT,
    CHROMA_SR,
    NOTE_NAMES,
    chroma_energy,
    chroma_frames_for_seconds,
    chroma_from_audio,
    chroma_window,
    one_hot,
)
from engine.errors import BadAudio, UserError


def hf_recipe(wav_32k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MusicgenMelodyFeatureExtractor._torch_extract_fbank_features, step by step, without torchaudio.

    torchaudio.transforms.Spectrogram(n_fft, win_length=n_fft, hop, power=2, center=True, normalized=True) is
    torch.stft with a periodic Hann window and reflect padding, divided by sqrt(sum(window**2)), squared.
    The filterbank is HF's own (transformers.audio_utils), not librosa's, as in the extractor.
    Returns (normalized chroma [frames, 12], one-hot [frames, 12]).
    """
    wav = torch.tensor(wav_32k, dtype=torch.float32)[None]
    if wav.shape[-1] < CHROMA_NFFT:
        pad = CHROMA_NFFT - wav.shape[-1]
        wav = torch.nn.functional.pad(wav, (pad // 2, pad // 2 + pad % 2))
    window = torch.hann_window(CHROMA_NFFT)
    spec = torch.stft(wav, CHROMA_NFFT, CHROMA_HOP, CHROMA_NFFT, window, center=True, pad_mode="reflect",
                      return_complex=True)
    spec = (spec / window.pow(2).sum().sqrt()).abs().pow(2)
    filters = torch.from_numpy(chroma_filter_bank(num_frequency_bins=CHROMA_NFFT, num_chroma=12,
                                                  sampling_rate=CHROMA_SR, tuning=0)).float()
    raw = torch.einsum("cf,...ft->...ct", filters, spec)
    norm = torch.nn.functional.normalize(raw, p=float("inf"), dim=-2, eps=1e-6).transpose(1, 2)
    hot = torch.zeros_like(norm).scatter_(-1, norm.argmax(-1, keepdim=True), 1.0)
    return norm[0].numpy(), hot[0].numpy()


def harmonic_tone(midi: float, seconds: float, sr: int = CHROMA_SR, harmonics: int = 5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    return sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, harmonics + 1) if k * f0 < sr / 2) * 0.2


def melody_audio(pitches, note_s, sr=CHROMA_SR):
    return np.concatenate([harmonic_tone(p, note_s, sr) for p in pitches]).astype(np.float32)


def test_frame_count_of_30_seconds():
    assert chroma_frames_for_seconds(30) == 235
    assert chroma_frames_for_seconds(0.1) == 5  # padded to one window first, as the recipe does
    wav = np.zeros(30 * CHROMA_SR + 123, np.float32)
    assert chroma_from_audio(wav, CHROMA_SR).shape == (235, 12)


@pytest.mark.parametrize("seconds", [0.2, 0.512, 3.3])
def test_equals_hugging_face_recipe(seconds):
    rng = np.random.default_rng(7)
    pitches = rng.integers(40, 90, size=8)
    wav = melody_audio(pitches, seconds / 8)
    wav += 0.02 * rng.standard_normal(wav.shape).astype(np.float32)
    norm, hot = hf_recipe(wav)
    ours = chroma_from_audio(wav, CHROMA_SR)
    assert ours.shape == hot.shape == (chroma_frames_for_seconds(len(wav) / CHROMA_SR), 12)
    np.testing.assert_allclose(chroma_energy(wav), norm, atol=1e-4)
    np.testing.assert_array_equal(ours, hot)


def test_one_hot_float32():
    out = chroma_from_audio(harmonic_tone(62, 1.0), CHROMA_SR)
    assert out.dtype == np.float32
    assert set(np.unique(out)) == {0.0, 1.0}
    np.testing.assert_array_equal(out.sum(axis=1), 1.0)


@pytest.mark.parametrize("midi", [48, 55, 61, 66, 70, 76, 83])
def test_sine_gives_its_pitch_class(midi):
    t = np.arange(CHROMA_SR) / CHROMA_SR
    wav = 0.5 * np.sin(2 * np.pi * 440 * 2 ** ((midi - 69) / 12) * t)
    assert set(chroma_from_audio(wav, CHROMA_SR).argmax(1)) == {midi % 12}


def test_harmonic_melody_pitch_classes_at_any_rate_and_channels():
    pitches = [60, 64, 67, 72, 71, 69, 65, 62]  # C E G C B A F D
    note_s = 0.768  # 6 hops per note
    for sr in (CHROMA_SR, 44100, 22050):
        mono = melody_audio(pitches, note_s, sr)
        stereo = np.stack([mono, 0.5 * mono])
        for wav in (mono, stereo, torch.from_numpy(stereo)):
            pcs = chroma_from_audio(wav, sr).argmax(1)
            # frames whose whole window lies inside one note
            for i, p in enumerate(pitches):
                inside = [f for f in range(len(pcs))
                          if i * note_s + 0.256 <= f * CHROMA_HOP / CHROMA_SR <= (i + 1) * note_s - 0.256]
                assert inside and all(pcs[f] == p % 12 for f in inside), (sr, NOTE_NAMES[p % 12], pcs)


def test_silence_is_bin_zero():
    out = chroma_from_audio(np.zeros(CHROMA_SR * 2), CHROMA_SR)
    np.testing.assert_array_equal(out.argmax(1), 0)
    np.testing.assert_array_equal(out, hf_recipe(np.zeros(CHROMA_SR * 2))[1])


def test_bad_audio():
    with pytest.raises(BadAudio, match="empty"):
        chroma_from_audio(np.zeros(0), CHROMA_SR)
    with pytest.raises(BadAudio, match="transpose"):
        chroma_from_audio(np.zeros((CHROMA_SR, 2)), CHROMA_SR)
    with pytest.raises(BadAudio, match="NaN"):
        chroma_from_audio(np.full(1000, np.nan), CHROMA_SR)


def test_first_window_tiles_short_and_truncates_long():
    # Meta's fit_chroma: the window from frame 0 tiles a short melody and truncates a long one.
    short = one_hot(np.array([0, 4, 7, 11, 2, 5, 9]))
    tiled = chroma_window(short, 0, 235)
    assert tiled.shape == (235, 12)
    np.testing.assert_array_equal(tiled.argmax(1), [(0, 4, 7, 11, 2, 5, 9)[i % 7] for i in range(235)])
    long = one_hot(np.arange(300) % 12)
    np.testing.assert_array_equal(chroma_window(long, 0, 235), long[:235])
    np.testing.assert_array_equal(chroma_window(long[:235], 0, 235), long[:235])
    with pytest.raises(UserError, match="empty"):
        chroma_window(np.zeros((0, 12)), 0, 235)
    with pytest.raises(UserError, match="shape"):
        chroma_window(np.zeros((5, 7)), 0, 235)


def test_chroma_window_slides_and_wraps():
    melody = one_hot(np.arange(10) % 12)  # 10 frames: bins 0..9
    np.testing.assert_array_equal(chroma_window(melody, 0, 4).argmax(1), [0, 1, 2, 3])
    np.testing.assert_array_equal(chroma_window(melody, 8, 5).argmax(1), [8, 9, 0, 1, 2])
    np.testing.assert_array_equal(chroma_window(melody, 23, 3).argmax(1), [3, 4, 5])
    np.testing.assert_array_equal(chroma_window(melody, -1, 2).argmax(1), [9, 0])
    # a window longer than the melody from frame 0 is the tiled melody
    np.testing.assert_array_equal(chroma_window(melody, 0, 235), np.tile(melody, (24, 1))[:235])
    # sliding the window by k frames equals taking the next k frames of the endless loop
    loop = np.tile(melody, (40, 1))
    np.testing.assert_array_equal(chroma_window(melody, 141, 235), loop[141:376])
