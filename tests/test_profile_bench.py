"""benchmarks/bench_profile.py runs end to end at smoke size and prints its four figures, each
finite and positive; the sampler's CPU share is judged against its budget by the full run
(benchmarks/README.md), not here."""

from __future__ import annotations

import math
import re
import subprocess
import sys


def test_the_profile_benchmark_runs_at_smoke_size() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_profile", "--smoke"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sampler error" not in result.stdout
    rows = {}
    for line in result.stdout.split("== profile ==", 1)[1].splitlines()[2:]:
        match = re.match(r"(.+?)\s{2,}(-?[\d.]+)\s", line)
        if match:
            rows[match.group(1).strip()] = float(match.group(2))
    assert set(rows) == {
        "profile sampler CPU, sampled thread busy",
        "profile sampler CPU, sampled thread idle",
        "busy thread while profiled / bare",
        "busy reactor while profiled / bare",
    }, result.stdout
    for name, value in rows.items():
        assert math.isfinite(value) and value > 0, (name, value)
