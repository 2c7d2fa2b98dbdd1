"""The OSC server ("the bridge"): the Max for Live device's requests in, replies out, over UDP on loopback.

Handlers are mapped by address, one per incoming message of the protocol table (`bridge/protocol.py`), and
every message is checked against that table before its handler runs. Datagrams are handled one at a time, in
the order they arrive (a `/set` before a `/generate` applies to it; `/melody/notes` packets append in order);
anything slow (the model, melody extraction) runs on other threads, so the server answers at once. Even torch
is imported only after the socket serves (it takes seconds): until then /status says `starting`.

Why not python-osc's Dispatcher: it matches addresses as patterns (`/*` would call every handler), sleeps until
a bundle's time tag (a far-future tag would stall the server) and drops unparseable datagrams silently. Here
addresses match exactly, bundles run at once, and every bad datagram gets an `/error`. python-osc still parses
and builds the packets.

Replies go to the reply port of the host that sent the last valid message (Max's sending port is random, so
the port is fixed); before one arrived, to --host (or 127.0.0.1 when listening on all interfaces). Only a message
that parses and passes the protocol table's checks may move them (`ReplyAddress`): a stray or malicious datagram
cannot take the device's replies. Served on loopback (the default), replies never leave loopback. Served beyond it
(`--host 0.0.0.0` or a LAN address, which the user must ask for), whoever sends a valid message gets the replies,
as it could also drive the bridge: serve beyond loopback only on a network you trust.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import socketserver
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

from engine.errors import Cancelled, UserError
from engine.threads import blas_on_one_thread, in_own_thread, set_thread_budget

from . import protocol
from .audio_out import WavNamer, find_device, write_wav
from .audio_process import LiveOutputProcess
from .presets import load_preset, presets_dir
from .protocol import ProtocolError
from .receive_time import DatagramReceiver
from .transport import Transport

if TYPE_CHECKING:  # these pull in torch; they are imported when first needed
    from engine.interface import Engine

    from .jobs import JobRunner, MelodySource, Request
    from .midi_chroma import Note

log = logging.getLogger(__name__)

# Messages that place the song in time: handled as of their datagram's arrival (bridge/receive_time.py).
_AT_ARRIVAL = frozenset({"/transport", "/tempo"})
MAX_DATAGRAM = 65535  # socketserver's default (8 KiB) would cut long packets into parse errors
RECEIVE_BUFFER = 4 << 20


@dataclass
class ServeConfig:
    model: str = "facebook/musicgen-small"
    host: str = protocol.HOST
    port: int = protocol.PORT
    reply_port: int = protocol.REPLY_PORT
    out_dir: str = "."
    audio_device: str | None = None
    input_device: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    presets: str | None = None
    max_queued: int = 4
    engine: str = "batch"  # "batch": streams advance together (engine.batch_engine); "local": one at a time;
    # "ws://host:port": a remote engine (bridge/remote_engine.py), and no model is loaded here
    token: str | None = None  # the remote engine's token (else MUSICGEN_BRIDGE_TOKEN)
    wrap_engine: Callable[[Engine], Engine] | None = None  # for tests and benchmarks: e.g. an engine slowed down


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8 (and `localhost`); names and the wildcard count as beyond loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ReplyAddress:
    """Where replies go: the host of the last valid message, kept on loopback unless the bridge serves beyond it."""

    def __init__(self, listen_host: str):
        self.host = "127.0.0.1" if listen_host in ("", "0.0.0.0") else listen_host
        self.beyond_loopback = not is_loopback(listen_host)
        self._refused: set[str] = set()

    def follow(self, sender: str) -> bool:
        """A valid message came from `sender`: reply there if allowed. Returns whether replies go there now."""
        if sender == self.host:
            return True
        if not (self.beyond_loopback or is_loopback(sender)):
            if sender not in self._refused:  # once per host: a flood must not flood the log
                self._refused.add(sender)
                log.warning("a message from %s is not answered there: the bridge serves loopback only", sender)
            return False
        log.info("replies now go to %s", sender)
        self.host = sender
        return True


class _UDPServer(socketserver.UDPServer):
    max_packet_size = MAX_DATAGRAM

    def __init__(self, address: tuple[str, int], bridge: "BridgeServer"):
        self.bridge = bridge
        super().__init__(address, _DatagramHandler)
        self.receiver = DatagramReceiver(self.socket)

    def get_request(self) -> tuple[tuple[bytes, socket.socket, float], tuple]:
        # The arrival time rides with the datagram: /transport's song position is as of then, not of its handling.
        data, client, arrived = self.receiver.receive(self.max_packet_size)
        return (data, self.socket, arrived), client

    def server_bind(self) -> None:
        # A bigger receive buffer rides out bursts (a long note list, a reconnecting device) without drops.
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        except OSError:
            pass
        super().server_bind()

    def handle_error(self, request, client_address) -> None:  # last resort; handle_datagram catches everything
        log.exception("error handling a datagram from %s", client_address)


class _DatagramHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, _sock, arrived = self.request
        self.server.bridge.handle_datagram(data, self.client_address, arrived)


def _wait_future(future: Future, cancel: threading.Event):
    """The result of a melody extraction, given up on when the job is cancelled."""
    while True:
        if cancel.is_set():
            raise Cancelled()
        try:
            return future.result(timeout=0.1)
        except TimeoutError:
            continue


class BridgeServer:
    """State (settings, transport, melody), the handlers, and the threads around them."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.namer = WavNamer(config.out_dir)
        self.presets_dir = Path(config.presets) if config.presets else presets_dir()
        if config.audio_device:
            find_device(config.audio_device, "output")  # a wrong name fails now, not after loading the model
        self.mic = None
        if config.input_device:
            from .mic import MicRecorder

            self.mic = MicRecorder(config.input_device)
        self.transport = Transport()
        self.settings = {s.name: s.default for s in protocol.SETTINGS}
        self.key: str | None = None  # from the last preset; fills {key} in prompts
        self.melody: MelodySource | None = None
        self._notes_req: int | None = None
        self._notes: list[Note] = []
        # One intra-op thread: it must not keep an OpenMP team beside the LM's (engine/threads.py).
        self._prep = ThreadPoolExecutor(1, thread_name_prefix="melody", initializer=set_thread_budget, initargs=(1,))
        self._send_lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.reply_to = ReplyAddress(config.host)
        self._load_state, self._load_error = "starting", ""
        self._remote = None  # the RemoteEngine with --engine
        self._last_state = None
        self._state_lock = threading.Lock()
        self.live: LiveOutputProcess | None = None
        self.runner: JobRunner | None = None  # made by the loader thread (it imports torch)
        self.handlers = {m.address: getattr(self, "on_" + m.address.strip("/").replace("/", "_"))
                         for m in protocol.MESSAGES if m.direction == "in"}
        self._stopping = threading.Event()
        try:
            self._udp = _UDPServer((config.host, config.port), self)
        except OSError as exc:
            self._sock.close()
            raise UserError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc} (is another "
                            "bridge running? choose another --port)", code="bad_args") from None
        self.port = self._udp.server_address[1]
        self._threads: list[threading.Thread] = []

    # --- life cycle ---

    def start(self) -> None:
        """Serve, send heartbeats and load the model, each on its own thread; returns at once."""
        for target, name in ((self._udp.serve_forever, "osc-server"), (self._heartbeat, "heartbeat"),
                             (self._load_model, "model-loader")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        log.info("listening on %s:%d, replying to port %d, writing to %s", self.config.host, self.port,
                 self.config.reply_port, self.namer.out_dir)
        if self.reply_to.beyond_loopback:
            log.warning("serving beyond loopback (%s): anyone who can reach port %d can use the bridge and "
                        "receive its replies", self.config.host, self.port)

    def stop(self) -> None:
        """Stop jobs, close the engine, the audio streams and the socket."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        log.info("shutting down")
        if self.mic is not None:
            self.mic.close()
        if self.runner is not None:
            self.runner.shutdown()
            # An in-process engine's threads (a batching engine's scheduler and codec worker) end with the server:
            # a second server in the same process would otherwise share its cores with them.
            if self.runner.engine is not None and self._remote is None:
                self.runner.engine.close()
        if self._remote is not None:
            self._remote.close()
        if self.live is not None:
            self.live.close()
        self._prep.shutdown(wait=False, cancel_futures=True)
        if self._threads:  # shutdown() waits for serve_forever, which never ran if start() did not
            self._udp.shutdown()
        self._udp.server_close()
        self._sock.close()

    def serve_until_signal(self) -> int:
        """Run until SIGINT or SIGTERM, then shut down cleanly; returns the exit code (0)."""
        stop = threading.Event()
        previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            while not stop.wait(0.5):
                pass
        finally:
            self.stop()
            for s, h in previous.items():
                signal.signal(s, h)
        return 0

    def _load_model(self) -> None:
        t0 = time.perf_counter()
        try:
            blas_on_one_thread()  # before any side work (a chunk's tempo lock) runs beside the LM: engine/threads.py
            from .model_loading import load_model
            from .jobs import JobRunner

            self.runner = JobRunner(self.send, self.namer, transport=self.transport,
                                    max_queued=self.config.max_queued, on_change=self._state_changed)
            self._set_load_state("loading")
            # Tempo lock's one-time cost overlaps the model's loading, and is over before ready and before the
            # live output opens (it holds the GIL for seconds: never in the middle of a set).
            lock_ready = threading.Thread(target=_warm_up_tempo_lock, name="tempo-lock-warm-up", daemon=True)
            lock_ready.start()
            if is_remote_engine(self.config.engine):
                engine = self._remote_engine()
                if engine is None:  # stopped before the engine answered
                    return
            else:
                model = load_model(self.config.model, device=self.config.device, dtype=self.config.dtype)
                _warm_up(model)
                engine = _make_engine(self.config.engine, model)
            lock_ready.join()
            if self.config.wrap_engine is not None:
                engine = self.config.wrap_engine(engine)
        except Exception as exc:
            if not isinstance(exc, UserError):
                log.exception("loading the model failed")
            self._load_error = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            log.error("no model: %s", self._load_error)
            self._set_load_state("error")
            self.send("/error", -1, "no_model", self._load_error)
            return
        if self.config.audio_device:  # its rate and channels are the model's, so it opens now
            try:
                self.live = LiveOutputProcess(self.config.audio_device, engine.info.sample_rate,
                                              engine.info.channels).open()
                self.runner.live = self.live
            except UserError as exc:  # results still arrive as files: keep serving, and say why it is silent
                log.error("live output disabled: %s", exc)
                self.send("/error", -1, exc.code, f"live output disabled: {exc}")
        self.runner.engine = engine
        info = engine.info
        log.info("model %s ready after %.1f s: %d Hz, %d channel(s), up to %.1f s per window%s", info.name,
                 time.perf_counter() - t0, info.sample_rate, info.channels, info.max_seconds,
                 ", melody" if info.melody else "")
        self._set_load_state("ready")

    def _remote_engine(self):
        """The engine at --engine, waited for with backoff; it tells the device when it is lost and back."""
        from .engine_server import resolve_token
        from .remote_engine import RemoteEngine

        def lost(reason: str) -> None:
            self.send("/error", -1, "engine_lost", f"{reason}; reconnecting")
            self._state_changed()

        log.info("using the engine at %s (no model is loaded here)", self.config.engine)
        self._remote = RemoteEngine.connect_with_backoff(self.config.engine, resolve_token(self.config.token),
                                                         self._stopping, on_lost=lost,
                                                         on_restored=self._state_changed)
        return self._remote

    def _heartbeat(self) -> None:
        seq = 0
        while not self._stopping.wait(protocol.HEARTBEAT_SECONDS if seq else 0):
            self.send("/heartbeat", seq)
            seq = min(seq + 1, protocol.INT32_MAX)
            failure = self.live.report_error() if self.live is not None else None
            if failure:  # once: the audio callback cannot send (and must not block); the count is in the log
                self.error(-1, "internal", failure)

    # --- state ---

    @property
    def state(self) -> str:
        if self._load_state != "ready" or self.runner is None:
            return self._load_state
        if self._remote is not None and not self._remote.connected:
            return "error"  # the remote engine is unreachable now (/error -1 engine_lost said why); back by itself
        running = self.runner.running
        if not running:
            return "ready"
        return "jamming" if any(job.kind == "jam" for job in running) else "busy"

    def _set_load_state(self, state: str) -> None:
        self._load_state = state
        self._state_changed()

    def _state_changed(self) -> None:
        with self._state_lock:  # called from the server, the worker and the loader threads
            state = self.state
            if state == self._last_state:
                return
            self._last_state = state
            self.send_status()

    def send_status(self) -> None:
        runner = self.runner
        ready = self._load_state == "ready"
        engine = runner.engine if runner else None
        steps = runner.steps_per_s if runner else 0.0
        realtime = runner.realtime if runner else 0.0  # measured: seconds of audio per second of generating
        dtype = engine.info.dtype if ready and engine is not None else ""
        model = engine.info.name if self._remote is not None and engine is not None else self.config.model
        self.send("/status", self.state, model if ready else "", steps, runner.queued if runner else 0,
                  realtime, dtype, self.live.underruns if self.live else 0)

    # --- OSC in and out ---

    def send(self, address: str, *args) -> None:
        """Send one message to the device (validated against the table, so types are right). Never raises."""
        try:
            if address == "/error" and len(args) == 3 and len(str(args[2])) > protocol.TEXT_MAX_LEN:
                args = (*args[:2], str(args[2])[: protocol.TEXT_MAX_LEN - 3] + "...")
            values = protocol.validate(address, args, "out")
            builder = OscMessageBuilder(address=address)
            for v in values:
                builder.add_arg(v)
            data = builder.build().dgram
            with self._send_lock:
                self._sock.sendto(data, (self.reply_to.host, self.config.reply_port))
        except Exception:
            if not self._stopping.is_set():
                log.exception("could not send %s %r", address, args)

    def error(self, req: int, code: str, message: str) -> None:
        log.info("/error %d %s: %s", req, code, message)
        self.send("/error", req, code, message)

    def handle_datagram(self, data: bytes, client: tuple[str, int], received: float | None = None) -> None:
        """One UDP datagram, which arrived at monotonic time `received` (None: now): an OSC message or bundle.
        Never raises; everything wrong is answered with /error (at the current reply address: only a valid
        message may move it)."""
        try:
            packet = OscPacket(data)
            messages = [m.message for m in packet.messages]  # bundle time tags are ignored: run now, in order
        except Exception as exc:
            self.error(-1, "bad_args", f"could not read a {len(data)}-byte datagram as OSC: {_short(exc)}")
            return
        for message in messages:
            self.dispatch(message.address, message.params, client[0], received)

    def dispatch(self, address: str, args: list, sender: str | None = None, received: float | None = None) -> None:
        """Validate and handle one message; `received` is its arrival (monotonic, the transport's clock; None:
        now)."""
        req = -1  # the request id to blame, when the message has one that fits
        entry = next((m for m in protocol.MESSAGES if m.address == address and m.direction == "in"), None)
        if entry and entry.args and entry.args[0].name == "req" and args and isinstance(args[0], int) \
                and not isinstance(args[0], bool) and 0 <= args[0] <= protocol.INT32_MAX:
            req = args[0]
        try:
            values = protocol.validate(address, args)
            if sender is not None:
                self.reply_to.follow(sender)
            if address in _AT_ARRIVAL:
                self.handlers[address](*values, at=received)
            else:
                self.handlers[address](*values)
        except ProtocolError as exc:
            self.error(req, exc.code, exc.message)
        except UserError as exc:
            self.error(req, exc.code, str(exc))
        except Exception as exc:
            log.exception("handler for %s failed", address)
            self.error(req, "internal", f"{address}: {type(exc).__name__}: {exc} (see the bridge's log)")

    # --- handlers: one per incoming address of the protocol table ---

    def on_ping(self, nonce: int) -> None:
        self.send("/pong", nonce, protocol.VERSION)

    def on_status(self) -> None:
        self.send_status()
        if self._load_state == "error":
            self.send("/error", -1, "no_model", self._load_error)

    def on_tempo(self, bpm: float, num: int | None = None, den: int | None = None, *,
                 at: float | None = None) -> None:
        try:
            self.transport.set_tempo(bpm, num, den, at=at)
        except UserError as exc:
            raise ProtocolError("bad_args", f"/tempo: {exc}") from None

    def on_transport(self, playing: int, bpm: float, num: int, den: int, song_beats: float, *,
                     at: float | None = None) -> None:
        try:
            self.transport.set_transport(bool(playing), bpm, num, den, song_beats, at=at)
        except UserError as exc:
            raise ProtocolError("bad_args", f"/transport: {exc}") from None

    def on_set(self, name: str, value) -> None:
        self.settings[name] = value
        log.debug("set %s = %r", name, value)

    def on_preset(self, name: str) -> None:
        preset = load_preset(name, self.presets_dir)
        self.settings.update(preset.as_settings())
        self.key = preset.key
        log.info("preset %s: %s", name, preset.description or preset.prompt)
        self.send("/ack", -1, "/preset")

    def on_generate(self, req: int, prompt: str, bars: int, takes: int | None = None) -> None:
        self._require_model()
        self._submit(req, "/generate", self._request(req, "generate", prompt, bars=bars, takes=takes or 1))

    def on_continue(self, req: int, wav_path: str, bars: int, prompt_bars: int | None = None) -> None:
        _check_read_path(wav_path, "wav_path")
        self._require_model()
        self._submit(req, "/continue", self._request(req, "continue", "", bars=bars, wav_path=wav_path,
                                                     prompt_bars=prompt_bars))

    def on_jam_start(self, req: int, prompt: str, wav_path: str | None = None) -> None:
        if wav_path is not None:
            _check_read_path(wav_path, "wav_path")
        self._require_model()
        state = self.transport.snapshot()
        song_beat = state.next_bar_beat(self.transport.clock(), strictly_after=state.playing) if state.known else None
        request = self._request(req, "jam", prompt, wav_path=wav_path, song_beat=song_beat)
        if not prompt:  # follows the prompt setting (and presets) as it changes
            request.follow = lambda: (self.transport.snapshot().tempo, self.settings["prompt"])
        else:
            request.follow = lambda: (self.transport.snapshot().tempo, prompt)
        self._submit(req, "/jam/start", request)

    def on_jam_stop(self, req: int) -> None:
        if self.runner is None or not self.runner.stop_jam(req):
            raise UserError(f"no jam with request id {req} is running or queued", code="not_found")
        self.send("/ack", req, "/jam/stop")

    def on_cancel(self, req: int) -> None:
        if self.runner is None or not self.runner.cancel(req):
            raise UserError(f"no request {req} is queued or running", code="not_found")

    def on_melody_midi(self, path: str) -> None:
        from .melody import melody_chroma_from_file

        _check_read_path(path, "path")
        self._set_melody_future(self._prep.submit(melody_chroma_from_file, path), "/melody/midi", path)

    def on_melody_audio(self, wav_path: str, hum: int = 0) -> None:
        from .melody import melody_chroma_from_file

        _check_read_path(wav_path, "wav_path")
        self._set_melody_future(self._prep.submit(melody_chroma_from_file, wav_path, hum=bool(hum)),
                                "/melody/audio", wav_path)

    def on_melody_notes(self, req: int, length_beats: float, *flat) -> None:
        from .midi_chroma import Note, chroma_from_notes

        notes = [Note(int(flat[i]), float(flat[i + 1]), float(flat[i + 2]), int(flat[i + 3]))
                 for i in range(0, len(flat), 4)]
        if req == self._notes_req:
            notes = self._notes + notes
        length = length_beats or None  # 0: up to the end of the last note
        bpm = float(self.transport.snapshot().tempo.bpm)
        chroma_from_notes(notes, bpm, length_beats=length)  # checks them now: BadMidi -> /error bad_midi
        self._notes_req, self._notes = req, notes
        frozen = tuple(notes)
        self.melody = lambda tempo, cancel: chroma_from_notes(frozen, float(tempo.bpm), length_beats=length)
        log.info("melody: %d notes from the device (#%d)", len(notes), req)
        self.send("/ack", req, "/melody/notes")

    def on_melody_record_start(self) -> None:
        if self.mic is None:
            raise UserError("no microphone: start the bridge with --input-device NAME (see `python -m sounddevice` "
                            "for the names) to hum a melody", code="bad_input")
        self.mic.start()
        self.send("/ack", -1, "/melody/record/start")

    def on_melody_record_stop(self) -> None:
        from .humming import chroma_from_humming

        if self.mic is None:
            raise UserError("no microphone: start the bridge with --input-device NAME to hum a melody",
                            code="bad_input")
        audio, rate = self.mic.stop()
        path = write_wav(self.namer.path(-1, "mic"), audio, rate)  # to listen to what the bridge heard
        log.info("microphone recording saved as %s", path)
        self._set_melody_future(self._prep.submit(chroma_from_humming, audio, rate), "/melody/record/stop",
                                str(path))

    def on_melody_clear(self) -> None:
        self.melody, self._notes_req, self._notes = None, None, []
        self.send("/ack", -1, "/melody/clear")

    # --- helpers ---

    def _set_melody_future(self, future: Future, what: str, source: str) -> None:
        """A melody that is being extracted: jobs wait for it; /ack (or /error) when it is ready."""
        from engine.chroma import melody_summary

        self.melody = lambda tempo, cancel: _wait_future(future, cancel)
        self._notes_req, self._notes = None, []

        def report(f: Future) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            if exc is None:
                summary = melody_summary(f.result())
                log.info("melody from %s: %s", source, summary)
                self.send("/ack", -1, what)
                self.send("/melody", what, summary)
            elif isinstance(exc, UserError):
                self.error(-1, exc.code, f"{what}: {exc}")
            else:
                log.error("melody from %s failed", source, exc_info=exc)
                self.error(-1, "internal", f"{what}: {type(exc).__name__}: {exc}")

        future.add_done_callback(report)

    def _request(self, req: int, kind: str, prompt: str, **kw) -> Request:
        from engine.sampling import SamplingSettings

        from .jobs import Request

        s = self.settings
        state = self.transport.snapshot()
        seed = None if s["seed"] < 0 else s["seed"]
        sampling = SamplingSettings(temperature=s["temperature"], top_k=s["top_k"], top_p=s["top_p"], cfg=s["cfg"],
                                    greedy=s["temperature"] == 0, seed=seed).validate()
        return Request(req=req, kind=kind, prompt=prompt or s["prompt"], tempo=state.tempo, sampling=sampling,
                       chunk_bars=s["chunk_bars"], context_seconds=s["context_seconds"],
                       tempo_in_prompt=bool(s["bpm_in_prompt"]), key=s["key"] or self.key, melody=self.melody,
                       lock=bool(s["lock"]), loop=bool(s["loop"]) and kind != "jam", **kw)

    def _require_model(self) -> None:
        if self._load_state == "error":
            raise UserError(f"no model: {self._load_error}", code="no_model")
        if self._load_state != "ready":
            raise UserError(f"the model is still {self._load_state}; try again when /status says ready",
                            code="not_ready")

    def _submit(self, req: int, what: str, request: Request) -> None:
        self.runner.submit(request, ack=what)


def _check_read_path(path: str, name: str) -> None:
    """Client paths are only ever read; they must be absolute (the bridge's working folder means nothing to Max)."""
    if "\x00" in path:
        raise UserError(f"{name} contains a NUL character", code="bad_args")
    if not os.path.isabs(path):
        raise UserError(f"{name} must be an absolute path, got {path!r}", code="bad_args")


def _short(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 200 else text[:197] + "..."


def serve(config: ServeConfig) -> int:
    """`musicgen-bridge serve`: run until SIGINT/SIGTERM."""
    server = BridgeServer(config)
    return server.serve_until_signal()

IN_PROCESS_ENGINES = ("batch", "local")


def is_remote_engine(engine: str) -> bool:
    """Whether `--engine` names a remote engine (a WebSocket address) rather than an in-process one."""
    return engine.startswith(("ws://", "wss://"))


def _make_engine(kind: str, model) -> Engine:
    """The in-process engine `kind` over a loaded model: "batch" (several streams at once) or "local"."""
    if kind == "local":
        from engine.local_engine import LocalEngine

        return LocalEngine(model)
    if kind != "batch":
        raise UserError(f"unknown engine {kind!r}: batch or local", code="bad_args")
    from engine.batch_engine import BatchEngine

    engine = BatchEngine(model)
    log.info("batched step traced for up to %d rows in %.1f s", engine.max_rows, engine.warm_up())
    return engine


def _warm_up_tempo_lock() -> None:
    """librosa compiles its beat tracker with numba when first imported (seconds)."""
    from .tempo_lock import warm_up

    t0 = time.perf_counter()
    warm_up()
    log.info("tempo lock ready in %.1f s", time.perf_counter() - t0)


def _warm_up(model) -> None:
    """One-time costs (the traced CPU step) are paid before the server says ready, not by the first take."""
    from engine.generate import warm_up

    try:
        # On a thread that ends with it: its OpenMP team must not outlive it beside the engine's (engine/threads.py)
        log.info("warmed up in %.1f s", in_own_thread(warm_up, model, name="model-warm-up"))
    except Exception:  # a model that cannot warm up may still serve; its first request will say what is wrong
        log.exception("warming up the model failed")
