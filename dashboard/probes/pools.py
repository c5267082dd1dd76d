"""Pools: the reactor's thread pool, HTTP connection pools, adbapi pools and users' own.

What is hooked (class attributes, restored by identity on ``uninstall()``):

- ``HTTPConnectionPool.__init__`` and ``adbapi.ConnectionPool.__init__``: each pool created
  after ``install()`` is registered under a *weak* reference, so a pool the program drops
  disappears from the list; pools created before ``install()`` are not seen.
- ``HTTPConnectionPool._newConnection``: Twisted keeps only *idle* connections
  (``_connections``, keyed by ``(scheme, host, port)``); to count the ones in use, a
  pass-through callback on each new connection's Deferred records its protocol (weakly)
  with its key. In use = an ``HTTP11ClientProtocol`` whose ``state`` is sending a request
  or waiting for a response. Cost: one dict entry per *new connection*, nothing per request.

The reactor's thread pool is read, never created: ``reactor.getThreadPool()`` would create
one (and a shutdown trigger) on a reactor that has none, so only ``reactor.threadpool`` is read.

Users' pools are registered with :meth:`PoolsProbe.track` and must satisfy
:class:`TrackablePool`. They are held *strongly* until :meth:`PoolsProbe.untrack`: the
user named them on purpose, and a weak reference would silently lose an adapter object
created inline (``track(PoolStats(db), "db")``). Registrations survive ``uninstall()``.
"""

from __future__ import annotations

import functools
import heapq
import inspect
import itertools
import weakref
from collections.abc import Callable, Hashable, Iterator
from math import isfinite
from typing import Any, Protocol

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool

from dashboard.probes.base import JSONDict, Patcher, ProbeErrors, TimeSource, safe_repr

#: Pools of one automatic kind shown one by one; past it the rest are summed into one entry.
MAX_POOLS_SHOWN = 50
#: Keys (destinations) listed per HTTP pool, the busiest first.
MAX_KEYS_SHOWN = 20
#: Users' pools that may be tracked at once.
MAX_USER_POOLS = 100

#: ``HTTP11ClientProtocol.state`` values of a connection that is carrying a request.
_HTTP_IN_USE_STATES = frozenset(
    {"TRANSMITTING", "TRANSMITTING_AFTER_RECEIVING_RESPONSE", "WAITING"}
)
_USER_FIELDS = ("max", "in_use", "idle", "waiting")


class TrackablePool(Protocol):
    """What a user's own pool shows to be listed with kind ``user``.

    Four read-only figures, as plain attributes or properties, read on the reactor thread
    each time a snapshot is taken (so keep them cheap):

    - ``max``: the most resources the pool will hand out at once, ``None`` if unbounded;
    - ``in_use``: handed out now;
    - ``idle``: ready and not handed out;
    - ``waiting``: callers queued for one.

    A Protocol of attributes rather than a callable returning a dict: mypy checks it at the
    ``track()`` call, a pool class can satisfy it directly, and there are no key names to
    misspell. Numbers must be ints (finite floats are truncated).
    """

    @property
    def max(self) -> int | None: ...

    @property
    def in_use(self) -> int: ...

    @property
    def idle(self) -> int: ...

    @property
    def waiting(self) -> int: ...


class _PoolRef(weakref.ref):  # type: ignore[type-arg]
    """A weak reference to a discovered pool, with its shown name and creation time."""

    __slots__ = ("created_at", "key", "label")

    key: int
    label: str
    created_at: float


class _HttpRef(_PoolRef):
    """An HTTP pool, plus the protocols of the connections it opened and how many are
    still connecting. ``protocols`` maps protocol -> pool key, weakly."""

    __slots__ = ("connecting", "protocols")

    connecting: int
    protocols: weakref.WeakKeyDictionary[Any, Hashable]


def _live(registry: dict[int, Any]) -> list[Any]:
    """The registry's entries, copied. A weak-reference callback from another thread may
    remove one during the copy; then copy again."""
    for _ in range(5):
        try:
            return list(registry.values())
        except RuntimeError:
            continue
    return []


