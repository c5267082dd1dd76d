"""The Prometheus collector and the figures under it, driven by a MemoryReactorClock monitor
and by hand-made snapshots: names, values, counters, bounded labels, the lag histogram."""

from __future__ import annotations

import gc
import math
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from dashboard.metric_figures import FIGURES, MAX_LABEL_CHARS, figure_values
from dashboard.monitor import Monitor
from dashboard.probes.lag_histogram import LAG_BOUNDS_S
from dashboard.web.prometheus import SnapshotCollector, exposition
from tests.prometheus_helpers import parse, promtool_check_metrics, types


@pytest.fixture
def clocked() -> Iterator[tuple[Monitor, MemoryReactorClock]]:
    reactor = MemoryReactorClock()
    monitor = Monitor(reactor, interval=1.0, history=10, top_sites=50)
    monitor.start()
    try:
        yield monitor, reactor
    finally:
        monitor.stop()


def scrape(monitor: Monitor, top_sites: int = 20) -> str:
    return exposition(SnapshotCollector(monitor, top_sites=top_sites)).decode()


def snapshot(**sections: Any) -> dict[str, Any]:
    """A snapshot dict shaped like the monitor's, with only the given sections."""
    return {"seq": 1, "time": 1000.0, "reactor": "TestReactor", **sections}


def make_site(name: str, count: int) -> list[defer.Deferred[None]]:
    """``count`` pending Deferreds created on one line of a code object named ``name``."""
    namespace: dict[str, Any] = {"Deferred": defer.Deferred}
    lines = ["out = []", "for _ in range(n):", "    out.append(Deferred())", "return out"]
    source = f"def {name}(n):\n" + "".join(f"    {line}\n" for line in lines)
    code = compile(source, name, "exec")
    exec(code, namespace)
    made: list[defer.Deferred[None]] = namespace[name](count)
    return made


def test_a_scrape_reads_the_newest_sample_and_never_takes_one(
    clocked: tuple[Monitor, MemoryReactorClock],
) -> None:
    monitor, reactor = clocked
    reactor.advance(1.0)
    first = monitor.latest()
    assert first.seq == 1
    before = parse(scrape(monitor))["twisted_deferreds_pending"][()]
    kept = make_site("made_between_samples", 7)
    for _ in range(5):
        text = scrape(monitor)
    assert monitor.latest() is first  # five scrapes, still the same sample
    assert parse(text)["twisted_deferreds_pending"][()] == before
    reactor.advance(1.0)
    after = parse(scrape(monitor))
    assert after["twisted_deferreds_pending"][()] == before + 7
    assert after["twisted_monitor_last_sample_timestamp_seconds"][()] == monitor.latest().time
    del kept


def test_counters_are_counters_and_only_grow(
    clocked: tuple[Monitor, MemoryReactorClock],
) -> None:
    monitor, reactor = clocked
    make_site("lost_site", 2)  # dropped unfired: a lost result, so the per-site family shows
    gc.collect()
    reactor.advance(1.0)
    first_text = scrape(monitor)
    first = parse(first_text)
    for d in make_site("fired_site", 4):
        d.callback(None)
    reactor.advance(1.0)
    second = parse(scrape(monitor))
    kinds = types(first_text)
    counters = [f.prometheus_name for f in FIGURES if f.kind == "counter"]
    # Cancellations are counted by the timeouts probe once it reports cancelled_total.
    optional = (
        set()
        if "cancelled_total" in monitor.latest().data["timeouts"]
        else {"twisted_deferreds_cancelled_total"}
    )
    # Busy time by handler: families only for listed handlers, and a monitor on a driven
    # clock lists none (on by default where compiled: no reactor loop to hook here).
    assert not monitor.latest().data["loop"]["handlers"]
    optional |= {name for name in counters if "_handler_" in name}
    for name in counters:
        assert name.endswith("_total")
        if name not in optional:
            assert kinds[name] == "counter", name
    lost = first["twisted_deferreds_unfired_collected_by_site_total"]
    assert lost == {(("site", "lost_site:4 in lost_site"),): 2}, lost
    for name in ("twisted_deferreds_created_total", "twisted_deferreds_fired_total"):
        assert second[name][()] - first[name][()] >= 4, name
    for name in set(counters) & set(first):
        for labels, value in first[name].items():
            assert second[name][labels] >= value, (name, labels)
    assert kinds["twisted_deferreds_pending"] == "gauge"
    assert kinds["twisted_reactor_lag_seconds"] == "histogram"


