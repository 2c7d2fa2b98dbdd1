"""A jam chunk's beat tracking (bridge/tempo_lock.py `track_beats`, librosa's mel spectrogram on numpy's BLAS) with
numpy's and scipy's OpenBLAS on 2 threads against 1 (what `engine.threads.blas_on_one_thread` sets in the bridge),
optionally beside `--busy` shell loops that each hold a core (another program on the producer's laptop).

Per round, each count in turn: wall and CPU time of one 6 s click track at 32 kHz. Reports every round's median.

    python benchmarks/blas_threads.py [--busy 1] [--rounds 8]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import numpy as np
import scipy.linalg  # noqa: F401  (scipy's own OpenBLAS, loaded so that both are limited alike)
from threadpoolctl import threadpool_limits

from bridge.tempo_lock import track_beats

SAMPLE_RATE = 32000


def clicks(seconds: float = 6.0) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(int(SAMPLE_RATE * seconds)) * 0.01).astype(np.float32)
    for beat in range(int(seconds * 2)):  # 120 bpm
        x[beat * SAMPLE_RATE // 2: beat * SAMPLE_RATE // 2 + 200] += 0.8
    return x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--busy", type=int, default=0, help="shell loops holding a core each")
    p.add_argument("--rounds", type=int, default=8)
    a = p.parse_args()
    audio = clicks()
    track_beats(audio, SAMPLE_RATE)  # librosa's one-time costs
    loops = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(a.busy)]
    wall: dict[int, list[float]] = {2: [], 1: []}
    cpu: dict[int, list[float]] = {2: [], 1: []}
    try:
        for _ in range(a.rounds):
            for n in (2, 1):
                with threadpool_limits(limits=n, user_api="blas"):
                    c0, t0 = time.process_time(), time.perf_counter()
                    track_beats(audio, SAMPLE_RATE)
                    wall[n].append(time.perf_counter() - t0)
                    cpu[n].append(time.process_time() - c0)
                time.sleep(0.2)  # past OpenBLAS's spinning: each count starts alike
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    print(f"{a.busy} busy loop(s), {a.rounds} rounds")
    print("| BLAS threads | wall ms, median (min-max) | CPU ms, median | rounds' wall ms |")
    print("|---:|---|---:|---|")
    for n in (2, 1):
        print(f"| {n} | {statistics.median(wall[n]) * 1e3:.1f} ({min(wall[n]) * 1e3:.1f}-{max(wall[n]) * 1e3:.1f}) | "
              f"{statistics.median(cpu[n]) * 1e3:.1f} | {', '.join(f'{w * 1e3:.0f}' for w in wall[n])} |")


if __name__ == "__main__":
    main()
