"""Busy time by handler on ``/metrics``: the top N's totals as counters (the dashboard's own
apart, under ``twisted_monitor_``), their call durations as a histogram, label values bounded
and cut; and a real scrape of a monitored real reactor that promtool accepts."""

from __future__ import annotations

import time
from typing import Any

import pytest_twisted
from twisted.internet import task
from twisted.internet.task import deferLater

from dashboard.metric_figures import MAX_LABEL_CHARS, figure_values
from dashboard.monitor import Monitor
from dashboard.probes.handler_table import DURATION_BOUNDS_S
from dashboard.web.prometheus import SnapshotCollector, exposition, handler_histograms
from tests.prometheus_helpers import parse, promtool_check_metrics, types

BOUNDS_MS = [b * 1000.0 for b in DURATION_BOUNDS_S]


def row(
    name: str, busy: float, calls: int, own: bool = False, counts: list[int] | None = None
) -> dict[str, Any]:
    return {
        "handler": name,
        "own": own,
        "share": 0.1,
        "calls_total": calls,
        "busy_s_total": busy,
        "duration_counts": counts if counts is not None else [calls] + [0] * len(BOUNDS_MS),
    }


def snapshot(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "seq": 1,
        "time": 1000.0,
        "reactor": "TestReactor",
        "loop": {"handlers": rows, "handler_duration_bounds_ms": BOUNDS_MS},
    }


def test_the_listed_handlers_are_counters_the_dashboards_own_apart() -> None:
    long = "app." + "x" * 400
    values = figure_values(
        snapshot(
            [
                row("app.poll (LoopingCall)", 2.5, 100),
                row("dashboard.monitor.Monitor._tick", 0.2, 10, own=True),
                row(long, 1.0, 3),
                row(long + "y", 9.0, 9),  # cut to the same label: skipped
            ]
        )
    )
    cut = long[: MAX_LABEL_CHARS - 3] + "..."
    assert values["twisted.reactor.handler.busy"] == [
        (("app.poll (LoopingCall)",), 2.5),
        ((cut,), 1.0),
    ]
    assert values["twisted.reactor.handler.calls"] == [
        (("app.poll (LoopingCall)",), 100.0),
        ((cut,), 3.0),
    ]
    assert values["twisted.monitor.handler.busy"] == [(("dashboard.monitor.Monitor._tick",), 0.2)]
    assert values["twisted.monitor.handler.calls"] == [(("dashboard.monitor.Monitor._tick",), 10.0)]


def test_no_handlers_no_families() -> None:
    values = figure_values(snapshot([]))
    assert "twisted.reactor.handler.busy" not in values
    off = snapshot([])
    off["loop"]["handlers"] = None
    assert "twisted.reactor.handler.busy" not in figure_values(off)
    assert handler_histograms(off) is None


def test_the_duration_histogram_is_cumulative_per_handler() -> None:
    counts = [5, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 1]
    family = handler_histograms(
        snapshot([row("app.poll", 1.5, 11, counts=counts), row("dashboard.x", 1.0, 1, own=True)])
    )
    assert family is not None
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("twisted_reactor_handler_duration_seconds_bucket", "0.0001")] == 5
    assert samples[("twisted_reactor_handler_duration_seconds_bucket", "0.001")] == 7
    assert samples[("twisted_reactor_handler_duration_seconds_bucket", "0.025")] == 10
    assert samples[("twisted_reactor_handler_duration_seconds_bucket", "+Inf")] == 11
    assert samples[("twisted_reactor_handler_duration_seconds_count", None)] == 11
    assert samples[("twisted_reactor_handler_duration_seconds_sum", None)] == 1.5
    assert {s.labels["handler"] for s in family.samples} == {"app.poll"}


def burn_5ms() -> None:
    end = time.perf_counter() + 0.005
    while time.perf_counter() < end:
        pass


@pytest_twisted.ensureDeferred
async def test_a_real_scrape() -> None:
    from twisted.internet import reactor

    monitor = Monitor(reactor, interval=0.2, handlers=True)
    loop = task.LoopingCall(burn_5ms)
    monitor.start()
    try:
        loop.start(0.05)
        await deferLater(reactor, 0.7, lambda: None)
        text = exposition(SnapshotCollector(monitor)).decode()
    finally:
        loop.stop()
        monitor.stop()
    assert promtool_check_metrics(text).returncode == 0, promtool_check_metrics(text).stdout
    kinds = types(text)
    assert kinds["twisted_reactor_handler_busy_seconds_total"] == "counter"
    assert kinds["twisted_reactor_handler_calls_total"] == "counter"
    assert kinds["twisted_reactor_handler_duration_seconds"] == "histogram"
    assert kinds["twisted_monitor_handler_busy_seconds_total"] == "counter"
    samples = parse(text)
    name = (("handler", "tests.test_handlers_metrics.burn_5ms (LoopingCall)"),)
    assert samples["twisted_reactor_handler_calls_total"][name] >= 5
    assert samples["twisted_reactor_handler_busy_seconds_total"][name] >= 0.025
    tick = (("handler", "dashboard.monitor.Monitor._tick"),)
    assert samples["twisted_monitor_handler_calls_total"][tick] >= 1
    assert tick not in samples["twisted_reactor_handler_calls_total"]
