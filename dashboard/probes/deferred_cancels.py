"""Deferred cancels, told apart: a timeout (cancelled from inside a delayed call that holds
it), the program's cancellation (cancelled anywhere else) or the dashboard's own.

A delayed call holds the Deferred it times out: it is its ``cancel``
(``reactor.callLater(t, d.cancel)``: Scrapy's download timeout, treq's ``timeout=``), or the
Deferred is among its arguments or in its function's closure (Synapse's ``timeout_deferred``,
whose ``time_it_out`` runs wrapped by Synapse's clock; ``addTimeout``'s ``timeItOut``), see
:func:`dashboard.probes.timer_frames.holds`. Code that merely runs from a delayed call and
cancels something else (pytest-twisted runs every test from ``callLater(0, ...)``; Twisted
delivers an aborted connection's loss from one) makes cancellations, not timeouts. A zero-delay
call that holds the Deferred is not told from a timer: on the asyncio reactor, whose
``callFromThread(f)`` is ``callLater(0, f)``, ``callFromThread(d.cancel)`` counts as a timeout.

The hook is ``Deferred.cancel`` (and ``DeferredList.cancel``, which overrides it), replaced on
the class: every ``d.cancel()`` looks it up when it runs, so ``callLater(t, d.cancel)`` made
after ``install()`` binds the hook; one made before it binds Twisted's own and is not seen.
Cancels are rare: the work (a walk up the stack, a table lookup) is done per cancel, never per
Deferred or per loop iteration.

Only the outermost cancel counts. Cancelling a Deferred cancels what it waits on (its
canceller, the Deferred it is chained to, the one an ``inlineCallbacks`` function awaits, the
members of a ``DeferredList``, a treq or ``Agent`` request's connection): every cancel made while
another one is under way on the same thread is part of it and is not counted again (a cancel on
another thread is outermost there). So is
what the program does in callbacks that the cancellation runs at once (its follow-up cancels
count with the first one).
"""

from __future__ import annotations

import functools
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from dashboard.probes.base import (
    DEFERRED_MACHINERY,
    Patcher,
    ProbeErrors,
    is_own_file,
    unwrapped,
)
from dashboard.probes.timer_frames import TimerFrames, holds, is_io_delivery

#: ``DeferredsProbe.whereabouts``: a Deferred's creation site and age in seconds (or Nones).
Whereabouts = Callable[[object], tuple["str | None", "float | None"]]

#: Classes whose own ``cancel`` is hooked (a subclass that does not override it inherits the
#: hook on ``Deferred``).
CANCEL_OWNERS: tuple[Any, ...] = (defer.Deferred, defer.DeferredList)


class Cancel:
    """One outermost cancel while it runs: what it cancelled and what made it."""

    __slots__ = (
        "deferred",
        "event",
        "function",
        "in_timer",
        "kind",
        "next_callback",
        "own",
        "site",
        "timeout_s",
        "waited_s",
    )

    def __init__(
        self,
        deferred: object,
        *,
        in_timer: bool,
        function: object,
        site: str | None,
        waited_s: float | None,
        own: bool,
    ) -> None:
        self.deferred = deferred
        #: made from inside a delayed call, ``function`` being what the call runs
        self.in_timer = in_timer
        self.function = function
        self.site = site
        self.waited_s = waited_s
        self.own = own
        #: set by ``addTimeout``'s conversion when this cancel is its timeout (seconds)
        self.timeout_s: float | None = None
        self.next_callback: str | None = None
        #: how it is counted: ``TIMEOUT``, ``CANCELLED``, ``OWN`` (None: not yet)
        self.kind: str | None = None
        #: what ``on_timeout`` answered (the event listed), while it is counted as a timeout
        self.event: object = None

    @property
    def timed_out(self) -> bool:
        """A timeout: made by a delayed call, or ``addTimeout`` said so (whatever its clock)."""
        return self.in_timer or self.timeout_s is not None


TIMEOUT = "timeout"
CANCELLED = "cancelled"
OWN = "own"


class _PerThread(threading.local):
    """The outermost cancel under way on the calling thread, if any."""

    current: Cancel | None = None


