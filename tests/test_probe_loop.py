# mypy: allow-untyped-calls
"""The loop probe.

Unit tests drive a fake reactor whose poller "waits" by advancing a ``Clock`` (exact busy
ratios, lateness and block durations); integration tests run on the reactor under test
(default or ``--reactor=asyncio``) and on PollReactor / SelectReactor instances iterated by hand.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import pytest
import pytest_twisted
from twisted.internet import defer, pollreactor, selectreactor
from twisted.internet.base import ReactorBase
from twisted.internet.task import Clock, deferLater

from dashboard import accel
from dashboard.probes.base import ProbeErrors
from dashboard.probes.loop import LoopProbe, between_work_codes
from dashboard.probes.watchdog import Watchdog, format_stack
from tests.accel_support import require_accelerator

_F = TypeVar("_F", bound=Callable[..., Any])

THIS_FILE = "test_probe_loop.py"


def async_test(func: _F) -> _F:
    """``pytest_twisted.ensureDeferred``, typed."""
    return cast(_F, pytest_twisted.ensureDeferred(func))


def the_reactor() -> Any:
    """The reactor under test (pytest-twisted's), typed loosely for mypy."""
    from twisted.internet import reactor

    return reactor


def watchdog_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "reactor-dashboard-watchdog"]


def busy_in_steps(
    reactor: Any, *, step_s: float, total_s: float
) -> tuple[defer.Deferred[None], list[int]]:
    """Keep the reactor busy for ``total_s`` in iterations of ``step_s`` of CPU each (a
    ``callLater(0)`` chain): a Deferred fired at the end, and the count of steps run."""
    done: defer.Deferred[None] = defer.Deferred()
    end = time.monotonic() + total_s
    steps = [0]

    def spin() -> None:
        steps[0] += 1
        until = time.monotonic() + step_s
        while time.monotonic() < until:
            pass
        if time.monotonic() < end:
            reactor.callLater(0, spin)
        else:
            done.callback(None)

    reactor.callLater(0, spin)
    return done, steps


def assert_json(section: Any) -> None:
    json.dumps(section, allow_nan=False)


# unit: a fake reactor driven by a Clock -------------------------------------------------


class Due:
    """A pending delayed call as the hook sees it (``time`` in clock seconds)."""

    def __init__(self, time: float) -> None:
        self.time = time


class FakePoller:
    """An epoll stand-in whose wait advances the clock by the timeout."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.registered: list[int] = []
        #: raised by the next poll (after its wait)
        self.error: BaseException | None = None

    def poll(self, timeout: float | None = None, maxevents: int = -1) -> list[tuple[int, int]]:
        self.clock.advance(timeout or 0.0)
        error, self.error = self.error, None
        if error is not None:
            raise error
        return [(7, 1)]

    def register(self, fd: int, mask: int) -> None:
        self.registered.append(fd)


class FakeReactor:
    def __init__(self) -> None:
        self.clock = Clock()
        self._poller: Any = FakePoller(self.clock)
        self._pendingTimedCalls: list[Any] = []

    def seconds(self) -> float:
        return self.clock.seconds()

    def busy(self, seconds: float) -> None:
        """Work on the reactor thread for ``seconds`` (clock time)."""
        self.clock.advance(seconds)

    def wait(self, seconds: float) -> Any:
        """One loop iteration's poller wait."""
        return self._poller.poll(seconds, -1)


@pytest.fixture
def fake() -> FakeReactor:
    return FakeReactor()


@pytest.fixture
def probe(fake: FakeReactor, errors: ProbeErrors, accelerate: bool) -> Iterator[LoopProbe]:
    p = LoopProbe(
        fake, errors, fake.seconds, block_threshold_ms=100, window_s=60, accelerate=accelerate
    )
    p.watchdog_enabled = False
    p.install()
    yield p
    p.uninstall()


