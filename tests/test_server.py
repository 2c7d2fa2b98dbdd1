"""The bridge server end to end: `musicgen-bridge serve --model random-tiny` in a subprocess, over UDP with
python-osc. Short bars at fast tempos keep the renders small."""

from __future__ import annotations

import signal
import socket
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge import protocol
from bridge.presets import load_preset, render_prompt
from engine.devices import auto_dtype, dtype_name
from tests.test_server_harness import Bridge, Listener, free_udp_port

AUTO = dtype_name(auto_dtype(torch.device("cpu"))[0])  # what --dtype auto picks on this CPU

SR = 32000


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    # One stream at a time, so the queue (busy, cancel of a queued request) is what these tests see; the batching
    # engine, serve's default, is driven through the server by tests/test_server_batch.py and the device's tests.
    b = Bridge(tmp_path_factory.mktemp("bridge"), "--engine", "local")
    try:
        b.first_pong = b.ping(timeout=15)
        b.ready_before_pong = bool(b.listener.all("/status", lambda a: a[0] == "ready"))
        b.wait_ready()
    except BaseException:
        b.stop(signal.SIGKILL)
        raise
    yield b
    # Shut down while a job runs: the bridge must still exit cleanly with 0.
    b.send("/tempo", 60.0, 4, 4)
    b.send("/generate", 999, "", 4)
    b.listener.wait("/ack", lambda a: a[0] == 999)
    rc = b.stop(signal.SIGTERM)
    assert rc == 0, b.log()[-2000:]
    assert "Traceback" not in b.log(), b.log()[-3000:]


def wav(path) -> np.ndarray:
    audio, sr = sf.read(path, always_2d=True, dtype="float32")
    assert sr == SR
    return audio.T


def test_ping_answers_at_once_and_status_goes_ready(bridge):
    assert bridge.first_pong[1] == protocol.VERSION and not bridge.ready_before_pong  # before the model loaded
    statuses = [a[0] for a in bridge.listener.all("/status")]
    assert statuses.index("ready") > 0 and set(statuses[: statuses.index("ready")]) <= {"starting", "loading"}
    bridge.send("/status")
    state, model, steps, queued, realtime, dtype, underruns = \
        bridge.listener.wait("/status", lambda a: a[0] == "ready" and a[1])[1]
    assert model == "random-tiny" and queued == 0 and steps >= 0 and realtime >= 0 and underruns == 0
    assert dtype == AUTO  # serve's default is --dtype auto, and /status names what it chose
    log = bridge.log()
    assert f"--dtype auto: {AUTO} (CPU:" in log  # the startup log says what auto picked and why
    # the one-time costs (the traced CPU step) were paid before it said ready
    assert "warmed up in" in log and log.index("warmed up in") < log.index("ready after")


def test_heartbeat_counts_up_every_second(bridge):
    time.sleep(2.2)
    beats = bridge.listener.timed("/heartbeat")
    seqs = [a[0] for _, a in beats]
    assert seqs[:3] == [0, 1, 2] and seqs == sorted(seqs) and len(seqs) >= 3
    gaps = np.diff([t for t, _ in beats])
    assert 0.7 < np.median(gaps) < 1.3


def test_generate_is_exactly_n_bars_of_7_8(bridge):
    bridge.send("/set", "seed", 11)
    bridge.send("/tempo", 97.0, 7, 8)
    bridge.send("/generate", 1, "", 2)
    assert bridge.listener.wait("/ack", lambda a: a[0] == 1)[1] == [1, "/generate"]
    address, args = bridge.listener.result(1)
    assert address == "/done", args
    req, path, seconds, bars = args
    expected = 138557  # 2 bars x 3.5 quarter notes x 60/97 s x 32000 = 138556.7 samples
    audio = wav(path)
    # A mono model's result is written as stereo (both channels the same): the device's groove~ 2 plays a mono
    # file on the left only.
    assert audio.shape == (2, expected) and np.array_equal(audio[0], audio[1])
    assert abs(seconds - expected / SR) < 1e-4 and bars == 2.0
    assert path.startswith(str(bridge.out_dir)) and path.endswith("-r0001-gen.wav")
    progress = bridge.listener.timed("/progress", lambda a: a[0] == 1)
    fractions = [a[1] for _, a in progress]
    assert progress and fractions == sorted(fractions) and all(0 <= f <= 1 for f in fractions)
    gaps = np.diff([t for t, _ in progress])
    assert (gaps > 1 / protocol.PROGRESS_MAX_PER_SECOND - 0.05).all(), gaps


