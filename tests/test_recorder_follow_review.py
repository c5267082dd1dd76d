"""``reactor-dashboard record`` review fixes, against a scripted event stream on 127.0.0.1:
a large catch-up burst written whole, drops said and in the exit status, answers that stop
it at once, the URL's token, oversized events, and the commands' numeric options."""

from __future__ import annotations

import argparse
import http.server
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashboard.recorder import follow as follow_module
from dashboard.recorder.follow import (
    Follower,
    clear_text_warning,
    follow_command,
    frames,
    token_from_url,
)
from dashboard.recorder.store import RecordingStore, open_for_reading
from dashboard.recorder.writer import QUEUE_MAX, RecordingWriter

ROOT = Path(__file__).resolve().parent.parent


def event(seq: int) -> bytes:
    data = json.dumps({"seq": seq, "time": 1000.0 + seq, "pad": "x" * 200})
    return f"event: snapshot\nid: {seq}\ndata: {data}\n\n".encode()


class Script:
    """What the scripted dashboard answers: ``statuses`` in turn (200 sends ``burst`` events
    at once, then holds the stream open until ``release`` or ends it with ``end``)."""

    def __init__(self, statuses: list[int], burst: int, hold: bool = False) -> None:
        self.statuses = statuses
        self.burst = burst
        self.hold = hold
        self.requests: list[dict[str, str]] = []
        self.sent = threading.Event()
        self.release = threading.Event()


@pytest.fixture
def scripted() -> Iterator[tuple[http.server.ThreadingHTTPServer, Script]]:
    script = Script([200], 0)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            script.requests.append(dict(self.headers.items()) | {"path": self.path})
            status = script.statuses.pop(0) if script.statuses else 404
            if status != 200:
                body = b'{"error":"no"}'
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(b"".join(event(n) for n in range(1, script.burst + 1)))
            self.wfile.flush()
            script.sent.set()
            if script.hold:
                script.release.wait(60)
            self.close_connection = True

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, script
    finally:
        script.release.set()
        server.shutdown()
        server.server_close()


def url_of(server: http.server.ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/"


def test_a_large_catch_up_burst_is_written_whole(
    tmp_path: Path, scripted: tuple[http.server.ThreadingHTTPServer, Script]
) -> None:
    """A reconnection replays a whole history ring at once (here 4x the writer's queue):
    the reader waits for room, every sample is written, none dropped."""
    server, script = scripted
    script.statuses, script.burst = [200], QUEUE_MAX * 4 + 51
    store = RecordingStore(tmp_path / "rec.db", create=True)
    writer = RecordingWriter(store, max_age_s=1e12, max_bytes=1 << 30)
    writer.start()
    follower = Follower(
        follow_module.events_url(url_of(server)), writer, retries=0, sleep=lambda s: None
    )
    with pytest.raises(OSError, match="gave up after 0 tries"):
        follower.run()
    writer.close()
    assert follower.received_total == script.burst and follower.last_id == script.burst
    assert writer.dropped_total == 0 and writer.written_total == script.burst
    reader = open_for_reading(tmp_path / "rec.db")
    try:
        assert [seq for _, _, seq in reader.times(0, 1e11, 10_000)] == list(
            range(1, script.burst + 1)
        )
    finally:
        reader.close()


def run_record(args: list[str], stop_after: threading.Event | None = None) -> int:
    """``follow_command`` in this process (main thread); SIGTERM to itself once
    ``stop_after`` is set (and a second has passed)."""
    from dashboard.cli import build_parser

    namespace = build_parser().parse_args(["record", *args])
    if stop_after is not None:

        def later() -> None:
            if stop_after.wait(30):
                time.sleep(1.0)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=later, daemon=True).start()
    return follow_command(namespace)


