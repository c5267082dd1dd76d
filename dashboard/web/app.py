"""The Klein app over one Monitor. Reads samples only, never probe internals.

Routes are relative to wherever the resource is mounted, so any prefix works.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from klein import Klein
from twisted.python.failure import Failure
from twisted.web.server import Request
from werkzeug.exceptions import MethodNotAllowed, NotFound

from dashboard.web.json_api import (
    BadRequest,
    bool_param,
    int_param,
    json_answer,
    json_body,
    json_error,
    query_params,
)

if TYPE_CHECKING:
    from dashboard.monitor import Monitor

READ_METHODS = ["GET", "HEAD"]


class DashboardApp:
    """HTTP face of a Monitor: ``monitor.resource()`` is this app's resource."""

    app = Klein()

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    @app.route("/", methods=READ_METHODS)
    def index(self, request: Request) -> bytes:
        # The HTML page comes with the web issue; until then the root serves the JSON.
        return self.snapshot(request)

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

    @app.handle_errors(Exception)
    def internal_error(self, request: Request, failure: Failure) -> bytes:
        # Never a traceback to the client; the failure is counted where the operator sees it.
        self.monitor.errors.record("web", failure.value or RuntimeError("unknown failure"))
        return json_error(request, 500, "internal_error", "the dashboard failed to answer")
