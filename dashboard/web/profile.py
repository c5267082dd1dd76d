"""``GET /api/v1/profile?seconds=N[&format=json|collapsed|speedscope]``: a profile of the reactor
thread, answered after ``N`` seconds (1 to :data:`MAX_SECONDS`).

The monitor's :class:`~dashboard.probes.profiler.Profiler` samples on a thread of its own; when
the time is up that thread merges the stacks and renders the body too (see
dashboard/web/profile_formats.py), and hands the bytes to the reactor with
``callFromThread``: the reactor thread only validates the request and writes the answer.
One profile at a time (409 with ``seconds_left`` while another runs). A client that goes away
cancels its profile (Klein cancels the route's Deferred), and ``Monitor.stop()`` ends it with
a 503. ``HEAD`` samples nothing: it says whether a profile could start now (200, or 409).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.web.server import Request

from dashboard.probes.profiler import Profile, ProfileBusy, ProfileRun
from dashboard.web import profile_formats
from dashboard.web.json_api import BadRequest, int_param, json_body, json_error, query_params

if TYPE_CHECKING:
    from dashboard.monitor import Monitor

MAX_SECONDS = 30
#: format name -> (renderer, Content-Type, file name suffix or None for no download)
FORMATS: dict[str, tuple[Callable[[Profile], bytes], bytes, str | None]] = {
    "json": (profile_formats.as_json, b"application/json; charset=utf-8", None),
    "collapsed": (profile_formats.as_collapsed, b"text/plain; charset=utf-8", "collapsed.txt"),
    "speedscope": (
        profile_formats.as_speedscope,
        b"application/json; charset=utf-8",
        "speedscope.json",
    ),
}
PARAMETERS = {
    "seconds": f"how long to sample, 1 to {MAX_SECONDS} (required)",
    "format": "json (default), collapsed (flamegraph.pl) or speedscope",
}


def profile_answer(monitor: Monitor, request: Request) -> bytes | Deferred[bytes]:
    """The route's whole work on the reactor thread: check, begin, and later write."""
    params = query_params(request, PARAMETERS)
    if "seconds" not in params:
        raise BadRequest(f"seconds is required: 1 to {MAX_SECONDS}", "seconds")
    seconds = int_param(params["seconds"], "seconds", 1, MAX_SECONDS)
    name = params.get("format", "json")
    if name not in FORMATS:
        known = ", ".join(FORMATS)
        raise BadRequest(f"format must be one of {known}, got {name[:40]!r}", "format")
    render, content_type, suffix = FORMATS[name]
    if not monitor.running:
        return json_error(request, 503, "not_running", "the monitor is stopped")
    profiler = monitor.profiler
    if request.method == b"HEAD":
        running = profiler.active
        if running is not None:
            return _busy(request, running.seconds_left)
        return _headers(request, content_type, suffix, b"")

    answer: Deferred[bytes] = Deferred(lambda _: _cancel())
    reactor = monitor.reactor
    errors = monitor.errors
    runs: list[ProfileRun] = []

    def _cancel() -> None:
        if runs:
            profiler.cancel(runs[0], timeout_s=0.0)  # it ends within a sample; never wait here

    def finish(profile: Profile | None) -> None:
        """Sampler thread: render, then hand the bytes to the reactor."""
        body: bytes | None = None
        if profile is not None:
            try:
                body = render(profile)
            except Exception as exc:
                errors.record("profile", exc)
        reactor.callFromThread(deliver, body, profile is None)

    def deliver(body: bytes | None, cancelled: bool) -> None:
        """Reactor thread."""
        if answer.called:
            return  # the client went away
        if body is None and cancelled:
            out = json_error(
                request, 503, "profile_stopped", "the monitor stopped before the profile ended"
            )
        elif body is None:
            out = json_error(request, 500, "internal_error", "the profile failed to render")
        else:
            out = _headers(request, content_type, suffix, body)
        answer.callback(out)

    try:
        runs.append(profiler.begin(seconds, finish=finish))
    except ProfileBusy as busy:
        return _busy(request, busy.seconds_left)
    return answer


def _busy(request: Request, seconds_left: float) -> bytes:
    return json_error(
        request,
        409,
        "profile_running",
        f"a profile is already running; it ends in {seconds_left:.1f} s",
        seconds_left=round(seconds_left, 3),
    )


def _headers(request: Request, content_type: bytes, suffix: str | None, body: bytes) -> bytes:
    json_body(request, body)  # status 200, no-store
    request.setHeader(b"Content-Type", content_type)
    if suffix is not None:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        request.setHeader(
            b"Content-Disposition",
            f'attachment; filename="reactor-profile-{stamp}.{suffix}"'.encode(),
        )
    return body


#: ``components/schemas`` of the answers, for dashboard/web/openapi.py.
OPENAPI_SCHEMAS: dict[str, dict[str, object]] = {
    "Profile": {
        "type": "object",
        "required": [
            "seconds",
            "hz_requested",
            "samples",
            "idle_samples",
            "busy_samples",
            "stacks",
            "truncated",
        ],
        "properties": {
            "seconds": {"type": "number"},
            "duration_s": {"type": "number"},
            "hz_requested": {"type": "number"},
            "hz": {"type": "number"},
            "samples": {"type": "integer"},
            "idle_samples": {"type": "integer"},
            "busy_samples": {"type": "integer"},
            "idle_share": {"type": "number", "nullable": True},
            "idle_by": {"type": "string", "enum": ["pulse", "stack"]},
            "stacks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["frames", "count"],
                    "properties": {
                        "frames": {
                            "type": "array",
                            "description": "outermost first, each 'qualname (path.py:DEFLINE)'",
                            "items": {"type": "string"},
                        },
                        "count": {"type": "integer"},
                    },
                },
            },
            "truncated": {
                "type": "object",
                "properties": {
                    "deep_samples": {"type": "integer"},
                    "other_samples": {"type": "integer"},
                    "max_depth": {"type": "integer"},
                    "max_stacks": {"type": "integer"},
                },
            },
            "missed_ticks": {"type": "integer"},
            "missing_samples": {"type": "integer"},
        },
    },
    "Speedscope": {
        "type": "object",
        "description": "https://www.speedscope.app/file-format-schema.json, one sampled profile",
        "required": ["$schema", "shared", "profiles"],
        "properties": {
            "$schema": {"type": "string"},
            "shared": {"type": "object"},
            "profiles": {"type": "array", "items": {"type": "object"}},
        },
    },
}
