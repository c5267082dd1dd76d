"""The figures a snapshot publishes as metrics, independent of the metrics library.

One table (:data:`FIGURES`) names every metric family once; :func:`figure_values` reads a
snapshot dict (``Sample.data``) into values for it. The Prometheus collector
(:mod:`dashboard.web.prometheus`) and the OpenTelemetry publisher (:mod:`dashboard.otel`) both
render these, so the two never disagree on a name, a unit or a value.

Names are dotted (``twisted.deferreds.pending``, the OpenTelemetry form); the Prometheus name
replaces the dots with underscores and appends the unit and ``_total`` for counters
(``twisted_deferreds_created_total``, ``twisted_process_cpu_seconds_total``).

Label cardinality is bounded: creation sites are cut to the ``top_sites`` with the most pending
Deferreds, the rest summed under ``site="other"``; sites that lost Deferreds are the probe's
``lost_sites`` (at most 20, newest loss first), cut to ``top_sites`` too; pools are bounded by
the pools probe (50 per kind plus one summed entry, 100 of users'); every other label has a
fixed set of values.

The program's figures exclude the dashboard's own work (its Deferreds, connections, port and
delayed calls, the snapshot's ``own`` keys); those are published apart under
``twisted.monitor.*`` names, so a sum over the program's families never counts the dashboard.

Pure functions of data: any thread may call them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import attrs

#: Creation sites labelled one by one; the rest are summed under ``site="other"``.
DEFAULT_TOP_SITES = 20
#: Snapshot sections that come from a probe of the same name.
PROBE_SECTIONS = ("loop", "deferreds", "connections", "pools", "timeouts", "process")
#: Longest label value kept (site names are ``path:line in function``).
MAX_LABEL_CHARS = 200

Labels = tuple[str, ...]
#: base name -> [(label values, value)]
FigureValues = dict[str, list[tuple[Labels, float]]]


@attrs.frozen
class Figure:
    """One metric family: dotted base ``name`` without unit, ``kind``, ``unit`` (the Prometheus
    suffix: ``seconds``, ``bytes``, ``ratio`` or none), ``help`` text and label names."""

    name: str
    kind: Literal["gauge", "counter"]
    help: str
    unit: str = ""
    labels: Labels = ()

    @property
    def prometheus_base(self) -> str:
        """The Prometheus family name, unit included, without ``_total``."""
        base = self.name.replace(".", "_")
        return f"{base}_{self.unit}" if self.unit else base

    @property
    def prometheus_name(self) -> str:
        """The name as it appears on exposition lines."""
        return self.prometheus_base + ("_total" if self.kind == "counter" else "")


_G: Literal["gauge"] = "gauge"
_C: Literal["counter"] = "counter"

FIGURES: tuple[Figure, ...] = (
    # the monitor itself
    Figure(
        "twisted.monitor.last_sample_timestamp",
        _G,
        "Unix time of the snapshot these figures come from.",
        "seconds",
    ),
    Figure("twisted.probe.errors", _C, "Failures caught inside probes, by probe.", "", ("probe",)),
    Figure(
        "twisted.probe.disabled",
        _G,
        "1 for a probe disabled after repeated failures.",
        "",
        ("probe",),
    ),
    # the monitor's own work, apart from the program's figures
    Figure(
        "twisted.monitor.deferreds.pending",
        _G,
        "The dashboard's own Deferreds created and not yet fired (not in the program's).",
    ),
    Figure("twisted.monitor.deferreds.created", _C, "The dashboard's own Deferreds created."),
    Figure(
        "twisted.monitor.connections.open",
        _G,
        "Connections accepted on the dashboard's own port (not in the program's).",
    ),
    Figure(
        "twisted.monitor.delayed_calls",
        _G,
        "The dashboard's own pending delayed calls (not in the program's).",
    ),
    # loop
    Figure(
        "twisted.reactor.busy",
        _G,
        "Share of wall time the reactor spent outside its poller wait, over the last interval.",
        "ratio",
    ),
    Figure("twisted.reactor.iterations", _C, "Reactor loop iterations (poller waits)."),
    Figure(
        "twisted.reactor.blocks",
        _C,
        "Busy spans at or above the block threshold (the reactor was blocked).",
    ),
    Figure(
        "twisted.reactor.block_threshold",
        _G,
        "How long a busy span must last to count as a block.",
        "seconds",
    ),
    Figure(
        "twisted.reactor.stuck",
        _G,
        "How long the reactor has been stuck in the busy span still running, once past the"
        " block threshold (answered by the stuck server's thread); 0 while the loop runs.",
        "seconds",
    ),
    Figure(
        "twisted.reactor.handler.busy",
        _C,
        "Time the reactor spent in each handler (what it calls: a delayed call's function, a"
        " protocol's dataReceived...), since the monitor started; the handlers busiest in the"
        " last window (loop.handlers_window_s), the dashboard's own apart.",
        "seconds",
        ("handler",),
    ),
    Figure(
        "twisted.reactor.handler.calls",
        _C,
        "Calls of each handler since the monitor started (the same handlers as"
        " twisted_reactor_handler_busy_seconds_total).",
        "",
        ("handler",),
    ),
    Figure(
        "twisted.monitor.handler.busy",
        _C,
        "Time the reactor spent in the dashboard's own handlers (its sampler, its own port's"
        " HTTP channel), among the busiest; not in twisted_reactor_handler_busy_seconds_total.",
        "seconds",
        ("handler",),
    ),
    Figure(
        "twisted.monitor.handler.calls",
        _C,
        "Calls of the dashboard's own handlers (as twisted_monitor_handler_busy_seconds_total).",
        "",
        ("handler",),
    ),
    # deferreds
    Figure("twisted.deferreds.pending", _G, "Deferreds created and not yet fired nor collected."),
    Figure("twisted.deferreds.created", _C, "Deferreds created."),
    Figure("twisted.deferreds.fired", _C, "Deferreds fired (callback or errback)."),
    Figure(
        "twisted.deferreds.unfired_collected",
        _C,
        "Deferreds garbage-collected without ever firing.",
    ),
    Figure(
        "twisted.deferreds.oldest_pending_age",
        _G,
        "Age of the oldest tracked pending Deferred.",
        "seconds",
    ),
    Figure(
        "twisted.deferreds.pending_by_site",
        _G,
        'Pending Deferreds by creation site (the busiest sites; the rest under site="other").',
        "",
        ("site",),
    ),
    Figure(
        "twisted.deferreds.unfired_collected_by_site",
        _C,
        "Deferreds garbage-collected without ever firing, by creation site (the sites that "
        "lost one most recently).",
        "",
        ("site",),
    ),
    Figure(
        "twisted.deferreds.cancelled",
        _C,
        "Deferreds the program cancelled outside any delayed call (not timeouts).",
    ),
    Figure(
        "twisted.deferreds.loop_pending",
        _G,
        "Pending Deferreds of running LoopingCalls (long-lived by design, not stuck work).",
    ),
    # connections
    Figure(
        "twisted.connections.open",
        _G,
        "Open connections by kind (tcp_server, tcp_client, unix_server, unix_client, other).",
        "",
        ("kind",),
    ),
    Figure("twisted.connections.tls_open", _G, "Open connections carrying TLS (any kind)."),
    Figure("twisted.connections.opened", _C, "Connections opened."),
    Figure("twisted.connections.closed", _C, "Connections closed."),
    Figure("twisted.connections.failed_connects", _C, "Outgoing connection attempts that failed."),
    Figure(
        "twisted.connections.slow_consumers",
        _G,
        "Connections whose pending outgoing bytes exceed the transport's buffer size.",
    ),
    # pools
    Figure(
        "twisted.pool.in_use",
        _G,
        "Pool resources handed out now (threads, connections).",
        "",
        ("pool", "kind"),
    ),
    Figure(
        "twisted.pool.idle", _G, "Pool resources ready and not handed out.", "", ("pool", "kind")
    ),
    Figure("twisted.pool.waiting", _G, "Callers queued for a pool resource.", "", ("pool", "kind")),
    Figure(
        "twisted.pool.max",
        _G,
        "The most resources a pool hands out at once (absent when unbounded or per host).",
        "",
        ("pool", "kind"),
    ),
    Figure(
        "twisted.pool.max_per_host",
        _G,
        "Idle connections an HTTP pool keeps per host (in use is unbounded).",
        "",
        ("pool", "kind"),
    ),
    # timeouts
    Figure("twisted.delayed_calls", _G, "Pending reactor delayed calls (callLater)."),
    Figure("twisted.delayed_calls.overdue", _G, "Pending delayed calls already past their time."),
    Figure(
        "twisted.timeouts",
        _C,
        "Timeouts that fired, by kind (deferred, connect, protocol).",
        "",
        ("kind",),
    ),
    # process
    Figure("twisted.process.resident_memory", _G, "Resident set size.", "bytes"),
    Figure(
        "twisted.process.cpu", _C, "CPU time used, by mode (user, system).", "seconds", ("mode",)
    ),
    Figure("twisted.process.open_fds", _G, "Open file descriptors."),
    Figure("twisted.process.threads", _G, "Threads in the process."),
    Figure("twisted.process.start_time", _G, "Unix time the process started.", "seconds"),
    Figure(
        "twisted.python.gc_collections",
        _C,
        "Garbage collector runs, by generation.",
        "",
        ("generation",),
    ),
    Figure("twisted.python.gc_objects_collected", _C, "Objects the garbage collector freed."),
)

FIGURES_BY_NAME: dict[str, Figure] = {f.name: f for f in FIGURES}


def figure_values(data: Mapping[str, Any], top_sites: int = DEFAULT_TOP_SITES) -> FigureValues:
    """The value of every figure in the snapshot ``data``. A section that is missing or None (its
    probe failed) and a field that is None give no value: that family is simply absent."""
    out: FigureValues = {}
    _monitor(out, data)
    if isinstance(loop := data.get("loop"), Mapping):
        _loop(out, loop)
    if isinstance(deferreds := data.get("deferreds"), Mapping):
        _deferreds(out, deferreds, top_sites)
    if isinstance(connections := data.get("connections"), Mapping):
        _connections(out, connections)
    if isinstance(pools := data.get("pools"), list):
        _pools(out, pools)
    if isinstance(timeouts := data.get("timeouts"), Mapping):
        _timeouts(out, timeouts)
    if isinstance(process := data.get("process"), Mapping):
        _process(out, process)
    return out


def _put(out: FigureValues, name: str, value: Any, labels: Labels = ()) -> None:
    """Add one value; None, booleans and non-finite numbers are skipped."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    number = float(value)
    if math.isfinite(number):
        out.setdefault(name, []).append((labels, number))


