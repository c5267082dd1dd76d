"""Busy time by handler, unit tests on a driven clock: the counters, the window, the names."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from dashboard.probes.handler_names import LOST, READ, WRITE, call_name, io_name
from dashboard.probes.handler_table import OTHER, HandlerTable
from dashboard.probes.handlers import HandlerHooks


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        #: the readings to come, first (the compiled timer reads the clock itself)
        self.script: list[float] = []

    def __call__(self) -> float:
        if self.script:
            self.now = self.script.pop(0)
        return self.now


def poll() -> None:
    """A handler of the program's."""


class Job:
    def run(self) -> None:
        pass


class Chat(Protocol):
    pass


class Transport:
    """Stands in for a tcp.Server: carries a protocol until the connection is lost."""

    def __init__(self, protocol: object) -> None:
        self.protocol = protocol


class ListeningPort:
    def __init__(self, factory: object) -> None:
        self.factory = factory


def never(exc: BaseException) -> None:
    raise AssertionError(f"the hook failed: {exc!r}")


def rig(
    accelerate: bool,
    record_error: Callable[[BaseException], None] = never,
    **options: Any,
) -> tuple[HandlerHooks, HandlerTable, FakeClock]:
    """Hooks (not installed: no reactor) on the path under test, their table, their clock."""
    clock = FakeClock()
    hooks = HandlerHooks(None, clock, record_error, accelerate=accelerate, **options)
    assert (hooks.timer is not None) is accelerate
    return hooks, hooks.table, clock


def timed_call(hooks: HandlerHooks, clock: FakeClock, func: Any, seconds: float) -> None:
    """A timed call of ``func`` that takes ``seconds``, as the recompiled loop makes it."""
    if hooks.timer is not None:
        clock.script = [clock.now, clock.now + seconds]
        hooks.timer.call(func, (), {})
        return
    done = hooks.table.make_call_done(never)
    t0 = clock()
    clock.now += seconds
    done(func, t0)


def test_shares_calls_and_durations_over_the_window(accelerate: bool) -> None:
    hooks, table, clock = rig(accelerate, window_s=10.0)
    for _ in range(10):  # one second: 10 calls of 20 ms, the rest idle
        timed_call(hooks, clock, poll, 0.020)
        clock.now += 0.080
    timed_call(hooks, clock, Job().run, 0.001)
    clock.now += 0.099
    section = table.section(close=True)
    rows = {row["handler"]: row for row in section["handlers"]}
    first = section["handlers"][0]
    assert first["handler"] == "tests.test_handlers_table.poll"
    assert first["calls"] == 10 and first["calls_total"] == 10
    assert first["busy_s"] == pytest.approx(0.2)
    assert first["share"] == pytest.approx(0.2 / 1.1, abs=1e-3)
    assert first["mean_ms"] == pytest.approx(20.0)
    assert first["max_ms"] == pytest.approx(20.0)
    assert first["calls_per_s"] == pytest.approx(10 / 1.1, abs=1e-2)
    assert first["own"] is False
    # 20 ms falls in the (10, 25] ms bucket
    bounds = section["handler_duration_bounds_ms"]
    assert first["duration_counts"][bounds.index(25.0)] == 10
    assert sum(first["duration_counts"]) == 10
    job = rows["tests.test_handlers_table.Job.run"]
    assert job["duration_counts"][bounds.index(1.0)] == 1  # (0.5, 1] ms
    assert section["handlers_window_s"] == pytest.approx(1.1)
    assert section["handlers_other"]["share"] == 0.0


def test_the_window_forgets_what_is_older_than_window_s(accelerate: bool) -> None:
    hooks, table, clock = rig(accelerate, window_s=2.0)
    timed_call(hooks, clock, poll, 0.5)  # a slow call, then quiet
    clock.now += 0.5
    table.section(close=True)
    for _ in range(3):  # three quiet seconds, sampled each second
        timed_call(hooks, clock, Job().run, 0.010)
        clock.now += 0.990
        section = table.section(close=True)
    names = [row["handler"] for row in section["handlers"]]
    assert names == ["tests.test_handlers_table.Job.run"]  # poll ran before the window
    row = section["handlers"][0]
    assert row["calls"] == 2 and row["calls_total"] == 3
    assert row["share"] == pytest.approx(0.01, abs=1e-4)
    assert section["handlers_window_s"] == pytest.approx(2.0)
    # max over the window, and since install
    assert row["max_ms"] == pytest.approx(10.0)
    assert table.histogram("tests.test_handlers_table.poll") is not None


