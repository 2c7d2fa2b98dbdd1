"""Cross-attention folded into the text (engine/lm.py, CrossAttention) against the projections, in one process:
guided decode steps/s of a whole generation for a short and a longer prompt, rounds interleaved, or with --jam
60 s jams through the OSC server (bridge/jam_bench.py), alternating, each in a fresh process. "unfolded" turns the fold off
(`MusicGenLM.can_fold`), everything else equal.

    python benchmarks/cross_fold.py [--rounds 3] [--frames 150] [--threads 2] [--cache-dir /tmp/benchckpt]
    python benchmarks/cross_fold.py --jam [--rounds 2] [--prompt TEXT]
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time

PROMPTS = ("120 bpm", "warm lo-fi hip hop beat with dusty piano chords and soft vinyl crackle, 120 bpm")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", default=None, help="where the small-shape checkpoint is kept (default: bench's)")
    p.add_argument("--jam", action="store_true", help="60 s jams through the OSC server instead")
    p.add_argument("--prompt", default="", help="with --jam: the jam's prompt")
    p.add_argument("--jam-once", choices=("folded", "unfolded"), help=argparse.SUPPRESS)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    from bridge.bench import DEFAULT_CACHE, ensure_checkpoint
    from engine.lm import MusicGenLM

    torch.set_num_threads(a.threads)
    folder = str(ensure_checkpoint(a.cache_dir or DEFAULT_CACHE))
    can_fold = MusicGenLM.can_fold

    def fold(on: bool) -> None:
        MusicGenLM.can_fold = can_fold if on else (lambda self: False)

    if a.jam_once:  # one jam in this process (a second server in one process would share its cores with the first's)
        from bridge.jam_bench import format_jam, run_jam_bench

        fold(a.jam_once == "folded")
        print(format_jam(run_jam_bench(folder, 60.0, dtype="w8a8", threads=a.threads, prompt=a.prompt), a.jam_once))
        return
    if a.jam:
        for r in range(a.rounds):
            for mode in ("folded", "unfolded"):
                args = [sys.executable, __file__, "--jam-once", mode, "--threads", str(a.threads), "--prompt", a.prompt,
                        *(["--cache-dir", a.cache_dir] if a.cache_dir else [])]
                out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
                print(f"round {r + 1}: {out.strip().splitlines()[-1]}", flush=True)
        return

    from engine.checkpoint import load_model
    from engine.generate import open_stream
    from engine.sampling import SamplingSettings

    model = load_model(folder, device="cpu", dtype="w8a8")
    for on in (True, False):  # each mode's step traced before timing
        fold(on)
        open_stream(model, PROMPTS[0], SamplingSettings(cfg=3.0, seed=0), frames=4).run()
    print("| round | prompt (text keys) | folded steps/s | unfolded steps/s | ratio |\n|---:|---|---:|---:|---:|")
    for r in range(a.rounds):
        for prompt in PROMPTS:
            rate = {}
            for on in (True, False):
                fold(on)
                stream = open_stream(model, prompt, SamplingSettings(cfg=3.0, seed=r), frames=a.frames)
                t0 = time.perf_counter()
                stream.run()
                rate[on] = stream.steps / (time.perf_counter() - t0)
                assert (model.lm.layers[0].cross.p is not None) == on
            keys = model.lm.layers[0].cross.k.shape[2]
            print(f"| {r + 1} | {prompt[:24]}... ({keys}) | {rate[True]:.1f} | {rate[False]:.1f} | "
                  f"{rate[True] / rate[False]:.3f} |", flush=True)
    fold(True)


if __name__ == "__main__":
    main()
