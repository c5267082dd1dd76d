# mypy: allow-untyped-calls
"""Deferreds cancelled from inside a delayed call count as Deferred timeouts; other cancels
are cancellations; a cancel nested in another is counted once.

The shapes are the real programs': ``reactor.callLater(t, d.cancel)`` (Scrapy's download
timeout, treq's ``timeout=``, here with a real treq request to a loopback server that never
answers), Synapse's ``timeout_deferred`` (a delayed call, wrapped by Synapse's clock, whose
function calls ``d.cancel()``), ``addTimeout``. Integration tests run on the reactor under test
(default or ``--reactor=asyncio``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, protocol
from twisted.internet.base import ReactorBase
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseNeverReceived

from dashboard.probes.base import DEFERRED_MACHINERY, ProbeErrors
from dashboard.probes.deferred_cancels import HOOK_CODE
from dashboard.probes.deferreds import DeferredsProbe
from dashboard.probes.loop import LoopProbe
from dashboard.probes.timeouts import TimeoutsProbe

_F = TypeVar("_F", bound=Callable[..., Any])
MODULE = __name__


def async_test(func: _F) -> _F:
    return cast(_F, pytest_twisted.ensureDeferred(func))


def the_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def make_probe(reactor: Any, errors: ProbeErrors, deferreds: Any = None) -> TimeoutsProbe:
    loop = LoopProbe(reactor, errors, reactor.seconds)
    return TimeoutsProbe(reactor, errors, reactor.seconds, loop=loop, deferreds=deferreds)


@pytest.fixture
def probe(errors: ProbeErrors) -> Iterator[TimeoutsProbe]:
    p = make_probe(the_reactor(), errors)
    p.install()
    yield p
    p.uninstall()


def counts(p: TimeoutsProbe) -> tuple[int, int]:
    """(Deferred timeouts, cancellations) so far."""
    section = p.collect()
    return section["fired_total"]["deferred"], section["cancelled_total"]


def quiet(d: defer.Deferred[Any]) -> defer.Deferred[Any]:
    """Consume the failure a cancelled Deferred ends with."""
    d.addErrback(lambda _: None)
    return d


async def pause(seconds: float) -> None:
    await deferLater(the_reactor(), seconds, lambda: None)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections (in the kernel) and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


class StallingBody(protocol.Protocol):
    """Answers any request with headers and 3 of the 100 bytes promised, then nothing."""

    def dataReceived(self, data: bytes) -> None:
        transport: Any = self.transport
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")


@pytest.fixture
def stalling_port() -> Iterator[int]:
    factory = protocol.Factory.forProtocol(StallingBody)
    port = the_reactor().listenTCP(0, factory, interface="127.0.0.1")
    try:
        yield port.getHost().port
    finally:
        port.stopListening()


# the callLater(t, d.cancel) idiom --------------------------------------------------------


def make_request() -> defer.Deferred[str]:
    """Stands for the program's code that makes the Deferred (its site)."""
    return defer.Deferred()


@async_test
async def test_call_later_cancel_is_a_timeout_with_function_site_and_wait(
    errors: ProbeErrors, accelerate: bool
) -> None:
    reactor = the_reactor()
    deferreds = DeferredsProbe(reactor, errors, reactor.seconds, accelerate=accelerate)
    deferreds.install()
    p = make_probe(reactor, errors, deferreds)
    p.install()
    try:
        d = make_request()
        deferreds.sweep()  # promoted: its age is measured from here on
        reactor.callLater(0.3, d.cancel)
        with pytest.raises(defer.CancelledError):
            await d
        section = p.collect()
    finally:
        p.uninstall()
        deferreds.uninstall()
    assert section["fired_total"] == {"deferred": 1, "connect": 0, "protocol": 0}
    assert section["cancelled_total"] == 0
    event = section["recent"][-1]
    assert event["kind"] == "deferred"
    assert event["function"] == "twisted.internet.defer.Deferred.cancel"
    line = make_request.__code__.co_firstlineno + 2
    assert event["site"].endswith(f"test_deferred_timeouts.py:{line} in make_request")
    assert 0.2 <= event["waited_s"] <= 5
    assert event["what"].startswith("Deferred cancelled by a delayed call after waiting")
    assert errors.counts == {}


