"""`musicgen-bridge generate`: files right, bad input is one clear line with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from bridge.cli import main


def test_generate_writes_wav_and_codes(tmp_path, tiny_stereo, capsys):
    out, codes = tmp_path / "take.wav", tmp_path / "codes.npy"
    rc = main(["generate", "jazz trio", "--model", str(tiny_stereo[0]), "--seconds", "0.5", "--out", str(out),
               "--codes-out", str(codes), "--seed", "7", "--top-k", "50", "--device", "cpu"])
    assert rc == 0
    audio, sr = sf.read(out, always_2d=True)
    assert sr == 32000 and audio.shape == (16000, 2)
    c = np.load(codes)
    assert c.dtype == np.int64 and c.shape == (8, 25) and c.max() < 2048
    assert "seed 7" in capsys.readouterr().out
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")], "temporary files left behind"


def test_greedy_cli_is_repeatable(tmp_path, tiny_mono):
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i}.npy")
        assert main(["generate", "", "--model", str(tiny_mono[0]), "--seconds", "0.3", "--greedy", "--out",
                     str(tmp_path / f"{i}.wav"), "--codes-out", str(paths[-1])]) == 0
    assert (np.load(paths[0]) == np.load(paths[1])).all()


@pytest.mark.parametrize("args,expect", [
    (["--model", "/nonexistent/model"], "no model folder"),
    (["--dtype", "float7"], "unknown dtype"),
    (["--device", "quantum"], "unknown device"),
    (["--seconds", "0"], "positive"),
    (["--seconds", "-2"], "positive"),
    (["--seconds", "400"], "limit of"),
    (["--top-k", "-3"], "top_k"),
    (["--out", "/nonexistent/dir/x.wav"], "does not exist"),
])
def test_bad_input_is_one_line_exit_2(args, expect, tiny_mono, tmp_path, capsys):
    base = ["generate", "x", "--model", str(tiny_mono[0]), "--out", str(tmp_path / "o.wav")]
    rc = main(base + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and expect in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "o.wav").exists()


def test_limit_is_named(tiny_mono, tmp_path, capsys):
    main(["generate", "x", "--model", str(tiny_mono[0]), "--seconds", "400", "--out", str(tmp_path / "o.wav")])
    err = capsys.readouterr().err
    assert "limit of 10.16 s" in err  # 512 positions - 4 delay columns = 508 frames at 50 frames/s


def test_console_script_exit_code_and_no_traceback(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "musicgen-bridge")
    r = subprocess.run([exe, "generate", "x", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "a.wav")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "no model folder" in r.stderr and "Traceback" not in r.stderr
