"""Busy time by handler through the recompiled I/O dispatch (compiled path): each reactor's own
``_doReadOrWrite`` / ``_readOrWrite`` recompiled with its body between
``HandlerTimer.io_start`` and ``io_done`` (:func:`dashboard.probes.handler_source.with_timed_body`).
Driven on real reactor instances (not run) with descriptors that stand in for a transport:
the names, the durations, a connection the event ends, a handler's exception, nesting, the
fallback where the source is not Twisted's, and the line numbers tracebacks show."""

from __future__ import annotations

import asyncio
import dis
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from twisted.internet import epollreactor, pollreactor, selectreactor
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import ILogObserver, globalLogPublisher

from dashboard.probes.handler_source import with_timed_body
from dashboard.probes.handlers import KIND_ARGUMENTS, HandlerHooks
from tests.accel_support import require_accelerator
from tests.test_handlers_table import FakeClock, never

HERE = "tests.test_handlers_dispatch"


class Chat(Protocol):
    pass


class Conn:
    """Stands in for a tcp.Server: its reads and writes take ``seconds`` on the fake clock,
    and a read returns ``why`` (a lost connection) when one is set."""

    def __init__(self, clock: FakeClock, seconds: float = 0.002) -> None:
        self.protocol: Any = Chat()
        self.clock = clock
        self.seconds = seconds
        self.why: Any = None
        self.during: Callable[[], None] | None = None
        self.raises: BaseException | None = None
        self.lost_with: Any = None

    def fileno(self) -> int:
        return 1_000_000  # registered nowhere: removeReader/removeWriter find nothing to do

    def logPrefix(self) -> str:
        return "Conn"

    def _work(self) -> Any:
        self.clock.now += self.seconds
        if self.during is not None:
            self.during()
        if self.raises is not None:
            raise self.raises
        return self.why

    def doRead(self) -> Any:
        return self._work()

    def doWrite(self) -> Any:
        return self._work()

    def connectionLost(self, reason: Any) -> None:
        self.clock.now += 0.001  # the protocol's connectionLost, inside the same event
        self.lost_with = reason
        self.protocol = None  # as tcp.Connection.connectionLost does


class Port:
    """Stands in for a listening port: no protocol, named by its factory."""

    def __init__(self, clock: FakeClock) -> None:
        self.factory = Factory.forProtocol(Chat)
        self.clock = clock

    def fileno(self) -> int:
        return 1_000_001

    def logPrefix(self) -> str:
        return "Port"

    def doRead(self) -> None:
        self.clock.now += 0.003


def _asyncio_reactor() -> Any:
    return AsyncioSelectorReactor(asyncio.new_event_loop())


REACTORS: dict[str, Callable[[], Any]] = {
    "epoll": epollreactor.EPollReactor,
    "poll": pollreactor.PollReactor,
    "select": selectreactor.SelectReactor,
    "asyncio": _asyncio_reactor,
}


