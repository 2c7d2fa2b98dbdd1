"""`musicgen-bridge cluster`: the engine as a Ray Serve application, N replicas behind one WebSocket address.

Each replica loads the model and serves the same wire as `musicgen-bridge engine` (`bridge.engine_server.
EngineConnection` over a FastAPI WebSocket ingress). Ray does the distributed part, nothing here is home-made:
- a stream's WebSocket connection is routed once, when it opens, and stays on its replica for its life (so a jam
  keeps its KV cache);
- new connections go to the less loaded of two randomly sampled replicas (Ray Serve's default power-of-two-choices
  router, counting each replica's ongoing requests, i.e. open connections);
- Ray health-checks replicas and restarts a dead one; its jams see their connection drop, raise `EngineLost` in
  the bridge, and resume on a new connection (routed to a live replica) like a restarted single engine.

Without --address a local Ray is started (one machine, its CPUs and GPUs); with one, this joins that cluster
(`ray start --head` on one machine, `ray start --address HEAD:6379` on the others; see the README).
"""

# No `from __future__ import annotations` here: FastAPI reads the WebSocket parameter's annotation at runtime, and
# WebSocket is imported inside build_app (Ray is optional), where a string annotation could not be resolved.
import logging
import os
import threading

from bridge import wire
from bridge.engine_server import EngineConnection, check_bind, resolve_token, token_ok
from engine.errors import UserError

log = logging.getLogger(__name__)

APP_NAME = "musicgen-engine"
# For a local Ray (see Cluster): patient proxy checks, and the engine's processes at normal priority.
LOCAL_RAY_ENV = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30",
                 "RAY_worker_niceness": "0"}
MAX_CONNECTIONS_PER_REPLICA = 16  # open streams a replica accepts; Ray queues the rest (the engine batches/serializes)


def _import_ray():
    try:
        import ray
        from ray import serve
    except ImportError:
        raise UserError("the cluster needs Ray Serve: pip install 'musicgen-bridge[cluster]'",
                        code="bad_args") from None
    return ray, serve


def build_app(model: str, *, device: str = "auto", dtype: str = "float32", token: str | None = None,
              replicas: int = 1, gpus_per_replica: float = 0.0, cpus_per_replica: float = 1.0):
    """The Ray Serve application: `replicas` copies of the engine, each on `gpus_per_replica` GPUs."""
    _, serve = _import_ray()
    from fastapi import FastAPI, WebSocket

    app = FastAPI()

    @serve.deployment(name="Engine", num_replicas=replicas, max_ongoing_requests=MAX_CONNECTIONS_PER_REPLICA,
                      ray_actor_options={"num_gpus": gpus_per_replica, "num_cpus": cpus_per_replica},
                      health_check_period_s=2, health_check_timeout_s=30)
    @serve.ingress(app)
    class EngineReplica:
        def __init__(self) -> None:
            from bridge.server import _warm_up
            from engine.checkpoint import load_model
            from engine.local_engine import LocalEngine

            logging.basicConfig(level=logging.INFO)
            loaded = load_model(model, device=device, dtype=dtype)
            _warm_up(loaded)
            self.engine = LocalEngine(loaded)
            self.pid = os.getpid()

        @app.websocket("/")
        async def connect(self, ws: WebSocket) -> None:
            peer = f"{ws.client.host}:{ws.client.port}" if ws.client else "?"
            if not token_ok(ws.headers.get("authorization"), token):
                log.warning("replica %d refused a connection from %s: wrong or missing token", self.pid, peer)
                await ws.close(code=1008)  # before accept: the handshake is refused (HTTP 403)
                return
            await ws.accept()

            async def messages():
                while True:
                    try:
                        event = await ws.receive()
                    except Exception as exc:  # disconnects, and the proxy's actor dying, all end this connection
                        raise ConnectionError(f"{type(exc).__name__}: {exc}") from None
                    if event["type"] == "websocket.disconnect":
                        raise ConnectionError(f"disconnected ({event.get('code')})")
                    data = event.get("bytes") if event.get("bytes") is not None else event.get("text")
                    if data is not None and len(data) > wire.MAX_MESSAGE_BYTES:
                        raise wire.WireError(f"a message of {len(data)} bytes is over the limit", "too_big")
                    yield data

            async def send(data: str | bytes) -> None:
                try:
                    await (ws.send_bytes(data) if isinstance(data, bytes) else ws.send_text(data))
                except Exception as exc:
                    raise ConnectionError(f"{type(exc).__name__}: {exc}") from None

            conn = EngineConnection(self.engine, send, lambda code, reason: ws.close(code, reason), peer)
            await conn.run(messages())

        @app.get("/replica")
        def replica(self) -> dict:  # which process serves: lets tests and operators see the spread
            return {"pid": self.pid}

    return EngineReplica.bind()


