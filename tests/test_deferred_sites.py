"""Sites a user recognises (issue 13, point 5): never inside Twisted's Deferred machinery; an
``inlineCallbacks`` function used as a callback is sited at that function; a LoopingCall's
Deferred is named by the function it loops, kept out of ``oldest`` and shown under ``loops``.
Both hot paths, both ways of counting a first firing, a Clock for time."""

from __future__ import annotations

import functools
import gc
import sys
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any, cast

import attrs
import pytest
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock

from dashboard.probes import deferreds
from dashboard.probes.base import ProbeErrors
from dashboard.probes.deferreds import DeferredsProbe

DEFER_FILE = "twisted/internet/defer.py"
TASK_FILE = "twisted/internet/task.py"


def label(func: Any, line: int | None = None) -> str:
    """The site label of ``func`` (its first line, or ``line``)."""
    code = func.__code__
    return f"{code.co_filename}:{line or code.co_firstlineno} in {code.co_qualname}"


def looping(function: Callable[[], object], clock: Clock) -> task.LoopingCall:
    """A LoopingCall of ``function`` on ``clock``."""
    loop = task.LoopingCall(function)
    loop.clock = cast(IReactorTime, clock)
    return loop


def here(offset: int = 0) -> str:
    frame = sys._getframe(1)
    return f"{frame.f_code.co_filename}:{frame.f_lineno + offset} in {frame.f_code.co_qualname}"