def test_busy_ratio_and_iterations_are_exact(probe: LoopProbe, fake: FakeReactor) -> None:
    for _ in range(4):
        fake.busy(0.03)
        assert fake.wait(0.07) == [(7, 1)]  # the poller's answer passes through
    first = probe.collect()
    assert first["busy_ratio"] == pytest.approx(0.3)
    assert first["interval_s"] == pytest.approx(0.4)
    assert first["iterations_total"] == 4
    assert first["wait_hook"] == "_poller.poll"
    assert first["hot_path"] == ("compiled" if probe.accelerated else "python")
    fake.wait(1.0)
    idle = probe.collect()
    assert idle["busy_ratio"] == 0.0
    assert idle["iterations_total"] == 5
    fake.busy(0.05)  # no wait at all: fully busy
    assert probe.collect()["busy_ratio"] == 1.0
    fake._poller.register(5, 1)  # the rest of the poller is the real one
    assert fake._poller._real.registered == [5]


def test_lateness_of_due_calls(probe: LoopProbe, fake: FakeReactor) -> None:
    fake.wait(0.0)
    fake._pendingTimedCalls.append(Due(fake.seconds() + 0.5))
    fake.wait(0.75)  # wakes 250 ms after the call was due
    fake._pendingTimedCalls[0] = Due(fake.seconds() + 10)  # not due: no sample
    fake.wait(0.001)
    assert probe.max_lateness_ms() == pytest.approx(250.0)
    section = probe.collect()
    assert section["max_lateness_ms"] == pytest.approx(250.0)
    assert section["lag_ms"]["last"] == pytest.approx(250.0)
    assert section["lag_ms"]["max"] == pytest.approx(250.0)
    assert section["lag_ms"]["samples"] == 1
    assert section["blocks_total"] == 0
    # the interval is closed; the reading still covers it until something later
    assert probe.max_lateness_ms() == pytest.approx(250.0)
    fake.wait(0.001)
    assert probe.collect()["lag_ms"]["last"] == 0.0
    assert probe.max_lateness_ms() == 0.0


def test_percentiles_over_the_window(
    fake: FakeReactor, probe: LoopProbe, errors: ProbeErrors
) -> None:
    fake.wait(0.0)
    for _ in range(99):  # 99 samples 0.8 ms late, then one 500 ms late
        fake._pendingTimedCalls[:] = [Due(fake.seconds())]
        fake.wait(0.0008)
    fake._pendingTimedCalls[:] = [Due(fake.seconds())]
    fake.wait(0.5)
    fake._pendingTimedCalls.clear()
    lag = probe.collect()["lag_ms"]
    assert lag["samples"] == 100
    assert 0.5 <= lag["p50"] <= 1.0  # inside the (0.5, 1] ms bucket
    assert 0.5 <= lag["p99"] <= 1.0  # the 99th of 100 samples is still 0.8 ms
    assert lag["max"] == pytest.approx(500.0)
    # percentiles cover window_s (60 s): after it passes with nothing new, they are gone
    fake.wait(30)
    assert probe.collect()["lag_ms"]["max"] == pytest.approx(500.0)
    fake.wait(40)
    gone = probe.collect()["lag_ms"]
    assert (gone["samples"], gone["max"], gone["p50"], gone["p99"]) == (0, None, None, None)
    assert errors.counts == {}


def test_lag_histogram_is_cumulative_since_creation(probe: LoopProbe, fake: FakeReactor) -> None:
    fake.wait(0.0)
    for late in (0.00001, 0.003, 0.003, 2.5):
        fake._pendingTimedCalls[:] = [Due(fake.seconds())]
        fake.wait(late)
    probe.collect()  # collecting does not reset the Prometheus counts
    bounds, counts, total_s, count = probe.lag_histogram()
    assert bounds[-1] == float("inf") and len(bounds) == len(counts)
    assert count == 4 and counts[-1] == 4
    assert total_s == pytest.approx(2.50601)
    le = dict(zip(bounds, counts, strict=True))
    assert (le[0.00005], le[0.002], le[0.005], le[2.0], le[5.0]) == (1, 1, 3, 3, 4)
    assert counts == sorted(counts)