@async_test
async def test_a_program_cancel_is_a_cancellation(probe: TimeoutsProbe) -> None:
    before = counts(probe)
    d = quiet(make_request())
    d.cancel()
    d.cancel()  # nothing left to cancel: not counted again
    timeouts, cancelled = counts(probe)
    assert (timeouts - before[0], cancelled - before[1]) == (0, 1)


@async_test
async def test_a_late_timer_on_a_fired_deferred_counts_nothing(probe: TimeoutsProbe) -> None:
    reactor = the_reactor()
    before = counts(probe)
    d = make_request()
    reactor.callLater(0.05, d.cancel)  # the program forgot to cancel its timer
    d.callback("done")
    await pause(0.15)
    assert counts(probe) == before
    assert await d == "done"


@async_test
async def test_treq_timeout_against_a_server_that_never_answers(
    probe: TimeoutsProbe, silent_port: int
) -> None:
    before = counts(probe)
    with pytest.raises((ResponseNeverReceived, defer.CancelledError)):
        await treq.get(f"http://127.0.0.1:{silent_port}/", timeout=0.3, persistent=False)
    await pause(0.1)  # the aborted connection's loss arrives from a zero-delay call
    timeouts, cancelled = counts(probe)
    # treq's Deferred waits on Agent's, which cancels the request on its connection: once
    assert (timeouts - before[0], cancelled - before[1]) == (1, 0)
    event = probe.collect()["recent"][-1]
    assert event["function"] == "twisted.internet.defer.Deferred.cancel"


@async_test
async def test_a_treq_timeout_on_a_chained_deferred_names_what_it_waited_on(
    errors: ProbeErrors, silent_port: int, accelerate: bool
) -> None:
    """treq's ``callLater(t, d.cancel)`` on an Agent request from a pool cancels a Deferred
    that already fired and only waits on the request's: the site and wait are the request's
    (they read null when only the outer Deferred was asked)."""
    reactor = the_reactor()
    deferreds = DeferredsProbe(reactor, errors, reactor.seconds, accelerate=accelerate)
    timeouts = make_probe(reactor, errors, deferreds)
    deferreds.install()
    timeouts.install()
    try:
        with pytest.raises((ResponseNeverReceived, defer.CancelledError)):
            await treq.get(f"http://127.0.0.1:{silent_port}/", timeout=0.3, persistent=True)
        await pause(0.1)
        event = timeouts.collect()["recent"][-1]
    finally:
        timeouts.uninstall()
        deferreds.uninstall()
    assert event["kind"] == "deferred"
    assert event["site"] is not None and "_newclient.py" in event["site"], event
    assert 0.1 <= event["waited_s"] <= 5, event
    assert errors.counts == {}


class BodyReader(protocol.Protocol):
    """Scrapy's ``_ResponseReader``, reduced: fails ``finished`` when the connection is lost."""

    def __init__(self, finished: defer.Deferred[bytes]) -> None:
        self.finished = finished

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if not self.finished.called:
            self.finished.errback(reason)


def read_body(response: Any) -> defer.Deferred[bytes]:
    """Scrapy's ``_cb_bodyready``: a Deferred whose canceller aborts the connection."""
    finished: defer.Deferred[bytes] = defer.Deferred(
        lambda _: response._transport._producer.abortConnection()
    )
    response.deliverBody(BodyReader(finished))
    return finished


def scrapy_download(reactor: Any, url: str, timeout: float) -> defer.Deferred[Any]:
    """Scrapy 2.19's ``_ScrapyAgent.download_request`` shape: the Agent's Deferred with the
    body read chained in, cancelled by ``callLater(timeout, d.cancel)``."""
    d = Agent(reactor).request(b"GET", url.encode())
    d.addCallback(read_body)
    timer = reactor.callLater(timeout, d.cancel)

    def cancel_timer(result: object) -> object:
        if timer.active():
            timer.cancel()
        return result

    return d.addBoth(cancel_timer)


