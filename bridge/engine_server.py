"""`musicgen-bridge engine`: an `engine.interface.Engine` served over WebSocket (wire: `bridge.wire`).

`EngineConnection` speaks the wire on one connection, whatever carries it: the `websockets` server here, or a
Starlette WebSocket in a Ray Serve replica (`bridge.cluster`). Each stream runs on its own thread against the
engine (which serializes or batches them); its chunks go back through the connection's event loop, one send at a
time, so a slow client slows only its own streams. Anything the wire does not allow is logged and closes that
connection only: its streams are cancelled, the engine and other connections go on.

Security: loopback unless told otherwise, a token required for any other address, checked in constant time
before the WebSocket is accepted; sizes bounded; the engine never opens a path (specs carry arrays).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import signal
import socket
import threading
from http import HTTPStatus
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable

import numpy as np

from bridge import wire
from bridge.server import is_loopback
from engine.errors import Cancelled, UserError

if TYPE_CHECKING:
    from engine.interface import Engine

log = logging.getLogger(__name__)

SEND_TIMEOUT = 60.0  # a client that takes longer than this to accept one chunk is gone


def resolve_token(token: str | None) -> str | None:
    """--token, else the environment variable, else None. An empty string means none."""
    token = token if token is not None else os.environ.get(wire.TOKEN_ENV)
    return token or None


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token."""
    if not is_loopback(host) and not token:
        raise UserError(f"refusing to listen on {host} without a token: anyone who can reach it could use the "
                        f"engine; pass --token T or set {wire.TOKEN_ENV} (or listen on 127.0.0.1)", code="bad_args")


def token_ok(authorization: str | None, token: str | None) -> bool:
    """The Authorization header ("Bearer T") against the token, in constant time. No token: all are let in
    (loopback only, see check_bind)."""
    if token is None:
        return True
    presented = (authorization or "").removeprefix("Bearer ").encode()
    return hmac.compare_digest(presented, token.encode())


class _StreamWorker:
    """One stream of a connection, iterated on its own thread."""

    def __init__(self, conn: "EngineConnection", rid: int, stream, fmt: wire.AudioFormat):
        self.conn, self.rid, self.stream, self.fmt = conn, rid, stream, fmt
        self.thread = threading.Thread(target=self._run, name=f"engine-stream-{rid}", daemon=True)

    def _run(self) -> None:
        conn, rid, sr = self.conn, self.rid, self.conn.engine.info.sample_rate
        try:
            started = False
            for chunk in self.stream:
                if not started:
                    started = True
                    conn.send_threadsafe(wire.message("started", id=rid, seed=self.stream.seed,
                                                      prompt_text=self.stream.prompt_text))
                conn.send_threadsafe(wire.chunk_frame(rid, chunk, self.stream.steps, self.fmt, sr,
                                                      self.stream.busy_seconds))
            self._tell(wire.message("end", id=rid))
        except Cancelled:
            self._tell(wire.message("cancelled", id=rid))
        except UserError as exc:
            self._tell(wire.message("error", id=rid, code=exc.code, message=str(exc)))
        except ConnectionError:  # the connection is gone: nobody to tell
            self.stream.cancel()
        except Exception as exc:  # a bug in the engine: say so, keep serving
            log.exception("stream %d of %s failed", rid, conn.peer)
            self._tell(wire.message("error", id=rid, code="internal", message=f"engine error: {exc}"))
        finally:
            conn.finished(rid)

    def _tell(self, message: str) -> None:
        try:
            self.conn.send_threadsafe(message)
        except ConnectionError:
            pass


