"""``GET /api/v1/series``: each sample's charted figures in the snapshot's shape, projected
once per sample, bounded, and a small fraction of ``/api/v1/history``'s bytes.

Most tests feed the Monitor samples they write (``Monitor._collect`` replaced for the test,
so ``Monitor.sample()`` runs as it does for real: ring, release, subscribers), at chosen
times; one reads real samples of a started Monitor.
"""

from __future__ import annotations

import gc
import json
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import task

from dashboard.monitor import Monitor
from dashboard.testing import global_reactor
from dashboard.web import series
from dashboard.web.series import SITES_MAX_S, SeriesCache, series_body, series_cache

JSONDict = dict[str, Any]
Feed = Callable[[int], JSONDict]


def busy_snapshot(seq: int, at: float) -> JSONDict:
    """A snapshot of a busy program, about 30 KB encoded, with every section the probes give
    (docs/snapshot.md): 50 sites, the 20 oldest, 100 connections, 4 pools, recent timeouts."""
    sites = [
        {
            "site": f"/srv/app/handlers/module_{i}.py:{100 + i} in Handler{i}.fetch_page",
            "pending": (seq + i) % 40,
            "created_total": 1000 * i + seq,
            "fired_total": 990 * i + seq,
            "unfired_collected_total": i % 3,
            "oldest_age_s": 1.5 * i,
        }
        for i in range(50)
    ]
    oldest = [
        {"age_s": 60.0 - i, "site": sites[i]["site"], "waiting": "Handler.fetch_page"}
        for i in range(20)
    ]
    connections = [
        {
            "kind": "tcp",
            "peer": f"10.0.{i // 200}.{i % 200}:{40000 + i}",
            "local": "10.0.0.1:8080",
            "age_s": 3.5 * i,
            "bytes_in": 1000 * i,
            "bytes_out": 2000 * i,
            "request": f"GET /api/items/{i}?page=2",
            "protocol": "HTTPChannel",
        }
        for i in range(100)
    ]
    return {
        "seq": seq,
        "time": at,
        "reactor": "EPollReactor",
        "interval_s": 1.0,
        "loop": {
            "lag_ms": {"last": 0.3 + seq % 5, "p50": 0.4, "p99": 2.0 + seq % 7, "max": 9.0},
            "busy_ratio": (seq % 10) / 10,
            "iterations_total": 1000 * seq,
            "blocks_total": 3,
            "blocks": [
                {
                    "at": at - 20,
                    "duration_ms": 150.0,
                    "stack": [f"/srv/app/module_{i}.py:{i} in step_{i}" for i in range(20)],
                    "where": "/srv/app/module_3.py:3 in step_3",
                    "owner": "program",
                }
            ],
        },
        "deferreds": {
            "pending": 400 + seq % 13,
            "created_total": 10_000 * seq,
            "fired_total": 9_000 * seq,
            "sites_total": 120,
            "sites": sites,
            "oldest": oldest,
            "lost_sites": [],
        },
        "connections": {"open": 100 + seq % 3, "items": connections, "items_total": 100},
        "pools": [
            {"name": f"pool-{i}", "kind": "http", "max": 10, "in_use": (seq + i) % 10}
            for i in range(4)
        ],
        "timeouts": {
            "delayed_calls": 300,
            "fired_total": {"deferred": seq // 2, "connect": seq // 5},
            "recent": [
                {"at": at - i, "kind": "deferred", "what": f"Deferred timed out after {i} s"}
                for i in range(20)
            ],
        },
        "process": {"pid": 4242, "rss_bytes": 300 << 20, "threads": 12},
        "errors": {"total": 0, "by_probe": {}, "last": {}, "disabled": []},
    }


@pytest.fixture
def feed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Feed]]:
    """``feed[0](seq)`` is what the next ``Monitor.sample()`` collects (seq: its number)."""
    box: list[Feed] = [lambda seq: busy_snapshot(seq, time.time())]

    def collect(self: Monitor, *, close_interval: bool) -> JSONDict:
        return box[0](self._seq)

    monkeypatch.setattr(Monitor, "_collect", collect)
    yield box


def take(monitor: Monitor, times: list[float], feed: list[Feed], **changes: Any) -> None:
    """One sample per entry of ``times`` (unix seconds), each a busy snapshot."""
    for at in times:

        def collect(seq: int, at: float = at) -> JSONDict:
            return {**busy_snapshot(seq, at), **changes}

        feed[0] = collect
        monitor.sample()


