"""Answers while the loop is stuck: a thread that serves ``api/v1/snapshot`` and ``metrics`` on
the dashboard's own listening socket while the reactor thread cannot.

How it works. The watchdog thread (:mod:`dashboard.probes.watchdog`) already wakes when a busy
span reaches the block threshold, to take its stack; right after, it calls
:meth:`StuckServer.loop_stuck` (``LoopProbe.on_stuck``), which starts this module's thread
unless it runs already. The thread polls the listening socket of every port the dashboard
listens on itself (``Monitor.listen``: ``reactor-dashboard run`` and ``demo`` too; the
reactor, stuck, does not poll it), accepts, and reads each connection's request head without
blocking (at most :data:`MAX_HEAD_BYTES`, :data:`READ_TIMEOUT_S`):

* ``GET``/``HEAD api/v1/snapshot`` and ``metrics`` are answered here, checked by the guard's
  own functions (size limits, Host, method, token or session cookie, query), with the security
  headers and ``Connection: close`` (one request per connection: one pipelined behind it is
  dropped, and sent again by the client): the newest sample with a live ``loop.stuck`` (the
  reactor thread's stack now, named as blocks are), and the metrics of it
  (``twisted_reactor_stuck_seconds``);
* any other request (the page, static files, the event stream, ``?fresh=1``, which asks for a
  snapshot taken after it, anything before the first sample, a head it cannot read in time)
  is handed back to the reactor: the thread asks the reactor (``callFromThread``) to build the
  connection's transport and protocol as ``Port.doRead`` does and feed it the bytes read, so
  it is answered as always, once the loop runs again.

Bounds: at most :data:`MAX_PENDING` connections held (reading or writing; the listening
sockets are not polled while full, nor for :data:`ACCEPT_BACKOFF_S` after an accept error),
each answered within :data:`READ_TIMEOUT_S` of arriving and written and closed within
:data:`WRITE_TIMEOUT_S` more, all without blocking in one poll loop: no client holds the
thread. At most :data:`MAX_HANDED_BACK` connections handed back wait for the reactor at once
(each an open file); past that, a request the thread cannot answer gets ``503 loop_stuck``.

The thread stops accepting as soon as the loop runs again (the busy span it was started for
ended), answers what it has read, hands back what it has not, and ends. While the loop runs
it does not exist: the stuck path costs nothing per iteration (the watchdog calls the hook
only for a span past the threshold).

A dashboard mounted in your own Site (``monitor.resource()`` under a prefix) is served so only
when you say which port and prefix (``Monitor.answer_while_stuck``): the port is yours, and
every request to your own paths is handed back to your Site.

What it cannot do: answer while the stuck code holds the GIL for the whole block (one long C
call that never releases it: a huge regex match, a C extension's computation); a
``time.sleep``, blocking I/O or a pure-Python loop all leave it the GIL. A TLS port (``ssl:``)
is not served here: those requests wait for the loop, as before.

Threads: ``add_port``, ``open`` and ``close`` on the reactor thread; ``loop_stuck`` from the
watchdog thread; the rest on this module's thread, which reads only what is safe from any
thread (the newest sample's bytes, the loop's pulse and stack, the guard's pure checks and its
session store under its lock; and, for ``/metrics``, the loop probe's lag histogram, which
the reactor thread updates: read live, it can be a span apart from its sum) and touches no
Twisted object until it hands a connection back through ``callFromThread``.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.logger import Logger

from dashboard.web.guard import GuardedResource
from dashboard.web.stuck_request import Answer, answer, error_answer, head_end, parse_head

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from dashboard.probes.base import JSONDict

_log = Logger()

#: Longest request head read, bytes (Twisted's own limit: 16 KiB).
MAX_HEAD_BYTES = 16 * 1024
#: How long a connection may take to send its request head, seconds.
READ_TIMEOUT_S = 1.0
#: How long an answer may take to be written and the connection to close, seconds.
WRITE_TIMEOUT_S = 1.0
#: How long the thread reads (and drops) what a client still sends after its answer, before
#: closing (so that the close sends no reset cutting the answer short), seconds at most.
LINGER_S = 0.5
#: Pause in accepting after an accept error (too many open files...), seconds.
ACCEPT_BACKOFF_S = 0.1
#: Connections handed back that may wait for the reactor at once; beyond, a request the
#: thread cannot answer gets ``503 loop_stuck`` (each waiting one holds a file descriptor).
MAX_HANDED_BACK = 64
#: ``Retry-After`` of that 503, seconds.
RETRY_AFTER_S = 5
#: Connections read at once; more wait in the listen backlog.
MAX_PENDING = 32
#: How often the thread looks whether the loop runs again, seconds.
POLL_S = 0.05
#: Joining the thread at ``close()``, seconds at most.
JOIN_TIMEOUT_S = 2.0


@attrs.define(eq=False)
class Listener:
    """One listening port served while stuck: the reactor's port, its socket, the guard of
    the site on it and the dashboard's mount point there (segments; empty on its own port)."""

    port: Any
    socket: socket.socket
    guard: GuardedResource
    prefix: tuple[bytes, ...] = ()


