"""Presets: every shipped one loads and renders; broken ones fail with errors that name the problem; the CLI's
`generate --preset` fills what was not given."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from bridge import protocol
from bridge.cli import main
from bridge.presets import PRESETS_DIR, list_presets, load_preset, parse_preset, render_prompt
from engine.errors import UserError

SHIPPED = list_presets(PRESETS_DIR)


def test_the_promised_styles_are_shipped():
    for name in ("lofi-keys", "techno-drums", "ambient-pad", "drum-and-bass", "jazz-trio", "cinematic"):
        assert name in SHIPPED
    assert len(SHIPPED) >= 9
    assert sorted(p.stem for p in PRESETS_DIR.glob("*.json")) == SHIPPED  # no file is skipped by its name


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_preset_loads_and_renders(name):
    preset = load_preset(name, PRESETS_DIR)
    assert preset.name == name and preset.description
    text = render_prompt(preset.prompt, bpm="97.5", key=preset.key)
    assert "{" not in text and "}" not in text and len(text) <= protocol.TEXT_MAX_LEN
    if "{bpm}" in preset.prompt:
        assert "97.5" in text
    if preset.key:
        assert preset.key in text
    applied = preset.as_settings()
    for setting, value in applied.items():  # every value is one /set would accept
        assert protocol.validate("/set", [setting, value]) == [setting, value]
    assert set(applied) == {s.name for s in protocol.SETTINGS} - {"seed"}  # all but the seed: reproducible
    assert 1 <= preset.settings["bars"] <= 64


def test_render_prompt_fills_fields_and_drops_phrases_without_a_value():
    t = "deep techno, {key}, {bpm} bpm, rolling hats"
    assert render_prompt(t, bpm="128", key="A minor") == "deep techno, A minor, 128 bpm, rolling hats"
    assert render_prompt(t, bpm=None, key=None) == "deep techno, rolling hats"
    assert render_prompt("{bpm} bpm", bpm=None) == ""
    assert render_prompt("literal {braces} stay", bpm="1") == "literal {braces} stay"


def _write(folder, name, data):
    (folder / f"{name}.json").write_text(data if isinstance(data, str) else json.dumps(data))


GOOD = {"name": "mine", "prompt": "funk, {bpm} bpm", "bars": 4, "top_k": 100, "cfg": 3}


@pytest.mark.parametrize("change,words", [
    ({"name": "other"}, '"name" must be'),
    ({"prompt": ""}, '"prompt" must be a non-empty'),
    ({"prompt": "funk in {scale}"}, "unknown field {scale}"),
    ({"prompt": "funk {bpm"}, "unmatched"),
    ({"prompt": "funk, {key}"}, 'no "key"'),
    ({"prompt": "x" * 600}, "too long"),
    ({"bars": 0}, "bars"),
    ({"bars": 4.5}, "bars"),
    ({"top_k": 99999}, "0..2048"),
    ({"temperature": "hot"}, "temperature"),
    ({"cfg": float("nan")}, "cfg"),
    ({"tempo": 120}, "unknown field 'tempo'"),
    ({"key": 5}, '"key" must be'),
])
def test_broken_presets_say_what_is_wrong(tmp_path, change, words):
    data = {**GOOD, **change}
    _write(tmp_path, "mine", data)
    with pytest.raises(UserError) as err:
        load_preset("mine", tmp_path)
    assert words in str(err.value) and "mine.json" in str(err.value)


def test_bad_json_and_bad_names(tmp_path):
    _write(tmp_path, "mine", "{not json")
    with pytest.raises(UserError, match="not valid JSON: .* line 1"):
        load_preset("mine", tmp_path)
    _write(tmp_path, "ok", {**GOOD, "name": "ok"})
    with pytest.raises(UserError) as err:
        load_preset("missing", tmp_path)
    assert err.value.code == "not_found" and "ok" in str(err.value)
    for name in ("../ok", "OK", "", ".hidden", "a/b"):
        with pytest.raises(UserError) as err:
            load_preset(name, tmp_path)
        assert err.value.code == "bad_args"
    assert load_preset("ok", tmp_path).settings == {"bars": 4, "top_k": 100, "cfg": 3.0}
    with pytest.raises(UserError, match="JSON object"):
        parse_preset([1, 2], "x")


def test_presets_folder_from_environment(tmp_path, monkeypatch):
    _write(tmp_path, "mine", GOOD)
    monkeypatch.setenv("MUSICGEN_BRIDGE_PRESETS", str(tmp_path))
    assert list_presets() == ["mine"] and load_preset("mine").prompt == "funk, {bpm} bpm"


@pytest.fixture
def one_thread():
    """One torch thread: on a small shared machine, OpenMP workers spinning against other processes can make
    a tiny render take a minute."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_cli_generate_with_preset_fills_prompt_sampling_and_bars(tiny_mono, tmp_path, one_thread):
    model = str(tiny_mono[0])
    a, b, c = tmp_path / "a.wav", tmp_path / "b.wav", tmp_path / "c.wav"
    assert main(["generate", "--preset", "techno-drums", "--bpm", "600", "--seed", "4", "--model", model,
                 "--out", str(a)]) == 0
    preset = load_preset("techno-drums")
    s = preset.settings
    spelled_out = ["generate", render_prompt(preset.prompt, bpm="600", key=preset.key), "--bpm", "600",
                   "--bars", str(s["bars"]), "--temperature", str(s["temperature"]), "--cfg", str(s["cfg"]),
                   "--top-k", str(s["top_k"]), "--seed", "4", "--model", model, "--out", str(b)]
    assert main(spelled_out) == 0
    audio_a, sr = sf.read(a)
    assert len(audio_a) == s["bars"] * 12800  # the preset's bars at --bpm: a 4/4 bar at 600 bpm is 0.4 s
    assert np.array_equal(audio_a, sf.read(b)[0])  # same prompt, sampling and length as spelled out
    # Flags given win over the preset.
    assert main(["generate", "--preset", "techno-drums", "--bpm", "600", "--seconds", "0.3", "--seed", "4",
                 "--model", model, "--out", str(c)]) == 0
    assert len(sf.read(c)[0]) == 9600


def test_cli_generate_needs_a_prompt_or_a_preset(tmp_path, capsys):
    assert main(["generate", "--out", str(tmp_path / "x.wav")]) == 2
    assert "give a prompt" in capsys.readouterr().err
    assert main(["generate", "--preset", "nope", "--out", str(tmp_path / "x.wav")]) == 2
    assert "no preset named 'nope'" in capsys.readouterr().err
