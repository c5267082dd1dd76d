"""The flight recorder's review fixes: a damaged file at start, file modes, read-only
readers, a bounded close (dashboard/recorder/store.py, writer.py, dashboard/monitor.py)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock

from dashboard.monitor import Monitor, _active
from dashboard.recorder import writer as writer_module
from dashboard.recorder.store import (
    ZLIB_LEVEL,
    RecordingError,
    RecordingStore,
    check_for_recording,
    open_for_reading,
)
from dashboard.recorder.writer import RecordingWriter

ROOT = Path(__file__).resolve().parent.parent


def threaded_clock() -> MemoryReactorClock:
    clock = MemoryReactorClock()
    clock.callFromThread = lambda f, *args, **kwargs: f(*args, **kwargs)  # type: ignore[attr-defined]
    return clock


class FakeSample:
    def __init__(self, seq: int, t: float, payload: bytes) -> None:
        self.seq = seq
        self.time = t
        self.encoded = payload


def body(seq: int, pad: int) -> bytes:
    return json.dumps({"seq": seq, "pad": os.urandom(pad).hex()}).encode()


def write_samples(path: Path, samples: list[FakeSample]) -> None:
    store = RecordingStore(path, create=True)
    writer = RecordingWriter(store, max_age_s=1e12, max_bytes=1 << 30, queue_max=100_000)
    writer.start()
    for sample in samples:
        writer.offer(sample)
    writer.close()
    assert writer.written_total == len(samples)


def damaged_file(path: Path) -> Path:
    """A recording with a page of noise where a sample's row lives, in the middle: its
    header and schema read, a pass over the samples does not."""
    samples = [FakeSample(n, 1000.0 + n, body(n, 1500)) for n in range(1, 201)]
    write_samples(path, samples)
    data = bytearray(path.read_bytes())
    at = bytes(data).find(zlib.compress(samples[99].encoded, ZLIB_LEVEL))
    assert at > 0
    page_size = int.from_bytes(data[16:18], "big")
    page = at // page_size
    data[page * page_size : (page + 1) * page_size] = os.urandom(page_size)
    path.write_bytes(bytes(data))
    return path


def recorder_threads() -> int:
    return [t.name for t in threading.enumerate()].count("reactor-dashboard recorder")


# 1. a damaged file at start ----------------------------------------------------------------


def test_a_damaged_file_never_half_starts_a_monitor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The file's size is read on the writer thread: start() returns, the recording stops
    with one warning, the program's monitor runs on, and stop() undoes everything."""
    path = damaged_file(tmp_path / "dmg.db")
    clock = threaded_clock()
    monitor = Monitor(clock, interval=1.0, record=str(path))
    monitor.start()
    try:
        assert monitor.running
        recorder = monitor.recorder
        assert recorder is not None
        deadline = time.monotonic() + 30
        while recorder.failed is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert recorder.failed is not None and "malformed" in recorder.failed
        monitor.sample()  # dropped, counted, never raised
        assert recorder.dropped_total >= 1
    finally:
        monitor.stop()
    assert not monitor.running and monitor not in _active and recorder_threads() == 0
    err = capsys.readouterr().err
    assert err.count("reactor-dashboard: recording to") == 1 and "the program goes on" in err
    other = Monitor(threaded_clock())
    other.start()
    other.stop()


