"""audio_out: WAV names and atomic writes; the live output stream into a real JACK server (dummy driver),
captured by an input stream wired to it in the JACK graph."""

from __future__ import annotations

import contextlib
import re
import threading
import time
import types

import numpy as np
import pytest
import soundfile as sf

from bridge.audio_out import LiveOutput, TakeWriter, WavNamer, find_device
from engine.errors import UserError
from tests.test_server_harness import jack_server  # noqa: F401  (fixture)

# These run against a real JACK server (dummy driver) with realtime scheduling, as audio systems run their clients
# (tests/test_server_harness.Jack). The output and the capture are both Python callbacks in the test process; one
# rerun covers a miss of the capture under heavy load. The bridge itself plays from its own process:
# tests/test_audio_process.py shows why.
pytestmark = pytest.mark.flaky(reruns=1)

SR = 32000


def test_names_sort_never_collide_and_survive_restarts(tmp_path):
    namer = WavNamer(tmp_path)
    paths = []
    lock = threading.Lock()

    def make(req):
        for i in range(50):
            p = namer.path(req, "jam", i)
            p.write_bytes(b"x")
            with lock:
                paths.append(p)

    threads = [threading.Thread(target=make, args=(r,)) for r in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = [p.name for p in paths]
    assert len(set(names)) == 200
    assert all(re.fullmatch(r"\d{8}-\d{6}-\d{6}-r\d{4}-jam-c\d{4}\.wav", n) for n in names)
    counters = sorted(int(n.split("-")[2]) for n in names)
    assert counters == list(range(200))
    # A new server in the same folder (same second, even) continues after the highest counter.
    again = WavNamer(tmp_path).path(7, "gen")
    assert int(again.name.split("-")[2]) == 200 and again.name.endswith("-r0007-gen.wav")
    assert sorted(names + [again.name])[-1] == again.name
    assert all(p.parent == tmp_path.resolve() for p in paths)


def test_namer_refuses_missing_folder_and_unknown_kind(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        WavNamer(tmp_path / "nope")
    with pytest.raises(ValueError):
        WavNamer(tmp_path).path(1, "../../etc")


def test_take_writer_appears_whole_only_when_closed(tmp_path):
    path = WavNamer(tmp_path).path(3, "jam")
    writer = TakeWriter(path, SR, 2)
    rng = np.random.default_rng(0)
    pieces = [rng.uniform(-0.9, 0.9, (2, n)).astype(np.float32) for n in (1000, 1, 4567)]
    for p in pieces:
        writer.write(p)
        assert not path.exists()  # readers never see a half-written jam
    writer.write(np.full((2, 10), 3.0, np.float32))  # out of range: clipped, not wrapped around
    assert writer.close() == path
    audio, sr = sf.read(path, always_2d=True, dtype="float32")
    expected = np.concatenate(pieces + [np.ones((2, 10), np.float32)], axis=1).T
    assert sr == SR and audio.shape == expected.shape
    assert np.abs(audio - expected).max() < 1.5 / 32768
    assert [p.name for p in tmp_path.iterdir()] == [path.name]

    other = TakeWriter(WavNamer(tmp_path).path(4, "jam"), SR, 1)
    other.write(np.zeros((1, 100), np.float32))
    other.discard()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # nothing left behind


def test_unknown_audio_device_lists_the_devices(jack_server):
    with pytest.raises(UserError) as err:
        find_device("no such device", "output")
    assert "system" in str(err.value)  # the JACK device is offered
    assert find_device("system", "output")["max_output_channels"] >= 1


class Capture:
    """An input stream in this process, wired in JACK to the live output's first port. Each block's time is
    mapped to the monotonic clock through the earliest callback (the one woken closest to its cycle)."""

    def __init__(self, jack):
        import sounddevice as sd

        self.blocks: list[tuple[float, float, np.ndarray]] = []
        before = set(jack.ports())
        self.stream = sd.InputStream(device="system", samplerate=SR, channels=1, callback=self._cb)
        self.stream.start()
        self.ports = sorted(set(jack.ports()) - before)

    def _cb(self, indata, frames, t, status):
        self.blocks.append((time.monotonic(), t.currentTime, indata[:, 0].copy()))

    def audio(self) -> tuple[np.ndarray, callable]:
        self.stream.stop()
        self.stream.close()
        # monotonic = stream time + offset, from the earliest-woken callback; blocks whose time came out wrapped
        # (PortAudio's JACK times come from a 32-bit frame counter: 2**32 frames off) are left out.
        offsets = np.array([m - cur for m, cur, _ in self.blocks])
        offset = offsets[np.abs(offsets - np.median(offsets)) < 1.0].min()
        audio = np.concatenate([b for _, _, b in self.blocks])
        starts = np.cumsum([0] + [len(b) for _, _, b in self.blocks])

        def time_of(i: int) -> float:
            k = int(np.searchsorted(starts, i, side="right")) - 1
            return self.blocks[k][1] + offset + (i - starts[k]) / SR

        return audio, time_of


def _wire(jack, out_ports: list[str], capture: Capture) -> None:
    src = next(p for p in out_ports if re.search(r":out_\d+$", p))  # the first (left) channel
    dst = next(p for p in capture.ports if re.search(r":in_\d+$", p))
    jack.connect(src, dst)


def _find(signal: np.ndarray, recorded: np.ndarray) -> int:
    """Where `signal` starts in `recorded` (by correlation)."""
    n = len(recorded) + len(signal)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(recorded, size) * np.conj(np.fft.rfft(signal, size)), size)
    return int(np.argmax(corr[: len(recorded)]))


def _open_output(jack, in_rate=SR, channels=1) -> tuple[LiveOutput, list[str]]:
    before = set(jack.ports())
    out = LiveOutput("system", in_rate, channels).open()
    return out, sorted(set(jack.ports()) - before)


@contextlib.contextmanager
def _rig(jack, **open_kw):
    """A live output wired into a capture for the block; afterwards `rig.recorded` holds what reached the graph."""
    out, ports = _open_output(jack, **open_kw)
    rig = types.SimpleNamespace(out=out, recorded=None, time_of=None, latency=None)
    cap = Capture(jack)
    try:
        _wire(jack, ports, cap)
        time.sleep(0.2)
        yield rig
    finally:
        rig.recorded, rig.time_of = cap.audio()
        rig.latency = out.dac_latency
        out.close()


def test_live_output_starts_on_time_with_the_exact_samples(jack_server):
    with _rig(jack_server) as rig:
        out = rig.out
        sig = np.random.default_rng(1).uniform(-0.5, 0.5, (1, SR)).astype(np.float32)
        take = out.begin_take()
        t_start = time.monotonic() + 0.4
        out.push(take, sig[:, :12345], lambda ready: t_start)
        out.push(take, sig[:, 12345:], lambda ready: 0.0)  # only the first push's start time counts
        out.finish(take)
        assert out.wait_played(take, 5)
        time.sleep(0.1)
    recorded, time_of = rig.recorded, rig.time_of
    latency = rig.latency
    at = _find(sig[0], recorded)
    assert np.abs(recorded[at:at + SR] - sig[0]).max() < 1e-6  # float32 all the way: bit-exact
    assert np.abs(recorded[at + SR:]).max() == 0 and np.abs(recorded[:at]).max() == 0
    # The stream schedules by the time a sample reaches the DAC; our capture sees it one output latency early.
    error = time_of(at) + latency - t_start
    assert abs(error) < 0.015, f"started {error * 1000:.1f} ms off"
    assert out.dry_spells == 0
    print(f"live output start error {error * 1000:+.1f} ms")


def test_underrun_is_counted_once_and_the_take_stays_on_its_grid(jack_server):
    with _rig(jack_server) as rig:
        out = rig.out
        rng = np.random.default_rng(2)
        first = rng.uniform(-0.5, 0.5, (1, 9600)).astype(np.float32)  # 0.3 s
        late = rng.uniform(-0.5, 0.5, (1, SR)).astype(np.float32)  # take samples 9600..41600
        take = out.begin_take()
        out.push(take, first, lambda ready: ready + 0.1)
        time.sleep(0.1 + 0.3 + 0.5)  # it plays out and runs dry for ~0.5 s
        assert out.dry_spells == 1
        out.push(take, late, lambda ready: 0.0)
        out.finish(take)
        assert out.wait_played(take, 5)
        time.sleep(0.1)
    recorded = rig.recorded
    assert out.dry_spells == 1  # one dry spell, and running out at the end is no underrun
    assert out.underruns == out.dry_spells + out.device_underflows
    at = _find(first[0], recorded)
    assert np.abs(recorded[at:at + 9600] - first[0]).max() < 1e-6
    after = recorded[at + 9600:]
    resumed = int(np.flatnonzero(np.abs(after) > 0)[0])
    assert resumed > 0.4 * SR  # silence while dry: late samples are dropped, not played late
    # What plays after the gap is exactly the late piece at its own position on the take's timeline.
    assert np.abs(after[resumed:SR] - late[0, resumed:SR]).max() < 1e-6
    assert np.abs(after[SR:]).max() == 0


def test_resamples_to_the_device_rate(jack_server):
    with _rig(jack_server, in_rate=16000) as rig:  # JACK runs at 32 kHz only
        out = rig.out
        assert rig.out.rate == SR
        t = np.arange(16000) / 16000
        take = out.begin_take()
        out.push(take, (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)[None], lambda ready: ready + 0.05)
        out.finish(take)
        assert out.wait_played(take, 5)
        time.sleep(0.1)
    recorded = rig.recorded
    loud = np.flatnonzero(np.abs(recorded) > 0.05)
    assert abs((loud[-1] - loud[0]) - SR) < 200  # one second, now at 32 kHz
    seg = recorded[loud[0] + 1000: loud[0] + 1000 + 16384]
    peak = np.argmax(np.abs(np.fft.rfft(seg * np.hanning(len(seg))))) * SR / len(seg)
    assert abs(peak - 1000) < 5


def test_next_take_takes_over_exactly_at_its_start(jack_server):
    with _rig(jack_server) as rig:
        out = rig.out
        rng = np.random.default_rng(3)
        a = rng.uniform(-0.5, 0.5, (1, 2 * SR)).astype(np.float32)
        b = rng.uniform(-0.5, 0.5, (1, SR // 2)).astype(np.float32)
        t0 = time.monotonic()
        first = out.begin_take()
        out.push(first, a, lambda ready: t0 + 0.2)
        out.finish(first)
        second = out.begin_take()
        out.push(second, b, lambda ready: t0 + 0.2 + 0.75)  # 0.75 s into the first
        out.finish(second)
        assert out.wait_played(second, 5) and first.done
        time.sleep(0.1)
    recorded = rig.recorded
    at, switch = _find(a[0, :SR // 2], recorded), _find(b[0], recorded)
    # Each start time is mapped from the monotonic clock to the stream's on its own, and JACK's stream clock
    # counts whole frames: a few samples (0.1 ms) of jitter.
    assert abs(switch - (at + int(0.75 * SR))) <= 4
    assert np.abs(recorded[at:switch] - a[0, :switch - at]).max() < 1e-6  # the first plays up to the switch
    assert np.abs(recorded[switch:switch + SR // 2] - b[0]).max() < 1e-6  # then the second, no gap
    assert np.abs(recorded[switch + SR // 2:]).max() == 0
    assert out.dry_spells == 0


def test_stop_ends_a_take_at_the_given_time(jack_server):
    with _rig(jack_server) as rig:
        out = rig.out
        sig = np.random.default_rng(4).uniform(-0.5, 0.5, (1, 2 * SR)).astype(np.float32)
        take = out.begin_take()
        t_start = time.monotonic() + 0.2
        out.push(take, sig, lambda ready: t_start)
        out.stop(take, t_start + 0.5)  # e.g. /jam/stop: play on to the next bar line, then stop
        assert out.wait_played(take, 5)
        time.sleep(0.1)
    recorded = rig.recorded
    at = _find(sig[0, : SR // 4], recorded)
    played = np.flatnonzero(np.abs(recorded) > 0)
    assert abs((played[-1] + 1 - at) - SR // 2) <= 4
    assert np.abs(recorded[at:at + SR // 2 - 4] - sig[0, : SR // 2 - 4]).max() < 1e-6
    assert out.dry_spells == 0


def test_a_failing_callback_plays_silence_and_is_reported_once(jack_server):
    with _rig(jack_server) as rig:
        out = rig.out
        render = out.scheduler.render

        def broken(outdata, first):
            outdata.fill(0.25)  # half-written audio must not reach the device
            raise RuntimeError("boom")

        out.scheduler.render = broken
        time.sleep(0.1)
        out.scheduler.render = render
        failures = out.callback_errors
        assert failures >= 1
        message = out.report_error()
        assert message.startswith("live output: ") and "RuntimeError: boom" in message
        assert out.report_error() is None  # one /error, however many callbacks failed
        sig = np.random.default_rng(5).uniform(-0.5, 0.5, (1, SR // 4)).astype(np.float32)
        take = out.begin_take()
        out.push(take, sig, lambda ready: ready + 0.05)  # the stream still plays afterwards
        out.finish(take)
        assert out.wait_played(take, 5)
        time.sleep(0.1)
    recorded = rig.recorded
    assert np.abs(recorded).max() <= 0.5 and not np.any(np.isclose(recorded, 0.25))
    at = _find(sig[0], recorded)
    assert np.abs(recorded[at:at + SR // 4] - sig[0]).max() < 1e-6
