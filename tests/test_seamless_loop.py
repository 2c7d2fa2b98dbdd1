"""Seamless loops (bridge/seamless_loop.py): the seam of the loop has no more spectral flux than the 95th
percentile of the flux inside it; a naive cut (the negative control) has much more."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.seamless_loop import loop_bars, make_seamless, matched_gains
from engine.bars import Tempo

SR = 32000
N_FFT, HOP = 2048, 256


def evolving(seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Music that never repeats: gliding partials, a slow swell, a noise floor (so the end differs from the start)."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    out = np.zeros((channels, t.size))
    for c in range(channels):
        for f0, glide, amp in ((196.0, 0.35, 0.3), (293.0, -0.2, 0.2), (440.0, 0.5, 0.1), (587.0, 0.15, 0.08)):
            freq = f0 * 2 ** (glide * t / t[-1] + 0.01 * np.sin(2 * np.pi * 5 * t))
            out[c] += amp * np.sin(2 * np.pi * np.cumsum(freq) / SR + rng.uniform(0, 2 * np.pi))
        out[c] *= 0.6 + 0.4 * np.sin(2 * np.pi * t / (t[-1] * 1.7) + c)
        out[c] += 0.003 * rng.standard_normal(t.size)
    return out.astype(np.float32)


def seam_flux(loop: np.ndarray) -> tuple[float, float]:
    """(flux at the seam, 95th percentile of the flux inside) for the loop played twice in a row. Flux: the
    half-wave rectified increase of the log-magnitude spectrum from one frame to the next."""
    import librosa

    x = np.tile(loop.mean(axis=0), 2)
    n = loop.shape[1]
    mag = np.log1p(100 * np.abs(librosa.stft(x, n_fft=N_FFT, hop_length=HOP, center=False)))
    flux = np.maximum(mag[:, 1:] - mag[:, :-1], 0).sum(axis=0)
    starts = np.arange(1, mag.shape[1]) * HOP  # frame i of `flux` compares the windows starting here and HOP earlier
    touches = (starts - HOP < n) & (starts + N_FFT > n)  # windows that contain the seam
    inside = (starts - HOP >= n) & (starts + N_FFT <= 2 * n)  # windows wholly inside the second period
    return float(flux[touches].max()), float(np.percentile(flux[inside], 95))


@pytest.mark.parametrize("bars,channels,seed", [(2, 1, 0), (4, 2, 1), (1, 1, 2)])
def test_the_seam_is_no_rougher_than_the_loop(bars, channels, seed):
    tempo = Tempo(96)
    audio = evolving(float(tempo.seconds_per_bar()) * loop_bars(bars) + 0.1, channels, seed)
    n = tempo.bars_to_samples(bars, SR)
    naive = audio[:, :n]
    seam, inside = seam_flux(naive)
    assert seam > 1.5 * inside, f"negative control: a naive cut should jump ({seam:.1f} vs {inside:.1f})"
    loop = make_seamless(audio, tempo, SR, bars)
    assert loop.shape == (channels, n)  # exactly `bars` bars
    seam, inside = seam_flux(loop)
    assert seam <= inside, f"seam flux {seam:.1f} above the loop's 95th percentile {inside:.1f}"
    # The loop's first sample continues its last one as the music did (no click): the same step as inside.
    step = np.abs(loop[:, 0] - loop[:, -1]).max()
    assert step <= 2 * np.abs(np.diff(loop, axis=1)).max()


def test_a_repeating_groove_does_not_swell():
    tempo = Tempo(120)
    bar = evolving(float(tempo.seconds_per_bar()))
    audio = np.tile(bar, 3)  # the extra bar is the head itself: correlation 1
    loop = make_seamless(audio, tempo, SR, 2)
    # Equal gain for identical material: the head is unchanged, not 3 dB louder in the middle of the fade.
    np.testing.assert_allclose(loop, audio[:, : loop.shape[1]], atol=1e-5)


def test_matched_gains_keep_the_power():
    p = np.linspace(0, 1, 101)
    for r in (0.0, 0.5, 1.0):
        a, b = matched_gains(p, r)
        np.testing.assert_allclose(a ** 2 + b ** 2 + 2 * a * b * r, 1.0, atol=1e-12)
    a, b = matched_gains(p, 0.0)
    assert a[0] == 0 and b[-1] == 0


def test_too_short_says_how_to_render():
    tempo = Tempo(100)
    with pytest.raises(Exception, match="loop_bars"):
        make_seamless(np.zeros((1, tempo.bars_to_samples(2, SR))), tempo, SR, 2)


@pytest.mark.parametrize("lock,loop", [(False, True), (True, True), (True, False), (False, False)])
def test_results_come_out_exactly_n_bars(lock, loop):
    from bridge.result_grid import bars_to_render, put_on_grid
    from tests.drums import drum_loop

    tempo, bars = Tempo(96), 2
    rendered = bars_to_render(bars, lock=lock, loop=loop)
    assert rendered == (bars + 1 if lock or loop else bars)
    audio = drum_loop(beats=16, bpm=95, drift=0.01, seed=7).audio[:, : tempo.bars_to_samples(rendered, SR)]
    out, note = put_on_grid(audio, tempo, SR, bars, lock=lock, loop=loop)
    assert out.shape == (1, tempo.bars_to_samples(bars, SR))
    assert note.startswith("locked ") == lock and ("loop" in note) == loop
