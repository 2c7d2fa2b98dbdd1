"""The codec worker: sessions decode off their thread with the same pushes and codes as inline, on the worker's
own thread budget, and an error in the codec reaches the session."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from engine.codec_worker import CodecWorker
from engine.thread_tuner import ThreadTuner
from engine.threads import set_thread_budget
from engine.sampling import SamplingSettings
from engine.session import StreamSession
from tests.test_stream_decode import MIN_SNR_DB, snr_db

PROMPT = "worker test"


def render(model, codec, **kw):
    session = StreamSession(model, PROMPT, SamplingSettings(seed=3, top_k=50), codec=codec, **kw)
    pushes, original = [], session.decoder.push
    session.decoder.push = lambda codes: (pushes.append(codes.shape[1]), original(codes))[1]
    chunks = list(session)
    return chunks, session.stream.codes().clone(), pushes


@pytest.mark.parametrize("kw", [dict(seconds=2.0, chunk_seconds=0.5), dict(seconds=1.3, chunk_seconds=0.2)])
def test_worker_session_equals_inline(mono_model, kw, monkeypatch):
    # The inline decode runs on the LM's thread at the count of its latest step: pin the thread tuner's count
    # (engine/thread_tuner.py) so it is the count the worker is given below, as on a host where it does not move.
    monkeypatch.setattr(ThreadTuner, "threads", lambda self: self.most)
    inline = render(mono_model, None, **kw)
    # The caller's thread count, named: the same rounding as inline. (threads=None would take the process default at
    # the worker's first op, which another thread's set_thread_budget may be changing at that moment.)
    worker = CodecWorker(threads=torch.get_num_threads())
    try:
        off = render(mono_model, worker, **kw)
    finally:
        worker.close()
    assert torch.equal(off[1], inline[1])
    assert off[2] == inline[2]  # the same groups of frames, decided by frame counts alone
    assert [c.start_sample for c in off[0]] == [c.start_sample for c in inline[0]]
    for a, b in zip(off[0], inline[0]):
        assert np.array_equal(a.audio, b.audio)


def test_worker_on_its_own_thread_budget(mono_model):
    """1 thread for the codec: within the decoder's bound of inline audio; the other threads keep theirs."""
    before = torch.get_num_threads()
    inline = render(mono_model, None, seconds=1.0, chunk_seconds=0.5)
    worker = CodecWorker(threads=1)
    try:
        off = render(mono_model, worker, seconds=1.0, chunk_seconds=0.5)
        counts = []
        t = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
        t.start()
        t.join()
    finally:
        worker.close()
    assert torch.get_num_threads() == before and counts == [before]  # new threads still get the default
    a, b = np.concatenate([c.audio for c in off[0]], 1), np.concatenate([c.audio for c in inline[0]], 1)
    assert torch.equal(off[1], inline[1]) and snr_db(a, b) > MIN_SNR_DB


def test_thread_budget_is_per_thread():
    before = torch.get_num_threads()
    target = 1 if before > 1 else 2
    got = {}

    def budgeted():
        set_thread_budget(target)
        got["own"] = torch.get_num_threads()

    t = threading.Thread(target=budgeted)
    t.start()
    t.join()
    fresh = threading.Thread(target=lambda: got.setdefault("fresh", torch.get_num_threads()))
    fresh.start()
    fresh.join()
    assert got == {"own": target, "fresh": before} and torch.get_num_threads() == before


def test_codec_error_reaches_the_session(mono_model):
    worker = CodecWorker()
    session = StreamSession(mono_model, PROMPT, SamplingSettings(seed=3), seconds=1.0, chunk_seconds=0.5, codec=worker)

    def broken(codes):
        raise RuntimeError("codec broke")

    session.decoder.push = broken
    try:
        with pytest.raises(RuntimeError, match="codec broke"):
            list(session)
    finally:
        worker.close()


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs an intra-op budget of 2 or more")
def test_a_failed_session_gives_its_thread_its_whole_budget_back(mono_model):
    """The LM's thread steps on a thread fewer while side work runs (engine/threads.py); a session that fails
    mid-stream (here its codec) must still hand that thread its whole budget back, as one that ends does. Side
    work is held for the whole session, so every step runs on the reduced count."""
    from engine.threads import side_work

    before = torch.get_num_threads()
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with side_work():
            holding.set()
            done.wait(30)

    side = threading.Thread(target=hold)
    side.start()
    holding.wait(10)
    worker = CodecWorker()
    try:
        session = StreamSession(mono_model, PROMPT, SamplingSettings(seed=3), seconds=1.0, chunk_seconds=0.5, codec=worker)
        counts = []
        real_step = session.stream.step
        session.stream.step = lambda: (counts.append(torch.get_num_threads()), real_step())[1]

        def broken(codes):
            raise RuntimeError("codec broke")

        session.decoder.push = broken
        with pytest.raises(RuntimeError, match="codec broke"):
            list(session)
    finally:
        done.set()
        side.join()
        worker.close()
    assert counts and counts[-1] == before - 1  # it did step on a thread fewer
    assert torch.get_num_threads() == before
