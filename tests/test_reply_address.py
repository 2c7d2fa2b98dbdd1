"""Where the bridge's replies may go (bridge/server.py `ReplyAddress`); the end-to-end check with real datagrams
from 127.0.0.2 is `test_server.py::test_only_a_valid_message_moves_the_replies`."""

from __future__ import annotations

import pytest

from bridge.server import ReplyAddress, is_loopback


@pytest.mark.parametrize("host,expected", [("127.0.0.1", True), ("127.0.0.2", True), ("127.255.0.9", True),
                                           ("localhost", True), ("0.0.0.0", False), ("", False),
                                           ("192.168.1.20", False), ("10.0.0.1", False), ("not-an-ip", False)])
def test_loopback_is_127_slash_8(host, expected):
    assert is_loopback(host) is expected


def test_serving_on_loopback_replies_never_leave_it():
    reply = ReplyAddress("127.0.0.1")
    assert reply.host == "127.0.0.1" and not reply.beyond_loopback
    assert reply.follow("127.0.0.2") and reply.host == "127.0.0.2"  # another loopback address: still this machine
    assert not reply.follow("192.168.1.20") and reply.host == "127.0.0.2"  # never beyond loopback
    assert not reply.follow("203.0.113.5") and reply.host == "127.0.0.2"


def test_serving_beyond_loopback_follows_valid_senders_anywhere():
    # The user asked for the network (--host 0.0.0.0): the device may be on another machine. Until a valid message
    # arrives, replies go to loopback, not to the wildcard.
    reply = ReplyAddress("0.0.0.0")
    assert reply.host == "127.0.0.1" and reply.beyond_loopback
    assert reply.follow("192.168.1.20") and reply.host == "192.168.1.20"
    lan = ReplyAddress("192.168.1.5")
    assert lan.host == "192.168.1.5" and lan.beyond_loopback and lan.follow("192.168.1.20")
