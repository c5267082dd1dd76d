"""``/api/v1/history`` answers are bounded: written as the client reads, at most 4 at once
(503 with ``Retry-After`` beyond), a client that stops reading dropped.

A real monitored program in a subprocess (tests/history_server.py, on this pytest run's
reactor) holds about 20 MB of history. 40 sockets ask for it and never read: its resident
memory (``VmRSS``) stays within 64 MB of its start, 4 answers are in flight and 36 refused,
and once the sockets close the in-flight count is back to 0 and the memory where it was.
Before the fix each answer was built whole and handed to its transport at once: 40 unread
answers of 16.6 MB took a process from 107 MB to 743 MB.

Snapshot (plain and ``?fresh=1``) and ``/metrics`` answers are written the same way, at most
32 at once: 150 unread sockets on 450 KB samples, through a small kernel send buffer (as a
slow network path has), keep the process within 24 MB of its start (before: each unread
answer stayed whole in its transport's buffer, +51 MB).

A client that reads slowly but steadily (4 KB a second, a 3 s timeout) is not dropped; one
that stops is (before, a client had to read the transport's 64 KiB plus a whole sample within
the timeout).

In process, on loopback: a client that reads gets the same bytes as before (the stored
samples joined; the snapshot; the metrics text), with its ``Content-Length``; no timer is
left once it is done; ``Monitor.stop()`` aborts the history and series answers in flight.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import task
from twisted.internet.threads import deferToThread

from dashboard.answer_limits import BulkAnswers
from dashboard.monitor import Monitor
from dashboard.testing import global_reactor
from dashboard.web.bulk_body import BodyProducer
from dashboard.web.prometheus import SnapshotCollector, exposition
from tests.browser_support import ServerProcess
from tests.history_server import pending_at_sites

SERVER = Path(__file__).resolve().parent / "history_server.py"
HISTORY_MB = 20
CLIENTS = 40
MAX_IN_FLIGHT = 4
RSS_BOUND_MB = 64
REQUEST = b"GET /api/v1/history HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class HistoryServer(ServerProcess):
    def __init__(self, reactor_name: str, *extra: str) -> None:
        self.prefix = ""
        command = [sys.executable, str(SERVER), "--reactor", reactor_name, *extra]
        port, history_bytes, sample_bytes = self._start(command, deadline_s=60)
        self.port = int(port)
        self.history_bytes = int(history_bytes)
        self.sample_bytes = int(sample_bytes)

    def rss_mb(self) -> float:
        """The process's resident memory now, MB (``VmRSS`` of /proc/<pid>/status)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS line")

    def web(self) -> dict[str, Any]:
        """The ``web`` section of a fresh snapshot (taken after every earlier request)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/snapshot?fresh=1"
        with urllib.request.urlopen(url, timeout=10) as response:
            web: dict[str, Any] = json.loads(response.read())["web"]
        return web

    def stored_web(self) -> dict[str, Any]:
        """The ``web`` section of the newest stored sample (one a second), read through the
        history: for when the snapshot answers are all taken."""
        url = f"http://127.0.0.1:{self.port}/api/v1/history?seconds=3"
        with urllib.request.urlopen(url, timeout=10) as response:
            web: dict[str, Any] = json.loads(response.read())["samples"][-1]["web"]
        return web

    def wait_for(
        self, what: str, predicate: Any, deadline_s: float = 20, kind: str = "history"
    ) -> dict[str, Any]:
        deadline = time.monotonic() + deadline_s
        while True:
            web = self.web() if kind == "history" else self.stored_web()
            if predicate(web[kind]):
                return web
            assert time.monotonic() < deadline, f"{what}: {web}"
            time.sleep(0.05)


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[HistoryServer]:
    process = HistoryServer(str(request.config.getoption("reactor")))
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def impatient_server(request: pytest.FixtureRequest) -> Iterator[HistoryServer]:
    process = HistoryServer(str(request.config.getoption("reactor")), "--slow-client-timeout", "1")
    try:
        yield process
    finally:
        process.stop()


def unread_clients(port: int, count: int) -> list[socket.socket]:
    """``count`` sockets that ask for the whole history and read nothing (a small receive
    buffer each, so the kernel holds little of it for them)."""
    clients = []
    for _ in range(count):
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", port))
        client.sendall(REQUEST)
        clients.append(client)
    return clients


def status_line(client: socket.socket) -> bytes:
    """The first line of the answer on ``client`` (read now, after the measurements)."""
    client.settimeout(10)
    head = b""
    while b"\r\n" not in head:
        chunk = client.recv(256)
        assert chunk, head
        head += chunk
    return head.split(b"\r\n", 1)[0]


def test_forty_unread_history_clients_leave_the_memory_bounded(server: HistoryServer) -> None:
    assert server.history_bytes >= HISTORY_MB * 1_000_000
    start_mb = server.rss_mb()
    clients = unread_clients(server.port, CLIENTS)
    try:
        # 3 s: the answers fill what their transports and sockets take (the whole body of
        # each, before the fix, within a second).
        peak_mb = start_mb
        for _ in range(30):
            peak_mb = max(peak_mb, server.rss_mb())
            time.sleep(0.1)
        assert peak_mb - start_mb <= RSS_BOUND_MB, (start_mb, peak_mb)
        web = server.wait_for(
            "every request answered or refused",
            lambda h: h["in_flight"] + h["refused_total"] == CLIENTS,
        )
        assert web["history"]["in_flight"] == MAX_IN_FLIGHT, web
        assert web["history"]["max_in_flight"] == MAX_IN_FLIGHT
        assert web["history"]["refused_total"] == CLIENTS - MAX_IN_FLIGHT
        peak_mb = max(peak_mb, server.rss_mb())
        lines = sorted(status_line(client) for client in clients)
        assert lines == [b"HTTP/1.1 200 OK"] * MAX_IN_FLIGHT + [
            b"HTTP/1.1 503 Service Unavailable"
        ] * (CLIENTS - MAX_IN_FLIGHT)
    finally:
        for client in clients:
            client.close()
    web = server.wait_for("the answers ended", lambda h: h["in_flight"] == 0)
    assert web["history"]["served_total"] == 0  # none was read to its end
    after_mb = server.rss_mb()
    assert after_mb - start_mb <= RSS_BOUND_MB, (start_mb, peak_mb, after_mb)
    # A client that reads gets the whole history.
    url = f"http://127.0.0.1:{server.port}/api/v1/history"
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read()
        assert int(response.headers["Content-Length"]) == len(body) >= server.history_bytes
    assert len(json.loads(body)["samples"]) >= 150
    assert server.web()["history"]["served_total"] == 1


def test_the_503_beyond_the_limit_is_json_with_retry_after(server: HistoryServer) -> None:
    clients = unread_clients(server.port, MAX_IN_FLIGHT)
    try:
        server.wait_for("four in flight", lambda h: h["in_flight"] == MAX_IN_FLIGHT)
        url = f"http://127.0.0.1:{server.port}/api/v1/history?seconds=5"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 503
        assert refused.value.headers["Retry-After"] == "5"
        assert refused.value.headers["Content-Type"] == "application/json; charset=utf-8"
        assert json.loads(refused.value.read()) == {
            "error": "too_many_answers",
            "message": "at most 4 of these answers are written at once; retry in 5 s",
            "status": 503,
            "max_in_flight": 4,
            "retry_after_s": 5,
        }
    finally:
        for client in clients:
            client.close()
    server.wait_for("the answers ended", lambda h: h["in_flight"] == 0)
    # The slots are free again.
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert json.loads(response.read())["seconds"] == 5


def test_a_client_that_stops_reading_is_dropped_and_counted(
    impatient_server: HistoryServer,
) -> None:
    (client,) = unread_clients(impatient_server.port, 1)
    try:
        started = time.monotonic()
        web = impatient_server.wait_for(
            "the slow client dropped", lambda h: h["dropped_slow_total"] == 1
        )
        waited_s = time.monotonic() - started
        assert web["history"]["in_flight"] == 0
        assert 0.9 <= waited_s < 10, waited_s
        # The socket was cut: what it can still read ends well before the whole body.
        client.settimeout(10)
        received = 0
        try:
            while chunk := client.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
        assert received < impatient_server.history_bytes // 2, received
    finally:
        client.close()


# snapshots and metrics -----------------------------------------------------------------------

SNAPSHOT_CLIENTS = 150
MAX_SNAPSHOT_ANSWERS = 32
SNAPSHOT_RSS_BOUND_MB = 24
SNAPSHOT_PATHS = (b"/api/v1/snapshot", b"/api/v1/snapshot?fresh=1", b"/metrics")


@pytest.fixture
def big_sample_server(request: pytest.FixtureRequest) -> Iterator[HistoryServer]:
    """450 KB samples (2000 sites), served through a 16 KiB kernel send buffer."""
    process = HistoryServer(
        str(request.config.getoption("reactor")),
        *("--sites", "2000", "--history-mb", "3", "--sndbuf", "16384"),
    )
    try:
        yield process
    finally:
        process.stop()


def test_unread_snapshot_and_metrics_answers_leave_the_memory_bounded(
    big_sample_server: HistoryServer,
) -> None:
    server = big_sample_server
    assert server.sample_bytes > 400_000
    start_mb = server.rss_mb()
    clients = []
    for number in range(SNAPSHOT_CLIENTS):
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", server.port))
        path = SNAPSHOT_PATHS[number % len(SNAPSHOT_PATHS)]
        client.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path)
        clients.append(client)
    try:
        peak_mb = start_mb
        for _ in range(30):
            peak_mb = max(peak_mb, server.rss_mb())
            time.sleep(0.1)
        assert peak_mb - start_mb <= SNAPSHOT_RSS_BOUND_MB, (start_mb, peak_mb)
        # A metrics answer (12 KB) may go out whole; every snapshot is held, or refused.
        web = server.wait_for(
            "every request answered or refused",
            lambda a: a["in_flight"] + a["refused_total"] + a["served_total"] >= SNAPSHOT_CLIENTS,
            kind="snapshot",
        )
        figures = web["snapshot"]
        assert figures["in_flight"] == MAX_SNAPSHOT_ANSWERS, figures
        assert figures["max_in_flight"] == MAX_SNAPSHOT_ANSWERS
        assert figures["refused_total"] >= SNAPSHOT_CLIENTS - MAX_SNAPSHOT_ANSWERS - 50, figures
        # Beyond the limit: a 503 naming it, with Retry-After.
        url = f"http://127.0.0.1:{server.port}/api/v1/snapshot"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 503
        assert refused.value.headers["Retry-After"] == "5"
        assert json.loads(refused.value.read())["max_in_flight"] == MAX_SNAPSHOT_ANSWERS
    finally:
        for client in clients:
            client.close()
    web = server.wait_for("the answers ended", lambda a: a["in_flight"] == 0, kind="snapshot")
    assert server.rss_mb() - start_mb <= SNAPSHOT_RSS_BOUND_MB
    # A client that reads gets the whole snapshot again.
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read()
    assert int(response.headers["Content-Length"]) == len(body) > 400_000
    assert json.loads(body)["deferreds"]["pending"] >= 2000


@pytest.fixture
def patient_server(request: pytest.FixtureRequest) -> Iterator[HistoryServer]:
    process = HistoryServer(
        str(request.config.getoption("reactor")),
        *("--slow-client-timeout", "3", "--history-mb", "5"),
    )
    try:
        yield process
    finally:
        process.stop()


def read_steadily(client: socket.socket, rate: float, seconds: float) -> int:
    """Read ``rate`` bytes a second from ``client`` for ``seconds``; the bytes read."""
    client.settimeout(0.05)
    started = time.monotonic()
    received = 0
    while (elapsed := time.monotonic() - started) < seconds:
        wanted = int(elapsed * rate) - received
        if wanted > 0:
            try:
                chunk = client.recv(min(wanted, 4096))
            except TimeoutError:
                chunk = None
            except ConnectionResetError:
                chunk = b""
            assert chunk != b"", f"dropped after {elapsed:.1f} s, {received} bytes read"
            received += len(chunk or b"")
        time.sleep(0.05)
    return received


def test_a_slow_but_steady_reader_is_kept_and_one_that_stops_is_dropped(
    patient_server: HistoryServer,
) -> None:
    server = patient_server
    (client,) = unread_clients(server.port, 1)  # a 4 KiB receive buffer
    try:
        # 4 KB a second for 9 s, three timeouts: the transport's buffer (64 KiB and more)
        # is not emptied once in that time.
        received = read_steadily(client, 4000, 9.0)
        assert received >= 30_000, received
        history = server.web()["history"]
        assert (history["in_flight"], history["dropped_slow_total"]) == (1, 0), history
        stopped = time.monotonic()
        web = server.wait_for("the stopped reader dropped", lambda h: h["dropped_slow_total"] == 1)
        waited_s = time.monotonic() - stopped
        assert web["history"]["in_flight"] == 0
        assert 2.5 <= waited_s < 10, waited_s
    finally:
        client.close()


# in process: what a reading client gets ---------------------------------------------------


@pytest_twisted.async_yield_fixture
async def served() -> AsyncIterator[tuple[Monitor, str]]:
    reactor = global_reactor()
    monitor = Monitor(reactor, interval=600, history=400)  # no tick during a test
    monitor.start()
    port: Any = await monitor.listen(0)
    try:
        yield monitor, f"http://127.0.0.1:{port.getHost().port}/api/v1/history"
    finally:
        await port.stopListening()
        monitor.stop()


def joined(monitor: Monitor, seconds: int) -> bytes:
    """The body as the history route built it before it was streamed."""
    samples = b",".join(s.encoded for s in monitor.samples(seconds=seconds))
    return b'{"seconds":%d,"samples":[%s]}' % (seconds, samples)


def producer_timers(reactor: Any) -> list[Any]:
    return [
        call
        for call in reactor.getDelayedCalls()
        if getattr(getattr(call, "func", None), "__self__", None).__class__ is BodyProducer
    ]


def fetch(method: str, url: str) -> tuple[int, dict[str, str], bytes]:
    """One request with http.client (on a thread: the reactor serves it meanwhile); headers
    as the server sent them (treq's decoding agent would drop ``Content-Length``)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=30)
    try:
        connection.request(method, parts.path + (f"?{parts.query}" if parts.query else ""))
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest_twisted.ensureDeferred
async def test_a_reading_client_gets_the_same_bytes_as_before(
    served: tuple[Monitor, str],
) -> None:
    monitor, url = served
    for _ in range(300):  # well over the transport's 64 KiB: written in many pieces
        monitor.sample()
    span = monitor.history_seconds
    for query, seconds in (("", span), ("?seconds=60", 60)):
        expected = joined(monitor, seconds)
        assert len(expected) > 300_000
        code, headers, body = await deferToThread(fetch, "GET", url + query)
        assert code == 200
        assert body == expected
        assert headers["Content-Length"] == str(len(expected))
        assert "Transfer-Encoding" not in headers
        assert headers["Content-Type"] == "application/json; charset=utf-8"
        assert headers["Cache-Control"] == "no-store"
    code, headers, body = await deferToThread(fetch, "HEAD", url)
    assert (code, body) == (200, b"")
    assert headers["Content-Length"] == str(len(joined(monitor, span)))
    stats = monitor.snapshot()["web"]["history"]
    assert stats == {
        "in_flight": 0,
        "max_in_flight": 4,
        "refused_total": 0,
        "dropped_slow_total": 0,
        "served_total": 3,
    }
    assert producer_timers(monitor.reactor) == []


@pytest_twisted.async_yield_fixture
async def served_big() -> AsyncIterator[tuple[Monitor, str]]:
    """A Monitor whose samples list 300 sites (about 60 KB: many 16 KiB writes each)."""
    reactor = global_reactor()
    monitor = Monitor(reactor, interval=600, history=400, top_sites=300)
    monitor.start()
    held = pending_at_sites(300)
    port: Any = await monitor.listen(0)
    try:
        yield monitor, f"http://127.0.0.1:{port.getHost().port}"
    finally:
        await port.stopListening()
        monitor.stop()
        del held


@pytest_twisted.ensureDeferred
async def test_snapshot_and_metrics_readers_get_the_same_bytes_as_before(
    served_big: tuple[Monitor, str],
) -> None:
    monitor, base = served_big
    monitor.sample()
    stored = monitor.latest().encoded
    assert len(stored) > 50_000
    code, headers, body = await deferToThread(fetch, "GET", base + "/api/v1/snapshot")
    assert (code, body) == (200, stored)
    assert headers["Content-Length"] == str(len(stored))
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    code, headers, body = await deferToThread(fetch, "GET", base + "/api/v1/snapshot?fresh=1")
    fresh = json.loads(body)
    assert code == 200 and headers["Content-Length"] == str(len(body))
    assert fresh["deferreds"]["pending"] >= 300 and fresh["seq"] == monitor.latest().seq
    code, headers, body = await deferToThread(fetch, "GET", base + "/metrics")
    # The same text, but for the live lag histogram (read at scrape time, not from a sample).
    assert code == 200 and headers["Content-Length"] == str(len(body))
    assert steady_lines(body) == steady_lines(exposition(SnapshotCollector(monitor)))
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    code, headers, body = await deferToThread(fetch, "HEAD", base + "/api/v1/snapshot")
    assert (code, body, headers["Content-Length"]) == (200, b"", str(len(stored)))
    web = monitor.snapshot()["web"]
    assert web["snapshot"] == {
        "in_flight": 0,
        "max_in_flight": 32,
        "refused_total": 0,
        "dropped_slow_total": 0,
        "served_total": 4,
    }
    assert web["series"]["max_in_flight"] == 16
    assert producer_timers(monitor.reactor) == []


def steady_lines(metrics: bytes) -> list[bytes]:
    """The metrics text's lines without the lag histogram's samples."""
    lines = metrics.splitlines()
    assert len(lines) > 50
    return [line for line in lines if not line.startswith(b"twisted_reactor_lag_seconds")]


def hold_answer(port: int, path: bytes, ended: threading.Event) -> int:
    """Ask for ``path``, read nothing until ``ended``, then read to the end of the
    connection: the bytes received (what a reset leaves unread is lost). A read that waits
    10 s for the end raises."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        client.connect(("127.0.0.1", port))
        client.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path)
        assert ended.wait(30)
        client.settimeout(10)
        received = 0
        try:
            while chunk := client.recv(1 << 16):
                received += len(chunk)
        except ConnectionResetError:
            pass
        return received
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_stop_aborts_the_history_and_series_answers_in_flight() -> None:
    reactor = global_reactor()
    monitor = Monitor(reactor, interval=600, history=400, top_sites=500)
    monitor.start()
    held = pending_at_sites(500)
    port: Any = None
    try:
        for _ in range(12):  # 100 KB samples: 1.2 MB of history
            monitor.sample()
        port = await monitor.listen(0)
        port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        number = port.getHost().port
        ended = threading.Event()
        readers = [
            deferToThread(hold_answer, number, path, ended)
            for path in (b"/api/v1/history", b"/api/v1/series?sites_seconds=60")
        ]
        for _ in range(400):
            if monitor.history_answers.in_flight == monitor.series_answers.in_flight == 1:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        assert monitor.history_answers.in_flight == monitor.series_answers.in_flight == 1
        assert len(producer_timers(reactor)) == 2
        monitor.stop()
        assert producer_timers(reactor) == []
        assert monitor.history_answers.in_flight == monitor.series_answers.in_flight == 0
        ended.set()
        # Each connection ended (reset or closed) well before its body: no read timed out.
        received = [await reader for reader in readers]
        assert all(size < 1_000_000 for size in received), received
        assert monitor.history_answers.served_total == monitor.series_answers.served_total == 0
    finally:
        monitor.stop()
        if port is not None:
            await port.stopListening()
        del held


@pytest_twisted.ensureDeferred
async def test_a_bad_seconds_is_still_a_400(served: tuple[Monitor, str]) -> None:
    monitor, url = served
    response = await treq.get(url + "?seconds=0")
    assert response.code == 400
    assert json.loads(await treq.content(response))["parameter"] == "seconds"
    assert monitor.history_answers.in_flight == 0


def test_close_aborts_every_answer_even_when_one_fails() -> None:
    aborted: list[str] = []

    class Answer:
        def __init__(self, name: str, fails: bool = False) -> None:
            self.name, self.fails = name, fails

        def abort(self) -> None:
            aborted.append(self.name)
            if self.fails:
                raise RuntimeError(f"{self.name} failed")

    answers = BulkAnswers(max_in_flight=4)
    for answer in (Answer("a", fails=True), Answer("b"), Answer("c")):
        answers.track(answer)
        answers.track(answer)  # once is enough
    assert answers.in_flight == 3
    with pytest.raises(RuntimeError, match="a failed"):
        answers.close()
    assert sorted(aborted) == ["a", "b", "c"]
    assert answers.in_flight == 0
    answers.close()  # again: nothing left
    assert sorted(aborted) == ["a", "b", "c"]
