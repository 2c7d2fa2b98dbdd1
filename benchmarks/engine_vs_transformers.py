"""Our engine against transformers' `generate` on musicgen-small's shape: same machine, same run, steps/s.

Each configuration runs in its own subprocess (bridge/bench.py's workers: a random-weight checkpoint of the small
shape, loaded from disk as a real one is), guidance on, top-k 250. Rows are interleaved over `--repeats` rounds
and the median is reported, since other work on the machine moves single runs by 20% and more.

    python benchmarks/engine_vs_transformers.py [--steps 250] [--repeats 3] [--threads 2] [--int8]
"""

from __future__ import annotations

import argparse
import os
import statistics
from datetime import date

from bridge.bench import DEFAULT_CACHE, ensure_checkpoint, machine, run_row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--int8", action="store_true", help="also our int8 row")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE)
    a = p.parse_args()
    folder = ensure_checkpoint(a.cache_dir)
    rows = ["hf-fp32", "ours-fp32", "hf-bf16", "ours-bf16"] + (["ours-int8"] if a.int8 else [])
    runs: dict[str, list[float]] = {r: [] for r in rows}
    loads = []
    for i in range(a.repeats):
        for r in rows:
            runs[r].append(run_row(r, folder, a.steps, a.threads)["steps_per_s"])
            loads.append(os.getloadavg()[0])
            print(f"  round {i + 1} {r}: {runs[r][-1]:.1f} steps/s", flush=True)
    med = {r: statistics.median(v) for r, v in runs.items()}
    print(f"\n{machine()}; {a.threads} threads; {a.steps} steps; {a.repeats} rounds; {date.today()}; "
          f"load average during the run {min(loads):.1f}-{max(loads):.1f}")
    print("| dtype | transformers steps/s | ours steps/s | ours / transformers | ours, all rounds |")
    print("|---|---:|---:|---:|---|")
    for dt in ("fp32", "bf16"):
        hf, ours = med[f"hf-{dt}"], med[f"ours-{dt}"]
        print(f"| {dt} | {hf:.1f} | {ours:.1f} | {ours / hf:.2f}x | {', '.join(f'{x:.1f}' for x in runs[f'ours-{dt}'])} |")
    if a.int8:
        print(f"| int8 (ours) | - | {med['ours-int8']:.1f} | {med['ours-int8'] / med['hf-bf16']:.2f}x of transformers bf16 | "
              f"{', '.join(f'{x:.1f}' for x in runs['ours-int8'])} |")


if __name__ == "__main__":
    main()
