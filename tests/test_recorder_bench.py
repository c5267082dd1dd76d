"""A tiny run of benchmarks/bench_recorder.py, so it never rots (figures not judged here)."""

from __future__ import annotations

import math
import re
import subprocess
import sys


def test_the_recorder_benchmark_runs_at_smoke_size() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_recorder", "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {}
    for line in result.stdout.splitlines()[1:]:
        match = re.match(r"(.+?)\s{2,}(-?[\d.]+)\s", line)
        if match:
            rows[match.group(1).strip()] = float(match.group(2))
    assert set(rows) == {
        "recorder reactor-thread cost per sample",
        "recorder offer() on the reactor thread",
    }
    assert all(math.isfinite(value) and value >= 0 for value in rows.values())
    assert re.search(r"\b(4\d|5\d) KB samples", result.stdout)  # about 50 KB each
    assert " 0 dropped" in result.stdout
