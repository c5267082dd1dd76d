"""The README's main job: ``reactor-dashboard demo`` gives every panel something true to show."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def fetch_snapshot(port: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/api/v1/snapshot"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("application/json")
        data: dict[str, Any] = json.load(response)
        return data


def every_panel_shows_something(snap: dict[str, Any]) -> list[str]:
    """What is still missing from the demo's snapshot (empty when every panel has data)."""
    missing = []
    sites = [row["site"] for row in snap["deferreds"]["sites"]]
    if not any("dashboard/demo.py" in site and "leak" in site for site in sites):
        missing.append("leak site")
    if snap["deferreds"]["unfired_collected_total"] < 1:
        missing.append("unfired collected")
    kinds = {p["kind"] for p in snap["pools"]}
    if not {"threadpool", "http", "adbapi"} <= kinds:
        missing.append(f"pools {kinds}")
    fired = snap["timeouts"]["fired_total"]
    for kind in ("deferred", "connect", "protocol"):
        if fired[kind] < 1:
            missing.append(f"{kind} timeout")
    if snap["connections"]["by_kind"]["tcp_server"] < 1 or not snap["connections"]["listening"]:
        missing.append("connections")
    if snap["loop"]["blocks_total"] < 1:
        missing.append("block")
    return missing


def test_demo_runs_and_fills_every_panel() -> None:
    port = free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "dashboard", "demo", "--port", str(port), "--duration", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert demo.stdout is not None
        first = demo.stdout.readline()
        assert first.strip() == f"Reactor Dashboard: http://127.0.0.1:{port}/", first
        deadline = time.monotonic() + 20
        missing = ["everything"]
        while time.monotonic() < deadline and missing:
            time.sleep(0.5)
            snap = fetch_snapshot(port)
            missing = every_panel_shows_something(snap)
        assert missing == []
        block = snap["loop"]["blocks"][-1]
        assert 200 <= block["duration_ms"] < 1000
        assert any("blocking_report" in frame for frame in block["stack"])
        assert snap["errors"]["total"] == 0, snap["errors"]
    finally:
        demo.terminate()
        out, _ = demo.communicate(timeout=15)
    assert demo.returncode == 0, out
    assert "Traceback" not in out, out


def test_demo_refuses_a_bad_port() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dashboard", "demo", "--port", "99999"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "port must be from 0 to 65535" in result.stderr
