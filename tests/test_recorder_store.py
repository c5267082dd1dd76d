"""The flight recorder's file and writer (dashboard/recorder/store.py, writer.py), with the
real SQLite store: round trip, retention by age and size, bad files, damaged samples, a
recording Monitor, kill -9 and a full disk in a real subprocess."""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock

from dashboard.monitor import Monitor
from dashboard.recorder.store import (
    FORMAT_VERSION,
    ZLIB_LEVEL,
    RecordingError,
    RecordingStore,
    open_for_reading,
)
from dashboard.recorder.writer import RecordingWriter

PROGRAM = Path(__file__).resolve().parent / "recorder_program.py"
ROOT = PROGRAM.parent.parent


def threaded_clock() -> MemoryReactorClock:
    """A MemoryReactorClock that also runs ``callFromThread`` functions (at once)."""
    clock = MemoryReactorClock()
    clock.callFromThread = lambda f, *args, **kwargs: f(*args, **kwargs)  # type: ignore[attr-defined]
    return clock


class FakeSample:
    def __init__(self, seq: int, t: float, payload: bytes) -> None:
        self.seq = seq
        self.time = t
        self.encoded = payload


def body(seq: int, pad: int = 0, noise: bool = False) -> bytes:
    filler = os.urandom(pad).hex() if noise else "x" * pad
    return json.dumps({"seq": seq, "pad": filler}).encode()


def write_all(path: Path, samples: list[FakeSample], **limits: Any) -> RecordingWriter:
    store = RecordingStore(path, create=True)
    writer = RecordingWriter(
        store,
        max_age_s=limits.get("max_age_s", 1e12),
        max_bytes=limits.get("max_bytes", 1 << 30),
        clock=limits.get("clock", time.time),
        queue_max=limits.get("queue_max", 256),
    )
    writer.start()
    for sample in samples:
        writer.offer(sample)
        if limits.get("pace"):
            time.sleep(0.001)
    writer.close()
    return writer


def read_all(path: Path) -> tuple[list[Any], RecordingStore]:
    store = open_for_reading(path)
    refs = store.times(0, 1e12, 100_000)
    return list(store.read(refs)), store


def test_samples_round_trip_compressed_and_indexed(tmp_path: Path) -> None:
    path = tmp_path / "rec.db"
    samples = [FakeSample(n, 1000.0 + n, body(n, 5000)) for n in range(1, 51)]
    writer = write_all(path, samples)
    assert writer.written_total == 50 and writer.dropped_total == 0
    read, store = read_all(path)
    assert [s.seq for s in read] == list(range(1, 51))
    assert read[9].encoded == samples[9].encoded and read[9].time == 1010.0
    assert store.span() == (1001.0, 1050.0)
    assert store.at(1020.5) is not None and store.at(1020.5).seq == 20  # type: ignore[union-attr]
    assert store.at(10.0).seq == 1  # type: ignore[union-attr]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert dict(db.execute("SELECT key, value FROM meta")) == {
        "app": "reactor-dashboard",
        "format": str(FORMAT_VERSION),
    }
    stored = db.execute("SELECT body FROM samples WHERE seq = 3").fetchone()[0]
    assert zlib.decompress(stored) == samples[2].encoded and len(stored) < 200
    indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"samples_time", "samples_seq"} <= indexes


def test_retention_by_age_deletes_what_is_older_as_it_runs(tmp_path: Path) -> None:
    now = [2000.0]
    samples = [FakeSample(n, 1000.0 + n * 10, body(n)) for n in range(1, 101)]
    writer = write_all(tmp_path / "rec.db", samples, max_age_s=300.0, clock=lambda: now[0])
    read, _ = read_all(tmp_path / "rec.db")
    # kept: time >= 2000 - 300 = 1700, i.e. seq 70..100
    assert [s.seq for s in read] == list(range(70, 101))
    assert writer.expired_total == 69


def test_retention_by_size_keeps_the_file_near_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "rec.db"
    limit = 1024 * 1024
    # incompressible 20 KB samples: 400 of them are 8 MB, eight times the limit
    samples = [FakeSample(n, 1000.0 + n, body(n, 10_000, noise=True)) for n in range(1, 401)]
    writer = write_all(path, samples, max_bytes=limit, pace=True)
    size = path.stat().st_size
    assert size <= 1.3 * limit, size
    read, _ = read_all(path)
    assert read[-1].seq == 400  # the newest kept, the oldest gone
    assert 40 <= len(read) <= 100 and read[0].seq > 300
    assert writer.expired_total == 400 - len(read)