def test_sites_are_cut_to_top_n_and_the_rest_summed_as_other(
    clocked: tuple[Monitor, MemoryReactorClock],
) -> None:
    monitor, reactor = clocked
    kept = [make_site(f"site_{n}", n) for n in (1, 2, 3, 4, 5)]
    reactor.advance(1.0)
    by_site = parse(scrape(monitor, top_sites=2))["twisted_deferreds_pending_by_site"]
    pending = monitor.latest().data["deferreds"]["pending"]
    labelled = {dict(labels)["site"]: value for labels, value in by_site.items()}
    assert len(labelled) == 3  # two sites and "other"
    assert labelled["site_5:4 in site_5"] == 5
    assert labelled["site_4:4 in site_4"] == 4
    assert labelled["other"] == pending - 9 >= 6
    assert sum(labelled.values()) == pending
    everything = parse(scrape(monitor, top_sites=50))["twisted_deferreds_pending_by_site"]
    assert len(everything) >= 6
    del kept


def test_site_labels_are_bounded_and_odd_text_stays_valid() -> None:
    odd = 'a "quoted" back\\slash\nnew line ü' + "x" * 500
    data = snapshot(
        deferreds={
            "pending": 10,
            "sites": [
                {"site": odd, "pending": 6},
                {"site": "<other sites>", "pending": 3},  # the probe's own overflow
                {"site": "f.py:1 in f", "pending": 1},
            ],
        },
        pools=[{"name": odd, "kind": "user", "max": 2, "in_use": 1, "idle": 1, "waiting": 0}],
    )
    values = figure_values(data, top_sites=5)
    sites = dict(values["twisted.deferreds.pending_by_site"])
    assert sites == {(odd[: MAX_LABEL_CHARS - 3] + "...",): 6, ("f.py:1 in f",): 1, ("other",): 3}
    monitor: Any = _FixedMonitor(data)
    result = promtool_check_metrics(exposition(SnapshotCollector(monitor)).decode())
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_missing_sections_and_fields_leave_their_families_out() -> None:
    values = figure_values(
        snapshot(
            loop=None,
            deferreds={"pending": 3, "created_total": None, "sites": []},
            process={"rss_bytes": None, "cpu_user_s": 1.5, "cpu_system_s": 0.5, "gc": None},
            errors={"total": 2, "by_probe": {"loop": 2}, "last": {}, "disabled": []},
        )
    )
    assert "twisted.reactor.busy" not in values
    assert "twisted.deferreds.created" not in values
    assert values["twisted.deferreds.pending"] == [((), 3.0)]
    assert values["twisted.deferreds.pending_by_site"] == [(("other",), 3.0)]
    assert "twisted.process.resident_memory" not in values
    assert values["twisted.process.cpu"] == [(("user",), 1.5), (("system",), 0.5)]
    errors = dict(values["twisted.probe.errors"])
    # every probe whose section is present counts from 0, so a first failure shows in rate()
    assert errors == {("deferreds",): 0, ("loop",): 2, ("process",): 0}