def expected(snapshot: JSONDict, sites: bool) -> JSONDict:
    """What the series gives for ``snapshot``, written out field by field."""
    loop, deferreds = snapshot["loop"], snapshot["deferreds"]
    out: JSONDict = {
        "seq": snapshot["seq"],
        "time": snapshot["time"],
        "loop": {
            "lag_ms": {k: loop["lag_ms"][k] for k in ("p50", "p99", "last")},
            "busy_ratio": loop["busy_ratio"],
        },
        "connections": {"open": snapshot["connections"]["open"]},
        "timeouts": {"fired_total": snapshot["timeouts"]["fired_total"]},
        "pools": [{"name": p["name"], "in_use": p["in_use"]} for p in snapshot["pools"]],
        "deferreds": {"pending": deferreds["pending"]},
    }
    if sites:
        out["deferreds"]["sites"] = [
            {"site": s["site"], "pending": s["pending"]} for s in deferreds["sites"]
        ]
    return out


async def get(url: str, method: str = "GET") -> tuple[int, dict[str, list[str]], bytes]:
    response = await treq.request(method, url, persistent=False)
    body = await treq.content(response)
    headers = {
        k.decode().lower(): [v.decode() for v in vs]
        for k, vs in response.headers.getAllRawHeaders()
    }
    # Twisted's client keeps Content-Length apart from the headers: the body's announced size.
    headers["content-length"] = [str(response.length)]
    return response.code, headers, body


@pytest_twisted.async_yield_fixture
async def fed() -> AsyncIterator[tuple[Monitor, str]]:
    """A Monitor that is not started (it samples only when a test says) served on loopback."""
    monitor = Monitor(global_reactor(), interval=1.0, history=900)
    port: Any = await monitor.listen(0)
    try:
        yield monitor, f"http://127.0.0.1:{port.getHost().port}"
    finally:
        await port.stopListening()


# over HTTP --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_series_gives_each_history_sample_s_chart_figures() -> None:
    # Real samples of a started monitor: the same samples as /api/v1/history, cut down.
    reactor = global_reactor()
    monitor = Monitor(reactor, interval=0.1, history=50)
    monitor.start()
    port: Any = await monitor.listen(0)
    base = f"http://127.0.0.1:{port.getHost().port}"
    try:
        for _ in range(100):  # bounded: about a second of sampling
            if monitor.latest().seq >= 8:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        code, headers, body = await get(base + "/api/v1/series?seconds=5&sites_seconds=5")
        _, _, history_body = await get(base + "/api/v1/history?seconds=5")
    finally:
        await port.stopListening()
        monitor.stop()
    assert code == 200
    assert headers["content-type"] == ["application/json; charset=utf-8"]
    assert headers["cache-control"] == ["no-store"]
    answer = json.loads(body)
    assert (answer["seconds"], answer["sites_seconds"]) == (5, 5)
    history = {s["seq"]: s for s in json.loads(history_body)["samples"]}
    samples = answer["samples"]
    assert len(samples) >= 8
    seqs = [s["seq"] for s in samples]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    common = [s for s in samples if s["seq"] in history]
    assert len(common) >= len(samples) - 2  # a sample or two may come between the requests
    for sample in common:
        assert sample == expected(history[sample["seq"]], sites=True), sample["seq"]
    print(f"\nreal samples: {len(history_body)} bytes of history, {len(body)} of series")
    assert len(body) * 4 < len(history_body)


