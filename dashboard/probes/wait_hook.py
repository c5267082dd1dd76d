"""The per-iteration hook of the loop probe: a wrapper around the reactor's poller wait.

This is the pure-Python path; ``dashboard._accel.TimedWait`` is its compiled twin, used where
it is built: same bookkeeping and error handling (an Exception that ``record_error`` itself
raised is dropped there), no Python frame per iteration.

It runs on the reactor thread on every loop iteration, so it is generated with the exact
parameter list of the wait it wraps (``(timeout=None, maxevents=-1)`` for epoll,
``(timeout=None)`` for ``poll`` and selectors): forwarding ``*args, **kwargs`` costs about
40 ns more per call, a tenth of the whole budget. The defaults are the wrapped functions' own,
so calls with omitted or keyword arguments behave the same.

What it does per call (times in the reactor clock's seconds):

* before the wait: if the busy span that just ended (``now - pulse.tick``) reached the block
  threshold, ``end_block(now)``; then ``pulse.tick = +inf`` (the watchdog skips while waiting);
* after: ``pulse.tick = now``, ``pulse.spans += 1``, ``pulse.idle_s += waited``; and when the
  earliest pending delayed call is already due, its lateness goes into the lag histogram.
  The heap's top entry may be a cancelled or ``reset()``-later call that has just come due;
  ``runUntilCurrent`` removes those right after, so its lateness is as good a sample.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from dashboard.probes.lag_histogram import LagCounters
from dashboard.probes.watchdog import Pulse

#: Parameter lists of the waits we wrap: (parameters, arguments passed on).
SIGNATURES: dict[str, tuple[str, str]] = {
    "epoll.poll": ("timeout=None, maxevents=-1", "timeout, maxevents"),
    "timeout": ("timeout=None", "timeout"),
    "any": ("*args, **kwargs", "*args, **kwargs"),
}

_TEMPLATE = """
def make(wait, reactor, clock, pulse, lag, threshold_s, end_block, record_error):
    counts = lag.counts
    bounds = lag.bounds_s
    floor_s = bounds[0]
    waiting = math.inf
    has_heap = isinstance(getattr(reactor, "_pendingTimedCalls", None), list)

    def timed_wait({params}):
        t0 = clock()
        try:
            if t0 - pulse.tick >= threshold_s:
                end_block(t0)
        except Exception as exc:
            record_error(exc)
        pulse.tick = waiting
        try:
            return wait({args})
        finally:
            t1 = clock()
            pulse.tick = t1
            pulse.spans += 1
            pulse.idle_s += t1 - t0
            if has_heap:
                try:
                    heap = reactor._pendingTimedCalls
                    if heap:
                        late = t1 - heap[0].time
                        if late > 0.0:
                            counts[0 if late <= floor_s else bisect_left(bounds, late)] += 1
                            lag.sum_s += late
                            if late > lag.late_max_s:
                                lag.late_max_s = late
                except Exception as exc:
                    record_error(exc)

    return timed_wait
"""

_Factory = Callable[..., Callable[..., Any]]


def _compile(params: str, args: str) -> _Factory:
    namespace: dict[str, Any] = {"math": math, "bisect_left": bisect_left}
    code = compile(_TEMPLATE.format(params=params, args=args), "<timed_wait>", "exec")
    exec(code, namespace)
    factory: _Factory = namespace["make"]
    return factory


_FACTORIES: dict[str, _Factory] = {
    name: _compile(params, args) for name, (params, args) in SIGNATURES.items()
}


def timed_wait(
    signature: str,
    wait: Callable[..., Any],
    *,
    reactor: Any,
    clock: Callable[[], float],
    pulse: Pulse,
    lag: LagCounters,
    threshold_s: float,
    end_block: Callable[[float], None],
    record_error: Callable[[BaseException], None],
) -> Callable[..., Any]:
    """A wrapper of ``wait`` with the parameter list ``SIGNATURES[signature]``."""
    return _FACTORIES[signature](
        wait, reactor, clock, pulse, lag, threshold_s, end_block, record_error
    )
