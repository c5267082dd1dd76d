"""Open connections: how many of each kind, listening ports, slow consumers, oldest first.

Hooks (all on classes, installed by ``install()``, restored exactly by ``uninstall()``):

- ``tcp.Connection.__init__``: register the transport (TCP, unix and TLS-over-TCP, server
  and client side; a client registers before its connect completes, with no protocol).
- ``tcp.Connection.connectionLost``: unregister, count a close.
- ``tcp.BaseClient.failIfNotConnected``: count a failed connect, unregister (failed
  connects never reach ``connectionLost``).
- Bytes in and out, and when bytes last came in (an in-flight HTTP request's age is counted
  from it: for HTTP/1.1 that is when its request arrived; pipelined requests share it). For
  TCP, on Linux, the kernel has them (``tcp_counters``): they are read when a connection is
  shown, and TCP transports run Twisted's own ``_dataReceived`` and ``writeSomeData``
  (``tcp.Server`` and ``tcp.Client`` are given the originals, which hide the hooks below).
  Unix sockets, and TCP where the kernel does not count, take hooks on
  ``tcp.Connection._dataReceived`` / ``writeSomeData`` (and on ``unix.Server``'s, which
  would otherwise find the originals on ``tcp.Server``) that add to the record on every
  call: ``dashboard._accel.IOHook`` objects where the accelerator is built (no Python frame
  per call), Python wrappers otherwise.
- ``tcp.Server.__init__``: count one accept for its listening port (``.server`` is set
  after ``Connection.__init__`` returns).
- ``tcp.Port.startListening``, ``unix.Port.startListening`` (which does not chain to TCP's)
  and ``tcp.Port.connectionLost`` (which unix's does chain to): listening ports.
- ``TLSMemoryBIOProtocol.makeConnection``: mark the transport TLS (covers listenSSL,
  connectSSL, TLS endpoints and ``startTLS``).

``twisted.web.http.Request.__init__`` is deliberately not hooked: stamping each request
cost 9,000 CPU instructions per Klein request under callgrind (2% of a hello-world); the
time of the last bytes in comes from the kernel, or costs one clock call in the read hook.

The dashboard's own port (``mark_own(factory)``, which ``Monitor.listen`` calls before it
listens) and the connections accepted on it are counted apart (``own``): the program's
figures never include them. The probe never imports the web layer: it is told the factory.

Request URIs pass through a ``dashboard.redact.Redactor`` (secret query parameters and URL
passwords become ``<redacted>``) before they are cut to length; no header is ever read.

Hot paths pay a dict lookup and an addition (TCP with kernel counts: nothing per read or
write); everything else happens in ``collect()``, whose cost is the ``top_n`` connections
shown plus the reactor's current writers (the only transports with pending output, hence the
only possible slow consumers), not the number open.
"""

from __future__ import annotations

import functools
import heapq
import weakref
from collections.abc import Callable
from typing import Any

from twisted.internet import tcp, unix
from twisted.internet._newtls import _BypassTLS

from dashboard import accel
from dashboard.probes import tcp_counters
from dashboard.probes.base import JSONDict, Patcher, ProbeErrors, TimeSource
from dashboard.probes.connection_detail import (
    TLSMemoryBIOProtocol,
    describe,
    describe_port,
    format_address,
    is_port,
    pending_write_bytes,
    unwrap_protocol,
)
from dashboard.probes.connection_registry import KINDS, ConnectionRegistry, ConnEntry
from dashboard.redact import Redactor, default_redactor

#: Slow consumers listed in ``slow_consumer_items`` (the count is exact).
MAX_SLOW_CONSUMERS_SHOWN = 10
#: Connection kinds whose counts the kernel keeps when ``kernel_counts`` is on.
_KERNEL_COUNTED = frozenset({"tcp_server", "tcp_client"})

AnyFunc = Callable[..., Any]


