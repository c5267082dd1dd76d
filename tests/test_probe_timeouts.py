# mypy: allow-untyped-calls
"""The timeouts probe.

Unit tests use a ``Clock`` (pending, overdue, grouping) and a fake heap-keeping reactor (the
O(shown) path and sampling); integration tests fire one timeout of each kind on the reactor
under test (default or ``--reactor=asyncio``) and assert exact deltas.
"""

from __future__ import annotations

import functools
import heapq
import json
import random
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import pytest
import pytest_twisted
from twisted.internet import defer, error, protocol, task
from twisted.internet.base import BaseConnector, DelayedCall
from twisted.internet.task import Clock, deferLater
from twisted.protocols import policies
from twisted.python.failure import Failure
from twisted.web.client import Agent

from dashboard.probes.base import ProbeErrors
from dashboard.probes.loop import LoopProbe
from dashboard.probes.timeouts import TimeoutsProbe

_F = TypeVar("_F", bound=Callable[..., Any])

MODULE = __name__

#: Every attribute the probe patches: (owner, name).
PATCHED: list[tuple[Any, str]] = [
    (defer, "_cancelledToTimedOutError"),
    (defer.Deferred, "cancel"),
    (defer.DeferredList, "cancel"),
    (BaseConnector, "connectionFailed"),
    (policies.TimeoutMixin, "_TimeoutMixin__timedOut"),
]


def async_test(func: _F) -> _F:
    """``pytest_twisted.ensureDeferred``, typed."""
    return cast(_F, pytest_twisted.ensureDeferred(func))


def the_reactor() -> Any:
    """The reactor under test (pytest-twisted's), typed loosely for mypy."""
    from twisted.internet import reactor

    return reactor


def make_probe(reactor: Any, errors: ProbeErrors) -> TimeoutsProbe:
    loop = LoopProbe(reactor, errors, reactor.seconds)
    return TimeoutsProbe(reactor, errors, reactor.seconds, loop=loop)


def tick() -> None:
    """A delayed-call target."""


def tock() -> None:
    """Another delayed-call target."""


class Worker:
    def retry(self) -> None:
        """A method target: every instance's bound method groups under one name."""


# unit: Clock ----------------------------------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def probe(clock: Clock, errors: ProbeErrors) -> Iterator[TimeoutsProbe]:
    p = make_probe(clock, errors)
    p.install()
    yield p
    p.uninstall()


def test_pending_overdue_and_by_function(probe: TimeoutsProbe, clock: Clock) -> None:
    for delay in (1, 2, 3):
        clock.callLater(delay, tick)
    for delay in (5, 6):
        clock.callLater(delay, tock)
    for delay in (4, 7, 8, 9):
        clock.callLater(delay, Worker().retry)
    cancelled: Any = clock.callLater(1, tock)
    cancelled.cancel()
    section = probe.collect()
    assert section["delayed_calls"] == 9
    assert section["overdue_calls"] == 0
    assert section["by_function"] == [
        {"function": f"{MODULE}.Worker.retry", "count": 4},
        {"function": f"{MODULE}.tick", "count": 3},
        {"function": f"{MODULE}.tock", "count": 2},
    ]
    assert section["by_function_sampled"] is False
    assert section["own_calls"] == 0
    # time passes without the calls running (a stuck reactor): the due ones are overdue
    clock.rightNow = 5.5
    section = probe.collect()
    assert section["overdue_calls"] == 5  # due at 1, 2, 3 (tick), 4 (retry), 5 (tock)
    clock.rightNow = 5.0005  # within the 1 ms epsilon, the call at 5 is not overdue yet
    assert probe.collect()["overdue_calls"] == 4
    json.dumps(section, allow_nan=False)


