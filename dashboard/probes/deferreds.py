"""Pending Deferreds: how many, how old, created where, and which were dropped unfired.

Hot path (every ``Deferred()``): find the creation site (one frame lookup), bump that
site's counter and put the Deferred in the *nursery* (in C a table keyed by its address; in
pure Python a dict). On first firing: take it out again and bump the site's fired counter.
Nothing else.

Most Deferreds fire before control returns to the reactor, so the nursery stays small.
It is swept every ``sweep_interval_s`` (and whenever it holds ``nursery_limit`` entries):
the Deferreds still in it are *promoted*: tracked by a weak reference stamped with the
sweep time, per site, in creation order. That is what ``oldest`` and the ages come from;
a weak-reference callback tells a promoted Deferred that was garbage-collected without
ever firing (a lost result). A nursery entry that only the nursery still holds is such a
loss too and is counted at the sweep. The sweep settles its Deferreds one at a time, each
staying in the nursery until its weak reference is in place, so one fired during the sweep
(by the garbage collector's callbacks, or by another thread) is counted exactly once.

Pending counts are exact: ``pending = created - fired - unfired_collected`` per site.
Ages have the sweep's resolution (``sweep_interval_s``, 0.1 s by default).

Two implementations of the hot path, same semantics and tests: ``dashboard._accel`` (C, built
at install on CPython 3.11/3.12) reads the caller from the interpreter's frame stack without
creating a frame object and patches C callables (no Python frame of their own); the
pure-Python fallback uses ``sys._getframe``. ``REACTOR_DASHBOARD_ACCEL=0`` forces the fallback.
On either path the first firing is counted from inside Twisted's own ``_startRunCallbacks``,
recompiled with one call added (``deferred_source.with_first_fire``): a hook around it cost
the interpreter its inlined call from ``callback()`` (about 60 ns a Deferred). Where its
source is not at hand or has another shape, a hook around it is used (``fire_hook``).

Side effect, documented: the nursery holds a strong reference to each new, still unfired
Deferred until the next sweep (at most ``sweep_interval_s``), which delays the collection
of a Deferred dropped unfired by that much. Fired Deferreds are never held.
"""

from __future__ import annotations

import functools
import heapq
import sys
import threading
import types
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.base import DelayedCall

from dashboard import accel
from dashboard.probes.base import JSONDict, Patcher, ProbeErrors, TimeSource, frame_site, qualname
from dashboard.probes.deferred_source import init_is_plain, with_first_fire

_getframe = sys._getframe
_getrefcount = sys.getrefcount

#: Distinct creation sites kept; past it, new sites are counted under one "other" site.
MAX_SITES = 10_000
#: (code, instruction offset) keys cached; past it, unseen ones are counted under "other".
MAX_SITE_KEYS = 8 * MAX_SITES


class _PySiteCounts:
    """The pure-Python twin of ``dashboard._accel.SiteCounts``."""

    __slots__ = ("created", "fired", "lost")

    def __init__(self) -> None:
        self.created = 0
        self.fired = 0
        self.lost = 0


#: Whether sites count in the compiled SiteCounts (the compiled hot path needs them).
_COMPILED_COUNTS = accel.enabled()

if TYPE_CHECKING:
    from dashboard._accel import SiteCounts as _SiteCounts
else:
    # chosen at import: REACTOR_DASHBOARD_ACCEL=0 leaves no compiled part in use
    _SiteCounts = accel.built.SiteCounts if _COMPILED_COUNTS else _PySiteCounts


