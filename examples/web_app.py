"""A plain twisted.web app with the Reactor Dashboard mounted at /_reactor/.

Run it:   python examples/web_app.py [PORT]        (default 8080; 0 picks a free port)
Then:     http://127.0.0.1:8080/hello, http://127.0.0.1:8080/slow?ms=2000 and the dashboard
          at http://127.0.0.1:8080/_reactor/ (JSON at /_reactor/api/v1/snapshot).
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.static import Data

from dashboard import Monitor


class Slow(Resource):
    """Answers after ``?ms=`` milliseconds (at most 10 s): a request seen in flight."""

    isLeaf = True

    def __init__(self, reactor: Any) -> None:
        Resource.__init__(self)
        self.reactor = reactor

    def render_GET(self, request: Request) -> int:
        args: Any = request.args
        delay_s = min(int(args.get(b"ms", [b"500"])[0]), 10_000) / 1000
        answer: Deferred[bytes] = Deferred()  # pending until the timer fires
        call = self.reactor.callLater(delay_s, answer.callback, b"slow\n")
        request.notifyFinish().addErrback(lambda _: call.cancel())
        answer.addCallback(request.write).addCallback(lambda _: request.finish())
        return NOT_DONE_YET


async def main(reactor: Any, port: str = "8080") -> None:
    # The dashboard, in three lines: start the monitor, mount its resource, stop at shutdown.
    monitor = Monitor(reactor)
    monitor.start()
    reactor.addSystemEventTrigger("after", "shutdown", monitor.stop)

    root: Any = Resource()  # mypy cannot see zope interfaces: Data is an IResource
    root.putChild(b"hello", Data(b"hello\n", "text/plain"))
    root.putChild(b"slow", Slow(reactor))
    root.putChild(b"_reactor", monitor.resource())

    endpoint = serverFromString(reactor, f"tcp:{int(port)}:interface=127.0.0.1")
    listening = await endpoint.listen(Site(root))
    url = f"http://127.0.0.1:{listening.getHost().port}"
    print(f"Serving {url}/hello  dashboard: {url}/_reactor/", flush=True)
    await Deferred()  # serve until Ctrl-C


if __name__ == "__main__":
    task.react(lambda reactor, *argv: Deferred.fromCoroutine(main(reactor, *argv)), sys.argv[1:])