def test_bad_files_are_one_clear_error(tmp_path: Path) -> None:
    def refused(path: Path) -> str:
        with pytest.raises(RecordingError) as caught:
            open_for_reading(path)
        message = str(caught.value)
        assert "\n" not in message
        return message

    assert "no such recording" in refused(tmp_path / "missing.db")
    (tmp_path / "empty.db").write_bytes(b"")
    assert "empty" in refused(tmp_path / "empty.db")
    (tmp_path / "text.db").write_text("hello, not a database\n" * 10)
    assert "not an SQLite file" in refused(tmp_path / "text.db")
    foreign = sqlite3.connect(tmp_path / "foreign.db")
    foreign.execute("CREATE TABLE t (x)")
    foreign.commit()
    foreign.close()
    assert "SQLite file but not a recording" in refused(tmp_path / "foreign.db")
    good = tmp_path / "good.db"
    write_all(good, [FakeSample(n, 1000.0 + n, body(n, 3000, noise=True)) for n in range(200)])
    data = good.read_bytes()
    (tmp_path / "cut.db").write_bytes(data[: len(data) // 2])
    assert "truncated" in refused(tmp_path / "cut.db")
    newer = tmp_path / "newer.db"
    write_all(newer, [])
    db = sqlite3.connect(newer)
    db.execute("UPDATE meta SET value = ? WHERE key = 'format'", (str(FORMAT_VERSION + 1),))
    db.commit()
    db.close()
    assert "newer" in refused(newer)
    # and a writer refuses them too (Monitor(record=...) at start)
    with pytest.raises(RecordingError):
        RecordingStore(tmp_path / "foreign.db", create=True)


def test_a_damaged_sample_is_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "rec.db"
    samples = [FakeSample(n, 1000.0 + n, body(n, 2000, noise=True)) for n in range(1, 21)]
    write_all(path, samples)
    data = bytearray(path.read_bytes())
    victim = zlib.compress(samples[9].encoded, ZLIB_LEVEL)
    at = bytes(data).find(victim)
    assert at > 0
    data[at + 100 : at + 140] = b"\x00" * 40
    path.write_bytes(bytes(data))
    read, store = read_all(path)
    assert [s.seq for s in read] == [n for n in range(1, 21) if n != 10]
    assert store.corrupt_total == 1
    assert store.at(1010.0).seq == 9  # type: ignore[union-attr]


def test_a_recording_monitor_writes_every_sample_and_stop_flushes(tmp_path: Path) -> None:
    path = tmp_path / "rec.db"
    clock = threaded_clock()
    monitor = Monitor(clock, interval=1.0, history=30, record=str(path))
    monitor.start()
    try:
        taken = [monitor.sample() for _ in range(12)]
        assert monitor.recorder is not None
        assert taken[-1].data["recorder"]["path"] == str(path)
        assert [t.name for t in threading.enumerate()].count("reactor-dashboard recorder") == 1
    finally:
        monitor.stop()
    assert monitor.recorder is None
    assert "reactor-dashboard recorder" not in [t.name for t in threading.enumerate()]
    read, _ = read_all(path)
    assert [s.seq for s in read] == [s.seq for s in taken]
    assert read[-1].encoded == taken[-1].encoded
    # a second run appends to the same file
    again = Monitor(clock, interval=1.0, record=str(path))
    again.start()
    again.sample()
    again.stop()
    assert len(read_all(path)[0]) == 13


def test_monitor_refuses_a_foreign_file_before_patching_anything(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("not a recording")
    monitor = Monitor(threaded_clock(), record=str(tmp_path / "x.txt"))
    with pytest.raises(RecordingError, match="not an SQLite file"):
        monitor.start()
    assert not monitor.running
    other = Monitor(threaded_clock())
    other.start()  # nothing was left active: another Monitor starts
    try:
        assert other.running
    finally:
        other.stop()
    with pytest.raises(ValueError, match="record_hours"):
        Monitor(threaded_clock(), record="x", record_hours=0)


def start_program(request: pytest.FixtureRequest, *args: str) -> subprocess.Popen[str]:
    reactor_name = str(request.config.getoption("reactor"))
    return subprocess.Popen(
        [sys.executable, str(PROGRAM), "--reactor", reactor_name, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def read_seq_until(process: subprocess.Popen[str], wanted: int, deadline_s: float = 60) -> int:
    assert process.stdout is not None
    deadline = time.monotonic() + deadline_s
    last = 0
    while last < wanted:
        assert time.monotonic() < deadline, f"only reached seq {last}"
        line = process.stdout.readline()
        assert line, f"program ended: {process.stderr.read() if process.stderr else ''}"
        if line.startswith("seq "):
            last = int(line.split()[1])
    return last


def test_kill_9_loses_at_most_the_last_seconds_never_the_file(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    path = tmp_path / "rec.db"
    process = start_program(request, "--record", str(path), "--interval", "0.05", "--sites", "200")
    try:
        last = read_seq_until(process, 60)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == -signal.SIGKILL
    read, store = read_all(path)
    seqs = [s.seq for s in read]
    assert seqs == list(range(1, len(seqs) + 1))  # none missing in the middle
    # at 20 samples a second, "the last few seconds" is at most 3 s: 60 samples
    assert len(seqs) >= last - 60 and len(seqs) >= 1, (len(seqs), last)
    assert store.corrupt_total == 0
    assert json.loads(read[-1].encoded)["deferreds"]["pending"] >= 200


def test_a_full_disk_stops_recording_with_one_warning_and_the_program_goes_on(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    path = tmp_path / "rec.db"
    # 300 KB: the file fills within a few seconds of 200-site samples
    process = start_program(
        request,
        "--record",
        str(path),
        "--interval",
        "0.05",
        "--sites",
        "300",
        "--fsize-limit",
        str(300 * 1024),
        "--duration",
        "6",
    )
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    lines = out.splitlines()
    assert lines[-1] == "stopped"
    assert int(lines[-2].split()[1]) >= 40  # it kept sampling to the end
    warnings = [line for line in err.splitlines() if "recording to" in line]
    assert len(warnings) == 1, err
    assert "stopped" in warnings[0] and "the program goes on" in warnings[0]
    assert "Traceback" not in err
    read, _ = read_all(path)
    assert 1 <= len(read) < int(lines[-2].split()[1])


def test_a_damaged_page_in_the_middle_is_skipped_and_counted(tmp_path: Path) -> None:
    """A whole page of garbage where a sample's row lives (not just its bytes): the index
    still lists it, its read fails, it is skipped and counted, every other sample reads."""
    path = tmp_path / "rec.db"
    samples = [FakeSample(n, 1000.0 + n, body(n, 3000, noise=True)) for n in range(1, 201)]
    write_all(path, samples)
    data = bytearray(path.read_bytes())
    at = bytes(data).find(zlib.compress(samples[99].encoded, ZLIB_LEVEL))
    page_size = int.from_bytes(data[16:18], "big")
    page = at // page_size
    noise = os.urandom(page_size)
    data[page * page_size : (page + 1) * page_size] = noise
    path.write_bytes(bytes(data))
    read, store = read_all(path)
    seqs = [s.seq for s in read]
    assert 100 not in seqs and len(seqs) >= 195 and seqs[-1] == 200 and seqs[0] == 1
    assert store.corrupt_total == 200 - len(seqs)
    assert store.at(1100.0).seq == 99  # type: ignore[union-attr]


def test_time_order_apart_from_write_order_and_even_thinning(tmp_path: Path) -> None:
    """Two writers into one file (or a clock set back) store samples out of time order: all
    are read, in time order. A long range is thinned evenly to the points asked."""
    from dashboard.recorder.replay import ReplaySource

    path = tmp_path / "rec.db"
    shuffled = [FakeSample(n, 1000.0 + ((n * 37) % 3000), body(n)) for n in range(1, 3001)]
    write_all(path, shuffled, queue_max=5000)
    read, store = read_all(path)
    assert len(read) == 3000 and store.corrupt_total == 0
    assert [s.time for s in read] == sorted(s.time for s in read)
    source = ReplaySource(store, reactor=None)
    thinned = list(source.thinned(1000.0, 3999.0, 100))
    assert 90 <= len(thinned) <= 100
    assert thinned[-1].time == 3999.0  # the last one always
    gaps = [b.time - a.time for a, b in itertools.pairwise(thinned)]
    assert min(gaps) > 0 and max(gaps) < 200  # spread over the whole range
