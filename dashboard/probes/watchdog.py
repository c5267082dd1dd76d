"""The reactor's pulse (state written by the loop hooks) and the watchdog thread that reads it
to capture the main thread's stack while the reactor is blocked."""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import TYPE_CHECKING, TypeAlias

from dashboard.probes.base import frame_site

if TYPE_CHECKING:
    from dashboard._accel import Pulse as CompiledPulse

#: Deepest stack kept for a block (the innermost frames are kept).
MAX_STACK_DEPTH = 40


class ReactorPulse:
    """Hot state shared by the loop hooks (reactor thread, writes) and the watchdog (reads).

    Times are the reactor clock's seconds (``reactor.seconds``). A *busy span* is the stretch
    between leaving the poller wait and entering it again; ``tick`` is when the current one began
    and identifies it. Single attribute reads and writes are atomic under the GIL, so no lock.
    """

    __slots__ = ("busy_max_s", "captured", "idle_s", "spans", "tick")

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


#: Names a captured stack by its innermost frame: ``(where, owner)``.
Judge: TypeAlias = Callable[[FrameType | None], tuple[str | None, str]]

#: The pure-Python pulse or its compiled twin (``dashboard._accel.Pulse``: the same fields in C,
#: plus ``wait_busy``/``interrupt``, with which the watchdog waits without the GIL).
Pulse: TypeAlias = "ReactorPulse | CompiledPulse"


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

    It does not poll at a fixed rate: each wake of a Python thread costs the busy reactor a
    GIL hand-over (measured: a thread that only woke 10 times a second took 1.1% of a Klein
    server's throughput under wrk, 1.9% at 50). It sleeps until the current busy span would
    reach the threshold (``tick + threshold_s``), or a whole ``threshold_s`` while the reactor
    waits, but never less than ``interval_s``. So it wakes about ``1 / threshold_s`` times a
    second and still catches a block right at the threshold. With the compiled pulse and the
    wall clock (``time.time``, every real reactor's), those sleeps and looks happen in C
    without the GIL (``Pulse.wait_busy``): the thread takes the GIL only for a busy span that
    reached the threshold, so a healthy reactor never hands it over. (``wait_busy`` reads the
    real clock; with ``time.time`` patched in place, as time_machine does, its guesses are
    off and ``check()``, which reads the patched clock, has the last word.)

    ``on_error`` is called (from the watchdog thread) with any exception of a check.
    ``start()``/``stop()`` are called from the reactor thread.

    ``judge(frame)`` names a captured stack's ``(where, owner)`` (see
    :mod:`dashboard.probes.stack_owner`); ``detail`` holds ``(tick, where, owner)`` of the
    latest capture, set before ``pulse.captured``. A failing judge is reported to ``on_error``
    and the stack is still published, named by its innermost frame.

    ``on_stuck(tick)`` (optional, set any time) is called from the watchdog thread right
    after a capture, with the busy span's ``tick``: the loop is stuck past the threshold now.
    It must return at once (start a thread, set an event); its failures go to ``on_error``.
    Nothing else calls it, so it costs nothing while the loop runs.

    ``between_work``: code objects of the reactor's own loop (its ``mainLoop``, its wait's
    caller, asyncio's ``_run_once``). A stack whose innermost frame runs one of them was taken
    after the blocking call had returned (the thread was scheduled late, as on a loaded
    machine): it shows nothing of what blocked, so it is not published (``late_total``) and
    the block is recorded without a stack rather than named by the loop's caller.
    """

    def __init__(
        self,
        pulse: Pulse,
        *,
        thread_ident: int,
        threshold_s: float,
        clock: Callable[[], float],
        on_error: Callable[[BaseException], None],
        interval_s: float = 0.005,
        format_stack: Callable[[FrameType | None], list[str]] = format_stack,
        judge: Judge | None = None,
        between_work: frozenset[CodeType] = frozenset(),
    ) -> None:
        self.pulse = pulse
        self.thread_ident = thread_ident
        self.threshold_s = threshold_s
        self.interval_s = interval_s
        self.clock = clock
        self.format_stack = format_stack
        self.judge = judge
        self.between_work = between_work
        #: told ``tick`` after each capture (see the class docstring)
        self.on_stuck: Callable[[float], None] | None = None
        #: ``(tick, where, owner)`` of the latest capture
        self.detail: tuple[float, str | None, str] | None = None
        self._on_error = on_error
        self._caught_tick = math.inf
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        #: stacks captured since creation (read by tests and collect)
        self.captures_total = 0
        #: looks taken with the GIL (``check()`` calls of the thread) since creation
        self.looks_total = 0
        #: blocks whose only stack was taken after the blocking call returned (not published)
        self.late_total = 0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def compiled(self) -> bool:
        """Whether the thread waits in C without the GIL (compiled pulse, wall clock)."""
        return self._compiled_pulse() is not None

    def _compiled_pulse(self) -> CompiledPulse | None:
        pulse = self.pulse
        if isinstance(pulse, ReactorPulse) or self.clock is not time.time:
            return None
        return pulse

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        compiled = self._compiled_pulse()
        if compiled is not None:
            # the generation is read before the thread starts: stop() ends its waits, even
            # one that has not begun yet
            thread = threading.Thread(
                target=self._run_compiled, args=(compiled, compiled.generation)
            )
        else:
            thread = threading.Thread(target=self._run)
        thread.name = "reactor-dashboard-watchdog"
        thread.daemon = True
        self._thread = thread
        thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Ask the thread to end and join it (at most ``timeout_s``)."""
        thread, self._thread = self._thread, None
        self._stopping.set()
        if not isinstance(self.pulse, ReactorPulse):
            self.pulse.interrupt()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def _run(self) -> None:
        delay = self.threshold_s
        while not self._stopping.wait(delay):
            try:
                self.looks_total += 1
                self.check()
                delay = self.next_delay()
            except Exception as exc:
                self._on_error(exc)
                delay = self.threshold_s

    def _run_compiled(self, pulse: CompiledPulse, generation: int) -> None:
        wait_busy = pulse.wait_busy
        min_sleep_s = max(self.interval_s, 0.001)
        looked = math.nan  # the span last looked at: never returned twice
        while True:
            try:
                tick = wait_busy(self.threshold_s, looked, min_sleep_s, generation)
                if tick is None:
                    return  # stop()
                self.looks_total += 1
                self.check()
                looked = tick  # after a look that failed, the span is looked at again
            except Exception as exc:
                self._on_error(exc)
                if self._stopping.wait(self.threshold_s):
                    return

    def _judge(self, frame: FrameType | None, stack: list[str]) -> tuple[str | None, str]:
        judge = self.judge
        if judge is not None:
            try:
                return judge(frame)
            except Exception as exc:
                self._on_error(exc)
        return (stack[-1] if stack else None), "program"

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
        if frame is not None and frame.f_code in self.between_work:
            del frame
            if pulse.tick == tick:
                self._caught_tick = tick  # caught too late; this span is not looked at again
                self.late_total += 1
            return False
        try:
            stack = self.format_stack(frame)
            where, owner = self._judge(frame, stack)
        finally:
            del frame  # never keep the watched thread's frames alive
        if pulse.tick != tick:
            return False  # the block ended while we looked: the stack would be of something else
        self._caught_tick = tick
        self.detail = (tick, where, owner)
        pulse.captured = (tick, stack)
        self.captures_total += 1
        on_stuck = self.on_stuck
        if on_stuck is not None:
            try:
                on_stuck(tick)
            except Exception as exc:
                self._on_error(exc)
        return True

    def look_now(self) -> tuple[float, list[str], str | None, str] | None:
        """The busy span stuck past the threshold now, looked at now: ``(tick, stack, where,
        owner)`` with the watched thread's stack as it is at this moment; ``None`` while the
        loop runs (waiting, or busy for less than the threshold) or when the span ended while
        this looked. Any thread; the same frames rules as :meth:`check`, nothing published."""
        tick = self.pulse.tick
        if self.clock() - tick < self.threshold_s:
            return None
        frame = sys._current_frames().get(self.thread_ident)
        try:
            if frame is not None and frame.f_code in self.between_work:
                return None  # back in the reactor's own loop: the span is ending
            stack = self.format_stack(frame)
            where, owner = self._judge(frame, stack)
        finally:
            del frame
        if self.pulse.tick != tick:
            return None
        return tick, stack, where, owner
