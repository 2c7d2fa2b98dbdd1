"""`generate --takes N`: N files, take i has seed + i and the codes a single render with that seed gives."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from bridge.cli import main
from engine.sampling import take_seed


def test_takes_write_one_file_each_with_derived_seeds(tmp_path, tiny_mono, capsys):
    model = ["--model", str(tiny_mono[0]), "--seconds", "0.5", "--top-k", "50"]
    assert main(["generate", "lo-fi keys", *model, "--seed", "41", "--takes", "3", "--out", str(tmp_path / "v.wav"),
                 "--codes-out", str(tmp_path / "v.npy")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v-1.npy", "v-1.wav", "v-2.npy", "v-2.wav", "v-3.npy", "v-3.wav"]
    printed = capsys.readouterr().out
    for i in range(3):
        seed = take_seed(41, i)
        assert f"seed {seed}" in printed
        single = tmp_path / f"single-{i}.wav"
        assert main(["generate", "lo-fi keys", *model, "--seed", str(seed), "--out", str(single),
                     "--codes-out", str(tmp_path / f"single-{i}.npy")]) == 0
        assert np.array_equal(np.load(tmp_path / f"v-{i + 1}.npy"), np.load(tmp_path / f"single-{i}.npy"))
        # Same codes; the takes' codec runs batched on the engine's worker, the single render's inline, so the
        # audio agrees to float rounding (~120 dB): in a 16-bit file, at most one step where a sample sits on a
        # rounding boundary.
        take, alone = sf.read(tmp_path / f"v-{i + 1}.wav")[0], sf.read(single)[0]
        assert take.shape == alone.shape and np.abs(take - alone).max() <= 1 / 32768 + 1e-9
    assert not np.array_equal(np.load(tmp_path / "v-1.npy"), np.load(tmp_path / "v-2.npy"))


def test_bad_takes_exit_2(tmp_path, tiny_mono, capsys):
    assert main(["generate", "x", "--model", str(tiny_mono[0]), "--takes", "5", "--out", str(tmp_path / "v.wav")]) == 2
    assert "--takes must be 1 to 4" in capsys.readouterr().err
