"""musicgen-melody: same tokens as transformers' MusicgenMelody; the chroma follows the music when windows slide."""

from __future__ import annotations

import mido
import numpy as np
import pytest
import torch

from bridge.cli import main
from engine.errors import UserError
from engine.generate import open_stream
from engine.sampling import SamplingSettings
from engine.tiny import tiny_tokenizer
from tests.reference import reference_generate

GREEDY = SamplingSettings(greedy=True)


def _melody(n=80, seed=0):
    pcs = np.random.default_rng(seed).integers(0, 12, size=n)
    return np.eye(12, dtype=np.float32)[pcs]


@pytest.mark.parametrize("with_melody", [True, False])
def test_melody_greedy_equals_transformers(with_melody, tiny_melody, melody_model):
    _, ref = tiny_melody
    chroma = _melody()
    kw = {"input_features": torch.from_numpy(chroma)[None]} if with_melody else {}
    expected, scores = reference_generate(ref, tiny_tokenizer(), "jazz piano", 100, 3, **kw)
    stream = open_stream(melody_model, "jazz piano", GREEDY, frames=100, melody=chroma if with_melody else None)
    logits = []
    while not stream.done:
        stream.step()
        logits.append(stream.last_logits.clone())
    assert torch.equal(stream.codes(), expected)
    assert max((a - b.reshape(a.shape)).abs().max().item() for a, b in zip(logits, scores)) < 1e-4


def test_melody_changes_the_music(melody_model):
    a = open_stream(melody_model, "jazz piano", GREEDY, frames=60, melody=_melody(seed=1)).run()
    b = open_stream(melody_model, "jazz piano", GREEDY, frames=60, melody=_melody(seed=2)).run()
    assert not torch.equal(a, b)


def test_chroma_window_advances_with_the_sliding_window(melody_model):
    chroma = _melody(n=50)
    stream = open_stream(melody_model, "techno", GREEDY, frames=None, melody=chroma, window_frames=120, keep_frames=40)
    prefixes, fn = [], stream.prefix_fn

    def record(origin):
        prefixes.append((origin, fn(origin)))
        return fn(origin)

    stream.prefix_fn = record
    while stream.new_frames < 260:
        stream.step()
    origins = [o for o, _ in prefixes]
    assert len(origins) >= 1 and all(o > 0 for o in origins)  # windows after the first
    proj = melody_model.melody.proj
    for origin, prefix in prefixes:
        start = round(origin / 50 * 32000 / 4096)  # the same time in chroma frames
        rows = (start + np.arange(235)) % 50  # wrapping around the melody, as Meta does
        expected = proj(torch.from_numpy(chroma[rows]))
        assert torch.allclose(prefix[0, :235], expected, atol=1e-6)


def test_text_model_refuses_a_melody(mono_model):
    with pytest.raises(UserError, match="melody"):
        open_stream(mono_model, "x", GREEDY, frames=10, melody=_melody())


def test_generate_follows_a_midi_file(tmp_path, tiny_melody, melody_model, capsys):
    mid = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    track.append(mido.MetaMessage("set_tempo", tempo=500000))
    for pitch in (60, 64, 67, 72):
        track.append(mido.Message("note_on", note=pitch, velocity=100, time=0))
        track.append(mido.Message("note_off", note=pitch, velocity=0, time=960))
    mid.save(tmp_path / "line.mid")
    out, chroma_out = tmp_path / "m.wav", tmp_path / "c.npy"
    assert main(["chroma", str(tmp_path / "line.mid"), "--out", str(chroma_out)]) == 0
    c = np.load(chroma_out)
    assert c.shape[1] == 12 and set(c.argmax(1)) >= {0, 4, 7}
    base = ["generate", "piano", "--model", str(tiny_melody[0]), "--seconds", "0.4", "--seed", "1", "--greedy",
            "--dtype", "float32"]
    assert main(base + ["--melody", str(tmp_path / "line.mid"), "--out", str(out),
                        "--codes-out", str(tmp_path / "m.npy")]) == 0
    assert main(base + ["--out", str(tmp_path / "plain.wav"), "--codes-out", str(tmp_path / "plain.npy")]) == 0
    with_midi, without = np.load(tmp_path / "m.npy"), np.load(tmp_path / "plain.npy")
    assert with_midi.shape == without.shape == (4, 20)
    assert not np.array_equal(with_midi, without)  # the melody changed the music...
    # ...and it is the MIDI file's chroma (as `chroma` printed it) that the model followed.
    followed = open_stream(melody_model, "piano", GREEDY, frames=20, melody=c).run()
    np.testing.assert_array_equal(with_midi, followed.numpy())
