"""One HTTP request read by the stuck server's thread, and its answer, worked out without
Twisted: the request head parsed, the guard's checks applied (the same functions as on the
reactor path, :mod:`dashboard.web.guard`), and the whole answer built as bytes.

Only two paths are answered here, ``api/v1/snapshot`` and ``metrics`` (below the dashboard's
mount point); :func:`parse_head` returns ``None`` for anything else, or for a head it cannot
read, and the connection is handed back to the reactor, which answers it once it runs again.

Pure functions of their arguments, but for reading the monitor's newest sample and the loop's
live stack (both safe from any thread): the stuck server's thread calls them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import attrs
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from twisted.web.http import parse_qs

from dashboard.web.guard import (
    SECURITY_HEADERS,
    SERVER_NAME,
    GuardedResource,
    Refusal,
    host_refusal,
    limits_refusal,
    method_refusal,
)
from dashboard.web.json_api import JSON_TYPE, BadRequest, bool_param, query_params, reason_phrase
from dashboard.web.prometheus import CONTENT_TYPE as METRICS_TYPE

if TYPE_CHECKING:
    from twisted.web.server import Request

    from dashboard.probes.base import JSONDict

#: The paths answered while the loop is stuck, below the dashboard's mount point.
SNAPSHOT_PATH = (b"api", b"v1", b"snapshot")
METRICS_PATH = (b"metrics",)
ANSWERED_PATHS = (SNAPSHOT_PATH, METRICS_PATH)

_HEADER_NAME = re.compile(rb"\A[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


@attrs.frozen
class StuckRequest:
    """The parts of a request the checks and the answer read. ``postpath``: the path below
    the dashboard's mount point, as segments; ``headers``: raw ``(lowercased name, values)``."""

    method: bytes
    uri: bytes
    clientproto: bytes
    postpath: tuple[bytes, ...]
    query: bytes
    headers: dict[bytes, list[bytes]]

    def header(self, name: bytes) -> bytes | None:
        """The header ``name`` as Twisted's ``getHeader`` reads it: the last one sent."""
        values = self.headers.get(name)
        return values[-1] if values else None

    def cookie(self, name: bytes) -> bytes | None:
        """The value of cookie ``name`` as Twisted reads it (``Request.parseCookies``): the
        last one sent wins, names are stripped on the left only."""
        found = None
        for line in self.headers.get(b"cookie", []):
            for part in line.split(b";"):
                key, sep, value = part.lstrip().partition(b"=")
                if sep and key == name:
                    found = value
        return found


def head_end(data: bytes) -> int:
    """Where the request head in ``data`` ends (past its first blank line, ``\r\n\r\n`` or
    ``\n\n``, whichever comes first), or -1 while incomplete."""
    ends = [at + len(mark) for mark in (b"\r\n\r\n", b"\n\n") if (at := data.find(mark)) >= 0]
    return min(ends, default=-1)


def parse_head(head: bytes, prefix: tuple[bytes, ...] = ()) -> StuckRequest | None:
    """The request in ``head`` (the bytes up to its blank line) when it asks for one of the
    :data:`ANSWERED_PATHS` below ``prefix``; ``None`` for any other path or any head this
    does not read plainly (the reactor reads it later, and answers as it always does)."""
    lines = head.split(b"\n")
    parts = lines[0].rstrip(b"\r").split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return None
    method, uri, clientproto = parts
    if not uri.startswith(b"/"):
        return None
    path, _, query = uri.partition(b"?")
    segments = tuple(path[1:].split(b"/"))
    if segments[: len(prefix)] != prefix or segments[len(prefix) :] not in ANSWERED_PATHS:
        return None
    headers: dict[bytes, list[bytes]] = {}
    for raw in lines[1:]:
        line = raw.rstrip(b"\r")
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not _HEADER_NAME.match(name):
            return None  # the reactor's 400
        headers.setdefault(name.lower(), []).append(value.strip(b" \t"))
    return StuckRequest(
        method=method,
        uri=uri,
        clientproto=clientproto,
        postpath=segments[len(prefix) :],
        query=query,
        headers=headers,
    )


