"""A monitored program whose reactor gets stuck on demand, for tests/test_stuck*.py.

``python tests/stuck_server_program.py [--reactor asyncio] [--block-s 5] [--token T]
[--mount] [--spare-files N]`` serves the dashboard on its own port (``Monitor.listen``, as
``reactor-dashboard run`` does) and prints ``listening <dashboard port> <reactor class>
<program port>``. The program port serves ``GET /hello`` (the program's own Site; with
``--mount`` the dashboard is mounted there too, under ``/dashboard``). ``SIGUSR1`` makes the
reactor thread sleep ``--block-s`` seconds in :func:`sleeping_handler`; ``SIGUSR2`` spins it
that long in the pure-Python loop of :func:`spinning_handler`. ``SIGTERM`` stops it (the
monitor first). ``--spare-files N``: once listening, the soft limit of open files is set to N
more than are open.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import sys
import time
from types import FrameType
from typing import Any, cast

from dashboard.attach import install_reactor


def sleeping_handler(seconds: float) -> None:
    """Hold the reactor thread in a sleep (a blocking call that releases the GIL)."""
    time.sleep(seconds)


def spinning_handler(seconds: float) -> int:
    """Hold the reactor thread in pure Python (the GIL is switched every 5 ms)."""
    until = time.monotonic() + seconds
    spins = 0
    while time.monotonic() < until:
        spins += 1
    return spins


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reactor", default="default")
    parser.add_argument("--block-s", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--token", default=None)
    parser.add_argument("--mount", action="store_true")
    parser.add_argument("--spare-files", type=int, default=None)
    args = parser.parse_args(argv)

    reactor: Any = install_reactor(args.reactor)
    from twisted.web.resource import IResource, Resource
    from twisted.web.server import Site
    from twisted.web.static import Data

    from dashboard.monitor import Monitor

    monitor = Monitor(reactor, interval=args.interval, history=400, token=args.token)
    monitor.start()

    def sleep_soon(signum: int, frame: FrameType | None) -> None:
        reactor.callFromThread(sleeping_handler, args.block_s)

    def spin_soon(signum: int, frame: FrameType | None) -> None:
        reactor.callFromThread(spinning_handler, args.block_s)

    signal.signal(signal.SIGUSR1, sleep_soon)
    signal.signal(signal.SIGUSR2, spin_soon)
    root = Resource()
    root.putChild(b"hello", cast(IResource, Data(b"hello\n", "text/plain")))
    mounted = monitor.resource()
    if args.mount:
        root.putChild(b"dashboard", mounted)
    program = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    if args.mount:
        monitor.answer_while_stuck(program, mounted, "/dashboard")

    def listening(port: Any) -> None:
        if args.spare_files is not None:  # room for that many more open files, no more
            in_use = len(os.listdir("/proc/self/fd"))
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + args.spare_files, hard))
        print(
            f"listening {port.getHost().port} {type(reactor).__name__} {program.getHost().port}",
            flush=True,
        )

    monitor.listen(0).addCallback(listening)
    reactor.addSystemEventTrigger("before", "shutdown", monitor.stop)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
