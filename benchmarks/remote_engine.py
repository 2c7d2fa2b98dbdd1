"""The remote engine's cost over loopback: latency a chunk gains on the wire, bytes on the wire per second of audio,
and the CPU cost of each audio format.

    python benchmarks/remote_engine.py [--chunks 20]

Latency: a replay engine (pre-made chunks, one every `--pace` s) is served by the real `EngineServer` in a child
process, which notes when each chunk left the engine (CLOCK_MONOTONIC is one clock for every process on the
machine); the client notes when `RemoteEngine`'s stream handed it over. In-process that hand-over costs nothing,
so the difference is what the network path adds per chunk. The audio is a synthetic mix (tones with envelopes and
some noise): raw PCM does not care, FLAC's ratio on real music is usually better than on this mix.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bridge import wire  # noqa: E402
from engine.interface import EngineInfo, StreamSpec  # noqa: E402
from engine.session import Chunk  # noqa: E402

SR = 32000


def music(seconds: float, channels: int, seed: int = 0) -> np.ndarray:
    """Tones on an eighth-note grid at 120 bpm with decaying envelopes, plus a little noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    out = np.zeros((channels, n), np.float32)
    step = SR // 4
    for start in range(0, n, step):
        f = 110 * 2 ** (rng.integers(0, 24) / 12)
        seg = slice(start, min(n, start + step))
        env = np.exp(-np.arange(seg.stop - seg.start) / (0.15 * SR))
        for c in range(channels):
            out[c, seg] += 0.3 * env * np.sin(2 * np.pi * f * t[seg] * (1 + 0.002 * c))
    return out + 0.01 * rng.standard_normal((channels, n)).astype(np.float32)


class ReplayStream:
    def __init__(self, chunks: list[Chunk], pace: float, log_path: str):
        self.chunks, self.pace, self.log_path = chunks, pace, log_path
        self.seed, self.prompt_text, self.steps = 0, "replay", 0

    def __iter__(self):
        sent = []
        t0 = time.monotonic()
        for i, chunk in enumerate(self.chunks):
            time.sleep(max(0.0, t0 + (i + 1) * self.pace - time.monotonic()))
            sent.append(time.monotonic())
            yield chunk
        with open(self.log_path, "w") as f:
            json.dump(sent, f)

    def cancel(self):
        pass

    def stop(self):
        pass


class ReplayEngine:
    """Replays pre-made chunks; the spec's prompt says which ("channels chunk_seconds chunks pace log_path")."""

    capacity = 1
    info = EngineInfo("replay", SR, 2, 50.0, 30.0, False, "float32", "cpu")

    def open(self, spec):
        channels, chunk_seconds, chunks, pace, log_path = spec.prompt.split()
        channels, chunks, n = int(channels), int(chunks), int(float(chunk_seconds) * SR)
        audio = music(n * chunks / SR, channels)
        made = [Chunk(i, audio[:, i * n:(i + 1) * n], i * n, None, None, i == chunks - 1) for i in range(chunks)]
        return ReplayStream(made, float(pace), log_path)

    def close(self):
        pass


def serve_replay() -> None:
    import threading

    from bridge.engine_server import EngineServer

    server = EngineServer(ReplayEngine(), port=0)

    def announce():
        server.ready.wait()
        print(server.port, flush=True)

    threading.Thread(target=announce, daemon=True).start()
    server.serve_forever()


def latency(url: str, channels: int, chunk_seconds: float, fmt: wire.AudioFormat, chunks: int,
            pace: float) -> list[float]:
    from bridge.remote_engine import RemoteEngine

    log = f"/tmp/remote-bench-{os.getpid()}.json"
    engine = RemoteEngine(url, audio_format=fmt, monitor=False)
    got = []
    for _ in engine.open(StreamSpec(f"{channels} {chunk_seconds} {chunks} {pace} {log}")):
        got.append(time.monotonic())
    time.sleep(0.2)  # the server writes its log after the last chunk
    with open(log) as f:
        sent = json.load(f)
    os.remove(log)
    return [g - s for g, s in zip(got, sent)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--serve-replay", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--chunks", type=int, default=20, help="chunks per measured stream")
    args = p.parse_args()
    if args.serve_replay:
        return serve_replay()

    print("| audio | format | bytes on the wire per s of audio | encode ms per s of audio | decode ms per s of audio |")
    print("| --- | --- | ---: | ---: | ---: |")
    for channels in (1, 2):
        audio = music(10.0, channels, seed=1)
        for fmt in wire.AudioFormat:
            chunk = Chunk(0, audio, 0, None, None, False)
            enc = dec = float("inf")
            for _ in range(7):  # the best of 7: the machine is shared, the cost is the undisturbed run
                t = time.perf_counter()
                frame = wire.chunk_frame(1, chunk, 0, fmt, SR)
                enc = min(enc, (time.perf_counter() - t) / 10)
                parsed = wire.unpack_frame(frame)
                t = time.perf_counter()
                wire.frame_chunk(parsed)
                dec = min(dec, (time.perf_counter() - t) / 10)
            print(f"| {channels} ch 32 kHz | {fmt.name.lower()} | {len(frame) / 10:,.0f} | {enc * 1e3:.2f} | "
                  f"{dec * 1e3:.2f} |")
    print()
    print("| chunk | format | added latency per chunk, median (max) ms |")
    print("| --- | --- | ---: |")
    proc = subprocess.Popen([sys.executable, __file__, "--serve-replay"], stdout=subprocess.PIPE, text=True)
    try:
        url = f"ws://127.0.0.1:{int(proc.stdout.readline())}"
        for channels, seconds in ((1, 0.5), (1, 2.0), (2, 2.0)):
            for fmt in wire.AudioFormat:
                lat = latency(url, channels, seconds, fmt, args.chunks, 0.1 if seconds < 1 else 0.3)
                print(f"| {seconds} s, {channels} ch | {fmt.name.lower()} | {np.median(lat) * 1e3:.2f} "
                      f"({max(lat) * 1e3:.2f}) |", flush=True)
    finally:
        proc.terminate()
        proc.wait(60)


if __name__ == "__main__":
    main()
