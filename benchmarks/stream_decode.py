"""Streaming EnCodec decode on the full-size 32 kHz MusicGen codec (random weights: no downloads).

Measures, for 1 s chunks: decode ms of chunk 2 vs chunk 40 (median over repeats), the streamed audio's SNR
against a one-shot decode of the same codes, the holdback latency, and the SNR of a few (left context,
holdback) settings, which is how the defaults were chosen.

    python benchmarks/stream_decode.py [--seconds 41] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from transformers import EncodecModel

from bridge.bench import random_codec
from engine.stream_decode import StreamingDecoder

FRAME_RATE = 50


def snr_db(test: np.ndarray, reference: np.ndarray) -> float:
    noise = float(((test - reference) ** 2).sum())
    signal = float(((reference - reference.mean(axis=-1, keepdims=True)) ** 2).sum())
    return 10 * np.log10(signal / max(noise, 1e-30))


def one_shot(codec: EncodecModel, codes: torch.Tensor) -> tuple[np.ndarray, float]:
    with torch.inference_mode():
        start = time.perf_counter()
        audio = codec.decode(codes[None, None], [None])[0][0].numpy()
        return audio, time.perf_counter() - start


def stream(decoder: StreamingDecoder, codes: torch.Tensor, chunk: int) -> tuple[np.ndarray, list[float]]:
    parts, times = [], []
    for i in range(0, codes.shape[1], chunk):
        start = time.perf_counter()
        parts.append(decoder.push(codes[:, i : i + chunk]))
        times.append(time.perf_counter() - start)
    parts.append(decoder.flush())
    return np.concatenate(parts, axis=1), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=41, help="stream length in 1 s chunks (>= 41 for chunk 40)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    codec = random_codec()
    chunk = FRAME_RATE  # 1 s
    codes = torch.randint(0, 2048, (4, args.seconds * FRAME_RATE), generator=torch.Generator().manual_seed(1))
    reference, one_shot_s = one_shot(codec, codes)

    per_chunk: list[list[float]] = []
    for _ in range(args.repeats):
        decoder = StreamingDecoder(codec, 1)
        audio, times = stream(decoder, codes, chunk)
        per_chunk.append(times)
    assert audio.shape == reference.shape, (audio.shape, reference.shape)
    median = [statistics.median(r[i] for r in per_chunk) * 1000 for i in range(len(per_chunk[0]))]
    best = [min(r[i] for r in per_chunk) * 1000 for i in range(len(per_chunk[0]))]  # least disturbed by others
    late = min(40, len(median) - 1)

    print(f"full-size 32 kHz EnCodec decoder, random weights, {torch.get_num_threads()} threads, 1 s chunks, "
          f"{args.repeats} repeats")
    print(f"defaults: left context {decoder.left_context} frames, holdback {decoder.holdback} frames")
    print()
    print("| measure                          |   median |      min |")
    print("|----------------------------------|----------|----------|")
    print(f"| decode ms, chunk 2               | {median[2]:8.1f} | {best[2]:8.1f} |")
    print(f"| decode ms, chunk {late:<2d}              | {median[late]:8.1f} | {best[late]:8.1f} |")
    ratios = median[late] / median[2], best[late] / best[2]
    print(f"| ratio chunk {late:<2d} / chunk 2         | {ratios[0]:8.2f} | {ratios[1]:8.2f} |")
    print(f"| decode ms, all chunks            | {statistics.median(median):8.1f} | {min(best):8.1f} |")
    print(f"| one-shot decode of {args.seconds:3d} s, ms     | {one_shot_s * 1000:8.1f} |          |")
    print(f"| SNR streamed vs one-shot, dB     | {snr_db(audio, reference):8.1f} |          |")
    print(f"| holdback latency, ms             | {decoder.latency_ms:8.1f} |          |")
    print()

    # How the defaults were picked: smallest settings whose seams vanish, on a shorter stream, small chunks.
    short = codes[:, : 5 * FRAME_RATE]
    short_reference, _ = one_shot(codec, short)
    print("| left context | holdback (ms) | SNR dB, 7-frame chunks |")
    print("|--------------|---------------|------------------------|")
    for left, hold in [(0, 3), (1, 3), (0, 4), (1, 4), (2, 4), (4, 8)]:
        audio, _ = stream(StreamingDecoder(codec, 1, left, hold), short, 7)
        print(f"| {left:12d} | {hold:4d} ({hold * 20:4d}) | {snr_db(audio, short_reference):22.1f} |")


if __name__ == "__main__":
    main()