@async_test
async def test_scrapy_shaped_timeouts_count_once_each(
    probe: TimeoutsProbe, silent_port: int, stalling_port: int
) -> None:
    reactor = the_reactor()
    before = counts(probe)
    downloads = [
        quiet(scrapy_download(reactor, f"http://127.0.0.1:{port}/", 0.3))
        for port in (silent_port, silent_port, stalling_port)
    ]
    await defer.DeferredList(downloads)
    await pause(0.1)
    timeouts, cancelled = counts(probe)
    assert (timeouts - before[0], cancelled - before[1]) == (3, 0)


# Synapse's timeout_deferred --------------------------------------------------------------


def run_in_background(f: Callable[..., Any], *args: Any) -> Any:
    return f(*args)


class SynapseLikeClock:
    """Synapse's ``Clock.call_later``: the callback runs wrapped (``functools.wraps``), in a
    context manager and another call, never straight from the reactor."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Any:
        @functools.wraps(callback)
        def wrapped_callback(*args: Any) -> None:
            with contextlib.nullcontext():
                run_in_background(callback, *args)

        return self._reactor.callLater(delay, wrapped_callback, *args)


def timeout_deferred(
    deferred: defer.Deferred[Any], timeout: float, clock: SynapseLikeClock
) -> defer.Deferred[Any]:
    """The shape of ``synapse/util/async_helpers.py timeout_deferred`` (Synapse 1.163)."""
    new_d: defer.Deferred[Any] = defer.Deferred()
    timed_out = [False]

    def time_it_out() -> None:
        timed_out[0] = True
        try:
            deferred.cancel()
        except Exception:  # a canceller that raises must not break the timeout
            logging.getLogger(__name__).exception("Canceller failed during timeout")
        if not new_d.called:
            new_d.errback(defer.TimeoutError(f"Timed out after {timeout:g}s"))

    delayed_call = clock.call_later(timeout, time_it_out)

    def convert_cancelled(value: Failure) -> Failure:
        if timed_out[0] and value.check(defer.CancelledError):
            raise defer.TimeoutError(f"Timed out after {timeout:g}s")
        return value

    deferred.addErrback(convert_cancelled)

    def cancel_timeout(result: object) -> object:
        if delayed_call.active():
            delayed_call.cancel()
        return result

    deferred.addBoth(cancel_timeout)

    def success_cb(val: object) -> None:
        if not new_d.called:
            new_d.callback(val)

    def failure_cb(val: Failure) -> None:
        if not new_d.called:
            new_d.errback(val)

    deferred.addCallbacks(success_cb, failure_cb)
    return new_d


def failing_canceller(d: defer.Deferred[Any]) -> None:
    raise RuntimeError("canceller failed")  # Twisted ticket 9534's case


@async_test
async def test_synapse_timeout_deferred_long_polls(probe: TimeoutsProbe) -> None:
    clock = SynapseLikeClock(the_reactor())
    before = counts(probe)
    listeners: list[defer.Deferred[Any]] = [defer.Deferred() for _ in range(4)]
    listeners.append(defer.Deferred(failing_canceller))
    polls = [timeout_deferred(listener, 0.2, clock) for listener in listeners]
    source: defer.Deferred[Any] = defer.Deferred()
    answered = timeout_deferred(source, 5, clock)
    results = await defer.DeferredList(polls, consumeErrors=True)
    assert all(not ok and f.check(defer.TimeoutError) for ok, f in results)
    timeouts, cancelled = counts(probe)
    assert (timeouts - before[0], cancelled - before[1]) == (5, 0)
    for event in probe.collect()["recent"][-5:]:
        assert event["function"] == f"{MODULE}.timeout_deferred.<locals>.time_it_out"
    assert not answered.called  # still waiting: nothing counted for it
    source.callback(None)  # answered: its 5 s timer is cancelled, nothing left to fire later
    assert answered.called and counts(probe) == (timeouts, cancelled)


# nested cancels --------------------------------------------------------------------------


@async_test
async def test_nested_cancels_count_once(probe: TimeoutsProbe) -> None:
    reactor = the_reactor()
    before = counts(probe)
    # a canceller chain: cancelling outer cancels middle, which cancels inner
    inner: defer.Deferred[None] = quiet(defer.Deferred())
    middle: defer.Deferred[None] = quiet(defer.Deferred(lambda _: inner.cancel()))
    outer: defer.Deferred[None] = quiet(defer.Deferred(lambda _: middle.cancel()))
    outer.cancel()
    # a Deferred waiting on another: the cancel is forwarded
    waiting_on: defer.Deferred[None] = quiet(defer.Deferred())
    chained: defer.Deferred[Any] = defer.succeed(None)
    chained.addCallback(lambda _: waiting_on)
    quiet(chained).cancel()
    # a DeferredList cancels each member
    quiet(defer.DeferredList([quiet(defer.Deferred()) for _ in range(3)])).cancel()
    assert counts(probe) == (before[0], before[1] + 3)

    # an inlineCallbacks function cancelled by a timer cancels what it awaits
    @defer.inlineCallbacks
    def fetch() -> Any:
        yield defer.Deferred(lambda _: None)

    fetching = quiet(fetch())
    reactor.callLater(0.05, fetching.cancel)
    await pause(0.15)
    assert counts(probe) == (before[0] + 1, before[1] + 3)


@async_test
async def test_what_a_cancellation_runs_at_once_counts_with_it(probe: TimeoutsProbe) -> None:
    """The program's reaction to a cancel, run by it synchronously, is part of it."""
    before = counts(probe)
    other: defer.Deferred[None] = quiet(defer.Deferred())
    first: defer.Deferred[None] = defer.Deferred()
    first.addErrback(lambda _: other.cancel())
    first.cancel()
    assert other.called
    assert counts(probe) == (before[0], before[1] + 1)


