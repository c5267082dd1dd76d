"""100 start/stop cycles leave nothing behind: every patched attribute is the very object it
was (checked by identity, on every class, module and reactor object a probe touches), no
thread, no timer, no Monitor kept alive, and no memory (tracemalloc: what the dashboard's own
code allocated and did not free, and what the process as a whole kept).

Each cycle does real work while the probes are in: Deferreds made, fired and left pending,
a timer, a loopback connection, turns of the reactor loop.
"""

from __future__ import annotations

import gc
import sys
import threading
import tracemalloc
import weakref
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import base, defer, protocol, task, tcp, unix
from twisted.protocols import policies

from dashboard.monitor import Monitor
from dashboard.testing import global_reactor

CYCLES = 100
DASHBOARD_DIR = str(Path(__file__).resolve().parent.parent / "dashboard")
#: Bytes the dashboard's own code may keep over a second round of 2 x 100 cycles: a leak of
#: one small object per cycle (a closure, a weak reference: 60+ B) would pass 12 KiB.
OWN_BYTES_BUDGET = 4 * 1024
#: Bytes the whole process may keep over that round (Python's and Twisted's own caches).
TOTAL_BYTES_BUDGET = 32 * 1024


def hooked_state() -> dict[tuple[str, str], object]:
    """Every attribute a probe may replace, by identity: the class and module dicts of what is
    hooked, the reactor's own attributes (its poller included) and its event loop's selector."""
    from twisted.enterprise import adbapi
    from twisted.internet import selectreactor, task
    from twisted.python import threadpool
    from twisted.web import client, http

    owners: dict[str, Any] = {
        "Deferred": defer.Deferred,
        "defer": defer,
        "tcp.Connection": tcp.Connection,
        "tcp.BaseClient": tcp.BaseClient,
        "tcp.Server": tcp.Server,
        "tcp.Port": tcp.Port,
        "unix.Port": unix.Port,
        "BaseConnector": base.BaseConnector,
        "TimeoutMixin": policies.TimeoutMixin,
        "HTTPConnectionPool": client.HTTPConnectionPool,
        "adbapi.ConnectionPool": adbapi.ConnectionPool,
        "http.Request": http.Request,
        "ThreadPool": threadpool.ThreadPool,
        "LoopingCall": task.LoopingCall,
        "selectreactor": selectreactor,
    }
    try:
        from twisted.protocols.tls import TLSMemoryBIOProtocol

        owners["TLSMemoryBIOProtocol"] = TLSMemoryBIOProtocol
    except ImportError:  # pragma: no cover - twisted[tls] is a test dependency
        pass
    reactor = global_reactor()
    owners["reactor"] = reactor
    loop = getattr(reactor, "_asyncioEventloop", None)
    if loop is not None:
        owners["asyncio selector"] = loop._selector
    found: dict[tuple[str, str], object] = {}
    for label, owner in owners.items():
        for name, value in list(vars(owner).items()):
            if label == "reactor" and not (callable(value) or name == "_poller"):
                continue  # its timer lists and counters change as it runs
            found[(label, name)] = value
    return found


def changed(
    before: dict[tuple[str, str], object], after: dict[tuple[str, str], object]
) -> set[tuple[str, str]]:
    keys = before.keys() | after.keys()
    return {k for k in keys if before.get(k, "<absent>") is not after.get(k, "<absent>")}


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        transport: Any = self.transport
        transport.write(data)


class Once(protocol.Protocol):
    def __init__(self) -> None:
        self.got: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        if not self.got.called:
            self.got.callback(data)


async def some_work(port: int, kept: list[defer.Deferred[None]]) -> None:
    """What a program does meanwhile: Deferreds, a timer, a connection, loop turns."""
    reactor = global_reactor()
    for _ in range(20):
        d: defer.Deferred[int] = defer.Deferred()
        d.addCallback(lambda x: x + 1)
        d.callback(1)
    kept.append(defer.Deferred())  # pending while the monitor stops
    if len(kept) > 5:
        kept.pop(0).callback(None)
    client = await protocol.ClientCreator(reactor, Once).connectTCP("127.0.0.1", port)
    client.transport.write(b"x")
    await client.got
    client.transport.loseConnection()
    await task.deferLater(reactor, 0.002, lambda: None)


async def cycles(count: int, fresh: bool, port: int, kept: list[defer.Deferred[None]]) -> list[Any]:
    """``count`` start/stop cycles (twice each), on one monitor or a new one every time;
    weak references to every monitor used."""
    reactor = global_reactor()
    monitors: list[Any] = []
    monitor = Monitor(reactor, interval=0.01, history=5)
    for _ in range(count):
        if fresh:
            monitor = Monitor(reactor, interval=0.01, history=5)
        monitors.append(weakref.ref(monitor))
        monitor.start()
        monitor.start()
        await some_work(port, kept)
        monitor.stop()
        monitor.stop()
    del monitor
    return monitors