def test_a_block_is_recorded_with_the_stack_the_watchdog_caught(
    probe: LoopProbe, fake: FakeReactor
) -> None:
    watchdog = probe.watchdog
    assert watchdog is not None and not watchdog.running  # unit tests drive it by hand
    fake.wait(0.01)
    fake.busy(0.05)
    assert not watchdog.check()  # 50 ms: not yet a block
    fake.busy(0.1)
    assert watchdog.check()  # 150 ms: caught, with this thread's stack
    assert not watchdog.check()  # once per block
    fake.busy(0.1)
    start = fake.seconds() - 0.25
    fake.wait(0.01)  # the reactor comes back: the block ends
    assert not watchdog.check()  # a fresh busy span is not a block
    section = probe.collect()
    assert section["blocks_total"] == 1
    (block,) = section["blocks"]
    assert block["at"] == pytest.approx(start)
    assert block["duration_ms"] == pytest.approx(250.0)
    stack = block["stack"]
    assert any(f"{THIS_FILE}:" in s and "in test_a_block_is_recorded" in s for s in stack)
    assert "in check" in stack[-1]  # innermost last
    assert section["lag_ms"]["max"] == pytest.approx(250.0)
    assert section["busy_ratio"] == round(0.25 / 0.27, 4)


def test_spans_below_the_threshold_and_uncaught_blocks(probe: LoopProbe, fake: FakeReactor) -> None:
    fake.wait(0.01)
    for _ in range(3):
        fake.busy(0.099)
        fake.wait(0.001)
    assert probe.collect()["blocks_total"] == 0
    fake.busy(0.12)  # no watchdog look: still counted, without a stack
    fake.wait(0.0)
    section = probe.collect()
    assert section["blocks_total"] == 1
    assert section["blocks"][0]["stack"] == []
    assert section["blocks"][0]["duration_ms"] == pytest.approx(120.0)


def test_blocks_are_bounded(probe: LoopProbe, fake: FakeReactor) -> None:
    fake.wait(0.0)
    for _ in range(80):
        fake.busy(0.2)
        fake.wait(0.0)
    section = probe.collect()
    assert section["blocks_total"] == 80
    assert len(section["blocks"]) == 50
    assert_json(section)


def test_stack_depth_is_capped_innermost_kept() -> None:
    def deep(n: int) -> list[str]:
        return deep(n - 1) if n else format_stack(sys._getframe(), 40)

    stack = deep(60)
    assert len(stack) == 40
    assert all("in deep" in s for s in stack)
    assert f"{THIS_FILE}:" in stack[-1]


def test_a_reactor_without_a_wait_hook(errors: ProbeErrors) -> None:
    clock = Clock()
    p = LoopProbe(clock, errors, clock.seconds)
    p.install()
    try:
        assert watchdog_threads() == []
        clock.advance(1)
        section = p.collect()
    finally:
        p.uninstall()
    assert section["busy_ratio"] is None
    assert section["wait_hook"] is None
    assert section["watchdog"] is False
    assert section["iterations_total"] == 0
    assert section["lag_ms"] == {"last": 0.0, "p50": None, "p99": None, "max": None, "samples": 0}
    assert_json(section)


def test_faults_in_the_hook_are_counted_and_never_reach_the_reactor(
    fake: FakeReactor, errors: ProbeErrors, monkeypatch: pytest.MonkeyPatch, accelerate: bool
) -> None:
    class Broken:
        @property
        def time(self) -> float:
            raise RuntimeError("boom")

    p = LoopProbe(fake, errors, fake.seconds, accelerate=accelerate)
    p.watchdog_enabled = False

    def broken_end_block(now: float) -> None:
        raise ValueError("end_block")

    monkeypatch.setattr(p, "_end_block", broken_end_block)  # captured at install
    p.install()
    try:
        fake._pendingTimedCalls.append(Broken())
        assert fake.wait(0.01) == [(7, 1)]
        fake.busy(0.3)
        assert fake.wait(0.01) == [(7, 1)]
        section = p.collect()
    finally:
        p.uninstall()
    assert errors.counts == {"loop": 3}  # two broken peeks, one broken block record
    assert errors.last["loop"] == "RuntimeError: boom"
    assert section["iterations_total"] == 2