class _Site(_SiteCounts):
    """Counters for one creation site (one line of code). Reactor thread mostly;
    ``created``/``fired`` may be bumped from other threads (on the pure-Python path a lost
    increment is possible there, never an exception)."""

    __slots__ = ("code", "gone", "label", "lineno", "tracked")

    def __init__(self, code: types.CodeType | None, lineno: int, label: str | None = None) -> None:
        self.code = code  # held so that id(code) is never reused while the site lives
        self.lineno = lineno
        self.label = label
        self.created = 0
        self.fired = 0
        self.lost = 0
        #: promoted (still pending after a sweep) Deferreds in promotion order, oldest first;
        #: an entry whose Deferred since fired or was collected is *gone* (``since < 0``) and
        #: stays until the list is compacted. A list: 8 bytes an entry (a dict took ~45).
        self.tracked: list[_TrackedRef] = []
        self.gone = 0

    def forget(self, ref: _TrackedRef) -> None:
        """A tracked Deferred fired or was collected: mark its entry gone; compact the list
        once half of it is gone (amortised O(1) per entry)."""
        ref.since = _GONE
        self.gone += 1
        if self.gone > 32 and self.gone * 2 > len(self.tracked):
            self.tracked[:] = [r for r in self.tracked if r.since >= 0]
            self.gone = 0

    def first(self) -> _TrackedRef | None:
        """The oldest tracked entry not gone; drops the gone ones before it."""
        tracked = self.tracked
        for i, ref in enumerate(tracked):
            if ref.since >= 0:
                if i:
                    del tracked[:i]
                    self.gone -= i
                return ref
        tracked.clear()
        self.gone = 0
        return None

    def oldest(self, n: int) -> list[_TrackedRef]:
        """The ``n`` oldest entries not gone, oldest first."""
        found: list[_TrackedRef] = []
        for ref in self.tracked:
            if ref.since >= 0:
                found.append(ref)
                if len(found) == n:
                    break
        return found

    @property
    def pending(self) -> int:
        return self.created - self.fired - self.lost

    def name(self) -> str:
        if self.label is None:
            code = self.code
            assert code is not None
            self.label = frame_site(code.co_filename, self.lineno, code.co_qualname)
        return self.label


class _TrackedRef(weakref.ref):  # type: ignore[type-arg]
    """A weak reference to a promoted pending Deferred, with its site and promotion time."""

    __slots__ = ("since", "site")

    #: promotion time; ``_GONE`` once the Deferred fired or was collected
    since: float
    site: _Site


_GONE = -1.0


def _transparent_codes() -> list[types.CodeType]:
    """Code objects whose frames are skipped to find the creation site: the helpers of
    ``twisted.internet.defer`` that create Deferreds on their caller's behalf (``succeed``,
    ``fail``, ``maybeDeferred``, ``inlineCallbacks``, ``DeferredList``,
    ``Deferred.fromCoroutine``...)."""
    codes: dict[int, types.CodeType] = {}

    def add(obj: Any, depth: int = 0) -> None:
        func = getattr(obj, "__func__", obj)
        func = getattr(func, "__wrapped__", func)
        code = getattr(func, "__code__", None)
        if isinstance(code, types.CodeType) and code.co_filename == defer.__file__:
            codes[id(code)] = code
            for const in code.co_consts:  # nested functions such as unwindGenerator
                if isinstance(const, types.CodeType):
                    codes[id(const)] = const
        if depth == 0 and isinstance(obj, type):
            for member in vars(obj).values():
                add(member, 1)

    for value in vars(defer).values():
        add(value)
    return list(codes.values())


def _like(hook: Any, original: Callable[..., Any]) -> Any:
    """Name a hook after the method it replaces (introspection, ``inspect.signature`` through
    ``__wrapped__``); its ``__module__`` says who patched it."""
    functools.update_wrapper(hook, original)
    hook.__module__ = __name__
    return hook


def _promoted_fired(ref: _TrackedRef) -> None:
    """A promoted (tracked) Deferred fired for the first time."""
    if ref.since >= 0:
        ref.site.fired += 1
        ref.site.forget(ref)


