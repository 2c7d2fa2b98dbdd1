"""The live output in its own process (bridge/audio_process.py) keeps playing the exact samples while the bridge's
process is busy; the same output in the bridge's process does not. Recorded by jack_rec (C, outside any Python
process), in a real JACK graph (dummy driver).

The busy spell is made deterministic, not left to the machine's load: `sum(range(n))` is one C call that holds this
process's interpreter lock throughout, as a generating thread can for a while when it is descheduled on a saturated
machine. An audio callback in this process cannot run meanwhile; one in the child process does not need it."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from bridge.audio_out import LiveOutput
from bridge.audio_process import LiveOutputProcess
from tests.test_audio_out import _find
from tests.test_server_harness import jack_server  # noqa: F401  (fixture)

SR = 32000
TAKE_S = 1.5
HOG_S = 0.25  # under JACK's client timeout (a client that misses it is dropped from the graph)
MAX_LATE = 2  # late callbacks the output process may see in a take (see the first test)


def _hog_lock(seconds: float) -> float:
    """Hold this process's interpreter lock for about `seconds` in one C call; returns how long it took."""
    t0 = time.perf_counter()
    sum(range(3_000_000))
    per_item = (time.perf_counter() - t0) / 3_000_000
    t0 = time.perf_counter()
    sum(range(int(seconds / per_item)))
    return time.perf_counter() - t0


def _open(jack, make):
    """An output opened by `make()`, and its JACK output ports."""
    before = set(jack.ports())
    out = make()
    ports = sorted(p for p in set(jack.ports()) - before if re.search(r":out_\d+$", p))
    assert ports, jack.ports()
    return out, ports


def _play_while_busy(jack, out, ports, tmp_path) -> tuple[np.ndarray, np.ndarray, float]:
    """Play a take of noise (no two blocks alike: a repeated stale buffer shows), hold this process's lock in
    spells while it plays, record the output port with jack_rec. Returns (take, recording, seconds the lock was held)."""
    take_audio = np.random.default_rng(5).uniform(-0.8, 0.8, (1, int(TAKE_S * SR))).astype(np.float32)
    wav = tmp_path / "rec.wav"
    rec = subprocess.Popen(["jack_rec", "-f", str(wav), "-d", str(TAKE_S + 1.5), "-b", "32", ports[0]],
                           env={**os.environ, **jack.env}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)  # jack_rec connected
        take = out.begin_take()
        out.push(take, take_audio, lambda ready: ready + 0.2)
        out.finish(take)
        # Busy spells all through the take, with short breaks (wherever the take lands, spells cover most of it).
        end, held = time.monotonic() + TAKE_S + 0.5, 0.0
        while time.monotonic() < end:
            held = max(held, _hog_lock(HOG_S))
            time.sleep(0.03)
        rec.wait(30)
    finally:
        if rec.poll() is None:
            rec.kill()
    recorded, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    assert rate == SR
    return take_audio[0], recorded[:, 0], held


def _mismatch(take: np.ndarray, recorded: np.ndarray) -> float:
    at = _find(take, recorded)
    got = recorded[at:at + len(take)]
    assert len(got) == len(take), "the take was not recorded whole"
    return float(np.abs(got - take).max())


def test_the_output_process_plays_every_sample_while_the_bridge_holds_its_lock(jack_server, tmp_path):  # noqa: F811
    out, ports = _open(jack_server, lambda: LiveOutputProcess("system", SR, 1).open())
    try:
        take, recorded, held = _play_while_busy(jack_server, out, ports, tmp_path)
        assert out.report_error() is None
        late = out.underruns
    finally:
        out.close()
    assert held > 0.5 * HOG_S
    assert _mismatch(take, recorded) < 1e-6  # float samples through JACK, recorded as 32-bit
    # PortAudio flags each late callback. Beside two busy loops a full suite saw one, the recording still exact (the
    # child itself can be descheduled once on a saturated host); the in-process control sees 12-16.
    assert late <= MAX_LATE


def test_negative_control_the_same_output_in_this_process_is_late(jack_server, tmp_path):  # noqa: F811
    """It fails the test above: its callbacks come late while the lock is held, and PortAudio flags them; the
    recording then shows stale or missing buffers, or (the dummy driver may hold the graph back for a late client
    instead) plays intact but late."""
    out, ports = _open(jack_server, lambda: LiveOutput("system", SR, 1).open())
    try:
        take, recorded, held = _play_while_busy(jack_server, out, ports, tmp_path)
        late = out.underruns
    finally:
        out.close()
    assert held > 0.5 * HOG_S
    assert late > MAX_LATE or _mismatch(take, recorded) > 0.05


def test_a_dead_output_process_is_reported_once_and_pushes_are_dropped(jack_server):  # noqa: F811
    out = LiveOutputProcess("system", SR, 1).open()
    out._proc.kill()
    out._proc.join(10)
    take = out.begin_take()  # no exception: results still arrive as files
    out.push(take, np.zeros((1, 1000), np.float32), lambda ready: ready)
    first = out.report_error()
    assert first is not None and "audio process stopped" in first
    assert out.report_error() is None and out.underruns == 0
    out.close()


def test_an_unknown_device_is_a_user_error_from_the_child(jack_server):  # noqa: F811
    from engine.errors import UserError

    with pytest.raises(UserError, match="no output audio device matches"):
        LiveOutputProcess("no such device", SR, 1).open()


def _thread_nices(pid: int) -> dict[str, int]:
    """Each thread of process `pid`: its nice value (field 19 of /proc/PID/task/TID/stat)."""
    nices = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            nices[tid] = int(f.read().rsplit(")", 1)[1].split()[16])
    return nices


def _may_raise_priority() -> bool:
    """Whether a process of this user may lower its nice value (root, CAP_SYS_NICE, RLIMIT_NICE), asked of a child
    so this process's priority stays as it is."""
    probe = "import os; os.setpriority(os.PRIO_PROCESS, 0, -1)"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def test_every_thread_of_the_output_process_runs_ahead_where_the_os_allows(jack_server):  # noqa: F811
    """The child raises its priority before it starts a thread, so PortAudio's callback thread and the feeder run
    at it too (a saturated machine schedules them ahead of the generating process); where that is refused, it
    plays at normal priority and says why."""
    from bridge.audio_process import NICE

    out = LiveOutputProcess("system", SR, 1).open()
    try:
        nices = _thread_nices(out._proc.pid)
    finally:
        out.close()
    assert len(nices) >= 3  # the child's main thread, the feeder, PortAudio's (and JACK's) threads
    if _may_raise_priority():
        assert out.priority == f"nice {NICE}" and set(nices.values()) == {NICE}, (out.priority, nices)
    else:
        assert out.priority.startswith("normal priority") and NICE not in nices.values(), (out.priority, nices)


def test_a_refused_priority_is_said_and_not_raised(monkeypatch):
    from bridge import audio_process

    def refuse(which, who, value):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(audio_process.os, "setpriority", refuse)
    got = audio_process.raise_priority()
    assert got.startswith("normal priority") and "Operation not permitted" in got and "CAP_SYS_NICE" in got
