"""Which pools exist: weak registries of thread, HTTP and adbapi pools, by kind.

Pools are registered when they are made (the pools probe hooks their ``__init__``) and, at
install, by one scan of ``gc.get_objects()`` for the ones made before. Each is held under a
weak reference whose callback drops it when the program drops the pool, with the name it
is shown under. Each kind holds at most :data:`MAX_POOLS_TRACKED` pools; pools made past
that are counted in :attr:`PoolRegistry.not_tracked`.

``register`` may run on any thread (a pool may be made anywhere; dict operations hold the
GIL); everything else on the reactor thread.
"""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Callable, Hashable
from types import FrameType
from typing import Any

from twisted.enterprise import adbapi
from twisted.python.threadpool import ThreadPool
from twisted.web.client import HTTPConnectionPool

from dashboard.probes import pool_names
from dashboard.probes.base import TimeSource

#: Pools of one kind registered at once (weakly); more are counted, not listed.
MAX_POOLS_TRACKED = 1000
#: The kinds of pools found automatically, and the class of each.
KINDS: dict[str, type] = {
    "threadpool": ThreadPool,
    "http": HTTPConnectionPool,
    "adbapi": adbapi.ConnectionPool,
}
#: The name of an HTTP pool whose creation was not seen.
BEFORE_START = "http pool made before start"


class PoolRef(weakref.ref):  # type: ignore[type-arg]
    """A weak reference to a pool: its shown name (``label``, the ``base`` name plus
    ``" #N"`` when another live pool of its kind had it), where and when it was made (None
    when found by the scan at install)."""

    __slots__ = ("base", "created_at", "key", "label", "site", "via")

    key: int
    base: str
    label: str
    site: str | None
    via: str | None
    created_at: float | None


class HttpRef(PoolRef):
    """An HTTP pool, plus the protocols of the connections it opened and how many are
    still connecting. ``protocols`` maps protocol -> pool key, weakly."""

    __slots__ = ("connecting", "protocols")

    connecting: int
    protocols: weakref.WeakKeyDictionary[Any, Hashable]


class AdbapiRef(PoolRef):
    """An adbapi pool, with its driver and the database and host it connects to."""

    __slots__ = ("database", "driver", "host")

    driver: str
    database: str | None
    host: str | None


_REF_TYPES: dict[str, type[PoolRef]] = {"threadpool": PoolRef, "http": HttpRef, "adbapi": AdbapiRef}


def live(registry: dict[int, Any]) -> list[Any]:
    """The registry's entries, copied. A weak-reference callback or a pool made on another
    thread may change it during the copy; then copy again."""
    for _ in range(5):
        try:
            return list(registry.values())
        except RuntimeError:
            continue
    return []


def subclasses(cls: type) -> list[type]:
    """``cls`` and every subclass of it, however deep."""
    found, todo = [cls], [cls]
    while todo:
        sub: type
        for sub in type.__subclasses__(todo.pop()):
            if sub not in found:
                found.append(sub)
                todo.append(sub)
    return found


class PoolRegistry:
    """The pools known, by kind: ``by_kind[kind]`` maps ``id(pool)`` to its reference."""

    def __init__(self) -> None:
        self.by_kind: dict[str, dict[int, Any]] = {kind: {} for kind in KINDS}
        self.not_tracked: dict[str, int] = dict.fromkeys(KINDS, 0)
        #: Milliseconds the last :meth:`register_existing` took, and the objects it scanned.
        self.scan_ms = 0.0
        self.scanned_objects = 0

    def clear(self) -> None:
        """Forget every pool (dropping the references drops their callbacks too)."""
        for registry in self.by_kind.values():
            registry.clear()
        self.not_tracked = dict.fromkeys(KINDS, 0)

    def register_existing(self, clock: TimeSource) -> None:
        """Register every pool alive now: one pass over ``gc.get_objects()`` comparing each
        object's type by identity (no attribute of any object is read, so proxies and C
        objects are safe). About 1.1 ms per 10,000 objects. Reactor thread."""
        started = time.perf_counter()
        kind_of_type: dict[int, str] = {}
        for kind, cls in KINDS.items():
            for sub in subclasses(cls):
                kind_of_type.setdefault(id(sub), kind)
        objects = gc.get_objects()
        try:
            found = [obj for obj in objects if id(type(obj)) in kind_of_type]
            self.scanned_objects = len(objects)
        finally:
            del objects
        for pool in found:
            self.register(pool, kind_of_type[id(type(pool))], None, clock)
        self.scan_ms = (time.perf_counter() - started) * 1000

    def register(self, pool: Any, kind: str, frame: FrameType | None, clock: TimeSource) -> None:
        """A pool made (``frame``: the caller of its ``__init__``) or found (``frame`` None):
        a weak reference under its name. Any thread."""
        registry = self.by_kind[kind]
        key = id(pool)
        known = registry.get(key)
        if known is not None and known() is pool:
            return  # __init__ called again on the same pool: keep its name
        if len(registry) >= MAX_POOLS_TRACKED:
            self._forget_stopped(registry)
            if len(registry) >= MAX_POOLS_TRACKED:
                self.not_tracked[kind] += 1
                return
        site, via = pool_names.creation_site(frame) if frame is not None else (None, None)
        ref = _REF_TYPES[kind](pool, _forget_callback(registry))
        ref.key = key
        ref.site = site
        ref.via = via
        ref.created_at = clock() if frame is not None else None
        if isinstance(ref, HttpRef):
            ref.connecting = 0
            ref.protocols = weakref.WeakKeyDictionary()
            ref.base = site or BEFORE_START
        elif isinstance(ref, AdbapiRef):
            ref.driver = str(getattr(pool, "dbapiName", "adbapi"))[:60]
            ref.database, ref.host = pool_names.database_of(
                getattr(pool, "connargs", None), getattr(pool, "connkw", None)
            )
            ref.base = pool_names.adbapi_name(ref.driver, ref.database, ref.host)
        else:
            # A thread pool is shown by its own name; this one only when it has none.
            ref.base = f"unnamed thread pool at {site}" if site else "unnamed thread pool"
        ref.label = _free_label(registry, ref.base)
        registry[key] = ref

    @staticmethod
    def _forget_stopped(registry: dict[int, Any]) -> None:
        for ref in live(registry):
            pool = ref()
            if pool is None or getattr(pool, "joined", False) is True:
                registry.pop(ref.key, None)


def _free_label(registry: dict[int, Any], base: str) -> str:
    """``base``, or ``"base #N"`` with the smallest N no live pool of the kind holds."""
    taken = {r.label for r in live(registry) if r.base == base and r() is not None}
    label, number = base, 1
    while label in taken:
        number += 1
        label = f"{base} #{number}"
    return label


def _forget_callback(registry: dict[int, Any]) -> Callable[[PoolRef], None]:
    def forget(ref: PoolRef) -> None:
        # Runs in whichever thread dropped the pool; dict operations hold the GIL.
        key = getattr(ref, "key", None)
        if key is not None and registry.get(key) is ref:
            registry.pop(key, None)

    return forget