@pytest_twisted.ensureDeferred
async def test_sites_seconds_adds_site_pending_counts_to_the_newest_samples(
    fed: tuple[Monitor, str], feed: list[Feed]
) -> None:
    monitor, base = fed
    now = time.time()
    take(monitor, [now - 99.5 + i for i in range(100)], feed)  # one a second, the last 0.5 s ago
    _, _, body = await get(base + "/api/v1/series?seconds=90&sites_seconds=30")
    answer = json.loads(body)
    assert (answer["seconds"], answer["sites_seconds"]) == (90, 30)
    samples = answer["samples"]
    assert [s["seq"] for s in samples] == list(range(11, 101))  # the last 90 s
    with_sites = [s["seq"] for s in samples if "sites" in s["deferreds"]]
    assert with_sites == list(range(71, 101))  # the last 30 s
    newest = samples[-1]
    assert newest == expected(busy_snapshot(100, now - 0.5), sites=True)
    assert newest["deferreds"]["sites"][7] == {
        "site": "/srv/app/handlers/module_7.py:107 in Handler7.fetch_page",
        "pending": 27,
    }
    assert samples[0] == expected(busy_snapshot(11, now - 89.5), sites=False)
    # Without sites_seconds, none.
    _, _, body = await get(base + "/api/v1/series?seconds=10")
    light = json.loads(body)
    assert light["sites_seconds"] == 0
    assert [s["deferreds"] for s in light["samples"]] == [
        {"pending": 400 + seq % 13} for seq in range(91, 101)
    ]
    # Without seconds: the whole history (900 s here).
    _, _, body = await get(base + "/api/v1/series")
    assert json.loads(body)["seconds"] == 900 and len(json.loads(body)["samples"]) == 100


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("seconds=0", "seconds"),
        ("seconds=901", "seconds"),
        ("seconds=-5", "seconds"),
        ("seconds=1e3", "seconds"),
        ("seconds=1&seconds=2", "seconds"),
        (f"sites_seconds={SITES_MAX_S + 1}", "sites_seconds"),
        ("sites_seconds=-1", "sites_seconds"),
        ("sites_seconds=ten", "sites_seconds"),
        ("fields=loop", "fields"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_parameters_get_a_400_naming_them(
    fed: tuple[Monitor, str], query: str, parameter: str
) -> None:
    _, base = fed
    code, headers, body = await get(base + "/api/v1/series?" + query)
    assert code == 400
    assert headers["content-type"] == ["application/json; charset=utf-8"]
    error = json.loads(body)
    assert (error["error"], error["status"], error["parameter"]) == (
        "bad_request",
        400,
        parameter,
    )
    assert parameter in error["message"]


@pytest_twisted.ensureDeferred
async def test_head_and_other_methods(fed: tuple[Monitor, str], feed: list[Feed]) -> None:
    monitor, base = fed
    take(monitor, [time.time() - 1], feed)
    code, headers, body = await get(base + "/api/v1/series", "HEAD")
    assert (code, body) == (200, b"")
    assert headers["content-type"] == ["application/json; charset=utf-8"]
    code, headers, body = await get(base + "/api/v1/series", "POST")
    assert code == 405 and json.loads(body)["error"] == "method_not_allowed"


@pytest_twisted.ensureDeferred
async def test_series_is_a_small_fraction_of_history_for_busy_samples(
    fed: tuple[Monitor, str], feed: list[Feed]
) -> None:
    # Fifteen minutes of a program whose samples are about 30 KB (the issue: 9 MB of history
    # for 5 minutes, 25 MB for 15); what the page asks for: the window, sites for the last 60 s.
    monitor, base = fed
    now = time.time()
    take(monitor, [now - 899.5 + i for i in range(900)], feed)
    sample_bytes = len(monitor.latest().encoded)
    assert 28_000 <= sample_bytes <= 36_000, sample_bytes
    sizes: dict[int, tuple[int, int]] = {}
    for minutes in (5, 15):
        seconds = 60 * minutes
        _, _, history = await get(base + f"/api/v1/history?seconds={seconds}")
        _, _, light = await get(base + f"/api/v1/series?seconds={seconds}&sites_seconds=60")
        counts = len(json.loads(history)["samples"]), len(json.loads(light)["samples"])
        # (the oldest sample may pass the window's edge while the 900 are taken)
        assert seconds - 3 <= min(counts) and max(counts) <= seconds, counts
        sizes[minutes] = (len(history), len(light))
        print(
            f"\n{minutes} min of {sample_bytes} B samples: history {len(history):,} B, "
            f"series {len(light):,} B ({len(history) / len(light):.0f}x smaller)"
        )
    for history_size, light_size in sizes.values():
        assert light_size * 10 < history_size
    assert sizes[15][1] < 700_000  # well under a megabyte for the longest window


@pytest_twisted.ensureDeferred
async def test_the_app_projects_every_sample_from_when_it_is_built(
    fed: tuple[Monitor, str], feed: list[Feed]
) -> None:
    # Built by monitor.listen(): each later sample is projected as it is taken, from its
    # dict; a first page does not decode the whole history on the reactor thread.
    monitor, base = fed
    now = time.time()
    take(monitor, [now - 29.5 + i for i in range(30)], feed)
    cache = series_cache(monitor)
    assert (cache.projected_total, cache.decoded_total) == (30, 0)
    for _ in range(2):
        code, headers, body = await get(base + "/api/v1/series?seconds=60&sites_seconds=60")
        assert code == 200 and headers["content-length"] == [str(len(body))]
        assert len(json.loads(body)["samples"]) == 30
    assert (cache.projected_total, cache.decoded_total) == (30, 0)


@pytest_twisted.ensureDeferred
async def test_beyond_the_answers_in_flight_a_503_with_retry_after(
    fed: tuple[Monitor, str], feed: list[Feed]
) -> None:
    monitor, base = fed
    take(monitor, [time.time() - 1], feed)
    answers = series_cache(monitor).answers
    assert answers.max_in_flight == 16
    answers.in_flight = 16  # as if 16 clients were being answered and not reading
    try:
        code, headers, body = await get(base + "/api/v1/series")
    finally:
        answers.in_flight = 0
    assert code == 503 and headers["retry-after"] == ["5"]
    assert json.loads(body)["error"] == "too_many_answers"
    assert answers.refused_total == 1
    code, _, _ = await get(base + "/api/v1/series")
    assert code == 200 and answers.served_total >= 1 and answers.in_flight == 0
    # The Monitor's own limits (web.series in its snapshot; see test_history_bounds).
    assert answers is monitor.series_answers
    assert monitor.series_answers.as_json() == {
        "in_flight": 0,
        "max_in_flight": 16,
        "refused_total": 1,
        "dropped_slow_total": 0,
        "served_total": answers.served_total,
    }


# the cache --------------------------------------------------------------------------------


def test_a_sample_is_projected_once_as_it_is_taken(feed: list[Feed]) -> None:
    monitor = Monitor(task.Clock(), interval=1.0, history=100)
    cache = series_cache(monitor)
    assert series_cache(monitor) is cache  # one per monitor, subscribed once
    now = time.time()
    take(monitor, [now - 9.5 + i for i in range(10)], feed)
    assert (cache.projected_total, cache.decoded_total) == (10, 0)
    first = series_body(monitor, 100, 5)
    assert series_body(monitor, 100, 5) == first
    assert (cache.projected_total, cache.decoded_total) == (10, 0)
    samples = json.loads(first)["samples"]
    assert [("sites" in s["deferreds"]) for s in samples] == [False] * 5 + [True] * 5


def test_samples_older_than_the_cache_are_decoded_once(feed: list[Feed]) -> None:
    monitor = Monitor(task.Clock(), interval=1.0, history=100)
    now = time.time()
    take(monitor, [now - 19.5 + i for i in range(10)], feed)  # before any cache
    cache = series_cache(monitor)
    take(monitor, [now - 9.5 + i for i in range(10)], feed)
    assert (cache.projected_total, cache.decoded_total) == (10, 0)
    body = series_body(monitor, 100, 0)
    assert cache.decoded_total == 10
    assert series_body(monitor, 100, 0) == body
    assert cache.decoded_total == 10  # kept
    samples = json.loads(body)["samples"]
    assert [s["seq"] for s in samples] == list(range(1, 21))
    assert samples[0] == expected(busy_snapshot(1, now - 19.5), sites=False)


def test_the_cache_is_bounded_by_the_history(feed: list[Feed]) -> None:
    monitor = Monitor(task.Clock(), interval=0.5, history=200)
    cache = series_cache(monitor)
    now = time.time()
    take(monitor, [now - 500 + 0.5 * i for i in range(1000)], feed)
    kept, with_sites = cache.size
    assert kept == 200  # the history's length
    assert with_sites == 2 * SITES_MAX_S + 2  # SITES_MAX_S seconds at 0.5 s, and two spare
    # The projections kept are the newest.
    assert min(cache._light.values) == 801 and max(cache._light.values) == 1000


def test_a_failed_probe_s_section_is_null(feed: list[Feed]) -> None:
    monitor = Monitor(task.Clock(), interval=1.0, history=10)
    series_cache(monitor)
    now = time.time()
    take(
        monitor,
        [now - 1.5],
        feed,
        loop=None,
        deferreds=None,
        connections=None,
        timeouts=None,
        pools=None,
    )
    take(monitor, [now - 0.5], feed, loop={"busy_ratio": None}, deferreds={"pending": 3})
    samples = json.loads(series_body(monitor, 10, 10))["samples"]
    assert samples[0] == {
        "seq": 1,
        "time": now - 1.5,
        "loop": None,
        "connections": None,
        "timeouts": None,
        "pools": None,
        "deferreds": None,
    }
    # A section without some fields: those figures are null, sites an empty list.
    assert samples[1]["loop"] == {
        "lag_ms": {"p50": None, "p99": None, "last": None},
        "busy_ratio": None,
    }
    assert samples[1]["deferreds"] == {"pending": 3, "sites": []}


def test_the_cache_goes_with_its_monitor(feed: list[Feed]) -> None:
    monitor = Monitor(task.Clock(), interval=1.0, history=10)
    cache = weakref.ref(series_cache(monitor))
    take(monitor, [time.time()], feed)
    assert series._caches[monitor] is cache()
    gone = weakref.ref(monitor)
    del monitor
    gc.collect()
    assert gone() is None and cache() is None


def test_sites_are_spliced_into_exact_json_of_the_announced_length() -> None:
    # Sites are spliced into each encoded entry: the result is the compact JSON of the whole
    # answer, exactly as long as the Content-Length said.
    cache = SeriesCache(history=5, interval_s=1.0)

    class Taken:
        seq = 1
        time = 5.0
        data = busy_snapshot(1, 5.0)

    cache.add(Taken())  # type: ignore[arg-type]
    pieces, length = cache.answer([Taken(), Taken()], 9, 9, now=10.0)  # type: ignore[list-item]
    body = b"".join(pieces)
    assert len(body) == length
    assert json.loads(body) == {
        "seconds": 9,
        "sites_seconds": 9,
        "samples": [expected(busy_snapshot(1, 5.0), sites=True)] * 2,
    }
    assert body == json.dumps(json.loads(body), separators=(",", ":")).encode()