class CancelWatch:
    """Sorts every outermost Deferred cancel into ``on_timeout(cancel)``, ``cancelled`` (the
    program's cancellations) or ``own_cancelled`` (the dashboard's). Hooks run on the thread
    that cancels (the reactor thread, for any correct program).

    A cancel is counted when it begins, so that code its cancellation resumes at once (an
    ``await`` of the cancelled Deferred) already sees it; what is learnt while it runs
    (``addTimeout`` saying it timed out, a nested cancel reaching the dashboard's own
    Deferred) moves it to the right count (``on_retract(event)`` takes back a listed timeout).
    """

    def __init__(
        self,
        reactor: Any,
        errors: ProbeErrors,
        probe_name: str,
        *,
        on_timeout: Callable[[Cancel], object],
        on_retract: Callable[[object], None],
        whereabouts: Whereabouts | None,
    ) -> None:
        self._reactor = reactor
        self._errors = errors
        self._probe_name = probe_name
        self._on_timeout = on_timeout
        self._on_retract = on_retract
        self._whereabouts = whereabouts
        self._timers: TimerFrames | None = None
        self._active = False
        #: the outermost cancel under way, per thread (a worker thread's cancel is not
        #: nested in the reactor thread's, nor does its end end it)
        self._threads = _PerThread()
        self.cancelled = 0
        self.own_cancelled = 0

    def install(self, patcher: Patcher) -> None:
        self._timers = TimerFrames(self._reactor)
        for owner in CANCEL_OWNERS:
            original = vars(owner).get("cancel")
            if original is not None:
                patcher.patch(owner, "cancel", self._hook(original))
        self._active = True

    @property
    def current(self) -> Cancel | None:
        """The outermost cancel under way on the calling thread, if any."""
        return self._threads.current

    def uninstall(self) -> None:
        """Stop counting. A ``d.cancel`` bound while installed (a pending ``callLater``) still
        calls the hook, which then only passes through."""
        self._active = False
        self._threads = _PerThread()  # every thread's: a cancel still running ends on the old

    def _hook(self, original: Callable[[Any], None]) -> Callable[[Any], None]:
        watch = self

        @functools.wraps(original)
        def cancel(self: Any) -> None:
            threads = watch._threads
            outer = threads.current
            if outer is not None or not watch._active:
                if outer is not None and not outer.own:
                    watch._check_own_nested(outer, self)
                return original(self)
            try:
                began = watch._began(self, sys._getframe(1))
            except Exception as exc:
                watch._errors.record(watch._probe_name, exc)
                began = None
            if began is None:
                return original(self)
            watch._count(began, OWN if began.own else TIMEOUT if began.timed_out else CANCELLED)
            threads.current = began
            try:
                return original(self)
            finally:
                threads.current = None
                began.deferred = None  # hold no Deferred past its cancel

        return cancel

    def _began(self, d: Any, caller: types.FrameType) -> Cancel | None:
        """The record of an outermost cancel, or None when it has nothing to cancel (fired,
        and not waiting on another Deferred)."""
        if d.called and not isinstance(getattr(d, "result", None), defer.Deferred):
            return None
        assert self._timers is not None
        call = self._timers.running_call(caller)
        # A timer times out what it holds; what else it cancels (code it starts: a test
        # harness's callLater(0, test), a connection's loss delivered late) is cancelled.
        in_timer = call is not None and not is_io_delivery(call[0]) and holds(call, d)
        function = call[0] if in_timer and call is not None else None
        site, waited_s = self._where(d)
        own = (
            is_own_code(getattr(d, "_canceller", None))
            or is_own_file(caller.f_code.co_filename)
            or (in_timer and is_own_code(function))
        )
        return Cancel(
            d, in_timer=in_timer, function=function, site=site, waited_s=waited_s, own=own
        )

    def _where(self, d: Any) -> tuple[str | None, float | None]:
        """The creation site and wait of what is cancelled: ``d``'s own, or where ``d`` already
        fired and only waits on a chained Deferred (treq's ``callLater(t, d.cancel)`` on an
        Agent request from a pooled connection, whose outer Deferred is made fired), the
        innermost still pending one's."""
        whereabouts = self._whereabouts
        if whereabouts is None:
            return None, None
        site, waited_s = whereabouts(d)
        inner = d
        for _ in range(16):  # chains are short; a cycle is impossible but bounded anyway
            if site is not None and waited_s is not None:
                break
            result = getattr(inner, "result", None) if getattr(inner, "called", False) else None
            if not isinstance(result, defer.Deferred):
                break
            inner = result
            inner_site, inner_waited = whereabouts(inner)
            site = site if site is not None else inner_site
            waited_s = waited_s if waited_s is not None else inner_waited
        return site, waited_s

    def _check_own_nested(self, outer: Cancel, d: object) -> None:
        """A cancel that reaches one of the dashboard's Deferreds is the dashboard's (Klein
        cancelling a stream when the browser leaves reaches the stream's canceller)."""
        try:
            if is_own_code(getattr(d, "_canceller", None)):
                outer.own = True
                self._count(outer, OWN)
        except Exception as exc:
            self._errors.record(self._probe_name, exc)

    def add_timeout_fired(self, cancel: Cancel, timeout_s: float, waiting: str | None) -> None:
        """``addTimeout``'s conversion ran inside ``cancel``: a timeout of ``timeout_s``
        seconds, whatever clock ran it (``waiting``: the next callback's name)."""
        cancel.timeout_s = timeout_s
        cancel.next_callback = waiting
        if cancel.kind == CANCELLED:
            self._count(cancel, TIMEOUT)

    def _count(self, cancel: Cancel, kind: str) -> None:
        """Count ``cancel`` as ``kind``, taking back how it was counted before."""
        try:
            if cancel.kind == kind:
                return
            if cancel.kind == CANCELLED:
                self.cancelled -= 1
            elif cancel.kind == OWN:
                self.own_cancelled -= 1
            elif cancel.kind == TIMEOUT and cancel.event is not None:
                self._on_retract(cancel.event)
                cancel.event = None
            cancel.kind = kind
            if kind == CANCELLED:
                self.cancelled += 1
            elif kind == OWN:
                self.own_cancelled += 1
            else:
                cancel.event = self._on_timeout(cancel)
        except Exception as exc:
            self._errors.record(self._probe_name, exc)


def is_own_code(function: object) -> bool:
    """Whether ``function`` (a function, bound method or ``functools.partial``) is the
    dashboard's code (not its demo)."""
    if function is None:
        return False
    function = unwrapped(function)  # a partial's, a bound method's, what a hook stands for
    code = getattr(function, "__code__", None)
    return isinstance(code, types.CodeType) and is_own_file(code.co_filename)


def _hook_code() -> types.CodeType:
    """The code of every ``cancel`` hook (one code object, whatever closure it runs in)."""
    for const in CancelWatch._hook.__code__.co_consts:
        if isinstance(const, types.CodeType) and const.co_name == "cancel":
            return const
    raise RuntimeError("the cancel hook's code was not found")


#: The hook's frame sits between Twisted's ``cancel`` and whoever cancelled: a Deferred made
#: while cancelling (``inlineCallbacks`` makes one) is sited past it, never at it.
HOOK_CODE = _hook_code()
DEFERRED_MACHINERY.append(HOOK_CODE)