def _threadpool_fields(pool: Any) -> JSONDict:
    """``twisted.python.threadpool.ThreadPool`` figures: busy workers are in use, idle
    workers idle, work queued because ``max`` workers are busy (or the pool is not
    started) is waiting. About 1 us."""
    stats = pool._team.statistics()
    return {
        "max": int(pool.max),
        "min": int(pool.min),
        "in_use": int(stats.busyWorkerCount),
        "idle": int(stats.idleWorkerCount),
        "waiting": int(stats.backloggedWorkCount),
        "started": bool(pool.started),
    }


def _key_label(key: object) -> str:
    """``(b"http", b"host", 80)`` -> ``"http://host:80"``; any other key by its repr."""
    if isinstance(key, tuple) and len(key) == 3:
        scheme, host, port = key
        if isinstance(scheme, bytes) and isinstance(host, bytes) and isinstance(port, int):
            return f"{scheme.decode('ascii', 'replace')}://{host.decode('ascii', 'replace')}:{port}"
    return safe_repr(key)


def _counts_of(item: tuple[Hashable, list[int]]) -> list[int]:
    return item[1]


def _has_attribute(obj: object, field: str) -> bool:
    """Whether ``obj.field`` exists, without running a property when it can be helped."""
    try:
        inspect.getattr_static(obj, field)
        return True
    except AttributeError:
        pass
    try:
        return hasattr(obj, field)  # a __getattr__ proxy
    except Exception:
        return True  # there, but it raised: a failure collect() will show


def _user_number(value: object, field: str) -> int | None:
    if value is None and field == "max":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and isfinite(value):
        return int(value)
    raise TypeError(f"{field} must be an int, got {type(value).__name__}")