def _label(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_LABEL_CHARS else text[: MAX_LABEL_CHARS - 3] + "..."


#: A label value as every family cuts it (at ``MAX_LABEL_CHARS``).
label_text = _label


def _section(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """``data[name]`` when it is a mapping, else an empty one (missing, or its probe failed)."""
    section = data.get(name)
    return section if isinstance(section, Mapping) else {}


def _own(out: FigureValues, data: Mapping[str, Any]) -> None:
    """The dashboard's own work (the ``own`` keys), under ``twisted.monitor.*``."""
    deferreds = _section(_section(data, "deferreds"), "own")
    _put(out, "twisted.monitor.deferreds.pending", deferreds.get("pending"))
    _put(out, "twisted.monitor.deferreds.created", deferreds.get("created_total"))
    _put(
        out,
        "twisted.monitor.connections.open",
        _section(_section(data, "connections"), "own").get("open"),
    )
    _put(out, "twisted.monitor.delayed_calls", _section(data, "timeouts").get("own_calls"))


def _monitor(out: FigureValues, data: Mapping[str, Any]) -> None:
    _put(out, "twisted.monitor.last_sample_timestamp", data.get("time"))
    _own(out, data)
    errors = data.get("errors")
    if not isinstance(errors, Mapping):
        return
    by_probe = errors.get("by_probe") or {}
    disabled = set(errors.get("disabled") or ())
    # Every probe from its first scrape, at 0: a counter that first appears at 1 hides that
    # first failure from rate() and increase().
    probes = {name for name in PROBE_SECTIONS if name in data}
    for probe in sorted(probes | set(by_probe) | disabled):
        _put(out, "twisted.probe.errors", by_probe.get(probe, 0), (_label(probe),))
        _put(out, "twisted.probe.disabled", 1 if probe in disabled else 0, (_label(probe),))


def _loop(out: FigureValues, loop: Mapping[str, Any]) -> None:
    _put(out, "twisted.reactor.busy", loop.get("busy_ratio"))
    _put(out, "twisted.reactor.iterations", loop.get("iterations_total"))
    _put(out, "twisted.reactor.blocks", loop.get("blocks_total"))
    threshold_ms = loop.get("threshold_ms")
    if isinstance(threshold_ms, int | float):
        _put(out, "twisted.reactor.block_threshold", threshold_ms / 1000.0)
    stuck = loop.get("stuck")
    _put(out, "twisted.reactor.stuck", stuck.get("for_s") if isinstance(stuck, Mapping) else 0)
    _handlers(out, loop)


def _handlers(out: FigureValues, loop: Mapping[str, Any]) -> None:
    """The listed handlers' totals (the top N of the window, at most ``loop.handlers``'s
    length): the program's under ``twisted.reactor.handler.*``, the dashboard's own under
    ``twisted.monitor.handler.*``. A label cut to the same text as an earlier one is skipped."""
    rows = loop.get("handlers")
    if not isinstance(rows, list):
        return
    seen: set[str] = set()
    for row in rows:
        if not isinstance(row, Mapping):
            continue
        label = _label(row.get("handler"))
        if label in seen:
            continue
        seen.add(label)
        family = "twisted.monitor.handler" if row.get("own") is True else "twisted.reactor.handler"
        _put(out, f"{family}.busy", row.get("busy_s_total"), (label,))
        _put(out, f"{family}.calls", row.get("calls_total"), (label,))


def _deferreds(out: FigureValues, section: Mapping[str, Any], top_sites: int) -> None:
    pending = section.get("pending")
    _put(out, "twisted.deferreds.pending", pending)
    _put(out, "twisted.deferreds.created", section.get("created_total"))
    _put(out, "twisted.deferreds.fired", section.get("fired_total"))
    _put(out, "twisted.deferreds.unfired_collected", section.get("unfired_collected_total"))
    _put(out, "twisted.deferreds.oldest_pending_age", section.get("oldest_pending_age_s"))
    by_site: dict[str, float] = {}
    for row in section.get("sites") or ():
        # The probe's own overflow site joins ours; duplicate names (after the cut) are summed.
        name = row.get("site")
        site = "other" if name == "<other sites>" else _label(name)
        by_site[site] = by_site.get(site, 0.0) + float(row.get("pending") or 0)
    listed = by_site.pop("other", 0.0)
    shown = sorted(by_site.items(), key=lambda item: (-item[1], item[0]))[: max(0, top_sites)]
    # Whatever is not labelled one by one (cut here, or never listed by the probe) is "other".
    total = float(pending) if isinstance(pending, int | float) else sum(by_site.values()) + listed
    other = max(0.0, total - sum(value for _, value in shown))
    for site, value in shown:
        _put(out, "twisted.deferreds.pending_by_site", value, (site,))
    _put(out, "twisted.deferreds.pending_by_site", other, ("other",))
    _lost_sites(out, section, top_sites)
    loops = section.get("loops")
    if isinstance(loops, Mapping):
        _put(out, "twisted.deferreds.loop_pending", loops.get("pending"))


def _lost_sites(out: FigureValues, section: Mapping[str, Any], top_sites: int) -> None:
    """Each listed site's unfired-collected count. No ``other``: a site leaving the list
    would make it jump, read as a counter reset by ``rate()``; the unlabelled
    ``twisted_deferreds_unfired_collected_total`` holds every loss."""
    lost = section.get("lost_sites")
    if not isinstance(lost, list):
        return
    seen: set[str] = set()
    for row in lost:
        if not isinstance(row, Mapping) or len(seen) >= max(0, top_sites):
            continue
        site = _label(row.get("site"))
        if site in seen:  # two names cut to the same label: keep the first (newest)
            continue
        seen.add(site)
        _put(
            out,
            "twisted.deferreds.unfired_collected_by_site",
            row.get("unfired_collected_total"),
            (site,),
        )


def _connections(out: FigureValues, section: Mapping[str, Any]) -> None:
    by_kind = section.get("by_kind") or {}
    for kind, count in sorted(by_kind.items()):
        if kind == "tls":  # overlaps the others: its own family, so sum(by kind) stays true
            _put(out, "twisted.connections.tls_open", count)
        else:
            _put(out, "twisted.connections.open", count, (_label(kind),))
    _put(out, "twisted.connections.opened", section.get("opened_total"))
    _put(out, "twisted.connections.closed", section.get("closed_total"))
    _put(out, "twisted.connections.failed_connects", section.get("failed_connects_total"))
    _put(out, "twisted.connections.slow_consumers", section.get("slow_consumers"))


def _pools(out: FigureValues, pools: list[Any]) -> None:
    seen: set[Labels] = set()
    for pool in pools:
        if not isinstance(pool, Mapping):
            continue
        labels = (_label(pool.get("name")), _label(pool.get("kind")))
        if labels in seen:  # two pools may share a user-given name: keep the first
            continue
        seen.add(labels)
        _put(out, "twisted.pool.in_use", pool.get("in_use"), labels)
        _put(out, "twisted.pool.idle", pool.get("idle"), labels)
        _put(out, "twisted.pool.waiting", pool.get("waiting"), labels)
        # An HTTP pool's max is per destination: in_use / max over the pool would mislead.
        if pool.get("max_scope") != "per_key":
            _put(out, "twisted.pool.max", pool.get("max"), labels)
        _put(out, "twisted.pool.max_per_host", pool.get("max_per_host"), labels)


def _timeouts(out: FigureValues, section: Mapping[str, Any]) -> None:
    _put(out, "twisted.delayed_calls", section.get("delayed_calls"))
    _put(out, "twisted.delayed_calls.overdue", section.get("overdue_calls"))
    for kind, count in sorted((section.get("fired_total") or {}).items()):
        _put(out, "twisted.timeouts", count, (_label(kind),))
    _put(out, "twisted.deferreds.cancelled", section.get("cancelled_total"))


def _process(out: FigureValues, section: Mapping[str, Any]) -> None:
    _put(out, "twisted.process.resident_memory", section.get("rss_bytes"))
    _put(out, "twisted.process.cpu", section.get("cpu_user_s"), ("user",))
    _put(out, "twisted.process.cpu", section.get("cpu_system_s"), ("system",))
    _put(out, "twisted.process.open_fds", section.get("open_fds"))
    _put(out, "twisted.process.threads", section.get("threads"))
    _put(out, "twisted.process.start_time", section.get("started_at"))
    gc_stats = section.get("gc")
    if isinstance(gc_stats, Mapping):
        for generation, runs in enumerate(gc_stats.get("collections") or ()):
            _put(out, "twisted.python.gc_collections", runs, (str(generation),))
        _put(out, "twisted.python.gc_objects_collected", gc_stats.get("collected_total"))