def test_float32_tempo_means_the_decimal_typed(bridge):
    # A tempo where the two readings give different lengths: 3 beats x 60/101.16 s x 32000 = 56939.50 samples
    # for the decimal (56940) but 56939.4996 for the float32 nearest 101.16 (56939).
    bridge.send("/tempo", 101.16, 3, 4)
    bridge.send("/generate", 2, "", 1)
    address, args = bridge.listener.result(2)
    assert address == "/done", args
    assert wav(args[1]).shape[1] == 56940


def test_set_seed_repeats_and_bad_settings_are_refused(bridge):
    bridge.send("/tempo", 600.0, 4, 4)
    paths = []
    for req, seed in ((10, 5), (11, 5), (12, 6)):
        bridge.send("/set", "seed", seed)
        bridge.send("/generate", req, "glass marimba", 1)
        address, args = bridge.listener.result(req)
        assert address == "/done", args
        paths.append(args[1])
    a, b, c = (wav(p) for p in paths)
    assert np.array_equal(a, b) and not np.array_equal(a, c)

    for name, value, words in (("top_k", 99999, "0..2048"), ("nope", 1, "unknown setting"),
                               ("temperature", float("nan"), "finite"), ("cfg", "high", "must be a number"),
                               ("context_seconds", -1.0, "1..30")):
        bridge.send("/set", name, value)
        _, (req, code, msg) = bridge.listener.wait("/error", lambda a: words in a[2])
        assert (req, code) == (-1, "bad_args")


def test_back_to_back_busy_and_cancel(bridge):
    bridge.send("/set", "seed", -1)
    bridge.send("/tempo", 60.0, 4, 4)
    bridge.send("/generate", 20, "", 8)  # 32 s: long enough to still run when the rest arrive
    bridge.listener.wait("/progress", lambda a: a[0] == 20)  # it is running
    bridge.send("/tempo", 600.0, 4, 4)
    for req in (21, 22, 23, 24, 25):  # four fit in the queue, the fifth is refused
        bridge.send("/generate", req, "", 1)
    _, (req, code, msg) = bridge.listener.wait("/error", lambda a: a[0] == 25)
    assert code == "busy" and "waiting" in msg
    bridge.send("/status")
    assert bridge.listener.wait("/status", lambda a: a[0] == "busy" and a[3] == 4)
    bridge.send("/cancel", 22)  # queued: never runs
    assert bridge.listener.result(22)[1][1] == "cancelled"
    t0 = time.monotonic()
    bridge.send("/cancel", 20)  # running: stops within a decoder step
    address, args = bridge.listener.result(20)
    cancel_latency = time.monotonic() - t0
    assert (address, args[1]) == ("/error", "cancelled") and cancel_latency < 2.0
    done = [bridge.listener.result(req) for req in (21, 23, 24)]
    assert [a for a, _ in done] == ["/done"] * 3
    paths = [args[1] for _, args in done]
    assert sorted(paths) == paths and len(set(paths)) == 3  # names sort in the order they were made
    assert all(wav(p).shape[1] == 12800 for p in paths)  # 1 bar at 600 bpm
    bridge.send("/cancel", 20)
    assert bridge.listener.wait("/error", lambda a: a[0] == 20 and a[1] == "not_found")
    bridge.send("/generate", 21, "", 1)  # ids may be reused once a request has ended
    assert bridge.listener.result(21)[0] == "/done"
    print(f"cancel latency {cancel_latency * 1000:.0f} ms")


def test_continue_renders_exact_bars_after_the_recording(bridge, tmp_path):
    bridge.send("/tempo", 600.0, 4, 4)
    t = np.arange(int(0.8 * 44100)) / 44100  # 2 bars at 600 bpm, at Live's rate
    rec = tmp_path / "rec.wav"
    sf.write(rec, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 44100)
    bridge.send("/continue", 30, str(rec), 3, 1)
    address, args = bridge.listener.result(30)
    assert address == "/done", args
    assert wav(args[1]).shape == (2, 38400) and args[1].endswith("-cont.wav")  # 3 bars x 4 x 0.1 s x 32000
    assert abs(args[3] - 3.0) < 1e-6

    text = tmp_path / "notes.txt"
    text.write_text("not audio")
    for req, path, code in ((31, str(tmp_path / "missing.wav"), "bad_audio"), (32, str(text), "bad_audio"),
                            (33, "relative/x.wav", "bad_args")):
        bridge.send("/continue", req, path, 1)
        address, args = bridge.listener.result(req)
        assert (address, args[1]) == ("/error", code), args


