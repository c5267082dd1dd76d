"""A fleet: a real Prometheus server on loopback scraping two instrumented Twisted processes.

Asserted through Prometheus's HTTP query API: both instances report
``twisted_deferreds_pending``; a leak made in one (``POST /leak`` on it) shows in that instance
only; the contrib rules load and evaluate; every Grafana panel query runs.

Run as a module (``python -m tests.test_fleet``), this file is the instrumented app itself: a
twisted.web site with the dashboard mounted at ``/_reactor`` and a ``/leak`` route.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from twisted.internet.defer import Deferred
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from dashboard.monitor import Monitor
from dashboard.testing import global_reactor

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "contrib" / "prometheus" / "twisted-rules.yml"
GRAFANA = ROOT / "contrib" / "grafana" / "twisted-reactors.json"
#: Prometheus shows its first scrape after about 6 s; everything after takes a second or two.
DEADLINE_S = 30.0
#: The app exits by itself after this long, whatever happens to the test that started it.
APP_LIFETIME_S = 180.0
LEAK_SITE = r".*test_fleet.py:\\d+ in leak_deferreds"

T = TypeVar("T")

# The app ---------------------------------------------------------------------------------------

_leaked: list[Deferred[None]] = []


def leak_deferreds(count: int) -> None:
    """Create ``count`` Deferreds that never fire and stay referenced: a leak at this line."""
    for _ in range(count):
        _leaked.append(Deferred())


class LeakResource(Resource):
    """``POST /leak?count=N``: leak N Deferreds."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def render_POST(self, request: Request) -> bytes:
        count = int((request.args or {}).get(b"count", [b"100"])[0])
        leak_deferreds(count)
        return b"leaked %d\n" % count


def serve() -> None:
    """Serve the dashboard at /_reactor on a free loopback port; print the port; run."""
    reactor = global_reactor()
    monitor = Monitor(reactor, interval=0.5, history=60)
    monitor.start()
    root = Resource()
    root.putChild(b"_reactor", monitor.resource())
    root.putChild(b"leak", cast(IResource, LeakResource()))
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    print(f"listening {port.getHost().port}", flush=True)
    reactor.callLater(APP_LIFETIME_S, reactor.stop)
    reactor.run()
    monitor.stop()


# The test --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_app(log: Path) -> tuple[subprocess.Popen[str], int]:
    """Start one app; returns it and its port once it listens."""
    with log.open("w") as errors:  # the child keeps its own copy of the descriptor
        app = subprocess.Popen(
            [sys.executable, "-m", "tests.test_fleet"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
    assert app.stdout is not None
    ready, _, _ = select.select([app.stdout], [], [], DEADLINE_S)
    line = app.stdout.readline() if ready else ""
    if not line.startswith("listening "):
        stop(app)
        raise AssertionError(f"app did not start: {line!r} {log.read_text()}")
    return app, int(line.split()[1])


def start_prometheus(tmp: Path, targets: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus not found: install Debian's prometheus (scripts/test.sh does)"
    config = tmp / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML: no YAML library needed
            {
                "global": {
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    "evaluation_interval": "1s",
                },
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {
                        "job_name": "twisted",
                        "metrics_path": "/_reactor/metrics",
                        "static_configs": [{"targets": targets}],
                    }
                ],
            }
        )
    )
    address = f"127.0.0.1:{free_port()}"
    with (tmp / "prometheus.log").open("w") as errors:
        server = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address={address}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
    return server, f"http://{address}"


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def get_json(url: str, data: bytes | None = None) -> Any:
    with urllib.request.urlopen(url, data=data, timeout=5) as response:
        return json.load(response)


def query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    """An instant query; the result vector."""
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    answer = get_json(url)
    assert answer["status"] == "success", (promql, answer)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def by_instance(result: list[dict[str, Any]]) -> dict[str, float]:
    return {row["metric"]["instance"]: float(row["value"][1]) for row in result}


