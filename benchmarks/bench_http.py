"""HTTP throughput under wrk on loopback, monitor started vs. not, A/B interleaved.

Run: ``python -m benchmarks.bench_http [--smoke] [--kind klein|web] [--no-watch] [--together]
[--handlers | --no-handlers | --handlers-ab]``. ``--handlers`` / ``--no-handlers``: the
monitor with busy time by handler on / off (neither: the Monitor's default, on where the
accelerator is built); ``--handlers-ab``: both servers monitored and watched alike, with it
and without: what it alone costs.
Needs ``wrk``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
from collections.abc import Sequence

from benchmarks.common import Result, interleaved_ratio, print_table

#: Throughput monitored / bare: the performance issue's targets, watched (1 s sampling, an SSE
#: client, a scrape every second), and the core issue's, started without watchers.
BUDGET = {"klein": 0.99, "web": 0.98}
UNWATCHED_BUDGET = {"klein": 0.97, "web": 0.98}
#: Busy time by handler alone (``--handlers-ab``): at most 0.5% of throughput.
HANDLERS_BUDGET = 0.995


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pinned(cpu: int) -> list[str]:
    """``taskset -c CPU`` when there are two CPUs or more: server and wrk on a core each
    halves the run-to-run spread (measured: +-8% unpinned, +-2% pinned)."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(cpu)]
    return []


