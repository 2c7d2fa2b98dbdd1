"""Tempo lock (bridge/tempo_lock.py and `musicgen-bridge lock`) on synthetic drum loops with human timing and a
slowly drifting tempo: after locking, one onset per beat, each within 15 ms of the grid."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from bridge.cli import main
from bridge.tempo_lock import ChunkLock, TempoLock, track_beats
from engine.bars import Tempo
from tests.drums import SR, detect_onsets, drum_loop, grid_errors

TOLERANCE = round(0.015 * SR)


def _grid(lock: TempoLock, beats: int) -> np.ndarray:
    return np.array([lock.grid(k) for k in range(beats)])


def _on_grid(audio: np.ndarray, grid: np.ndarray) -> tuple[bool, str]:
    onsets = detect_onsets(audio)
    nearest, err = grid_errors(onsets, grid)
    one_each = len(onsets) == len(grid) and sorted(nearest) == list(range(len(grid)))
    return one_each and bool(err.max() <= TOLERANCE), \
        f"{len(onsets)} onsets for {len(grid)} beats, worst {1000 * err.max() / SR:.1f} ms off the grid"


@pytest.mark.parametrize("bpm,drift,target,seed", [(95.0, 0.03, 96, 0), (92.0, 0.02, 97, 1), (100.0, -0.03, 96, 2)])
def test_every_onset_lands_on_the_grid(bpm, drift, target, seed):
    loop = drum_loop(beats=32, bpm=bpm, drift=drift, jitter_ms=8, seed=seed)
    lock = TempoLock(Tempo(target), SR)
    grid = _grid(lock, 32)
    ok, why = _on_grid(loop.audio, grid)
    assert not ok, f"the unlocked loop should be off the grid (negative control): {why}"
    result = lock.lock(loop.audio, bars=8)
    assert result.locked, result.message
    assert result.audio.shape == (1, Tempo(target).bars_to_samples(8, SR))  # exactly 8 bars
    ok, why = _on_grid(result.audio, grid)
    assert ok, why
    assert -0.08 <= result.stretch[0] <= result.stretch[1] <= 0.08


def test_stereo_keeps_both_channels_in_step():
    loop = drum_loop(beats=16, bpm=94, drift=0.02, seed=3)
    stereo = np.concatenate([loop.audio, 0.5 * loop.audio])
    result = TempoLock(Tempo(96), SR).lock(stereo, bars=4)
    assert result.locked and result.audio.shape[0] == 2
    np.testing.assert_allclose(result.audio[1], 0.5 * result.audio[0], atol=2e-3)


def test_beats_follow_the_drummer():
    loop = drum_loop(beats=24, bpm=90, drift=0.03, jitter_ms=10, seed=4)
    track = track_beats(loop.audio, SR, bpm_hint=90)
    assert len(track.beats) == 24
    # Onset peaks come a few ms after the hit starts; the beats must follow each hit, not a steady pulse.
    assert np.abs(track.beats - loop.hits).max() < 0.012 * SR


@pytest.mark.parametrize("kind", ["silence", "noise", "pad", "too far"])
def test_unlockable_audio_is_left_as_it_is(kind):
    rng = np.random.default_rng(0)
    n = 6 * SR
    t = np.arange(n) / SR
    audio = {
        "silence": np.zeros((1, n), np.float32),
        "noise": 0.3 * rng.standard_normal((1, n)).astype(np.float32),
        "pad": (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(np.pi * t / 6) ** 2).astype(np.float32)[None],
        "too far": drum_loop(beats=16, bpm=106, drift=0.0, seed=5).audio,  # 106 -> 96 bpm: a 10 % stretch
    }[kind]
    result = TempoLock(Tempo(96), SR).lock(audio, bars=2)
    assert not result.locked
    assert result.audio is audio or np.array_equal(result.audio, audio)
    expect = {"silence": "silent", "noise": "no clear beat", "pad": "no clear beat", "too far": "at most 8 %"}[kind]
    assert expect in result.message and "left as it is" in result.message


def test_cli_locks_a_file(tmp_path, capsys):
    loop = drum_loop(beats=16, bpm=93, drift=0.02, seed=6)
    src, out = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(src, loop.audio.T, SR, subtype="FLOAT")
    assert main(["lock", str(src), "--bpm", "96", "--bars", "4", "--out", str(out)]) == 0
    assert "locked 16 beats" in capsys.readouterr().out
    audio, sr = sf.read(out, always_2d=True, dtype="float32")
    assert sr == SR and audio.shape[0] == Tempo(96).bars_to_samples(4, SR)
    ok, why = _on_grid(audio.T, _grid(TempoLock(Tempo(96), SR), 16))
    assert ok, why
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")], "temporary files left behind"


def test_cli_writes_unlockable_audio_unchanged(tmp_path, capsys):
    src, out = tmp_path / "in.wav", tmp_path / "out.wav"
    noise = (0.2 * np.random.default_rng(1).standard_normal((3 * SR, 2))).astype(np.float32)
    sf.write(src, noise, SR, subtype="FLOAT")
    assert main(["lock", str(src), "--bpm", "120", "--out", str(out)]) == 0
    assert "no clear beat" in capsys.readouterr().out
    np.testing.assert_array_equal(sf.read(out, dtype="float32")[0], noise)


@pytest.mark.parametrize("args,expect", [
    (["--bpm", "0"], "out of range"),
    (["--bpm", "fast"], "decimal number"),
    ([], "needs --bpm"),
    (["--bpm", "96", "--time-signature", "4/3"], "denominator"),
    (["--bpm", "96", "--bars", "-1"], "--bars must be"),
    (["--bpm", "96", "--bars", "x"], "--bars must be a decimal"),
    (["--bpm", "96", "--missing-input"], "not found"),
    (["--bpm", "96", "--out-elsewhere"], "does not exist"),
])
def test_bad_arguments_are_one_line_exit_2(args, expect, tmp_path, capsys):
    src, out = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(src, drum_loop(beats=4, bpm=96).audio.T, SR)
    if "--missing-input" in args:
        args, src = [a for a in args if a != "--missing-input"], tmp_path / "nope.wav"
    if "--out-elsewhere" in args:
        args, out = [a for a in args if a != "--out-elsewhere"], tmp_path / "no" / "out.wav"
    argv = ["lock", str(src), *args] + (["--out", str(out)] if args else [])
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and expect in err[0], err
    assert not out.exists()


def _stream(lock: ChunkLock, audio: np.ndarray, tempo: Tempo, bars: int) -> list[np.ndarray]:
    """Feed `bars` one-bar chunks (cut on the grid's bar lines, as a jam's are) and collect what comes out."""
    out = []
    for k in range(bars):
        y = lock.push(audio[:, tempo.bar_start_sample(k, SR): tempo.bar_start_sample(k + 1, SR)])
        assert (y is None) == (k == 0)  # one chunk late
        if y is not None:
            out.append(y)
    out.append(lock.flush())
    assert lock.flush() is None
    return out


@pytest.mark.parametrize("bpm,drift,target,splices", [(93.0, 0.02, 96, True), (98.0, 0.0, 96, False),
                                                      (95.0, 0.03, 95, False)])
def test_chunk_lock_puts_a_stream_on_the_grid(bpm, drift, target, splices):
    tempo = Tempo(target)
    bars = 7
    loop = drum_loop(beats=32, bpm=bpm, drift=drift, jitter_ms=8, seed=1)
    audio = loop.audio[:, : tempo.bars_to_samples(bars, SR)]
    lock = ChunkLock(tempo, SR)
    chunks = _stream(lock, audio, tempo, bars)
    # 93 -> 96 bpm drifts more than half a beat from the grid within 7 bars: a beat is repeated, and still every
    # beat is on the grid.
    assert (lock.splices > 0) == splices
    # Every chunk exactly as long as the one that came in.
    assert [c.shape[1] for c in chunks] == [tempo.bar_start_sample(k + 1, SR) - tempo.bar_start_sample(k, SR)
                                           for k in range(bars)]
    grid = np.array([tempo.beats_to_samples(k, SR) for k in range(bars * 4)])
    end = audio.shape[1] - round(0.03 * SR)  # an attack cut by the stream's end is not a beat
    before = detect_onsets(audio)
    assert grid_errors(before[before < end], grid)[1].max() > TOLERANCE  # negative control: off the grid
    onsets = detect_onsets(np.concatenate(chunks, axis=1))
    onsets = onsets[onsets < end]
    nearest, err = grid_errors(onsets, grid)
    assert sorted(nearest) == list(range(len(grid))), f"{len(onsets)} onsets for {len(grid)} beats"
    assert err.max() <= TOLERANCE, f"worst {1000 * err.max() / SR:.1f} ms off the grid"


def test_chunk_lock_passes_beatless_streams_unchanged():
    tempo = Tempo(120)
    noise = (0.2 * np.random.default_rng(2).standard_normal((2, tempo.bars_to_samples(4, SR)))).astype(np.float32)
    lock = ChunkLock(tempo, SR)
    out = np.concatenate(_stream(lock, noise, tempo, 4), axis=1)
    np.testing.assert_array_equal(out, noise)
    assert not lock.locked and "no clear beat" in lock.message
