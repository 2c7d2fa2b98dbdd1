"""The bridge server in the test's own process (no tests here), so its engine can be wrapped (slowed down, lost,
pooled); driven over UDP like the subprocess servers of test_server_harness."""

from __future__ import annotations

import contextlib

from pythonosc.udp_client import SimpleUDPClient

from bridge.server import BridgeServer, ServeConfig
from tests.test_server_harness import Listener, free_udp_port


@contextlib.contextmanager
def one_torch_thread():
    """As the subprocess servers run (OMP_NUM_THREADS=1): spinning OpenMP workers crawl on a busy host."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class InProcessBridge:
    """BridgeServer in this process; `wrap(engine)` makes the engine it uses (kept as `.engine`)."""

    def __init__(self, tmp, wrap):
        self.listener = Listener(free_udp_port())
        self.out_dir = tmp
        self.engine = None

        def wrap_engine(engine):
            self.engine = wrap(engine)
            return self.engine

        self.server = BridgeServer(ServeConfig(model="random-tiny", device="cpu", port=free_udp_port(),
                                               reply_port=self.listener.sock.getsockname()[1], out_dir=str(tmp),
                                               engine="local", wrap_engine=wrap_engine))
        self.client = SimpleUDPClient("127.0.0.1", self.server.port)
        self.server.start()
        self.listener.wait("/status", lambda a: a[0] == "ready", timeout=120, take=False)

    @property
    def slow(self):
        return self.engine

    def send(self, address: str, *args) -> None:
        self.client.send_message(address, list(args))

    def close(self) -> None:
        self.server.stop()
        self.listener.close()
