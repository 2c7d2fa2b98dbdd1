"""The protocol table: validation, coercion, the JSON the device reads, and OSC round trips."""

import json
import math
from pathlib import Path

import pytest
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge import protocol
from bridge.protocol import MESSAGES, SETTINGS, ProtocolError, validate

ROOT = Path(__file__).resolve().parent.parent


def bad(address, args, direction="in"):
    with pytest.raises(ProtocolError) as info:
        validate(address, args, direction)
    return info.value


# --- the committed JSON never drifts from the table ---

def test_committed_protocol_json_matches_table():
    committed = (ROOT / "max_for_live" / "protocol.json").read_text(encoding="utf-8")
    assert committed == protocol.protocol_json(), "run: python scripts/write_protocol_json.py"


def test_protocol_dict_has_everything_the_device_needs():
    d = json.loads(protocol.protocol_json())
    assert d["version"] == protocol.VERSION
    assert d["defaults"] == {"host": "127.0.0.1", "port": 9000, "reply_port": 9001}
    assert {(m["address"], m["direction"]) for m in d["messages"]} == {(m.address, m.direction) for m in MESSAGES}
    assert [s["name"] for s in d["settings"]] == [s.name for s in SETTINGS]
    for code in ("bad_args", "unknown_address", "busy", "not_ready", "no_model", "bad_audio", "bad_midi",
                 "not_found", "cancelled", "internal"):
        assert d["errors"][code]
    generate = next(m for m in d["messages"] if m["address"] == "/generate")
    assert [(a["name"], a["type"]) for a in generate["args"]] == [("req", "i"), ("prompt", "s"), ("bars", "i")]
    notes = next(m for m in d["messages"] if m["address"] == "/melody/notes")
    assert [a["name"] for a in notes["repeat"]] == ["pitch", "start", "dur", "vel"]


def test_required_addresses_present():
    ins = {m.address for m in MESSAGES if m.direction == "in"}
    outs = {m.address for m in MESSAGES if m.direction == "out"}
    assert {"/ping", "/status", "/tempo", "/transport", "/set", "/preset", "/generate", "/continue", "/jam/start",
            "/jam/stop", "/cancel", "/melody/midi", "/melody/notes", "/melody/audio", "/melody/record/start",
            "/melody/record/stop", "/melody/clear"} <= ins
    assert {"/pong", "/ack", "/progress", "/chunk", "/done", "/error", "/status", "/heartbeat"} <= outs


def test_table_is_well_formed():
    for m in MESSAGES:
        assert m.direction in ("in", "out")
        assert m.address.startswith("/") and m.doc
        assert not (m.optional and m.repeat), m.address
        for a in m.args + m.optional + m.repeat:
            assert a.type in protocol.TYPES and a.doc, (m.address, a.name)
    for s in SETTINGS:
        assert s.default is not None, s.name
        assert validate("/set", [s.name, s.default]) == [s.name, s.default]


# --- coercion ---

def test_int_float_coercion():
    assert validate("/generate", [1, "x", 4.0]) == [1, "x", 4]
    assert isinstance(validate("/generate", [1.0, "x", 4])[0], int)
    tempo = validate("/tempo", [120])
    assert tempo == [120.0] and isinstance(tempo[0], float)
    assert validate("/tempo", [97.5, 7.0, 8]) == [97.5, 7, 8]
    assert validate("/transport", [True, 120, 4, 4, 0]) == [1, 120.0, 4, 4, 0.0]


def test_set_values_coerced_by_settings_table():
    assert validate("/set", ["top_k", 50.0]) == ["top_k", 50]
    top_p = validate("/set", ["top_p", 1])
    assert top_p == ["top_p", 1.0] and isinstance(top_p[1], float)
    assert validate("/set", ["prompt", "lofi drums"]) == ["prompt", "lofi drums"]
    assert validate("/set", ["seed", -1]) == ["seed", -1]


def test_notes_repeat_groups():
    out = validate("/melody/notes", [3, 8, 60, 0, 1.0, 100, 64, 1.5, 0.5, 90.0])
    assert out == [3, 8.0, 60, 0.0, 1.0, 100, 64, 1.5, 0.5, 90]
    assert validate("/melody/notes", [3, 8]) == [3, 8.0]  # an empty clip is allowed


def test_optional_args_all_or_none():
    assert validate("/continue", [1, "/tmp/a.wav", 4]) == [1, "/tmp/a.wav", 4]
    assert validate("/continue", [1, "/tmp/a.wav", 4, 2]) == [1, "/tmp/a.wav", 4, 2]
    assert validate("/jam/start", [1, "", "/tmp/a.wav"]) == [1, "", "/tmp/a.wav"]
    assert bad("/tempo", [120, 4]).code == "bad_args"  # a numerator without its denominator
    assert validate("/generate", [1, "", 4, 3]) == [1, "", 4, 3]
    assert bad("/generate", [1, "", 4, 5]).code == "bad_args"  # at most 4 takes


