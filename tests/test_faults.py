"""Faults inside the monitor never reach the watched program.

One workload touches everything a program does with Twisted (Deferred chains, cancellation,
timeouts, coroutines, timers, TCP connections, a refused and a timed-out connect, a protocol
idle timeout, an HTTP connection pool, an adbapi pool, threads, a short block) and writes down
what it saw. It runs bare, then under a monitor whose probe bookkeeping is made to raise, one
probe at a time: the trace is the same every time, and the failure is counted in ``errors``
under that probe's name. The web side (a subscriber, one SSE stream, a route) fails alone too.

A probe that keeps failing is switched off: uninstalled, its section ``null``, named in
``errors.disabled``, and it stays off across ``stop()``/``start()``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.enterprise import adbapi
from twisted.internet import defer, error, protocol, task, threads
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols import policies
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from dashboard.monitor import Monitor
from dashboard.probes.base import ProbeErrors
from dashboard.probes.connection_registry import ConnectionRegistry
from dashboard.probes.deferreds import DeferredsProbe
from dashboard.testing import global_reactor
from tests.loopback import full_listener

BLOCK_THRESHOLD_MS = 40


class Boom(RuntimeError):
    """The injected failure."""


def boom(*args: Any, **kwargs: Any) -> Any:
    raise Boom("injected failure")


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(global_reactor(), seconds, lambda: None)


# the workload ---------------------------------------------------------------------------


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        transport: Any = self.transport
        transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        factory: Any = self.factory
        factory.lost.callback(reason.type.__name__)


class Collect(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.got: defer.Deferred[bytes] = defer.Deferred()
        self.lost: defer.Deferred[str] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= 4 and not self.got.called:
            self.got.callback(self.data)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(reason.type.__name__)


class IdleServer(protocol.Protocol, policies.TimeoutMixin):
    def connectionMade(self) -> None:
        self.setTimeout(0.05)  # type: ignore[no-untyped-call]

    def timeoutConnection(self) -> None:
        factory: Any = self.factory
        factory.timed_out.callback("idle timeout")
        transport: Any = self.transport
        transport.loseConnection()


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"hello"


async def workload() -> list[str]:
    """Everything a program does, written down (no timings, no addresses: only outcomes)."""
    reactor = global_reactor()
    trace: list[str] = []

    # Deferred chains, errbacks, cancellation, timeouts, coroutines, inlineCallbacks.
    d: defer.Deferred[int] = defer.Deferred()
    d.addCallback(lambda x: x + 1).addCallback(lambda x: trace.append(f"callback {x}"))
    d.callback(1)

    def note(failure: Failure, what: str) -> None:
        trace.append(f"{what} {type(failure.value).__name__}: {failure.value}")

    e: defer.Deferred[None] = defer.Deferred()
    e.addErrback(note, "errback")
    e.errback(ValueError("bad"))
    cancelled: defer.Deferred[None] = defer.Deferred(lambda _: trace.append("canceller ran"))
    cancelled.addErrback(note, "cancelled")
    cancelled.cancel()
    timing_out: defer.Deferred[None] = defer.Deferred()
    timing_out.addTimeout(0.02, reactor)
    try:
        await timing_out
    except defer.TimeoutError:
        trace.append("addTimeout raised TimeoutError")
    later: defer.Deferred[str] = defer.Deferred()
    reactor.callLater(0.01, later.callback, "fired later")
    trace.append(await later)
    trace.append(str(await defer.succeed("succeed")))

    @defer.inlineCallbacks
    def generator() -> Any:
        value = yield task.deferLater(reactor, 0.005, lambda: "inlineCallbacks")
        return value

    trace.append(await generator())

    async def coroutine() -> str:
        await sleep(0.005)
        return "coroutine"

    trace.append(await defer.Deferred.fromCoroutine(coroutine()))
    gathered = await defer.gatherResults([defer.succeed(i) for i in range(3)])
    trace.append(f"gathered {gathered}")

    # Timers: order, cancel, reset.
    order: list[str] = []
    reactor.callLater(0.03, order.append, "A")
    reactor.callLater(0.01, order.append, "B")
    reactor.callLater(0.02, order.append, "C").cancel()
    reactor.callLater(0.005, order.append, "D").reset(0.04)
    await sleep(0.06)
    trace.append(f"timers {order}")

    # A TCP echo, closed by the client.
    factory = protocol.Factory.forProtocol(Echo)
    factory.lost = defer.Deferred()  # type: ignore[attr-defined]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = await protocol.ClientCreator(reactor, Collect).connectTCP(
        "127.0.0.1", port.getHost().port
    )
    client.transport.write(b"ping")
    trace.append(f"echoed {await client.got!r}")
    client.transport.loseConnection()
    trace.append(f"client lost {await client.lost}")
    trace.append(f"server lost {await factory.lost}")  # type: ignore[attr-defined]

    # A refused connect, a connect that times out, a protocol idle timeout.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused_port = closed.getsockname()[1]
    closed.close()
    try:
        await protocol.ClientCreator(reactor, Collect).connectTCP("127.0.0.1", refused_port)
    except error.ConnectionRefusedError:
        trace.append("connect refused")
    with full_listener() as hole:
        try:
            await protocol.ClientCreator(reactor, Collect).connectTCP(*hole, timeout=0.1)
        except error.TimeoutError:
            trace.append("connect timed out")
    idle_factory = protocol.Factory.forProtocol(IdleServer)
    idle_factory.timed_out = defer.Deferred()  # type: ignore[attr-defined]
    idle_port = reactor.listenTCP(0, idle_factory, interface="127.0.0.1")
    silent = await protocol.ClientCreator(reactor, Collect).connectTCP(
        "127.0.0.1", idle_port.getHost().port
    )
    trace.append(await idle_factory.timed_out)  # type: ignore[attr-defined]
    trace.append(f"silent client lost {await silent.lost}")

    # An HTTP connection pool and an adbapi pool.
    hello: Any = Hello()  # type: ignore[no-untyped-call]
    web_port = reactor.listenTCP(0, Site(hello), interface="127.0.0.1")
    pool = HTTPConnectionPool(reactor, persistent=True)
    url = f"http://127.0.0.1:{web_port.getHost().port}/"
    for _ in range(2):
        response = await treq.get(url, pool=pool, reactor=reactor)
        trace.append(f"http {response.code} {await treq.content(response)!r}")
    await pool.closeCachedConnections()
    db = adbapi.ConnectionPool(
        "sqlite3", ":memory:", check_same_thread=False, cp_min=1, cp_max=1, cp_reactor=reactor
    )
    rows = await db.runQuery("SELECT 1 + 1")
    trace.append(f"adbapi {rows}")
    db.close()

    # Threads, and a short block of the reactor thread.
    trace.append(f"thread {await threads.deferToThread(lambda: 6 * 7)}")
    await task.deferLater(reactor, 0, time.sleep, 2.5 * BLOCK_THRESHOLD_MS / 1000)
    trace.append("blocked and back")

    for listening in (port, idle_port, web_port):
        await listening.stopListening()
    return trace


# the faults -----------------------------------------------------------------------------

Injector = Callable[[Monitor, pytest.MonkeyPatch], None]


def deferreds_fault(monitor: Monitor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitor.deferreds, "_new_site", boom)


def connections_fault(monitor: Monitor, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("add", "remove", "connect_failed", "accepted", "add_port"):
        monkeypatch.setattr(ConnectionRegistry, name, boom)


def pools_fault(monitor: Monitor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitor.pools, "_register", boom)
    monkeypatch.setattr(monitor.pools, "_watch_connection", boom)


def timeouts_fault(monitor: Monitor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitor.timeouts, "_record_event", boom)


def loop_fault(monitor: Monitor, monkeypatch: pytest.MonkeyPatch) -> None:
    # Bound into the poller-wait hook at install: set before start().
    monkeypatch.setattr(monitor.loop, "_end_block", boom)


def loop_watchdog_fault(monitor: Monitor, monkeypatch: pytest.MonkeyPatch) -> None:
    assert monitor.loop.watchdog is not None
    monkeypatch.setattr(monitor.loop.watchdog, "format_stack", boom)


def process_fault(monitor: Monitor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitor.process, "_rss_bytes", boom)
    monkeypatch.setattr(monitor.process, "_open_fds", boom)


#: (probe name, injected before start(), injected after start())
FAULTS: dict[str, tuple[str, Injector | None, Injector | None]] = {
    "deferreds": ("deferreds", None, deferreds_fault),
    "connections": ("connections", None, connections_fault),
    "pools": ("pools", None, pools_fault),
    "timeouts": ("timeouts", None, timeouts_fault),
    "loop": ("loop", loop_fault, loop_watchdog_fault),
    "process": ("process", None, process_fault),
}


@pytest.fixture(scope="module")
def bare_trace() -> list[str]:
    """The workload without any monitor: what the program sees on its own."""
    return []


@pytest_twisted.ensureDeferred
async def test_the_workload_is_deterministic_and_unmonitored_first(bare_trace: list[str]) -> None:
    first = await workload()
    second = await workload()
    assert first == second
    assert "connect timed out" in first and "idle timeout" in first and "blocked and back" in first
    bare_trace.extend(first)


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest_twisted.ensureDeferred
async def test_a_failing_probe_changes_nothing_for_the_program(
    fault: str, bare_trace: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if not bare_trace:  # run alone (-k): make the reference now
        bare_trace.extend(await workload())
    probe, before_start, after_start = FAULTS[fault]
    monitor = Monitor(global_reactor(), interval=0.1, block_threshold_ms=BLOCK_THRESHOLD_MS)
    if before_start is not None:
        before_start(monitor, monkeypatch)
    monitor.start()
    try:
        if after_start is not None:
            after_start(monitor, monkeypatch)
        traced = await workload()
        snapshot = monitor.snapshot()
    finally:
        monitor.stop()
        monkeypatch.undo()
    assert traced == bare_trace
    by_probe = snapshot["errors"]["by_probe"]
    assert by_probe.get(probe, 0) >= 1, snapshot["errors"]
    assert snapshot["errors"]["last"][probe] == "Boom: injected failure"
    # Only the broken probe failed.
    assert set(by_probe) == {probe}, snapshot["errors"]
    if fault == "process":
        assert snapshot["process"]["rss_bytes"] is None and snapshot["process"]["open_fds"] is None
        assert snapshot["process"]["pid"] > 0  # the other figures are still there


@pytest_twisted.ensureDeferred
async def test_a_section_that_fails_to_collect_is_null_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monitor = Monitor(global_reactor(), interval=0.1)
    monitor.start()
    try:
        monkeypatch.setattr(monitor.connections, "collect", boom)
        sample = monitor.sample()
    finally:
        monitor.stop()
    assert sample.data["connections"] is None
    assert sample.data["errors"]["by_probe"] == {"connections": 1}
    assert sample.data["deferreds"]["created_total"] >= 0  # the others are whole


# a Deferred subclass the monitor cannot hash --------------------------------------------


class EqDeferred(defer.Deferred[Any]):
    """A user's Deferred that defines ``__eq__`` (and so, in Python, no ``__hash__``)."""

    def __eq__(self, other: object) -> bool:
        return self is other


