"""PoolsProbe: unit tests on a Clock / MemoryReactorClock with real pools, then the real
reactor on loopback creating known numbers of busy workers and connections.

The probe registers every pool alive in the process at install (a gc scan), so tests look
up the pools they made by name and never assume theirs are the only ones."""

from __future__ import annotations

import gc
import json
import sys
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

from dashboard.probes import pool_registry
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
REACTOR_POOL = "twisted.internet.reactor"


def async_test(function: F) -> F:
    """pytest-twisted's ``ensureDeferred``, typed."""
    return cast(F, pytest_twisted.ensureDeferred(function))


def by_name(pools: list[JSONDict], name: str) -> JSONDict:
    matches = [p for p in pools if p["name"] == name]
    assert len(matches) == 1, (name, [p["name"] for p in pools])
    return matches[0]


def here(name: str, line: int) -> str:
    """The site label of ``name`` at ``line`` of this file."""
    return f"{__file__}:{line} in {name}"


def made_here(pools: list[JSONDict], kind: str = "http") -> list[JSONDict]:
    """The pools of ``kind`` made by this file's code."""
    return [p for p in pools if p["kind"] == kind and str(p.get("site")).startswith(__file__)]


def make_http_pool(reactor: Any) -> tuple[Any, int]:
    """An HTTPConnectionPool made here, and the line that made it."""
    return HttpPool(reactor), sys._getframe().f_lineno


MAKER = "make_http_pool"


def user_pools(probe: PoolsProbe) -> list[JSONDict]:
    """The users' pools the probe lists (the process's other pools left out)."""
    return [p for p in probe.collect() if p["kind"] == "user"]


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
    gc.collect()  # install() adopts live pools: none of an earlier test's, kept by a cycle
    probe = PoolsProbe(clock, errors, clock.seconds)
    probe.install()
    yield probe
    probe.uninstall()


@pytest.fixture
def real_probe(errors: ProbeErrors) -> Iterator[PoolsProbe]:
    gc.collect()  # install() adopts live pools: none of an earlier test's, kept by a cycle
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
        assert probe.collect()[0] == {
            "name": "test",
            "kind": "threadpool",
            "reactor": True,
            "max": 2,
            "min": 0,
            "in_use": 0,
            "idle": 0,
            "waiting": 0,
            "started": True,
            "created": True,
            "site": None,  # not installed: the probe did not see it made
        }
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
    assert entry["name"] == REACTOR_POOL and entry["reactor"] is True
    assert entry["created"] is False
    assert (entry["max"], entry["in_use"], entry["idle"], entry["waiting"]) == (None, 0, 0, 0)
    assert reactor.created == 0


def test_reactor_without_threads_has_no_reactor_threadpool(probe: PoolsProbe) -> None:
    # MemoryReactorClock has no getThreadPool: no entry claims to be the reactor's.
    assert [p for p in probe.collect() if p.get("reactor")] == []


def test_every_thread_pool_by_name_made_before_and_after_install(
    errors: ProbeErrors, clock: MemoryReactorClock
) -> None:
    before = ThreadPool(0, 3, "resolver")
    probe = PoolsProbe(clock, errors, clock.seconds)
    probe.install()
    try:
        after, line = ThreadPool(1, 2, "media"), sys._getframe().f_lineno
        unnamed, unnamed_line = ThreadPool(0, 1), sys._getframe().f_lineno
        pools = probe.collect()
        resolver = by_name(pools, "resolver")
        assert resolver["kind"] == "threadpool" and resolver["reactor"] is False
        assert (resolver["max"], resolver["min"], resolver["started"]) == (3, 0, False)
        assert resolver["site"] is None  # made before install: found by the scan
        media = by_name(pools, "media")
        assert (media["max"], media["min"], media["site"]) == (
            2,
            1,
            here("test_every_thread_pool_by_name_made_before_and_after_install", line),
        )
        site = here("test_every_thread_pool_by_name_made_before_and_after_install", unnamed_line)
        assert by_name(pools, f"unnamed thread pool at {site}")["max"] == 1
        # Work queued on a pool not started waits; a started pool runs it.
        before.callInThread(lambda: None)
        assert by_name(probe.collect(), "resolver")["waiting"] == 1
        # A stopped pool runs no more work: it is no longer listed.
        after.start()
        after.stop()
        assert "media" not in [p["name"] for p in probe.collect()]
        # A pool the program drops is gone too.
        del unnamed
        gc.collect()
        assert not [p for p in probe.collect() if p["name"].startswith("unnamed thread pool at")]
        assert errors.counts == {}
    finally:
        probe.uninstall()
        before.stop()