def test_any_failure_in_start_undoes_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recorder whose thread cannot start: start() raises, nothing is left patched,
    active or subscribed, and the file is closed."""

    def refuse(self: RecordingWriter) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(RecordingWriter, "start", refuse)
    closed: list[bool] = []
    real_close = RecordingWriter.close

    def close(self: RecordingWriter) -> None:
        closed.append(True)
        real_close(self)

    monkeypatch.setattr(RecordingWriter, "close", close)
    clock = threaded_clock()
    original = clock.callLater
    monitor = Monitor(clock, interval=1.0, record=str(tmp_path / "rec.db"))
    with pytest.raises(RuntimeError, match="new thread"):
        monitor.start()
    assert not monitor.running and monitor not in _active and monitor.recorder is None
    assert closed == [True]
    assert clock.callLater == original and not clock.getDelayedCalls()
    monkeypatch.undo()
    again = Monitor(clock, interval=1.0, record=str(tmp_path / "rec.db"))
    again.start()  # nothing left over: a new monitor starts and records
    try:
        again.sample()
    finally:
        again.stop()
    store = open_for_reading(tmp_path / "rec.db")
    assert store.count() == 1
    store.close()


def test_check_for_recording_refuses_a_damaged_file_in_one_line(tmp_path: Path) -> None:
    path = damaged_file(tmp_path / "dmg.db")
    with pytest.raises(RecordingError, match="is damaged, record into another file"):
        check_for_recording(path)
    check_for_recording(tmp_path / "new.db")  # a new file is fine


def test_run_and_demo_record_into_a_damaged_file_is_one_line_and_exit_2(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    path = damaged_file(tmp_path / "dmg.db")
    script = tmp_path / "program.py"
    script.write_text("print('the program ran')\n")
    reactor_name = str(request.config.getoption("reactor"))
    run = ["run", "--port", "0", "--reactor", reactor_name, "--record", str(path)]
    done = subprocess.run(
        [sys.executable, "-m", "dashboard", *run, str(script)],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "the program ran" not in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--record" in lines[0] and "is damaged" in lines[0], lines
    demo = subprocess.run(
        [sys.executable, "-m", "dashboard", "demo", "--port", "0", "--record", str(path)],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert demo.returncode == 2, demo.stderr
    lines = demo.stderr.strip().splitlines()
    assert len(lines) == 1 and "--record" in lines[0] and "is damaged" in lines[0], lines


# 4. file modes ----------------------------------------------------------------------------


def test_a_new_recording_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "rec.db"
    old = os.umask(0o022)
    try:
        store = RecordingStore(path, create=True)
        store.append([(1.0, 1, 2, zlib.compress(b"{}"))])
        modes = {
            name: stat.S_IMODE(os.stat(tmp_path / name).st_mode)
            for name in ("rec.db", "rec.db-wal", "rec.db-shm")
        }
        store.close()
    finally:
        os.umask(old)
    assert modes == {"rec.db": 0o600, "rec.db-wal": 0o600, "rec.db-shm": 0o600}


# 5. read-only readers ---------------------------------------------------------------------


def test_a_reader_writes_nothing_into_the_file(tmp_path: Path) -> None:
    """Readers open read-only: a query that would write (a PRAGMA) fails on them."""
    path = tmp_path / "rec.db"
    write_samples(path, [FakeSample(n, 1000.0 + n, body(n, 10)) for n in range(1, 6)])
    store = open_for_reading(path)
    try:
        assert store.count() == 5 and not store.immutable
        with pytest.raises(Exception, match="readonly"):
            store.db.execute("DELETE FROM samples")
    finally:
        store.close()


REPLAY_1S = ("--port", "0", "--duration", "1")
READER = """
import sys
from dashboard.recorder.store import open_for_reading
store = open_for_reading(sys.argv[1])
print(store.count(), store.immutable)
"""


def make_unwritable(folder: Path) -> None:
    """Nobody may add a file to ``folder``, root included: mode 0555, and for root (who writes
    anywhere) the immutable attribute too (``chattr +i``; running the reader as another user
    instead fails where the interpreter lives under /root, as pyenv's do)."""
    os.chmod(folder, 0o555)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=True, timeout=10)
    with pytest.raises(OSError):
        (folder / "probe").touch()


def make_writable(folder: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], check=True, timeout=10)
    os.chmod(folder, 0o755)


