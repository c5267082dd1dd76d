"""A monitored Twisted process for the profile tests, run as a subprocess.

``python tests/profile_server.py --port 0 [--reactor asyncio]`` serves the dashboard on
127.0.0.1 and prints ``listening <port>``. Its reactor spends about half the time in
``burn_cpu`` (30 ms every 60 ms) and a little in a function whose code is named with markup
(the page must show that name as text and never run it). ``SIGTERM`` stops it.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

BURN_S = 0.03

#: A function name that is markup: shown as text, never run.
MARKUP_NAME = '<img src=x onerror="window.__xss=1">spin'


def burn_cpu(seconds: float) -> None:
    """Busy on the reactor thread for ``seconds``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


_spin.__code__ = _spin.__code__.replace(co_name="spin", co_qualname=MARKUP_NAME)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--reactor", default="default")
    args = parser.parse_args(argv)
    if args.reactor == "asyncio":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    from twisted.internet import reactor as installed
    from twisted.internet import task
    from twisted.web.server import Site

    from dashboard.monitor import Monitor

    reactor: Any = installed
    monitor = Monitor(reactor, interval=0.25, history=40)
    monitor.start()
    for function, every, seconds in ((burn_cpu, 2 * BURN_S, BURN_S), (_spin, 0.1, 0.004)):
        loop = task.LoopingCall(function, seconds)
        loop.clock = reactor
        loop.start(every, now=False)
    port = reactor.listenTCP(args.port, Site(monitor.resource()), interface="127.0.0.1")
    print(f"listening {port.getHost().port}", flush=True)
    reactor.addSystemEventTrigger("before", "shutdown", monitor.stop)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
