"""The timeouts probe: pending delayed calls (how many, how many overdue, grouped by function)
and timeouts that fired, by kind.

Hooks (all class- or module-level, installed by ``install()`` and restored by identity):

* ``deferred``: the module attribute ``twisted.internet.defer._cancelledToTimedOutError``, which
  ``Deferred.addTimeout`` looks up when a timeout fires (a custom ``onTimeoutCancel`` bypasses
  it, so those are not counted).
* ``connect``: ``twisted.internet.base.BaseConnector.connectionFailed`` with a
  ``twisted.internet.error.TimeoutError`` reason, which is what ``connectTCP(timeout=)`` (and so
  ``Agent(connectTimeout=)`` through ``HostnameEndpoint``) schedule.
* ``protocol``: ``twisted.protocols.policies.TimeoutMixin._TimeoutMixin__timedOut`` (covers
  ``HTTPChannel`` idle timeouts). It is bound when ``setTimeout()`` schedules the call, so a
  timeout scheduled before ``install()`` is not counted, and one scheduled before
  ``uninstall()`` still passes through the (harmless) wrapper.
"""

from __future__ import annotations

import functools
import sys
from collections import Counter, deque
from operator import attrgetter
from types import FrameType
from typing import Any

from twisted.internet import base as internet_base
from twisted.internet import defer, error
from twisted.protocols import policies
from twisted.python.failure import Failure

from dashboard.probes.base import JSONDict, Patcher, ProbeErrors, TimeSource, qualname, safe_repr
from dashboard.probes.loop import LoopProbe

#: Timeout events kept for ``recent``.
MAX_RECENT = 50
#: Functions shown in ``by_function``.
TOP_FUNCTIONS = 20
#: Above this many pending calls, ``by_function`` is estimated from an even sample of this size.
BY_FUNCTION_SAMPLE = 4096
#: At most this many heap entries are visited to count overdue calls.
OVERDUE_SCAN_LIMIT = 10_000
#: A pending call is overdue when its time passed more than this long ago, seconds.
OVERDUE_EPSILON_S = 0.001
#: Functions from this package are the monitor's own calls.
_OWN_PACKAGE = "dashboard"

_func_key = attrgetter("func.__module__", "func.__qualname__")
_PROTOCOL_TIMED_OUT = "_TimeoutMixin__timedOut"


