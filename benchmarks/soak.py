"""Soak: the demo service under load with the dashboard attached, and a crowd of 100
event-stream clients joining and leaving (some stop reading, some vanish, some hold half a
request), for 10 minutes by default.

Budgets: after warm-up the server's RSS grows at most 5%; once the clients have left, its open
file descriptors are back to the baseline taken before they came (the largest count seen while
only the demo ran); no error is counted by the monitor; the server drops the clients that stop
reading and the half-open ones by itself.

The monitor's history ring fills during warm-up (``history`` = warm-up / interval samples):
until it is full the process grows by design (about 50 KB a sample for the demo), bounded.

Run: ``python -m benchmarks.soak [--seconds 600] [--clients 100] [--reactor asyncio]
[--smoke]``. The server is ``benchmarks.soak_server`` in a subprocess; RSS and descriptors are
read from its ``/proc`` entries.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import IO

import attrs

from benchmarks.common import Result, print_table
from benchmarks.soak_clients import Crowd, CrowdFigures

RSS_GROWTH_BUDGET_PERCENT = 5.0
#: Seconds to wait, after the clients left, for the descriptors to be back at the baseline.
FDS_DEADLINE_S = 30.0


@attrs.frozen
class SoakReport:
    """What one soak measured. Sizes in bytes, times in seconds."""

    seconds: float
    reactor: str
    rss_after_warmup: int
    rss_at_end: int
    fds_baseline: int
    fds_after: int
    fds_back_after_s: float | None
    errors: Mapping[str, object]
    hub: Mapping[str, int]
    crowd: CrowdFigures
    idle_timeout_s: float

    @property
    def rss_growth_percent(self) -> float:
        return (self.rss_at_end - self.rss_after_warmup) / self.rss_after_warmup * 100

    @property
    def errors_total(self) -> int:
        total = self.errors.get("total", 0)
        return total if isinstance(total, int) else -1

    def problems(self) -> list[str]:
        """Every budget missed, in words (empty: the soak passed)."""
        out = []
        if self.rss_growth_percent > RSS_GROWTH_BUDGET_PERCENT:
            out.append(f"RSS grew {self.rss_growth_percent:.1f}% after warm-up")
        if self.fds_back_after_s is None:
            out.append(f"open fds {self.fds_after} > baseline {self.fds_baseline}")
        if self.errors_total != 0:
            out.append(f"errors counted: {self.errors}")
        if self.crowd.frames == 0 or self.crowd.answered_200 == 0:
            out.append("no client got a frame")
        if self.crowd.opened.get("half_open", 0) and not self.crowd.half_open_dropped:
            out.append("no half-open client was dropped by the server")
        if self.crowd.half_open_longest_s > self.idle_timeout_s + 5:
            out.append(f"a half-open client was held {self.crowd.half_open_longest_s:.1f} s")
        return out


def read_proc(pid: int) -> tuple[int, int]:
    """(RSS bytes, open descriptors) of process ``pid``."""
    with open(f"/proc/{pid}/status") as status:
        rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return rss_kb * 1024, len(os.listdir(f"/proc/{pid}/fd"))


class SoakServer:
    def __init__(self, options: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.soak_server", *options],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self._line("start")
        _, port, pid = line.split()
        self.port, self.pid = int(port), int(pid)

    def _line(self, what: str) -> str:
        stream: IO[str] | None = self.process.stdout
        assert stream is not None
        line = stream.readline()
        if not line:
            raise RuntimeError(f"soak server: ended before answering {what}")
        return line.strip()

    def stats(self) -> dict[str, dict[str, int]]:
        assert self.process.stdin is not None
        self.process.stdin.write("stats\n")
        self.process.stdin.flush()
        answer = self._line("stats")
        assert answer.startswith("stats "), answer
        stats: dict[str, dict[str, int]] = json.loads(answer[len("stats ") :])
        return stats

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def run_soak(
    seconds: float,
    clients: int = 100,
    reactor: str = "default",
    interval: float = 1.0,
    log: IO[str] | None = None,
) -> SoakReport:
    """Run one soak of ``seconds`` (clients present) and measure it; see the module doc."""
    warmup_s = max(10.0, seconds / 3)
    baseline_s = min(12.0, max(4.0, seconds / 10))
    idle_timeout_s = 10.0 if seconds < 300 else 60.0
    max_life_s = min(20.0, max(3.0, seconds / 6))
    history = max(1, int(warmup_s * 0.6 / interval))
    server = SoakServer(
        [
            "--reactor",
            reactor,
            "--interval",
            str(interval),
            "--history",
            str(history),
            "--idle-timeout",
            str(idle_timeout_s),
            # Small enough that a client which stops reading is dropped within the soak.
            "--max-backlog-bytes",
            str(64 * 1024),
            "--max-clients",
            str(clients),
        ]
    )
    try:
        fds_seen: list[int] = []
        end = time.monotonic() + baseline_s
        while time.monotonic() < end:  # the demo alone: its own descriptors come and go
            fds_seen.append(read_proc(server.pid)[1])
            time.sleep(0.2)
        fds_baseline = max(fds_seen)

        crowd = Crowd(server.port, clients, min_life_s=1.0, max_life_s=max_life_s)
        start = time.monotonic()
        rss: list[tuple[float, int]] = []
        next_read = start
        while (now := time.monotonic()) < start + seconds:
            crowd.step(0.05)
            if now >= next_read:
                rss.append((now - start, read_proc(server.pid)[0]))
                next_read = now + 1.0
                if log is not None and len(rss) % 30 == 0:
                    print(f"soak t={now - start:.0f}s rss={rss[-1][1] >> 20} MiB", file=log)
        crowd.leave()

        fds_after = read_proc(server.pid)[1]
        left = time.monotonic()
        back: float | None = None
        while time.monotonic() < left + FDS_DEADLINE_S:
            fds_after = read_proc(server.pid)[1]
            if fds_after <= fds_baseline:
                back = time.monotonic() - left
                break
            time.sleep(0.1)
        stats = server.stats()
    finally:
        server.stop()
    window = 10.0
    warm = [r for t, r in rss if warmup_s - window <= t <= warmup_s]
    final = [r for t, r in rss if t >= seconds - window]
    return SoakReport(
        seconds=seconds,
        reactor=reactor,
        rss_after_warmup=int(statistics.median(warm)),
        rss_at_end=int(statistics.median(final)),
        fds_baseline=fds_baseline,
        fds_after=fds_after,
        fds_back_after_s=back,
        errors=stats["errors"],
        hub=stats["hub"],
        crowd=crowd.figures,
        idle_timeout_s=idle_timeout_s,
    )


def results(report: SoakReport) -> list[Result]:
    c = report.crowd
    return [
        Result(
            "soak RSS end / after warm-up",
            report.rss_at_end / report.rss_after_warmup,
            "ratio",
            f"<= {1 + RSS_GROWTH_BUDGET_PERCENT / 100:.2f}",
            report.rss_growth_percent <= RSS_GROWTH_BUDGET_PERCENT,
            f"{report.rss_after_warmup >> 20} -> {report.rss_at_end >> 20} MiB"
            f" over {report.seconds - max(10.0, report.seconds / 3):.0f} s ({report.reactor})",
        ),
        Result(
            "soak open fds after clients left / baseline",
            report.fds_after / report.fds_baseline,
            "ratio",
            "<= 1.00",
            report.fds_back_after_s is not None,
            f"{report.fds_after} vs {report.fds_baseline}"
            + (f", back in {report.fds_back_after_s:.1f} s" if report.fds_back_after_s else ""),
        ),
        Result(
            "soak event frames delivered",
            float(c.frames),
            "frames",
            "> 0, no error",
            c.frames > 0 and report.errors_total == 0,
            f"{sum(c.opened.values())} clients ({c.opened}), {c.answered_503} answered 503,"
            f" errors {report.errors_total}, dropped slow {report.hub.get('dropped_slow_total')},"
            f" half-open dropped {c.half_open_dropped} (longest {c.half_open_longest_s:.1f} s)",
        ),
    ]


def main(argv: Sequence[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--reactor", default="default")
    parser.add_argument("--smoke", action="store_true", help="a few seconds, 10 clients")
    args, _ = parser.parse_known_args(argv)
    if args.smoke:
        args.seconds, args.clients = 12.0, 10
    print(f"\n== soak: {args.seconds:.0f} s, {args.clients} clients, {args.reactor} reactor ==")
    report = run_soak(args.seconds, args.clients, args.reactor, log=sys.stdout)
    rows = results(report)
    print_table(rows)
    for problem in report.problems():
        print(f"PROBLEM: {problem}")
    return rows


if __name__ == "__main__":
    main()
