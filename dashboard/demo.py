"""The demo service: a realistic Twisted service under load, with the dashboard attached.

One process, everything on 127.0.0.1: a Klein app; a client load through treq and an
``HTTPConnectionPool``; thread-pool work; an ``adbapi`` pool on sqlite3; requests that time
out (client side, ``addTimeout``, an idle-connection timeout and a connect timeout); a slow
leak of never-fired Deferreds from one site; an occasional blocking callback. Every panel
has something true to show.
"""

from __future__ import annotations

import os
import random
import socket
import tempfile
import time
from collections import deque
from typing import Any

import attrs
import treq
from klein import Klein
from twisted.enterprise import adbapi
from twisted.internet import defer, protocol, task, threads
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.web.client import HTTPConnectionPool
from twisted.web.server import Request, Site

from dashboard.monitor import Monitor

#: Deferreds the demo "leaks" on purpose, kept (bounded) so they stay pending.
LEAK_LIMIT = 5_000


class DemoApp:
    """The watched service's own web app."""

    app = Klein()

    def __init__(self, reactor: Any, db: adbapi.ConnectionPool) -> None:
        self.reactor = reactor
        self.db = db
        self.leaked: deque[defer.Deferred[None]] = deque(maxlen=LEAK_LIMIT)

    @app.route("/hello", methods=["GET"])
    def hello(self, request: Request) -> bytes:
        return b"hello\n"

    @app.route("/slow", methods=["GET"])
    def slow(self, request: Request) -> defer.Deferred[bytes]:
        args: Any = request.args
        ms = int(args.get(b"ms", [b"200"])[0])
        return task.deferLater(self.reactor, min(ms, 5000) / 1000, lambda: b"slow\n")

    @app.route("/db", methods=["GET"])
    async def query(self, request: Request) -> bytes:
        rows = await self.db.runQuery("SELECT count(*), sum(value) FROM events")
        await self.db.runOperation("INSERT INTO events (value) VALUES (?)", (random.random(),))
        return f"{rows[0]}\n".encode()

    @app.route("/work", methods=["GET"])
    async def work(self, request: Request) -> bytes:
        spent = await threads.deferToThread(thread_work, random.uniform(0.02, 0.3))
        return f"worked {spent:.3f}s\n".encode()

    @app.route("/leak", methods=["GET"])
    def leak(self, request: Request) -> bytes:
        # The bug the dashboard should point at: a Deferred nobody will ever fire.
        forgotten: defer.Deferred[None] = defer.Deferred()
        if random.random() < 0.5:
            self.leaked.append(forgotten)  # pending forever; the other half is dropped unfired
        return b"leaked\n"

    @app.route("/deadline", methods=["GET"])
    def deadline(self, request: Request) -> defer.Deferred[bytes]:
        never: defer.Deferred[bytes] = defer.Deferred()
        never.addTimeout(0.2, self.reactor)

        def timed_out(failure: Any) -> bytes:
            failure.trap(defer.TimeoutError)
            request.setResponseCode(504)
            return b"deadline exceeded\n"

        return never.addErrback(timed_out)


def thread_work(seconds: float) -> float:
    """Blocking work meant for a worker thread."""
    time.sleep(seconds)
    return seconds


def blocking_report() -> None:
    """The occasional culprit: a callback that blocks the reactor for 250 ms."""
    time.sleep(0.25)


