"""The server side of the soak: the demo service under load with the dashboard attached, as a
user runs it (the guard in front, a quiet site), plus a line protocol on stdin/stdout.

``python -m benchmarks.soak_server [--reactor asyncio] [--history N] [--interval S]
[--idle-timeout S] [--max-backlog-bytes B]`` prints ``listening <port> <pid>`` once serving,
then answers each stdin line ``stats`` with ``stats <JSON>``: the event hub's counters and the
monitor's ``errors``. End of input stops it.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any

from dashboard.attach import install_reactor


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reactor", default="default")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--history", type=int, default=900, help="samples kept")
    parser.add_argument(
        "--idle-timeout", type=float, default=60.0, help="a silent connection is dropped after"
    )
    parser.add_argument("--max-backlog-bytes", type=int, default=1 << 20)
    parser.add_argument("--max-clients", type=int, default=100)
    args = parser.parse_args(argv)

    # The reactor first: importing twisted.web would install the default one.
    reactor: Any = install_reactor(args.reactor)
    from twisted.internet import stdio
    from twisted.protocols.basic import LineReceiver

    from dashboard.demo import DemoService
    from dashboard.monitor import Monitor
    from dashboard.web.app import DashboardApp
    from dashboard.web.guard import GuardedResource
    from dashboard.web.quiet_site import QuietSite

    monitor = Monitor(
        reactor, interval=args.interval, history=args.history, max_sse_clients=args.max_clients
    )
    monitor.start()
    hub = monitor.events
    hub.max_backlog_bytes = args.max_backlog_bytes
    app: Any = DashboardApp(monitor, events=hub).app.resource()
    site = QuietSite(GuardedResource(app))
    site.timeOut = args.idle_timeout
    port = reactor.listenTCP(0, site, backlog=1024, interface="127.0.0.1")
    demo = DemoService(reactor, monitor)

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            if line.strip() == b"stats":
                stats = {"hub": hub.stats(), "errors": monitor.errors.as_json()}
                self.answer(b"stats " + json.dumps(stats).encode())
            else:
                self.answer(b"error unknown command")

        def answer(self, line: bytes) -> None:
            transport: Any = self.transport
            transport.write(line + b"\n")

        def connectionLost(self, reason: object = None) -> None:
            if reactor.running:
                reactor.stop()

    def started() -> None:
        demo.start()
        print(f"listening {port.getHost().port} {os.getpid()}", flush=True)

    stdio.StandardIO(Control(), reactor=reactor)
    reactor.callWhenRunning(started)
    reactor.addSystemEventTrigger("before", "shutdown", demo.stop)
    reactor.run()
    monitor.stop()


if __name__ == "__main__":
    main()
