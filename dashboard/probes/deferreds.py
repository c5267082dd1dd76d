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

Sites a user recognises: the site is the first frame outside Twisted's Deferred machinery
(the recompiled ``_startRunCallbacks`` included); a Deferred made by an ``inlineCallbacks``
function used as a callback is sited at that function. A ``LoopingCall``'s Deferred is moved
(counts and all) to a site named after the function it loops, at ``LoopingCall.start``:
``loops`` shows those apart, and they are kept out of ``oldest``. Sites in the ``dashboard``
package (but ``dashboard/demo.py``) and the Deferreds the monitor says it holds for its open
requests (``serving``) are the dashboard's own: counted under ``own``, not in the program's
figures. ``lost_sites`` lists the sites that lost Deferreds lately (``deferred_losses``).
"""

from __future__ import annotations

import functools
import heapq
import sys
import threading
import types
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer, task
from twisted.internet.base import DelayedCall

from dashboard import accel
from dashboard.probes.base import (
    JSONDict,
    Patcher,
    ProbeErrors,
    TimeSource,
    frame_site,
    is_own_file,
    qualname,
    unwrapped,
)
from dashboard.probes.deferred_losses import RecentLosses
from dashboard.probes.deferred_sites import (
    COMPILED_COUNTS,
    GONE,
    Site,
    TrackedRef,
    inline_callbacks_codes,
    promoted_fired,
    promoted_since,
    site_oldest_age,
    totals,
    transparent_codes,
)
from dashboard.probes.deferred_source import bind_first_fire, init_is_plain, with_first_fire
from dashboard.probes.deferred_waiting import describe_waiting

_getframe = sys._getframe
_getrefcount = sys.getrefcount

#: Distinct creation sites kept; past it, new sites are counted under one "other" site.
MAX_SITES = 10_000
#: (code, instruction offset) keys cached; past it, unseen ones are counted under "other".
MAX_SITE_KEYS = 8 * MAX_SITES
#: Distinct looped functions kept; past it, new ones share one "other looping calls" site.
MAX_LOOP_SITES = 1_000
#: How many sites ``lost_sites`` and ``loops`` list.
SHOWN_LOST_SITES = 20
SHOWN_LOOPS = 20


def _unbound_first_fire(deferred: object) -> None:
    """Stands in until the recompiled ``_startRunCallbacks`` is bound to the real count."""


def _like(hook: Any, original: Callable[..., Any]) -> Any:
    """Name a hook after the method it replaces (introspection, ``inspect.signature`` through
    ``__wrapped__``), its module included: a program's ``callLater(t, lc.start)`` is named
    as, and stays, the program's (``base.is_own_function`` follows ``__wrapped__``)."""
    functools.update_wrapper(hook, original)
    return hook


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
        self.accelerated = accel.resolve(accelerate, available=COMPILED_COUNTS)
        self.hot_path_reason = accel.hot_path_reason(
            accelerate,
            self.accelerated,
            unavailable=f"the site counters were made pure Python at import ({accel.ENV}=0 then)",
        )
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
        self._sites: dict[tuple[int, int], Site] = {}
        #: (id(code), line) -> site: one site per line of code
        self._sites_by_line: dict[tuple[int, int], Site] = {}
        #: the same sites, split once: the program's, and the dashboard's own
        self._program_sites: list[Site] = []
        self._own_sites: list[Site] = []
        self._other = Site(None, 0, "<other sites>")
        #: Deferreds made by succeed(): created fired, counted but not located
        self._born_fired = [0]
        #: new Deferreds not yet fired, until the next sweep: Deferred -> its site (the
        #: pure-Python path's; the compiled one keeps its own table, ``Tracker.young``)
        self._nursery: dict[defer.Deferred[Any], Site] = {}
        #: weak references whose Deferred was collected; drained on the reactor thread
        self._graveyard: list[TrackedRef] = []
        self._timer: DelayedCall | None = None
        self._installed = False
        #: how the first firing is counted: "recompiled" (Twisted's ``_startRunCallbacks``
        #: with the count inside) or "wrapper" (a hook around it); set by ``install()``
        self.fire_hook = ""
        self._sweeping = threading.Lock()
        #: looped function (its code, or its name) -> the site of its LoopingCalls' Deferreds
        self._loop_sites: dict[object, Site] = {}
        self._other_loops = Site(None, 0, "<other looping calls>", loop="<other functions>")
        #: the Deferreds held on the dashboard's behalf while it serves (claimed at collect)
        self._serving_site = Site(None, 0, "<serving the dashboard>", own=True)
        self._losses = RecentLosses()
        #: Set by the Monitor: the Deferreds Twisted and Klein hold for the dashboard's open
        #: requests (its event streams' ``notifyFinish`` ones). Called by ``collect()``;
        #: those still pending at a program's site move to the dashboard's own.
        self.serving: Callable[[], Iterable[object]] | None = None

    # lifecycle ---------------------------------------------------------------------------

    def install(self) -> None:
        if self._installed:
            return
        self._installed = True
        # Fresh tables: Deferreds from an earlier run point at the old ones, harmlessly.
        self._sites = {}
        self._sites_by_line = {}
        self._program_sites = []
        self._own_sites = []
        self._other = Site(None, 0, "<other sites>")
        self._loop_sites = {}
        self._other_loops = Site(None, 0, "<other looping calls>", loop="<other functions>")
        self._serving_site = Site(None, 0, "<serving the dashboard>", own=True)
        self._losses.clear()
        self._graveyard.clear()
        self._born_fired = [0]
        cls = defer.Deferred
        original_init: Callable[..., None] = cls.__init__
        original_start: Callable[[Any, object], None] = cls._startRunCallbacks
        inline_init = init_is_plain(original_init)
        # Twisted's method recompiled with the count inside, where its source allows; else
        # the hook around it. Its code is Twisted's machinery too: never a creation site.
        recompiled = with_first_fire(original_start, _unbound_first_fire)
        transparent = transparent_codes()
        if recompiled is not None:
            transparent.append(recompiled.__code__)
        if self.accelerated:
            init_hook, start_hook, first_fire = self._compiled_hooks(
                original_init, original_start, inline_init, transparent
            )
        else:
            init_hook, start_hook, first_fire = self._python_hooks(
                original_init, original_start, inline_init, transparent
            )
        self.fire_hook = "recompiled" if recompiled is not None else "wrapper"
        if recompiled is not None:
            bind_first_fire(recompiled, first_fire)
            start_hook = recompiled
        patch = self._patcher.patch
        patch(cls, "_rd_ref", None)
        patch(cls, "__init__", _like(init_hook, original_init))
        patch(cls, "_startRunCallbacks", _like(start_hook, original_start))
        patch(task.LoopingCall, "start", self._loop_start_hook(task.LoopingCall.start))
        self._schedule_sweep()

    def _python_hooks(
        self,
        original_init: Callable[..., None],
        original_start: Callable[[Any, object], None],
        inline_init: bool,
        transparent_codes: list[types.CodeType],
    ) -> tuple[Callable[..., None], Callable[[Any, object], None], Callable[[Any], None]]:
        """``Deferred.__init__`` and ``_startRunCallbacks`` replacements in Python, and the
        first-firing count that a recompiled ``_startRunCallbacks`` calls instead."""
        original_succeed = defer.succeed
        transparent: frozenset[int] = frozenset()  # set below, with the wrapper's own code
        succeed_code_id = id(original_succeed.__code__)
        drive_code, run_code = inline_callbacks_codes()
        drive_id = id(drive_code) if drive_code is not None else -1
        run_id = id(run_code) if run_code is not None else -1
        generator_site = self._generator_site
        sites = self._sites
        nursery = self._nursery
        nursery_limit = self._nursery_limit
        sweep = self.sweep
        errors = self._errors
        other = self._other
        probe = self
        born_fired = self._born_fired

        def new_site_at(frame: types.FrameType, key: tuple[int, int]) -> Site:
            if len(sites) < MAX_SITE_KEYS:
                site = sites[key] = probe._new_site(frame.f_code, frame.f_lineno)
                return site
            return other  # bounded, as in the compiled path

        def site_past_helpers(frame: types.FrameType | None) -> Site:
            """The site of a Deferred made inside Twisted's Deferred helpers: the first frame
            outside them, or the inlineCallbacks function that is itself a callback."""
            driving = None  # the frame driving an inlineCallbacks generator, once passed
            while frame is not None:
                cid = id(frame.f_code)
                if cid not in transparent:
                    key = (cid, frame.f_lasti)
                    return sites.get(key) or new_site_at(frame, key)
                if cid == drive_id:
                    driving = frame
                elif cid == run_id and driving is not None:
                    site = generator_site(driving)
                    if site is not None:
                        return site
                frame = frame.f_back
            return other

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
                frame = _getframe(1)
                cid = id(frame.f_code)
                if cid == succeed_code_id:
                    # Born fired (succeed() sets .called itself): it can never be pending,
                    # so it is counted, not located; walking to its caller costs the most.
                    born_fired[0] += 1
                    return
                if cid in transparent:  # made by a Deferred helper: walk to its user
                    site = site_past_helpers(frame)
                else:
                    key = (cid, frame.f_lasti)
                    found = sites.get(key)
                    site = found if found is not None else new_site_at(frame, key)
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
                        promoted_fired(ref)
            except Exception as exc:  # a subclass defining __eq__ is unhashable
                errors.record("deferreds", exc)

        def _startRunCallbacks(self: Any, result: object) -> None:
            if not self.called:
                first_fire(self)
            original_start(self, result)

        # this wrapper's frame is Deferred machinery too (where Twisted's is not recompiled)
        transparent = frozenset(
            id(code) for code in [*transparent_codes, _startRunCallbacks.__code__]
        )
        return __init__, _startRunCallbacks, first_fire

    def _compiled_hooks(
        self,
        original_init: Callable[..., None],
        original_start: Callable[[Any, object], None],
        inline_init: bool,
        transparent: list[types.CodeType],
    ) -> tuple[object, object, Callable[[Any], object]]:
        """The same three from ``dashboard._accel``: no frame object for the caller and no
        Python frame of their own."""
        assert accel.built is not None
        errors = self._errors
        drive_code, run_code = inline_callbacks_codes()
        tracker = accel.built.Tracker(
            # looked up per new site, so that a replaced _new_site (tests) is seen
            new_site=lambda code, lineno: self._new_site(code, lineno),
            other=self._other,
            on_error=lambda exc: errors.record("deferreds", exc),
            sweep=self.sweep,
            promoted_fired=promoted_fired,
            original_init=original_init,
            original_start=original_start,
            succeed_code=defer.succeed.__code__,
            transparent=tuple(transparent),
            nursery_limit=self._nursery_limit,
            inline_init=inline_init,
            max_entries=MAX_SITE_KEYS,
            generator_code=drive_code,
            run_callbacks_code=run_code,
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
        for site in self._all_sites():
            site.tracked.clear()

    def nursery_size(self) -> int:
        """New Deferreds not fired yet, held until the next sweep."""
        return self._tracker.young if self._tracker is not None else len(self._nursery)

    # hot-path helpers --------------------------------------------------------------------

    def _new_site(self, code: types.CodeType, lineno: int) -> Site:
        """The site for a line of code, shared by all its instructions; past ``MAX_SITES``
        lines, the "other" site."""
        line_key = (id(code), lineno)
        site = self._sites_by_line.get(line_key)
        if site is None:
            if len(self._sites_by_line) >= MAX_SITES:
                return self._other
            site = Site(code, lineno, own=is_own_file(code.co_filename))
            self._sites_by_line[line_key] = site
            (self._own_sites if site.own else self._program_sites).append(site)
        return site

    def _generator_site(self, frame: types.FrameType) -> Site | None:
        """Pure-Python path: the site of the function whose generator (or coroutine) ``frame``
        (Twisted's ``_cancellableInlineCallbacks``) drives, keyed by its code and -1 as the
        compiled path keys it; None when it holds none. Not a hot path: only Deferreds made
        by an inlineCallbacks function used as a callback come here."""
        gen = frame.f_locals.get(frame.f_code.co_varnames[0])
        if isinstance(gen, types.GeneratorType):
            code = gen.gi_code
        elif isinstance(gen, types.CoroutineType):
            code = gen.cr_code
        else:
            return None
        key = (id(code), -1)
        site = self._sites.get(key)
        if site is None:
            if len(self._sites) >= MAX_SITE_KEYS:
                return self._other
            site = self._sites[key] = self._new_site(code, code.co_firstlineno)
        return site

    def _all_sites(self) -> list[Site]:
        """Every site: by line, looping calls', the serving one, "other"."""
        return [
            *self._sites_by_line.values(),
            *self._loop_sites.values(),
            self._other_loops,
            self._serving_site,
            self._other,
        ]

    # moving a Deferred to another site (a LoopingCall's, or the dashboard's own) -------------

    def _loop_start_hook(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """``LoopingCall.start`` that moves the Deferred it returns to the site of the looped
        function. Once per ``start()``: not a hot path."""
        probe = self

        def start(self: task.LoopingCall, *args: Any, **kwargs: Any) -> Any:
            d = original(self, *args, **kwargs)
            try:
                probe._resite(d, probe._loop_site(self.f))
            except Exception as exc:
                probe._errors.record(probe.name, exc)
            return d

        hook: Callable[..., Any] = _like(start, original)
        return hook

    def _loop_site(self, function: Callable[..., object]) -> Site:
        """The site of the LoopingCalls of ``function``: one per function (by its code: the
        same method of many instances is one site), named after it. Partials, bound methods
        and ``functools.wraps`` wrappers are seen through: Synapse's ``Clock.looping_call``
        wraps each of its 40-odd periodic functions in one closure, which is not what loops."""
        func: Any = unwrapped(function)
        code = getattr(func, "__code__", None)
        name = qualname(func)
        key: object = code if isinstance(code, types.CodeType) else name
        site = self._loop_sites.get(key)
        if site is None:
            if len(self._loop_sites) >= MAX_LOOP_SITES:
                return self._other_loops
            if isinstance(code, types.CodeType):
                label = frame_site(code.co_filename, code.co_firstlineno, code.co_qualname)
                site = Site(
                    code,
                    code.co_firstlineno,
                    f"{label} (LoopingCall)",
                    own=is_own_file(code.co_filename),
                    loop=name,
                )
            else:
                site = Site(None, 0, f"LoopingCall of {name}", loop=name)
            self._loop_sites[key] = site
        return site

    def _resite(self, d: object, new: Site) -> None:
        """Move ``d`` to the site ``new``, with its counts: created there, and fired there if
        it fired after its promotion. Reactor thread; never during a sweep (another thread's
        is waited for: a sweep settles each Deferred at the site it read first). A Deferred
        that fired before its first sweep is not known any more, and stays where it was
        counted."""
        # A sweep (at most nursery_limit entries) takes well under a millisecond; waiting
        # longer means this very thread is sweeping (re-entered from a finaliser): give up
        # rather than stall the program's LoopingCall.start.
        if not self._sweeping.acquire(timeout=0.02):
            raise RuntimeError("a sweep is running: Deferred not moved to its site")
        try:
            self._move(d, new)
        finally:
            self._sweeping.release()

    def _move(self, d: object, new: Site) -> None:
        tracker = self._tracker
        old: Site | None
        if tracker is not None:
            old = tracker.resite(d, new)
        else:
            old = self._nursery.get(d)  # type: ignore[call-overload]
            if old is not None:
                self._nursery[d] = new  # type: ignore[index]
        if old is not None:  # in the nursery: only created is counted
            old.created -= 1
            new.created += 1
            return
        ref = getattr(d, "_rd_ref", None)
        if not isinstance(ref, TrackedRef) or ref.site is new:
            return
        old = ref.site
        if ref.since >= 0:  # promoted and pending: tracked at the new site from now
            moved = TrackedRef(d, self._graveyard.append)
            moved.since = ref.since
            moved.site = new
            old.forget(ref)
            d._rd_ref = moved  # type: ignore[attr-defined]
            new.tracked.append(moved)
        elif getattr(d, "called", False):  # fired after its promotion, counted at the old
            old.fired -= 1
            new.fired += 1
            ref.site = new
        else:  # collected meanwhile: its loss is counted where it was
            return
        old.created -= 1
        new.created += 1

    def _claim_serving(self) -> None:
        """The Deferreds held for the dashboard's open requests (``serving``) that are still
        pending at a program's site become the dashboard's own."""
        serving = self.serving
        if serving is None:
            return
        own = self._serving_site
        for d in serving():
            site = self._site_of(d)
            if site is not None and not site.own:
                self._resite(d, own)

    def _nursery_site(self, d: object) -> Site | None:
        """``d``'s site while it is in the nursery (younger than the last sweep), else None."""
        tracker = self._tracker
        if tracker is not None:
            site: Site | None = tracker.site_of(d)
            return site
        found: Site | None = self._nursery.get(d)  # type: ignore[call-overload]
        return found

    def _site_of(self, d: object) -> Site | None:
        """``d``'s site while it is pending (in the nursery or promoted), else None."""
        site = self._nursery_site(d)
        if site is not None:
            return site
        ref = getattr(d, "_rd_ref", None)
        if isinstance(ref, TrackedRef) and ref.since >= 0:
            return ref.site
        return None

    def whereabouts(self, d: object) -> tuple[str | None, float | None]:
        """Where ``d`` was made and how long ago: ``(site label, seconds)``. Pending and
        promoted (it lived past a sweep): the site and the seconds since that sweep (a lower
        bound: sweep resolution, 0.1 s by default). Pending, younger than the last sweep:
        the site and 0.0. Fired or collected after its promotion: the site and None (age
        unknown). Fired before any sweep, made by ``succeed()``, made before ``install()``
        or not a Deferred: ``(None, None)``. Cheap (one table lookup); reactor thread; never
        raises (a failure is recorded, and answered ``(None, None)``)."""
        try:
            if not self._installed:
                return None, None
            site = self._nursery_site(d)
            if site is not None:
                return site.name(), 0.0
            ref = getattr(d, "_rd_ref", None)
            if isinstance(ref, TrackedRef):
                if ref.since >= 0:
                    return ref.site.name(), round(max(0.0, self._clock() - ref.since), 3)
                return ref.site.name(), None
        except Exception as exc:  # an unhashable subclass, a failing clock...
            self._errors.record(self.name, exc)
        return None, None

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
        batch: list[tuple[defer.Deferred[Any], Site]]
        if tracker is not None:
            if not tracker.young:
                return
            batch = tracker.young_items()
            settle = tracker.settle
        else:
            if not nursery:
                return
            batch = list(nursery.items())

            def settle(d: defer.Deferred[Any], ref: TrackedRef | None) -> bool:
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
                        self._lost(site, now)
                    continue
                ref = TrackedRef(d, on_lost)
                ref.since = now
                ref.site = site
                if settle(d, ref):
                    site.tracked.append(ref)
                else:
                    ref.since = GONE  # it fired meanwhile: counted, not tracked
        except Exception as exc:
            self._errors.record(self.name, exc)
        finally:
            del batch

    def _bury(self) -> None:
        """Count the promoted Deferreds the garbage collector took. The collector may run
        anywhere (any thread, mid-iteration), so its callback only appends to a list."""
        graveyard = self._graveyard
        if not graveyard:
            return
        now = self._clock()
        while graveyard:
            ref = graveyard.pop()
            if ref.since >= 0:  # still tracked: it never fired
                self._lost(ref.site, now)
                ref.site.forget(ref)

    def _lost(self, site: Site, now: float) -> None:
        """Count a lost Deferred (collected unfired) at ``site``, and when."""
        if not site.own:
            self._losses.lost(site, now)
        site.lost += 1

    # snapshot ----------------------------------------------------------------------------

    def collect(self) -> JSONDict:
        """The ``deferreds`` section: the program's figures, and the dashboard's own apart.
        Reactor thread. Costs O(sites + shown)."""
        try:
            self._claim_serving()
        except Exception as exc:
            self._errors.record(self.name, exc)
        self.sweep()
        now = self._clock()
        # by line: the program's sites (never a loop's) or the dashboard's own
        waiting = [self._other, *self._program_sites]
        own = [self._serving_site, *self._own_sites]
        loops: list[Site] = []
        for site in [*self._loop_sites.values(), self._other_loops]:
            (own if site.own else loops).append(site)
        program = waiting + loops
        # succeed() results are counted, not located: the program's (they are never pending)
        born_fired = self._born_fired[0] + (self._tracker.born_fired if self._tracker else 0)
        created, fired, lost, seen = totals(program)
        created += born_fired
        fired += born_fired
        own_created, own_fired, own_lost, _ = totals(own)
        busiest = heapq.nlargest(
            self._top_sites, (s for s in program if s.pending > 0), key=lambda s: s.pending
        )
        oldest_refs = self._oldest_refs(waiting, self._oldest)
        oldest_age = now - oldest_refs[0].since if oldest_refs else 0.0
        busiest_loops = heapq.nlargest(
            SHOWN_LOOPS, (s for s in loops if s.pending > 0), key=lambda s: s.pending
        )
        return {
            "pending": created - fired - lost,
            "created_total": created,
            "fired_total": fired,
            "unfired_collected_total": lost,
            "born_fired_total": born_fired,
            "hot_path": "compiled" if self.accelerated else "python",
            "hot_path_reason": self.hot_path_reason,
            "oldest_pending_age_s": round(max(0.0, oldest_age), 3),
            "sites_total": seen,
            "sites": [
                {
                    "site": site.name(),
                    "pending": site.pending,
                    "created_total": site.created,
                    "fired_total": site.fired,
                    "unfired_collected_total": site.lost,
                    "oldest_age_s": site_oldest_age(site, now),
                }
                for site in busiest
            ],
            "oldest": [self._describe(ref, now) for ref in oldest_refs],
            "lost_sites": self._lost_sites(now),
            "loops": {
                "pending": sum(s.pending for s in loops),
                "items": [
                    {
                        "function": site.loop,
                        "pending": site.pending,
                        "oldest_age_s": site_oldest_age(site, now),
                    }
                    for site in busiest_loops
                ],
            },
            "own": {
                "pending": own_created - own_fired - own_lost,
                "created_total": own_created,
                "fired_total": own_fired,
                "unfired_collected_total": own_lost,
            },
        }

    def _lost_sites(self, now: float) -> list[JSONDict]:
        """The program's sites that lost Deferreds most recently, newest loss first."""
        rows: list[JSONDict] = []
        for site, age_s, last_60s in self._losses.newest_first(now):
            if len(rows) < SHOWN_LOST_SITES:
                assert isinstance(site, Site)
                rows.append(
                    {
                        "site": site.name(),
                        "unfired_collected_total": site.lost,
                        "lost_last_60s": last_60s,
                        "last_lost_age_s": round(age_s, 3),
                        "pending": site.pending,
                    }
                )
        return rows

    @staticmethod
    def _oldest_refs(sites: list[Site], n: int) -> list[TrackedRef]:
        """The ``n`` oldest promoted Deferreds still pending, oldest first.

        Each site's table is in promotion order, so the ``n`` oldest overall come from the
        sites whose *first* entries are among the ``n`` oldest firsts, at most ``n`` from
        each: O(sites + n^2), whatever the number of pending Deferreds.
        """
        firsts = [first for s in sites if (first := s.first()) is not None]
        candidates: list[TrackedRef] = []
        for first in heapq.nsmallest(n, firsts, key=promoted_since):
            candidates.extend(first.site.oldest(n))
        return heapq.nsmallest(n, candidates, key=promoted_since)

    def _describe(self, ref: TrackedRef, now: float) -> JSONDict:
        d = ref()
        return {
            "age_s": round(max(0.0, now - ref.since), 3),
            "site": ref.site.name(),
            "waiting": describe_waiting(d) if d is not None else [],
        }
