"""`RemoteEngine`: the `engine.interface.Engine` of a `musicgen-bridge engine` (or cluster) over WebSocket.

Each stream has its own connection, so behind a Ray Serve ingress every jam is routed on its own and stays pinned
to its replica for its life. A connection that drops mid-stream (engine died, network gone) raises
`engine.errors.EngineLost` from the stream's iteration. A monitor thread probes the engine (connect, read the
hello, close): while it is reachable every `probe_seconds`, once lost with backoff, and calls `on_lost` /
`on_restored` so the bridge can tell the device; an engine restarted on the same address is picked up by the
next probe or the next stream, whichever comes first.
"""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Callable, Iterator

from bridge import wire
from engine.errors import Cancelled, EngineLost, UserError
from engine.interface import EngineInfo, StreamSpec
from engine.session import Chunk

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
PING_INTERVAL, PING_TIMEOUT = 5.0, 10.0  # a silently dropped link is noticed within ~15 s
BACKOFF_FIRST, BACKOFF_MAX = 0.25, 5.0


class EngineRefused(UserError):
    """The engine refused this bridge (wrong token): retrying will not help."""

    code = "no_model"


def _connect(url: str, token: str | None):
    """One authenticated connection and its hello: (connection, hello message). EngineLost when unreachable."""
    from websockets.exceptions import InvalidStatus, WebSocketException
    from websockets.sync.client import connect

    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        ws = connect(url, additional_headers=headers, open_timeout=CONNECT_TIMEOUT, max_size=wire.MAX_MESSAGE_BYTES,
                     compression=None, proxy=None, ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT,
                     legacy=True)  # a plain connection (not the reconnecting iterator): streams own theirs
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):
            raise EngineRefused(f"the engine at {url} refused the token (HTTP {status}): give the engine's token "
                                f"with --token or {wire.TOKEN_ENV}") from None
        raise EngineLost(f"the engine at {url} answered HTTP {status}") from None
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise EngineLost(f"cannot reach the engine at {url}: {exc}") from None
    try:
        hello = wire.parse_message(ws.recv(timeout=CONNECT_TIMEOUT), ("hello",))
        if hello.get("version") != wire.VERSION:
            raise EngineRefused(f"the engine at {url} speaks wire version {hello.get('version')}, this bridge "
                                f"{wire.VERSION}: run the same musicgen-bridge version on both")
        wire.info_from_json(hello.get("info"))
    except (OSError, TimeoutError, WebSocketException, wire.WireError) as exc:
        ws.close()
        raise EngineLost(f"the engine at {url} did not say hello: {exc}") from None
    return ws, hello


class RemoteStream:
    """One stream over its own connection, opened when iteration starts."""

    def __init__(self, engine: "RemoteEngine", spec: StreamSpec, rid: int):
        self.engine, self.spec, self.rid = engine, spec, rid
        self.seed: int | None = spec.sampling.seed
        self.prompt_text: str | None = None
        self.server: dict | None = None  # the process that serves it (host, pid), from its hello
        self._steps = 0
        self._busy: float | None = None
        self._ws = None
        self._lock = threading.Lock()
        self._cancelled = self._stopped = False

    @property
    def steps(self) -> int:
        return self._steps

    @property
    def busy_seconds(self) -> float | None:
        return self._busy  # the engine's, with each chunk (None where it steps only while read)

    def _control(self, kind: str) -> None:
        with self._lock:
            if kind == "cancel":
                self._cancelled = True
            else:
                self._stopped = True
            ws = self._ws
        if ws is not None:
            try:
                ws.send(wire.message(kind, id=self.rid))
            except Exception:  # the stream is over or the link is gone; its iteration says which
                pass

    def cancel(self) -> None:
        self._control("cancel")

    def stop(self) -> None:
        self._control("stop")

    def __iter__(self) -> Iterator[Chunk]:
        from websockets.exceptions import ConnectionClosed

        if self._cancelled:
            raise Cancelled()
        names, frames = wire.spec_attachments(self.rid, self.spec)  # UserError before connecting if too big
        engine = self.engine
        try:
            ws, hello = _connect(engine.url, engine.token)
        except EngineLost as exc:
            engine._lost(str(exc))
            raise
        engine._restored()
        self.server = hello.get("server")
        try:
            ws.send(wire.message("open", id=self.rid, spec=wire.spec_json(self.spec), attachments=names,
                                 format=engine.audio_format.name.lower()))
            for f in frames:
                ws.send(f)
            with self._lock:
                self._ws = ws
                pending = [k for k, on in (("cancel", self._cancelled), ("stop", self._stopped)) if on]
            for kind in pending:
                ws.send(wire.message(kind, id=self.rid))
            while True:
                data = ws.recv()
                if isinstance(data, bytes):
                    frame = wire.unpack_frame(data)
                    if frame.kind is not wire.Kind.AUDIO or frame.request != self.rid:
                        raise wire.WireError(f"unexpected {frame.kind.name} frame for request {frame.request}")
                    chunk = wire.frame_chunk(frame)
                    self._steps, self._busy = frame.steps, wire.frame_busy(frame)
                    yield chunk
                    continue
                msg = wire.parse_message(data, ("started", "end", "cancelled", "error"))
                if msg["type"] == "started":
                    self.seed, self.prompt_text = msg.get("seed"), msg.get("prompt_text")
                elif msg["type"] == "end":
                    return
                elif msg["type"] == "cancelled":
                    raise Cancelled()
                elif msg.get("code") == "engine_lost":
                    raise EngineLost(msg.get("message", "engine lost"))
                else:
                    raise UserError(f"engine: {msg.get('message', '')}", code=str(msg.get("code", "internal")))
        except ConnectionClosed as exc:
            reason = f"lost the engine at {engine.url} mid-stream: {exc}"
            engine._lost(reason)
            raise EngineLost(reason) from None
        except wire.WireError as exc:
            raise UserError(f"the engine at {engine.url} sent something this bridge does not understand: {exc}",
                            code="internal") from None
        finally:
            with self._lock:
                self._ws = None
            ws.close()


