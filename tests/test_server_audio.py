"""The bridge's audio devices in a real JACK graph (dummy driver): the live output stream starts on the song's
next bar line with the rendered samples, and the microphone records a hummed tone into a melody."""

from __future__ import annotations

import itertools
import re
import time

import numpy as np
import pytest
import soundfile as sf

from bridge.audio_out import START_MARGIN_S
from tests.test_audio_out import _find
from tests.test_server_harness import jack_server, serving  # noqa: F401  (fixture)

# These run against a real JACK server (dummy driver) with realtime scheduling, as audio systems run their clients
# (tests/test_server_harness.Jack; without the privilege it runs without). The bridge plays from its own audio
# process (bridge/audio_process.py), which a saturated machine does not starve (tests/test_audio_process.py); the
# capture here is a Python callback in the test process, and one rerun covers a miss of its own under heavy load.
pytestmark = pytest.mark.flaky(reruns=1)
# A request id per attempt: the bridge (and its listener's messages) outlive a test's first attempt.
REQUESTS = itertools.count(1)

SR = 32000
BEAT = 0.25  # 240 bpm


@pytest.fixture(scope="module")
def bridge(tmp_path_factory, jack_server):  # noqa: F811
    with serving(tmp_path_factory.mktemp("audio"), "--audio-device", "system", "--input-device", "system",
                 env=jack_server.env) as b:
        yield b
    assert "Traceback" not in b.log(), b.log()[-3000:]


def _dac_latency() -> float:
    """What PortAudio says an output stream on this JACK server adds (the bridge's stream sees the same)."""
    import sounddevice as sd

    seen = []

    def cb(outdata, frames, t, status):
        outdata.fill(0)
        seen.append(t.outputBufferDacTime - t.currentTime)

    with sd.OutputStream(device="system", samplerate=SR, channels=1, callback=cb):
        time.sleep(0.1)
    return float(np.median(seen))


class Capture:
    """Records the bridge's live output through JACK; block times mapped to the monotonic clock."""

    def __init__(self, jack):
        import sounddevice as sd

        self.blocks = []
        before = set(jack.ports())
        self.stream = sd.InputStream(device="system", samplerate=SR, channels=1, callback=self._cb)
        self.stream.start()
        ours = sorted(set(jack.ports()) - before)
        theirs = sorted(p for p in jack.ports() if re.search(r":out_\d+$", p) and p not in ours)
        assert theirs, f"the bridge has no JACK output ports: {jack.ports()}"
        jack.connect(theirs[0], next(p for p in ours if re.search(r":in_\d+$", p)))

    def _cb(self, indata, frames, t, status):
        self.blocks.append((time.monotonic(), t.currentTime, indata[:, 0].copy()))

    def stop(self):
        self.stream.stop()
        self.stream.close()
        offset = min(m - cur for m, cur, _ in self.blocks)
        audio = np.concatenate([b for _, _, b in self.blocks])
        starts = np.cumsum([0] + [len(b) for _, _, b in self.blocks])

        def time_of(i):
            k = int(np.searchsorted(starts, i, side="right")) - 1
            return self.blocks[k][1] + offset + (i - starts[k]) / SR

        return audio, time_of


def _bar_error(t: float, t0: float, beats0: float, beats_per_bar: float = 4) -> tuple[float, float]:
    """(distance in seconds from t to the nearest bar line, that bar's song beat) for a song that was at
    beats0 at monotonic t0, at 240 bpm."""
    beat = beats0 + (t - t0) / BEAT
    bar_beat = round(beat / beats_per_bar) * beats_per_bar
    return (beat - bar_beat) * BEAT, bar_beat


def _send_transport(bridge, beats0: float) -> tuple[float, float]:
    """Send /transport with the song at beats0; returns the monotonic times just before and after sending. The
    bridge anchors the song at the datagram's arrival, which loopback stamps within the send
    (tests/test_receive_time.py); on a saturated host the send itself can take milliseconds."""
    before = time.monotonic()
    bridge.send("/transport", 1, 240.0, 4, 4, beats0)
    return before, time.monotonic()


def _assert_on_the_bar(onset: float, sent: tuple[float, float], beats0: float, what: str) -> tuple[float, float]:
    """The onset is within 15 ms of a bar line of the song anchored at some moment of its /transport's send;
    returns (the error against the send's start, that bar's song beat)."""
    error, bar_beat = _bar_error(onset, sent[0], beats0)
    span = sent[1] - sent[0]  # anchored later within the send: the bar lines come up to `span` later
    assert -0.015 < error < 0.015 + span, f"{what} started {error * 1000:.1f} ms off the bar line (the send of " \
        f"/transport took {span * 1000:.1f} ms)"
    return error, bar_beat


