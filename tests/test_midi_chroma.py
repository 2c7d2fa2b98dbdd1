"""bridge.midi_chroma: MIDI files and note lists → the melody chroma grid."""

import numpy as np
import mido
import pytest

from bridge.melody import chroma_command, melody_chroma_from_file
from bridge.midi_chroma import Note, chroma_from_midi, chroma_from_notes, read_midi_notes
from engine.chroma import CHROMA_HOP, CHROMA_SR, chroma_frames_for_seconds, chroma_from_audio
from engine.errors import BadMidi, UserError

TPB = 480
HOP_S = CHROMA_HOP / CHROMA_SR

# A melody in beats: (pitch, start_beat, duration_beats, velocity)
MELODY = [(60, 0, 1, 100), (64, 1, 1, 90), (67, 2, 1.5, 110), (72, 3.5, 0.5, 80), (71, 4, 1, 100),
          (69, 5, 1, 100), (65, 6, 0.5, 70), (62, 6.5, 1.5, 100), (59, 8, 2, 100), (60, 10, 2, 127)]


def track_from_notes(notes, name="", channel=0, end_beat=None):
    """A mido track from (pitch, start_beat, duration_beats, velocity); note-offs as note_on velocity 0."""
    events = []
    for pitch, start, dur, vel in notes:
        events.append((round(start * TPB), 1, mido.Message("note_on", note=pitch, velocity=vel, channel=channel)))
        events.append((round((start + dur) * TPB), 0, mido.Message("note_on", note=pitch, velocity=0,
                                                                     channel=channel)))
    events.sort(key=lambda e: (e[0], e[1]))
    track = mido.MidiTrack()
    if name:
        track.append(mido.MetaMessage("track_name", name=name, time=0))
    now = 0
    for tick, _, msg in events:
        track.append(msg.copy(time=tick - now))
        now = tick
    end = now if end_beat is None else max(now, round(end_beat * TPB))
    track.append(mido.MetaMessage("end_of_track", time=end - now))
    return track


def tempo_track(changes):
    """changes: [(beat, bpm)] → a conductor track."""
    track = mido.MidiTrack()
    now = 0
    for beat, bpm in changes:
        tick = round(beat * TPB)
        track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=tick - now))
        now = tick
    return track


def write_midi(path, tracks, type_=1):
    mid = mido.MidiFile(type=type_, ticks_per_beat=TPB)
    mid.tracks.extend(tracks)
    mid.save(path)
    return path


def beats_to_seconds(beat, changes):
    """Independent tempo-map arithmetic for the tests: changes [(beat, bpm)] sorted, first at beat 0."""
    seconds = 0.0
    for (b0, bpm), nxt in zip(changes, changes[1:] + [(float("inf"), None)]):
        if beat <= b0:
            break
        seconds += (min(beat, nxt[0]) - b0) * 60.0 / bpm
    return seconds


def sounding_pitch_class(notes_s, t):
    """Pitch class of the (monophonic) note sounding at time t, or None."""
    for pitch, start, end in notes_s:
        if start <= t < end:
            return pitch % 12
    return None


def agreement(chroma, notes_s):
    pcs = chroma.argmax(1)
    judged = [(pcs[i], sounding_pitch_class(notes_s, i * HOP_S)) for i in range(len(pcs))]
    judged = [(got, want) for got, want in judged if want is not None]
    return np.mean([got == want for got, want in judged]), len(judged)


def test_constant_tempo_file_matches_sounding_notes(tmp_path):
    path = write_midi(tmp_path / "m.mid", [tempo_track([(0, 100)]), track_from_notes(MELODY, "lead")])
    chroma = chroma_from_midi(path)
    spb = 60 / 100
    notes_s = [(p, s * spb, (s + d) * spb) for p, s, d, _ in MELODY]
    assert chroma.shape == (chroma_frames_for_seconds(12 * spb), 12)
    assert chroma.dtype == np.float32 and np.all(chroma.sum(1) == 1)
    score, n = agreement(chroma, notes_s)
    assert n > 40 and score >= 0.9, score


def test_tempo_changes_convert_ticks_to_seconds(tmp_path):
    changes = [(0, 120), (3, 60), (6.5, 150), (9, 80)]  # tempo map in track 0, notes in track 1
    path = write_midi(tmp_path / "t.mid", [tempo_track(changes), track_from_notes(MELODY, "lead")])
    notes, length_s = read_midi_notes(path)
    for (p, s, d, v), note in zip(MELODY, notes):
        assert note.pitch == p and note.velocity == v
        assert note.start_s == pytest.approx(beats_to_seconds(s, changes))
        assert note.end_s == pytest.approx(beats_to_seconds(s + d, changes))
    assert length_s == pytest.approx(beats_to_seconds(12, changes))
    chroma = chroma_from_midi(path)
    notes_s = [(p, beats_to_seconds(s, changes), beats_to_seconds(s + d, changes)) for p, s, d, _ in MELODY]
    score, n = agreement(chroma, notes_s)
    assert n > 40 and score >= 0.9, score
    # ignoring the tempo map (constant 120) must put notes in the wrong frames
    wrong = [(p, s * 0.5, (s + d) * 0.5) for p, s, d, _ in MELODY]
    assert agreement(chroma, wrong)[0] < 0.75


