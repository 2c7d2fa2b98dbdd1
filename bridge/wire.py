"""The engine's network wire: one definition both sides read (`bridge.engine_server`, `bridge.remote_engine`, the
Ray Serve replicas of `bridge.cluster`), as `bridge.protocol` is for OSC.

One WebSocket connection carries JSON text messages for requests and control, and binary frames for arrays.

Text messages (UTF-8 JSON objects with a "type"):
  server -> client  hello {version, info, capacity}      first message of every connection
  client -> server  open {id, spec, attachments, format}  start a stream; `attachments` names the binary frames
                                                          that follow ("audio_prompt", "melody"), in that order
                    cancel {id} / stop {id}               as `EngineStream.cancel()` / `.stop()`
  server -> client  started {id, seed, prompt_text}       before the stream's first chunk
                    end {id} / cancelled {id}             the stream is over
                    error {id, code, message}             a request failed (id null: the connection is closing)

Binary frames: a fixed little-endian header (`HEADER`), a short UTF-8 JSON tail for what does not fit a fixed
field (exact beats as "n/d" strings, an attachment's name and rate), then the payload. AUDIO frames
(server -> client) carry one chunk: request id, chunk index, sample offset, samples, decoder steps so far, and in
the tail the seconds the engine spent on them where it steps on its own ("busy", `EngineStream.busy_seconds`).
ATTACHMENT frames (client -> server) carry an array of an open request: the audio prompt [channels, samples]
with its rate, or the melody chroma [frames, 12], always float32.

Audio is raw float32 by default (exact, no encode cost); int16 and 16-bit FLAC are there for thin links (sizes
and encode costs: benchmarks/RESULTS.md). Everything is data: no path, no pickle crosses the wire.
"""

from __future__ import annotations

import io
import json
import math
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from fractions import Fraction

from typing import TYPE_CHECKING

import numpy as np

from engine.bars import Tempo
from engine.errors import UserError

if TYPE_CHECKING:  # these pull in torch, which the CLI must not wait for at start (serve answers at once)
    from engine.interface import EngineInfo, StreamSpec
    from engine.session import Chunk

VERSION = 1
TOKEN_ENV = "MUSICGEN_BRIDGE_TOKEN"  # for those who keep secrets out of process lists
DEFAULT_PORT = 9300
# Largest message either side accepts (websockets' max_size; uvicorn's, behind Ray Serve, is 16 MiB too). An audio
# prompt of 30 s of 48 kHz stereo float32 is 11.5 MB.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_TEXT_BYTES = 64 * 1024  # a JSON message: a spec with a long prompt is < 2 kB
MAX_PROMPT_CHARS = 4096
MAX_STREAMS_PER_CONNECTION = 8
MAX_REQUEST_ID = 2**32 - 1
BAD_FRAME_CLOSE = 1008  # WebSocket close code "policy violation": the peer sent something the wire does not allow

MAGIC = b"MG"
# magic, version, kind, format, flags, channels, request id, index, offset, length, steps, tail bytes
HEADER = struct.Struct("<2sBBBBHIIqIIH")
LAST = 1  # flags bit: the stream's last chunk


class Kind(IntEnum):
    AUDIO = 1
    ATTACHMENT = 2


class AudioFormat(IntEnum):
    FLOAT32 = 0
    INT16 = 1
    FLAC = 2  # 16-bit FLAC via soundfile


ATTACHMENTS = ("audio_prompt", "melody")


class WireError(Exception):
    """Something arrived that the wire does not allow (malformed, oversized, unknown request). The receiver logs
    it and closes that connection; `code` goes into the error message it sends first."""

    def __init__(self, message: str, code: str = "bad_frame"):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Frame:
    kind: Kind
    request: int
    index: int = 0  # chunk index (AUDIO); position in the open message's attachments (ATTACHMENT)
    offset: int = 0  # first sample of the chunk in the stream's new audio (AUDIO)
    channels: int = 1  # rows of the array
    length: int = 0  # columns: samples per channel (AUDIO, audio prompt) or chroma frames (melody, rows of 12)
    steps: int = 0  # decoder steps the stream has taken (AUDIO)
    last: bool = False
    format: AudioFormat = AudioFormat.FLOAT32
    meta: dict = field(default_factory=dict)
    payload: bytes = b""


