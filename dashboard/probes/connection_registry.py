"""The connection registry: every open stream transport and listening port, with counters.

A record is a weak reference (``weakref.ref`` subclass with ``__slots__``) to the transport,
stamped with its creation time, kind, TLS flag and byte counters; the registry is a plain
``dict`` keyed by ``id(transport)``. Dicts keep insertion order, so iterating it yields the
connections oldest first at no cost. The reference is weak so the registry never keeps a
transport (and its socket) alive: a transport garbage-collected without ``connectionLost``
(a paused transport dropped by its owner) is removed by the reference's callback and counted
in ``abandoned``.

The dashboard's own listening ports (``own=True``) and the connections they accept are kept
apart, in ``own_ports`` and ``own_entries``: every program figure (``entries``, the counters,
``open_by_kind``) leaves them out, and the byte hooks, which look in ``entries`` only, never
count them.

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


class AdoptedConnEntry(ConnEntry):
    """A connection already open when the probe was installed (counted in ``adopted``, not
    ``opened``): its class says so, at no memory cost."""

    __slots__ = ()


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
    transport was registered). The dashboard's own (``own_entries``, ``own_ports``) are in
    none of these; ``own_opened`` counts the connections its ports accepted.
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
        "own_entries",
        "own_opened",
        "own_ports",
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
        #: the dashboard's own: id -> entry, as ``entries`` and ``ports``
        self.own_entries: dict[int, ConnEntry] = {}
        self.own_ports: dict[int, PortEntry] = {}
        self.own_opened = 0
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
            previous = entries.pop(key)
            self._drop(previous)
            adopted = previous.__class__ is AdoptedConnEntry
        else:
            if adopted:
                self.adopted += 1
            else:
                self.opened += 1
        cls = transport.__class__
        kind = self._kinds.get(cls)
        if kind is None:
            kind = self._kinds[cls] = kind_of(cls)
        entry = (AdoptedConnEntry if adopted else ConnEntry)(transport, self._on_conn_gone)
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
        elif self.own_entries:
            self.own_entries.pop(id(transport), None)

    def accepted(self, transport: Any) -> None:
        """``transport``'s listening port (``transport.server``) accepted it. A connection
        accepted by one of the dashboard's own ports becomes its own."""
        port_key = id(transport.server)
        port = self.ports.get(port_key)
        if port is not None:
            port.accepted += 1
            return
        port = self.own_ports.get(port_key)
        if port is not None:
            port.accepted += 1
            self.make_own(transport)

    def make_own(self, transport: Any) -> None:
        """Move a registered connection to the dashboard's own, out of every program figure
        (the ``opened`` or ``adopted`` count it was in included)."""
        key = id(transport)
        entry = self.entries.pop(key, None)
        if entry is None:
            return
        self._drop(entry)
        if entry.__class__ is AdoptedConnEntry:
            self.adopted -= 1
        else:
            self.opened -= 1
        self.own_opened += 1
        self.own_entries[key] = entry

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
            elif self.own_entries.get(entry.key) is entry:
                del self.own_entries[entry.key]
        except Exception:  # a gc callback must never raise; counters may drift by one
            pass

    # listening ports -----------------------------------------------------------------------

    def add_port(
        self, port: Any, *, address: str, factory: str, kind: str, tls: bool, own: bool = False
    ) -> None:
        """Register a port that started listening (``own``: one of the dashboard's)."""
        key = id(port)
        if key in self.ports or key in self.own_ports:  # a subclass chaining to its base
            return
        entry = PortEntry(port, self._on_port_gone)
        entry.key = key
        entry.address = address
        entry.factory = factory
        entry.kind = kind
        entry.tls = tls
        entry.accepted = 0
        (self.own_ports if own else self.ports)[key] = entry

    def make_port_own(self, port: Any) -> None:
        """Move a listening port to the dashboard's own, with every connection it accepted
        that is still open (walks the open connections: a rare event)."""
        entry = self.ports.pop(id(port), None)
        if entry is None:
            return
        self.own_ports[entry.key] = entry
        for conn in list(self.entries.values()):
            transport = conn()
            if transport is not None and getattr(transport, "server", None) is port:
                self.make_own(transport)

    def remove_port(self, port: Any) -> None:
        """The port stopped listening."""
        key = id(port)
        if self.ports.pop(key, None) is None:
            self.own_ports.pop(key, None)

    def _port_gone(self, entry: PortEntry) -> None:
        try:
            for table in (self.ports, self.own_ports):
                if table.get(entry.key) is entry:
                    del table[entry.key]
        except Exception:  # a gc callback must never raise
            pass

    def oldest(self, n: int) -> list[ConnEntry]:
        """The ``n`` oldest open connections, oldest first (costs ``n``, not the open count)."""
        return _head(self.entries, n)

    def first_ports(self, n: int) -> list[PortEntry]:
        """The ``n`` ports listening the longest."""
        return _head(self.ports, n)

    def first_own_ports(self, n: int) -> list[PortEntry]:
        """The ``n`` of the dashboard's own ports listening the longest."""
        return _head(self.own_ports, n)

    def clear(self) -> None:
        """Forget everything tracked (the hooks are gone: nothing would remove it)."""
        self.entries.clear()
        self.ports.clear()
        self.own_entries.clear()
        self.own_ports.clear()
