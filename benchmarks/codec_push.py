"""What one streamed codec push costs on the full-size 32 kHz decoder (random weights): torch's modules, then
with the polyphase transposed convs (engine/polyphase.py), then also the unrolled LSTM (engine/unrolled_lstm.py),
then its recurrent weights in fp16 (as the engine runs it on a CPU with AVX2); alternating rounds on one thread (the codec worker's budget), with the LSTM's share.

    python benchmarks/codec_push.py [--frames 22] [--pushes 20] [--rounds 3] [--threads 1]

22 frames is a jam's typical push (benchmarks/RESULTS.md). Prints ms per push and the codec's CPU seconds per
second of audio.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from bridge.bench import random_codec
from engine.codec import fold_weight_norm, swap_modules
from engine.polyphase import PolyphaseConvTranspose1d, polyphase_fits
from engine.unrolled_lstm import UnrolledLSTM, unrolled_fits
from engine.stream_decode import StreamingDecoder

FRAME_RATE = 50


class StageClock:
    """Wall time inside the decoder's LSTM stage, measured by wrapping its method."""

    def __init__(self, decoder: StreamingDecoder):
        self.lstm_s = 0.0
        run = decoder._run_lstm

        def timed(final: bool) -> None:
            start = time.perf_counter()
            run(final)
            self.lstm_s += time.perf_counter() - start

        decoder._run_lstm = timed


def push_ms(codec, codes: torch.Tensor, frames: int, pushes: int) -> tuple[float, float]:
    """Median ms per push, and the LSTM's share of the total, after 3 warm-up pushes."""
    decoder = StreamingDecoder(codec, 1)
    clock = StageClock(decoder)
    times = []
    with torch.inference_mode():
        for i in range(pushes + 3):
            if i == 3:
                clock.lstm_s = 0.0
            start = time.perf_counter()
            decoder.push(codes[:, i * frames : (i + 1) * frames])
            if i >= 3:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, clock.lstm_s / sum(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=22)
    p.add_argument("--pushes", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch_convs = random_codec()
    fold_weight_norm(torch_convs)
    polyphase = copy.deepcopy(torch_convs)
    swap_modules(polyphase.decoder, polyphase_fits, PolyphaseConvTranspose1d)
    unrolled = copy.deepcopy(polyphase)
    swap_modules(unrolled.decoder, unrolled_fits, UnrolledLSTM)
    half = copy.deepcopy(polyphase)
    swap_modules(half.decoder, unrolled_fits, lambda lstm: UnrolledLSTM(lstm, half_recurrent=True))
    codes = torch.randint(0, 2048, (4, (a.pushes + 3) * a.frames), generator=torch.Generator().manual_seed(1))
    print(f"{a.frames}-frame pushes, {a.pushes} per round, {a.threads} thread(s)")
    print("| round | variant | ms per push | LSTM share | codec s per s of audio |\n|---:|---|---:|---:|---:|")
    for r in range(a.rounds):
        for name, codec in (("torch", torch_convs), ("+ polyphase convs", polyphase),
                             ("+ unrolled LSTM", unrolled), ("+ fp16 recurrent weights (engine)", half)):
            ms, lstm = push_ms(codec, codes, a.frames, a.pushes)
            print(f"| {r + 1} | {name} | {ms:.1f} | {lstm:.0%} | {ms / 1000 / (a.frames / FRAME_RATE):.3f} |")


if __name__ == "__main__":
    main()
