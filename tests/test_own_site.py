"""The dashboard's own port (``Monitor.listen``, which ``run`` and ``demo`` use), over real
loopback sockets and raw bytes: Twisted's own early refusals (a request head over 16 KiB, one
line over 16 KiB, a malformed request line, bad header lines, bad chunked framing) are JSON
answers naming the problem, with the security headers and ``Connection: close``; and no answer
on that port names Twisted or its version in ``Server:``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import threads

from dashboard.monitor import Monitor
from dashboard.testing import global_reactor
from dashboard.web.guard import SECURITY_HEADERS, SERVER_NAME
from dashboard.web.quiet_site import MAX_BODY_BYTES, MAX_HEAD_BYTES, QuietChannel

TOKEN = "own-site-token-0123456789abcdef"
HOST = "Host: 127.0.0.1"


@attrs.frozen
class Answer:
    """One HTTP answer read off a raw socket."""

    status: int
    reason: str
    headers: dict[str, str]  # lower-case names, last value
    body: bytes
    raw: bytes


def parse_answers(data: bytes) -> list[Answer]:
    """Every answer in ``data``; each must have a Content-Length (all the ones here do)."""
    answers = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        _, status, reason = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        answers.append(Answer(int(status), reason, headers, rest[:length], data))
        data = rest[length:]
    return answers


def exchange(port: int, data: bytes) -> tuple[bytes, bool]:
    """Send ``data`` and read until the server closes (or 10 s pass): the bytes read, and
    whether the server closed the connection. Runs in a thread."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            return received, False
    return received, True


@pytest_twisted.async_yield_fixture
async def dashboard_port() -> AsyncIterator[int]:
    """The dashboard served on its own loopback port, with a token (the refusals here come
    before the guard: they must not depend on it)."""
    monitor = Monitor(global_reactor(), interval=0.2, history=20, token=TOKEN)
    monitor.start()
    port: Any = await monitor.listen(0)
    try:
        yield port.getHost().port
    finally:
        await port.stopListening()
        monitor.stop()


def request(first_line: str, *headers: str, body: bytes = b"") -> bytes:
    return ("\r\n".join([first_line, HOST, *headers]) + "\r\n\r\n").encode() + body


# Twisted reads at most MAX_HEAD_BYTES of head; 20 lines of 1,000 bytes are over it.
EARLY_REFUSALS = {
    "a head over 16 KiB": (
        request("GET /api/v1/snapshot HTTP/1.1", *[f"X-{i}: {'a' * 1000}" for i in range(20)]),
        431,
        "request_head_too_large",
        f"the request head is over {MAX_HEAD_BYTES} bytes",
    ),
    "a request line over 16 KiB": (
        request(f"GET /{'a' * (MAX_HEAD_BYTES + 100)} HTTP/1.1"),
        414,
        "uri_too_long",
        f"the request line is over {MAX_HEAD_BYTES} bytes",
    ),
    "a header line over 16 KiB": (
        request("GET / HTTP/1.1", f"X-Big: {'b' * (MAX_HEAD_BYTES + 100)}"),
        431,
        "header_too_large",
        f"a header line is over {MAX_HEAD_BYTES} bytes",
    ),
    "over 500 header lines": (
        request("GET / HTTP/1.1", *[f"X-{i}: 1" for i in range(QuietChannel.maxHeaders + 1)]),
        431,
        "too_many_headers",
        f"the request has over {QuietChannel.maxHeaders} header lines",
    ),
    "a request line without a version": (
        request("GET /"),
        400,
        "bad_request_line",
        "the request line is not 'METHOD target HTTP/1.1' (or HTTP/1.0)",
    ),
    "an HTTP/2.0 request line": (
        request("GET / HTTP/2.0"),
        400,
        "bad_request_line",
        "the request line is not 'METHOD target HTTP/1.1' (or HTTP/1.0)",
    ),
    "a header line without a colon": (
        request("GET / HTTP/1.1", "NoColonHere"),
        400,
        "bad_header",
        "a header line has no ':'",
    ),
    "a header name that is not a token": (
        request("GET / HTTP/1.1", "Bad Name: 1"),
        400,
        "bad_header",
        "the header name 'Bad Name' is not a token",
    ),
    "a Content-Length that is not a number": (
        request("POST / HTTP/1.1", "Content-Length: x"),
        400,
        "bad_header",
        "Content-Length is malformed or not supported, or the request has two framing headers"
        " (Content-Length, Transfer-Encoding)",
    ),
    "two Content-Lengths": (
        request("POST / HTTP/1.1", "Content-Length: 1", "Content-Length: 1", body=b"x"),
        400,
        "bad_header",
        "Content-Length is malformed or not supported, or the request has two framing headers"
        " (Content-Length, Transfer-Encoding)",
    ),
    "a Content-Length over the body limit (before any body byte)": (
        request("POST /api/v1/snapshot HTTP/1.1", f"Content-Length: {MAX_BODY_BYTES + 1}"),
        413,
        "body_too_large",
        f"the request body is over {MAX_BODY_BYTES} bytes",
    ),
    "chunks over the body limit": (
        request(
            "POST /api/v1/snapshot HTTP/1.1",
            "Transfer-Encoding: chunked",
            # The whole body and a request after it: neither is served.
            body=b"%x\r\n" % (MAX_BODY_BYTES + 1)
            + b"c" * (MAX_BODY_BYTES + 1)
            + b"\r\n0\r\n\r\n"
            + request("GET /api/v1/snapshot HTTP/1.1"),
        ),
        413,
        "body_too_large",
        f"the request body is over {MAX_BODY_BYTES} bytes",
    ),
    "malformed chunked framing": (
        request("POST / HTTP/1.1", "Transfer-Encoding: chunked", body=b"zz\r\n"),
        400,
        "bad_body",
        "the request body's chunked framing is malformed",
    ),
}


