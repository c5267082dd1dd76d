"""The Deferred probe's per-site state: a creation site's counters (``Site``), the weak
reference that tracks a promoted pending Deferred (``TrackedRef``), which code is Twisted's
Deferred machinery (never a site) and which is the dashboard's own.

Reactor thread mostly; ``created``/``fired`` may be bumped from other threads (see ``Site``).
"""

from __future__ import annotations

import sys
import types
import weakref
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from dashboard import accel
from dashboard.probes.base import DEFERRED_MACHINERY, frame_site


class PySiteCounts:
    """The pure-Python twin of ``dashboard._accel.SiteCounts``."""

    __slots__ = ("created", "fired", "lost")

    def __init__(self) -> None:
        self.created = 0
        self.fired = 0
        self.lost = 0


#: Whether sites count in the compiled SiteCounts (the compiled hot path needs them).
COMPILED_COUNTS = accel.enabled()

if TYPE_CHECKING:
    from dashboard._accel import SiteCounts as SiteCountsBase
else:
    # chosen at import: REACTOR_DASHBOARD_ACCEL=0 leaves no compiled part in use
    SiteCountsBase = accel.built.SiteCounts if COMPILED_COUNTS else PySiteCounts


class Site(SiteCountsBase):
    """Counters for one creation site (one line of code). Reactor thread mostly;
    ``created``/``fired`` may be bumped from other threads (on the pure-Python path a lost
    increment is possible there, never an exception)."""

    __slots__ = ("code", "gone", "label", "lineno", "loop", "own", "tracked")

    def __init__(
        self,
        code: types.CodeType | None,
        lineno: int,
        label: str | None = None,
        *,
        own: bool = False,
        loop: str | None = None,
    ) -> None:
        self.code = code  # held so that id(code) is never reused while the site lives
        self.lineno = lineno
        self.label = label
        #: the dashboard's own (its package, or what it holds while serving)
        self.own = own
        #: for a LoopingCall's Deferreds: the looped function's qualified name
        self.loop = loop
        self.created = 0
        self.fired = 0
        self.lost = 0
        #: promoted (still pending after a sweep) Deferreds in promotion order, oldest first;
        #: an entry whose Deferred since fired or was collected is *gone* (``since < 0``) and
        #: stays until the list is compacted. A list: 8 bytes an entry (a dict took ~45).
        self.tracked: list[TrackedRef] = []
        self.gone = 0

    def forget(self, ref: TrackedRef) -> None:
        """A tracked Deferred fired or was collected: mark its entry gone; compact the list
        once half of it is gone (amortised O(1) per entry)."""
        ref.since = GONE
        self.gone += 1
        if self.gone > 32 and self.gone * 2 > len(self.tracked):
            self.tracked[:] = [r for r in self.tracked if r.since >= 0]
            self.gone = 0

    def first(self) -> TrackedRef | None:
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

    def oldest(self, n: int) -> list[TrackedRef]:
        """The ``n`` oldest entries not gone, oldest first."""
        found: list[TrackedRef] = []
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
            self.label = generated_site(code.co_filename, code.co_qualname) or frame_site(
                code.co_filename, self.lineno, code.co_qualname
            )
        return self.label


#: attrs compiles the methods it writes under this pseudo file name, ending with the class.
_ATTRS_FILE = "<attrs generated "


def generated_site(filename: str, function: str) -> str | None:
    """A label a user can open for code that a library generated for a class of theirs:
    ``<attrs generated methods pkg.mod.Lock>:27 in __init__`` (Synapse's ``WaitingLock``
    makes its Deferreds in one) becomes ``pkg/mod.py:LINE in Lock.__init__ (attrs)``, LINE
    the class's (Python 3.13's ``__firstlineno__``, else its first method's). None for any
    other code. Once per site, at snapshot time; never raises."""
    if not filename.startswith(_ATTRS_FILE) or not filename.endswith(">"):
        return None
    try:
        parts = filename[:-1].rsplit(" ", 1)[-1].split(".")
        for cut in range(len(parts) - 1, 0, -1):
            module = sys.modules.get(".".join(parts[:cut]))
            path = getattr(module, "__file__", None)
            if not isinstance(path, str):
                continue
            cls: Any = module
            for name in parts[cut:]:
                cls = getattr(cls, name)
            line = getattr(cls, "__firstlineno__", None) or _first_method_line(cls, path)
            return frame_site(path, line, f"{'.'.join(parts[cut:])}.{function} (attrs)")
    except Exception:  # a class renamed or deleted since: keep the pseudo file name
        return None
    return None


def _first_method_line(cls: type, path: str) -> int:
    """The first line of the earliest function defined in ``cls``'s body in ``path``; 0 when
    it has none (its definition line is not kept before Python 3.13)."""
    lines = [
        code.co_firstlineno
        for value in vars(cls).values()
        if isinstance(code := getattr(value, "__code__", None), types.CodeType)
        and code.co_filename == path
    ]
    return min(lines, default=0)


class TrackedRef(weakref.ref):  # type: ignore[type-arg]
    """A weak reference to a promoted pending Deferred, with its site and promotion time."""

    __slots__ = ("since", "site")

    #: promotion time; ``GONE`` once the Deferred fired or was collected
    since: float
    site: Site


GONE = -1.0


def transparent_codes() -> list[types.CodeType]:
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
    for code in DEFERRED_MACHINERY:  # probe hooks standing in for Twisted's own methods
        codes[id(code)] = code
    return list(codes.values())


def inline_callbacks_codes() -> tuple[types.CodeType | None, types.CodeType | None]:
    """The code that drives an ``inlineCallbacks`` generator (``_cancellableInlineCallbacks``,
    its generator the first local) and ``Deferred._runCallbacks``: a Deferred made under the
    first, called by the second, is made by an ``inlineCallbacks`` function used as a callback.
    ``(None, None)`` where Twisted has another shape."""
    drive = getattr(getattr(defer, "_cancellableInlineCallbacks", None), "__code__", None)
    run = getattr(vars(defer.Deferred).get("_runCallbacks"), "__code__", None)
    if (
        isinstance(drive, types.CodeType)
        and isinstance(run, types.CodeType)
        and drive.co_argcount >= 1
        and drive.co_varnames[0] not in drive.co_cellvars  # a plain local: read as it is
    ):
        return drive, run
    return None, None


def promoted_fired(ref: TrackedRef) -> None:
    """A promoted (tracked) Deferred fired for the first time."""
    if ref.since >= 0:
        ref.site.fired += 1
        ref.site.forget(ref)


def promoted_since(ref: TrackedRef) -> float:
    return ref.since


def totals(sites: list[Site]) -> tuple[int, int, int, int]:
    """Created, fired and lost, summed over ``sites``, and how many of them ever had one."""
    created = fired = lost = seen = 0
    for site in sites:
        if site.created:
            created += site.created
            fired += site.fired
            lost += site.lost
            seen += 1
    return created, fired, lost, seen


def site_oldest_age(site: Site, now: float) -> float:
    """Seconds since the site's oldest promoted Deferred still pending was promoted; 0.0."""
    first = site.first()
    return round(max(0.0, now - first.since), 3) if first is not None else 0.0
