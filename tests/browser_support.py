"""Helpers of the browser tests: the monitored server as a subprocess, and Debian's
Chromium driven by Playwright's sync API on a thread of its own.

Why a thread: under ``--reactor=asyncio`` pytest-twisted keeps an asyncio loop running on
the main thread, and Playwright's sync API refuses to start inside a running loop. One
worker thread owns Playwright and every object it hands out; tests pass it functions.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SERVER_SCRIPT = Path(__file__).resolve().parent / "browser_server.py"
AXE_SCRIPT = Path(__file__).resolve().parent / "vendor" / "axe-core-4.14.1.min.js"
ARTIFACTS = ROOT / "test-artifacts"

#: Loopback only: every host name fails to resolve except 127.0.0.1.
CHROMIUM_ARGS = [
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

T = TypeVar("T")


class ServerProcess:
    """``tests/browser_server.py`` in a subprocess: a monitored reactor serving the
    dashboard on 127.0.0.1, under ``prefix`` if given."""

    def __init__(self, port: int = 0, prefix: str = "") -> None:
        self.prefix = prefix
        words = self._start(
            [sys.executable, str(SERVER_SCRIPT), "--port", str(port), "--prefix", prefix]
        )
        self.port = int(words[0])

    def _start(self, command: list[str], deadline_s: float = 20) -> list[str]:
        """Start ``command`` and wait for its ``listening WORD [WORD...]`` line (ports, and
        whatever else the server reports); the words after ``listening``."""
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + deadline_s
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not selector.select(timeout=deadline - time.monotonic()):
                    break
                line = self.process.stdout.readline().decode()
                if line.startswith("listening "):
                    return line.split()[1:]
                if not line:  # the process ended
                    break
        self.stop()
        raise AssertionError(f"the test server did not start: {self.errors()}")

    @property
    def url(self) -> str:
        """The dashboard page, with its trailing slash."""
        return f"http://127.0.0.1:{self.port}{self.prefix.rstrip('/')}/"

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def block(self) -> None:
        """Have the server block its reactor for 300 ms."""
        self.process.send_signal(signal.SIGUSR1)

    def kill(self) -> None:
        """End it at once, as a crash would (the kernel closes its sockets)."""
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def errors(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return "(still running)"
        return self.process.stderr.read().decode(errors="replace")[-3000:]


class BrowserThread:
    """Playwright with Debian's Chromium on one worker thread; ``run(fn)`` calls
    ``fn(browser)`` there and returns its result (or raises its exception)."""

    def __init__(self) -> None:
        if not CHROMIUM.exists():
            pytest.fail(
                f"{CHROMIUM} is missing: the browser tests need Debian's chromium "
                "(apt-get install -y --no-install-recommends chromium; scripts/test.sh does it)",
                pytrace=False,
            )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="playwright")
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self.run(lambda _: None)

    def _start(self) -> Browser:
        if self._browser is None:
            self._playwright = sync_playwright().start()
            self._browser = self._playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
            )
        return self._browser

    def run(self, fn: Callable[[Browser], T], timeout_s: float = 60) -> T:
        return self._executor.submit(lambda: fn(self._start())).result(timeout=timeout_s)

    def close(self) -> None:
        def stop(_: Browser) -> None:
            if self._browser is not None:
                self._browser.close()
            if self._playwright is not None:
                self._playwright.stop()

        try:
            self.run(stop)
        finally:
            self._executor.shutdown(wait=True)


class PageWatch:
    """What a page did that the tests judge: console errors, uncaught errors, every URL it
    requested."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        self.requests: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.on("request", lambda request: self.requests.append(request.url))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning", "assert"):
            self.errors.append(f"console.{message.type}: {message.text}")


def new_page(browser: Browser, **context: Any) -> tuple[Page, PageWatch]:
    """A page in a fresh context (1400 x 1000 CSS px, light scheme unless told)."""
    options: dict[str, Any] = {"viewport": {"width": 1400, "height": 1000}}
    options.update(context)
    page = browser.new_context(**options).new_page()
    page.set_default_timeout(15000)
    return page, PageWatch(page)


def stats(page: Page) -> dict[str, Any]:
    """The page's ``window.__dashboardStats``."""
    result: dict[str, Any] = page.evaluate("() => window.__dashboardStats")
    return result


def text(page: Page, selector: str) -> str:
    """The text content of the first element matching ``selector``."""
    return page.locator(selector).first.text_content() or ""


def wait_for(page: Page, condition: str, arg: Any = None, timeout_ms: float = 15000) -> None:
    """Poll ``condition`` (a JS arrow function) in the page until true; CSP-safe."""
    page.wait_for_function(condition, arg=arg, timeout=timeout_ms)