def synth(notes_s, length_s, sr=CHROMA_SR):
    """Steady harmonic tones for (pitch, start_s, end_s, velocity), amplitude velocity/127."""
    out = np.zeros(round(length_s * sr))
    for pitch, start, end, vel in notes_s:
        a, b = round(start * sr), round(end * sr)
        t = np.arange(b - a) / sr
        f0 = 440 * 2 ** ((pitch - 69) / 12)
        out[a:b] += vel / 127 * sum(np.sin(2 * np.pi * k * f0 * t) / k**2 for k in (1, 2, 3))
    return (0.2 * out).astype(np.float32)


def test_agrees_with_audio_chroma_of_the_same_notes(tmp_path):
    changes = [(0, 110), (5, 84)]
    # melody plus a soft low accompaniment, to make the weighting matter
    chords = [(48, 0, 4, 45), (52, 0, 4, 45), (53, 4, 4, 45), (57, 4, 4, 45), (55, 8, 4, 45)]
    path = write_midi(tmp_path / "a.mid", [tempo_track(changes), track_from_notes(MELODY, "lead"),
                                           track_from_notes(chords, "pad", channel=1)])
    notes, length_s = read_midi_notes(path)
    midi_chroma = chroma_from_midi(path)
    audio_chroma = chroma_from_audio(synth([(n.pitch, n.start_s, n.end_s, n.velocity) for n in notes],
                                           length_s), CHROMA_SR)
    assert midi_chroma.shape == audio_chroma.shape
    same = np.mean(midi_chroma.argmax(1) == audio_chroma.argmax(1))
    assert same >= 0.9, same


def test_note_list_equals_midi_file(tmp_path):
    notes = [Note(p, s, d, v) for p, s, d, v in MELODY]
    path = write_midi(tmp_path / "n.mid", [tempo_track([(0, 100)]), track_from_notes(MELODY, end_beat=16)])
    from_file = chroma_from_midi(path)
    from_list = chroma_from_notes(notes, 100, length_beats=16)
    assert from_list.shape == (chroma_frames_for_seconds(16 * 0.6), 12)
    np.testing.assert_array_equal(from_file, from_list)
    # bpm replaces the file's tempo map
    np.testing.assert_array_equal(chroma_from_midi(path, bpm=75), chroma_from_notes(notes, 75, length_beats=16))
    assert not np.array_equal(chroma_from_notes(notes, 75), chroma_from_notes(notes, 100)[: len(
        chroma_from_notes(notes, 75))])


def test_frames_without_notes_are_silence():
    notes = [Note(64, 0, 1, 100), Note(67, 8, 1, 100)]  # E, 7 beats of rest, G at 60 BPM
    pcs = chroma_from_notes(notes, 60).argmax(1)
    rest = [i for i in range(len(pcs)) if 1 + 0.3 < i * HOP_S < 8 - 0.3]
    assert rest and all(pcs[i] == 0 for i in rest)
    assert pcs[2] == 4 and pcs[round(8.5 / HOP_S)] == 7


def test_louder_and_more_central_notes_dominate():
    chord = [Note(60, 0, 4, 40), Note(64, 0, 4, 120)]
    assert set(chroma_from_notes(chord, 60).argmax(1)) == {4}
    # an equal-velocity note covering the frame center beats one covering only the window's edge
    frame = 20
    center_beat = frame * HOP_S  # at 60 BPM a beat is a second
    notes = [Note(62, center_beat - 0.25, 0.5, 100), Note(69, center_beat + 0.251, 2, 100)]
    assert chroma_from_notes(notes, 60)[frame].argmax() == 2