@pytest.fixture(params=["recompiled", "wrapper"])
def fire_hook(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of counting a first firing: Twisted's method recompiled, or a hook around it
    (where its source is not at hand)."""
    if request.param == "wrapper":
        monkeypatch.setattr(deferreds, "with_first_fire", lambda *_: None)
    kind: str = request.param
    return kind


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def probe(
    clock: Clock, errors: ProbeErrors, accelerate: bool, fire_hook: str
) -> Iterator[DeferredsProbe]:
    p = DeferredsProbe(clock, errors, clock.seconds, accelerate=accelerate)
    p.install()
    assert p.fire_hook == fire_hook
    yield p
    p.uninstall()
    assert errors.counts == {}


def rows(section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["site"]: row for row in section["sites"]}


def assert_exact(section: dict[str, Any]) -> None:
    """created = fired + pending + lost, per site."""
    for row in section["sites"]:
        assert row["created_total"] == (
            row["fired_total"] + row["pending"] + row["unfired_collected_total"]
        ), row


never: defer.Deferred[None] = defer.Deferred()


@defer.inlineCallbacks
def handler(result: object) -> Generator[defer.Deferred[None], None, None]:
    yield never


class Service:
    @defer.inlineCallbacks
    def on_event(self, result: object) -> Generator[defer.Deferred[None], None, None]:
        yield never


async def awaits_forever() -> None:
    await never


def test_an_inlinecallbacks_callback_is_sited_at_its_function(
    probe: DeferredsProbe, clock: Clock
) -> None:
    """Fired by Twisted's own code (a delayed call): the first frame outside Twisted's Deferred
    module would be the Clock, which tells the user nothing; the function is what waits."""
    d = defer.Deferred[None]()
    d.addCallback(handler)
    d2 = defer.Deferred[None]()
    d2.addCallback(Service().on_event)
    clock.callLater(1, d.callback, None)
    clock.callLater(1, d2.callback, None)
    clock.advance(1)
    section = probe.collect()
    sites = rows(section)
    assert sites[label(handler.__wrapped__)]["pending"] == 1  # type: ignore[attr-defined]
    assert sites[label(Service.on_event.__wrapped__)]["pending"] == 1  # type: ignore[attr-defined]
    assert not [s for s in sites if DEFER_FILE in s or TASK_FILE in s]
    assert_exact(section)


def test_fired_by_the_users_own_call_it_is_still_the_function(probe: DeferredsProbe) -> None:
    d = defer.Deferred[None]()
    d.addCallback(handler)
    d.callback(None)
    sites = rows(probe.collect())
    assert sites[label(handler.__wrapped__)]["pending"] == 1  # type: ignore[attr-defined]
    assert not [s for s in sites if DEFER_FILE in s]


def test_coroutines_and_direct_calls_keep_the_callers_line(probe: DeferredsProbe) -> None:
    d = defer.Deferred[None]()
    coroutine_site = here(1)
    d.addCallback(lambda _: defer.ensureDeferred(awaits_forever()))
    d2 = defer.Deferred[None]()
    from_coroutine_site = here(1)
    d2.addCallback(lambda _: defer.Deferred.fromCoroutine(awaits_forever()))
    d.callback(None)
    d2.callback(None)
    direct_site = here(1)
    held = handler(None)  # called by the user: the caller's line, as before
    sites = rows(probe.collect())
    assert sites[coroutine_site + ".<locals>.<lambda>"]["pending"] == 1
    assert sites[from_coroutine_site + ".<locals>.<lambda>"]["pending"] == 1
    assert sites[direct_site]["pending"] == 1
    assert not [s for s in sites if DEFER_FILE in s]
    del held


def poll() -> None:
    """A looped function."""


class Poller:
    def check(self) -> None:
        pass


@contextmanager
def installed(
    clock: Clock, errors: ProbeErrors, accelerate: bool, **options: Any
) -> Iterator[DeferredsProbe]:
    """A probe installed inside the test itself, so that the Deferreds the test runner keeps
    pending for the test (pytest-twisted's) are not among what it counts."""
    probe = DeferredsProbe(clock, errors, clock.seconds, accelerate=accelerate, **options)
    probe.install()
    try:
        yield probe
    finally:
        probe.uninstall()
    assert errors.counts == {}


def test_a_looping_calls_deferred_is_named_by_its_function_and_kept_apart(
    clock: Clock, errors: ProbeErrors, accelerate: bool, fire_hook: str
) -> None:
    with installed(clock, errors, accelerate) as probe:
        assert probe.fire_hook == fire_hook
        loops_named_by_their_functions(probe, clock)


def loops_named_by_their_functions(probe: DeferredsProbe, clock: Clock) -> None:
    loops = []
    for _ in range(3):
        lc = looping(Poller().check, clock)
        lc.start(1.0)
        loops.append(lc)
    single = looping(poll, clock)
    single.start(5.0, now=False)
    clock.advance(0.1)  # the sweep promotes them
    clock.advance(9.9)
    waiting_site = here(1)
    waiting = defer.Deferred[None]()
    clock.advance(0.1)
    clock.advance(1.9)
    section = probe.collect()
    sites = rows(section)
    check_site = label(Poller.check) + " (LoopingCall)"
    poll_site = label(poll) + " (LoopingCall)"
    assert sites[check_site]["pending"] == 3
    assert sites[poll_site]["pending"] == 1
    assert not [s for s in sites if TASK_FILE in s]
    assert section["loops"]["pending"] == 4
    items = section["loops"]["items"]
    assert [(i["function"], i["pending"]) for i in items] == [
        (f"{__name__}.Poller.check", 3),
        (f"{__name__}.poll", 1),
    ]
    assert items[0]["oldest_age_s"] == pytest.approx(12.0, abs=0.11)
    # kept out of the oldest: the plain Deferred made 2 s ago is the oldest pending one
    assert [o["site"] for o in section["oldest"]] == [waiting_site]
    assert section["oldest_pending_age_s"] == pytest.approx(2.0, abs=0.11)
    assert section["pending"] == 5
    # stopped: fired at the function's site, counts exact
    loops[0].stop()
    single.stop()
    section = probe.collect()
    sites = rows(section)
    assert (sites[check_site]["created_total"], sites[check_site]["fired_total"]) == (3, 1)
    assert poll_site not in sites  # nothing pending there any more
    assert section["loops"]["pending"] == 2
    assert_exact(section)
    waiting.callback(None)
    for lc in loops[1:]:
        lc.stop()
    assert probe.collect()["loops"] == {"pending": 0, "items": []}


def wrapped_looping(function: Callable[[], object]) -> Callable[[], object]:
    """Synapse's ``Clock.looping_call``, reduced: every periodic function runs through one
    closure (one code object), made with ``functools.wraps``."""

    @functools.wraps(function)
    def wrapped_f() -> object:
        return function()

    return wrapped_f


def prune() -> None:
    """Another looped function."""


def test_loops_through_one_wrapper_are_named_by_what_they_wrap(
    clock: Clock, errors: ProbeErrors, accelerate: bool
) -> None:
    with installed(clock, errors, accelerate) as probe:
        started = [looping(wrapped_looping(f), clock) for f in (poll, prune, prune)]
        for lc in started:
            lc.start(1.0)
        clock.advance(0.1)
        section = probe.collect()
        items = [(i["function"], i["pending"]) for i in section["loops"]["items"]]
        assert sorted(items) == [(f"{__name__}.poll", 1), (f"{__name__}.prune", 2)]
        sites = rows(section)
        assert sites[label(prune) + " (LoopingCall)"]["pending"] == 2
        assert not [s for s in sites if "wrapped_f" in s]
        for lc in started:
            lc.stop()


def test_a_loop_deferred_promoted_or_fired_during_start_moves_exactly(
    clock: Clock, errors: ProbeErrors, accelerate: bool
) -> None:
    """The first call runs inside ``start()``: it may fill the nursery (a sweep promotes the
    loop's Deferred before it is moved) or stop the loop (fired before it is moved)."""
    kept: list[defer.Deferred[None]] = []
    with installed(clock, errors, accelerate, nursery_limit=8) as probe:

        def busy() -> None:
            kept.extend(defer.Deferred[None]() for _ in range(20))

        busy_loop = looping(busy, clock)
        busy_loop.start(1.0)

        def once() -> None:
            once_loop.stop()

        once_loop = looping(once, clock)
        once_loop.start(1.0)
        clock.advance(3)
        section = probe.collect()
        sites = rows(section)
        busy_site = sites[label(busy) + " (LoopingCall)"]
        assert (busy_site["pending"], busy_site["created_total"]) == (1, 1)
        assert busy_site["oldest_age_s"] == pytest.approx(3.0, abs=0.11)
        assert section["loops"]["pending"] == 1
        assert not [s for s in sites if TASK_FILE in s]
        assert section["pending"] == 1 + len(kept)
        assert_exact(section)
        busy_loop.stop()
        section = probe.collect()
        assert section["loops"]["pending"] == 0
        assert section["pending"] == len(kept)


def test_uninstall_restores_looping_call_start(clock: Clock, errors: ProbeErrors) -> None:
    original = vars(task.LoopingCall)["start"]
    probe = DeferredsProbe(clock, errors, clock.seconds)
    probe.install()
    assert vars(task.LoopingCall)["start"] is not original
    probe.uninstall()
    assert vars(task.LoopingCall)["start"] is original


def test_a_failing_resite_never_breaks_the_loop(
    probe: DeferredsProbe, clock: Clock, errors: ProbeErrors, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> Any:
        raise RuntimeError("probe bug")

    monkeypatch.setattr(probe, "_loop_site", broken)
    lc = looping(poll, clock)
    d = lc.start(1.0)
    clock.advance(2)
    lc.stop()
    assert d.called
    assert errors.counts == {"deferreds": 1}
    errors.counts.clear()


def test_whereabouts(probe: DeferredsProbe, clock: Clock, errors: ProbeErrors) -> None:
    young_site = here(1)
    young = defer.Deferred[None]()
    assert probe.whereabouts(young) == (young_site, 0.0)
    clock.advance(0.1)  # promoted by the sweep
    clock.advance(2.5)
    site, age_s = probe.whereabouts(young)
    assert site == young_site
    assert age_s == pytest.approx(2.5, abs=1e-6)
    young.callback(None)  # fired after its promotion: site known, age not
    assert probe.whereabouts(young) == (young_site, None)
    fired_early = defer.Deferred[None]()
    fired_early.callback(None)
    assert probe.whereabouts(fired_early) == (None, None)
    assert probe.whereabouts(defer.succeed(1)) == (None, None)
    assert probe.whereabouts(object()) == (None, None)
    lc = looping(poll, clock)
    loop_d = lc.start(1.0)
    assert probe.whereabouts(loop_d) == (label(poll) + " (LoopingCall)", 0.0)
    clock.advance(1.05)
    assert probe.whereabouts(loop_d)[0] == label(poll) + " (LoopingCall)"
    lc.stop()

    class Unhashable(defer.Deferred[None]):
        def __eq__(self, other: object) -> bool:
            return False

    odd = Unhashable.__new__(Unhashable)
    assert probe.whereabouts(odd) == (None, None)  # recorded, never raised
    errors.counts.clear()
    probe.uninstall()
    assert probe.whereabouts(fired_early) == (None, None)


@attrs.define
class Lock:
    """Synapse's ``WaitingLock``, reduced: attrs writes the ``__init__`` that makes the
    Deferred, under a pseudo file name (``<attrs generated methods ...Lock>``)."""

    deferred: defer.Deferred[None] = attrs.field(factory=defer.Deferred)

    def release(self) -> None:
        self.deferred.callback(None)


def test_a_deferred_made_by_attrs_generated_code_is_named_by_its_class(
    clock: Clock, errors: ProbeErrors, accelerate: bool
) -> None:
    with installed(clock, errors, accelerate) as probe:
        held = Lock()
        Lock()  # dropped unfired: a lost result, listed by site
        clock.advance(0.1)
        gc.collect()
        clock.advance(0.1)
        section = probe.collect()
        # The class's first line where Python records it (3.13+), else its first method's.
        line = getattr(Lock, "__firstlineno__", Lock.release.__code__.co_firstlineno)
        site = f"{__file__}:{line} in Lock.__init__ (attrs)"
        assert rows(section)[site]["pending"] == 1
        assert [r["site"] for r in section["lost_sites"]] == [site]
        assert not [s for s in rows(section) if "<attrs" in s]
        held.release()