def test_max_ms_is_the_slowest_call_in_the_window(accelerate: bool) -> None:
    hooks, table, clock = rig(accelerate, window_s=5.0)
    timed_call(hooks, clock, poll, 0.040)
    clock.now += 1.0
    table.section(close=True)
    timed_call(hooks, clock, poll, 0.005)
    section = table.section(close=False)
    assert section["handlers"][0]["max_ms"] == pytest.approx(40.0)
    assert section["handlers"][0]["share_last"] == pytest.approx(1.0)  # 5 ms of 5 ms


def test_peek_moves_no_baseline(accelerate: bool) -> None:
    hooks, table, clock = rig(accelerate, window_s=1.0)
    timed_call(hooks, clock, poll, 0.1)
    clock.now += 0.9
    peeked = table.section(close=False)
    closed = table.section(close=True)
    assert peeked["handlers"] == closed["handlers"]


def test_top_n_and_the_rest_merged(accelerate: bool) -> None:
    hooks, table, clock = rig(accelerate, top_n=2, window_s=10.0)
    funcs = []
    for i in range(5):
        func = eval(f"lambda: {i}")  # distinct code objects, one name each
        func.__qualname__ = f"handler_{i}"
        func.__module__ = "app"
        funcs.append(func)
    for i, func in enumerate(funcs):
        timed_call(hooks, clock, func, 0.001 * (i + 1))
    clock.now += 1.0
    section = table.section(close=True)
    assert [row["handler"] for row in section["handlers"]] == ["app.handler_4", "app.handler_3"]
    other = section["handlers_other"]
    assert other["handlers"] == 3 and other["calls"] == 3
    assert other["busy_s"] == pytest.approx(0.006)


def test_names_past_the_bound_merge_into_other(accelerate: bool) -> None:
    table = HandlerTable(FakeClock(), max_handlers=3, window_s=10.0, compiled=accelerate)
    for i in range(6):
        entry = table.entry(f"app.h{i}", False)
        assert entry[5] == (f"app.h{i}" if i < 3 else OTHER)
    assert len(table.by_name) == 4


def test_a_decorated_function_is_named_by_what_it_wraps(accelerate: bool) -> None:
    def logged(func: Any) -> Any:
        @functools.wraps(func)
        def wrapper(*args: Any) -> Any:
            return func(*args)

        return wrapper

    @logged
    def first() -> None:
        pass

    @logged
    def second() -> None:
        pass

    hooks, table, clock = rig(accelerate)
    for func in (first, second, first):
        timed_call(hooks, clock, func, 0.001)
    rows = {row["handler"]: row["calls"] for row in table.section(close=False)["handlers"]}
    prefix = "tests.test_handlers_table.test_a_decorated_function_is_named_by_what_it_wraps"
    assert rows == {f"{prefix}.<locals>.first": 2, f"{prefix}.<locals>.second": 1}


def test_call_names() -> None:
    loop = task.LoopingCall(poll)
    assert call_name(loop) == ("tests.test_handlers_table.poll (LoopingCall)", False)
    assert call_name(Job().run) == ("tests.test_handlers_table.Job.run", False)
    assert call_name(functools.partial(poll)) == ("tests.test_handlers_table.poll", False)
    assert call_name(Job()) == ("tests.test_handlers_table.Job.__call__", False)
    from dashboard.monitor import Monitor

    assert call_name(Monitor._tick) == ("dashboard.monitor.Monitor._tick", True)


