"""Which pools exist: weak registries of thread, HTTP and adbapi pools, by kind.

Pools are registered when they are made (the pools probe hooks their ``__init__``) and, at
install, by one scan of the objects the collector tracks for the ones made before. Each is
held under a weak reference whose callback drops it when the program drops the pool, with
the name it is shown under. Each kind holds at most :data:`MAX_POOLS_TRACKED` pools; pools made past
that are counted in :attr:`PoolRegistry.not_tracked`.

Registering costs the same however many pools are alive (O(1) amortised, about 1 us plus
the creation-site lookup): the ``" #N"`` numbers of each name are handed out by
:class:`LabelNumbers` (a counter and a heap of the numbers released), never by looking at
the other pools.

``register`` may run on any thread (a pool may be made anywhere; dict operations hold the
GIL); the weak-reference callbacks run on whichever thread dropped the pool; everything else
on the reactor thread.
"""

from __future__ import annotations

import gc
import heapq
import threading
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
    ``" #N"`` when another live pool of its kind had it: ``number`` N, 1 for the bare
    name), where and when it was made (None when found by the scan at install)."""

    __slots__ = ("base", "created_at", "key", "label", "number", "site", "via")

    key: int
    base: str
    label: str
    number: int
    site: str | None
    via: str | None
    created_at: float | None


class HttpRef(PoolRef):
    """An HTTP pool, plus the protocols of the connections it opened and how many are
    still connecting. ``protocols`` maps protocol -> pool key, weakly; None until the pool
    opens its first connection (most pools made per request never hold one long)."""

    __slots__ = ("connecting", "protocols")

    connecting: int
    protocols: weakref.WeakKeyDictionary[Any, Hashable] | None


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


class LabelNumbers:
    """The ``" #N"`` numbers of one kind's names: :meth:`take` hands out the smallest number
    no live pool of that name holds, :meth:`release` gives one back when its pool dies.

    Per name, a counter (the numbers handed out so far: 1..issued) and a heap of the ones
    released since, so both cost O(log live pools of the name), not O(live pools); a name
    whose numbers are all back is forgotten, so memory follows the live pools. Any thread,
    under a lock; a reentrant one, so that a pool made or dropped by a signal handler or a
    finalizer that runs while its thread is inside :meth:`take` cannot deadlock.
    """

    __slots__ = ("_by_base", "_lock")

    def __init__(self) -> None:
        #: base name -> [issued, heap of released numbers]
        self._by_base: dict[str, list[Any]] = {}
        self._lock = threading.RLock()

    def take(self, base: str) -> int:
        """The smallest number free under ``base`` (1 when no live pool holds it)."""
        fresh: list[Any] = [0, []]  # made before the lock: no collection starts inside it
        with self._lock:
            numbers = self._by_base.setdefault(base, fresh)
            released: list[int] = numbers[1]
            if released:
                return heapq.heappop(released)
            numbers[0] += 1
            issued: int = numbers[0]
            return issued

    def release(self, base: str, number: int) -> None:
        """``number`` is free again under ``base`` (its pool died)."""
        with self._lock:
            numbers = self._by_base.get(base)
            if numbers is None or not 0 < number <= numbers[0]:
                return  # not ours (handed out before a clear)
            released: list[int] = numbers[1]
            heapq.heappush(released, number)
            if len(released) == numbers[0]:
                del self._by_base[base]  # every number back: start again at 1

    def __len__(self) -> int:
        """Names with a live pool."""
        return len(self._by_base)


class PoolRegistry:
    """The pools known, by kind: ``by_kind[kind]`` maps ``id(pool)`` to its reference;
    ``numbers[kind]`` hands out the ``" #N"`` of its names."""

    def __init__(self) -> None:
        self.by_kind: dict[str, dict[int, Any]] = {kind: {} for kind in KINDS}
        self.numbers: dict[str, LabelNumbers] = {kind: LabelNumbers() for kind in KINDS}
        self._forget = {kind: self._forget_callback(kind) for kind in KINDS}
        self.not_tracked: dict[str, int] = dict.fromkeys(KINDS, 0)
        #: Milliseconds the last :meth:`register_existing` took, and how many objects it
        #: found referring to a pool class (the pools among them).
        self.scan_ms = 0.0
        self.referrers = 0

    def clear(self) -> None:
        """Forget every pool (dropping the references drops their callbacks too; a callback
        of a reference still held elsewhere releases into the numbers replaced here)."""
        for registry in self.by_kind.values():
            registry.clear()
        self.numbers = {kind: LabelNumbers() for kind in KINDS}
        self._forget = {kind: self._forget_callback(kind) for kind in KINDS}
        self.not_tracked = dict.fromkeys(KINDS, 0)

    def register_existing(self, clock: TimeSource) -> None:
        """Register every pool alive now, found by one ``gc.get_referrers(*pool classes)``:
        each instance of a Python class refers to its class for the collector, so the pools
        are among the objects that refer to their classes, and CPython's own C loop over
        every tracked object finds them (no list of every object is built). Of those, the
        ones whose type is a pool class by identity are registered: no attribute of any
        object is read and no code of theirs runs, so proxies and C objects are safe.
        About 0.3 ms per 10,000 objects (``gc.get_objects()`` and a Python loop over it:
        0.7). Reactor thread."""
        started = time.perf_counter()
        kind_of_type: dict[int, str] = {}
        classes: list[type] = []
        for kind, cls in KINDS.items():
            for sub in subclasses(cls):
                if id(sub) not in kind_of_type:
                    kind_of_type[id(sub)] = kind
                    classes.append(sub)
        referrers = gc.get_referrers(*classes)
        try:
            found = [obj for obj in referrers if id(type(obj)) in kind_of_type]
            self.referrers = len(referrers)
        finally:
            del referrers
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
            self._forget_stopped(kind)
            if len(registry) >= MAX_POOLS_TRACKED:
                self.not_tracked[kind] += 1
                return
        site, via = pool_names.creation_site(frame) if frame is not None else (None, None)
        ref = _REF_TYPES[kind](pool, self._forget[kind])
        ref.key = key
        ref.number = 0  # none yet: the callback gives back only a number taken
        ref.site = site
        ref.via = via
        ref.created_at = clock() if frame is not None else None
        if isinstance(ref, HttpRef):
            ref.connecting = 0
            ref.protocols = None
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
        number = ref.number = self.numbers[kind].take(ref.base)
        ref.label = ref.base if number == 1 else f"{ref.base} #{number}"
        registry[key] = ref

    def _forget_stopped(self, kind: str) -> None:
        """Unlist dead pools and stopped thread pools (O(pools): only when the kind is
        full). A stopped pool's number is given back here: its dropped reference will not
        call back."""
        registry = self.by_kind[kind]
        for ref in live(registry):
            pool = ref()
            if pool is None:
                registry.pop(ref.key, None)  # its callback gives its number back
            elif getattr(pool, "joined", False) is True and registry.pop(ref.key, None) is ref:
                number, ref.number = ref.number, 0
                self.numbers[kind].release(ref.base, number)

    def _forget_callback(self, kind: str) -> Callable[[PoolRef], None]:
        """The callback of a ``kind`` pool's reference: unlist the pool, give back its
        number. Runs once, in whichever thread dropped the pool."""
        registry = self.by_kind[kind]
        numbers = self.numbers[kind]

        def forget(ref: PoolRef) -> None:
            key = getattr(ref, "key", None)
            if key is not None and registry.get(key) is ref:
                registry.pop(key, None)
            number = getattr(ref, "number", 0)
            if number:
                numbers.release(ref.base, number)

        return forget
