"""The Site that serves the dashboard on its own port: quiet in the host's log, and careful in
the answers Twisted would otherwise write itself.

Twisted's ``HTTPChannel`` refuses some requests before any resource sees them, with a bare
``HTTP/1.1 400 Bad Request`` and no header at all: a request head over 16 KiB, a malformed
request line, a bad header line (no colon, an invalid name, a control character in a value,
a bad ``Content-Length`` or ``Transfer-Encoding``), over 500 header lines, malformed chunked
framing; and a single line over 16 KiB is not answered at all (the connection just closes).
:class:`QuietChannel` answers each of these with a JSON body naming the problem, the right
status (400, 414 or 431), :data:`~dashboard.web.guard.SECURITY_HEADERS` and ``Connection:
close``, then closes the connection as Twisted does.

It also refuses a request body over :data:`MAX_BODY_BYTES` (413), as soon as its
``Content-Length`` says so or its chunks pass it: no route of the dashboard reads a body, and
Twisted would otherwise keep any body whole (in a temporary file past 100 kB) before a resource
could refuse it.

On every answer it writes, the channel sets ``Server: reactor-dashboard`` (Twisted's own value
names its version) and adds any of the security headers that are missing (``OPTIONS *`` is
answered by Twisted without reaching the guard).

Everything here runs on the reactor thread.
"""

from __future__ import annotations

import json
import re
from typing import Any

from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol
from twisted.web.http_headers import Headers
from twisted.web.server import Request, Site

from dashboard.web.guard import SECURITY_HEADERS, SERVER_NAME
from dashboard.web.json_api import reason_phrase

#: Longest request head Twisted reads (request line and header lines, without line ends),
#: bytes; also its longest single line.
MAX_HEAD_BYTES = HTTPChannel.totalHeadersSize
#: Largest request body read, bytes (chunked: counted decoded).
MAX_BODY_BYTES = 65536

# RFC 9110's field-name: a token.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FRAMING_HEADERS = (b"content-length", b"transfer-encoding")


def header_problem(line: bytes) -> str:
    """What is wrong with a header line Twisted refused (for the answer's ``message``)."""
    name, colon, value = line.partition(b":")
    if not colon:
        return "a header line has no ':'"
    shown = name.decode("latin-1")[:40]
    if not _TOKEN.fullmatch(name):
        return f"the header name {shown!r} is not a token"
    if name.lower() in _FRAMING_HEADERS:
        return (
            f"{shown} is malformed or not supported, or the request has two framing headers"
            " (Content-Length, Transfer-Encoding)"
        )
    if any(byte in value for byte in b"\x00\r\n"):
        return f"the header {shown!r} has a NUL, CR or LF in its value"
    return f"the header {shown!r} was refused"


