"""Busy time by handler on the compiled path (``dashboard._accel.HandlerTimer``): what only it
does, beyond the tests every path runs (test_handlers_table, test_handlers_truth): the call it
makes is the handler's own (result, exception, arguments), its cache of names is keyed right
and forgotten at install, the recompiled loop keeps the line the timeouts probe reads, and
what it counts reads like the Python path's entries."""

from __future__ import annotations

import types
from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.base import ReactorBase
from twisted.internet.testing import MemoryReactorClock

from dashboard.probes.handler_source import CALL, with_timed_calls
from dashboard.probes.handler_table import BOUNDS_WITH_INF
from dashboard.probes.handlers import HandlerHooks
from dashboard.probes.timer_frames import _call_lines
from tests.accel_support import require_accelerator
from tests.test_handlers_table import FakeClock, never, poll

HERE = "tests.test_handlers_accel"


def compiled(record_error: Any = never) -> tuple[HandlerHooks, FakeClock]:
    require_accelerator()
    clock = FakeClock()
    hooks = HandlerHooks(MemoryReactorClock(), clock, record_error, accelerate=True)
    assert hooks.timer is not None
    return hooks, clock


def calls(hooks: HandlerHooks) -> dict[str, int]:
    return {r["handler"]: r["calls"] for r in hooks.table.section(close=False)["handlers"]}


def other() -> None:
    """Another handler of the program's."""


def takes(a: int, b: int = 0, *, c: int = 0) -> int:
    return a + b + c


class Boom(Exception):
    pass


def boom() -> None:
    raise Boom("the handler's own")


def test_the_call_is_the_handlers_own() -> None:
    hooks, _clock = compiled()
    timer = hooks.timer
    assert timer.call(takes, (1, 2), {"c": 3}) == 6
    assert timer.call(takes, [4], {}) == 4  # any iterable, as f(*args, **kwargs) takes
    assert timer.call(takes, (5,), types.MappingProxyType({"b": 1})) == 6
    with pytest.raises(Boom, match="the handler's own"):
        timer.call(boom, (), {})
    with pytest.raises(TypeError):
        timer.call(takes, (), {})  # the handler's wrong call, raised as Python raises it
    assert calls(hooks) == {f"{HERE}.takes": 4, f"{HERE}.boom": 1}


def test_durations_go_to_their_histogram_bucket() -> None:
    hooks, clock = compiled()
    for seconds in (0.00005, 0.0003, 0.02, 3.0):
        clock.script = [clock.now, clock.now + seconds]
        hooks.timer.call(poll, (), {})
    entry = hooks.table.by_name["tests.test_handlers_table.poll"]
    assert entry[0] == 4 and entry[1] == pytest.approx(3.02035)
    assert entry[2] == pytest.approx(3.0) and len(entry) == 7
    # bucket 0 is read as calls minus the rest (the first call was shorter than its bound)
    assert entry[4] == [0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1]
    assert len(entry[4]) == len(BOUNDS_WITH_INF)
    histogram = hooks.table.histogram("tests.test_handlers_table.poll")
    assert histogram is not None
    bounds, counts, total_s, count = histogram
    assert bounds == BOUNDS_WITH_INF and count == 4
    assert counts == [1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1]
    assert total_s == pytest.approx(3.02035)


def test_a_looping_call_is_cached_apart_from_its_function() -> None:
    """Keyed by the function's code, tagged: the LoopingCall and a plain call of the same
    function are two handlers, and two LoopingCalls of two functions are two more."""
    hooks, _clock = compiled()
    loops = [task.LoopingCall(poll), task.LoopingCall(other), task.LoopingCall(poll)]
    for _ in range(2):
        for loop in loops:
            hooks.timer.call(loop.f, (), {})  # what LoopingCall.__call__ would run
            hooks.timer.call(_named_as(loop), (), {})
    assert calls(hooks) == {
        "tests.test_handlers_table.poll": 4,
        f"{HERE}.other": 2,
        "tests.test_handlers_table.poll (LoopingCall)": 4,
        f"{HERE}.other (LoopingCall)": 2,
    }


def _named_as(loop: task.LoopingCall) -> task.LoopingCall:
    """A LoopingCall that does nothing when called, named by its function as the real one
    (a started LoopingCall reschedules itself)."""

    class Quiet(task.LoopingCall):
        def __call__(self) -> None:
            pass

    quiet = Quiet(loop.f)
    return quiet


def test_install_forgets_the_cached_entries() -> None:
    hooks, _clock = compiled()
    hooks.timer.call(poll, (), {})
    hooks.install()  # a new table: the cached entry is no longer in it
    try:
        hooks.timer.call(poll, (), {})
        assert calls(hooks) == {"tests.test_handlers_table.poll": 1}
    finally:
        hooks.uninstall()


def test_errors_of_the_accounting_are_reported_not_raised() -> None:
    errors: list[BaseException] = []
    hooks, _clock = compiled(errors.append)

    def bad_name(*args: object) -> tuple[object, bool]:
        raise RuntimeError("naming failed")

    timer = type(hooks.timer)(
        clock=None,
        name_call=bad_name,
        io_caches=({}, {}, {}),
        name_io=bad_name,
        record_error=errors.append,
        looping_call=task.LoopingCall,
        channel_proxy=type(None),
        bounds=BOUNDS_WITH_INF,
    )
    assert timer.call(takes, (1,), {}) == 1
    hook = timer.io_hook("asyncio", lambda s, r: "dispatched")
    assert hook(object(), True) == "dispatched"
    assert [str(e) for e in errors] == ["naming failed", "naming failed"]


def test_the_recompiled_loop_keeps_the_line_the_timeouts_probe_reads() -> None:
    """``_rd_call(*(f, a, kw))``: the call lines still hold the CALL_FUNCTION_EX that
    :mod:`dashboard.probes.timer_frames` looks for, on the same lines as Twisted's own."""
    hooks, clock = compiled()
    method = ReactorBase.runUntilCurrent
    made = with_timed_calls(method, clock, lambda f, t0: None, timed_call=hooks.timer.call)
    assert made is not None
    assert CALL in made.__code__.co_freevars
    assert _call_lines(made.__code__) == _call_lines(method.__code__)
    assert _call_lines(method.__code__) is not None
