"""The live output in a process of its own, so its audio callback never waits for the generating process.

The callback is Python (sounddevice), so it needs its interpreter's lock. In the bridge's own process that lock is
also taken by the jam, the engine's Python between decoder calls, tempo lock and the OSC server; when one of those
threads holds it and the machine is saturated, the thread can sit descheduled for longer than an audio period, and
the callback, realtime or not, waits: the device repeats a stale buffer (heard as a glitch) or runs dry. In a child
process whose only other thread copies arriving audio into the ring, the lock is free when the callback wants it.
Where the OS allows it, the child also runs at a raised priority (`raise_priority`), so that on a saturated machine
its threads are scheduled ahead of the generating process's.

`LiveOutputProcess` has `LiveOutput`'s producer interface (begin_take, push, finish, stop, underruns,
report_error, close) and forwards it over a pipe: JSON headers, audio as raw float32 bytes (nothing is unpickled).
Takes are scheduled in the child on arrival, at the monotonic time the parent chose (one clock for every process
on the machine); the audio goes through a queue to a feeder thread, so a full ring never blocks the parent; a stop
"now" takes effect at once, a stop at a time after the audio queued before it. If the child dies, pushes are dropped, and `report_error` says so once.
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
import queue
import threading
import time
from typing import Callable

import numpy as np

from engine.errors import Cancelled, UserError

from .audio_out import RING_SECONDS, LiveOutput

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0  # spawning imports numpy and PortAudio: seconds on a loaded machine
# The child's threads ahead of the generating process's on a saturated machine, where the OS lets a process raise
# its priority (root, CAP_SYS_NICE, or an RLIMIT_NICE allowance on Linux); otherwise it runs as it was.
NICE = -10
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


class RemoteTake:
    """The parent's handle on a take that lives in the child."""

    def __init__(self, ident: int):
        self.id = ident
        self.scheduled = False


class LiveOutputProcess:
    """`bridge.audio_out.LiveOutput` run in a child process (see the module docstring)."""

    def __init__(self, device: str, sample_rate: int, channels: int, *, ring_seconds: float = RING_SECONDS):
        ctx = multiprocessing.get_context("spawn")  # not fork: this process runs threads and torch
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child_main, name="live-output", daemon=True,
                                 args=(child, device, sample_rate, channels, ring_seconds,
                                       logging.getLogger().getEffectiveLevel()))
        self._child_end = child
        self._lock = threading.Lock()  # one request at a time on the pipe, from any thread
        self._ids = itertools.count()
        self._dead: str | None = None
        self._dead_reported = False
        self.device_name, self.rate, self.channels = device, sample_rate, channels
        self.priority = ""  # what the child got (`raise_priority`), once open

    def open(self) -> "LiveOutputProcess":
        self._proc.start()
        self._child_end.close()
        if not self._conn.poll(START_TIMEOUT_S):
            self._proc.kill()
            raise UserError(f"the live output process did not start within {START_TIMEOUT_S:.0f} s",
                            code="bad_args")
        try:
            reply = json.loads(self._conn.recv_bytes())
        except EOFError:
            raise UserError("the live output process exited while opening the device (see the log)",
                            code="bad_args") from None
        if not reply["ok"]:
            self._proc.join(5)
            raise UserError(reply["message"], code=reply["code"])
        self.device_name, self.rate, self.channels = reply["name"], reply["rate"], reply["channels"]
        self.priority = reply["priority"]
        log.info("live output process: %s", self.priority)
        return self

    # --- producer side, as LiveOutput ---

    def begin_take(self) -> RemoteTake:
        take = RemoteTake(next(self._ids))
        self._send({"op": "take", "take": take.id})
        return take

    def push(self, take: RemoteTake, audio: np.ndarray, start_at: Callable[[float], float],
             cancel: threading.Event | None = None) -> None:
        """As `LiveOutput.push`; never waits for the ring (the child queues what does not fit yet)."""
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if audio.ndim == 1:
            audio = audio[None]
        header = {"op": "push", "take": take.id, "channels": audio.shape[0], "frames": audio.shape[1]}
        if not take.scheduled:
            header["when"] = start_at(time.monotonic())
            take.scheduled = True
        self._send(header, audio.tobytes())

    def finish(self, take: RemoteTake) -> None:
        self._send({"op": "finish", "take": take.id})

    def stop(self, take: RemoteTake, at: float | None = None) -> None:
        self._send({"op": "stop", "take": take.id, "at": at})

    @property
    def underruns(self) -> int:
        stats = self._request({"op": "stats"})
        return stats["underruns"] if stats else 0

    def report_error(self) -> str | None:
        if self._dead is not None:
            if self._dead_reported:
                return None
            self._dead_reported = True
            return f"live output: {self._dead}; results still arrive as files"
        stats = self._request({"op": "stats"})
        return stats.get("error") if stats else None

    def close(self) -> None:
        self._send({"op": "close"})
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._conn.close()

    # --- the pipe ---

    def _send(self, header: dict, payload: bytes | None = None) -> None:
        with self._lock:
            self._send_locked(header, payload)

    def _send_locked(self, header: dict, payload: bytes | None) -> None:
        if self._dead is not None:
            return
        try:
            self._conn.send_bytes(json.dumps(header).encode())
            if payload is not None:
                self._conn.send_bytes(payload)
        except (OSError, EOFError, ValueError) as exc:  # ValueError: the connection was closed
            self._died(exc)

    def _request(self, header: dict) -> dict | None:
        with self._lock:
            self._send_locked(header, None)
            if self._dead is not None:
                return None
            try:
                if self._conn.poll(5):
                    return json.loads(self._conn.recv_bytes())
                self._died(TimeoutError("no answer within 5 s"))
            except (OSError, EOFError) as exc:
                self._died(exc)
            return None

    def _died(self, exc: BaseException) -> None:
        code = self._proc.exitcode
        self._dead = f"the audio process stopped ({type(exc).__name__}, exit code {code})"
        log.error("live output: %s: live audio is off", self._dead)


