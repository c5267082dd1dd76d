"""The SSE stream ``/api/v1/events`` in memory: StubTreq over the real Klein resource, a Monitor
driven by a ``MemoryReactorClock`` (so intervals and the 15 s heartbeat are exact).

Real sockets (slow readers, many clients, open/close cycles) are in test_sse_loopback.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from dashboard.monitor import Monitor
from dashboard.testing import result_of
from dashboard.web import sse
from dashboard.web.app import DashboardApp
from dashboard.web.sse import EventHub

URL = "http://dashboard.test/api/v1/events"


def hub_subscriptions(monitor: Monitor) -> list[object]:
    """The monitor's subscribers that are event hubs' (the series cache subscribes too, for
    the monitor's whole life)."""
    return [s for s in monitor._subscribers if isinstance(getattr(s, "__self__", None), EventHub)]


def parse_events(data: bytes | bytearray) -> list[dict[str, str]]:
    """Complete SSE blocks of ``data`` (text after the last blank line is left out); each block
    as field -> value, comment lines under ``":"``."""
    blocks = data.decode("utf-8").split("\n\n")[:-1]
    out: list[dict[str, str]] = []
    for block in blocks:
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                fields[":"] = line[1:].strip()
            else:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        out.append(fields)
    return out


def snapshot_ids(data: bytes | bytearray) -> list[int]:
    return [int(e["id"]) for e in parse_events(data) if e.get("event") == "snapshot"]


class StreamReader(Protocol):
    """Collects a response body as it arrives; ``close()`` drops the connection."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ended: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = Failure(Exception("lost"))) -> None:  # noqa: B008
        self.ended = reason

    def close(self) -> None:
        transport: Any = self.transport
        transport.stopProducing()


class Client:
    """StubTreq over one DashboardApp; ``open()`` starts a stream and returns its reader."""

    def __init__(self, app: DashboardApp) -> None:
        self.stub: Any = StubTreq(app.app.resource())  # its methods are set per instance

    def get(self, headers: dict[str, str] | None = None, url: str = URL) -> Any:
        d = self.stub.request("GET", url, headers=headers or {}, unbuffered=True)
        self.stub.flush()
        return result_of(d)

    def open(self, headers: dict[str, str] | None = None) -> tuple[Any, StreamReader]:
        response = self.get(headers)
        reader = StreamReader()
        response.deliverBody(reader)
        self.stub.flush()
        return response, reader

    def body(self, headers: dict[str, str] | None = None, url: str = URL) -> tuple[Any, bytes]:
        response, reader = self.get(headers, url), StreamReader()
        response.deliverBody(reader)
        self.stub.flush()
        assert reader.ended is not None, "the response did not end"
        return response, bytes(reader.data)


def hub_calls(clock: MemoryReactorClock, hub: EventHub) -> list[Any]:
    return [c for c in clock.getDelayedCalls() if getattr(c, "func", None) == hub._check]


def test_headers_retry_first_then_one_frame_per_interval(
    clocked: tuple[Monitor, MemoryReactorClock],
) -> None:
    monitor, clock = clocked
    client = Client(DashboardApp(monitor))
    response, reader = client.open()
    assert response.code == 200
    headers = response.headers
    assert headers.getRawHeaders("content-type") == ["text/event-stream"]
    assert headers.getRawHeaders("cache-control") == ["no-cache"]
    assert headers.getRawHeaders("x-accel-buffering") == ["no"]
    assert bytes(reader.data).startswith(b"retry: 2000\n\n")
    # A new client gets the newest sample at once, then one per interval.
    assert snapshot_ids(reader.data) == [1]
    for _ in range(3):
        clock.advance(1.0)
        client.stub.flush()
    assert snapshot_ids(reader.data) == [1, 2, 3, 4]
    events = parse_events(reader.data)
    assert events[0] == {"retry": "2000"}
    for event in events[1:]:
        assert set(event) == {"event", "id", "data"}
        data = json.loads(event["data"])
        assert data["seq"] == int(event["id"])
        assert data["reactor"] == "MemoryReactorClock"
    assert reader.ended is None


def test_every_frame_is_built_once_for_all_clients(
    clocked: tuple[Monitor, MemoryReactorClock], monkeypatch: pytest.MonkeyPatch
) -> None:
    monitor, clock = clocked
    built: list[int] = []
    real = sse.snapshot_frame

    def counting(seq: int, encoded: bytes) -> bytes:
        built.append(seq)
        return real(seq, encoded)

    monkeypatch.setattr(sse, "snapshot_frame", counting)
    client = Client(DashboardApp(monitor))
    readers = [client.open()[1] for _ in range(5)]
    built.clear()  # the newest sample sent to each on connect
    clock.advance(1.0)
    clock.advance(1.0)
    client.stub.flush()
    assert built == [2, 3]
    for reader in readers:
        assert snapshot_ids(reader.data)[-2:] == [2, 3]


def test_last_event_id_replays_what_was_missed_in_order_then_live(
    clocked: tuple[Monitor, MemoryReactorClock],
) -> None:
    monitor, clock = clocked
    for _ in range(10):
        clock.advance(1.0)
    assert monitor.latest().seq == 10
    client = Client(DashboardApp(monitor))
    _, reader = client.open({"Last-Event-ID": "6"})
    assert snapshot_ids(reader.data) == [7, 8, 9, 10]
    clock.advance(1.0)
    client.stub.flush()
    assert snapshot_ids(reader.data) == [7, 8, 9, 10, 11]
    # Up to date: nothing replayed. From before a restart (ahead of us): the newest sample.
    _, current = client.open({"Last-Event-ID": "11"})
    _, ahead = client.open({"Last-Event-ID": "5000"})
    assert snapshot_ids(current.data) == []
    assert snapshot_ids(ahead.data) == [11]
    assert bytes(current.data) == b"retry: 2000\n\n"


def test_replay_is_limited_to_the_history_ring(clocked: tuple[Monitor, MemoryReactorClock]) -> None:
    monitor, clock = clocked
    for _ in range(40):  # history=30
        clock.advance(1.0)
    client = Client(DashboardApp(monitor))
    _, reader = client.open({"Last-Event-ID": "0"})
    assert snapshot_ids(reader.data) == list(range(11, 41))


@pytest.mark.parametrize("value", ["abc", "-3", "1.5", "12 13", "9" * 40])
def test_a_bad_last_event_id_gets_400_json(
    clocked: tuple[Monitor, MemoryReactorClock], value: str
) -> None:
    monitor, _ = clocked
    app = DashboardApp(monitor)
    response, body = Client(app).body({"Last-Event-ID": value})
    assert response.code == 400
    assert response.headers.getRawHeaders("content-type") == ["application/json; charset=utf-8"]
    error = json.loads(body)
    assert (error["error"], error["parameter"]) == ("bad_request", "Last-Event-ID")
    assert app.events.stats()["clients"] == 0


def test_unknown_query_parameter_gets_400(clocked: tuple[Monitor, MemoryReactorClock]) -> None:
    monitor, _ = clocked
    response, body = Client(DashboardApp(monitor)).body(url=URL + "?since=3")
    assert response.code == 400
    assert json.loads(body)["parameter"] == "since"


def test_heartbeat_after_15_s_of_silence(clocked: tuple[Monitor, MemoryReactorClock]) -> None:
    monitor, clock = clocked
    monitor.stop()
    quiet = Monitor(clock, interval=60.0, history=5)  # no sample within the 15 s
    quiet.start()
    try:
        client = Client(DashboardApp(quiet))
        _, reader = client.open()
        clock.advance(14.0)
        client.stub.flush()
        assert [e for e in parse_events(reader.data) if ":" in e] == []
        clock.advance(1.0)
        client.stub.flush()
        assert parse_events(reader.data)[-1] == {":": "keep-alive"}
        clock.advance(14.0)
        client.stub.flush()
        assert len([e for e in parse_events(reader.data) if ":" in e]) == 1
        clock.advance(1.0)
        client.stub.flush()
        assert len([e for e in parse_events(reader.data) if ":" in e]) == 2
        # The sample at 60 s resets the silence: no heartbeat until 75 s.
        clock.advance(30.0)
        client.stub.flush()
        before = len([e for e in parse_events(reader.data) if ":" in e])
        assert snapshot_ids(reader.data)[-1] == 2
        clock.advance(14.0)
        client.stub.flush()
        assert len([e for e in parse_events(reader.data) if ":" in e]) == before
    finally:
        quiet.stop()


def test_heartbeats_not_needed_while_samples_flow(
    clocked: tuple[Monitor, MemoryReactorClock],
) -> None:
    monitor, clock = clocked
    app = DashboardApp(monitor)
    client = Client(app)
    _, reader = client.open()
    for _ in range(40):
        clock.advance(1.0)
    client.stub.flush()
    assert app.events.stats()["heartbeats_total"] == 0
    assert snapshot_ids(reader.data) == list(range(1, 42))


def test_at_max_clients_the_next_gets_503_with_retry_after(
    clocked: tuple[Monitor, MemoryReactorClock],
) -> None:
    monitor, _ = clocked
    app = DashboardApp(monitor, events=EventHub(monitor, max_clients=2, retry_after_s=7))
    client = Client(app)
    first = client.open()[1]
    client.open()
    response, body = client.body()
    assert response.code == 503
    assert response.headers.getRawHeaders("retry-after") == ["7"]
    assert response.headers.getRawHeaders("content-type") == ["application/json; charset=utf-8"]
    error = json.loads(body)
    assert error["error"] == "too_many_clients"
    assert (error["max_clients"], error["retry_after_s"]) == (2, 7)
    assert app.events.stats()["rejected_total"] == 1
    # One leaves: room for the next.
    first.close()
    client.stub.flush()
    assert app.events.stats()["clients"] == 1
    response, _ = client.open()
    assert response.code == 200
    stats = app.events.stats()
    assert (stats["clients"], stats["connected_total"], stats["rejected_total"]) == (2, 3, 1)


def test_closing_a_client_frees_its_stream_subscription_and_timer(
    clocked: tuple[Monitor, MemoryReactorClock],
) -> None:
    monitor, clock = clocked
    app = DashboardApp(monitor)
    hub = app.events
    client = Client(app)
    readers = [client.open()[1] for _ in range(3)]
    assert len(hub.streams) == 3
    assert hub_subscriptions(monitor) == [hub.publish]  # one for every client
    assert len(hub_calls(clock, hub)) == 1
    for reader in readers:
        reader.close()
    client.stub.flush()
    assert hub.streams == set()
    assert hub_subscriptions(monitor) == []
    assert hub_calls(clock, hub) == []
    clock.advance(5.0)  # nothing left to wake up
    assert hub.stats()["clients"] == 0


def test_monitor_stop_ends_every_stream(clocked: tuple[Monitor, MemoryReactorClock]) -> None:
    monitor, clock = clocked
    app = DashboardApp(monitor)
    client = Client(app)
    readers = [client.open()[1] for _ in range(2)]
    monitor.stop()
    clock.advance(1.0)
    client.stub.flush()
    for reader in readers:
        assert reader.ended is not None
        assert snapshot_ids(reader.data) == [1]
    assert app.events.streams == set()
    assert hub_subscriptions(monitor) == []
    assert hub_calls(clock, app.events) == []
    # A stopped monitor streams nothing: 503, so the browser's reconnect finds out.
    response, body = client.body()
    assert response.code == 503
    assert json.loads(body)["error"] == "monitor_stopped"


def test_head_answers_the_headers_only(clocked: tuple[Monitor, MemoryReactorClock]) -> None:
    monitor, _ = clocked
    app = DashboardApp(monitor)
    client = Client(app)
    d = client.stub.request("HEAD", URL)
    client.stub.flush()
    response = result_of(d)
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["text/event-stream"]
    assert app.events.stats()["connected_total"] == 0


def test_other_methods_get_405(clocked: tuple[Monitor, MemoryReactorClock]) -> None:
    monitor, _ = clocked
    client = Client(DashboardApp(monitor))
    d = client.stub.request("POST", URL, unbuffered=True)
    client.stub.flush()
    response = result_of(d)
    assert response.code == 405


def test_stats_are_json_ready_counts(clocked: tuple[Monitor, MemoryReactorClock]) -> None:
    monitor, _ = clocked
    hub = EventHub(monitor, max_clients=3)
    stats = hub.stats()
    assert stats == {
        "clients": 0,
        "max_clients": 3,
        "paused_clients": 0,
        "backlog_bytes": 0,
        "connected_total": 0,
        "rejected_total": 0,
        "dropped_slow_total": 0,
        "replayed_total": 0,
        "heartbeats_total": 0,
    }
    json.dumps(stats)


@pytest.mark.parametrize(
    "options",
    [
        {"max_clients": -1},
        {"max_backlog_bytes": -1},
        {"heartbeat_s": 0.0},
        {"retry_ms": -1},
        {"retry_after_s": -1},
    ],
)
def test_bad_hub_options_are_refused(
    clocked: tuple[Monitor, MemoryReactorClock], options: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        EventHub(clocked[0], **options)