# --- errors ---

def test_wrong_arity_names_signature():
    e = bad("/generate", [1, "x"])
    assert e.code == "bad_args"
    assert "/generate expects i:req s:prompt i:bars [i:takes]; got (1, 'x')" in e.message
    assert bad("/generate", [1, "x", 4, 2, 5]).code == "bad_args"
    assert "i:pitch f:start f:dur i:vel" in bad("/melody/notes", [1, 4.0, 60, 0, 1]).message


def test_fractional_float_for_int_rejected():
    e = bad("/generate", [1, "x", 4.5])
    assert "bars" in e.message and "4.5" in e.message


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_rejected(value):
    e = bad("/tempo", [value])
    assert e.code == "bad_args" and "bpm" in e.message
    assert bad("/set", ["cfg", value]).code == "bad_args"


def test_out_of_range_names_argument_and_range():
    e = bad("/generate", [1, "x", 100])
    assert "bars" in e.message and "1..64" in e.message
    e = bad("/set", ["top_k", 5000])
    assert "top_k" in e.message and "0..2048" in e.message
    e = bad("/set", ["temperature", -0.1])
    assert "temperature" in e.message and "0..5" in e.message
    e = bad("/melody/notes", [1, 4.0, 60, 0, 1, 100, 200, 1, 1, 100])
    assert "pitch" in e.message and "0..127" in e.message and "group 2" in e.message
    assert bad("/generate", [-1, "x", 4]).code == "bad_args"  # -1 is only for replies
    assert validate("/error", [-1, "internal", "boom"], "out")[0] == -1


def test_strings_where_numbers_expected_rejected():
    e = bad("/generate", [1, "x", "4"])
    assert "bars" in e.message
    assert bad("/set", ["top_k", "50"]).code == "bad_args"
    assert bad("/generate", [1, 2, 4]).code == "bad_args"  # a number where a string is expected


def test_strings_empty_and_length():
    assert bad("/continue", [1, "", 4]).code == "bad_args"
    assert bad("/preset", [""]).code == "bad_args"
    assert validate("/generate", [1, "", 4]) == [1, "", 4]  # empty prompt = the /set prompt
    e = bad("/generate", [1, "x" * (protocol.TEXT_MAX_LEN + 1), 4])
    assert "too long" in e.message
    assert bad("/set", ["prompt", "y" * (protocol.TEXT_MAX_LEN + 1)]).code == "bad_args"


def test_unknown_address_and_setting():
    e = bad("/nope", [])
    assert e.code == "unknown_address" and "/nope" in e.message
    assert bad("/pong", [1, "v"]).code == "unknown_address"  # /pong is out-only
    e = bad("/set", ["volume", 1])
    assert e.code == "bad_args" and "volume" in e.message and "top_k" in e.message


# --- every message survives a python-osc round trip with its declared types ---

def _example(arg: protocol.Arg, address: str):
    if arg.type == "s":
        return "/tmp/x.wav" if "path" in arg.name else "abc"
    lo = arg.min if arg.min is not None else 0
    hi = arg.max if arg.max is not None else lo + 10
    if arg.type == "i":
        return int(lo + (hi - lo) // 2) if hi - lo < 1000 else int(lo) + 1
    return lo + (hi - lo) / 4  # quarters of these ranges are exact in float32


def _examples(msg):
    if msg.address == "/set":
        return [["top_k", 40], ["temperature", 0.75], ["prompt", "jazz"]]
    base = [_example(a, msg.address) for a in msg.args]
    cases = [base]
    if msg.optional:
        cases.append(base + [_example(a, msg.address) for a in msg.optional])
    if msg.repeat:
        group = [_example(a, msg.address) for a in msg.repeat]
        cases.append(base + group + group)
    return cases


def _osc_type(value):
    return {int: "i", float: "f", str: "s"}[type(value)]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: f"{m.direction}{m.address}")
def test_round_trip_through_python_osc(msg):
    for args in _examples(msg):
        values = validate(msg.address, args, msg.direction)
        declared = [a.type for a in msg.args + msg.optional] + [a.type for a in msg.repeat] * 2
        builder = OscMessageBuilder(address=msg.address)
        for value, kind in zip(values, declared):
            builder.add_arg(value, kind if kind != "any" else _osc_type(value))
        parsed = OscMessage(builder.build().dgram)
        assert parsed.address == msg.address
        again = validate(parsed.address, parsed.params, msg.direction)
        assert again == values  # the examples are exact in float32
        assert [type(v) for v in again] == [type(v) for v in values]
