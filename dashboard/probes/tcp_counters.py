"""A TCP connection's byte counts and the time bytes last came in, asked of the kernel.

On Linux, ``getsockopt(TCP_INFO)`` holds what the kernel counted for the socket since it
opened: ``tcpi_bytes_received`` (bytes that arrived in order), ``tcpi_bytes_acked`` (bytes the
peer acknowledged) and ``tcpi_last_data_recv`` (milliseconds since data last arrived). With
the bytes still unread (``FIONREAD``) and still unacknowledged (``TIOCOUTQ``) they give
exactly what the process read from and wrote to the socket, the figures a hook on every read
and write would count, at the cost of four system calls when a connection is shown instead
of two hooked calls on every request (1.1% of a Klein hello-world's throughput, measured).

The kernel counts the sequence numbers of SYN and FIN as one byte each; they are taken off:
an actively opened socket's SYN from the bytes acknowledged, and a FIN by the state it left
the connection in. Two figures can be one byte off: an actively connected socket adopted as
a server (``adoptStreamConnection``) counts its SYN as one byte out, and a socket closed by a
reset (state ``CLOSE``, taken for a graceful close, both FINs exchanged) counts one byte less
each way, unless a snapshot read it before the reset.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import sys
import termios
from typing import Any, Protocol

#: ``struct tcp_info`` offsets (linux/tcp.h): state u8 at 0, last_data_recv u32 at 52,
#: bytes_acked u64 at 120, bytes_received u64 at 128 (Linux 4.1 and later).
_LAST_DATA_RECV = struct.Struct("=I")
_LAST_DATA_RECV_AT = 52
_BYTES = struct.Struct("=QQ")
_BYTES_AT = 120
_INFO_SIZE = _BYTES_AT + _BYTES.size
_INT = struct.Struct("=i")
_INT_BUFFER = bytes(_INT.size)

# TCP states (include/net/tcp_states.h).
_ESTABLISHED, _SYN_SENT, _SYN_RECV, _FIN_WAIT1, _FIN_WAIT2, _TIME_WAIT = 1, 2, 3, 4, 5, 6
_CLOSE, _CLOSE_WAIT, _LAST_ACK, _LISTEN, _CLOSING = 7, 8, 9, 10, 11
#: States in which this side's FIN is in the sequence space (sent, acknowledged or not).
_OWN_FIN = frozenset({_FIN_WAIT1, _FIN_WAIT2, _TIME_WAIT, _LAST_ACK, _CLOSING})
#: States in which the peer's FIN arrived.
_PEER_FIN = frozenset({_TIME_WAIT, _CLOSE_WAIT, _LAST_ACK, _CLOSING})
#: ``tcpi_bytes_acked`` and ``tcpi_bytes_received``, compared to see whether they moved.
_COUNTERS = slice(_BYTES_AT, _BYTES_AT + _BYTES.size)
#: Reads of the queues between two equal reads of the counters, before settling for a lower
#: bound.
_ATTEMPTS = 3

_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)
_available: bool | None = None


class Counted(Protocol):
    """What ``refresh`` updates (a ``ConnEntry``)."""

    bytes_in: int
    bytes_out: int
    last_in: float


def available() -> bool:
    """Whether this kernel gives the counters (Linux 4.1+), asked of an unconnected socket (no
    connection is made). The answer is kept once the kernel gave one; a socket that could not
    be made (no descriptor left) is asked about again next time."""
    global _available
    if _available is None:
        if _TCP_INFO is None or not sys.platform.startswith("linux"):
            _available = False
            return False
        try:
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            return False
        with probe:
            try:
                info = probe.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _INFO_SIZE)
            except OSError:
                info = b""
        _available = len(info) >= _INFO_SIZE
    return _available


def _queued(fd: int, request: int) -> int:
    value: int = _INT.unpack(fcntl.ioctl(fd, request, _INT_BUFFER))[0]
    return value


def _info(sock: Any) -> bytes:
    info: bytes = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _INFO_SIZE)
    if len(info) < _INFO_SIZE:
        raise OSError(f"TCP_INFO gave {len(info)} bytes, fewer than {_INFO_SIZE}")
    return info


def refresh(entry: Counted, sock: Any, now: float, *, active_open: bool) -> None:
    """Set ``entry``'s byte counts and ``last_in`` (``now`` less the kernel's time since data
    last arrived) from ``sock``; ``active_open``: the socket connected out (its SYN was
    acknowledged as one byte). Raises ``OSError`` for a socket that is not TCP or is closed.

    Counts never go down. The kernel's counters and queues are read by separate calls, and
    data or acknowledgements may arrive in between: the counters are read again after the
    queues, up to ``_ATTEMPTS`` times, until they did not move. If they kept moving, the
    counters read before the queues give figures at most the truth (bytes that arrived in
    between count as unread; bytes acknowledged in between as neither acknowledged nor not).
    """
    assert _TCP_INFO is not None
    info = _info(sock)
    if info[0] == _LISTEN:
        return
    fd = sock.fileno()
    again = info
    for attempt in range(_ATTEMPTS):
        if attempt:
            info = again  # read after the previous queues: before these
        unread = _queued(fd, termios.FIONREAD)
        unacked = _queued(fd, termios.TIOCOUTQ)
        again = _info(sock)
        if again[0] == info[0] and again[_COUNTERS] == info[_COUNTERS]:
            break
    # ``info`` was read just before the queues used.
    state = info[0]
    acked, received = _BYTES.unpack_from(info, _BYTES_AT)
    # A CLOSE socket reached it with both FINs exchanged, or by a reset (then 1 byte low).
    bytes_in = received - unread - (state in _PEER_FIN or state == _CLOSE)
    bytes_out = acked + unacked - active_open - (state in _OWN_FIN or state == _CLOSE)
    entry.bytes_in = max(entry.bytes_in, bytes_in)
    entry.bytes_out = max(entry.bytes_out, bytes_out)
    if state != _SYN_SENT and (state != _CLOSE or received > 0):
        last_in = now - _LAST_DATA_RECV.unpack_from(info, _LAST_DATA_RECV_AT)[0] / 1000.0
        entry.last_in = max(entry.last_in, last_in)
