"""Key estimation (engine/key.py) on synthesized melodies in known keys, from audio and from the device's notes."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.midi_chroma import Note, chroma_from_notes
from engine.chroma import chroma_from_audio
from engine.key import estimate_key, key_for_prompt, key_scores

SR = 32000
# (key, notes as (MIDI pitch, beats)): scales and tunes that stress their tonic as tunes do.
MELODIES = [
    ("D major", [(62, 2), (64, 1), (66, 1), (67, 1), (69, 1), (71, 1), (73, 1), (74, 2), (73, 1), (71, 1), (69, 1),
                 (67, 1), (66, 1), (64, 1), (62, 3)]),
    ("A minor", [(57, 2), (60, 1), (64, 1), (69, 2), (68, 1), (69, 1), (64, 1), (60, 1), (59, 1), (57, 3), (62, 1),
                 (60, 1), (59, 1), (56, 1), (57, 3)]),
    ("F# minor", [(66, 2), (69, 1), (73, 1), (71, 1), (69, 1), (68, 1), (66, 2), (61, 1), (62, 1), (64, 1), (65, 1),
                  (66, 3), (73, 1), (66, 2)]),
    ("Bb major", [(70, 2), (74, 1), (77, 1), (82, 2), (81, 1), (79, 1), (77, 1), (75, 1), (74, 1), (72, 1), (70, 3),
                  (65, 1), (70, 2)]),
    ("E major", [(64, 2), (68, 1), (71, 1), (76, 2), (73, 1), (71, 1), (69, 1), (68, 1), (66, 1), (63, 1), (64, 3)]),
]


def synth(notes: list[tuple[int, float]], bpm: float = 100.0) -> np.ndarray:
    """A plucked-string-like tone per note (a few harmonics, decaying)."""
    out = []
    for pitch, beats in notes:
        t = np.arange(round(beats * 60 / bpm * SR)) / SR
        f = 440.0 * 2 ** ((pitch - 69) / 12)
        tone = sum(np.sin(2 * np.pi * f * h * t) / h for h in (1, 2, 3))
        out.append(tone * np.exp(-t / 0.6) * np.minimum(1, t / 0.005))
    return (0.3 * np.concatenate(out)).astype(np.float32)


@pytest.mark.parametrize("key,notes", MELODIES, ids=[k for k, _ in MELODIES])
def test_key_of_a_played_melody(key, notes):
    found = estimate_key(chroma_from_audio(synth(notes), SR))
    assert found is not None and found.name == key


@pytest.mark.parametrize("key,notes", MELODIES, ids=[k for k, _ in MELODIES])
def test_key_of_the_devices_notes(key, notes):
    starts = np.concatenate([[0], np.cumsum([b for _, b in notes])[:-1]])
    chroma = chroma_from_notes([Note(p, float(s), float(b)) for (p, b), s in zip(notes, starts)], 100.0)
    assert estimate_key(chroma).name == key


def test_no_key_from_too_little():
    one_note = np.zeros((40, 12))
    one_note[:, 7] = 1
    assert estimate_key(one_note) is None
    assert estimate_key(np.zeros((40, 12))) is None


def test_every_key_is_found_from_its_own_profile():
    # Transposing a tune moves its key with it: all 24 keys, each from its rotated scale with a stressed tonic.
    major = np.array([3, 0, 1, 0, 1.5, 1, 0, 2, 0, 1, 0, 1])
    minor = np.array([3, 0, 1, 1.5, 0, 1, 0, 2, 1, 0, 1, 0])
    for tonic in range(12):
        for mode, scale in (("major", major), ("minor", minor)):
            found = estimate_key(np.roll(scale, tonic))
            assert (found.tonic, found.mode) == (tonic, mode)
    assert len(key_scores(major)) == 24


def test_the_given_key_wins_over_the_melody():
    melody = chroma_from_audio(synth(MELODIES[0][1]), SR)  # D major
    assert key_for_prompt("A minor", melody)[0] == "A minor"
    key, source = key_for_prompt("", melody)
    assert key == "D major" and "melody" in source
    assert key_for_prompt(None, None)[0] is None
