"""Fuzz: >= 10,000 random and malformed datagrams at a bounded rate; the bridge must answer every bad one with
/error (never 'internal'), log no traceback, and afterwards still answer /ping and render a job."""

from __future__ import annotations

import random
import struct
import time

import pytest
import soundfile as sf
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge import protocol
from tests.test_server_harness import serving

PACKETS = 10_000
RATE = 2000  # datagrams per second at most (loopback; the point is robustness, not a flood)


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (4 - len(b) % 4)


def _raw_message(address: str, tags: str, payload: bytes) -> bytes:
    return _pad(address.encode("utf-8", "replace")) + _pad(("," + tags).encode()) + payload


class Fuzzer:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.addresses = [m.address for m in protocol.MESSAGES if m.direction == "in"]

    def value(self):
        r = self.rng
        return r.choice([
            lambda: r.randint(-2**31, 2**31 - 1),
            lambda: r.choice([0, 1, -1, 2**31 - 1, -2**31, 64, 65]),
            lambda: r.uniform(-1e6, 1e6),
            lambda: r.choice([float("nan"), float("inf"), float("-inf"), -0.0, 1e38, -1e38, 3.4e38]),
            lambda: "",
            lambda: "x" * r.choice([1, 64, 501, 1025, 5000, 40000]),
            lambda: "".join(chr(r.randint(1, 0x2FF)) for _ in range(r.randint(1, 30))),
            lambda: r.choice(["/etc/passwd", "../../x.wav", "/tmp/none.wav", "prompt", "top_k", "seed",
                              "techno-drums", "..", "/"]),
            lambda: bytes(r.getrandbits(8) for _ in range(r.randint(1, 40))),  # blob (python-osc builds no empty one)
            lambda: r.choice([True, False, None]),
            lambda: [r.randint(0, 9), "a"],  # an OSC array
        ])()

    def message(self) -> bytes:
        r = self.rng
        address = r.choice(self.addresses + ["/", "/*", "/gen*", "/nope", "/jam", "//", "/melody/notes/x"])
        builder = OscMessageBuilder(address=address)
        for _ in range(r.choice([0, 1, 2, 3, 4, 5, 8, 40])):
            v = self.value()
            if isinstance(v, float) and r.random() < 0.3:
                builder.add_arg(v, "d")  # doubles, which Max never sends
            elif isinstance(v, int) and not isinstance(v, bool) and r.random() < 0.2:
                builder.add_arg(v * 2**20, "h")  # int64
            else:
                builder.add_arg(v)
        return builder.build().dgram

    def packet(self) -> bytes:
        r = self.rng
        kind = r.random()
        if kind < 0.15:
            return bytes(r.getrandbits(8) for _ in range(r.randint(0, 200)))
        if kind < 0.30:  # truncated or bit-flipped OSC
            data = bytearray(self.message())
            if r.random() < 0.5 and len(data) > 1:
                return bytes(data[: r.randint(1, len(data) - 1)])
            for _ in range(r.randint(1, 4)):
                data[r.randrange(len(data))] = r.getrandbits(8)
            return bytes(data)
        if kind < 0.38:  # type tags that do not match the payload, unknown tags, bogus lengths
            tags = "".join(r.choice("ifsbhdTFNIcrmt[]?X") for _ in range(r.randint(0, 6)))
            payload = bytes(r.getrandbits(8) for _ in range(r.randint(0, 24)))
            if r.random() < 0.3:
                payload = struct.pack(">i", r.choice([-1, 2**31 - 1, 10**6])) + payload  # blob length lies
            return _raw_message(r.choice(self.addresses), tags, payload)
        if kind < 0.45:  # bundles, some nested, some with a far-future time tag (must not stall the server)
            return self.bundle(depth=0)
        return self.message()

    def bundle(self, depth: int) -> bytes:
        r = self.rng
        seconds = 0 if r.random() < 0.5 else int(time.time()) + 2208988800 + r.choice([10, 10**6])  # NTP epoch
        data = b"#bundle\0" + (struct.pack(">Q", 1) if seconds == 0 else struct.pack(">II", seconds % 2**32, 0))
        for _ in range(r.randint(0, 3)):
            part = self.bundle(depth + 1) if depth < 2 and r.random() < 0.2 else self.message()
            size = len(part) if r.random() < 0.9 else r.randint(0, 2**31 - 1)  # sizes that lie, sometimes
            data += struct.pack(">i", size) + part
        return data


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("fuzz")) as b:
        yield b


def test_fuzz_then_still_serving(bridge):
    fuzz = Fuzzer(seed=1234)
    sock = bridge.client._sock
    sent, t0 = 0, time.monotonic()
    while sent < PACKETS:
        data = fuzz.packet()
        if len(data) > 65000:
            continue
        sock.sendto(data, ("127.0.0.1", bridge.port))
        sent += 1
        ahead = sent / RATE - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
    send_time = time.monotonic() - t0
    pong = bridge.ping(timeout=30)  # answered after everything before it
    handled = time.monotonic() - t0
    assert pong[1] == protocol.VERSION

    errors = bridge.listener.all("/error")
    codes = {e[1] for e in errors}
    assert "internal" not in codes, [e for e in errors if e[1] == "internal"][:3]
    assert codes <= set(protocol.ERRORS), codes
    assert len(errors) > PACKETS // 2  # most of it is garbage, and garbage is answered
    assert "Traceback" not in bridge.log(), bridge.log()[-3000:]

    # Whatever the fuzz started is cancelled; then a real job still renders.
    for req in {a[0] for a in bridge.listener.all("/ack") if a[0] >= 0}:
        bridge.send("/cancel", req)
        bridge.send("/jam/stop", req)
    bridge.send("/melody/clear")
    for name in ("top_k", "top_p", "temperature", "cfg", "seed", "chunk_bars", "context_seconds"):
        bridge.send("/set", name, next(s.default for s in protocol.SETTINGS if s.name == name))
    bridge.send("/set", "prompt", "")
    bridge.send("/transport", 0, 600.0, 4, 4, 0.0)
    deadline = time.monotonic() + 60
    while True:
        bridge.send("/status")
        state = bridge.listener.wait("/status", timeout=5)[1]
        if state[0] == "ready" and state[3] == 0:
            break
        assert time.monotonic() < deadline, f"still {state} after cancelling the fuzz's jobs"
        time.sleep(0.5)
    bridge.send("/generate", 424242, "after the storm", 1)
    address, args = bridge.listener.result(424242, timeout=60)
    assert address == "/done", args
    audio, sr = sf.read(args[1])
    assert len(audio) == 12800  # 1 bar at 600 bpm
    print(f"fuzz: {sent} datagrams sent in {send_time:.2f} s, all handled after {handled:.2f} s "
          f"({sent / handled:.0f}/s); {len(errors)} /error replies")