def test_watchdog_errors_are_counted_from_its_thread(errors: ProbeErrors) -> None:
    from dashboard.probes.watchdog import ReactorPulse

    pulse = ReactorPulse()
    pulse.tick = 0.0
    seen: list[BaseException] = []

    def bad_stack(frame: Any) -> list[str]:
        raise RuntimeError("stack")

    dog = Watchdog(
        pulse,
        thread_ident=threading.get_ident(),
        threshold_s=0.1,
        clock=lambda: 1.0,
        on_error=seen.append,
        interval_s=0.005,
        format_stack=bad_stack,
    )
    dog.start()
    try:
        deadline = time.monotonic() + 2
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        dog.stop()
    assert seen and isinstance(seen[0], RuntimeError)
    assert not dog.running and pulse.captured is None


def _spin_until(stop: threading.Event) -> None:
    while not stop.is_set():
        time.sleep(0.001)


@pytest.mark.parametrize("late", [True, False])
def test_a_stack_taken_back_in_the_loop_is_not_published(late: bool) -> None:
    """A watchdog scheduled after the blocking call returned finds the thread in the loop's own
    code: that stack names nothing of the block, so it is dropped and counted, never shown."""
    from dashboard.probes.watchdog import ReactorPulse

    stop = threading.Event()
    watched = threading.Thread(target=_spin_until, args=(stop,), daemon=True)
    watched.start()
    pulse = ReactorPulse()
    pulse.tick = 0.0
    assert watched.ident is not None
    dog = Watchdog(
        pulse,
        thread_ident=watched.ident,
        threshold_s=0.1,
        clock=lambda: 1.0,
        on_error=lambda exc: None,
        between_work=frozenset([_spin_until.__code__]) if late else frozenset(),
    )
    try:
        caught = dog.check()
        again = dog.check()  # the same span is not looked at twice
    finally:
        stop.set()
        watched.join(2)
    if late:
        assert (caught, again, dog.late_total, dog.captures_total) == (False, False, 1, 0)
        assert pulse.captured is None and dog.detail is None
    else:
        assert (caught, again, dog.late_total, dog.captures_total) == (True, False, 0, 1)
        assert pulse.captured is not None and pulse.captured[1][-1].endswith("in _spin_until")


# integration: the reactor under test ----------------------------------------------------


def _wait_hook_target(reactor: Any) -> tuple[Any, str]:
    loop = getattr(reactor, "_asyncioEventloop", None)
    if loop is not None:
        return loop._selector, "select"
    return reactor, "_poller"


@async_test
async def test_the_loop_code_around_callbacks_is_known_on_the_real_reactor() -> None:
    """Every delayed call runs under one of the reactor's loop frames that mark a stack as
    taken too late, and its own code is not one of them."""
    reactor = the_reactor()
    codes = between_work_codes(reactor)
    seen: list[list[bool]] = []

    def callback() -> None:
        frame = sys._getframe()
        marks = []
        while frame is not None:
            marks.append(frame.f_code in codes)
            frame = frame.f_back  # type: ignore[assignment]
        seen.append(marks)

    await deferLater(reactor, 0.01, callback)
    (marks,) = seen
    assert marks[0] is False and any(marks[1:])
    assert len(codes) >= 3


@async_test
async def test_a_200ms_block_on_the_real_reactor(errors: ProbeErrors, accelerate: bool) -> None:
    reactor = the_reactor()

    probe = LoopProbe(reactor, errors, reactor.seconds, accelerate=accelerate)
    probe.install()
    try:
        await deferLater(reactor, 0.05, lambda: None)  # the first wait has happened
        before = probe.collect()

        def block_the_reactor() -> str:
            time.sleep(0.2)
            return "done"

        assert await deferLater(reactor, 0.01, block_the_reactor) == "done"
        await deferLater(reactor, 0.05, lambda: None)
        after = probe.collect()
    finally:
        probe.uninstall()
    assert after["blocks_total"] - before["blocks_total"] == 1
    block = after["blocks"][-1]
    assert 180 <= block["duration_ms"] <= 400
    assert any(f"{THIS_FILE}:" in s and "in block_the_reactor" in s for s in block["stack"])
    assert "in block_the_reactor" in block["stack"][-1]  # the blocking frame is the innermost
    assert abs(block["at"] - (time.time() - 0.05 - block["duration_ms"] / 1000)) < 1.0
    assert after["lag_ms"]["max"] >= 150
    assert after["iterations_total"] > before["iterations_total"]
    assert after["watchdog"] is True
    assert errors.counts == {}
    assert_json(after)