def pack_frame(frame: Frame) -> bytes:
    tail = json.dumps(frame.meta, separators=(",", ":")).encode() if frame.meta else b""
    head = HEADER.pack(MAGIC, VERSION, int(frame.kind), int(frame.format), LAST if frame.last else 0,
                       frame.channels, frame.request, frame.index, frame.offset, frame.length, frame.steps, len(tail))
    return head + tail + frame.payload


def unpack_frame(data: bytes) -> Frame:
    if len(data) < HEADER.size:
        raise WireError(f"binary frame of {len(data)} bytes is shorter than the {HEADER.size}-byte header")
    magic, version, kind, fmt, flags, channels, request, index, offset, length, steps, tail_len = \
        HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise WireError(f"binary frame has magic {magic!r} version {version}, expected {MAGIC!r} version {VERSION}")
    try:
        kind, fmt = Kind(kind), AudioFormat(fmt)
    except ValueError:
        raise WireError(f"binary frame has unknown kind {kind} or format {fmt}") from None
    end = HEADER.size + tail_len
    if end > len(data):
        raise WireError("binary frame's JSON tail runs past its end")
    meta = {}
    if tail_len:
        try:
            meta = json.loads(data[HEADER.size:end])
        except (ValueError, UnicodeDecodeError):
            raise WireError("binary frame's JSON tail is not JSON") from None
        if not isinstance(meta, dict):
            raise WireError("binary frame's JSON tail is not an object")
    return Frame(kind, request, index, offset, channels, length, steps, bool(flags & LAST), fmt, meta,
                 bytes(data[end:]))


# ---- audio payloads


def encode_audio(audio: np.ndarray, fmt: AudioFormat, sample_rate: int) -> bytes:
    """[channels, samples] float32 -> payload bytes (interleaved for FLAC, channel-major for raw PCM)."""
    if fmt is AudioFormat.FLOAT32:
        return np.ascontiguousarray(audio, dtype="<f4").tobytes()
    pcm = np.round(np.clip(audio, -1.0, 32767 / 32768) * 32768).astype("<i2")
    if fmt is AudioFormat.INT16:
        return pcm.tobytes()
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, pcm.T, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_audio(payload: bytes, fmt: AudioFormat, channels: int, length: int) -> np.ndarray:
    """Payload -> [channels, length] float32; a payload whose size does not match is a WireError."""
    if fmt is AudioFormat.FLAC:
        import soundfile

        try:
            pcm, _ = soundfile.read(io.BytesIO(payload), dtype="int16", always_2d=True)
        except Exception as exc:
            raise WireError(f"FLAC payload does not decode: {exc}") from None
        audio = pcm.T.astype(np.float32) / 32768
    else:
        dtype = "<f4" if fmt is AudioFormat.FLOAT32 else "<i2"
        if len(payload) != channels * length * np.dtype(dtype).itemsize:
            raise WireError(f"payload of {len(payload)} bytes does not hold {channels} x {length} {fmt.name} samples")
        audio = np.frombuffer(payload, dtype=dtype).reshape(channels, length)
        audio = audio.astype(np.float32) if fmt is AudioFormat.FLOAT32 else audio.astype(np.float32) / 32768
    if audio.shape != (channels, length):
        raise WireError(f"payload holds {audio.shape}, the header says {(channels, length)}")
    return audio


def _fraction_text(value: Fraction | None) -> str | None:
    return None if value is None else str(Fraction(value))


def _fraction(value, what: str) -> Fraction | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise WireError(f"{what} must be an exact fraction as text like '7/2', got {value!r}")
    try:
        return Fraction(value)
    except (ValueError, ZeroDivisionError):
        raise WireError(f"{what} must be an exact fraction as text like '7/2', got {value!r}") from None


def chunk_frame(request: int, chunk: Chunk, steps: int, fmt: AudioFormat, sample_rate: int,
                busy: float | None = None) -> bytes:
    meta = {}
    if chunk.start_beat is not None:
        meta = {"start_beat": _fraction_text(chunk.start_beat), "beats": _fraction_text(chunk.beats)}
    if busy is not None:
        meta["busy"] = float(busy)
    channels, samples = chunk.audio.shape
    return pack_frame(Frame(Kind.AUDIO, request, chunk.index, chunk.start_sample, channels, samples, steps,
                            chunk.last, fmt, meta, encode_audio(chunk.audio, fmt, sample_rate)))


