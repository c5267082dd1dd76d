"""How long one snapshot takes at scale, and memory per tracked connection.

100,000 pending Deferreds over 1,000 sites, 10,000 connections and 10,000 delayed calls.
Run: ``python -m benchmarks.bench_snapshot [--smoke]``.
"""

from __future__ import annotations

import argparse
import gc
import socket
import statistics
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, protocol, tcp

from benchmarks.common import Result, print_table
from dashboard.monitor import Monitor
from dashboard.testing import global_reactor


def make_sites(sites: int, per_site: int) -> list[defer.Deferred[None]]:
    """``sites`` distinct creation lines, each leaving ``per_site`` Deferreds pending."""
    keep: list[defer.Deferred[None]] = []
    namespace: dict[str, Any] = {"Deferred": defer.Deferred}
    for i in range(sites):
        code = compile(
            f"def site_{i}(n):\n    return [Deferred() for _ in range(n)]\n", f"<site {i}>", "exec"
        )
        exec(code, namespace)
        keep.extend(namespace[f"site_{i}"](per_site))
    return keep


def make_connections(reactor: Any, count: int) -> list[tcp.Connection]:
    """``count`` TCP transports built as Twisted builds them (one unconnected socket each)."""
    made = []
    for _ in range(count):
        proto: Any = protocol.Protocol()
        made.append(tcp.Connection(socket.socket(), proto, reactor))
    return made


def close_connections(made: list[tcp.Connection]) -> None:
    for conn in made:
        conn.socket.close()


def main(argv: Sequence[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    args = parser.parse_args(argv)
    sites, per_site, conns, calls, runs = (
        (20, 5, 50, 50, 3) if args.smoke else (1_000, 100, 10_000, 10_000, 21)
    )
    reactor = global_reactor()
    monitor = Monitor(reactor)
    monitor.start()
    try:
        pending = make_sites(sites, per_site)
        monitor.deferreds.sweep()
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        connections = make_connections(reactor, conns)
        per_connection_total = (tracemalloc.get_traced_memory()[0] - before) / conns
        tracemalloc.stop()
        functions = [lambda: None for _ in range(20)]
        delayed = [reactor.callLater(3600, functions[i % 20]) for i in range(calls)]
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            snap = monitor.snapshot()
            times.append(time.perf_counter() - start)
        assert snap["deferreds"]["pending"] >= sites * per_site, snap["deferreds"]["pending"]
        assert snap["connections"]["open"] >= conns, snap["connections"]["open"]
        # Above 4,096 pending calls the dashboard's own few are estimated from a sample
        # (by_function_sampled), so the program's count may be off by a few.
        timeouts = snap["timeouts"]
        slack = 0.01 * calls if timeouts["by_function_sampled"] else 0
        assert timeouts["delayed_calls"] >= calls - slack, timeouts["delayed_calls"]
        for call in delayed:
            call.cancel()
        close_connections(connections)
        del pending
    finally:
        monitor.stop()
    median_ms = statistics.median(times) * 1000
    # The bare transport is measured the same way, so the difference is the probe's share.
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    bare = make_connections(reactor, conns)
    bare_per_connection = (tracemalloc.get_traced_memory()[0] - before) / conns
    tracemalloc.stop()
    close_connections(bare)
    results = [
        Result(
            "snapshot at scale",
            median_ms,
            "ms (median)",
            "<= 5",
            median_ms <= 5,
            f"{sites * per_site} pending Deferreds / {sites} sites, {conns} connections, "
            f"{calls} delayed calls, {runs} runs, max {max(times) * 1000:.1f} ms",
        ),
        Result(
            "memory per connection",
            per_connection_total - bare_per_connection,
            "bytes",
            "<= 400",
            per_connection_total - bare_per_connection <= 400,
            f"{per_connection_total:.0f} B monitored vs {bare_per_connection:.0f} B bare",
        ),
    ]
    print_table(results)
    return results


if __name__ == "__main__":
    main()
