# mypy: allow-untyped-calls
"""A monitored program with a large history, for tests/test_history_bounds.py.

``python tests/history_server.py [--reactor asyncio] [--history-mb 20]`` keeps one pending
Deferred at each of ``--sites`` creation sites (each in a module of its own, with a long
path), so every sample lists them all (``top_sites`` is raised to match) and weighs about
100 KB; it then takes samples until the history ring holds ``--history-mb`` MB, serves the
dashboard on 127.0.0.1 (``monitor.listen``) and prints ``listening <port>
<history bytes> <newest sample's bytes>`` before the reactor starts. ``SIGTERM`` stops it.

``--sndbuf N`` gives every accepted connection a kernel send buffer of N bytes (set on the
listening socket, which accepted sockets inherit), as a slow network path would: on loopback
the kernel's own buffer grows to a few MB, and takes a whole snapshot of an unread answer
off the process's hands.
"""

from __future__ import annotations

import argparse
import gc
import socket
import sys
from typing import Any

from dashboard.attach import install_reactor

SITE_PATH = "/srv/history-program/handlers/module_{:04d}_answering_a_long_descriptive_route.py"


def pending_at_sites(count: int) -> list[Any]:
    """One pending Deferred made at each of ``count`` distinct sites (files of their own)."""
    from twisted.internet.defer import Deferred

    held = []
    for number in range(count):
        namespace: dict[str, Any] = {"Deferred": Deferred}
        code = compile(
            "def handle_request_for_this_route():\n    return Deferred()\n",
            SITE_PATH.format(number),
            "exec",
        )
        exec(code, namespace)
        held.append(namespace["handle_request_for_this_route"]())
    return held


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reactor", default="default")
    parser.add_argument("--history-mb", type=float, default=20.0)
    parser.add_argument("--sites", type=int, default=500)
    parser.add_argument("--slow-client-timeout", type=float, default=30.0)
    parser.add_argument("--sndbuf", type=int, default=0, help="0: the kernel's default")
    args = parser.parse_args(argv)

    reactor: Any = install_reactor(args.reactor)
    from dashboard.monitor import Monitor

    monitor = Monitor(
        reactor,
        interval=1.0,
        history=2000,
        top_sites=args.sites,
        slow_client_timeout_s=args.slow_client_timeout,
    )
    monitor.start()
    held = pending_at_sites(args.sites)
    wanted = int(args.history_mb * 1e6)
    total = newest = 0
    while total < wanted:
        newest = len(monitor.sample().encoded)
        total += newest
    gc.collect()

    def listening(port: Any) -> None:
        if args.sndbuf:
            port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, args.sndbuf)
        print(f"listening {port.getHost().port} {total} {newest}", flush=True)

    monitor.listen(0).addCallback(listening)
    reactor.addSystemEventTrigger("before", "shutdown", monitor.stop)
    reactor.run()
    del held


if __name__ == "__main__":
    main(sys.argv[1:])