class Cluster:
    """Deploys the application on a local or existing Ray cluster; `url` is the ingress; `shutdown()` tears down
    what it started."""

    def __init__(self, model: str, *, replicas: int = 1, host: str = "127.0.0.1", port: int = wire.DEFAULT_PORT,
                 token: str | None = None, address: str | None = None, gpus_per_replica: float = 0.0,
                 device: str = "auto", dtype: str = "float32", cpus_per_replica: float = 1.0):
        check_bind(host, token)
        if replicas < 1:
            raise UserError("--replicas must be at least 1", code="bad_args")
        ray, serve = _import_ray()
        self.ray, self.serve, self.host, self.port = ray, serve, host, port
        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            # Serve's controller gives a starting proxy 5 s to answer and then kills it (ActorDiedError): on a
            # laptop whose cores are busy (Live, a jam) that start takes longer. And Ray runs its workers at nice
            # 15, where any busy process starves them: here the workers are the engine, the work itself. A local
            # Ray inherits this process's environment; a joined cluster keeps its operator's settings.
            for name, value in LOCAL_RAY_ENV.items():
                os.environ.setdefault(name, value)
            # Workers import this project: the driver's PYTHONPATH travels with them.
            env = {k: os.environ[k] for k in ("PYTHONPATH", "HF_HUB_OFFLINE", "HF_HOME") if k in os.environ}
            ray.init(address=address, include_dashboard=False, runtime_env={"env_vars": env} if env else None,
                     logging_level=logging.WARNING)
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(model, device=device, dtype=dtype, token=token, replicas=replicas,
                            gpus_per_replica=gpus_per_replica, cpus_per_replica=cpus_per_replica),
                  name=APP_NAME, route_prefix="/")
        self.url = f"ws://{host}:{port}/"

    def shutdown(self) -> None:
        try:
            self.serve.shutdown()
        finally:
            if self.started_ray:
                self.ray.shutdown()


def add_cluster_parser(sub) -> None:
    from bridge.cli import add_model_args

    c = sub.add_parser("cluster", help="serve the engine from N Ray Serve replicas (pip install "
                       "'musicgen-bridge[cluster]')")
    c.add_argument("--replicas", type=int, default=1, help="engine copies (one per GPU with --gpus-per-replica 1)")
    c.add_argument("--host", default="127.0.0.1", help="ingress address (default loopback; any other needs a token)")
    c.add_argument("--port", type=int, default=wire.DEFAULT_PORT, help=f"ingress port (default {wire.DEFAULT_PORT})")
    c.add_argument("--token", default=None, help=f"token every bridge must present (or set {wire.TOKEN_ENV})")
    c.add_argument("--address", default=None, help="join this Ray cluster (e.g. HEAD:6379); default: start a local one")
    c.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs each replica reserves (0: CPU)")
    add_model_args(c)
    c.set_defaults(func=cmd_cluster)


def cmd_cluster(args) -> int:
    if not 1 <= args.port <= 65535:
        raise UserError("--port must be between 1 and 65535", code="bad_args")
    if args.gpus_per_replica < 0:
        raise UserError("--gpus-per-replica must not be negative", code="bad_args")
    token = resolve_token(args.token)
    check_bind(args.host, token)  # before Ray starts
    cluster = Cluster(args.model, replicas=args.replicas, host=args.host, port=args.port, token=token,
                      address=args.address, gpus_per_replica=args.gpus_per_replica, device=args.device,
                      dtype=args.dtype)
    print(f"cluster of {args.replicas} engine replica(s) ready on {cluster.url}", flush=True)
    stop = threading.Event()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    cluster.shutdown()
    return 0