@attrs.frozen
class Answer:
    """A whole answer: status, headers (besides the ones every answer gets) and body."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    #: the error's name, for a refusal
    error: str | None = None

    def encode(self, *, head_only: bool = False) -> bytes:
        """The answer on the wire, ``Connection: close``: the thread answers one request per
        connection."""
        lines = [b"HTTP/1.1 %d %s" % (self.status, reason_phrase(self.status))]
        headers = [
            *SECURITY_HEADERS.items(),
            (b"Server", SERVER_NAME),
            (b"Cache-Control", b"no-store"),
            *self.headers,
            (b"Content-Length", b"%d" % len(self.body)),
            (b"Connection", b"close"),
        ]
        lines.extend(name + b": " + value for name, value in headers)
        return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head_only else self.body)


def error_answer(
    status: int,
    error: str,
    message: str,
    extra: Mapping[str, Any] | None = None,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> Answer:
    """The JSON error body of :func:`dashboard.web.json_api.json_error`, as an answer."""
    body = {"error": error, "message": message, "status": status, **(extra or {})}
    encoded = json.dumps(body, separators=(",", ":")).encode()
    return Answer(status, ((b"Content-Type", JSON_TYPE), *headers), encoded, error)


def _refused(refusal: Refusal) -> Answer:
    return error_answer(
        refusal.status, refusal.error, refusal.message, refusal.extra, refusal.headers
    )


def _args(query: bytes) -> dict[bytes, list[bytes]]:
    """The query's parameters exactly as Twisted reads them (``Request.requestReceived``:
    ``parse_qs(query, 1)``, which drops an item without ``=``)."""
    return cast("dict[bytes, list[bytes]]", parse_qs(query, 1))


def answer(
    request: StuckRequest,
    *,
    guard: GuardedResource,
    arrived_on: str | None,
    newest: Callable[[], bytes | None],
    stuck_now: Callable[[], JSONDict | None],
    families: Callable[[JSONDict], list[Metric]],
) -> Answer | None:
    """The answer to ``request``, checked as the reactor path checks it (size limits, Host,
    method, token or session cookie, query parameters); ``None`` when only the reactor can
    answer it (``?fresh=1`` asks for a snapshot taken after the request; before the first
    sample there is nothing to serve): the connection is handed back and waits for the loop.
    ``arrived_on``: the local address the connection came to; ``newest()``: the newest
    sample's JSON bytes (``None`` before the first); ``stuck_now()``: ``loop.stuck``;
    ``families(data)``: the metric families of a snapshot. Any thread."""
    refusal = limits_refusal(request.uri, request.headers.items())
    if refusal is None:
        hosts = request.headers.get(b"host", [])
        refusal = host_refusal(hosts, request.clientproto, arrived_on, guard.hosts)
    if refusal is None:
        refusal = method_refusal(request.method)
    if refusal is None:
        cookie_name = guard.cookie_name
        cookie = request.cookie(cookie_name) if cookie_name is not None else None
        refusal = guard.access_check(
            list(request.postpath), request.header(b"authorization"), cookie
        )[0]
    if refusal is not None:
        return _refused(refusal)
    is_snapshot = request.postpath == SNAPSHOT_PATH
    try:
        allowed = {"fresh": "1 to collect a snapshot now"} if is_snapshot else {}
        params = query_params(cast("Request", SimpleNamespace(args=_args(request.query))), allowed)
        fresh = bool_param(params.get("fresh", "0"), "fresh")
    except BadRequest as exc:
        return error_answer(400, "bad_request", exc.message, {"parameter": exc.parameter})
    encoded = newest()
    if fresh or encoded is None:
        return None
    data: JSONDict = json.loads(encoded)
    loop = data.get("loop")
    if isinstance(loop, dict):
        loop["stuck"] = stuck_now()
    if is_snapshot:
        body = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
        return Answer(200, ((b"Content-Type", JSON_TYPE),), body)
    return Answer(
        200, ((b"Content-Type", METRICS_TYPE),), generate_latest(_Families(families(data)))
    )


class _Families:
    """Metric families already made, as the registry ``generate_latest`` reads."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families
