"""The OSC protocol between the bridge and the Max for Live device, as one table of plain data.

Both sides read this table: the server validates what it receives (and what it sends) with `validate`, and the
device reads the same table as `max_for_live/protocol.json` (written by `scripts/write_protocol_json.py`), so the
two never disagree about an address or its arguments.

Direction 'in' is device -> bridge (to PORT); 'out' is bridge -> device (to REPLY_PORT). Only OSC types i, f and s
are used, because Max handles nothing else well.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Sequence

from engine.bars import DENOMINATORS, MAX_BPM, MAX_NUMERATOR, MIN_BPM

HOST = "127.0.0.1"
PORT = 9000  # the bridge listens here
REPLY_PORT = 9001  # the device listens here (Max's sending port is random, so replies need a fixed one)

HEARTBEAT_SECONDS = 1.0
HEARTBEAT_MISSES_LOST = 3  # the device shows "engine lost" after this many missed heartbeats
PROGRESS_MAX_PER_SECOND = 2
NOTES_PER_PACKET = 32  # 32 notes * 20 bytes keeps a /melody/notes packet well under 1 KB

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
FLOAT32_MAX = 3.4028234663852886e38
PATH_MAX_LEN = 1024
TEXT_MAX_LEN = 500

TYPES = ("i", "f", "s", "any")


def _package_version() -> str:
    try:
        return metadata.version("musicgen-bridge")
    except metadata.PackageNotFoundError:
        return "0.1.0"


VERSION = _package_version()


class ProtocolError(ValueError):
    """A message that does not fit the table; `code` goes into `/error i:req s:code s:message`."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Arg:
    """One OSC argument. For 'i'/'f', min/max bound the value; for 's', max_len bounds the length."""

    name: str
    type: str
    doc: str
    min: float | None = None
    max: float | None = None
    allow_empty: bool = False
    max_len: int = PATH_MAX_LEN
    default: Any = None  # only used by settings

    def label(self) -> str:
        return f"{self.type}:{self.name}"


@dataclass(frozen=True)
class Message:
    """One OSC address in one direction.

    `optional` arguments are given all together or not at all. `repeat` is a group that follows the fixed
    arguments zero or more times (a message has optional arguments or a repeating group, never both).
    """

    address: str
    direction: str
    args: tuple[Arg, ...]
    doc: str
    optional: tuple[Arg, ...] = ()
    repeat: tuple[Arg, ...] = ()

    def signature(self) -> str:
        parts = [a.label() for a in self.args]
        if self.optional:
            parts.append("[" + " ".join(a.label() for a in self.optional) + "]")
        if self.repeat:
            parts.append("(" + " ".join(a.label() for a in self.repeat) + ")*")
        return " ".join(parts) if parts else "no arguments"


def _num_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


# Arguments that recur across messages.
REQ = Arg("req", "i", "request id chosen by the device; every reply about this request carries it", 0, INT32_MAX)
REPLY_REQ = Arg("req", "i", "the request id this is about; -1 when there is none", -1, INT32_MAX)
BARS = Arg("bars", "i", "length to generate, in bars at the song tempo", 1, 64)
PROMPT = Arg("prompt", "s", "text prompt; empty means the prompt set with /set prompt", allow_empty=True,
             max_len=TEXT_MAX_LEN)
WAV_PATH = Arg("wav_path", "s", "absolute path of a WAV file")
BPM = Arg("bpm", "f", "song tempo in beats per minute", int(MIN_BPM), int(MAX_BPM))
NUM = Arg("num", "i", "time signature numerator", 1, MAX_NUMERATOR)
DEN = Arg("den", "i", "time signature denominator (1, 2, 4, 8 or 16)", 1, max(DENOMINATORS))

