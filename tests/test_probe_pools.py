"""PoolsProbe: unit tests on a Clock / MemoryReactorClock with real pools, then the real
reactor on loopback creating known numbers of busy workers and connections."""

from __future__ import annotations

import gc
import json
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import pytest_twisted
import treq
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web._newclient import HTTP11ClientProtocol, Request
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.server import Request as ServerRequest

from dashboard.probes import pools as pools_module
from dashboard.probes.base import JSONDict, ProbeErrors
from dashboard.probes.pools import PoolsProbe, TrackablePool

F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, None]])

# Much of Twisted's web client, adbapi and testing helpers is untyped: call them through Any.
HttpPool: Any = HTTPConnectionPool
DbPool: Any = adbapi.ConnectionPool
AnyAgent: Any = Agent
AnySite: Any = Site
AnyRequest: Any = Request
AnyFailure: Any = Failure
AnyTransport: Any = StringTransport
AnyMemoryReactorClock: Any = MemoryReactorClock
KEY = (b"http", b"example.test", 80)


def async_test(function: F) -> F:
    """pytest-twisted's ``ensureDeferred``, typed."""
    return cast(F, pytest_twisted.ensureDeferred(function))


def by_name(pools: list[JSONDict], name: str) -> JSONDict:
    matches = [p for p in pools if p["name"] == name]
    assert len(matches) == 1, (name, [p["name"] for p in pools])
    return matches[0]