class QuietChannel(HTTPChannel):
    """An ``HTTPChannel`` whose own refusals are JSON answers with the security headers, and
    whose every answer says ``Server: reactor-dashboard``. Reactor thread only."""

    #: What the channel was reading when Twisted found a problem: the request line, a header
    #: line, the body, or a whole request (a malformed form body).
    _reading = "request line"
    #: The header line Twisted was checking (it checks each one when the next one arrives).
    _header_line = b""
    #: Set once this channel has answered a refusal: nothing more is read or served.
    _refused = False

    # reading -----------------------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        # HTTPChannel sets _command once the request line parsed, and deletes it when the
        # request is complete.
        self._reading = "header" if "_command" in self.__dict__ else "request line"
        super().lineReceived(line)  # type: ignore[no-untyped-call]

    def headerReceived(self, line: bytes) -> bool:
        self._header_line = line
        ok: bool = super().headerReceived(line)  # type: ignore[no-untyped-call]
        return ok

    def allHeadersReceived(self) -> None:
        if self.length is not None and self.length > MAX_BODY_BYTES:
            self.refuse_body()
            return
        super().allHeadersReceived()  # type: ignore[no-untyped-call]

    def rawDataReceived(self, data: bytes) -> None:
        if not self._handlingRequest:  # a body (not a later request, buffered meanwhile)
            self._reading = "body"
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if self._refused:  # the rest of a body already refused: never served
            return
        self._reading = "request"
        super().allContentReceived()  # type: ignore[no-untyped-call]

    # refusing ---------------------------------------------------------------------------

    def lineLengthExceeded(self, line: bytes) -> None:
        """A line over :data:`MAX_HEAD_BYTES` (LineReceiver's own limit, which would close the
        connection without a word)."""
        if "_command" in self.__dict__:
            self._refuse(431, "header_too_large", f"a header line is over {MAX_HEAD_BYTES} bytes")
        else:
            self._refuse(414, "uri_too_long", f"the request line is over {MAX_HEAD_BYTES} bytes")

    def refuse_body(self) -> None:
        """413: the request's body is over :data:`MAX_BODY_BYTES`."""
        self._refuse(413, "body_too_large", f"the request body is over {MAX_BODY_BYTES} bytes")

    def _respondToBadRequestAndDisconnect(self) -> None:
        """Twisted's own refusal (a bare ``400`` and nothing else), answered properly."""
        self._refuse(*self._problem())

    def _problem(self) -> tuple[int, str, str]:
        """The status, error code and message for the request Twisted just refused."""
        if self._receivedHeaderSize > self.totalHeadersSize:
            return 431, "request_head_too_large", f"the request head is over {MAX_HEAD_BYTES} bytes"
        if self._receivedHeaderCount > self.maxHeaders:
            return 431, "too_many_headers", f"the request has over {self.maxHeaders} header lines"
        if self._reading == "request line":
            return (
                400,
                "bad_request_line",
                "the request line is not 'METHOD target HTTP/1.1' (or HTTP/1.0)",
            )
        if self._reading == "header":
            return 400, "bad_header", header_problem(self._header_line)
        if self._reading == "body":
            return 400, "bad_body", "the request body's chunked framing is malformed"
        return 400, "bad_request", "the request body is malformed"

    def _refuse(self, status: int, error: str, message: str) -> None:
        """Answer ``status`` with a JSON body, then close the connection (once)."""
        transport: Any = self.transport
        if self._refused or transport is None or transport.disconnecting:
            return
        self._refused = True
        body = json.dumps(
            {"error": error, "message": message, "status": status}, separators=(",", ":")
        ).encode()
        headers = Headers()
        headers.setRawHeaders(b"Content-Type", [b"application/json; charset=utf-8"])
        headers.setRawHeaders(b"Cache-Control", [b"no-store"])
        headers.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
        headers.setRawHeaders(b"Connection", [b"close"])
        self.writeHeaders(b"HTTP/1.1", b"%d" % status, reason_phrase(status), headers)
        transport.write(body)
        self.loseConnection()

    # writing ----------------------------------------------------------------------------

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        if not isinstance(headers, Headers):  # an iterable of pairs, as Twisted still allows
            pairs = headers
            headers = Headers()
            for name, value in pairs:
                headers.addRawHeader(name, value)
        headers.setRawHeaders(b"Server", [SERVER_NAME])
        for name, value in SECURITY_HEADERS.items():
            if not headers.hasHeader(name):
                headers.setRawHeaders(name, [value])
        super().writeHeaders(version, code, reason, headers)  # type: ignore[no-untyped-call]


class QuietRequest(Request):
    """A ``Request`` that counts its body as it arrives (decoded) and has its channel refuse
    it past :data:`MAX_BODY_BYTES`, before Twisted stores more of it."""

    _body_bytes = 0

    def handleContentChunk(self, data: bytes) -> None:
        self._body_bytes += len(data)
        if self._body_bytes > MAX_BODY_BYTES:
            refuse = getattr(self.channel, "refuse_body", None)
            if refuse is not None:  # (a plain HTTPChannel has none: Twisted keeps the body)
                refuse()
                return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]


class QuietSite(Site):
    """A ``Site`` that writes no access-log line per request (a dashboard polled every second
    would flood the watched program's log), never shows tracebacks, and speaks through
    :class:`QuietChannel`."""

    noisy = False
    displayTracebacks = False
    requestFactory = QuietRequest

    def protocol(self) -> _GenericHTTPChannelProtocol:
        # As HTTPFactory's own factory does, around our channel: twisted.web's HTTP/1-or-2
        # switch, which the connection probes look through.
        return _GenericHTTPChannelProtocol(QuietChannel())

    def log(self, request: Any) -> None:
        return None