class Untouchable:
    """An object in gc that any attribute read (``__class__`` included) would upset, as a
    lazy proxy or a C extension's object may."""

    touched = 0

    def __getattribute__(self, name: str) -> Any:
        type(self).touched += 1
        raise RuntimeError(f"read {name}")


def test_the_install_scan_reads_no_attribute_of_any_object(
    errors: ProbeErrors, clock: MemoryReactorClock
) -> None:
    hostile = Untouchable()
    probe = PoolsProbe(clock, errors, clock.seconds)
    probe.install()
    try:
        assert probe.scan_ms > 0
        assert Untouchable.touched == 0
        assert errors.counts == {}
    finally:
        probe.uninstall()
    del hostile


class ProgramsPool(HTTPConnectionPool):
    """A program's own subclass of Twisted's HTTP pool."""


class ProgramsThreadPool(ThreadPool):
    """And a subclass of a subclass of ThreadPool."""


class DeeperThreadPool(ProgramsThreadPool):
    pass


def test_the_install_scan_finds_subclass_instances_made_before(
    errors: ProbeErrors, clock: MemoryReactorClock
) -> None:
    http = cast(Any, ProgramsPool)(clock)
    threads = DeeperThreadPool(0, 3, "deeper")
    probe = PoolsProbe(clock, errors, clock.seconds)
    probe.install()
    try:
        assert probe._http[id(http)].label.startswith(pools_module.BEFORE_START)
        assert by_name(probe.collect(), "deeper")["max"] == 3
        assert probe._registry.referrers >= 2
    finally:
        probe.uninstall()
    del http, threads
    gc.collect()  # a ThreadPool is a reference cycle


def test_thread_pools_of_one_name_are_numbered(probe: PoolsProbe) -> None:
    first, second = ThreadPool(0, 1, "twin"), ThreadPool(0, 4, "twin")
    pools = probe.collect()
    assert (by_name(pools, "twin")["max"], by_name(pools, "twin #2")["max"]) == (1, 4)
    del first, second
    gc.collect()  # a ThreadPool is a reference cycle


class OldStyleThreadPool(ThreadPool):
    """A thread pool as older Twisted made them: lists and a queue, no ``_team``."""

    working: Any = (None,)
    waiters: Any = (None, None)

    class q:  # ThreadPool's own attribute name
        @staticmethod
        def qsize() -> int:
            return 3


def test_thread_pool_without_team_read_from_its_public_figures(probe: PoolsProbe) -> None:
    pool = OldStyleThreadPool(0, 4, "old-style")
    del pool._team
    entry = by_name(probe.collect(), "old-style")
    assert (entry["max"], entry["in_use"], entry["idle"], entry["waiting"]) == (4, 1, 2, 3)
    del pool
    gc.collect()


def test_registries_are_bounded(
    probe: PoolsProbe, clock: MemoryReactorClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_registry, "MAX_POOLS_TRACKED", len(probe._http) + 2)
    kept = [HttpPool(clock) for _ in range(5)]
    assert len(made_here(probe.collect())) == 2
    summary = by_name(probe.collect(), "http (+0 more)")
    assert summary["not_tracked"] == 3
    del kept