def real_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    """Let the real reactor run until ``condition()`` holds (bounded)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(real_reactor(), 0.01, lambda: None)


@pytest.fixture
def clock() -> MemoryReactorClock:
    return cast(MemoryReactorClock, AnyMemoryReactorClock())


@pytest.fixture
def probe(errors: ProbeErrors, clock: MemoryReactorClock) -> Iterator[PoolsProbe]:
    probe = PoolsProbe(clock, errors, clock.seconds)
    probe.install()
    yield probe
    probe.uninstall()


@pytest.fixture
def real_probe(errors: ProbeErrors) -> Iterator[PoolsProbe]:
    reactor = real_reactor()
    probe = PoolsProbe(reactor, errors, reactor.seconds)
    probe.install()
    yield probe
    probe.uninstall()


# thread pools ------------------------------------------------------------------------------


class ThreadsReactor:
    """Just enough of a reactor with threads: ``threadpool`` and ``getThreadPool``."""

    def __init__(self, threadpool: ThreadPool | None) -> None:
        self.threadpool = threadpool
        self.created = 0

    def getThreadPool(self) -> ThreadPool:
        self.created += 1
        raise AssertionError("the probe must never create the reactor's thread pool")


def test_threadpool_busy_idle_and_backlog_exact(errors: ProbeErrors) -> None:
    pool = ThreadPool(0, 2, "test")
    pool.start()
    release = threading.Event()
    probe = PoolsProbe(ThreadsReactor(pool), errors, Clock().seconds)
    try:
        assert probe.collect() == [
            {
                "name": "reactor",
                "kind": "threadpool",
                "max": 2,
                "min": 0,
                "in_use": 0,
                "idle": 0,
                "waiting": 0,
                "started": True,
                "created": True,
            }
        ]
        for _ in range(3):
            pool.callInThread(release.wait, 10)
        entry = probe.collect()[0]
        assert (entry["in_use"], entry["idle"], entry["waiting"]) == (2, 0, 1)
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while probe.collect()[0]["in_use"] and time.monotonic() < deadline:
        time.sleep(0.01)
    entry = probe.collect()[0]
    pool.stop()
    assert (entry["in_use"], entry["idle"], entry["waiting"]) == (0, 2, 0)
    assert errors.counts == {}


def test_reactor_without_threadpool_is_shown_not_created(errors: ProbeErrors) -> None:
    reactor = ThreadsReactor(None)
    probe = PoolsProbe(reactor, errors, Clock().seconds)
    probe.install()
    try:
        entry = probe.collect()[0]
    finally:
        probe.uninstall()
    assert entry["name"] == "reactor"
    assert entry["created"] is False
    assert (entry["max"], entry["in_use"], entry["idle"], entry["waiting"]) == (None, 0, 0, 0)
    assert reactor.created == 0


def test_reactor_without_threads_has_no_threadpool_entry(probe: PoolsProbe) -> None:
    assert probe.collect() == []  # MemoryReactorClock has no getThreadPool


# HTTP pools (unit) -------------------------------------------------------------------------


class ManualEndpoint:
    """An IStreamClientEndpoint whose connects complete when the test says so."""

    def __init__(self) -> None:
        self.pending: list[tuple[Deferred[Any], Any]] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((d, factory))
        return d

    def complete(self) -> Any:
        """Connect the oldest pending connect; returns its HTTP11ClientProtocol."""
        d, factory = self.pending.pop(0)
        proto = factory.buildProtocol(None)
        proto.makeConnection(AnyTransport())
        d.callback(proto)
        assert isinstance(proto, HTTP11ClientProtocol)
        return proto


def send_request(proto: Any) -> Deferred[Any]:
    request = AnyRequest(b"GET", b"/", Headers({b"host": [b"example.test"]}), None, persistent=True)
    result: Deferred[Any] = proto.request(request)
    return result


def test_http_pool_counts_connecting_in_use_and_idle_per_key(
    probe: PoolsProbe, clock: MemoryReactorClock
) -> None:
    pool = HttpPool(clock)
    endpoint = ManualEndpoint()
    got: list[Any] = []
    pool.getConnection(KEY, endpoint).addCallback(got.append)
    entry = by_name(probe.collect(), "http#1")
    assert (entry["connecting"], entry["in_use"], entry["idle"]) == (1, 0, 0)

    proto = endpoint.complete()
    assert got == [proto]  # the user's Deferred fires with the very protocol, untouched
    responses: list[Any] = []
    send_request(proto).addCallback(responses.append)
    entry = by_name(probe.collect(), "http#1")
    assert (entry["connecting"], entry["in_use"], entry["idle"], entry["waiting"]) == (0, 1, 0, 0)
    assert entry["keys"] == [{"key": "http://example.test:80", "in_use": 1, "idle": 0}]

    proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert len(responses) == 1 and responses[0].code == 200
    entry = by_name(probe.collect(), "http#1")
    assert (entry["in_use"], entry["idle"]) == (0, 1)
    assert entry["keys"] == [{"key": "http://example.test:80", "in_use": 0, "idle": 1}]
    assert entry["max"] == 2 and entry["max_scope"] == "per_key"
    json.dumps(probe.collect(), allow_nan=False)

    # The server hangs up on the cached connection: Twisted keeps it in _connections until
    # reused or timed out, but it is no longer an idle connection.
    proto.connectionLost(AnyFailure(ConnectionDone()))
    assert len(pool._connections[KEY]) == 1
    entry = by_name(probe.collect(), "http#1")
    assert (entry["in_use"], entry["idle"], entry["keys_total"]) == (0, 0, 0)


def test_failed_connect_passes_the_same_failure_and_stops_connecting(
    probe: PoolsProbe, clock: MemoryReactorClock
) -> None:
    pool = HttpPool(clock)
    endpoint = ManualEndpoint()
    failures: list[Failure] = []
    pool.getConnection(KEY, endpoint).addErrback(failures.append)
    assert by_name(probe.collect(), "http#1")["connecting"] == 1
    sent = AnyFailure(ConnectionRefusedError("refused"))
    endpoint.pending.pop(0)[0].errback(sent)
    assert failures == [sent]
    entry = by_name(probe.collect(), "http#1")
    assert (entry["connecting"], entry["in_use"], entry["idle"]) == (0, 0, 0)


def test_http_pool_age_follows_the_clock(probe: PoolsProbe, clock: MemoryReactorClock) -> None:
    HttpPool(clock)  # dropped at once: must not be listed
    pool = HttpPool(clock)
    clock.advance(7.5)
    entry = by_name(probe.collect(), "http#2")
    assert entry["age_s"] == 7.5
    assert [p["name"] for p in probe.collect()] == ["http#2"]
    del pool


def test_dropped_pools_disappear(probe: PoolsProbe, clock: MemoryReactorClock) -> None:
    pool = HttpPool(clock)
    dead = weakref.ref(pool)
    assert [p["name"] for p in probe.collect()] == ["http#1"]
    del pool
    gc.collect()
    assert dead() is None
    assert probe.collect() == []
    assert probe._http == {}


def test_pools_past_the_shown_limit_are_summed(
    probe: PoolsProbe, clock: MemoryReactorClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pools_module, "MAX_POOLS_SHOWN", 2)
    pools = [HttpPool(clock) for _ in range(5)]
    endpoint = ManualEndpoint()
    pools[4].getConnection(KEY, endpoint)
    proto = endpoint.complete()
    send_request(proto)
    listed = probe.collect()
    assert [p["name"] for p in listed] == ["http#1", "http#2", "http (+3 more)"]
    assert listed[2]["pools"] == 3 and listed[2]["in_use"] == 1 and listed[2]["idle"] == 0


def test_keys_are_bounded_busiest_first(
    probe: PoolsProbe, clock: MemoryReactorClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pools_module, "MAX_KEYS_SHOWN", 2)
    pool = HttpPool(clock)
    endpoint = ManualEndpoint()
    alive = []  # a real transport (and so the reactor) holds its protocol; here we do
    for port, busy in ((1, 1), (2, 3), (3, 2)):
        for _ in range(busy):
            pool.getConnection((b"http", b"h", port), endpoint)
            alive.append(endpoint.complete())
            send_request(alive[-1])
    entry = by_name(probe.collect(), "http#1")
    assert entry["in_use"] == 6 and entry["keys_total"] == 3
    assert [(k["key"], k["in_use"]) for k in entry["keys"]] == [
        ("http://h:2", 3),
        ("http://h:3", 2),
    ]


def test_pool_created_before_install_is_not_listed(
    errors: ProbeErrors, clock: MemoryReactorClock
) -> None:
    before = HttpPool(clock)
    probe = PoolsProbe(clock, errors, clock.seconds)
    probe.install()
    try:
        endpoint = ManualEndpoint()
        before.getConnection(KEY, endpoint)
        send_request(endpoint.complete())
        assert probe.collect() == []
    finally:
        probe.uninstall()
    assert errors.counts == {}


# adbapi (unit) -----------------------------------------------------------------------------


def test_adbapi_pool_not_started_queues_work(
    probe: PoolsProbe, clock: MemoryReactorClock, tmp_path: Path
) -> None:
    db = DbPool(
        "sqlite3",
        str(tmp_path / "a.db"),
        check_same_thread=False,
        cp_min=1,
        cp_max=2,
        cp_reactor=clock,
    )
    db.runQuery("select 1")  # reactor not running: the pool's threads never started
    try:
        entry = by_name(probe.collect(), "sqlite3#1")
        assert entry["kind"] == "adbapi"
        assert (entry["min"], entry["max"], entry["running"]) == (1, 2, False)
        assert (entry["in_use"], entry["idle"], entry["waiting"], entry["connections"]) == (
            0,
            0,
            1,
            0,
        )
        assert entry["dbapi"] == "sqlite3"
    finally:
        db.close()


# users' pools ------------------------------------------------------------------------------


class Slots:
    def __init__(self, max: int | None, in_use: int, idle: int, waiting: int) -> None:
        self.max, self.in_use, self.idle, self.waiting = max, in_use, idle, waiting


class BrokenPool:
    max = 4
    idle = 0
    waiting = 0

    @property
    def in_use(self) -> int:
        raise RuntimeError("user bug")


def test_track_untrack_and_duplicates(probe: PoolsProbe, errors: ProbeErrors) -> None:
    mine = Slots(8, 3, 5, 1)
    probe.track(mine, "workers")
    assert probe.collect() == [
        {"name": "workers", "kind": "user", "max": 8, "in_use": 3, "idle": 5, "waiting": 1}
    ]
    mine.in_use = 4
    assert probe.collect()[0]["in_use"] == 4
    with pytest.raises(ValueError, match="'workers' is already tracked"):
        probe.track(Slots(None, 0, 0, 0), "workers")
    with pytest.raises(TypeError, match="missing in_use, waiting"):
        probe.track(cast(TrackablePool, type("Half", (), {"max": 1, "idle": 0})()), "half")
    probe.track(Slots(None, 0, 0, 0), "unbounded")
    assert probe.collect()[1]["max"] is None
    probe.untrack("workers")
    assert [p["name"] for p in probe.collect()] == ["unbounded"]
    with pytest.raises(KeyError, match="workers"):
        probe.untrack("workers")
    probe.uninstall()  # registrations are the user's, they survive uninstall
    assert [p["name"] for p in probe.collect()] == ["unbounded"]
    assert errors.counts == {}


def test_a_failing_user_pool_is_shown_and_counted_once(
    probe: PoolsProbe, errors: ProbeErrors
) -> None:
    probe.track(BrokenPool(), "broken")
    probe.track(Slots(1, 1, 0, 0), "fine")
    for _ in range(3):
        broken, fine = probe.collect()
        assert broken["in_use"] is None and broken["error"] == "RuntimeError: user bug"
        assert fine["in_use"] == 1
    assert errors.counts == {"pools": 1}
    probe.track(Slots(float("nan"), 0, 0, 0), "nan")  # type: ignore[arg-type]
    json.dumps(probe.collect(), allow_nan=False)


# lifecycle and faults ----------------------------------------------------------------------


def patched_attributes() -> list[Any]:
    return [
        vars(HTTPConnectionPool)["__init__"],
        vars(HTTPConnectionPool)["_newConnection"],
        vars(adbapi.ConnectionPool)["__init__"],
    ]


def test_uninstall_restores_identity_and_100_cycles_leave_nothing(
    errors: ProbeErrors, clock: MemoryReactorClock
) -> None:
    originals = patched_attributes()
    probe = PoolsProbe(clock, errors, clock.seconds)
    refs = []
    for _ in range(100):
        probe.install()
        assert patched_attributes()[0] is not originals[0]
        pool = HttpPool(clock)
        refs.append(weakref.ref(pool))
        assert [p["name"] for p in probe.collect()] == ["http#1"]  # numbering restarts
        probe.uninstall()
        assert patched_attributes() == originals
        assert all(a is b for a, b in zip(patched_attributes(), originals, strict=True))
    del pool
    gc.collect()
    assert all(ref() is None for ref in refs)  # nothing of ours kept a pool alive
    assert probe._http == {} and probe._adbapi == {}
    after = HttpPool(clock)
    assert sorted(vars(after)) == ["_connections", "_reactor", "_timeouts", "persistent"]
    assert probe.collect() == []
    assert errors.counts == {}


def test_hook_failures_never_reach_user_code(
    probe: PoolsProbe,
    errors: ProbeErrors,
    clock: MemoryReactorClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = HttpPool(clock)
    ref = probe._http[id(pool)]

    class Exploding(dict[Any, Any]):
        def __setitem__(self, key: Any, value: Any) -> None:
            raise RuntimeError("bookkeeping failed")

    ref.protocols = Exploding()  # type: ignore[assignment]
    endpoint = ManualEndpoint()
    got: list[Any] = []
    pool.getConnection(KEY, endpoint).addCallback(got.append)
    proto = endpoint.complete()
    assert got == [proto]
    assert errors.counts == {"pools": 1}

    def explode(*args: Any) -> None:
        raise RuntimeError("hook failed")

    monkeypatch.setattr(probe, "_register", explode)
    monkeypatch.setattr(probe, "_watch_connection", explode)
    other = HttpPool(clock, persistent=False)
    assert other.persistent is False and other._connections == {}
    got.clear()
    other.getConnection(KEY, endpoint).addCallback(got.append)
    proto = endpoint.complete()
    assert got == [proto]
    assert errors.counts == {"pools": 3}

    # The original's own exceptions still come through, unchanged.
    with pytest.raises(TypeError) as with_probe:
        HttpPool()
    probe.uninstall()
    with pytest.raises(TypeError) as without_probe:
        HttpPool()
    assert str(with_probe.value) == str(without_probe.value)


def test_a_broken_pool_is_skipped_and_counted(
    probe: PoolsProbe, errors: ProbeErrors, clock: MemoryReactorClock
) -> None:
    broken = HttpPool(clock)
    fine = HttpPool(clock)
    broken._connections = None
    assert [p["name"] for p in probe.collect()] == ["http#2"]
    assert errors.counts == {"pools": 1}
    del fine


# real reactor ------------------------------------------------------------------------------


@async_test
async def test_reactor_threadpool_busy_workers_and_backlog(real_probe: PoolsProbe) -> None:
    reactor = real_reactor()
    threadpool = reactor.getThreadPool()
    original_max = threadpool.max
    release = threading.Event()
    base = by_name(real_probe.collect(), "reactor")
    work = [deferToThread(release.wait, 10) for _ in range(3)]
    try:
        during = by_name(real_probe.collect(), "reactor")
        assert during["in_use"] == base["in_use"] + 3
        # Cap the pool at what is busy now: two more calls must wait.
        reactor.suggestThreadPoolSize(during["in_use"])
        work += [deferToThread(release.wait, 10) for _ in range(2)]
        capped = by_name(real_probe.collect(), "reactor")
        assert capped["in_use"] == during["in_use"]
        assert capped["waiting"] == base["waiting"] + 2
        assert capped["idle"] == 0 and capped["max"] == during["in_use"]
    finally:
        release.set()
        threadpool.adjustPoolsize(maxthreads=original_max)
    assert await gatherResults(work) == [True] * 5
    await until(
        lambda: by_name(real_probe.collect(), "reactor")["in_use"] == base["in_use"],
        "workers to go idle",
    )
    assert by_name(real_probe.collect(), "reactor")["waiting"] == base["waiting"]


class HoldRequests(Resource):
    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)
        self.held: list[Any] = []

    def render_GET(self, request: ServerRequest) -> Any:
        self.held.append(request)
        return NOT_DONE_YET


@async_test
async def test_http_pool_in_use_then_idle_on_loopback(
    real_probe: PoolsProbe, errors: ProbeErrors
) -> None:
    reactor = real_reactor()
    resource = HoldRequests()
    port = reactor.listenTCP(0, AnySite(resource), interface="127.0.0.1")
    pool = HttpPool(reactor, persistent=True)
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/".encode()
        agent = AnyAgent(reactor, pool=pool)
        responses = [agent.request(b"GET", url) for _ in range(2)]
        await until(lambda: len(resource.held) == 2, "two requests at the server")
        entry = by_name(real_probe.collect(), "http#1")
        key = f"http://127.0.0.1:{port.getHost().port}"
        assert (entry["in_use"], entry["idle"], entry["connecting"]) == (2, 0, 0)
        assert entry["keys"] == [{"key": key, "in_use": 2, "idle": 0}]

        for request in resource.held:
            request.write(b"ok")
            request.finish()
        bodies = [await treq.content(await response) for response in responses]
        assert bodies == [b"ok", b"ok"]
        entry = by_name(real_probe.collect(), "http#1")
        assert (entry["in_use"], entry["idle"]) == (0, 2)
        assert entry["keys"] == [{"key": key, "in_use": 0, "idle": 2}]
    finally:
        await pool.closeCachedConnections()
        await port.stopListening()
    assert by_name(real_probe.collect(), "http#1")["idle"] == 0
    assert errors.counts == {}


@async_test
async def test_adbapi_pool_busy_connection_and_backlog(
    real_probe: PoolsProbe, tmp_path: Path, errors: ProbeErrors
) -> None:
    db = DbPool(
        "sqlite3",
        str(tmp_path / "b.db"),
        check_same_thread=False,
        cp_min=1,
        cp_max=2,
        cp_reactor=real_reactor(),
    )
    release = threading.Event()

    def blocked(cursor: Any) -> Any:
        release.wait(10)
        cursor.execute("select 41 + 1")
        return cursor.fetchall()

    try:
        first = db.runInteraction(blocked)
        entry = by_name(real_probe.collect(), "sqlite3#1")
        assert (entry["in_use"], entry["waiting"], entry["running"]) == (1, 0, True)
        more = [db.runInteraction(blocked) for _ in range(2)]
        entry = by_name(real_probe.collect(), "sqlite3#1")
        assert (entry["in_use"], entry["idle"], entry["waiting"], entry["max"]) == (2, 0, 1, 2)
        release.set()
        assert await gatherResults([first, *more]) == [[(42,)]] * 3
        await until(
            lambda: by_name(real_probe.collect(), "sqlite3#1")["in_use"] == 0, "idle connections"
        )
        entry = by_name(real_probe.collect(), "sqlite3#1")
        assert (entry["idle"], entry["waiting"], entry["connections"]) == (2, 0, 2)
    finally:
        release.set()
        db.close()
    entry = by_name(real_probe.collect(), "sqlite3#1")
    assert (entry["running"], entry["connections"]) == (False, 0)
    assert errors.counts == {}


@async_test
async def test_user_pool_on_the_real_reactor(real_probe: PoolsProbe) -> None:
    mine = Slots(4, 0, 4, 0)
    real_probe.track(mine, "mine")
    mine.in_use, mine.idle = 1, 3
    await deferLater(real_reactor(), 0, lambda: None)
    entry = by_name(real_probe.collect(), "mine")
    assert (entry["kind"], entry["in_use"], entry["idle"]) == ("user", 1, 3)
    real_probe.untrack("mine")
