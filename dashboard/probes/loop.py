"""The loop probe: reactor lag, busy share, iterations and blocking calls with their stacks.

One hook does all the per-iteration work: a wrapper around the poller wait, the only place a
reactor sleeps. It is ``reactor._poller.poll`` (epoll and poll reactors, through a thin proxy
object), ``selectreactor._select`` (select reactor; a module global, so every SelectReactor),
the asyncio event loop's ``_selector.select`` (asyncio reactor) or, as a last resort,
``reactor.doIteration`` (then I/O dispatch counts as idle and blocks inside it are missed).

* ``iterations_total`` counts poller waits: one per loop iteration on every reactor (for
  asyncio, one per event-loop ``_run_once``, whether or not Twisted timers ran).
* ``busy_ratio`` = 1 - time inside the wait / wall time, over the interval since the previous
  ``collect()``.
* Lag samples: when the wait returns, the earliest pending delayed call
  (``reactor._pendingTimedCalls[0]``) is peeked; if it is already due, ``now - call.time`` is a
  sample (the wake-up latency, or how long the previous busy span held it up). Every *block* is
  a sample too: a busy span (leaving the wait to entering it again) of ``block_threshold_ms`` or
  more, measured by the reactor thread itself, so a block is never missed even with no timer
  due. A watchdog thread (:mod:`dashboard.probes.watchdog`) captures the main thread's stack
  while the span still runs. ``lag_ms.last`` is the largest sample of the interval since the
  previous ``collect()`` (0 when nothing was due); ``p50``/``p99``/``max`` cover ``window_s``.
* A block is named by ``where``, the innermost frame the user owns, and ``owner``, "program" or
  "dashboard" (the dashboard's own work stalled the loop); see
  :mod:`dashboard.probes.stack_owner`. ``stack`` stays whole.
* Start-up: on a reactor started after ``install()``, the first busy span is measured from its
  "before startup" event, so a block in ``callWhenRunning`` (before the first wait) is caught
  with its stack; installed while the reactor runs, from ``install()``.
* ``collect()`` closes the interval (the sampler's read); ``peek()`` reads the same section
  without moving any baseline, for a snapshot taken between samples.

All times are the reactor clock's seconds (``reactor.seconds``: wall time on real reactors, so
a Clock drives everything in unit tests); a wall-clock step can distort one span.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import select
import sys
import threading
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from types import CodeType
from typing import Any

from dashboard import accel
from dashboard.probes.base import JSONDict, Patcher, ProbeErrors, TimeSource
from dashboard.probes.handlers import HandlerHooks
from dashboard.probes.lag_histogram import LagCounters, LagWindow, cumulative_le, finite_ms
from dashboard.probes.stack_owner import StackOwner
from dashboard.probes.wait_hook import timed_wait
from dashboard.probes.watchdog import Pulse, ReactorPulse, Watchdog

#: Blocks kept for ``collect()``.
MAX_BLOCKS = 50


class _TimedPoller:
    """Stands in for an epoll / poll object: ``poll`` is timed, the rest is the real object's."""

    def __init__(self, real: Any, poll: Callable[..., Any]) -> None:
        self._real = real
        self.poll = poll
        for name in ("register", "modify", "unregister", "fileno", "close"):
            if hasattr(real, name):
                setattr(self, name, getattr(real, name))

    def __getattr__(self, name: str) -> Any:
        if name == "_real":  # not set yet (copy, pickle): never recurse
            raise AttributeError(name)
        return getattr(self._real, name)


