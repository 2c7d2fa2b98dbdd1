"""`generate` with bars, chunks, --stream-dir, --continue and --context-seconds."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from bridge.cli import main


def test_bars_chunks_and_stream_dir(tmp_path, tiny_mono):
    chunks = tmp_path / "chunks"
    chunks.mkdir()
    out = tmp_path / "take.wav"
    assert main(["generate", "balkan brass", "--model", str(tiny_mono[0]), "--bars", "3", "--bpm", "97",
                 "--time-signature", "7/8", "--chunk-bars", "1", "--stream-dir", str(chunks), "--out", str(out),
                 "--seed", "3"]) == 0
    audio, sr = sf.read(out, always_2d=True)
    assert audio.shape[0] == 207835  # a 7/8 bar at 97 bpm is 3.5 x 60/97 s x 32000 = 69278.35 samples
    files = sorted(chunks.iterdir())
    assert [f.name for f in files] == ["chunk-0000.wav", "chunk-0001.wav", "chunk-0002.wav"]
    lengths = [sf.info(str(f)).frames for f in files]
    assert lengths == [69278, 69279, 69278]  # bar lines at round(k x 69278.35): 0, 69278, 138557, 207835
    joined = np.concatenate([sf.read(str(f), always_2d=True)[0] for f in files])
    assert np.array_equal(joined, audio)


def test_continue_writes_only_new_audio(tmp_path, tiny_stereo):
    loop = tmp_path / "loop.wav"
    sf.write(loop, (0.2 * np.random.default_rng(0).standard_normal((22050, 1))).astype(np.float32), 22050)
    out = tmp_path / "next.wav"
    assert main(["generate", "keep going", "--model", str(tiny_stereo[0]), "--continue", str(loop), "--seconds",
                 "0.5", "--out", str(out)]) == 0
    audio, sr = sf.read(out, always_2d=True)
    assert audio.shape == (16000, 2) and sr == 32000


def test_context_seconds_allows_past_the_limit(tmp_path, tiny_mono):
    out = tmp_path / "long.wav"
    assert main(["generate", "ambient pad", "--model", str(tiny_mono[0]), "--seconds", "11", "--context-seconds",
                 "4", "--top-k", "20", "--out", str(out)]) == 0
    assert sf.info(str(out)).frames == 11 * 32000


def test_streaming_bad_input(tmp_path, tiny_mono, capsys):
    base = ["generate", "x", "--model", str(tiny_mono[0]), "--out", str(tmp_path / "o.wav")]
    for extra, expect in ((["--bars", "2"], "need --bpm"), (["--bpm", "0", "--bars", "1"], "bpm"),
                          (["--bpm", "120", "--time-signature", "7/6", "--bars", "1"], "denominator 6"),
                          (["--continue", str(tmp_path / "missing.wav")], "not found"),
                          (["--stream-dir", str(tmp_path / "nope")], "not a folder")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expect in err[0], (extra, err)
    assert not (tmp_path / "o.wav").exists()
