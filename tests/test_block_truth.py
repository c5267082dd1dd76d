"""After a 5-second block the dashboard tells the truth: one block of about 5 s with the stack
that blocked, lag max at least 5,000 ms, and every event stream carries on, on the same
connection, with no sample lost or repeated.

A real reactor in a subprocess (tests/block_server.py), on this pytest run's reactor
(``--reactor=default|asyncio``), so each pass of the suite checks its own; the clients are
plain sockets on threads of the test process.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser_support import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
SERVER = Path(__file__).resolve().parent / "block_server.py"
BLOCK_S = 5.0
CLIENTS = 6
FRAME_ID = re.compile(rb"\nid: (\d+)\n")


class BlockServer(ServerProcess):
    """tests/block_server.py: a monitored reactor that blocks for ``BLOCK_S`` on SIGUSR1."""

    def __init__(self, reactor_name: str) -> None:
        self.prefix = ""
        port, self.reactor_class = self._start(
            [sys.executable, str(SERVER), "--reactor", reactor_name, "--block-s", str(BLOCK_S)]
        )
        self.port = int(port)

    def get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())


class StreamClient:
    """One ``/api/v1/events`` connection, read on its own thread: the seq of every frame, with
    the monotonic time it arrived."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(b"GET /api/v1/events HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        self.frames: list[tuple[float, int]] = []
        self.closed = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        tail = b""
        try:
            while chunk := self.sock.recv(65536):
                now = time.monotonic()
                tail += chunk
                end = 0
                for match in FRAME_ID.finditer(tail):
                    self.frames.append((now, int(match.group(1))))
                    end = match.end()
                tail = tail[end:][-256:]
        except OSError:
            pass
        self.closed = True

    def seqs(self) -> list[int]:
        return [seq for _, seq in self.frames]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(timeout=5)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[BlockServer]:
    process = BlockServer(str(request.config.getoption("reactor")))
    try:
        yield process
    finally:
        process.stop()


def test_after_a_5s_block_the_dashboard_tells_the_truth(server: BlockServer) -> None:
    clients = [StreamClient(server.port) for _ in range(CLIENTS)]
    try:
        wait_until(lambda: all(len(c.frames) >= 3 for c in clients), 15, "frames before")
        before = server.get("/api/v1/snapshot?fresh=1")
        last_before = [c.frames[-1][1] for c in clients]
        blocked_at = time.monotonic()
        server.process.send_signal(signal.SIGUSR1)
        # Every stream resumes: at least three samples past the last one seen before.
        wait_until(
            lambda: all(
                c.frames and c.frames[-1][1] >= last + 3
                for c, last in zip(clients, last_before, strict=True)
            ),
            BLOCK_S + 15,
            "the streams to resume",
        )
        after = server.get("/api/v1/snapshot")
    finally:
        for client in clients:
            client.close()

    loop = after["loop"]
    assert loop["blocks_total"] - before["loop"]["blocks_total"] == 1, loop["blocks"]
    block = loop["blocks"][-1]
    assert BLOCK_S * 1000 * 0.98 <= block["duration_ms"] <= BLOCK_S * 1000 + 1500, block
    stack = block["stack"]
    # Innermost last: the frame that was sleeping on the reactor thread.
    assert "block_server.py" in stack[-1] and stack[-1].endswith("in blocking_call"), stack
    # Named by the program's own line, and the program's (not the dashboard's) block.
    assert block["where"] == stack[-1] and block["owner"] == "program", block
    assert loop["lag_ms"]["max"] >= BLOCK_S * 1000, loop["lag_ms"]
    assert after["errors"]["total"] == 0, after["errors"]
    assert after["reactor"] == server.reactor_class

    for client, last in zip(clients, last_before, strict=True):
        seqs = client.seqs()
        # The same connection throughout: no sample lost, none repeated.
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), seqs
        assert not client.closed or seqs[-1] >= last + 3
        # The block shows as one silence of about the block's length, right after the signal.
        gaps = [
            (b[0] - a[0], a[1])
            for a, b in zip(client.frames, client.frames[1:], strict=False)
            if a[0] >= blocked_at - 1
        ]
        longest, after_seq = max(gaps)
        assert BLOCK_S * 0.9 <= longest <= BLOCK_S + 3, gaps
        assert after_seq >= last
