"""Busy time by handler: the counters the reactor hooks bump, and the window the snapshot reads.

One entry per handler name (see :mod:`dashboard.probes.handler_names`), a list for speed:
``[calls, busy_s, interval_max_s, max_s, counts, name, own]``; ``counts`` are the duration
histogram's buckets (``DURATION_BOUNDS_S``, the last one +inf); a call shorter than the first
bound is counted only in ``calls`` (bucket 0 is ``calls`` minus the rest), so most calls cost
no bucket search. At most ``MAX_HANDLERS`` names are kept; later ones are merged into one
entry named ``OTHER``.

The hot path (:meth:`HandlerTable.make_call_done`, :mod:`dashboard.probes.handler_io`) finds
an entry through a cache keyed by what is cheap to read: a timed call's code object (a bound
method's function's), a protocol's class. A decorated function (one that has ``__wrapped__``), a
``LoopingCall``, a ``partial``, a TLS-wrapped protocol or a listening port are named on each
call (a microsecond or two). The caches are bounded (cleared when full).

On the compiled path (``compiled=True``, fed by ``dashboard._accel.HandlerTimer``) each entry
is a ``HandlerEntry`` with the same seven fields, read and written by index as the list is, and
the timer keeps its own cache of timed calls by code address (:meth:`HandlerTable.named_call`
names its misses); the I/O caches here are shared with it.

The window: every ``close`` (the sampler's read) stores the running totals; a section covers
from the newest stored totals at least ``window_s`` old (or the first, since install) to now.
Reactor thread only.
"""

from __future__ import annotations

import math
import types
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import task

from dashboard import accel
from dashboard.probes.base import JSONDict, TimeSource
from dashboard.probes.handler_names import LOST, READ, WRITE, call_name, inner_protocol, io_name

#: Distinct handler names kept; the rest merged into ``OTHER``.
MAX_HANDLERS = 512
#: Handlers listed in a section (``loop.handlers``), by busy time in the window.
DEFAULT_TOP_N = 20
#: The window a section covers, seconds.
DEFAULT_WINDOW_S = 10.0
#: Upper bounds of the duration histogram's buckets, seconds (+inf last).
DURATION_BOUNDS_S = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BOUNDS_WITH_INF = (*DURATION_BOUNDS_S, math.inf)
#: The merged entry's name.
OTHER = "(other handlers)"
#: Cache entries kept before a cache is cleared.
_CACHE_MAX = 4096
#: Stored totals kept at most (the window also bounds them).
_MAX_MARKS = 4096
#: I/O kinds, by index into the I/O caches.
KINDS = (READ, WRITE, LOST)

_CALLS, _BUSY, _IMAX, _MAX, _COUNTS, _NAME, _OWN = range(7)
#: a list on the Python path; a ``dashboard._accel.HandlerEntry``, which reads and writes
#: like one, on the compiled path
Entry = Any
_NOT_CACHED = object()


class _Mark:
    """The running totals at one ``close``."""

    __slots__ = ("at", "idle_s", "maxes", "totals")

    def __init__(
        self,
        at: float,
        idle_s: float | None,
        totals: dict[str, tuple[int, float]],
        maxes: dict[str, float],
    ) -> None:
        self.at = at
        self.idle_s = idle_s
        self.totals = totals
        #: the largest call of the interval this mark closed, by name (only those that ran)
        self.maxes = maxes


