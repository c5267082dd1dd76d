"""Shared by the Prometheus tests: parse exposition text, run promtool."""

from __future__ import annotations

import shutil
import subprocess

from prometheus_client.parser import text_string_to_metric_families

#: {sample name: {sorted label pairs: value}}
Exposition = dict[str, dict[tuple[tuple[str, str], ...], float]]


def parse(text: str) -> Exposition:
    """Every sample of an exposition, by sample name then labels."""
    out: Exposition = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            out.setdefault(sample.name, {})[labels] = sample.value
    return out


def types(text: str) -> dict[str, str]:
    """``# TYPE`` lines: exposition name -> type."""
    out = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            out[name] = kind
    return out


def promtool() -> str:
    """The promtool binary (Debian ``prometheus``); the suite's set-up installs it."""
    path = shutil.which("promtool")
    assert path, "promtool not found: install Debian's prometheus package (scripts/test.sh does)"
    return path


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    """``promtool check metrics`` on ``text``: exit 0 and no output when clean."""
    return subprocess.run(
        [promtool(), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