def frame_chunk(frame: Frame) -> Chunk:
    from engine.session import Chunk

    audio = decode_audio(frame.payload, frame.format, frame.channels, frame.length)
    return Chunk(frame.index, audio, frame.offset, _fraction(frame.meta.get("start_beat"), "start_beat"),
                 _fraction(frame.meta.get("beats"), "beats"), frame.last)


def frame_busy(frame: Frame) -> float | None:
    """An AUDIO frame's "busy" seconds (None where the engine did not say)."""
    busy = frame.meta.get("busy")
    if busy is None:
        return None
    if isinstance(busy, bool) or not isinstance(busy, (int, float)) or not 0 <= busy < 1e9:
        raise WireError(f"busy must be seconds (a number from 0), got {busy!r}")
    return float(busy)


def attachment_frame(request: int, index: int, name: str, array: np.ndarray, rate: int | None = None) -> bytes:
    if name == "melody":  # [frames, 12] travels as [12, frames], rows first like audio
        array = array.T
    array = np.ascontiguousarray(array, dtype="<f4")
    rows, cols = array.shape
    meta = {"name": name} if rate is None else {"name": name, "rate": int(rate)}
    frame = Frame(Kind.ATTACHMENT, request, index, 0, rows, cols, meta=meta, payload=array.tobytes())
    data = pack_frame(frame)
    if len(data) > MAX_MESSAGE_BYTES:
        raise UserError(f"the {name.replace('_', ' ')} is {len(data) / 2**20:.1f} MiB, more than the "
                        f"{MAX_MESSAGE_BYTES // 2**20} MiB a message may hold; send a shorter one", code="bad_audio")
    return data


def frame_attachment(frame: Frame) -> tuple[str, np.ndarray, int | None]:
    """An ATTACHMENT frame -> (name, array, rate). Arrays are checked for shape and finite values."""
    name = frame.meta.get("name")
    if name not in ATTACHMENTS:
        raise WireError(f"attachment name must be one of {ATTACHMENTS}, got {name!r}")
    array = decode_audio(frame.payload, AudioFormat.FLOAT32, frame.channels, frame.length)
    if not np.isfinite(array).all():
        raise WireError(f"{name} holds NaN or infinite values")
    if name == "melody":
        if frame.channels != 12:
            raise WireError(f"melody chroma must have 12 pitch classes, got {frame.channels}")
        return name, np.ascontiguousarray(array.T), None
    rate = frame.meta.get("rate")
    if not isinstance(rate, int) or not 1000 <= rate <= 384000 or not 1 <= frame.channels <= 2:
        raise WireError(f"audio prompt needs 1 or 2 channels and a rate of 1000-384000 Hz, got {frame.channels} "
                        f"channel(s) at {rate!r}")
    return name, array, rate


# ---- JSON messages


def message(type_: str, **fields) -> str:
    return json.dumps({"type": type_, **fields}, separators=(",", ":"))


def parse_message(text: str, types: tuple[str, ...]) -> dict:
    """A text message -> dict with a known "type" and, for all but hello, an integer "id"."""
    if len(text) > MAX_TEXT_BYTES:
        raise WireError(f"text message of {len(text)} characters is over the {MAX_TEXT_BYTES} limit", "too_big")
    try:
        msg = json.loads(text)
    except ValueError:
        raise WireError("text message is not JSON") from None
    if not isinstance(msg, dict) or msg.get("type") not in types:
        got = msg.get("type") if isinstance(msg, dict) else type(msg).__name__
        raise WireError(f"message type must be one of {', '.join(types)}, got {got!r}")
    if msg["type"] != "hello" and not (msg["type"] == "error" and msg.get("id") is None):
        rid = msg.get("id")
        if isinstance(rid, bool) or not isinstance(rid, int) or not 0 <= rid <= MAX_REQUEST_ID:
            raise WireError(f"request id must be an integer 0..{MAX_REQUEST_ID}, got {rid!r}")
    return msg


def info_json(info: EngineInfo) -> dict:
    from engine.interface import EngineInfo

    return {k: getattr(info, k) for k in EngineInfo.__dataclass_fields__}