class HandlerTable:
    """Calls and busy seconds per handler. ``clock``: the reactor clock (seconds), read around
    each call; ``idle``: the loop probe's seconds spent in the poller wait so far (None when no
    wait is timed), for ``handlers_busy_ratio``."""

    def __init__(
        self,
        clock: TimeSource,
        *,
        idle: Callable[[], float | None] | None = None,
        top_n: int = DEFAULT_TOP_N,
        window_s: float = DEFAULT_WINDOW_S,
        max_handlers: int = MAX_HANDLERS,
        compiled: bool = False,
    ) -> None:
        """``compiled``: the entries are ``dashboard._accel.HandlerEntry`` objects, counted
        by the compiled hooks (:class:`dashboard.probes.handlers.HandlerHooks`)."""
        if top_n < 1:
            raise ValueError(f"top_handlers must be >= 1, got {top_n!r}")
        if not window_s > 0:
            raise ValueError(f"handlers_window_s must be > 0, got {window_s!r}")
        self.clock = clock
        self._idle = idle or (lambda: None)
        self.top_n = top_n
        self.window_s = window_s
        self.max_handlers = max_handlers
        self._entry_type: Callable[..., Entry] | None = None
        if compiled:
            if accel.built is None:
                raise RuntimeError("dashboard._accel is not built here")
            self._entry_type = accel.built.HandlerEntry
        self.by_name: dict[str, Entry] = {}
        self._call_cache: dict[object, Any] = {}
        self.io_caches: tuple[dict[type, Entry], ...] = ({}, {}, {})
        self._slow_cache: dict[tuple[object, ...], Entry] = {}
        self._marks: deque[_Mark] = deque(maxlen=_MAX_MARKS)
        self.reset()

    def reset(self) -> None:
        """Forget everything; the window starts now."""
        self.by_name.clear()
        self._call_cache.clear()
        for cache in self.io_caches:
            cache.clear()
        self._slow_cache.clear()
        self._marks.clear()
        self._marks.append(_Mark(self.clock(), self._idle(), {}, {}))

    # entries -----------------------------------------------------------------------------

    def entry(self, name: str, own: bool) -> Entry:
        """The entry for ``name``, made on first use (``OTHER`` once the table is full)."""
        found = self.by_name.get(name)
        if found is not None:
            return found
        if len(self.by_name) >= self.max_handlers:
            name, own = OTHER, False
            found = self.by_name.get(name)
            if found is not None:
                return found
        made: Entry
        if self._entry_type is not None:
            made = self._entry_type(name, own, len(BOUNDS_WITH_INF))
        else:
            made = [0, 0.0, 0.0, 0.0, [0] * len(BOUNDS_WITH_INF), name, own]
        self.by_name[name] = made
        return made

    def _cached(self, cache: dict[Any, Entry], key: Any, entry: Entry) -> Entry:
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[key] = entry
        return entry

    def call_entry(self, func: object) -> Entry:
        """The entry of a timed call's ``func``: the slow path, which also fills the cache."""
        code = _code_key(func)
        if isinstance(func, task.LoopingCall):
            inner = getattr(func, "f", None)
            key = ("LoopingCall", _code_key(inner))
            found = self._slow_cache.get(key) if key[1] is not None else None
            if found is not None:
                return found
            entry = self.entry(*call_name(func))
            if key[1] is not None and not _is_wrapper(inner):
                self._cached(self._slow_cache, key, entry)
            return entry
        entry = self.entry(*call_name(func))
        if code is not None:
            if _is_wrapper(func):
                self._cached(self._call_cache, code, _NOT_CACHED)
            else:
                self._cached(self._call_cache, code, entry)
        return entry

    def named_call(self, func: object) -> tuple[Entry, bool]:
        """The entry of a timed call's ``func``, and whether it may be kept by its code (a
        ``LoopingCall``'s: by its function's): the compiled path's slow path, which keeps
        its own cache (a decorator's wrapper names each function it made apart)."""
        inner = getattr(func, "f", None) if isinstance(func, task.LoopingCall) else func
        cacheable = _code_key(inner) is not None and not _is_wrapper(inner)
        return self.entry(*call_name(func)), cacheable

    def io_entry(self, selectable: object, protocol: object, kind: int) -> Entry:
        """The entry of an I/O event (``kind`` an index into ``KINDS``): the slow path."""
        name_kind = KINDS[kind]
        if protocol is None:
            factory = getattr(selectable, "factory", None)
            if factory is None:
                return self._cached(
                    self.io_caches[kind],
                    type(selectable),
                    self.entry(*io_name(selectable, None, name_kind)),
                )
            key: tuple[object, ...] = (type(selectable), type(factory), kind)
        else:
            inner = inner_protocol(protocol)
            if inner is protocol:
                return self._cached(
                    self.io_caches[kind],
                    type(protocol),
                    self.entry(*io_name(selectable, protocol, name_kind)),
                )
            key = (type(protocol), type(inner), kind, type(selectable))
        found = self._slow_cache.get(key)
        if found is None:
            found = self._cached(
                self._slow_cache, key, self.entry(*io_name(selectable, protocol, name_kind))
            )
        return found

    # the hot path --------------------------------------------------------------------------

    def make_call_done(self, record_error: Callable[[BaseException], None]) -> Callable[..., None]:
        """``call_done(func, t0)``: a timed call of ``func`` that began at ``t0`` just ended.
        Never raises."""
        clock = self.clock
        cache = self._call_cache
        slow = self.call_entry
        floor = DURATION_BOUNDS_S[0]
        bounds = BOUNDS_WITH_INF
        method_type = types.MethodType
        function_type = types.FunctionType

        def call_done(func: Any, t0: float) -> None:
            d = clock() - t0
            try:
                kind = type(func)
                if kind is method_type:
                    e = cache.get(func.__func__.__code__)
                elif kind is function_type:
                    e = cache.get(func.__code__)
                else:
                    e = None
                if e is None or e is _NOT_CACHED:
                    e = slow(func)
                e[0] += 1
                e[1] += d
                if d > e[2]:
                    e[2] = d
                if d > floor:
                    e[4][bisect_left(bounds, d)] += 1
            except Exception as exc:
                record_error(exc)

        return call_done

    # reading -----------------------------------------------------------------------------

    def section(self, *, close: bool) -> JSONDict:
        """The ``loop.handlers*`` fields over the window ending now; ``close`` stores the
        running totals (the sampler's read) and starts the next interval."""
        now = self.clock()
        idle_now = self._idle()
        marks = self._marks
        horizon = now - self.window_s
        while len(marks) > 1 and marks[1].at <= horizon:
            marks.popleft()
        base = marks[0]
        wall_s = now - base.at
        totals = {name: (e[_CALLS], e[_BUSY]) for name, e in self.by_name.items()}
        window_max: dict[str, float] = {}
        for mark in list(marks)[1:]:
            for name, m in mark.maxes.items():
                if m > window_max.get(name, 0.0):
                    window_max[name] = m
        rows = []
        for name, e in self.by_name.items():
            calls0, busy0 = base.totals.get(name, (0, 0.0))
            calls = e[_CALLS] - calls0
            if calls <= 0:
                continue
            busy = e[_BUSY] - busy0
            rows.append((busy, calls, name, e, max(window_max.get(name, 0.0), e[_IMAX])))
        rows.sort(key=lambda row: (-row[0], row[2]))
        last = marks[-1]
        last_wall_s = now - last.at
        shown = [
            self._row(busy, calls, e, max_s, wall_s, last, last_wall_s)
            for busy, calls, _name, e, max_s in rows[: self.top_n]
        ]
        rest = rows[self.top_n :]
        rest_busy = sum(row[0] for row in rest)
        other = {
            "handlers": len(rest),
            "calls": sum(row[1] for row in rest),
            "busy_s": round(rest_busy, 6),
            "calls_total": sum(row[3][_CALLS] for row in rest),
            "busy_s_total": round(sum(row[3][_BUSY] for row in rest), 6),
            "share": _ratio(rest_busy, wall_s),
        }
        busy_ratio = None
        if idle_now is not None and base.idle_s is not None and wall_s > 0:
            busy_ratio = round(min(1.0, max(0.0, 1.0 - (idle_now - base.idle_s) / wall_s)), 4)
        if close:
            maxes = {}
            for name, e in self.by_name.items():
                if e[_IMAX] > 0.0:
                    maxes[name] = e[_IMAX]
                    if e[_IMAX] > e[_MAX]:
                        e[_MAX] = e[_IMAX]
                    e[_IMAX] = 0.0
            marks.append(_Mark(now, idle_now, totals, maxes))
        return {
            "handlers": shown,
            "handlers_other": other,
            "handlers_window_s": round(max(wall_s, 0.0), 3),
            "handlers_busy_ratio": busy_ratio,
            "handlers_tracked": len(self.by_name),
            "handler_duration_bounds_ms": [round(b * 1000.0, 3) for b in DURATION_BOUNDS_S],
        }

    @staticmethod
    def _row(
        busy: float,
        calls: int,
        e: Entry,
        max_s: float,
        wall_s: float,
        last: _Mark,
        last_wall_s: float,
    ) -> JSONDict:
        _calls0, busy0 = last.totals.get(e[_NAME], (0, 0.0))
        counts = list(e[_COUNTS])
        counts[0] = e[_CALLS] - sum(counts)
        return {
            "handler": e[_NAME],
            "own": e[_OWN],
            "calls": calls,
            "busy_s": round(busy, 6),
            "share": _ratio(busy, wall_s),
            "share_last": _ratio(e[_BUSY] - busy0, last_wall_s),
            "calls_per_s": round(calls / wall_s, 3) if wall_s > 0 else None,
            "mean_ms": round(busy / calls * 1000.0, 3),
            "max_ms": round(max_s * 1000.0, 3),
            "calls_total": e[_CALLS],
            "busy_s_total": round(e[_BUSY], 6),
            "max_ms_total": round(max(e[_MAX], e[_IMAX]) * 1000.0, 3),
            "duration_counts": counts,
        }

    def histogram(self, name: str) -> tuple[tuple[float, ...], list[int], float, int] | None:
        """For a Prometheus histogram of ``name``'s call durations since install: (bucket
        upper bounds in seconds ending with +inf, per-bucket counts (not cumulative), sum in
        seconds, count); None when unknown."""
        e = self.by_name.get(name)
        if e is None:
            return None
        counts = list(e[_COUNTS])
        counts[0] = e[_CALLS] - sum(counts)
        return BOUNDS_WITH_INF, counts, e[_BUSY], e[_CALLS]


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole > 0 else None


def _code_key(func: object) -> types.CodeType | None:
    """The code object the hot path keys ``func`` by (a bound method's function's)."""
    if type(func) is types.MethodType:
        func = func.__func__
    if type(func) is types.FunctionType:
        return func.__code__
    return None


def _is_wrapper(func: object) -> bool:
    """Whether ``func`` (or a bound method's function) wraps another: its code is shared by
    every function the same decorator made, so it cannot name them."""
    try:
        func = getattr(func, "__func__", func)
        return getattr(func, "__wrapped__", None) is not None
    except Exception:
        return True
