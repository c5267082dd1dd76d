"""The whole monitor on the real reactor (default or asyncio): known numbers in, exact
deltas out, and a lifecycle that leaves nothing behind."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, error, protocol, task, tcp, threads
from twisted.protocols import policies

from dashboard.monitor import Monitor, MonitorAlreadyRunning
from dashboard.testing import global_reactor
from tests.loopback import full_listener


def next_line_site() -> str:
    """``"path.py:LINE in "``: the start of the site label of the caller's next line."""
    frame = sys._getframe(1)
    return f"{frame.f_code.co_filename}:{frame.f_lineno + 1} in "


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(global_reactor(), seconds, lambda: None)


@pytest_twisted.async_yield_fixture
async def monitor() -> AsyncIterator[Monitor]:
    m = Monitor(global_reactor(), interval=0.25, history=40)
    m.start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def blackhole() -> Iterator[tuple[str, int]]:
    """A loopback listener whose accept queue is full: connects to it hang until they time out."""
    with full_listener() as address:
        yield address


class IdleProtocol(protocol.Protocol, policies.TimeoutMixin):
    def connectionMade(self) -> None:
        self.setTimeout(0.1)  # type: ignore[no-untyped-call]

    def timeoutConnection(self) -> None:
        transport: Any = self.transport
        transport.loseConnection()


def blocking_callback() -> None:
    time.sleep(0.2)


@pytest_twisted.ensureDeferred
async def test_known_numbers_change_the_snapshot_by_exactly_that(
    monitor: Monitor, blackhole: tuple[str, int]
) -> None:
    reactor = global_reactor()
    await sleep(0.05)
    before = monitor.snapshot()

    # N pending Deferreds at one site.
    n = 25
    leak_site = next_line_site()
    pending = [defer.Deferred[None]() for _ in range(n)]

    # M connections (each a server and a client end).
    m = 4
    factory = protocol.Factory.forProtocol(protocol.Protocol)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    creator = protocol.ClientCreator(reactor, protocol.Protocol)
    clients = [await creator.connectTCP("127.0.0.1", port.getHost().port) for _ in range(m)]

    # K busy pool workers.
    k = 3
    release = threading.Event()
    busy = [threads.deferToThread(release.wait, 10) for _ in range(k)]

    # T delayed calls.
    t = 6

    def marker() -> None:
        pass

    calls = [reactor.callLater(600, marker) for _ in range(t)]
    await sleep(0.3)
    during = monitor.snapshot()

    d_before, d_during = before["deferreds"], during["deferreds"]
    site = [row for row in d_during["sites"] if row["site"].startswith(leak_site)]
    assert len(site) == 1, [row["site"] for row in d_during["sites"]]
    assert site[0]["pending"] == n
    assert site[0]["created_total"] == n
    assert site[0]["oldest_age_s"] >= 0.2

    c_before, c_during = before["connections"], during["connections"]
    assert c_during["by_kind"]["tcp_server"] - c_before["by_kind"]["tcp_server"] == m
    assert c_during["by_kind"]["tcp_client"] - c_before["by_kind"]["tcp_client"] == m
    assert c_during["open"] - c_before["open"] == 2 * m
    listening = [
        p for p in c_during["listening"] if p["address"].endswith(f":{port.getHost().port}")
    ]
    assert [p["accepted_total"] for p in listening] == [m]

    pools = {p["name"]: p for p in during["pools"]}
    before_pools = {p["name"]: p for p in before["pools"]}
    reactor_pool = "twisted.internet.reactor"
    before_busy = before_pools[reactor_pool]["in_use"] if reactor_pool in before_pools else 0
    assert pools[reactor_pool]["kind"] == "threadpool"
    assert pools[reactor_pool]["reactor"] is True
    assert pools[reactor_pool]["in_use"] - before_busy == k

    timeouts = during["timeouts"]
    assert timeouts["delayed_calls"] - before["timeouts"]["delayed_calls"] == t
    by_function = {row["function"]: row["count"] for row in timeouts["by_function"]}
    assert by_function[f"{__name__}.{marker.__qualname__}"] == t

    # One timeout of each kind.
    timing_out = defer.Deferred[None]()
    timing_out.addTimeout(0.05, reactor)
    with pytest.raises(defer.TimeoutError):
        await timing_out
    with pytest.raises(error.TimeoutError):
        await creator.connectTCP(*blackhole, timeout=0.2)
    idle = await protocol.ClientCreator(reactor, IdleProtocol).connectTCP(
        "127.0.0.1", port.getHost().port
    )
    await sleep(0.3)
    assert idle.transport is None or not idle.transport.connected

    # A 200 ms block.
    reactor.callLater(0, blocking_callback)
    await sleep(0.4)
    after = monitor.snapshot()
    fired_before, fired_after = before["timeouts"]["fired_total"], after["timeouts"]["fired_total"]
    assert {kind: fired_after[kind] - fired_before[kind] for kind in fired_before} == {
        "deferred": 1,
        "connect": 1,
        "protocol": 1,
    }
    loop = after["loop"]
    assert loop["blocks_total"] - before["loop"]["blocks_total"] == 1
    block = loop["blocks"][-1]
    assert 180 <= block["duration_ms"] <= 500
    assert any(f"in {blocking_callback.__qualname__}" in frame for frame in block["stack"])
    assert loop["lag_ms"]["max"] >= 150
    assert after["errors"]["total"] == 0

    # Undo everything: back to the baseline.
    for d in pending:
        d.callback(None)
    release.set()
    await defer.gatherResults(busy)
    for c in calls:
        c.cancel()
    for client in clients:
        client.transport.loseConnection()
    await port.stopListening()
    await sleep(0.2)
    final = monitor.snapshot()
    assert final["deferreds"]["pending"] - d_before["pending"] <= 0
    assert final["connections"]["open"] == c_before["open"]
    assert final["timeouts"]["delayed_calls"] == before["timeouts"]["delayed_calls"]