def test_own_calls_and_odd_callables(probe: TimeoutsProbe, clock: Clock) -> None:
    import functools

    from dashboard import demo

    loop = LoopProbe(clock, ProbeErrors(), clock.seconds)
    clock.callLater(1, loop.collect)  # calls of the dashboard itself: apart, not the program's
    clock.callLater(0.5, loop.collect)
    clock.callLater(1, functools.partial(tick))
    clock.callLater(1, lambda: None)
    clock.callLater(1, demo.blocking_report)  # the demo is a program like any other
    section = probe.collect()
    assert section["own_calls"] == 2
    assert section["delayed_calls"] == 3
    names = {row["function"]: row["count"] for row in section["by_function"]}
    assert names == {
        f"{MODULE}.tick": 1,
        f"{MODULE}.test_own_calls_and_odd_callables.<locals>.<lambda>": 1,
        "dashboard.demo.blocking_report": 1,
    }
    clock.rightNow = 2.0  # all overdue (a stuck reactor): only the program's count
    assert probe.collect()["overdue_calls"] == 3


def test_running_loops_are_grouped_by_what_they_loop(probe: TimeoutsProbe, clock: Clock) -> None:
    """A running LoopingCall's next call holds the loop itself: it is named by the function
    it loops, seen through a ``functools.wraps`` wrapper (Synapse's ``Clock.looping_call``
    wraps every periodic function in one closure), not as ``twisted.internet.task.LoopingCall``."""

    def wrapped(function: Any) -> Any:
        @functools.wraps(function)
        def wrapped_f() -> Any:
            return function()

        return wrapped_f

    loops = [task.LoopingCall(wrapped(f)) for f in (tick, tick, tock)]
    for lc in loops:
        lc.clock = cast(Any, clock)
        lc.start(10.0)
    section = probe.collect()
    assert section["by_function"] == [
        {"function": f"{MODULE}.tick (LoopingCall)", "count": 2},
        {"function": f"{MODULE}.tock (LoopingCall)", "count": 1},
    ]
    for lc in loops:
        lc.stop()


def test_by_function_is_top_20(probe: TimeoutsProbe, clock: Clock) -> None:
    funcs = []
    for i in range(30):

        def f() -> None:
            pass

        f.__qualname__ = f"f{i:02d}"
        funcs.append(f)
        for _ in range(i + 1):
            clock.callLater(1, f)
    section = probe.collect()
    assert section["delayed_calls"] == sum(range(1, 31))
    rows = section["by_function"]
    assert len(rows) == 20
    assert rows[0] == {"function": f"{MODULE}.f29", "count": 30}
    assert rows[-1] == {"function": f"{MODULE}.f10", "count": 11}


# unit: a heap-keeping reactor (the path real reactors take) -----------------------------


