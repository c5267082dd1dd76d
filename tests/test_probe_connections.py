# mypy: allow-untyped-calls
"""The connections probe.

Unit tests drive real ``tcp.Server`` / ``unix.Server`` transports over a fake socket on a
``MemoryReactorClock`` (exact ages from the Clock); integration tests open real loopback
connections on the reactor under test and assert exact deltas.
"""

from __future__ import annotations

import datetime
import errno
import gc
import itertools
import json
import socket
import time
import tracemalloc
import types
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar, cast

import pytest
import pytest_twisted
from twisted.internet import address, defer, endpoints, protocol, tcp, unix
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web import resource, server

from dashboard import accel
from dashboard.probes import connection_detail, connection_registry, connections, tcp_counters
from dashboard.probes.base import ProbeErrors
from dashboard.probes.connection_detail import format_address, pending_write_bytes
from dashboard.probes.connection_registry import ConnectionRegistry, kind_of
from dashboard.probes.connections import ConnectionsProbe

_F = TypeVar("_F", bound=Callable[..., Any])


def async_test(func: _F) -> _F:
    """``pytest_twisted.ensureDeferred``, typed."""
    return cast(_F, pytest_twisted.ensureDeferred(func))


# Every attribute the probe patches; install/uninstall must put back the very same objects.
RECEIVED = (tcp.Connection, "_dataReceived")
WRITTEN = (tcp.Connection, "writeSomeData")
PATCHED: list[tuple[type, str]] = [
    (tcp.Connection, "__init__"),
    (tcp.Connection, "connectionLost"),
    RECEIVED,
    WRITTEN,
    (tcp.BaseClient, "failIfNotConnected"),
    (tcp.Server, "__init__"),
    (tcp.Port, "startListening"),
    (tcp.Port, "connectionLost"),
    (unix.Port, "startListening"),
]
if connection_detail.TLSMemoryBIOProtocol is not None:
    PATCHED.append((connection_detail.TLSMemoryBIOProtocol, "makeConnection"))

#: What the probe patches besides, when the kernel counts TCP bytes: TCP transports get
#: Twisted's own functions back (hiding the hooks), unix servers the hook again.
KERNEL_PATCHED: list[tuple[type, str]] = [
    (tcp.Server, "_dataReceived"),
    (tcp.Server, "writeSomeData"),
    (tcp.Client, "_dataReceived"),
    (tcp.Client, "writeSomeData"),
    (unix.Server, "_dataReceived"),
    (unix.Server, "writeSomeData"),
]

_MISSING = object()


def class_attrs(patched: list[tuple[type, str]]) -> list[object]:
    return [vars(owner).get(name, _MISSING) for owner, name in patched]


# -- a fake socket, so real transport classes run without file descriptors ------------------


