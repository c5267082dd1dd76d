"""``?fresh=1`` leaves what the sampler measures unchanged, and cannot saturate the program.

A real monitored program in a subprocess (tests/busy_server.py, on this pytest run's reactor)
keeps its loop about 0.3 busy; a client asks it for fresh snapshots 20 times a second. Every
stored sample still covers its whole interval, and its ``busy_ratio`` and ``cpu_percent`` match
the truth of that interval within 0.08 (8 points): the busy share from the program's own
counters (seconds spent spinning and serving the dashboard, read at each sample), the CPU share
from the process's cumulative CPU seconds in consecutive samples. Before the fix each fresh
snapshot reset both baselines, so a stored sample covered only the last ~50 ms.

Fresh snapshots are coalesced: at most one per ``fresh_min_interval_s`` (0.25 s), a caller
within it waits for the next one, shared by every caller waiting. Six keep-alive clients
asking as fast as they can keep an idle program's busy share within 0.2 of its idle value
(before: 540 fresh snapshots a second held the loop at busy 1.0).

And in process, on a Clock: ``Monitor.snapshot()`` between samples changes none of the next
sample's figures, and ``peek()`` of the loop and process probes closes nothing.
"""

from __future__ import annotations

import http.client
import itertools
import json
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from dashboard.answer_limits import FreshSnapshots
from dashboard.monitor import Monitor
from dashboard.probes.base import ProbeErrors
from dashboard.probes.loop import LoopProbe
from dashboard.probes.process import ProcessProbe
from dashboard.testing import result_of
from dashboard.web.app import DashboardApp
from tests.browser_support import BrowserThread, ServerProcess, new_page
from tests.test_probe_loop import FakeReactor

SERVER = Path(__file__).resolve().parent / "busy_server.py"
BUSY = 0.3
INTERVAL_S = 1.0
POLL_HZ = 20
POLL_S = 6.5
TOLERANCE = 0.08
MIN_INTERVAL_S = 0.25
FLOOD_CLIENTS = 6
FLOOD_S = 4.0
URL = "http://dashboard.test/api/v1/snapshot?fresh=1"


class BusyServer(ServerProcess):
    def __init__(
        self, reactor_name: str, busy: float = BUSY, interval_s: float = INTERVAL_S
    ) -> None:
        self.prefix = ""
        port, self.reactor_class, truth_port = self._start(
            [
                sys.executable,
                str(SERVER),
                "--reactor",
                reactor_name,
                "--busy",
                str(busy),
                "--interval",
                str(interval_s),
            ]
        )
        self.port = int(port)
        self.truth_port = int(truth_port)

    def get(self, path: str, port: int | None = None) -> Any:
        url = f"http://127.0.0.1:{port or self.port}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[BusyServer]:
    process = BusyServer(str(request.config.getoption("reactor")))
    try:
        yield process
    finally:
        process.stop()


class ClientThreads:
    """Client threads that run until :attr:`stop`; :meth:`join` stops them and raises the
    first exception any of them raised (an assert in a thread fails the test, not only the
    thread)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.failures: list[BaseException] = []

    def start(self, target: Any, *args: Any) -> None:
        def run() -> None:
            try:
                target(*args)
            except BaseException as exc:
                self.failures.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        self.threads.append(thread)
        thread.start()

    def join(self, timeout_s: float = 15) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=timeout_s)
        if self.failures:
            raise self.failures[0]
        running = [thread for thread in self.threads if thread.is_alive()]
        assert not running, f"{len(running)} client threads still running"


def test_a_client_thread_s_failure_fails_the_test() -> None:
    clients = ClientThreads()

    def fails(stop: threading.Event) -> None:
        raise AssertionError("status 503")

    clients.start(fails, clients.stop)
    clients.start(clients.stop.wait)
    with pytest.raises(AssertionError, match="status 503"):
        clients.join()


def poll_fresh(server: BusyServer, stop: threading.Event, answers: list[dict[str, Any]]) -> None:
    """``?fresh=1`` at ``POLL_HZ`` until ``stop``, on one persistent connection (as a page or a
    scraper would)."""
    period = 1.0 / POLL_HZ
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        while not stop.is_set():
            started = time.monotonic()
            connection.request("GET", "/api/v1/snapshot?fresh=1")
            response = connection.getresponse()
            answers.append(json.loads(response.read()))
            stop.wait(max(0.0, period - (time.monotonic() - started)))
    finally:
        connection.close()


def cpu_seconds(sample: dict[str, Any]) -> float:
    """The process's cumulative CPU seconds when ``sample`` was taken."""
    return float(sample["process"]["cpu_user_s"] + sample["process"]["cpu_system_s"])