class LoopProbe:
    """Loop health of one reactor. ``install``/``uninstall``/``collect`` run on the reactor thread;
    the thread that calls ``install()`` is the one the watchdog watches.

    ``block_threshold_ms``: a busy span this long is a block. ``window_s``: the time (clock
    seconds) the lag percentiles cover. Set ``watchdog_enabled = False`` before ``install()`` to
    drive :meth:`Watchdog.check` by hand (unit tests).
    """

    name = "loop"

    def __init__(
        self,
        reactor: Any,
        errors: ProbeErrors,
        clock: TimeSource,
        *,
        block_threshold_ms: float = 100.0,
        window_s: float = 900.0,
        accelerate: bool | None = None,
        library_paths: tuple[str, ...] = (),
        user_paths: tuple[str, ...] = (),
        handlers: bool | None = None,
        top_handlers: int = 20,
        handlers_window_s: float = 10.0,
    ) -> None:
        """``accelerate``: use the compiled hook and pulse (``dashboard._accel.TimedWait`` and
        ``Pulse``; True: required, an error where not built; None: where built, unless
        ``REACTOR_DASHBOARD_ACCEL=0``; False: never). ``library_paths`` / ``user_paths``: path
        prefixes or module names that count as library code, or as the user's, when a block's
        ``where`` is named (:class:`~dashboard.probes.stack_owner.StackOwner`). ``handlers``:
        time each call the reactor makes (``loop.handlers``, the top ``top_handlers`` over the
        last ``handlers_window_s`` seconds; :mod:`dashboard.probes.handlers`, compiled where
        ``accelerate`` says); None: on where compiled, off on the pure-Python path (a reactor
        iteration 1.33x there; benchmarks/README.md)."""
        self.accelerated = accel.resolve(accelerate)
        self.hot_path_reason = accel.hot_path_reason(accelerate, self.accelerated)
        accelerate = self.accelerated
        self._reactor = reactor
        self._errors = errors
        self._clock = clock
        self.threshold_s = block_threshold_ms / 1000.0
        self.window_s = window_s
        self.watchdog_enabled = True
        self.watchdog_interval_s = 0.005  # the shortest sleep; see Watchdog
        self.pulse: Pulse = (
            accel.built.Pulse() if accelerate and accel.built is not None else ReactorPulse()
        )
        self.lag = LagCounters()
        self.watchdog: Watchdog | None = None
        #: told the busy span's tick when the loop is stuck past the threshold (the watchdog
        #: thread calls it; see Watchdog.on_stuck): the web's stuck server. Set before install().
        self.on_stuck: Callable[[float], None] | None = None
        #: which wait is timed (None: no hook found, so no busy ratio and no blocks)
        self.wait_hook: str | None = None
        self.blocks_total = 0
        self.stack_owner = StackOwner(library_paths, user_paths)
        #: busy time by handler (None: switched off, for ``handlers_off_reason``)
        self.handlers: HandlerHooks | None = None
        self.handlers_off_reason = handlers_off_reason(handlers, self.accelerated)
        if self.handlers_off_reason is None:
            self.handlers = HandlerHooks(
                reactor,
                clock,
                self._record_error,
                idle=self._idle_s,
                top_n=top_handlers,
                window_s=handlers_window_s,
                accelerate=accelerate,
            )
        #: (at, duration_s, stack, where, owner)
        self._blocks: deque[tuple[float, float, list[str], str | None, str]] = deque(
            maxlen=MAX_BLOCKS
        )
        self._startup_trigger: Any = None
        self._window = LagWindow(len(self.lag.counts), window_s)
        self._patcher = Patcher()
        self._installed = False
        # interval bookkeeping for collect()
        self._prev_counts = list(self.lag.counts)
        self._prev_idle_s = 0.0
        self._prev_at = 0.0
        self._closed_late_max_s = 0.0

    # lifecycle ---------------------------------------------------------------------------

    def install(self) -> None:
        if self._installed:
            return
        self._installed = True
        pulse = self.pulse
        pulse.tick = math.inf  # no busy span is measured until the first wait returns
        pulse.captured = None
        self._prev_at = self._clock()
        self._prev_idle_s = pulse.idle_s
        try:
            self._install_wait_hook()
            if self.wait_hook is not None:
                self._watch_start_up()
            self._install_handlers()
        except BaseException:
            self._forget_start_up()
            if self.handlers is not None:
                self.handlers.uninstall()
            self._patcher.restore()
            self._installed = False
            raise
        self.watchdog = Watchdog(
            pulse,
            thread_ident=threading.get_ident(),
            threshold_s=self.threshold_s,
            clock=self._clock,
            on_error=self._record_error,
            interval_s=self.watchdog_interval_s,
            judge=self.stack_owner.judge,
            between_work=between_work_codes(self._reactor),
        )
        self.watchdog.on_stuck = self.on_stuck
        if self.watchdog_enabled and self.wait_hook is not None:
            self.watchdog.start()

    def uninstall(self) -> None:
        if not self._installed:
            return
        self._installed = False
        if self.watchdog is not None:
            self.watchdog.stop()
        self._forget_start_up()
        if self.handlers is not None:
            self.handlers.uninstall()
        self._patcher.restore()
        self.wait_hook = None
        self.pulse.tick = math.inf

    def _install_handlers(self) -> None:
        """Busy time by handler: its hooks fail alone (counted), the probe runs on."""
        if self.handlers is None:
            return
        try:
            self.handlers.install()
        except Exception as exc:
            self._record_error(exc)

    def _idle_s(self) -> float | None:
        """Seconds spent in the poller wait so far (None: no wait is timed)."""
        return self.pulse.idle_s if self.wait_hook is not None else None

    def _watch_start_up(self) -> None:
        """Measure the busy span that runs before the first wait. Installed on a reactor that
        runs (from its thread, so inside a busy span): that span begins now. Before the
        reactor starts: at its "before startup" event, whose triggers run ahead of every
        ``callWhenRunning``. (The time before ``run()`` is not the loop's.)"""
        reactor = self._reactor
        if any(getattr(reactor, name, False) is True for name in ("running", "_started")):
            self.pulse.tick = self._clock()
            return
        add_trigger = getattr(reactor, "addSystemEventTrigger", None)
        if add_trigger is not None:
            self._startup_trigger = add_trigger("before", "startup", self._reactor_starting)

    def _reactor_starting(self) -> None:
        """Reactor thread, "before startup": the start-up's busy span begins."""
        self._startup_trigger = None
        try:
            pulse = self.pulse
            if self._installed and pulse.tick == math.inf:
                pulse.tick = self._clock()
        except Exception as exc:
            self._record_error(exc)

    def _forget_start_up(self) -> None:
        trigger, self._startup_trigger = self._startup_trigger, None
        if trigger is not None:
            with contextlib.suppress(Exception):  # fired already, or the reactor is gone
                self._reactor.removeSystemEventTrigger(trigger)

    def _record_error(self, exc: BaseException) -> None:
        self._errors.record(self.name, exc)

    # the hook ----------------------------------------------------------------------------

    def _install_wait_hook(self) -> None:
        reactor = self._reactor
        loop = getattr(reactor, "_asyncioEventloop", None)
        selector = getattr(loop, "_selector", None)
        if selector is not None and hasattr(selector, "select"):
            wrapper = self._timed(_signature_of(selector.select), selector.select)
            self._patcher.patch(selector, "select", wrapper)
            self.wait_hook = "asyncio selector.select"
            return
        poller = getattr(reactor, "_poller", None)
        if poller is not None and hasattr(poller, "poll"):
            proxy = _TimedPoller(poller, self._timed(_poller_signature(poller), poller.poll))
            self._patcher.patch(reactor, "_poller", proxy)
            self.wait_hook = "_poller.poll"
            return
        if _is_select_reactor(reactor):
            from twisted.internet import selectreactor

            self._patcher.patch(selectreactor, "_select", self._timed("any", selectreactor._select))
            self.wait_hook = "selectreactor._select"
            return
        do_iteration = getattr(reactor, "doIteration", None)
        if do_iteration is not None:
            self._patcher.patch(reactor, "doIteration", self._timed("any", do_iteration))
            self.wait_hook = "doIteration"

    def _timed(self, signature: str, wait: Callable[..., Any]) -> Callable[..., Any]:
        if self.accelerated:
            assert accel.built is not None
            timed: Callable[..., Any] = accel.built.TimedWait(
                wait=wait,
                clock=self._clock,
                pulse=self.pulse,
                reactor=self._reactor,
                has_heap=isinstance(getattr(self._reactor, "_pendingTimedCalls", None), list),
                lag=self.lag,
                threshold_s=self.threshold_s,
                end_block=self._end_block,
                record_error=self._record_error,
            )
            return timed
        return timed_wait(
            signature,
            wait,
            reactor=self._reactor,
            clock=self._clock,
            pulse=self.pulse,
            lag=self.lag,
            threshold_s=self.threshold_s,
            end_block=self._end_block,
            record_error=self._record_error,
        )

    def _end_block(self, now: float) -> None:
        """Reactor thread, entering the wait after a busy span at or above the threshold."""
        pulse = self.pulse
        start = pulse.tick
        busy_s = now - start
        captured = pulse.captured
        stack: list[str] = []
        where: str | None = None
        owner = "program"
        if captured is not None and captured[0] == start:
            stack = captured[1]
            pulse.captured = None
            detail = self.watchdog.detail if self.watchdog is not None else None
            if detail is not None and detail[0] == start:
                where, owner = detail[1], detail[2]
            elif stack:
                where = stack[-1]
        self.blocks_total += 1
        self._blocks.append((start, busy_s, stack, where, owner))
        lag = self.lag
        lag.counts[bisect_left(lag.bounds_s, busy_s)] += 1
        lag.sum_s += busy_s
        if busy_s > pulse.busy_max_s:
            pulse.busy_max_s = busy_s

    # reading -----------------------------------------------------------------------------

    def busy_since(self) -> float | None:
        """When the busy span running now began (the reactor clock's seconds), or ``None``
        while the loop waits in its poller (and before it first ran). Any thread: one read."""
        tick = self.pulse.tick
        return None if tick == math.inf else tick

    def stuck_now(self) -> JSONDict | None:
        """``loop.stuck`` as of now: ``{since, for_s, stack, where, owner}`` while the reactor
        thread is stuck past the block threshold (``since``: when the busy span began, the
        reactor clock's seconds; ``stack``: the reactor thread's frames now, outermost first),
        ``None`` while the loop runs. Any thread (the stuck server calls it while the reactor
        thread cannot)."""
        watchdog = self.watchdog
        if watchdog is None or not self._installed:
            return None
        look = watchdog.look_now()
        if look is None:
            return None
        tick, stack, where, owner = look
        return {
            "since": round(tick, 3),
            "for_s": round(max(0.0, self._clock() - tick), 3),
            "stack": stack,
            "where": where,
            "owner": owner,
        }

    def max_lateness_ms(self) -> float:
        """The largest delayed-call lateness of this sampling interval, ms: the interval closed by
        the latest ``collect()`` merged with whatever ran since. Reactor thread."""
        return round(max(self._closed_late_max_s, self.lag.late_max_s) * 1000.0, 3)

    def lag_histogram(self) -> tuple[tuple[float, ...], list[int], float, int]:
        """For a Prometheus histogram ``twisted_reactor_lag_seconds``: (bucket upper bounds in
        seconds ending with +inf, ``le``-cumulative counts, sum of samples in seconds, sample
        count), all since the probe was created. Reactor thread."""
        lag = self.lag
        counts = list(lag.counts)
        return (*lag.bounds_s, math.inf), cumulative_le(counts), lag.sum_s, sum(counts)

    def collect(self) -> JSONDict:
        """The ``loop`` section; closes the current interval (the sampler's read). Reactor
        thread."""
        return self._section(close=True)

    def peek(self) -> JSONDict:
        """The ``loop`` section as of now, closing nothing: ``busy_ratio``, ``interval_s``,
        ``lag_ms.last`` and ``max_lateness_ms`` cover the interval still open since the latest
        ``collect()``, the percentiles include it, and the next ``collect()`` returns what it
        would have returned without this call. Reactor thread."""
        return self._section(close=False)

    def _section(self, *, close: bool) -> JSONDict:
        lag = self.lag
        pulse = self.pulse
        now = self._clock()
        counts = list(lag.counts)
        delta = [a - b for a, b in zip(counts, self._prev_counts, strict=True)]
        late_max_s = lag.late_max_s
        interval_max_s = max(late_max_s, pulse.busy_max_s)
        window = self._window
        wall_s = now - self._prev_at
        idle_s = pulse.idle_s - self._prev_idle_s
        if close:
            self._prev_counts = counts
            lag.late_max_s = 0.0
            pulse.busy_max_s = 0.0
            self._closed_late_max_s = late_max_s
            if any(delta):
                window.add_interval(now, delta, interval_max_s)
            else:
                window.expire(now)
            view = window.view()
            self._prev_at = now
            self._prev_idle_s = pulse.idle_s
        else:
            view = window.view(now, (delta, interval_max_s))
        busy_ratio: float | None = None
        if self.wait_hook is not None and wall_s > 0:
            busy_ratio = round(min(1.0, max(0.0, 1.0 - idle_s / wall_s)), 4)

        bounds = lag.bounds_s
        return {
            "lag_ms": {
                "last": finite_ms(interval_max_s),
                "p50": finite_ms(view.percentile_s(0.50, bounds)),
                "p99": finite_ms(view.percentile_s(0.99, bounds)),
                "max": finite_ms(view.max_s),
                "samples": view.count,
            },
            "busy_ratio": busy_ratio,
            "interval_s": round(max(wall_s, 0.0), 6),
            "iterations_total": pulse.spans,
            "blocks_total": self.blocks_total,
            "stacks_late_total": 0 if self.watchdog is None else self.watchdog.late_total,
            "blocks": [
                {
                    "at": round(at, 6),
                    "duration_ms": finite_ms(dur),
                    "stack": list(stack),
                    "where": where,
                    "owner": owner,
                }
                for at, dur, stack, where, owner in self._blocks
            ],
            # the reactor thread answers only while the loop runs; the stuck server fills it
            "stuck": None,
            "threshold_ms": round(self.threshold_s * 1000.0, 3),
            "max_lateness_ms": round(late_max_s * 1000.0, 3),
            "window_s": self.window_s,
            "wait_hook": self.wait_hook,
            "watchdog": self.watchdog is not None and self.watchdog.running,
            "hot_path": "compiled" if self.accelerated else "python",
            "hot_path_reason": self.hot_path_reason,
            **self._handlers_section(close),
        }

    def _handlers_section(self, close: bool) -> JSONDict:
        """``loop.handlers*``: busy time by handler (null while switched off)."""
        if self.handlers is None:
            return _handlers_off(self.handlers_off_reason)
        if not self._installed:
            return _handlers_off("the loop probe is not installed")
        try:
            return {**self.handlers.section(close=close), "handlers_off_reason": None}
        except Exception as exc:
            self._record_error(exc)
            return _handlers_off("its figures failed (counted in the monitor's errors)")


