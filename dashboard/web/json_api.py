"""JSON answers and errors: every error is a JSON body naming the problem, never HTML."""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from twisted.web.http import RESPONSES
from twisted.web.server import Request

JSON_TYPE = b"application/json; charset=utf-8"


class BadRequest(Exception):
    """A request parameter is wrong; answered with 400 and ``message``."""

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.parameter = parameter


#: RFC 9110/6585 phrases where Twisted's are older ("Request-URI Too Long") or missing
#: (421 and 431: Twisted would print "Unknown Status").
_CURRENT_PHRASES = {
    413: b"Content Too Large",
    414: b"URI Too Long",
    421: b"Misdirected Request",
    431: b"Request Header Fields Too Large",
}


def reason_phrase(status: int) -> bytes:
    """The status line's reason phrase for ``status``: RFC 9110's where Twisted's differs,
    else Twisted's, else the standard library's. Every answer of the dashboard (the guard's,
    the API's, the own port's early refusals) uses this one table."""
    phrase = _CURRENT_PHRASES.get(status) or RESPONSES.get(status)
    if phrase is not None:
        return phrase
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b"Unknown Status"


def json_body(request: Request, body: bytes, status: int = 200) -> bytes:
    """Answer with ``body`` (already JSON-encoded), uncached."""
    request.setResponseCode(status, reason_phrase(status))
    request.setHeader(b"Content-Type", JSON_TYPE)
    request.setHeader(b"Cache-Control", b"no-store")
    return body


def json_answer(request: Request, data: Any, status: int = 200) -> bytes:
    return json_body(request, json.dumps(data, separators=(",", ":")).encode(), status)


def json_error(request: Request, status: int, error: str, message: str, **extra: Any) -> bytes:
    """``{"error": error, "message": message, "status": status, ...}`` with that status."""
    return json_answer(
        request, {"error": error, "message": message, "status": status, **extra}, status
    )


def json_unavailable(
    request: Request, error: str, message: str, retry_after_s: int, **extra: Any
) -> bytes:
    """503 with ``Retry-After: retry_after_s`` and the JSON error (``retry_after_s`` in it
    too): the answer of every bounded resource that is full."""
    request.setHeader(b"Retry-After", b"%d" % retry_after_s)
    return json_error(request, 503, error, message, **extra, retry_after_s=retry_after_s)


def query_params(request: Request, allowed: Mapping[str, str]) -> dict[str, str]:
    """The query parameters as text, one value each; unknown, repeated or undecodable
    ones raise :class:`BadRequest`. ``allowed`` maps each name to its description."""
    args: dict[bytes, list[bytes]] = request.args or {}
    out: dict[str, str] = {}
    for raw_name, values in args.items():
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("query parameter names must be UTF-8") from None
        if name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise BadRequest(f"unknown query parameter {name!r} (accepted: {known})", name)
        if len(values) != 1:
            raise BadRequest(f"query parameter {name!r} given {len(values)} times", name)
        try:
            out[name] = values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"query parameter {name!r} must be UTF-8", name) from None
    return out


def int_param(value: str, name: str, low: int, high: int) -> int:
    """``value`` as a decimal integer within [low, high], or :class:`BadRequest`."""
    if not value.isascii() or not value.isdigit() or len(value) > 12:
        raise BadRequest(
            f"{name} must be an integer from {low} to {high}, got {value[:40]!r}", name
        )
    number = int(value)
    if not low <= number <= high:
        raise BadRequest(f"{name} must be from {low} to {high}, got {number}", name)
    return number


def bool_param(value: str, name: str) -> bool:
    if value in ("1", "true"):
        return True
    if value in ("0", "false"):
        return False
    raise BadRequest(f"{name} must be one of 1, 0, true, false; got {value[:40]!r}", name)
