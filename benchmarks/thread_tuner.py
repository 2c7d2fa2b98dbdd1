"""The LM's thread count under another program's load: tuned (engine/thread_tuner.py) against fixed counts.

Each case runs in a fresh process while `--busy` shell loops (`while :; do :; done`, another program holding a core)
run beside it: `bench --rows ours-w8a8` (decoder steps/s) or, with `--jam`, `bench --jam` (real-time factor, first
bar). Cases: the tuner within 2 threads (what ships), 2 threads fixed (the tuner off: what shipped before), 1 thread
fixed. Rounds interleave the cases, so the host's hour moves them alike.

    python benchmarks/thread_tuner.py [--busy 1] [--rounds 2] [--jam] [--cache-dir /tmp/benchckpt]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The tuner off, in the bench process and in the row workers it starts: a sitecustomize on their path.
UNTUNED = ("import engine.threads as t\n"
           "t.LMThreads.for_device = classmethod(lambda cls, device: cls())\n")
CASES = {  # name: (threads, tuner on)
    "tuned, at most 2": (2, True),
    "2 fixed (untuned)": (2, False),
    "1 fixed": (1, True),
}


def run_case(threads: int, tuned: bool, jam: bool, cache_dir: str | None, busy: int) -> str:
    args = ["bench"] + (["--jam"] if jam else ["--rows", "ours-w8a8", "--steps", "300"])
    args += ["--threads", str(threads)] + (["--cache-dir", cache_dir] if cache_dir else [])
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as site:
        if not tuned:
            Path(site, "sitecustomize.py").write_text(UNTUNED)
            env["PYTHONPATH"] = os.pathsep.join([site, str(ROOT), env.get("PYTHONPATH", "")])
        loops = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(busy)]
        try:
            out = subprocess.run([sys.executable, "-m", "bridge.cli", *args], capture_output=True, text=True, env=env,
                                 cwd=ROOT).stdout
        finally:
            for p in loops:
                p.kill()
                p.wait()
    rows = [line for line in out.splitlines() if line.startswith("| small") or line.startswith("| ours-w8a8")]
    return rows[-1] if rows else f"(no result: {out[-300:]})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--busy", type=int, default=1, help="shell loops holding a core each")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--jam", action="store_true", help="a 60 s jam per case instead of decoder steps")
    p.add_argument("--cache-dir", default=None)
    a = p.parse_args()
    print(f"{a.busy} busy loop(s); {'bench --jam' if a.jam else 'bench --rows ours-w8a8 --steps 300'}", flush=True)
    for r in range(1, a.rounds + 1):
        for name, (threads, tuned) in CASES.items():
            print(f"round {r} | {name} {run_case(threads, tuned, a.jam, a.cache_dir, a.busy)}", flush=True)


if __name__ == "__main__":
    main()
