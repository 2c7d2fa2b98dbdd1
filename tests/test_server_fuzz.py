"""Fuzz: 10,000 datagrams, each of a known class, at a bounded rate. Every bad message gets exactly one `/error`
(never 'internal'), every valid one none from the protocol checks, no traceback is logged, and afterwards the
bridge still answers /ping and renders a job.

Classes: *unreadable* (not OSC: python-osc, which the bridge uses to parse, refuses it; one `/error bad_args`),
*unknown address* (one `/error unknown_address`), *wrong arguments* (a valid message with one thing broken that the
protocol table or the handler's argument checks reject; one `/error bad_args`), and *valid* (edge cases from the
table: bounds, empty and longest strings, optional arguments given or not, ints for floats and back; no
`bad_args`/`unknown_address`, though a handler may still answer e.g. `not_found` or `busy`). A bundle holds messages
of any class and earns one `/error` per bad one. Each datagram is followed by a marker `/ping`: the bridge handles
datagrams in order, so the replies between two marker `/pong`s belong to the datagram between them.
"""

from __future__ import annotations

import collections
import random
import struct
import time

import pytest
import soundfile as sf
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

from bridge import protocol
from engine.bars import DENOMINATORS, MAX_NUMERATOR
from tests.test_server_harness import serving

PACKETS = 10_000
RATE = 2000  # datagrams per second at most, markers included (loopback; the point is robustness, not a flood)
WINDOW = 50  # datagrams sent ahead of the last marker answered: a bridge slowed down by a busy machine (or by a
# job it runs) must not have its receive buffer overflow, or datagrams are lost and nothing can be counted
MARK = -(2**31) + 1_000_000  # marker /ping nonces: MARK + i after datagram i; fuzz nonces stay out of this range
UNREADABLE, UNKNOWN, WRONG, VALID = "unreadable", "unknown address", "wrong arguments", "valid"
EXPECTED_CODE = {UNREADABLE: "bad_args", UNKNOWN: "unknown_address", WRONG: "bad_args"}
PATH_ARGS = {"wav_path", "path"}
JOB_REQS = (2_000_000_000, protocol.INT32_MAX + 1)  # request ids of the jobs the fuzz starts (see Fuzzer)
PRESET_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-_"  # the handler's rule for preset names (not - or _ first)


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (4 - len(b) % 4)


def _build(address: str, args: list) -> bytes:
    builder = OscMessageBuilder(address=address)
    for a in args:
        if isinstance(a, tuple):  # (value, explicit OSC type)
            builder.add_arg(*a)
        else:
            builder.add_arg(a)
    return builder.build().dgram


def _readable(data: bytes) -> bool:
    try:
        OscPacket(data)
        return True
    except Exception:
        return False


