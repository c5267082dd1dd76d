"""A tiny run of every benchmark, so they never rot. Figures are not judged here: the
benchmarks print ratios measured side by side; this only proves they run end to end."""

from __future__ import annotations

import math
import re
import subprocess
import sys


def test_every_benchmark_runs_at_smoke_size() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run_all", "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    table = result.stdout.split("== all ==", 1)[1]
    rows = {}
    for line in table.splitlines()[2:]:
        match = re.match(r"(.+?)\s{2,}(-?[\d.]+)\s", line)
        if match:
            rows[match.group(1).strip()] = float(match.group(2))
    expected = {
        "deferred create+fire (inline)",
        "deferred create+fire (per call)",
        "memory per pending Deferred",
        "snapshot at scale",
        "memory per connection",
        "reactor iteration (epoll)",
        "reactor iteration (asyncio)",
        "reactor iteration, handlers=False (epoll)",
        "reactor iteration, handlers=False (asyncio)",
        "blocks caught with their frame (epoll)",
        "blocks caught with their frame (asyncio)",
        "prometheus scrape (route)",
        "prometheus scrape (100 sites labelled)",
        "sse 10 clients extra CPU",
        "sse 10 clients arrival spread p99",
        "klein hello under wrk",
        "klein hello under wrk, together",
        "web hello under wrk",
        "soak RSS end / after warm-up",
        "soak open fds after clients left / baseline",
        "soak event frames delivered",
    }
    assert set(rows) == expected, table
    for name, value in rows.items():
        # A spread can round to 0.000 ms with few clients, and an "extra" figure is a
        # difference of two noisy measurements (monitored minus bare CPU): at smoke size it
        # can fall below 0 (-0.015 seen in CI). Every other figure is positive.
        assert math.isfinite(value) and (
            value > 0 or (value == 0 and "spread" in name) or "extra" in name
        ), (name, value)