SETTINGS: tuple[Arg, ...] = (
    Arg("prompt", "s", "default text prompt", allow_empty=True, max_len=TEXT_MAX_LEN, default=""),
    Arg("top_k", "i", "sample from the k most likely tokens (0 = no top-k)", 0, 2048, default=250),
    Arg("top_p", "f", "nucleus sampling; > 0 replaces top-k", 0, 1, default=0.0),
    Arg("temperature", "f", "sampling temperature; 0 = always the most likely token", 0, 5, default=1.0),
    Arg("cfg", "f", "classifier-free guidance strength", 0, 20, default=3.0),
    Arg("seed", "i", "random seed; -1 = a new random seed each time", -1, INT32_MAX, default=-1),
    Arg("bars", "i", "default length in bars", 1, 64, default=4),
    Arg("chunk_bars", "i", "bars per streamed /chunk", 1, 16, default=1),
    Arg("bpm_in_prompt", "i", "1 = append the song tempo to the text prompt", 0, 1, default=1),
    Arg("context_seconds", "f", "seconds of audio kept as context when continuing or jamming", 1, 30,
        default=10.0),
    Arg("key", "s", "the song's key, e.g. 'A minor' (Live 12 sends its scale); fills {key} in prompts; empty = "
        "the preset's key, else the melody's estimated key", allow_empty=True, max_len=32, default=""),
    Arg("lock", "i", "1 = warp results onto the song's beat grid (tempo lock, at most 8 % stretch)", 0, 1,
        default=1),
    Arg("loop", "i", "1 = /generate and /continue results loop seamlessly (the end runs into the start)", 0, 1,
        default=0),
)

