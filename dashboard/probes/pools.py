"""Pools: every thread pool, HTTP connection pool and adbapi pool in the process, and users' own.

What is hooked (class attributes, restored by identity on ``uninstall()``):

- ``ThreadPool.__init__``, ``HTTPConnectionPool.__init__`` and ``adbapi.ConnectionPool.__init__``
  (rare, never a hot path): each pool made after ``install()`` is registered under a *weak*
  reference, with the code that made it (:func:`~dashboard.probes.pool_names.creation_site`),
  so a pool the program drops disappears from the list. About 3.5 us per pool made (and
  dropped), however many pools are alive: a program that makes an ``Agent`` per request
  pays it per request.
- Pools made *before* ``install()`` are found at install by one ``gc.get_referrers()`` of
  the pool classes (CPython's C loop over every object the collector tracks: about 0.4 ms
  per 10,000 objects plus 0.3 ms per 100,000 references they hold; it compares
  ``id(type(obj))`` only, so no code of the objects runs). Their creation site is unknown
  (``site`` and ``age_s`` null; an HTTP pool is named ``"http pool made before start"``).
- ``HTTPConnectionPool._newConnection``: Twisted keeps only *idle* connections
  (``_connections``, keyed by ``(scheme, host, port)``); to count the ones in use, a
  pass-through callback on each new connection's Deferred records its protocol (weakly)
  with its key. In use = an ``HTTP11ClientProtocol`` whose ``state`` is sending a request
  or waiting for a response. Cost: one dict entry per *new connection*, nothing per request.
  (So connections an HTTP pool opened before install are seen only while idle.)

Names: a thread pool by its ``name`` (the reactor's is ``"twisted.internet.reactor"``; an
unnamed one ``"unnamed thread pool at <site>"``); an HTTP pool by its creation site; an
adbapi pool by driver and database (``"sqlite3 /tmp/app.db"``, ``"psycopg2 app@db"``). Two
live pools of one kind under one name are told apart by ``" #2"``, ``" #3"``...

A *stopped* thread pool (``stop()`` called: it runs no more work) is not listed; a thread pool
inside an adbapi pool is listed once, as the adbapi pool. At most
``pool_registry.MAX_POOLS_TRACKED`` pools per kind are registered; pools made past it are
counted as ``not_tracked`` on the kind's summary entry (see :mod:`.pool_registry`).

The reactor's thread pool is read, never created: ``reactor.getThreadPool()`` would create
one (and a shutdown trigger) on a reactor that has none, so only ``reactor.threadpool`` is read.

Users' pools are registered with :meth:`PoolsProbe.track` and must satisfy
:class:`TrackablePool`; they are held strongly (see :mod:`.user_pools`) and survive
``uninstall()``.
"""

from __future__ import annotations

import functools
import heapq
import weakref
from collections.abc import Callable, Hashable
from types import FrameType
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.client import HTTPConnectionPool

from dashboard.probes import pool_names
from dashboard.probes.base import JSONDict, Patcher, ProbeErrors, TimeSource
from dashboard.probes.pool_registry import (
    BEFORE_START,
    AdbapiRef,
    HttpRef,
    PoolRef,
    PoolRegistry,
    live,
)
from dashboard.probes.user_pools import MAX_USER_POOLS, TrackablePool, UserPools

__all__ = ["BEFORE_START", "MAX_USER_POOLS", "PoolsProbe", "TrackablePool"]

#: Pools of one automatic kind shown one by one; past it the rest are summed into one entry.
MAX_POOLS_SHOWN = 50
#: Hosts (destinations) listed per HTTP pool, the busiest first.
MAX_KEYS_SHOWN = 20

#: ``HTTP11ClientProtocol.state`` values of a connection that is carrying a request.
_HTTP_IN_USE_STATES = frozenset(
    {"TRANSMITTING", "TRANSMITTING_AFTER_RECEIVING_RESPONSE", "WAITING"}
)


def _threadpool_counts(pool: Any) -> tuple[int, int, int]:
    """``(busy, idle, backlogged)`` of a ``ThreadPool``: from ``_team.statistics()`` (about
    0.2 us), or, on a pool without one, from its public ``working``, ``waiters`` and ``q``."""
    team = getattr(pool, "_team", None)
    if team is not None:
        stats = team.statistics()
        return stats.busyWorkerCount, stats.idleWorkerCount, stats.backloggedWorkCount
    return len(pool.working), len(pool.waiters), pool.q.qsize()


