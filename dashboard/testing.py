"""Helpers for tests, yours and ours."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


def global_reactor() -> Any:
    """The installed global reactor, typed loosely (Twisted types it as a module)."""
    from twisted.internet import reactor

    return reactor


def result_of(d: Deferred[Any]) -> Any:
    """The result of a Deferred that has already fired (raising its failure, if it failed);
    for tests driven by a Clock or StubTreq, where nothing waits."""
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]