class HeapReactor:
    """Keeps delayed calls like ``ReactorBase``: a heap, a list of new ones, a cancel count."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._pendingTimedCalls: list[DelayedCall] = []
        self._newTimedCalls: list[DelayedCall] = []
        self._cancellations = 0

    def seconds(self) -> float:
        return self.now

    def callLater(self, delay: float, func: Callable[[], None], new: bool = False) -> DelayedCall:
        call = DelayedCall(
            self.now + delay, func, (), {}, self._cancel, lambda c: None, seconds=self.seconds
        )
        if new:
            self._newTimedCalls.append(call)
        else:
            heapq.heappush(self._pendingTimedCalls, call)
        return call

    def _cancel(self, call: DelayedCall) -> None:
        self._cancellations += 1

    def getDelayedCalls(self) -> list[DelayedCall]:
        return [c for c in self._pendingTimedCalls + self._newTimedCalls if not c.cancelled]


def test_heap_path_counts_exactly_and_walks_only_overdue(errors: ProbeErrors) -> None:
    r = HeapReactor()
    p = make_probe(r, errors)
    calls = [r.callLater(d, tick) for d in (1, 2, 3, 50, 60)]
    calls += [r.callLater(d, tock, new=True) for d in (0.5, 70)]
    calls[1].cancel()  # cancelled, still in the heap
    calls[2].reset(100)  # moved later: its heap time is stale
    section = p.collect()
    assert section["delayed_calls"] == 6 == len(r.getDelayedCalls())
    r.now += 10
    section = p.collect()
    # due: 1 (tick), 0.5 (tock, new); not: 2 (cancelled), 3 (reset to 100), 50, 60, 70
    assert section["overdue_calls"] == 2
    assert section["overdue_truncated"] is False
    assert {row["function"]: row["count"] for row in section["by_function"]} == {
        f"{MODULE}.tick": 4,
        f"{MODULE}.tock": 2,
    }
    assert errors.counts == {}


def test_sampled_by_function_with_10k_pending_is_cheap(errors: ProbeErrors) -> None:
    r = HeapReactor()
    p = make_probe(r, errors)
    rng = random.Random(7)
    workers = [Worker() for _ in range(6000)]
    for i in range(10_000):
        func = workers[i].retry if i < 6000 else tick
        r.callLater(rng.uniform(1, 1000), func)
    for call in r._pendingTimedCalls[:100]:
        call.cancel()
    p.collect()
    started = time.perf_counter()
    section = p.collect()
    elapsed_ms = (time.perf_counter() - started) * 1000
    assert section["delayed_calls"] == 9900
    assert section["by_function_sampled"] is True
    counts = {row["function"]: row["count"] for row in section["by_function"]}
    assert counts[f"{MODULE}.Worker.retry"] == pytest.approx(5940, rel=0.06)
    assert counts[f"{MODULE}.tick"] == pytest.approx(3960, rel=0.06)
    assert elapsed_ms < 20  # about 1 ms here; the budget is a few ms
    print(f"collect with 10,000 pending: {elapsed_ms:.2f} ms")


# integration: the reactor under test ----------------------------------------------------


@async_test
async def test_seven_delayed_calls(errors: ProbeErrors) -> None:
    reactor = the_reactor()
    p = make_probe(reactor, errors)
    p.install()
    calls = []
    try:
        before = p.collect()

        def seven_marker() -> None:
            pass

        calls = [reactor.callLater(30 + i, seven_marker) for i in range(7)]
        after = p.collect()
    finally:
        for call in calls:
            call.cancel()
        p.uninstall()
    assert after["delayed_calls"] - before["delayed_calls"] == 7
    assert after["delayed_calls"] == len(reactor.getDelayedCalls()) + 7  # 7 cancelled since
    rows = {row["function"]: row["count"] for row in after["by_function"]}
    assert rows[f"{MODULE}.test_seven_delayed_calls.<locals>.seven_marker"] == 7
    assert errors.counts == {}


@async_test
async def test_one_deferred_timeout(errors: ProbeErrors) -> None:
    reactor = the_reactor()
    p = make_probe(reactor, errors)
    p.install()
    try:
        before = p.collect()["fired_total"]

        def parse_reply(result: object) -> object:
            return result

        d: defer.Deferred[object] = defer.Deferred()
        d.addTimeout(0.05, reactor)
        d.addCallback(parse_reply)
        with pytest.raises(defer.TimeoutError):
            await d
        after = p.collect()
    finally:
        p.uninstall()
    assert after["fired_total"]["deferred"] - before["deferred"] == 1  # exactly once
    assert after["fired_total"]["connect"] == before["connect"]
    assert after["fired_total"]["protocol"] == before["protocol"]
    assert after["cancelled_total"] == 0
    event = after["recent"][-1]
    assert event["kind"] == "deferred"
    assert "0.05 s" in event["what"] and "parse_reply" in event["what"]
    assert event["function"] == "twisted.internet.defer.Deferred.addTimeout.<locals>.timeItOut"
    assert event["site"] is None and event["waited_s"] is None  # no Deferred probe here
    assert abs(event["at"] - time.time()) < 5
    assert errors.counts == {}


@pytest.fixture
def full_listener() -> Iterator[int]:
    """A loopback port whose accept queue is full: further connects hang (SYNs dropped)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    clients = []
    try:
        for _ in range(8):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            clients.append(c)
            time.sleep(0.02)
        yield port
    finally:
        for c in clients:
            c.close()
        server.close()


