"""A Klein app with the Reactor Dashboard on a ``branch=True`` route at /_reactor/.

Run it:   python examples/klein_app.py [PORT]      (default 8080; 0 picks a free port)
Then:     http://127.0.0.1:8080/hello/you, http://127.0.0.1:8080/slow?ms=2000 and the dashboard
          at http://127.0.0.1:8080/_reactor/ (JSON at /_reactor/api/v1/snapshot).
"""

from __future__ import annotations

import sys
from typing import Any

from klein import Klein
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from dashboard import Monitor


class HelloApp:
    """The app's own routes, plus the dashboard mounted as a branch."""

    app = Klein()

    def __init__(self, reactor: Any, monitor: Monitor) -> None:
        self.reactor = reactor
        self.dashboard = monitor.resource()

    @app.route("/hello/<name>", methods=["GET"])
    def hello(self, request: Request, name: str) -> str:
        return f"hello {name}\n"

    @app.route("/slow", methods=["GET"])
    async def slow(self, request: Request) -> str:
        args: Any = request.args
        delay_s = min(int(args.get(b"ms", [b"500"])[0]), 10_000) / 1000
        await task.deferLater(self.reactor, delay_s)
        return "slow\n"

    @app.route("/_reactor/", branch=True)
    def reactor_dashboard(self, request: Request) -> IResource:
        return self.dashboard


async def main(reactor: Any, port: str = "8080") -> None:
    monitor = Monitor(reactor)
    monitor.start()
    reactor.addSystemEventTrigger("after", "shutdown", monitor.stop)

    site = Site(HelloApp(reactor, monitor).app.resource())
    endpoint = serverFromString(reactor, f"tcp:{int(port)}:interface=127.0.0.1")
    listening = await endpoint.listen(site)
    url = f"http://127.0.0.1:{listening.getHost().port}"
    print(f"Serving {url}/hello/you  dashboard: {url}/_reactor/", flush=True)
    await Deferred()  # serve until Ctrl-C


if __name__ == "__main__":
    task.react(lambda reactor, *argv: Deferred.fromCoroutine(main(reactor, *argv)), sys.argv[1:])
