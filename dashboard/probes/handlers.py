"""Busy time by handler: where the loop's time goes, for the loop probe's ``loop.handlers``.

A handler is what the reactor calls; each call is timed with the reactor clock on the reactor
thread, and whatever runs inside it (Deferred callbacks it fires, writes it makes) is its. The
hooks, all on the one reactor instance (installed by :meth:`HandlerHooks.install`, undone by
:meth:`HandlerHooks.uninstall` to the very objects that were there):

* timed calls and the thread-call queue: ``reactor.runUntilCurrent``, an instance attribute
  that shadows the class's method, holding Twisted's own ``runUntilCurrent`` recompiled with
  each call timed (:mod:`dashboard.probes.handler_source`). Every reactor reaches it through
  ``self.runUntilCurrent()`` (``mainLoop``; the asyncio reactor's timer and
  ``callFromThread``, which goes through ``callLater(0)``). Where the source is not the
  expected one, a wrapper times the whole method instead (``handler_hooks`` says
  ``"runUntilCurrent (whole)"``): its calls are then not told apart;
* I/O events: the epoll and poll reactors' ``_doReadOrWrite(selectable, fd, event)`` (looked up
  on the instance by ``doPoll`` on each iteration), the select reactor's
  ``_doReadOrWrite(selectable, method)``, the asyncio reactor's ``_readOrWrite(selectable,
  read)``, which ``addReader``/``addWriter`` hand to the asyncio loop: the descriptors already
  registered are registered again (``add_reader``/``add_writer``) at install and at
  uninstall, so each runs through the hook from install on and the original after.

Where the accelerator is built (``accelerate``), the hooks are its ``HandlerTimer``: the
recompiled ``runUntilCurrent`` makes each call through ``HandlerTimer.call`` and the I/O
dispatch is a ``TimedIO``, both C with no Python frame; durations are read from
``CLOCK_MONOTONIC`` when the clock is the real reactor's (``time.time``), the counters are
C fields of the table's entries, and what is not cached yet is named by the same Python code.

Not counted: the reactor's own work between handlers (the poller wait is idle; the rest is
small), and on the asyncio reactor asyncio's own callbacks that are not Twisted's (tasks,
futures). See :mod:`dashboard.probes.handler_table` for the counters and the window.
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable
from typing import Any

from twisted.internet import task

from dashboard import accel
from dashboard.probes.base import JSONDict, Patcher, TimeSource, own_attribute
from dashboard.probes.handler_io import io_hook
from dashboard.probes.handler_names import CHANNEL_PROXY
from dashboard.probes.handler_source import with_timed_body, with_timed_calls
from dashboard.probes.handler_table import (
    BOUNDS_WITH_INF,
    DEFAULT_TOP_N,
    DEFAULT_WINDOW_S,
    HandlerTable,
)


class HandlerHooks:
    """The hooks of one reactor, feeding a :class:`HandlerTable`. Reactor thread only.
    ``accelerate``: the compiled hooks (``dashboard._accel`` must be built)."""

    def __init__(
        self,
        reactor: Any,
        clock: TimeSource,
        record_error: Callable[[BaseException], None],
        *,
        idle: Callable[[], float | None] | None = None,
        top_n: int = DEFAULT_TOP_N,
        window_s: float = DEFAULT_WINDOW_S,
        accelerate: bool = False,
    ) -> None:
        self._reactor = reactor
        self._clock = clock
        self._record_error = record_error
        self.table = HandlerTable(
            clock, idle=idle, top_n=top_n, window_s=window_s, compiled=accelerate
        )
        #: the compiled timer (None: the pure-Python hooks)
        self.timer: Any = None
        if accelerate and accel.built is not None:
            table = self.table
            self.timer = accel.built.HandlerTimer(
                clock=None if clock is time.time else clock,
                name_call=table.named_call,
                io_caches=table.io_caches,
                name_io=table.io_entry,
                record_error=record_error,
                looping_call=task.LoopingCall,
                channel_proxy=CHANNEL_PROXY,
                bounds=BOUNDS_WITH_INF,
            )
        #: what is hooked, for the snapshot (``loop.handler_hooks``)
        self.hooks: list[str] = []
        self._patcher = Patcher()
        self._reregister: Callable[[], None] | None = None

    def install(self) -> None:
        if self._patcher.active:
            return
        self.table.reset()
        if self.timer is not None:
            self.timer.clear_cache()
        try:
            self._hook_timed_calls()
            self._hook_io()
        except BaseException:
            self.uninstall()
            raise

    def uninstall(self) -> None:
        self._patcher.restore()
        reregister, self._reregister = self._reregister, None
        if reregister is not None:
            try:
                reregister()  # back to the reactor's own method
            except Exception as exc:
                self._record_error(exc)
        self.hooks = []

    def section(self, *, close: bool) -> JSONDict:
        data = self.table.section(close=close)
        data["handler_hooks"] = list(self.hooks)
        return data

    # timed calls -------------------------------------------------------------------------

    def _hook_timed_calls(self) -> None:
        reactor = self._reactor
        method = getattr(type(reactor), "runUntilCurrent", None)
        if method is None:
            return
        call_done = self.table.make_call_done(self._record_error)
        timed_call = None if self.timer is None else self.timer.call
        recompiled = None
        if not _own_attribute(reactor, "runUntilCurrent"):  # else someone's patch: wrapped
            recompiled = with_timed_calls(method, self._clock, call_done, timed_call=timed_call)
        if recompiled is not None:
            self._patcher.patch(reactor, "runUntilCurrent", types.MethodType(recompiled, reactor))
            self.hooks.append("runUntilCurrent")
            return
        original = reactor.runUntilCurrent
        if timed_call is not None:
            whole = _whole_timed_by(original, timed_call)
        else:
            whole = _whole_timed(original, self._clock, call_done)
        self._patcher.patch(reactor, "runUntilCurrent", whole)
        self.hooks.append("runUntilCurrent (whole)")

    # I/O ---------------------------------------------------------------------------------

    def io_hook(self, flavour: str, real: Callable[..., Any], **bits: int) -> Any:
        """The hook of ``flavour`` (a ``handler_io.FLAVOURS`` key) around ``real``."""
        if self.timer is None:
            return io_hook(flavour, real, self.table, self._clock, self._record_error, **bits)
        hook = self.timer.io_hook(flavour, real, **bits)
        hook.__name__ = hook.__qualname__ = "io_hook"
        return hook

    def timed_dispatch(self, flavour: str, name: str, **bits: int) -> Any:
        """The reactor's dispatch ``name`` recompiled with its body timed by the compiled
        timer (:func:`~dashboard.probes.handler_source.with_timed_body`), bound to the
        reactor; None without the compiled timer or where the source is not the expected
        one (then :meth:`io_hook` wraps it)."""
        if self.timer is None or _own_attribute(self._reactor, name):
            return None  # a dispatch patched on the instance is someone's: wrapped, kept
        method = getattr(type(self._reactor), name, None)
        if method is None:
            return None
        made = with_timed_body(
            method, self.timer.io_start, self.timer.io_done, KIND_ARGUMENTS[flavour]
        )
        if made is None:
            return None
        self.timer.io_flavour(flavour, **bits)
        return types.MethodType(made, self._reactor)

    def _hook_dispatch(self, flavour: str, name: str, label: str, **bits: int) -> None:
        timed = self.timed_dispatch(flavour, name, **bits)
        if timed is not None:
            self._patcher.patch(self._reactor, name, timed)
            self.hooks.append(
                f"{label[:-1]}, recompiled)" if label.endswith(")") else f"{label} (recompiled)"
            )
            return
        self._patcher.patch(
            self._reactor, name, self.io_hook(flavour, getattr(self._reactor, name), **bits)
        )
        self.hooks.append(label)

    def _hook_io(self) -> None:
        reactor = self._reactor
        loop = getattr(reactor, "_asyncioEventloop", None)
        if loop is not None and hasattr(type(reactor), "_readOrWrite"):
            self._hook_dispatch("asyncio", "_readOrWrite", "_readOrWrite (asyncio)")
            self._reregister = _reregister_with(reactor, loop)
            self._reregister()
            return
        if getattr(reactor, "_doReadOrWrite", None) is None:
            return
        poll_in = getattr(reactor, "_POLL_IN", None)
        if isinstance(poll_in, int):
            disconnected = int(getattr(reactor, "_POLL_DISCONNECTED", 0))
            self._hook_dispatch(
                "poll",
                "_doReadOrWrite",
                "_doReadOrWrite",
                poll_in=poll_in,
                poll_disconnected=disconnected,
            )
        elif _is_select_reactor(reactor):
            self._hook_dispatch("select", "_doReadOrWrite", "_doReadOrWrite (select)")


#: Each flavour's dispatch parameter that tells the event's kind (see ``handler_io.FLAVOURS``).
KIND_ARGUMENTS = {"poll": "event", "select": "method", "asyncio": "read"}


def _whole_timed(
    original: Callable[[], None], clock: TimeSource, call_done: Callable[[Any, float], None]
) -> Callable[[], None]:
    """``original`` (a ``runUntilCurrent`` that could not be recompiled) timed as one call."""

    def runUntilCurrent() -> None:
        t0 = clock()
        try:
            original()
        finally:
            call_done(original, t0)

    return runUntilCurrent


def _whole_timed_by(
    original: Callable[[], None], timed_call: Callable[[Any, Any, Any], None]
) -> Callable[[], None]:
    """The same, timed by the compiled timer's ``call``."""
    no_args: tuple[()] = ()
    no_kwargs: dict[str, Any] = {}

    def runUntilCurrent() -> None:
        timed_call(original, no_args, no_kwargs)

    return runUntilCurrent


def _own_attribute(reactor: Any, name: str) -> bool:
    """``name`` is set on the reactor instance itself (a patch of someone else's), told
    without reading its ``__dict__`` (that would take it off CPython's fast paths)."""
    missing = object()
    return own_attribute(reactor, name, missing) is not missing


def _reregister_with(reactor: Any, loop: Any) -> Callable[[], None]:
    """A function that hands every descriptor the asyncio reactor watches to its asyncio loop
    again, with whatever ``reactor._readOrWrite`` is then (asyncio replaces the handle it
    holds for the descriptor and cancels the old one)."""

    def reregister() -> None:
        from twisted.python.log import callWithLogger

        method = reactor._readOrWrite
        for selectables, add, read in (
            (reactor._readers, loop.add_reader, True),
            (reactor._writers, loop.add_writer, False),
        ):
            for selectable, fd in list(selectables.items()):
                add(fd, callWithLogger, selectable, method, selectable, read)

    return reregister


def _is_select_reactor(reactor: Any) -> bool:
    from twisted.internet import selectreactor

    return isinstance(reactor, selectreactor.SelectReactor)
