"""Shared fixtures. The reactor under test is pytest-twisted's (``--reactor=default|asyncio``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from twisted.internet.testing import MemoryReactorClock

from dashboard.monitor import Monitor
from dashboard.probes.base import ProbeErrors
from tests.accel_support import require_accelerator

if TYPE_CHECKING:
    from tests.browser_support import BrowserThread


@pytest.fixture(params=[True, False], ids=["compiled", "python"])
def accelerate(request: pytest.FixtureRequest) -> bool:
    """Each test that asks runs on the compiled hot path and on the pure-Python one. The
    compiled variant is skipped, with the reason, where an install cannot build the
    accelerator, and fails where it should be in use and is not (a silent fallback)."""
    wanted: bool = request.param
    if wanted:
        require_accelerator()
    return wanted


@pytest.fixture
def clocked() -> Iterator[tuple[Monitor, MemoryReactorClock]]:
    """A started Monitor (1 s interval, 30 samples) on a MemoryReactorClock, stopped after."""
    clock = MemoryReactorClock()
    monitor = Monitor(clock, interval=1.0, history=30)
    monitor.start()
    try:
        yield monitor, clock
    finally:
        monitor.stop()


@pytest.fixture
def errors() -> ProbeErrors:
    return ProbeErrors()


@pytest.fixture(scope="module")
def browser() -> Iterator[BrowserThread]:
    """Debian's Chromium through Playwright, one per browser test module."""
    from tests.browser_support import BrowserThread  # Playwright only where a test needs it

    thread = BrowserThread()
    try:
        yield thread
    finally:
        thread.close()