def test_connections_pools_and_timeouts_figures() -> None:
    values = figure_values(
        snapshot(
            connections={
                "by_kind": {"tcp_server": 3, "tcp_client": 2, "tls": 4},
                "opened_total": 9,
                "closed_total": 4,
                "failed_connects_total": 1,
                "slow_consumers": 0,
            },
            pools=[
                {"name": "reactor", "kind": "threadpool", "max": 10, "in_use": 10, "idle": 0,
                 "waiting": 4},
                {"name": "http#1", "kind": "http", "max": 2, "max_scope": "per_key",
                 "in_use": 7, "idle": 1, "waiting": 0},
                {"name": "lazy", "kind": "user", "max": None, "in_use": 1, "idle": 0,
                 "waiting": 0},
            ],
            timeouts={"delayed_calls": 12, "overdue_calls": 1,
                      "fired_total": {"deferred": 5, "connect": 0, "protocol": 2}},
        )
    )  # fmt: skip
    assert dict(values["twisted.connections.open"]) == {("tcp_client",): 2, ("tcp_server",): 3}
    assert values["twisted.connections.tls_open"] == [((), 4.0)]  # apart: it overlaps the kinds
    assert dict(values["twisted.pool.in_use"]) == {
        ("reactor", "threadpool"): 10,
        ("http#1", "http"): 7,
        ("lazy", "user"): 1,
    }
    # an HTTP pool's bound is per destination and a user's may be None: no max for either
    assert values["twisted.pool.max"] == [(("reactor", "threadpool"), 10.0)]
    assert dict(values["twisted.pool.waiting"])[("reactor", "threadpool")] == 4
    assert dict(values["twisted.timeouts"]) == {
        ("connect",): 0,
        ("deferred",): 5,
        ("protocol",): 2,
    }
    assert values["twisted.delayed_calls.overdue"] == [((), 1.0)]


def test_lag_histogram_buckets_are_cumulative_seconds(
    clocked: tuple[Monitor, MemoryReactorClock],
) -> None:
    monitor, reactor = clocked
    lag = monitor.loop.lag  # the hook's own counters: record three samples as it does
    for seconds in (0.0004, 0.003, 0.25):
        lag.counts[bisect_left(lag.bounds_s, seconds)] += 1
        lag.sum_s += seconds
    reactor.advance(1.0)
    text = scrape(monitor)
    samples = parse(text)
    buckets = {dict(k)["le"]: v for k, v in samples["twisted_reactor_lag_seconds_bucket"].items()}
    assert [float(le) for le in buckets] == [*LAG_BOUNDS_S, math.inf]
    assert buckets["0.0002"] == 0 and buckets["0.0005"] == 1
    assert buckets["0.005"] == 2 and buckets["0.2"] == 2 and buckets["0.5"] == 3
    assert buckets["+Inf"] == 3 == samples["twisted_reactor_lag_seconds_count"][()]
    assert samples["twisted_reactor_lag_seconds_sum"][()] == pytest.approx(0.2534)
    assert 'le="+Inf"' in text


def test_describe_names_every_family_and_registries_see_clashes(
    clocked: tuple[Monitor, MemoryReactorClock],
) -> None:
    monitor, reactor = clocked
    reactor.advance(1.0)
    collector = SnapshotCollector(monitor)
    described = {family.name for family in collector.describe()}
    collected = {family.name for family in collector.collect()}
    assert collected <= described
    assert "twisted_reactor_lag_seconds" in collected and "twisted_reactor" in collected
    registry = CollectorRegistry()
    registry.register(collector)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(SnapshotCollector(monitor))
    from prometheus_client import generate_latest

    assert b"twisted_deferreds_pending " in generate_latest(registry)
    with pytest.raises(ValueError, match="top_sites"):
        SnapshotCollector(monitor, top_sites=-1)


def test_every_figure_name_follows_prometheus_conventions() -> None:
    names = [f.prometheus_name for f in FIGURES]
    assert len(names) == len(set(names))
    for figure in FIGURES:
        assert figure.prometheus_name.startswith("twisted_"), figure
        assert figure.prometheus_name == figure.prometheus_name.lower()
        if figure.unit:
            assert figure.prometheus_base.endswith("_" + figure.unit)
        assert figure.help.endswith("."), figure


