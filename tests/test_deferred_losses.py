"""Where results are lost (issue 13, point 2): ``deferreds.lost_sites`` lists the sites that
lost Deferreds lately, newest loss first, even with nothing pending there, with the losses of
the last 60 s; bounded. Both hot paths, a Clock for time, collected every second as the
Monitor does."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, cast

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from dashboard.probes.base import ProbeErrors
from dashboard.probes.deferred_losses import RecentLosses
from dashboard.probes.deferreds import DeferredsProbe


def lose_here() -> None:
    defer.Deferred()  # dropped unfired: a lost result


def lose_there() -> None:
    defer.Deferred()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def here(offset: int = 0) -> str:
    frame = sys._getframe(1)
    return f"{frame.f_code.co_filename}:{frame.f_lineno + offset} in {frame.f_code.co_qualname}"


def label(func: Callable[..., object], offset: int = 1) -> str:
    code = func.__code__
    return f"{code.co_filename}:{code.co_firstlineno + offset} in {code.co_qualname}"


def run_for(probe: DeferredsProbe, clock: Clock, seconds: int) -> dict[str, Any]:
    """Advance ``seconds``, sweeping every 0.1 s and collecting every second (the Monitor's
    default); the last section."""
    section: dict[str, Any] = {}
    for _ in range(seconds):
        for _ in range(10):
            clock.advance(0.1)
        section = probe.collect()
    return section


def lost_rows(section: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (
            row["site"],
            row["unfired_collected_total"],
            row["lost_last_60s"],
            row["last_lost_age_s"],
            row["pending"],
        )
        for row in section["lost_sites"]
        if row["site"].startswith(__file__)
    ]


def test_sites_that_lose_are_listed_newest_first_with_the_last_minute(
    clock: Clock, errors: ProbeErrors, accelerate: bool
) -> None:
    probe = DeferredsProbe(clock, errors, clock.seconds, accelerate=accelerate)
    probe.install()
    try:
        for _ in range(3):
            lose_here()
        clock.advance(0.1)  # the sweep counts them lost
        section = probe.collect()
        here, there = label(lose_here), label(lose_there)
        assert lost_rows(section) == [(here, 3, 3, 0.0, 0)]
        assert here not in [row["site"] for row in section["sites"]]  # nothing pending there
        section = run_for(probe, clock, 30)
        lose_there()
        section = run_for(probe, clock, 1)
        assert lost_rows(section) == [
            (there, 1, 1, pytest.approx(0.9, abs=1e-6), 0),
            (here, 3, 3, pytest.approx(31.0, abs=1e-6), 0),
        ]
        section = run_for(probe, clock, 45)  # the first losses are now 76 s old
        assert lost_rows(section) == [
            (there, 1, 1, pytest.approx(45.9, abs=1e-6), 0),
            (here, 3, 0, pytest.approx(76.0, abs=1e-6), 0),
        ]
        lose_here()
        lose_here()
        section = run_for(probe, clock, 1)
        assert lost_rows(section)[0] == (here, 5, 2, pytest.approx(0.9, abs=1e-6), 0)
        section = run_for(probe, clock, 20)  # 'there' lost 66.9 s ago: out of the minute
        assert [row[:3] for row in lost_rows(section)] == [(here, 5, 2), (there, 1, 0)]
        assert section["unfired_collected_total"] >= 6
    finally:
        probe.uninstall()
    assert errors.counts == {}


def test_a_losing_site_with_pending_deferreds_shows_them(
    clock: Clock, errors: ProbeErrors, accelerate: bool
) -> None:
    probe = DeferredsProbe(clock, errors, clock.seconds, accelerate=accelerate)
    probe.install()
    try:
        site = here(1)
        kept = [defer.Deferred[None](), defer.Deferred[None]()]
        clock.advance(0.1)  # promoted
        del kept[0]  # collected unfired after its promotion (weak reference callback)
        section = run_for(probe, clock, 1)
        assert lost_rows(section) == [(site, 1, 1, pytest.approx(0.9, abs=1e-6), 1)]
    finally:
        probe.uninstall()


def test_twenty_are_listed_and_memory_is_bounded(
    clock: Clock, errors: ProbeErrors, accelerate: bool
) -> None:
    namespace: dict[str, Any] = {}
    source = "".join(f"def lose_{i}():\n    Deferred()\n" for i in range(30))
    exec(compile(source, __file__, "exec"), {"Deferred": defer.Deferred}, namespace)
    probe = DeferredsProbe(clock, errors, clock.seconds, accelerate=accelerate)
    probe.install()
    try:
        for i in range(30):
            namespace[f"lose_{i}"]()
            clock.advance(0.1)
        section = probe.collect()
        assert len(section["lost_sites"]) == 20
        listed = [row["site"] for row in section["lost_sites"]]
        assert listed == [f"{__file__}:{2 * i + 2} in lose_{i}" for i in range(29, 9, -1)]
    finally:
        probe.uninstall()


def test_recent_losses_keeps_the_most_recent_sites_only() -> None:
    class Site:
        def __init__(self) -> None:
            self.lost = 0

    losses = RecentLosses(max_sites=4)
    sites = [Site() for _ in range(6)]
    for t, site in enumerate(sites):
        losses.lost(site, float(t))  # called before the count, as the probe does
        site.lost += 1
    losses.lost(sites[2], 10.0)  # lost again: the newest now
    sites[2].lost += 1
    rows = list(losses.newest_first(10.0))
    assert [sites.index(cast(Site, site)) for site, _, _ in rows] == [2, 5, 4, 3]
    assert [(age, last_60s) for _, age, last_60s in rows] == [
        (0.0, 2),
        (5.0, 1),
        (6.0, 1),
        (7.0, 1),
    ]
    # one ring entry per collect at most, merged when collects come faster than a second
    for step in range(1000):
        losses.lost(sites[2], 10.0 + step / 100)
        sites[2].lost += 1
        list(losses.newest_first(10.0 + step / 100))
    assert len(losses._sites[sites[2]].ring) <= 12
