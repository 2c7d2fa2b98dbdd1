"""The in-process engine: the same chunks as a session made directly, cancel before and during, one at a time."""

from __future__ import annotations

import threading
from fractions import Fraction

import numpy as np
import pytest
import torch

from engine.bars import Tempo
from engine.errors import Cancelled
from engine.interface import StreamSpec
from engine.local_engine import LocalEngine
from engine.sampling import SamplingSettings
from engine.session import StreamSession
from tests.test_stream_decode import MIN_SNR_DB, snr_db


def test_stream_equals_session(mono_model):
    tempo = Tempo(Fraction(120), 4, 4)
    spec = StreamSpec("warm keys", SamplingSettings(seed=5, top_k=50), tempo=tempo, bars=1, chunk_bars=Fraction(1, 2))
    engine = LocalEngine(mono_model)
    assert engine.info.sample_rate == mono_model.sample_rate and engine.info.dtype == "float32"
    stream = engine.open(spec)
    chunks = list(stream)
    session = StreamSession(mono_model, "warm keys", spec.sampling, bars=1, tempo=tempo, chunk_bars=Fraction(1, 2))
    direct = list(session)
    assert [c.start_beat for c in chunks] == [c.start_beat for c in direct] == [0, 2]
    # Same codes; the engine decodes on its codec worker's one thread, the session on this thread's: the audio
    # agrees to float rounding (the streaming decoder test's bound).
    assert torch.equal(stream._session.stream.codes(), session.stream.codes())
    assert snr_db(np.concatenate([c.audio for c in chunks], 1), np.concatenate([c.audio for c in direct], 1)) > MIN_SNR_DB
    assert stream.seed == 5 and stream.prompt_text.endswith("120 bpm") and stream.steps > 0


def test_cancel_before_start_and_while_running(mono_model):
    engine = LocalEngine(mono_model)
    early = engine.open(StreamSpec("x", SamplingSettings(seed=1), seconds=1.0, chunk_seconds=0.2))
    early.cancel()
    with pytest.raises(Cancelled):
        list(early)
    running = engine.open(StreamSpec("x", SamplingSettings(seed=1), chunk_seconds=0.1))  # endless
    got = []
    with pytest.raises(Cancelled):
        for chunk in running:
            got.append(chunk)
            if len(got) == 2:
                running.cancel()
    assert len(got) == 2


def test_second_stream_waits_for_the_first(mono_model):
    engine = LocalEngine(mono_model)
    first = engine.open(StreamSpec("a", SamplingSettings(seed=1), chunk_seconds=0.1))  # endless
    second = engine.open(StreamSpec("b", SamplingSettings(seed=2), seconds=0.2, chunk_seconds=0.1))
    it = iter(first)
    next(it)
    result: list = []
    t = threading.Thread(target=lambda: result.extend(second))
    t.start()
    t.join(0.5)
    assert t.is_alive() and not result  # the model is held by the first stream
    first.stop()
    for _ in it:
        pass
    t.join(30)
    assert sum(c.audio.shape[1] for c in result) == round(0.2 * mono_model.sample_rate)
