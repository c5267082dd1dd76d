"""Helpers for tests, yours and ours."""

from __future__ import annotations

from typing import Any


def global_reactor() -> Any:
    """The installed global reactor, typed loosely (Twisted types it as a module)."""
    from twisted.internet import reactor

    return reactor
