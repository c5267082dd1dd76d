"""Reactor iterations (a ``callLater(0)`` chain) with the loop probe on vs. off (on: with busy
time by handler, as a Monitor runs it; and without, ``handlers=False``), and blocking
detection (blocks of 150 ms, each caught with the blocking frame in its stack).

Each reactor runs in a child process of its own (a reactor is installed once per process).
Run: ``python -m benchmarks.bench_loop [--smoke]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.common import Result, print_table

REACTORS = ("epoll", "asyncio")


def install(name: str) -> Any:
    if name == "asyncio":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    from dashboard.testing import global_reactor

    return global_reactor()


def blocking_frame() -> None:
    """The frame every caught block must show."""
    time.sleep(0.15)


def child(name: str, chain_length: int, pairs: int, blocks: int) -> dict[str, Any]:
    """Runs in the child: interleaved chains (probe off / on), then ``blocks`` blocks."""
    reactor = install(name)
    from dashboard.monitor import Monitor
    from dashboard.probes.base import ProbeErrors
    from dashboard.probes.loop import LoopProbe

    probes = {
        "on": LoopProbe(reactor, ProbeErrors(), reactor.seconds, handlers=True),
        "no_handlers": LoopProbe(reactor, ProbeErrors(), reactor.seconds, handlers=False),
    }
    timings: dict[str, list[float]] = {"off": [], "on": [], "no_handlers": []}
    orders = (("off", "on", "no_handlers"), ("no_handlers", "on", "off"))
    modes = [m for i in range(pairs) for m in orders[i % 2]]
    out: dict[str, Any] = {}

    def chain(left: int, done: Callable[[float], None], started: float) -> None:
        if left == 0:
            done(time.perf_counter() - started)
        else:
            reactor.callLater(0, chain, left - 1, done, started)

    def next_mode() -> None:
        if not modes:
            reactor.callLater(0, measure_blocks)
            return
        mode = modes.pop(0)
        probe = probes.get(mode)
        if probe is not None:
            probe.install()

        def done(seconds: float) -> None:
            if probe is not None:
                probe.uninstall()
            timings[mode].append(seconds / chain_length * 1e6)
            reactor.callLater(0.01, next_mode)

        chain(chain_length, done, time.perf_counter())

    def measure_blocks() -> None:
        monitor = Monitor(reactor, block_threshold_ms=100)
        monitor.start()
        state = {"left": blocks}

        def one() -> None:
            blocking_frame()
            state["left"] -= 1
            reactor.callLater(0.1 if state["left"] else 0.3, one if state["left"] else finish)

        def finish() -> None:
            loop = monitor.snapshot()["loop"]
            caught = [b for b in loop["blocks"] if any("blocking_frame" in f for f in b["stack"])]
            out["blocks_total"] = loop["blocks_total"]
            out["blocks_with_frame"] = len(caught)
            out["block_ms"] = [round(b["duration_ms"], 1) for b in loop["blocks"]]
            monitor.stop()
            reactor.stop()

        reactor.callLater(0.05, one)

    reactor.callWhenRunning(next_mode)
    reactor.run()
    out["off_us"] = statistics.median(timings["off"])
    out["on_us"] = statistics.median(timings["on"])
    out["no_handlers_us"] = statistics.median(timings["no_handlers"])
    out["ratio"] = statistics.median(
        on / off for on, off in zip(timings["on"], timings["off"], strict=True)
    )
    out["no_handlers_ratio"] = statistics.median(
        on / off for on, off in zip(timings["no_handlers"], timings["off"], strict=True)
    )
    return out


def main(argv: Sequence[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument("--child", choices=REACTORS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    chain_length, pairs, blocks = (2_000, 2, 3) if args.smoke else (20_000, 7, 20)
    if args.child:
        print(json.dumps(child(args.child, chain_length, pairs, blocks)))
        return []
    results = []
    for name in REACTORS:
        command = [sys.executable, "-m", "benchmarks.bench_loop", "--child", name]
        if args.smoke:
            command.append("--smoke")
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
        data = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(
            Result(
                f"reactor iteration ({name})",
                data["ratio"],
                "x probe off",
                "<= 1.2",
                data["ratio"] <= 1.2,
                f"off {data['off_us']:.2f} us, on {data['on_us']:.2f} us (medians), busy time"
                " by handler included",
            )
        )
        results.append(
            Result(
                f"reactor iteration, handlers=False ({name})",
                data["no_handlers_ratio"],
                "x probe off",
                "<= 1.15",
                data["no_handlers_ratio"] <= 1.15,
                f"off {data['off_us']:.2f} us, on {data['no_handlers_us']:.2f} us (medians)",
            )
        )
        results.append(
            Result(
                f"blocks caught with their frame ({name})",
                data["blocks_with_frame"],
                f"of {blocks}",
                f"== {blocks}",
                data["blocks_with_frame"] == blocks == data["blocks_total"],
                f"{data['blocks_total']} blocks counted, durations {data['block_ms'][:5]} ms",
            )
        )
    print_table(results)
    return results


if __name__ == "__main__":
    main()
