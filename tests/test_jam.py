"""The Jam on a model-free engine whose samples count up: chunks are contiguous in beats and audio, a tempo change
and a lost engine reopen a stream that continues the tail, nothing delivered is lost or repeated, stop and cancel."""

from __future__ import annotations

import threading
import time
from fractions import Fraction

import numpy as np
import pytest

from bridge.jam import Jam, JamSettings
from bridge.jam_pacing import Pacer
from engine.bars import Tempo
from engine.errors import Cancelled
from engine.sampling import SamplingSettings
from tests.fake_engines import CounterEngine

SR = 1000
FAST = Tempo(600, 4, 4)  # a bar is 0.4 s: 400 samples
SETTINGS = JamSettings(SamplingSettings(seed=3), chunk_bars=1, context_seconds=1.0)


def take(jam: Jam, n: int) -> list:
    out = []
    for chunk in jam:
        out.append(chunk)
        if len(out) == n:
            jam.stop()
    return out


def test_chunks_are_contiguous_bars_and_stop_ends_the_iteration():
    engine = CounterEngine(SR)
    jam = Jam(engine, SETTINGS, FAST, "keys")
    chunks = take(jam, 4)
    assert [c.index for c in chunks] == [0, 1, 2, 3]
    assert [c.start_beat for c in chunks] == [0, 4, 8, 12] and all(c.beats == 4 for c in chunks)
    assert all(c.song_beat is None for c in chunks)  # no transport: no song beats
    audio = np.concatenate([c.audio for c in chunks], axis=1)[0]
    assert np.array_equal(audio, np.arange(1600))
    assert len(engine.specs) == 1 and jam.bars == 4 and jam.realtime > 0


def test_a_tempo_change_reopens_a_stream_that_continues_the_tail():
    engine = CounterEngine(SR)
    tempos = iter([FAST, FAST, Tempo(300, 4, 4)] + [Tempo(300, 4, 4)] * 10)
    jam = Jam(engine, SETTINGS, FAST, "keys", follow=lambda: (next(tempos), "keys"))
    chunks = take(jam, 5)
    assert [c.tempo.bpm for c in chunks] == [600, 600, 600, 300, 300]
    assert [c.start_beat for c in chunks] == [0, 4, 8, 12, 16]  # beats go on where they were
    assert [c.audio.shape[1] for c in chunks] == [400, 400, 400, 800, 800]
    assert len(engine.specs) == 2
    prompt, rate = engine.specs[1].audio_prompt
    assert rate == SR and np.array_equal(prompt[0], np.arange(200, 1200))  # the last second delivered
    assert engine.specs[1].tempo == Tempo(300, 4, 4) and engine.specs[0].audio_prompt is None


def test_an_engine_lost_mid_jam_resumes_from_the_tail_without_losing_or_repeating():
    engine = CounterEngine(SR, lose_after=3)  # the first stream dies instead of making its 4th chunk
    notes = []
    jam = Jam(engine, SETTINGS, FAST, "keys", notify=lambda code, msg: notes.append((code, msg)))
    chunks = take(jam, 6)
    assert [c.index for c in chunks] == list(range(6))
    assert [c.start_beat for c in chunks] == [4 * i for i in range(6)]
    assert [code for code, _ in notes] == ["engine_lost"] and "ws://test" in notes[0][1]
    assert len(engine.specs) == 2
    prompt, _ = engine.specs[1].audio_prompt
    delivered = np.concatenate([c.audio for c in chunks], axis=1)[0]
    assert np.array_equal(prompt[0], delivered[200:1200])  # continues exactly what was delivered
    assert len(np.unique(delivered)) == len(delivered)  # no sample delivered twice


def test_a_jam_on_a_playing_song_names_its_song_beats():
    from bridge.transport import Transport

    transport = Transport()
    transport.set_transport(True, 600.0, 4, 4, 1.0)
    jam = Jam(CounterEngine(SR), SETTINGS, FAST, "keys", song_beat=Fraction(4), transport=transport)
    chunks = take(jam, 3)
    assert [c.song_beat - c.start_beat for c in chunks] == [chunks[0].song_beat] * 3
    assert chunks[0].song_beat % 4 == 0 and chunks[0].song_beat >= 4