def test_replay_reads_a_copy_in_a_folder_it_cannot_write() -> None:
    """A copy in a folder this user cannot write (no -shm can be made): read immutable."""
    top = Path(tempfile.mkdtemp(prefix="recorder-ro-"))  # pytest's tmp_path is 0700
    try:
        os.chmod(top, 0o755)
        folder = top / "ro"
        folder.mkdir()
        path = folder / "rec.db"
        write_samples(path, [FakeSample(n, 1000.0 + n, body(n, 10)) for n in range(1, 8)])
        assert not (folder / "rec.db-shm").exists()
        os.chmod(path, 0o644)
        make_unwritable(folder)
        done = subprocess.run(
            [sys.executable, "-c", READER, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        served = subprocess.run(
            [sys.executable, "-m", "dashboard", "replay", str(path), *REPLAY_1S],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    finally:
        make_writable(top / "ro")
        shutil.rmtree(top)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["7", "True"]
    assert served.returncode == 0, served.stderr
    assert "replaying" in served.stderr and "samples recorded into it later" in served.stderr


# 7. a bounded close -----------------------------------------------------------------------


class SlowStore:
    """A store whose appends wait until released (a slow disk)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.release = threading.Event()
        self.closed = threading.Event()
        self.rows = 0

    def stored_bytes(self) -> int:
        return 0

    def append(self, rows: list[Any]) -> None:
        self.release.wait(60)
        self.rows += len(rows)

    def drop_before(self, horizon: float) -> int:
        return 0

    def count(self) -> int:
        return self.rows

    def close(self) -> None:
        self.closed.set()


def test_close_waits_a_bounded_time_warns_and_the_thread_closes_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = SlowStore(tmp_path / "slow.db")
    writer = RecordingWriter(store, max_age_s=1e12, max_bytes=1 << 30)  # type: ignore[arg-type]
    writer.start()
    for n in range(1, 101):
        writer.offer(FakeSample(n, 1000.0 + n, b"{}"))
    deadline = time.monotonic() + 30
    while len(writer._queue) == 100 and time.monotonic() < deadline:
        time.sleep(0.01)  # the thread took its first batch and waits on the disk
    began = time.monotonic()
    writer.close()
    took = time.monotonic() - began
    assert took < writer_module.CLOSE_TIMEOUT_S + 3 and writer_module.CLOSE_TIMEOUT_S <= 5
    assert writer.unwritten_at_close == 100 - writer_module.BATCH_MAX
    err = capsys.readouterr().err
    assert f"still had {100 - writer_module.BATCH_MAX} samples to write" in err
    assert not store.closed.is_set()
    store.release.set()  # the disk comes back: the thread writes the rest, closes the file
    assert store.closed.wait(30)
    assert store.rows == 100 and writer.written_total == 100
    assert recorder_threads() == 0 or not writer._thread.is_alive()


# 6. history pages -------------------------------------------------------------------------


def test_history_pages_never_repeat_a_sample_even_at_one_time(tmp_path: Path) -> None:
    """950 samples share one time (more than a page), then 50 more: two pages give every
    sample once; the old ``from=next_from`` paging gave the same 900 for ever."""
    from tests.test_recorder_replay import Replay

    path = tmp_path / "rec.db"
    same = [FakeSample(n, 1000.0, body(n, 4)) for n in range(1, 951)]
    later = [FakeSample(n, 1000.0 + n - 950, body(n, 4)) for n in range(951, 1001)]
    write_samples(path, same + later)
    server = Replay(path)
    try:
        status, first = server.get("api/v1/history?from=1000&to=1100")
        assert status == 200 and first["truncated"] is True and len(first["samples"]) == 900
        assert first["next_from"] == 1000.0 and first["next_after"] == 900
        status, second = server.get(
            f"api/v1/history?from={first['next_from']}&after={first['next_after']}&to=1100"
        )
        assert status == 200 and second["truncated"] is False and second["next_after"] is None
        seqs = [s["seq"] for s in first["samples"] + second["samples"]]
        assert seqs == list(range(1, 1001))
        status, bad = server.get("api/v1/history?after=3")
        assert status == 400 and bad["parameter"] == "after"
    finally:
        server.stop()