class _FixedMonitor:
    """Just what the collector reads: ``latest().data`` and ``loop.lag_histogram()``."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.loop = self

    def latest(self) -> _FixedMonitor:
        return self

    def lag_histogram(self) -> tuple[tuple[float, ...], list[int], float, int]:
        return (0.1, math.inf), [1, 2], 0.5, 2


def test_lost_sites_cancellations_loops_own_work_and_pool_names() -> None:
    """Issue 13's fields: losses per listed site (bounded, no "other"), cancellations apart
    from timeouts, running loops, the dashboard's own work under twisted_monitor_*, and an
    HTTP pool's per-host limit, all by the names promtool accepts."""
    lost = [
        {"site": f"app/jobs.py:{n} in job_{n}", "unfired_collected_total": 100 - n,
         "lost_last_60s": 1, "last_lost_age_s": n, "pending": 0}
        for n in range(20)
    ]  # fmt: skip
    data = snapshot(
        deferreds={
            "pending": 7,
            "unfired_collected_total": 2000,
            "sites": [],
            "lost_sites": lost,
            "loops": {"pending": 3, "items": []},
            "own": {"pending": 2, "created_total": 40, "fired_total": 38,
                    "unfired_collected_total": 0},
        },
        connections={"by_kind": {"tcp_server": 1}, "own": {"open": 2,
                                                          "listening": ["127.0.0.1:8089"]}},
        pools=[
            {"name": "twisted.internet.reactor", "kind": "threadpool", "reactor": True,
             "max": 10, "in_use": 1, "idle": 2, "waiting": 0},
            {"name": "scrapy/core/downloader/handlers/http11.py:60 in HTTP11DownloadHandler"
             ".__init__", "kind": "http", "max": 16, "max_per_host": 8, "in_use": 9, "idle": 1,
             "waiting": 0, "hosts": [{"host": "http://127.0.0.1:8000", "in_use": 8, "idle": 0,
                                      "max": 8}]},
            {"name": "sqlite3 /tmp/app.db", "kind": "adbapi", "driver": "sqlite3",
             "database": "/tmp/app.db", "max": 5, "in_use": 1, "idle": 2, "waiting": 0},
        ],
        timeouts={"delayed_calls": 4, "own_calls": 3, "cancelled_total": 6,
                  "fired_total": {"deferred": 5}},
    )  # fmt: skip
    values = figure_values(data, top_sites=5)
    by_site = values["twisted.deferreds.unfired_collected_by_site"]
    assert by_site == [((f"app/jobs.py:{n} in job_{n}",), 100.0 - n) for n in range(5)]
    assert values["twisted.deferreds.unfired_collected"] == [((), 2000.0)]
    assert values["twisted.deferreds.cancelled"] == [((), 6.0)]
    assert dict(values["twisted.timeouts"]) == {("deferred",): 5.0}
    assert values["twisted.deferreds.loop_pending"] == [((), 3.0)]
    assert values["twisted.monitor.deferreds.pending"] == [((), 2.0)]
    assert values["twisted.monitor.deferreds.created"] == [((), 40.0)]
    assert values["twisted.monitor.connections.open"] == [((), 2.0)]
    assert values["twisted.monitor.delayed_calls"] == [((), 3.0)]
    assert values["twisted.delayed_calls"] == [((), 4.0)]  # the program's, unchanged
    http = "scrapy/core/downloader/handlers/http11.py:60 in HTTP11DownloadHandler.__init__"
    assert dict(values["twisted.pool.in_use"]) == {
        ("twisted.internet.reactor", "threadpool"): 1.0,
        (http, "http"): 9.0,
        ("sqlite3 /tmp/app.db", "adbapi"): 1.0,
    }
    assert values["twisted.pool.max_per_host"] == [((http, "http"), 8.0)]
    monitor: Any = _FixedMonitor(data)
    text = exposition(SnapshotCollector(monitor)).decode()
    samples = parse(text)
    assert types(text)["twisted_deferreds_unfired_collected_by_site_total"] == "counter"
    assert len(samples["twisted_deferreds_unfired_collected_by_site_total"]) == 20  # top 20
    assert samples["twisted_deferreds_cancelled_total"][()] == 6
    assert samples["twisted_monitor_connections_open"][()] == 2
    result = promtool_check_metrics(text)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_older_snapshots_give_none_of_the_new_families() -> None:
    values = figure_values(
        snapshot(deferreds={"pending": 1, "sites": []}, timeouts={"fired_total": {}})
    )
    for name in (
        "twisted.deferreds.unfired_collected_by_site",
        "twisted.deferreds.cancelled",
        "twisted.deferreds.loop_pending",
        "twisted.monitor.deferreds.pending",
        "twisted.monitor.connections.open",
        "twisted.monitor.delayed_calls",
    ):
        assert name not in values, name