def test_io_names() -> None:
    chat = Chat()
    assert io_name(Transport(chat), chat, READ) == (
        "tests.test_handlers_table.Chat.dataReceived",
        False,
    )
    assert (
        io_name(Transport(chat), chat, LOST)[0] == "tests.test_handlers_table.Chat.connectionLost"
    )
    assert io_name(Transport(chat), chat, WRITE)[0] == (
        "tests.test_handlers_table.Transport.doWrite (Chat)"
    )
    wrapper = ProtocolWrapper(WrappingFactory(Factory.forProtocol(Chat)), chat)  # type: ignore[arg-type]
    assert io_name(Transport(wrapper), wrapper, READ)[0] == (
        "tests.test_handlers_table.Chat.dataReceived"
    )
    port = ListeningPort(Factory.forProtocol(Chat))
    assert io_name(port, None, READ) == ("twisted.internet.protocol.Factory (accept)", False)
    from twisted.web.server import Site

    from dashboard.web.quiet_site import QuietChannel, QuietSite

    own = QuietChannel()
    assert io_name(Transport(own), own, READ) == (
        "dashboard.web.quiet_site.QuietChannel.dataReceived",
        True,
    )
    # Twisted Web hands every connection a proxy of its channel: named by the channel
    for site, name, is_own in (
        (QuietSite(None), "dashboard.web.quiet_site.QuietChannel", True),
        (Site(None), "twisted.web.http.HTTPChannel", False),
    ):
        proxy = site.buildProtocol(None)
        assert io_name(Transport(proxy), proxy, READ) == (f"{name}.dataReceived", is_own)


def test_a_read_that_ended_the_connection_is_counted_as_connection_lost(accelerate: bool) -> None:
    hooks, table, clock = rig(accelerate)

    def dispatch(selectable: Any, read: bool) -> None:  # what the reactor's method does
        clock.now += 0.002
        if getattr(selectable, "ends", False):
            del selectable.protocol  # as tcp.Connection.connectionLost does

    hook = hooks.io_hook("asyncio", dispatch)
    chat = Chat()
    transport = Transport(chat)
    for _ in range(2):
        hook(transport, True)
    hook(transport, False)
    transport.ends = True  # type: ignore[attr-defined]
    hook(transport, True)
    rows = {row["handler"]: row for row in table.section(close=False)["handlers"]}
    assert {name: row["calls"] for name, row in rows.items()} == {
        "tests.test_handlers_table.Chat.dataReceived": 2,
        "tests.test_handlers_table.Transport.doWrite (Chat)": 1,
        "tests.test_handlers_table.Chat.connectionLost": 1,
    }
    assert rows["tests.test_handlers_table.Chat.dataReceived"]["busy_s"] == pytest.approx(0.004)


def test_poll_event_bits_pick_read_write_or_lost(accelerate: bool) -> None:
    hooks, table, _clock = rig(accelerate)
    hook = hooks.io_hook("poll", lambda s, fd, e: None, poll_in=1, poll_disconnected=16)
    chat = Chat()
    for event in (1, 1 | 4, 4, 16, 16 | 4):
        hook(Transport(chat), 7, event)
    port = ListeningPort(Factory.forProtocol(Chat))
    hook(port, 5, 1)
    rows = {row["handler"]: row["calls"] for row in table.section(close=False)["handlers"]}
    assert rows == {
        "tests.test_handlers_table.Chat.dataReceived": 2,
        "tests.test_handlers_table.Transport.doWrite (Chat)": 1,
        "tests.test_handlers_table.Chat.connectionLost": 2,
        "twisted.internet.protocol.Factory (accept)": 1,
    }


def test_a_hostile_handler_is_counted_as_an_error_never_raised(accelerate: bool) -> None:
    errors: list[BaseException] = []

    class Hostile:
        def __getattribute__(self, name: str) -> Any:
            raise RuntimeError("no")

        def __call__(self) -> str:
            return "ran"

    hooks, table, clock = rig(accelerate, errors.append)
    hook = hooks.io_hook("asyncio", lambda s, r: None)
    hook(Hostile(), True)
    if hooks.timer is not None:
        assert hooks.timer.call(Hostile(), (), {}) == "ran"
    else:
        table.make_call_done(errors.append)(Hostile(), clock())
    # neither raised into the caller: each counted as the probe's error
    assert [str(e) for e in errors] == ["no", "no"]
    assert table.section(close=False)["handlers"] == []


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="top_handlers"):
        HandlerTable(FakeClock(), top_n=0)
    with pytest.raises(ValueError, match="handlers_window_s"):
        HandlerTable(FakeClock(), window_s=0)
