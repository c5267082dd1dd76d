"""Prometheus metrics: a ``prometheus_client`` collector computed at scrape time from the
monitor's newest sample, and the text exposition that ``/metrics`` serves.

Nothing is registered anywhere at import time. ``/metrics`` renders a collector directly; to
publish the same figures through a registry of your own::

    registry.register(SnapshotCollector(monitor))   # what monitor.prometheus_collector() returns

A scrape reads ``monitor.latest()`` (the sample the monitor took at its last tick, never a new
one once the first exists) and ``monitor.loop.lag_histogram()`` (a copy of 19 counters), so it
costs the same whatever the number of connections or pending Deferreds. The families and their
values come from :mod:`dashboard.metric_figures`; this module adds the lag histogram
(``twisted_reactor_lag_seconds``) and ``twisted_reactor_info``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from dashboard.metric_figures import (
    DEFAULT_TOP_SITES,
    FIGURES,
    Figure,
    figure_values,
    label_text,
)

if TYPE_CHECKING:
    from dashboard.monitor import Monitor
    from dashboard.probes.base import JSONDict

#: The Prometheus text format this module writes (``generate_latest``'s).
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

LAG_NAME = "twisted_reactor_lag"
LAG_HELP = (
    "Reactor lag: how late due delayed calls ran, and every blocked busy span, since the "
    "monitor was created."
)
HANDLER_DURATION_NAME = "twisted_reactor_handler_duration"
HANDLER_DURATION_HELP = (
    "How long each call of a handler took, since the monitor started: the program's handlers"
    " listed in twisted_reactor_handler_busy_seconds_total."
)
INFO_NAME = "twisted_reactor"
INFO_HELP = "The reactor being watched (always 1)."


class SnapshotCollector:
    """A ``prometheus_client`` collector over one :class:`~dashboard.monitor.Monitor`.

    ``top_sites``: creation sites labelled one by one in ``twisted_deferreds_pending_by_site``;
    the others are summed under ``site="other"``.

    Call ``collect()`` on the reactor thread. From another thread (prometheus_client's own
    HTTP server) it is safe once the monitor holds a sample: it then only reads.
    """

    def __init__(self, monitor: Monitor, *, top_sites: int = DEFAULT_TOP_SITES) -> None:
        if top_sites < 0:
            raise ValueError(f"top_sites must be >= 0, got {top_sites!r}")
        self.monitor = monitor
        self.top_sites = top_sites

    def describe(self) -> Iterator[Metric]:
        """Every family this collector may yield, without samples (so a registry can check for
        clashes without a scrape)."""
        for figure in FIGURES:
            yield _family(figure)
        yield HistogramMetricFamily(LAG_NAME, LAG_HELP, unit="seconds")
        yield HistogramMetricFamily(HANDLER_DURATION_NAME, HANDLER_DURATION_HELP, unit="seconds")
        yield InfoMetricFamily(INFO_NAME, INFO_HELP)

    def collect(self) -> Iterator[Metric]:
        """The families of the newest sample; a family whose section is missing is left out."""
        return self.families(self.monitor.latest().data)

    def families(self, data: JSONDict) -> Iterator[Metric]:
        """The families of the snapshot ``data`` (and the monitor's lag histogram). Any
        thread: the stuck server renders the newest sample with a live ``loop.stuck``."""
        values = figure_values(data, self.top_sites)
        for figure in FIGURES:
            samples = values.get(figure.name)
            if not samples:
                continue
            family = _family(figure)
            for labels, value in samples:
                family.add_metric(labels, value)
            yield family
        yield self._lag_histogram()
        handlers = handler_histograms(data)
        if handlers is not None:
            yield handlers
        info = InfoMetricFamily(INFO_NAME, INFO_HELP, labels=["reactor"])
        info.add_metric([str(data.get("reactor", ""))[:100]], {})
        yield info

    def _lag_histogram(self) -> HistogramMetricFamily:
        bounds_s, cumulative, sum_s, _count = self.monitor.loop.lag_histogram()
        family = HistogramMetricFamily(LAG_NAME, LAG_HELP, unit="seconds")
        family.add_metric(
            [],
            [(_le(bound), float(n)) for bound, n in zip(bounds_s, cumulative, strict=True)],
            sum_value=sum_s,
        )
        return family


def handler_histograms(data: JSONDict) -> HistogramMetricFamily | None:
    """``twisted_reactor_handler_duration_seconds{handler}``: the call durations of the
    program's listed handlers (``loop.handlers[].duration_counts`` over
    ``loop.handler_duration_bounds_ms``); None when the snapshot has none."""
    loop = data.get("loop")
    if not isinstance(loop, dict) or not isinstance(loop.get("handlers"), list):
        return None
    bounds_ms = loop.get("handler_duration_bounds_ms")
    if not isinstance(bounds_ms, list):
        return None
    bounds_s = [float(b) / 1000.0 for b in bounds_ms] + [math.inf]
    family = HistogramMetricFamily(
        HANDLER_DURATION_NAME, HANDLER_DURATION_HELP, labels=["handler"], unit="seconds"
    )
    seen: set[str] = set()
    for row in loop["handlers"]:
        if not isinstance(row, dict) or row.get("own") is True:
            continue
        counts = row.get("duration_counts")
        if not isinstance(counts, list) or len(counts) != len(bounds_s):
            continue
        label = label_text(row.get("handler"))
        if label in seen:
            continue
        seen.add(label)
        running, buckets = 0, []
        for bound, n in zip(bounds_s, counts, strict=True):
            running += int(n)
            buckets.append((_le(bound), float(running)))
        family.add_metric([label], buckets, sum_value=float(row.get("busy_s_total") or 0.0))
    return family


def exposition(collector: SnapshotCollector) -> bytes:
    """The Prometheus text exposition (format 0.0.4) of one collect() of ``collector``."""
    return generate_latest(collector)


def _family(figure: Figure) -> CounterMetricFamily | GaugeMetricFamily:
    labels = list(figure.labels)
    if figure.kind == "counter":
        return CounterMetricFamily(
            figure.prometheus_base, figure.help, labels=labels, unit=figure.unit
        )
    return GaugeMetricFamily(figure.prometheus_base, figure.help, labels=labels, unit=figure.unit)


def _le(bound_s: float) -> str:
    # repr() spells a float as prometheus_client does ("5e-05", "0.1", "1.0").
    return "+Inf" if math.isinf(bound_s) else repr(float(bound_s))
