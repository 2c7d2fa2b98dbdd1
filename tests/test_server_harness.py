"""Shared pieces for the bridge server tests (no tests here): the server as a subprocess, an OSC listener on the
reply port, and a JACK server with the dummy driver."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pythonosc.osc_packet import OscPacket
from pythonosc.udp_client import SimpleUDPClient

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = ("/done", "/error")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Listener:
    """Receives everything the bridge sends to the reply port; keeps (time, address, args) in order."""

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str, list]] = []
        self.cond = threading.Condition()
        self._closed = False
        self._taken: set[int] = set()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(65535)
            except (socket.timeout, OSError):
                continue
            for m in OscPacket(data).messages:
                with self.cond:
                    self.messages.append((time.monotonic(), m.message.address, list(m.message.params)))
                    self.cond.notify_all()

    def wait(self, address: str | tuple, match=None, timeout: float = 30.0, take: bool = True):
        """The first message (not taken before) at `address` whose args satisfy `match`; AssertionError on
        timeout, with what did arrive."""
        addresses = (address,) if isinstance(address, str) else address
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for i, (_, a, args) in enumerate(self.messages):
                    if i not in self._taken and a in addresses and (match is None or match(args)):
                        if take:
                            self._taken.add(i)
                        return a, args
                left = end - time.monotonic()
                if left <= 0:
                    recent = [(a, args) for _, a, args in self.messages[-15:] if a != "/heartbeat"]
                    raise AssertionError(f"no {addresses} matching within {timeout} s; last: {recent}")
                self.cond.wait(left)

    def result(self, req: int, timeout: float = 60.0):
        """The /done or /error that ends request `req` (`/error req slow` does not end a jam: it goes on later)."""
        return self.wait(TERMINAL, lambda a: a[0] == req and a[1] != "slow", timeout)

    def all(self, address: str, match=None) -> list[list]:
        with self.cond:
            return [args for _, a, args in self.messages if a == address and (match is None or match(args))]

    def timed(self, address: str, match=None) -> list[tuple[float, list]]:
        with self.cond:
            return [(t, args) for t, a, args in self.messages if a == address and (match is None or match(args))]

    def close(self) -> None:
        self._closed = True
        self.sock.close()


class Bridge:
    """`musicgen-bridge serve` in a subprocess, driven with python-osc."""

    def __init__(self, tmp: Path, *extra: str, model: str = "random-tiny", env: dict | None = None,
                 listen: bool = True):
        self.port, self.reply_port = free_udp_port(), free_udp_port()
        self.out_dir = tmp / "out"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = tmp / f"bridge-{self.port}.log"
        self.listener = Listener(self.reply_port) if listen else None
        self.client = SimpleUDPClient("127.0.0.1", self.port)
        cmd = [sys.executable, "-m", "bridge.cli", "serve", "--model", model, "--device", "cpu",
               "--port", str(self.port), "--reply-port", str(self.reply_port), "--out-dir", str(self.out_dir),
               *extra]
        self._log = open(self.log_path, "w")
        self.started = time.monotonic()
        # One torch thread: test machines are small and shared, and OpenMP workers spinning on an oversubscribed
        # CPU can make a 20-step render take seconds.
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                                          **(env or {})})
        self._nonce = 0

    def send(self, address: str, *args) -> None:
        self.client.send_message(address, list(args))

    def ping(self, timeout: float = 10.0) -> list:
        """/ping until a /pong comes back (a datagram sent before the server binds is lost, as on a network)."""
        end = time.monotonic() + timeout
        first = self._nonce + 1
        while True:
            self._nonce += 1
            self.send("/ping", self._nonce)
            try:
                return self.listener.wait("/pong", lambda a: first <= a[0] <= self._nonce, 0.25)[1]
            except AssertionError:
                if time.monotonic() > end:
                    raise

    def wait_ready(self, timeout: float = 90.0) -> None:
        self.listener.wait("/status", lambda a: a[0] == "ready", timeout, take=False)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"the bridge did not exit within {timeout} s of signal {sig}") from None
        if self.listener:
            self.listener.close()
        self._log.close()
        return self.proc.returncode


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, however it dies. A jackd orphaned by a killed or timed-out
    run keeps its slot, and JACK allows only a few servers at once ("Too many servers already active")."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Jack:
    """A JACK server with the dummy driver (a real audio graph, no sound card), under its own server name so it
    never meets a JACK server someone else runs. Clients find it through JACK_DEFAULT_SERVER. Realtime (-R), as
    an audio system runs its clients' process callbacks: on a saturated machine a non-realtime dummy driver loses
    cycles itself. Without the privilege jackd says so and runs without."""

    def __init__(self, rate: int = 32000, period: int = 256):
        if not shutil.which("jackd"):
            raise AssertionError("jackd is not installed: run scripts/setup.sh (Debian package jackd2)")
        self.name = f"mgb-test-{os.getpid()}"
        self.env = {"JACK_DEFAULT_SERVER": self.name, "JACK_NO_AUDIO_RESERVATION": "1"}
        self.proc = subprocess.Popen(["jackd", "-R", "-P", "70", "-n", self.name, "-d", "dummy", "-r", str(rate),
                                      "-p", str(period)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env={**os.environ, **self.env}, preexec_fn=_die_with_parent)
        end = time.monotonic() + 15
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"jackd exited: {self.proc.stderr.read().decode(errors='replace')[-500:]}")
            if subprocess.run(["jack_lsp"], capture_output=True, env={**os.environ, **self.env}).returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError("jackd did not come up within 15 s")

    def run(self, *cmd: str) -> str:
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **self.env}, timeout=10)
        assert out.returncode == 0, f"{cmd}: {out.stderr}"
        return out.stdout

    def ports(self) -> list[str]:
        return [p for p in self.run("jack_lsp").splitlines() if p.strip()]

    def connect(self, src: str, dst: str) -> None:
        self.run("jack_connect", src, dst)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_jack: Jack | None = None


def _stop_jack() -> None:
    if _jack is not None:
        import sounddevice as sd

        while sd._initialized:  # PortAudio must let go of JACK first, or it aborts at exit
            sd._terminate()
        _jack.stop()


@pytest.fixture(scope="session")
def jack_server():
    """A running JACK dummy server, one for the whole run (modules importing this fixture share it; it stops
    when the test process ends). This process's PortAudio is re-initialised so that it sees the server."""
    global _jack
    if _jack is None:
        _jack = Jack()
        atexit.register(_stop_jack)
        os.environ.update(_jack.env)
        import sounddevice as sd

        sd._terminate()
        sd._initialize()
    return _jack


@contextlib.contextmanager
def serving(folder, *args: str, **kwargs):
    """A ready bridge for the block, stopped with SIGTERM afterwards (which must exit 0)."""
    b = Bridge(folder, *args, **kwargs)
    try:
        b.ping(timeout=20)
        b.wait_ready()
        yield b
    finally:
        assert b.stop(signal.SIGTERM) == 0