def _threadpool_fields(pool: Any) -> JSONDict:
    """``twisted.python.threadpool.ThreadPool`` figures: busy workers are in use, idle
    workers idle, work queued because ``max`` workers are busy (or the pool is not
    started) is waiting. About 1 us."""
    busy, idle, backlogged = _threadpool_counts(pool)
    return {
        "max": int(pool.max),
        "min": int(pool.min),
        "in_use": int(busy),
        "idle": int(idle),
        "waiting": int(backlogged),
        "started": bool(pool.started),
    }


def _counts_of(item: tuple[str, list[int]]) -> list[int]:
    return item[1]


class PoolsProbe:
    """Lists every known pool as ``{name, kind, max, in_use, idle, waiting, ...}``.

    Kinds: ``threadpool`` (``reactor``: whether it is the reactor's; ``site``), ``http``
    (``site``, ``via``, ``max_per_host``, ``hosts``), ``adbapi`` (``driver``, ``database``,
    ``host``) and ``user`` (the name given to :meth:`track`). See the module docstring for
    what is hooked and how pools are named.

    An HTTP pool's ``max`` is null: Twisted's ``HTTPConnectionPool`` has no limit on
    connections in use (it opens another one whenever none is idle, so ``waiting`` is
    always 0; connects under way are ``connecting``). Its one limit is per host:
    ``max_per_host`` (``maxPersistentPerHost``; 0 for a non-persistent pool) is how many
    idle connections it keeps *per host*, repeated as each host's ``max``. A host whose
    ``in_use`` exceeds its ``max`` will close the extra connections once they are done.

    All methods run on the reactor thread; the ``__init__`` hooks may run on any thread.
    """

    name = "pools"

    def __init__(self, reactor: Any, errors: ProbeErrors, clock: TimeSource) -> None:
        self._reactor = reactor
        self._errors = errors
        self._clock = clock
        self._patcher = Patcher()
        self._registry = PoolRegistry()
        self._users = UserPools()

    @property
    def _threads(self) -> dict[int, PoolRef]:
        return self._registry.by_kind["threadpool"]

    @property
    def _http(self) -> dict[int, HttpRef]:
        return self._registry.by_kind["http"]

    @property
    def _adbapi(self) -> dict[int, AdbapiRef]:
        return self._registry.by_kind["adbapi"]

    @property
    def scan_ms(self) -> float:
        """Milliseconds the last install's scan for existing pools took."""
        return self._registry.scan_ms

    # users' pools ------------------------------------------------------------------------

    def track(self, pool: TrackablePool, name: str) -> None:
        """List ``pool`` under ``name`` (kind ``user``) until :meth:`untrack`; held strongly.
        Registrations survive ``uninstall()``."""
        self._users.track(pool, name)

    def untrack(self, name: str) -> None:
        """Stop listing the user's pool ``name``. ``KeyError`` if no pool has that name."""
        self._users.untrack(name)

    # lifecycle ---------------------------------------------------------------------------

    def install(self) -> None:
        """Hook pool creation, then register the pools that already exist (one gc scan)."""
        if self._patcher.active:
            return
        self._registry.clear()
        probe = self

        thread_init = vars(ThreadPool)["__init__"]
        http_init = vars(HTTPConnectionPool)["__init__"]
        new_connection = vars(HTTPConnectionPool)["_newConnection"]
        adbapi_init = vars(adbapi.ConnectionPool)["__init__"]

        def creation_hook(original: Any, kind: str) -> Callable[..., None]:
            @functools.wraps(original)
            def pool_init(pool: Any, *args: Any, **kwargs: Any) -> None:
                original(pool, *args, **kwargs)
                try:
                    # Frame 1 is whoever called __init__ (type.__call__ adds no frame).
                    probe._register(pool, kind, pool_names.caller_frame(1))
                except Exception as exc:
                    probe._errors.record(probe.name, exc)

            return pool_init

        @functools.wraps(new_connection)
        def http_new_connection(pool: Any, *args: Any, **kwargs: Any) -> Any:
            result = new_connection(pool, *args, **kwargs)
            try:
                probe._watch_connection(pool, args[0] if args else kwargs.get("key"), result)
            except Exception as exc:
                probe._errors.record(probe.name, exc)
            return result

        self._patcher.patch(ThreadPool, "__init__", creation_hook(thread_init, "threadpool"))
        self._patcher.patch(HTTPConnectionPool, "__init__", creation_hook(http_init, "http"))
        self._patcher.patch(HTTPConnectionPool, "_newConnection", http_new_connection)
        self._patcher.patch(adbapi.ConnectionPool, "__init__", creation_hook(adbapi_init, "adbapi"))
        try:
            self._registry.register_existing(self._clock)
        except Exception as exc:
            self._errors.record(self.name, exc)

    def uninstall(self) -> None:
        self._patcher.restore()
        # Dropping the references drops their callbacks: nothing of ours outlives this.
        self._registry.clear()

    # hook bodies (the hooks catch and count what they raise) -----------------------

    def _register(self, pool: Any, kind: str, frame: FrameType | None) -> None:
        """A pool made (``frame``: the caller of its ``__init__``) or found (``frame``
        None). Any thread."""
        if self._errors.enabled(self.name):
            self._registry.register(pool, kind, frame, self._clock)

    def _watch_connection(self, pool: Any, key: Hashable, result: Any) -> None:
        """Hook body for ``_newConnection``: count the connect, then record the protocol."""
        ref = self._http.get(id(pool))
        if ref is None or ref() is not pool or not isinstance(result, Deferred):
            return  # a pool not tracked, or an override returning something else
        errors = self._errors
        if ref.protocols is None:
            ref.protocols = weakref.WeakKeyDictionary()

        def connected(outcome: Any) -> Any:
            try:
                ref.connecting -= 1
                if not isinstance(outcome, Failure) and ref.protocols is not None:
                    ref.protocols[outcome] = key
            except Exception as exc:
                errors.record(PoolsProbe.name, exc)
            return outcome  # pass the result (or the failure) on untouched

        ref.connecting += 1
        result.addBoth(connected)

    # collect -----------------------------------------------------------------------------

    def collect(self) -> list[JSONDict]:
        """Every pool: thread pools (the reactor's first), HTTP, adbapi, users'. Costs
        O(pools + their live connections); per-host detail only for what is shown."""
        pools: list[JSONDict] = []
        adbapi_refs = live(self._adbapi)
        try:
            self._collect_threadpools(pools, adbapi_refs)
        except Exception as exc:
            self._errors.record(self.name, exc)
        self._collect_kind(pools, live(self._http), "http", self._http_entry, self._http_counts)
        self._collect_kind(pools, adbapi_refs, "adbapi", self._adbapi_entry, self._adbapi_counts)
        pools.extend(self._users.entries(self._errors, self.name))
        return pools

    def _guarded(self, out: list[JSONDict], build: Callable[[], JSONDict | None]) -> None:
        try:
            entry = build()
        except Exception as exc:
            self._errors.record(self.name, exc)
            return
        if entry is not None:
            out.append(entry)

    def _collect_threadpools(self, out: list[JSONDict], adbapi_refs: list[Any]) -> None:
        reactor_pool = None
        if hasattr(self._reactor, "getThreadPool"):  # a reactor with threads
            reactor_pool = getattr(self._reactor, "threadpool", None)
            if reactor_pool is None:  # not created yet: the first callInThread will create it
                out.append(
                    {
                        "name": "twisted.internet.reactor",
                        "kind": "threadpool",
                        "reactor": True,
                        "max": None,
                        "in_use": 0,
                        "idle": 0,
                        "waiting": 0,
                        "started": False,
                        "created": False,
                        "site": None,
                    }
                )
            elif self._threads.get(id(reactor_pool)) is None:
                self._register(reactor_pool, "threadpool", None)  # made while not installed
        inside_adbapi = set()
        for ref in adbapi_refs:
            db = ref()
            if db is not None:
                inside_adbapi.add(id(getattr(db, "threadpool", None)))
        refs = []
        for ref in live(self._threads):
            pool = ref()
            if pool is None or id(pool) in inside_adbapi or pool.joined:
                continue  # gone, shown as its adbapi pool, or stopped for good
            refs.append(ref)
        refs.sort(key=lambda r: r() is not reactor_pool)  # stable: the reactor's first
        names: dict[str, int] = {}
        entry = functools.partial(self._threadpool_entry, reactor_pool=reactor_pool, names=names)
        self._collect_kind(out, refs, "threadpool", entry, self._threadpool_counts)

    def _collect_kind(
        self,
        out: list[JSONDict],
        refs: list[Any],
        kind: str,
        entry: Callable[[Any, Any], JSONDict],
        counts: Callable[[Any, Any], tuple[int, int, int]],
    ) -> None:
        shown = 0
        rest = [0, 0, 0, 0]  # pools, in_use, idle, waiting
        for ref in refs:
            pool = ref()
            if pool is None:
                continue
            if shown < MAX_POOLS_SHOWN:
                shown += 1
                self._guarded(out, functools.partial(entry, ref, pool))
                continue
            try:
                in_use, idle, waiting = counts(ref, pool)
            except Exception as exc:
                self._errors.record(self.name, exc)
                continue
            rest[0] += 1
            rest[1] += in_use
            rest[2] += idle
            rest[3] += waiting
        not_tracked = self._registry.not_tracked[kind]
        if rest[0] or not_tracked:
            out.append(
                {
                    "name": f"{kind} (+{rest[0]} more)",
                    "kind": kind,
                    "max": None,
                    "in_use": rest[1],
                    "idle": rest[2],
                    "waiting": rest[3],
                    "pools": rest[0],
                    "not_tracked": not_tracked,
                }
            )

    # thread pools

    def _threadpool_counts(self, ref: PoolRef, pool: Any) -> tuple[int, int, int]:
        return _threadpool_counts(pool)

    def _threadpool_entry(
        self, ref: PoolRef, pool: Any, *, reactor_pool: Any, names: dict[str, int]
    ) -> JSONDict:
        name = pool.name
        base = name[: pool_names.MAX_NAME_CHARS] if isinstance(name, str) and name else ref.base
        names[base] = number = names.get(base, 0) + 1
        entry: JSONDict = {
            "name": base if number == 1 else f"{base} #{number}",
            "kind": "threadpool",
            "reactor": pool is reactor_pool,
        }
        entry.update(_threadpool_fields(pool), created=True, site=ref.site)
        return entry

    # HTTP pools

    def _http_per_host(self, ref: HttpRef, pool: Any) -> dict[str, list[int]]:
        """host label -> [in_use, idle]. Idle: cached connections still open (a cached one
        whose server hung up stays in ``_connections`` until reused or timed out)."""
        per_key: dict[Hashable, list[int]] = {}
        for key, cached in list(pool._connections.items()):
            idle = sum(1 for p in list(cached) if getattr(p, "state", None) == "QUIESCENT")
            if idle:
                per_key.setdefault(key, [0, 0])[1] += idle
        for proto, key in list((ref.protocols or {}).items()):
            if getattr(proto, "state", None) in _HTTP_IN_USE_STATES:
                per_key.setdefault(key, [0, 0])[0] += 1
        per_host: dict[str, list[int]] = {}
        for key, (in_use, idle) in per_key.items():
            counts = per_host.setdefault(pool_names.host_label(key), [0, 0])
            counts[0] += in_use
            counts[1] += idle
        return per_host

    def _http_counts(self, ref: HttpRef, pool: Any) -> tuple[int, int, int]:
        per_host = self._http_per_host(ref, pool)
        return sum(v[0] for v in per_host.values()), sum(v[1] for v in per_host.values()), 0

    def _http_entry(self, ref: HttpRef, pool: Any) -> JSONDict:
        per_host = self._http_per_host(ref, pool)
        busiest = heapq.nlargest(MAX_KEYS_SHOWN, per_host.items(), key=_counts_of)
        persistent = bool(pool.persistent)
        per_host_max = int(pool.maxPersistentPerHost) if persistent else 0
        return {
            "name": ref.label,
            "kind": "http",
            "site": ref.site,
            "via": ref.via,
            "max": None,
            "max_per_host": per_host_max,
            "in_use": sum(v[0] for v in per_host.values()),
            "idle": sum(v[1] for v in per_host.values()),
            "waiting": 0,
            "connecting": max(0, ref.connecting),
            "persistent": persistent,
            "age_s": self._age_s(ref),
            "hosts_total": len(per_host),
            "hosts": [
                {"host": host, "in_use": v[0], "idle": v[1], "max": per_host_max}
                for host, v in busiest
            ],
        }

    def _age_s(self, ref: PoolRef) -> float | None:
        if ref.created_at is None:
            return None
        return round(max(0.0, self._clock() - ref.created_at), 3)

    # adbapi pools

    def _adbapi_counts(self, ref: AdbapiRef, pool: Any) -> tuple[int, int, int]:
        return self._threadpool_counts(ref, pool.threadpool)

    def _adbapi_entry(self, ref: AdbapiRef, pool: Any) -> JSONDict:
        entry: JSONDict = {
            "name": ref.label,
            "kind": "adbapi",
            "driver": ref.driver,
            "database": ref.database,
            "host": ref.host,
        }
        entry.update(_threadpool_fields(pool.threadpool))
        entry.update(
            max=int(pool.max),
            min=int(pool.min),
            running=bool(pool.running),
            connections=len(pool.connections),
            dbapi=ref.driver,
            site=ref.site,
            age_s=self._age_s(ref),
        )
        return entry
