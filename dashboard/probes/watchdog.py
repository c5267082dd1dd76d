"""The reactor's pulse (state written by the loop hooks) and the watchdog thread that reads it
to capture the main thread's stack while the reactor is blocked."""

from __future__ import annotations

import atexit
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from dashboard import accel
from dashboard.probes.base import frame_site

#: Deepest stack kept for a block (the innermost frames are kept).
MAX_STACK_DEPTH = 40


class _PyPulseBase:
    """The pure-Python twin of ``dashboard._accel.PulseBase``."""

    __slots__ = ("tick",)

    def __init__(self) -> None:
        self.tick = math.inf


if TYPE_CHECKING:
    from dashboard._accel import PulseBase as _PulseBase
else:
    # chosen at import: REACTOR_DASHBOARD_ACCEL=0 leaves no compiled part in use
    _PulseBase = accel.built.PulseBase if accel.enabled() else _PyPulseBase


class ReactorPulse(_PulseBase):
    """Hot state shared by the loop hooks (reactor thread, writes) and the watchdog (reads).

    Times are the reactor clock's seconds (``reactor.seconds``). A *busy span* is the stretch
    between leaving the poller wait and entering it again; ``tick`` is when the current one began
    and identifies it. Single attribute reads and writes are atomic under the GIL, so no lock.
    """

    __slots__ = ("busy_max_s", "captured", "idle_s", "spans")

    def __init__(self) -> None:
        #: when the current busy span began (left the wait); +inf while inside the wait and
        #: before the first wait, so "now - tick" is never a block then
        self.tick = math.inf
        #: poller waits completed since creation (= reactor iterations)
        self.spans = 0
        #: seconds spent inside the poller wait since creation
        self.idle_s = 0.0
        #: the longest busy span at or above the block threshold in the current interval, s
        self.busy_max_s = 0.0
        #: ``(tick, stack)`` published by the watchdog for the busy span it caught blocked
        self.captured: tuple[float, list[str]] | None = None


def format_stack(frame: FrameType | None, limit: int = MAX_STACK_DEPTH) -> list[str]:
    """``"path.py:LINE in function"`` for each frame, outermost first and innermost LAST (like a
    traceback); only the innermost ``limit`` frames are kept."""
    sites: list[str] = []
    while frame is not None and len(sites) < limit:
        code = frame.f_code
        sites.append(frame_site(code.co_filename, frame.f_lineno, code.co_name))
        frame = frame.f_back
    sites.reverse()
    return sites