def test_generate_plays_live_from_the_next_bar_line(bridge, jack_server):  # noqa: F811
    latency = _dac_latency()
    cap = Capture(jack_server)
    time.sleep(0.2)
    beats0 = 5.5
    sent = _send_transport(bridge, beats0)
    req = next(REQUESTS)
    bridge.send("/generate", req, "", 2)
    address, args = bridge.listener.result(req)
    assert address == "/done", args
    time.sleep(3.3)  # up to a bar of waiting for the bar line after /done, the 2 bars at 240 bpm, and slack
    recorded, time_of = cap.stop()
    result, sr = sf.read(args[1], dtype="float32")
    assert result.shape[1] == 2 and np.array_equal(result[:, 0], result[:, 1])  # mono written to both sides
    result = result[:, 0]
    assert sr == SR and len(result) == 2 * 4 * BEAT * SR
    at = _find(result, recorded)
    # The live stream gets the float samples; the file holds them clipped and rounded to 16 bits.
    assert np.abs(np.clip(recorded[at:at + len(result)], -1, 1) - result).max() < 2 / 32768
    assert np.abs(recorded[at + len(result):]).max() == 0
    onset = time_of(at) + latency
    error, bar_beat = _assert_on_the_bar(onset, sent, beats0, "the result")
    # With tempo lock (on by default) the result goes to the live output once whole and locked, just before /done
    # is sent: it must start on the first bar line after that (START_MARGIN_S after), not a later one.
    done_at = bridge.listener.timed("/done", lambda a: a[0] == req)[0][0]
    assert bar_beat >= 8 and onset < done_at + START_MARGIN_S + 4 * BEAT + 0.015
    bridge.send("/status")
    status = bridge.listener.wait("/status")[1]
    assert status[6] >= 0  # underruns are reported when there is a live output
    print(f"live output on the bar line: {error * 1000:+.1f} ms (beat {bar_beat:g}; send "
          f"{(sent[1] - sent[0]) * 1000:.1f} ms)")


def test_jam_plays_live_from_its_song_beat(bridge, jack_server):  # noqa: F811
    latency = _dac_latency()
    cap = Capture(jack_server)
    time.sleep(0.2)
    beats0 = 13.0
    bridge.send("/set", "chunk_bars", 1)
    sent = _send_transport(bridge, beats0)
    req = next(REQUESTS)
    bridge.send("/jam/start", req, "")
    chunk0 = bridge.listener.wait("/chunk", lambda a: a[:2] == [req, 0], timeout=60)[1]
    bridge.listener.wait("/chunk", lambda a: a[:2] == [req, 1], timeout=60)
    # The first bar line after beat 13 is 16; a jam slower than real time (a saturated host) honestly starts on a
    # later one. Either way its song beat is a bar line, and the live output must play it there.
    assert chunk0[5] >= 16.0 and chunk0[5] % 4 == 0
    time.sleep(3.5)
    bridge.send("/jam/stop", req)
    assert bridge.listener.result(req)[0] == "/done"
    recorded, time_of = cap.stop()
    first, _ = sf.read(chunk0[2], dtype="float32")
    first = first[:, 0]  # both sides hold the mono result
    at = _find(first, recorded)
    assert np.abs(np.clip(recorded[at:at + len(first)], -1, 1) - first).max() < 2 / 32768
    error, bar_beat = _assert_on_the_bar(time_of(at) + latency, sent, beats0, "the jam")
    assert bar_beat == chunk0[5]
    print(f"jam live start: beat {bar_beat:g}, {error * 1000:+.1f} ms (send "
          f"{(sent[1] - sent[0]) * 1000:.1f} ms)")


def test_humming_into_the_microphone_sets_the_melody(bridge, jack_server):  # noqa: F811
    import sounddevice as sd

    phase = [0]

    def tone(outdata, frames, t, status):  # a steady A3, as a hummer would hold it
        n = np.arange(phase[0], phase[0] + frames)
        outdata[:, 0] = 0.3 * np.sin(2 * np.pi * 220.0 * n / SR)
        phase[0] += frames

    before = set(jack_server.ports())
    with sd.OutputStream(device="system", samplerate=SR, channels=1, callback=tone):
        ours = sorted(set(jack_server.ports()) - before)
        bridge.send("/melody/record/start")
        assert bridge.listener.wait("/ack", lambda a: a == [-1, "/melody/record/start"])
        mic = [p for p in jack_server.ports() if re.search(r":in_\d+$", p) and not p.startswith("system")]
        theirs = [p for p in mic if p not in set(ours)]
        assert theirs, jack_server.ports()
        for p in theirs:
            jack_server.connect(ours[0], p)
        time.sleep(1.5)
        bridge.send("/melody/record/stop")
        assert bridge.listener.wait("/ack", lambda a: a == [-1, "/melody/record/stop"], timeout=60)
    recordings = sorted(bridge.out_dir.glob("*-mic.wav"))
    assert len(recordings) == 1
    audio, rate = sf.read(recordings[0])
    audio = audio[:, 0]  # the bridge writes its WAVs stereo, a mono recording on both sides
    assert len(audio) > 1.0 * rate
    loud = audio[np.abs(audio) > 0.1]
    assert len(loud) > 0.5 * rate
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    assert abs(np.argmax(spectrum) * rate / len(audio) - 220.0) < 2
    # the humming path read it as the note A, and told the device so
    assert bridge.listener.wait("/melody")[1] == ["/melody/record/stop", "A 100 %"]
    req = next(REQUESTS)
    bridge.send("/generate", req, "", 1)  # random-tiny is no melody model: the stored melody cannot be used
    address, args = bridge.listener.result(req)
    assert address == "/error" and args[1] == "bad_args" and "musicgen-melody" in args[2]
    bridge.send("/melody/clear")
    bridge.send("/melody/record/stop")
    assert bridge.listener.wait("/error", lambda a: "not recording" in a[2])[1][1] == "bad_input"
