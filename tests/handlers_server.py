"""A monitored Twisted process with busy time by handler on, for the browser test of "Where
the loop's time goes": ``python tests/handlers_server.py`` serves the dashboard on its own
port (``monitor.listen``, so its HTTP channel is its own) and prints ``listening <port>``; a
LoopingCall burns 20 ms ten times a second (a fifth of the loop: well above the sampler's
share, even on a loaded machine)."""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import task

from dashboard.monitor import Monitor


def busy_job() -> None:
    """The program's handler: 20 ms of work."""
    end = time.perf_counter() + 0.020
    while time.perf_counter() < end:
        pass


def main() -> None:
    from twisted.internet import reactor as installed

    reactor: Any = installed
    monitor = Monitor(reactor, interval=0.25, handlers=True)
    monitor.start()
    loop = task.LoopingCall(busy_job)
    loop.clock = reactor
    loop.start(0.1, now=False)

    def listening(port: Any) -> None:
        print(f"listening {port.getHost().port}", flush=True)

    monitor.listen(0).addCallback(listening)
    reactor.addSystemEventTrigger("before", "shutdown", monitor.stop)
    reactor.run()


if __name__ == "__main__":
    main()