def _is_select_reactor(reactor: Any) -> bool:
    from twisted.internet import selectreactor

    return isinstance(reactor, selectreactor.SelectReactor) and (
        type(reactor).doIteration is selectreactor.SelectReactor.doSelect
    )


def _poller_signature(poller: Any) -> str:
    """The :data:`~dashboard.probes.wait_hook.SIGNATURES` key matching ``poller.poll``."""
    epoll = getattr(select, "epoll", None)
    if epoll is not None and isinstance(poller, epoll):
        return "epoll.poll"
    poll = getattr(select, "poll", None)
    if poll is not None and type(poller) is type(poll()):
        return "timeout"
    return "any"


#: The reactor's own loop, between one piece of work and the next (``doIteration`` is each
#: reactor's wait caller: ``doPoll``, ``doSelect``...).
REACTOR_LOOP_METHODS = ("mainLoop", "doIteration", "runUntilCurrent")
#: asyncio's loop, around its selector wait and between handles.
ASYNCIO_LOOP_METHODS = ("run_forever", "_run_once")


def _handlers_off(reason: str | None) -> JSONDict:
    return {
        "handlers": None,
        "handlers_other": None,
        "handlers_window_s": None,
        "handlers_off_reason": reason,
    }


#: The CPython versions (major, minor) where busy time by handler, compiled, was measured
#: within its budget (a Klein hello request at most 0.5% slower; benchmarks/README.md): on by
#: default there. On 3.13 it cost 1.3-1.6%.
HANDLERS_BY_DEFAULT = frozenset({(3, 11), (3, 12)})


