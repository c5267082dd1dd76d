"""A TCP connection's byte counts and the time bytes last came in, asked of the kernel.

On Linux, ``getsockopt(TCP_INFO)`` holds what the kernel counted for the socket since it
opened: ``tcpi_bytes_received`` (bytes that arrived in order), ``tcpi_bytes_acked`` (bytes the
peer acknowledged) and ``tcpi_last_data_recv`` (milliseconds since data last arrived). With
the bytes still unread (``FIONREAD``) and still unacknowledged (``TIOCOUTQ``) they give
exactly what the process read from and wrote to the socket, the figures a hook on every read
and write would count, at the cost of three system calls when a connection is shown instead
of two hooked calls on every request (1.1% of a Klein hello-world's throughput, measured).

The kernel counts the sequence numbers of SYN and FIN as one byte each; they are taken off:
an actively opened socket's SYN from the bytes acknowledged, and a FIN by the state it left
the connection in. A closed socket (state ``CLOSE``, which a reset also leads to) keeps the
counts last read.
"""

from __future__ import annotations

import fcntl
import functools
import socket
import struct
import sys
import termios
from typing import Any, Protocol

#: ``struct tcp_info`` offsets (linux/tcp.h): state u8 at 0, last_data_recv u32 at 52,
#: bytes_acked u64 at 120, bytes_received u64 at 128 (Linux 4.1 and later).
_LAST_DATA_RECV = struct.Struct("=I")
_BYTES = struct.Struct("=QQ")
_INFO_SIZE = 136
_INT = struct.Struct("=i")
_INT_BUFFER = bytes(_INT.size)

# TCP states (include/net/tcp_states.h).
_ESTABLISHED, _SYN_SENT, _SYN_RECV, _FIN_WAIT1, _FIN_WAIT2, _TIME_WAIT = 1, 2, 3, 4, 5, 6
_CLOSE, _CLOSE_WAIT, _LAST_ACK, _LISTEN, _CLOSING = 7, 8, 9, 10, 11
#: States in which this side's FIN is in the sequence space (sent, acknowledged or not).
_OWN_FIN = frozenset({_FIN_WAIT1, _FIN_WAIT2, _TIME_WAIT, _LAST_ACK, _CLOSING})
#: States in which the peer's FIN arrived.
_PEER_FIN = frozenset({_TIME_WAIT, _CLOSE_WAIT, _LAST_ACK, _CLOSING})
#: States with nothing to read: counts stay as last read.
_STALE = frozenset({_CLOSE, _LISTEN})

_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)


class Counted(Protocol):
    """What ``refresh`` updates (a ``ConnEntry``)."""

    bytes_in: int
    bytes_out: int
    last_in: float


@functools.cache
def available() -> bool:
    """Whether this kernel gives the counters (Linux 4.1+): asked once, of an unconnected
    socket, so no connection is made."""
    if _TCP_INFO is None or not sys.platform.startswith("linux"):
        return False
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            info = probe.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _INFO_SIZE)
    except OSError:
        return False
    return len(info) >= _INFO_SIZE


def _queued(fd: int, request: int) -> int:
    value: int = _INT.unpack(fcntl.ioctl(fd, request, _INT_BUFFER))[0]
    return value


def refresh(entry: Counted, sock: Any, now: float, *, active_open: bool) -> None:
    """Set ``entry``'s byte counts and ``last_in`` (``now`` less the kernel's time since data
    last arrived) from ``sock``; ``active_open``: the socket connected out (its SYN was
    acknowledged as one byte). Raises ``OSError`` for a socket that is not TCP or is closed."""
    assert _TCP_INFO is not None
    info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _INFO_SIZE)
    state = info[0]
    if state in _STALE or len(info) < _INFO_SIZE:
        return
    fd = sock.fileno()
    unread = _queued(fd, termios.FIONREAD)
    unacked = _queued(fd, termios.TIOCOUTQ)
    acked, received = _BYTES.unpack_from(info, 120)
    bytes_in = received - unread - (state in _PEER_FIN)
    bytes_out = acked + unacked - active_open - (state in _OWN_FIN)
    entry.bytes_in = max(0, bytes_in)
    entry.bytes_out = max(0, bytes_out)
    if state != _SYN_SENT:
        entry.last_in = now - _LAST_DATA_RECV.unpack_from(info, 52)[0] / 1000.0
