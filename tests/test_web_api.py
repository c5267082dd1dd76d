"""The JSON endpoint over real HTTP on loopback: content type, errors as JSON, methods."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import defer

from dashboard.monitor import Monitor
from dashboard.testing import global_reactor


@pytest_twisted.async_yield_fixture
async def served() -> AsyncIterator[tuple[Monitor, str]]:
    reactor = global_reactor()
    monitor = Monitor(reactor, interval=0.2, history=50)
    monitor.start()
    port: Any = await monitor.listen(0)
    try:
        yield monitor, f"http://127.0.0.1:{port.getHost().port}"
    finally:
        await port.stopListening()
        monitor.stop()


async def fetch(method: str, url: str, **kw: Any) -> tuple[int, dict[str, list[str]], bytes]:
    response = await treq.request(method, url, **kw)
    body = await treq.content(response)
    headers = {
        k.decode(): [v.decode() for v in vs] for k, vs in response.headers.getAllRawHeaders()
    }
    return response.code, headers, body


@pytest_twisted.ensureDeferred
async def test_snapshot_is_json_with_every_section(served: tuple[Monitor, str]) -> None:
    monitor, base = served
    code, headers, body = await fetch("GET", base + "/api/v1/snapshot")
    assert code == 200
    assert headers["Content-Type"] == ["application/json; charset=utf-8"]
    data = json.loads(body)
    for key in (
        "seq",
        "time",
        "reactor",
        "loop",
        "deferreds",
        "connections",
        "pools",
        "timeouts",
        "process",
        "errors",
    ):
        assert key in data, key
    assert data["reactor"] == type(monitor.reactor).__name__
    assert data["process"]["pid"] > 0
    # Our own request is in flight on an open server connection while the snapshot is taken:
    # on the dashboard's own port (monitor.listen()), so the dashboard's, not the program's.
    code, _, body = await fetch("GET", base + "/api/v1/snapshot?fresh=1")
    fresh = json.loads(body)
    own = fresh["connections"]["own"]
    assert own["open"] >= 1
    assert own["listening"] == [base.removeprefix("http://")]
    assert base.removeprefix("http://") not in [
        entry["address"] for entry in fresh["connections"]["listening"]
    ]


@pytest_twisted.ensureDeferred
async def test_seq_grows_by_one_per_sample(served: tuple[Monitor, str]) -> None:
    _, base = served
    first = json.loads((await fetch("GET", base + "/api/v1/snapshot"))[2])["seq"]
    await deferLater(global_reactor(), 0.5)
    second = json.loads((await fetch("GET", base + "/api/v1/snapshot"))[2])["seq"]
    assert second > first
    history = json.loads((await fetch("GET", base + "/api/v1/history?seconds=10"))[2])
    seqs = [s["seq"] for s in history["samples"]]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert seqs[-1] >= second


def deferLater(reactor: Any, seconds: float) -> defer.Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/api/v1/nope", 404, "not_found"),
        ("/api/v2/snapshot", 404, "not_found"),
        ("/api/v1/snapshot?fresh=maybe", 400, "bad_request"),
        ("/api/v1/snapshot?bogus=1", 400, "bad_request"),
        ("/api/v1/history?seconds=0", 400, "bad_request"),
        ("/api/v1/history?seconds=-5", 400, "bad_request"),
        ("/api/v1/history?seconds=99999999", 400, "bad_request"),
        ("/api/v1/history?seconds=1e3", 400, "bad_request"),
        ("/api/v1/history?seconds=1&seconds=2", 400, "bad_request"),
        ("/nothing/here", 404, "not_found"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_requests_get_json_errors(
    served: tuple[Monitor, str], path: str, status: int, error: str
) -> None:
    _, base = served
    code, headers, body = await fetch("GET", base + path)
    assert code == status
    assert headers["Content-Type"] == ["application/json; charset=utf-8"]
    data = json.loads(body)
    assert data["error"] == error
    assert data["status"] == status
    assert data["message"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "TRACE"])
@pytest_twisted.ensureDeferred
async def test_other_methods_get_405(served: tuple[Monitor, str], method: str) -> None:
    _, base = served
    code, headers, body = await fetch(method, base + "/api/v1/snapshot")
    assert code == 405
    assert json.loads(body)["error"] == "method_not_allowed"
    assert headers["Allow"] == ["GET, HEAD"]


@pytest_twisted.ensureDeferred
async def test_mounted_under_a_prefix(served: tuple[Monitor, str]) -> None:
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    monitor, _ = served
    root = Resource()
    deep: Any = Resource()
    root.putChild(b"a", deep)
    deep.putChild(b"_reactor", monitor.resource())
    port = global_reactor().listenTCP(0, Site(root), interface="127.0.0.1")
    try:
        base = f"http://127.0.0.1:{port.getHost().port}/a/_reactor"
        code, _, body = await fetch("GET", base + "/api/v1/snapshot")
        assert code == 200
        assert json.loads(body)["seq"] >= 1
        code, _, body = await fetch("GET", base + "/api/v1/missing")
        assert (code, json.loads(body)["error"]) == (404, "not_found")
    finally:
        await port.stopListening()