def assert_the_dashboards_headers(answer: Answer) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert answer.headers[name.decode().lower()] == value.decode(), name
    assert answer.headers["server"] == SERVER_NAME.decode()
    assert b"twisted" not in answer.raw.lower()


@pytest.mark.parametrize("case", list(EARLY_REFUSALS))
@pytest_twisted.ensureDeferred
async def test_twisteds_own_refusals_are_json_with_the_security_headers(
    dashboard_port: int, case: str
) -> None:
    data, status, error, message = EARLY_REFUSALS[case]
    received, closed = await threads.deferToThread(exchange, dashboard_port, data)
    assert closed, received[:300]
    [answer] = parse_answers(received)
    assert (answer.status, answer.reason) == (
        status,
        {
            400: "Bad Request",
            413: "Content Too Large",
            414: "URI Too Long",
            431: "Request Header Fields Too Large",
        }[status],
    )
    assert json.loads(answer.body) == {"error": error, "message": message, "status": status}
    assert answer.headers["content-type"] == "application/json; charset=utf-8"
    assert answer.headers["connection"] == "close"
    assert answer.headers["cache-control"] == "no-store"
    assert_the_dashboards_headers(answer)


@pytest_twisted.ensureDeferred
async def test_a_refusal_after_an_answer_on_the_same_connection(dashboard_port: int) -> None:
    """A keep-alive connection: a well-formed request (401 without the token), then a
    malformed request line, which is read as a request line again, not as a header."""
    data = request("GET /api/v1/snapshot HTTP/1.1") + b"GET /\r\n\r\n"
    received, closed = await threads.deferToThread(exchange, dashboard_port, data)
    assert closed
    first, second = parse_answers(received)
    assert first.status == 401 and json.loads(first.body)["error"] == "unauthorized"
    assert second.status == 400 and json.loads(second.body)["error"] == "bad_request_line"
    assert_the_dashboards_headers(first)
    assert_the_dashboards_headers(second)


@pytest_twisted.ensureDeferred
async def test_a_body_within_the_limit_reaches_the_dashboard(dashboard_port: int) -> None:
    """Bodies up to the limit, by length or in chunks, are read and the request served (the
    guard then refuses POST: the dashboard reads no body)."""
    bearer = f"Authorization: Bearer {TOKEN}"
    body = b"x" * MAX_BODY_BYTES
    by_length = request(
        "POST /api/v1/snapshot HTTP/1.1", bearer, f"Content-Length: {len(body)}", body=body
    )
    half = MAX_BODY_BYTES // 2 - 16  # two chunks and their framing within the limit
    chunked = request(
        "POST /api/v1/snapshot HTTP/1.1",
        bearer,
        "Transfer-Encoding: chunked",
        body=(b"%x\r\n" % half + b"y" * half + b"\r\n") * 2 + b"0\r\n\r\n",
    )
    closing = request("GET /api/v1/snapshot HTTP/1.1", "Connection: close")  # 401: a length
    received, closed = await threads.deferToThread(
        exchange, dashboard_port, by_length + chunked + closing
    )
    assert closed
    answers = parse_answers(received)
    assert [a.status for a in answers] == [405, 405, 401], received[:400]
    assert json.loads(answers[0].body)["error"] == "method_not_allowed"
    assert json.loads(answers[1].body)["error"] == "method_not_allowed"


@pytest_twisted.ensureDeferred
async def test_no_answer_on_the_dashboards_port_names_twisted(dashboard_port: int) -> None:
    bearer = f"Authorization: Bearer {TOKEN}"
    cases = [
        (request("GET /api/v1/snapshot HTTP/1.0", bearer), 200),
        (request("GET /openapi.json HTTP/1.0", bearer), 200),
        (request("GET /api/v1/snapshot HTTP/1.0"), 401),
        (request("GET /no/such/page HTTP/1.0", bearer), 404),
        (request("GET /api/v1/snapshot HTTP/1.0", bearer, "Host: evil.example"), 421),
        # Twisted answers OPTIONS * itself, past every resource (and so past the guard).
        (request("OPTIONS * HTTP/1.0"), 200),
        (request("GET * HTTP/1.0"), 405),
    ]
    for data, status in cases:
        received, closed = await threads.deferToThread(exchange, dashboard_port, data)
        assert closed  # HTTP/1.0: one answer, then the server closes
        head = received.partition(b"\r\n\r\n")[0]
        lines = head.decode("latin-1").split("\r\n")
        assert int(lines[0].split()[1]) == status, (data[:60], lines[0])
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
        assert headers["server"] == "reactor-dashboard"
        for name, value in SECURITY_HEADERS.items():
            assert headers[name.decode().lower()] == value.decode(), (data[:60], name)
        assert b"twisted" not in head.lower()
