"""The bridge driven by an independent OSC implementation: liblo's `oscsend` and `oscdump -L` (Debian
liblo-tools), so the wire format is checked by something other than python-osc."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import threading
import time

import pytest
import soundfile as sf

from bridge import protocol
from tests.test_server_harness import Bridge

LINE = re.compile(r'^(?:\S+ )?(/\S+) (\S+)(.*)$')  # oscdump: [timetag] /address types args


class OscDump:
    """`oscdump -L PORT`, its lines parsed as (address, types, args)."""

    def __init__(self, port: int):
        assert shutil.which("oscdump") and shutil.which("oscsend"), "liblo-tools missing: run scripts/setup.sh"
        self.proc = subprocess.Popen(["oscdump", "-L", str(port)], stdout=subprocess.PIPE, text=True)
        self.lines: list[tuple[str, str, list]] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            m = LINE.match(line.strip())
            if m:
                with self.cond:
                    self.lines.append((m.group(1), m.group(2), _args(m.group(3))))
                    self.cond.notify_all()

    def wait(self, address: str, match=lambda a: True, timeout: float = 30.0):
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for entry in self.lines:
                    if entry[0] == address and match(entry[2]):
                        return entry
                if not self.cond.wait(max(0.0, end - time.monotonic())) and time.monotonic() >= end:
                    raise AssertionError(f"oscdump saw no {address}; saw {self.lines[-10:]}")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def _args(text: str) -> list:
    out = []
    for m in re.finditer(r'"((?:[^"\\]|\\.)*)"|(\S+)', text):
        if m.group(1) is not None:
            out.append(m.group(1))
        else:
            tok = m.group(2)
            out.append(float(tok) if "." in tok or "e" in tok else int(tok))
    return out


def oscsend(port: int, address: str, types: str = "", *args) -> None:
    cmd = ["oscsend", "127.0.0.1", str(port), address] + ([types, *map(str, args)] if types else [])
    subprocess.run(cmd, check=True, timeout=10)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("liblo")
    b = Bridge(tmp, listen=False)
    dump = OscDump(b.reply_port)
    try:
        deadline = time.monotonic() + 60
        while True:  # oscdump may start after the first status; ask until it says ready
            oscsend(b.port, "/status")
            try:
                dump.wait("/status", lambda a: a[0] == "ready", timeout=0.5)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
        yield b, dump
    finally:
        dump.close()
        assert b.stop(signal.SIGTERM) == 0


def test_liblo_ping_pong(served):
    b, dump = served
    oscsend(b.port, "/ping", "i", 4242)
    address, types, args = dump.wait("/pong", lambda a: a[0] == 4242)
    assert types == "is" and args == [4242, protocol.VERSION]


def test_liblo_generate_exact_bars(served):
    b, dump = served
    oscsend(b.port, "/tempo", "fii", 97.0, 7, 8)
    oscsend(b.port, "/generate", "isi", 7, "", 2)
    assert dump.wait("/ack", lambda a: a[0] == 7)[1:] == ("is", [7, "/generate"])
    address, types, args = dump.wait("/done", lambda a: a[0] == 7, timeout=60)
    assert types == "isff"
    audio, sr = sf.read(args[1], always_2d=True)
    assert audio.shape[0] == 138557 and args[3] == 2.0  # 2 bars x 3.5 x 60/97 s x 32000 = 138556.7


def test_liblo_wrong_types_and_odd_types_get_errors(served):
    b, dump = served
    oscsend(b.port, "/generate", "sss", "a", "b", "c")
    _, types, args = dump.wait("/error", lambda a: "/generate expects" in a[2])
    assert types == "iss" and args[:2] == [-1, "bad_args"]
    oscsend(b.port, "/ping", "d", 1.5)  # a double with a fraction is not an int
    dump.wait("/error", lambda a: "/ping expects" in a[2] and "whole number" in a[2])
    oscsend(b.port, "/tempo", "f", "nan")
    dump.wait("/error", lambda a: "/tempo" in a[2] and "finite" in a[2])
    oscsend(b.port, "/set", "sT", "bpm_in_prompt")  # OSC true: 1
    oscsend(b.port, "/set", "sN", "top_k")  # OSC nil: not a number
    dump.wait("/error", lambda a: "/set" in a[2] and "None" in a[2])
    oscsend(b.port, "/ping", "h", 2**40)  # int64 out of int32 range
    dump.wait("/error", lambda a: "/ping" in a[2] and "must be in" in a[2])
    oscsend(b.port, "/ping", "f", 9.0)  # a whole float where an int is expected is fine
    dump.wait("/pong", lambda a: a[0] == 9)
