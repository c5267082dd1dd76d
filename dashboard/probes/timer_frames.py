"""Which delayed call, if any, is running on the current stack.

A Deferred cancelled from inside a delayed call is a timeout; one cancelled anywhere else is a
cancellation. Deciding which costs nothing per loop iteration: the question is asked only when
something rare happens (a cancel), by walking up the stack to the innermost frame that runs
timed calls and reading the call it is running:

* ``ReactorBase.runUntilCurrent`` (every ``ReactorBase`` reactor, epoll and asyncio alike: the
  asyncio reactor runs Twisted's timers from ``_onTimer`` through it): its local ``call``;
* ``twisted.internet.task.Clock.advance`` (tests, ``MemoryReactorClock``): its local ``call``;
* ``asyncio.events.Handle._run`` running a ``TimerHandle`` (``loop.call_later`` on the asyncio
  reactor's event loop): the handle's callback.

Such a frame is running a timed call only while it stands on the line that calls it (found once,
from the bytecode): ``runUntilCurrent`` keeps ``call`` bound after its loop, while it fires the
``shutdown`` triggers, and a cancel made there is no timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dis
import functools
import gc
import types
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import base as internet_base
from twisted.internet import task

#: Frames walked up from the cancel at most (a deep stack is cut short, never walked whole).
MAX_DEPTH = 400

#: Not a timer: Twisted delivers a connection's loss from a zero-delay call after
#: ``abortConnection()`` (and a failed connect's from ``failIfNotConnected``). What that
#: cancels is cancelled by I/O, not by a timeout.
IO_DELIVERIES = frozenset({"connectionLost", "failIfNotConnected"})

_LOCAL_CALL = "call"
#: A timed call as scheduled: (function, args, kwargs).
RunningCall = tuple[Any, tuple[Any, ...], dict[str, Any]]
_HANDLE_SELF = "self"


def _call_lines(code: types.CodeType) -> frozenset[int] | None:
    """The lines where ``code`` calls a timed call's function: its ``f(*args, **kw)`` calls.
    None (any line) when the bytecode has none that the walk can recognise."""
    lines = frozenset(
        ins.positions.lineno
        for ins in dis.get_instructions(code)
        if ins.opname == "CALL_FUNCTION_EX"
        and ins.positions is not None
        and ins.positions.lineno is not None
    )
    return lines or None


def _code_of(function: Any) -> types.CodeType | None:
    code = getattr(getattr(function, "__func__", function), "__code__", None)
    return code if isinstance(code, types.CodeType) else None


class TimerFrames:
    """Finds the timed call running on a stack. Built once at ``install()``; ``running_call``
    is called at each (rare) cancel, from whichever thread cancels."""

    def __init__(self, reactor: Any) -> None:
        #: code that runs timed calls -> (how it names the call, the lines where it calls it)
        self._codes: dict[types.CodeType, tuple[str, frozenset[int] | None]] = {}
        candidates = [
            internet_base.ReactorBase.runUntilCurrent,
            getattr(type(reactor), "runUntilCurrent", None),
            # the loop probe's busy time by handler recompiles it on the instance
            getattr(reactor, "runUntilCurrent", None),
            task.Clock.advance,
            getattr(type(reactor), "advance", None),
        ]
        for function in candidates:
            code = _code_of(function)
            if code is not None and _LOCAL_CALL in code.co_varnames:
                self._codes[code] = (_LOCAL_CALL, _call_lines(code))
        handle_run = _code_of(getattr(asyncio.events.Handle, "_run", None))
        if handle_run is not None:
            self._codes[handle_run] = (_HANDLE_SELF, _call_lines(handle_run))

    def running_call(self, frame: types.FrameType | None) -> RunningCall | None:
        """The timed call ``frame`` runs inside: ``(function, args, kwargs)`` as it was
        scheduled (a ``DelayedCall``'s, a ``TimerHandle``'s), or None. The innermost frame that
        runs calls decides: a reactor I/O callback on the asyncio loop (a plain ``Handle``) is
        no timer. Costs a walk up the stack (a few microseconds)."""
        codes = self._codes
        depth = 0
        while frame is not None and depth < MAX_DEPTH:
            found = codes.get(frame.f_code)
            if found is not None:
                return self._call_at(frame, *found)
            frame = frame.f_back
            depth += 1
        return None

    @staticmethod
    def _call_at(
        frame: types.FrameType, naming: str, lines: frozenset[int] | None
    ) -> RunningCall | None:
        if lines is not None and frame.f_lineno not in lines:
            return None  # between calls: the shutdown triggers, a heap compaction
        value = frame.f_locals.get(naming)
        if naming == _HANDLE_SELF:
            if isinstance(value, asyncio.TimerHandle):
                return (getattr(value, "_callback", None), getattr(value, "_args", ()), {})
            return None  # a plain Handle: I/O or call_soon, not a timer
        if value is None or not hasattr(value, "func"):
            return None  # the thread-call queue runs before any timed call is bound
        return (value.func, getattr(value, "args", ()), getattr(value, "kw", {}))


def is_io_delivery(function: object) -> bool:
    """Whether ``function`` is Twisted delivering I/O from a zero-delay call (see
    ``IO_DELIVERIES``), which is not a timer even though it runs as one."""
    name = getattr(getattr(function, "__func__", function), "__name__", None)
    return name in IO_DELIVERIES


#: How deep ``holds`` looks from a timed call (its function and arguments are level 0).
HOLD_DEPTH = 2
#: At most this many objects are looked at by one ``holds``.
HOLD_BUDGET = 64
#: Containers longer than this are not looked into; of any object, this many children.
HOLD_CONTAINER_MAX = 16


def holds(call: RunningCall, target: object) -> bool:
    """Whether the timed call ``call`` holds ``target``: as the object of its bound method
    (``callLater(t, d.cancel)``), among its arguments, or in its function's closure (followed
    through ``functools.wraps`` and functions held there: Synapse's clock wraps
    ``timeout_deferred``'s ``time_it_out``, whose closure holds the Deferred), or as an
    attribute of an object it is bound to or given. Bounded (``HOLD_DEPTH`` levels,
    ``HOLD_BUDGET`` objects); called at a cancel made inside a timed call."""
    function, args, kwargs = call
    todo: deque[tuple[object, int]] = deque([(function, 0)])
    todo += [(arg, 0) for arg in args]
    todo += [(value, 0) for value in kwargs.values()]
    seen: set[int] = set()
    budget = HOLD_BUDGET
    while todo and budget > 0:  # breadth first: what the call holds nearest, first
        obj, level = todo.popleft()
        budget -= 1
        if obj is target:
            return True
        if level >= HOLD_DEPTH or id(obj) in seen:
            continue
        seen.add(id(obj))
        todo += [(child, level + 1) for child in _held_by(obj, level)[:HOLD_CONTAINER_MAX]]
    return False


#: Containers looked into, each with its own (base-class) length and items: a program's
#: subclass is read through them, so none of its overrides runs inside a cancel.
_CONTAINERS: tuple[tuple[type, Callable[[Any], int], Callable[[Any], Iterable[object]]], ...] = (
    (list, list.__len__, list.__iter__),
    (tuple, tuple.__len__, tuple.__iter__),
    (dict, dict.__len__, dict.values),
    (set, set.__len__, set.__iter__),
    (frozenset, frozenset.__len__, frozenset.__iter__),
)
#: Held by nothing worth looking into.
_LEAVES = (type, types.ModuleType, str, bytes, int, float)


def _held_by(obj: object, level: int) -> list[object]:
    """What ``obj`` holds, for ``holds``: a bound method's object and function, a partial's
    function and arguments, a function's closure and what it wraps, a small container's
    items; a plain object's attributes only near the call (``level`` 0 or 1). Runs none of
    the program's code: types are told by ``type(obj)`` (never ``obj.__class__``), a
    container subclass is read by its base class's methods."""
    kind = type(obj)
    if kind is types.MethodType:
        method: Any = obj
        return [method.__self__, method.__func__]
    if kind is functools.partial:
        partial: Any = obj
        return [partial.func, *partial.args, *partial.keywords.values()]
    if kind is types.FunctionType:
        function: Any = obj
        held: list[object] = []
        for cell in function.__closure__ or ():
            with contextlib.suppress(ValueError):  # an empty cell
                held.append(cell.cell_contents)
        wrapped = getattr(obj, "__wrapped__", None)
        if wrapped is not None:
            held.append(wrapped)
        return held
    for container, length, items in _CONTAINERS:
        if issubclass(kind, container):
            return list(items(obj)) if length(obj) <= HOLD_CONTAINER_MAX else []
    if level > 1 or issubclass(kind, _LEAVES):
        return []
    # The collector's view of its attributes: reads no instance __dict__ (see Patcher).
    return [child for child in gc.get_referents(obj) if child is not kind]