def test_an_unhashable_deferred_subclass_fires_normally(accelerate: bool) -> None:
    """The compiled nursery keys Deferreds by address: such a subclass is counted like any
    other. The pure-Python one is a dict: it cannot hold it, records why, and counts it
    neither created nor fired, so pending stays exact."""
    clock = task.Clock()
    errors = ProbeErrors()
    probe = DeferredsProbe(clock, errors, clock.seconds, accelerate=accelerate)
    probe.install()
    try:
        keep: defer.Deferred[None] = defer.Deferred()
        d = EqDeferred()
        seen: list[int] = []
        d.addCallback(seen.append)
        d.callback(7)
        keep.callback(None)
        section = probe.collect()
    finally:
        probe.uninstall()
    assert seen == [7]
    assert section["pending"] == 0
    if accelerate:
        assert errors.counts == {}
        assert section["fired_total"] == section["created_total"] == 2
    else:
        assert errors.counts["deferreds"] == 2  # at creation and at firing
        assert section["fired_total"] == section["created_total"] == 1


# the web side ---------------------------------------------------------------------------


@pytest.fixture
def clocked() -> Iterator[tuple[Monitor, MemoryReactorClock]]:
    clock = MemoryReactorClock()
    monitor = Monitor(clock, interval=1.0, history=10)
    monitor.start()
    try:
        yield monitor, clock
    finally:
        monitor.stop()


