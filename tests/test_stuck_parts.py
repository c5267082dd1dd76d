"""The parts of the stuck path, one by one: the watchdog's hook and live look, the request
head reader, the guard's checks from another thread, the gauge, and the stuck server's
thread (started only while stuck, ended by the loop running again and by Monitor.stop())."""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from dashboard.metric_figures import figure_values
from dashboard.monitor import Monitor
from dashboard.probes.watchdog import ReactorPulse, Watchdog
from dashboard.testing import global_reactor
from dashboard.web import stuck_server
from dashboard.web.guard import GuardedResource, host_refusal, limits_refusal, method_refusal
from dashboard.web.host_check import HostAllowList
from dashboard.web.session import Sessions
from dashboard.web.stuck_request import _args, answer, head_end, parse_head
from dashboard.web.stuck_server import StuckServer

TOKEN = "parts-token-0123456789abcdef"


def stuck_here(event: threading.Event, seconds: float) -> None:
    """The watched thread: stuck until ``event`` is set."""
    event.wait(seconds)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def watchdog(pulse: ReactorPulse, clock: FakeClock, ident: int) -> Watchdog:
    errors: list[BaseException] = []
    return Watchdog(pulse, thread_ident=ident, threshold_s=0.1, clock=clock, on_error=errors.append)


def test_the_watchdog_tells_on_stuck_once_per_span_and_never_below_the_threshold() -> None:
    pulse, clock = ReactorPulse(), FakeClock()
    dog = watchdog(pulse, clock, threading.get_ident())
    told: list[float] = []
    dog.on_stuck = told.append
    pulse.tick = 100.0
    clock.now = 100.05
    assert dog.check() is False and told == []  # busy, under the threshold
    pulse.tick = float("inf")
    clock.now = 200.0
    assert dog.check() is False and told == []  # waiting in the poller
    pulse.tick = 200.0
    clock.now = 200.5
    assert dog.check() is True and told == [200.0]
    assert dog.check() is False and told == [200.0]  # the same span: told once


def test_look_now_takes_the_stuck_threads_stack_as_it_is() -> None:
    release = threading.Event()
    thread = threading.Thread(target=stuck_here, args=(release, 10.0))
    thread.start()
    try:
        pulse, clock = ReactorPulse(), FakeClock()
        assert thread.ident is not None
        dog = watchdog(pulse, clock, thread.ident)
        assert dog.look_now() is None  # never busy
        pulse.tick = 100.0
        clock.now = 100.05
        assert dog.look_now() is None  # under the threshold
        clock.now = 101.0
        look = dog.look_now()
        assert look is not None
        tick, stack, where, owner = look
        assert tick == 100.0 and owner == "program" and where == stack[-1]
        assert any(line.endswith("in stuck_here") for line in stack), stack
        assert pulse.captured is None  # a look publishes nothing
    finally:
        release.set()
        thread.join()


def test_parse_head_reads_only_the_two_answered_paths() -> None:
    head = b"GET /api/v1/snapshot?fresh=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: a=1; b=2\r\n"
    request = parse_head(head)
    assert request is not None
    assert request.postpath == (b"api", b"v1", b"snapshot") and request.query == b"fresh=1"
    assert request.header(b"host") == b"127.0.0.1" and request.cookie(b"b") == b"2"
    assert parse_head(b"GET /metrics HTTP/1.0\n") is not None
    for other in (b"GET / HTTP/1.1", b"GET /api/v1/events HTTP/1.1", b"GET /static/x HTTP/1.1"):
        assert parse_head(other + b"\r\n") is None
    assert parse_head(b"GET /metrics\r\n") is None  # no protocol: the reactor's 400
    assert parse_head(b"GET /metrics HTTP/1.1\r\nbad header\r\n") is None
    mounted = b"GET /dash/metrics HTTP/1.1\r\n"
    assert parse_head(mounted) is None
    assert parse_head(mounted, (b"dash",)) is not None


