"""The Klein app over one Monitor. Reads samples only, never probe internals.

Routes are relative to wherever the resource is mounted, so any prefix works.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from klein import Klein
from klein.interfaces import IKleinRequest
from twisted.python.failure import Failure
from twisted.web.server import Request
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from dashboard.web import page
from dashboard.web.json_api import (
    BadRequest,
    bool_param,
    int_param,
    json_answer,
    json_body,
    json_error,
    query_params,
)
from dashboard.web.openapi import openapi_document
from dashboard.web.prometheus import CONTENT_TYPE as METRICS_CONTENT_TYPE
from dashboard.web.prometheus import SnapshotCollector, exposition
from dashboard.web.sse import EventHub

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from dashboard.monitor import Monitor

READ_METHODS = ["GET", "HEAD"]


class DashboardApp:
    """HTTP face of a Monitor: ``monitor.resource()`` is this app's resource."""

    app = Klein()

    def __init__(self, monitor: Monitor, *, events: EventHub | None = None) -> None:
        self.monitor = monitor
        #: The SSE fan-out of this app (at most 100 streams unless given another hub).
        self.events = events if events is not None else EventHub(monitor)
        self._openapi: bytes | None = None
        self.prepare()

    def prepare(self) -> None:
        """Do now, while the resource is built, what the first requests would otherwise do
        on the reactor thread: compile the templates, read the static files, build the
        route matcher and the OpenAPI document. Otherwise the dashboard's first page
        render stalls the loop it watches (and reads as the program's block)."""
        page.page_assets().prepare()
        self.app.url_map.update()
        self.openapi_body()

    @app.route("/", methods=READ_METHODS)
    def index(self, request: Request) -> bytes:
        """The HTML dashboard, with the newest sample as its initial data."""
        redirect = page.slash_redirect(request)
        if redirect is not None:
            return redirect
        config = page.page_config(self.monitor.history_seconds, self.monitor.interval)
        return page.serve_page(request, self.monitor.latest().data, config)

    # merge_slashes=False: "static//etc/passwd" is refused here, not redirected by werkzeug.
    @app.route("/static/", branch=True, methods=READ_METHODS, merge_slashes=False)
    def static(self, request: Request) -> bytes:
        """The page's scripts, styles and vendored libraries, from the static/ folder."""
        name = "/".join(IKleinRequest(request).branch_segments)
        entry = page.page_assets().static_file(name)
        if entry is None:
            raise NotFound()
        return page.serve_static(request, entry)

    @app.route("/api/v1/snapshot", methods=READ_METHODS)
    def snapshot(self, request: Request) -> bytes:
        """The newest sample; ``?fresh=1`` collects one now (not stored in the history)."""
        params = query_params(request, {"fresh": "1 to collect a snapshot now"})
        if bool_param(params.get("fresh", "0"), "fresh"):
            return json_answer(request, self.monitor.snapshot())
        return json_body(request, self.monitor.latest().encoded)

    @app.route("/api/v1/history", methods=READ_METHODS)
    def history(self, request: Request) -> bytes:
        """The samples of the last ``seconds`` seconds (1 .. history length), oldest first."""
        span = self.monitor.history_seconds
        params = query_params(request, {"seconds": f"1 to {span}"})
        seconds = int_param(params.get("seconds", str(span)), "seconds", 1, span)
        samples = b",".join(s.encoded for s in self.monitor.samples(seconds=seconds))
        return json_body(request, b'{"seconds":%d,"samples":[%s]}' % (seconds, samples))

    @app.route("/metrics", methods=READ_METHODS)
    def metrics(self, request: Request) -> bytes:
        """Prometheus text exposition of the newest sample (no new snapshot is taken)."""
        query_params(request, {})
        body = exposition(SnapshotCollector(self.monitor))
        request.setHeader(b"Content-Type", METRICS_CONTENT_TYPE)
        request.setHeader(b"Cache-Control", b"no-store")
        return body

    @app.route("/api/v1/events", methods=READ_METHODS)
    def events_stream(self, request: Request) -> bytes | Deferred[bytes]:
        """Server-sent events: one ``snapshot`` event per sample (see dashboard/web/sse.py).
        Returns a Deferred that fires when the stream ends; never gzip this route."""
        return self.events.serve(request)

    @app.route("/openapi.json", methods=READ_METHODS)
    def openapi(self, request: Request) -> bytes:
        """The OpenAPI 3.0 description of every endpoint (see dashboard/web/openapi.py)."""
        query_params(request, {})
        return json_body(request, self.openapi_body())

    def openapi_body(self) -> bytes:
        """The OpenAPI document as JSON bytes, built once."""
        if self._openapi is None:
            document = openapi_document(self.monitor.history_seconds)
            self._openapi = json.dumps(document, separators=(",", ":")).encode()
        return self._openapi

    @app.route("/api/", branch=True, methods=READ_METHODS)
    def unknown_api(self, request: Request) -> bytes:
        path = request.path.decode("utf-8", "replace")
        return json_error(request, 404, "not_found", f"no API endpoint at {path[:200]}")

    @app.handle_errors(BadRequest)
    def bad_request(self, request: Request, failure: Failure) -> bytes:
        exc: Any = failure.value
        return json_error(request, 400, "bad_request", exc.message, parameter=exc.parameter)

    @app.handle_errors(NotFound)
    def not_found(self, request: Request, failure: Failure) -> bytes:
        path = request.path.decode("utf-8", "replace")
        return json_error(request, 404, "not_found", f"nothing at {path[:200]}")

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request: Request, failure: Failure) -> bytes:
        exc: Any = failure.value
        allowed = sorted(exc.valid_methods or READ_METHODS)
        request.setHeader(b"Allow", ", ".join(allowed).encode())
        method = request.method.decode("ascii", "replace")
        return json_error(
            request,
            405,
            "method_not_allowed",
            f"{method[:20]} is not allowed here",
            allowed=allowed,
        )

    @app.handle_errors(RequestRedirect)
    def redirect(self, request: Request, failure: Failure) -> bytes:
        """werkzeug's canonical-URL redirects, e.g. ``/_reactor`` -> ``/_reactor/`` when the
        app is mounted with ``putChild`` (the path reaches the app empty)."""
        exc: Any = failure.value
        target = urlsplit(exc.new_url)
        if target.path.encode() == request.path + b"/":
            return page.slash_redirect(request) or b""
        # Any other (e.g. "/api//v1/snapshot" with its slashes merged): a JSON redirect,
        # keeping the query (werkzeug's new URL drops it).
        query = target.query or request.uri.partition(b"?")[2].decode("latin-1")
        location = target.path + (f"?{query}" if query else "")
        request.setHeader(b"Location", location.encode())
        return json_answer(
            request,
            {"status": 308, "location": location, "message": f"moved to {location[:200]}"},
            308,
        )

    @app.handle_errors(Exception)
    def internal_error(self, request: Request, failure: Failure) -> bytes:
        # Never a traceback to the client; the failure is counted where the operator sees it.
        self.monitor.errors.record("web", failure.value or RuntimeError("unknown failure"))
        return json_error(request, 500, "internal_error", "the dashboard failed to answer")