def test_a_failing_subscriber_is_counted_and_the_others_still_get_every_sample(
    clocked: tuple[Monitor, MemoryReactorClock],
) -> None:
    monitor, clock = clocked
    seen: list[int] = []
    monitor.subscribe(boom)
    monitor.subscribe(lambda sample: seen.append(sample.seq))
    for _ in range(3):
        clock.advance(1.0)
    assert len(seen) == 3 and seen == sorted(seen)
    assert monitor.errors.counts == {"subscribers": 3}


@pytest_twisted.async_yield_fixture
async def served() -> AsyncIterator[tuple[Monitor, Any, str]]:
    from dashboard.web.app import DashboardApp

    reactor = global_reactor()
    monitor = Monitor(reactor, interval=0.1, history=20)
    monitor.start()
    app = DashboardApp(monitor)
    resource: Any = app.app.resource()
    port: Any = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    try:
        yield monitor, app, f"http://127.0.0.1:{port.getHost().port}"
    finally:
        await port.stopListening()
        monitor.stop()


class StreamCounter(protocol.Protocol):
    def __init__(self) -> None:
        self.frames = 0
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.frames += data.count(b"event: snapshot\n")

    def connectionLost(self, reason: Any = None) -> None:
        if not self.lost.called:
            self.lost.callback(None)


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await sleep(0.02)