# clocks and delayed calls that are no timers -------------------------------------------


def test_a_test_clock_runs_timeouts_too(errors: ProbeErrors) -> None:
    clock = Clock()
    p = make_probe(clock, errors)
    p.install()
    try:
        d = quiet(make_request())
        clock.callLater(5, d.cancel)
        clock.advance(5)
        program = quiet(make_request())
        program.cancel()
        section = p.collect()
    finally:
        p.uninstall()
    assert section["fired_total"]["deferred"] == 1
    assert section["cancelled_total"] == 1
    assert section["recent"][-1]["at"] == 5.0


def test_an_asyncio_timer_handle_is_a_delayed_call(probe: TimeoutsProbe) -> None:
    """``loop.call_later(t, d.cancel)`` on an asyncio loop: its ``TimerHandle`` runs it."""
    before = counts(probe)
    loop = asyncio.new_event_loop()
    try:
        d = quiet(make_request())
        timer = asyncio.TimerHandle(loop.time(), d.cancel, (), loop)
        timer._run()  # what the loop does when the timer is due
        plain = quiet(make_request())
        asyncio.Handle(plain.cancel, (), loop)._run()  # call_soon: no timer
    finally:
        loop.close()
    assert counts(probe) == (before[0] + 1, before[1] + 1)


@async_test
async def test_asyncio_loop_call_later_on_the_asyncio_reactor(probe: TimeoutsProbe) -> None:
    reactor = the_reactor()
    loop = getattr(reactor, "_asyncioEventloop", None)
    before = counts(probe)
    d = quiet(make_request())
    if loop is not None:  # the asyncio reactor: the loop's own timer
        loop.call_later(0.05, d.cancel)
    else:  # any other reactor: its own timer
        reactor.callLater(0.05, d.cancel)
    await pause(0.15)
    assert counts(probe) == (before[0] + 1, before[1])


class Connection:
    """Something whose loss Twisted delivers from a zero-delay call (``abortConnection``)."""

    def __init__(self) -> None:
        self.request: defer.Deferred[None] = quiet(defer.Deferred())

    def connectionLost(self, reason: object) -> None:
        self.request.cancel()


