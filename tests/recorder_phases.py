# mypy: allow-untyped-calls
"""A recording in two phases, for the replay tests (tests/test_recorder_replay*.py).

``python tests/recorder_phases.py --record PATH [--reactor asyncio]`` samples every 0.1 s:
phase A holds 5 pending Deferreds made in ``alpha_site_function``; then
``replayed_block_function`` blocks the loop for 0.3 s; phase B fires those and holds 7 made
in ``beta_site_function``. It prints ``phase A <start> <end>`` and ``phase B <start> <end>``
(unix seconds, inside which every sample is of that phase) and exits.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dashboard.attach import install_reactor

PHASE_S = 1.2


def alpha_site_function() -> Any:
    from twisted.internet.defer import Deferred

    return Deferred()


def beta_site_function() -> Any:
    from twisted.internet.defer import Deferred

    return Deferred()


def replayed_block_function() -> None:
    time.sleep(0.3)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", required=True)
    parser.add_argument("--reactor", default="default")
    args = parser.parse_args(argv)
    reactor: Any = install_reactor(args.reactor)
    from dashboard.monitor import Monitor

    monitor = Monitor(reactor, interval=0.1, record=args.record)
    monitor.start()
    held: list[Any] = []
    marks: dict[str, float] = {}

    def phase_a() -> None:
        held.extend(alpha_site_function() for _ in range(5))
        marks["a0"] = time.time() + 0.15  # the first sample after them
        reactor.callLater(PHASE_S, block)

    def block() -> None:
        marks["a1"] = time.time() - 0.05
        replayed_block_function()
        for d in held:
            d.callback(None)
        held.clear()
        held.extend(beta_site_function() for _ in range(7))
        marks["b0"] = time.time() + 0.15
        reactor.callLater(PHASE_S, end)

    def end() -> None:
        marks["b1"] = time.time() - 0.05
        reactor.stop()

    reactor.callLater(0.3, phase_a)
    reactor.addSystemEventTrigger("after", "shutdown", monitor.stop)
    reactor.run()
    print(f"phase A {marks['a0']} {marks['a1']}", flush=True)
    print(f"phase B {marks['b0']} {marks['b1']}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