def test_jam_streams_bar_chunks_on_song_beats_and_follows_tempo(bridge):
    bridge.send("/set", "chunk_bars", 1)
    bridge.send("/set", "context_seconds", 3.0)
    bridge.send("/transport", 1, 240.0, 4, 4, 5.0)  # playing, just past bar 1: the jam belongs on beat 8
    bridge.send("/jam/start", 40, "")
    assert bridge.listener.wait("/ack", lambda a: a[0] == 40)[1] == [40, "/jam/start"]
    first = [bridge.listener.wait("/chunk", lambda a, i=i: a[:2] == [40, i], timeout=60)[1] for i in range(2)]
    bridge.send("/status")
    assert bridge.listener.wait("/status", lambda a: a[0] == "jamming")
    bridge.send("/tempo", 480.0, 4, 4)
    chunks = list(first)
    while wav(chunks[-1][2]).shape[1] != 16000:  # a bar at the new tempo
        assert len(chunks) < 12, "the jam did not follow the tempo change"
        chunks.append(bridge.listener.wait("/chunk", lambda a, i=len(chunks): a[:2] == [40, i], timeout=60)[1])
    bridge.send("/jam/stop", 40)
    assert bridge.listener.wait("/ack", lambda a: a == [40, "/jam/stop"])
    address, done = bridge.listener.result(40)
    assert address == "/done", done
    every = bridge.listener.all("/chunk", lambda a: a[0] == 40)
    assert [c[1] for c in every] == list(range(len(every)))
    assert [wav(c[2]).shape[1] for c in every[:2]] == [32000, 32000]  # exactly a bar at 240 bpm
    for prev, c in zip(every, every[1:]):  # contiguous in beats, whole bars, on the song's grid
        assert c[3] == pytest.approx(prev[3] + prev[4]) and c[4] == pytest.approx(4.0)
    # The bar after /jam/start is beat 8; a host too busy to keep up starts the jam on a later bar line
    # (honest pacing, tests/test_server_jam.py), and then every chunk follows on from there.
    # (If the host slows down mid-jam, it moves on once more by whole bars, with /error 40 slow.)
    first = every[0][5]
    assert every[0][3] == 0 and first >= 8.0 and first % 4 == 0
    offsets = [c[5] - c[3] for c in every]
    assert offsets == sorted(offsets) and all(o % 4 == 0 for o in offsets)
    assert len(set(offsets)) == 1 + len(bridge.listener.all("/error", lambda a: a[:2] == [40, "slow"]))
    whole = wav(done[1])
    # Chunks are stereo for the device's players (a mono model on both sides); the whole jam keeps the model's.
    assert np.array_equal(whole, np.concatenate([wav(c[2])[:whole.shape[0]] for c in every], axis=1))
    assert done[2] == pytest.approx(whole.shape[1] / SR, abs=1e-4) and done[1].endswith("-jam.wav")
    bridge.send("/transport", 0, 600.0, 4, 4, 0.0)
    bridge.listener.wait("/status", lambda a: a[0] == "ready")