def test_cancel_raises_and_stop_before_the_start_yields_nothing():
    jam = Jam(CounterEngine(SR), SETTINGS, FAST, "keys", pacer=Pacer(ahead_min_s=1e6))
    got = []
    with pytest.raises(Cancelled):
        for chunk in jam:
            got.append(chunk)
            if len(got) == 2:
                threading.Thread(target=jam.cancel).start()
    assert 2 <= len(got) <= 3
    stopped = Jam(CounterEngine(SR), SETTINGS, FAST, "keys")
    stopped.stop()
    assert list(stopped) == []


class _UnevenEngine(CounterEngine):
    """Chunk j takes delays[j] seconds to make (the last repeats): a host whose load changes under the jam."""

    def __init__(self, delays: list[float]):
        super().__init__(SR)
        self.delays = delays

    def open(self, spec):
        stream, delays = super().open(spec), self.delays

        class Uneven:
            def __getattr__(self, name):
                return getattr(stream, name)

            def __iter__(self):
                for j, chunk in enumerate(stream):
                    time.sleep(delays[min(j, len(delays) - 1)])
                    yield chunk

        return Uneven()


def _handed_out(chunks, transport, hold: bool) -> list[tuple[float, float]]:
    """(seconds from being handed out to its song beat, song beat) of the chunks until 4 went out; with `hold`, the consumer holds
    each chunk until the next arrives, as tempo lock did when it ran after the jam."""
    out, held = [], None
    for chunk in chunks:
        if hold and held is not None:
            out.append((transport.snapshot().time_of_beat(held.song_beat) - time.monotonic(), held.song_beat))
        if not hold:
            out.append((transport.snapshot().time_of_beat(chunk.song_beat) - time.monotonic(), chunk.song_beat))
        held = chunk
        if len(out) == 4:
            chunks.stop()
    return out


def _uneven_jam(lock: bool) -> tuple[Jam, object]:
    from bridge.transport import Transport

    transport = Transport()
    transport.set_transport(True, 600.0, 4, 4, 2.6)  # a bar is 0.4 s; beat 4 comes in 0.14 s
    # Chunk 0 comes at once, chunk 1 takes most of a bar: a rate measured on chunk 0 alone says "very fast".
    engine = _UnevenEngine([0.0, 0.3, 0.1])
    settings = JamSettings(SamplingSettings(seed=3), chunk_bars=1, context_seconds=1.0, lock=lock)
    return Jam(engine, settings, FAST, "keys", song_beat=Fraction(4), transport=transport), transport


def test_tempo_lock_places_a_chunk_when_it_goes_out_so_it_is_never_late():
    jam, transport = _uneven_jam(lock=True)
    got = _handed_out(jam, transport, hold=False)  # the first lock also compiles librosa's beat tracker (~4 s)
    assert len(got) == 5  # stopped after 4: the lock's held chunk still goes out
    assert all(lead > 0 for lead, _ in got), got  # every chunk reaches the device before its song beat
    assert [b - got[0][1] for _, b in got] == [0, 4, 8, 12, 16]  # still one chunk per bar, contiguous


def test_negative_control_placed_when_made_and_held_afterwards_it_is_late():
    jam, transport = _uneven_jam(lock=False)
    got = _handed_out(jam, transport, hold=True)
    assert got[0][0] < 0, got  # chunk 0 was placed on the bar after it was made, and went out after that bar


class _AheadStream:
    """A counter stream whose engine steps on its own at twice real time (busy_seconds), however the jam reads it."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    @property
    def busy_seconds(self):
        return self.inner.steps / (2 * 50.0)

    def __iter__(self):
        for chunk in self.inner:
            time.sleep(0.05)  # reading a chunk takes longer than making it did
            yield chunk


class _AheadEngine(CounterEngine):
    def open(self, spec):
        return _AheadStream(super().open(spec))


def test_the_rate_comes_from_the_engine_busy_time_where_it_steps_on_its_own():
    jam = Jam(_AheadEngine(SR), SETTINGS, FAST, "keys")
    take(jam, 4)
    assert jam.realtime == pytest.approx(2.0)  # steps / busy time over the frame rate, not steps / reading time
    # Negative control: without busy time the reading times the steps (20 steps per 0.05 s chunk: ~8x).
    slow_read = Jam(_AheadEngine(SR), SETTINGS, FAST, "keys")
    slow_read.engine.open = lambda spec: _TimedOnly(CounterEngine.open(slow_read.engine, spec))
    take(slow_read, 4)
    assert slow_read.realtime != pytest.approx(2.0)


class _TimedOnly(_AheadStream):
    busy_seconds = None