class Recorder(protocol.ClientFactory):
    def __init__(self) -> None:
        self.failed: defer.Deferred[None] = defer.Deferred()
        self.reason: Failure | None = None

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.reason = reason
        self.failed.callback(None)


@async_test
async def test_one_connect_timeout(errors: ProbeErrors, full_listener: int) -> None:
    reactor = the_reactor()
    p = make_probe(reactor, errors)
    p.install()
    try:
        before = p.collect()["fired_total"]
        factory = Recorder()
        reactor.connectTCP("127.0.0.1", full_listener, factory, timeout=0.3)
        await factory.failed
        after = p.collect()
    finally:
        p.uninstall()
    assert factory.reason is not None and factory.reason.check(error.TimeoutError)
    assert after["fired_total"]["connect"] - before["connect"] == 1
    assert after["fired_total"]["deferred"] == before["deferred"]
    assert after["recent"][-1]["kind"] == "connect"
    assert after["recent"][-1]["what"] == f"127.0.0.1:{full_listener}"
    assert errors.counts == {}


@async_test
async def test_agent_connect_timeout(errors: ProbeErrors, full_listener: int) -> None:
    reactor = the_reactor()
    p = make_probe(reactor, errors)
    p.install()
    try:
        before = p.collect()["fired_total"]
        agent = Agent(reactor, connectTimeout=0.3)
        with pytest.raises(error.TimeoutError):
            await agent.request(b"GET", f"http://127.0.0.1:{full_listener}/".encode())
        after = p.collect()
    finally:
        p.uninstall()
    assert after["fired_total"]["connect"] - before["connect"] == 1
    assert after["recent"][-1]["what"] == f"127.0.0.1:{full_listener}"


class IdleProtocol(protocol.Protocol, policies.TimeoutMixin):
    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.timed_out: defer.Deferred[str] = defer.Deferred()

    def callLater(self, period: float, func: Callable[[], None]) -> Any:
        return self.reactor.callLater(period, func)

    def timeoutConnection(self) -> None:
        self.timed_out.callback("timed out")


@async_test
async def test_one_protocol_timeout(errors: ProbeErrors) -> None:
    reactor = the_reactor()
    p = make_probe(reactor, errors)
    p.install()
    try:
        before = p.collect()["fired_total"]
        proto = IdleProtocol(reactor)
        proto.setTimeout(0.1)
        pending = {row["function"] for row in p.collect()["by_function"]}
        assert "twisted.protocols.policies.TimeoutMixin.__timedOut" in pending
        assert await proto.timed_out == "timed out"
        after = p.collect()
    finally:
        p.uninstall()
    assert after["fired_total"]["protocol"] - before["protocol"] == 1
    assert after["recent"][-1] == {
        "at": after["recent"][-1]["at"],
        "kind": "protocol",
        "what": "IdleProtocol",
    }
    assert errors.counts == {}


@async_test
async def test_collect_with_10k_pending_on_the_real_reactor(errors: ProbeErrors) -> None:
    reactor = the_reactor()
    p = make_probe(reactor, errors)
    p.install()
    workers = [Worker() for _ in range(5000)]
    calls = [reactor.callLater(1000 + i * 0.01, w.retry) for i, w in enumerate(workers)]
    calls += [reactor.callLater(1000, tick) for _ in range(5000)]
    try:
        await deferLater(reactor, 0, lambda: None)  # the new calls are in the heap now
        p.collect()
        started = time.perf_counter()
        section = p.collect()
        elapsed_ms = (time.perf_counter() - started) * 1000
    finally:
        for call in calls:
            call.cancel()
        p.uninstall()
    assert section["delayed_calls"] >= 10_000
    counts = {row["function"]: row["count"] for row in section["by_function"]}
    assert counts[f"{MODULE}.Worker.retry"] == pytest.approx(5000, rel=0.06)
    assert counts[f"{MODULE}.tick"] == pytest.approx(5000, rel=0.06)
    assert elapsed_ms < 20
    print(f"timeouts collect, 10,000 pending on {type(reactor).__name__}: {elapsed_ms:.2f} ms")


