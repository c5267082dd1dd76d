"""The kernel's TCP counts (``dashboard.probes.tcp_counters``) on real loopback sockets."""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import threading
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
    c, s = counts(client, active_open=True), counts(server, active_open=False)
    # The SYN, acknowledged as one byte, is not counted; nothing arrived since the handshake.
    assert (c.bytes_in, c.bytes_out, s.bytes_in, s.bytes_out) == (0, 0, 0, 0)
    assert 0 <= 100.0 - s.last_in < 5
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


def state_of(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 136)[0]


FIN_WAIT1, FIN_WAIT2, CLOSE, CLOSE_WAIT, LAST_ACK, CLOSING = 4, 5, 7, 8, 9, 11


def fill(sock: socket.socket) -> int:
    """Write until the kernel takes no more (the peer does not read): bytes written."""
    sock.setblocking(False)
    written = 0
    chunk = b"f" * 65536
    for _ in range(10_000):  # bounded: loopback buffers hold a few MB at most
        try:
            written += sock.send(chunk)
        except BlockingIOError:
            return written
    raise AssertionError("the peer's buffers never filled")


def drain(sock: socket.socket) -> int:
    """Read to the end of the stream: bytes read."""
    sock.setblocking(True)
    total = 0
    while chunk := sock.recv(1 << 20):
        total += len(chunk)
    return total


def test_fins_in_every_closing_state(pair: Pair) -> None:
    """A FIN queued behind unacknowledged data keeps each side in the states a transport can
    be registered in while it closes; no FIN is ever counted as a byte."""
    client, server = pair
    sent = fill(client)
    client.shutdown(socket.SHUT_WR)  # the FIN waits behind the data the server has not read
    assert state_of(client) == FIN_WAIT1
    s = counts(server, active_open=False)
    assert (counts(client, active_open=True).bytes_out, s.bytes_in, s.bytes_out) == (sent, 0, 0)
    server.sendall(b"s" * 123)
    server.shutdown(socket.SHUT_WR)  # reaches the client before its own FIN could leave
    settle(lambda: state_of(client) == CLOSING)
    assert read_exactly(client, 123) == b"s" * 123
    c = counts(client, active_open=True)
    assert (c.bytes_out, c.bytes_in) == (sent, 123)
    assert drain(server) == sent  # the data, then the client's FIN
    settle(lambda: state_of(client) == CLOSE and state_of(server) == CLOSE)
    c, s = counts(client, active_open=True), counts(server, active_open=False)
    assert (c.bytes_out, c.bytes_in, s.bytes_in, s.bytes_out) == (sent, 123, sent, 123)


def test_last_ack_and_close_wait(pair: Pair) -> None:
    client, server = pair
    client.sendall(b"c" * 50)
    client.shutdown(socket.SHUT_WR)
    assert read_exactly(server, 50) == b"c" * 50
    settle(lambda: state_of(server) == CLOSE_WAIT)
    assert counts(server, active_open=False).bytes_in == 50
    sent = fill(server)
    server.shutdown(socket.SHUT_WR)
    assert state_of(server) == LAST_ACK
    assert state_of(client) == FIN_WAIT2
    s = counts(server, active_open=False)
    assert (s.bytes_in, s.bytes_out) == (50, sent)
    assert drain(client) == sent
    c = counts(client, active_open=True)
    assert (c.bytes_out, c.bytes_in) == (50, sent)


def test_a_reset_keeps_what_was_read_before_and_is_one_byte_low_otherwise(pair: Pair) -> None:
    client, server = pair
    client.sendall(b"c" * 4000)
    server.sendall(b"s" * 700)
    read_exactly(server, 4000)
    read_exactly(client, 700)
    shown = counts(server, active_open=False)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # a reset
    settle(lambda: state_of(server) == CLOSE)
    tcp_counters.refresh(shown, server, 100.0, active_open=False)
    assert (shown.bytes_in, shown.bytes_out) == (4000, 700)
    first = counts(server, active_open=False)  # never read before the reset
    assert (first.bytes_in, first.bytes_out) == (3999, 699)


def test_counts_under_a_stream_never_exceed_the_truth_nor_go_back(pair: Pair) -> None:
    """Bytes arrive between the system calls that read the counters and the queues: every
    refresh is at most what was read, never less than the one before, and exact once the
    stream stops."""
    client, server = pair
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stop = threading.Event()

    def pump() -> None:
        client.settimeout(0.05)  # never stuck in a send once the reader stops
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                client.sendall(b"z" * 100)

    sender = threading.Thread(target=pump)
    sender.start()
    entry, read, previous = Entry(), 0, 0
    try:
        deadline = time.monotonic() + 1.0
        for _ in range(50_000):
            if time.monotonic() > deadline:
                break
            read += len(server.recv(1000))
            tcp_counters.refresh(entry, server, 100.0, active_open=False)
            assert previous <= entry.bytes_in <= read
            previous = entry.bytes_in
    finally:
        stop.set()
        sender.join(5)
    assert not sender.is_alive()
    client.shutdown(socket.SHUT_WR)
    read += drain(server)
    tcp_counters.refresh(entry, server, 100.0, active_open=False)
    assert entry.bytes_in == read > 0


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


def test_available_asks_again_when_no_socket_could_be_made(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tcp_counters, "_available", None)  # not asked yet

    def no_descriptor_left(*args: object, **kwargs: object) -> socket.socket:
        raise OSError(errno.EMFILE, "Too many open files")

    with monkeypatch.context() as patched:
        patched.setattr(socket, "socket", no_descriptor_left)
        assert tcp_counters.available() is False
    assert tcp_counters.available() is True  # the failure was not kept as the answer
