"""The Deferred probe, driven by a Clock: exact counts per site, ages, losses, restore."""

from __future__ import annotations

import gc
import inspect
import random
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from dashboard.probes import deferred_source, deferreds
from dashboard.probes.base import ProbeErrors
from dashboard.probes.deferreds import DeferredsProbe
from tests.accel_support import require_accelerator


def site_here(offset: int = 0) -> str:
    """The site label of the caller's line (plus ``offset`` lines)."""
    frame = sys._getframe(1)
    return f"{frame.f_code.co_filename}:{frame.f_lineno + offset} in {frame.f_code.co_qualname}"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def probe(clock: Clock, errors: ProbeErrors, accelerate: bool) -> Iterator[DeferredsProbe]:
    p = DeferredsProbe(clock, errors, clock.seconds, top_sites=50, oldest=20, accelerate=accelerate)
    p.install()
    yield p
    p.uninstall()


def site_row(section: dict[str, Any], site: str) -> dict[str, Any]:
    rows = [row for row in section["sites"] if row["site"] == site]
    assert len(rows) == 1, (site, [r["site"] for r in section["sites"]])
    row: dict[str, Any] = rows[0]
    return row


def test_counts_are_exact_per_site(probe: DeferredsProbe, accelerate: bool) -> None:
    before = probe.collect()
    assert before["hot_path"] == ("compiled" if accelerate else "python")
    made: list[defer.Deferred[int]] = []
    for _ in range(7):
        where = site_here(1)
        made.append(defer.Deferred())
    for d in made[:3]:
        d.callback(1)
    after = probe.collect()
    assert after["created_total"] - before["created_total"] == 7
    assert after["fired_total"] - before["fired_total"] == 3
    assert after["pending"] - before["pending"] == 4
    row = site_row(after, where)
    assert (row["pending"], row["created_total"], row["fired_total"]) == (4, 7, 3)
    for d in made[3:]:
        d.errback(ValueError("x"))
        d.addErrback(lambda _: None)
    assert probe.collect()["pending"] == before["pending"]


def test_succeed_and_fail_count_as_fired_at_the_callers_line(probe: DeferredsProbe) -> None:
    before = probe.collect()
    ok_site = site_here(1)
    defer.succeed(1)
    bad_site = site_here(1)
    defer.fail(ValueError("boom")).addErrback(lambda _: None)
    after = probe.collect()
    assert after["created_total"] - before["created_total"] == 2
    assert after["fired_total"] - before["fired_total"] == 2
    assert after["pending"] == before["pending"]
    # Fully fired sites are not among the busiest; they are still counted in the totals.
    assert ok_site not in [r["site"] for r in after["sites"]]
    assert bad_site not in [r["site"] for r in after["sites"]]


def test_a_dropped_unfired_deferred_is_counted_lost(probe: DeferredsProbe, clock: Clock) -> None:
    before = probe.collect()["unfired_collected_total"]
    defer.Deferred()  # dropped at once: only the nursery holds it
    clock.advance(0.1)
    assert probe.collect()["unfired_collected_total"] == before + 1

    kept = defer.Deferred[None]()
    clock.advance(0.1)  # promoted: tracked by a weak reference
    del kept
    gc.collect()
    assert probe.collect()["unfired_collected_total"] == before + 2

    cyclic = defer.Deferred[None]()

    def holds_its_deferred(result: None, me: object = cyclic) -> None:
        return None

    cyclic.addCallback(holds_its_deferred)  # a reference cycle: only gc can free it
    del holds_its_deferred
    del cyclic
    clock.advance(0.1)
    gc.collect()
    section = probe.collect()
    assert section["unfired_collected_total"] == before + 3
    assert section["pending"] == probe.collect()["pending"]


def test_fired_then_dropped_is_not_lost(probe: DeferredsProbe, clock: Clock) -> None:
    before = probe.collect()
    d = defer.Deferred[int]()
    clock.advance(0.1)
    d.callback(1)
    del d
    gc.collect()
    after = probe.collect()
    assert after["unfired_collected_total"] == before["unfired_collected_total"]
    assert after["pending"] == before["pending"]


