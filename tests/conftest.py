"""Shared fixtures. The reactor under test is pytest-twisted's (``--reactor=default|asyncio``)."""

from __future__ import annotations

import pytest

from dashboard.probes.base import ProbeErrors


@pytest.fixture
def errors() -> ProbeErrors:
    return ProbeErrors()
