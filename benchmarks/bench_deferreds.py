"""Deferred create + fire with the monitor started vs. not, and memory per pending Deferred.

Run: ``python -m benchmarks.bench_deferreds [--smoke]``.
"""

from __future__ import annotations

import argparse
import gc
import tracemalloc
from collections.abc import Callable, Sequence

from twisted.internet import defer

from benchmarks.common import Result, interleaved_ratio, print_table, timed
from dashboard.monitor import Monitor
from dashboard.testing import global_reactor


def inline_loop(n: int) -> Callable[[], None]:
    """The issue's statement, ``d = Deferred(); d.callback(None)``, in one loop."""

    def run() -> None:
        deferred = defer.Deferred
        for _ in range(n):
            d: defer.Deferred[None] = deferred()
            d.callback(None)

    return run


def one_per_call(n: int) -> Callable[[], None]:
    """Each Deferred made in a call of its own, as in real code (a fresh caller frame)."""

    def make() -> None:
        d: defer.Deferred[None] = defer.Deferred()
        d.callback(None)

    def run() -> None:
        for _ in range(n):
            make()

    return run


def measure(monitor: Monitor, work: Callable[[], None], pairs: int) -> tuple[float, float, float]:
    def bare() -> float:
        return timed(work)

    def instrumented() -> float:
        monitor.start()
        try:
            return timed(work)
        finally:
            monitor.stop()

    return interleaved_ratio(bare, instrumented, pairs)


def pending_bytes(monitor: Monitor | None, n: int) -> float:
    """tracemalloc bytes per pending Deferred (tracked, when the monitor runs)."""
    if monitor is not None:
        monitor.start()
    try:
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        make = defer.Deferred  # not Deferred[None](): that adds __orig_class__ to each
        keep: list[defer.Deferred[None]] = [make() for _ in range(n)]
        if monitor is not None:
            monitor.deferreds.sweep()
        used = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        del keep
        return used / n
    finally:
        if monitor is not None:
            monitor.stop()


def main(argv: Sequence[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    args = parser.parse_args(argv)
    n, pairs, pending = (2_000, 3, 2_000) if args.smoke else (200_000, 9, 100_000)
    monitor = Monitor(global_reactor())
    results: list[Result] = []
    for label, work in (("inline", inline_loop(n)), ("per call", one_per_call(n))):
        bare, inst, ratio = measure(monitor, work, pairs)
        results.append(
            Result(
                f"deferred create+fire ({label})",
                ratio,
                "x bare",
                "<= 1.6",
                ratio <= 1.6,
                f"bare {bare / n * 1e9:.0f} ns, monitored {inst / n * 1e9:.0f} ns (medians)",
            )
        )
    bare_bytes = pending_bytes(None, pending)
    monitored_bytes = pending_bytes(monitor, pending)
    extra = monitored_bytes - bare_bytes
    results.append(
        Result(
            "memory per pending Deferred",
            extra,
            "bytes",
            "<= 120",
            extra <= 120,
            f"{monitored_bytes:.0f} B monitored vs {bare_bytes:.0f} B bare, n={pending}",
        )
    )
    print_table(results)
    return results


if __name__ == "__main__":
    main()