def test_fresh_snapshots_leave_the_stored_samples_true(server: BusyServer) -> None:
    time.sleep(1.5)  # a sample or so before the client starts
    clients = ClientThreads()
    answers: list[dict[str, Any]] = []
    started = time.time()
    clients.start(poll_fresh, server, clients.stop, answers)
    try:
        time.sleep(POLL_S)
    finally:
        clients.join()
    ended = time.time()
    history = server.get("/api/v1/history")["samples"]
    truth = {
        int(seq): value for seq, value in server.get("/", server.truth_port)["samples"].items()
    }

    # Coalesced: the poller asks 20 times a second and is answered about 4 times a second.
    assert POLL_S / MIN_INTERVAL_S * 0.6 <= len(answers) <= POLL_S / MIN_INTERVAL_S + 2, len(
        answers
    )
    assert all(a["loop"]["busy_ratio"] is not None for a in answers)
    pairs = [
        (before, after)
        for before, after in itertools.pairwise(history)
        if before["time"] >= started and after["time"] <= ended
    ]
    assert len(pairs) >= 4, [s["time"] - started for s in history]
    checked = []
    for before, after in pairs:
        wall_s = after["time"] - before["time"]
        loop, process = after["loop"], after["process"]
        # The sample covers its whole interval, not the time since the last fresh snapshot.
        assert loop["interval_s"] == pytest.approx(wall_s, abs=0.05), (loop["interval_s"], wall_s)
        spin_0, serve_0, idle_0, perf_0 = truth[before["seq"]]
        spin_1, serve_1, idle_1, perf_1 = truth[after["seq"]]
        busy_truth = 1.0 - (idle_1 - idle_0) / (perf_1 - perf_0)
        # Coalesced fresh snapshots are taken in a delayed call, outside any request's
        # dataReceived: their seconds (web.fresh, as the stored samples report them) are
        # work too.
        fresh_s = after["web"]["fresh"]["seconds_total"] - before["web"]["fresh"]["seconds_total"]
        work = (spin_1 - spin_0 + serve_1 - serve_0 + fresh_s) / (perf_1 - perf_0)
        cpu_truth = (cpu_seconds(after) - cpu_seconds(before)) / wall_s * 100.0
        checked.append((loop["busy_ratio"], busy_truth, work, process["cpu_percent"], cpu_truth))
        # The program did what it was asked: its own work kept the loop about 0.3 busy.
        assert abs((spin_1 - spin_0) / (perf_1 - perf_0) - BUSY) < 0.1, checked
        assert work - 0.01 <= busy_truth < work + 0.15, checked
        assert loop["busy_ratio"] == pytest.approx(busy_truth, abs=TOLERANCE), checked
        assert process["cpu_percent"] == pytest.approx(cpu_truth, abs=TOLERANCE * 100), checked
    assert server.get("/api/v1/snapshot")["errors"]["total"] == 0


@pytest.fixture
def idle_server(request: pytest.FixtureRequest) -> Iterator[BusyServer]:
    process = BusyServer(str(request.config.getoption("reactor")), busy=0.0, interval_s=0.5)
    try:
        yield process
    finally:
        process.stop()


