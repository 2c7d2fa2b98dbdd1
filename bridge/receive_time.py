"""When a UDP datagram reached this machine, on the monotonic clock, from the kernel's receive timestamp.

`/transport` and `/tempo` say where the song is as of their sending. The bridge's OSC thread may pick such a
datagram up milliseconds later (a busy host, the GIL, a message queued before it); anchoring the song's grid at
the handler's clock would move every bar line later by that wait. The kernel stamps each datagram as it arrives
(`SO_TIMESTAMPNS` on Linux, `SO_TIMESTAMP` on macOS); this reads that stamp. Where there is none (Windows, or a
kernel that refuses the option) the datagram counts as arriving when it is read.

The stamp is on the wall clock; it is converted at once, from a wall and a monotonic reading taken back to back.
Converting later (with an age carried to the handler) would add every GIL hand-over in between to the arrival.
"""

from __future__ import annotations

import logging
import socket
import struct
import sys
import time

log = logging.getLogger(__name__)

# (socket option, control message type, struct of the stamp, seconds per unit of its second field). Python's
# socket module exports none of these; the values are the platforms' ABI (Linux asm-generic, macOS sys/socket.h).
_LINUX_NS = (35, 35, "qq", 1e-9)     # SO_TIMESTAMPNS / SCM_TIMESTAMPNS: struct timespec
_LINUX_US = (29, 29, "qq", 1e-6)     # SO_TIMESTAMP / SCM_TIMESTAMP: struct timeval
_DARWIN_US = (0x400, 0x02, "qi", 1e-6)  # SO_TIMESTAMP / SCM_TIMESTAMP: struct timeval (32-bit microseconds)

# An age outside [0, MAX_AGE_S] means the wall clock was stepped between the stamp and now (NTP): ignore it.
MAX_AGE_S = 10.0


def _platform_stamp() -> tuple[int, int, str, float] | None:
    if sys.platform.startswith("linux"):
        return _LINUX_NS
    if sys.platform == "darwin":
        return _DARWIN_US
    return None


PLATFORM = "platform"  # DatagramReceiver's default: the stamp this platform's kernel gives


def _monotonic_of(wall: float) -> float:
    """The wall-clock time `wall` on the monotonic clock (now, if it is not a plausible past arrival)."""
    for _ in range(5):  # a pair of readings that no thread switch split
        before, now_wall, after = time.monotonic(), time.time(), time.monotonic()
        if after - before < 1e-3:
            break
    now = (before + after) / 2
    age = now_wall - wall
    return now - age if 0.0 <= age <= MAX_AGE_S else now


class DatagramReceiver:
    """Reads datagrams from a bound UDP socket together with their arrival time (`time.monotonic`'s clock).
    `stamp` is PLATFORM, one of the layouts above, or None (no kernel stamps: a datagram arrives when read)."""

    def __init__(self, sock: socket.socket, stamp: tuple[int, int, str, float] | str | None = PLATFORM):
        self.sock = sock
        self._stamp = _platform_stamp() if stamp == PLATFORM else stamp
        if self._stamp is not None and hasattr(sock, "recvmsg"):
            try:
                sock.setsockopt(socket.SOL_SOCKET, self._stamp[0], 1)
            except OSError as exc:
                log.info("no kernel receive timestamps on this socket (%s): song positions count from when the "
                         "bridge reads them", exc)
                self._stamp = None
        else:
            self._stamp = None
        # Room for a 64-bit timespec/timeval (16 bytes), whatever part of it the struct reads.
        self._space = socket.CMSG_SPACE(16) if self._stamp else 0

    @property
    def stamped(self) -> bool:
        """Whether datagrams carry the kernel's receive time."""
        return self._stamp is not None

    def receive(self, size: int) -> tuple[bytes, tuple, float]:
        """(data, sender, arrived): the next datagram of at most `size` bytes, and when it arrived (monotonic)."""
        if self._stamp is None:
            data, sender = self.sock.recvfrom(size)
            return data, sender, time.monotonic()
        data, ancillary, _flags, sender = self.sock.recvmsg(size, self._space)
        _option, kind, layout, unit = self._stamp
        for level, cmsg_type, payload in ancillary:
            if level == socket.SOL_SOCKET and cmsg_type == kind and len(payload) >= struct.calcsize(layout):
                seconds, fraction = struct.unpack_from(layout, payload)
                return data, sender, _monotonic_of(seconds + fraction * unit)
        return data, sender, time.monotonic()
