"""Answers while the loop is stuck (issue 15, part 3), with a real program in a subprocess
(tests/stuck_server_program.py) on this run's reactor (``--reactor=default|asyncio``).

During a 5 s block (``time.sleep``, and a pure-Python loop) ``/api/v1/snapshot`` and
``/metrics`` answer over NEW loopback connections within a second, with the blocking function
in ``loop.stuck``; the access rules hold on that path; other requests wait for the loop and are
answered by it; after the block the answers are the reactor's again, ``loop.stuck`` null.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.browser_support import ServerProcess

PROGRAM = Path(__file__).resolve().parent / "stuck_server_program.py"
BLOCK_S = 5.0
TOKEN = "stuck-path-token-0123456789abcdef"
#: the block handlers of the program, by the signal that starts them
HANDLERS = {
    "sleep": (signal.SIGUSR1, "sleeping_handler"),
    "spin": (signal.SIGUSR2, "spinning_handler"),
}


class StuckProgram(ServerProcess):
    """tests/stuck_server_program.py in a subprocess."""

    def __init__(self, reactor_name: str, *extra: str) -> None:
        self.prefix = ""
        words = self._start(
            [
                *(sys.executable, str(PROGRAM), "--reactor", reactor_name),
                *("--block-s", str(BLOCK_S), *extra),
            ]
        )
        self.port = int(words[0])
        self.reactor_class = words[1]
        self.program_port = int(words[2])

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)


class Reply:
    """One answer read off a socket: status, headers (lowercased names), body, seconds."""

    def __init__(self, raw: bytes, elapsed_s: float) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1]) if lines[0] else 0
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.elapsed_s = elapsed_s

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    timeout_s: float = 15.0,
) -> Reply:
    """One request on a NEW connection (``Connection: close``), read to the end."""
    sent = {"Host": f"127.0.0.1:{port}", "Connection": "close", **(headers or {})}
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in sent.items())
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    return Reply(raw, time.monotonic() - started)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def stuck_of(reply: Reply) -> Any:
    return reply.json()["loop"]["stuck"]


def metric(reply: Reply, name: str) -> float:
    for line in reply.body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def wait_for_stuck(port: int, headers: dict[str, str] | None = None) -> Reply:
    """Ask for snapshots until one carries ``loop.stuck``; each must answer within 1 s
    once the loop is stuck (the first may come from the reactor, before the signal landed)."""
    found: list[Reply] = []

    def stuck() -> bool:
        try:
            reply = request(port, "/api/v1/snapshot", headers=headers, timeout_s=1.5)
        except TimeoutError:
            return False  # accepted by the reactor just before it blocked: held with it
        if reply.status == 200 and stuck_of(reply) is not None:
            found.append(reply)
        return bool(found)

    wait_until(stuck, 4.0, "a snapshot with loop.stuck")
    return found[0]


@pytest.fixture
def reactor_name(request: pytest.FixtureRequest) -> str:
    return str(request.config.getoption("reactor"))


@pytest.fixture
def program(reactor_name: str) -> Iterator[StuckProgram]:
    process = StuckProgram(reactor_name)
    try:
        yield process
    finally:
        process.stop()


@pytest.mark.parametrize("kind", sorted(HANDLERS))
def test_snapshot_and_metrics_answer_within_a_second_while_stuck(
    program: StuckProgram, kind: str
) -> None:
    signum, handler = HANDLERS[kind]
    port = program.port
    wait_until(lambda: request(port, "/api/v1/snapshot").json()["seq"] >= 1, 10, "a sample")
    healthy = request(port, "/api/v1/snapshot").json()
    assert healthy["loop"]["stuck"] is None
    # the stuck path starts only for a busy span past the block threshold (a descheduled
    # process can have one on a loaded machine): never more starts than blocks, but for the
    # span taking this very sample, which is still running
    assert healthy["web"]["stuck"]["starts_total"] <= healthy["loop"]["blocks_total"] + 1
    healthy_metrics = request(port, "/metrics")
    assert metric(healthy_metrics, "twisted_reactor_stuck_seconds") == 0.0

    program.signal(signum)
    first = wait_for_stuck(port)
    stuck = first.json()["loop"]["stuck"]
    assert first.elapsed_s < 1.0
    assert stuck["stack"][-1].endswith(f"in {handler}"), stuck["stack"]
    assert "stuck_server_program.py" in stuck["stack"][-1]
    assert stuck["where"].endswith(f"in {handler}") and "stuck_server_program.py" in stuck["where"]
    assert stuck["owner"] == "program"
    assert stuck["for_s"] > 0 and abs(stuck["since"] - time.time()) < BLOCK_S + 2
    assert first.headers["connection"] == "close"
    assert first.headers["content-type"] == "application/json; charset=utf-8"
    assert first.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in first.headers["content-security-policy"]

    # ?fresh=1 asks for a snapshot taken after the request: only the loop can answer it
    pool = ThreadPoolExecutor(1)
    fresh = pool.submit(request, port, "/api/v1/snapshot?fresh=1")
    # a page request (not answered here) waits for the loop, which answers it
    with socket.create_connection(("127.0.0.1", port), timeout=15) as page_sock:
        page_sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        time.sleep(0.3)
        unanswered = select.select([page_sock], [], [], 0)[0] == []
        later = request(port, "/api/v1/snapshot")
        assert later.status == 200 and later.elapsed_s < 1.0
        # the same span, still stuck after the look above: the page was waiting for the loop
        assert stuck_of(later)["since"] == stuck["since"] and unanswered
        assert stuck_of(later)["for_s"] > stuck["for_s"]
        metrics = request(port, "/metrics")
        assert metrics.status == 200 and metrics.elapsed_s < 1.0
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert metric(metrics, "twisted_reactor_stuck_seconds") > 0.0
        head = request(port, "/metrics", method="HEAD")
        assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) > 0
        assert "date" not in head.headers  # the stuck path's (the reactor's answers carry one)
        assert "date" not in metrics.headers and "date" not in later.headers
        page = b""
        while chunk := page_sock.recv(65536):
            page += chunk
    assert page.startswith(b"HTTP/1.1 200"), page[:200]
    assert b"Reactor Dashboard" in page

    after = fresh.result(timeout=15)  # asked during the block: the reactor's, taken after it
    pool.shutdown()
    assert after.status == 200 and after.json()["loop"]["stuck"] is None
    assert after.json()["seq"] > first.json()["seq"]  # taken after the block
    assert after.headers["connection"] != "close" or "date" in after.headers  # the reactor's
    blocks = after.json()["loop"]["blocks"]
    assert any(b["duration_ms"] >= (BLOCK_S - 0.5) * 1000 for b in blocks), blocks
    assert metric(request(port, "/metrics"), "twisted_reactor_stuck_seconds") == 0.0
    web = after.json()["web"]["stuck"]
    assert 1 <= web["starts_total"] <= after.json()["loop"]["blocks_total"] + 1
    assert web["answered_total"] >= 4
    assert web["handed_back_total"] >= 1


def test_access_rules_hold_on_the_stuck_path(reactor_name: str) -> None:
    program = StuckProgram(reactor_name, "--token", TOKEN)
    try:
        port = program.port
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        signed_in = request(port, f"/?token={TOKEN}")
        assert signed_in.status == 303
        cookie = signed_in.headers["set-cookie"].split(";")[0]
        wait_until(
            lambda: request(port, "/api/v1/snapshot", headers=bearer).json()["seq"] >= 1,
            10,
            "a sample",
        )
        program.signal(signal.SIGUSR1)
        wait_for_stuck(port, bearer)

        refused = request(port, "/api/v1/snapshot")
        assert refused.status == 401 and refused.elapsed_s < 1.0
        assert refused.json()["error"] == "unauthorized"
        assert refused.headers["www-authenticate"] == 'Bearer realm="reactor-dashboard"'
        assert refused.headers["x-content-type-options"] == "nosniff"
        wrong = request(port, "/metrics", headers={"Authorization": "Bearer " + "x" * 33})
        assert wrong.status == 401
        assert request(port, "/metrics", headers=bearer).status == 200
        by_cookie = request(port, "/api/v1/snapshot", headers={"Cookie": cookie})
        assert by_cookie.status == 200 and stuck_of(by_cookie) is not None
        forged = request(port, "/api/v1/snapshot", headers={"Cookie": cookie[:-4] + "0000"})
        assert forged.status == 401
        foreign = request(port, "/api/v1/snapshot", headers={**bearer, "Host": "evil.example"})
        assert foreign.status == 421 and foreign.json()["error"] == "host_not_allowed"
        assert foreign.elapsed_s < 1.0
        bad_host = request(port, "/metrics", headers={**bearer, "Host": "a_b.example"})
        assert bad_host.status == 400 and bad_host.json()["error"] == "bad_host"
        lower = request(port, "/api/v1/snapshot", method="get", headers=bearer)
        assert lower.status == 405 and lower.headers["allow"] == "GET, HEAD"
        unknown = request(port, "/api/v1/snapshot?token=" + TOKEN, headers=bearer)
        assert unknown.status == 400 and unknown.json()["parameter"] == "token"
        assert stuck_of(request(port, "/api/v1/snapshot?fresh=0", headers=bearer)) is not None
        bad = request(port, "/api/v1/snapshot?fresh=2", headers=bearer)
        assert bad.status == 400 and bad.json()["parameter"] == "fresh" and bad.elapsed_s < 1.0
        for reply in (refused, foreign, lower, unknown):
            assert reply.headers["connection"] == "close"
            assert reply.headers["server"] == "reactor-dashboard"
        assert stuck_of(request(port, "/api/v1/snapshot", headers=bearer)) is not None, (
            "the block ended before the checks did"
        )
    finally:
        program.stop()


def test_a_dashboard_mounted_in_the_programs_site_answers_there_while_stuck(
    reactor_name: str,
) -> None:
    program = StuckProgram(reactor_name, "--mount")
    try:
        port = program.program_port
        snapshot_path = "/dashboard/api/v1/snapshot"
        wait_until(lambda: request(port, snapshot_path).json()["seq"] >= 1, 10, "a sample")
        assert request(port, "/hello").body == b"hello\n"
        program.signal(signal.SIGUSR2)
        found: list[Reply] = []

        def stuck() -> bool:
            try:
                reply = request(port, snapshot_path, timeout_s=1.5)
            except TimeoutError:
                return False
            if reply.status == 200 and stuck_of(reply) is not None:
                found.append(reply)
            return bool(found)

        wait_until(stuck, 4.0, "a snapshot with loop.stuck on the program's port")
        assert found[0].elapsed_s < 1.0
        assert stuck_of(found[0])["where"].endswith("in spinning_handler")
        metrics = request(port, "/dashboard/metrics")
        assert metrics.elapsed_s < 1.0 and metric(metrics, "twisted_reactor_stuck_seconds") > 0
        # the program's own path waits for the loop, and its Site answers it
        hello = request(port, "/hello")
        assert hello.status == 200 and hello.body == b"hello\n" and hello.elapsed_s > 0.5
        assert stuck_of(request(port, snapshot_path)) is None
        web = request(port, snapshot_path).json()["web"]["stuck"]
        assert web["ports"] == 2 and web["handed_back_total"] >= 1
    finally:
        program.stop()


def read_all(sock: socket.socket) -> bytes:
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    return raw


def test_split_partial_and_pipelined_heads_are_read_or_replayed_whole(reactor_name: str) -> None:
    program = StuckProgram(reactor_name, "--block-s", "4")
    try:
        port = program.port
        host = f"Host: 127.0.0.1:{port}\r\n".encode()
        wait_until(lambda: request(port, "/api/v1/snapshot").json()["seq"] >= 1, 10, "a sample")
        program.signal(signal.SIGUSR1)
        wait_for_stuck(port)
        # a head sent in two parts is read whole, and answered here
        with socket.create_connection(("127.0.0.1", port), timeout=15) as split:
            split.sendall(b"GET /api/v1/")
            time.sleep(0.2)
            split.sendall(b"snapshot HTTP/1.1\r\n" + host + b"\r\n")
            answered = Reply(read_all(split), 0.0)
        assert answered.status == 200 and stuck_of(answered) is not None
        assert "date" not in answered.headers
        # a head not finished in time, and two requests pipelined: handed back to the
        # reactor with every byte read, and answered by it once the loop runs
        partial = socket.create_connection(("127.0.0.1", port), timeout=15)
        pipelined = socket.create_connection(("127.0.0.1", port), timeout=15)
        with partial, pipelined:
            partial.sendall(b"GET /api/v1/snapshot HTTP/1.1\r\n" + host)
            pipelined.sendall(
                b"GET /api/v1/snapshot?fresh=1 HTTP/1.1\r\n" + host + b"\r\n"
                b"GET /metrics HTTP/1.1\r\n" + host + b"Connection: close\r\n\r\n"
            )
            time.sleep(1.5)  # past the read timeout: the partial head is handed back
            partial.sendall(b"Connection: close\r\n\r\n")
            partial_raw = read_all(partial)
            pipelined_raw = read_all(pipelined)
        replayed = Reply(partial_raw, 0.0)
        assert replayed.status == 200 and "date" in replayed.headers  # the reactor's
        assert stuck_of(replayed) is None
        assert pipelined_raw.count(b"HTTP/1.1 200 OK\r\n") == 2, pipelined_raw[:300]
        _, first, second = pipelined_raw.split(b"HTTP/1.1 200 OK\r\n")
        assert b'"stuck":null' in first
        assert b"twisted_reactor_stuck_seconds 0.0" in second
        web = request(port, "/api/v1/snapshot").json()["web"]["stuck"]
        assert web["handed_back_total"] >= 2
    finally:
        program.stop()


def cpu_s(pid: int) -> float:
    """The process's user and system CPU time so far, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_open_files_the_thread_backs_off_and_tells_once(reactor_name: str) -> None:
    program = StuckProgram(reactor_name, "--block-s", "4", "--spare-files", "12")
    idle: list[socket.socket] = []
    try:
        port = program.port
        wait_until(lambda: request(port, "/api/v1/snapshot").json()["seq"] >= 1, 10, "a sample")
        errors_before = request(port, "/api/v1/snapshot").json()["errors"]["by_probe"]
        program.signal(signal.SIGUSR1)  # a sleep: the program itself burns no CPU
        wait_for_stuck(port)
        idle = [socket.create_connection(("127.0.0.1", port), timeout=15) for _ in range(30)]
        time.sleep(0.3)  # the thread has taken what it can, and accept() fails (EMFILE)
        before = cpu_s(program.process.pid)
        time.sleep(1.0)
        used_s = cpu_s(program.process.pid) - before
        assert used_s < 0.3, f"{used_s:.2f} s of CPU in 1 s out of open files"
        for sock in idle:
            sock.close()
        idle = []

        def running() -> bool:
            try:  # out of files, the reactor's own port accepts and closes (a reset; Twisted's
                # reserve file descriptor) until the connections handed back are closed
                return bool(stuck_of(request(port, "/api/v1/snapshot", timeout_s=3)) is None)
            except OSError:
                return False

        wait_until(running, 10, "the loop")
        after = request(port, "/api/v1/snapshot").json()
        web_errors = after["errors"]["by_probe"].get("web", 0) - errors_before.get("web", 0)
        assert 1 <= web_errors <= 3, after["errors"]
        assert "web" not in (after["errors"].get("disabled") or [])
    finally:
        for sock in idle:
            sock.close()
        program.stop()
