# mypy: allow-untyped-calls
"""The dashboard's own port and the connections accepted on it are shown apart
(``connections.own``), never in the program's figures; on the real reactor, with the
compiled and the pure-Python hot paths."""

from __future__ import annotations

import gc
import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.web import server

from dashboard import accel
from dashboard.monitor import Monitor
from dashboard.probes.base import ProbeErrors
from dashboard.probes.connection_detail import pending_write_bytes
from dashboard.probes.connections import ConnectionsProbe
from dashboard.testing import global_reactor
from tests.test_probe_connections import (
    FakeSocket,
    Recorder,
    RecordingFactory,
    TCPServer,
    async_test,
    close,
    until,
)

#: The program's figures that the dashboard's own connections must leave unchanged.
PROGRAM_FIGURES = ("open", "opened_total", "closed_total", "by_kind", "items_total")


@pytest.fixture
def monitor(accelerate: bool, monkeypatch: pytest.MonkeyPatch) -> Iterator[Monitor]:
    if not accelerate:
        monkeypatch.setenv(accel.ENV, "0")
    m = Monitor(global_reactor(), interval=3600)  # samples taken by the test only
    assert m.connections.accelerated is accelerate
    try:
        yield m
    finally:
        m.stop()


def connections(monitor: Monitor) -> dict[str, Any]:
    section: dict[str, Any] = monitor.snapshot()["connections"]
    return section


def all_open(c: dict[str, Any]) -> int:
    """Program and own together (before the fix there is no ``own``)."""
    own: int = c.get("own", {}).get("open", 0)
    return int(c["open"]) + own


def program_figures(c: dict[str, Any]) -> dict[str, Any]:
    return {k: c[k] for k in PROGRAM_FIGURES}


def http_get(conn: http.client.HTTPConnection, path: str) -> bytes:
    """One request on a kept-alive connection (blocking: call it from a thread)."""
    conn.request("GET", path)
    response = conn.getresponse()
    assert response.status == 200
    return response.read()


def connected(port: int) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.connect()
    return conn


def blocking_get(port: int, path: str) -> bytes:
    conn = connected(port)
    try:
        return http_get(conn, path)
    finally:
        conn.close()


@async_test
async def test_dashboard_port_and_its_clients_are_own(monitor: Monitor) -> None:
    reactor = global_reactor()
    monitor.start()
    before = connections(monitor)
    port: Any = await monitor.listen(0)
    address = f"127.0.0.1:{port.getHost().port}"
    clients: list[http.client.HTTPConnection] = []
    try:
        for _ in range(3):
            clients.append(connected(port.getHost().port))
        await until(lambda: all_open(connections(monitor)) == all_open(before) + 3)

        # A snapshot asked over one of them: the asking request is the dashboard's own too.
        asked = await reactor_thread_get(reactor, clients[0], "/api/v1/snapshot?fresh=1")
        for c in (connections(monitor), json.loads(asked)["connections"]):
            assert c["own"] == {"open": 3, "listening": [address]}
            assert program_figures(c) == program_figures(before)
            assert address not in [row["address"] for row in c["listening"]]
            assert all(address not in (item["local"], item["peer"]) for item in c["items"])
            assert c["listening"] == before["listening"]

        for client in clients:
            client.close()
        await until(lambda: connections(monitor)["own"]["open"] == 0)
        c = connections(monitor)
        assert program_figures(c) == program_figures(before)
    finally:
        for client in clients:
            client.close()
        await port.stopListening()
    c = connections(monitor)
    assert c["own"] == {"open": 0, "listening": []}
    assert program_figures(c) == program_figures(before)
    assert monitor.errors.counts.get("connections", 0) == 0


async def reactor_thread_get(reactor: Any, conn: http.client.HTTPConnection, path: str) -> bytes:
    """``http_get`` in a thread: the reactor must run to answer it."""
    from twisted.internet.threads import deferToThread

    body: bytes = await deferToThread(http_get, conn, path)
    return body


@async_test
async def test_own_port_listening_before_start_is_adopted_as_own(monitor: Monitor) -> None:
    port: Any = await monitor.listen(0)  # the probe is not installed yet
    address = f"127.0.0.1:{port.getHost().port}"
    client = connected(port.getHost().port)
    try:
        # The server side is accepted once the reactor turns: then start the monitor.
        await until(lambda: accepted_on(port) == 1)
        monitor.start()
        c = connections(monitor)
        assert c["own"] == {"open": 1, "listening": [address]}
        assert address not in [row["address"] for row in c["listening"]]
        assert all(address not in (item["local"], item["peer"]) for item in c["items"])
        assert c["adopted_at_install"] == c["open"]
    finally:
        client.close()
        await port.stopListening()


def reactor_readers() -> list[Any]:
    return list(global_reactor().getReaders())


def accepted_on(port: Any) -> int:
    """Server transports of ``port`` the reactor watches."""
    return sum(1 for r in reactor_readers() if getattr(r, "server", None) is port)


@async_test
async def test_dashboard_mounted_in_the_programs_site_is_the_programs(monitor: Monitor) -> None:
    """``monitor.resource()`` in the program's own Site: its port and connections are the
    program's (nothing tells them apart from the program's other requests)."""
    from twisted.web.resource import Resource

    reactor = global_reactor()
    monitor.start()
    root = Resource()
    root.putChild(b"_reactor", monitor.resource())
    port = reactor.listenTCP(0, server.Site(root), interface="127.0.0.1")
    address = f"127.0.0.1:{port.getHost().port}"
    try:
        before = connections(monitor)
        body = await reactor_get(port.getHost().port, "/_reactor/api/v1/snapshot?fresh=1")
        c = json.loads(body)["connections"]
        assert address in [row["address"] for row in c["listening"]]
        assert c["open"] == before["open"] + 1
        assert c["own"] == {"open": 0, "listening": []}
    finally:
        await port.stopListening()


