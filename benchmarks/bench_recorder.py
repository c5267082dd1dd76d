"""The flight recorder's cost on the reactor thread, at 50 KB samples.

The reactor thread's part of recording is the Monitor's subscriber: ``RecordingWriter.offer``
puts the sample's already-encoded bytes on a queue; the writer thread compresses and commits
them. Two figures:

- **per-sample reactor-thread time with recording, minus without**: ``Monitor.sample()`` timed
  on a recording monitor and on a bare one, in alternating order (pairs of runs of
  ``--samples`` samples each, a few ms apart so the writer thread works while the next
  sample is taken, as it does in a program), medians. Budget: <= 0.5 ms (issue 16).
- **offer() alone**: the median and p99 of the subscriber call itself.

Run: ``python -m benchmarks.bench_recorder [--smoke]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import Result, print_table
from dashboard.monitor import Monitor
from dashboard.testing import global_reactor

SITE_PATH = "/srv/recorded-program/handlers/module_{:04d}_answering_a_long_descriptive_route.py"
TARGET_BYTES = 50_000
BUDGET_MS = 0.5


def pending_at_sites(count: int, start: int = 0) -> list[Any]:
    """One pending Deferred at each of ``count`` distinct sites (files of their own)."""
    from twisted.internet.defer import Deferred

    held = []
    for number in range(start, start + count):
        namespace: dict[str, Any] = {"Deferred": Deferred}
        code = compile(
            "def handle_request_for_this_route():\n    return Deferred()\n",
            SITE_PATH.format(number),
            "exec",
        )
        exec(code, namespace)
        held.append(namespace["handle_request_for_this_route"]())
    return held


def run_arm(monitor: Monitor, samples: int, gap_s: float) -> list[float]:
    """Seconds of each of ``samples`` ``monitor.sample()`` calls, ``gap_s`` apart."""
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        monitor.sample()
        times.append(time.perf_counter() - started)
        time.sleep(gap_s)
    return times


def main(argv: Sequence[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument("--samples", type=int, default=None, help="samples per run")
    args = parser.parse_args(argv)
    pairs, samples = (2, 5) if args.smoke else (10, args.samples or 40)
    gap_s = 0.005
    reactor = global_reactor()
    folder = Path(tempfile.mkdtemp(prefix="bench-recorder-"))
    path = folder / "bench.db"
    sites = 200  # about 50 KB samples
    held: list[Any] = []
    with_ms: list[float] = []
    without_ms: list[float] = []
    offers: list[float] = []
    size = 0
    written = dropped = 0
    for pair in range(pairs):
        order = (True, False) if pair % 2 == 0 else (False, True)
        for recording in order:
            monitor = Monitor(
                reactor,
                top_sites=sites,
                record=str(path) if recording else None,
                record_max_mb=64,
            )
            monitor.start()
            recorder = monitor.recorder
            try:
                held = pending_at_sites(sites)  # made while watched: listed by site
                monitor.sample()  # warm
                if recorder is not None:  # the subscriber call alone, timed
                    offer = recorder.offer

                    def timed_offer(sample: Any, offer: Any = offer) -> None:
                        started = time.perf_counter()
                        offer(sample)
                        offers.append(time.perf_counter() - started)

                    monitor._subscribers[monitor._subscribers.index(offer)] = timed_offer
                times = run_arm(monitor, samples, gap_s)
                size = len(monitor.latest().encoded)
                (with_ms if recording else without_ms).append(statistics.median(times) * 1000)
            finally:
                monitor.stop()  # writes what is queued
                held.clear()
            if recorder is not None:
                written += recorder.written_total
                dropped += recorder.dropped_total
    extra_ms = statistics.median(with_ms) - statistics.median(without_ms)
    pair_extra = statistics.median(w - b for w, b in zip(with_ms, without_ms, strict=True))
    offers.sort()
    offer_ms = statistics.median(offers) * 1000 if offers else float("nan")
    offer_p99 = offers[min(len(offers) - 1, int(len(offers) * 0.99))] * 1000 if offers else 0.0
    results = [
        Result(
            "recorder reactor-thread cost per sample",
            max(pair_extra, 0.0),
            "ms (median)",
            f"<= {BUDGET_MS}",
            pair_extra <= BUDGET_MS,
            f"{size / 1000:.0f} KB samples; sample() {statistics.median(with_ms):.2f} ms"
            f" recording vs {statistics.median(without_ms):.2f} ms bare"
            f" (difference of medians {extra_ms:+.3f} ms); {pairs} pairs x {samples} samples;"
            f" {written} written, {dropped} dropped",
        ),
        Result(
            "recorder offer() on the reactor thread",
            offer_ms,
            "ms (median)",
            f"<= {BUDGET_MS}",
            offer_ms <= BUDGET_MS,
            f"p99 {offer_p99:.3f} ms over {len(offers)} samples of {size / 1000:.0f} KB",
        ),
    ]
    print_table(results)
    return results


if __name__ == "__main__":
    main()