def info_from_json(data: dict) -> EngineInfo:
    from engine.interface import EngineInfo

    try:
        return EngineInfo(**{k: data[k] for k in EngineInfo.__dataclass_fields__})
    except (KeyError, TypeError):
        raise WireError(f"hello's info must have the fields {list(EngineInfo.__dataclass_fields__)}") from None


_SPEC_FIELDS = {"prompt", "sampling", "tempo", "bars", "seconds", "chunk_bars", "chunk_seconds", "context_seconds",
                "tempo_in_prompt"}


def spec_json(spec: StreamSpec) -> dict:
    """A StreamSpec without its arrays (those travel as ATTACHMENT frames). Tempo and bars as exact fractions."""
    from engine.sampling import SamplingSettings

    tempo = spec.tempo
    return {
        "prompt": spec.prompt,
        "sampling": {k: getattr(spec.sampling, k) for k in SamplingSettings.__dataclass_fields__},
        "tempo": None if tempo is None else {"bpm": _fraction_text(tempo.bpm), "numerator": tempo.numerator,
                                             "denominator": tempo.denominator},
        "bars": _fraction_text(spec.bars), "chunk_bars": _fraction_text(spec.chunk_bars),
        "seconds": spec.seconds, "chunk_seconds": spec.chunk_seconds, "context_seconds": spec.context_seconds,
        "tempo_in_prompt": spec.tempo_in_prompt,
    }


def _number(value, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise WireError(f"{what} must be a finite number or null, got {value!r}")
    return float(value)


def spec_from_json(data, arrays: dict[str, tuple[np.ndarray, int | None]]) -> StreamSpec:
    """The inverse of spec_json, strictly checked (unknown fields, wrong types: WireError); the arrays come from
    the request's ATTACHMENT frames. Ranges (bpm, sampling) are checked as UserErrors by Tempo/validate."""
    from engine.interface import StreamSpec
    from engine.sampling import SamplingSettings

    if not isinstance(data, dict) or not set(data) <= _SPEC_FIELDS or "prompt" not in data:
        raise WireError(f"spec must be an object with a prompt and only the fields {sorted(_SPEC_FIELDS)}")
    prompt = data["prompt"]
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
        raise WireError(f"prompt must be text of at most {MAX_PROMPT_CHARS} characters")
    s = data.get("sampling") or {}
    fields = SamplingSettings.__dataclass_fields__
    if not isinstance(s, dict) or not set(s) <= set(fields):
        raise WireError(f"sampling must be an object with only the fields {list(fields)}")
    sampling = SamplingSettings(**s).validate()  # UserError (bad_args) for values out of range
    t = data.get("tempo")
    tempo = None
    if t is not None:
        if not isinstance(t, dict) or set(t) != {"bpm", "numerator", "denominator"}:
            raise WireError("tempo must be an object {bpm, numerator, denominator}")
        tempo = Tempo(_fraction(t["bpm"], "bpm"), t["numerator"], t["denominator"])
    in_prompt = data.get("tempo_in_prompt", True)
    if not isinstance(in_prompt, bool):
        raise WireError("tempo_in_prompt must be true or false")
    audio = arrays.get("audio_prompt")
    melody = arrays.get("melody")
    return StreamSpec(prompt=prompt, sampling=sampling, tempo=tempo, bars=_fraction(data.get("bars"), "bars"),
                      seconds=_number(data.get("seconds"), "seconds"),
                      chunk_bars=_fraction(data.get("chunk_bars"), "chunk_bars"),
                      chunk_seconds=_number(data.get("chunk_seconds"), "chunk_seconds"),
                      context_seconds=_number(data.get("context_seconds"), "context_seconds"),
                      audio_prompt=None if audio is None else (audio[0], audio[1]),
                      melody=None if melody is None else melody[0], tempo_in_prompt=in_prompt)


def spec_attachments(request: int, spec: StreamSpec) -> tuple[list[str], list[bytes]]:
    """The ATTACHMENT frames of a spec's arrays, and their names for the open message."""
    names, frames = [], []
    if spec.audio_prompt is not None:
        wav, rate = spec.audio_prompt
        names.append("audio_prompt")
        frames.append(attachment_frame(request, 0, "audio_prompt", np.atleast_2d(wav), rate))
    if spec.melody is not None:
        frames.append(attachment_frame(request, len(names), "melody", np.asarray(spec.melody)))
        names.append("melody")
    return names, frames
