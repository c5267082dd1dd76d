"""A small trial suite run by tests/test_real_programs.py, bare and under ``reactor-dashboard
run`` (``python -m twisted.trial tests.trial_subject``).

Synchronous and asynchronous tests, passing and failing, one that leaves a timer behind (trial's
janitor must still report it), a real TCP round trip, and two meetings: a test writes
``NAME.ready`` into the folder named by ``$TRIAL_SUBJECT_DIR`` and waits for ``NAME.go``
(:mod:`tests.meeting`), so the harness can look at the dashboard while trial is in that test.
The expected outcome is :data:`EXPECTED_SUMMARY`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet import reactor as installed_reactor
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.trial import unittest

from tests import meeting

FOLDER_ENV = "TRIAL_SUBJECT_DIR"
EXPECTED_SUMMARY = "FAILED (failures=2, errors=1, successes=6)"


def meet(name: str) -> Deferred[None]:
    """Say ``name.ready``; fire when the harness says ``name.go``."""
    return meeting.meet(reactor, Path(os.environ[FOLDER_ENV]), name)


#: The global reactor, untyped (mypy reads Twisted's interfaces without zope's plugin).
reactor: Any = installed_reactor


def later(seconds: float) -> Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


def check(condition: bool, message: str) -> None:
    """A failed check is a trial failure (``FailTest``), as ``assertEqual`` gives."""
    if not condition:
        raise unittest.FailTest(message)


class TestAFirst(unittest.TestCase):
    def test_1_meets_the_harness_first(self) -> Deferred[None]:
        return meet("first")

    def test_2_sync_passes(self) -> None:
        check(sum(range(5)) == 10, "0+1+2+3+4 is 10")

    def test_3_sync_fails(self) -> None:
        check(1 + 1 == 3, "1 + 1 is not 3")

    def test_4_async_passes(self) -> Deferred[None]:
        return later(0.01)

    def test_5_async_fails(self) -> Deferred[None]:
        def compare(_: None) -> None:
            speed: str = "slow"
            check(speed == "fast", "slow is not fast")

        return later(0.01).addCallback(compare)

    def test_6_leaves_a_timer_behind(self) -> None:
        # trial's janitor must report this one (DirtyReactorAggregateError) and cancel it.
        reactor.callLater(3600, lambda: None)


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        transport: Any = self.transport
        transport.write(data)


class Ask(Protocol):
    def __init__(self, answered: Deferred[bytes]) -> None:
        self.answered = answered

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(b"ping")

    def dataReceived(self, data: bytes) -> None:
        transport: Any = self.transport
        transport.loseConnection()
        self.answered.callback(data)


class TestBAfterTheFirstClass(unittest.TestCase):
    async def test_1_tcp_round_trip(self) -> None:
        port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        answered: Deferred[bytes] = Deferred()
        client = ClientFactory.forProtocol(lambda: Ask(answered))
        reactor.connectTCP("127.0.0.1", port.getHost().port, client)
        check(await answered == b"ping", "the echo server echoes")
        await later(0.05)  # both ends closed

    def test_2_meets_the_harness_last(self) -> Deferred[None]:
        return meet("last")

    def test_3_sync_passes(self) -> None:
        check(reactor.seconds() > 0, "the reactor tells the time")