def handlers_off_reason(
    handlers: bool | None, accelerated: bool, version: tuple[int, int] | None = None
) -> str | None:
    """Why busy time by handler is off, in one line (``loop.handlers_off_reason``); None when
    it is on: asked for (True), or by default (None) on the compiled path of a CPython in
    :data:`HANDLERS_BY_DEFAULT` (``version``: this one's)."""
    version = version or (sys.version_info.major, sys.version_info.minor)
    switch_on = "Monitor(handlers=True) or run --handlers switches it on"
    if handlers is not None:  # asked: on or off, whatever the version
        return None if handlers else "switched off (Monitor(handlers=False), run --no-handlers)"
    if not accelerated:
        return (
            "off by default on the pure-Python path (timing each call costs a reactor"
            f" iteration about 1.33x); {switch_on}"
        )
    if version not in HANDLERS_BY_DEFAULT:
        cost = (
            "timing each I/O event costs a small HTTP request 1.3-1.6% there (the budget is 0.5%)"
            if version == (3, 13)
            else "its cost was not measured there"
        )
        return f"off by default on Python {version[0]}.{version[1]}: {cost}; {switch_on}"
    return None


def between_work_codes(reactor: Any) -> frozenset[CodeType]:
    """Code objects whose frame, innermost in a captured stack, means the reactor was back in
    its own loop: the blocking call had returned before the stack was taken."""
    owners: list[tuple[type, tuple[str, ...]]] = [(type(reactor), REACTOR_LOOP_METHODS)]
    loop = getattr(reactor, "_asyncioEventloop", None)
    if loop is not None:
        owners.append((type(loop), ASYNCIO_LOOP_METHODS))
    codes: set[CodeType] = set()
    for owner, names in owners:
        for name in names:
            method = getattr(owner, name, None)
            code = getattr(inspect.unwrap(method), "__code__", None) if method else None
            if isinstance(code, CodeType):
                codes.add(code)
    # busy time by handler runs the reactor's timed calls from a method of its own (a
    # recompiled runUntilCurrent on the instance; dashboard.probes.handlers)
    hooked = getattr(reactor, "runUntilCurrent", None)
    code = getattr(getattr(hooked, "__func__", hooked), "__code__", None)
    if isinstance(code, CodeType):
        codes.add(code)
    return frozenset(codes)


def _signature_of(wait: Callable[..., Any]) -> str:
    """The signature key for a selector's ``select``: "timeout" for ``(timeout=None)``."""
    try:
        params = list(inspect.signature(wait).parameters.values())
    except (TypeError, ValueError):
        return "any"
    if len(params) == 1 and params[0].name == "timeout" and params[0].default is None:
        return "timeout"
    return "any"
