"""Meetings between a program under test and the test that drives it, through files.

The program says ``NAME.ready`` in a shared folder and waits, without blocking its reactor,
until the test says ``NAME.go``; meanwhile the test looks at the dashboard. Every wait has a
deadline. The program side runs on its reactor thread; the test side on the test's thread.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred

#: How long either side waits for the other, seconds.
MEETING_DEADLINE_S = 20.0


def meet(reactor: Any, folder: Path, name: str) -> Deferred[None]:
    """Program side: say ``name.ready``; fire when the test says ``name.go`` (polls every
    50 ms; fails after :data:`MEETING_DEADLINE_S`)."""
    (folder / f"{name}.ready").touch()
    go = folder / f"{name}.go"
    deadline = time.monotonic() + MEETING_DEADLINE_S
    met: Deferred[None] = Deferred()

    def poll() -> None:
        if go.exists():
            loop.stop()
            met.callback(None)
        elif time.monotonic() > deadline:
            loop.stop()
            met.errback(AssertionError(f"nobody said {go.name} within {MEETING_DEADLINE_S} s"))

    loop = task.LoopingCall(poll)
    loop.clock = reactor
    loop.start(0.05)
    return met


def wait_ready(folder: Path, name: str, alive: Any = None) -> None:
    """Test side: wait until the program says ``name.ready``. ``alive()``, when given, is
    asked while waiting: a program that ended will never say it."""
    ready = folder / f"{name}.ready"
    deadline = time.monotonic() + MEETING_DEADLINE_S
    while not ready.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"the program did not say {ready.name} in {MEETING_DEADLINE_S} s")
        if alive is not None and not alive():
            raise AssertionError(f"the program ended before saying {ready.name}")
        time.sleep(0.02)


def say_go(folder: Path, name: str) -> None:
    """Test side: let the program go on past the meeting ``name``."""
    (folder / f"{name}.go").touch()