@async_test
async def test_busy_ratio_busy_then_idle(errors: ProbeErrors, accelerate: bool) -> None:
    reactor = the_reactor()

    probe = LoopProbe(reactor, errors, reactor.seconds, accelerate=accelerate)
    probe.install()
    try:
        await deferLater(reactor, 0.01, lambda: None)
        probe.collect()
        before = probe.collect()["iterations_total"]
        done, steps = busy_in_steps(reactor, step_s=0.005, total_s=0.4)
        await done
        busy = probe.collect()
        await deferLater(reactor, 0.4, lambda: None)
        idle = probe.collect()
    finally:
        probe.uninstall()
    assert busy["busy_ratio"] >= 0.9
    assert busy["iterations_total"] - before >= steps[0]  # one wait per callLater(0) step
    assert idle["busy_ratio"] <= 0.1
    assert busy["blocks_total"] == 0  # 5 ms steps are not blocks


def test_install_uninstall_restores_by_identity_and_100_cycles(
    errors: ProbeErrors, accelerate: bool
) -> None:
    reactor = the_reactor()

    owner, name = _wait_hook_target(reactor)
    before = vars(owner).get(name, "<absent>")
    threads_before = len(watchdog_threads())
    probe = LoopProbe(reactor, errors, reactor.seconds, accelerate=accelerate)
    for _ in range(100):
        probe.install()
        assert vars(owner)[name] is not before
        assert probe.watchdog is not None and probe.watchdog.running
        probe.uninstall()
        assert vars(owner).get(name, "<absent>") is before
    assert len(watchdog_threads()) == threads_before == 0
    probe.uninstall()  # twice is harmless
    assert errors.counts == {}


@async_test
async def test_a_failing_hook_leaves_the_user_code_alone(
    errors: ProbeErrors, monkeypatch: pytest.MonkeyPatch, accelerate: bool
) -> None:
    reactor = the_reactor()

    probe = LoopProbe(reactor, errors, reactor.seconds, accelerate=accelerate)

    def broken(now: float) -> None:
        raise RuntimeError("bookkeeping failed")

    monkeypatch.setattr(probe, "_end_block", broken)
    probe.install()
    try:
        await deferLater(reactor, 0.01, lambda: None)

        def slow() -> int:
            time.sleep(0.15)
            return 42

        assert await deferLater(reactor, 0.0, slow) == 42
        assert await deferLater(reactor, 0.01, lambda: "next") == "next"
        section = probe.collect()
    finally:
        probe.uninstall()
    assert errors.counts == {"loop": 1}
    assert section["blocks_total"] == 0


# other reactors, iterated by hand -------------------------------------------------------


def _dispose(r: Any) -> None:
    """Close the file descriptors of a reactor instance that never ran."""
    waker = r.waker
    r.removeReader(waker)
    waker.connectionLost(None)
    poller: Any = getattr(r, "_poller", None)
    if hasattr(poller, "close"):
        poller.close()


@pytest.mark.parametrize(
    ("make", "owner", "name", "hook"),
    [
        (pollreactor.PollReactor, None, "_poller", "_poller.poll"),
        (selectreactor.SelectReactor, selectreactor, "_select", "selectreactor._select"),
    ],
    ids=["poll", "select"],
)
def test_poll_and_select_reactor_instances(
    make: Callable[[], ReactorBase],
    owner: Any,
    name: str,
    hook: str,
    errors: ProbeErrors,
    accelerate: bool,
) -> None:
    r = make()
    try:
        target = r if owner is None else owner
        before = vars(target).get(name)
        probe = LoopProbe(r, errors, r.seconds, accelerate=accelerate)
        probe.install()
        try:
            assert probe.wait_hook == hook
            r.iterate(0)
            probe.collect()
            results: list[str] = []

            def sleeper() -> None:
                time.sleep(0.2)
                results.append("slept")

            r.callLater(0, sleeper)
            r.iterate(0)  # runs sleeper, then waits: the block ends
            r.iterate(0)
            section = probe.collect()
        finally:
            probe.uninstall()
        assert vars(target).get(name) is before
        assert results == ["slept"]
        assert section["iterations_total"] == 3
        assert section["blocks_total"] == 1
        block = section["blocks"][0]
        assert 180 <= block["duration_ms"] <= 400
        assert "in sleeper" in block["stack"][-1]
        assert section["busy_ratio"] >= 0.9
        assert errors.counts == {}
    finally:
        _dispose(r)


