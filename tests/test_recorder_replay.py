"""``reactor-dashboard replay``, ``export`` and bad recording files: the same API read-only
over a real recording made by a real monitored program (tests/recorder_phases.py), served by
the real command in a subprocess; a file still being recorded into; damaged samples."""

from __future__ import annotations

import json
import os
import re
import selectors
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashboard.recorder.replay import ReplaySource
from dashboard.recorder.store import FORMAT_VERSION, open_for_reading

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
PHASES = TESTS / "recorder_phases.py"
PROGRAM = TESTS / "recorder_program.py"


class Phases:
    """A recording of tests/recorder_phases.py and the times of its two phases."""

    def __init__(self, path: Path, reactor_name: str) -> None:
        self.path = path
        done = subprocess.run(
            [sys.executable, str(PHASES), "--record", str(path), "--reactor", reactor_name],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
        marks = {line.split()[1]: line.split()[2:] for line in done.stdout.splitlines()}
        self.a = tuple(float(x) for x in marks["A"])
        self.b = tuple(float(x) for x in marks["B"])

    def middle(self, phase: tuple[float, ...]) -> float:
        return (phase[0] + phase[1]) / 2


@pytest.fixture(scope="module")
def phases(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Phases:
    path = tmp_path_factory.mktemp("replay") / "phases.db"
    return Phases(path, str(request.config.getoption("reactor")))


class Command:
    """A ``reactor-dashboard`` command in a subprocess."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dashboard", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def wait_line(self, pattern: str, deadline_s: float = 30) -> re.Match[str]:
        assert self.process.stderr is not None
        deadline = time.monotonic() + deadline_s
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stderr, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                    break
                line = self.process.stderr.readline().decode()
                found = re.search(pattern, line)
                if found:
                    return found
                assert line, "the command ended"
        raise AssertionError(f"no line matching {pattern!r}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


class Replay(Command):
    def __init__(self, path: Path) -> None:
        super().__init__("replay", str(path), "--port", "0")
        self.port = int(self.wait_line(r"on http://127\.0\.0\.1:(\d+)/")[1])

    def get(self, path: str) -> tuple[int, Any]:
        url = f"http://127.0.0.1:{self.port}/{path}"
        try:
            with urllib.request.urlopen(url, timeout=20) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def replay(phases: Phases) -> Iterator[Replay]:
    server = Replay(phases.path)
    try:
        yield server
    finally:
        server.stop()


def sites(snapshot: dict[str, Any]) -> dict[str, int]:
    return {
        site["site"].rsplit(" in ", 1)[-1]: site["pending"]
        for site in snapshot["deferreds"]["sites"]
    }


def block_functions(snapshot: dict[str, Any]) -> str:
    return json.dumps(snapshot["loop"]["blocks"])


def test_snapshot_at_a_moment_is_that_moments_sample(phases: Phases, replay: Replay) -> None:
    status, at_a = replay.get(f"api/v1/snapshot?at={phases.middle(phases.a)}")
    assert status == 200
    assert at_a["time"] <= phases.middle(phases.a)
    assert sites(at_a).get("alpha_site_function") == 5
    assert "beta_site_function" not in sites(at_a)
    assert "replayed_block_function" not in block_functions(at_a)
    status, at_b = replay.get(f"api/v1/snapshot?at={phases.middle(phases.b)}")
    assert sites(at_b).get("beta_site_function") == 7
    assert "alpha_site_function" not in sites(at_b)
    assert "replayed_block_function" in block_functions(at_b)
    # without at: the newest sample; before the recording: its first
    newest = replay.get("api/v1/snapshot")[1]
    assert newest["time"] > phases.b[0] and sites(newest).get("beta_site_function") == 7
    assert replay.get("api/v1/snapshot?at=1")[1]["seq"] == 1


def test_history_over_a_range_from_the_file(phases: Phases, replay: Replay) -> None:
    low, high = phases.a
    status, body = replay.get(f"api/v1/history?from={low}&to={high}")
    assert status == 200 and body["truncated"] is False and body["next_from"] is None
    times = [s["time"] for s in body["samples"]]
    assert times == sorted(times) and all(low <= t <= high for t in times)
    assert 3 <= len(times) <= 12  # 1 s at 0.1 s (fewer on a loaded machine)
    assert all(sites(s).get("alpha_site_function") == 5 for s in body["samples"])
    whole = replay.get("api/v1/history")[1]
    seqs = [s["seq"] for s in whole["samples"]]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 15


def test_series_over_a_range_and_thinned(phases: Phases, replay: Replay) -> None:
    low, high = phases.a[0], phases.b[1]
    status, body = replay.get(f"api/v1/series?from={low}&to={high}&sites_seconds=1")
    assert status == 200
    pending = [s["deferreds"]["pending"] for s in body["samples"]]
    assert pending[0] >= 5 and pending[-1] >= 7
    assert "sites" in body["samples"][-1]["deferreds"]
    assert "sites" not in body["samples"][0]["deferreds"]
    thinned = replay.get(f"api/v1/series?from={low}&to={high}&points=3")[1]["samples"]
    assert len(thinned) == 3 and thinned[-1]["time"] == body["samples"][-1]["time"]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("api/v1/snapshot?at=soon", "at"),
        ("api/v1/snapshot?at=nan", "at"),
        ("api/v1/snapshot?fresh=1", "fresh"),
        ("api/v1/history?from=20&to=10", "to"),
        ("api/v1/history?from=1e400", "from"),
        ("api/v1/history?seconds=5&from=1", "seconds"),
        ("api/v1/series?points=1", "points"),
        ("api/v1/series?sites_seconds=-1", "sites_seconds"),
    ],
)
def test_bad_query_values_are_400_json(replay: Replay, query: str, parameter: str) -> None:
    status, body = replay.get(query)
    assert status == 400 and body["error"] == "bad_request"
    assert body["parameter"] == parameter


def test_the_replayed_page_carries_the_recordings_span(phases: Phases, replay: Replay) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{replay.port}/", timeout=20) as response:
        page = response.read().decode()
    config = json.loads(re.search(r'id="page-config"[^>]*>(.*?)</script>', page, re.S)[1])  # type: ignore[index]
    assert config["replay"]["from"] < phases.a[0] and config["replay"]["to"] > phases.b[0]
    assert 'id="replay-scrubber"' in page
    assert replay.get("metrics")[0] == 404
    assert replay.get("api/v1/events")[0] == 503  # nothing live to stream


def test_replay_follows_a_file_still_being_recorded(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    path = tmp_path / "live.db"
    recorder = subprocess.Popen(
        [
            sys.executable,
            str(PROGRAM),
            "--record",
            str(path),
            "--interval",
            "0.1",
            "--reactor",
            str(request.config.getoption("reactor")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    server = None
    try:
        deadline = time.monotonic() + 30
        while open_count(path) < 5:
            assert time.monotonic() < deadline and recorder.poll() is None
            time.sleep(0.1)
        server = Replay(path)
        first = server.get("api/v1/snapshot")[1]["seq"]
        deadline = time.monotonic() + 30
        while (later := server.get("api/v1/snapshot")[1]["seq"]) < first + 10:
            assert time.monotonic() < deadline, (first, later)
            time.sleep(0.1)
        assert recorder.poll() is None  # the recording went on beside the replay
    finally:
        if server is not None:
            server.stop()
        recorder.terminate()
        recorder.communicate(timeout=20)
    assert recorder.returncode == 0


def open_count(path: Path) -> int:
    try:
        store = open_for_reading(path)
    except Exception:
        return 0
    try:
        return store.count()
    finally:
        store.close()


def test_export_writes_json_lines_of_a_range(phases: Phases, tmp_path: Path) -> None:
    low, high = phases.b
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dashboard",
            "export",
            str(phases.path),
            "--from",
            str(low),
            "--to",
            str(high),
        ],
        capture_output=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0 and done.stderr == b""
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert 3 <= len(lines) <= 12
    assert all(low <= s["time"] <= high for s in lines)
    assert all(sites(s).get("beta_site_function") == 7 for s in lines)
    out = tmp_path / "all.jsonl"
    whole = subprocess.run(
        [sys.executable, "-m", "dashboard", "export", str(phases.path), "--out", str(out)],
        capture_output=True,
        timeout=60,
        cwd=ROOT,
    )
    assert whole.returncode == 0
    seqs = [json.loads(line)["seq"] for line in out.read_bytes().splitlines()]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 15


def damaged_copy(phases: Phases, tmp_path: Path) -> tuple[Path, int]:
    """A copy of the recording with one sample's compressed bytes overwritten; its seq."""
    copy = tmp_path / "damaged.db"
    copy.write_bytes(phases.path.read_bytes())
    db = sqlite3.connect(copy)
    seq, body = db.execute("SELECT seq, body FROM samples WHERE seq = 12").fetchone()
    db.close()
    data = bytearray(copy.read_bytes())
    at = bytes(data).find(body)
    assert at > 0 and zlib.decompress(body)
    data[at + len(body) // 2 : at + len(body) // 2 + 16] = b"\xff" * 16
    copy.write_bytes(bytes(data))
    return copy, int(seq)


def test_a_damaged_sample_is_skipped_and_counted_the_rest_replays(
    phases: Phases, tmp_path: Path
) -> None:
    copy, seq = damaged_copy(phases, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "dashboard", "export", str(copy)],
        capture_output=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0
    seqs = [json.loads(line)["seq"] for line in done.stdout.splitlines()]
    assert seq not in seqs and seq - 1 in seqs and seq + 1 in seqs
    assert b"1 damaged ones skipped" in done.stderr
    server = Replay(copy)
    try:
        body = server.get("api/v1/history")[1]
        assert [s["seq"] for s in body["samples"]] == seqs
        assert body["corrupt_total"] >= 1
    finally:
        server.stop()


def bad_files(tmp_path: Path, phases: Phases) -> dict[str, tuple[Path, str]]:
    text = tmp_path / "notes.txt"
    text.write_text("not a recording\n" * 20)
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    foreign = tmp_path / "foreign.db"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE people (name TEXT)")
    db.commit()
    db.close()
    cut = tmp_path / "cut.db"
    data = phases.path.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    newer = tmp_path / "newer.db"
    newer.write_bytes(data)
    db = sqlite3.connect(newer)
    db.execute("UPDATE meta SET value = ? WHERE key = 'format'", (str(FORMAT_VERSION + 1),))
    db.commit()
    db.close()
    return {
        "missing": (tmp_path / "nothing.db", "no such recording"),
        "empty": (empty, "is empty"),
        "text": (text, "not an SQLite file"),
        "foreign": (foreign, "SQLite file but not a recording"),
        "truncated": (cut, "truncated"),
        "newer": (newer, "newer than this"),
    }


@pytest.mark.parametrize("command", ["replay", "export", "run", "demo"])
def test_bad_files_are_one_line_and_exit_2(phases: Phases, tmp_path: Path, command: str) -> None:
    for name, (path, words) in bad_files(tmp_path, phases).items():
        if command in ("run", "demo") and name in ("missing", "newer"):
            continue  # a new file is made; a newer one is refused as below
        if command == "replay":
            args = ["replay", str(path), "--port", "0"]
        elif command == "export":
            args = ["export", str(path)]
        elif command == "run":
            args = ["run", "--port", "0", "--record", str(path), str(PHASES)]
        else:
            args = ["demo", "--port", "0", "--duration", "5", "--record", str(path)]
        done = subprocess.run(
            [sys.executable, "-m", "dashboard", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        lines = done.stderr.splitlines()
        assert done.returncode == 2, (name, done.stderr)
        assert len(lines) == 1 and words in lines[0], (name, done.stderr)
        assert "Traceback" not in done.stderr


def test_replay_source_pages_a_long_range(phases: Phases) -> None:
    store = open_for_reading(phases.path)
    try:
        source = ReplaySource(store, reactor=None)
        first, more = source.between(0, 1e11, 10)
        assert more and [s.seq for s in first] == list(range(1, 11))
        assert abs(source.interval - 0.1) < 1e-9
        assert source.history_seconds >= 3
    finally:
        store.close()


@pytest.mark.parametrize("command", ["run", "demo"])
def test_run_and_demo_record_with_the_option(
    tmp_path: Path, command: str, request: pytest.FixtureRequest
) -> None:
    path = tmp_path / f"{command}.db"
    if command == "run":
        script = tmp_path / "program.py"
        script.write_text(
            "from twisted.internet import reactor\n"
            "reactor.callLater(2.5, reactor.stop)\n"
            "reactor.run()\n"
        )
        reactor_name = str(request.config.getoption("reactor"))
        args = ["run", "--port", "0", "--reactor", reactor_name, "--record", str(path), str(script)]
    else:
        args = ["demo", "--port", "0", "--duration", "3.5", "--record", str(path)]
    done = subprocess.run(
        [sys.executable, "-m", "dashboard", *args],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    store = open_for_reading(path)
    try:
        seqs = [seq for _, _, seq in store.times(0, 1e11, 1000)]
    finally:
        store.close()
    assert seqs[:2] == [1, 2] and seqs == list(range(1, len(seqs) + 1))  # flushed at stop


def test_export_times_and_unwritable_outputs(phases: Phases, tmp_path: Path) -> None:
    from dashboard.recorder.export import parse_time
    from dashboard.recorder.store import RecordingError

    assert parse_time("2026-12-05T03:12:00", "from") == 1796440320.0  # UTC without an offset
    assert parse_time("2026-12-05T04:12:00+01:00", "from") == 1796440320.0
    assert parse_time("1796440320.5", "to") == 1796440320.5
    with pytest.raises(RecordingError, match="--to: not a unix time"):
        parse_time("yesterday", "to")
    for args in (
        ["export", str(phases.path), "--out", str(tmp_path / "no" / "such" / "x.jsonl")],
        ["export", str(phases.path), "--from", "yesterday"],
        ["record", "http://127.0.0.1:9/", "--out", str(tmp_path / "no" / "x.db")],
        ["record", "ftp://127.0.0.1/", "--out", str(tmp_path / "x.db")],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "dashboard", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert done.returncode == 2, (args, done.stderr)
        assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr, args