def test_the_guards_checks_work_from_any_thread() -> None:
    guard = GuardedResource(GuardedResource(None), token=TOKEN)  # type: ignore[arg-type]
    assert guard.sessions is not None
    value = guard.sessions.issue()
    results: list[Any] = []

    def check() -> None:
        results.append(guard.access_check([b"metrics"], None, value)[1])
        results.append(guard.access_check([b"metrics"], b"Bearer " + TOKEN.encode(), None)[1])
        refusal = guard.access_check([b"metrics"], b"Bearer nope", None)[0]
        results.append(refusal.status if refusal else None)

    thread = threading.Thread(target=check)
    thread.start()
    thread.join()
    assert results == ["cookie", "bearer", 401]
    hosts = HostAllowList()
    assert host_refusal([b"127.0.0.1:1"], b"HTTP/1.1", None, hosts) is None
    refusal = host_refusal([b"evil.example"], b"HTTP/1.1", None, hosts)
    assert refusal is not None and refusal.status == 421
    assert limits_refusal(b"/" + b"a" * 5000, []) is not None
    refusal = method_refusal(b"POST")
    assert refusal is not None and refusal.headers == ((b"Allow", b"GET, HEAD"),)


def test_sessions_are_checked_safely_while_another_thread_revokes() -> None:
    sessions = Sessions(3600, max_revoked=8)
    values = [sessions.issue() for _ in range(200)]
    errors: list[BaseException] = []
    done = threading.Event()

    def checker() -> None:
        try:
            while not done.is_set():
                for value in values:
                    sessions.check(value)
        except BaseException as exc:  # a torn read would raise here
            errors.append(exc)

    thread = threading.Thread(target=checker)
    thread.start()
    for value in values:
        sessions.revoke(value)
    done.set()
    thread.join()
    assert errors == [] and sessions.key_renewals > 0
    assert all(sessions.check(value) is None for value in values)


def test_the_stuck_gauge_is_zero_while_running_and_the_seconds_while_stuck() -> None:
    loop: dict[str, Any] = {"busy_ratio": 0.1, "stuck": None}
    assert figure_values({"loop": loop})["twisted.reactor.stuck"] == [((), 0.0)]
    loop["stuck"] = {"since": 1.0, "for_s": 2.5, "stack": [], "where": None}
    assert figure_values({"loop": loop})["twisted.reactor.stuck"] == [((), 2.5)]


class Box:
    def __init__(self, value: float | None) -> None:
        self.value = value

    def __call__(self) -> float | None:
        return self.value


