"""Streaming: chunked = one-shot, continuation = transformers, endless windows on bar lines, exact bars, cancel."""

from __future__ import annotations

import threading
from fractions import Fraction

import numpy as np
import pytest
import torch

from engine.bars import Tempo
from engine.errors import Cancelled, UserError
from engine.generate import generate, open_stream
from engine.sampling import SamplingSettings
from engine.session import StreamSession
from engine.tiny import tiny_tokenizer
from tests.reference import reference_generate

PROMPT = "deep house groove"


def _snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    return 10 * np.log10(np.sum(ref**2) / max(np.sum((ref - test) ** 2), 1e-30))


@pytest.mark.parametrize("greedy", [True, False])
@pytest.mark.parametrize("chunk_seconds", [0.02, 0.37, 1.0])
def test_chunked_equals_one_shot(greedy, chunk_seconds, mono_model):
    settings = SamplingSettings(greedy=greedy, seed=11, top_k=100)
    one_shot = generate(mono_model, PROMPT, 1.6, settings)
    session = StreamSession(mono_model, PROMPT, settings, seconds=1.6, chunk_seconds=chunk_seconds)
    chunks = list(session)
    assert torch.equal(session.stream.codes(), one_shot.codes)
    audio = np.concatenate([c.audio for c in chunks], axis=1)
    assert audio.shape == one_shot.audio.shape
    # Streamed decode equals the one-shot decode of the same codes.
    assert _snr_db(one_shot.audio, audio) >= 40
    # Chunks tile the output in order with the asked size (the last may be shorter).
    step = round(chunk_seconds * 32000)
    assert [c.start_sample for c in chunks] == [i * step for i in range(len(chunks))]
    assert all(c.audio.shape[1] == step for c in chunks[:-1]) and chunks[-1].last


@pytest.mark.parametrize("which", ["mono", "stereo"])
def test_continuation_equals_transformers(which, tiny_mono, tiny_stereo, mono_model, stereo_model):
    (_, ref), model = (tiny_mono, mono_model) if which == "mono" else (tiny_stereo, stereo_model)
    rng = np.random.default_rng(0)
    wav = (0.3 * rng.standard_normal((model.channels, 32000))).astype(np.float32)  # 1 s: 50 prompt frames
    new = 60
    expected, _ = reference_generate(ref, tiny_tokenizer(), PROMPT, new, model.pattern.max_delay,
                                     input_values=torch.from_numpy(wav)[None])
    prompt_codes = model.codec.encode(torch.from_numpy(wav))
    assert torch.equal(expected[:, :50], prompt_codes)  # transformers' prompt codes are ours
    session = StreamSession(model, PROMPT, SamplingSettings(greedy=True, cfg=3.0), seconds=new / 50,
                            audio_prompt=(wav, 32000), chunk_seconds=0.3)
    audio = np.concatenate([c.audio for c in session], axis=1)
    assert torch.equal(session.stream.codes(), expected[:, 50:])
    assert audio.shape == (model.channels, new * 640)  # only the new audio comes back


def test_continuation_resamples_any_rate(mono_model):
    rng = np.random.default_rng(1)
    wav44 = (0.3 * rng.standard_normal((2, 44100))).astype(np.float32)  # stereo 44.1 kHz into a mono model
    session = StreamSession(mono_model, PROMPT, SamplingSettings(seed=1), seconds=0.5, audio_prompt=(wav44, 44100))
    assert session.prompt_frames == 50
    assert sum(c.audio.shape[1] for c in session) == 16000


def test_exact_bars_at_odd_tempo_and_meter(mono_model):
    tempo = Tempo("97", 7, 8)
    session = StreamSession(mono_model, PROMPT, SamplingSettings(seed=2), bars=3, tempo=tempo, chunk_bars=1)
    chunks = list(session)
    # 7/8 at 97 bpm: 3.5 quarter notes a bar, 3.5 x 60/97 s x 32000 = 69278.35 samples
    assert len(chunks) == 3
    assert sum(c.audio.shape[1] for c in chunks) == 207835
    for j, c in enumerate(chunks):
        assert c.start_sample == [0, 69278, 138557][j]  # bar j starts exactly where it should, whatever the chunking
        assert c.start_beat == Fraction(7, 2) * j
    assert session.prompt_text.endswith("97 bpm")


def test_tempo_text_can_be_turned_off(mono_model):
    s = StreamSession(mono_model, PROMPT, SamplingSettings(seed=2), bars=1, tempo=Tempo(120, 4, 4), tempo_in_prompt=False)
    assert s.prompt_text == PROMPT


