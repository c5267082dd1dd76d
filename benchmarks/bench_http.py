"""HTTP throughput under wrk on loopback, monitor started vs. not, A/B interleaved.

Run: ``python -m benchmarks.bench_http [--smoke] [--kind klein|web]``. Needs ``wrk``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence

from benchmarks.common import Result, interleaved_ratio, print_table

#: Throughput monitored / bare, the performance issue's targets (the core issue's: Klein 0.97).
BUDGET = {"klein": 0.99, "web": 0.98}


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


def throughput(
    kind: str, monitored: bool, seconds: int, connections: int, watched: bool = True
) -> float:
    """Requests per second wrk gets from a fresh server process (after a 1 s warm-up)."""
    port = free_port()
    command = [
        *pinned(1),
        sys.executable,
        "-m",
        "benchmarks.hello_server",
        "--kind",
        kind,
        "--port",
        str(port),
    ]
    if monitored:
        command.append("--monitor")
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    watcher: subprocess.Popen[str] | None = None
    try:
        assert server.stdout is not None
        line = server.stdout.readline().split()
        if not line or line[0] != "ready" or len(line) != (2 if monitored else 1):
            raise RuntimeError(f"benchmark server did not start: {line!r}")
        # Monitored as the issue has it: sampling at 1 s, one SSE client, /metrics every second.
        if monitored and watched:
            watcher = start_watcher(int(line[1]), seconds + 1.5)
        url = f"http://127.0.0.1:{port}/"
        wrk = [*pinned(0), "wrk", "-t1", f"-c{connections}"]
        subprocess.run([*wrk, "-d1s", url], capture_output=True, timeout=30, check=True)
        out = subprocess.run(
            [*wrk, f"-d{seconds}s", url],
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
        if watcher is not None:
            check_watcher(watcher, seconds)
        return float(match.group(1))
    finally:
        if watcher is not None and watcher.poll() is None:
            watcher.kill()
            watcher.wait(timeout=10)
        server.terminate()
        server.wait(timeout=10)


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
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian package wrk)")
    pairs = args.pairs or (1 if args.smoke else 9)
    seconds = args.seconds or (1 if args.smoke else 5)
    bare, monitored, ratio = interleaved_ratio(
        lambda: throughput(args.kind, False, seconds, 50),
        lambda: throughput(args.kind, True, seconds, 50, watched=not args.no_watch),
        pairs,
    )
    results = [
        Result(
            f"{args.kind} hello under wrk" + (" (unwatched)" if args.no_watch else ""),
            ratio,
            "x bare req/s",
            f">= {BUDGET[args.kind]:g}",
            ratio >= BUDGET[args.kind],
            f"bare {bare:.0f} req/s, monitored {monitored:.0f} req/s (medians of {pairs})",
        )
    ]
    print_table(results)
    return results


if __name__ == "__main__":
    main()