MESSAGES: tuple[Message, ...] = (
    # device -> bridge
    Message("/ping", "in", (Arg("nonce", "i", "echoed back in /pong", INT32_MIN, INT32_MAX),),
            "Liveness check; the bridge answers /pong with the same nonce."),
    Message("/status", "in", (), "Ask for an immediate /status reply."),
    Message("/tempo", "in", (BPM,), "The song tempo changed (and the time signature, when given).",
            optional=(NUM, DEN)),
    Message("/transport", "in",
            (Arg("playing", "i", "1 while Live's transport runs", 0, 1), BPM, NUM, DEN,
             Arg("song_beats", "f", "song position in beats (quarter notes)", 0, None)),
            "Transport state: sent on play/stop and at most once per bar while playing; song_beats is the position "
            "as of sending (the bridge anchors it at the datagram's arrival, stamped by the kernel)."),
    Message("/set", "in",
            (Arg("name", "s", "a setting name from the settings table", max_len=64),
             Arg("value", "any", "the setting's value, of the type the settings table gives")),
            "Change one generation setting; see the settings table for names, types and ranges."),
    Message("/preset", "in", (Arg("name", "s", "preset name (a file in presets/ without its extension)",
                                  max_len=128),),
            "Load a preset: a named group of settings."),
    Message("/generate", "in", (REQ, PROMPT, BARS),
            "Generate new audio from text (and the current melody, if any); replies /ack, /progress, /chunk "
            "..., /done or /error. With `takes` > 1, that many variations are rendered in one pass, each "
            "announced with /take as it completes; /done then names take 0.",
            optional=(Arg("takes", "i", "how many variations to render at once (seeds derived from the "
                          "request's)", 1, 4),)),
    Message("/continue", "in", (REQ, WAV_PATH, BARS),
            "Continue the given recording by `bars` bars; replies like /generate.",
            optional=(Arg("prompt_bars", "i", "how many bars at the end of the recording to continue from",
                          1, 64),)),
    Message("/jam/start", "in", (REQ, PROMPT),
            "Start endless generation in step with the transport, streamed as /chunk messages; it continues "
            "the given recording when there is one.",
            optional=(WAV_PATH,)),
    Message("/jam/stop", "in", (REQ,), "Stop the jam started with this request id."),
    Message("/cancel", "in", (REQ,), "Cancel a running or queued request; it ends with /error req cancelled."),
    Message("/melody/midi", "in", (Arg("path", "s", "absolute path of a MIDI file"),),
            "Use a MIDI file as the melody for following generations."),
    Message("/melody/notes", "in",
            (REQ, Arg("length_beats", "f", "length of the clip in beats", 0, 4096)),
            "Use these notes as the melody. Clips with more than NOTES_PER_PACKET notes are sent as several "
            "/melody/notes with the same req; consecutive ones with the same req append, a new req replaces.",
            repeat=(Arg("pitch", "i", "MIDI note number", 0, 127),
                    Arg("start", "f", "start in beats from the clip start", 0, 4096),
                    Arg("dur", "f", "duration in beats", 0, 4096),
                    Arg("vel", "i", "velocity", 0, 127))),
    Message("/melody/audio", "in", (WAV_PATH,), "Use a recording as the melody.",
            optional=(Arg("hum", "i", "1 = a hummed or sung line: extract its pitch first", 0, 1),)),
    Message("/melody/record/start", "in", (), "Start recording a melody from the microphone."),
    Message("/melody/record/stop", "in", (), "Stop the microphone recording and use it as the melody."),
    Message("/melody/clear", "in", (), "Forget the melody; generate from text alone."),
    # bridge -> device
    Message("/pong", "out",
            (Arg("nonce", "i", "the nonce from /ping", INT32_MIN, INT32_MAX),
             Arg("version", "s", "bridge version", max_len=64)),
            "Answer to /ping."),
    Message("/ack", "out", (REPLY_REQ, Arg("what", "s", "the address that was accepted, e.g. /generate",
                                           max_len=64)),
            "Sent at once when a request is accepted (work may still be queued)."),
    Message("/progress", "out", (REQ, Arg("fraction", "f", "fraction done", 0, 1)),
            "Progress of a request, at most PROGRESS_MAX_PER_SECOND per second."),
    Message("/chunk", "out",
            (REQ, Arg("index", "i", "chunk number, from 0", 0, INT32_MAX), WAV_PATH,
             Arg("start_beat", "f", "where the chunk starts, in beats from the start of the result", 0, None),
             Arg("beats", "f", "chunk length in beats", 0, None)),
            "One streamed piece of a result, a whole number of bars long.",
            optional=(Arg("song_beat", "f", "the song beat (Live's song time) the chunk belongs on: for a jam, the "
                          "first bar line after /jam/start plus start_beat; sent once the bridge has had /transport",
                          0, None),)),
    Message("/take", "out",
            (REQ, Arg("index", "i", "take number, from 0", 0, 3), WAV_PATH),
            "One take of a multi-take /generate, sent as soon as it is complete."),
    Message("/melody", "out",
            (Arg("source", "s", "the address that set the melody, e.g. /melody/audio", max_len=64),
             Arg("summary", "s", "the melody the bridge heard: its most common pitch classes, e.g. "
                 "'D 34 %, A 19 %, F 17 %'", allow_empty=True, max_len=TEXT_MAX_LEN)),
            "A melody is ready and will be followed; sent after the /ack of the message that set it."),
    Message("/done", "out",
            (REQ, WAV_PATH, Arg("seconds", "f", "length of the result in seconds", 0, None),
             Arg("bars", "f", "length of the result in bars", 0, None)),
            "A request finished; the WAV holds the whole result."),
    Message("/error", "out",
            (REPLY_REQ, Arg("code", "s", "short machine code from the errors table", max_len=64),
             Arg("message", "s", "what went wrong and what to do", allow_empty=True, max_len=TEXT_MAX_LEN)),
            "A request failed, or something went wrong outside any request (req -1)."),
    Message("/status", "out",
            (Arg("state", "s", "engine state: starting, loading, ready, busy, jamming or error", max_len=32),
             Arg("model", "s", "model name; empty when none is loaded", allow_empty=True, max_len=256),
             Arg("steps_per_s", "f", "recent decoding speed in steps per second", 0, None),
             Arg("queued", "i", "requests waiting", 0, INT32_MAX),
             Arg("realtime", "f", "real-time factor of recent generation: seconds of audio made per second "
                 "(below 1 a jam cannot keep up); 0 until measured", 0, None),
             Arg("dtype", "s", "the weight format in use, e.g. int8 or bfloat16; empty before a model is "
                 "loaded", allow_empty=True, max_len=32),
             Arg("underruns", "i", "audio output underruns since start (0 without live output)", 0, INT32_MAX)),
            "Engine state, sent on change and in answer to /status."),
    Message("/heartbeat", "out", (Arg("seq", "i", "counts up from 0", 0, INT32_MAX),),
            "Sent every HEARTBEAT_SECONDS; the device shows 'engine lost' after HEARTBEAT_MISSES_LOST misses."),
)