@async_test
async def test_a_connection_lost_from_a_zero_delay_call_is_no_timeout(
    probe: TimeoutsProbe,
) -> None:
    before = counts(probe)
    connection = Connection()
    the_reactor().callLater(0, connection.connectionLost, None)
    await pause(0.05)
    assert counts(probe) == (before[0], before[1] + 1)


class TimerReactor(ReactorBase):
    """A ``ReactorBase`` that is never run: ``runUntilCurrent`` is called by the test."""

    def installWaker(self) -> None:
        pass

    def wakeUp(self) -> None:
        pass

    def removeAll(self) -> list[Any]:  # a shutdown trigger of every reactor
        return []


def test_a_cancel_in_the_shutdown_triggers_is_no_timeout(errors: ProbeErrors) -> None:
    """``runUntilCurrent`` keeps its last ``call`` bound while it fires the shutdown
    triggers: a cancel there is made by no delayed call."""
    reactor = TimerReactor()
    p = make_probe(reactor, errors)
    p.install()
    try:
        timed = quiet(make_request())
        on_shutdown = quiet(make_request())
        reactor.callLater(0, timed.cancel)
        reactor.addSystemEventTrigger("during", "shutdown", on_shutdown.cancel)
        reactor._justStopped = True
        reactor.runUntilCurrent()
        section = p.collect()
    finally:
        p.uninstall()
    assert on_shutdown.called and timed.called
    assert section["fired_total"]["deferred"] == 1
    assert section["cancelled_total"] == 1


# the dashboard's own, and the hook's life ----------------------------------------------


def own_canceller(d: defer.Deferred[Any]) -> None:
    """Stands for a canceller in the dashboard's package (see the test below)."""


