"""The three examples in ``examples/`` run as users run them and show up in their dashboard.

Each runs in a subprocess on a free loopback port; its own routes answer, and the dashboard
(mounted under the app's prefix, or on its own port) reports the app's listening port, the
connection of a request still in flight, and the example's own Deferreds.
"""

from __future__ import annotations

import http.client
import re
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.test_run_command import (
    Child,
    free_port,
    fresh_snapshot,
    http_get,
    listening_addresses,
    no_traceback,
    wait_until_serving,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SERVING = re.compile(r"Serving http://127\.0\.0\.1:(\d+)/")
SLOW_MS = 8000  # long enough to be seen in flight however slow the machine; never waited for


@contextmanager
def request_in_flight(port: int, path: str) -> Iterator[int]:
    """Send a GET and leave it unanswered while the block runs; yields the client's port.
    Closing the connection afterwards cancels the request on the server."""
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        client.request("GET", path)
        yield client.sock.getsockname()[1]
    finally:
        client.close()


def in_flight(snap: dict[str, Any], app: str, client_port: int) -> list[dict[str, Any]]:
    """The requests in flight on the app's connection from ``client_port``."""
    for item in snap["connections"]["items"]:
        if item["local"] == app and item["peer"] == f"127.0.0.1:{client_port}":
            requests: list[dict[str, Any]] = item.get("requests", [])
            return requests
    return []


def snapshot_showing(dashboard: str, app: str, client_port: int) -> dict[str, Any]:
    """Poll (at most 10 s) until the dashboard shows the slow request in flight."""
    deadline = time.monotonic() + 10
    while True:
        snap = fresh_snapshot(dashboard)
        if in_flight(snap, app, client_port) or time.monotonic() > deadline:
            return snap
        time.sleep(0.05)


def check_app_in_dashboard(snap: dict[str, Any], app: str, client_port: int) -> None:
    assert app in listening_addresses(snap)
    row = next(r for r in snap["connections"]["listening"] if r["address"] == app)
    assert row["factory"] == "twisted.web.server.Site"
    assert row["accepted_total"] >= 2  # the hello request and the slow one
    requests = in_flight(snap, app, client_port)
    assert [r["method"] for r in requests] == ["GET"], snap["connections"]["items"]
    assert requests[0]["uri"] == f"/slow?ms={SLOW_MS}"
    assert snap["errors"]["total"] == 0, snap["errors"]


def own_sites(snap: dict[str, Any], file_name: str) -> list[dict[str, Any]]:
    return [row for row in snap["deferreds"]["sites"] if f"examples/{file_name}:" in row["site"]]


def stop_cleanly(child: Child) -> None:
    status = child.stop()
    no_traceback(child)
    assert status == 0, child.report()


def test_plain_twisted_web_app_mounts_the_dashboard_under_a_prefix() -> None:
    child = Child.start([sys.executable, str(EXAMPLES / "web_app.py"), "0"])
    try:
        port = int(child.wait_for(SERVING, "stdout")[1])
        base = f"http://127.0.0.1:{port}"
        assert http_get(f"{base}/hello") == (200, b"hello\n")
        assert http_get(f"{base}/slow?ms=10") == (200, b"slow\n")
        assert http_get(f"{base}/_reactor/")[0] == 200
        with request_in_flight(port, f"/slow?ms={SLOW_MS}") as client_port:
            snap = snapshot_showing(f"{base}/_reactor", f"127.0.0.1:{port}", client_port)
        check_app_in_dashboard(snap, f"127.0.0.1:{port}", client_port)
        slow_sites = [r for r in own_sites(snap, "web_app.py") if "Slow.render_GET" in r["site"]]
        assert len(slow_sites) == 1, snap["deferreds"]["sites"]
        assert slow_sites[0]["pending"] >= 1
        assert slow_sites[0]["created_total"] >= 2
    finally:
        stop_cleanly(child)


def test_prefix_without_its_slash_redirects_to_the_dashboard() -> None:
    child = Child.start([sys.executable, str(EXAMPLES / "web_app.py"), "0"])
    try:
        port = int(child.wait_for(SERVING, "stdout")[1])
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            client.request("GET", "/_reactor?x=1")
            response = client.getresponse()
            response.read()
        finally:
            client.close()
        assert response.status in (301, 308)
        assert response.getheader("Location") == "./_reactor/?x=1"
    finally:
        stop_cleanly(child)


def test_klein_app_mounts_the_dashboard_on_a_branch_route() -> None:
    child = Child.start([sys.executable, str(EXAMPLES / "klein_app.py"), "0"])
    try:
        port = int(child.wait_for(SERVING, "stdout")[1])
        base = f"http://127.0.0.1:{port}"
        assert http_get(f"{base}/hello/you") == (200, b"hello you\n")
        assert http_get(f"{base}/slow?ms=10") == (200, b"slow\n")
        assert http_get(f"{base}/_reactor/")[0] == 200
        status, body = http_get(f"{base}/_reactor/api/v1/nope")
        assert status == 404 and b"/_reactor/api/v1/nope" in body
        with request_in_flight(port, f"/slow?ms={SLOW_MS}") as client_port:
            snap = snapshot_showing(f"{base}/_reactor", f"127.0.0.1:{port}", client_port)
        check_app_in_dashboard(snap, f"127.0.0.1:{port}", client_port)
        # The async route's Deferred waits in the example's own coroutine.
        waits = [w for row in snap["deferreds"]["oldest"] for w in row["waiting"]]
        suspended = [w for w in waits if "examples/klein_app.py:" in w]
        assert any(w.endswith("in HelloApp.slow") for w in suspended), waits
    finally:
        stop_cleanly(child)


def test_twist_plugin_serves_the_dashboard_on_its_own_port(tmp_path: Path) -> None:
    # A copy, so that the dropin.cache Twisted writes next to the plugin stays out of the tree.
    examples = tmp_path / "examples"
    shutil.copytree(EXAMPLES, examples, ignore=shutil.ignore_patterns("__pycache__", "*.cache"))
    twist = Path(sys.executable).parent / "twist"
    app_port, dashboard_port = free_port(), free_port()
    child = Child.start(
        [
            str(twist),
            "--log-format=text",
            "dashboard-example",
            f"--listen=tcp:{app_port}:interface=127.0.0.1",
            f"--dashboard=tcp:{dashboard_port}:interface=127.0.0.1",
        ],
        env={"PYTHONPATH": str(examples), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    )
    try:
        base = f"http://127.0.0.1:{app_port}"
        dashboard = f"http://127.0.0.1:{dashboard_port}"
        assert wait_until_serving(f"{base}/hello") == (200, b"hello\n")
        assert wait_until_serving(f"{dashboard}/api/v1/snapshot")[0] == 200
        assert http_get(f"{base}/slow?ms=10") == (200, b"slow\n")
        with request_in_flight(app_port, f"/slow?ms={SLOW_MS}") as client_port:
            snap = snapshot_showing(dashboard, f"127.0.0.1:{app_port}", client_port)
        check_app_in_dashboard(snap, f"127.0.0.1:{app_port}", client_port)
        assert f"127.0.0.1:{dashboard_port}" in snap["connections"]["own"]["listening"]
        assert f"127.0.0.1:{dashboard_port}" not in listening_addresses(snap)
        assert any("Slow.render_GET" in r["site"] for r in own_sites(snap, "twist_app.py"))
        log = child.text("stdout")
        assert f"Reactor Dashboard on http://127.0.0.1:{dashboard_port}/" in log
    finally:
        status = child.stop()
    no_traceback(child)
    assert status == -15, child.report()  # twist ends itself with the signal it stopped on