def test_melody_needs_a_melody_model_and_bad_melody_files_are_reported(bridge, tmp_path):
    bridge.send("/tempo", 600.0, 4, 4)
    bridge.send("/melody/notes", 50, 4.0, 60, 0.0, 1.0, 100, 64, 1.0, 1.0, 100)
    assert bridge.listener.wait("/ack", lambda a: a == [50, "/melody/notes"])
    bridge.send("/generate", 51, "", 1)
    address, (req, code, msg) = bridge.listener.result(51)
    assert (address, code) == ("/error", "bad_args") and "musicgen-melody" in msg
    bridge.send("/melody/clear")
    assert bridge.listener.wait("/ack", lambda a: a == [-1, "/melody/clear"])
    bridge.send("/generate", 52, "", 1)
    assert bridge.listener.result(52)[0] == "/done"

    bridge.send("/melody/notes", 53, 4.0, 60, 0.0, 1.0, 0)  # velocity 0 is a note-off, not a note
    assert bridge.listener.wait("/error", lambda a: a[0] == 53)[1][1] == "bad_midi"
    bridge.send("/melody/midi", str(tmp_path / "missing.mid"))
    assert bridge.listener.wait("/error", lambda a: a[0] == -1 and "/melody/midi" in a[2])[1][1] == "bad_midi"
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF....WAVEjunk")
    bridge.send("/melody/audio", str(junk), 1)
    assert bridge.listener.wait("/error", lambda a: a[0] == -1 and "/melody/audio" in a[2])[1][1] == "bad_audio"
    bridge.send("/melody/clear")
    bridge.send("/melody/record/start")
    _, (req, code, msg) = bridge.listener.wait("/error", lambda a: "--input-device" in a[2])
    assert code == "bad_input"


def test_preset_sets_prompt_and_sampling(bridge):
    bridge.send("/tempo", 600.0, 4, 4)
    bridge.send("/preset", "techno-drums")
    assert bridge.listener.wait("/ack", lambda a: a == [-1, "/preset"])
    bridge.send("/set", "seed", 3)
    bridge.send("/generate", 60, "", 1)
    # The same render with the prompt typed out: identical audio means the preset's template was filled in
    # exactly (and its sampling settings stayed).
    preset = load_preset("techno-drums")
    bridge.send("/set", "prompt", render_prompt(preset.prompt, bpm="600", key=preset.key))
    bridge.send("/generate", 61, "", 1)
    bridge.send("/set", "prompt", "something else entirely")
    bridge.send("/generate", 62, "", 1)
    a, b, c = (wav(bridge.listener.result(r)[1][1]) for r in (60, 61, 62))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    for name, code in (("no-such-preset", "not_found"), ("../etc/passwd", "bad_args")):
        bridge.send("/preset", name)
        assert bridge.listener.wait("/error", lambda a: a[0] == -1 and name in a[2])[1][1] == code


def test_unknown_things_get_errors(bridge):
    bridge.send("/nope", 1)
    assert bridge.listener.wait("/error", lambda a: "'/nope'" in a[2])[1][1] == "unknown_address"
    bridge.send("/jam/stop", 777)
    assert bridge.listener.wait("/error", lambda a: a[0] == 777)[1][1] == "not_found"
    bridge.send("/generate", 70, "x", 0)
    assert bridge.listener.result(70)[1][1] == "bad_args"
    bridge.send("/transport", 1, 120.0, 4, 3, 0.0)  # a meter Live cannot have
    assert bridge.listener.wait("/error", lambda a: "/transport" in a[2] and "denominator" in a[2])[1][1] == "bad_args"
    assert bridge.ping()[1] == protocol.VERSION


def test_without_a_model_it_stays_up_and_says_why(tmp_path):
    b = Bridge(tmp_path, model=str(tmp_path / "no-model-here"))
    try:
        _, (req, code, msg) = b.listener.wait("/error", lambda a: a[1] == "no_model", timeout=60)
        assert req == -1 and "no-model-here" in msg
        b.send("/status")
        assert b.listener.wait("/status", lambda a: a[0] == "error")
        b.send("/generate", 1, "x", 1)
        assert b.listener.result(1)[1][1] == "no_model"
        assert b.ping()[1] == protocol.VERSION
    finally:
        assert b.stop(signal.SIGINT) == 0
    assert "Traceback" not in b.log()



def test_an_unknown_dtype_is_a_no_model_error_and_it_stays_up(tmp_path):
    b = Bridge(tmp_path, "--dtype", "float7")
    try:
        _, (req, code, msg) = b.listener.wait("/error", lambda a: a[1] == "no_model", timeout=60)
        assert req == -1 and "unknown dtype 'float7'" in msg
        assert b.ping()[1] == protocol.VERSION
    finally:
        assert b.stop(signal.SIGINT) == 0
    assert "Traceback" not in b.log()


def test_protocol_command_prints_the_table(capsys):
    from bridge.cli import main

    assert main(["protocol"]) == 0
    assert capsys.readouterr().out == protocol.protocol_json()