class DeferredsProbe:
    """Counts Deferreds by creation site and tracks the ones left pending."""

    name = "deferreds"

    def __init__(
        self,
        reactor: Any,
        errors: ProbeErrors,
        clock: TimeSource,
        *,
        top_sites: int = 50,
        oldest: int = 20,
        sweep_interval_s: float = 0.1,
        nursery_limit: int = 512,
        accelerate: bool | None = None,
    ) -> None:
        """``accelerate``: use the compiled hot path (True: required, an error where it is not
        built; None: where built, unless ``REACTOR_DASHBOARD_ACCEL=0``; False: never)."""
        # the site counters' base class was chosen at import: only it can feed the C path
        self.accelerated = accel.resolve(accelerate, available=_COMPILED_COUNTS)
        self._tracker: Any = None
        self._reactor = reactor
        self._errors = errors
        self._clock = clock
        self._top_sites = top_sites
        self._oldest = oldest
        self._sweep_interval_s = sweep_interval_s
        self._nursery_limit = nursery_limit
        self._patcher = Patcher()
        #: (id(code), instruction offset) -> site: the hot-path key (no line lookup)
        self._sites: dict[tuple[int, int], _Site] = {}
        #: (id(code), line) -> site: one site per line of code
        self._sites_by_line: dict[tuple[int, int], _Site] = {}
        self._other = _Site(None, 0, "<other sites>")
        #: Deferreds made by succeed(): created fired, counted but not located
        self._born_fired = [0]
        #: new Deferreds not yet fired, until the next sweep: Deferred -> its site (the
        #: pure-Python path's; the compiled one keeps its own table, ``Tracker.young``)
        self._nursery: dict[defer.Deferred[Any], _Site] = {}
        #: weak references whose Deferred was collected; drained on the reactor thread
        self._graveyard: list[_TrackedRef] = []
        self._timer: DelayedCall | None = None
        self._installed = False
        #: how the first firing is counted: "recompiled" (Twisted's ``_startRunCallbacks``
        #: with the count inside) or "wrapper" (a hook around it); set by ``install()``
        self.fire_hook = ""
        self._sweeping = threading.Lock()

    # lifecycle ---------------------------------------------------------------------------

    def install(self) -> None:
        if self._installed:
            return
        self._installed = True
        # Fresh tables: Deferreds from an earlier run point at the old ones, harmlessly.
        self._sites = {}
        self._sites_by_line = {}
        self._other = _Site(None, 0, "<other sites>")
        self._graveyard.clear()
        self._born_fired = [0]
        cls = defer.Deferred
        original_init: Callable[..., None] = cls.__init__
        original_start: Callable[[Any, object], None] = cls._startRunCallbacks
        inline_init = init_is_plain(original_init)
        if self.accelerated:
            init_hook, start_hook, first_fire = self._compiled_hooks(
                original_init, original_start, inline_init
            )
        else:
            init_hook, start_hook, first_fire = self._python_hooks(
                original_init, original_start, inline_init
            )
        # Twisted's method recompiled with the count inside, where its source allows; else
        # the hook around it
        recompiled = with_first_fire(original_start, first_fire)
        self.fire_hook = "recompiled" if recompiled is not None else "wrapper"
        if recompiled is not None:
            start_hook = recompiled
        patch = self._patcher.patch
        patch(cls, "_rd_ref", None)
        patch(cls, "__init__", _like(init_hook, original_init))
        patch(cls, "_startRunCallbacks", _like(start_hook, original_start))
        self._schedule_sweep()

    def _python_hooks(
        self,
        original_init: Callable[..., None],
        original_start: Callable[[Any, object], None],
        inline_init: bool,
    ) -> tuple[Callable[..., None], Callable[[Any, object], None], Callable[[Any], None]]:
        """``Deferred.__init__`` and ``_startRunCallbacks`` replacements in Python, and the
        first-firing count that a recompiled ``_startRunCallbacks`` calls instead."""
        original_succeed = defer.succeed
        transparent = frozenset(id(code) for code in _transparent_codes())
        succeed_code_id = id(original_succeed.__code__)
        sites = self._sites
        nursery = self._nursery
        nursery_limit = self._nursery_limit
        sweep = self.sweep
        errors = self._errors
        other = self._other
        probe = self
        born_fired = self._born_fired

        def __init__(self: Any, canceller: Any = None) -> None:
            if inline_init:
                # Twisted's own body (checked at install): saves a Python call per Deferred.
                self._callbacks = []
                self._canceller = canceller
                if self.debug:
                    original_init(self, canceller)
            else:
                original_init(self, canceller)
            # Set on every instance, in the same place, so promotion later assigns an existing
            # key: adding a new one unshares the instance dict (measured +216 bytes each).
            self._rd_ref = None
            try:
                frame: types.FrameType | None = _getframe(1)
                cid = id(frame.f_code)  # type: ignore[union-attr]
                if cid == succeed_code_id:
                    # Born fired (succeed() sets .called itself): it can never be pending,
                    # so it is counted, not located; walking to its caller costs the most.
                    born_fired[0] += 1
                    return
                while cid in transparent:
                    frame = frame.f_back  # type: ignore[union-attr]
                    if frame is None:
                        break
                    cid = id(frame.f_code)
                site: _Site | None
                if frame is None:
                    site = other
                else:
                    key = (cid, frame.f_lasti)
                    site = sites.get(key)
                    if site is None:
                        if len(sites) < MAX_SITE_KEYS:
                            site = sites[key] = probe._new_site(frame.f_code, frame.f_lineno)
                        else:  # bounded, as in the compiled path
                            site = other
                # Into the nursery first: an unhashable subclass (one defining __eq__) fails
                # here and is then not counted at all, rather than counted pending forever.
                nursery[self] = site
                site.created += 1
                if len(nursery) >= nursery_limit:
                    sweep()
            except Exception as exc:
                errors.record("deferreds", exc)

        def first_fire(self: Any) -> None:
            try:
                site = nursery.pop(self, None)
                if site is not None:
                    site.fired += 1
                else:
                    ref = self._rd_ref
                    if ref is not None:  # promoted: still tracked until now
                        _promoted_fired(ref)
            except Exception as exc:  # a subclass defining __eq__ is unhashable
                errors.record("deferreds", exc)

        def _startRunCallbacks(self: Any, result: object) -> None:
            if not self.called:
                first_fire(self)
            original_start(self, result)

        return __init__, _startRunCallbacks, first_fire

    def _compiled_hooks(
        self,
        original_init: Callable[..., None],
        original_start: Callable[[Any, object], None],
        inline_init: bool,
    ) -> tuple[object, object, Callable[[Any], object]]:
        """The same three from ``dashboard._accel``: no frame object for the caller and no
        Python frame of their own."""
        assert accel.built is not None
        errors = self._errors
        tracker = accel.built.Tracker(
            # looked up per new site, so that a replaced _new_site (tests) is seen
            new_site=lambda code, lineno: self._new_site(code, lineno),
            other=self._other,
            on_error=lambda exc: errors.record("deferreds", exc),
            sweep=self.sweep,
            promoted_fired=_promoted_fired,
            original_init=original_init,
            original_start=original_start,
            succeed_code=defer.succeed.__code__,
            transparent=tuple(_transparent_codes()),
            nursery_limit=self._nursery_limit,
            inline_init=inline_init,
            max_entries=MAX_SITE_KEYS,
        )
        self._tracker = tracker
        return tracker.hook("init"), tracker.hook("fire"), tracker.first_fire

    def uninstall(self) -> None:
        if not self._installed:
            return
        self._installed = False
        self._patcher.restore()
        if self._tracker is not None:  # keep its count, drop its references
            self._born_fired[0] += self._tracker.born_fired
            self._tracker.clear_nursery()
            self._tracker = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._nursery.clear()
        # Promoted Deferreds keep their weak references; drop ours so no callback runs later.
        for site in self._sites_by_line.values():
            site.tracked.clear()

    def nursery_size(self) -> int:
        """New Deferreds not fired yet, held until the next sweep."""
        return self._tracker.young if self._tracker is not None else len(self._nursery)

    # hot-path helpers --------------------------------------------------------------------

    def _new_site(self, code: types.CodeType, lineno: int) -> _Site:
        """The site for a line of code, shared by all its instructions; past ``MAX_SITES``
        lines, the "other" site."""
        line_key = (id(code), lineno)
        site = self._sites_by_line.get(line_key)
        if site is None:
            if len(self._sites_by_line) >= MAX_SITES:
                return self._other
            site = self._sites_by_line[line_key] = _Site(code, lineno)
        return site

    def _schedule_sweep(self) -> None:
        self._timer = self._reactor.callLater(self._sweep_interval_s, self._periodic_sweep)

    def _periodic_sweep(self) -> None:
        self._timer = None
        try:
            self.sweep()
        finally:
            if self._installed:
                self._schedule_sweep()

    def sweep(self) -> None:
        """Promote the nursery's still-pending Deferreds to tracking. Reactor thread, except
        when a full nursery is swept by the thread that filled it: one sweep at a time (a
        thread that finds one running leaves it the work)."""
        if not self._sweeping.acquire(blocking=False):
            return
        try:
            self._sweep()
        finally:
            self._sweeping.release()

    def _sweep(self) -> None:
        self._bury()
        tracker = self._tracker
        nursery = self._nursery
        batch: list[tuple[defer.Deferred[Any], _Site]]
        if tracker is not None:
            if not tracker.young:
                return
            batch = tracker.young_items()
            settle = tracker.settle
        else:
            if not nursery:
                return
            batch = list(nursery.items())

            def settle(d: defer.Deferred[Any], ref: _TrackedRef | None) -> bool:
                if ref is not None:
                    d._rd_ref = ref  # type: ignore[attr-defined]
                return nursery.pop(d, None) is not None

        # Each Deferred stays in the nursery until settled, so one fired meanwhile (the
        # collector's callbacks, another thread) is counted there; see Tracker.settle.
        try:
            now = self._clock()
            on_lost = self._graveyard.append
            for d, site in batch:
                # References: the nursery's, `batch`'s tuple, the loop variable and
                # getrefcount's argument: nothing else holds it, it can never fire.
                if _getrefcount(d) <= 4:
                    if settle(d, None):
                        site.lost += 1
                    continue
                ref = _TrackedRef(d, on_lost)
                ref.since = now
                ref.site = site
                if settle(d, ref):
                    site.tracked.append(ref)
                else:
                    ref.since = _GONE  # it fired meanwhile: counted, not tracked
        except Exception as exc:
            self._errors.record(self.name, exc)
        finally:
            del batch

    def _bury(self) -> None:
        """Count the promoted Deferreds the garbage collector took. The collector may run
        anywhere (any thread, mid-iteration), so its callback only appends to a list."""
        graveyard = self._graveyard
        while graveyard:
            ref = graveyard.pop()
            if ref.since >= 0:  # still tracked: it never fired
                ref.site.lost += 1
                ref.site.forget(ref)

    # snapshot ----------------------------------------------------------------------------

    def collect(self) -> JSONDict:
        """The ``deferreds`` section. Reactor thread. Costs O(sites + shown)."""
        self.sweep()
        now = self._clock()
        all_sites = [*self._sites_by_line.values(), self._other]
        born_fired = self._born_fired[0] + (self._tracker.born_fired if self._tracker else 0)
        created = fired = born_fired
        lost = 0
        for site in all_sites:
            created += site.created
            fired += site.fired
            lost += site.lost
        busiest = heapq.nlargest(
            self._top_sites, (s for s in all_sites if s.pending > 0), key=lambda s: s.pending
        )
        oldest_refs = self._oldest_refs(all_sites, self._oldest)
        oldest_age = now - oldest_refs[0].since if oldest_refs else 0.0
        return {
            "pending": created - fired - lost,
            "created_total": created,
            "fired_total": fired,
            "unfired_collected_total": lost,
            "born_fired_total": born_fired,
            "hot_path": "compiled" if self.accelerated else "python",
            "oldest_pending_age_s": round(max(0.0, oldest_age), 3),
            "sites_total": len(all_sites) - (0 if self._other.created else 1),
            "sites": [
                {
                    "site": site.name(),
                    "pending": site.pending,
                    "created_total": site.created,
                    "fired_total": site.fired,
                    "unfired_collected_total": site.lost,
                    "oldest_age_s": round(max(0.0, now - first.since), 3)
                    if (first := site.first()) is not None
                    else 0.0,
                }
                for site in busiest
            ],
            "oldest": [self._describe(ref, now) for ref in oldest_refs],
        }

    @staticmethod
    def _oldest_refs(sites: list[_Site], n: int) -> list[_TrackedRef]:
        """The ``n`` oldest promoted Deferreds still pending, oldest first.

        Each site's table is in promotion order, so the ``n`` oldest overall come from the
        sites whose *first* entries are among the ``n`` oldest firsts, at most ``n`` from
        each: O(sites + n^2), whatever the number of pending Deferreds.
        """
        firsts = [first for s in sites if (first := s.first()) is not None]
        candidates: list[_TrackedRef] = []
        for first in heapq.nsmallest(n, firsts, key=_since):
            candidates.extend(first.site.oldest(n))
        return heapq.nsmallest(n, candidates, key=_since)

    def _describe(self, ref: _TrackedRef, now: float) -> JSONDict:
        d = ref()
        return {
            "age_s": round(max(0.0, now - ref.since), 3),
            "site": ref.site.name(),
            "waiting": describe_waiting(d) if d is not None else [],
        }


