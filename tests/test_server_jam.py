"""Jams through the real OSC server (in this process, so the engine can be wrapped): an engine slower than real
time starts the jam later and never sends a chunk after its beat; a slowdown mid-jam re-anchors once with one
`/error req slow`; a lost engine is reported and the jam resumes without losing or repeating audio."""

from __future__ import annotations

import time

import numpy as np
import pytest
import soundfile as sf

from tests.fake_engines import SlowEngine
from tests.inprocess_bridge import InProcessBridge, one_torch_thread


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    with one_torch_thread():
        b = InProcessBridge(tmp_path_factory.mktemp("jam"), SlowEngine)
        yield b
        b.close()


def song(t0: float, beats0: float, bpm: float):
    """Monotonic time of a song beat for a transport that was at `beats0` at `t0`."""
    return lambda beat: t0 + (beat - beats0) * 60.0 / bpm


def start_jam(bridge, req: int, bpm: float, beats0: float):
    bridge.send("/set", "chunk_bars", 1)
    # The pacing itself: tempo lock holds each chunk back by one more (its placement allows for the engine's time
    # for that chunk, not for the lock's own analysis), which these exact bounds leave out.
    bridge.send("/set", "lock", 0)
    t0 = time.monotonic()
    bridge.send("/transport", 1, bpm, 4, 4, beats0)
    bridge.send("/jam/start", req, "")
    bridge.listener.wait("/ack", lambda a: a == [req, "/jam/start"])
    return song(t0, beats0, bpm)


def chunk(bridge, req: int, i: int, timeout: float = 60) -> tuple[float, list]:
    """(arrival time, args) of /chunk number i of jam `req`."""
    bridge.listener.wait("/chunk", lambda a: a[:2] == [req, i], timeout=timeout, take=False)
    return bridge.listener.timed("/chunk", lambda a: a[:2] == [req, i])[0]


def status(bridge) -> list:
    """The answer to a /status sent now (not one sent earlier on a state change)."""
    t = time.monotonic()
    bridge.send("/status")
    bridge.listener.wait("/status", lambda a: True, take=False)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        later = [a for at, a in bridge.listener.timed("/status") if at > t]
        if later:
            return later[0]
        time.sleep(0.05)
    raise AssertionError("no /status answer")


def stop_jam(bridge, req: int):
    bridge.slow.delay_s = 0.0
    bridge.send("/jam/stop", req)
    address, done = bridge.listener.wait(("/done", "/error"), lambda a: a[0] == req and a[1] != "slow", timeout=60)
    assert address == "/done", done
    return done


def test_a_slow_engine_starts_later_and_is_never_late(bridge):
    bridge.slow.delay_s = 1.5  # 0.5 s of audio per bar at 480 bpm: real-time factor below 1/3, well under 0.5
    time_of = start_jam(bridge, 1, 480.0, 1.0)  # the bar after /jam/start is beat 4
    received = [chunk(bridge, 1, i) for i in range(3)]
    for t, args in received:
        assert time_of(args[5]) > t, f"chunk {args[1]} for beat {args[5]} arrived after its beat"
    t_first, first = received[0]
    # At rate < 0.5 keeping the next 60 s on time needs >= 60 s of head start: 480 beats at 480 bpm.
    assert first[5] >= (t_first - time_of(0)) * 8 + 480
    assert [a[5] - a[3] for _, a in received] == [first[5]] * 3  # then contiguous on the song
    realtime = status(bridge)[4]
    assert 0 < realtime < 0.55  # the measured factor, not steps/s over the frame rate of an idle model
    stop_jam(bridge, 1)
    assert not bridge.listener.all("/error", lambda a: a[0] == 1)


def test_a_slowdown_mid_jam_re_anchors_once_with_one_slow_error(bridge):
    bridge.slow.delay_s = 0.0
    time_of = start_jam(bridge, 2, 240.0, 1.0)
    chunk(bridge, 2, 2)
    bridge.slow.delay_s = 3.0  # from about 2x to about 0.3x real time (a bar is 1 s)
    _, (req, code, message) = bridge.listener.wait("/error", lambda a: a[0] == 2, timeout=90)
    assert code == "slow" and "x real time" in message and "later" in message, message
    n = len(bridge.listener.all("/chunk", lambda a: a[0] == 2))
    chunk(bridge, 2, n, timeout=30)
    chunk(bridge, 2, n + 1, timeout=30)  # two more at the slow rate: no second error
    stop_jam(bridge, 2)
    every = bridge.listener.timed("/chunk", lambda a: a[0] == 2)
    for t, args in every:
        assert time_of(args[5]) > t, f"chunk {args[1]} for beat {args[5]} arrived after its beat"
    assert [a[1] for _, a in every] == list(range(len(every)))
    offsets = sorted({a[5] - a[3] for _, a in every})
    assert len(offsets) == 2 and offsets[1] - offsets[0] >= 4  # one jump later, by whole bars
    assert len(bridge.listener.all("/error", lambda a: a[0] == 2 and a[1] == "slow")) == 1


def test_a_lost_engine_is_reported_and_the_jam_resumes_without_gaps(bridge):
    bridge.slow.delay_s = 0.0
    bridge.slow.lose_at = bridge.slow.chunks + 2  # the third chunk of this jam is lost with the engine
    start_jam(bridge, 3, 240.0, 1.0)
    _, (req, code, message) = bridge.listener.wait("/error", lambda a: a[1] == "engine_lost", timeout=60)
    assert req == -1 and "resumes" in message
    chunk(bridge, 3, 4)
    done = stop_jam(bridge, 3)
    every = bridge.listener.all("/chunk", lambda a: a[0] == 3)
    assert [a[1] for a in every] == list(range(len(every)))
    for prev, c in zip(every, every[1:]):  # no beat lost or repeated
        assert c[3] == pytest.approx(prev[3] + prev[4])
    parts = [sf.read(a[2], dtype="float32", always_2d=True)[0].T[:1] for a in every]  # chunk files: mono x2
    whole = sf.read(done[1], dtype="float32", always_2d=True)[0].T
    assert np.array_equal(whole, np.concatenate(parts, axis=1))
    # The loss is said once, and the resume on a later bar is not reported again (a busy host may still be slow).
    assert not bridge.listener.all("/error", lambda a: a[0] == 3 and a[1] != "slow")
    assert len(bridge.listener.all("/error", lambda a: a[1] == "engine_lost")) == 1