def test_a_cancel_reaching_the_dashboards_deferred_is_its_own(
    probe: TimeoutsProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dashboard.probes.deferred_cancels as cancels

    monkeypatch.setattr(
        cancels, "is_own_file", lambda filename: filename == own_canceller.__code__.co_filename
    )
    before = counts(probe)
    stream: defer.Deferred[None] = quiet(defer.Deferred(own_canceller))
    route: defer.Deferred[Any] = defer.succeed(None)
    route.addCallback(lambda _: stream)  # Klein's Deferred for the route waits on the stream
    quiet(route).cancel()
    section = probe.collect()
    assert counts(probe) == before
    assert section["own_cancelled_total"] == 1


def test_the_hook_is_deferred_machinery() -> None:
    """The Deferred probe walks past the hook's frame to find a creation site."""
    assert HOOK_CODE in DEFERRED_MACHINERY
    seen: list[Any] = []

    def canceller(d: defer.Deferred[Any]) -> None:
        import sys

        frame = sys._getframe(1)
        while frame is not None:
            seen.append(frame.f_code)
            frame = frame.f_back  # type: ignore[assignment]

    p = make_probe(the_reactor(), ProbeErrors())
    p.install()
    try:
        quiet(defer.Deferred(canceller)).cancel()
    finally:
        p.uninstall()
    assert HOOK_CODE in seen


@async_test
async def test_after_uninstall_a_bound_hook_passes_through(errors: ProbeErrors) -> None:
    reactor = the_reactor()
    p = make_probe(reactor, errors)
    p.install()
    d = quiet(make_request())
    reactor.callLater(0.05, d.cancel)  # binds the hook
    p.uninstall()
    before = counts(p)
    await pause(0.15)
    assert d.called
    assert counts(p) == before
    assert errors.counts == {}


def cancel_many(n: int) -> float:
    """Microseconds per ``Deferred()`` + ``cancel()``, on a thread of its own: a stack that
    runs no timed call, as a program's I/O callbacks (the test runs inside pytest-twisted's
    ``callLater``)."""
    took: list[float] = []

    def run() -> None:
        started = time.perf_counter()
        for _ in range(n):
            quiet(defer.Deferred()).cancel()
        took.append((time.perf_counter() - started) / n * 1e6)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return took[0]


def timer_cancel_many(reactor: TimerReactor, n: int) -> float:
    """Microseconds per ``callLater(0, d.cancel)`` run by ``runUntilCurrent``."""
    for _ in range(n):
        reactor.callLater(0, quiet(defer.Deferred()).cancel)
    started = time.perf_counter()
    reactor.runUntilCurrent()
    return (time.perf_counter() - started) / n * 1e6


def test_a_cancel_costs_microseconds(errors: ProbeErrors) -> None:
    """A cancel pays the hook, a walk up the stack and, inside a timed call, a look at what
    it holds: microseconds, on the rare event only."""
    reactor = TimerReactor()
    p = make_probe(reactor, errors)
    n = 2000
    bare, bare_timer = cancel_many(n), timer_cancel_many(reactor, n)
    p.install()
    try:
        hooked, hooked_timer = cancel_many(n), timer_cancel_many(reactor, n)
        section = p.collect()
    finally:
        p.uninstall()
    print(
        f"create + cancel: bare {bare:.2f} us, hooked {hooked:.2f} us; "
        f"timed cancel: bare {bare_timer:.2f} us, hooked {hooked_timer:.2f} us"
    )
    assert (section["fired_total"]["deferred"], section["cancelled_total"]) == (n, n)
    assert hooked - bare < 20
    assert hooked_timer - bare_timer < 40
    assert errors.counts == {}


def test_a_deferred_made_while_cancelling_is_sited_at_the_programs_line(
    errors: ProbeErrors, accelerate: bool
) -> None:
    """With both probes installed, a Deferred that Twisted makes while cancelling (an
    ``inlineCallbacks`` function makes one at every cancel) is the program's: the cancel
    hook's frame is walked past like Twisted's own, never taken as the (dashboard's) site."""
    reactor = the_reactor()
    deferreds = DeferredsProbe(reactor, errors, reactor.seconds, accelerate=accelerate)
    timeouts = make_probe(reactor, errors, deferreds)
    never: defer.Deferred[None] = defer.Deferred()

    @defer.inlineCallbacks
    def waits() -> Any:
        yield never

    deferreds.install()
    timeouts.install()
    try:
        running = quiet(waits())
        before = deferreds.collect()
        running.cancel()
        after = deferreds.collect()
    finally:
        timeouts.uninstall()
        deferreds.uninstall()
    made_by_cancel = after["created_total"] - before["created_total"]
    assert made_by_cancel >= 1  # the program's, not the dashboard's
    assert after["own"]["created_total"] == before["own"]["created_total"]
    assert errors.counts == {}


def test_cancels_on_two_threads_are_each_outermost(probe: TimeoutsProbe) -> None:
    """A worker thread's cancel made while the reactor thread's cancel runs is not nested in
    it (it is counted), and its end does not end the reactor thread's cancel."""
    worker_done = threading.Event()
    seen: list[object] = []

    def worker() -> None:
        quiet(defer.Deferred()).cancel()  # the program cancels on a thread of its own
        worker_done.set()

    def canceller(d: defer.Deferred[Any]) -> None:
        thread = threading.Thread(target=worker)
        thread.start()
        assert worker_done.wait(5)
        thread.join()
        current = probe.cancels.current
        seen.append(current.deferred if current is not None else None)

    d: defer.Deferred[Any] = quiet(defer.Deferred(canceller))
    before = counts(probe)
    d.cancel()
    assert seen == [d]  # still this thread's cancel, after the worker's ended
    assert probe.cancels.current is None
    assert counts(probe) == (before[0], before[1] + 2)


def test_a_worker_threads_cancel_ending_does_not_end_the_reactor_threads(
    probe: TimeoutsProbe,
) -> None:
    """The worker's cancel begins first; the reactor thread's, begun while it runs, is
    outermost on its own thread, and still under way when the worker's ends."""
    worker_began, main_began = threading.Event(), threading.Event()
    seen: list[object] = []

    def worker_canceller(d: defer.Deferred[Any]) -> None:
        worker_began.set()
        assert main_began.wait(5)

    def worker() -> None:
        quiet(defer.Deferred(worker_canceller)).cancel()

    thread = threading.Thread(target=worker)

    def canceller(d: defer.Deferred[Any]) -> None:
        main_began.set()
        thread.join()  # the worker's cancel has ended
        current = probe.cancels.current
        seen.append(current.deferred if current is not None else None)

    d: defer.Deferred[Any] = quiet(defer.Deferred(canceller))
    before = counts(probe)
    thread.start()
    assert worker_began.wait(5)
    d.cancel()
    assert seen == [d]
    assert counts(probe) == (before[0], before[1] + 2)


#: Calls of the program's container methods made while the probe looked into them.
CONTAINER_CALLS: list[str] = []


class RecordingList(list[Any]):
    """A program's list whose methods record every call."""

    def __len__(self) -> int:
        CONTAINER_CALLS.append("list.__len__")
        return super().__len__()

    def __iter__(self) -> Iterator[Any]:
        CONTAINER_CALLS.append("list.__iter__")
        return super().__iter__()


class RecordingDict(dict[str, Any]):
    """A program's dict whose methods record every call."""

    def __len__(self) -> int:
        CONTAINER_CALLS.append("dict.__len__")
        return super().__len__()

    def __iter__(self) -> Iterator[str]:
        CONTAINER_CALLS.append("dict.__iter__")
        return super().__iter__()

    def values(self) -> Any:
        CONTAINER_CALLS.append("dict.values")
        return super().values()


def cancel_held(box: Any) -> None:
    """A delayed call's function: cancels the Deferred its argument holds (read through the
    base class, so the test's own reads record nothing)."""
    held = list.__getitem__(box, 0) if isinstance(box, list) else dict.__getitem__(box, "d")
    held.cancel()


def test_a_programs_container_subclasses_run_none_of_their_methods(errors: ProbeErrors) -> None:
    """Looking into what a delayed call holds runs none of the program's code: a list or
    dict subclass is read through the base class (and what it holds is still found)."""
    reactor = TimerReactor()
    p = make_probe(reactor, errors)
    p.install()
    try:
        CONTAINER_CALLS.clear()
        for box in (
            RecordingList([quiet(defer.Deferred())]),
            RecordingDict(d=quiet(defer.Deferred())),
        ):
            reactor.callLater(0, cancel_held, box)
        reactor.runUntilCurrent()
        section = p.collect()
    finally:
        p.uninstall()
    assert CONTAINER_CALLS == []
    assert (section["fired_total"]["deferred"], section["cancelled_total"]) == (2, 0)
    assert errors.counts == {}


def test_an_add_timeout_converted_long_after_its_cancel_counts_once(errors: ProbeErrors) -> None:
    """``addTimeout``'s conversion runs when the chain reaches it: here after a callback's
    Deferred fires, once more timeouts than ``recent`` keeps have happened since."""
    from dashboard.probes.timeouts import MAX_RECENT

    reactor = TimerReactor()
    p = make_probe(reactor, errors)
    p.install()
    try:
        paused: defer.Deferred[Any] = defer.Deferred()
        reached: list[Any] = []
        d: defer.Deferred[Any] = defer.Deferred()

        def wait_on_paused(result: Any) -> defer.Deferred[Any]:
            reached.append(result)
            return paused

        d.addBoth(wait_on_paused)
        d.addTimeout(0, cast(Any, reactor))
        quiet(d)
        reactor.runUntilCurrent()  # timeItOut cancels d; its chain waits on `paused`
        assert len(reached) == 1 and p.collect()["fired_total"]["deferred"] == 1
        for _ in range(MAX_RECENT):
            reactor.callLater(0, quiet(defer.Deferred()).cancel)
        reactor.runUntilCurrent()
        paused.errback(reached[0])  # the chain goes on: addTimeout's conversion runs now
        section = p.collect()
    finally:
        p.uninstall()
    assert d.called and isinstance(d.result, type(None))
    assert section["fired_total"]["deferred"] == 1 + MAX_RECENT
    assert errors.counts == {}
