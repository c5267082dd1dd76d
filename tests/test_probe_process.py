"""ProcessProbe: real figures of this very process, asserted by the changes we cause."""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from pathlib import Path

import pytest

from dashboard.probes import process as process_module
from dashboard.probes.base import ProbeErrors
from dashboard.probes.process import ProcessProbe

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")


@pytest.fixture
def probe(errors: ProbeErrors) -> ProcessProbe:
    probe = ProcessProbe(errors)
    probe.install()
    return probe


def test_shape_and_identity(probe: ProcessProbe, errors: ProbeErrors) -> None:
    data = probe.collect()
    json.dumps(data, allow_nan=False)
    assert data["pid"] == os.getpid()
    assert data["threads_source"] == "os"
    assert data["python_threads"] == threading.active_count()
    gc_data = data["gc"]
    assert len(gc_data["collections"]) == 3
    assert gc_data["collections"] == [s["collections"] for s in gc.get_stats()]
    assert len(gc_data["counts"]) == 3
    assert gc_data["thresholds"] == list(gc.get_threshold())
    assert errors.counts == {}


def test_uptime_matches_the_os_start_time(probe: ProcessProbe) -> None:
    data = probe.collect()
    # /proc's start time has clock-tick resolution (10 ms); the test process is older than
    # this test but younger than a day.
    assert 0.0 < data["uptime_s"] < 86_400
    assert abs(data["started_at"] + data["uptime_s"] - time.time()) < 0.5
    later = probe.collect()
    assert later["uptime_s"] >= data["uptime_s"]


def test_rss_is_sane_and_grows_with_50_mb_touched(probe: ProcessProbe) -> None:
    before = probe.collect()["rss_bytes"]
    assert 5 * 2**20 < before < 4 * 2**30
    block = bytearray(50 * 2**20)
    for i in range(0, len(block), 4096):  # touch every page so it is resident
        block[i] = 1
    after = probe.collect()["rss_bytes"]
    del block
    grown = after - before
    assert 45 * 2**20 <= grown <= 60 * 2**20, grown


def test_open_fds_grows_by_exactly_one_per_file(probe: ProcessProbe, tmp_path: Path) -> None:
    base = probe.collect()["open_fds"]
    assert base == len(os.listdir("/proc/self/fd")) - 1
    with open(tmp_path / "a", "wb"):
        assert probe.collect()["open_fds"] == base + 1
        with open(tmp_path / "b", "wb"):
            assert probe.collect()["open_fds"] == base + 2
    assert probe.collect()["open_fds"] == base


def test_threads_grow_by_one_per_thread(probe: ProcessProbe) -> None:
    base = probe.collect()
    release = threading.Event()
    worker = threading.Thread(target=release.wait, daemon=True)
    worker.start()
    try:
        during = probe.collect()
        assert during["threads"] == base["threads"] + 1
        assert during["python_threads"] == base["python_threads"] + 1
    finally:
        release.set()
        worker.join(5)
    assert probe.collect()["threads"] == base["threads"]


def test_cpu_percent_first_zero_then_busy_loop_shows(probe: ProcessProbe) -> None:
    assert probe.collect()["cpu_percent"] == 0.0
    started = time.monotonic()
    cpu_started = time.process_time()
    # 0.2 s of CPU, however long a loaded machine takes to give it
    while time.process_time() - cpu_started < 0.2 and time.monotonic() < started + 5:
        pass
    truth = (time.process_time() - cpu_started) / (time.monotonic() - started) * 100.0
    busy = probe.collect()["cpu_percent"]
    assert busy == pytest.approx(truth, abs=max(5.0, truth * 0.15)), (busy, truth)
    time.sleep(0.3)
    idle = probe.collect()["cpu_percent"]
    assert idle < 50.0, idle


def test_install_resets_cpu_baseline(probe: ProcessProbe) -> None:
    probe.collect()
    probe.uninstall()
    probe.install()
    assert probe.collect()["cpu_percent"] == 0.0


def test_degrades_without_proc(monkeypatch: pytest.MonkeyPatch, errors: ProbeErrors) -> None:
    monkeypatch.setattr(process_module, "_PROC_SELF", "/nonexistent/proc/self")
    probe = ProcessProbe(errors)
    before = time.time()
    probe.install()
    data = probe.collect()
    json.dumps(data, allow_nan=False)
    assert data["rss_bytes"] is None
    assert data["threads_source"] == "python"
    assert data["threads"] == threading.active_count()
    assert before <= data["started_at"] <= time.time()  # since install, not since exec
    assert data["pid"] == os.getpid()
    # /dev/fd still lists descriptors here, so open_fds stays a real count.
    assert data["open_fds"] == len(os.listdir("/proc/self/fd")) - 1
    assert errors.counts == {}


def test_a_failing_reader_is_counted_and_shown_as_none(
    probe: ProcessProbe, errors: ProbeErrors, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(probe, "_rss_bytes", broken)
    data = probe.collect()
    assert data["rss_bytes"] is None
    assert data["pid"] == os.getpid()
    assert errors.counts == {"process": 1}
    assert "boom" in errors.last["process"]


def test_install_uninstall_cycles_leave_nothing(errors: ProbeErrors) -> None:
    probe = ProcessProbe(errors)
    probe.install()
    base = probe.collect()
    for _ in range(100):
        probe.install()
        probe.collect()
        probe.uninstall()
    probe.install()
    end = probe.collect()
    assert end["open_fds"] == base["open_fds"]
    assert end["threads"] == base["threads"]
    assert errors.counts == {}


def test_many_fds_are_recounted_at_most_every_ten_seconds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    process = process_module

    probe = process.ProcessProbe(ProbeErrors())
    probe.install()
    monkeypatch.setattr(process, "FD_RECOUNT_ABOVE", 0)  # every count is "many"
    first = probe.collect()
    extra = open(tmp_path / "x", "w")  # noqa: SIM115
    try:
        cached = probe.collect()
        assert cached["open_fds"] == first["open_fds"]  # not recounted yet
        assert cached["open_fds_age_s"] >= 0.0
        monkeypatch.setattr(process, "FD_RECOUNT_EVERY_S", 0.0)
        assert probe.collect()["open_fds"] == first["open_fds"] + 1
    finally:
        extra.close()
