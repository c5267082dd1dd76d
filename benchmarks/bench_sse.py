"""SSE fan-out budget: N event-stream clients (200 by default) at 1 sample/s cost at most 5% of
one core on top of the idle monitor, and every client gets every event within 100 ms of the
others (p99 over events of the spread of arrival times across clients).

A server process (``benchmarks.sse_server``: a started Monitor serving the dashboard) runs
throughout; its CPU time is read at the edges of each window, in windows without clients and
with N clients connected (``benchmarks.sse_fanout_client``, one process), interleaved A/B;
connecting and closing happen outside the windows. Server and client are pinned to a core each
when there are two.

Run: ``python -m benchmarks.bench_sse [--smoke] [--clients N] [--pairs P] [--seconds S]
[--cpu-budget PERCENT] [--spread-budget-ms MS]``; e.g. ``--clients 1000 --spread-budget-ms 50``
for the larger budget. The spread is measured on the kernel's receive timestamps (see
``benchmarks.sse_fanout_client``); with 50 events its p99 is their maximum, so a busy machine
(other processes taking the server's core) shows up in it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

from benchmarks.bench_http import free_port, pinned
from benchmarks.common import Result, print_table

#: The performance issue's budgets: 1,000 clients at most 5% of a core, a p99 spread of
#: 50 ms (the web issue asked 100 ms).
CPU_BUDGET_PERCENT = 5.0
SPREAD_BUDGET_MS = 50.0


def read_line(stream: IO[str] | None, what: str) -> str:
    assert stream is not None
    line = stream.readline()
    if not line:
        raise RuntimeError(f"{what}: the process ended without answering")
    return line.strip()


class Server:
    """The benchmark server process and its stdin/stdout line protocol."""

    def __init__(self, port: int, interval: float, max_clients: int) -> None:
        command = [
            *pinned(1),
            sys.executable,
            "-m",
            "benchmarks.sse_server",
            "--port",
            str(port),
            "--interval",
            str(interval),
            "--max-clients",
            str(max_clients),
        ]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        if read_line(self.process.stdout, "sse_server") != "ready":
            raise RuntimeError("the SSE benchmark server did not start")

    def ask(self, command: str) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        answer = read_line(self.process.stdout, f"sse_server {command}")
        name, _, value = answer.partition(" ")
        if name != command:
            raise RuntimeError(f"sse_server answered {answer!r} to {command!r}")
        return value

    def cpu_s(self) -> float:
        """The server's CPU time so far (user + system, every thread), seconds."""
        return float(self.ask("cpu"))

    def stats(self) -> dict[str, int]:
        stats: dict[str, int] = json.loads(self.ask("stats"))
        return stats

    def wait_for_no_clients(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.stats()["clients"]:
            if time.monotonic() > deadline:
                raise RuntimeError("the server still holds streams after the clients left")
            time.sleep(0.02)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def idle_window(server: Server, seconds: float) -> float:
    """Server CPU over ``seconds`` with no client, percent of one core."""
    wall0, cpu0 = time.monotonic(), server.cpu_s()
    time.sleep(seconds)  # the measurement window itself, not a wait for some condition
    cpu1, wall1 = server.cpu_s(), time.monotonic()
    return 100 * (cpu1 - cpu0) / (wall1 - wall0)


def loaded_window(
    server: Server, port: int, clients: int, seconds: float
) -> tuple[float, dict[str, Any]]:
    """Server CPU over ``seconds`` with ``clients`` streams open (percent of one core), and the
    fan-out client's figures for that window."""
    command = [
        *pinned(0),
        sys.executable,
        "-m",
        "benchmarks.sse_fanout_client",
        "--port",
        str(port),
        "--clients",
        str(clients),
        "--seconds",
        str(seconds),
    ]
    client = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        if read_line(client.stdout, "fan-out client") != "connected":
            raise RuntimeError("the fan-out client did not connect")
        wall0, cpu0 = time.monotonic(), server.cpu_s()
        if read_line(client.stdout, "fan-out client") != "measured":
            raise RuntimeError("the fan-out client did not finish its window")
        cpu1, wall1 = server.cpu_s(), time.monotonic()
        figures: dict[str, Any] = json.loads(read_line(client.stdout, "fan-out client"))
        client.wait(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(timeout=10)
    server.wait_for_no_clients()
    return 100 * (cpu1 - cpu0) / (wall1 - wall0), figures


def p99(values: list[float]) -> float:
    """The 99th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def main(argv: Sequence[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument("--clients", type=int, default=None, help="streams (default 200)")
    parser.add_argument("--pairs", type=int, default=None, help="A/B window pairs (default 5)")
    parser.add_argument("--seconds", type=float, default=None, help="window length (default 10)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument(
        "--cpu-budget", type=float, default=CPU_BUDGET_PERCENT, help="percent of one core"
    )
    parser.add_argument("--spread-budget-ms", type=float, default=SPREAD_BUDGET_MS)
    args = parser.parse_args(argv)
    clients = args.clients or (10 if args.smoke else 200)
    pairs = args.pairs or (1 if args.smoke else 5)
    seconds = args.seconds or (3.0 if args.smoke else 10.0)
    port = free_port()
    server = Server(port, args.interval, max_clients=max(clients, 100))
    idle: list[float] = []
    loaded: list[float] = []
    spreads: list[float] = []
    read_spreads: list[float] = []
    clocks: set[str] = set()
    events = missed = 0
    try:
        for i in range(pairs):
            order = ("idle", "loaded") if i % 2 == 0 else ("loaded", "idle")
            for kind in order:
                if kind == "idle":
                    idle.append(idle_window(server, seconds))
                else:
                    cpu, figures = loaded_window(server, port, clients, seconds)
                    loaded.append(cpu)
                    spreads += figures["spreads_ms"]
                    read_spreads += figures["read_spreads_ms"]
                    clocks.add(figures["clock"])
                    events += figures["events"]
                    missed += figures["missed"]
        stats = server.stats()
    finally:
        server.close()
    extra = statistics.median(b - a for a, b in zip(idle, loaded, strict=True))
    spread = p99(spreads) if spreads else float("inf")
    read_spread = p99(read_spreads) if read_spreads else float("inf")
    label = f"sse {clients} clients"
    results = [
        Result(
            f"{label} extra CPU",
            extra,
            "% of a core",
            f"<= {args.cpu_budget:g}",
            extra <= args.cpu_budget,
            f"idle {statistics.median(idle):.2f}%, with clients {statistics.median(loaded):.2f}%"
            f" (medians of {pairs} pairs of {seconds:g} s, 1 sample / {args.interval:g} s)",
        ),
        Result(
            f"{label} arrival spread p99",
            spread,
            "ms",
            f"<= {args.spread_budget_ms:g}",
            spread <= args.spread_budget_ms and missed == 0 and stats["dropped_slow_total"] == 0,
            f"{'/'.join(sorted(clocks))} receive times; median"
            f" {statistics.median(spreads) if spreads else float('inf'):.1f} ms, max"
            f" {max(spreads, default=float('inf')):.1f} ms; as read by the one client process:"
            f" p99 {read_spread:.1f} ms; {len(spreads)} of {events} events reached every"
            f" client; dropped {stats['dropped_slow_total']}, rejected {stats['rejected_total']}",
        ),
    ]
    print_table(results)
    return results


if __name__ == "__main__":
    main()