class Fuzzer:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.messages = [m for m in protocol.MESSAGES if m.direction == "in"]
        # A request id names one request (reusing one is refused with bad_args), and a job's own errors come later,
        # from its thread, with its id: jobs get fresh ids from a range no other message uses, so that those
        # errors are told apart from the answers to later datagrams.
        self.job_reqs: set[int] = set()

    # --- values ---

    def valid_value(self, arg: protocol.Arg):
        r = self.rng
        if arg.type == "s":
            if arg.name in PATH_ARGS:
                return r.choice(["/tmp/none.wav", "/nonexistent/dir/x.mid", "/" + "p" * (arg.max_len - 1)])
            choices = ["x" * arg.max_len, "".join(chr(r.randint(0x20, 0x2FF)) for _ in range(r.randint(1, 30))),
                       "techno drums", "lofi-keys"]
            return r.choice(choices + ([""] if arg.allow_empty else []))
        if arg.name == "req":
            return r.choice([int(arg.min), JOB_REQS[0] - 1, r.randint(int(arg.min), JOB_REQS[0] - 1)])
        lo = arg.min if arg.min is not None else (protocol.INT32_MIN if arg.type == "i" else -1e6)
        hi = arg.max if arg.max is not None else (protocol.INT32_MAX if arg.type == "i" else 1e6)
        if arg.type == "i":
            v = r.choice([int(lo), int(hi), r.randint(int(lo), int(hi))])
            # An integral float is an int ("unambiguous"), when float32 (OSC 'f') holds it exactly.
            return r.choice([v, v, float(v) if abs(v) < 2**24 else v])
        v = r.choice([float(lo), float(hi), r.uniform(lo, hi)])
        return r.choice([v, v, (v, "d"), int(v) if float(v).is_integer() else v])  # doubles and ints are floats

    def valid_args(self, msg: protocol.Message, job: bool = True) -> list:
        r = self.rng
        if msg.address == "/set":
            s = r.choice(protocol.SETTINGS)
            return [s.name, self.valid_value(s)]
        if msg.address == "/preset":  # well-formed names; most name no preset (not_found)
            return [r.choice(PRESET_CHARS[:36]) + "".join(r.choice(PRESET_CHARS) for _ in range(r.randint(0, 39)))]
        if msg.address in ("/tempo", "/transport"):
            args = [self.valid_value(a) for a in msg.args]
            if msg.address == "/transport":
                args[2], args[3], args[4] = r.randint(1, MAX_NUMERATOR), r.choice(DENOMINATORS), r.uniform(0, 1e6)
            elif r.random() < 0.5:
                args += [r.randint(1, MAX_NUMERATOR), r.choice(DENOMINATORS)]
            return args
        args = [self.valid_value(a) for a in msg.args]
        if msg.address == "/ping":
            args = [r.choice([protocol.INT32_MIN, protocol.INT32_MAX, 0, -1, r.randint(0, 2**31 - 1)])]
        if msg.address in ("/generate", "/continue"):
            args[2] = r.randint(1, 2)  # short jobs: the bridge renders whatever valid jobs the fuzz starts
        if job and msg.address in ("/generate", "/continue", "/jam/start"):
            req = r.randrange(*JOB_REQS)
            while req in self.job_reqs:
                req = r.randrange(*JOB_REQS)
            self.job_reqs.add(req)
            args[0] = req
        if msg.optional and r.random() < 0.5:
            args += [self.valid_value(a) for a in msg.optional]
        if msg.repeat:
            groups = r.choice([0, 1, protocol.NOTES_PER_PACKET])
            args += [self.valid_value(a) for _ in range(groups) for a in msg.repeat]
        return args

    def broken_args(self, msg: protocol.Message) -> list:
        """The valid arguments of `msg` with one thing wrong."""
        r = self.rng
        args = self.valid_args(msg, job=False)  # its request id is no job's: its /error must be counted
        if msg.address == "/set" and r.random() < 0.3:
            return [r.choice(["nope", "TOP_K", "", "bpm"]), 1]
        if msg.address == "/tempo" and r.random() < 0.2:  # in the table's ranges, but not a power-of-two denominator
            return [120.0, r.randint(1, MAX_NUMERATOR), r.choice([3, 5, 6, 7, 12])]
        n_fixed = len(msg.args)
        numbers = [i for i, a in enumerate(msg.args) if a.type in ("i", "f")]
        strings = [i for i, a in enumerate(msg.args) if a.type == "s"]
        ways = ["extra"]
        if n_fixed:
            ways.append("missing")
        if numbers:
            ways += ["string for number", "non-finite"]
            if any(msg.args[i].min is not None or msg.args[i].max is not None for i in numbers):
                ways.append("out of range")
            if any(msg.args[i].type == "i" for i in numbers):
                ways.append("fraction for int")
        if strings:
            ways += ["number for string", "too long"]
            if any(not msg.args[i].allow_empty for i in strings):
                ways.append("empty")
        if msg.address == "/set":
            ways.append("bad setting value")
        way = r.choice(ways)
        if way == "extra":
            if msg.repeat:  # an incomplete group
                return args + [1] * r.randint(1, len(msg.repeat) - 1)
            return args[:n_fixed] + [self.valid_value(a) for a in msg.optional] + [1] * r.randint(1, 3)
        if way == "missing":
            return args[: r.randrange(n_fixed)]
        if way == "string for number":
            i = r.choice(numbers)
            args[i] = r.choice(["1", "x", ""])
        elif way == "non-finite":
            i = r.choice(numbers)
            args[i] = r.choice([float("nan"), float("inf"), float("-inf")])
        elif way == "out of range":
            i = r.choice([i for i in numbers if msg.args[i].min is not None or msg.args[i].max is not None])
            a = msg.args[i]
            args[i] = a.min - 1 if a.min is not None and (a.max is None or r.random() < 0.5) else a.max + 1
        elif way == "fraction for int":
            args[r.choice([i for i in numbers if msg.args[i].type == "i"])] = 1.5
        elif way == "number for string":
            args[r.choice(strings)] = r.choice([0, 1.5])
        elif way == "too long":
            i = r.choice(strings)
            args[i] = "/" + "y" * msg.args[i].max_len
        elif way == "empty":
            args[r.choice([i for i in strings if not msg.args[i].allow_empty])] = ""
        elif way == "bad setting value":
            s = protocol.setting(args[0])
            args[1] = ("z" * (s.max_len + 1)) if s.type == "s" else r.choice(["high", float("nan")] + (
                [s.max + 1] if s.max is not None else []))
        return args

    # --- packets: (bytes, the class of each message in it) ---

    def message(self) -> tuple[bytes, list[str]]:
        r = self.rng
        kind = r.random()
        if kind < 0.15:
            address = r.choice(["/", "/*", "/gen*", "/nope", "/jam", "//", "/melody/notes/x", "/PING", "/ping/"])
            return _build(address, [r.choice([1, 2.5, "x"]) for _ in range(r.randint(0, 3))]), [UNKNOWN]
        msg = r.choice(self.messages)
        if kind < 0.55:
            return _build(msg.address, self.broken_args(msg)), [WRONG]
        return _build(msg.address, self.valid_args(msg)), [VALID]

    def unreadable(self) -> bytes:
        r = self.rng
        while True:
            kind = r.random()
            if kind < 0.4:
                data = bytes(r.getrandbits(8) for _ in range(r.randint(0, 200)))
            elif kind < 0.7:  # truncated or bit-flipped OSC
                data = bytearray(self.message()[0])
                if r.random() < 0.5:
                    data = data[: r.randint(1, len(data) - 1)]
                else:
                    for _ in range(r.randint(1, 4)):
                        data[r.randrange(len(data))] = r.getrandbits(8)
                data = bytes(data)
            elif kind < 0.9:  # type tags that do not match the payload, unknown tags, blob lengths that lie
                tags = "".join(r.choice("ifsbhdTFNIcrmt[]?X") for _ in range(r.randint(1, 6)))
                payload = bytes(r.getrandbits(8) for _ in range(r.randint(0, 24)))
                if r.random() < 0.3:
                    payload = struct.pack(">i", r.choice([-1, 2**31 - 1, 10**6])) + payload
                data = _pad(r.choice(self.messages).address.encode()) + _pad(("," + tags).encode()) + payload
            else:  # a bundle whose element sizes lie
                part = self.message()[0]
                data = b"#bundle\0" + struct.pack(">Q", 1) + struct.pack(">i", len(part) + r.randint(1, 2**20)) + part
            if not _readable(data):  # python-osc's verdict is the definition of "unreadable" here
                return data

    def bundle(self, depth: int = 0, seconds: int | None = None) -> tuple[bytes, list[str]]:
        r = self.rng
        if seconds is None:  # nested bundles share it: python-osc orders a packet's messages by time tag
            seconds = 0 if r.random() < 0.5 else int(time.time()) + 2208988800 + r.choice([10, 10**6])  # NTP epoch
        data = b"#bundle\0" + (struct.pack(">Q", 1) if seconds == 0 else struct.pack(">II", seconds % 2**32, 0))
        classes: list[str] = []
        for _ in range(r.randint(0, 3)):  # an empty bundle is valid and says nothing
            part, cls = self.bundle(depth + 1, seconds) if depth < 2 and r.random() < 0.2 else self.message()
            data += struct.pack(">i", len(part)) + part
            classes += cls
        return data, classes

    def packet(self) -> tuple[bytes, list[str]]:
        kind = self.rng.random()
        if kind < 0.25:
            return self.unreadable(), [UNREADABLE]
        if kind < 0.35:
            return self.bundle()
        return self.message()