def test_endless_slides_on_bar_lines_with_continuous_codes(mono_model):
    tempo = Tempo("131", 4, 4)  # a bar is 91.6 frames: bar lines fall between frames
    session = StreamSession(mono_model, PROMPT, SamplingSettings(seed=3, top_k=50), tempo=tempo, chunk_bars=1,
                            context_seconds=4.0, keep_seconds=1.5)
    origins, starts = [], session.stream._start_window

    def record(origin):
        origins.append(origin)
        starts(origin)

    session.stream._start_window = record
    got, yielded = 0, []
    for chunk in session:
        got += chunk.audio.shape[1]
        if got > 12 * 32000:  # 12 s through a 4 s window: at least three slides
            session.stop()
    stream = session.stream
    assert len(origins) >= 3
    bar_frames = {round(round(k * 4 * 60 / 131 * 32000) / 640) for k in range(40)}  # 4/4 bar lines, in frames
    assert all(o in bar_frames for o in origins)
    # Each window re-prefilled the last bars (at most keep + one bar) and never ran past the context.
    assert all(0 < origins[i + 1] - origins[i] <= 200 for i in range(len(origins) - 1))
    # No frame was lost or made twice: the history holds exactly the audio handed out.
    assert stream.new_frames * 640 >= got
    assert int(stream.codes().max()) < 2048


def test_slide_equals_fresh_continuation_greedy(mono_model):
    """After a slide, the new window is exactly a fresh generation prompted with the kept frames: positions restart."""
    greedy = SamplingSettings(greedy=True)
    stream = open_stream(mono_model, PROMPT, greedy, frames=None, window_frames=100, keep_frames=40)
    origins, starts = [], stream._start_window
    stream._start_window = lambda o: (origins.append((o, stream.n_final)), starts(o))[1]
    while stream.new_frames < 150:
        stream.step()
    o, n = origins[0]  # the first slide (the first window started before the patch)
    kept = stream.codes(o, n).clone()
    fresh = open_stream(mono_model, PROMPT, greedy, frames=None, prompt_codes=kept, window_frames=100, keep_frames=40)
    while fresh.new_frames < 40:
        fresh.step()
    assert torch.equal(fresh.codes(0, 40), stream.codes(n, n + 40))


def test_cancel_stops_within_one_step(mono_model):
    session = StreamSession(mono_model, PROMPT, SamplingSettings(seed=4), seconds=8.0, chunk_seconds=0.5)
    steps_at_cancel = []
    it = iter(session)
    next(it)  # generation is under way
    original = session.stream.step

    def step():
        if session.stream.steps == 60:
            session.cancel()
            steps_at_cancel.append(session.stream.steps)
        return original()

    session.stream.step = step
    with pytest.raises(Cancelled):
        list(it)
    assert session.stream.steps - steps_at_cancel[0] <= 1


def test_cancel_from_another_thread(mono_model):
    session = StreamSession(mono_model, PROMPT, SamplingSettings(seed=4), seconds=9.0, chunk_seconds=0.5)
    it = iter(session)
    next(it)
    threading.Timer(0.05, session.cancel).start()
    with pytest.raises(Cancelled):
        list(it)
    assert session.stream.new_frames < 450


def test_decode_cost_per_chunk_is_flat(mono_model):
    session = StreamSession(mono_model, PROMPT, SamplingSettings(seed=5), seconds=10.0, chunk_seconds=0.2)
    decoded = []
    original = session.decoder.push

    def push(codes):
        out = original(codes)
        decoded.append(session.decoder.last_frames_decoded)
        return out

    session.decoder.push = push
    list(session)
    assert max(decoded) <= max(decoded[:10]) + 1  # frames decoded per push do not grow with position


def test_settled_frames_are_decoded_in_groups(mono_model):
    # One decoder push re-runs the codec over its context: pushing frame by frame would cost ~50x per second.
    session = StreamSession(mono_model, PROMPT, SamplingSettings(seed=5), seconds=3.0, chunk_seconds=1.0)
    pushes, original = [], session.decoder.push
    session.decoder.push = lambda codes: (pushes.append(codes.shape[1]), original(codes))[1]
    chunks = list(session)
    assert len(chunks) == 3 and sum(pushes) == 150
    assert len(pushes) <= 3 * len(chunks)


@pytest.mark.parametrize("kwargs,expect", [
    (dict(bars=2), "needs a tempo"),
    (dict(seconds=1, bars=2, tempo=Tempo(120, 4, 4)), "not both"),
    (dict(seconds=60), "limit"),
    (dict(seconds=1, chunk_seconds=-1), "positive"),
])
def test_bad_session_arguments(kwargs, expect, mono_model):
    with pytest.raises(UserError, match=expect):
        StreamSession(mono_model, PROMPT, SamplingSettings(), **kwargs)


def test_past_the_limit_with_a_context_window(mono_model):
    # 12 s on a model whose window is 10.16 s: allowed when the window may slide, and exactly as long.
    session = StreamSession(mono_model, PROMPT, SamplingSettings(seed=6, top_k=20), seconds=12.0, chunk_seconds=2.0,
                            context_seconds=6.0)
    assert sum(c.audio.shape[1] for c in session) == 12 * 32000
