"""The kernel's TCP counts (``dashboard.probes.tcp_counters``) on real loopback sockets."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import attrs
import pytest

from dashboard.probes import tcp_counters

Pair = tuple[socket.socket, socket.socket]


@attrs.define
class Entry:
    bytes_in: int = 0
    bytes_out: int = 0
    last_in: float = -1.0


@pytest.fixture
def pair() -> Iterator[Pair]:
    """A connected loopback pair: (the side that connected, the side that accepted)."""
    assert tcp_counters.available(), "this Linux kernel should count TCP bytes"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname(), timeout=5)
        server, _ = listener.accept()
    server.settimeout(5)
    with client, server:
        yield client, server


def settle(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not predicate():
        assert time.monotonic() < deadline, "the kernel did not get there in time"
        time.sleep(0.005)


def counts(sock: socket.socket, *, active_open: bool, now: float = 100.0) -> Entry:
    entry = Entry()
    tcp_counters.refresh(entry, sock, now, active_open=active_open)
    return entry


def read_exactly(sock: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        assert chunk, "closed early"
        got += chunk
    return got


def test_counts_are_what_each_side_read_and_wrote(pair: Pair) -> None:
    client, server = pair
    assert (counts(client, active_open=True).bytes_out, counts(server, active_open=False)) == (
        0,  # the SYN, acknowledged as one byte, is not counted
        Entry(0, 0, counts(server, active_open=False).last_in),
    )
    client.sendall(b"x" * 5000)
    server.sendall(b"y" * 300)
    read_exactly(server, 2000)  # 3000 bytes stay unread in the kernel
    read_exactly(client, 300)
    settle(lambda: counts(client, active_open=True).bytes_out == 5000)
    c, s = counts(client, active_open=True), counts(server, active_open=False)
    assert (c.bytes_out, c.bytes_in) == (5000, 300)
    assert (s.bytes_in, s.bytes_out) == (2000, 300)
    read_exactly(server, 3000)
    assert counts(server, active_open=False).bytes_in == 5000


def test_last_in_is_when_data_last_arrived(pair: Pair) -> None:
    client, server = pair
    client.sendall(b"ping")
    read_exactly(server, 4)
    time.sleep(0.2)
    entry = counts(server, active_open=False, now=1000.0)
    # The kernel counts in jiffies (1 to 10 ms).
    assert 0.18 <= 1000.0 - entry.last_in < 5


def test_a_fin_is_not_a_byte(pair: Pair) -> None:
    client, server = pair
    client.sendall(b"x" * 700)
    client.shutdown(socket.SHUT_WR)  # the client's FIN follows its bytes
    assert read_exactly(server, 700) == b"x" * 700
    assert server.recv(10) == b""  # the FIN arrived: the server is in CLOSE_WAIT
    settle(lambda: counts(client, active_open=True).bytes_out == 700)  # FIN_WAIT1 or 2
    assert counts(server, active_open=False).bytes_in == 700


def test_a_closed_socket_keeps_the_counts_last_read() -> None:
    entry = Entry(7, 9, 1.5)
    with socket.socket() as unconnected:  # state CLOSE: nothing to read
        tcp_counters.refresh(entry, unconnected, 100.0, active_open=True)
    assert entry == Entry(7, 9, 1.5)
    with pytest.raises(OSError):
        tcp_counters.refresh(entry, unconnected, 100.0, active_open=True)  # no descriptor
    with pytest.raises(OSError), socket.socket(socket.AF_UNIX) as unix_socket:
        tcp_counters.refresh(entry, unix_socket, 100.0, active_open=True)
    assert entry == Entry(7, 9, 1.5)