def test_the_fuzzer_knows_its_classes():
    """The generator's classes against python-osc's parse and the table's addresses (a check of the test)."""
    fuzz = Fuzzer(seed=7)
    addresses = {m.address for m in fuzz.messages}
    for _ in range(2000):
        data, classes = fuzz.packet()
        if classes == [UNREADABLE]:
            assert not _readable(data)
            continue
        parsed = [m.message for m in OscPacket(data).messages]
        assert len(parsed) == len(classes)
        for m, cls in zip(parsed, classes):
            assert (m.address in addresses) == (cls != UNKNOWN)
            if cls == VALID:  # the table agrees with the generator's valid edge cases...
                protocol.validate(m.address, m.params)
            elif cls == WRONG and m.address != "/tempo":  # ...and refuses its broken ones (/tempo's denominator
                with pytest.raises(protocol.ProtocolError):  # rule is the handler's)
                    protocol.validate(m.address, m.params)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("fuzz")) as b:
        yield b


class Markers:
    """The highest marker /pong the listener has seen, read incrementally."""

    def __init__(self, listener):
        self.listener, self.seen, self.last = listener, 0, -1

    def wait_for(self, i: int, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        with self.listener.cond:
            while True:
                messages = self.listener.messages
                for _, a, args in messages[self.seen:]:
                    if a == "/pong" and MARK <= args[0] < MARK + PACKETS:
                        self.last = max(self.last, args[0] - MARK)
                self.seen = len(messages)
                if self.last >= i:
                    return
                left = end - time.monotonic()
                assert left > 0, f"no marker /pong for datagram {i} within {timeout} s (last {self.last})"
                self.listener.cond.wait(left)


def test_fuzz_then_still_serving(bridge):
    fuzz = Fuzzer(seed=1234)
    markers = Markers(bridge.listener)
    sock = bridge.client._sock
    packets: list[tuple[bytes, list[str]]] = []
    t0 = time.monotonic()
    while len(packets) < PACKETS:
        data, classes = fuzz.packet()
        if len(data) > 65000:
            continue
        i = len(packets)
        packets.append((data, classes))
        sock.sendto(data, ("127.0.0.1", bridge.port))
        sock.sendto(_build("/ping", [MARK + i]), ("127.0.0.1", bridge.port))
        ahead = 2 * len(packets) / RATE - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
        if i - markers.last > WINDOW:
            markers.wait_for(i - WINDOW)
    markers.wait_for(PACKETS - 1)
    handled = time.monotonic() - t0

    # Replies between marker i - 1 and marker i answer datagram i.
    with bridge.listener.cond:
        replies = [(a, args) for _, a, args in bridge.listener.messages]
    markers = [args[0] - MARK for a, args in replies if a == "/pong" and MARK <= args[0] < MARK + PACKETS]
    assert markers == list(range(PACKETS)), "marker pongs were lost or reordered"
    errors: dict[int, list] = collections.defaultdict(list)
    current = 0
    for a, args in replies:
        if a == "/pong" and MARK <= args[0] < MARK + PACKETS:
            current = args[0] - MARK + 1
        elif a == "/error":
            errors[current].append(args)
    all_errors = [e for es in errors.values() for e in es]
    assert not [e for e in all_errors if e[1] == "internal"], [e for e in all_errors if e[1] == "internal"][:3]
    assert {e[1] for e in all_errors} <= set(protocol.ERRORS)

    wrong = []
    for i, (data, classes) in enumerate(packets):
        answers = [e for e in errors.get(i, []) if e[0] not in fuzz.job_reqs]  # not a job's own, later, error
        got = sorted(e[1] for e in answers if e[1] in ("bad_args", "unknown_address"))
        expected = sorted(EXPECTED_CODE[c] for c in classes if c != VALID)
        if got != expected:
            wrong.append((i, classes, data[:80], errors.get(i)))
    assert not wrong, f"{len(wrong)} datagrams not answered as their class says, e.g. {wrong[:3]}"
    counts = collections.Counter(c for _, classes in packets for c in classes)
    assert min(counts[c] for c in (UNREADABLE, UNKNOWN, WRONG, VALID)) > 500, counts
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
    deadline = time.monotonic() + 120
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
    print(f"fuzz: {PACKETS} datagrams ({dict(counts)}) handled in {handled:.2f} s; {len(all_errors)} /error replies")