def test_the_timed_wait_keeps_the_wrapped_signature(accelerate: bool) -> None:
    """Keyword and omitted arguments reach the real wait unchanged."""
    seen: list[tuple[Any, ...]] = []

    class Poller:
        def poll(self, timeout: float | None = None, maxevents: int = -1) -> str:
            seen.append((timeout, maxevents))
            return "ok"

    class R:
        def __init__(self) -> None:
            self._poller: Any = Poller()

        seconds = staticmethod(time.time)

    r = R()
    p = LoopProbe(r, ProbeErrors(), r.seconds, accelerate=accelerate)
    p.watchdog_enabled = False
    p.install()
    try:
        assert r._poller.poll() == "ok"
        assert r._poller.poll(0.0, maxevents=3) == "ok"
        assert r._poller.poll(timeout=0.0) == "ok"
    finally:
        p.uninstall()
    assert seen == [(None, -1), (0.0, 3), (0.0, -1)]


def test_errors_of_the_wait_pass_through_and_the_iteration_counts(
    fake: FakeReactor, errors: ProbeErrors, accelerate: bool
) -> None:
    """The wait's own exception reaches the reactor unchanged, after the bookkeeping."""
    poller = fake._poller
    p = LoopProbe(fake, errors, fake.seconds, accelerate=accelerate)
    p.watchdog_enabled = False
    p.install()
    try:
        failure = InterruptedError("EINTR")
        poller.error = failure
        with pytest.raises(InterruptedError) as raised:
            fake.wait(0.25)
        assert raised.value is failure
        assert p.pulse.spans == 1 and p.pulse.tick == 0.25
        assert p.collect()["busy_ratio"] == 0.0  # the 0.25 s inside the wait were idle
        assert fake.wait(0.0) == [(7, 1)]
        assert p.pulse.spans == 2
    finally:
        p.uninstall()
    assert errors.counts == {}


