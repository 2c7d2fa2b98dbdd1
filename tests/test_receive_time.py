"""Datagrams carry the kernel's arrival time, and the bridge anchors /transport there, not at its handling."""

from __future__ import annotations

import contextlib
import socket
import sys
import time

import pytest
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge.receive_time import _LINUX_US, DatagramReceiver
from bridge.server import BridgeServer, ServeConfig
from tests.test_server_harness import free_udp_port

WAIT = 0.3  # how long a datagram sits in the socket before it is read


def _pair():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    return rx, tx


def _wait_until_stamping(receiver: DatagramReceiver, tx: socket.socket) -> None:
    """Linux turns arrival stamps on for the whole machine from a work queue, shortly after the first socket asks
    (a datagram before then is stamped when read). Probe until one comes back stamped at its arrival."""
    for _ in range(100):
        sent = time.monotonic()
        tx.sendto(b"probe", receiver.sock.getsockname())
        time.sleep(0.02)
        if receiver.receive(64)[2] < sent + 0.01:
            return
    raise AssertionError("the kernel never stamped a datagram at its arrival")


@contextlib.contextmanager
def _stamping_on():
    """A socket of this process keeps the machine's arrival stamps on while the block runs."""
    rx, tx = _pair()
    with rx, tx:
        _wait_until_stamping(DatagramReceiver(rx), tx)
        yield


@pytest.mark.parametrize("stamp", ["platform", "timeval"])
def test_arrival_is_when_the_kernel_received_it(stamp):
    if stamp == "timeval" and not sys.platform.startswith("linux"):
        pytest.skip("the microsecond layout is tested where Linux offers both")
    rx, tx = _pair()
    with rx, tx:
        receiver = DatagramReceiver(rx, **({} if stamp == "platform" else {"stamp": _LINUX_US}))
        assert receiver.stamped
        _wait_until_stamping(receiver, tx)
        before = time.monotonic()
        tx.sendto(b"hello", rx.getsockname())
        after = time.monotonic()
        time.sleep(WAIT)
        data, sender, arrived = receiver.receive(1024)
        assert data == b"hello" and sender[1] == tx.getsockname()[1]
    # Loopback stamps the datagram within sendto; 2 ms for the conversion from the wall clock.
    assert before - 0.002 <= arrived <= after + 0.002, (before, arrived, after)


def test_without_stamps_a_datagram_arrives_when_read():  # the fallback (Windows); the negative control above
    rx, tx = _pair()
    with rx, tx:
        receiver = DatagramReceiver(rx, stamp=None)
        sent = time.monotonic()
        tx.sendto(b"x", rx.getsockname())
        time.sleep(WAIT)
        assert not receiver.stamped and receiver.receive(1024)[2] >= sent + WAIT


def _transport_message(song_beats: float) -> bytes:
    builder = OscMessageBuilder("/transport")
    for value in (1, 120.0, 4, 4, song_beats):
        builder.add_arg(value)
    return builder.build().dgram


@pytest.mark.parametrize("stamped", [True, False])
def test_the_song_is_anchored_when_transport_arrived(tmp_path, stamped):
    server = BridgeServer(ServeConfig(model="random-tiny", device="cpu", port=free_udp_port(),
                                      reply_port=free_udp_port(), out_dir=str(tmp_path)))
    try:
        if not stamped:  # the negative control: anchored at handling, a whole WAIT late
            server._udp.receiver = DatagramReceiver(server._udp.socket, stamp=None)
        with _stamping_on(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            sent = time.monotonic()
            tx.sendto(_transport_message(8.0), ("127.0.0.1", server.port))
            time.sleep(WAIT)  # the OSC thread is busy elsewhere
            server._udp.handle_request()
        state = server.transport.snapshot()
        assert state.known and state.song_beats == 8.0
        late = state.at - sent
        if stamped:
            assert abs(late) < WAIT / 3, f"anchored {late * 1000:.0f} ms after sending"
        else:
            assert late >= WAIT
    finally:
        server.stop()
