"""A monitored process whose reactor can be blocked on demand, for tests/test_block_truth.py.

``python tests/block_server.py [--reactor asyncio] [--block-s 5]`` serves the dashboard on
127.0.0.1 (a free port, printed as ``listening <port>``); ``SIGUSR1`` makes the reactor thread
sleep ``--block-s`` seconds inside :func:`blocking_call` (what the watchdog must catch);
``SIGTERM`` stops it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType
from typing import Any

from dashboard.attach import install_reactor


def blocking_call(seconds: float) -> None:
    """Hold the reactor thread (a synchronous call where an asynchronous one belonged)."""
    time.sleep(seconds)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reactor", default="default")
    parser.add_argument("--block-s", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=0.25)
    args = parser.parse_args(argv)

    # The reactor first: importing twisted.web would install the default one.
    reactor: Any = install_reactor(args.reactor)
    from twisted.web.server import Site

    from dashboard.monitor import Monitor
    from dashboard.web.app import DashboardApp
    from dashboard.web.guard import GuardedResource

    monitor = Monitor(reactor, interval=args.interval, history=400)
    monitor.start()

    def block_soon(signum: int, frame: FrameType | None) -> None:
        reactor.callFromThread(blocking_call, args.block_s)

    signal.signal(signal.SIGUSR1, block_soon)
    dashboard: Any = DashboardApp(monitor).app.resource()
    port = reactor.listenTCP(0, Site(GuardedResource(dashboard)), interface="127.0.0.1")
    print(f"listening {port.getHost().port} {type(reactor).__name__}", flush=True)
    reactor.addSystemEventTrigger("before", "shutdown", monitor.stop)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