# --- the child ---

def raise_priority(nice: int = NICE) -> str:
    """Raise this process's priority to `nice` where the OS allows it, before it starts the threads that play
    (they inherit it). Never raises; says what it got."""
    if not hasattr(os, "setpriority"):
        return "normal priority (this OS has no setpriority)"
    # Linux: a nice value is per thread; the threads started by imports (OpenBLAS's pool) are raised too.
    threads = [int(t) for t in os.listdir("/proc/self/task")] if os.path.isdir("/proc/self/task") else [0]
    try:
        for thread in threads:
            os.setpriority(os.PRIO_PROCESS, thread, nice)
    except OSError as exc:
        return (f"normal priority (raising it to nice {nice} was refused: {exc.strerror}; it needs root, "
                "CAP_SYS_NICE or an RLIMIT_NICE allowance)")
    return f"nice {os.getpriority(os.PRIO_PROCESS, 0)}"


def _child_main(conn, device: str, sample_rate: int, channels: int, ring_seconds: float, level: int) -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT)
    priority = raise_priority()  # first: PortAudio's callback thread and the feeder inherit it
    try:
        live = LiveOutput(device, sample_rate, channels, ring_seconds=ring_seconds).open()
    except UserError as exc:
        conn.send_bytes(json.dumps({"ok": False, "code": exc.code, "message": str(exc)}).encode())
        return
    conn.send_bytes(json.dumps({"ok": True, "name": live.device_name, "rate": live.rate,
                                "channels": live.channels, "priority": priority}).encode())
    try:
        _ChildOutput(live, conn).run()
    finally:
        live.close()


class _ChildOutput:
    """The child's command loop: schedules and stops at once, hands audio to a feeder thread in order."""

    def __init__(self, live: LiveOutput, conn):
        self.live, self.conn = live, conn
        self.takes: dict[int, object] = {}
        self.feed: queue.Queue = queue.Queue()
        self.feeder = threading.Thread(target=self._feed, name="live-output-feeder", daemon=True)

    def run(self) -> None:
        self.feeder.start()
        try:
            while True:
                try:
                    msg = json.loads(self.conn.recv_bytes())
                except EOFError:  # the bridge went away, however it went
                    return
                if msg["op"] == "close":
                    return
                self._handle(msg)
        finally:
            self.feed.put(None)

    def _handle(self, msg: dict) -> None:
        op, live = msg["op"], self.live
        if op == "stats":
            self.conn.send_bytes(json.dumps({"underruns": live.underruns, "error": live.report_error()}).encode())
            return
        if op == "take":
            self.takes = {k: t for k, t in self.takes.items() if not t.done}
            self.takes[msg["take"]] = live.begin_take()
            return
        take = self.takes.get(msg["take"])
        if op == "push":
            audio = np.frombuffer(self.conn.recv_bytes(), np.float32).reshape(msg["channels"], msg["frames"])
            if take is None:
                return
            if "when" in msg:
                live.schedule(take, msg["when"])
            self.feed.put(("write", take, audio))
        elif op == "finish" and take is not None:
            self.feed.put(("finish", take, None))
        elif op == "stop" and take is not None:
            if msg["at"] is None:
                live.stop(take)  # silence now, whatever is queued
            else:  # after the audio queued before it, as in the bridge's own order
                self.feed.put(("stop", take, msg["at"]))

    def _feed(self) -> None:
        while (item := self.feed.get()) is not None:
            kind, take, arg = item
            if kind == "write":
                if not take.done:
                    self.live.write(take, arg)
            elif kind == "finish":
                self.live.finish(take)
            else:
                self.live.stop(take, arg)