def start_watcher(port: int, seconds: float) -> subprocess.Popen[str]:
    """One SSE client and a scrape of /metrics every second (benchmarks.watcher_client), on
    wrk's core: the server's core stays the server's."""
    command = [*pinned(0), sys.executable, "-m", "benchmarks.watcher_client"]
    command += ["--port", str(port), "--seconds", str(seconds)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def check_watcher(watcher: subprocess.Popen[str], seconds: int) -> None:
    """The watcher saw a sample a second and scraped every second, without an error."""
    out, _ = watcher.communicate(timeout=30)
    counts = json.loads(out.strip().splitlines()[-1])
    if counts["errors"] or counts["events"] < seconds or counts["scrapes"] < seconds:
        raise RuntimeError(f"the SSE client / scraper did not keep up: {counts}")


#: ``--handlers``: the monitored server times each handler (``Monitor(handlers=True)``);
#: ``--handlers-ab``: so does it, and the "bare" server is monitored too, without.
HANDLERS = {"on": False, "off": False, "ab": False}


def start_server(kind: str, monitored: bool) -> tuple[subprocess.Popen[str], int, int | None]:
    """A fresh hello server on the server core: (process, its port, the dashboard's port)."""
    port = free_port()
    command = [*pinned(1), sys.executable, "-m", "benchmarks.hello_server"]
    command += ["--kind", kind, "--port", str(port)]
    # with --handlers-ab the "bare" server is monitored too (handlers off), and watched alike
    with_monitor = monitored or HANDLERS["ab"]
    if with_monitor:
        command.append("--monitor")
        if monitored and (HANDLERS["on"] or HANDLERS["ab"]):
            command.append("--handlers")
        elif HANDLERS["off"] or HANDLERS["ab"]:
            command.append("--no-handlers")
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    line = server.stdout.readline().split()
    if not line or line[0] != "ready" or len(line) != (2 if with_monitor else 1):
        stop(server)
        raise RuntimeError(f"benchmark server did not start: {line!r}")
    return server, port, int(line[1]) if with_monitor else None


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
    process.wait(timeout=10)


def run_wrk(port: int, seconds: int, connections: int) -> float:
    """Requests per second wrk (on wrk's core) gets in ``seconds``; errors are fatal."""
    command = [*pinned(0), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    out = subprocess.run(
        [*command, f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{out}")
    if re.search(r"Non-2xx|Socket errors", out):
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return float(match.group(1))


def throughput(
    kind: str, monitored: bool, seconds: int, connections: int, watched: bool = True
) -> float:
    """Requests per second wrk gets from a fresh server process (after a 1 s warm-up)."""
    server, port, monitor_port = start_server(kind, monitored)
    watcher: subprocess.Popen[str] | None = None
    try:
        # Monitored as the issue has it: sampling at 1 s, one SSE client, /metrics every second.
        if monitor_port is not None and watched:
            watcher = start_watcher(monitor_port, seconds + 1.5)
        run_wrk(port, 1, connections)
        rate = run_wrk(port, seconds, connections)
        if watcher is not None:
            check_watcher(watcher, seconds)
        return rate
    finally:
        if watcher is not None:
            stop(watcher)
        stop(server)


def together(
    kind: str, seconds: int, connections: int, watched: bool, monitored_first: bool
) -> tuple[float, float]:
    """(bare, monitored) requests per second with both servers running AT ONCE on the server
    core, each loaded by its own wrk: the scheduler gives each half of the core, so the ratio
    is the ratio of CPU cost per request, and what disturbs the machine (other VMs, clock
    changes) hits both alike. Tighter than one after the other: bare against bare, 7 pairs,
    gave a median of 1.003 (pairs 0.998-1.026) here, where repeated 9-pair sequential runs of
    one configuration gave medians from 0.950 to 0.971."""
    order = [True, False] if monitored_first else [False, True]
    started: dict[bool, tuple[subprocess.Popen[str], int, int | None]] = {}
    watchers: list[subprocess.Popen[str]] = []
    try:
        for monitored in order:
            started[monitored] = start_server(kind, monitored)
        if watched:
            # every monitored server is watched alike (with --handlers-ab, both are): the
            # scrape and the stream cost the server, and an A/B must differ in one thing only
            for monitored in order:
                monitor_port = started[monitored][2]
                if monitor_port is not None:
                    watchers.append(start_watcher(monitor_port, seconds + 3))
        rates: dict[bool, float] = {}

        def load(monitored: bool, duration: int) -> None:
            rates[monitored] = run_wrk(started[monitored][1], duration, connections)

        for duration in (1, seconds):  # warm-up, then the measured run
            rates.clear()
            threads = [threading.Thread(target=load, args=(m, duration)) for m in order]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        if len(rates) != 2:
            raise RuntimeError("a wrk run failed (see above)")
        for watcher in watchers:
            check_watcher(watcher, seconds)
        return rates[False], rates[True]
    finally:
        for watcher in watchers:
            stop(watcher)
        for server, _, _ in started.values():
            stop(server)


def main(argv: Sequence[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument("--kind", choices=["klein", "web"], default="klein")
    parser.add_argument("--pairs", type=int, default=None)
    parser.add_argument("--seconds", type=int, default=None)
    parser.add_argument(
        "--no-watch",
        action="store_true",
        help="monitor started but no SSE client nor scrapes (the core issue's condition)",
    )
    parser.add_argument(
        "--together",
        action="store_true",
        help="run bare and monitored servers at once, sharing the server core (see together())",
    )
    parser.add_argument(
        "--handlers", action="store_true", help="the monitor with busy time by handler on"
    )
    parser.add_argument(
        "--no-handlers",
        action="store_true",
        help="the monitor with busy time by handler off (default: the Monitor's default)",
    )
    parser.add_argument(
        "--handlers-ab",
        action="store_true",
        help="against a monitored server with handlers=False instead of a bare one",
    )
    args = parser.parse_args(argv)
    HANDLERS["ab"] = args.handlers_ab
    HANDLERS["on"] = args.handlers
    HANDLERS["off"] = args.no_handlers
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian package wrk)")
    pairs = args.pairs or (1 if args.smoke else 9)
    seconds = args.seconds or (1 if args.smoke else 5)
    watched = not args.no_watch
    name = f"{args.kind} hello under wrk" + ("" if watched else " (unwatched)")
    if args.handlers_ab:
        name += ", handlers on / off"
    elif args.handlers:
        name += ", handlers on"
    elif args.no_handlers:
        name += ", handlers off"
    if args.together:
        runs = [together(args.kind, seconds, 50, watched, i % 2 == 1) for i in range(pairs)]
        bare = statistics.median(b for b, _ in runs)
        monitored = statistics.median(m for _, m in runs)
        ratio = statistics.median(m / b for b, m in runs)
        name += ", together"
    else:
        bare, monitored, ratio = interleaved_ratio(
            lambda: throughput(args.kind, False, seconds, 50),
            lambda: throughput(args.kind, True, seconds, 50, watched=watched),
            pairs,
        )
    budget = (BUDGET if watched else UNWATCHED_BUDGET)[args.kind]
    if args.handlers_ab:
        budget = HANDLERS_BUDGET
    results = [
        Result(
            name,
            ratio,
            "x bare req/s",
            f">= {budget:g}",
            ratio >= budget,
            f"{'handlers off' if args.handlers_ab else 'bare'} {bare:.0f} req/s, monitored"
            f" {monitored:.0f} req/s (medians of {pairs})",
        )
    ]
    print_table(results)
    return results


if __name__ == "__main__":
    main()