@attrs.define
class DemoService:
    """Starts the demo workload on ``reactor`` and stops all of it."""

    reactor: Any
    monitor: Monitor
    requests_per_second: float = 20.0
    _loops: list[task.LoopingCall] = attrs.field(factory=list)
    _ports: list[Any] = attrs.field(factory=list)
    _sockets: list[socket.socket] = attrs.field(factory=list)
    _idle: list[Any] = attrs.field(factory=list)
    _pool: HTTPConnectionPool | None = None
    _db: adbapi.ConnectionPool | None = None
    _tmpdir: tempfile.TemporaryDirectory[str] | None = None
    _first_block: Any = None
    base_url: str = ""

    def start(self) -> None:
        self._tmpdir = tempfile.TemporaryDirectory(prefix="reactor-dashboard-demo-")
        db_path = os.path.join(self._tmpdir.name, "demo.sqlite3")
        self._db = adbapi.ConnectionPool(
            "sqlite3", db_path, check_same_thread=False, cp_min=1, cp_max=3, cp_reactor=self.reactor
        )
        self._db.runOperation(
            "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, value REAL)"
        )
        site = Site(DemoApp(self.reactor, self._db).app.resource())
        site.timeOut = 3  # idle connections time out quickly: the protocol-timeout panel
        port = self.reactor.listenTCP(0, site, interface="127.0.0.1")
        self._ports.append(port)
        self.base_url = f"http://127.0.0.1:{port.getHost().port}"
        self._pool = HTTPConnectionPool(self.reactor, persistent=True)
        self._pool.maxPersistentPerHost = 4
        self._every(1 / self.requests_per_second, self._one_request)
        self._every(10.0, self._idle_client, now=True)
        self._every(20.0, self._connect_that_times_out, now=True)
        self._first_block = self.reactor.callLater(
            3.0, lambda: self._every(15.0, blocking_report, now=True)
        )

    def stop(self) -> defer.Deferred[None]:
        if self._first_block is not None and self._first_block.active():
            self._first_block.cancel()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        for transport in self._idle:
            transport.abortConnection()
        for sock in self._sockets:
            sock.close()
        done = [defer.maybeDeferred(port.stopListening) for port in self._ports]
        if self._pool is not None:
            done.append(self._pool.closeCachedConnections())
        if self._db is not None:
            self._db.close()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
        return defer.gatherResults(done).addCallback(lambda _: None)

    def _every(self, seconds: float, work: Any, now: bool = False) -> None:
        loop = task.LoopingCall(work)
        loop.clock = self.reactor
        loop.start(seconds, now=now).addErrback(lambda f: None)
        self._loops.append(loop)

    def _one_request(self) -> None:
        path, timeout = random.choices(
            [
                ("/hello", 5.0),
                ("/db", 5.0),
                ("/work", 5.0),
                ("/slow?ms=150", 5.0),
                ("/slow?ms=1500", 0.5),  # times out on the client side
                ("/leak", 5.0),
                ("/deadline", 5.0),
            ],
            weights=[30, 15, 10, 20, 3, 4, 3],
        )[0]
        d = treq.get(self.base_url + path, pool=self._pool, timeout=timeout, reactor=self.reactor)
        d.addCallback(treq.content)
        d.addErrback(lambda f: None)  # timeouts are the point; the dashboard counts them

    def _idle_client(self) -> None:
        """A client that connects and says nothing: the server's idle timeout fires."""
        self._idle[:] = [t for t in self._idle if t.connected]
        creator = protocol.ClientCreator(self.reactor, protocol.Protocol)
        d = creator.connectTCP("127.0.0.1", self._ports[0].getHost().port)
        d.addCallback(lambda proto: self._idle.append(proto.transport))
        d.addErrback(lambda f: None)

    def _connect_that_times_out(self) -> None:
        """A connect to a listener whose accept queue is full: a connect timeout."""
        if not self._sockets:
            blackhole = socket.socket()
            blackhole.bind(("127.0.0.1", 0))
            blackhole.listen(0)
            self._sockets.append(blackhole)
            for _ in range(2):  # fill the accept queue
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(blackhole.getsockname())
                self._sockets.append(filler)
        host, port = self._sockets[0].getsockname()
        creator = protocol.ClientCreator(self.reactor, protocol.Protocol)
        d = creator.connectTCP(host, port, timeout=1)
        d.addErrback(lambda f: f.trap(ConnectTimeoutError))


def run_demo(
    reactor: Any,
    port: int,
    duration_s: float | None = None,
    *,
    token: str | None = None,
    metrics_token: str | None = None,
    record: str | None = None,
) -> None:
    """Run the demo until Ctrl-C (or ``duration_s``), the dashboard on 127.0.0.1:``port``
    (behind ``token`` / ``metrics_token`` when given), every sample recorded into
    ``record`` when given (a bad file raises ``dashboard.recorder.RecordingError``)."""
    # The demo shows every panel: busy time by handler on, also where it is off by default
    # (Python 3.13, the pure-Python path).
    monitor = Monitor(
        reactor, token=token, metrics_token=metrics_token, record=record, handlers=True
    )
    monitor.start()
    service = DemoService(reactor, monitor)

    def started(listening: Any) -> None:
        service.start()
        address = listening.getHost()
        print(f"Reactor Dashboard: http://127.0.0.1:{address.port}/", flush=True)
        if token is not None:
            print("  (a token is required: add ?token=<the token> to that address once)")
        print(f"Demo service:      {service.base_url}/hello  (Ctrl-C stops)", flush=True)

    def failed(failure: Any) -> None:
        print(f"reactor-dashboard: cannot listen on port {port}: {failure.getErrorMessage()}")
        reactor.stop()

    monitor.listen(port).addCallbacks(started, failed)
    reactor.addSystemEventTrigger("before", "shutdown", service.stop)
    reactor.addSystemEventTrigger("after", "shutdown", monitor.stop)
    if duration_s is not None:
        reactor.callLater(duration_s, reactor.stop)
    reactor.run()
