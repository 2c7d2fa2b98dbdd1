"""`musicgen-bridge bench --jam`: a jam through the real OSC server, driven as the device drives it.

The bridge server runs in this process on loopback ports; this module plays the device: `/transport` playing at
120 bpm 4/4 from beat 0, `/set chunk_bars 1`, `/jam/start`, then it records every `/chunk` with its arrival time
until the jam has delivered `seconds` of audio, and `/jam/stop`. Figures:
- chunks late: chunks that arrived after their song beat had started playing (the honest pacing says 0);
- real-time factor: the bridge's measured one (`/status`), seconds of audio made per second of generating;
- first bar: seconds from `/jam/start` to the song time of the first chunk's bar line (what a player waits);
- steps/s: decoder steps per second, as `/status` reports them;
- slow errors: `/error req slow` re-anchors during the run.
The model: musicgen-small's shape with random weights (as `bench` builds it), or `--model FOLDER`.
"""

from __future__ import annotations

import logging
import socket
import tempfile
import threading
import time
from pathlib import Path

from pythonosc.osc_packet import OscPacket
from pythonosc.udp_client import SimpleUDPClient

log = logging.getLogger(__name__)

BPM, NUMERATOR, DENOMINATOR = 120.0, 4, 4
REQ = 1


class _Device:
    """The device's side of the conversation: a reply socket that keeps (arrival time, address, args)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.messages: list[tuple[float, str, list]] = []
        self.cond = threading.Condition()
        self._closed = False
        threading.Thread(target=self._run, name="bench-device", daemon=True).start()

    def _run(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(65535)
            except OSError:
                continue
            now = time.monotonic()
            for m in OscPacket(data).messages:
                with self.cond:
                    self.messages.append((now, m.message.address, list(m.message.params)))
                    self.cond.notify_all()

    def wait(self, predicate, timeout: float) -> tuple[float, str, list] | None:
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                hit = next((m for m in self.messages if predicate(m[1], m[2])), None)
                if hit is not None or time.monotonic() >= end:
                    return hit
                self.cond.wait(max(0.0, min(0.5, end - time.monotonic())))

    def all(self, address: str) -> list[tuple[float, list]]:
        with self.cond:
            return [(t, a) for t, addr, a in self.messages if addr == address]

    def close(self) -> None:
        self._closed = True
        self.sock.close()


def run_jam_bench(model: str, seconds: float = 60.0, *, dtype: str | None = None, device: str = "cpu",
                  threads: int | None = None, out_dir: str | None = None, wrap_engine=None,
                  time_limit: float = 1200.0, prompt: str = "") -> dict:
    """Jam for `seconds` of audio through a real BridgeServer; returns the figures (see the module docstring)."""
    import torch

    from .server import BridgeServer, ServeConfig

    if threads:
        torch.set_num_threads(threads)
    tmp = tempfile.TemporaryDirectory(prefix="jam-bench-") if out_dir is None else None
    dev = _Device()
    config = ServeConfig(model=str(model), port=0, reply_port=dev.port, out_dir=out_dir or tmp.name, device=device,
                         wrap_engine=wrap_engine)
    if dtype:
        config.dtype = dtype
    server = BridgeServer(config)
    client = SimpleUDPClient("127.0.0.1", server.port)
    try:
        server.start()
        if dev.wait(lambda a, args: a == "/status" and args[0] in ("ready", "error"), 1800) is None or \
                server.state != "ready":
            raise RuntimeError(f"the bridge did not get ready: {server.state}")
        client.send_message("/set", ["chunk_bars", 1])
        t0 = time.monotonic()
        client.send_message("/transport", [1, BPM, NUMERATOR, DENOMINATOR, 0.0])
        client.send_message("/jam/start", [REQ, prompt])
        beat_s = 60.0 / BPM
        chunk_s = NUMERATOR * 4 / DENOMINATOR * beat_s
        need = int(-(-seconds // chunk_s))  # chunks that cover `seconds`
        # Past the time limit, the figures are of what was delivered by then (`complete` False).
        complete = dev.wait(lambda a, args: a == "/chunk" and args[1] == need - 1 or a == "/error" and
                            args[0] == REQ and args[1] != "slow", time_limit) is not None
        t_status = time.monotonic()
        client.send_message("/status", [])
        answer = dev.wait(lambda a, args: a == "/status" and dev.all("/status")[-1][0] >= t_status, 10)
        status = dev.all("/status")[-1][1] if answer else None
        client.send_message("/jam/stop", [REQ])
        dev.wait(lambda a, args: a in ("/done", "/error") and args[0] == REQ and args[1] != "slow", 120)
    finally:
        server.stop()
        dev.close()
        if tmp is not None:
            tmp.cleanup()
    chunks = [(t, a) for t, a in dev.all("/chunk") if a[0] == REQ][:need]
    if not chunks:
        raise RuntimeError(f"the jam delivered no chunk within {time_limit:g} s of /jam/start")
    errors = [a for _, a in dev.all("/error") if a[0] in (REQ, -1)]
    bad = [a for a in errors if a[1] not in ("slow", "engine_lost")]
    if bad:
        raise RuntimeError(f"the jam failed: {bad[0]}")
    time_of = lambda beat: t0 + beat * beat_s  # noqa: E731  (the transport was at beat 0 at t0)
    late = [a[1] for t, a in chunks if t > time_of(a[5])]
    first_t, first = chunks[0]
    return {
        "complete": complete,
        "wall_s": chunks[-1][0] - t0,
        "chunks": len(chunks),
        "audio_s": sum(a[4] for _, a in chunks) * beat_s,
        "chunks_late": len(late),
        "realtime": float(status[4]) if status else 0.0,
        "steps_per_s": float(status[2]) if status else 0.0,
        "dtype": status[5] if status else "",
        "first_bar_s": time_of(first[5]) - t0,
        "first_chunk_s": first_t - t0,
        "slow_errors": sum(1 for a in errors if a[1] == "slow"),
        "min_slack_s": min(time_of(a[5]) - t for t, a in chunks),
    }


def format_jam(result: dict, label: str) -> str:
    r = result
    return ("| model | dtype | audio s | chunks late | real-time factor | first bar after /jam/start (s) | "
            "first chunk (s) | steps/s | slow errors |\n|---|---|---|---|---|---|---|---|---|\n"
            f"| {label} | {r['dtype']} | {r['audio_s']:.0f} | {r['chunks_late']} / {r['chunks']} | "
            f"{r['realtime']:.2f} | {r['first_bar_s']:.1f} | {r['first_chunk_s']:.1f} | {r['steps_per_s']:.1f} | "
            f"{r['slow_errors']} |")


def run_jam_command(args) -> int:
    """The `bench --jam` entry: the small-shape checkpoint unless --model names one."""
    from .bench import ensure_checkpoint, machine

    shape = getattr(args, "shape", "small")
    device = getattr(args, "device", "cpu")
    model = args.model or str(ensure_checkpoint(args.cache_dir, shape))
    label = Path(model).name if args.model else f"{shape} shape, random weights"
    print(f"machine: {machine(device)}; jam of {args.jam_seconds:g} s at {BPM:g} bpm {NUMERATOR}/{DENOMINATOR}, 1-bar "
          "chunks, through the OSC server", flush=True)
    result = run_jam_bench(model, args.jam_seconds, dtype=args.jam_dtype or getattr(args, "dtype", None),
                           threads=args.threads, time_limit=args.jam_time_limit, device=device,
                           prompt=getattr(args, "jam_prompt", ""))
    print(format_jam(result, label))
    if not result["complete"]:
        print(f"(stopped at the time limit, {args.jam_time_limit:g} s, after {result['audio_s']:g} s of audio)")
    return 0