class PoolsProbe:
    """Lists every known pool as ``{name, kind, max, in_use, idle, waiting, ...}``.

    Kinds and their names: ``threadpool`` (``"reactor"``), ``http`` (``"http#N"``, N
    counting pools created since ``install()``), ``adbapi`` (``"<dbapiName>#N"``) and
    ``user`` (the name given to :meth:`track`). See the module docstring for what is
    hooked. ``waiting`` is always 0 for ``http``: Twisted's HTTPConnectionPool never
    queues a request, it opens another connection (counted in ``connecting`` until it is
    established); its ``max`` is ``maxPersistentPerHost``, the idle connections *kept per
    key* (``max_scope: "per_key"``), not a limit on connections in use.

    All methods run on the reactor thread; the ``__init__`` hooks may run on any thread.
    """

    name = "pools"

    def __init__(self, reactor: Any, errors: ProbeErrors, clock: TimeSource) -> None:
        self._reactor = reactor
        self._errors = errors
        self._clock = clock
        self._patcher = Patcher()
        self._http: dict[int, _HttpRef] = {}
        self._adbapi: dict[int, _PoolRef] = {}
        self._user: dict[str, TrackablePool] = {}
        self._user_failed: set[str] = set()
        self._http_numbers: Iterator[int] = itertools.count(1)
        self._adbapi_numbers: dict[str, Iterator[int]] = {}

    # users' pools ------------------------------------------------------------------------

    def track(self, pool: TrackablePool, name: str) -> None:
        """List ``pool`` under ``name`` (kind ``user``) until :meth:`untrack`; held strongly."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a tracked pool needs a non-empty str name, got {name!r}")
        if name in self._user:
            raise ValueError(
                f"a pool named {name!r} is already tracked; untrack({name!r}) first "
                "or choose another name"
            )
        missing = [field for field in _USER_FIELDS if not _has_attribute(pool, field)]
        if missing:
            raise TypeError(
                f"{safe_repr(pool)} is not a TrackablePool: missing {', '.join(missing)}"
            )
        if len(self._user) >= MAX_USER_POOLS:
            raise ValueError(f"at most {MAX_USER_POOLS} pools can be tracked")
        self._user[name] = pool

    def untrack(self, name: str) -> None:
        """Stop listing the user's pool ``name``. ``KeyError`` if no pool has that name."""
        try:
            del self._user[name]
        except KeyError:
            raise KeyError(f"no tracked pool is named {name!r}") from None
        self._user_failed.discard(name)

    # lifecycle ---------------------------------------------------------------------------

    def install(self) -> None:
        if self._patcher.active:
            return
        self._http_numbers = itertools.count(1)
        self._adbapi_numbers = {}
        probe = self

        http_init = vars(HTTPConnectionPool)["__init__"]
        new_connection = vars(HTTPConnectionPool)["_newConnection"]
        adbapi_init = vars(adbapi.ConnectionPool)["__init__"]

        @functools.wraps(http_init)
        def http_pool_init(pool: Any, *args: Any, **kwargs: Any) -> None:
            http_init(pool, *args, **kwargs)
            try:
                probe._register(pool, probe._http, _HttpRef)
            except Exception as exc:
                probe._errors.record(probe.name, exc)

        @functools.wraps(new_connection)
        def http_new_connection(pool: Any, *args: Any, **kwargs: Any) -> Any:
            result = new_connection(pool, *args, **kwargs)
            try:
                probe._watch_connection(pool, args[0] if args else kwargs.get("key"), result)
            except Exception as exc:
                probe._errors.record(probe.name, exc)
            return result

        @functools.wraps(adbapi_init)
        def adbapi_pool_init(pool: Any, *args: Any, **kwargs: Any) -> None:
            adbapi_init(pool, *args, **kwargs)
            try:
                probe._register(pool, probe._adbapi, _PoolRef)
            except Exception as exc:
                probe._errors.record(probe.name, exc)

        self._patcher.patch(HTTPConnectionPool, "__init__", http_pool_init)
        self._patcher.patch(HTTPConnectionPool, "_newConnection", http_new_connection)
        self._patcher.patch(adbapi.ConnectionPool, "__init__", adbapi_pool_init)

    def uninstall(self) -> None:
        self._patcher.restore()
        # Dropping the references drops their callbacks: nothing of ours outlives this.
        self._http.clear()
        self._adbapi.clear()

    # hook bodies (the hooks catch and count what they raise) -----------------------

    def _register(self, pool: Any, registry: dict[int, Any], ref_type: type[_PoolRef]) -> None:
        """Hook body for a new pool: a weak reference under the pool's default name."""
        if not self._errors.enabled(self.name):
            return
        key = id(pool)
        known = registry.get(key)
        if known is not None and known() is pool:
            return  # __init__ called again on the same pool: keep its name
        ref = ref_type(pool, self._forget_callback(registry))
        ref.key = key
        ref.created_at = self._clock()
        if isinstance(ref, _HttpRef):
            ref.label = f"http#{next(self._http_numbers)}"
            ref.connecting = 0
            ref.protocols = weakref.WeakKeyDictionary()
        else:
            dbapi = str(getattr(pool, "dbapiName", "adbapi"))[:60]
            numbers = self._adbapi_numbers.setdefault(dbapi, itertools.count(1))
            ref.label = f"{dbapi}#{next(numbers)}"
        registry[key] = ref

    @staticmethod
    def _forget_callback(registry: dict[int, Any]) -> Callable[[_PoolRef], None]:
        def forget(ref: _PoolRef) -> None:
            # Runs in whichever thread dropped the pool; dict operations hold the GIL.
            key = getattr(ref, "key", None)
            if key is not None and registry.get(key) is ref:
                registry.pop(key, None)

        return forget

    def _watch_connection(self, pool: Any, key: Hashable, result: Any) -> None:
        """Hook body for ``_newConnection``: count the connect, then record the protocol."""
        ref = self._http.get(id(pool))
        if ref is None or ref() is not pool or not isinstance(result, Deferred):
            return  # a pool created before install(), or an override returning something else
        errors = self._errors

        def connected(outcome: Any) -> Any:
            try:
                ref.connecting -= 1
                if not isinstance(outcome, Failure):
                    ref.protocols[outcome] = key
            except Exception as exc:
                errors.record(PoolsProbe.name, exc)
            return outcome  # pass the result (or the failure) on untouched

        ref.connecting += 1
        result.addBoth(connected)

    # collect -----------------------------------------------------------------------------

    def collect(self) -> list[JSONDict]:
        """Every pool, reactor thread pool first. Costs O(pools + their live connections);
        reprs and per-key detail only for what is shown."""
        pools: list[JSONDict] = []
        self._guarded(pools, self._reactor_threadpool)
        self._collect_kind(pools, _live(self._http), "http", self._http_entry, self._http_counts)
        self._collect_kind(
            pools, _live(self._adbapi), "adbapi", self._adbapi_entry, self._adbapi_counts
        )
        for name, user_pool in list(self._user.items()):
            pools.append(self._user_entry(name, user_pool))
        return pools

    def _guarded(self, out: list[JSONDict], build: Callable[[], JSONDict | None]) -> None:
        try:
            entry = build()
        except Exception as exc:
            self._errors.record(self.name, exc)
            return
        if entry is not None:
            out.append(entry)

    def _reactor_threadpool(self) -> JSONDict | None:
        if not hasattr(self._reactor, "getThreadPool"):
            return None  # a reactor without threads (MemoryReactor, Clock)
        entry: JSONDict = {"name": "reactor", "kind": "threadpool"}
        pool = getattr(self._reactor, "threadpool", None)
        if pool is None:  # not created yet: the first callInThread will create it
            entry.update(max=None, in_use=0, idle=0, waiting=0, started=False, created=False)
        else:
            entry.update(_threadpool_fields(pool), created=True)
        return entry

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
        if rest[0]:
            out.append(
                {
                    "name": f"{kind} (+{rest[0]} more)",
                    "kind": kind,
                    "max": None,
                    "in_use": rest[1],
                    "idle": rest[2],
                    "waiting": rest[3],
                    "pools": rest[0],
                }
            )

    def _http_per_key(self, ref: _HttpRef, pool: Any) -> dict[Hashable, list[int]]:
        """key -> [in_use, idle]. Idle: cached connections still open (a cached one whose
        server hung up stays in ``_connections`` until reused or timed out)."""
        per_key: dict[Hashable, list[int]] = {}
        for key, cached in list(pool._connections.items()):
            idle = sum(1 for p in list(cached) if getattr(p, "state", None) == "QUIESCENT")
            if idle:
                per_key.setdefault(key, [0, 0])[1] += idle
        for proto, key in list(ref.protocols.items()):
            if getattr(proto, "state", None) in _HTTP_IN_USE_STATES:
                per_key.setdefault(key, [0, 0])[0] += 1
        return per_key

    def _http_counts(self, ref: _HttpRef, pool: Any) -> tuple[int, int, int]:
        per_key = self._http_per_key(ref, pool)
        return sum(v[0] for v in per_key.values()), sum(v[1] for v in per_key.values()), 0

    def _http_entry(self, ref: _HttpRef, pool: Any) -> JSONDict:
        per_key = self._http_per_key(ref, pool)
        busiest = heapq.nlargest(MAX_KEYS_SHOWN, per_key.items(), key=_counts_of)
        return {
            "name": ref.label,
            "kind": "http",
            "max": int(pool.maxPersistentPerHost),
            "max_scope": "per_key",
            "in_use": sum(v[0] for v in per_key.values()),
            "idle": sum(v[1] for v in per_key.values()),
            "waiting": 0,
            "connecting": max(0, ref.connecting),
            "persistent": bool(pool.persistent),
            "age_s": round(max(0.0, self._clock() - ref.created_at), 3),
            "keys_total": len(per_key),
            "keys": [{"key": _key_label(k), "in_use": v[0], "idle": v[1]} for k, v in busiest],
        }

    def _adbapi_counts(self, ref: _PoolRef, pool: Any) -> tuple[int, int, int]:
        stats = pool.threadpool._team.statistics()
        return stats.busyWorkerCount, stats.idleWorkerCount, stats.backloggedWorkCount

    def _adbapi_entry(self, ref: _PoolRef, pool: Any) -> JSONDict:
        entry: JSONDict = {"name": ref.label, "kind": "adbapi"}
        entry.update(_threadpool_fields(pool.threadpool))
        entry.update(
            max=int(pool.max),
            min=int(pool.min),
            running=bool(pool.running),
            connections=len(pool.connections),
            dbapi=str(pool.dbapiName)[:60],
            age_s=round(max(0.0, self._clock() - ref.created_at), 3),
        )
        return entry

    def _user_entry(self, name: str, pool: TrackablePool) -> JSONDict:
        entry: JSONDict = {"name": name, "kind": "user"}
        try:
            for field in _USER_FIELDS:
                entry[field] = _user_number(getattr(pool, field), field)
        except Exception as exc:
            # The user's code failed, not ours: shown on the entry, counted once per pool.
            entry.update(dict.fromkeys(_USER_FIELDS), error=f"{type(exc).__name__}: {exc}"[:300])
            if name not in self._user_failed:
                self._user_failed.add(name)
                self._errors.record(self.name, exc)
        return entry