def test_a_keyboard_interrupt_in_the_probe_propagates(
    fake: FakeReactor, errors: ProbeErrors, monkeypatch: pytest.MonkeyPatch, accelerate: bool
) -> None:
    p = LoopProbe(fake, errors, fake.seconds, accelerate=accelerate)
    p.watchdog_enabled = False

    def interrupted(now: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(p, "_end_block", interrupted)  # captured at install
    p.install()
    try:
        fake.wait(0.01)
        fake.busy(0.3)
        with pytest.raises(KeyboardInterrupt):
            fake.wait(0.01)
    finally:
        p.uninstall()
    assert errors.counts == {}


@async_test
async def test_a_busy_healthy_reactor_and_the_watchdogs_looks(
    errors: ProbeErrors, accelerate: bool
) -> None:
    """The compiled watchdog waits without the GIL: while the reactor is busy in iterations
    below the threshold it never takes the GIL to look; the Python one looks about every
    threshold. Both catch the block that follows, with its stack.

    (Iterations of 20 ms: with the GIL released more often than every 5 ms, the switch
    interval, a Python thread that wants the GIL can starve for as long as that lasts, while
    every release wakes it for nothing: the cost the compiled wait removes.)"""
    reactor = the_reactor()
    probe = LoopProbe(reactor, errors, reactor.seconds, accelerate=accelerate)
    probe.install()
    try:
        watchdog = probe.watchdog
        assert watchdog is not None and watchdog.compiled is accelerate
        await deferLater(reactor, 0.01, lambda: None)
        looks_before = watchdog.looks_total
        done, _ = busy_in_steps(reactor, step_s=0.02, total_s=0.6)
        await done
        looks_busy = watchdog.looks_total - looks_before

        def block_here() -> None:
            time.sleep(0.15)

        await deferLater(reactor, 0.0, block_here)
        await deferLater(reactor, 0.01, lambda: None)
        section = probe.collect()
    finally:
        probe.uninstall()
    if accelerate:
        assert looks_busy == 0
    else:
        assert looks_busy >= 3  # about 6 in 0.6 s
    assert section["blocks_total"] == 1
    assert "in block_here" in section["blocks"][0]["stack"][-1]
    assert watchdog.captures_total == 1
    assert errors.counts == {}


def test_the_compiled_pulse_waits_for_a_long_span_and_is_interrupted() -> None:
    pulse = require_accelerator().Pulse()
    assert pulse.tick == math.inf and pulse.spans == 0 and pulse.captured is None
    generation = pulse.generation
    pulse.tick = time.time() - 0.05  # a busy span 50 ms old
    started = time.monotonic()
    assert pulse.wait_busy(0.1, math.nan, 0.005, generation) == pulse.tick
    assert 0.04 <= time.monotonic() - started < 1.0  # slept until it reached 100 ms

    # the span looked at is not returned again; a waiting reactor (tick +inf) is not busy
    for tick in (pulse.tick, math.inf):
        pulse.tick = tick
        stopper = threading.Timer(0.2, pulse.interrupt)
        stopper.start()
        started = time.monotonic()
        assert pulse.wait_busy(0.1, pulse.tick, 0.005, generation) is None
        assert 0.15 <= time.monotonic() - started < 1.0
        generation = pulse.generation
    assert pulse.wait_busy(0.1, math.nan, 0.005, generation - 1) is None  # stale: at once
    with pytest.raises(ValueError, match="threshold_s"):
        pulse.wait_busy(0.0, math.nan, 0.005, generation)


def test_a_failed_look_is_tried_again(accelerate: bool) -> None:
    """A look that raised (here: the stack formatter, once) is counted and the same busy span
    is looked at again after a threshold, on both paths."""
    from dashboard.probes.watchdog import ReactorPulse

    pulse: Any = accel.built.Pulse() if accelerate and accel.built else ReactorPulse()
    pulse.tick = time.time()  # busy from now on, never waiting
    calls: list[int] = []

    def flaky_stack(frame: Any) -> list[str]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first look fails")
        return ["app.py:7 in stuck"]

    seen: list[BaseException] = []
    dog = Watchdog(
        pulse,
        thread_ident=threading.get_ident(),
        threshold_s=0.05,
        clock=time.time,
        on_error=seen.append,
        interval_s=0.0,  # the compiled wait sleeps at least 1 ms all the same
        format_stack=flaky_stack,
    )
    assert dog.compiled is accelerate
    dog.start()
    try:
        deadline = time.monotonic() + 3
        while dog.captures_total == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        dog.stop()
    assert [str(e) for e in seen] == ["first look fails"]
    assert dog.captures_total == 1 and len(calls) == 2
    assert pulse.captured == (pulse.tick, ["app.py:7 in stuck"])
    assert not dog.running


def test_a_compiled_timed_wait_is_initialised_once(errors: ProbeErrors) -> None:
    require_accelerator()
    assert accel.built is not None
    fake = FakeReactor()
    p = LoopProbe(fake, errors, fake.seconds, accelerate=True)
    p.watchdog_enabled = False
    p.install()
    try:
        hook: Any = fake._poller.poll
        assert isinstance(hook, accel.built.TimedWait)
        with pytest.raises(TypeError, match="already initialised"):
            hook.__init__(
                wait=print,
                clock=time.time,
                pulse=accel.built.Pulse(),
                reactor=fake,
                has_heap=False,
                lag=p.lag,
                threshold_s=0.1,
                end_block=print,
                record_error=print,
            )
        assert fake.wait(0.5) == [(7, 1)]
        assert p.pulse.spans == 1 and p.pulse.idle_s == 0.5
    finally:
        p.uninstall()


def test_a_keyboard_interrupt_while_recording_an_error_propagates(
    fake: FakeReactor, accelerate: bool
) -> None:
    class Interrupting(ProbeErrors):
        def record(self, probe: str, exc: BaseException) -> None:
            raise KeyboardInterrupt

    p = LoopProbe(fake, Interrupting(), fake.seconds, accelerate=accelerate)
    p.watchdog_enabled = False
    p.install()
    try:
        fake._pendingTimedCalls.append(object())  # no .time: the peek fails, is recorded
        with pytest.raises(KeyboardInterrupt):
            fake.wait(0.01)
    finally:
        p.uninstall()