@attrs.define(eq=False)
class _Pending:
    """An accepted connection whose request head is still being read."""

    sock: socket.socket
    address: Any
    listener: Listener
    deadline: float
    data: bytes = b""
    #: the answer still to write (None while the head is read)
    out: memoryview | None = None


@attrs.define(eq=False)
class StuckServer:
    """Serves :data:`~dashboard.web.stuck_request.ANSWERED_PATHS` while the loop is stuck.

    ``busy_since()``: when the running busy span began (None while the loop waits);
    ``stuck_now()``: ``loop.stuck``; ``newest()``: the newest sample's JSON bytes;
    ``families(data)``: metric families of a snapshot; ``call_from_thread``: the reactor's;
    ``on_error``: told any failure (from this thread). All callable from any thread.
    """

    busy_since: Callable[[], float | None]
    stuck_now: Callable[[], JSONDict | None]
    newest: Callable[[], bytes | None]
    families: Callable[[JSONDict], list[Metric]]
    call_from_thread: Callable[..., Any]
    on_error: Callable[[BaseException], None]
    #: answers given by the thread, by status
    answered: Counter[int] = attrs.field(factory=Counter, init=False)
    #: connections handed back to the reactor
    handed_back_total: int = attrs.field(default=0, init=False)
    #: times the thread started (one per stuck busy span at most)
    starts_total: int = attrs.field(default=0, init=False)
    #: passes of the thread's poll loop (each sleeps in poll() unless something is ready)
    polls_total: int = attrs.field(default=0, init=False)
    #: accept() errors (too many open files...)
    accept_errors_total: int = attrs.field(default=0, init=False)
    _accept_failing: bool = attrs.field(default=False, init=False)
    _handed_out: int = attrs.field(default=0, init=False)
    _listeners: tuple[Listener, ...] = attrs.field(default=(), init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _thread: threading.Thread | None = attrs.field(default=None, init=False)
    _tick: float | None = attrs.field(default=None, init=False)
    _closed: threading.Event = attrs.field(factory=threading.Event, init=False)

    # reactor thread ------------------------------------------------------------------------

    def add_port(self, port: Any, guard: GuardedResource, prefix: tuple[bytes, ...] = ()) -> bool:
        """Serve ``port`` (a listening ``twisted.internet.tcp.Port`` or unix port, whose site
        serves ``guard`` at ``prefix``) while stuck; False when it cannot be (no plain socket:
        a TLS port's factory wraps the site's). Reactor thread."""
        sock = getattr(port, "socket", None)
        factory = getattr(port, "factory", None)
        if not isinstance(sock, socket.socket) or not _is_plain_site(factory):
            return False
        kept = tuple(each for each in self._listeners if _is_open(each))  # closed ports: gone
        self._listeners = (*kept, Listener(port, sock, guard, prefix))
        return True

    @property
    def listeners(self) -> tuple[Listener, ...]:
        return self._listeners

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def open(self) -> None:
        """Allow the thread again (``Monitor.start``). Reactor thread."""
        self._closed.clear()

    def close(self) -> None:
        """End the thread (``Monitor.stop``) and wait for it (at most :data:`JOIN_TIMEOUT_S`).
        Reactor thread."""
        self._closed.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(JOIN_TIMEOUT_S)

    def as_json(self) -> JSONDict:
        """``web.stuck`` in the snapshot."""
        return {
            "ports": sum(1 for each in self._listeners if _is_open(each)),
            "starts_total": self.starts_total,
            "answered_total": sum(self.answered.values()),
            "refused_total": sum(n for status, n in self.answered.items() if status >= 400),
            "handed_back_total": self.handed_back_total,
        }

    # watchdog thread -----------------------------------------------------------------------

    def loop_stuck(self, tick: float) -> None:
        """The busy span begun at ``tick`` is stuck past the threshold: serve until it ends.
        Watchdog thread; returns at once."""
        if self._closed.is_set() or not any(_is_open(each) for each in self._listeners):
            return
        with self._lock:
            self._tick = tick
            if self._thread is not None:
                return  # serving (an earlier span that is ending: it goes on with this one)
            thread = threading.Thread(target=self._run, name="reactor-dashboard-stuck")
            thread.daemon = True
            self._thread = thread
            self.starts_total += 1
        thread.start()

    # this module's thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    tick = self._tick
                    if tick is None or self._closed.is_set() or self.busy_since() != tick:
                        self._thread = None
                        return
                try:
                    self._serve(tick)
                except Exception as exc:
                    self.on_error(exc)
                with self._lock:
                    if self._tick == tick:
                        self._thread = None
                        return
        except BaseException:
            with self._lock:
                self._thread = None
            raise

    def _serve(self, tick: float) -> None:
        """Accept and answer until the span begun at ``tick`` ends (or ``close()``). Every
        connection is read and written without blocking, in this one poll loop, each with one
        absolute deadline: no client holds the thread."""
        listeners = {each.socket.fileno(): each for each in self._listeners if _is_open(each)}
        conns: dict[int, _Pending] = {}
        poller = select.poll()
        listening = False  # whether the listening fds are registered
        accepting = True
        backoff_until = 0.0  # after an accept error (EMFILE...): not before then
        try:
            while True:
                self.polls_total += 1
                now = time.monotonic()
                if self._closed.is_set():
                    return  # Monitor.stop(): what is left is closed (finally)
                if accepting and self.busy_since() != tick:
                    accepting = False
                    # the loop runs: what is still being read, the reactor reads on
                    for each in [c for c in conns.values() if c.out is None]:
                        self._finish(poller, conns, each, complete=False)
                for each in [c for c in conns.values() if c.deadline <= now]:
                    if each.out is None:
                        self._finish(poller, conns, each, complete=False)
                    else:
                        self._close(poller, conns, each)
                if not accepting and not conns:
                    return
                want = accepting and len(conns) < MAX_PENDING and now >= backoff_until
                if want != listening:
                    for fd in listeners:
                        if want:
                            poller.register(fd, select.POLLIN)
                        else:
                            poller.unregister(fd)
                    listening = want
                wake = [each.deadline for each in conns.values()]
                if accepting and not listening and len(conns) < MAX_PENDING:
                    wake.append(backoff_until)
                timeout_s = min([POLL_S, *(at - now for at in wake)])
                for fd, events in poller.poll(max(0.0, timeout_s) * 1000 + 1):
                    listener = listeners.get(fd)
                    if listener is not None:
                        if listening and not self._accept(poller, conns, listener):
                            backoff_until = time.monotonic() + ACCEPT_BACKOFF_S
                    elif fd in conns:
                        self._ready(poller, conns, conns[fd], events)
        finally:
            for each in [c for c in conns.values() if c.out is None]:
                self._finish(poller, conns, each, complete=False)  # the reactor reads on
            for each in list(conns.values()):
                self._close(poller, conns, each)  # answers not written by now are dropped

    def _accept(self, poller: Any, conns: dict[int, _Pending], listener: Listener) -> bool:
        """Accept what waits on ``listener``, up to :data:`MAX_PENDING` connections in all;
        False after an error (too many open files...): the caller backs off."""
        while len(conns) < MAX_PENDING:
            try:
                sock, address = listener.socket.accept()
            except (BlockingIOError, InterruptedError):
                break  # none left (or the reactor, running again, took it)
            except OSError as exc:
                self.accept_errors_total += 1
                if not self._accept_failing:  # told once per run of errors, not every pass
                    self._accept_failing = True
                    self.on_error(exc)
                return False
            self._accept_failing = False
            sock.setblocking(False)
            deadline = time.monotonic() + READ_TIMEOUT_S
            conns[sock.fileno()] = _Pending(sock, address, listener, deadline)
            poller.register(sock.fileno(), select.POLLIN)
        return True

    def _ready(self, poller: Any, conns: dict[int, _Pending], each: _Pending, events: int) -> None:
        """``each`` can be read or written: read its head, write its answer, or drain what
        the client still sends after it (so that close() sends no reset cutting it short)."""
        if each.out is not None and each.out and events & (select.POLLOUT | select.POLLERR):
            self._write(poller, conns, each)
            return
        try:
            chunk = each.sock.recv(
                4096 if each.out is not None else MAX_HEAD_BYTES + 1 - len(each.data)
            )
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:  # the client left (or, answered, closed its side)
            self._close(poller, conns, each)
            return
        if each.out is not None:
            return  # lingering: what it sends now is dropped
        each.data += chunk
        if head_end(each.data) >= 0 or len(each.data) > MAX_HEAD_BYTES:
            self._finish(poller, conns, each, complete=True)

    def _write(self, poller: Any, conns: dict[int, _Pending], each: _Pending) -> None:
        out = each.out
        assert out is not None
        try:
            sent = each.sock.send(out[:65536])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(poller, conns, each)
            return
        each.out = out[sent:]
        if not each.out:  # written: linger a little reading, then close
            with contextlib.suppress(OSError):
                each.sock.shutdown(socket.SHUT_WR)
            each.deadline = min(each.deadline, time.monotonic() + LINGER_S)
            poller.modify(each.sock.fileno(), select.POLLIN)

    def _forget(self, poller: Any, conns: dict[int, _Pending], each: _Pending) -> None:
        fd = each.sock.fileno()
        if conns.pop(fd, None) is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                poller.unregister(fd)

    def _close(self, poller: Any, conns: dict[int, _Pending], each: _Pending) -> None:
        self._forget(poller, conns, each)
        with contextlib.suppress(OSError):
            each.sock.close()

    def _finish(
        self, poller: Any, conns: dict[int, _Pending], each: _Pending, *, complete: bool
    ) -> None:
        """Answer ``each`` here (its answer is written by the poll loop), or hand it back to
        the reactor."""
        end = head_end(each.data) if complete else -1
        request = parse_head(each.data[:end], each.listener.prefix) if end >= 0 else None
        reply: Answer | None = None
        if request is not None:
            try:
                reply = self._answer(each, request)
            except Exception as exc:
                self.on_error(exc)
                reply = error_answer(500, "internal_error", f"{type(exc).__name__} while stuck")
        if reply is None and self._reserve_hand_back():
            self._forget(poller, conns, each)
            self._hand_back(each)
            return
        if reply is None:  # too many wait for the loop already: this one is told so
            reply = error_answer(
                503,
                "loop_stuck",
                "the event loop is stuck and too many requests wait for it; try again later",
                headers=((b"Retry-After", b"%d" % RETRY_AFTER_S),),
            )
        self.answered[reply.status] += 1
        head_only = request is not None and request.method == b"HEAD"
        each.out = memoryview(reply.encode(head_only=head_only))
        each.deadline = time.monotonic() + WRITE_TIMEOUT_S
        if each.sock.fileno() not in conns:
            conns[each.sock.fileno()] = each
            poller.register(each.sock.fileno(), select.POLLOUT)
        else:
            poller.modify(each.sock.fileno(), select.POLLOUT)

    def _answer(self, each: _Pending, request: Any) -> Answer | None:
        try:
            local = each.sock.getsockname()
        except OSError:
            local = None
        arrived_on = local[0] if isinstance(local, tuple) and local else None
        return answer(
            request,
            guard=each.listener.guard,
            arrived_on=arrived_on if isinstance(arrived_on, str) else None,
            newest=self.newest,
            stuck_now=self.stuck_now,
            families=self.families,
        )

    def _reserve_hand_back(self) -> bool:
        """Count one more connection handed back, unless :data:`MAX_HANDED_BACK` wait for
        the reactor already (each an open file and two queued calls until it runs)."""
        with self._lock:
            if self._handed_out >= MAX_HANDED_BACK:
                return False
            self._handed_out += 1
            return True

    def _adopted(self) -> None:
        """A connection handed back reached the reactor (or was closed). Reactor thread."""
        with self._lock:
            self._handed_out = max(0, self._handed_out - 1)

    @property
    def waiting_for_the_loop(self) -> int:
        """Connections handed back that the reactor has not taken yet."""
        return self._handed_out

    def _hand_back(self, each: _Pending) -> None:
        self.handed_back_total += 1
        try:
            listener = each.listener
            self.call_from_thread(
                _adopt_soon, listener.port, each.sock, each.address, each.data, self._adopted
            )
        except Exception as exc:  # the reactor is gone: nobody will read it
            self._adopted()
            self.on_error(exc)
            with contextlib.suppress(OSError):
                each.sock.close()


def _is_open(listener: Listener) -> bool:
    return listener.socket.fileno() >= 0 and bool(getattr(listener.port, "connected", True))


def _is_plain_site(factory: Any) -> bool:
    """Whether ``factory`` is a twisted.web site itself (not wrapped for TLS)."""
    from twisted.web.server import Site

    return isinstance(factory, Site)


def _adopt_soon(
    port: Any, sock: socket.socket, address: Any, data: bytes, adopted: Callable[[], None]
) -> None:
    """Reactor thread, as soon as it runs again: :func:`_adopt` at the next turn of the loop,
    after its next wait, as when the port itself accepts. Right now it may still be in the
    busy span that was stuck (a block at start-up, before the first wait): the span ends
    first, and what the connection asks (``?fresh=1``) sees the block recorded. (A call
    queued from the reactor thread while it runs the queued calls waits for the next turn,
    on every reactor; a ``callLater(0)`` would run in this one.)"""
    try:
        port.reactor.callFromThread(_adopt, port, sock, address, data, adopted)
    except Exception:
        adopted()
        with contextlib.suppress(OSError):
            sock.close()
        raise


def _adopt(
    port: Any, sock: socket.socket, address: Any, data: bytes, adopted: Callable[[], None]
) -> None:
    """Reactor thread: make ``sock``, accepted by the stuck server, a connection of ``port``
    as ``twisted.internet.tcp.Port.doRead`` does, and give it the bytes read so far as its
    ``doRead`` does (through the transport's ``_dataReceived``, so the connections probe
    counts them); a failure there disconnects it as the reactor does, through the transport.
    ``adopted()`` is told in any case."""
    adopted()
    transport = None
    try:
        if not getattr(port, "connected", False):
            sock.close()
            return
        if isinstance(address, tuple) and len(address) == 4:  # IPv6: keep the scope id
            host = socket.getnameinfo(address, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
            address = (host[0], *address[1:])
        protocol = port.factory.buildProtocol(port._buildAddr(address))
        if protocol is None:
            sock.close()
            return
        session = port.sessionno
        port.sessionno = session + 1
        transport = port.transport(sock, protocol, address, port, session, port.reactor)
        protocol.makeConnection(transport)
        why = None
        if data and not transport.disconnecting and not getattr(transport, "disconnected", 0):
            why = transport._dataReceived(data)
    except Exception as exc:
        if transport is None:
            with contextlib.suppress(OSError):
                sock.close()
            raise
        why = exc
        _log.failure("replaying the request read while the loop was stuck")
    if why and not getattr(transport, "disconnected", 0):
        port.reactor._disconnectSelectable(transport, why, True)