class FakeSocket:
    """Enough of a socket for ``tcp.Server``: ``send`` accepts ``accept`` bytes per call."""

    def __init__(self, local: Any = ("127.0.0.1", 8080), accept: int = 1 << 30) -> None:
        self.local = local
        self.accept = accept
        self.closed = False

    def setblocking(self, flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return -1

    def getsockname(self) -> Any:
        if self.closed:
            raise OSError(9, "Bad file descriptor")
        return self.local

    def send(self, data: Any) -> int:
        return min(len(data), self.accept)

    def shutdown(self, how: int) -> None:
        pass

    def getsockopt(self, *args: Any) -> Any:
        raise OSError(errno.ENOPROTOOPT, "Protocol not available")  # no kernel TCP counts

    def setsockopt(self, *args: Any) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class Recorder(protocol.Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost = False
        self.made = defer.Deferred[None]()

    @property
    def tr(self) -> Any:
        """The transport, as Any (ITransport's interface methods do not type-check)."""
        return self.transport

    def connectionMade(self) -> None:
        self.made.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.lost = True


#: ``tcp.Server`` taking a fake socket and a memory reactor (its annotations want real ones).
TCPServer: Any = tcp.Server


def fake_server(
    reactor: MemoryReactorClock,
    proto: protocol.Protocol | None = None,
    peer: tuple[str, int] = ("10.0.0.1", 5555),
    sock: FakeSocket | None = None,
) -> tcp.Server:
    proto = proto if proto is not None else Recorder()
    t: tcp.Server = TCPServer(sock or FakeSocket(), proto, peer, None, 0, reactor)
    proto.makeConnection(t)
    return t


def close(t: Any) -> None:
    t.connectionLost(Failure(ConnectionDone()))


@pytest.fixture
def mreactor() -> MemoryReactorClock:
    return MemoryReactorClock()


@pytest.fixture
def probe(
    mreactor: MemoryReactorClock, errors: ProbeErrors, accelerate: bool
) -> Iterator[ConnectionsProbe]:
    # Fake sockets: the hooks count (the kernel's counts are tested on real sockets below).
    p = ConnectionsProbe(
        mreactor, errors, mreactor.seconds, top_n=100, accelerate=accelerate, kernel_counts=False
    )
    p.install()
    yield p
    p.uninstall()


# -- unit tests -------------------------------------------------------------------------------


def test_kind_checks_unix_before_tcp() -> None:
    assert kind_of(unix.Server) == "unix_server"
    assert kind_of(unix.Client) == "unix_client"
    assert kind_of(tcp.Server) == "tcp_server"
    assert kind_of(tcp.Client) == "tcp_client"
    assert kind_of(tcp.Connection) == "other"


def test_format_address() -> None:
    assert format_address(address.IPv4Address("TCP", "127.0.0.1", 80)) == "127.0.0.1:80"
    assert format_address(address.IPv6Address("TCP", "::1", 443)) == "[::1]:443"
    assert format_address(address.UNIXAddress(b"/tmp/x.sock")) == "/tmp/x.sock"
    assert format_address(address.UNIXAddress(b"\0abstract")) == "@abstract"
    assert format_address(address.UNIXAddress(None)) is None


def test_text_is_decoded_and_bounded() -> None:
    assert connection_detail.text(b"GET") == "GET"
    assert connection_detail.text(b"/\xff\xfe") == "/\ufffd\ufffd"
    long = connection_detail.text(b"x" * 1000)
    assert len(long) == 200 and long.endswith("...")


def test_open_close_counts_and_ages(probe: ConnectionsProbe, mreactor: MemoryReactorClock) -> None:
    before = probe.collect()
    a = fake_server(mreactor, peer=("10.0.0.1", 1111))
    mreactor.advance(2.5)
    b = fake_server(mreactor, peer=("10.0.0.2", 2222))
    mreactor.advance(1.0)
    snap = probe.collect()
    assert snap["open"] - before["open"] == 2
    assert snap["opened_total"] - before["opened_total"] == 2
    assert snap["by_kind"]["tcp_server"] - before["by_kind"]["tcp_server"] == 2
    first, second = snap["items"][-2:]
    assert first == {
        "kind": "tcp_server",
        "local": "127.0.0.1:8080",
        "peer": "10.0.0.1:1111",
        "protocol": f"{Recorder.__module__}.Recorder",
        "age_s": 3.5,
        "pending_write_bytes": 0,
        "bytes_in": 0,
        "bytes_out": 0,
        "tls": False,
        "producer_paused": False,
    }
    assert (second["peer"], second["age_s"]) == ("10.0.0.2:2222", 1.0)
    close(a)
    close(a)  # a second connectionLost is ignored by Twisted and by the probe
    after = probe.collect()
    assert after["open"] - before["open"] == 1
    assert after["closed_total"] - before["closed_total"] == 1
    assert [i["peer"] for i in after["items"]][-1:] == ["10.0.0.2:2222"]
    close(b)
    assert probe.collect()["open"] == before["open"]


def test_unix_server_kind(probe: ConnectionsProbe, mreactor: MemoryReactorClock) -> None:
    before = probe.collect()["by_kind"]
    t = unix.Server(FakeSocket(local="/tmp/s.sock"), Recorder(), "", None, 0, mreactor)
    snap = probe.collect()
    assert snap["by_kind"]["unix_server"] - before["unix_server"] == 1
    assert snap["by_kind"]["tcp_server"] == before["tcp_server"]
    assert snap["items"][-1]["local"] == "/tmp/s.sock"
    close(t)


def test_adopts_what_is_open_at_install(mreactor: MemoryReactorClock, errors: ProbeErrors) -> None:
    existing = fake_server(mreactor, peer=("10.0.0.9", 9999))
    factory: Any = RecordingFactory()
    port = tcp.Port(0, factory, interface="127.0.0.1", reactor=mreactor)
    port.startListening()
    p = ConnectionsProbe(mreactor, errors, mreactor.seconds, kernel_counts=False)
    p.install()
    try:
        mreactor.advance(4)
        snap = p.collect()
        assert (snap["open"], snap["opened_total"], snap["adopted_at_install"]) == (1, 0, 1)
        assert snap["items"][0]["peer"] == "10.0.0.9:9999"
        assert snap["items"][0]["age_s"] == 4.0  # counted from the install
        assert snap["listening"] == [
            {
                "address": f"127.0.0.1:{port.getHost().port}",
                "factory": f"{RecordingFactory.__module__}.RecordingFactory",
                "accepted_total": 0,
                "kind": "tcp",
                "tls": False,
            }
        ]
        close(existing)
        port.connectionLost(Failure(ConnectionDone()))
        snap = p.collect()
        assert (snap["open"], snap["closed_total"], snap["listening"]) == (0, 1, [])
    finally:
        p.uninstall()
    assert errors.counts == {}


def test_items_oldest_first_and_capped(mreactor: MemoryReactorClock, errors: ProbeErrors) -> None:
    p = ConnectionsProbe(mreactor, errors, mreactor.seconds, top_n=3, kernel_counts=False)
    p.install()
    try:
        made = []
        for i in range(5):
            made.append(fake_server(mreactor, peer=("10.0.0.1", 1000 + i)))
            mreactor.advance(1)
        snap = p.collect()
        assert [i["peer"] for i in snap["items"]] == [f"10.0.0.1:{1000 + i}" for i in range(3)]
        assert [i["age_s"] for i in snap["items"]] == [5.0, 4.0, 3.0]
        assert (snap["items_total"], snap["items_truncated"]) == (5, True)
        close(made[0])
        snap = p.collect()
        assert [i["peer"] for i in snap["items"]] == [f"10.0.0.1:{1000 + i}" for i in (1, 2, 3)]
        assert (snap["items_total"], snap["items_truncated"]) == (4, True)
        for t in made[1:]:
            close(t)
        assert (p.collect()["items_total"], p.collect()["items_truncated"]) == (0, False)
    finally:
        p.uninstall()


def test_bytes_and_pending_write(probe: ConnectionsProbe, mreactor: MemoryReactorClock) -> None:
    sock = FakeSocket(accept=1000)  # the kernel takes 1000 bytes per send
    proto = Recorder()
    t = fake_server(mreactor, proto, sock=sock)
    assert t._dataReceived(b"hello") is None
    assert t._dataReceived(b"") is not None  # CONNECTION_DONE passes through
    assert proto.received == b"hello"
    t.write(b"x" * 70_000)
    t.doWrite()
    snap = probe.collect()
    assert snap["hot_path"] == ("compiled" if probe.accelerated else "python")
    item = snap["items"][-1]
    assert (item["bytes_in"], item["bytes_out"]) == (5, 1000)
    assert item["pending_write_bytes"] == 69_000 == pending_write_bytes(t)
    close(t)


def test_slow_consumer_and_producer_paused(
    probe: ConnectionsProbe, mreactor: MemoryReactorClock
) -> None:
    class Producer:
        paused = False

        def pauseProducing(self) -> None:
            self.paused = True

        def resumeProducing(self) -> None:
            self.paused = False

        def stopProducing(self) -> None:
            pass

    slow = fake_server(mreactor, sock=FakeSocket(accept=0))
    fine = fake_server(mreactor, sock=FakeSocket(accept=0))
    producer = Producer()
    slow.registerProducer(producer, True)
    slow.write(b"y" * 70_000)  # above bufferSize (65536): the transport pauses its producer
    fine.write(b"z" * 100)
    snap = probe.collect()
    assert producer.paused
    assert snap["slow_consumers"] == 1
    [shown] = snap["slow_consumer_items"]
    assert (shown["pending_write_bytes"], shown["producer_paused"]) == (70_000, True)
    close(slow)
    close(fine)
    assert probe.collect()["slow_consumers"] == 0


class Hang(resource.Resource):
    """Never finishes a request; keeps them for the test."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[server.Request] = []

    def render(self, request: server.Request) -> Any:
        self.requests.append(request)
        return server.NOT_DONE_YET


def test_http_in_flight_requests_with_clock(
    probe: ConnectionsProbe, mreactor: MemoryReactorClock
) -> None:
    hang = Hang()
    site = server.Site(hang, reactor=mreactor)
    proto = site.buildProtocol(address.IPv4Address("TCP", "10.0.0.1", 5555))
    assert proto is not None
    t = fake_server(mreactor, proto)
    mreactor.advance(2)
    long_uri = b"/" + b"a" * 300
    t._dataReceived(b"GET /slow?q=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    mreactor.advance(3)
    item = probe.collect()["items"][-1]
    assert item["protocol"] == "twisted.web.http.HTTPChannel"
    assert item["age_s"] == 5.0
    assert item["requests"] == [{"method": "GET", "uri": "/slow?q=1", "age_s": 3.0}]
    assert item["requests_in_flight"] == 1
    hang.requests[0].finish()
    # Request line in, headers still arriving: the request shows what the line said.
    t._dataReceived(b"POST " + long_uri + b" HTTP/1.1\r\nHost: x\r\n")
    mreactor.advance(0.25)
    [req] = probe.collect()["items"][-1]["requests"]
    assert (req["method"], req["age_s"], len(req["uri"])) == ("POST", 0.25, 200)
    assert req["uri"] == "/" + "a" * 196 + "..."
    t._dataReceived(b"Content-Length: 0\r\n\r\n")
    [req] = probe.collect()["items"][-1]["requests"]
    assert (req["method"], req["uri"][:4]) == ("POST", "/aaa")
    hang.requests[1].finish()
    assert probe.collect()["items"][-1]["requests"] == []
    close(t)


def hook_functions() -> list[object]:
    """The probe's hook functions still alive (found by their code object: ``functools.wraps``
    gives them the names of the functions they wrap), and its compiled hooks."""
    gc.collect()
    compiled = accel.built.IOHook if accel.built is not None else ()
    return [
        obj
        for obj in gc.get_objects()
        if isinstance(obj, compiled)
        or (
            # a class's __code__ is a descriptor (Cython's function type has one)
            isinstance(code := getattr(obj, "__code__", None), types.CodeType)
            and code.co_qualname.startswith("ConnectionsProbe.")
            and "<locals>" in code.co_qualname
            and code.co_filename == connections.__file__
        )
    ]


@pytest.mark.parametrize("kernel_counts", [True, False], ids=["kernel", "hooks"])
def test_patches_restored_by_identity_and_100_cycles(
    mreactor: MemoryReactorClock, errors: ProbeErrors, accelerate: bool, kernel_counts: bool
) -> None:
    patched_names = PATCHED + (KERNEL_PATCHED if kernel_counts else [])
    original = class_attrs(patched_names)
    p = ConnectionsProbe(
        mreactor, errors, mreactor.seconds, accelerate=accelerate, kernel_counts=kernel_counts
    )
    p.install()
    patched = class_attrs(patched_names)
    assert all(a is not b for a, b in zip(original, patched, strict=True))
    if kernel_counts:  # TCP transports run Twisted's own functions, unhooked
        for cls in (tcp.Server, tcp.Client):
            assert vars(cls)["_dataReceived"] is original[PATCHED.index(RECEIVED)]
            assert vars(cls)["writeSomeData"] is original[PATCHED.index(WRITTEN)]
    p.install()  # idempotent: no double wrapping
    assert all(a is b for a, b in zip(class_attrs(patched_names), patched, strict=True))
    p.uninstall()
    assert all(a is b for a, b in zip(class_attrs(patched_names), original, strict=True))
    del patched
    registries = []
    for _ in range(100):
        p.install()
        registries.append(weakref.ref(p.registry))
        t = fake_server(mreactor)
        assert p.collect()["open"] == 1
        p.uninstall()
        close(t)
    assert all(a is b for a, b in zip(class_attrs(patched_names), original, strict=True))
    assert p.registry.entries == {} and p.registry.ports == {}
    t = fake_server(mreactor)  # not tracked any more
    assert p.registry.entries == {}
    close(t)
    gc.collect()
    # Nothing left behind: old registries are gone, and so is every hook function.
    assert [r for r in registries[:-1] if r() is not None] == []
    assert hook_functions() == []
    p.install()
    # The check does see live hooks: one per patch, and unix.Server's two with kernel counts.
    assert len(hook_functions()) == len(PATCHED) + 2 * kernel_counts
    p.uninstall()
    assert hook_functions() == []
    assert errors.counts == {}


def test_registry_does_not_keep_transports_alive(
    probe: ConnectionsProbe, mreactor: MemoryReactorClock
) -> None:
    before = probe.collect()
    t = fake_server(mreactor)
    ref = weakref.ref(t)
    close(t)
    del t
    gc.collect()
    assert ref() is None
    # Dropped without connectionLost (paused, removed from the reactor): collected anyway,
    # and counted as abandoned.
    t = fake_server(mreactor)
    ref = weakref.ref(t)
    mreactor.removeAll()
    t.protocol.transport = None
    del t
    gc.collect()
    assert ref() is None
    snap = probe.collect()
    assert snap["open"] == before["open"]
    assert snap["abandoned_total"] - before["abandoned_total"] == 1


def test_hook_faults_are_counted_not_raised(
    probe: ConnectionsProbe, mreactor: MemoryReactorClock, errors: ProbeErrors
) -> None:
    sock = FakeSocket(accept=3)
    proto = Recorder()
    t = fake_server(mreactor, proto, sock=sock)
    entry = probe.registry.entries[id(t)]
    entry.bytes_in = None  # type: ignore[assignment]  # corrupt the bookkeeping
    entry.bytes_out = None  # type: ignore[assignment]
    assert t._dataReceived(b"abc") is None
    assert proto.received == b"abc"  # the user's protocol got its data all the same
    assert t.writeSomeData(b"hello") == 3  # the original's result, unchanged
    assert errors.counts == {"connections": 2}
    assert "TypeError" in errors.last["connections"]

    # An exception of the original passes through unchanged (and is not the probe's error).
    class Boom(protocol.Protocol):
        def dataReceived(self, data: bytes) -> None:
            raise ValueError("user bug")

    entry.bytes_in = entry.bytes_out = 0
    tr: Any = t
    tr.protocol = Boom()
    with pytest.raises(ValueError, match="user bug"):
        t._dataReceived(b"x")
    with pytest.raises(AttributeError):
        TCPServer(object(), Recorder(), ("1.2.3.4", 5), None, 0, mreactor)
    assert errors.counts == {"connections": 2}
    assert entry.bytes_in == 1
    tr.protocol = proto
    close(t)


def test_collect_10k_connections_cost_and_memory(
    mreactor: MemoryReactorClock, errors: ProbeErrors
) -> None:
    n = 10_000
    p = ConnectionsProbe(mreactor, errors, time.monotonic, top_n=100, kernel_counts=False)
    p.install()
    try:
        tracemalloc.start()
        snap0 = tracemalloc.take_snapshot()
        made = [fake_server(mreactor, peer=("10.0.0.1", i % 60000 + 1)) for i in range(n)]
        snap1 = tracemalloc.take_snapshot()
        tracemalloc.stop()
        ours = [tracemalloc.Filter(True, connection_registry.__file__)]
        grown = sum(
            stat.size_diff
            for stat in snap1.filter_traces(ours).compare_to(snap0.filter_traces(ours), "filename")
        )
        per_connection = grown / n
        for t in made[: n // 2]:
            t.write(b"x" * 10)
        timings = []
        for _ in range(20):
            start = time.perf_counter()
            snap = p.collect()
            timings.append(time.perf_counter() - start)
        best_ms = min(timings) * 1000
        print(f"\n10k connections: collect {best_ms:.2f} ms, {per_connection:.0f} B/connection")
        assert snap["open"] == n and len(snap["items"]) == 100 and snap["items_truncated"]
        assert best_ms < 5.0
        assert per_connection <= 400
        for t in made:
            close(t)
        assert p.collect()["open"] == 0
    finally:
        p.uninstall()


# -- integration: real reactor, loopback --------------------------------------------------------


def the_reactor() -> Any:
    """The reactor under test (installed by pytest-twisted), as Any: Twisted's interface
    annotations do not type-check as methods."""
    from twisted.internet import reactor

    return reactor


@pytest.fixture(params=[True, False], ids=["kernel", "hooks"])
def kernel_counts(request: pytest.FixtureRequest) -> bool:
    """Live tests run with TCP bytes counted by the kernel and by the hooks."""
    wanted: bool = request.param
    if wanted:
        assert tcp_counters.available(), "this Linux kernel should count TCP bytes"
    return wanted


@pytest.fixture
def live(errors: ProbeErrors, accelerate: bool, kernel_counts: bool) -> Iterator[ConnectionsProbe]:
    reactor = the_reactor()

    p = ConnectionsProbe(
        reactor,
        errors,
        reactor.seconds,
        top_n=1000,
        accelerate=accelerate,
        kernel_counts=kernel_counts,
    )
    p.install()
    yield p
    p.uninstall()
    assert errors.counts == {}


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    reactor = the_reactor()

    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await deferLater(reactor, 0.005)


class RecordingFactory(protocol.Factory):
    def __init__(self) -> None:
        self.protocols: list[Recorder] = []

    def buildProtocol(self, addr: Any) -> Recorder:
        p = Recorder()
        p.factory = self
        self.protocols.append(p)
        return p


def item_for(snap: dict[str, Any], kind: str, local: str) -> dict[str, Any]:
    found = [i for i in snap["items"] if i["kind"] == kind and i["local"] == local]
    assert len(found) == 1, (kind, local, snap["items"])
    item: dict[str, Any] = found[0]
    return item


def delta(after: dict[str, Any], before: dict[str, Any], *keys: str) -> list[int]:
    return [after[k] - before[k] for k in keys]


async def connect(reactor: Any, port: int, proto: protocol.Protocol) -> object:
    ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    connected: object = await endpoints.connectProtocol(ep, proto)
    return connected


@async_test
async def test_tcp_counts_bytes_and_close(live: ConnectionsProbe) -> None:
    reactor = the_reactor()

    m = 5
    factory = RecordingFactory()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    portnum = port.getHost().port
    try:
        before = live.collect()
        clients = [Recorder() for _ in range(m)]
        for c in clients:
            await connect(reactor, portnum, c)
        await until(
            lambda: len(factory.protocols) == m and all(p.made.called for p in factory.protocols)
        )
        snap = live.collect()
        assert delta(snap, before, "open", "opened_total", "closed_total") == [2 * m, 2 * m, 0]
        assert delta(snap["by_kind"], before["by_kind"], "tcp_server", "tcp_client") == [m, m]
        [listening] = [e for e in snap["listening"] if e["address"] == f"127.0.0.1:{portnum}"]
        assert listening == {
            "address": f"127.0.0.1:{portnum}",
            "factory": f"{RecordingFactory.__module__}.RecordingFactory",
            "accepted_total": m,
            "kind": "tcp",
            "tls": False,
        }

        payload = b"0123456789" * 1234
        sender = clients[0]
        sender.tr.write(payload)
        client_local = format_address(sender.tr.getHost())
        assert client_local is not None
        await until(lambda: any(len(p.received) == len(payload) for p in factory.protocols))
        snap = live.collect()
        client_item = item_for(snap, "tcp_client", client_local)
        assert client_item["protocol"] == f"{Recorder.__module__}.Recorder"
        assert client_item["peer"] == f"127.0.0.1:{portnum}"
        assert (client_item["bytes_out"], client_item["bytes_in"]) == (len(payload), 0)
        [server_item] = [i for i in snap["items"] if i["peer"] == client_local]
        assert server_item["kind"] == "tcp_server"
        assert (server_item["bytes_in"], server_item["bytes_out"]) == (len(payload), 0)

        for c in clients:
            c.tr.loseConnection()
        await until(lambda: all(p.lost for p in factory.protocols + clients))
        snap = live.collect()
        assert snap["open"] == before["open"]
        assert delta(snap, before, "opened_total", "closed_total") == [2 * m, 2 * m]
        assert snap["by_kind"] == before["by_kind"]
    finally:
        await port.stopListening()
    after = live.collect()
    assert all(e["address"] != f"127.0.0.1:{portnum}" for e in after["listening"])


@async_test
async def test_pending_writes_of_a_stopped_reader(live: ConnectionsProbe) -> None:
    reactor = the_reactor()

    factory = RecordingFactory()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        before = live.collect()
        client = Recorder()
        await connect(reactor, port.getHost().port, client)
        await until(lambda: len(factory.protocols) == 1 and factory.protocols[0].made.called)
        server_t: Any = factory.protocols[0].transport
        client_t: Any = client.transport
        client_t.pauseProducing()  # the client stops reading
        big = 16 * 1024 * 1024  # far more than loopback socket buffers hold
        server_t.write(b"z" * big)
        await until(lambda: pending_write_bytes(server_t) > server_t.bufferSize)
        await deferLater(reactor, 0.05)
        snap = live.collect()
        expected = pending_write_bytes(server_t)  # same moment: no reactor turn in between
        item = item_for(snap, "tcp_server", format_address(server_t.getHost()) or "")
        assert item["pending_write_bytes"] == expected > 65536
        assert snap["slow_consumers"] - before["slow_consumers"] == 1
        assert [s["pending_write_bytes"] for s in snap["slow_consumer_items"]] == [expected]

        client_t.resumeProducing()
        await until(lambda: len(client.received) == big)
        snap = live.collect()
        assert snap["slow_consumers"] == before["slow_consumers"]
        item = item_for(snap, "tcp_server", format_address(server_t.getHost()) or "")
        assert (item["pending_write_bytes"], item["bytes_out"]) == (0, big)
        client_item = item_for(snap, "tcp_client", format_address(client_t.getHost()) or "")
        assert client_item["bytes_in"] == big
        client_t.loseConnection()
        await until(lambda: client.lost and factory.protocols[0].lost)
        assert live.collect()["open"] == before["open"]
    finally:
        await port.stopListening()


@async_test
async def test_failed_connect_counts_once(live: ConnectionsProbe) -> None:
    reactor = the_reactor()

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed_port = s.getsockname()[1]
    s.close()  # nothing listens there now: the connect is refused
    before = live.collect()
    with pytest.raises(ConnectionRefusedError):
        await connect(reactor, closed_port, Recorder())
    snap = live.collect()
    assert delta(snap, before, "failed_connects_total", "open", "closed_total") == [1, 0, 0]
    assert snap["by_kind"] == before["by_kind"]


@async_test
async def test_unix_sockets(live: ConnectionsProbe, tmp_path: Any) -> None:
    reactor = the_reactor()

    path = str(tmp_path / "s.sock")
    factory = RecordingFactory()
    port = reactor.listenUNIX(path, factory)
    try:
        before = live.collect()
        client = Recorder()
        ep = endpoints.UNIXClientEndpoint(reactor, path)
        await endpoints.connectProtocol(ep, client)
        await until(lambda: len(factory.protocols) == 1 and factory.protocols[0].made.called)
        snap = live.collect()
        assert delta(snap["by_kind"], before["by_kind"], "unix_server", "unix_client") == [1, 1]
        assert delta(snap["by_kind"], before["by_kind"], "tcp_server", "tcp_client") == [0, 0]
        [listening] = [e for e in snap["listening"] if e["address"] == path]
        assert (listening["kind"], listening["accepted_total"]) == ("unix", 1)
        assert item_for(snap, "unix_server", path)["peer"] is None
        [client_item] = [i for i in snap["items"] if i["kind"] == "unix_client"]
        assert client_item["peer"] == path
        # Unix sockets are counted by the hooks even where the kernel counts TCP.
        client.tr.write(b"u" * 3000)
        factory.protocols[0].tr.write(b"v" * 7)
        await until(lambda: len(factory.protocols[0].received) == 3000)
        await until(lambda: len(client.received) == 7)
        snap = live.collect()
        [client_item] = [i for i in snap["items"] if i["kind"] == "unix_client"]
        server_item = item_for(snap, "unix_server", path)
        assert (client_item["bytes_out"], client_item["bytes_in"]) == (3000, 7)
        assert (server_item["bytes_in"], server_item["bytes_out"]) == (3000, 7)
        client.tr.loseConnection()
        await until(lambda: client.lost and factory.protocols[0].lost)
        snap = live.collect()
        assert snap["by_kind"] == before["by_kind"]
        assert delta(snap, before, "closed_total") == [2]
    finally:
        await port.stopListening()


class RawHTTPClient(Recorder):
    def __init__(self, request: bytes) -> None:
        super().__init__()
        self.request = request

    def connectionMade(self) -> None:
        self.tr.write(self.request)
        super().connectionMade()


async def check_http_in_flight(
    live: ConnectionsProbe,
    listen: Callable[[server.Site], Any],
    connect_client: Callable[[int, protocol.Protocol], Awaitable[object]],
    tls: bool,
) -> None:
    reactor = the_reactor()
    hang = Hang()
    port = listen(server.Site(hang))
    portnum = port.getHost().port
    try:
        before = live.collect()
        client = RawHTTPClient(b"GET /hang?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await connect_client(portnum, client)
        await until(lambda: len(hang.requests) == 1)
        await deferLater(reactor, 0.3)
        snap = live.collect()
        [item] = [i for i in snap["items"] if i.get("requests")]
        assert item["kind"] == "tcp_server" and item["tls"] is tls
        assert item["protocol"] == "twisted.web.http.HTTPChannel"
        [req] = item["requests"]
        assert (req["method"], req["uri"]) == ("GET", "/hang?x=1")
        # Counted from the request's bytes coming in (the kernel's clock ticks 1-10 ms).
        assert 0.28 <= req["age_s"] < 10
        assert req["age_s"] <= item["age_s"] + 0.01
        assert snap["by_kind"]["tls"] - before["by_kind"]["tls"] == (2 if tls else 0)
        assert [i["tls"] for i in snap["items"] if i["local"] == item["peer"]] == [tls]
        [listening] = [e for e in snap["listening"] if e["address"] == f"127.0.0.1:{portnum}"]
        assert (listening["factory"], listening["tls"]) == ("twisted.web.server.Site", tls)
        assert listening["accepted_total"] == 1
        json.dumps(snap, allow_nan=False)  # JSON-ready as it stands

        hang.requests[0].write(b"done")
        hang.requests[0].finish()
        await until(lambda: client.received.endswith(b"done\r\n0\r\n\r\n"))
        snap = live.collect()
        [item] = [i for i in snap["items"] if i["protocol"] == "twisted.web.http.HTTPChannel"]
        assert item["requests"] == []
        client.tr.loseConnection()
        await until(lambda: client.lost and live.collect()["open"] == before["open"])
        assert live.collect()["by_kind"] == before["by_kind"]
    finally:
        await port.stopListening()


@async_test
async def test_http_in_flight_request(live: ConnectionsProbe) -> None:
    reactor = the_reactor()

    await check_http_in_flight(
        live,
        lambda site: reactor.listenTCP(0, site, interface="127.0.0.1"),
        lambda portnum, proto: connect(reactor, portnum, proto),
        tls=False,
    )


def self_signed_pem() -> bytes:
    pytest.importorskip("cryptography", reason="TLS test needs the cryptography package")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")  # inside Twisted
@async_test
async def test_tls_http_connection_is_marked(live: ConnectionsProbe) -> None:
    pytest.importorskip("OpenSSL", reason="TLS test needs pyOpenSSL (twisted[tls])")
    from twisted.internet import ssl

    reactor = the_reactor()

    pem = self_signed_pem()
    server_options = ssl.PrivateCertificate.loadPEM(pem).options()
    client_options = ssl.CertificateOptions()  # no verification: a self-signed test cert

    async def connect_tls(portnum: int, proto: protocol.Protocol) -> object:
        ep = endpoints.SSL4ClientEndpoint(reactor, "127.0.0.1", portnum, client_options)
        return await endpoints.connectProtocol(ep, proto)

    await check_http_in_flight(
        live,
        lambda site: reactor.listenSSL(0, site, server_options, interface="127.0.0.1"),
        connect_tls,
        tls=True,
    )


@async_test
async def test_hook_failure_leaves_real_connections_working(
    errors: ProbeErrors, monkeypatch: pytest.MonkeyPatch
) -> None:
    reactor = the_reactor()

    def boom(self: ConnectionRegistry, transport: Any, *, adopted: bool = False) -> None:
        raise RuntimeError("bookkeeping failed")

    p = ConnectionsProbe(reactor, errors, reactor.seconds)
    p.install()
    monkeypatch.setattr(ConnectionRegistry, "add", boom)  # after install: adoption unaffected
    factory = RecordingFactory()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        client = Recorder()
        await connect(reactor, port.getHost().port, client)
        await until(lambda: len(factory.protocols) == 1 and factory.protocols[0].made.called)
        client.tr.write(b"ping")
        await until(lambda: factory.protocols[0].received == b"ping")
        client.tr.loseConnection()
        await until(lambda: client.lost and factory.protocols[0].lost)
        assert errors.counts == {"connections": 2}  # one per transport, none raised
        assert "bookkeeping failed" in errors.last["connections"]
        assert p.collect()["open"] == 0
    finally:
        await port.stopListening()
        p.uninstall()


def test_bytes_written_follow_the_python_wrappers_int_rules(
    mreactor: MemoryReactorClock,
    errors: ProbeErrors,
    accelerate: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only an exact int above 0 counts (True and negatives do not); any size of int."""
    sent = itertools.chain([2**63, True, -5, 7], itertools.repeat(0))
    monkeypatch.setattr(tcp.Connection, "writeSomeData", lambda self, data: next(sent))
    p = ConnectionsProbe(
        mreactor, errors, mreactor.seconds, accelerate=accelerate, kernel_counts=False
    )
    p.install()
    try:
        t = fake_server(mreactor)
        assert [t.writeSomeData(b"x") for _ in range(4)] == [2**63, True, -5, 7]
        assert p.registry.entries[id(t)].bytes_out == 2**63 + 7
        close(t)
    finally:
        p.uninstall()
    assert errors.counts == {}


@async_test
async def test_kernel_counts_include_bytes_from_before_install(errors: ProbeErrors) -> None:
    """An adopted TCP connection's counts start at its opening, not at the install."""
    reactor = the_reactor()
    factory = RecordingFactory()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = Recorder()
    p = ConnectionsProbe(reactor, errors, reactor.seconds, kernel_counts=True)
    try:
        await connect(reactor, port.getHost().port, client)
        await until(lambda: len(factory.protocols) == 1 and factory.protocols[0].made.called)
        client.tr.write(b"a" * 1000)
        await until(lambda: len(factory.protocols[0].received) == 1000)
        p.install()
        client.tr.write(b"b" * 24)
        await until(lambda: len(factory.protocols[0].received) == 1024)
        snap = p.collect()
        assert snap["adopted_at_install"] >= 2 and snap["tcp_counts"] == "kernel"
        client_item = item_for(snap, "tcp_client", format_address(client.tr.getHost()) or "")
        [server_item] = [i for i in snap["items"] if i["peer"] == client_item["local"]]
        assert (client_item["bytes_out"], server_item["bytes_in"]) == (1024, 1024)
        client.tr.loseConnection()
        await until(lambda: client.lost and factory.protocols[0].lost)
    finally:
        p.uninstall()
        await port.stopListening()
    assert errors.counts == {}