def _since(ref: _TrackedRef) -> float:
    return ref.since


def describe_waiting(d: defer.Deferred[Any], limit: int = 3) -> list[str]:
    """What waits on ``d``: its first callbacks' names and, for an ``inlineCallbacks``
    generator or a coroutine driven by it, the suspended function and line."""
    out: list[str] = []
    callbacks = getattr(d, "_callbacks", None) or []
    for (callback, args, _kw), _errback in callbacks[:limit]:
        out.append(qualname(callback))
        for arg in args or ():
            where = suspended_at(arg)
            if where is not None:
                out.append(f"suspended at {where}")
                break
    chained = getattr(d, "_chainedTo", None)
    if chained is not None:
        out.append("chained to another Deferred")
    return out


def suspended_at(obj: object) -> str | None:
    """For a generator or coroutine, ``"path.py:LINE in function"`` of the innermost
    suspended frame outside ``twisted.internet.defer`` (awaiting a Deferred suspends in its
    ``__iter__``, which says nothing); ``None`` for anything else."""
    found = None
    for _ in range(20):
        frame = getattr(obj, "gi_frame", None) or getattr(obj, "cr_frame", None)
        if frame is None:
            break
        if frame.f_code.co_filename != defer.__file__ or found is None:
            found = frame
        obj = getattr(obj, "gi_yieldfrom", None) or getattr(obj, "cr_await", None)
    if found is None:
        return None
    return frame_site(found.f_code.co_filename, found.f_lineno, found.f_code.co_qualname)
