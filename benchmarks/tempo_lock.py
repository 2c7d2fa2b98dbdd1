"""Tempo lock: speed (seconds of work per second of audio) and accuracy on synthetic drum loops.

The loops (tests/drums.py): one hit per beat, human timing (8 ms sd), tempo drifting by 2-3 % over the loop,
90-100 bpm, locked to a grid 1-4 % away. Accuracy: the onsets an independent detector finds (librosa, 4 ms hop)
against the grid, before and after. Rows:
- TempoLock on whole 32-beat loops (~20 s);
- ChunkLock on the same loops fed as 1-bar chunks (a jam), 9 bars;
- the stretcher alone, one uniform 4 % stretch of a 20 s loop: pedalboard's Rubber Band R3 (high_quality, what
  tempo lock uses) and R2 (high_quality=False), and the `rubberband` command line (what pyrubberband runs, with
  its WAV round trip), when installed; accuracy there = how far onsets move from where the stretch puts them.

    python benchmarks/tempo_lock.py [--loops 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time

import numpy as np
import soundfile as sf

from bridge.tempo_lock import ChunkLock, TempoLock, track_beats
from engine.bars import Tempo
from tests.drums import SR, detect_onsets, drum_loop, grid_errors

CASES = [(95.0, 0.03, 96), (92.0, 0.02, 95), (100.0, -0.03, 97), (90.0, 0.02, 92), (97.0, -0.02, 96)]


def ms(samples: float) -> float:
    return 1000.0 * samples / SR


def grid_report(audio: np.ndarray, tempo: Tempo, beats: int) -> tuple[float, float, bool]:
    """(worst, median) onset distance from the grid in ms, and whether there is exactly one onset per beat."""
    grid = np.array([tempo.beats_to_samples(k, SR) for k in range(beats)])
    onsets = detect_onsets(audio)
    onsets = onsets[onsets < audio.shape[1] - round(0.03 * SR)]
    nearest, err = grid_errors(onsets, grid)
    return ms(err.max()), ms(float(np.median(err))), sorted(nearest) == list(range(beats))


def whole(loops: int) -> None:
    print("| TempoLock (32 beats) | audio s | lock s | s per s | before: worst ms | after: worst ms | after: median ms | one onset per beat |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    per = []
    for i, (bpm, drift, target) in enumerate(CASES[:loops]):
        tempo = Tempo(target)
        loop = drum_loop(beats=32, bpm=bpm, drift=drift, jitter_ms=8, seed=i)
        t0 = time.perf_counter()
        result = TempoLock(tempo, SR).lock(loop.audio, bars=8)
        took = time.perf_counter() - t0
        seconds = loop.audio.shape[1] / SR
        per.append(took / seconds)
        before = grid_report(loop.audio, tempo, 32)
        after = grid_report(result.audio, tempo, 32)
        print(f"| {bpm:g} bpm {100 * drift:+g} % drift -> {target} | {seconds:.1f} | {took:.2f} | {took / seconds:.3f} | "
              f"{before[0]:.0f} | {after[0]:.1f} | {after[1]:.1f} | {after[2]} |")
    print(f"\nmedian {statistics.median(per):.3f} s per s of audio\n")


def stream(loops: int) -> None:
    print("| ChunkLock (1-bar chunks, 9 bars) | audio s | lock s | s per s | splices | after: worst ms | after: median ms | one onset per beat |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    per = []
    for i, (bpm, drift, target) in enumerate(CASES[:loops]):
        tempo, bars = Tempo(target), 9
        audio = drum_loop(beats=40, bpm=bpm, drift=drift, jitter_ms=8, seed=i).audio[:, : tempo.bars_to_samples(bars, SR)]
        lock, out = ChunkLock(tempo, SR), []
        t0 = time.perf_counter()
        for k in range(bars):
            y = lock.push(audio[:, tempo.bar_start_sample(k, SR): tempo.bar_start_sample(k + 1, SR)])
            if y is not None:
                out.append(y)
        out.append(lock.flush())
        took = time.perf_counter() - t0
        seconds = audio.shape[1] / SR
        per.append(took / seconds)
        after = grid_report(np.concatenate(out, axis=1), tempo, bars * 4)
        print(f"| {bpm:g} bpm {100 * drift:+g} % drift -> {target} | {seconds:.1f} | {took:.2f} | {took / seconds:.3f} | "
              f"{lock.splices} | {after[0]:.1f} | {after[1]:.1f} | {after[2]} |")
    print(f"\nmedian {statistics.median(per):.3f} s per s of audio\n")


def stretchers() -> None:
    import pedalboard

    loop = drum_loop(beats=32, bpm=95, drift=0.0, jitter_ms=0, seed=9)
    ratio = 1.04
    expected = detect_onsets(loop.audio) * ratio

    def moved(y: np.ndarray) -> tuple[float, float]:
        found = detect_onsets(y)
        err = np.abs(found[:, None] - expected[None, :]).min(axis=0)
        return ms(err.max()), ms(float(np.median(err)))

    rows = []
    for name, hq in (("pedalboard R3 (high_quality)", True), ("pedalboard R2 (fast)", False)):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            y = pedalboard.time_stretch(loop.audio, SR, stretch_factor=1 / ratio, high_quality=hq)
            times.append(time.perf_counter() - t0)
        rows.append((name, statistics.median(times), *moved(y)))
    exe = shutil.which("rubberband")
    if exe:
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = os.path.join(tmp, "in.wav"), os.path.join(tmp, "out.wav")
            for flag, name in (("--fine", "rubberband CLI R3 (--fine, via WAV files)"), ("", "rubberband CLI R2 (via WAV files)")):
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    sf.write(src, loop.audio.T, SR, subtype="FLOAT")
                    subprocess.run([exe, "-q", *([flag] if flag else []), "--time", str(ratio), src, dst], check=True,
                                   capture_output=True)
                    y = sf.read(dst, dtype="float32", always_2d=True)[0].T
                    times.append(time.perf_counter() - t0)
                rows.append((name, statistics.median(times), *moved(y)))
    seconds = loop.audio.shape[1] / SR
    print(f"| stretcher, {seconds:.1f} s at +4 % | s | s per s | onsets moved: worst ms | median ms |")
    print("|---|---:|---:|---:|---:|")
    for name, took, worst, median in rows:
        print(f"| {name} | {took:.3f} | {took / seconds:.4f} | {worst:.1f} | {median:.1f} |")
    if not exe:
        print("\n(rubberband command line not installed: `apt-get install rubberband-cli` for its rows)")


def main() -> None:
    import logging

    logging.disable(logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=5, help=f"how many of the {len(CASES)} loops")
    args = parser.parse_args()
    # One-time costs (numba compiles librosa's beat tracker, ~5-10 s) are paid before timing.
    track_beats(drum_loop(beats=8, bpm=96).audio, SR, 96)
    whole(args.loops)
    stream(args.loops)
    stretchers()


if __name__ == "__main__":
    main()
