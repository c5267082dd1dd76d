"""The OpenTelemetry extra: the figures of /metrics, read through the SDK's in-memory reader."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Gauge, InMemoryMetricReader, NumberDataPoint, Sum
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from dashboard.metric_figures import FIGURES, figure_values
from dashboard.monitor import Monitor
from dashboard.otel import LAG_GAUGES, OTEL_UNITS, publish_metrics

#: instrument name -> {attributes as sorted pairs: value}
Points = dict[str, dict[tuple[tuple[str, Any], ...], float]]


@pytest.fixture
def otel() -> Iterator[tuple[Monitor, MemoryReactorClock, InMemoryMetricReader, MeterProvider]]:
    reactor = MemoryReactorClock()
    monitor = Monitor(reactor, interval=1.0, history=10)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    monitor.start()
    try:
        yield monitor, reactor, reader, provider
    finally:
        monitor.stop()
        provider.shutdown()


def read(reader: InMemoryMetricReader) -> tuple[Points, dict[str, Any]]:
    """(data points by instrument, the metric objects by name) of one collection."""
    points: Points = {}
    metrics: dict[str, Any] = {}
    data = reader.get_metrics_data()
    if data is None:
        return points, metrics
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "reactor-dashboard"
            for metric in scope.metrics:
                metrics[metric.name] = metric
                values = points.setdefault(metric.name, {})
                for point in metric.data.data_points:
                    assert isinstance(point, NumberDataPoint)
                    values[tuple(sorted((point.attributes or {}).items()))] = point.value
    return points, metrics


def test_every_figure_is_published_with_the_value_of_the_newest_sample(
    otel: tuple[Monitor, MemoryReactorClock, InMemoryMetricReader, MeterProvider],
) -> None:
    monitor, reactor, reader, provider = otel
    publisher = publish_metrics(monitor, provider, top_sites=5)
    assert read(reader)[0] == {}  # no sample yet: nothing to report, and none is taken
    assert list(monitor.samples()) == []
    kept: list[defer.Deferred[None]] = [defer.Deferred() for _ in range(6)]
    reactor.advance(1.0)
    points, metrics = read(reader)
    expected = figure_values(monitor.latest().data, top_sites=5)
    assert expected["twisted.deferreds.pending"][0][1] >= 6
    for figure in FIGURES:
        want = {
            tuple(sorted(zip(figure.labels, labels, strict=True))): value
            for labels, value in expected.get(figure.name, [])
        }
        assert points.get(figure.name, {}) == want, figure.name
        if want:
            metric = metrics[figure.name]
            assert metric.unit == OTEL_UNITS[figure.unit]
            assert metric.description == figure.help
            if figure.kind == "counter":
                assert isinstance(metric.data, Sum) and metric.data.is_monotonic
            else:
                assert isinstance(metric.data, Gauge)
    publisher.close()
    del kept


def test_lag_gauges_and_later_samples(
    otel: tuple[Monitor, MemoryReactorClock, InMemoryMetricReader, MeterProvider],
) -> None:
    monitor, reactor, reader, provider = otel
    reactor.advance(1.0)  # a sample exists before publishing: it is published at once
    publisher = publish_metrics(monitor, provider)
    points, _ = read(reader)
    created = points["twisted.deferreds.created"][()]
    fired: list[defer.Deferred[None]] = [defer.Deferred() for _ in range(4)]
    for d in fired:
        d.callback(None)
    reactor.advance(1.0)
    points, metrics = read(reader)
    assert points["twisted.deferreds.created"][()] >= created + 4
    lag = monitor.latest().data["loop"]["lag_ms"]
    for name, key in LAG_GAUGES.items():
        if lag[key] is None:  # no lag sample on a MemoryReactorClock: no point either
            assert name not in points
        else:
            assert points[name][()] == lag[key] / 1000.0
            assert metrics[name].unit == "s"
    publisher.update({"loop": {"lag_ms": {"p50": 1.5, "p99": 20.0, "max": 250.0}}})
    points, _ = read(reader)
    assert {name: points[name][()] for name in LAG_GAUGES} == {
        "twisted.reactor.lag.p50": 0.0015,
        "twisted.reactor.lag.p99": 0.02,
        "twisted.reactor.lag.max": 0.25,
    }


def test_callbacks_only_read_so_a_reader_thread_is_safe(
    otel: tuple[Monitor, MemoryReactorClock, InMemoryMetricReader, MeterProvider],
) -> None:
    monitor, reactor, reader, provider = otel
    publish_metrics(monitor, provider)
    reactor.advance(1.0)
    seq = monitor.latest().seq
    result: list[Points] = []
    thread = threading.Thread(target=lambda: result.append(read(reader)[0]))
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert result[0]["twisted.deferreds.pending"][()] >= 0
    assert monitor.latest().seq == seq  # the collection took no sample


def test_close_stops_following_the_monitor(
    otel: tuple[Monitor, MemoryReactorClock, InMemoryMetricReader, MeterProvider],
) -> None:
    monitor, reactor, reader, provider = otel
    publisher = publish_metrics(monitor, provider)
    reactor.advance(1.0)
    assert read(reader)[0]["twisted.deferreds.pending"]
    publisher.close()
    reactor.advance(1.0)
    assert read(reader)[0] == {}
    with pytest.raises(ValueError, match="top_sites"):
        publish_metrics(monitor, provider, top_sites=-1)