class TimeoutsProbe:
    """Delayed calls and fired timeouts. Reactor thread only (hooks run there too)."""

    name = "timeouts"

    def __init__(
        self, reactor: Any, errors: ProbeErrors, clock: TimeSource, *, loop: LoopProbe
    ) -> None:
        self._reactor = reactor
        self._errors = errors
        self._clock = clock
        self._loop = loop
        self._patcher = Patcher()
        self._installed = False
        self.fired: dict[str, int] = {"deferred": 0, "connect": 0, "protocol": 0}
        self._recent: deque[tuple[float, str, str]] = deque(maxlen=MAX_RECENT)

    # lifecycle ---------------------------------------------------------------------------

    def install(self) -> None:
        if self._installed:
            return
        self._installed = True
        try:
            self._install_deferred_hook()
            self._install_connect_hook()
            self._install_protocol_hook()
        except BaseException:
            self._patcher.restore()
            self._installed = False
            raise

    def uninstall(self) -> None:
        if not self._installed:
            return
        self._installed = False
        self._patcher.restore()

    # hooks -------------------------------------------------------------------------------

    def _install_deferred_hook(self) -> None:
        original = defer._cancelledToTimedOutError
        probe = self

        @functools.wraps(original)
        def _cancelledToTimedOutError(value: Any, timeout: float) -> Any:
            try:
                if isinstance(value, Failure) and isinstance(value.value, defer.CancelledError):
                    probe._deferred_timed_out(timeout, sys._getframe(1))
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

    def _record_event(self, kind: str, what: str) -> None:
        self.fired[kind] += 1
        self._recent.append((self._clock(), kind, what))

    def _deferred_timed_out(self, timeout: float, caller: FrameType | None) -> None:
        what = f"Deferred timed out after {timeout} s"
        try:
            waiting = _next_callback_name(caller)
        except Exception:  # best effort: the frame layout is Twisted's private business
            waiting = None
        if waiting:
            what += f", next callback {waiting}"
        self._record_event("deferred", what)

    def _connect_timed_out(self, connector: Any) -> None:
        try:
            what = _address_text(connector.getDestination())
        except Exception:
            what = safe_repr(connector)
        self._record_event("connect", what)

    # reading -----------------------------------------------------------------------------

    def collect(self) -> JSONDict:
        """The ``timeouts`` section. Costs O(shown): pending counts come from the reactor's own
        bookkeeping, overdue calls from a pruned heap walk, ``by_function`` from at most
        ``BY_FUNCTION_SAMPLE`` calls. Reactor thread."""
        now = self._clock()
        pending, live_sample, sampled = self._pending_calls()
        overdue, overdue_truncated = self._overdue(now - OVERDUE_EPSILON_S)
        by_function, own = self._by_function(live_sample, pending, sampled)
        return {
            "delayed_calls": pending,
            "overdue_calls": overdue,
            "overdue_truncated": overdue_truncated,
            "max_lateness_ms": self._loop.max_lateness_ms(),
            "fired_total": dict(self.fired),
            "recent": [
                {"at": round(at, 6), "kind": kind, "what": what} for at, kind, what in self._recent
            ],
            "by_function": by_function,
            "by_function_sampled": sampled,
            "own_calls": own,
        }

    def _pending_calls(self) -> tuple[int, list[Any], bool]:
        """(pending count, non-cancelled calls to group, whether they are a sample)."""
        reactor = self._reactor
        heap = getattr(reactor, "_pendingTimedCalls", None)
        new = getattr(reactor, "_newTimedCalls", None)
        cancelled = getattr(reactor, "_cancellations", None)
        if not (isinstance(heap, list) and isinstance(new, list) and isinstance(cancelled, int)):
            calls = list(reactor.getDelayedCalls())
            return len(calls), _sample(calls), len(calls) > BY_FUNCTION_SAMPLE
        # ReactorBase keeps cancelled calls until they surface, and counts them.
        pending = len(heap) + len(new) - cancelled
        total = len(heap) + len(new)
        if total <= BY_FUNCTION_SAMPLE:
            raw = heap + new
        else:
            step = -(-total // BY_FUNCTION_SAMPLE)
            raw = heap[::step] + new[::step]
        return pending, [c for c in raw if not c.cancelled], total > BY_FUNCTION_SAMPLE

    def _overdue(self, cutoff: float) -> tuple[int, bool]:
        """Pending calls due before ``cutoff`` (clock seconds), and whether the scan was cut."""
        heap = getattr(self._reactor, "_pendingTimedCalls", None)
        new = getattr(self._reactor, "_newTimedCalls", None)
        if not (isinstance(heap, list) and isinstance(new, list)):
            calls = self._reactor.getDelayedCalls()
            return sum(1 for c in calls if c.getTime() < cutoff), False
        count = visited = 0
        # A heap's children are never earlier than their parent: walk only the early subtree.
        todo = [0] if heap else []
        while todo and visited < OVERDUE_SCAN_LIMIT:
            index = todo.pop()
            call = heap[index]
            visited += 1
            if call.time >= cutoff:
                continue
            if not call.cancelled and call.getTime() < cutoff:
                count += 1
            child = 2 * index + 1
            if child < len(heap):
                todo.append(child)
                if child + 1 < len(heap):
                    todo.append(child + 1)
        for call in new[:OVERDUE_SCAN_LIMIT]:
            if not call.cancelled and call.getTime() < cutoff:
                count += 1
        truncated = bool(todo) or len(new) > OVERDUE_SCAN_LIMIT
        return count, truncated

    def _by_function(
        self, calls: list[Any], pending: int, sampled: bool
    ) -> tuple[list[JSONDict], int]:
        """Top functions of the pending calls (counts scaled up when sampled), and own calls."""
        try:
            groups: Counter[tuple[str, str]] = Counter(map(_func_key, calls))
        except Exception:  # some func lacks __module__/__qualname__ (a partial, an instance)
            groups = Counter(_slow_key(c.func) for c in calls)
        scale = pending / len(calls) if sampled and calls else 1.0
        own = sum(n for (module, _), n in groups.items() if _is_own(module))
        top = [
            {"function": f"{module}.{name}" if module else name, "count": round(n * scale)}
            for (module, name), n in groups.most_common(TOP_FUNCTIONS)
        ]
        return top, round(own * scale)


def _sample(calls: list[Any]) -> list[Any]:
    if len(calls) <= BY_FUNCTION_SAMPLE:
        return calls
    return calls[:: -(-len(calls) // BY_FUNCTION_SAMPLE)]


def _slow_key(func: object) -> tuple[str, str]:
    try:
        return (func.__module__ or "", func.__qualname__)  # type: ignore[attr-defined]
    except Exception:
        return ("", qualname(func))


def _is_own(module: str) -> bool:
    return module == _OWN_PACKAGE or module.startswith(_OWN_PACKAGE + ".")


def _address_text(address: Any) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"{host}:{port}"
    name = getattr(address, "name", None)
    if name is not None:
        return name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    return safe_repr(address)


def _next_callback_name(caller: FrameType | None) -> str | None:
    """The first callback still waiting on the Deferred that timed out.

    ``caller`` is ``addTimeout``'s ``convertCancelled``; above it, ``Deferred._runCallbacks``
    holds the Deferred being run as its local ``current``.
    """
    frame = caller.f_back if caller is not None else None
    for _ in range(3):
        if frame is None:
            return None
        if frame.f_code.co_name == "_runCallbacks":
            current = frame.f_locals.get("current")
            for (callback, _args, _kw), _errback in getattr(current, "_callbacks", ()):
                name = getattr(callback, "__name__", "")
                if callable(callback) and name not in ("cancelTimeout", "convertCancelled"):
                    return qualname(callback)
            return None
        frame = frame.f_back
    return None
