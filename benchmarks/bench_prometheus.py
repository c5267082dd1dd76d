"""Reactor time of one ``/metrics`` scrape with 100 creation sites and 1,000 connections.

Budget: at most 5 ms. Timed in-process, so the figure is the reactor's share and not the
client's or the kernel's: the ``/metrics`` route handler as the reactor runs it (parameter check,
collector over the newest sample with the top 20 sites labelled, text exposition, headers), and
the worst case of a collector that labels all 100 sites. A fresh snapshot is timed in the same
loop, interleaved, to show what a scrape would cost if it took one.
Run: ``python -m benchmarks.bench_prometheus [--smoke]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred

from benchmarks.bench_snapshot import close_connections, make_connections, make_sites
from benchmarks.common import Result, interleaved_ratio, print_table
from dashboard.metric_figures import DEFAULT_TOP_SITES
from dashboard.monitor import Monitor
from dashboard.testing import global_reactor
from dashboard.web.app import DashboardApp
from dashboard.web.prometheus import SnapshotCollector, exposition

BUDGET_MS = 5.0


class _ScrapeRequest:
    """The parts of a twisted.web request the /metrics handler touches: the body is written
    through a producer (dashboard/web/bulk_body.py) to a transport that never pushes back."""

    method = b"GET"
    channel = None
    transport = None

    def __init__(self) -> None:
        self.args: dict[bytes, list[bytes]] = {}
        self.headers: dict[bytes, bytes] = {}
        self.code = 0
        self.written: list[bytes] = []
        self.producer: Any = None
        self._finished: Deferred[None] = Deferred()

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.headers[name] = value

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def notifyFinish(self) -> Deferred[None]:
        return self._finished

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def body(self) -> bytes:
        assert self.code == 200, self.code
        return b"".join(self.written)


def parse(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Exposition text -> {sample name: {sorted label pairs: value}} (checks it parses)."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def main(argv: Sequence[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="few scrapes, for the test suite")
    args = parser.parse_args(argv)
    sites, per_site, conns, pairs = (100, 3, 1_000, 15) if args.smoke else (100, 10, 1_000, 301)
    reactor = global_reactor()
    monitor = Monitor(reactor, top_sites=sites)
    monitor.start()
    try:
        pending = make_sites(sites, per_site)
        connections = make_connections(reactor, conns)
        monitor.sample()
        handler: Any = DashboardApp(monitor).metrics
        every_site = SnapshotCollector(monitor, top_sites=sites)
        bodies: dict[str, bytes] = {}

        def route() -> float:
            request = _ScrapeRequest()
            start = time.perf_counter()
            handler(request)
            elapsed = time.perf_counter() - start
            bodies["route"] = request.body()
            return elapsed

        def all_sites() -> float:
            start = time.perf_counter()
            bodies["all_sites"] = exposition(every_site)
            return time.perf_counter() - start

        def snapshot() -> float:
            start = time.perf_counter()
            monitor.snapshot()
            return time.perf_counter() - start

        snapshot_s, route_s, route_ratio = interleaved_ratio(snapshot, route, pairs)
        _, all_sites_s, all_sites_ratio = interleaved_ratio(snapshot, all_sites, pairs)
        route_text = bodies["route"].decode()
        all_text = bodies["all_sites"].decode()
        route_sites = parse(route_text)["twisted_deferreds_pending_by_site"]
        assert len(route_sites) == DEFAULT_TOP_SITES + 1, len(route_sites)  # and "other"
        samples = parse(all_text)
        assert len(samples["twisted_deferreds_pending_by_site"]) >= sites + 1
        assert samples["twisted_connections_open"][(("kind", "other"),)] >= conns
        close_connections(connections)
        del pending
    finally:
        monitor.stop()
    context = f"{sites} sites, {conns} connections, {pairs} scrapes"
    results = [
        _row(
            "prometheus scrape (route)",
            route_s,
            f"{context}, top {DEFAULT_TOP_SITES} sites labelled, {len(route_text)} bytes; "
            f"scrape/fresh snapshot {route_ratio:.2f}",
        ),
        _row(
            "prometheus scrape (100 sites labelled)",
            all_sites_s,
            f"{context}, every site labelled, {len(all_text)} bytes; "
            f"scrape/fresh snapshot {all_sites_ratio:.2f} ({snapshot_s * 1000:.2f} ms)",
        ),
    ]
    print_table(results)
    return results


def _row(name: str, seconds: float, detail: str) -> Result:
    ms = seconds * 1000
    return Result(name, ms, "ms (median)", f"<= {BUDGET_MS:g}", ms <= BUDGET_MS, detail)


if __name__ == "__main__":
    main()