def poll(what: str, probe: Callable[[], T | None], deadline_s: float = DEADLINE_S) -> T:
    """Call ``probe`` until it returns something other than None (connection errors count as
    not yet), at most ``deadline_s`` seconds."""
    deadline = time.monotonic() + deadline_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except OSError as exc:  # Prometheus still starting
            value, last = None, exc
        if value is not None:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {deadline_s} s waiting for {what} (last error: {last})")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, int]]]:
    """Two apps and a Prometheus scraping them, shared by this module's tests; everything is
    stopped at the end."""
    tmp_path = tmp_path_factory.mktemp("fleet")
    started: list[subprocess.Popen[Any]] = []
    try:
        leaky, leaky_port = start_app(tmp_path / "leaky.log")
        started.append(leaky)
        quiet, quiet_port = start_app(tmp_path / "quiet.log")
        started.append(quiet)
        ports = {"leaky": leaky_port, "quiet": quiet_port}
        targets = [f"127.0.0.1:{port}" for port in ports.values()]
        server, prometheus = start_prometheus(tmp_path, targets)
        started.append(server)
        yield prometheus, ports
    finally:
        for process in reversed(started):
            stop(process)


def test_prometheus_sees_both_instances_and_the_leak_in_one(
    fleet: tuple[str, dict[str, int]],
) -> None:
    prometheus, ports = fleet
    leaky = f"127.0.0.1:{ports['leaky']}"
    quiet = f"127.0.0.1:{ports['quiet']}"

    def both_report() -> dict[str, float] | None:
        pending = by_instance(query(prometheus, "twisted_deferreds_pending"))
        return pending if set(pending) == {leaky, quiet} else None

    before = poll("both instances to report twisted_deferreds_pending", both_report)
    assert all(0 <= value < 500 for value in before.values()), before
    assert by_instance(query(prometheus, 'up{job="twisted"}')) == {leaky: 1.0, quiet: 1.0}
    leak_query = f'twisted_deferreds_pending_by_site{{site=~"{LEAK_SITE}"}}'
    assert query(prometheus, leak_query) == []

    answer = urllib.request.urlopen(f"http://{leaky}/leak?count=500", data=b"", timeout=5).read()
    assert answer == b"leaked 500\n"

    def leak_seen() -> dict[str, float] | None:
        rows = by_instance(query(prometheus, leak_query))
        return rows if rows.get(leaky) == 500 else None

    assert poll("the leak to show on the leaky instance", leak_seen) == {leaky: 500.0}
    pending = by_instance(query(prometheus, "twisted_deferreds_pending"))
    assert pending[leaky] >= 500 > pending[quiet], pending
    # The quiet one is still scraped (so its absence from the leak query is a real absence).
    fresh = by_instance(query(prometheus, "time() - timestamp(twisted_deferreds_pending)"))
    assert fresh[quiet] < 5, fresh

    # The contrib rules run on this server: a recording rule sums the fleet.
    def fleet_sum() -> float | None:
        rows = query(prometheus, 'job:twisted_deferreds_pending:sum{job="twisted"}')
        return float(rows[0]["value"][1]) if rows and float(rows[0]["value"][1]) >= 500 else None

    assert poll("the recording rule to include the leak", fleet_sum) >= 500

    def rules_evaluated() -> list[dict[str, Any]] | None:
        groups = get_json(f"{prometheus}/api/v1/rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if rules and all(r["health"] == "ok" for r in rules) else None

    rules = poll("every rule to evaluate", rules_evaluated)
    assert len(rules) == 14


def test_every_grafana_panel_query_runs(fleet: tuple[str, dict[str, int]]) -> None:
    prometheus, _ = fleet
    poll(
        "a first scrape",
        lambda: query(prometheus, "twisted_deferreds_pending") or None,
    )
    dashboard = json.loads(GRAFANA.read_text())
    substitutions = {"$__rate_interval": "1m", "$job": "twisted", "$instance": ".+"}
    answered = 0
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            promql = target["expr"]
            for variable, value in substitutions.items():
                promql = promql.replace(variable, value)
            assert "$" not in promql, promql
            query(prometheus, promql)  # asserts status "success"
            answered += 1
    assert answered >= 15


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    serve()
