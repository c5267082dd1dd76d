"""``reactor-dashboard record URL --out PATH``: a real dashboard (tests/recorder_program.py)
followed through a loopback proxy that cuts the stream and holds the reconnection for a
second: the recorder resumes with ``Last-Event-ID`` and the recording has no gap; SIGTERM and
SIGINT stop it cleanly; a wrong token is one line and exit 2."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dashboard.recorder.follow import Received, events_url, frames
from dashboard.recorder.store import open_for_reading
from tests.test_recorder_replay import PROGRAM, ROOT, Command

TOKEN = "follow-test-token-0123456789"


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 that can cut every connection and hold new ones."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[bytes] = []
        self.held = threading.Event()
        self.held.set()  # set: pass connections on
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self.held.wait(30)
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=30)
        with self._lock:
            self._sockets += [client, upstream]
        first = client.recv(65536)
        self.requests.append(first)
        upstream.sendall(first)
        threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
        self._pipe(upstream, client)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._closed = True
        self.held.set()
        self.listener.close()
        self.cut()


@pytest.fixture
def dashboard(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[int]:
    process = subprocess.Popen(
        [
            sys.executable,
            str(PROGRAM),
            "--record",
            str(tmp_path / "own.db"),
            "--interval",
            "0.1",
            "--serve",
            "--token",
            TOKEN,
            "--sites",
            "30",
            "--reactor",
            str(request.config.getoption("reactor")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    try:
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline
            line = process.stdout.readline()
            assert line, process.stderr.read() if process.stderr else ""
            if line.startswith("listening "):
                break
        port = int(line.split()[1])
        # keep its stdout drained (it prints every seq)
        threading.Thread(target=lambda: [None for _ in process.stdout or ()], daemon=True).start()
        yield port
    finally:
        process.terminate()
        process.wait(20)


def recorded_seqs(path: Path) -> list[int]:
    try:
        store = open_for_reading(path)
    except Exception:
        return []
    try:
        return [seq for _, _, seq in store.times(0, 1e11, 1_000_000)]
    finally:
        store.close()


def wait_count(path: Path, count: int, deadline_s: float = 30) -> list[int]:
    deadline = time.monotonic() + deadline_s
    while len(seqs := recorded_seqs(path)) < count:
        assert time.monotonic() < deadline, f"{len(seqs)} of {count} recorded"
        time.sleep(0.1)
    return seqs


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_record_resumes_after_a_disconnect_without_a_gap(
    dashboard: int, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    proxy = CuttingProxy(dashboard)
    out = tmp_path / "outside.db"
    os.environ["REACTOR_DASHBOARD_TOKEN"] = TOKEN
    try:
        command = Command("record", f"http://127.0.0.1:{proxy.port}/", "--out", str(out))
    finally:
        del os.environ["REACTOR_DASHBOARD_TOKEN"]
    try:
        command.wait_line("recording http://127.0.0.1")
        wait_count(out, 10)
        proxy.held.clear()  # the reconnection waits a second: ~10 samples are missed
        proxy.cut()
        time.sleep(1.0)
        before = recorded_seqs(out)
        proxy.held.set()
        wait_count(out, len(before) + 20)
        command.process.send_signal(stop_signal)
        assert command.process.wait(20) == 0
        summary = command.wait_line(r"recorded (\d+) samples, (\d+) dropped \((\d+) connections\)")
        assert int(summary[2]) == 0 and int(summary[3]) == 2
    finally:
        command.stop()
        proxy.close()
    seqs = recorded_seqs(out)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs  # no gap, no repeat
    assert int(summary[1]) == len(seqs)
    assert len(proxy.requests) == 2
    assert b"last-event-id: " in proxy.requests[1].lower()
    last_id = int(proxy.requests[1].lower().split(b"last-event-id: ")[1].split(b"\r\n")[0])
    assert last_id == before[-1]
    assert b"authorization: bearer " + TOKEN.encode() in proxy.requests[0].lower()


def test_a_wrong_token_is_one_line_and_exit_2(dashboard: int, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dashboard",
            "record",
            f"http://127.0.0.1:{dashboard}/",
            "--out",
            str(tmp_path / "x.db"),
            "--token",
            "not-the-token-at-all-0123",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 2
    problems = [line for line in done.stderr.splitlines() if "answered 401" in line]
    assert len(problems) == 1 and "Traceback" not in done.stderr


def test_record_gives_up_after_bounded_retries(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dashboard",
            "record",
            f"http://127.0.0.1:{port}/",
            "--out",
            str(tmp_path / "x.db"),
            "--retries",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 1
    assert "gave up after 2 tries in a row" in done.stderr
    assert time.monotonic() - started < 30  # 0.5 + 1 + 2 s of backoff


def test_frames_and_urls() -> None:
    import io

    body = io.BytesIO(
        b'retry: 2000\n\n: keep-alive\n\nevent: snapshot\nid: 7\ndata: {"seq":7}\n\n'
        b'event: other\nid: 8\ndata: x\n\nevent: snapshot\nid: 9\ndata: {"seq":9}\n\n'
    )
    assert list(frames(body)) == [(7, b'{"seq":7}'), (9, b'{"seq":9}')]
    assert events_url("http://127.0.0.1:8089") == "http://127.0.0.1:8089/api/v1/events"
    assert events_url("http://h:1/_reactor/") == "http://h:1/_reactor/api/v1/events"
    with pytest.raises(ValueError):
        events_url("ftp://x/")
    assert Received(1, 2.0, b"{}").seq == 1
