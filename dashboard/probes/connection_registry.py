"""The connection registry: every open stream transport and listening port, with counters.

A record is a weak reference (``weakref.ref`` subclass with ``__slots__``) to the transport,
stamped with its creation time, kind, TLS flag and byte counters; the registry is a plain
``dict`` keyed by ``id(transport)``. Dicts keep insertion order, so iterating it yields the
connections oldest first at no cost. The reference is weak so the registry never keeps a
transport (and its socket) alive: a transport garbage-collected without ``connectionLost``
(a paused transport dropped by its owner) is removed by the reference's callback and counted
in ``abandoned``.

All methods run on the reactor thread, except the weak-reference callbacks, which run
wherever the garbage collector does (a lost increment is possible there, never an exception).
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import tcp, unix

from dashboard.probes.base import TimeSource

#: Connection kinds, in the order ``by_kind`` lists them. ``other`` is a ``tcp.Connection``
#: subclass that is neither a server nor a client (none ship with Twisted's POSIX reactors).
KINDS = ("tcp_server", "tcp_client", "unix_server", "unix_client", "other")


def kind_of(cls: type) -> str:
    """The kind of a transport class. unix classes first: ``unix.Server`` subclasses
    ``tcp.Server`` and ``unix.Client`` subclasses ``tcp.BaseClient``."""
    if issubclass(cls, unix.Server):
        return "unix_server"
    if issubclass(cls, unix.Client):
        return "unix_client"
    if issubclass(cls, tcp.Server):
        return "tcp_server"
    if issubclass(cls, tcp.BaseClient):
        return "tcp_client"
    return "other"


_E = TypeVar("_E")


class ConnEntry(weakref.ref):  # type: ignore[type-arg]
    """One open connection: a weak reference to its transport plus what the hooks count.

    ``created`` is in the clock's seconds; ``bytes_in``/``bytes_out`` are bytes on the wire
    (for TLS, the encrypted bytes).
    """

    __slots__ = ("bytes_in", "bytes_out", "created", "key", "kind", "last_in", "tls")

    key: int
    created: float
    kind: str
    tls: bool
    bytes_in: int
    bytes_out: int
    #: when bytes last came in (clock seconds; ``created`` until then)
    last_in: float


class PortEntry(weakref.ref):  # type: ignore[type-arg]
    """One listening port: a weak reference to it, its description (taken once when it
    starts listening) and how many connections it accepted since then."""

    __slots__ = ("accepted", "address", "factory", "key", "kind", "tls")

    key: int
    address: str
    factory: str
    kind: str
    tls: bool
    accepted: int


def _head(table: dict[int, _E], n: int) -> list[_E]:
    # A gc callback (an abandoned transport) may delete from the dict mid-iteration.
    for _ in range(3):
        try:
            return list(itertools.islice(table.values(), n))
        except RuntimeError:
            continue
    return []


class ConnectionRegistry:
    """Open connections and listening ports, with open/close/fail counters.

    ``open`` is ``len(entries)``; ``opened + adopted == open + closed + failed_registered +
    abandoned`` holds at all times (``failed`` also counts connects that failed before their
    transport was registered).
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_kinds",
        "_on_conn_gone",
        "_on_port_gone",
        "abandoned",
        "adopted",
        "closed",
        "entries",
        "failed",
        "open_by_kind",
        "opened",
        "ports",
        "tls_open",
    )

    def __init__(self, clock: TimeSource) -> None:
        self._clock = clock
        #: transport class -> kind, filled on first sight of each class
        self._kinds: dict[type, str] = {}
        #: id(transport) -> entry, in open order (oldest first)
        self.entries: dict[int, ConnEntry] = {}
        #: id(port) -> entry, in listen order
        self.ports: dict[int, PortEntry] = {}
        self.open_by_kind: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.tls_open = 0
        self.opened = 0
        self.closed = 0
        self.failed = 0
        self.abandoned = 0
        self.adopted = 0
        # Made once: a bound method per entry would cost a new object per connection.
        self._on_conn_gone: Callable[[ConnEntry], None] = self._conn_gone
        self._on_port_gone: Callable[[PortEntry], None] = self._port_gone

    # connections ---------------------------------------------------------------------------

    def add(self, transport: Any, *, adopted: bool = False) -> None:
        """Register a transport whose ``Connection.__init__`` just returned (or, with
        ``adopted``, one that was already open when the probe was installed)."""
        key = id(transport)
        entries = self.entries
        if key in entries:  # __init__ run twice on one object: keep one record
            self._drop(entries.pop(key))
        else:
            if adopted:
                self.adopted += 1
            else:
                self.opened += 1
        cls = transport.__class__
        kind = self._kinds.get(cls)
        if kind is None:
            kind = self._kinds[cls] = kind_of(cls)
        entry = ConnEntry(transport, self._on_conn_gone)
        entry.key = key
        entry.created = self._clock()
        entry.kind = kind
        entry.tls = False
        entry.bytes_in = 0
        entry.last_in = entry.created
        entry.bytes_out = 0
        entries[key] = entry
        self.open_by_kind[kind] += 1

    def remove(self, transport: Any) -> None:
        """``connectionLost`` is running: forget the transport (a second call does nothing)."""
        entry = self.entries.pop(id(transport), None)
        if entry is not None:
            self.closed += 1
            self._drop(entry)

    def connect_failed(self, transport: Any) -> None:
        """A client's connection attempt failed (``failIfNotConnected`` is about to act)."""
        self.failed += 1
        entry = self.entries.pop(id(transport), None)
        if entry is not None:
            self._drop(entry)

    def mark_tls(self, transport: Any) -> None:
        """A TLS layer was put on ``transport`` (if it is registered)."""
        entry = self.entries.get(id(transport))
        if entry is not None and not entry.tls:
            entry.tls = True
            self.tls_open += 1

    def _drop(self, entry: ConnEntry) -> None:
        self.open_by_kind[entry.kind] -= 1
        if entry.tls:
            self.tls_open -= 1

    def _conn_gone(self, entry: ConnEntry) -> None:
        # The transport was collected while registered: connectionLost never ran.
        try:
            if self.entries.get(entry.key) is entry:
                del self.entries[entry.key]
                self.abandoned += 1
                self._drop(entry)
        except Exception:  # a gc callback must never raise; counters may drift by one
            pass

    # listening ports -----------------------------------------------------------------------

    def add_port(self, port: Any, *, address: str, factory: str, kind: str, tls: bool) -> None:
        """Register a port that started listening."""
        key = id(port)
        if key in self.ports:  # startListening of a subclass chaining to its base
            return
        entry = PortEntry(port, self._on_port_gone)
        entry.key = key
        entry.address = address
        entry.factory = factory
        entry.kind = kind
        entry.tls = tls
        entry.accepted = 0
        self.ports[key] = entry

    def remove_port(self, port: Any) -> None:
        """The port stopped listening."""
        self.ports.pop(id(port), None)

    def accepted(self, port: Any) -> None:
        """``port`` accepted one connection."""
        entry = self.ports.get(id(port))
        if entry is not None:
            entry.accepted += 1

    def _port_gone(self, entry: PortEntry) -> None:
        try:
            if self.ports.get(entry.key) is entry:
                del self.ports[entry.key]
        except Exception:  # a gc callback must never raise
            pass

    def oldest(self, n: int) -> list[ConnEntry]:
        """The ``n`` oldest open connections, oldest first (costs ``n``, not the open count)."""
        return _head(self.entries, n)

    def first_ports(self, n: int) -> list[PortEntry]:
        """The ``n`` ports listening the longest."""
        return _head(self.ports, n)

    def clear(self) -> None:
        """Forget everything tracked (the hooks are gone: nothing would remove it)."""
        self.entries.clear()
        self.ports.clear()
