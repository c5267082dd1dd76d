"""The server side of the SSE benchmark: a started Monitor serving the dashboard (with its event
stream) on 127.0.0.1, and a line protocol on stdin/stdout for the driver.

``python -m benchmarks.sse_server --port P [--interval 1.0] [--max-clients N]`` prints ``ready``
once listening, then answers each stdin line: ``cpu`` -> ``cpu <seconds>`` (this process's
user+system CPU time, every thread, nanosecond clock), ``stats`` -> ``stats <hub stats JSON>``.
It stops at end of input.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

from twisted.internet import stdio
from twisted.protocols.basic import LineReceiver
from twisted.web.server import Site

from dashboard.monitor import Monitor
from dashboard.web.app import DashboardApp
from dashboard.web.sse import EventHub


class Control(LineReceiver):
    """Answers the driver's questions; end of input stops the reactor."""

    delimiter = b"\n"

    def __init__(self, reactor: Any, hub: EventHub) -> None:
        self.reactor = reactor
        self.hub = hub

    def lineReceived(self, line: bytes) -> None:
        command = line.strip()
        if command == b"cpu":
            self.answer(b"cpu %.9f" % time.process_time())
        elif command == b"stats":
            self.answer(b"stats " + json.dumps(self.hub.stats()).encode())
        else:
            self.answer(b"error unknown command")

    def answer(self, line: bytes) -> None:
        transport: Any = self.transport
        transport.write(line + b"\n")

    def connectionLost(self, reason: object = None) -> None:
        if self.reactor.running:
            self.reactor.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--max-clients", type=int, default=100)
    args = parser.parse_args(argv)
    from dashboard.testing import global_reactor

    reactor = global_reactor()
    monitor = Monitor(reactor, interval=args.interval)
    monitor.start()
    hub = EventHub(monitor, max_clients=args.max_clients)
    site = Site(DashboardApp(monitor, events=hub).app.resource())
    site.noisy = False
    # A deep accept queue: the fan-out client connects hundreds of sockets at once.
    reactor.listenTCP(args.port, site, backlog=1024, interface="127.0.0.1")
    stdio.StandardIO(Control(reactor, hub), reactor=reactor)
    reactor.callWhenRunning(print, "ready", flush=True)
    reactor.run()
    monitor.stop()


if __name__ == "__main__":
    main()
