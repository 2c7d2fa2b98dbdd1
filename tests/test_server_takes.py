"""Takes and competing jobs through the real OSC server (in this process): `/generate ... takes` answers a /take
per take and /done naming take 0, with seeds derived as documented; a /generate during a jam waits when the engine
runs one stream (the jam keeps time) and runs beside it when the engine runs two; cancelling one leaves the other."""

from __future__ import annotations

import time

import numpy as np
import pytest
import soundfile as sf

from tests.fake_engines import PoolEngine
from tests.inprocess_bridge import InProcessBridge, one_torch_thread

SR = 32000


def wav(path) -> np.ndarray:
    return sf.read(path, dtype="float32", always_2d=True)[0].T


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    with one_torch_thread():
        b = InProcessBridge(tmp_path_factory.mktemp("single"), lambda engine: engine)
        yield b
        b.close()


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    from engine.checkpoint import load_model
    from engine.local_engine import LocalEngine

    def two(engine):  # a second copy of the model: two streams really run at once
        return PoolEngine([engine, LocalEngine(load_model("random-tiny", device="cpu"))])

    with one_torch_thread():
        b = InProcessBridge(tmp_path_factory.mktemp("pooled"), two)
        yield b
        b.close()


def _generate_takes(b, req: int, seed: int, takes: int) -> tuple[list, list]:
    """/generate of 1 bar at 600 bpm in `takes` takes: the /done arguments and the /take messages."""
    b.send("/tempo", 600.0, 4, 4)
    b.send("/set", "seed", seed)
    b.send("/generate", req, "", 1, takes)
    address, done = b.listener.result(req)
    assert address == "/done", done
    return done, b.listener.all("/take", lambda a: a[0] == req)


def test_takes_come_one_by_one_and_done_names_take_0(single):
    b = single
    done, takes = _generate_takes(b, 1, 5, 3)
    assert sorted(a[1] for a in takes) == [0, 1, 2] and done[1] == next(a[2] for a in takes if a[1] == 0)
    audio = {a[1]: wav(a[2]) for a in takes}
    assert all(x.shape[1] == 12800 for x in audio.values())  # each exactly 1 bar at 600 bpm
    assert not np.array_equal(audio[0], audio[1]) and not np.array_equal(audio[1], audio[2])
    # Take i is the request's seed + i: each can be redone alone.
    b.send("/generate", 2, "", 1)
    b.send("/set", "seed", 6)
    b.send("/generate", 3, "", 1)
    alone0, alone1 = (wav(b.listener.result(r)[1][1]) for r in (2, 3))
    assert np.array_equal(alone0, audio[0]) and np.array_equal(alone1, audio[1])
    assert not b.listener.all("/take", lambda a: a[0] in (2, 3))  # one take: no /take
    b.send("/set", "seed", -1)


def test_a_generate_during_a_jam_waits_and_the_jam_keeps_time(single):
    b = single
    b.send("/set", "chunk_bars", 1)
    t0 = time.monotonic()
    b.send("/transport", 1, 240.0, 4, 4, 1.0)
    b.send("/jam/start", 10, "")
    b.listener.wait("/chunk", lambda a: a[:2] == [10, 1], timeout=60)
    b.send("/tempo", 600.0, 4, 4)  # (the jam follows the tempo; the generate is 1 bar at 600 bpm)
    b.send("/generate", 11, "", 1)
    assert b.listener.wait("/ack", lambda a: a == [11, "/generate"])
    n = len(b.listener.all("/chunk", lambda a: a[0] == 10))
    b.listener.wait("/chunk", lambda a: a[:2] == [10, n + 2], timeout=60)
    assert not b.listener.all("/done", lambda a: a[0] == 11)  # one stream at a time: it waits for the jam
    b.send("/jam/stop", 10)
    assert b.listener.result(10)[0] == "/done"
    assert b.listener.result(11)[0] == "/done"
    assert not b.listener.all("/error", lambda a: a[0] in (10, 11) and a[1] != "slow")  # (a busy host: slow)
    b.send("/transport", 0, 600.0, 4, 4, 0.0)


def test_with_two_streams_a_generate_runs_beside_the_jam_and_cancel_leaves_the_jam(pooled):
    b = pooled
    b.send("/set", "chunk_bars", 1)
    b.send("/transport", 1, 240.0, 4, 4, 1.0)
    b.send("/jam/start", 20, "")
    b.listener.wait("/chunk", lambda a: a[:2] == [20, 0], timeout=60)
    b.send("/generate", 21, "", 1)  # 1 bar at 240 bpm
    assert b.listener.result(21)[0] == "/done"  # while the jam still runs
    b.send("/generate", 22, "", 16)  # 16 s: cancelled while it runs
    b.listener.wait("/progress", lambda a: a[0] == 22)
    n = len(b.listener.all("/chunk", lambda a: a[0] == 20))
    b.send("/cancel", 22)
    assert b.listener.result(22)[1][1] == "cancelled"
    b.listener.wait("/chunk", lambda a: a[:2] == [20, n + 1], timeout=60)  # the jam goes on
    b.send("/jam/stop", 20)
    assert b.listener.result(20)[0] == "/done"
    assert not b.listener.all("/error", lambda a: a[0] == 20 and a[1] != "slow")


def test_takes_side_by_side_on_two_streams(pooled):
    b = pooled
    done, takes = _generate_takes(b, 30, 9, 2)
    assert sorted(a[1] for a in takes) == [0, 1] and all(wav(a[2]).shape[1] == 12800 for a in takes)
