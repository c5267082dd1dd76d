# mypy: allow-untyped-calls
"""A monitored program whose loop is kept busy a known share of the time, or blocked at start-up,
for tests/test_fresh_snapshot.py and tests/test_startup_block.py.

``python tests/busy_server.py [--reactor asyncio] [--busy 0.3] [--start-block-s 0.4]`` serves
the dashboard on 127.0.0.1 and prints ``listening <dashboard port> <reactor class> <truth
port>`` before the reactor starts; ``SIGTERM`` stops it.

* ``--busy F``: every 100 ms the reactor thread spins ``F * 100`` ms of wall time in
  :func:`spin_for`.
* The truth, measured without the dashboard's code, read at every stored sample (a subscriber
  of the monitor): cumulative seconds spent spinning, serving the dashboard's requests (each
  ``dataReceived`` of its HTTP connections: parsing, routing, the snapshot, the answer) and
  waiting in the poller (a wrapper of our own around the wait the loop probe times, put on
  after it), with ``time.perf_counter()``. ``GET /`` on the truth port answers
  ``{"samples": {seq: [spin_s, serve_s, idle_s, perf_s]}}``, so the busy share of the interval
  between two samples is known apart from the loop probe's bookkeeping.
* ``--start-block-s S``: a ``callWhenRunning`` call sleeps ``S`` seconds in :func:`start_up`,
  before the loop's first wait.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from dashboard.attach import install_reactor

PERIOD_S = 0.1
#: samples whose truth is kept
KEPT = 400


class Truth:
    """Cumulative seconds of the program's known work, read at each stored sample."""

    def __init__(self) -> None:
        self.spin_s = 0.0
        self.serve_s = 0.0
        self.idle_s = 0.0
        self.at_sample: dict[int, tuple[float, float, float, float]] = {}

    def record(self, seq: int) -> None:
        self.at_sample[seq] = (self.spin_s, self.serve_s, self.idle_s, time.perf_counter())
        if len(self.at_sample) > KEPT:
            del self.at_sample[min(self.at_sample)]


TRUTH = Truth()


def spin_for(seconds: float) -> None:
    """Hold the reactor thread, on the CPU, for ``seconds`` of wall time."""
    start = time.perf_counter()
    until = start + seconds
    now = start
    while now < until:
        now = time.perf_counter()
    TRUTH.spin_s += now - start


def timed_wait(wait: Any) -> Any:
    """``wait`` (the reactor's poller wait), its duration added to the truth's idle time."""

    def wait_and_count(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return wait(*args, **kwargs)
        finally:
            TRUTH.idle_s += time.perf_counter() - start

    return wait_and_count


def count_idle_time(reactor: Any) -> None:
    """Wrap the wait the loop probe wraps (epoll's ``poll``, asyncio's ``select``) again."""
    loop = getattr(reactor, "_asyncioEventloop", None)
    if loop is not None:
        loop._selector.select = timed_wait(loop._selector.select)
    else:
        reactor._poller.poll = timed_wait(reactor._poller.poll)


def start_up(seconds: float) -> None:
    """Start-up work that blocks the reactor (a synchronous load where an asynchronous one
    belonged)."""
    time.sleep(seconds)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reactor", default="default")
    parser.add_argument("--busy", type=float, default=0.0)
    parser.add_argument("--start-block-s", type=float, default=0.0)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args(argv)

    # The reactor first: importing twisted.web would install the default one.
    reactor: Any = install_reactor(args.reactor)
    from twisted.internet.task import LoopingCall
    from twisted.web.resource import Resource
    from twisted.web.server import Request, Site

    from dashboard.monitor import Monitor
    from dashboard.web.app import DashboardApp
    from dashboard.web.guard import GuardedResource

    class TimedSite(Site):
        """The dashboard's site; the time its connections spend handling data goes into the
        truth."""

        def buildProtocol(self, addr: Any) -> Any:
            protocol = super().buildProtocol(addr)
            received = protocol.dataReceived

            def timed(data: bytes) -> None:
                start = time.perf_counter()
                try:
                    received(data)
                finally:
                    TRUTH.serve_s += time.perf_counter() - start

            protocol.dataReceived = timed
            return protocol

    class TruthPage(Resource):
        isLeaf = True

        def render_GET(self, request: Request) -> bytes:
            request.setHeader(b"Content-Type", b"application/json")
            return json.dumps({"samples": TRUTH.at_sample}).encode()

    monitor = Monitor(reactor, interval=args.interval, history=400)
    monitor.start()
    count_idle_time(reactor)
    monitor.subscribe(lambda sample: TRUTH.record(sample.seq))
    if args.start_block_s > 0:
        reactor.callWhenRunning(start_up, args.start_block_s)
    if args.busy > 0:
        LoopingCall(spin_for, args.busy * PERIOD_S).start(PERIOD_S, now=False)
    app: Any = DashboardApp(monitor).app.resource()
    dashboard = GuardedResource(app)
    port = reactor.listenTCP(0, TimedSite(dashboard), interface="127.0.0.1")
    truth_port = reactor.listenTCP(0, Site(TruthPage()), interface="127.0.0.1")
    print(
        f"listening {port.getHost().port} {type(reactor).__name__} {truth_port.getHost().port}",
        flush=True,
    )
    reactor.addSystemEventTrigger("before", "shutdown", monitor.stop)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
