"""The Klein app over one Monitor. Reads samples only, never probe internals.

Routes are relative to wherever the resource is mounted, so any prefix works.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from klein import Klein
from klein.interfaces import IKleinRequest
from twisted.python.failure import Failure
from twisted.web.server import Request
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from dashboard.recorder import replay_web
from dashboard.web import page
from dashboard.web.bulk_body import stream_body, stream_whole
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
from dashboard.web.profile import profile_answer
from dashboard.web.prometheus import CONTENT_TYPE as METRICS_CONTENT_TYPE
from dashboard.web.prometheus import SnapshotCollector, exposition
from dashboard.web.series import SITES_MAX_S, series_answer, series_cache
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
        route matcher and the OpenAPI document, and start projecting each new sample for
        the series (see dashboard/web/series.py). Otherwise the dashboard's first page
        render stalls the loop it watches (and reads as the program's block)."""
        page.page_assets().prepare()
        self.app.url_map.update()
        self.openapi_body()
        series_cache(self.monitor)

    def replay(self) -> Any:
        """The recording this app replays (``reactor-dashboard replay``: its routes answer
        from the file, see dashboard/recorder/replay_web.py), or None for a live Monitor."""
        return getattr(self.monitor, "replay", None)

    @app.route("/", methods=READ_METHODS)
    def index(self, request: Request) -> bytes:
        """The HTML dashboard, with the newest sample as its initial data."""
        redirect = page.slash_redirect(request)
        if redirect is not None:
            return redirect
        config = page.page_config(self.monitor.history_seconds, self.monitor.interval)
        if (replay := self.replay()) is not None:
            config["replay"] = replay.page_config()
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
    def snapshot(self, request: Request) -> bytes | Deferred[Any]:
        """The newest sample; ``?fresh=1`` collects one now (not stored in the history),
        coalesced: at most one per ``fresh_min_interval_s``, a caller in between waits for
        the next one (see dashboard.answer_limits.FreshSnapshots). Written as the client
        reads it, with ``/metrics`` at most 32 at once (503 beyond; see
        dashboard/web/bulk_body.py)."""
        if (replay := self.replay()) is not None:
            return replay_web.snapshot(request, replay)
        params = query_params(request, {"fresh": "1 to collect a snapshot now"})
        monitor = self.monitor

        def write(body: bytes) -> bytes | Deferred[None]:
            return stream_whole(
                request,
                body,
                answers=monitor.snapshot_answers,
                clock=monitor.reactor,
                on_error=lambda exc: monitor.errors.record("web", exc),
            )

        if bool_param(params.get("fresh", "0"), "fresh"):
            answer = monitor.fresh.get()
            if isinstance(answer, bytes):
                return write(answer)
            return answer.addCallback(write)  # a failed snapshot: internal_error's JSON 500
        return write(monitor.latest().encoded)

    @app.route("/api/v1/history", methods=READ_METHODS)
    def history(self, request: Request) -> bytes | Deferred[None]:
        """The samples of the last ``seconds`` seconds (1 .. history length), oldest first.
        Written as the client reads it, from the stored samples' own bytes; at most
        ``max_history_answers`` at once, 503 beyond (see dashboard/web/bulk_body.py)."""
        if (replay := self.replay()) is not None:
            return replay_web.history(request, replay)
        span = self.monitor.history_seconds
        params = query_params(request, {"seconds": f"1 to {span}"})
        seconds = int_param(params.get("seconds", str(span)), "seconds", 1, span)
        pieces = [b'{"seconds":%d,"samples":[' % seconds]
        for sample in self.monitor.samples(seconds=seconds):
            if len(pieces) > 1:
                pieces.append(b",")
            pieces.append(sample.encoded)
        pieces.append(b"]}")
        return stream_body(
            request,
            pieces,
            answers=self.monitor.history_answers,
            clock=self.monitor.reactor,
            length=sum(len(piece) for piece in pieces),
            on_error=lambda exc: self.monitor.errors.record("web", exc),
        )

    @app.route("/api/v1/series", methods=READ_METHODS)
    def series(self, request: Request) -> bytes | Deferred[None]:
        """The chart figures alone of the last ``seconds`` seconds, oldest first, in the
        snapshot's shape; ``sites_seconds``: the newest also carry ``deferreds.sites``
        (see dashboard/web/series.py). What the page seeds its charts from. Written as the
        client reads it, at most 16 at once (503 beyond), as the history is."""
        if (replay := self.replay()) is not None:
            return replay_web.series(request, replay)
        span = self.monitor.history_seconds
        params = query_params(
            request, {"seconds": f"1 to {span}", "sites_seconds": f"0 to {SITES_MAX_S}"}
        )
        seconds = int_param(params.get("seconds", str(span)), "seconds", 1, span)
        sites_seconds = int_param(params.get("sites_seconds", "0"), "sites_seconds", 0, SITES_MAX_S)
        pieces, length = series_answer(self.monitor, seconds, sites_seconds)
        return stream_body(
            request,
            pieces,
            answers=series_cache(self.monitor).answers,
            clock=self.monitor.reactor,
            length=length,
            on_error=lambda exc: self.monitor.errors.record("web", exc),
        )

    @app.route("/api/v1/profile", methods=READ_METHODS)
    def profile(self, request: Request) -> bytes | Deferred[bytes]:
        """A profile of the reactor thread, answered after ``seconds`` (1-30); one at a time
        (409 while another runs). Sampled and rendered off the reactor thread (see
        dashboard/web/profile.py)."""
        return profile_answer(self.monitor, request)

    @app.route("/metrics", methods=READ_METHODS)
    def metrics(self, request: Request) -> bytes | Deferred[None]:
        """Prometheus text exposition of the newest sample (no new snapshot is taken).
        Written as the client reads it, counted with the snapshot answers (32 at once)."""
        if (replay := self.replay()) is not None:
            return replay_web.metrics(request, replay)
        query_params(request, {})
        body = exposition(SnapshotCollector(self.monitor))
        return stream_whole(
            request,
            body,
            answers=self.monitor.snapshot_answers,
            clock=self.monitor.reactor,
            content_type=METRICS_CONTENT_TYPE,
            on_error=lambda exc: self.monitor.errors.record("web", exc),
        )

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
        app is mounted with ``putChild`` (the path reaches the app empty). Every Location is
        built from the request's path alone, never from werkzeug's URL (which is built from
        ``Host``), and is a path on this site: one leading slash, backslashes escaped."""
        exc: Any = failure.value
        path = request.path
        merged = path
        while b"//" in merged:  # halves every run of slashes: bounded by the path's length
            merged = merged.replace(b"//", b"/")
        if merged == path:
            # Only the trailing slash was missing: "./<last segment>/", relative.
            return page.slash_redirect(request) or b""
        # Any other (e.g. "/api//v1/snapshot" with its slashes merged): a JSON redirect,
        # keeping the query (werkzeug's new URL drops it).
        if str(exc.new_url).endswith("/") and not merged.endswith(b"/"):
            merged += b"/"
        # "/\evil.com" reads as "//evil.com" to a browser, "http:/evil.com" as another site.
        safe = "/%:@!$&'()*+,;=-._~"
        target = "/" + quote(merged.lstrip(b"/"), safe=safe)
        query = quote(request.uri.partition(b"?")[2], safe=safe + "?")
        location = target + (f"?{query}" if query else "")
        if urlsplit(location).netloc or urlsplit(location).scheme:  # never; but never off-site
            location = "/"
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