class RemoteEngine:
    """An `Engine` served elsewhere. Construction connects once (EngineLost if unreachable, EngineRefused for a
    wrong token) and learns the model (`info`) and `capacity`; `connect_with_backoff` waits for one to come up."""

    def __init__(self, url: str, token: str | None = None, *, audio_format: wire.AudioFormat = wire.AudioFormat.FLOAT32,
                 on_lost: Callable[[str], None] | None = None, on_restored: Callable[[], None] | None = None,
                 probe_seconds: float = 5.0, monitor: bool = True):
        self.url, self.token, self.audio_format = url, token, audio_format
        self.on_lost, self.on_restored = on_lost, on_restored
        self.probe_seconds = probe_seconds
        self.connected = False
        self._ids = itertools.count(1)
        self._state_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._probe()  # raises when it cannot: there is no engine to describe yet
        self._monitor = None
        if monitor:
            self._monitor = threading.Thread(target=self._watch, name="remote-engine-monitor", daemon=True)
            self._monitor.start()

    @classmethod
    def connect_with_backoff(cls, url: str, token: str | None, stop: threading.Event, **kw) -> "RemoteEngine | None":
        """Wait for the engine to answer (backoff up to BACKOFF_MAX); None if `stop` is set first."""
        delay = BACKOFF_FIRST
        while not stop.is_set():
            try:
                return cls(url, token, **kw)
            except EngineLost as exc:
                log.info("waiting for the engine: %s (next try in %.1f s)", exc, delay)
            stop.wait(delay)
            delay = min(delay * 2, BACKOFF_MAX)
        return None

    def _probe(self) -> None:
        ws, hello = _connect(self.url, self.token)
        ws.close()
        info = wire.info_from_json(hello["info"])
        if getattr(self, "info", None) not in (None, info):
            log.warning("the engine at %s came back with another model: %s", self.url, info)
        self.info: EngineInfo = info
        self.capacity: int = int(hello.get("capacity", 1))
        self._restored()

    def _restored(self) -> None:
        with self._state_lock:
            was, self.connected = self.connected, True
        if not was and hasattr(self, "_monitor"):
            log.info("engine at %s reachable again", self.url)
            if self.on_restored is not None:
                self.on_restored()

    def _lost(self, reason: str) -> None:
        with self._state_lock:
            was, self.connected = self.connected, False
        if was:
            log.warning("%s", reason)
            if self.on_lost is not None:
                self.on_lost(reason)
            self._wake.set()  # start probing with backoff now

    def _watch(self) -> None:
        delay = BACKOFF_FIRST
        while not self._closed.is_set():
            self._wake.wait(self.probe_seconds if self.connected else delay)
            self._wake.clear()
            if self._closed.is_set():
                return
            try:
                self._probe()
                delay = BACKOFF_FIRST
            except EngineLost as exc:
                self._lost(str(exc))
                delay = min(delay * 2, BACKOFF_MAX)
            except UserError as exc:  # refused: say so once per loss, keep trying (the token may be fixed)
                self._lost(str(exc))
                delay = BACKOFF_MAX

    def open(self, spec: StreamSpec) -> RemoteStream:
        return RemoteStream(self, spec, next(self._ids) % (wire.MAX_REQUEST_ID + 1))

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