def test_a_stopped_thread_pool_unlisted_when_full_gives_its_number_back(
    probe: PoolsProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    def make(name: str) -> ThreadPool:
        return ThreadPool(0, 1, name)

    stopped = make("stopped")
    monkeypatch.setattr(pool_registry, "MAX_POOLS_TRACKED", len(probe._threads))
    stopped.stop()  # joined: runs no more work
    fresh = make("fresh")
    assert id(stopped) not in probe._threads
    ref = probe._threads[id(fresh)]
    assert (ref.number, ref.label) == (1, ref.base)  # not #2: the stopped one's is free
    assert by_name(probe.collect(), "fresh")["site"] == ref.site
    del stopped, fresh, ref
    gc.collect()  # a ThreadPool is a reference cycle


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


def test_http_pool_is_named_by_the_line_that_made_it(
    probe: PoolsProbe, clock: MemoryReactorClock
) -> None:
    pool, line = make_http_pool(clock)
    twin, twin_line = make_http_pool(clock)
    assert twin_line == line
    pools = probe.collect()
    assert [p["name"] for p in made_here(pools)] == [here(MAKER, line), here(MAKER, line) + " #2"]
    entry = by_name(pools, here(MAKER, line))
    assert (entry["site"], entry["via"], entry["age_s"]) == (here(MAKER, line), None, 0.0)
    # The first one dropped: its name is free again, the second keeps its own.
    del pool
    gc.collect()
    assert [p["name"] for p in made_here(probe.collect())] == [here(MAKER, line) + " #2"]
    third, _ = make_http_pool(clock)
    names = [p["name"] for p in made_here(probe.collect())]
    assert names == [here(MAKER, line) + " #2", here(MAKER, line)]
    del twin, third


def test_numbers_freed_by_dead_pools_are_reused_smallest_first(
    probe: PoolsProbe, clock: MemoryReactorClock
) -> None:
    names_before = len(probe._registry.numbers["http"])
    made = [make_http_pool(clock) for _ in range(5)]
    name = here(MAKER, made[0][1])
    del made[3], made[1]  # #4 and #2
    gc.collect()
    made += [make_http_pool(clock) for _ in range(3)]
    labels = [probe._http[id(pool)].label for pool, _ in made]
    assert labels == [name, f"{name} #3", f"{name} #5", f"{name} #2", f"{name} #4", f"{name} #6"]
    assert len(probe._registry.numbers["http"]) == names_before + 1
    # Every pool of the name gone: the name is forgotten, the next one is bare again.
    del made[:]
    gc.collect()
    assert len(probe._registry.numbers["http"]) == names_before
    again, _ = make_http_pool(clock)
    assert probe._http[id(again)].label == name


def lines_run_in_registry(make: Callable[[], object]) -> int:
    """Lines of pool_registry.py the interpreter runs while ``make()`` runs (its result is
    dropped at once, so its pool is registered and forgotten): a count of work, no clock."""
    registry_file = pool_registry.__file__
    count = 0

    def trace(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        if frame.f_code.co_filename != registry_file:
            return None
        if event == "line":
            count += 1
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        make()
    finally:
        sys.settrace(previous)
    return count


def test_registering_a_pool_costs_the_same_however_many_pools_live(
    probe: PoolsProbe, clock: MemoryReactorClock
) -> None:
    # A program making an Agent (so a pool) per request, at one line: naming each new pool
    # must not look at the others (it did: one step per live pool of the same name).
    def per_request() -> object:
        return make_http_pool(clock)

    kept = [make_http_pool(clock)]
    lines_run_in_registry(per_request)  # the first pool past the live ones: a new number
    with_one = lines_run_in_registry(per_request)
    kept += [make_http_pool(clock) for _ in range(299)]
    lines_run_in_registry(per_request)
    with_300 = lines_run_in_registry(per_request)
    assert with_one > 10  # the trace sees the registry at work
    assert with_300 == with_one
    latest, _ = make_http_pool(clock)
    assert probe._http[id(latest)].label == here(MAKER, kept[0][1]) + " #301"
    del kept, latest


def test_treq_default_pool_is_named_by_its_caller(
    probe: PoolsProbe, clock: MemoryReactorClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from treq import api

    monkeypatch.setattr(api, "_global_pool", [None])
    pool, line = api.default_pool(clock, None, True), sys._getframe().f_lineno
    entry = by_name(probe.collect(), here("test_treq_default_pool_is_named_by_its_caller", line))
    assert entry["via"] == "treq"
    assert api.get_global_pool() is pool


def test_http_pool_counts_connecting_in_use_and_idle_per_host(
    probe: PoolsProbe, clock: MemoryReactorClock
) -> None:
    pool, line = make_http_pool(clock)
    name = here(MAKER, line)
    endpoint = ManualEndpoint()
    got: list[Any] = []
    pool.getConnection(KEY, endpoint).addCallback(got.append)
    entry = by_name(probe.collect(), name)
    assert (entry["connecting"], entry["in_use"], entry["idle"]) == (1, 0, 0)

    proto = endpoint.complete()
    assert got == [proto]  # the user's Deferred fires with the very protocol, untouched
    responses: list[Any] = []
    send_request(proto).addCallback(responses.append)
    entry = by_name(probe.collect(), name)
    assert (entry["connecting"], entry["in_use"], entry["idle"], entry["waiting"]) == (0, 1, 0, 0)
    assert entry["hosts"] == [{"host": "http://example.test:80", "in_use": 1, "idle": 0, "max": 2}]

    proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert len(responses) == 1 and responses[0].code == 200
    entry = by_name(probe.collect(), name)
    assert (entry["in_use"], entry["idle"]) == (0, 1)
    assert entry["hosts"] == [{"host": "http://example.test:80", "in_use": 0, "idle": 1, "max": 2}]
    # The pool's one limit is per host: no pool-wide max to hold in_use against.
    assert (entry["max"], entry["max_per_host"]) == (None, 2)
    json.dumps(probe.collect(), allow_nan=False)

    # The server hangs up on the cached connection: Twisted keeps it in _connections until
    # reused or timed out, but it is no longer an idle connection.
    proto.connectionLost(AnyFailure(ConnectionDone()))
    assert len(pool._connections[KEY]) == 1
    entry = by_name(probe.collect(), name)
    assert (entry["in_use"], entry["idle"], entry["hosts_total"]) == (0, 0, 0)


def test_non_persistent_pool_keeps_no_connection_per_host(
    probe: PoolsProbe, clock: MemoryReactorClock
) -> None:
    pool, line = HttpPool(clock, persistent=False), sys._getframe().f_lineno
    entry = by_name(
        probe.collect(), here("test_non_persistent_pool_keeps_no_connection_per_host", line)
    )
    assert (entry["persistent"], entry["max"], entry["max_per_host"]) == (False, None, 0)
    del pool


def test_proxy_keys_never_show_credentials(probe: PoolsProbe, clock: MemoryReactorClock) -> None:
    # Scrapy's tunnelling agent keys its pool by destination plus proxy configuration,
    # the Proxy-Authorization header included.
    pool, line = make_http_pool(clock)
    key = (b"https", b"example.test", 443, "proxy.test", 3128, b"Basic dXNlcjpodW50ZXIy")
    endpoint = ManualEndpoint()
    pool.getConnection(key, endpoint)
    proto = endpoint.complete()
    send_request(proto)
    entry = by_name(probe.collect(), here(MAKER, line))
    assert entry["hosts"] == [
        {
            "host": "https://example.test:443 via proxy proxy.test:3128",
            "in_use": 1,
            "idle": 0,
            "max": 2,
        }
    ]
    assert "dXNlcjpodW50ZXIy" not in json.dumps(probe.collect())


def test_failed_connect_passes_the_same_failure_and_stops_connecting(
    probe: PoolsProbe, clock: MemoryReactorClock
) -> None:
    pool, line = make_http_pool(clock)
    endpoint = ManualEndpoint()
    failures: list[Failure] = []
    pool.getConnection(KEY, endpoint).addErrback(failures.append)
    assert by_name(probe.collect(), here(MAKER, line))["connecting"] == 1
    sent = AnyFailure(ConnectionRefusedError("refused"))
    endpoint.pending.pop(0)[0].errback(sent)
    assert failures == [sent]
    entry = by_name(probe.collect(), here(MAKER, line))
    assert (entry["connecting"], entry["in_use"], entry["idle"]) == (0, 0, 0)


def test_http_pool_age_follows_the_clock(probe: PoolsProbe, clock: MemoryReactorClock) -> None:
    make_http_pool(clock)  # dropped at once: must not be listed
    pool, line = make_http_pool(clock)
    clock.advance(7.5)
    assert by_name(probe.collect(), here(MAKER, line))["age_s"] == 7.5
    assert [p["name"] for p in made_here(probe.collect())] == [here(MAKER, line)]
    del pool


def test_dropped_pools_disappear(probe: PoolsProbe, clock: MemoryReactorClock) -> None:
    pool, line = make_http_pool(clock)
    dead = weakref.ref(pool)
    assert [p["name"] for p in made_here(probe.collect())] == [here(MAKER, line)]
    del pool
    gc.collect()
    assert dead() is None
    assert made_here(probe.collect()) == []
    assert all(ref() is not dead for ref in probe._http.values())


def test_pools_past_the_shown_limit_are_summed(
    errors: ProbeErrors, clock: MemoryReactorClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pools_module, "MAX_POOLS_SHOWN", 2)
    probe = PoolsProbe(clock, errors, clock.seconds)
    probe.install()
    try:
        probe._http.clear()  # only this test's pools
        made = [make_http_pool(clock) for _ in range(5)]
        pools = [pool for pool, _ in made]
        endpoint = ManualEndpoint()
        pools[4].getConnection(KEY, endpoint)
        proto = endpoint.complete()
        send_request(proto)
        listed = [p for p in probe.collect() if p["kind"] == "http"]
        name = here(MAKER, made[0][1])
        assert [p["name"] for p in listed] == [name, f"{name} #2", "http (+3 more)"]
        assert (listed[2]["pools"], listed[2]["in_use"], listed[2]["idle"]) == (3, 1, 0)
        assert listed[2]["max"] is None
    finally:
        probe.uninstall()


def test_hosts_are_bounded_busiest_first(
    probe: PoolsProbe, clock: MemoryReactorClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pools_module, "MAX_KEYS_SHOWN", 2)
    pool, line = make_http_pool(clock)
    endpoint = ManualEndpoint()
    alive = []  # a real transport (and so the reactor) holds its protocol; here we do
    for port, busy in ((1, 1), (2, 3), (3, 2)):
        for _ in range(busy):
            pool.getConnection((b"http", b"h", port), endpoint)
            alive.append(endpoint.complete())
            send_request(alive[-1])
    entry = by_name(probe.collect(), here(MAKER, line))
    assert entry["in_use"] == 6 and entry["hosts_total"] == 3
    assert [(h["host"], h["in_use"]) for h in entry["hosts"]] == [
        ("http://h:2", 3),
        ("http://h:3", 2),
    ]


def test_pool_created_before_install_is_listed(
    errors: ProbeErrors, clock: MemoryReactorClock
) -> None:
    before = HttpPool(clock)
    early = ManualEndpoint()
    before.getConnection(KEY, early)
    send_request(early.complete())  # opened before install: not seen in use
    probe = PoolsProbe(clock, errors, clock.seconds)
    probe.install()
    try:
        ref = probe._http[id(before)]
        entry = by_name(probe.collect(), ref.label)
        assert ref.label.startswith(pools_module.BEFORE_START)
        assert (entry["site"], entry["age_s"], entry["in_use"]) == (None, None, 0)
        endpoint = ManualEndpoint()
        before.getConnection((b"http", b"late.test", 80), endpoint)
        send_request(endpoint.complete())  # opened after install: seen
        entry = by_name(probe.collect(), ref.label)
        assert entry["in_use"] == 1
        assert entry["hosts"] == [{"host": "http://late.test:80", "in_use": 1, "idle": 0, "max": 2}]
    finally:
        probe.uninstall()
    assert errors.counts == {}


# adbapi (unit) -----------------------------------------------------------------------------


def test_adbapi_pool_named_by_driver_and_file_not_started_queues_work(
    probe: PoolsProbe, clock: MemoryReactorClock, tmp_path: Path
) -> None:
    path = str(tmp_path / "a.db")
    db = DbPool("sqlite3", path, check_same_thread=False, cp_min=1, cp_max=2, cp_reactor=clock)
    db.runQuery("select 1")  # reactor not running: the pool's threads never started
    try:
        pools = probe.collect()
        entry = by_name(pools, f"sqlite3 {path}")
        assert entry["kind"] == "adbapi"
        assert (entry["driver"], entry["database"], entry["host"]) == ("sqlite3", path, None)
        assert (entry["min"], entry["max"], entry["running"]) == (1, 2, False)
        assert (entry["in_use"], entry["idle"], entry["waiting"], entry["connections"]) == (
            0,
            0,
            1,
            0,
        )
        # Its thread pool is this entry: not listed again as a thread pool.
        inside = [p for p in made_here(pools, "threadpool") if "test_adbapi_pool" in p["site"]]
        assert inside == []
    finally:
        db.close()


def test_adbapi_name_never_holds_a_password(probe: PoolsProbe, clock: MemoryReactorClock) -> None:
    # psycopg2 is not installed: an adbapi pool imports its driver, so name a module that is.
    db = DbPool("sqlite3", "dbname=app host=db.internal password=hunter2", cp_reactor=clock)
    kw = DbPool("sqlite3", database="app", host="db2", password="hunter2", cp_reactor=clock)
    pools = probe.collect()
    assert by_name(pools, "sqlite3 app@db.internal")["database"] == "app"
    assert by_name(pools, "sqlite3 app@db2")["host"] == "db2"
    assert "hunter2" not in json.dumps(pools)
    db.close()
    kw.close()


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
    assert user_pools(probe) == [
        {"name": "workers", "kind": "user", "max": 8, "in_use": 3, "idle": 5, "waiting": 1}
    ]
    mine.in_use = 4
    assert user_pools(probe)[0]["in_use"] == 4
    with pytest.raises(ValueError, match="'workers' is already tracked"):
        probe.track(Slots(None, 0, 0, 0), "workers")
    with pytest.raises(TypeError, match="missing in_use, waiting"):
        probe.track(cast(TrackablePool, type("Half", (), {"max": 1, "idle": 0})()), "half")
    probe.track(Slots(None, 0, 0, 0), "unbounded")
    assert user_pools(probe)[1]["max"] is None
    probe.untrack("workers")
    assert [p["name"] for p in user_pools(probe)] == ["unbounded"]
    with pytest.raises(KeyError, match="workers"):
        probe.untrack("workers")
    probe.uninstall()  # registrations are the user's, they survive uninstall
    assert [p["name"] for p in user_pools(probe)] == ["unbounded"]
    assert errors.counts == {}


def test_a_failing_user_pool_is_shown_and_counted_once(
    probe: PoolsProbe, errors: ProbeErrors
) -> None:
    probe.track(BrokenPool(), "broken")
    probe.track(Slots(1, 1, 0, 0), "fine")
    for _ in range(3):
        broken, fine = user_pools(probe)
        assert broken["in_use"] is None and broken["error"] == "RuntimeError: user bug"
        assert fine["in_use"] == 1
    assert errors.counts == {"pools": 1}
    probe.track(Slots(float("nan"), 0, 0, 0), "nan")  # type: ignore[arg-type]
    json.dumps(user_pools(probe), allow_nan=False)


# lifecycle and faults ----------------------------------------------------------------------


def patched_attributes() -> list[Any]:
    return [
        vars(ThreadPool)["__init__"],
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
        pool, line = make_http_pool(clock)
        refs.append(weakref.ref(pool))
        assert [p["name"] for p in made_here(probe.collect())] == [here(MAKER, line)]
        probe.uninstall()
        assert patched_attributes() == originals
        assert all(a is b for a, b in zip(patched_attributes(), originals, strict=True))
    del pool
    gc.collect()
    assert all(ref() is None for ref in refs)  # nothing of ours kept a pool alive
    assert probe._http == {} and probe._adbapi == {} and probe._threads == {}
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
    broken, line = make_http_pool(clock)
    fine, _ = make_http_pool(clock)
    broken._connections = None
    assert [p["name"] for p in made_here(probe.collect())] == [here(MAKER, line) + " #2"]
    assert errors.counts == {"pools": 1}
    del fine
    broken._connections = {}  # it may live on in a cycle: never broken for the next test


# real reactor ------------------------------------------------------------------------------


@async_test
async def test_reactor_threadpool_busy_workers_and_backlog(real_probe: PoolsProbe) -> None:
    reactor = real_reactor()
    threadpool = reactor.getThreadPool()
    original_max = threadpool.max
    release = threading.Event()
    base = by_name(real_probe.collect(), REACTOR_POOL)
    assert base["reactor"] is True and threadpool.name == REACTOR_POOL
    work = [deferToThread(release.wait, 10) for _ in range(3)]
    try:
        during = by_name(real_probe.collect(), REACTOR_POOL)
        assert during["in_use"] == base["in_use"] + 3
        # Cap the pool at what is busy now: two more calls must wait.
        reactor.suggestThreadPoolSize(during["in_use"])
        work += [deferToThread(release.wait, 10) for _ in range(2)]
        capped = by_name(real_probe.collect(), REACTOR_POOL)
        assert capped["in_use"] == during["in_use"]
        assert capped["waiting"] == base["waiting"] + 2
        assert capped["idle"] == 0 and capped["max"] == during["in_use"]
    finally:
        release.set()
        threadpool.adjustPoolsize(maxthreads=original_max)
    assert await gatherResults(work) == [True] * 5
    await until(
        lambda: by_name(real_probe.collect(), REACTOR_POOL)["in_use"] == base["in_use"],
        "workers to go idle",
    )
    assert by_name(real_probe.collect(), REACTOR_POOL)["waiting"] == base["waiting"]


@async_test
async def test_two_named_thread_pools_one_made_before_install(errors: ProbeErrors) -> None:
    reactor = real_reactor()
    resolver = ThreadPool(0, 2, "test-resolver")  # like Synapse's own resolver pool
    resolver.start()
    probe = PoolsProbe(reactor, errors, reactor.seconds)
    probe.install()
    media, line = ThreadPool(0, 3, "test-media"), sys._getframe().f_lineno
    media.start()
    release = threading.Event()
    try:
        for _ in range(3):
            resolver.callInThread(release.wait, 10)
        media.callInThread(release.wait, 10)
        await until(
            lambda: by_name(probe.collect(), "test-media")["in_use"] == 1, "media work to start"
        )
        pools = probe.collect()
        first = by_name(pools, "test-resolver")
        second = by_name(pools, "test-media")
        assert (first["kind"], first["reactor"], first["site"]) == ("threadpool", False, None)
        assert (first["max"], first["in_use"], first["idle"], first["waiting"]) == (2, 2, 0, 1)
        assert (second["max"], second["in_use"], second["idle"], second["waiting"]) == (3, 1, 0, 0)
        assert second["site"] == here("test_two_named_thread_pools_one_made_before_install", line)
        reactor_pools = [p for p in pools if p.get("reactor") is True]
        assert [p["name"] for p in reactor_pools] == [REACTOR_POOL]
        assert pools[0]["name"] == REACTOR_POOL  # the reactor's first
        release.set()
        await until(lambda: by_name(probe.collect(), "test-resolver")["idle"] == 2, "resolver idle")
        await deferToThread(media.stop)
        assert "test-media" not in [p["name"] for p in probe.collect()]
    finally:
        release.set()
        probe.uninstall()
        resolver.stop()
        if not media.joined:
            media.stop()
    assert errors.counts == {}


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
    pool, line = make_http_pool(reactor)
    name = here(MAKER, line)
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/".encode()
        agent = AnyAgent(reactor, pool=pool)
        responses = [agent.request(b"GET", url) for _ in range(2)]
        await until(lambda: len(resource.held) == 2, "two requests at the server")
        entry = by_name(real_probe.collect(), name)
        host = f"http://127.0.0.1:{port.getHost().port}"
        assert (entry["in_use"], entry["idle"], entry["connecting"]) == (2, 0, 0)
        assert entry["hosts"] == [{"host": host, "in_use": 2, "idle": 0, "max": 2}]

        for request in resource.held:
            request.write(b"ok")
            request.finish()
        bodies = [await treq.content(await response) for response in responses]
        assert bodies == [b"ok", b"ok"]
        entry = by_name(real_probe.collect(), name)
        assert (entry["in_use"], entry["idle"]) == (0, 2)
        assert entry["hosts"] == [{"host": host, "in_use": 0, "idle": 2, "max": 2}]
    finally:
        await pool.closeCachedConnections()
        await port.stopListening()
    assert by_name(real_probe.collect(), name)["idle"] == 0
    assert errors.counts == {}


@async_test
async def test_http_pool_per_host_figures_with_two_hosts(
    real_probe: PoolsProbe, errors: ProbeErrors
) -> None:
    reactor = real_reactor()
    resources = [HoldRequests(), HoldRequests()]
    ports = [reactor.listenTCP(0, AnySite(r), interface="127.0.0.1") for r in resources]
    pool, line = make_http_pool(reactor)
    pool.maxPersistentPerHost = 1
    hosts = [f"http://127.0.0.1:{p.getHost().port}" for p in ports]
    try:
        agent = AnyAgent(reactor, pool=pool)
        responses = [agent.request(b"GET", f"{hosts[0]}/".encode()) for _ in range(3)]
        responses += [agent.request(b"GET", f"{hosts[1]}/".encode())]
        await until(lambda: [len(r.held) for r in resources] == [3, 1], "requests at both")
        entry = by_name(real_probe.collect(), here(MAKER, line))
        assert entry["hosts"] == [
            {"host": hosts[0], "in_use": 3, "idle": 0, "max": 1},
            {"host": hosts[1], "in_use": 1, "idle": 0, "max": 1},
        ]
        assert (entry["in_use"], entry["idle"], entry["hosts_total"]) == (4, 0, 2)
        # 3 in use on a host that keeps 1: the pool-wide figure has no max to exceed.
        assert (entry["max"], entry["max_per_host"], entry["waiting"]) == (None, 1, 0)

        for resource in resources:
            for request in resource.held:
                request.write(b"ok")
                request.finish()
        for response in responses:
            await treq.content(await response)

        def per_host() -> list[tuple[str, int, int]]:
            entry = by_name(real_probe.collect(), here(MAKER, line))
            return sorted((h["host"], h["in_use"], h["idle"]) for h in entry["hosts"])

        # Twisted keeps one idle connection per host and closes the other two.
        kept = sorted([(hosts[0], 0, 1), (hosts[1], 0, 1)])
        await until(lambda: per_host() == kept, "one idle connection per host")
        assert by_name(real_probe.collect(), here(MAKER, line))["in_use"] == 0
    finally:
        await pool.closeCachedConnections()
        for port in ports:
            await port.stopListening()
    assert errors.counts == {}


@async_test
async def test_adbapi_pool_busy_connection_and_backlog(
    real_probe: PoolsProbe, tmp_path: Path, errors: ProbeErrors
) -> None:
    path = str(tmp_path / "app.db")
    db = DbPool(
        "sqlite3", path, check_same_thread=False, cp_min=1, cp_max=2, cp_reactor=real_reactor()
    )
    name = f"sqlite3 {path}"
    release = threading.Event()

    def blocked(cursor: Any) -> Any:
        release.wait(10)
        cursor.execute("select 41 + 1")
        return cursor.fetchall()

    try:
        first = db.runInteraction(blocked)
        entry = by_name(real_probe.collect(), name)
        assert (entry["driver"], entry["database"]) == ("sqlite3", path)
        assert (entry["in_use"], entry["waiting"], entry["running"]) == (1, 0, True)
        more = [db.runInteraction(blocked) for _ in range(2)]
        entry = by_name(real_probe.collect(), name)
        assert (entry["in_use"], entry["idle"], entry["waiting"], entry["max"]) == (2, 0, 1, 2)
        release.set()
        assert await gatherResults([first, *more]) == [[(42,)]] * 3
        await until(lambda: by_name(real_probe.collect(), name)["in_use"] == 0, "idle connections")
        entry = by_name(real_probe.collect(), name)
        assert (entry["idle"], entry["waiting"], entry["connections"]) == (2, 0, 2)
    finally:
        release.set()
        db.close()
    entry = by_name(real_probe.collect(), name)
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


def test_scrapy_download_handler_pool_is_named_by_scrapy_line(real_probe: PoolsProbe) -> None:
    import inspect

    from scrapy.core.downloader.handlers.http11 import HTTP11DownloadHandler
    from scrapy.utils.test import get_crawler

    lines, first = inspect.getsourcelines(HTTP11DownloadHandler.__init__)
    made = [first + i for i, text in enumerate(lines) if "HTTPConnectionPool(" in text]
    assert len(made) == 1
    # http and https; not a list comprehension: 3.12+ runs those inline, without a frame
    line = sys._getframe().f_lineno + 1
    handlers = [HTTP11DownloadHandler(get_crawler()), HTTP11DownloadHandler(get_crawler())]
    here = test_scrapy_download_handler_pool_is_named_by_scrapy_line.__code__
    maker = f"{here.co_filename}:{line} in {here.co_qualname}"
    name = (
        f"scrapy/core/downloader/handlers/http11.py:{made[0]} in HTTP11DownloadHandler.__init__"
        f" (from {maker})"
    )
    pools = real_probe.collect()
    # CONCURRENT_REQUESTS_PER_DOMAIN is the idle connections Scrapy keeps per host.
    assert (by_name(pools, name)["max_per_host"], by_name(pools, name)["max"]) == (8, None)
    assert by_name(pools, f"{name} #2")["site"] == name
    del handlers