@pytest.fixture(params=sorted(REACTORS))
def flavour(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


class Rig:
    def __init__(self, flavour: str, record_error: Callable[[BaseException], None]) -> None:
        require_accelerator()
        self.flavour = flavour
        self.reactor = REACTORS[flavour]()
        self.clock = FakeClock()
        self.hooks = HandlerHooks(self.reactor, self.clock, record_error, accelerate=True)
        self.hooks.install()

    @property
    def method(self) -> str:
        return "_readOrWrite" if self.flavour == "asyncio" else "_doReadOrWrite"

    def dispatch(self, selectable: Any, read: bool) -> None:
        """One event as the reactor hands it over (through the hooked method)."""
        method = getattr(self.reactor, self.method)
        if self.flavour in ("epoll", "poll"):
            method(selectable, selectable.fileno(), self.reactor._POLL_IN if read else 4)
        elif self.flavour == "select":
            method(selectable, "doRead" if read else "doWrite")
        else:
            method(selectable, read)

    def rows(self) -> dict[str, dict[str, Any]]:
        section = self.hooks.table.section(close=False)
        return {row["handler"]: row for row in section["handlers"]}

    def close(self) -> None:
        self.hooks.uninstall()
        loop = getattr(self.reactor, "_asyncioEventloop", None)
        if loop is not None:
            loop.close()


@pytest.fixture
def rig(flavour: str) -> Iterator[Rig]:
    made = Rig(flavour, never)
    yield made
    made.close()


def test_the_dispatch_is_recompiled_on_every_reactor(rig: Rig) -> None:
    label = {
        "epoll": "_doReadOrWrite (recompiled)",
        "poll": "_doReadOrWrite (recompiled)",
        "select": "_doReadOrWrite (select, recompiled)",
        "asyncio": "_readOrWrite (asyncio, recompiled)",
    }[rig.flavour]
    assert rig.hooks.hooks == ["runUntilCurrent", label]
    hooked = getattr(rig.reactor, rig.method)
    original = getattr(type(rig.reactor), rig.method)
    assert hooked.__func__ is not original and hooked.__self__ is rig.reactor
    assert hooked.__func__.__qualname__ == original.__qualname__


def test_reads_writes_and_accepts_are_named_and_timed(rig: Rig) -> None:
    conn = Conn(rig.clock)
    for _ in range(3):
        rig.dispatch(conn, read=True)
    rig.dispatch(conn, read=False)
    rig.dispatch(Port(rig.clock), read=True)
    rows = rig.rows()
    assert {name: row["calls"] for name, row in rows.items()} == {
        f"{HERE}.Chat.dataReceived": 3,
        f"{HERE}.Conn.doWrite (Chat)": 1,
        "twisted.internet.protocol.Factory (accept)": 1,
    }
    assert rows[f"{HERE}.Chat.dataReceived"]["busy_s"] == pytest.approx(0.006)
    assert rows[f"{HERE}.Chat.dataReceived"]["max_ms"] == pytest.approx(2.0)
    assert rows["twisted.internet.protocol.Factory (accept)"]["busy_s"] == pytest.approx(0.003)


def test_an_event_that_ends_the_connection_is_its_connection_lost(rig: Rig) -> None:
    """``why`` true: the reactor disconnects the descriptor inside the same event; the whole
    event (the read and the protocol's connectionLost) is counted as connectionLost."""
    conn = Conn(rig.clock)
    rig.dispatch(conn, read=True)
    conn.why = CONNECTION_DONE
    rig.dispatch(conn, read=True)
    assert conn.protocol is None and conn.lost_with is not None  # Twisted's own doing
    rows = rig.rows()
    assert {name: row["calls"] for name, row in rows.items()} == {
        f"{HERE}.Chat.dataReceived": 1,
        f"{HERE}.Chat.connectionLost": 1,
    }
    assert rows[f"{HERE}.Chat.connectionLost"]["busy_s"] == pytest.approx(0.003)


def test_a_handlers_exception_is_twisteds_to_handle(rig: Rig) -> None:
    """A doRead that raises: the reactor logs it and drops the connection, as without the
    hook; it is counted (as the event that ended the connection), not reported as the
    probe's error (``never`` would fail)."""
    conn = Conn(rig.clock)
    conn.raises = RuntimeError("the handler's own")
    logged: list[dict[str, Any]] = []
    observer = cast(ILogObserver, logged.append)
    globalLogPublisher.addObserver(observer)
    try:
        rig.dispatch(conn, read=True)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert conn.protocol is None
    failures = [event.get("log_failure", event.get("failure")) for event in logged]
    assert [f.value for f in failures if f is not None] == [conn.raises]
    assert {name: row["calls"] for name, row in rig.rows().items()} == {
        f"{HERE}.Chat.connectionLost": 1
    }


def test_a_base_exception_passes_through_and_the_next_event_is_counted(rig: Rig) -> None:
    """A KeyboardInterrupt out of a doRead: the select and poll reactors catch BaseException
    (logged, the connection dropped: counted as connectionLost), asyncio's only Exception (it
    propagates; ``why`` was never set: counted as a read). Either way the event begun is done
    (the ``finally``) and the next one is counted as usual."""
    conn = Conn(rig.clock)
    conn.raises = KeyboardInterrupt()
    try:
        rig.dispatch(conn, read=True)
    except KeyboardInterrupt:
        assert rig.flavour == "asyncio"
    else:
        assert rig.flavour != "asyncio"
    rig.dispatch(Conn(rig.clock, seconds=0.005), read=True)
    calls = {name: row["calls"] for name, row in rig.rows().items()}
    read = rig.rows()[f"{HERE}.Chat.dataReceived"]
    if rig.flavour == "asyncio":
        assert calls == {f"{HERE}.Chat.dataReceived": 2}
        assert read["busy_s"] == pytest.approx(0.007)
    else:
        assert calls == {f"{HERE}.Chat.dataReceived": 1, f"{HERE}.Chat.connectionLost": 1}
        assert read["busy_s"] == pytest.approx(0.005)


def test_a_dispatch_inside_a_dispatch_is_counted_apart(rig: Rig) -> None:
    """A handler that runs the reactor again (nested): the inner event is its own handler's,
    the outer's time includes it; nesting deeper than the timer keeps is counted down only."""
    outer, inner = Conn(rig.clock, seconds=0.001), Conn(rig.clock, seconds=0.004)
    inner.protocol = Port(rig.clock)  # another protocol class: another handler
    outer.during = lambda: rig.dispatch(inner, read=True)
    rig.dispatch(outer, read=True)
    rows = rig.rows()
    assert rows[f"{HERE}.Port.dataReceived"]["busy_s"] == pytest.approx(0.004)
    assert rows[f"{HERE}.Chat.dataReceived"]["busy_s"] == pytest.approx(0.005)

    depth = [0]

    def deeper() -> None:
        depth[0] += 1
        if depth[0] < 12:
            rig.dispatch(chain, read=True)

    chain = Conn(rig.clock, seconds=0.0)
    chain.during = deeper
    rig.dispatch(chain, read=True)
    after = rig.rows()[f"{HERE}.Chat.dataReceived"]
    assert after["calls"] == 1 + 8  # the outer above, and the 8 outermost of the chain
    rig.dispatch(Conn(rig.clock, seconds=0.002), read=True)  # and the stack is empty again
    assert rig.rows()[f"{HERE}.Chat.dataReceived"]["calls"] == 10


def test_uninstall_puts_the_reactors_own_method_back(flavour: str) -> None:
    made = Rig(flavour, never)
    name = made.method
    assert name in vars(made.reactor)
    made.close()
    assert name not in vars(made.reactor)
    made.dispatch(Conn(made.clock), read=True)  # the class's own again: nothing counts
    assert made.hooks.table.section(close=False)["handlers"] == []


def one_wrapped_read(reactor: Any, hooks: HandlerHooks, clock: FakeClock) -> dict[str, int]:
    """One read through the reactor's (wrapped) dispatch: the calls counted, by name."""
    reactor._doReadOrWrite(Conn(clock), 7, reactor._POLL_IN)
    section = hooks.table.section(close=False)
    return {row["handler"]: row["calls"] for row in section["handlers"]}


def test_a_dispatch_that_is_not_twisteds_own_is_wrapped_instead() -> None:
    """Another source (a patched or older reactor), here one without the ``why`` the edit
    needs, is never recompiled: the compiled wrapper (TimedIO) times it from outside, with
    the same names."""
    require_accelerator()

    class Patched(epollreactor.EPollReactor):
        def _doReadOrWrite(self, selectable: Any, fd: int, event: int) -> None:
            selectable.doRead() if event & self._POLL_IN else selectable.doWrite()

    reactor = Patched()  # type: ignore[no-untyped-call]
    clock = FakeClock()
    hooks = HandlerHooks(reactor, clock, never, accelerate=True)
    hooks.install()
    try:
        assert hooks.hooks == ["runUntilCurrent", "_doReadOrWrite"]
        assert type(reactor._doReadOrWrite).__name__ == "TimedIO"
        assert one_wrapped_read(reactor, hooks, clock) == {f"{HERE}.Chat.dataReceived": 1}
    finally:
        hooks.uninstall()


@pytest.mark.parametrize("flavour_name", sorted(KIND_ARGUMENTS))
def test_the_recompiled_body_keeps_twisteds_line_numbers(flavour_name: str) -> None:
    """Tracebacks and the watchdog's stacks inside the dispatch show Twisted's lines."""
    owner = {
        "poll": epollreactor.EPollReactor,
        "select": selectreactor.SelectReactor,
        "asyncio": AsyncioSelectorReactor,
    }[flavour_name]
    name = "_readOrWrite" if flavour_name == "asyncio" else "_doReadOrWrite"
    original = getattr(owner, name)
    made = with_timed_body(
        original, lambda s: None, lambda k, w: None, KIND_ARGUMENTS[flavour_name]
    )
    assert made is not None
    assert made.__code__.co_filename == original.__code__.co_filename
    assert made.__code__.co_firstlineno == original.__code__.co_firstlineno

    def lines(code: Any) -> set[int]:
        found = {ins.positions.lineno for ins in dis.get_instructions(code) if ins.positions}
        return {line for line in found if line is not None}

    assert lines(original.__code__) <= lines(made.__code__)
    assert lines(made.__code__) <= lines(original.__code__)  # nothing on a line of its own


def test_with_timed_body_refuses_what_it_cannot_time_alike() -> None:
    def no_why(self: Any, selectable: Any, event: int) -> None:
        selectable.doRead()

    def no_kind(self: Any, selectable: Any) -> None:
        why = selectable.doRead()
        del why

    def start(selectable: Any) -> None:
        pass

    def done(kind: Any, why: Any) -> None:
        pass

    assert with_timed_body(no_why, start, done, "event") is None
    assert with_timed_body(no_kind, start, done, "event") is None
    assert with_timed_body(len, start, done, "event") is None


def test_a_dispatch_patched_on_the_instance_is_kept_and_wrapped() -> None:
    """Someone's own patch of the reactor instance (another tool's wrapper) is not replaced
    by the recompiled method: the compiled wrapper times it, and it is back after."""
    require_accelerator()
    reactor = epollreactor.EPollReactor()
    seen: list[int] = []
    real: Any = reactor._doReadOrWrite

    def theirs(selectable: Any, fd: int, event: int) -> None:
        seen.append(fd)
        real(selectable, fd, event)

    reactor._doReadOrWrite = theirs  # type: ignore[method-assign]
    clock = FakeClock()
    hooks = HandlerHooks(reactor, clock, never, accelerate=True)
    hooks.install()
    try:
        assert hooks.hooks == ["runUntilCurrent", "_doReadOrWrite"]
        assert one_wrapped_read(reactor, hooks, clock) == {f"{HERE}.Chat.dataReceived": 1}
    finally:
        hooks.uninstall()
    assert seen == [7] and reactor._doReadOrWrite is theirs
