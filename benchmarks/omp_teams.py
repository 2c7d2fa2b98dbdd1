"""What other threads' torch work costs the LM's steps, and what engine/threads.py wins back.

musicgen-small's decoder (random weights, `--dtype`, default w8a8 = `--dtype auto` on CPU), batch 2 (guidance),
the traced step at a 10 s context with per-row positions (as the batching engine runs it), on a thread of its own
with the intra-op budget (`--threads`). Each round runs every case for `--seconds` and reports the median step:

- alone: nothing else in the process uses torch;
- second team: another live thread once ran a parallel op on the same budget (a session's T5 pass, a loader that
  stayed alive) and now just runs a small op every 10 ms: libgomp's teams no longer fit the cores;
- codec beside, no sharing: a 1-thread EnCodec decode of 2 s of codes runs beside, back to back;
- codec beside, sharing: the same, as `side_work`, with the step taking `LMThreads.step()` first.

    python benchmarks/omp_teams.py [--threads 2] [--rounds 3] [--seconds 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import torch

from engine.assemble import build_lm
from engine.lm import LMConfig, MusicGenLM
from engine.steps import decode_step
from engine.threads import LMThreads, in_own_thread, set_thread_budget, side_work

CONTEXT = 500


def build(dtype: torch.dtype) -> MusicGenLM:
    torch.manual_seed(0)
    cfg = LMConfig()
    lm = build_lm(cfg, MusicGenLM(cfg).state_dict(), torch.device("cpu"), dtype)
    lm.setup_caches(2, 1504)
    lm.set_condition(torch.randn(2, 12, cfg.dim))
    return lm


def codec():
    """A 32 kHz EnCodec decoder shaped like musicgen-small's (random weights) and 2 s of codes."""
    from transformers import EncodecModel

    from engine.codec import musicgen_codec_config

    return EncodecModel(musicgen_codec_config()).eval(), torch.randint(0, 2048, (1, 1, 4, 100))


class Case:
    """Steps on a thread of its own while `beside` runs on another; median ms per step."""

    def __init__(self, lm: MusicGenLM, threads: int, seconds: float, share: bool):
        self.lm, self.threads, self.seconds, self.share = lm, threads, seconds, share

    def run(self, beside=None) -> float:
        stop, times = threading.Event(), []
        other = threading.Thread(target=beside, args=(stop,), daemon=True) if beside else None
        if other:
            other.start()
            time.sleep(0.3)

        def steps():
            set_thread_budget(self.threads)
            cores = LMThreads(self.threads) if self.share else None
            decode = decode_step(self.lm, "traced")
            tokens, pos = torch.full((2, 4, 1), 5), torch.full((2, 1), CONTEXT - 1)
            with torch.inference_mode():
                end = time.perf_counter() + self.seconds
                while time.perf_counter() < end:
                    if cores:
                        cores.step()
                    t = time.perf_counter()
                    decode(tokens, pos, CONTEXT)
                    times.append(time.perf_counter() - t)
                if cores:
                    cores.idle()

        t = threading.Thread(target=steps)
        t.start()
        t.join()
        stop.set()
        if other:
            other.join()
        return statistics.median(times) * 1000


def second_team(threads: int):
    def run(stop: threading.Event) -> None:
        set_thread_budget(threads)
        a = torch.randn(512, 512)
        _ = torch.tanh(a @ a)  # a parallel op: this thread now leads a team
        x = torch.randn(64, 1024)
        while not stop.is_set():
            torch.nn.functional.layer_norm(x, (1024,))
            time.sleep(0.01)
    return run


def codec_beside(model, codes, share: bool):
    def run(stop: threading.Event) -> None:
        set_thread_budget(1)
        with torch.inference_mode():
            while not stop.is_set():
                if share:
                    with side_work():
                        model.decode(codes, [None])
                else:
                    model.decode(codes, [None])
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--dtype", default="qint8", help="linear weights (qint8 = w8a8, the CPU default)")
    a = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(a.threads)
    # Built on threads that end: this (main) thread must not keep a team of its own, or every case has two.
    lm = in_own_thread(build, getattr(torch, a.dtype))
    enc, codes = in_own_thread(codec)
    plain, shared = Case(lm, a.threads, a.seconds, False), Case(lm, a.threads, a.seconds, True)
    cases = {
        "alone": lambda: plain.run(),
        "second team": lambda: plain.run(second_team(a.threads)),
        "codec beside, no sharing": lambda: plain.run(codec_beside(enc, codes, False)),
        "codec beside, sharing": lambda: shared.run(codec_beside(enc, codes, True)),
    }
    rows: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(a.rounds):
        order = list(cases) if r % 2 == 0 else list(reversed(cases))
        for name in order:
            rows[name].append(cases[name]())
        print(f"round {r + 1}: " + ", ".join(f"{k} {rows[k][-1]:.1f}" for k in cases) + " ms/step", flush=True)
    print(f"\n{a.dtype} weights, {a.threads} threads, batch 2, context {CONTEXT}, {a.rounds} rounds x {a.seconds:g} s, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| case | ms/step, every round | median | vs alone |\n|---|---|---:|---:|")
    base = statistics.median(rows["alone"])
    for name, v in rows.items():
        m = statistics.median(v)
        print(f"| {name} | {' / '.join(f'{x:.1f}' for x in v)} | {m:.1f} | {m / base:.2f}x |")


if __name__ == "__main__":
    main()