@pytest.mark.parametrize("args,words", [
    (["--audio-device", "no such device anywhere"], "no output audio device matches"),
    (["--input-device", "no such mic anywhere"], "no input audio device matches"),
    (["--out-dir", "/nonexistent/folder"], "not a folder"),
    (["--port", "70000"], "between 1 and 65535"),
])
def test_serve_bad_options_are_one_line_and_exit_2(args, words, tmp_path, capsys):
    from bridge.cli import main

    base = ["serve", "--model", "random-tiny", "--out-dir", str(tmp_path), "--port", str(free_udp_port())]
    assert main(base + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


def test_serve_refuses_a_port_in_use(bridge, tmp_path, capsys):
    from bridge.cli import main

    assert main(["serve", "--model", "random-tiny", "--out-dir", str(tmp_path), "--port", str(bridge.port)]) == 2
    assert f"cannot listen on 127.0.0.1:{bridge.port}: Address already in use" in capsys.readouterr().err


def _send_from(host: str, port: int, data: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        s.sendto(data, ("127.0.0.1", port))


def _osc(address: str, *args) -> bytes:
    b = OscMessageBuilder(address=address)
    for a in args:
        b.add_arg(a)
    return b.build().dgram


def test_only_a_valid_message_moves_the_replies(bridge):
    """A datagram from another loopback address (127.0.0.2) that does not parse or validate must not take the
    device's replies; a valid one may (both ends are on this machine), and the device's next message takes them
    back. Negative control: the bridge before issue 15 moved replies on any datagram and fails the first part."""
    other = Listener(bridge.reply_port, host="127.0.0.2")
    try:
        for data in (b"\x00\x01 not OSC", _osc("/ping", "not an int"), _osc("/no/such/address", 1),
                     _osc("/generate", 5, "prompt")):  # unreadable, wrong arguments, unknown, too few arguments
            _send_from("127.0.0.2", bridge.port, data)
        # Each is answered with an /error at the device's address, and the heartbeat stays there.
        codes = [bridge.listener.wait("/error", lambda a: a[0] in (-1, 5), timeout=10)[1][1] for _ in range(4)]
        assert codes == ["bad_args", "bad_args", "unknown_address", "bad_args"]
        seq = max(a[0] for a in bridge.listener.all("/heartbeat"))
        bridge.listener.wait("/heartbeat", lambda a: a[0] > seq, timeout=5)
        bridge.send("/ping", 4242)
        bridge.listener.wait("/pong", lambda a: a[0] == 4242, timeout=5)
        assert other.messages == []

        _send_from("127.0.0.2", bridge.port, _osc("/ping", 4343))
        assert other.wait("/pong", lambda a: a[0] == 4343, timeout=5)[1] == [4343, protocol.VERSION]
        other.wait("/heartbeat", timeout=5)  # the replies moved with the valid message
    finally:
        bridge.send("/ping", 4444)  # the device speaks again: the replies come back to it
        bridge.listener.wait("/pong", lambda a: a[0] == 4444, timeout=5)
        other.close()


def test_lock_loop_and_key_through_the_bridge(bridge):
    from engine.bars import Tempo

    defaults = {s.name: s.default for s in protocol.SETTINGS}
    bridge.send("/tempo", 600.0, 4, 4)
    bridge.send("/set", "key", "A minor")
    bridge.send("/set", "prompt", "drums in {key}")
    bridge.send("/set", "loop", 1)  # lock is on by default
    bridge.send("/generate", 80, "", 2)
    address, args = bridge.listener.result(80)
    assert address == "/done", args
    assert wav(args[1]).shape[1] == Tempo(600).bars_to_samples(2, SR)  # exactly 2 bars, though 3 were rendered
    log = bridge.log()
    # Random weights make noise: there is no beat, so the result is left as it is, and the log says so.
    assert "#80 not locked: no clear beat" in log and "made to loop seamlessly" in log
    assert "#80 prompt 'drums in A minor, 600 bpm'" in log  # the prompt actually used
    bridge.send("/set", "lock", 0)
    bridge.send("/set", "loop", 0)
    bridge.send("/generate", 81, "", 1)
    assert bridge.listener.result(81)[0] == "/done"
    assert "#81 not locked" not in bridge.log() and "#81 made to loop" not in bridge.log()
    for name in ("key", "prompt", "lock", "loop"):
        bridge.send("/set", name, defaults[name])
