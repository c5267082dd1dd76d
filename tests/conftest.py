"""Shared fixtures. The reactor under test is pytest-twisted's (``--reactor=default|asyncio``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from dashboard.probes.base import ProbeErrors

if TYPE_CHECKING:
    from tests.browser_support import BrowserThread


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