class ConnectionsProbe:
    """The ``connections`` section of the snapshot. Reactor thread only.

    ``top_n``: connections listed in ``items`` (oldest first) and ports in ``listening``.
    Totals count from the latest ``install()``; connections already open then are adopted
    (``adopted_at_install``; their ages count from the install). ``redactor`` hides
    credentials in request URIs (default: ``dashboard.redact.default_redactor``).
    """

    name = "connections"

    def __init__(
        self,
        reactor: Any,
        errors: ProbeErrors,
        clock: TimeSource,
        *,
        top_n: int = 100,
        accelerate: bool | None = None,
        kernel_counts: bool | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        """``accelerate``: count bytes in and out with the compiled hooks
        (``dashboard._accel.IOHook``; True: required, an error where not built; None: where
        built, unless ``REACTOR_DASHBOARD_ACCEL=0``; False: never).

        ``kernel_counts``: read TCP connections' counts from the kernel instead of hooking
        every read and write (True: required, an error where the kernel does not count;
        None: where it does; False: never)."""
        if top_n < 1:
            raise ValueError(f"top_n must be >= 1, got {top_n!r}")
        self.accelerated = accel.resolve(accelerate)
        self.hot_path_reason = accel.hot_path_reason(accelerate, self.accelerated)
        if kernel_counts is None:
            kernel_counts = tcp_counters.available()
        elif kernel_counts and not tcp_counters.available():
            raise RuntimeError("this kernel does not count TCP bytes (TCP_INFO, Linux 4.1+)")
        self.kernel_counts = kernel_counts
        self._reactor = reactor
        self._errors = errors
        self._clock = clock
        self.top_n = top_n
        self._patcher = Patcher()
        self.registry = ConnectionRegistry(clock)
        self.redactor = redactor if redactor is not None else default_redactor
        self._redact = self.redactor.uri
        #: id(factory) -> a reference to it: the dashboard's own servers (see ``mark_own``)
        self._own_factories: dict[int, Callable[[], object]] = {}

    # the dashboard's own -------------------------------------------------------------------

    def mark_own(self, factory: object) -> None:
        """Count ``factory``'s listening ports, and the connections they accept, as the
        dashboard's own (``own``), out of every program figure. Call it before the factory
        listens (a port already listening moves, with its open connections). The factory is
        held weakly where it can be. Reactor thread."""
        try:
            ref: Callable[[], object] = weakref.ref(factory)
        except TypeError:  # not weak-referenceable: hold it (one object per call)
            ref = functools.partial(_same, factory)
        own = {key: old for key, old in self._own_factories.items() if old() is not None}
        own[id(factory)] = ref
        self._own_factories = own  # factories gone (a monitor listening again) are dropped
        for entry in list(self.registry.ports.values()):
            port = entry()
            if port is not None and self._is_own_port(port):
                self.registry.make_port_own(port)

    def own_requests(self) -> list[Any]:
        """The HTTP requests in flight on the dashboard's own connections (its page, API and
        stream answers), for the Deferred probe to count what they hold as the dashboard's.
        O(own connections); reactor thread."""
        found: list[Any] = []
        for entry in list(self.registry.own_entries.values()):
            transport = entry()
            protocol = getattr(transport, "protocol", None)
            for _ in range(4):  # TLS and policy wrappers over the HTTP channel
                requests = getattr(protocol, "requests", None)
                if isinstance(requests, list):
                    found.extend(requests)
                    break
                # TLS's wrappedProtocol; twisted.web's HTTP/1.1-or-2 switch keeps the channel
                # in _channel
                inner = getattr(protocol, "wrappedProtocol", None)
                protocol = inner if inner is not None else getattr(protocol, "_channel", None)
                if protocol is None:
                    break
        return found

    def is_own(self, transport: object) -> bool:
        """Whether ``transport`` (a TCP or unix transport, or a TLS layer or protocol wrapper
        over one, as ``protocol.transport`` gives) is a connection accepted on the dashboard's
        own port. A few dict lookups; reactor thread (other probes ask it, e.g. to keep the
        dashboard's idle-connection timeouts out of the program's)."""
        own = self.registry.own_entries
        if not own:
            return False
        for _ in range(4):  # TLS and policy wrappers nest a few deep at most
            if id(transport) in own:
                return True
            transport = getattr(transport, "transport", None)
            if transport is None:
                return False
        return False

    def _is_own_port(self, port: Any) -> bool:
        factory = getattr(port, "factory", None)
        own = self._own_factories
        for candidate in (factory, getattr(factory, "wrappedFactory", None)):  # TLS wraps
            if candidate is not None:
                ref = own.get(id(candidate))
                if ref is not None and ref() is candidate:
                    return True
        return False

    # lifecycle -----------------------------------------------------------------------------

    def install(self) -> None:
        """Patch the transport classes and adopt what is already open. Idempotent."""
        if self._patcher.active:
            return
        self.registry = registry = ConnectionRegistry(self._clock)
        self._adopt_existing()
        patch = self._patcher.patch
        record = self._record
        entries_get = registry.entries.get
        register_port = self._register_port

        # Every wrapper calls the original with the same arguments and passes its result
        # (or exception) through; bookkeeping errors are recorded, never raised.
        def wrap(owner: type, name: str, make: Callable[[AnyFunc], AnyFunc]) -> None:
            original: AnyFunc = getattr(owner, name)
            patch(owner, name, functools.wraps(original)(make(original)))

        enabled = self._errors.enabled
        name = self.name

        def conn_init(original: AnyFunc) -> AnyFunc:
            def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
                original(self, *args, **kwargs)
                try:
                    if enabled(name):  # a probe failing over and over stops tracking
                        registry.add(self)
                except Exception as exc:
                    record(exc)

            return __init__

        def conn_lost(original: AnyFunc) -> AnyFunc:
            def connectionLost(self: Any, reason: Any) -> Any:
                try:
                    registry.remove(self)
                except Exception as exc:
                    record(exc)
                return original(self, reason)

            return connectionLost

        def fail_connect(original: AnyFunc) -> AnyFunc:
            def failIfNotConnected(self: Any, err: Any) -> Any:
                try:
                    # The same test the original makes before it acts.
                    if not (self.connected or self.disconnected or not hasattr(self, "connector")):
                        registry.connect_failed(self)
                except Exception as exc:
                    record(exc)
                return original(self, err)

            return failIfNotConnected

        clock = self._clock

        def data_received(original: AnyFunc) -> AnyFunc:
            def _dataReceived(self: Any, data: Any) -> Any:
                try:
                    if data:
                        entry = entries_get(id(self))
                        if entry is not None:
                            entry.bytes_in += len(data)
                            entry.last_in = clock()
                except Exception as exc:
                    record(exc)
                return original(self, data)

            return _dataReceived

        def write_some(original: AnyFunc) -> AnyFunc:
            def writeSomeData(self: Any, data: Any) -> Any:
                sent = original(self, data)
                try:
                    # An int is the count sent; a ConnectionLost instance is returned on error.
                    if sent.__class__ is int and sent > 0:
                        entry = entries_get(id(self))
                        if entry is not None:
                            entry.bytes_out += sent
                except Exception as exc:
                    record(exc)
                return sent

            return writeSomeData

        def server_init(original: AnyFunc) -> AnyFunc:
            def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
                original(self, *args, **kwargs)
                try:
                    registry.accepted(self)
                except Exception as exc:
                    record(exc)

            return __init__

        def start_listening(original: AnyFunc) -> AnyFunc:
            def startListening(self: Any) -> Any:
                result = original(self)
                try:
                    register_port(self)
                except Exception as exc:
                    record(exc)
                return result

            return startListening

        def port_lost(original: AnyFunc) -> AnyFunc:
            def connectionLost(self: Any, reason: Any) -> Any:
                try:
                    registry.remove_port(self)
                except Exception as exc:
                    record(exc)
                return original(self, reason)

            return connectionLost

        in_hook: Callable[[AnyFunc], AnyFunc] = data_received
        out_hook: Callable[[AnyFunc], AnyFunc] = write_some
        if self.accelerated:
            in_hook = self._compiled_hook("in")
            out_hook = self._compiled_hook("out")
        try:
            wrap(tcp.Connection, "__init__", conn_init)
            wrap(tcp.Connection, "connectionLost", conn_lost)
            wrap(tcp.BaseClient, "failIfNotConnected", fail_connect)
            if self.kernel_counts:
                # TCP transports keep Twisted's functions. unix.Server, a tcp.Server, takes
                # the hooks back: on its _dataReceived, and on its writeSomeData, which
                # sends through tcp.Server's. unix.Client inherits both hooks from
                # tcp.Connection (its writeSomeData sends through tcp.BaseClient's).
                for cls in (tcp.Server, tcp.Client):
                    patch(cls, "_dataReceived", cls._dataReceived)
                    patch(cls, "writeSomeData", cls.writeSomeData)
                wrap(unix.Server, "_dataReceived", in_hook)
                wrap(unix.Server, "writeSomeData", out_hook)
            wrap(tcp.Connection, "_dataReceived", in_hook)
            wrap(tcp.Connection, "writeSomeData", out_hook)
            wrap(tcp.Server, "__init__", server_init)
            wrap(tcp.Port, "startListening", start_listening)
            wrap(unix.Port, "startListening", start_listening)
            wrap(tcp.Port, "connectionLost", port_lost)
            if TLSMemoryBIOProtocol is not None:
                wrap(TLSMemoryBIOProtocol, "makeConnection", self._tls_hook)
        except BaseException:
            self.uninstall()
            raise

    def uninstall(self) -> None:
        """Restore every patched attribute and forget every tracked transport."""
        self._patcher.restore()
        self.registry.clear()

    # hooks that need more than a closure -----------------------------------------------------

    def _record(self, exc: BaseException) -> None:
        self._errors.record(self.name, exc)

    def _compiled_hook(self, kind: str) -> Callable[[AnyFunc], AnyFunc]:
        """A maker of the C twin of ``data_received`` ("in") or ``write_some`` ("out")."""
        built = accel.built
        assert built is not None
        entries = self.registry.entries
        clock = self._clock

        def make(original: AnyFunc) -> AnyFunc:
            hook: AnyFunc = built.IOHook(
                kind=kind,
                original=original,
                entries=entries,
                clock=clock,
                record_error=self._record,
            )
            return hook

        return make

    def _tls_hook(self, original: AnyFunc) -> AnyFunc:
        registry = self.registry
        record = self._record

        def makeConnection(proto: Any, transport: Any) -> Any:
            try:
                # startTLS hands the TLS protocol a _BypassTLS around the real transport.
                real = transport._connection if transport.__class__ is _BypassTLS else transport
                registry.mark_tls(real)
            except Exception as exc:
                record(exc)
            return original(proto, transport)

        return makeConnection

    def _register_port(self, port: Any) -> None:
        address, factory, kind, tls = describe_port(port)
        self.registry.add_port(
            port,
            address=address,
            factory=factory,
            kind=kind,
            tls=tls,
            own=bool(self._own_factories) and self._is_own_port(port),
        )

    def _adopt_existing(self) -> None:
        """Register the transports and ports the reactor already watches (paused transports
        with nothing to write are not in its reader/writer sets and stay unknown). Ports
        first, so a connection accepted by the dashboard's own port is known as its own."""
        try:
            selectables = [*self._reactor.getReaders(), *self._reactor.getWriters()]
        except Exception:  # a reactor without IReactorFDSet: nothing to adopt
            return
        registry = self.registry
        for selectable in selectables:
            try:
                if is_port(selectable) and getattr(selectable, "connected", False):
                    self._register_port(selectable)
            except Exception as exc:
                self._record(exc)
        for selectable in selectables:
            try:
                if isinstance(selectable, tcp.Connection) and id(selectable) not in (
                    registry.entries
                ):
                    registry.add(selectable, adopted=True)
                    if (
                        getattr(selectable, "TLS", False)
                        or unwrap_protocol(getattr(selectable, "protocol", None))[1]
                    ):
                        registry.mark_tls(selectable)
                    if id(getattr(selectable, "server", None)) in registry.own_ports:
                        registry.make_own(selectable)
            except Exception as exc:
                self._record(exc)

    # collect -------------------------------------------------------------------------------

    def collect(self) -> JSONDict:
        """The snapshot section. Costs ``top_n`` connections plus the reactor's writers."""
        registry = self.registry
        now = self._clock()
        entries = registry.entries
        by_kind: dict[str, int] = {kind: registry.open_by_kind[kind] for kind in KINDS}
        by_kind["tls"] = registry.tls_open

        items: list[JSONDict] = []
        for entry in registry.oldest(self.top_n):
            transport = entry()
            if transport is None:
                continue
            try:
                items.append(self._describe(entry, transport, now))
            except Exception as exc:
                self._record(exc)

        listening: list[JSONDict] = [
            {
                "address": port.address,
                "factory": port.factory,
                "accepted_total": port.accepted,
                "kind": port.kind,
                "tls": port.tls,
            }
            for port in registry.first_ports(self.top_n)
        ]

        slow_count, slow_items = self._slow_consumers(now)
        return {
            "open": len(entries),
            "opened_total": registry.opened,
            "closed_total": registry.closed,
            "failed_connects_total": registry.failed,
            "abandoned_total": registry.abandoned,
            "adopted_at_install": registry.adopted,
            "by_kind": by_kind,
            "listening": listening,
            "slow_consumers": slow_count,
            "slow_consumer_items": slow_items,
            "items": items,
            "items_total": len(entries),
            "items_truncated": len(entries) > self.top_n,
            "hot_path": "compiled" if self.accelerated else "python",
            "hot_path_reason": self.hot_path_reason,
            "tcp_counts": "kernel" if self.kernel_counts else "hooks",
            "own": {
                "open": len(registry.own_entries),
                "listening": [port.address for port in registry.first_own_ports(self.top_n)],
            },
        }

    def _describe(self, entry: ConnEntry, transport: Any, now: float) -> JSONDict:
        if self.kernel_counts and entry.kind in _KERNEL_COUNTED:
            try:
                tcp_counters.refresh(
                    entry, transport.socket, now, active_open=entry.kind == "tcp_client"
                )
            except OSError:  # closed, or not TCP after all: the counts last read stand
                pass
            except Exception as exc:  # still shown, with the counts last read
                self._record(exc)
        return describe(entry, transport, now, self._redact)

    def _slow_consumers(self, now: float) -> tuple[int, list[JSONDict]]:
        """Registered transports whose pending output exceeds their ``bufferSize``. Only the
        reactor's writers can have pending output, so only they are looked at."""
        entries = self.registry.entries
        try:
            writers = self._reactor.getWriters()
        except Exception:  # no IReactorFDSet: look at every registered transport instead
            writers = [t for t in (e() for e in list(entries.values())) if t is not None]
        slow: list[tuple[int, int, Any]] = []
        for transport in writers:
            entry = entries.get(id(transport))
            if entry is None:
                continue
            try:
                pending = pending_write_bytes(transport)
                if pending > transport.bufferSize:
                    slow.append((pending, entry.key, transport))
            except Exception as exc:
                self._record(exc)
        shown: list[JSONDict] = []
        for _pending, key, transport in heapq.nlargest(
            MAX_SLOW_CONSUMERS_SHOWN, slow, key=lambda s: s[0]
        ):
            entry = entries.get(key)
            if entry is None:
                continue
            try:
                item = self._describe(entry, transport, now)
                item.pop("requests", None)
                shown.append(item)
            except Exception as exc:
                self._record(exc)
        return len(slow), shown


def _same(obj: object) -> object:
    return obj


__all__ = ["ConnectionsProbe", "format_address"]
