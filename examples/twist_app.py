"""A service for ``twist``, with the Reactor Dashboard served on its own port.

``twist`` runs plugins found in ``twisted/plugins/`` folders on ``sys.path``; this example's
plugin is ``examples/twisted/plugins/dashboard_example.py``, which points here. Run it:

    PYTHONPATH=examples twist dashboard-example \\
        --listen tcp:8080:interface=127.0.0.1 --dashboard tcp:8089:interface=127.0.0.1

Then: http://127.0.0.1:8080/hello, http://127.0.0.1:8080/slow?ms=2000 and the dashboard at
http://127.0.0.1:8089/. (Twisted writes a ``dropin.cache`` next to the plugin the first time.)
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.static import Data

from dashboard import Monitor


class Options(usage.Options):
    optParameters: ClassVar[list[list[str | None]]] = [
        ["listen", None, "tcp:8080:interface=127.0.0.1", "Where the app listens (strports)."],
        ["dashboard", None, "tcp:8089:interface=127.0.0.1", "Where the dashboard listens."],
    ]


class MonitorService(Service):
    """Starts the monitor and serves the dashboard alone on ``endpoint``; undoes both."""

    log = Logger()

    def __init__(self, monitor: Monitor, endpoint: str) -> None:
        self.monitor = monitor
        self.endpoint = endpoint
        self.listening: Deferred[Any] | None = None

    def startService(self) -> None:
        Service.startService(self)
        self.monitor.start()
        self.listening = self.monitor.listen(self.endpoint)
        self.listening.addCallback(self.announce)

    def announce(self, port: Any) -> Any:
        self.log.info("Reactor Dashboard on http://127.0.0.1:{port}/", port=port.getHost().port)
        return port

    def stopService(self) -> Deferred[None] | None:
        Service.stopService(self)
        if self.listening is None:
            self.monitor.stop()
            return None
        stopped = self.listening.addCallback(lambda port: port.stopListening())
        return stopped.addBoth(lambda _: self.monitor.stop())


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


def makeService(options: Options) -> IService:
    """Called by ``twist`` after it installed the reactor (``--reactor`` or the default)."""
    from twisted.internet import reactor

    monitor = Monitor(reactor)
    root: Any = Resource()  # mypy cannot see zope interfaces: Data is an IResource
    root.putChild(b"hello", Data(b"hello\n", "text/plain"))
    root.putChild(b"slow", Slow(reactor))

    service: Any = MultiService()  # started in order, stopped in reverse: the app stops first
    service.addService(MonitorService(monitor, options["dashboard"]))
    site: Any = Site(root)
    service.addService(strports.service(options["listen"], site))
    return cast(IService, service)
