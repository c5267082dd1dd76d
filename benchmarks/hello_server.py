"""A hello-world server for the HTTP benchmark: Klein or plain twisted.web, monitor on or off.

``python -m benchmarks.hello_server --kind klein|web --port P [--monitor [--handlers |
--no-handlers]]``; prints ``ready`` once listening (``ready M`` when monitored: M is the
dashboard's own port). ``--handlers`` / ``--no-handlers``: the monitor with busy time by
handler on / off (``Monitor(handlers=True / False)``); neither: the Monitor's default.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from klein import Klein
from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return b"hello\n"


def klein_resource() -> Any:
    app = Klein()

    @app.route("/", methods=["GET"])
    def hello(request: Any) -> bytes:
        return b"hello\n"

    return app.resource()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=["klein", "web"], default="klein")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--monitor", action="store_true")
    parser.add_argument("--handlers", action="store_true")
    parser.add_argument("--no-handlers", action="store_true")
    args = parser.parse_args(argv)
    from dashboard.testing import global_reactor

    reactor = global_reactor()
    ready = ["ready"]
    if args.monitor:
        from dashboard.monitor import Monitor

        handlers = True if args.handlers else (False if args.no_handlers else None)
        monitor = Monitor(reactor, interval=1.0, handlers=handlers)
        monitor.start()

        def listening(port: Any) -> None:
            ready.append(str(port.getHost().port))

        monitor.listen(0).addCallback(listening)
    resource: Any = klein_resource() if args.kind == "klein" else Hello()  # type: ignore[no-untyped-call]
    site = Site(resource)
    site.noisy = False
    reactor.listenTCP(args.port, site, interface="127.0.0.1")
    # "ready", then the dashboard's port when monitored
    reactor.callWhenRunning(lambda: print(*ready, flush=True))
    reactor.run()


if __name__ == "__main__":
    main()