def test_drops_are_in_the_summary_and_the_exit_status(
    tmp_path: Path,
    scripted: tuple[http.server.ThreadingHTTPServer, Script],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The file fails (a full disk) while a burst arrives: the samples after it are
    dropped; the summary says how many and the status is 1, though stopped by a signal."""
    server, script = scripted
    script.statuses, script.burst, script.hold = [200], 400, True
    real_append = RecordingStore.append
    calls: list[int] = []

    def append(self: RecordingStore, rows: list[Any]) -> None:
        calls.append(len(rows))
        if len(calls) > 2:
            raise OSError(28, "No space left on device")
        real_append(self, rows)

    monkeypatch.setattr(RecordingStore, "append", append)
    status = run_record([url_of(server), "--out", str(tmp_path / "rec.db")], script.sent)
    err = capsys.readouterr().err
    summary = [line for line in err.splitlines() if "recorded " in line]
    assert status == 1, err
    assert len(summary) == 1 and "dropped" in summary[0]
    written, dropped = summary[0].split("recorded ")[1].split(" dropped")[0].split(" samples, ")
    assert int(written) == sum(calls[:2]) and int(dropped) >= 1
    assert int(written) + int(dropped) <= 400


def test_a_clean_record_says_none_dropped_and_exits_0(
    tmp_path: Path,
    scripted: tuple[http.server.ThreadingHTTPServer, Script],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, script = scripted
    script.statuses, script.burst, script.hold = [200], 300, True
    status = run_record([url_of(server), "--out", str(tmp_path / "rec.db")], script.sent)
    err = capsys.readouterr().err
    assert status == 0, err
    assert "recorded 300 samples, 0 dropped (1 connections)" in err


@pytest.mark.parametrize("answer", [400, 405, 421])
def test_answers_that_will_not_change_stop_at_once(
    tmp_path: Path,
    scripted: tuple[http.server.ThreadingHTTPServer, Script],
    capsys: pytest.CaptureFixture[str],
    answer: int,
) -> None:
    server, script = scripted
    script.statuses = [answer] * 5
    began = time.monotonic()
    status = run_record([url_of(server), "--out", str(tmp_path / "rec.db"), "--retries", "3"])
    err = capsys.readouterr().err
    assert status == 2 and len(script.requests) == 1
    assert time.monotonic() - began < 10
    problems = [line for line in err.splitlines() if f"answered {answer}" in line]
    assert len(problems) == 1 and "Traceback" not in err


def test_the_urls_token_is_sent_and_never_printed(
    tmp_path: Path,
    scripted: tuple[http.server.ThreadingHTTPServer, Script],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, script = scripted
    script.statuses = [401]
    secret = "url-token-abcdef-0123456789"
    status = run_record([f"{url_of(server)}?token={secret}", "--out", str(tmp_path / "r.db")])
    err = capsys.readouterr().err
    assert status == 2
    assert script.requests[0]["Authorization"] == f"Bearer {secret}"
    assert "token" not in script.requests[0]["path"]
    assert secret not in err and "answered 401" in err
    assert token_from_url("http://h:1/x/?a=1&token=t&b=2") == ("http://h:1/x/?a=1&b=2", "t")
    assert token_from_url("http://h:1/") == ("http://h:1/", None)


def test_a_token_over_plain_http_to_another_host_is_warned_about() -> None:
    warning = clear_text_warning("http://10.1.2.3:8089/api/v1/events", "t")
    assert warning is not None and "clear text" in warning and "10.1.2.3" in warning
    assert clear_text_warning("http://10.1.2.3:8089/api/v1/events", None) is None
    assert clear_text_warning("https://10.1.2.3:8089/api/v1/events", "t") is None
    for host in ("127.0.0.1", "127.8.9.1", "[::1]", "localhost"):
        assert clear_text_warning(f"http://{host}:8089/api/v1/events", "t") is None


def test_an_oversized_event_is_skipped_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follow_module, "MAX_EVENT_BYTES", 100)
    big = b"data: " + b"y" * 60 + b"\n"
    body = io.BytesIO(
        b"event: snapshot\nid: 1\ndata: {}\n\n"
        b"event: snapshot\nid: 2\n" + big * 50 + b"\n"
        b"event: snapshot\nid: 3\ndata: {}\n\n"
    )
    skipped: list[int] = []
    assert list(frames(body, lambda: skipped.append(1))) == [(1, b"{}"), (3, b"{}")]
    assert skipped == [1]


# the commands' numeric options ------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--record-hours", "-1"),
        ("--record-hours", "0"),
        ("--record-hours", "nan"),
        ("--record-max-mb", "nan"),
        ("--record-max-mb", "inf"),
        ("--record-max-mb", "-5"),
        ("--retries", "-5"),
        ("--retries", "x"),
    ],
)
def test_record_numeric_options_are_checked(tmp_path: Path, option: str, value: str) -> None:
    out = tmp_path / "rec.db"
    command = [sys.executable, "-m", "dashboard", "record", "http://127.0.0.1:9/"]
    done = subprocess.run(
        [*command, "--out", str(out), option, value],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and option in errors[0] and "Traceback" not in done.stderr
    assert not out.exists()


def test_record_hours_are_kept_as_given() -> None:
    from dashboard.cli import build_parser

    args = build_parser().parse_args(
        ["record", "http://127.0.0.1:9/", "--out", "x", "--record-hours", "0.5", "--retries", "0"]
    )
    assert isinstance(args, argparse.Namespace)
    assert args.record_hours == 0.5 and args.retries == 0 and args.record_max_mb == 512.0


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_export_refuses_a_time_that_is_not_finite(tmp_path: Path, value: str) -> None:
    path = tmp_path / "rec.db"
    RecordingStore(path, create=True).close()
    done = subprocess.run(
        [sys.executable, "-m", "dashboard", "export", str(path), f"--from={value}"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"reactor-dashboard export: --from: not a unix time or an ISO 8601 time: {value!r}"
    ]