def test_track_choice_and_drums_ignored(tmp_path):
    drums = [(36 + i % 3, i * 0.5, 0.25, 127) for i in range(24)]
    bass = [(36, 0, 12, 127)]
    path = write_midi(tmp_path / "song.mid", [
        tempo_track([(0, 100)]),
        track_from_notes(drums, "Drums", channel=9),
        track_from_notes(bass, "Bass", channel=2),
        track_from_notes(MELODY, "Lead", channel=0),
    ])
    lead_only = write_midi(tmp_path / "lead.mid", [tempo_track([(0, 100)]), track_from_notes(MELODY)])
    expected = chroma_from_midi(lead_only)
    np.testing.assert_array_equal(chroma_from_midi(path, track="lead"), expected)
    np.testing.assert_array_equal(chroma_from_midi(path, track=3), expected)
    np.testing.assert_array_equal(chroma_from_midi(path, track="3"), expected)
    assert set(chroma_from_midi(path, track="Bass").argmax(1)) == {0}
    # drums are ignored: drums + lead equals lead alone
    no_bass = write_midi(tmp_path / "dl.mid", [tempo_track([(0, 100)]), track_from_notes(drums, channel=9),
                                                track_from_notes(MELODY)])
    np.testing.assert_array_equal(chroma_from_midi(no_bass), expected)


def test_type0_file_with_tempo_changes_in_the_note_track(tmp_path):
    track = track_from_notes(MELODY)
    # insert a tempo change at beat 4 (tick 1920) into the single track
    merged, now = mido.MidiTrack(), 0
    merged.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(90), time=0))
    tick, inserted = 0, False
    for msg in track:
        tick += msg.time
        if not inserted and tick >= 4 * TPB:
            merged.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(45), time=4 * TPB - now))
            now, inserted = 4 * TPB, True
        merged.append(msg.copy(time=tick - now))
        now = tick
    path = write_midi(tmp_path / "t0.mid", [merged], type_=0)
    changes = [(0, 90), (4, 45)]
    notes, _ = read_midi_notes(path)
    assert [n.start_s for n in notes] == pytest.approx([beats_to_seconds(s, changes) for _, s, _, _ in MELODY])


def test_bad_midi(tmp_path):
    empty = write_midi(tmp_path / "empty.mid", [tempo_track([(0, 120)])])
    with pytest.raises(BadMidi, match="no notes"):
        chroma_from_midi(empty)
    with pytest.raises(BadMidi, match="no notes"):
        chroma_from_midi(write_midi(tmp_path / "none.mid", []))
    drums = write_midi(tmp_path / "drums.mid", [track_from_notes([(36, 0, 1, 100)], channel=9)])
    with pytest.raises(BadMidi, match="drum"):
        chroma_from_midi(drums)
    two = write_midi(tmp_path / "two.mid", [tempo_track([(0, 120)]), track_from_notes(MELODY, "Lead")])
    with pytest.raises(BadMidi, match="no notes.*Lead"):
        chroma_from_midi(two, track=0)
    with pytest.raises(BadMidi, match="no track named 'Piano'.*Lead"):
        chroma_from_midi(two, track="Piano")
    with pytest.raises(BadMidi, match="no track 5"):
        chroma_from_midi(two, track=5)
    with pytest.raises(BadMidi, match="not found"):
        chroma_from_midi(tmp_path / "missing.mid")
    junk = tmp_path / "junk.mid"
    junk.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(range(200)))
    with pytest.raises(BadMidi, match="could not read"):
        chroma_from_midi(junk)
    truncated = tmp_path / "cut.mid"
    truncated.write_bytes(two.read_bytes()[:40])
    with pytest.raises(BadMidi, match="could not read"):
        chroma_from_midi(truncated)


@pytest.mark.parametrize("note, match", [
    (Note(128, 0, 1, 100), "pitch"),
    (Note(60.5, 0, 1, 100), "pitch"),
    (Note(60, -1, 1, 100), "start_beat"),
    (Note(60, 0, 0, 100), "duration"),
    (Note(60, 0, float("nan"), 100), "duration"),
    (Note(60, 0, 1, 0), "velocity"),
    (Note(60, 0, 1, 200), "velocity"),
])
def test_bad_notes(note, match):
    with pytest.raises(BadMidi, match=match):
        chroma_from_notes([Note(62, 0, 1), note], 120)


def test_bad_note_list_and_tempo():
    with pytest.raises(BadMidi, match="empty"):
        chroma_from_notes([], 120)
    with pytest.raises(BadMidi, match="BPM"):
        chroma_from_notes([Note(60, 0, 1)], 0)
    with pytest.raises(BadMidi, match="length_beats"):
        chroma_from_notes([Note(60, 0, 1)], 120, length_beats=-4)


def test_melody_file_dispatch_and_command(tmp_path):
    path = write_midi(tmp_path / "song.MIDI", [tempo_track([(0, 100)]), track_from_notes(MELODY, "Lead")])
    expected = chroma_from_midi(path)
    np.testing.assert_array_equal(melody_chroma_from_file(path), expected)
    out = chroma_command(str(path), str(tmp_path / "m.npy"), bpm=None, track="Lead")
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(np.load(tmp_path / "m.npy"), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npy", "song.MIDI"]  # no temp files left
    with pytest.raises(UserError, match="--hum"):
        melody_chroma_from_file(path, hum=True)
