"""``/metrics`` over real HTTP on loopback: content type, methods, errors as JSON, a scrape that
takes no snapshot, and ``promtool check metrics`` clean on the real output."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
import treq
from twisted.internet.task import deferLater

from dashboard.monitor import Monitor
from dashboard.testing import global_reactor
from tests.prometheus_helpers import parse, promtool_check_metrics

TEXT_0_0_4 = "text/plain; version=0.0.4; charset=utf-8"


@pytest_twisted.async_yield_fixture
async def served() -> AsyncIterator[tuple[Monitor, str]]:
    # A long interval: no tick happens during a test unless it asks for one.
    monitor = Monitor(global_reactor(), interval=60.0, history=10)
    monitor.start()
    port: Any = await monitor.listen(0)
    try:
        yield monitor, f"http://127.0.0.1:{port.getHost().port}"
    finally:
        await port.stopListening()
        monitor.stop()


async def fetch(method: str, url: str) -> tuple[int, dict[str, list[str]], bytes]:
    response = await treq.request(method, url)
    body = await treq.content(response)
    headers = {
        k.decode(): [v.decode() for v in vs] for k, vs in response.headers.getAllRawHeaders()
    }
    return response.code, headers, body


@pytest_twisted.ensureDeferred
async def test_metrics_is_prometheus_text_that_promtool_accepts(
    served: tuple[Monitor, str],
) -> None:
    monitor, base = served
    kept = [monitor.reactor.callLater(3600, lambda: None) for _ in range(3)]
    monitor.sample()
    code, headers, body = await fetch("GET", base + "/metrics")
    assert code == 200
    assert headers["Content-Type"] == [TEXT_0_0_4]
    assert headers["Cache-Control"] == ["no-store"]
    text = body.decode()
    samples = parse(text)
    data = monitor.latest().data
    assert samples["twisted_deferreds_pending"][()] == data["deferreds"]["pending"]
    assert samples["twisted_delayed_calls"][()] == data["timeouts"]["delayed_calls"] >= 3
    assert samples["twisted_process_open_fds"][()] == data["process"]["open_fds"] > 0
    assert samples["twisted_reactor_info"][(("reactor", type(monitor.reactor).__name__),)] == 1
    lag_count = samples["twisted_reactor_lag_seconds_count"][()]
    assert samples["twisted_reactor_lag_seconds_bucket"][(("le", "+Inf"),)] == lag_count
    result = promtool_check_metrics(text)
    assert (result.returncode, result.stdout + result.stderr) == (0, ""), text
    for call in kept:
        call.cancel()


@pytest_twisted.ensureDeferred
async def test_a_scrape_takes_no_snapshot(served: tuple[Monitor, str]) -> None:
    monitor, base = served
    first = monitor.latest()
    for _ in range(10):
        code, _, body = await fetch("GET", base + "/metrics")
        assert code == 200
    assert monitor.latest() is first
    stamp = parse(body.decode())["twisted_monitor_last_sample_timestamp_seconds"][()]
    assert stamp == first.time
    newer = monitor.sample()
    _, _, body = await fetch("GET", base + "/metrics")
    assert parse(body.decode())["twisted_monitor_last_sample_timestamp_seconds"][()] == newer.time


@pytest_twisted.ensureDeferred
async def test_head_answers_headers_only(served: tuple[Monitor, str]) -> None:
    _, base = served
    code, headers, body = await fetch("HEAD", base + "/metrics")
    assert (code, body) == (200, b"")
    assert headers["Content-Type"] == [TEXT_0_0_4]


@pytest_twisted.ensureDeferred
async def test_bad_parameters_and_methods_get_json_errors(served: tuple[Monitor, str]) -> None:
    _, base = served
    code, headers, body = await fetch("GET", base + "/metrics?name[]=twisted_deferreds_pending")
    assert code == 400
    assert headers["Content-Type"] == ["application/json; charset=utf-8"]
    error = json.loads(body)
    assert (error["error"], error["parameter"]) == ("bad_request", "name[]")
    assert "accepted: none" in error["message"]
    code, headers, body = await fetch("POST", base + "/metrics")
    assert code == 405
    assert json.loads(body)["error"] == "method_not_allowed"
    assert headers["Allow"] == ["GET, HEAD"]


@pytest_twisted.ensureDeferred
async def test_the_histogram_counts_real_lag(served: tuple[Monitor, str]) -> None:
    monitor, base = served
    # The wait hook records a sample whenever a due timer wakes the reactor.
    for _ in range(5):
        await deferLater(monitor.reactor, 0.01, lambda: None)
    _, _, body = await fetch("GET", base + "/metrics")
    samples = parse(body.decode())
    buckets = [v for _, v in sorted(samples["twisted_reactor_lag_seconds_bucket"].items(),
                                    key=lambda kv: float(dict(kv[0])["le"]))]  # fmt: skip
    assert buckets == sorted(buckets)  # cumulative
    assert samples["twisted_reactor_lag_seconds_count"][()] >= 5
    assert samples["twisted_reactor_lag_seconds_sum"][()] > 0