class EngineConnection:
    """The wire's server side on one accepted, authenticated connection.

    `send` and `close` are the transport's coroutines; `run(messages)` reads until the peer goes away or breaks
    the wire, then cancels what is left of this connection's streams.
    """

    def __init__(self, engine: Engine, send: Callable[[str | bytes], Awaitable[None]],
                 close: Callable[[int, str], Awaitable[None]], peer: str):
        self.engine, self._send, self._close, self.peer = engine, send, close, peer
        self.server = {"host": socket.gethostname(), "pid": os.getpid()}  # which process serves (a replica, say)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._send_lock = asyncio.Lock()
        self._workers: dict[int, _StreamWorker] = {}
        self._seen: set[int] = set()  # ids ever opened here: a late cancel of a finished stream is not an error
        self._lock = threading.Lock()
        self._closed = False

    async def send(self, data: str | bytes) -> None:
        async with self._send_lock:
            await self._send(data)

    def send_threadsafe(self, data: str | bytes) -> None:
        """From a stream's thread: send and wait (back-pressure); ConnectionError once the connection is gone."""
        if self._closed:
            raise ConnectionError("connection closed")
        try:
            asyncio.run_coroutine_threadsafe(self.send(data), self.loop).result(SEND_TIMEOUT)
        except Exception as exc:
            raise ConnectionError(f"sending to {self.peer} failed: {exc!r}") from None

    def finished(self, rid: int) -> None:
        with self._lock:
            self._workers.pop(rid, None)

    async def run(self, messages: AsyncIterator[str | bytes]) -> None:
        self.loop = asyncio.get_running_loop()
        info = self.engine.info
        await self.send(wire.message("hello", version=wire.VERSION, info=wire.info_json(info),
                                     capacity=self.engine.capacity, server=self.server))
        try:
            await self._read(messages.__aiter__())
        except wire.WireError as exc:
            log.warning("closing connection from %s: %s", self.peer, exc)
            try:
                await self.send(wire.message("error", id=None, code=exc.code, message=str(exc)))
                await self._close(wire.BAD_FRAME_CLOSE, str(exc)[:120])
            except Exception:
                pass
        except ConnectionError as exc:  # the transport's way of saying the peer went away
            log.info("connection from %s dropped: %s", self.peer, exc)
        finally:
            self._closed = True
            with self._lock:
                workers = list(self._workers.values())
            if workers:
                log.info("cancelling %d stream(s) of %s", len(workers), self.peer)
            for w in workers:
                w.stream.cancel()

    async def _read(self, messages) -> None:
        async for data in messages:
            if isinstance(data, bytes):
                frame = wire.unpack_frame(data)
                raise wire.WireError(f"unexpected {frame.kind.name} frame for request {frame.request} (attachments "
                                     f"follow their open message)")
            msg = wire.parse_message(data, ("open", "cancel", "stop"))
            rid = msg["id"]
            if msg["type"] == "open":
                await self._open(msg, messages)
                continue
            with self._lock:
                worker = self._workers.get(rid)
            if worker is not None:
                worker.stream.cancel() if msg["type"] == "cancel" else worker.stream.stop()
            elif rid not in self._seen:
                raise wire.WireError(f"{msg['type']} for unknown request id {rid}", "unknown_request")

    async def _open(self, msg: dict, messages) -> None:
        rid = msg["id"]
        if rid in self._seen:
            raise wire.WireError(f"request id {rid} was used already on this connection")
        names = msg.get("attachments", [])
        if not isinstance(names, list) or len(names) > len(wire.ATTACHMENTS) or len(set(names)) != len(names) \
                or not set(names) <= set(wire.ATTACHMENTS):
            raise wire.WireError(f"attachments must list at most once each of {wire.ATTACHMENTS}, got {names!r}")
        try:
            fmt = wire.AudioFormat[str(msg.get("format", "FLOAT32")).upper()]
        except KeyError:
            raise wire.WireError(f"format must be one of {[f.name.lower() for f in wire.AudioFormat]}") from None
        arrays: dict[str, tuple[np.ndarray, int | None]] = {}
        for i, name in enumerate(names):
            data = await anext(messages, None)
            if data is None:
                raise ConnectionError("closed while sending attachments")
            if not isinstance(data, bytes):
                raise wire.WireError(f"expected the {name} attachment of request {rid}, got a text message")
            frame = wire.unpack_frame(data)
            if frame.kind is not wire.Kind.ATTACHMENT or frame.request != rid or frame.index != i:
                raise wire.WireError(f"expected attachment {i} ({name}) of request {rid}, got {frame.kind.name} "
                                     f"{frame.index} of request {frame.request}")
            got, array, rate = wire.frame_attachment(frame)
            if got != name:
                raise wire.WireError(f"attachment {i} of request {rid} is {got}, the open message said {name}")
            arrays[name] = (array, rate)
        self._seen.add(rid)
        try:
            spec = wire.spec_from_json(msg.get("spec"), arrays)
        except UserError as exc:  # in range of the wire, out of range for the engine: that request fails
            await self.send(wire.message("error", id=rid, code=exc.code, message=str(exc)))
            return
        with self._lock:
            if len(self._workers) >= wire.MAX_STREAMS_PER_CONNECTION:
                busy = True
            else:
                busy = False
                worker = self._workers[rid] = _StreamWorker(self, rid, self.engine.open(spec), fmt)
        if busy:
            await self.send(wire.message("error", id=rid, code="busy", message=f"at most "
                                         f"{wire.MAX_STREAMS_PER_CONNECTION} streams per connection"))
            return
        log.info("%s: stream %d opened (%r)", self.peer, rid, spec.prompt[:60])
        worker.thread.start()