async def reactor_get(portnum: int, path: str) -> bytes:
    from twisted.internet.threads import deferToThread

    body: bytes = await deferToThread(blocking_get, portnum, path)
    return body


# -- the probe alone: marking a factory that already listens, with connections open --------------


@pytest.fixture(params=[True, False], ids=["kernel", "hooks"])
def probe(accelerate: bool, request: pytest.FixtureRequest) -> Iterator[ConnectionsProbe]:
    """The probe alone on the real reactor, TCP bytes counted by the kernel or the hooks."""
    kernel_counts: bool = request.param
    reactor = global_reactor()
    errors = ProbeErrors()
    p = ConnectionsProbe(
        reactor, errors, reactor.seconds, accelerate=accelerate, kernel_counts=kernel_counts
    )
    p.install()
    try:
        yield p
    finally:
        p.uninstall()
    assert errors.counts == {}


def balanced(c: dict[str, Any]) -> bool:
    """The program's counters add up (no failed connects in these tests)."""
    opened = c["opened_total"] + c["adopted_at_install"]
    return bool(opened == c["open"] + c["closed_total"] + c["abandoned_total"])


@async_test
async def test_mark_own_moves_a_listening_port_and_its_connections(
    probe: ConnectionsProbe,
) -> None:
    reactor = global_reactor()
    before = probe.collect()
    factory = RecordingFactory()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    address = f"127.0.0.1:{port.getHost().port}"
    clients = [socket.create_connection(("127.0.0.1", port.getHost().port), 5) for _ in range(2)]
    try:
        await until(lambda: len(factory.protocols) == 2)
        # Bytes the byte hooks count go to the program's until the mark.
        clients[0].sendall(b"x" * 10)
        await until(lambda: factory.protocols[0].received == b"x" * 10)
        c = probe.collect()
        assert (c["open"] - before["open"], c["own"]["open"]) == (2, 0)
        assert not probe.is_own(factory.protocols[0].transport)
        assert address in [row["address"] for row in c["listening"]]

        probe.mark_own(factory)
        c = probe.collect()
        assert c["own"] == {"open": 2, "listening": [address]}
        assert program_figures(c) == program_figures(before)
        assert c["listening"] == before["listening"] and balanced(c)

        # A third connection, accepted after the mark, is own from the start.
        clients.append(socket.create_connection(("127.0.0.1", port.getHost().port), 5))
        await until(lambda: len(factory.protocols) == 3)
        server_side: Any = factory.protocols[2].transport
        server_side.write(b"y" * 5)  # own bytes: counted nowhere, never an error
        await until(lambda: pending_write_bytes(server_side) == 0)
        assert clients[2].recv(5) == b"y" * 5
        c = probe.collect()
        assert c["own"]["open"] == 3 and program_figures(c) == program_figures(before)
        assert [probe.is_own(p.transport) for p in factory.protocols] == [True] * 3
        assert not probe.is_own(None) and not probe.is_own(port)
        for client in clients:
            client.close()
        await until(lambda: all(p.lost for p in factory.protocols))
        c = probe.collect()
        assert c["own"] == {"open": 0, "listening": [address]}
        assert program_figures(c) == program_figures(before) and balanced(c)
    finally:
        for client in clients:
            client.close()
        await port.stopListening()
    assert probe.collect()["own"] == {"open": 0, "listening": []}


# -- the registry's bookkeeping, on fake sockets (no file descriptors) ---------------------------


class FakePort:
    """Stands for a listening port: the registry needs its identity, ``tcp.Server`` its
    number (for its log prefix)."""

    _realPortNumber = 8089


def test_own_connections_counted_apart_until_collected(
    errors: ProbeErrors, accelerate: bool
) -> None:
    mreactor = MemoryReactorClock()
    p = ConnectionsProbe(
        mreactor, errors, mreactor.seconds, accelerate=accelerate, kernel_counts=False
    )
    p.install()
    try:
        own_port, program_port = FakePort(), FakePort()
        registry = p.registry
        for port, own in ((own_port, True), (program_port, False)):
            registry.add_port(port, address=str(own), factory="f", kind="tcp", tls=False, own=own)
        ours = TCPServer(FakeSocket(), Recorder(), ("10.0.0.1", 1), own_port, 0, mreactor)
        theirs = TCPServer(FakeSocket(), Recorder(), ("10.0.0.1", 2), program_port, 1, mreactor)
        ours._dataReceived(b"abc")  # the byte hooks find no program record: nothing counted
        c = p.collect()
        assert (c["open"], c["opened_total"], c["by_kind"]["tcp_server"]) == (1, 1, 1)
        assert c["own"] == {"open": 1, "listening": ["True"]}
        assert [row["address"] for row in c["listening"]] == ["False"]
        assert registry.own_opened == 1 and registry.ports[id(program_port)].accepted == 1
        assert (p.is_own(ours), p.is_own(theirs)) == (True, False)
        # Dropped without connectionLost: gone from own, not abandoned by the program.
        mreactor.removeReader(ours)
        del ours
        gc.collect()
        c = p.collect()
        assert (c["own"]["open"], c["abandoned_total"], c["open"]) == (0, 0, 1)
        close(theirs)
        assert p.collect()["closed_total"] == 1
        registry.remove_port(own_port)
        assert p.collect()["own"] == {"open": 0, "listening": []}
    finally:
        p.uninstall()
    assert errors.counts == {}