def thread_named(name: str) -> bool:
    return any(thread.name == name for thread in threading.enumerate())


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_the_thread_serves_only_while_its_span_lasts() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    guard = GuardedResource(GuardedResource(None))  # type: ignore[arg-type]
    from twisted.web.server import Site

    site = Site(guard)
    port: Any = type("FakePort", (), {"socket": listener, "factory": site, "connected": 1})()
    busy = Box(None)
    handed: list[Any] = []
    sample = json.dumps({"seq": 3, "loop": {"stuck": None}}).encode()
    server = StuckServer(
        busy_since=busy,
        stuck_now=lambda: {"since": 5.0, "for_s": 1.0, "stack": ["x"], "where": "x"},
        newest=lambda: sample,
        families=lambda data: [],
        call_from_thread=lambda fn, *args: handed.append(args),
        on_error=lambda exc: None,
    )
    assert server.add_port(port, guard)
    try:
        server.loop_stuck(5.0)  # the span already ended: nothing starts
        assert wait_until(lambda: not server.running)
        busy.value = 5.0
        server.loop_stuck(5.0)
        assert server.running and server.starts_total == 2
        with socket.create_connection(listener.getsockname(), timeout=5) as sock:
            sock.sendall(b"GET /api/v1/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        body = json.loads(raw.partition(b"\r\n\r\n")[2])
        assert body["seq"] == 3 and body["loop"]["stuck"]["where"] == "x"
        page = socket.create_connection(listener.getsockname(), timeout=5)
        page.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert wait_until(lambda: len(handed) == 1)
        assert handed[0][3] == b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        handed[0][1].close()
        page.close()
        busy.value = None  # the loop runs again
        assert wait_until(lambda: not server.running)
        assert not thread_named("reactor-dashboard-stuck")
    finally:
        server.close()
        listener.close()


@pytest_twisted.ensureDeferred
async def test_monitor_stop_ends_the_stuck_thread_and_a_healthy_loop_starts_none() -> None:
    monitor = Monitor(global_reactor(), interval=0.05, history=20)
    monitor.start()
    port: Any = await monitor.listen(0)
    try:
        assert len(monitor.stuck.listeners) == 1
        from twisted.internet import task

        await task.deferLater(global_reactor(), 0.4, lambda: None)  # a healthy loop runs
        # only a busy span past the block threshold starts it (a descheduled process can
        # have one on a loaded machine): never more starts than blocks recorded
        starts_total = monitor.stuck.starts_total
        assert starts_total <= monitor.loop.blocks_total  # blocks end on this thread: all in
        assert not thread_named("reactor-dashboard-stuck")
        assert monitor.latest().data["web"]["stuck"]["ports"] == 1
        # as if the loop were stuck (the reactor thread cannot be stuck while it runs this)
        monitor.stuck.busy_since = lambda: 7.0
        monitor.stuck.loop_stuck(7.0)
        assert monitor.stuck.running
        monitor.stop()
        assert not monitor.stuck.running
        assert not thread_named("reactor-dashboard-stuck")
    finally:
        monitor.stop()
        await port.stopListening()


def test_answer_while_stuck_refuses_what_it_cannot_serve() -> None:
    from twisted.internet.testing import MemoryReactorClock

    monitor = Monitor(MemoryReactorClock())
    listener = socket.socket()
    try:
        tls_port: Any = type("TLSPort", (), {"socket": listener, "factory": object()})()
        with pytest.raises(ValueError, match="not a plain"):
            monitor.answer_while_stuck(tls_port, monitor.resource(), "/dashboard")
        with pytest.raises(ValueError, match="resource"):
            monitor.answer_while_stuck(tls_port, object(), "/dashboard")  # type: ignore[arg-type]
        assert monitor.stuck.listeners == ()
    finally:
        listener.close()


SNAPSHOT_HEAD = b"GET /api/v1/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
PAGE_HEAD = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class Serving:
    """A StuckServer on a plain listening socket, stuck (``busy_since`` 5.0) from the start;
    what it hands back is kept in ``handed`` (never adopted unless a test says so)."""

    def __init__(self, listener: socket.socket | None = None) -> None:
        from twisted.web.server import Site

        self.listener = listener if listener is not None else socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.setblocking(False)
        guard = GuardedResource(GuardedResource(None))  # type: ignore[arg-type]
        port: Any = type("FakePort", (), {})()
        port.socket, port.factory, port.connected = self.listener, Site(guard), 1
        self.handed: list[tuple[Any, ...]] = []
        self.errors: list[BaseException] = []
        sample = json.dumps({"seq": 3, "loop": {"stuck": None}}).encode()
        self.server = StuckServer(
            busy_since=lambda: 5.0,
            stuck_now=lambda: {"since": 5.0, "for_s": 1.0, "stack": ["x"], "where": "x"},
            newest=lambda: sample,
            families=lambda data: [],
            call_from_thread=lambda fn, *args: self.handed.append(args),
            on_error=self.errors.append,
        )
        assert self.server.add_port(port, guard)
        self.server.loop_stuck(5.0)
        assert self.server.running

    @property
    def address(self) -> Any:
        return self.listener.getsockname()

    def ask(self, head: bytes, timeout_s: float = 5.0) -> tuple[bytes, float]:
        started = time.monotonic()
        with socket.create_connection(self.address, timeout=timeout_s) as sock:
            sock.sendall(head)
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        return raw, time.monotonic() - started

    def close(self) -> None:
        self.server.close()
        for args in self.handed:
            args[1].close()
        self.listener.close()


def test_a_trickling_client_holds_neither_the_thread_nor_stop() -> None:
    serving = Serving()
    stop = threading.Event()
    trickler = socket.create_connection(serving.address, timeout=5)

    def trickle() -> None:
        with contextlib.suppress(OSError):
            while not stop.wait(0.05):
                trickler.send(b"x")

    thread = threading.Thread(target=trickle)
    try:
        trickler.sendall(SNAPSHOT_HEAD)
        assert trickler.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")
        thread.start()  # a byte every 50 ms after its answer, never closing
        time.sleep(0.2)
        for _ in range(4):  # every other client is answered at once all the same
            raw, elapsed_s = serving.ask(SNAPSHOT_HEAD)
            assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and elapsed_s < 1.0
        started = time.monotonic()
        serving.server.close()
        assert time.monotonic() - started < 0.5 and not serving.server.running
    finally:
        stop.set()
        if thread.ident is not None:
            thread.join()
        trickler.close()
        serving.close()


def test_idle_connections_past_the_pending_slots_do_not_spin_the_thread() -> None:
    serving = Serving()
    idle = [socket.create_connection(serving.address, timeout=5) for _ in range(40)]
    try:
        time.sleep(0.1)
        before = serving.server.polls_total
        time.sleep(0.5)  # 32 being read (for 1 s), 8 left in the backlog
        passes = serving.server.polls_total - before
        assert passes < 40, passes  # it sleeps in poll(): 50 ms a pass at most
    finally:
        for sock in idle:
            sock.close()
        serving.close()


class FailingListener(socket.socket):
    """A listening socket whose accept() fails as with too many open files."""

    def accept(self) -> tuple[socket.socket, Any]:
        raise OSError(errno.EMFILE, "Too many open files")


def test_accept_errors_back_off_and_are_told_once() -> None:
    serving = Serving(FailingListener())
    waiting = socket.create_connection(serving.address, timeout=5)  # readable from now on
    try:
        time.sleep(0.1)
        before = serving.server.polls_total
        time.sleep(0.5)
        passes = serving.server.polls_total - before
        assert passes < 40, passes
        assert 1 <= serving.server.accept_errors_total <= 12
        assert len(serving.errors) == 1 and isinstance(serving.errors[0], OSError)
    finally:
        waiting.close()
        serving.close()


def test_requests_past_the_hand_back_limit_are_told_the_loop_is_stuck(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stuck_server, "MAX_HANDED_BACK", 3)
    serving = Serving()
    pages = [socket.create_connection(serving.address, timeout=5) for _ in range(3)]
    try:
        for page in pages:
            page.sendall(PAGE_HEAD)
        assert wait_until(lambda: len(serving.handed) == 3)
        assert serving.server.waiting_for_the_loop == 3
        raw, elapsed_s = serving.ask(PAGE_HEAD)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ") and elapsed_s < 1.0
        assert b"\r\nRetry-After: 5\r\n" in head and b"\r\nConnection: close" in head
        assert json.loads(body)["error"] == "loop_stuck"
        assert len(serving.handed) == 3
        serving.handed[0][4]()  # the reactor took one: room for one more
        assert serving.server.waiting_for_the_loop == 2
        with socket.create_connection(serving.address, timeout=5) as page:
            page.sendall(PAGE_HEAD)
            assert wait_until(lambda: len(serving.handed) == 4)
        assert serving.server.as_json()["handed_back_total"] == 4
    finally:
        for page in pages:
            page.close()
        serving.close()


def twisted_args(query: bytes) -> dict[bytes, list[bytes]]:
    """The args Twisted's own Request reads off ``/x?<query>``."""
    from twisted.web.http import Request
    from twisted.web.test.requesthelper import DummyChannel

    request = Request(DummyChannel())  # type: ignore[arg-type]
    request.gotLength(0)
    request.requestReceived(b"GET", b"/x?" + query, b"HTTP/1.1")
    return dict(request.args)


@pytest.mark.parametrize(
    "query",
    [
        b"fresh",
        b"nocache",
        b"fresh=1&x",
        b"a;b=2",
        b"=x",
        b"&&;",
        b"fresh=%31",
        b"a=1=2",
        b"a+b=c+d",
        b"a=&a=2",
        b"%zz=1",
        b"",
    ],
)
def test_query_parameters_are_read_as_twisted_reads_them(query: bytes) -> None:
    assert _args(query) == twisted_args(query)


def test_a_parameter_without_a_value_is_ignored_on_both_paths() -> None:
    guard = GuardedResource(GuardedResource(None))  # type: ignore[arg-type]
    sample = json.dumps({"seq": 1, "loop": {"stuck": None}}).encode()
    for head in (
        b"GET /api/v1/snapshot?fresh HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        b"GET /metrics?nocache HTTP/1.1\r\nHost: 127.0.0.1\r\n",
    ):
        request = parse_head(head)
        assert request is not None
        reply = answer(
            request,
            guard=guard,
            arrived_on=None,
            newest=lambda: sample,
            stuck_now=lambda: None,
            families=lambda data: [],
        )
        assert reply is not None and reply.status == 200, reply


def test_head_end_and_cookies_as_twisted_reads_them() -> None:
    assert head_end(b"GET / HTTP/1.0\n\nX\r\n\r\n") == len(b"GET / HTTP/1.0\n\n")
    assert head_end(b"GET / HTTP/1.1\r\n\r\nX\n\n") == len(b"GET / HTTP/1.1\r\n\r\n")
    assert head_end(b"GET / HTTP/1.1\r\n") == -1
    head = b"GET /metrics HTTP/1.1\r\nCookie: a=1;  b=2 ;b=3\r\nCookie: a=4\r\n"
    request = parse_head(head)
    assert request is not None
    assert request.cookie(b"a") == b"4" and request.cookie(b"b") == b"3"
    assert request.cookie(b"b ") is None
    twice = parse_head(b"GET /metrics HTTP/1.1\r\nAuthorization: a\r\nAuthorization: b\r\n")
    assert twice is not None and twice.header(b"authorization") == b"b"  # getHeader's


def test_closed_ports_are_pruned_when_a_port_is_added() -> None:
    serving = Serving()
    try:
        other = socket.socket()
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        listener = serving.server.listeners[0]
        serving.server.close()
        serving.listener.close()
        assert serving.server.add_port(
            type("P", (), {"socket": other, "factory": listener.port.factory})(), listener.guard
        )
        assert [each.socket for each in serving.server.listeners] == [other]
        other.close()
    finally:
        serving.close()


@pytest_twisted.ensureDeferred
async def test_a_handed_back_connection_is_fed_through_its_transport_and_dropped_on_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from twisted.internet import task, tcp
    from twisted.internet.protocol import Factory, Protocol

    reactor: Any = global_reactor()
    lost: list[Any] = []
    fed: list[bytes] = []

    class Failing(Protocol):
        def dataReceived(self, data: bytes) -> None:
            raise ValueError("boom")

        def connectionLost(self, reason: Any = None) -> None:
            lost.append(reason)

    original = tcp.Connection._dataReceived

    def counted(self: Any, data: bytes) -> Any:
        fed.append(data)
        return original(self, data)

    monkeypatch.setattr(tcp.Connection, "_dataReceived", counted)
    port = reactor.listenTCP(0, Factory.forProtocol(Failing), interface="127.0.0.1")
    plain = socket.socket()
    plain.bind(("127.0.0.1", 0))
    plain.listen(1)
    client = socket.create_connection(plain.getsockname(), timeout=5)
    try:
        sock, address = plain.accept()
        sock.setblocking(False)
        adopted: list[bool] = []
        stuck_server._adopt(
            port, sock, address, b"GET / HTTP/1.1\r\n\r\n", lambda: adopted.append(True)
        )
        await task.deferLater(reactor, 0.1, lambda: None)
        assert adopted == [True] and fed == [b"GET / HTTP/1.1\r\n\r\n"]
        assert len(lost) == 1 and lost[0].check(ValueError)
        assert not any(isinstance(each, tcp.Server) for each in reactor.getReaders())
        assert client.recv(10) == b""  # closed through the transport
    finally:
        client.close()
        plain.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_real_tls_port_is_not_served_while_stuck() -> None:
    import twisted.test

    pem = Path(twisted.test.__file__).parent / "server.pem"
    monitor = Monitor(global_reactor(), interval=0.05, history=20)
    monitor.start()
    port: Any = None
    try:
        port = await monitor.listen(f"ssl:0:interface=127.0.0.1:privateKey={pem}:certKey={pem}")
        assert port.getHost().port > 0
        assert monitor.stuck.listeners == ()
        assert monitor.sample().data["web"]["stuck"]["ports"] == 0
        monitor.stuck.busy_since = lambda: 7.0
        monitor.stuck.loop_stuck(7.0)  # nothing to serve: no thread
        assert not monitor.stuck.running and monitor.stuck.starts_total == 0
    finally:
        monitor.stop()
        if port is not None:
            await port.stopListening()
