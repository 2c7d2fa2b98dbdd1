"""The engine over WebSocket, all on loopback: the same audio as in-process, tokens, bad frames closing only their
connection, and an engine process killed mid-stream and restarted on the same port."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from fractions import Fraction

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from bridge import wire
from bridge.engine_server import EngineServer, check_bind
from bridge.remote_engine import EngineRefused, RemoteEngine
from engine.bars import Tempo
from engine.errors import Cancelled, EngineLost, UserError
from engine.interface import StreamSpec
from engine.local_engine import LocalEngine
from engine.sampling import SamplingSettings
from engine.session import Chunk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextmanager
def engine_server(model, token=None):
    server = EngineServer(LocalEngine(model), "127.0.0.1", 0, token)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    assert server.ready.wait(10)
    try:
        yield server, f"ws://127.0.0.1:{server.port}"
    finally:
        server.stop()
        thread.join(10)


def same_chunks(a: list[Chunk], b: list[Chunk]) -> None:
    assert [(c.index, c.start_sample, c.start_beat, c.beats, c.last) for c in a] == \
        [(c.index, c.start_sample, c.start_beat, c.beats, c.last) for c in b]
    for x, y in zip(a, b):
        assert x.audio.dtype == y.audio.dtype == np.float32 and np.array_equal(x.audio, y.audio)


def test_frames_and_specs_round_trip_exactly():
    tempo = Tempo(Fraction("123.456"), 7, 8)
    spec = StreamSpec("brass", SamplingSettings(seed=2**62, top_p=0.9, cfg=2.5), tempo=tempo, bars=Fraction(7, 3),
                      chunk_bars=Fraction(1, 2), context_seconds=12.5, tempo_in_prompt=False)
    back = wire.spec_from_json(json.loads(json.dumps(wire.spec_json(spec))), {})
    assert back == spec and back.tempo.bpm == Fraction(15432, 125)
    audio = np.random.default_rng(0).uniform(-1, 1, (2, 999)).astype(np.float32)
    chunk = Chunk(3, audio, 4410, Fraction(21, 2), Fraction(7, 2), True)
    got = wire.frame_chunk(wire.unpack_frame(wire.chunk_frame(7, chunk, 55, wire.AudioFormat.FLOAT32, 32000)))
    same_chunks([got], [chunk])
    for fmt in (wire.AudioFormat.INT16, wire.AudioFormat.FLAC):  # 16-bit: within one step of the float32
        lossy = wire.frame_chunk(wire.unpack_frame(wire.chunk_frame(7, chunk, 55, fmt, 32000)))
        assert np.abs(lossy.audio - audio).max() <= 1 / 32768 and lossy.start_beat == Fraction(21, 2)
    # The engine's busy seconds ride in the tail where it has them; anything but a number from 0 is refused.
    framed = wire.unpack_frame(wire.chunk_frame(7, chunk, 55, wire.AudioFormat.FLOAT32, 32000, busy=1.25))
    assert wire.frame_busy(framed) == 1.25 and wire.frame_busy(wire.unpack_frame(
        wire.chunk_frame(7, chunk, 55, wire.AudioFormat.FLOAT32, 32000))) is None
    for busy in (-1.0, "1", True, float("nan")):
        with pytest.raises(wire.WireError):
            wire.frame_busy(wire.Frame(wire.Kind.AUDIO, 1, meta={"busy": busy}))
    for bad in (b"", b"XX" + bytes(40), wire.pack_frame(wire.Frame(wire.Kind.AUDIO, 1, channels=1, length=10))):
        with pytest.raises(wire.WireError):
            wire.frame_chunk(wire.unpack_frame(bad))
    for text in ('{"type": "open"}', '{"type": "open", "id": -1}', '[1]', 'nope', '{"type": "shutdown", "id": 1}'):
        with pytest.raises(wire.WireError):
            wire.parse_message(text, ("open", "cancel", "stop"))
    with pytest.raises(wire.WireError):  # a path where an array belongs is not a field of the wire
        wire.spec_from_json({"prompt": "x", "audio_prompt": "/etc/passwd"}, {})


def test_remote_gives_the_same_chunks_as_in_process(melody_model):
    """Seeded, with a tempo, bars, an audio prompt and a melody: every field and both attachments travel."""
    rng = np.random.default_rng(1)
    loop = (rng.standard_normal((1, 22050)) * 0.1).astype(np.float32)
    chroma = np.eye(12, dtype=np.float32)[rng.integers(0, 12, 40)]
    spec = StreamSpec("dub bass", SamplingSettings(seed=11, top_k=50), tempo=Tempo(Fraction(97), 7, 8),
                      bars=Fraction(1, 2), chunk_bars=Fraction(1, 4), audio_prompt=(loop, 44100), melody=chroma)
    local = LocalEngine(melody_model).open(spec)
    expected = list(local)
    with engine_server(melody_model) as (_, url):
        engine = RemoteEngine(url, monitor=False)
        assert engine.info == LocalEngine(melody_model).info and engine.capacity == 1
        remote = engine.open(spec)
        got = list(remote)
        same_chunks(got, expected)
        assert (remote.seed, remote.prompt_text) == (local.seed, local.prompt_text) and remote.steps == local.steps
        unseeded = engine.open(StreamSpec("x", seconds=0.2))  # the engine's seed comes back, and reproduces
        first = list(unseeded)
        again = list(engine.open(StreamSpec("x", SamplingSettings(seed=unseeded.seed), seconds=0.2)))
        same_chunks(again, first)


def test_a_batching_engine_sends_its_busy_time_and_a_local_one_none(mono_model):
    """A jam reads its rate from steps / busy time where the engine steps on its own (bridge/jam.py): that time
    crosses the wire from a batching engine; an engine that steps only while read sends none."""
    from engine.batch_engine import BatchEngine

    batch = BatchEngine(mono_model)
    server = EngineServer(batch, "127.0.0.1", 0, None)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert server.ready.wait(10)
        remote = RemoteEngine(f"ws://127.0.0.1:{server.port}", monitor=False).open(StreamSpec("x", seconds=0.3))
        assert list(remote) and remote.steps > 0 and remote.busy_seconds > 0
    finally:
        server.stop()
        thread.join(10)
        batch.close()
    with engine_server(mono_model) as (_, url):
        remote = RemoteEngine(url, monitor=False).open(StreamSpec("x", seconds=0.2))
        assert list(remote) and remote.steps > 0 and remote.busy_seconds is None


def test_cancel_and_stop_reach_the_engine(mono_model):
    with engine_server(mono_model) as (_, url):
        engine = RemoteEngine(url, monitor=False)
        stream = engine.open(StreamSpec("x", SamplingSettings(seed=1), chunk_seconds=0.1))  # endless
        got = []
        with pytest.raises(Cancelled):
            for chunk in stream:
                got.append(chunk)
                if len(got) == 2:
                    stream.cancel()
        stopped = engine.open(StreamSpec("x", SamplingSettings(seed=1), chunk_seconds=0.1))
        n = 0
        for _ in stopped:
            n += 1
            if n == 2:
                stopped.stop()
        assert 2 <= n <= 3  # the chunk in progress may still come
        with pytest.raises(UserError) as err:  # in wire range, out of the engine's: that request fails, not the link
            list(engine.open(StreamSpec("x", SamplingSettings(top_k=5000), seconds=0.2)))
        assert err.value.code == "bad_args"


def test_token(mono_model, caplog):
    with pytest.raises(UserError, match="without a token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "t0ken")
    check_bind("::1", None)
    with engine_server(mono_model, token="s3cret") as (_, url):
        with caplog.at_level(logging.WARNING, logger="bridge.engine_server"):
            for token in ("wrong", None, "s3cret-but-longer"):
                with pytest.raises(EngineRefused, match="refused the token"):
                    RemoteEngine(url, token, monitor=False)
        assert sum("wrong or missing token" in r.getMessage() for r in caplog.records) == 3
        with pytest.raises(InvalidStatus):  # refused before the WebSocket opens: no hello, no engine info
            connect(url, proxy=None, legacy=True)
        engine = RemoteEngine(url, "s3cret", monitor=False)
        assert len(list(engine.open(StreamSpec("x", SamplingSettings(seed=3), seconds=0.2)))) >= 1


def test_commands_refuse_an_open_bind_without_a_token(tiny_mono, capsys, monkeypatch):
    from bridge.cli import main

    monkeypatch.delenv(wire.TOKEN_ENV, raising=False)
    assert main(["engine", "--model", str(tiny_mono[0]), "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "without a token" in capsys.readouterr().err
    assert main(["cluster", "--model", str(tiny_mono[0]), "--host", "0.0.0.0"]) == 2  # before Ray starts
    assert "without a token" in capsys.readouterr().err
    assert main(["serve", "--engine", "http://gpu-box:9300"]) == 2
    assert "a WebSocket address like" in capsys.readouterr().err


def _raw(url):
    ws = connect(url, proxy=None, max_size=None, compression=None, legacy=True)
    assert json.loads(ws.recv(timeout=10))["type"] == "hello"
    return ws


def _closed_with(ws, code: int) -> dict | None:
    """Read until the server closes; the error message it sent first, if any."""
    error = None
    try:
        while True:
            data = ws.recv(timeout=20)
            if isinstance(data, str):
                error = json.loads(data)
    except ConnectionClosed as exc:
        assert exc.rcvd is not None and exc.rcvd.code == code, exc
    return error


def test_bad_frames_close_only_their_connection(mono_model, caplog):
    spec = StreamSpec("steady", SamplingSettings(seed=4), seconds=1.0, chunk_seconds=0.25)
    expected = list(LocalEngine(mono_model).open(spec))
    with engine_server(mono_model) as (_, url), caplog.at_level(logging.INFO, logger="bridge.engine_server"):
        engine = RemoteEngine(url, monitor=False)
        good: list = []
        worker = threading.Thread(target=lambda: good.extend(engine.open(spec)))
        worker.start()
        open_msg = wire.message("open", id=1, spec={"prompt": "x", "seconds": 0.2}, attachments=["melody"])
        bad = [
            ("not json", wire.BAD_FRAME_CLOSE),
            (b"\x00garbage", wire.BAD_FRAME_CLOSE),
            (wire.message("cancel", id=99), wire.BAD_FRAME_CLOSE),  # unknown request id
            (wire.message("open", id=1, spec={"prompt": "x", "path": "/etc/passwd"}), wire.BAD_FRAME_CLOSE),
            (b"\x00" * (wire.MAX_MESSAGE_BYTES + 1), 1009),  # oversized: websockets' max_size
        ]
        errors = []
        for data, code in bad:
            ws = _raw(url)
            ws.send(data)
            errors.append(_closed_with(ws, code))
        ws = _raw(url)  # an attachment that is not what its open message announced
        ws.send(open_msg)
        ws.send(wire.attachment_frame(1, 0, "audio_prompt", np.zeros((1, 100), np.float32), 32000))
        assert _closed_with(ws, wire.BAD_FRAME_CLOSE)["code"] == "bad_frame"
        # A client that vanishes mid-stream: its endless stream is cancelled (else the engine, one stream at a
        # time, would never serve the good stream below).
        ws = _raw(url)
        ws.send(wire.message("open", id=5, spec={"prompt": "x", "chunk_seconds": 0.1}))
        while not isinstance(ws.recv(timeout=60), bytes):
            pass
        ws.socket.shutdown(socket.SHUT_RDWR)
        ws.socket.close()
        worker.join(120)
        assert not worker.is_alive()
        same_chunks(good, expected)
        after = list(engine.open(StreamSpec("x", SamplingSettings(seed=4), seconds=0.2)))
        assert after and after[-1].last
    assert [e["code"] for e in errors[:4]] == ["bad_frame", "bad_frame", "unknown_request", "bad_frame"]
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert "not JSON" in log and "unknown request id 99" in log and "over" in log
    assert "cancelling 1 stream(s)" in log


# ---- a real engine process, killed and restarted


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_engine(folder, port: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "engine", "--model", str(folder), "--port",
                             str(port), "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=env, text=True)
    line = proc.stdout.readline()
    assert "ready on ws://127.0.0.1:" in line, line
    return proc


def test_engine_killed_mid_stream_and_restarted_on_the_same_port(tiny_mono, tmp_path):
    """One engine process, killed mid-stream and restarted on its port. A client's stream raises EngineLost, a new
    one fails at once while the engine is down, the monitor finds it back. A bridge on it (`serve --engine`, no
    model of its own) renders a take, tells the device engine_lost, keeps answering, and is ready again with no
    restart."""
    from tests.test_server_harness import serving

    port = _free_port()
    url = f"ws://127.0.0.1:{port}"
    proc = _start_engine(tiny_mono[0], port)
    lost, restored = threading.Event(), threading.Event()
    try:
        with serving(tmp_path, "--engine", url, model="no-such-model") as b:  # that model would fail to load
            assert f"using the engine at {url}" in b.log()
            b.send("/generate", 1, "lofi", 1)
            address, args = b.listener.result(1)
            assert address == "/done", args
            engine = RemoteEngine(url, on_lost=lambda reason: lost.set(), on_restored=restored.set,
                                  probe_seconds=0.5)
            stream = engine.open(StreamSpec("x", SamplingSettings(seed=2), chunk_seconds=0.1))  # endless
            got = []
            with pytest.raises(EngineLost) as err:
                for chunk in stream:
                    got.append(chunk)
                    if len(got) == 2:
                        proc.send_signal(signal.SIGKILL)
            assert err.value.code == "engine_lost" and lost.wait(5) and not engine.connected
            with pytest.raises(EngineLost):  # while it is down, a new stream fails at once, it does not hang
                list(engine.open(StreamSpec("x", seconds=0.2)))
            b.listener.wait("/error", lambda a: a[0] == -1 and a[1] == "engine_lost", 30)
            b.listener.wait("/status", lambda a: a[0] == "error", 10)
            b.ping()  # still answering
            proc.wait(10)
            proc = _start_engine(tiny_mono[0], port)
            assert restored.wait(30) and engine.connected  # the monitor's backoff found it
            b.listener.wait("/status", lambda a: a[0] == "ready", 60)
            # Seeded streams reproduce across the restart: the chunks before the kill come again.
            again = engine.open(StreamSpec("x", SamplingSettings(seed=2), chunk_seconds=0.1))
            replay = []
            for chunk in again:
                replay.append(chunk)
                if len(replay) == len(got):
                    break
            same_chunks(replay, got)
            engine.close()
            b.send("/generate", 2, "lofi", 1)
            address, args = b.listener.result(2)
            assert address == "/done", args
    finally:
        proc.kill()
        proc.wait(10)