ERRORS: dict[str, str] = {
    "bad_args": "a message's arguments do not match the protocol table",
    "unknown_address": "no such OSC address",
    "bad_input": "the request cannot be done as asked",
    "busy": "the engine is busy and the request cannot be queued",
    "not_ready": "the engine is still starting or loading the model",
    "no_model": "the model is not available (not downloaded or failed to load)",
    "bad_audio": "an audio file is missing, unreadable or empty",
    "bad_midi": "a MIDI file or note list is unreadable or has no notes",
    "not_found": "a named thing (preset, request id, file) does not exist",
    "cancelled": "the request was cancelled",
    "slow": "the engine makes audio slower than real time; a jam moved its next chunks to a later bar line",
    "engine_lost": "the engine (a remote one) cannot be reached; the bridge reconnects and resumes jams",
    "internal": "a bug in the bridge; see its log",
}

_BY_KEY = {(m.address, m.direction): m for m in MESSAGES}
_SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}


def find(address: str, direction: str = "in") -> Message:
    """The table entry for an address, or ProtocolError('unknown_address')."""
    try:
        return _BY_KEY[(address, direction)]
    except KeyError:
        known = sorted(m.address for m in MESSAGES if m.direction == direction)
        raise ProtocolError("unknown_address",
                            f"unknown address {address!r}; known: {', '.join(known)}") from None


def setting(name: str) -> Arg:
    """The settings-table entry for a /set name."""
    try:
        return _SETTINGS_BY_NAME[name]
    except KeyError:
        raise ProtocolError("bad_args", f"/set: unknown setting {name!r}; settable: "
                                        f"{', '.join(s.name for s in SETTINGS)}") from None


