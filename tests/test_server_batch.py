"""Through the real server: with the batching engine (serve's default) a jam and a /generate run at once; with
`--engine local` (one stream at a time) the same /generate waits for the jam, which shows the test can fail."""

from __future__ import annotations

import pytest

from tests.test_server_harness import serving


@pytest.mark.parametrize("engine", ["batch", "local"])
def test_a_jam_and_a_generate_run_at_once(tmp_path, engine):
    with serving(tmp_path, "--engine", engine) as b:
        b.send("/set", "chunk_bars", 1)
        b.send("/set", "context_seconds", 3.0)
        b.send("/tempo", 240.0, 4, 4)
        b.send("/jam/start", 1, "")
        b.listener.wait("/chunk", lambda a: a[:2] == [1, 0], timeout=120)
        b.send("/generate", 2, "", 2)
        assert b.listener.wait("/ack", lambda a: a[0] == 2)[1] == [2, "/generate"]
        if engine == "batch":
            address, args = b.listener.result(2, timeout=120)
            assert address == "/done", args
            # The jam was not held up: it goes on after the generate, its chunks still numbered in order.
            n = len(b.listener.all("/chunk", lambda a: a[0] == 1))
            b.listener.wait("/chunk", lambda a: a[:2] == [1, n], timeout=120)
            assert not b.listener.all("/error", lambda a: a[0] in (1, 2) and a[1] != "slow")  # "slow": a busy host
        else:
            n = len(b.listener.all("/chunk", lambda a: a[0] == 1))
            b.listener.wait("/chunk", lambda a: a[:2] == [1, n + 2], timeout=120)
            assert not b.listener.all("/done", lambda a: a[0] == 2)  # still waiting behind the jam
        b.send("/jam/stop", 1)
        assert b.listener.result(1, timeout=120)[0] == "/done"
        if engine == "local":  # its turn came once the jam ended
            assert b.listener.result(2, timeout=120)[0] == "/done"
