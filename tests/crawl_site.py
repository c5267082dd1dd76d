"""A local site for the Scrapy crawl of tests/test_real_programs.py (run as a script).

``python tests/crawl_site.py FAST NEVER`` serves, on 127.0.0.1 (a free port):
``/`` links to ``/fast/0`` .. ``/fast/FAST-1`` (small pages) and ``/never/0`` ..
``/never/NEVER-1`` (pages that never answer: slower than any ``DOWNLOAD_TIMEOUT``). A second
port serves ``/stats``: JSON ``{"accepted": connections accepted on the site's port,
"requests": {path: count}}``, the test's independent count. Prints ``serving SITE STATS``.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any

from twisted.internet import reactor as installed_reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

reactor: Any = installed_reactor


class CountingSite(Site):
    """A Site that counts the connections it accepted and the requests per path."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)  # type: ignore[no-untyped-call]
        self.accepted = 0
        self.requests: Counter[str] = Counter()

    def buildProtocol(self, addr: Any) -> Any:
        self.accepted += 1
        return super().buildProtocol(addr)  # type: ignore[no-untyped-call]


class Pages(Resource):
    isLeaf = True

    def __init__(self, site_counts: Counter[str], fast: int, never: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.counts = site_counts
        self.fast = fast
        self.never = never

    def render_GET(self, request: Any) -> Any:
        path = request.path.decode()
        self.counts[path] += 1
        request.setHeader(b"content-type", b"text/html")
        if path == "/":
            links = [f"/fast/{i}" for i in range(self.fast)]
            links += [f"/never/{i}" for i in range(self.never)]
            body = "".join(f'<a href="{link}">{link}</a>\n' for link in links)
            return f"<html><body>{body}</body></html>".encode()
        if path.startswith("/fast/"):
            return f"<html><body>page {path}</body></html>".encode()
        if path.startswith("/never/"):
            return NOT_DONE_YET  # no answer, ever: the client times out
        request.setResponseCode(404)
        return b"not here"


class Stats(Resource):
    isLeaf = True

    def __init__(self, site: CountingSite) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.site = site

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        counts = {"accepted": self.site.accepted, "requests": dict(self.site.requests)}
        return json.dumps(counts).encode()


def main(fast: int, never: int) -> None:
    counts: Counter[str] = Counter()
    site = CountingSite(Pages(counts, fast, never))
    site.requests = counts
    site.noisy = False
    stats = Site(Stats(site))
    stats.noisy = False
    site_port = reactor.listenTCP(0, site, interface="127.0.0.1")
    stats_port = reactor.listenTCP(0, stats, interface="127.0.0.1")
    print("serving", site_port.getHost().port, stats_port.getHost().port, flush=True)
    reactor.run()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
