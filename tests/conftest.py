"""Shared fixtures. The reactor under test is pytest-twisted's (``--reactor=default|asyncio``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from twisted.internet.testing import MemoryReactorClock

from dashboard import accel
from dashboard.monitor import Monitor
from dashboard.probes.base import ProbeErrors

if TYPE_CHECKING:
    from tests.browser_support import BrowserThread


@pytest.fixture(params=[True, False], ids=["compiled", "python"])
def accelerate(request: pytest.FixtureRequest) -> bool:
    """Each test that asks runs on the compiled hot path and on the pure-Python one."""
    wanted: bool = request.param
    if wanted:
        # Built by the install on CPython 3.11/3.12 (hatch_build.py); its absence is a failure.
        assert accel.built is not None, "dashboard._accel was not built"
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
