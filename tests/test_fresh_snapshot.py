"""``?fresh=1`` leaves what the sampler measures unchanged.

A real monitored program in a subprocess (tests/busy_server.py, on this pytest run's reactor)
keeps its loop about 0.3 busy; a client asks it for fresh snapshots 20 times a second. Every
stored sample still covers its whole interval, and its ``busy_ratio`` and ``cpu_percent`` match
the truth of that interval within 0.08 (8 points): the busy share from the program's own
counters (seconds spent spinning and serving the dashboard, read at each sample), the CPU share
from the process's cumulative CPU seconds in consecutive samples. Before the fix each fresh
snapshot reset both baselines, so a stored sample covered only the last ~50 ms.

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

from dashboard.probes.base import ProbeErrors
from dashboard.probes.loop import LoopProbe
from dashboard.probes.process import ProcessProbe
from tests.browser_support import ServerProcess
from tests.test_probe_loop import FakeReactor

SERVER = Path(__file__).resolve().parent / "busy_server.py"
BUSY = 0.3
INTERVAL_S = 1.0
POLL_HZ = 20
POLL_S = 6.5
TOLERANCE = 0.08


class BusyServer(ServerProcess):
    def __init__(self, reactor_name: str) -> None:
        self.prefix = ""
        port, self.reactor_class, truth_port = self._start(
            [
                sys.executable,
                str(SERVER),
                "--reactor",
                reactor_name,
                "--busy",
                str(BUSY),
                "--interval",
                str(INTERVAL_S),
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
    stop = threading.Event()
    answers: list[dict[str, Any]] = []
    poller = threading.Thread(target=poll_fresh, args=(server, stop, answers), daemon=True)
    started = time.time()
    poller.start()
    try:
        time.sleep(POLL_S)
    finally:
        stop.set()
        poller.join(timeout=15)
    ended = time.time()
    history = server.get("/api/v1/history")["samples"]
    truth = {
        int(seq): value for seq, value in server.get("/", server.truth_port)["samples"].items()
    }

    assert len(answers) >= POLL_S * POLL_HZ * 0.6, len(answers)
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
        work = (spin_1 - spin_0 + serve_1 - serve_0) / (perf_1 - perf_0)
        cpu_truth = (cpu_seconds(after) - cpu_seconds(before)) / wall_s * 100.0
        checked.append((loop["busy_ratio"], busy_truth, work, process["cpu_percent"], cpu_truth))
        # The program did what it was asked: its own work kept the loop about 0.3 busy.
        assert abs((spin_1 - spin_0) / (perf_1 - perf_0) - BUSY) < 0.1, checked
        assert work - 0.01 <= busy_truth < work + 0.15, checked
        assert loop["busy_ratio"] == pytest.approx(busy_truth, abs=TOLERANCE), checked
        assert process["cpu_percent"] == pytest.approx(cpu_truth, abs=TOLERANCE * 100), checked
    assert server.get("/api/v1/snapshot")["errors"]["total"] == 0


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