@pytest_twisted.ensureDeferred
async def test_a_failing_stream_is_dropped_alone_and_counted(
    served: tuple[Monitor, Any, str],
) -> None:
    monitor, app, base = served
    readers = []
    for _ in range(3):
        response = await treq.get(base + "/api/v1/events", unbuffered=True, persistent=False)
        reader = StreamCounter()
        response.deliverBody(reader)
        readers.append(reader)
    await wait_until(lambda: len(app.events.streams) == 3 and all(r.frames >= 1 for r in readers))
    broken = next(iter(app.events.streams))
    broken.offer = boom
    await wait_until(lambda: monitor.errors.counts.get("sse", 0) >= 1)
    await wait_until(lambda: len(app.events.streams) == 2)
    counts = [r.frames for r in readers]
    await wait_until(lambda: sum(r.frames > c for r, c in zip(readers, counts, strict=True)) >= 2)
    assert monitor.errors.counts == {"sse": 1}
    assert sum(1 for r in readers if r.lost.called) == 1  # only the broken one was dropped
    for stream in list(app.events.streams):
        stream.abort()


@pytest_twisted.ensureDeferred
async def test_a_failing_route_answers_500_json_and_is_counted(
    served: tuple[Monitor, Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monitor, _, base = served
    monkeypatch.setattr(Monitor, "latest", boom)  # slotted: patch the class
    response = await treq.get(base + "/api/v1/snapshot", persistent=False)
    assert response.code == 500
    assert await response.json() == {
        "error": "internal_error",
        "message": "the dashboard failed to answer",
        "status": 500,
    }
    assert monitor.errors.counts == {"web": 1}
    monkeypatch.undo()
    response = await treq.get(base + "/api/v1/snapshot", persistent=False)
    assert response.code == 200
    await treq.content(response)


# switched off ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_probe_failing_over_and_over_is_switched_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reactor = global_reactor()
    original_init = vars(defer.Deferred)["__init__"]
    monitor = Monitor(reactor, interval=60)
    monitor.errors.disable_after = 5
    monitor.start()
    try:
        assert vars(defer.Deferred)["__init__"] is not original_init
        monkeypatch.setattr(monitor.deferreds, "_new_site", boom)
        # Deferreds made at new sites: each one's bookkeeping fails.
        namespace: dict[str, Any] = {"defer": defer, "made": []}
        for n in range(5):
            exec(compile(f"made.append(defer.Deferred())  # {n}", f"<site {n}>", "exec"), namespace)
        assert monitor.errors.counts["deferreds"] == 5
        first = monitor.snapshot()
        # Off: the class is Twisted's own again, and nothing more is counted.
        assert vars(defer.Deferred)["__init__"] is original_init
        for n in range(5):
            exec(compile("made.append(defer.Deferred())", f"<more {n}>", "exec"), namespace)
        second = monitor.snapshot()
        monitor.stop()
        monitor.start()  # it stays off
        assert vars(defer.Deferred)["__init__"] is original_init
        third = monitor.snapshot()
    finally:
        monitor.stop()
    for snapshot in (first, second, third):
        assert snapshot["deferreds"] is None
        assert snapshot["errors"]["disabled"] == ["deferreds"]
        assert snapshot["errors"]["by_probe"] == {"deferreds": 5}
        assert snapshot["connections"] is not None and snapshot["loop"] is not None
    # The program's Deferreds still work.
    results: list[int] = []
    for d in namespace["made"]:
        d.addCallback(results.append)
        d.callback(1)
    assert results == [1] * 10


def test_a_probe_that_fails_only_now_and_then_stays_on(
    clocked: tuple[Monitor, MemoryReactorClock],
) -> None:
    monitor, clock = clocked
    monitor.errors.disable_after = 3
    monitor.errors.record("process", Boom("once"))
    monitor.errors.record("process", Boom("twice"))
    clock.advance(1.0)
    sample = monitor.latest()
    assert sample.data["process"] is not None and sample.data["errors"]["disabled"] == []
    monitor.errors.record("process", Boom("three times"))
    clock.advance(1.0)
    sample = monitor.latest()
    assert sample.data["process"] is None and sample.data["errors"]["disabled"] == ["process"]


def test_threads_are_not_left_behind_by_the_faulty_runs() -> None:
    # Every monitor above was stopped: no watchdog thread of ours remains.
    assert not [t for t in threading.enumerate() if t.name == "reactor-dashboard-watchdog"]
