"""A monitored Twisted process for the browser tests, run as a subprocess.

``python tests/browser_server.py --port 0 --prefix /a/deep/prefix`` serves the dashboard on
127.0.0.1 (under the prefix, if any) and prints ``listening <port>`` once it accepts
connections. A small workload keeps every panel busy. ``SIGUSR1`` blocks the reactor for
300 ms (the tests' forced block); ``SIGTERM`` stops it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections import deque
from types import FrameType
from typing import Any, cast

from twisted.internet import defer, task, threads
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from dashboard.monitor import Monitor

BLOCK_S = 0.3

#: A user pool whose name is markup: the page must show it as text and never run it.
MARKUP_POOL_NAME = '<img src=x onerror="window.__xss=1">workers'


class WorkerPool:
    """A user pool with fixed figures (see ``dashboard.TrackablePool``)."""

    max = 4
    in_use = 1
    idle = 3
    waiting = 0


def blocking_call() -> None:
    """Hold the reactor thread: what the watchdog must catch."""
    time.sleep(BLOCK_S)


class Workload:
    """Deferreds left pending (a bounded leak), timeouts and thread-pool work."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.leaked: deque[defer.Deferred[None]] = deque(maxlen=25)
        self.loops = [
            task.LoopingCall(self.leak),
            task.LoopingCall(self.time_out),
            task.LoopingCall(self.thread_work),
        ]

    def start(self) -> None:
        for loop, every in zip(self.loops, (0.3, 1.0, 0.5), strict=True):
            loop.clock = self.reactor
            loop.start(every, now=False)

    def leak(self) -> None:
        self.leaked.append(defer.Deferred())

    def time_out(self) -> None:
        d: defer.Deferred[None] = defer.Deferred()
        d.addTimeout(0.05, self.reactor)
        d.addErrback(lambda _: None)

    def thread_work(self) -> None:
        threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), time.sleep, 0.05
        ).addErrback(lambda _: None)


def site_for(monitor: Monitor, prefix: str) -> Site:
    """The dashboard at ``prefix`` ("" or "/" for the root) of a plain twisted.web tree."""
    segments = [s.encode() for s in prefix.strip("/").split("/") if s]
    if not segments:
        return Site(monitor.resource())
    root = Resource()
    parent = root
    for segment in segments[:-1]:
        child = Resource()
        parent.putChild(segment, cast(IResource, child))
        parent = child
    parent.putChild(segments[-1], monitor.resource())
    return Site(root)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--prefix", default="")
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--history", type=int, default=400)
    args = parser.parse_args(argv)

    from twisted.internet import reactor as installed

    reactor: Any = installed
    monitor = Monitor(reactor, interval=args.interval, history=args.history)
    monitor.start()
    monitor.track_pool(WorkerPool(), MARKUP_POOL_NAME)
    workload = Workload(reactor)
    workload.start()

    def block_soon(signum: int, frame: FrameType | None) -> None:
        reactor.callFromThread(blocking_call)

    signal.signal(signal.SIGUSR1, block_soon)
    port = reactor.listenTCP(args.port, site_for(monitor, args.prefix), interface="127.0.0.1")
    print(f"listening {port.getHost().port}", flush=True)
    reactor.addSystemEventTrigger("before", "shutdown", monitor.stop)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