def test_ages_and_oldest_order(probe: DeferredsProbe, clock: Clock) -> None:
    first_site = site_here(1)
    first = defer.Deferred[None]()
    clock.advance(0.1)  # the sweep stamps it
    clock.advance(10)
    # a comprehension has a frame of its own before 3.12 (PEP 709 inlines it)
    listcomp = ".<locals>.<listcomp>" if sys.version_info < (3, 12) else ""
    second_site = site_here(1) + listcomp
    second = [defer.Deferred[None]() for _ in range(3)]
    clock.advance(0.1)
    clock.advance(5)
    section = probe.collect()
    assert section["oldest_pending_age_s"] == pytest.approx(15.1, abs=0.01)
    assert site_row(section, first_site)["oldest_age_s"] == pytest.approx(15.1, abs=0.01)
    assert site_row(section, second_site)["oldest_age_s"] == pytest.approx(5.0, abs=0.01)
    oldest = [o for o in section["oldest"] if o["site"].startswith(__file__)]
    assert [o["site"] for o in oldest[:4]] == [first_site] + [second_site] * 3
    assert oldest[0]["age_s"] >= oldest[1]["age_s"]
    first.callback(None)
    still = [o["site"] for o in probe.collect()["oldest"] if o["site"].startswith(__file__)]
    assert still[:3] == [second_site] * 3
    for d in second:
        d.callback(None)


def test_oldest_is_bounded_and_sites_are_top_n(
    clock: Clock, errors: ProbeErrors, accelerate: bool
) -> None:
    probe = DeferredsProbe(
        clock, errors, clock.seconds, top_sites=5, oldest=3, accelerate=accelerate
    )
    probe.install()
    try:
        namespace: dict[str, Any] = {"Deferred": defer.Deferred}
        keep: list[Any] = []
        for n in range(1, 9):  # 8 distinct sites with 1..8 pending each
            exec(
                compile(f"made = [Deferred() for _ in range({n})]", f"<site{n}>", "exec"), namespace
            )
            keep.extend(namespace["made"])
        clock.advance(0.1)
        section = probe.collect()
        assert [row["pending"] for row in section["sites"]] == [8, 7, 6, 5, 4]
        assert len(section["oldest"]) == 3
        assert section["pending"] == 36
    finally:
        probe.uninstall()


def test_waiting_names_the_suspended_generator_and_coroutine(
    probe: DeferredsProbe, clock: Clock
) -> None:
    gate_site = site_here(1)
    gate = defer.Deferred[None]()

    @defer.inlineCallbacks
    def stuck_generator() -> Any:
        yield gate

    inner = defer.Deferred[None]()

    async def stuck_coroutine() -> None:
        await inner

    stuck_generator()
    gen_line = stuck_generator.__wrapped__.__code__.co_firstlineno + 2  # type: ignore[attr-defined]
    defer.Deferred.fromCoroutine(stuck_coroutine())
    coro_line = stuck_coroutine.__code__.co_firstlineno + 1
    clock.advance(0.1)
    waits = {o["site"]: o["waiting"] for o in probe.collect()["oldest"]}
    gate_waiting = waits[gate_site]
    assert gate_waiting[0].endswith("_gotResultInlineCallbacks")
    assert gate_waiting[1].endswith(f":{gen_line} in {stuck_generator.__qualname__}")
    assert any(
        w and w[-1].endswith(f":{coro_line} in {stuck_coroutine.__qualname__}")
        for w in waits.values()
    ), waits
    gate.callback(None)
    inner.callback(None)


def test_nursery_is_bounded_without_sweeps(
    clock: Clock, errors: ProbeErrors, accelerate: bool
) -> None:
    probe = DeferredsProbe(clock, errors, clock.seconds, nursery_limit=64, accelerate=accelerate)
    probe.install()
    try:
        keep = [defer.Deferred[None]() for _ in range(1000)]
        assert probe.nursery_size() < 64
        assert probe.collect()["pending"] == 1000
        del keep
    finally:
        probe.uninstall()


def test_uninstall_restores_by_identity_and_cycles_leave_nothing(
    clock: Clock, errors: ProbeErrors, accelerate: bool
) -> None:
    names = ("__init__", "_startRunCallbacks", "_rd_site", "_rd_ref")
    before = {name: vars(defer.Deferred).get(name) for name in names}
    probe = DeferredsProbe(clock, errors, clock.seconds, accelerate=accelerate)
    for _ in range(100):
        probe.install()
        probe.install()  # twice is harmless
        defer.Deferred()
        probe.uninstall()
        probe.uninstall()
    assert {name: vars(defer.Deferred).get(name) for name in names} == before
    assert before["_rd_site"] is None and before["_rd_ref"] is None
    assert clock.getDelayedCalls() == []
    assert errors.counts == {}


