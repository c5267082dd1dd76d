"""What a profile costs while it runs (``GET /api/v1/profile``; nothing runs when none is asked
for): the sampler thread's own CPU at 100 Hz, as a share of one core, with the sampled thread
busy (a pure-Python workload about 30 frames deep: each look walks them) and with it idle
(asleep in a wait, as a reactor in its poller); and how much slower a busy thread gets its
work done while it is sampled, bare and profiled runs interleaved, medians: a plain thread,
and a monitored epoll reactor running a chain of busy callbacks (``Monitor.profiler``, as the
route uses it, with the loop probe's pulse telling idle samples).

The sampler is :class:`dashboard.probes.profiler.ProfileRun`, as the route runs it; its CPU is
``time.thread_time()`` read on its own thread when it finishes (the merge included).
Run: ``python -m benchmarks.bench_profile [--smoke]``.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Sequence

from benchmarks.common import Result, interleaved_ratio, print_table, timed
from dashboard.probes.profiler import Profile, ProfileRun

HZ = 100.0
BUDGET_SHARE = 0.03  # of one core


def nested(depth: int, work: int) -> int:
    """Some pure-Python work ``depth`` frames down."""
    if depth:
        return nested(depth - 1, work)
    total = 0
    for i in range(work):
        total += i * i % 7
    return total


def busy_for(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        nested(30, 2000)


def sampler_share(seconds: float, busy: bool) -> float:
    """CPU seconds of the sampler thread per wall second, sampling this thread."""
    cpu: list[float] = []
    done = threading.Event()

    def finish(profile: Profile | None) -> None:
        cpu.append(time.thread_time())  # on the sampler thread: its whole CPU
        done.set()

    run = ProfileRun(
        thread_ident=threading.get_ident(),
        seconds=seconds,
        finish=finish,
        on_error=lambda exc: print("sampler error:", exc),
        hz=HZ,
    )
    started = time.perf_counter()
    run.start()
    if busy:
        busy_for(seconds + 0.05)
    done.wait(seconds + 10)
    wall = time.perf_counter() - started
    assert cpu, "the sampler did not finish"
    return cpu[0] / wall


def work_chunk(rounds: int) -> None:
    for _ in range(rounds):
        nested(30, 2000)


def profiled(rounds: int) -> float:
    run = ProfileRun(
        thread_ident=threading.get_ident(),
        seconds=600,
        finish=lambda _: None,
        on_error=lambda exc: print("sampler error:", exc),
        hz=HZ,
    )
    run.start()
    try:
        return timed(lambda: work_chunk(rounds))
    finally:
        run.cancel(timeout_s=5)


def reactor_slowdown(rounds: int, pairs: int) -> tuple[float, float, float]:
    """A monitored reactor (epoll) running a chain of ``rounds`` busy callbacks
    (``callLater(0)`` each), bare and while ``Monitor.profiler`` samples it, interleaved:
    (median bare s, median profiled s, median of pair ratios)."""
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import defer

    from dashboard.monitor import Monitor
    from dashboard.testing import global_reactor

    reactor = global_reactor()
    monitor = Monitor(reactor, interval=1.0)
    out: list[tuple[float, float, float]] = []

    def chain() -> defer.Deferred[float]:
        done: defer.Deferred[float] = defer.Deferred()
        started = time.perf_counter()

        def step(left: int) -> None:
            nested(30, 2000)
            if left:
                reactor.callLater(0, step, left - 1)
            else:
                done.callback(time.perf_counter() - started)

        reactor.callLater(0, step, rounds)
        return done

    async def measure() -> None:
        bare: list[float] = []
        sampled: list[float] = []
        for i in range(pairs):
            for mode in ("bare", "profiled") if i % 2 == 0 else ("profiled", "bare"):
                run = None
                if mode == "profiled":
                    run = monitor.profiler.begin(600, finish=lambda _: None)
                took = await chain()
                if run is not None:
                    monitor.profiler.cancel(run, timeout_s=5)
                (sampled if run is not None else bare).append(took)
        ratios = [p / b for b, p in zip(bare, sampled, strict=True)]
        out.append((statistics.median(bare), statistics.median(sampled), statistics.median(ratios)))

    def finished(_: object) -> None:
        monitor.stop()
        reactor.stop()

    def run_all() -> None:
        monitor.start()
        d = defer.ensureDeferred(measure())
        d.addErrback(lambda failure: print(failure.getTraceback()))
        d.addBoth(finished)

    reactor.callWhenRunning(run_all)
    reactor.run()
    assert out, "the reactor measurement failed"
    return out[0]


def main(argv: Sequence[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a tiny run (seconds)")
    args = parser.parse_args(argv)
    seconds, repeats, pairs = (0.5, 1, 2) if args.smoke else (3.0, 5, 15)
    # a chunk of about 0.3 s of work, measured once
    rounds = 50 if args.smoke else max(50, int(0.3 / max(1e-6, timed(lambda: work_chunk(50)) / 50)))

    busy = statistics.median(sampler_share(seconds, busy=True) for _ in range(repeats))
    idle = statistics.median(sampler_share(seconds, busy=False) for _ in range(repeats))
    bare_s, profiled_s, ratio = interleaved_ratio(
        lambda: timed(lambda: work_chunk(rounds)), lambda: profiled(rounds), pairs
    )
    loop_bare_s, loop_profiled_s, loop_ratio = reactor_slowdown(rounds, pairs)
    results = [
        Result(
            "profile sampler CPU, sampled thread busy",
            busy * 100,
            "% of a core",
            "<= 3 %",
            busy <= BUDGET_SHARE,
            f"{HZ:.0f} Hz, {seconds:.1f} s runs, median of {repeats}",
        ),
        Result(
            "profile sampler CPU, sampled thread idle",
            idle * 100,
            "% of a core",
            "<= 3 %",
            idle <= BUDGET_SHARE,
            f"{HZ:.0f} Hz, {seconds:.1f} s runs, median of {repeats}",
        ),
        Result(
            "busy thread while profiled / bare",
            ratio,
            "x time",
            "(reported)",
            True,
            f"{bare_s * 1000:.0f} ms vs {profiled_s * 1000:.0f} ms, median of {pairs} pairs",
        ),
        Result(
            "busy reactor while profiled / bare",
            loop_ratio,
            "x time",
            "(reported)",
            True,
            f"{loop_bare_s * 1000:.0f} ms vs {loop_profiled_s * 1000:.0f} ms, {rounds} callbacks,"
            f" median of {pairs} pairs",
        ),
    ]
    print("== profile ==")
    print_table(results)
    return results


if __name__ == "__main__":
    main()
