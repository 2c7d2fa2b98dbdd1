"""The codec off the critical path (issue 11.4): LM steps/s with and without a streaming decode running beside it,
and a jam-like stream's real-time factor with the codec inline or on a worker thread of 1 or 2 intra-op threads.

musicgen-small's shape with random weights (bridge/bench.py's checkpoint), guidance on, in the default dtype.
Every round runs every case back to back, so a ratio inside a round is taken on the same machine state.

- `LM alone`: a token stream's decoder steps/s, nothing else running.
- `LM + codec (N threads)`: the same while another thread decodes 1 s pushes of codes without pause on N threads
  (`engine.threads.set_thread_budget`); also the codec's own rate (seconds of audio decoded per second).
- `jam inline | worker N`: a `StreamSession` (1 s chunks, `--seconds` of audio) with the codec on the stream's
  thread (inline) or on a `CodecWorker` of N threads, whose thread goes on stepping the LM meanwhile: audio
  seconds per wall second (the real-time factor a jam on this engine would get).

    python benchmarks/codec_overlap.py [--rounds 2] [--steps 100] [--seconds 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import threading
import time

import torch

FRAME_RATE = 50
log = logging.getLogger("codec_overlap")


def lm_rate(model, steps: int) -> float:
    from engine.generate import open_stream
    from engine.sampling import SamplingSettings

    stream = open_stream(model, "codec overlap", SamplingSettings(seed=1), frames=steps)
    stream.step()  # the prefill is not a step
    t0 = time.perf_counter()
    n = 0
    while not stream.done:
        stream.step()
        n += 1
    return n / (time.perf_counter() - t0)


def with_codec(model, steps: int, threads: int) -> tuple[float, float]:
    """LM steps/s while another thread decodes without pause; and that decoder's audio seconds per second."""
    from engine.threads import set_thread_budget
    from engine.stream_decode import StreamingDecoder

    stop, decoded = threading.Event(), []

    def decode():
        set_thread_budget(threads)
        decoder = StreamingDecoder(model.codec.model, channels=model.channels)
        codes = torch.randint(0, 2048, (model.pattern.n_codebooks, FRAME_RATE), generator=torch.Generator().manual_seed(0))
        t0 = time.perf_counter()
        while not stop.is_set():
            decoder.push(codes)
            decoded.append(1.0)
        decoded.append(-(time.perf_counter() - t0))

    t = threading.Thread(target=decode)
    t.start()
    time.sleep(0.2)  # the decoder is under way
    rate = lm_rate(model, steps)
    stop.set()
    t.join()
    wall = -decoded.pop()
    return rate, sum(decoded) / wall


def jam_rtf(model, seconds: float, worker) -> float:
    from engine.sampling import SamplingSettings
    from engine.session import StreamSession

    session = StreamSession(model, "codec overlap jam", SamplingSettings(seed=2), seconds=seconds, chunk_seconds=1.0,
                            codec=worker)
    t0 = time.perf_counter()
    audio = sum(c.audio.shape[1] for c in session)
    return audio / model.sample_rate / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="auto")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(a.threads)

    from bridge.bench import DEFAULT_CACHE, ensure_checkpoint
    from engine.checkpoint import load_model
    from engine.codec_worker import CodecWorker
    from engine.generate import warm_up

    model = load_model(str(ensure_checkpoint(DEFAULT_CACHE)), device="cpu", dtype=a.dtype)
    warm_up(model)
    workers = {n: CodecWorker(threads=n) for n in (1, 2)}
    print(f"weights {model.lm.dtype}, {a.threads} threads; LM: {a.steps} guided steps; jam: {a.seconds:g} s in 1 s chunks")
    print("| round | LM alone (steps/s) | LM + codec 1 thr | codec 1 thr (audio s/s) | LM + codec 2 thr | "
          "codec 2 thr (audio s/s) | jam inline (RTF) | jam worker 1 thr | jam worker 2 thr |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    try:
        for k in range(a.rounds):
            alone = lm_rate(model, a.steps)
            log.info("LM alone %.2f", alone)
            lm1, c1 = with_codec(model, a.steps, 1)
            log.info("LM + codec 1 thread %.2f, codec %.2f", lm1, c1)
            lm2, c2 = with_codec(model, a.steps, 2)
            log.info("LM + codec 2 threads %.2f, codec %.2f", lm2, c2)
            inline = jam_rtf(model, a.seconds, None)
            log.info("jam inline %.3f", inline)
            w1, w2 = jam_rtf(model, a.seconds, workers[1]), jam_rtf(model, a.seconds, workers[2])
            print(f"| {k + 1} | {alone:.1f} | {lm1:.1f} | {c1:.1f} | {lm2:.1f} | {c2:.1f} | {inline:.3f} | {w1:.3f} | "
                  f"{w2:.3f} |", flush=True)
    finally:
        for w in workers.values():
            w.close()


if __name__ == "__main__":
    main()
