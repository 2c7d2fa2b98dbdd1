"""bridge.humming (voice → chroma), bridge.audio_io (load/write) and the audio side of bridge.melody."""

import numpy as np
import pytest
import soundfile as sf

from bridge.audio_io import load_audio, write_wav_atomic
from bridge.humming import chroma_from_humming, hummed_pitch_classes
from bridge.melody import chroma_command, melody_chroma_from_file, plot_chroma
from engine.chroma import CHROMA_HOP, CHROMA_SR, chroma_frames_for_samples, chroma_from_audio, one_hot
from engine.errors import BadAudio, UserError

HOP_S = CHROMA_HOP / CHROMA_SR


def voice(melody, sr, detune=0.0, seed=0):
    """A voice-like take: (midi or None, seconds) segments; harmonics with a falling spectrum, 5.5 Hz vibrato of
    ±30 cents, soft 80 ms onsets, breath noise throughout and short gaps. Returns (audio, [(start, end, pc)])."""
    rng = np.random.default_rng(seed)
    parts, labels, now = [], [], 0.0
    for pitch, seconds in melody:
        n = round(seconds * sr)
        t = np.arange(n) / sr
        if pitch is None:
            parts.append(np.zeros(n))
        else:
            vibrato = 0.3 / 12 * np.sin(2 * np.pi * 5.5 * t + rng.uniform(0, 2 * np.pi))
            f = 440 * 2 ** ((pitch + detune - 69) / 12 + vibrato)
            phase = 2 * np.pi * np.cumsum(f) / sr
            tone = sum(0.6**k * np.sin((k + 1) * phase) for k in range(8) if (k + 1) * f.max() < sr / 2)
            envelope = np.minimum(1, t / 0.08) * np.minimum(1, (seconds - t) / 0.05)
            parts.append(0.3 * tone * envelope)
            labels.append((now, now + seconds, pitch % 12))
        now += seconds
    audio = np.concatenate(parts)
    breath = np.convolve(rng.standard_normal(audio.size), np.ones(4) / 4, mode="same")  # soft, airy noise
    return (audio + 0.015 * breath).astype(np.float32), labels


def voiced_frame_accuracy(pcs, labels):
    judged = []
    for i, pc in enumerate(pcs):
        t = i * HOP_S
        want = next((p for start, end, p in labels if start <= t < end), None)
        if want is not None:
            judged.append(pc == want)
    return np.mean(judged), len(judged)


# C E G - F D B, with breaths between phrases
TUNE = [(60, 0.55), (None, 0.1), (64, 0.5), (67, 0.6), (None, 0.15), (65, 0.5), (62, 0.55), (59, 0.5)]


def test_hummed_melody_sharp_singer_with_vibrato():
    audio, labels = voice(TUNE, 22050, detune=0.45)  # 45 cents sharp throughout: rounding alone would fail
    chroma = chroma_from_humming(audio, 22050)
    assert chroma.shape == (chroma_frames_for_samples(round(audio.size * CHROMA_SR / 22050)), 12)
    assert chroma.dtype == np.float32 and np.all(chroma.sum(1) == 1)
    accuracy, n = voiced_frame_accuracy(chroma.argmax(1), labels)
    assert n >= 20 and accuracy >= 0.9, accuracy
    # the plain audio recipe (tuning 0) reads this take worse: humming mode earns its keep
    assert voiced_frame_accuracy(chroma_from_audio(audio, 22050).argmax(1), labels)[0] < accuracy


def test_gaps_hold_the_previous_note_and_leading_silence_takes_the_first():
    tune = [(None, 0.8), (69, 0.6), (None, 1.0), (62, 0.6)]  # silence, A, a long rest, D
    audio, _ = voice(tune, 16000, seed=3)
    pcs = hummed_pitch_classes(np.stack([audio, audio]), 16000)  # stereo input is downmixed
    centers = np.arange(len(pcs)) * HOP_S
    assert set(pcs[centers < 0.8]) == {9}  # leading silence → first note (A)
    rest = (centers > 1.4 + 0.26) & (centers < 2.4 - 0.26)  # frames whose window hears only the rest
    assert rest.sum() >= 3 and set(pcs[rest]) == {9}  # → A held
    assert set(pcs[centers > 2.7]) == {2}  # D to the end


