"""The one clip resampler: lengths, channels kept apart, pitch kept."""

import numpy as np

from engine.resample import resample


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / rate)[spectrum.argmax()])


def test_channels_are_resampled_apart_and_keep_their_pitch():
    t = np.arange(44100) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 1000 * t)]).astype(np.float64)
    out = resample(stereo, 44100, 32000)
    assert out.dtype == np.float32 and out.shape == (2, 32000)
    assert abs(_peak_hz(out[0], 32000) - 440) <= 2 and abs(_peak_hz(out[1], 32000) - 1000) <= 2
    # channel 0 carries nothing of channel 1's tone (a mixed-up axis would)
    spectrum = np.abs(np.fft.rfft(out[0] * np.hanning(32000)))
    assert spectrum[1000] < 1e-3 * spectrum[440]


def test_same_rate_is_float32_unchanged():
    x = np.linspace(-1, 1, 100)
    out = resample(x, 32000, 32000)
    assert out.dtype == np.float32 and np.array_equal(out, x.astype(np.float32))
