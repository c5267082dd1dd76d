"""A block at start-up (in ``callWhenRunning``, before the loop's first wait) is caught, with its
stack, on both reactors, compiled and pure-Python.

Real programs in subprocesses, on this pytest run's reactor (``--reactor=default|asyncio``):
tests/busy_server.py (a Monitor started before ``reactor.run()``) and a program of a few lines
under ``reactor-dashboard run``. Before the fix the loop probe measured nothing until the first
wait returned, so the start-up block was missed entirely.
"""

from __future__ import annotations

import json
import math
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import pollreactor

from dashboard.probes.base import ProbeErrors
from dashboard.probes.loop import LoopProbe
from tests.browser_support import ServerProcess
from tests.test_run_command import DASHBOARD_LINE, Child, fresh_snapshot, run_command

SERVER = Path(__file__).resolve().parent / "busy_server.py"
BLOCK_S = 0.5

PROGRAM = """\
import time

from twisted.internet import reactor


def load_everything():
    time.sleep(BLOCK_S)  # start-up work on the reactor thread


reactor.callWhenRunning(load_everything)
reactor.run()
"""


@pytest.fixture(params=["compiled", "python"])
def hot_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The programs run on the compiled hot path and on the pure-Python one."""
    if request.param == "python":
        monkeypatch.setenv("REACTOR_DASHBOARD_ACCEL", "0")
    else:
        monkeypatch.delenv("REACTOR_DASHBOARD_ACCEL", raising=False)
    return str(request.param)


class StartUpServer(ServerProcess):
    def __init__(self, reactor_name: str) -> None:
        self.prefix = ""
        port, self.reactor_class, _truth = self._start(
            [
                sys.executable,
                str(SERVER),
                "--reactor",
                reactor_name,
                "--start-block-s",
                str(BLOCK_S),
            ]
        )
        self.port = int(port)

    def get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())


@pytest.fixture
def server(request: pytest.FixtureRequest, hot_path: str) -> Iterator[StartUpServer]:
    process = StartUpServer(str(request.config.getoption("reactor")))
    try:
        yield process
    finally:
        process.stop()


def check_start_up_block(loop: dict[str, Any], where_file: str, function: str) -> None:
    assert loop["blocks_total"] == 1, loop["blocks"]
    (block,) = loop["blocks"]
    assert BLOCK_S * 1000 * 0.98 <= block["duration_ms"] <= BLOCK_S * 1000 + 1000, block
    stack = block["stack"]
    # Innermost last: the start-up function, called by the reactor's "startup" event.
    assert where_file in stack[-1] and stack[-1].endswith(f" in {function}"), stack
    assert any(
        "twisted/internet/base.py:" in frame and "in startRunning" in frame for frame in stack
    )
    assert block["where"] == stack[-1]
    assert block["owner"] == "program"
    assert abs(block["at"] - (time.time() - block["duration_ms"] / 1000.0)) < 30


def test_a_start_up_block_is_caught_with_its_stack(server: StartUpServer, hot_path: str) -> None:
    snapshot = server.get("/api/v1/snapshot?fresh=1")  # answered once the block is over
    loop = snapshot["loop"]
    assert loop["hot_path"] == hot_path
    check_start_up_block(loop, "busy_server.py:", "start_up")
    assert loop["lag_ms"]["max"] >= BLOCK_S * 1000 * 0.98, loop["lag_ms"]
    assert snapshot["errors"]["total"] == 0, snapshot["errors"]


def test_a_start_up_block_under_run_is_caught(
    tmp_path: Path, request: pytest.FixtureRequest, hot_path: str
) -> None:
    program = tmp_path / "startup_program.py"
    program.write_text(PROGRAM.replace("BLOCK_S", repr(BLOCK_S)))
    child = Child.start(run_command(str(request.config.getoption("reactor")), str(program)))
    try:
        found = child.wait_for(DASHBOARD_LINE, "stderr")
        snapshot = fresh_snapshot(f"http://127.0.0.1:{found[1]}")
    finally:
        child.stop()
    loop = snapshot["loop"]
    assert loop["hot_path"] == hot_path
    check_start_up_block(loop, "startup_program.py:", "load_everything")


# in process: the start-up trigger is undone -----------------------------------------------


def test_the_start_up_trigger_is_removed_by_uninstall(errors: ProbeErrors) -> None:
    r = pollreactor.PollReactor()
    try:
        startup = r._eventTriggers.get("startup")
        before = list(startup.before) if startup is not None else []
        probe = LoopProbe(r, errors, r.seconds)
        probe.watchdog_enabled = False
        for _ in range(3):
            probe.install()
            assert len(r._eventTriggers["startup"].before) == len(before) + 1
            probe.uninstall()
            assert r._eventTriggers["startup"].before == before
        # Installed, then started: its span is measured from the "before startup" event.
        probe.install()
        try:
            assert probe.pulse.tick == math.inf
            r.fireSystemEvent("startup")  # what run() does first
            assert probe.pulse.tick <= r.seconds()
            started = probe.pulse.tick
            time.sleep(0.15)
            r.iterate(0)  # the first wait ends the start-up span: a block
            section = probe.collect()
        finally:
            probe.uninstall()
        assert section["blocks_total"] == 1
        assert section["blocks"][0]["at"] == pytest.approx(started)
        assert section["blocks"][0]["duration_ms"] >= 150
        assert errors.counts == {}
    finally:
        r.removeReader(r.waker)
        r.waker.connectionLost(None)
