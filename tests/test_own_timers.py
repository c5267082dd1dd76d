# mypy: allow-untyped-calls
"""The dashboard's own delayed calls are counted apart (``own_calls``), out of the program's
``delayed_calls``, ``overdue_calls`` and ``by_function``; a Monitor's timeouts section names
the site of a Deferred that timed out (the Deferred probe, wired in). Runs on the reactor
under test (default or ``--reactor=asyncio``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar, cast

import pytest_twisted
import treq
from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool

from dashboard import Monitor

_F = TypeVar("_F", bound=Callable[..., Any])

PROTOCOL_TIMER = "twisted.protocols.policies.TimeoutMixin.__timedOut"
LOG_CLOCK = "twisted.web.http.HTTPFactory._updateLogDateTime"


def async_test(func: _F) -> _F:
    return cast(_F, pytest_twisted.ensureDeferred(func))


def the_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def idle_timers(reactor: Any, port: Any) -> list[Any]:
    """Pending ``TimeoutMixin`` idle timers of connections to the dashboard's port ``port``
    (not those another test's connections to its own dashboard may still hold)."""
    return [
        call
        for call in reactor.getDelayedCalls()
        if getattr(call.func, "__qualname__", "") == "TimeoutMixin.__timedOut"
        and getattr(call.func.__self__, "factory", None) is port.factory
    ]


def own_functions(section: dict[str, Any]) -> list[str]:
    return [
        row["function"]
        for row in section["by_function"]
        if row["function"].startswith("dashboard.")
        or row["function"] in (PROTOCOL_TIMER, LOG_CLOCK)
    ]


@async_test
async def test_the_dashboards_timers_are_its_own() -> None:
    reactor = the_reactor()
    monitor = Monitor(reactor, interval=0.5)
    pool = HTTPConnectionPool(reactor, persistent=True)
    monitor.start()
    port: Any = None
    try:
        port = await monitor.listen("tcp:0:interface=127.0.0.1")
        url = f"http://127.0.0.1:{port.getHost().port}/api/v1/snapshot"
        response = await treq.get(url, pool=pool)
        await treq.content(response)
        await deferLater(reactor, 0.05, lambda: None)
        # the keep-alive connection to the dashboard's port now waits with an idle timer
        assert len(idle_timers(reactor, port)) == 1

        def program_work() -> None:
            pass

        program = [reactor.callLater(60, program_work) for _ in range(3)]
        section = monitor.snapshot()["timeouts"]
        pending = len(reactor.getDelayedCalls())
        for call in program:
            call.cancel()
    finally:
        await pool.closeCachedConnections()
        if port is not None:
            await port.stopListening()
        monitor.stop()
    # the monitor's tick, the Deferred probe's sweep, its site's log clock and idle timer
    assert section["own_calls"] >= 4
    assert section["delayed_calls"] + section["own_calls"] == pending
    assert own_functions(section) == []
    counted = {row["function"]: row["count"] for row in section["by_function"]}
    assert counted[f"{__name__}.test_the_dashboards_timers_are_its_own.<locals>.program_work"] == 3


def make_download() -> defer.Deferred[bytes]:
    """Stands for the program's code that makes the Deferred that times out."""
    return defer.Deferred()


@async_test
async def test_a_monitor_names_the_site_of_a_deferred_that_timed_out() -> None:
    reactor = the_reactor()
    monitor = Monitor(reactor)
    monitor.start()
    try:
        d = make_download()
        monitor.deferreds.sweep()  # promoted: its age is measured from here on
        reactor.callLater(0.25, d.cancel)
        with contextlib.suppress(defer.CancelledError):
            await d
        await deferLater(reactor, 0.01, lambda: None)  # out of the cancel that resumed us
        cancelled_by_program = make_download()
        cancelled_by_program.addErrback(lambda _: None)
        cancelled_by_program.cancel()
        section = monitor.snapshot()["timeouts"]
    finally:
        monitor.stop()
    assert section["fired_total"]["deferred"] == 1
    assert section["cancelled_total"] == 1
    event = section["recent"][-1]
    line = make_download.__code__.co_firstlineno + 2
    assert event["site"].endswith(f"test_own_timers.py:{line} in make_download")
    assert event["function"] == "twisted.internet.defer.Deferred.cancel"
    assert 0.15 <= event["waited_s"] <= 5
