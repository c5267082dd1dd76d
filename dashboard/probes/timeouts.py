"""The timeouts probe: pending delayed calls (how many, how many overdue, grouped by function)
and timeouts that fired, by kind.

The dashboard's own delayed calls (its sampling tick, sweeps, stream checks, the idle timers of
connections to its own port) are counted apart (``own_calls``), out of ``delayed_calls``,
``overdue_calls`` and ``by_function``.

Hooks (all class- or module-level, installed by ``install()`` and restored by identity):

* ``deferred``: ``Deferred.cancel`` (see :mod:`dashboard.probes.deferred_cancels`): a Deferred
  cancelled from inside a delayed call that holds it timed out (``reactor.callLater(t,
  d.cancel)``: treq's ``timeout=``, Scrapy's download timeout; a delayed call whose function
  calls ``d.cancel()``: Synapse's ``timeout_deferred``; ``addTimeout``). Cancelled anywhere else,
  it counts in ``cancelled_total`` (the dashboard's own: ``own_cancelled_total``); a cancel
  nested in another is part of it. The module attribute
  ``twisted.internet.defer._cancelledToTimedOutError``, which ``Deferred.addTimeout`` looks up
  when a timeout fires, adds the timeout's length and the next callback to that event (and
  counts the timeout itself if its cancel was not seen).
* ``connect``: ``twisted.internet.base.BaseConnector.connectionFailed`` with a
  ``twisted.internet.error.TimeoutError`` reason, which is what ``connectTCP(timeout=)`` (and so
  ``Agent(connectTimeout=)`` through ``HostnameEndpoint``) schedule.
* ``protocol``: ``twisted.protocols.policies.TimeoutMixin._TimeoutMixin__timedOut`` (covers
  ``HTTPChannel`` idle timeouts). It is bound when ``setTimeout()`` schedules the call, so a
  timeout scheduled before ``install()`` is not counted, and one scheduled before
  ``uninstall()`` still passes through the (harmless) wrapper.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import weakref
from collections import Counter, deque
from itertools import compress
from operator import attrgetter, not_
from types import FrameType
from typing import Any

from twisted.internet import base as internet_base
from twisted.internet import defer, error, task
from twisted.protocols import policies
from twisted.python.failure import Failure

from dashboard.probes.base import (
    JSONDict,
    Patcher,
    ProbeErrors,
    TimeSource,
    is_own_function,
    is_own_module,
    qualname,
    safe_repr,
    unwrapped,
)
from dashboard.probes.deferred_cancels import Cancel, CancelWatch, Whereabouts
from dashboard.probes.loop import LoopProbe

#: Timeout events kept for ``recent``.
MAX_RECENT = 50
#: Deferreds that timed out, kept (weakly, oldest dropped first) so that ``addTimeout``'s
#: conversion running long after the cancel (its chain paused) does not count them again.
MAX_TIMED_OUT = 1024
#: Functions shown in ``by_function``.
TOP_FUNCTIONS = 20
#: Above this many pending calls, ``by_function`` and the split between the program's calls and
#: the dashboard's own are estimated from an even sample of this size.
BY_FUNCTION_SAMPLE = 4096
#: At most this many heap entries are visited to count overdue calls.
OVERDUE_SCAN_LIMIT = 10_000
#: A pending call is overdue when its time passed more than this long ago, seconds.
OVERDUE_EPSILON_S = 0.001
#: The module of a ``functools.partial``: what it runs may be the dashboard's.
_PARTIAL_MODULE = functools.partial.__module__

_func_key = attrgetter("func.__module__", "func.__qualname__")
_func_module = attrgetter("func.__module__")
_cancelled = attrgetter("cancelled")
_PROTOCOL_TIMED_OUT = "_TimeoutMixin__timedOut"
#: Modules of Twisted's timers that serve a web site: the idle timers of its connections
#: (``TimeoutMixin``), its log clock (``HTTPFactory._updateLogDateTime``). Those of the
#: dashboard's own site are its own.
_SERVER_TIMER_MODULES = frozenset({policies.__name__, "twisted.web.http"})


class TimeoutEvent:
    """One fired timeout, as ``recent`` lists it. Deferred timeouts also say which delayed
    call's ``function`` cancelled it, where the Deferred was made (``site``) and how long it
    had waited (``waited_s``, None when unknown), and keep a weak reference to it."""

    __slots__ = ("at", "function", "kind", "ref", "site", "waited_s", "what")

    def __init__(
        self,
        at: float,
        kind: str,
        what: str,
        *,
        function: str | None = None,
        site: str | None = None,
        waited_s: float | None = None,
        deferred: object = None,
    ) -> None:
        self.at = at
        self.kind = kind
        self.what = what
        self.function = function
        self.site = site
        self.waited_s = waited_s
        self.ref: weakref.ref[Any] | None = None
        if deferred is not None:
            with contextlib.suppress(TypeError):  # a Deferred always can; be safe
                self.ref = weakref.ref(deferred)

    def as_json(self) -> JSONDict:
        item: JSONDict = {"at": round(self.at, 6), "kind": self.kind, "what": self.what}
        if self.kind == "deferred":
            item["function"] = self.function
            item["site"] = self.site
            item["waited_s"] = self.waited_s
        return item


class TimeoutsProbe:
    """Delayed calls and fired timeouts. Reactor thread only (hooks run there too)."""

    name = "timeouts"

    def __init__(
        self,
        reactor: Any,
        errors: ProbeErrors,
        clock: TimeSource,
        *,
        loop: LoopProbe,
        deferreds: Any = None,
    ) -> None:
        """``deferreds``: the Deferred probe, whose ``whereabouts(d)`` names the site and age
        of a Deferred that timed out (without it, both are null)."""
        self._reactor = reactor
        self._errors = errors
        self._clock = clock
        self._loop = loop
        self._patcher = Patcher()
        self._installed = False
        self.fired: dict[str, int] = {"deferred": 0, "connect": 0, "protocol": 0}
        self._recent: deque[TimeoutEvent] = deque(maxlen=MAX_RECENT)
        #: id of a Deferred that timed out -> its event, while the Deferred lives
        self._timed_out: dict[int, TimeoutEvent] = {}
        whereabouts: Whereabouts | None = getattr(deferreds, "whereabouts", None)
        self._whereabouts = whereabouts
        self.cancels = CancelWatch(
            reactor,
            errors,
            self.name,
            on_timeout=self._cancel_timed_out,
            on_retract=self._retract,
            whereabouts=whereabouts,
        )

    # lifecycle ---------------------------------------------------------------------------

    def install(self) -> None:
        if self._installed:
            return
        self._installed = True
        try:
            self._install_deferred_hook()
            self.cancels.install(self._patcher)
            self._install_connect_hook()
            self._install_protocol_hook()
        except BaseException:
            self.cancels.uninstall()
            self._patcher.restore()
            self._installed = False
            raise

    def uninstall(self) -> None:
        if not self._installed:
            return
        self._installed = False
        self.cancels.uninstall()
        self._patcher.restore()

    # hooks -------------------------------------------------------------------------------

    def _install_deferred_hook(self) -> None:
        original = defer._cancelledToTimedOutError
        probe = self

        @functools.wraps(original)
        def _cancelledToTimedOutError(value: Any, timeout: float) -> Any:
            try:
                if probe._installed:
                    probe._deferred_timed_out(value, timeout, sys._getframe(1))
            except Exception as exc:
                probe._errors.record(probe.name, exc)
            return original(value, timeout)

        self._patcher.patch(defer, "_cancelledToTimedOutError", _cancelledToTimedOutError)

    def _install_connect_hook(self) -> None:
        cls = internet_base.BaseConnector
        original = vars(cls)["connectionFailed"]
        probe = self

        @functools.wraps(original)
        def connectionFailed(connector: Any, reason: Failure) -> Any:
            try:
                if isinstance(getattr(reason, "value", None), error.TimeoutError):
                    probe._connect_timed_out(connector)
            except Exception as exc:
                probe._errors.record(probe.name, exc)
            return original(connector, reason)

        self._patcher.patch(cls, "connectionFailed", connectionFailed)

    def _install_protocol_hook(self) -> None:
        cls = policies.TimeoutMixin
        original = vars(cls)[_PROTOCOL_TIMED_OUT]
        probe = self

        @functools.wraps(original)
        def timed_out(protocol: Any) -> Any:
            try:
                probe._record_event("protocol", type(protocol).__qualname__)
            except Exception as exc:
                probe._errors.record(probe.name, exc)
            return original(protocol)

        self._patcher.patch(cls, _PROTOCOL_TIMED_OUT, timed_out)

    # events (timeouts are rare: a few microseconds each is fine) -------------------------

    def _record_event(self, kind: str, what: str, **details: Any) -> TimeoutEvent:
        """Count one fired timeout and list it (``details``: see :class:`TimeoutEvent`)."""
        self.fired[kind] += 1
        event = TimeoutEvent(self._clock(), kind, what, **details)
        self._recent.append(event)
        return event

    def _retract(self, event: object) -> None:
        """Take back a Deferred timeout counted too early (its cancel was the dashboard's)."""
        assert isinstance(event, TimeoutEvent)
        self.fired[event.kind] -= 1
        deferred = event.ref() if event.ref is not None else None
        if self._timed_out.get(id(deferred)) is event:
            self._timed_out.pop(id(deferred), None)
        with contextlib.suppress(ValueError):  # already pushed out of the bounded list
            self._recent.remove(event)

    def _cancel_timed_out(self, cancel: Cancel) -> TimeoutEvent:
        """A Deferred cancelled from inside a delayed call (or by ``addTimeout``)."""
        function: str | None
        if cancel.function is not None:
            function = qualname(cancel.function)
        else:  # addTimeout said so, run by a clock not seen on the stack
            function = _ADD_TIMEOUT_FUNCTION if cancel.timeout_s is not None else None
        event = self._record_event(
            "deferred",
            _timeout_text(cancel.timeout_s, cancel.next_callback, cancel.waited_s),
            function=function,
            site=cancel.site,
            waited_s=cancel.waited_s,
            deferred=cancel.deferred,
        )
        self._remember_timed_out(cancel.deferred, event)
        return event

    def _remember_timed_out(self, deferred: object, event: TimeoutEvent) -> None:
        """Keep ``deferred``'s event while it lives (see ``MAX_TIMED_OUT``)."""
        key = id(deferred)
        timed_out = self._timed_out

        def forget(_ref: object) -> None:  # any thread, from the collector: never raises
            if timed_out.get(key) is event:
                timed_out.pop(key, None)

        try:
            event.ref = weakref.ref(deferred, forget)
        except TypeError:
            return
        timed_out.pop(key, None)
        if len(timed_out) >= MAX_TIMED_OUT:
            del timed_out[next(iter(timed_out))]
        timed_out[key] = event

    def _deferred_timed_out(self, value: Any, timeout: float, caller: FrameType | None) -> None:
        """``addTimeout``'s conversion ran: its timeout fired. Told to the cancel under way (it
        counts it), or to the event its cancel already made, or else counted here."""
        try:
            deferred, waiting = _timed_out_deferred(caller)
        except Exception:  # best effort: the frame layout is Twisted's private business
            deferred, waiting = None, None
        cancel = self.cancels.current
        if cancel is not None:
            self.cancels.add_timeout_fired(cancel, timeout, waiting)
            event = cancel.event
            if isinstance(event, TimeoutEvent):
                event.what = _timeout_text(timeout, waiting, event.waited_s)
            return
        known = self._timed_out.get(id(deferred)) if deferred is not None else None
        if known is not None and known.ref is not None and known.ref() is deferred:
            known.what = _timeout_text(timeout, waiting, known.waited_s)
            return  # counted when it was cancelled; its callbacks ran later
        if not (isinstance(value, Failure) and isinstance(value.value, defer.CancelledError)):
            return
        site, waited_s = (None, None)
        if deferred is not None and self._whereabouts is not None:
            site, waited_s = self._whereabouts(deferred)
        self._record_event(
            "deferred",
            _timeout_text(timeout, waiting, None),
            function=_ADD_TIMEOUT_FUNCTION,
            site=site,
            waited_s=waited_s,
            deferred=deferred,
        )

    def _connect_timed_out(self, connector: Any) -> None:
        try:
            what = _address_text(connector.getDestination())
        except Exception:
            what = safe_repr(connector)
        self._record_event("connect", what)

    # reading -----------------------------------------------------------------------------

    def collect(self) -> JSONDict:
        """The ``timeouts`` section. Costs O(shown): pending counts come from the reactor's own
        bookkeeping, overdue calls from a pruned heap walk, ``by_function`` and the dashboard's
        own calls from at most ``BY_FUNCTION_SAMPLE`` calls (exact up to that many pending;
        above it, ``own_calls`` and so ``delayed_calls`` are scaled from the sample, like
        ``by_function``, and ``by_function_sampled`` is true). Reactor thread."""
        now = self._clock()
        pending, calls, sampled = self._sample()
        own = _own_calls(calls)
        if sampled and calls:
            own_count = min(pending, round(len(own) * pending / len(calls)))
        else:
            own_count = len(own)
        overdue, overdue_truncated = self._overdue(now - OVERDUE_EPSILON_S)
        program = pending - own_count
        sample = [c for c in calls if id(c) not in own] if own else calls
        by_function = _by_function(sample, program, sampled)
        return {
            "delayed_calls": program,
            "overdue_calls": overdue,
            "overdue_truncated": overdue_truncated,
            "max_lateness_ms": self._loop.max_lateness_ms(),
            "fired_total": dict(self.fired),
            "cancelled_total": self.cancels.cancelled,
            "own_cancelled_total": self.cancels.own_cancelled,
            "recent": [event.as_json() for event in self._recent],
            "by_function": by_function,
            "by_function_sampled": sampled,
            "own_calls": own_count,
        }

    def _sample(self) -> tuple[int, list[Any], bool]:
        """(pending count, the pending calls to look at, whether they are an even sample of
        about ``BY_FUNCTION_SAMPLE``). The count is the reactor's own bookkeeping; the
        reactor keeps cancelled calls (which have dropped their ``func``) until they surface:
        they are left out of the calls by a pass in C."""
        reactor = self._reactor
        heap = getattr(reactor, "_pendingTimedCalls", None)
        new = getattr(reactor, "_newTimedCalls", None)
        cancelled = getattr(reactor, "_cancellations", None)
        if not (isinstance(heap, list) and isinstance(new, list) and isinstance(cancelled, int)):
            every = list(reactor.getDelayedCalls())
            total = len(every)
            if total <= BY_FUNCTION_SAMPLE:
                return total, every, False
            return total, every[:: -(-total // BY_FUNCTION_SAMPLE)], True
        stored = len(heap) + len(new)
        sampled = stored > BY_FUNCTION_SAMPLE
        if sampled:
            step = -(-stored // BY_FUNCTION_SAMPLE)
            calls = heap[::step] + new[::step]
        else:
            calls = heap + new
        return stored - cancelled, list(compress(calls, map(not_, map(_cancelled, calls)))), sampled

    def _overdue(self, cutoff: float) -> tuple[int, bool]:
        """The program's pending calls due before ``cutoff`` (clock seconds; the dashboard's
        own are left out), and whether the scan was cut."""
        heap = getattr(self._reactor, "_pendingTimedCalls", None)
        new = getattr(self._reactor, "_newTimedCalls", None)
        if not (isinstance(heap, list) and isinstance(new, list)):
            calls = self._reactor.getDelayedCalls()
            return sum(1 for c in calls if c.getTime() < cutoff and not _is_own_call(c)), False
        count = visited = 0
        # A heap's children are never earlier than their parent: walk only the early subtree.
        todo = [0] if heap else []
        while todo and visited < OVERDUE_SCAN_LIMIT:
            index = todo.pop()
            call = heap[index]
            visited += 1
            if call.time >= cutoff:
                continue
            if not call.cancelled and call.getTime() < cutoff and not _is_own_call(call):
                count += 1
            child = 2 * index + 1
            if child < len(heap):
                todo.append(child)
                if child + 1 < len(heap):
                    todo.append(child + 1)
        for call in new[:OVERDUE_SCAN_LIMIT]:
            if not call.cancelled and call.getTime() < cutoff and not _is_own_call(call):
                count += 1
        truncated = bool(todo) or len(new) > OVERDUE_SCAN_LIMIT
        return count, truncated


def _own_calls(calls: list[Any]) -> set[int]:
    """Ids of the dashboard's own pending calls among ``calls`` (at most about
    ``BY_FUNCTION_SAMPLE``): see :func:`_is_own_call`. The pass over every call's module is
    in C; Python looks only at the few candidates (a module of the dashboard's, a partial, a
    web timer)."""
    try:
        modules = list(map(_func_module, calls))
    except Exception:  # some func lacks __module__ (a callable instance)
        modules = [_slow_key(c.func)[0] for c in calls]
    candidates = {m for m in set(modules) if _may_be_own(m)}
    if not candidates:
        return set()
    maybe = compress(calls, map(candidates.__contains__, modules))
    return {id(call) for call in maybe if _is_own_call(call)}


def _may_be_own(module: object) -> bool:
    """Whether a call whose function says ``module`` may be the dashboard's own."""
    if not isinstance(module, str):
        return False
    return is_own_module(module) or module == _PARTIAL_MODULE or module in _SERVER_TIMER_MODULES


def _is_own_call(call: Any) -> bool:
    """Whether a pending delayed call is the dashboard's own: it runs code of its package (not
    its demo; judged by what the function runs, so a hook of the dashboard's on a program's
    method, such as ``LoopingCall.start``, stays the program's), or it is one of Twisted's web
    timers bound to the dashboard's own site or to a connection to its own port (a protocol
    whose factory is the dashboard's). Never raises."""
    try:
        func = call.func
        module = getattr(func, "__module__", None)
        if not _may_be_own(module):  # most calls: one look at the module
            return False
        if module in _SERVER_TIMER_MODULES:
            return _is_own_server_timer(func)
        return is_own_function(func)
    except Exception:
        return False


def _by_function(calls: list[Any], pending: int, sampled: bool) -> list[JSONDict]:
    """Top functions of the program's pending ``calls`` (counts scaled up to ``pending``
    when ``calls`` is a sample)."""
    try:
        groups: Counter[tuple[str, str]] = Counter(map(_func_key, calls))
    except Exception:  # some func lacks __module__/__qualname__ (a partial, an instance)
        groups = Counter(_slow_key(c.func) for c in calls)
    scale = pending / len(calls) if sampled and calls else 1.0
    return [
        {"function": f"{module}.{name}" if module else name, "count": round(n * scale)}
        for (module, name), n in groups.most_common(TOP_FUNCTIONS)
    ]


def _slow_key(func: object) -> tuple[str, str]:
    try:
        if isinstance(func, task.LoopingCall):  # a running loop's next call: named by what
            inner: Any = unwrapped(func.f)  # it loops (through wrappers: Synapse's wrapped_f)
            return (inner.__module__ or "", f"{inner.__qualname__} (LoopingCall)")
        return (func.__module__ or "", func.__qualname__)  # type: ignore[attr-defined]
    except Exception:
        return ("", qualname(func))


def _is_own_server_timer(func: object) -> bool:
    """A timer bound to the dashboard's own site, or to a protocol its site made."""
    bound = getattr(func, "__self__", None)
    if bound is None:
        return False
    if is_own_module(type(bound).__module__):
        return True
    factory = getattr(bound, "factory", None)
    return factory is not None and is_own_module(type(factory).__module__)


def _address_text(address: Any) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"{host}:{port}"
    name = getattr(address, "name", None)
    if name is not None:
        return name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    return safe_repr(address)


def _add_timeout_function() -> str | None:
    """How a delayed call of ``addTimeout`` is named: its ``timeItOut``'s qualified name."""
    for const in defer.Deferred.addTimeout.__code__.co_consts:
        if getattr(const, "co_name", None) == "timeItOut":
            return f"{defer.__name__}.{const.co_qualname}"
    return None


_ADD_TIMEOUT_FUNCTION = _add_timeout_function()


def _timeout_text(timeout_s: float | None, waiting: str | None, waited_s: float | None) -> str:
    """``what`` of a Deferred timeout: ``addTimeout``'s length when known, else how long the
    Deferred waited when known; the next callback when known."""
    if timeout_s is not None:
        what = f"Deferred timed out after {timeout_s} s"
    elif waited_s:  # 0.0: younger than the Deferred probe's last sweep, not measured
        what = f"Deferred cancelled by a delayed call after waiting {waited_s} s"
    else:
        what = "Deferred cancelled by a delayed call"
    if waiting:
        what += f", next callback {waiting}"
    return what


def _timed_out_deferred(caller: FrameType | None) -> tuple[Any, str | None]:
    """The Deferred ``addTimeout`` timed out, and the first callback still waiting on it.

    ``caller`` is ``addTimeout``'s ``convertCancelled``; above it, ``Deferred._runCallbacks``
    holds the Deferred being run as its local ``current``.
    """
    frame = caller.f_back if caller is not None else None
    for _ in range(3):
        if frame is None:
            return None, None
        if frame.f_code.co_name == "_runCallbacks":
            current = frame.f_locals.get("current")
            for (callback, _args, _kw), _errback in getattr(current, "_callbacks", ()):
                name = getattr(callback, "__name__", "")
                if callable(callback) and name not in ("cancelTimeout", "convertCancelled"):
                    return current, qualname(callback)
            return current, None
        frame = frame.f_back
    return None, None