def test_no_voice_is_an_error():
    with pytest.raises(BadAudio, match="no pitched voice"):
        chroma_from_humming(np.zeros(16000), 16000)
    noise = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1
    with pytest.raises(BadAudio, match="no pitched voice"):
        chroma_from_humming(noise, 16000)
    with pytest.raises(BadAudio, match="empty"):
        chroma_from_humming(np.zeros(0), 16000)


def test_wav_round_trip_pcm16_and_float(tmp_path):
    t = np.arange(8000) / 8000
    audio = np.stack([np.sin(2 * np.pi * 440 * t), 1.5 * np.cos(2 * np.pi * 220 * t)]).astype(np.float32)
    write_wav_atomic(tmp_path / "a.wav", audio, 8000)
    loaded, sr = load_audio(tmp_path / "a.wav")
    assert sr == 8000 and loaded.shape == (2, 8000) and loaded.dtype == np.float32
    assert sf.info(str(tmp_path / "a.wav")).subtype == "PCM_16"
    np.testing.assert_allclose(loaded, np.clip(audio, -1, 1), atol=1 / 16000)  # clipped, not wrapped
    write_wav_atomic(tmp_path / "f.wav", audio, 8000, float32=True)
    assert sf.info(str(tmp_path / "f.wav")).subtype == "FLOAT"
    np.testing.assert_array_equal(load_audio(tmp_path / "f.wav")[0], audio)
    write_wav_atomic(tmp_path / "m.wav", audio[0], 8000)  # mono [n]
    assert load_audio(tmp_path / "m.wav")[0].shape == (1, 8000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "f.wav", "m.wav"]  # no temp files left


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "keep.wav"
    write_wav_atomic(target, np.full(100, 0.5), 8000)
    before = target.read_bytes()
    with pytest.raises(sf.LibsndfileError):
        write_wav_atomic(target, np.full(100, 0.5), 0)  # libsndfile rejects a zero sample rate
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.wav"]


def test_load_audio_errors(tmp_path):
    with pytest.raises(BadAudio, match="not found"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(BadAudio, match="not a file"):
        load_audio(tmp_path)
    (tmp_path / "notes.wav").write_text("this is not audio\n" * 20)
    with pytest.raises(BadAudio, match="could not read"):
        load_audio(tmp_path / "notes.wav")
    sf.write(str(tmp_path / "empty.wav"), np.zeros((0, 1)), 16000)
    with pytest.raises(BadAudio, match="no audio"):
        load_audio(tmp_path / "empty.wav")
    sf.write(str(tmp_path / "quiet.wav"), np.zeros(16000), 16000)
    with pytest.raises(BadAudio, match="silent"):
        load_audio(tmp_path / "quiet.wav")
    good = tmp_path / "good.wav"
    sf.write(str(good), np.full(16000, 0.3), 16000)
    (tmp_path / "cut.wav").write_bytes(good.read_bytes()[:30])
    with pytest.raises(BadAudio, match="could not read"):
        load_audio(tmp_path / "cut.wav")


def test_audio_files_through_melody_and_command(tmp_path):
    audio, labels = voice(TUNE, 16000, seed=5)
    path = tmp_path / "take.flac"
    sf.write(str(path), audio, 16000)
    loaded = load_audio(path)[0]
    np.testing.assert_array_equal(melody_chroma_from_file(path), chroma_from_audio(loaded, 16000))
    hummed = chroma_command(str(path), str(tmp_path / "h.npy"), hum=True, plot=str(tmp_path / "h.png"))
    np.testing.assert_array_equal(np.load(tmp_path / "h.npy"), hummed)
    assert voiced_frame_accuracy(hummed.argmax(1), labels)[0] >= 0.9
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError, match="--bpm"):
        melody_chroma_from_file(path, bpm=120)
    with pytest.raises(UserError, match="--track"):
        melody_chroma_from_file(path, track=1)


def test_plot_rejects_bad_shapes(tmp_path):
    plot_chroma(one_hot(np.arange(30) % 12), tmp_path / "ok.png")
    assert (tmp_path / "ok.png").stat().st_size > 1000
    with pytest.raises(UserError, match=r"\[frames, 12\]"):
        plot_chroma(np.zeros((10, 7)), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
