"""The dashboard's own Deferreds (issue 13, point 3): made in the ``dashboard`` package (but
its demo), or held by Twisted and Klein while it serves its event streams, they are counted
under ``deferreds.own`` and never in the program's figures. Unit tests with a Clock, and the
real thing over loopback on the test reactor (default and asyncio), both hot paths."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

import dashboard
from dashboard import accel
from dashboard.monitor import Monitor
from dashboard.probes.base import ProbeErrors
from dashboard.probes.deferreds import DeferredsProbe
from dashboard.testing import global_reactor
from tests.test_sse_loopback import dechunk

PACKAGE = os.path.dirname(os.path.abspath(dashboard.__file__))


def maker(filename: str) -> Callable[[], defer.Deferred[None]]:
    """A function that makes a Deferred, compiled as if it were in ``filename``."""
    namespace: dict[str, Any] = {}
    source = "def make():\n    return Deferred()\n"
    exec(compile(source, filename, "exec"), {"Deferred": defer.Deferred}, namespace)
    make: Callable[[], defer.Deferred[None]] = namespace["make"]
    return make


@pytest.fixture
def probe(errors: ProbeErrors, accelerate: bool) -> Iterator[tuple[DeferredsProbe, task.Clock]]:
    clock = task.Clock()
    p = DeferredsProbe(clock, errors, clock.seconds, accelerate=accelerate)
    p.install()
    yield p, clock
    p.uninstall()
    assert errors.counts == {}


def test_the_dashboards_own_sites_are_counted_apart(
    probe: tuple[DeferredsProbe, task.Clock],
) -> None:
    p, clock = probe
    own = maker(os.path.join(PACKAGE, "web", "own_code.py"))
    demo = maker(os.path.join(PACKAGE, "demo.py"))  # the demo is the program
    before = p.collect()
    held_own = [own() for _ in range(4)]
    held_demo = [demo() for _ in range(2)]
    own()  # dropped unfired: the dashboard's loss, not the program's
    clock.advance(0.1)
    section = p.collect()
    assert section["own"] == {
        "pending": 4,
        "created_total": 5,
        "fired_total": 0,
        "unfired_collected_total": 1,
    }
    assert section["pending"] - before["pending"] == 2
    assert section["created_total"] - before["created_total"] == 2
    assert section["unfired_collected_total"] == before["unfired_collected_total"]
    sites = [row["site"] for row in section["sites"]]
    assert not [s for s in sites if "own_code.py" in s]
    assert [s for s in sites if s.endswith("demo.py:2 in make")]
    assert not [row for row in section["lost_sites"] if "own_code.py" in row["site"]]
    assert not [row for row in section["oldest"] if "own_code.py" in row["site"]]
    for d in held_own:
        d.callback(None)
    assert p.collect()["own"]["fired_total"] == 4
    assert p.collect()["own"]["pending"] == 0
    del held_demo


def test_deferreds_held_while_serving_move_to_own_with_their_counts(
    probe: tuple[DeferredsProbe, task.Clock],
) -> None:
    p, clock = probe
    promoted = [defer.Deferred[None]() for _ in range(2)]
    clock.advance(0.1)  # promoted: tracked by weak reference
    before = p.collect()
    young = [defer.Deferred[None]() for _ in range(2)]  # still in the nursery
    held = [*young, *promoted]
    p.serving = lambda: held
    section = p.collect()
    assert section["pending"] == before["pending"] + 2 - 4
    assert section["created_total"] == before["created_total"] + 2 - 4
    assert section["own"]["pending"] == 4
    assert p.whereabouts(held[0])[0] == "<serving the dashboard>"
    for d in held:
        d.callback(None)
    section = p.collect()
    assert section["own"] == {
        "pending": 0,
        "created_total": 4,
        "fired_total": 4,
        "unfired_collected_total": 0,
    }
    assert section["created_total"] == before["created_total"] - 2
    assert section["fired_total"] == before["fired_total"]


# --- over loopback -----------------------------------------------------------------------


class RawClient(Protocol):
    """Sends one raw GET and keeps what comes back."""

    def __init__(self, path: str, stream: bool) -> None:
        close = "" if stream else "Connection: close\r\n"
        self.request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{close}\r\n".encode()
        self.received = bytearray()
        self.lost = False

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(Exception("lost"))) -> None:  # noqa: B008
        self.lost = True


async def request(port: int, path: str, *, stream: bool = False) -> RawClient:
    endpoint = TCP4ClientEndpoint(global_reactor(), "127.0.0.1", port)
    factory: Any = Factory.forProtocol(lambda: RawClient(path, stream))
    factory.noisy = False
    client: RawClient = await endpoint.connect(factory)
    return client


async def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await task.deferLater(global_reactor(), 0.005, lambda: None)


@pytest_twisted.ensureDeferred
async def test_open_event_streams_leave_the_programs_pending_unchanged(
    accelerate: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three streams, two from ``monitor.listen()`` and one from the resource mounted in the
    program's own Site: the program's pending figures are what they were without them."""
    monkeypatch.setenv(accel.ENV, "1" if accelerate else "0")
    reactor = global_reactor()
    monitor = Monitor(reactor, interval=0.05, history=20)
    monitor.start()
    assert monitor.deferreds.accelerated == accelerate
    root = Resource()
    root.putChild(b"_reactor", monitor.resource())
    site = Site(root)
    site.noisy = False
    own_port: Any = await monitor.listen("tcp:0:interface=127.0.0.1")
    program_port: Any = reactor.listenTCP(0, site, interface="127.0.0.1")
    clients: list[RawClient] = []
    try:
        own, mounted = own_port.getHost().port, program_port.getHost().port
        page = await request(own, "/")  # a page load leaves nothing pending
        await wait_until(lambda: page.lost, "the page to be served")
        assert page.received.startswith(b"HTTP/1.1 200")
        before = monitor.snapshot()["deferreds"]
        clients = [
            await request(own, "/api/v1/events", stream=True),
            await request(own, "/api/v1/events", stream=True),
            await request(mounted, "/_reactor/api/v1/events", stream=True),
        ]
        await wait_until(lambda: len(monitor.events.streams) == 3, "three open streams")
        await wait_until(
            lambda: all(b"event: snapshot" in c.received for c in clients), "a frame each"
        )
        during = monitor.snapshot()["deferreds"]
        assert during["pending"] == before["pending"]
        assert [o["site"] for o in during["oldest"]] == [o["site"] for o in before["oldest"]]
        assert [r for r in during["sites"] if r["pending"]] == [
            r for r in before["sites"] if r["pending"]
        ]
        # each stream: its own Deferred and three notifyFinish (the dashboard's, Klein's two)
        assert during["own"]["pending"] - before["own"]["pending"] == 12
    finally:
        for client in clients:
            transport: Any = client.transport
            transport.loseConnection()
        await wait_until(lambda: not monitor.events.streams, "the streams to close")
        after = monitor.snapshot()["deferreds"]
        await own_port.stopListening()
        await program_port.stopListening()
        monitor.stop()
    assert after["own"]["pending"] == before["own"]["pending"]
    assert after["pending"] == before["pending"]


@pytest_twisted.ensureDeferred
async def test_a_request_in_flight_on_the_own_port_is_not_the_programs(
    accelerate: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``?fresh=1`` over HTTP collects while its own request is in flight: the ``notifyFinish``
    Deferreds Twisted holds for that request are the dashboard's, so the snapshot it answers
    lists no pending Deferred at twisted.web's sites among the program's."""
    monkeypatch.setenv(accel.ENV, "1" if accelerate else "0")
    reactor = global_reactor()
    monitor = Monitor(reactor, interval=0.05, history=20)
    monitor.start()
    own_port: Any = await monitor.listen("tcp:0:interface=127.0.0.1")
    try:
        client = await request(own_port.getHost().port, "/api/v1/snapshot?fresh=1")
        await wait_until(lambda: client.lost, "the fresh snapshot")
    finally:
        await own_port.stopListening()
        monitor.stop()
    head, _, body = bytes(client.received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    if b"transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    section = json.loads(body)["deferreds"]
    web_sites = [r for r in section["sites"] if "twisted/web/" in r["site"] and r["pending"]]
    assert web_sites == []
    assert section["own"]["pending"] >= 1  # the answering request's notifyFinish