def settled() -> tuple[tracemalloc.Snapshot, int]:
    """A tracemalloc snapshot and the traced total, after a full collection and with CPython's
    type attribute cache emptied.

    That cache (4096 slots per interpreter, keyed by type version and the name object's
    address) holds a strong reference to the attribute name of each lookup it caches. A name
    made afresh for each call (``PyObject_GetAttrString`` in our C ``TimedWait`` constructor;
    inside ``open()``, the io module's own) is a new string each time, lands in a new slot, and
    stays there, charged by tracemalloc to the Python line that made the call: measured on
    3.13.0, 97 strings (4.7 KB) for ``LoopProbe._timed`` and 106 (6.2 KB) for the ``/proc``
    reads of ``process.py``, filling over thousands of calls then flat, all freed by
    ``sys._clear_type_cache()``; 3.11 keeps them too, at other counts. Bounded, the
    interpreter's, and nothing of ours: emptied here so that the budget below measures only what
    the dashboard's objects keep. A real leak (an object kept per cycle) is not in that cache
    and is still counted (``test_the_measure_sees_one_small_object_kept_per_cycle``)."""
    gc.collect()
    sys._clear_type_cache()
    return tracemalloc.take_snapshot(), tracemalloc.get_traced_memory()[0]


def own_bytes(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> int:
    """Net bytes allocated by the dashboard package's code between two snapshots."""
    own = [tracemalloc.Filter(True, DASHBOARD_DIR + "/*")]
    stats = after.filter_traces(own).compare_to(before.filter_traces(own), "filename")
    return sum(stat.size_diff for stat in stats)


@pytest_twisted.ensureDeferred
async def test_a_hundred_cycles_leave_nothing_behind() -> None:
    reactor = global_reactor()
    listening = reactor.listenTCP(0, protocol.Factory.forProtocol(Echo), interface="127.0.0.1")
    port = listening.getHost().port
    kept: list[defer.Deferred[None]] = []
    try:
        await cycles(10, False, port, kept)  # warm caches (code objects, interned names...)
        await cycles(10, True, port, kept)
        gc.collect()
        state = hooked_state()
        threads = set(threading.enumerate())
        timers = set(reactor.getDelayedCalls())
        tracemalloc.start(5)
        try:
            # Two rounds of 2 x 100 cycles: the first settles what is allocated once (class
            # dicts resized by the patches, caches); the second must keep nothing more.
            marks: list[tuple[tracemalloc.Snapshot, int]] = []
            for _ in range(2):
                marks.append(settled())
                same = await cycles(CYCLES, False, port, kept)
                fresh = await cycles(CYCLES, True, port, kept)
            marks.append(settled())
        finally:
            tracemalloc.stop()
        assert changed(state, hooked_state()) == set()
        assert set(threading.enumerate()) == threads
        # none left of ours (an earlier test's timer may have fired meanwhile)
        assert set(reactor.getDelayedCalls()) - timers == set()
        # No monitor outlives its last stop(): nothing of ours holds one.
        assert [ref for ref in fresh if ref() is not None] == []
        assert len({id(ref()) for ref in same}) == 1
        own = [own_bytes(marks[i][0], marks[i + 1][0]) for i in range(2)]
        total = [marks[i + 1][1] - marks[i][1] for i in range(2)]
        print(
            f"\nper round of {2 * CYCLES} cycles: the dashboard's code kept {own} B,"
            f" the process {total} B"
        )
        assert own[1] <= OWN_BYTES_BUDGET, own
        assert total[1] <= TOTAL_BYTES_BUDGET, total
    finally:
        for d in kept:
            d.callback(None)
        await listening.stopListening()


#: Objects one cycle of a leaking dashboard would keep (see the test below).
_KEPT: list[object] = []


def test_the_measure_sees_one_small_object_kept_per_cycle() -> None:
    """The control for the budget: the same measure (:func:`settled`, :func:`own_bytes`) over
    2 x 100 calls of dashboard code made to keep one small object each, as a leak in a probe's
    install would, sees more than the budget."""
    from dashboard.probes import process

    def leaking_read(path: str) -> str | None:
        text = read(path)
        _KEPT.append((path,))  # one small object per call: a 1-tuple, 56 B on 3.13
        return text

    read = process._read_text
    leaking_read.__code__ = leaking_read.__code__.replace(co_filename=process.__file__)
    tracemalloc.start(5)
    try:
        for leaks in (False, True):
            before, _ = settled()
            for _ in range(2 * CYCLES):
                (leaking_read if leaks else read)("/proc/self/stat")
            after, _ = settled()
            kept = own_bytes(before, after)
            if leaks:
                assert kept > OWN_BYTES_BUDGET, kept
            else:
                assert kept <= OWN_BYTES_BUDGET // 4, kept
    finally:
        tracemalloc.stop()
        _KEPT.clear()


@pytest_twisted.ensureDeferred
async def test_the_hooks_really_were_in_during_the_cycles() -> None:
    # The control for the test above: while started, the same check sees the patches.
    reactor = global_reactor()
    state = hooked_state()
    monitor = Monitor(reactor, interval=60)
    monitor.start()
    try:
        during = changed(state, hooked_state())
    finally:
        monitor.stop()
    assert changed(state, hooked_state()) == set()
    labels = {label for label, _ in during}
    assert {"Deferred", "defer", "tcp.Connection", "tcp.Port", "TimeoutMixin"} <= labels
    assert {"HTTPConnectionPool", "adbapi.ConnectionPool", "BaseConnector"} <= labels
    # The loop hook: the poller (epoll) or the event loop's selector (asyncio).
    assert ("reactor", "_poller") in during or ("asyncio selector", "select") in during