# ---- the websockets server


async def _websockets_messages(ws) -> AsyncIterator[str | bytes]:
    from websockets.exceptions import ConnectionClosed

    try:
        async for data in ws:
            yield data
    except ConnectionClosed as exc:
        if exc.sent is not None and exc.sent.code == 1009:  # websockets refused a message over max_size
            log.warning("closed connection from %s: a message over %d bytes", _peer(ws), wire.MAX_MESSAGE_BYTES)
        raise ConnectionError(str(exc)) from None


def _peer(ws) -> str:
    addr = getattr(ws, "remote_address", None)
    return f"{addr[0]}:{addr[1]}" if addr else "?"


class EngineServer:
    """Serves one engine on host:port until `stop()`; `ready` is set once it listens (`port` then holds the port,
    useful with port 0)."""

    def __init__(self, engine: Engine, host: str = "127.0.0.1", port: int = wire.DEFAULT_PORT,
                 token: str | None = None):
        check_bind(host, token)
        self.engine, self.host, self.port, self.token = engine, host, port, token
        self.ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def _check_token(self, connection, request):
        if token_ok(request.headers.get("Authorization"), self.token):
            return None
        log.warning("refused a connection from %s: wrong or missing token", _peer(connection))
        return connection.respond(HTTPStatus.UNAUTHORIZED, "wrong or missing token\n")

    async def _handle(self, ws) -> None:
        peer = _peer(ws)
        log.debug("connection from %s", peer)  # bridges probe every few seconds: not worth a line each
        conn = EngineConnection(self.engine, ws.send, lambda code, reason: ws.close(code, reason), peer)
        try:
            await conn.run(_websockets_messages(ws))
        except ConnectionError as exc:
            log.info("connection from %s dropped: %s", peer, exc)

    async def _serve(self) -> None:
        from websockets.asyncio.server import serve

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(sig, self._stop.set)
        async with serve(self._handle, self.host, self.port, max_size=wire.MAX_MESSAGE_BYTES,
                         compression=None, process_request=self._check_token) as server:
            self.port = server.sockets[0].getsockname()[1]
            log.info("engine %s listening on ws://%s:%d%s", self.engine.info.name, self.host, self.port,
                     "" if self.token else " (no token: loopback only)")
            self.ready.set()
            await self._stop.wait()

    def serve_forever(self) -> None:
        asyncio.run(self._serve())

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)


# ---- the command


def add_engine_parser(sub) -> None:
    from bridge.cli import add_model_args

    e = sub.add_parser("engine", help="serve the model to bridges over WebSocket (see `serve --engine`)")
    e.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback; any other "
                   "needs a token)")
    e.add_argument("--port", type=int, default=wire.DEFAULT_PORT, help=f"port (default {wire.DEFAULT_PORT})")
    e.add_argument("--token", default=None, help=f"token every bridge must present (or set {wire.TOKEN_ENV}, "
                   "which keeps it out of process lists)")
    add_model_args(e)
    e.set_defaults(func=cmd_engine)


def cmd_engine(args) -> int:
    from bridge.server import _warm_up
    from engine.checkpoint import load_model
    from engine.local_engine import LocalEngine

    if not 0 <= args.port <= 65535:
        raise UserError("--port must be between 0 and 65535", code="bad_args")
    token = resolve_token(args.token)
    check_bind(args.host, token)  # before minutes of loading
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    _warm_up(model)
    server = EngineServer(LocalEngine(model), args.host, args.port, token)

    def announce() -> None:
        server.ready.wait()
        print(f"engine {model.name} ready on ws://{args.host}:{server.port}", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    server.serve_forever()
    return 0
