"""A monitored process full of hostile strings, for tests/test_browser_security.py.

``python tests/hostile_server.py [--token T]`` serves, on 127.0.0.1:

- the dashboard (behind :class:`~dashboard.web.guard.GuardedResource`, with ``--token`` if
  given) at the root of one port;
- the *watched app* on another port: every request is held open (never answered), so the
  URIs clients send stay in the connections table as requests in flight.

It prints ``listening <dashboard port> <app port>`` once both accept connections. Inside, the
strings the dashboard shows come from outside and carry markup: a pool's name, a Deferred's
creation site (code compiled under a markup file name), a blocking call's stack (the same),
and the class name of a protocol whose timeout fired; a site's function name is very long.
Every payload sets ``window.__xss`` and calls ``alert()`` if it ever runs.
"""

from __future__ import annotations

import argparse
import sys
from collections import deque
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.protocols import policies
from twisted.web import server
from twisted.web.resource import Resource
from twisted.web.server import Site

from dashboard.monitor import Monitor
from dashboard.web.app import DashboardApp
from dashboard.web.guard import GuardedResource

#: Shown as a pool's name.
POOL_NAME = "<img src=x onerror=\"window.__xss='pool';alert(1)\">pool"
#: The file name of the code that creates a pending Deferred and blocks the reactor.
CODE_FILE = "<svg onload=\"window.__xss='site';alert(2)\">.py"
#: The class name of a protocol whose idle timeout fires (shown in the timeouts table).
PROTOCOL_NAME = "<script>window.__xss='protocol';alert(3)</script>"

#: The block lasts 0.4 s, far past the 100 ms threshold: this test is about escaping, and on a
#: loaded CI machine the watchdog thread can be scheduled late enough to miss a 150 ms one.
HOSTILE_CODE = """
import time
from twisted.internet import defer

def leak():
    kept.append(defer.Deferred())

def block():
    time.sleep(0.4)
"""
#: How many times the program blocks (see main).
BLOCKS = 3
#: A pending Deferred's creating function, named with no place to break a line: the sites and
#: oldest tables must wrap it rather than grow sideways.
LONG_FUNCTION = "leak_" + "without_a_place_to_break_" * 8
HOSTILE_CODE += f"""
def {LONG_FUNCTION}():
    kept.append(defer.Deferred())
"""


class Pool:
    max = 4
    in_use = 1
    idle = 3
    waiting = 0


class HoldOpen(Resource):
    """Answers nothing: each request stays in flight until its client goes away."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.held: deque[server.Request] = deque(maxlen=200)

    def render(self, request: server.Request) -> Any:
        self.held.append(request)
        return server.NOT_DONE_YET


def timing_out_protocol() -> type[protocol.Protocol]:
    class Idle(protocol.Protocol, policies.TimeoutMixin):
        def connectionMade(self) -> None:
            self.setTimeout(0.2)  # type: ignore[no-untyped-call]

        def timeoutConnection(self) -> None:
            transport: Any = self.transport
            transport.loseConnection()

    Idle.__qualname__ = Idle.__name__ = PROTOCOL_NAME
    return Idle


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--token", default=None)
    args = parser.parse_args(argv)

    from twisted.internet import reactor as installed

    reactor: Any = installed
    monitor = Monitor(reactor, interval=0.25, history=200)
    monitor.start()
    monitor.track_pool(Pool(), POOL_NAME)

    namespace: dict[str, Any] = {"kept": []}
    exec(compile(HOSTILE_CODE, CODE_FILE, "exec"), namespace)
    for _ in range(3):
        namespace["leak"]()
    namespace[LONG_FUNCTION]()
    # From the running reactor: scheduled before run(), a slow start (a loaded machine) could
    # run it before the loop probe's first poller wait, when no busy span is measured yet.
    # Three times, a second apart: on a loaded machine the watchdog thread can be scheduled
    # only after the sleep returned, and that block has no stack (the test needs one).
    for n in range(BLOCKS):
        reactor.callWhenRunning(reactor.callLater, 0.5 + n, namespace["block"])

    idle_protocol = timing_out_protocol()
    app_port = reactor.listenTCP(0, Site(HoldOpen()), interface="127.0.0.1")

    def idle_client() -> defer.Deferred[Any]:
        creator = protocol.ClientCreator(reactor, idle_protocol)
        d: defer.Deferred[Any] = creator.connectTCP("127.0.0.1", app_port.getHost().port)
        return d.addErrback(lambda _: None)

    idler = task.LoopingCall(idle_client)
    idler.clock = reactor
    idler.start(1.0)

    dashboard: Any = DashboardApp(monitor).app.resource()
    site = Site(GuardedResource(dashboard, token=args.token))
    dashboard_port = reactor.listenTCP(0, site, interface="127.0.0.1")
    print(f"listening {dashboard_port.getHost().port} {app_port.getHost().port}", flush=True)
    reactor.addSystemEventTrigger("before", "shutdown", monitor.stop)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