def flood_fresh(server: BusyServer, stop: threading.Event, answered: list[int]) -> None:
    """``?fresh=1`` as fast as answers come, on one persistent connection, until ``stop``."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        while not stop.is_set():
            connection.request("GET", "/api/v1/snapshot?fresh=1")
            response = connection.getresponse()
            body = response.read()
            assert response.status == 200, body[:200]
            json.loads(body)
            answered.append(1)
    finally:
        connection.close()


def mean_busy(samples: list[dict[str, Any]], since: float, until: float) -> tuple[float, int]:
    """The mean ``loop.busy_ratio`` of the stored samples taken in (since, until], and how
    many there were."""
    ratios = [s["loop"]["busy_ratio"] for s in samples if since < s["time"] <= until]
    assert len(ratios) >= 4, (since, until, [s["time"] for s in samples])
    return sum(ratios) / len(ratios), len(ratios)


def test_a_flood_of_fresh_requests_leaves_the_loop_near_idle(idle_server: BusyServer) -> None:
    time.sleep(1.0)
    idle_from = time.time()
    time.sleep(FLOOD_S)
    idle_until = time.time()
    before = idle_server.get("/api/v1/snapshot").get("web")
    clients = ClientThreads()
    answered: list[list[int]] = [[] for _ in range(FLOOD_CLIENTS)]
    flood_from = time.time()
    for mine in answered:
        clients.start(flood_fresh, idle_server, clients.stop, mine)
    try:
        time.sleep(FLOOD_S)
    finally:
        clients.join()
    flood_until = time.time()
    history = idle_server.get("/api/v1/history")["samples"]
    after = idle_server.get("/api/v1/snapshot?fresh=1").get("web")

    idle, _ = mean_busy(history, idle_from, idle_until)
    # The first sample of the flood covers some idle time: judge the ones after it.
    flooded, count = mean_busy(history, flood_from + 0.5, flood_until)
    assert flooded <= idle + 0.2, (idle, flooded, count)
    assert before is not None and after is not None
    before, after = before["fresh"], after["fresh"]
    # Every client was answered, about 4 times a second each, from at most 4 snapshots a
    # second for all of them.
    counts = [len(mine) for mine in answered]
    assert all(FLOOD_S * 2 <= n <= FLOOD_S / MIN_INTERVAL_S + 2 for n in counts), counts
    taken = after["taken_total"] - before["taken_total"]
    assert 1 <= taken <= (flood_until - flood_from) / MIN_INTERVAL_S + 3, (taken, counts)
    assert after["served_total"] - before["served_total"] >= sum(counts)
    assert after["min_interval_s"] == MIN_INTERVAL_S
    assert 0 < after["seconds_total"] < taken  # each took well under a second
    assert after["waiting"] == 0


# in process, on a Clock: coalescing --------------------------------------------------------


def fresh_timers(clock: MemoryReactorClock) -> list[Any]:
    return [c for c in clock.getDelayedCalls() if getattr(c.func, "__name__", "") == "_due"]


def test_callers_within_the_interval_share_the_next_snapshot(
    clocked: tuple[Monitor, MemoryReactorClock],
) -> None:
    monitor, clock = clocked
    stub: Any = StubTreq(DashboardApp(monitor).app.resource())
    clock.advance(1.0)  # a stored sample
    first = stub.get(URL)
    stub.flush()
    first_body = result_of(stub.content(result_of(first)))
    waiting = [stub.get(URL), stub.get(URL)]
    answered: list[Any] = []
    for d in waiting:
        d.addCallback(answered.append)
    stub.flush()
    assert answered == []  # held for the next one
    assert monitor.fresh.as_json() == {
        "taken_total": 1,
        "served_total": 1,
        "min_interval_s": 0.25,
        "seconds_total": pytest.approx(monitor.fresh.seconds_total, abs=1e-6),
        "waiting": 2,
    }
    assert len(fresh_timers(clock)) == 1
    clock.advance(0.2)
    stub.flush()
    assert answered == []
    clock.advance(0.05)
    stub.flush()
    responses = list(answered)
    assert [r.code for r in responses] == [200, 200]
    assert responses[0].headers.getRawHeaders("content-type") == ["application/json; charset=utf-8"]
    bodies = [result_of(stub.content(r)) for r in responses]
    assert bodies[0] == bodies[1] != first_body  # one snapshot, taken once, for both
    shared = json.loads(bodies[0])
    assert shared["seq"] == 1 and shared["loop"] is not None
    assert shared["web"]["fresh"]["taken_total"] == 2  # its figures as it was taken, itself in
    assert json.loads(first_body)["web"]["fresh"]["served_total"] == 1
    assert json.loads(first_body)["web"]["fresh"]["taken_total"] == 1
    figures = monitor.fresh.as_json()
    assert (figures["taken_total"], figures["served_total"], figures["waiting"]) == (2, 3, 0)
    assert fresh_timers(clock) == []
    # The stored samples report the figures; the Python API is not coalesced.
    clock.advance(1.0)
    stored = json.loads(stub_body(stub, "http://dashboard.test/api/v1/snapshot"))
    assert stored["web"]["fresh"]["taken_total"] == 2
    assert stored["web"]["history"]["max_in_flight"] == 4
    monitor.snapshot()
    monitor.snapshot()
    assert monitor.fresh.taken_total == 2


def stub_body(stub: Any, url: str) -> bytes:
    d = stub.get(url)
    stub.flush()
    body: bytes = result_of(stub.content(result_of(d)))
    return body


def test_a_caller_gone_leaves_no_timer_and_stop_answers_the_waiting(
    clocked: tuple[Monitor, MemoryReactorClock],
) -> None:
    monitor, clock = clocked
    fresh = monitor.fresh
    assert isinstance(fresh.get(), bytes)
    gone = fresh.get()
    assert isinstance(gone, Deferred) and len(fresh_timers(clock)) == 1
    gone.addErrback(lambda _: None)
    gone.cancel()  # as Klein does when the client disconnects
    assert fresh.waiting == 0 and fresh_timers(clock) == []
    clock.advance(0.1)
    waiting = fresh.get()
    assert isinstance(waiting, Deferred)
    answered: list[bytes] = []
    waiting.addCallback(answered.append)
    monitor.stop()
    assert len(answered) == 1 and json.loads(answered[0])["loop"] is not None
    assert fresh_timers(clock) == [] and fresh.waiting == 0
    # Stopped: nobody waits, no timer starts.
    assert isinstance(fresh.get(), bytes) and fresh_timers(clock) == []


def test_past_max_waiting_a_caller_gets_the_newest_at_once() -> None:
    clock = MemoryReactorClock()
    taken: list[bytes] = []

    def take() -> bytes:
        taken.append(b'{"n":%d}' % len(taken))
        return taken[-1]

    fresh = FreshSnapshots(take, clock, min_interval_s=1.0, max_waiting=2)
    fresh.open()
    assert fresh.get() == b'{"n":0}'
    held = [fresh.get(), fresh.get()]
    assert fresh.get() == b'{"n":0}'  # the third in the interval: the newest, at once
    answered: list[bytes] = []
    for d in held:
        assert isinstance(d, Deferred)
        d.addCallback(answered.append)
    clock.advance(1.0)
    assert answered == [b'{"n":1}', b'{"n":1}']
    assert (fresh.taken_total, fresh.served_total) == (2, 4)
    fresh.close()
    assert clock.getDelayedCalls() == []


def test_a_waiter_cancelled_by_another_s_answer_strands_none() -> None:
    clock = MemoryReactorClock()
    fresh = FreshSnapshots(lambda: b'{"n":1}', clock, min_interval_s=1.0)
    fresh.open()
    fresh.get()
    first, second, third = (fresh.get() for _ in range(3))
    assert isinstance(first, Deferred) and isinstance(second, Deferred)
    assert isinstance(third, Deferred)
    answered: list[bytes] = []
    cancelled: list[Any] = []

    # Answering the first caller makes the second one's client go away (e.g. one page
    # closing both): Klein cancels the second's Deferred mid-way through the answers.
    def answer_and_leave(body: bytes) -> None:
        answered.append(body)
        second.cancel()

    first.addCallback(answer_and_leave)
    second.addErrback(cancelled.append)
    third.addCallback(answered.append)
    clock.advance(1.0)  # before the fix: AlreadyCalledError here, and the third never answered
    assert answered == [b'{"n":1}', b'{"n":1}']
    assert len(cancelled) == 1
    assert (fresh.taken_total, fresh.served_total, fresh.waiting) == (2, 3, 0)
    assert clock.getDelayedCalls() == []


def test_a_failing_snapshot_still_starts_the_interval_and_answers_every_caller() -> None:
    clock = MemoryReactorClock()
    calls: list[float] = []

    def take() -> bytes:
        calls.append(clock.seconds())
        if len(calls) >= 2:
            raise RuntimeError("probe blew up")
        return b"{}"

    fresh = FreshSnapshots(take, clock, min_interval_s=1.0)
    fresh.open()
    assert fresh.get() == b"{}"
    waiting = [fresh.get(), fresh.get()]
    failures: list[Any] = []
    for d in waiting:
        assert isinstance(d, Deferred)
        d.addErrback(failures.append)
    clock.advance(1.0)
    assert [f.value.args for f in failures] == [("probe blew up",), ("probe blew up",)]
    assert calls == [0.0, 1.0]
    # The failed take started the interval: a caller within it waits, nothing is taken now
    # (before the fix, every caller took one at once and failed: coalescing defeated).
    clock.advance(0.5)
    later = fresh.get()
    assert isinstance(later, Deferred) and calls == [0.0, 1.0]
    later.addErrback(failures.append)
    clock.advance(0.5)
    assert calls == [0.0, 1.0, 2.0] and len(failures) == 3
    fresh.close()
    assert clock.getDelayedCalls() == []


def test_a_failing_fresh_snapshot_is_a_json_500_for_every_caller(
    clocked: tuple[Monitor, MemoryReactorClock], monkeypatch: pytest.MonkeyPatch
) -> None:
    monitor, clock = clocked
    stub: Any = StubTreq(DashboardApp(monitor).app.resource())
    clock.advance(1.0)
    assert stub_body(stub, URL)  # one taken: the next callers wait

    def failing() -> bytes:
        raise RuntimeError("probe blew up")

    monkeypatch.setattr(monitor.fresh, "take", failing)
    waiting = [stub.get(URL), stub.get(URL)]
    stub.flush()
    clock.advance(0.25)
    stub.flush()
    responses = [result_of(d) for d in waiting]
    assert [r.code for r in responses] == [500, 500]
    for response in responses:
        assert response.headers.getRawHeaders("content-type") == ["application/json; charset=utf-8"]
        assert json.loads(result_of(stub.content(response)))["error"] == "internal_error"
    # A caller after the interval takes one at once, and fails the same way.
    clock.advance(0.25)
    response = result_of(stub.get(URL))
    assert response.code == 500
    assert json.loads(result_of(stub.content(response)))["error"] == "internal_error"
    assert monitor.errors.counts.get("web", 0) >= 3
    assert monitor.snapshot_answers.in_flight == 0


# in process: the probes' peek() closes nothing ------------------------------------------


def test_a_fresh_snapshot_between_samples_changes_no_sample_figure(errors: ProbeErrors) -> None:
    fake = FakeReactor()
    probe = LoopProbe(fake, errors, fake.seconds, block_threshold_ms=100, window_s=60)
    probe.watchdog_enabled = False
    probe.install()
    try:
        fake.wait(0.1)
        probe.collect()
        fake._pendingTimedCalls.append(type("Due", (), {"time": fake.seconds() + 0.01})())
        fake.busy(0.3)  # a block
        fake.wait(0.05)  # a delayed call 340 ms late
        fake._pendingTimedCalls.clear()  # it ran
        fake.busy(0.02)
        peeked = probe.peek()
        fake.wait(0.2)
        peeked_again = probe.peek()
        fake.busy(0.03)
        closed = probe.collect()
    finally:
        probe.uninstall()
    # The stored sample covers the whole interval: 0.35 busy of 0.6 s.
    assert closed["interval_s"] == pytest.approx(0.6)
    assert closed["busy_ratio"] == round(0.35 / 0.6, 4)
    assert closed["lag_ms"]["last"] == pytest.approx(340.0)
    assert closed["max_lateness_ms"] == pytest.approx(340.0)
    assert closed["lag_ms"]["samples"] == 2  # the block and the late call
    # The fresh reads saw the open interval so far.
    assert peeked["interval_s"] == pytest.approx(0.37)
    assert peeked["busy_ratio"] == round(0.32 / 0.37, 4)
    assert peeked["lag_ms"]["last"] == pytest.approx(340.0)
    assert peeked["lag_ms"]["samples"] == 2 and peeked["lag_ms"]["max"] == pytest.approx(340.0)
    assert peeked_again["busy_ratio"] == round(0.32 / 0.57, 4)
    assert peeked["blocks_total"] == closed["blocks_total"] == 1


def test_process_peek_keeps_the_cpu_baseline(errors: ProbeErrors) -> None:
    def cpu_s(section: dict[str, Any]) -> float:
        return float(section["cpu_user_s"] + section["cpu_system_s"])

    probe = ProcessProbe(errors)
    probe.install()
    first = probe.collect()
    started = time.monotonic()
    cpu_started = time.process_time()
    # 0.3 s of CPU (however long a loaded machine takes to give it), then 0.4 s asleep.
    while time.process_time() - cpu_started < 0.3 and time.monotonic() < started + 5:
        pass
    peeked = [probe.peek()]
    time.sleep(0.2)
    peeked.append(probe.peek())
    time.sleep(0.2)
    stored = probe.collect()
    wall_s = time.monotonic() - started
    # The stored read covers the whole time since the first one, not the time since the
    # last peek (asleep: about 0).
    truth = (cpu_s(stored) - cpu_s(first)) / wall_s * 100.0
    assert truth > 5.0, truth
    assert stored["cpu_percent"] == pytest.approx(truth, abs=max(2.0, truth * 0.1))
    assert peeked[1]["cpu_percent"] < peeked[0]["cpu_percent"]
    assert errors.counts == {}


# the page: the own-work line shows the web figures ---------------------------------------

OWN_WORK = """
async (snapshots) => {
  const { ownWork } = await import(new URL('static/js/own.js', location.href));
  return snapshots.map((snapshot) => ownWork(snapshot));
}
"""


def test_the_own_work_line_shows_fresh_history_series_and_snapshot_figures(
    browser: BrowserThread,
) -> None:
    web: dict[str, dict[str, Any]] = {
        "fresh": {
            "taken_total": 17,
            "served_total": 97,
            "min_interval_s": 0.25,
            "seconds_total": 0.0259,
            "waiting": 0,
        },
        "history": {
            "in_flight": 4,
            "max_in_flight": 4,
            "refused_total": 36,
            "dropped_slow_total": 2,
            "served_total": 5,
        },
        "series": {
            "in_flight": 0,
            "max_in_flight": 16,
            "refused_total": 3,
            "dropped_slow_total": 0,
            "served_total": 40,
        },
        "snapshot": {
            "in_flight": 1,
            "max_in_flight": 32,
            "refused_total": 0,
            "dropped_slow_total": 0,
            "served_total": 7,
        },
    }
    idle = {"in_flight": 0, "refused_total": 0, "dropped_slow_total": 0}
    quiet = {
        "fresh": {**web["fresh"], "taken_total": 0, "served_total": 0, "seconds_total": 0.0},
        "history": {**web["history"], **idle},
        "series": {**web["series"], **idle},
        "snapshot": {**web["snapshot"], **idle},
    }
    older = {"fresh": web["fresh"], "history": web["history"]}  # a server before series
    snapshots = [
        {"web": web},
        {"web": quiet},
        {},
        {"web": None},
        {"web": {"fresh": None}},
        {"web": older},
    ]
    server = ServerProcess()

    def scenario(browser: Browser) -> Any:
        page, watch = new_page(browser)
        page.goto(server.url)
        shown = page.evaluate(OWN_WORK, snapshots)
        page.context.close()
        return shown, watch.errors

    try:
        shown, errors = browser.run(scenario)
    finally:
        server.stop()
    assert errors == []
    assert shown == [
        [
            "17 fresh snapshots for 97 asks, 25.9 ms on the loop",
            "4/4 history answers, 2 slow dropped, 36 refused",
            "0/16 series answers, 0 slow dropped, 3 refused",
            "1/32 snapshot answers, 0 slow dropped, 0 refused",
        ],
        [],  # nothing asked, nothing under way: no phrase
        [],  # a snapshot without the section (an older server)
        [],
        [],
        [
            "17 fresh snapshots for 97 asks, 25.9 ms on the loop",
            "4/4 history answers, 2 slow dropped, 36 refused",
        ],
    ]
