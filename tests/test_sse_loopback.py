"""The SSE stream over real loopback sockets on the test reactor (default and asyncio): raw
HTTP bytes, replay, heartbeats, the client limit, a client that stops reading, and 1,000
streams opened and closed leaving nothing behind."""

from __future__ import annotations

import gc
import json
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web.server import Site

from dashboard.monitor import Monitor, Sample
from dashboard.testing import global_reactor
from dashboard.web.app import DashboardApp
from dashboard.web.guard import GuardedResource
from dashboard.web.sse import EventHub
from tests.test_sse import parse_events, snapshot_ids


def hub_subscriptions(monitor: Monitor) -> list[object]:
    """The monitor's subscribers that are event hubs' (the series cache subscribes too, for
    the monitor's whole life)."""
    return [s for s in monitor._subscribers if isinstance(getattr(s, "__self__", None), EventHub)]


def request_bytes(headers: dict[str, str] | None = None) -> bytes:
    lines = ["GET /api/v1/events HTTP/1.1", "Host: 127.0.0.1", "Accept-Encoding: gzip"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def dechunk(body: bytes) -> bytes:
    """The complete chunks of a chunked body, joined."""
    out = bytearray()
    pos = 0
    while True:
        end = body.find(b"\r\n", pos)
        if end < 0:
            break
        size = int(body[pos:end], 16)
        if size == 0 or end + 2 + size + 2 > len(body):
            break
        out += body[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2
    return bytes(out)


class RawClient(Protocol):
    """Sends one raw GET for the stream and keeps every byte that comes back."""

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self.request = request_bytes(headers)
        self.received = bytearray()
        self.lost = False

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(Exception("lost"))) -> None:  # noqa: B008
        self.lost = True

    @property
    def head(self) -> str:
        return bytes(self.received).split(b"\r\n\r\n", 1)[0].decode("latin-1")

    @property
    def body(self) -> bytes:
        parts = bytes(self.received).split(b"\r\n\r\n", 1)
        if len(parts) < 2:
            return b""
        return dechunk(parts[1]) if "chunked" in self.head.lower() else parts[1]

    def header(self, name: str) -> list[str]:
        found = []
        for line in self.head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                found.append(value.strip())
        return found

    def close(self) -> None:
        transport: Any = self.transport
        transport.loseConnection()

    @property
    def local_port(self) -> int:
        transport: Any = self.transport
        port: int = transport.getHost().port
        return port


async def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``check`` every 5 ms until it holds, failing after ``timeout`` seconds."""
    reactor = global_reactor()
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await task.deferLater(reactor, 0.005, lambda: None)


class FirstFrameClient(RawClient):
    """Keeps bytes only until the first snapshot frame is complete, then just counts."""

    got_frame = False

    def dataReceived(self, data: bytes) -> None:
        if not self.got_frame:
            self.received += data
            if snapshot_ids(self.body):
                self.got_frame = True
                self.received = bytearray()


async def connect(
    port: int, headers: dict[str, str] | None = None, kind: type[RawClient] = RawClient
) -> RawClient:
    endpoint = TCP4ClientEndpoint(global_reactor(), "127.0.0.1", port)
    factory: Any = Factory.forProtocol(lambda: kind(headers))
    factory.noisy = False  # no "Starting factory" log event kept per connection
    client: RawClient = await endpoint.connect(factory)
    return client


@asynccontextmanager
async def serving(
    interval: float, **hub_options: Any
) -> AsyncIterator[tuple[Monitor, EventHub, int]]:
    reactor = global_reactor()
    monitor = Monitor(reactor, interval=interval, history=50)
    monitor.start()
    hub = EventHub(monitor, **hub_options)
    site = Site(DashboardApp(monitor, events=hub).app.resource())
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        yield monitor, hub, port.getHost().port
    finally:
        hub.close()
        await port.stopListening()
        monitor.stop()


def hub_timers(hub: EventHub) -> list[Any]:
    return [c for c in global_reactor().getDelayedCalls() if c.func == hub._check]


@pytest_twisted.ensureDeferred
async def test_raw_stream_headers_retry_and_consecutive_frames() -> None:
    async with serving(interval=0.05) as (_, hub, port):
        client = await connect(port)
        await wait_until(lambda: len(snapshot_ids(client.body)) >= 6, "six snapshot frames")
        assert client.head.startswith("HTTP/1.1 200 OK")
        assert client.header("Content-Type") == ["text/event-stream"]
        assert client.header("Cache-Control") == ["no-cache"]
        assert client.header("X-Accel-Buffering") == ["no"]
        assert client.header("Transfer-Encoding") == ["chunked"]
        assert client.header("Content-Encoding") == []  # gzip was offered: never taken here
        assert client.body.startswith(b"retry: 2000\n\n")
        ids = snapshot_ids(client.body)
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        for event in parse_events(client.body)[1:]:
            assert json.loads(event["data"])["seq"] == int(event["id"])
        client.close()
        await wait_until(lambda: not hub.streams, "the stream to be released")


@pytest_twisted.ensureDeferred
async def test_reconnect_with_last_event_id_replays_then_goes_live() -> None:
    async with serving(interval=0.05) as (monitor, hub, port):
        await wait_until(lambda: monitor.latest().seq >= 8, "eight samples")
        since = monitor.latest().seq - 5
        client = await connect(port, {"Last-Event-ID": str(since)})
        await wait_until(lambda: len(snapshot_ids(client.body)) >= 9, "replay and live frames")
        ids = snapshot_ids(client.body)
        assert ids[0] == since + 1
        assert ids == list(range(since + 1, since + 1 + len(ids)))
        assert hub.stats()["replayed_total"] >= 5
        client.close()


@pytest_twisted.ensureDeferred
async def test_heartbeat_comment_when_nothing_else_is_sent() -> None:
    async with serving(interval=60.0, heartbeat_s=0.2) as (_, hub, port):
        client = await connect(port)
        started = time.monotonic()
        await wait_until(
            lambda: len([e for e in parse_events(client.body) if ":" in e]) >= 2,
            "two heartbeats",
        )
        assert time.monotonic() - started >= 0.35
        assert b"\n: keep-alive\n\n" in client.body
        assert hub.stats()["heartbeats_total"] >= 2
        client.close()
        await wait_until(lambda: not hub_timers(hub), "the heartbeat timer to stop")


@pytest_twisted.ensureDeferred
async def test_503_with_retry_after_at_max_clients() -> None:
    async with serving(interval=60.0, max_clients=3, retry_after_s=4) as (_, hub, port):
        clients = [await connect(port) for _ in range(3)]
        await wait_until(lambda: all(snapshot_ids(c.body) for c in clients), "three streams")
        refused = await connect(port)
        await wait_until(lambda: b"}" in refused.body, "the 503 body")
        assert refused.head.startswith("HTTP/1.1 503 ")
        assert refused.header("Retry-After") == ["4"]
        assert refused.header("Content-Type") == ["application/json; charset=utf-8"]
        assert json.loads(refused.body)["error"] == "too_many_clients"
        assert hub.stats()["rejected_total"] == 1
        clients[0].close()
        await wait_until(lambda: len(hub.streams) == 2, "one stream to leave")
        admitted = await connect(port)
        await wait_until(lambda: bool(snapshot_ids(admitted.body)), "the new stream")
        assert admitted.head.startswith("HTTP/1.1 200 ")
        for client in [*clients[1:], admitted, refused]:
            client.close()


def has_frame(client: RawClient, seq: int) -> bool:
    return seq in snapshot_ids(client.body[-200_000:])


def pending_bytes(transport: Any) -> int:
    """Bytes a Twisted TCP transport holds, not yet handed to the kernel (see FACTS.md)."""
    pending: int = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    return pending


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_is_dropped_and_counted() -> None:
    backlog_limit = 256 * 1024
    async with serving(interval=60.0, max_backlog_bytes=backlog_limit) as (monitor, hub, port):
        good = await connect(port)
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", port))
        slow.sendall(request_bytes())  # ... and never reads
        await wait_until(lambda: len(hub.streams) == 2, "both streams")
        (slow_stream,) = [
            s for s in hub.streams if s.request.getClientAddress().port != good.local_port
        ]
        transport = slow_stream.request.transport
        encoded = json.dumps({"pad": "x" * 64 * 1024}).encode()
        first = monitor.latest().seq + 1
        most_pending = 0
        seq = first
        for seq in range(first, first + 400):
            hub.publish(Sample(seq=seq, time=time.time(), data={}, encoded=encoded))
            await wait_until(partial(has_frame, good, seq), f"frame {seq}")
            if hub.dropped_slow_total:
                break
            most_pending = max(most_pending, pending_bytes(transport))
        assert hub.stats()["dropped_slow_total"] == 1
        assert len(hub.streams) == 1 and slow_stream not in hub.streams
        assert slow_stream.backlog_bytes == 0 and not slow_stream.backlog
        # While paused nothing more was handed to the transport: its buffer stayed bounded.
        assert 0 < most_pending <= 65536 + 2 * len(encoded) + 64
        # The reader kept up and got every frame, in order.
        ids = snapshot_ids(good.body)
        assert ids[-(seq - first + 1) :] == list(range(first, seq + 1))
        # The slow socket was cut (reset or closed after what the kernel already held).
        slow.settimeout(5.0)
        cut = False
        try:
            while slow.recv(1 << 20):
                pass
            cut = True
        except ConnectionResetError:
            cut = True
        finally:
            slow.close()
        assert cut
        good.close()
        await wait_until(lambda: not hub.streams, "the good stream to leave")
        assert hub_subscriptions(monitor) == []


@pytest_twisted.ensureDeferred
async def test_1000_streams_opened_and_closed_leave_nothing_behind() -> None:
    batch, warm_up = 50, 3
    async with serving(interval=60.0, max_clients=batch) as (monitor, hub, port):

        async def cycle() -> None:
            clients: list[Any] = await defer.gatherResults(
                [defer.ensureDeferred(connect(port, kind=FirstFrameClient)) for _ in range(batch)]
            )
            await wait_until(lambda: all(c.got_frame for c in clients), "every first frame")
            assert len(hub.streams) == batch
            for client in clients:
                client.close()
            await wait_until(lambda: not hub.streams and all(c.lost for c in clients), "closes")

        for _ in range(warm_up):  # imports, caches, the first sample
            await cycle()
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(1000 // batch - warm_up):
                await cycle()
            gc.collect()
            growth = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        stats = hub.stats()
        assert stats["connected_total"] == 1000
        assert (stats["clients"], stats["paused_clients"], stats["backlog_bytes"]) == (0, 0, 0)
        assert hub.streams == set()
        assert hub_subscriptions(monitor) == []
        assert hub_timers(hub) == []
        # A stream kept alive holds its request, channel, transport and deques: kilobytes each
        # (850 of them, megabytes). What stays is the probes' own bounded state (~80 KB).
        assert growth < 256 * 1024, f"{growth} bytes kept after {1000 - warm_up * batch} streams"


# a stream opened by cookie ends with its session ------------------------------------------

TOKEN = "t0ken-for-loopback-0123456789abcdef"


class RawExchange(RawClient):
    """Sends ``raw`` (one whole request) and keeps every byte that comes back."""

    def __init__(self, raw: bytes) -> None:
        super().__init__()
        self.request = raw


async def exchange(port: int, raw: bytes) -> RawClient:
    """Send one raw request (with ``Connection: close``) and wait for the whole answer."""
    client = await connect(port, kind=lambda _: RawExchange(raw))  # type: ignore[arg-type]
    await wait_until(lambda: client.lost, "the answer")
    return client


async def sign_in(port: int) -> str:
    """A new session's cookie, as ``name=value``."""
    answer = await exchange(
        port,
        b"GET /?token=%s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % TOKEN.encode(),
    )
    assert answer.head.startswith("HTTP/1.1 303 ")
    (cookie,) = answer.header("Set-Cookie")
    return cookie.split(";", 1)[0]


@asynccontextmanager
async def serving_guarded(**guard_options: Any) -> AsyncIterator[tuple[GuardedResource, int]]:
    reactor = global_reactor()
    monitor = Monitor(reactor, interval=0.05, history=50)
    monitor.start()
    app = DashboardApp(monitor)
    inner: Any = app.app.resource()
    guard = GuardedResource(inner, token=TOKEN, **guard_options)
    site = Site(guard)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        yield guard, port.getHost().port
    finally:
        app.events.close()
        await port.stopListening()
        monitor.stop()


def expiry_timers(guard: GuardedResource) -> list[Any]:
    expire = getattr(getattr(guard, "open_requests", None), "_expire", None)
    return [c for c in global_reactor().getDelayedCalls() if c.func == expire]


@pytest_twisted.ensureDeferred
async def test_signing_out_ends_a_stream_open_on_a_copy_of_the_cookie() -> None:
    async with serving_guarded() as (guard, port):
        mine, other = await sign_in(port), await sign_in(port)
        copy = await connect(port, {"Cookie": mine})
        elsewhere = await connect(port, {"Cookie": other})
        await wait_until(lambda: bool(snapshot_ids(copy.body)), "the copy's stream")
        await wait_until(lambda: bool(snapshot_ids(elsewhere.body)), "the other stream")
        assert copy.head.startswith("HTTP/1.1 200 ")
        out = await exchange(
            port,
            b"POST /session/sign-out HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: %s\r\n"
            b"Content-Length: 0\r\nConnection: close\r\n\r\n" % mine.encode(),
        )
        assert out.head.startswith("HTTP/1.1 200 ")
        assert json.loads(out.body) == {"signed_out": True, "revoked": True}
        await wait_until(lambda: copy.lost, "the signed-out stream to end", timeout=5.0)
        # The other session's stream goes on.
        seen = snapshot_ids(elsewhere.body)[-1]
        await wait_until(lambda: snapshot_ids(elsewhere.body)[-1] > seen + 2, "more frames")
        assert not elsewhere.lost
        elsewhere.close()
        await wait_until(lambda: guard.open_requests.count == 0, "nothing held")
        assert expiry_timers(guard) == []


@pytest_twisted.ensureDeferred
async def test_a_stream_open_by_cookie_ends_when_the_session_expires() -> None:
    async with serving_guarded(session_max_age_s=2) as (guard, port):
        cookie = await sign_in(port)
        stream = await connect(port, {"Cookie": cookie})
        await wait_until(lambda: bool(snapshot_ids(stream.body)), "the stream")
        assert stream.head.startswith("HTTP/1.1 200 ")
        opened = time.monotonic()
        await wait_until(lambda: stream.lost, "the expired stream to end", timeout=6.0)
        assert time.monotonic() - opened <= 3.5  # at its expiry (2 s at most after sign-in)
        assert guard.open_requests.expired_total == 1
        assert guard.open_requests.count == 0
        assert expiry_timers(guard) == []
        again = await connect(port, {"Cookie": cookie})
        await wait_until(lambda: again.body.endswith(b"}"), "the refusal")
        assert again.head.startswith("HTTP/1.1 401 ")
        assert "expired" in json.loads(again.body)["message"]
        again.close()