def patched_attributes() -> dict[tuple[str, str], object]:
    from twisted.enterprise import adbapi
    from twisted.internet import base
    from twisted.web import client, http

    owners = {
        "Deferred": defer.Deferred,
        "defer": defer,
        "Connection": tcp.Connection,
        "BaseClient": tcp.BaseClient,
        "Server": tcp.Server,
        "Port": tcp.Port,
        "BaseConnector": base.BaseConnector,
        "TimeoutMixin": policies.TimeoutMixin,
        "HTTPConnectionPool": client.HTTPConnectionPool,
        "ConnectionPool": adbapi.ConnectionPool,
        "Request": http.Request,
    }
    reactor = global_reactor()
    found: dict[tuple[str, str], object] = {}
    for label, owner in owners.items():
        for name, value in vars(owner).items():
            found[(label, name)] = value
    for name, value in vars(reactor).items():
        if callable(value):  # the reactor's own data (timer lists, counters) changes as it runs
            found[("reactor", name)] = value
    return found


@pytest_twisted.ensureDeferred
async def test_stop_restores_every_attribute_and_thread() -> None:
    reactor = global_reactor()
    before_attrs = patched_attributes()
    before_threads = set(threading.enumerate())
    before_calls = set(reactor.getDelayedCalls())
    m = Monitor(reactor, interval=0.05)
    for _ in range(20):
        m.start()
        m.start()  # twice is harmless
        await sleep(0.06)
        m.stop()
        m.stop()
    await sleep(0.05)
    after_attrs = patched_attributes()
    keys = before_attrs.keys() | after_attrs.keys()
    changed = {k for k in keys if before_attrs.get(k) is not after_attrs.get(k)}
    assert changed == set()
    assert set(threading.enumerate()) == before_threads
    assert set(reactor.getDelayedCalls()) == before_calls


def test_only_one_monitor_at_a_time() -> None:
    reactor = global_reactor()
    first = Monitor(reactor)
    second = Monitor(reactor)
    first.start()
    try:
        with pytest.raises(MonitorAlreadyRunning):
            second.start()
    finally:
        first.stop()
    second.start()
    second.stop()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"interval": 0}, "interval"),
        ({"history": 0}, "history"),
        ({"block_threshold_ms": -1}, "block_threshold_ms"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Monitor(global_reactor(), **options)


@pytest_twisted.ensureDeferred
async def test_samples_arrive_every_interval_with_growing_seq(monitor: Monitor) -> None:
    seen: list[int] = []
    unsubscribe = monitor.subscribe(lambda sample: seen.append(sample.seq))
    await sleep(1.1)
    unsubscribe()
    assert len(seen) >= 3
    assert seen == list(range(seen[0], seen[0] + len(seen)))
    assert [s.seq for s in monitor.samples()][-len(seen) :] == seen