class Watchdog:
    """A daemon thread that, when the watched thread has been out of the poller wait for
    ``threshold_s`` or more (``clock`` seconds), captures that thread's stack once per busy
    span and publishes it in ``pulse.captured`` for the reactor thread to attach to the block.

    It does not poll at a fixed rate: each wake costs the reactor a GIL hand-over (measured:
    50 wakes/s took 3.5% of a Klein server's throughput under wrk, 10 wakes/s about 1%). It
    sleeps until the current busy span would reach the threshold (``tick + threshold_s``), or
    a whole ``threshold_s`` while the reactor waits, but never less than ``interval_s``. So it
    wakes about ``1 / threshold_s`` times a second and still catches a block right at the
    threshold.

    Where ``dashboard._accel`` is built and the clock is wall time (``time.time``, what real
    reactors use), the sleeping and the looks are done by a C thread that reads the pulse's
    tick without the GIL and takes the GIL only for a span at or past the threshold (to run
    ``check()``): the busy reactor pays no GIL hand-over per wake. ``REACTOR_DASHBOARD_ACCEL=0``
    keeps the Python thread.

    ``on_error`` is called (from the watchdog thread) with any exception of a check.
    ``start()``/``stop()`` are called from the reactor thread.
    """

    def __init__(
        self,
        pulse: ReactorPulse,
        *,
        thread_ident: int,
        threshold_s: float,
        clock: Callable[[], float],
        on_error: Callable[[BaseException], None],
        interval_s: float = 0.005,
        format_stack: Callable[[FrameType | None], list[str]] = format_stack,
    ) -> None:
        self.pulse = pulse
        self.thread_ident = thread_ident
        self.threshold_s = threshold_s
        self.interval_s = interval_s
        self.clock = clock
        self.format_stack = format_stack
        self._on_error = on_error
        self._caught_tick = math.inf
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._sleeper: Any = None
        #: stacks captured since creation (read by tests and collect)
        self.captures_total = 0

    @property
    def running(self) -> bool:
        if self._sleeper is not None:
            return bool(self._sleeper.running)
        return self._thread is not None and self._thread.is_alive()

    @property
    def compiled(self) -> bool:
        """Whether the C sleeper is used (see the class docstring)."""
        return (
            accel.enabled()
            and self.clock is time.time
            and isinstance(self.pulse, accel.built.PulseBase)  # type: ignore[union-attr]
        )

    def start(self) -> None:
        if self._thread is not None or self._sleeper is not None:
            return
        if self.compiled:
            assert accel.built is not None
            self._sleeper = accel.built.Sleeper(
                pulse=self.pulse,
                callback=self._look,
                threshold_s=self.threshold_s,
                interval_s=self.interval_s,
            )
            self._sleeper.start()
            # A C thread must not outlive the interpreter: stop it before finalisation.
            atexit.register(self.stop)
            _with_sleepers.add(self)
            return
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._run, name="reactor-dashboard-watchdog", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Ask the thread to end and join it (at most ``timeout_s``; the C sleeper ends at
        once, unless it is inside ``check()``, which takes microseconds)."""
        sleeper, self._sleeper = self._sleeper, None
        if sleeper is not None:
            atexit.unregister(self.stop)
            _with_sleepers.discard(self)
            sleeper.stop()
        thread, self._thread = self._thread, None
        self._stopping.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def _run(self) -> None:
        delay = self.threshold_s
        while not self._stopping.wait(delay):
            try:
                self.check()
                delay = self.next_delay()
            except Exception as exc:
                self._on_error(exc)
                delay = self.threshold_s

    def _forget_after_fork(self) -> None:
        """In a forked child: the C thread is not there; the watchdog is stopped."""
        sleeper, self._sleeper = self._sleeper, None
        if sleeper is not None:
            atexit.unregister(self.stop)
            sleeper.forget_thread()

    def _look(self) -> bool | None:
        """The C sleeper's call, with the GIL, for a span it saw at or past the threshold:
        True once captured, False to look again soon, None after an error (reported)."""
        try:
            return self.check()
        except Exception as exc:
            self._on_error(exc)
            return None

    def next_delay(self) -> float:
        """Seconds to sleep before the next look: until the current busy span reaches the
        threshold, or a whole threshold while waiting or once this span is caught."""
        tick = self.pulse.tick
        if tick == math.inf or tick == self._caught_tick:
            return self.threshold_s
        remaining = tick + self.threshold_s - self.clock()
        return min(self.threshold_s, max(self.interval_s, remaining))

    def check(self) -> bool:
        """One watchdog look; True when it captured a stack. Safe from any thread."""
        pulse = self.pulse
        tick = pulse.tick
        if tick == self._caught_tick:
            return False  # this block already has its stack
        if self.clock() - tick < self.threshold_s:
            return False  # busy for less than the threshold, or waiting (tick is +inf)
        frame = sys._current_frames().get(self.thread_ident)
        try:
            stack = self.format_stack(frame)
        finally:
            del frame  # never keep the watched thread's frames alive
        if pulse.tick != tick:
            return False  # the block ended while we looked: the stack would be of something else
        self._caught_tick = tick
        pulse.captured = (tick, stack)
        self.captures_total += 1
        return True


#: Watchdogs with a running C sleeper, so a forked child can reset them (its copy of the
#: thread does not exist and may have held the sleeper's lock).
_with_sleepers: weakref.WeakSet[Watchdog] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for dog in list(_with_sleepers):
        dog._forget_after_fork()
    _with_sleepers.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
