"""The open page while the loop is stuck, in Chromium: it notices the silent stream, asks the
stuck server (new connections: an aborted ask closes the one the stuck reactor held), shows
"Stuck for N s in <the program's frame>" with the live stack, counting up, and recovers by
itself when the loop runs again. On this run's reactor (``--reactor=default|asyncio``)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser

from tests.browser_support import BrowserThread, new_page, stats, text, wait_for
from tests.test_stuck_server import PROGRAM, StuckProgram

BLOCK_S = 9.0
TOKEN = "stuck-browser-token-0123456789abcdef"


class LongBlockProgram(StuckProgram):
    def __init__(self, reactor_name: str) -> None:
        self.prefix = ""
        words = self._start(
            [
                *(sys.executable, str(PROGRAM), "--reactor", reactor_name),
                *("--block-s", str(BLOCK_S), "--token", TOKEN),
            ]
        )
        self.port = int(words[0])
        self.program_port = int(words[2])


@pytest.fixture
def program(request: pytest.FixtureRequest) -> Iterator[LongBlockProgram]:
    process = LongBlockProgram(str(request.config.getoption("reactor")))
    try:
        yield process
    finally:
        process.stop()


def test_the_page_shows_stuck_during_a_block_and_recovers(
    browser: BrowserThread, program: LongBlockProgram
) -> None:
    def scenario(browser: Browser) -> dict[str, Any]:
        page, watch = new_page(browser)
        page.goto(f"{program.url}?token={TOKEN}")  # signed in by the session cookie
        wait_for(page, "() => window.__dashboardStats && window.__dashboardStats.applied >= 2")
        assert page.locator("#stuck").is_hidden()
        # an idle keep-alive connection for the first ask to land on (held by the reactor)
        page.evaluate("() => fetch('api/v1/snapshot', {cache: 'no-store'}).then(r => r.text())")
        program.signal(signal.SIGUSR1)
        wait_for(
            page,
            "() => window.__dashboardStats.stuck.shown",
            timeout_ms=(BLOCK_S - 1) * 1000,
        )
        title = text(page, "#stuck-title")
        assert title.startswith("Stuck for ") and title.endswith(
            " in " + stats(page)["stuck"]["where"]
        )
        assert "stuck_server_program.py" in title and "sleeping_handler" in title
        stack = text(page, "#stuck-stack").splitlines()
        assert stack[-1].endswith("in sleeping_handler"), stack
        seconds = int(title.split()[2])
        wait_for(
            page,
            "(n) => Number(document.getElementById('stuck-title').textContent.split(' ')[2]) > n",
            seconds,
            timeout_ms=4000,
        )  # counting up, once a second
        during: dict[str, Any] = stats(page)["stuck"]
        wait_for(page, "() => !window.__dashboardStats.stuck.shown", timeout_ms=BLOCK_S * 1000)
        assert page.locator("#stuck").is_hidden()
        before = stats(page)["applied"]
        wait_for(page, "(n) => window.__dashboardStats.applied > n", before)  # live again
        assert stats(page)["status"] == "live"
        assert watch.errors == [] or all("api/v1/snapshot" in e for e in watch.errors), watch.errors
        page.context.close()
        return during

    during = browser.run(scenario, timeout_s=90)
    assert during["answers"] >= 2
    # the ask that went to the reactor's held keep-alive connection was aborted, and the next
    # one, on a new connection, reached the stuck server
    assert during["aborted"] >= 1, during