def validate(address: str, args: Sequence[Any], direction: str = "in") -> list:
    """Check `args` against the table and return them coerced to the declared types.

    Raises ProtocolError with code 'unknown_address' or 'bad_args' (the message names the argument and gives the
    expected signature). Coerced values also make python-osc send the declared OSC types.
    """
    msg = find(address, direction)
    args = list(args)
    expected = list(msg.args)
    n_fixed = len(expected)
    shape_ok = len(args) >= n_fixed
    if shape_ok and msg.optional:
        if len(args) == n_fixed + len(msg.optional):
            expected += msg.optional
        else:
            shape_ok = len(args) == n_fixed
    elif shape_ok and msg.repeat:
        extra = len(args) - n_fixed
        shape_ok = extra % len(msg.repeat) == 0
        expected += list(msg.repeat) * (extra // len(msg.repeat))
    else:
        shape_ok = shape_ok and len(args) == n_fixed
    if not shape_ok:
        raise _bad(msg, args, f"wrong number of arguments ({len(args)})")

    out = []
    for i, (arg, value) in enumerate(zip(expected, args)):
        problem, coerced = _coerce(arg, value)
        if problem:
            where = arg.name
            if msg.repeat and i >= n_fixed:  # say which group, e.g. which note, was wrong
                where += f" (group {(i - n_fixed) // len(msg.repeat) + 1})"
            raise _bad(msg, args, f"{where} {problem}")
        out.append(coerced)

    if msg.address == "/set" and msg.direction == "in":
        entry = setting(out[0])
        problem, out[1] = _coerce(entry, out[1])
        if problem:
            raise ProtocolError("bad_args", f"/set {entry.name} expects {entry.label()}: value {problem}")
    return out


def _bad(msg: Message, args: Sequence[Any], problem: str) -> ProtocolError:
    got = repr(tuple(args))
    if len(got) > 200:  # note lists can be long; the error goes back over OSC
        got = got[:197] + "..."
    return ProtocolError("bad_args", f"{msg.address} expects {msg.signature()}; got {got}: {problem}")


def _coerce(arg: Arg, value: Any) -> tuple[str | None, Any]:
    """Return (problem, coerced value); problem is None when the value fits."""
    if isinstance(value, bool):  # OSC T/F from some senders: treat as 1/0
        value = int(value)
    if arg.type == "s":
        if not isinstance(value, str):
            return f"must be a string; got {value!r}", value
        if not value and not arg.allow_empty:
            return "must not be empty", value
        if len(value) > arg.max_len:
            return f"is too long ({len(value)} > {arg.max_len} characters)", value
        return None, value
    if arg.type == "any":
        if isinstance(value, str):
            return (f"is too long ({len(value)} > {arg.max_len} characters)", value) \
                if len(value) > arg.max_len else (None, value)
        if isinstance(value, int):
            return None, value
        if isinstance(value, float):
            return (None, value) if math.isfinite(value) else (f"must be finite; got {value!r}", value)
        return f"must be a number or a string; got {value!r}", value
    if not isinstance(value, (int, float)):
        return f"must be a number; got {value!r}", value
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be finite; got {value!r}", value
    if arg.type == "i":
        if isinstance(value, float):
            if not value.is_integer():
                return f"must be a whole number; got {value!r}", value
            value = int(value)
        lo = INT32_MIN if arg.min is None else arg.min
        hi = INT32_MAX if arg.max is None else arg.max
    else:
        value = float(value)
        lo = -FLOAT32_MAX if arg.min is None else arg.min
        hi = FLOAT32_MAX if arg.max is None else arg.max
    if not lo <= value <= hi:
        return f"must be in {_num_text(lo)}..{_num_text(hi)}; got {value!r}", value
    return None, value


def _arg_dict(arg: Arg) -> dict:
    d: dict[str, Any] = {"name": arg.name, "type": arg.type, "doc": arg.doc}
    if arg.type in ("i", "f"):
        if arg.min is not None:
            d["min"] = arg.min
        if arg.max is not None:
            d["max"] = arg.max
    else:
        d["max_len"] = arg.max_len
        if arg.type == "s":
            d["allow_empty"] = arg.allow_empty
    if arg.default is not None:
        d["default"] = arg.default
    return d


def protocol_dict() -> dict:
    """The whole protocol as plain JSON-ready data (what `musicgen-bridge protocol` prints)."""
    return {
        "version": VERSION,
        "defaults": {"host": HOST, "port": PORT, "reply_port": REPLY_PORT},
        "timing": {
            "heartbeat_seconds": HEARTBEAT_SECONDS,
            "heartbeat_misses_lost": HEARTBEAT_MISSES_LOST,
            "progress_max_per_second": PROGRESS_MAX_PER_SECOND,
            "notes_per_packet": NOTES_PER_PACKET,
        },
        "messages": [
            {
                "address": m.address,
                "direction": m.direction,
                "signature": m.signature(),
                "doc": m.doc,
                "args": [_arg_dict(a) for a in m.args],
                "optional": [_arg_dict(a) for a in m.optional],
                "repeat": [_arg_dict(a) for a in m.repeat],
            }
            for m in MESSAGES
        ],
        "settings": [_arg_dict(s) for s in SETTINGS],
        "errors": dict(ERRORS),
    }


def protocol_json() -> str:
    """protocol_dict() as stable, readable JSON text ending in a newline."""
    return json.dumps(protocol_dict(), indent=2, ensure_ascii=False) + "\n"
