"""OpenTelemetry metrics: the figures of ``/metrics`` as observable instruments.

The optional extra ``reactor-dashboard[otel]`` (``opentelemetry-api``; add the SDK and an
exporter of your choice)::

    from dashboard.otel import publish_metrics

    publisher = publish_metrics(monitor)        # the global MeterProvider, or meter_provider=...
    ...
    publisher.close()

Every family of :data:`dashboard.metric_figures.FIGURES` becomes one instrument with the
dotted name (``twisted.deferreds.pending``): counters are observable counters (cumulative,
monotonic), the rest observable gauges; units are UCUM (``s``, ``By``, ``1``), so an
OpenTelemetry-to-Prometheus exporter gives back the ``/metrics`` names. The API has no
observable histogram, so reactor lag is published as three gauges over the monitor's history
window: ``twisted.reactor.lag.p50``, ``.p99`` and ``.max`` (seconds).

Values are computed once per monitor sample, on the reactor thread (a subscriber); the
instruments' callbacks, called by whatever thread the SDK's reader runs on, only read them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from dashboard import __version__
from dashboard.metric_figures import DEFAULT_TOP_SITES, FIGURES, Figure, FigureValues, figure_values

if TYPE_CHECKING:
    from dashboard.monitor import Monitor, Sample

METER_NAME = "reactor-dashboard"
#: Prometheus unit suffix -> UCUM unit (what OpenTelemetry exporters translate back).
OTEL_UNITS = {"seconds": "s", "bytes": "By", "ratio": "1", "": ""}
#: lag gauges: name -> key of the snapshot's ``loop.lag_ms``
LAG_GAUGES = {
    "twisted.reactor.lag.p50": "p50",
    "twisted.reactor.lag.p99": "p99",
    "twisted.reactor.lag.max": "max",
}

Callback = Callable[[CallbackOptions], Iterable[Observation]]


@attrs.define(eq=False)
class MetricsPublisher:
    """Holds the newest figures for the instruments' callbacks. Made by :func:`publish_metrics`.

    ``close()`` (reactor thread) stops following the monitor; from then on the instruments
    report nothing (the OpenTelemetry API cannot remove an instrument).
    """

    top_sites: int
    _values: FigureValues = attrs.field(factory=dict)
    _lag_s: dict[str, float] = attrs.field(factory=dict)
    _unsubscribe: Callable[[], None] | None = None

    def update(self, data: Mapping[str, Any]) -> None:
        """Take the figures of one snapshot dict. Reactor thread."""
        values = figure_values(data, self.top_sites)
        lag_s: dict[str, float] = {}
        loop = data.get("loop")
        lag_ms = loop.get("lag_ms") if isinstance(loop, Mapping) else None
        if isinstance(lag_ms, Mapping):
            for name, key in LAG_GAUGES.items():
                value = lag_ms.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    lag_s[name] = value / 1000.0
        # Two reference swaps: a reader thread sees the old or the new figures, never half.
        self._values = values
        self._lag_s = lag_s

    def follow(self, monitor: Monitor) -> None:
        """Publish ``monitor``'s newest sample (if any, without taking one) and every later one.
        Reactor thread."""
        if self._unsubscribe is not None:
            raise RuntimeError("this publisher already follows a monitor")
        newest = list(monitor.samples())[-1:]
        if newest:
            self.update(newest[0].data)
        self._unsubscribe = monitor.subscribe(self.on_sample)

    def on_sample(self, sample: Sample) -> None:
        """The monitor subscriber. Reactor thread."""
        self.update(sample.data)

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._values = {}
        self._lag_s = {}

    def observations(self, figure: Figure) -> list[Observation]:
        """What the instrument of ``figure`` reports now. Any thread."""
        return [
            Observation(value, dict(zip(figure.labels, labels, strict=True)))
            for labels, value in self._values.get(figure.name, ())
        ]

    def lag_observations(self, name: str) -> list[Observation]:
        value = self._lag_s.get(name)
        return [] if value is None else [Observation(value)]


def publish_metrics(
    monitor: Monitor,
    meter_provider: MeterProvider | None = None,
    *,
    top_sites: int = DEFAULT_TOP_SITES,
) -> MetricsPublisher:
    """Create the observable instruments on ``meter_provider`` (default: the global one) and
    keep them fed from ``monitor``'s samples. Reactor thread. The newest sample, if any, is
    published at once; ``top_sites`` as for Prometheus (the rest under ``site="other"``)."""
    if top_sites < 0:
        raise ValueError(f"top_sites must be >= 0, got {top_sites!r}")
    meter = metrics.get_meter(METER_NAME, __version__, meter_provider=meter_provider)
    publisher = MetricsPublisher(top_sites)
    for figure in FIGURES:
        unit = OTEL_UNITS.get(figure.unit, figure.unit)
        callback = _figure_callback(publisher, figure)
        if figure.kind == "counter":
            meter.create_observable_counter(figure.name, [callback], unit, figure.help)
        else:
            meter.create_observable_gauge(figure.name, [callback], unit, figure.help)
    for name, key in LAG_GAUGES.items():
        meter.create_observable_gauge(
            name,
            [_lag_callback(publisher, name)],
            "s",
            f"Reactor lag, {key} over the monitor's history window.",
        )
    publisher.follow(monitor)
    return publisher


def _figure_callback(publisher: MetricsPublisher, figure: Figure) -> Callback:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        return publisher.observations(figure)

    return observe


def _lag_callback(publisher: MetricsPublisher, name: str) -> Callback:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        return publisher.lag_observations(name)

    return observe