def test_a_failing_probe_never_breaks_user_deferreds(
    probe: DeferredsProbe, errors: ProbeErrors, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> Any:
        raise RuntimeError("probe fault")

    monkeypatch.setattr(probe, "_new_site", broken)
    seen: list[int] = []
    d = defer.Deferred[int]()  # a new line: a new site, so _new_site runs and fails
    d.addCallback(seen.append)
    d.callback(5)
    assert seen == [5]
    with pytest.raises(defer.AlreadyCalledError):
        d.callback(6)
    assert errors.counts["deferreds"] >= 1
    assert "probe fault" in errors.last["deferreds"]


def test_inlined_init_matches_twisted_and_falls_back_otherwise(
    clock: Clock, errors: ProbeErrors, accelerate: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert deferred_source.init_is_plain(defer.Deferred.__init__)

    def grown(self: Any, canceller: Any = None) -> None:
        self._callbacks = []
        self._canceller = canceller
        self.extra = 1

    assert not deferred_source.init_is_plain(grown)
    for plain in (True, False):
        monkeypatch.setattr(deferreds, "init_is_plain", lambda _init, plain=plain: plain)
        probe = DeferredsProbe(clock, errors, clock.seconds, accelerate=accelerate)
        probe.install()
        try:
            cancelled: list[object] = []
            d = defer.Deferred[None](cancelled.append)
            assert probe.collect()["pending"] == 1
            d.cancel()
            assert cancelled == [d]
            assert probe.collect()["pending"] == 0
            d.addErrback(lambda _: None)
        finally:
            probe.uninstall()


def test_debug_mode_still_records_twisteds_creator_stack(probe: DeferredsProbe) -> None:
    defer.setDebugging(True)
    try:
        d = defer.Deferred[None]()
    finally:
        defer.setDebugging(False)
    assert d._debugInfo is not None
    assert any("test_debug_mode_still_records" in line for line in d._debugInfo.creator or [])
    assert d._callbacks == []
    d.callback(None)


def test_subclasses_keywords_threads_and_introspection(probe: DeferredsProbe) -> None:
    """What real code does with Deferred, on either hot path: keyword canceller, a subclass
    calling super().__init__ (its site is its own __init__, as for sys._getframe), explicit
    Deferred.__init__, creation in other threads, and introspection of the patched methods."""

    class Sub(defer.Deferred[int]):
        def __init__(self) -> None:
            self.where = site_here(1)
            super().__init__(canceller=None)

    before = probe.collect()
    cancelled: list[object] = []
    keyword = defer.Deferred[None](canceller=cancelled.append)
    sub = Sub()
    bare = defer.Deferred.__new__(defer.Deferred)
    explicit_site = site_here(1)
    defer.Deferred.__init__(bare)

    def in_thread(out: list[defer.Deferred[None]]) -> None:
        for _ in range(500):
            out.append(defer.Deferred())

    threaded: list[defer.Deferred[None]] = []
    workers = [threading.Thread(target=in_thread, args=(threaded,)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    thread_site = f"{__file__}:{in_thread.__code__.co_firstlineno + 2} in {in_thread.__qualname__}"
    after = probe.collect()
    assert after["created_total"] - before["created_total"] == 3 + 2_000
    assert site_row(after, sub.where)["pending"] == 1
    assert site_row(after, explicit_site)["pending"] == 1
    assert site_row(after, thread_site)["pending"] == 2_000
    keyword.cancel()
    assert cancelled == [keyword]
    keyword.addErrback(lambda _: None)
    sub.callback(1)
    bare.callback(None)
    for d in threaded:
        d.callback(None)
    assert probe.collect()["pending"] == before["pending"]
    with pytest.raises(TypeError):
        defer.Deferred(None, None)  # type: ignore[call-arg]
    init = defer.Deferred.__init__
    assert (init.__name__, init.__qualname__) == ("__init__", "Deferred.__init__")
    # Twisted's own __module__: code that tells the dashboard's functions by their module
    # (the timeouts probe, trial's janitor shield) must not take this hook for one of them
    assert init.__module__ == "twisted.internet.defer"
    assert init.__wrapped__ is not None  # type: ignore[attr-defined]
    assert list(inspect.signature(init).parameters) == ["self", "canceller"]


def test_site_keys_are_bounded(
    clock: Clock, errors: ProbeErrors, accelerate: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_SITE_KEYS (code, offset) keys, new creation points count under "other"."""
    monkeypatch.setattr(deferreds, "MAX_SITE_KEYS", 2)
    probe = DeferredsProbe(clock, errors, clock.seconds, accelerate=accelerate)
    probe.install()
    try:
        first, second = site_here(1), site_here(2)
        made = [defer.Deferred[None]()]
        made.append(defer.Deferred())
        made.append(defer.Deferred())
        made.append(defer.Deferred())
        section = probe.collect()
        assert site_row(section, first)["pending"] == 1
        assert site_row(section, second)["pending"] == 1
        assert site_row(section, "<other sites>")["pending"] == 2
        for d in made:
            d.callback(None)
    finally:
        probe.uninstall()


def test_the_compiled_path_is_what_the_monitor_uses() -> None:
    """Where the accelerator is built, it is the default, and it patches C callables."""
    from dashboard import _accel
    from dashboard.monitor import Monitor
    from dashboard.testing import global_reactor

    require_accelerator()
    monitor = Monitor(global_reactor())
    assert monitor.deferreds.accelerated
    monitor.start()
    try:
        assert isinstance(vars(defer.Deferred)["__init__"], _accel.Hook)
        # the first firing is counted by Twisted's own method, recompiled with the C count
        assert monitor.deferreds.fire_hook == "recompiled"
        start = vars(defer.Deferred)["_startRunCallbacks"]
        assert start.__code__.co_filename == defer.__file__
        assert start.__closure__[0].cell_contents.__self__ is monitor.deferreds._tracker
    finally:
        monitor.stop()
    assert not isinstance(vars(defer.Deferred)["__init__"], _accel.Hook)


def test_keyboard_interrupt_inside_the_probe_propagates(
    probe: DeferredsProbe, errors: ProbeErrors, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe error is counted; a KeyboardInterrupt (a signal handler running inside the
    probe's own Python code) reaches the program, on both paths."""

    def interrupted(*_: object) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(probe, "_new_site", interrupted)
    with pytest.raises(KeyboardInterrupt):
        defer.Deferred[None]()  # a new line: a new site
    assert errors.counts == {}


def test_the_compiled_nursery_under_churn(clock: Clock, errors: ProbeErrors) -> None:
    """The C nursery (open addressing, deletion by backward shift) against a model: random
    creation and firing orders, the size exact at every step, every reference it took
    given back, and the collector sees what it holds."""
    probe = DeferredsProbe(clock, errors, clock.seconds, nursery_limit=100_000, accelerate=True)
    probe.install()
    try:
        rng = random.Random(7)
        alive: list[defer.Deferred[None]] = []
        fired: list[defer.Deferred[None]] = []
        for step in range(20_000):
            if not alive or rng.random() < 0.55:
                alive.append(defer.Deferred())
            else:
                d = alive.pop(rng.randrange(len(alive)))
                d.callback(None)
                fired.append(d)
            if step % 997 == 0:
                assert probe.nursery_size() == len(alive)
        assert probe.nursery_size() == len(alive)
        del d
        # the list's, the loop variable's and the argument's: none left in the nursery
        assert {sys.getrefcount(d) for d in fired} == {3}
        assert alive[0] in gc.get_referents(probe._tracker)
        held = [sys.getrefcount(d) for d in alive]
        section = probe.collect()  # a sweep: all promoted, the nursery empty
        assert probe.nursery_size() == 0
        assert [sys.getrefcount(d) for d in alive] == [n - 1 for n in held]
        assert section["pending"] == len(alive)
        assert section["fired_total"] == len(fired)
        for d in alive:
            d.callback(None)
        assert probe.collect()["pending"] == 0
    finally:
        probe.uninstall()
    assert errors.counts == {}


def test_a_deferred_fired_by_the_collector_during_a_sweep_counts_fired(
    clock: Clock, errors: ProbeErrors, accelerate: bool
) -> None:
    """Emptying the nursery allocates, which may run the garbage collector, whose finalizers
    may fire a Deferred still in it: that firing must be counted, and the Deferred must not
    later be reported as collected unfired."""
    probe = DeferredsProbe(clock, errors, clock.seconds, accelerate=accelerate)
    probe.install()
    try:
        victims = [defer.Deferred[None]()]

        class FiresOnCollection:
            def __del__(self) -> None:
                victims[0].callback(None)

        gc.collect()
        garbage = FiresOnCollection()
        garbage.self = garbage  # type: ignore[attr-defined]  # a cycle: only the collector frees it
        del garbage
        thresholds = gc.get_threshold()
        gc.set_threshold(1)  # the sweep's first tracked allocation collects
        try:
            probe.sweep()
        finally:
            gc.set_threshold(*thresholds)
        assert victims[0].called
        section = probe.collect()
        assert (section["pending"], section["fired_total"]) == (0, 1)
        victims.clear()
        gc.collect()
        assert probe.collect()["unfired_collected_total"] == 0
    finally:
        probe.uninstall()
    assert errors.counts == {}


def test_no_memory_during_a_sweep_loses_nothing(
    clock: Clock, errors: ProbeErrors, accelerate: bool
) -> None:
    """If the sweep cannot allocate, the nursery stays as it was: every Deferred in it is
    still counted fired when it fires."""
    import _testcapi  # type: ignore[import-not-found]  # CPython's hooks to fail allocations

    probe = DeferredsProbe(clock, errors, clock.seconds, accelerate=accelerate, nursery_limit=10**6)
    probe.install()
    try:
        keep = [defer.Deferred[None]() for _ in range(3000)]
        for after in (1, 5, 200):
            failed = False
            gc.disable()
            _testcapi.set_nomemory(after, 0)  # the after-th allocation on fails, until removed
            try:
                probe.sweep()
            except MemoryError:
                failed = True  # (nothing else may allocate before the hooks are removed)
            finally:
                _testcapi.remove_mem_hooks()
                gc.enable()
            assert failed
            assert probe.nursery_size() == 3000
        for d in keep:
            d.callback(None)
        section = probe.collect()
        assert (section["pending"], section["fired_total"]) == (0, 3000)
    finally:
        probe.uninstall()


def test_init_called_again_counts_alike_on_both_paths(
    clock: Clock, errors: ProbeErrors, accelerate: bool
) -> None:
    """Calling ``Deferred.__init__`` on a live Deferred again (a misuse) counts it created
    twice and fired once on either path: one pending, as a dict nursery has always said."""
    probe = DeferredsProbe(clock, errors, clock.seconds, accelerate=accelerate)
    probe.install()
    try:
        d = defer.Deferred[None]()
        defer.Deferred.__init__(d)
        assert probe.nursery_size() == 1
        d.callback(None)
        section = probe.collect()
        assert (section["created_total"], section["fired_total"], section["pending"]) == (2, 1, 1)
    finally:
        probe.uninstall()


def test_threads_firing_during_sweeps_are_counted_exactly(
    clock: Clock, errors: ProbeErrors
) -> None:
    """Four threads create, fire and drop Deferreds with the GIL switching every microsecond
    and a nursery swept every 16: each firing is counted once, each drop is counted lost
    once (the compiled path, whose counters cannot lose an increment)."""
    probe = DeferredsProbe(clock, errors, clock.seconds, nursery_limit=16, accelerate=True)
    kept: list[list[defer.Deferred[None]]] = []
    fired = [0] * 4
    dropped = [0] * 4

    def work(seed: int) -> None:
        rng = random.Random(seed)
        alive: list[defer.Deferred[None]] = []
        for _ in range(10_000):
            if not alive or rng.random() < 0.55:
                alive.append(defer.Deferred())
            else:
                alive.pop(rng.randrange(len(alive))).callback(None)
                fired[seed] += 1
            if alive and rng.random() < 0.01:
                alive.pop()
                dropped[seed] += 1
        kept.append(alive)

    interval = sys.getswitchinterval()
    probe.install()
    try:
        sys.setswitchinterval(1e-6)
        try:
            workers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
        finally:
            sys.setswitchinterval(interval)
        for alive in kept:
            for d in alive:
                d.callback(None)
                fired[0] += 1
        kept.clear()
        gc.collect()
        section = probe.collect()
        assert section["created_total"] == sum(fired) + sum(dropped)
        assert (section["fired_total"], section["unfired_collected_total"]) == (
            sum(fired),
            sum(dropped),
        )
        assert section["pending"] == 0
    finally:
        probe.uninstall()
    assert errors.counts == {}