# lifecycle and faults -------------------------------------------------------------------


def test_install_uninstall_restores_by_identity_and_100_cycles(errors: ProbeErrors) -> None:
    reactor = the_reactor()
    before = [vars(owner)[name] for owner, name in PATCHED]
    p = make_probe(reactor, errors)
    for _ in range(100):
        p.install()
        assert all(vars(o)[n] is not b for (o, n), b in zip(PATCHED, before, strict=True))
        p.uninstall()
        assert all(vars(o)[n] is b for (o, n), b in zip(PATCHED, before, strict=True))
    p.uninstall()
    assert errors.counts == {}


@async_test
async def test_faults_are_counted_and_user_code_sees_no_difference(
    errors: ProbeErrors, monkeypatch: pytest.MonkeyPatch, full_listener: int
) -> None:
    reactor = the_reactor()
    p = make_probe(reactor, errors)

    def broken(kind: str, what: str) -> None:
        raise RuntimeError(f"bookkeeping failed: {kind}")

    monkeypatch.setattr(p, "_record_event", broken)
    p.install()
    try:
        d: defer.Deferred[object] = defer.Deferred()
        d.addTimeout(0.02, reactor)
        with pytest.raises(defer.TimeoutError):  # exactly what Twisted raises without the probe
            await d
        proto = IdleProtocol(reactor)
        proto.setTimeout(0.02)
        assert await proto.timed_out == "timed out"
        factory = Recorder()
        reactor.connectTCP("127.0.0.1", full_listener, factory, timeout=0.1)
        await factory.failed
        assert factory.reason is not None and factory.reason.check(error.TimeoutError)
        # a Deferred cancelled without a timeout passes through untouched
        plain: defer.Deferred[object] = defer.Deferred()
        plain.addTimeout(10, reactor)
        plain.cancel()
        with pytest.raises(defer.CancelledError):
            await plain
        section = p.collect()
    finally:
        p.uninstall()
    assert errors.counts == {"timeouts": 3}
    assert errors.last["timeouts"].startswith("RuntimeError: bookkeeping failed")
    assert section["fired_total"] == {"deferred": 0, "connect": 0, "protocol": 0}
    assert section["cancelled_total"] == 1


def test_a_programs_looping_call_start_hooked_by_the_dashboard_is_the_programs(
    probe: TimeoutsProbe, clock: Clock, errors: ProbeErrors
) -> None:
    # The Deferred probe replaces LoopingCall.start on the class: a program's
    # callLater(5, lc.start, 1.0) still runs the program's work, not the dashboard's.
    from twisted.internet import task

    from dashboard.probes.deferreds import DeferredsProbe

    deferreds = DeferredsProbe(clock, errors, clock.seconds)
    deferreds.install()
    try:
        assert hasattr(task.LoopingCall.start, "__wrapped__")  # the hook is in place
        before = probe.collect()
        assert (before["own_calls"], before["delayed_calls"]) == (1, 0)  # the probe's sweep
        lc = task.LoopingCall(tick)
        lc.clock = cast(Any, clock)
        clock.callLater(5, lc.start, 1.0)
        section = probe.collect()
        assert (section["own_calls"], section["delayed_calls"]) == (1, 1)
        assert section["by_function"] == [
            {"function": "twisted.internet.task.LoopingCall.start", "count": 1}
        ]
        clock.rightNow = 6.0  # stuck: the program's call is overdue
        assert probe.collect()["overdue_calls"] == 1
    finally:
        deferreds.uninstall()
