"""The front door (dashboard/web/guard.py): size limits, the Host allow-list, tokens and the
safety headers on every answer. In memory (StubTreq over the real Klein resource) for the
rules; on real loopback sockets for the limits and the stream."""

from __future__ import annotations

import hmac
import json
import socket
from collections.abc import AsyncIterator, Iterator
from http.cookies import SimpleCookie
from typing import Any, cast

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet import threads
from twisted.internet.testing import MemoryReactorClock
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from dashboard.monitor import Monitor
from dashboard.testing import global_reactor, result_of
from dashboard.web.app import DashboardApp
from dashboard.web.guard import (
    CONTENT_SECURITY_POLICY,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_URI_BYTES,
    SECURITY_HEADERS,
    GuardedResource,
    check_token,
    cookie_path,
    exposed_interface,
    generate_token,
    warn_if_exposed,
)
from dashboard.web.host_check import HostAllowList, is_same_origin, split_host
from dashboard.web.page import PAGE_POLICY

TOKEN = "t0ken-for-tests-0123456789abcdef"
METRICS_TOKEN = "scraper-token-0123456789abcdef"
BASE = "http://127.0.0.1:8089"


class Answer:
    def __init__(self, code: int, headers: Any, body: bytes) -> None:
        self.code = code
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[-1] if values else None

    def json(self) -> Any:
        assert self.header("content-type") == "application/json; charset=utf-8", self.header(
            "content-type"
        )
        return json.loads(self.body)


class Client:
    """StubTreq over a guarded dashboard; redirects are not followed, cookies are sent only
    when given (a fresh StubTreq, so a fresh cookie jar, per request)."""

    def __init__(self, resource: Any) -> None:
        self.resource = resource

    def get(self, url: str, headers: dict[str, Any] | None = None, method: str = "GET") -> Answer:
        stub: Any = StubTreq(self.resource)
        d = stub.request(method, url, headers=headers or {}, allow_redirects=False)
        stub.flush()
        response = result_of(d)
        body = result_of(stub.content(response))
        return Answer(response.code, response.headers, body)


@pytest.fixture
def monitor() -> Iterator[Monitor]:
    clock = MemoryReactorClock()
    m = Monitor(clock, interval=1.0, history=30)
    m.sample()
    yield m


def guarded(monitor: Monitor, **options: Any) -> GuardedResource:
    inner: Any = DashboardApp(monitor).app.resource()
    return GuardedResource(inner, **options)


def bearer(token: str) -> dict[str, Any]:
    return {"Authorization": [f"Bearer {token}"]}


def assert_safety_headers(answer: Answer) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert answer.headers.getRawHeaders(name.decode()) == [value.decode()], name


# headers -------------------------------------------------------------------------------


def test_the_policy_is_the_pages_and_forbids_inline_script_other_origins_and_framing() -> None:
    assert CONTENT_SECURITY_POLICY == PAGE_POLICY
    policy = dict(
        (d.split()[0], d.split()[1:]) for d in CONTENT_SECURITY_POLICY.decode().split("; ")
    )
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"]  # no 'unsafe-inline', no host
    assert policy["connect-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert SECURITY_HEADERS[b"X-Frame-Options"] == b"DENY"


@pytest.mark.parametrize(
    ("path", "method", "status"),
    [
        ("/", "GET", 200),
        ("/static/js/main.js", "GET", 200),
        ("/static/nope.js", "GET", 404),
        ("/api/v1/snapshot", "GET", 200),
        ("/api/v1/snapshot", "HEAD", 200),
        ("/api/v1/snapshot?fresh=maybe", "GET", 400),
        ("/api/v1/snapshot", "POST", 405),
        ("/api/v1/nope", "GET", 404),
        ("/metrics", "GET", 200),
    ],
)
def test_every_answer_carries_the_safety_headers(
    monitor: Monitor, path: str, method: str, status: int
) -> None:
    answer = Client(guarded(monitor)).get(BASE + path, method=method)
    assert answer.code == status
    assert_safety_headers(answer)


def test_refusals_carry_the_safety_headers_too(monitor: Monitor) -> None:
    client = Client(guarded(monitor, token=TOKEN))
    for url, headers, status in [
        (BASE + "/api/v1/snapshot", {}, 401),
        ("http://evil.example:8089/api/v1/snapshot", bearer(TOKEN), 421),
        (BASE + "/api/v1/snapshot?" + "x" * MAX_URI_BYTES, bearer(TOKEN), 414),
    ]:
        answer = client.get(url, headers)
        assert answer.code == status
        assert_safety_headers(answer)


# the Host allow-list --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("127.0.0.1:8089", "127.0.0.1"),
        ("LOCALHOST", "localhost"),
        ("localhost.:80", "localhost"),
        ("[::1]:8089", "::1"),
        ("[::1]", "::1"),
        ("example.com", "example.com"),
        ("", None),
        (":80", None),
        ("host:", None),
        ("host:8x", None),
        ("host:1234567", None),
        ("::1", None),  # IPv6 must be bracketed
        ("[::1", None),
        ("[::1]x", None),
    ],
)
def test_split_host(header: str, host: str | None) -> None:
    assert split_host(header) == host


@pytest.mark.parametrize(
    ("header", "arrived_on", "extra", "allowed"),
    [
        (b"127.0.0.1:8089", "127.0.0.1", (), True),
        (b"127.9.9.9", "127.0.0.1", (), True),
        (b"localhost:1", "127.0.0.1", (), True),
        (b"dash.localhost", "127.0.0.1", (), True),
        (b"[::1]:8089", "::1", (), True),
        (None, "127.0.0.1", (), True),  # HTTP/1.0 without Host: nothing to rebind
        (b"10.1.2.3:8089", "10.1.2.3", (), True),  # the address it arrived on
        (b"[fd00::5]:8089", "fd00::5", (), True),
        (b"10.1.2.4:8089", "10.1.2.3", (), False),
        (b"attacker.example", "127.0.0.1", (), False),
        (b"attacker.example:8089", "127.0.0.1", (), False),
        (b"localhost.attacker.example", "127.0.0.1", (), False),
        (b"127.0.0.1.attacker.example", "127.0.0.1", (), False),
        (b"", "127.0.0.1", (), False),
        (b"dash.internal:443", "10.0.0.1", ("Dash.Internal",), True),
        (b"other.internal", "10.0.0.1", ("dash.internal",), False),
        (b"anything.example", "10.0.0.1", ("*",), True),
    ],
)
def test_host_allow_list(
    header: bytes | None, arrived_on: str, extra: tuple[str, ...], allowed: bool
) -> None:
    assert HostAllowList(extra).allows(header, arrived_on) is allowed


def test_a_single_allowed_host_is_one_name() -> None:
    allow = HostAllowList("dash.internal")
    assert allow.names == frozenset({"dash.internal"})
    with pytest.raises(ValueError, match="not a host name"):
        HostAllowList(["bad host:x"])


def test_a_rebinding_host_gets_421_json_and_nothing_else(monitor: Monitor) -> None:
    resource = guarded(monitor)
    answer = Client(resource).get("http://attacker.example:8089/api/v1/snapshot")
    assert answer.code == 421
    error = answer.json()
    assert error["error"] == "host_not_allowed" and "attacker.example" in error["message"]
    assert "seq" not in error
    assert resource.refused == {"host_not_allowed": 1}

    # Allowed by name, it is served.
    answer = Client(guarded(monitor, allowed_hosts=["attacker.example"])).get(
        "http://attacker.example:8089/api/v1/snapshot"
    )
    assert answer.code == 200 and answer.json()["seq"] >= 1


# tokens ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "message"),
    [("short", "at least 16"), ("x" * 20 + " y", "letters, digits"), ("é" * 20, "letters")],
)
def test_bad_tokens_are_refused_up_front(token: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_token(token)


def test_generated_tokens_are_valid_and_distinct() -> None:
    tokens = {generate_token() for _ in range(20)}
    assert len(tokens) == 20
    for token in tokens:
        assert check_token(token) == token.encode()


@pytest.mark.parametrize(
    "path", ["/", "/api/v1/snapshot", "/api/v1/history", "/api/v1/events", "/static/js/main.js"]
)
def test_without_the_token_every_path_gets_401_json(monitor: Monitor, path: str) -> None:
    for headers in ({}, bearer("wrong-token-0123456789abc"), {"Authorization": [TOKEN]}):
        answer = Client(guarded(monitor, token=TOKEN)).get(BASE + path, headers)
        assert answer.code == 401, (path, headers)
        assert answer.header("www-authenticate") == 'Bearer realm="reactor-dashboard"'
        assert answer.json()["error"] == "unauthorized"


def test_the_api_takes_a_bearer_token(monitor: Monitor) -> None:
    client = Client(guarded(monitor, token=TOKEN))
    answer = client.get(BASE + "/api/v1/snapshot", bearer(TOKEN))
    assert answer.code == 200 and answer.json()["seq"] >= 1
    lower = client.get(BASE + "/api/v1/snapshot", {"Authorization": [f"bearer  {TOKEN} "]})
    assert lower.code == 200
    # Errors past the door are the app's own JSON.
    assert client.get(BASE + "/api/v1/history?seconds=0", bearer(TOKEN)).code == 400


def test_comparisons_are_constant_time(monitor: Monitor, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    client = Client(guarded(monitor, token=TOKEN))
    client.get(BASE + "/api/v1/snapshot", bearer("wrong-token-0123456789abc"))
    assert (b"wrong-token-0123456789abc", TOKEN.encode()) in compared
    compared.clear()
    client.get(BASE + "/?token=wrong-token-0123456789abc")
    assert (b"wrong-token-0123456789abc", TOKEN.encode()) in compared


def test_the_page_trades_the_token_for_a_strict_cookie(monitor: Monitor) -> None:
    client = Client(guarded(monitor, token=TOKEN))
    answer = client.get(BASE + f"/?window=300&token={TOKEN}&x=%2F")
    assert answer.code == 303
    # The token leaves the URL; the other parameters stay as sent.
    assert answer.header("location") == "./?window=300&x=%2F"
    assert answer.header("cache-control") == "no-store"
    assert TOKEN not in (answer.header("location") or "")
    set_cookie = answer.header("set-cookie") or ""
    cookie = SimpleCookie()
    cookie.load(set_cookie)
    (name,) = cookie.keys()
    morsel = cookie[name]
    assert name.startswith("rd_session_")
    assert TOKEN not in set_cookie  # a digest, never the token
    assert morsel["path"] == "/"
    assert morsel["httponly"] is True
    assert morsel["samesite"].lower() == "strict"
    assert not morsel["secure"]  # plain HTTP here; set on TLS
    jar = {"Cookie": [f"{name}={morsel.value}"]}
    for path in ("/", "/api/v1/snapshot", "/api/v1/history?seconds=5", "/static/js/main.js"):
        assert client.get(BASE + path, jar).code == 200, path
    # A forged cookie is no key.
    forged = {"Cookie": [f"{name}={'0' * len(morsel.value)}"]}
    assert client.get(BASE + "/api/v1/snapshot", forged).code == 401


def test_a_wrong_page_token_gets_401_and_no_cookie(monitor: Monitor) -> None:
    client = Client(guarded(monitor, token=TOKEN))
    for query in ("token=wrong-token-0123456789abc", f"token={TOKEN}&token={TOKEN}"):
        answer = client.get(BASE + "/?" + query)
        assert answer.code == 401
        assert answer.header("set-cookie") is None
        assert answer.json()["error"] == "unauthorized"


def test_the_api_does_not_take_the_token_in_its_url(monitor: Monitor) -> None:
    # Tokens in URLs end up in logs: only the page's one-time sign-in takes one.
    answer = Client(guarded(monitor, token=TOKEN)).get(BASE + f"/api/v1/snapshot?token={TOKEN}")
    assert answer.code == 401


def test_under_a_prefix_the_cookie_is_scoped_to_it(monitor: Monitor) -> None:
    root = Resource()
    deep: Any = Resource()
    root.putChild(b"a", deep)
    deep.putChild(b"_reactor", guarded(monitor, token=TOKEN))
    client = Client(root)
    answer = client.get(BASE + f"/a/_reactor?token={TOKEN}")
    assert answer.code == 303
    assert answer.header("location") == "./_reactor/"  # and the slash the page needs
    cookie = SimpleCookie()
    cookie.load(answer.header("set-cookie") or "")
    (morsel,) = cookie.values()
    assert morsel["path"] == "/a/_reactor/"
    jar = {"Cookie": [f"{morsel.key}={morsel.value}"]}
    assert client.get(BASE + "/a/_reactor/api/v1/snapshot", jar).code == 200
    assert client.get(BASE + "/a/_reactor/api/v1/snapshot").code == 401


def test_cookie_path_quotes_segments() -> None:
    assert cookie_path([]) == b"/"
    assert cookie_path([b"a", b"b c;"]) == b"/a/b%20c%3B/"


def test_metrics_has_its_own_token_and_falls_back_to_the_main_one(monitor: Monitor) -> None:
    client = Client(guarded(monitor, token=TOKEN, metrics_token=METRICS_TOKEN))
    assert client.get(BASE + "/metrics").code == 401
    scraped = client.get(BASE + "/metrics", bearer(METRICS_TOKEN))
    assert scraped.code == 200 and b"twisted_" in scraped.body
    assert client.get(BASE + "/metrics", bearer(TOKEN)).code == 200
    # The scraper's token opens /metrics only.
    assert client.get(BASE + "/api/v1/snapshot", bearer(METRICS_TOKEN)).code == 401
    # With only a main token, /metrics takes that one.
    main_only = Client(guarded(monitor, token=TOKEN))
    assert main_only.get(BASE + "/metrics").code == 401
    assert main_only.get(BASE + "/metrics", bearer(TOKEN)).code == 200


def test_a_metrics_token_alone_guards_metrics_only(monitor: Monitor) -> None:
    client = Client(guarded(monitor, metrics_token=METRICS_TOKEN))
    assert client.get(BASE + "/api/v1/snapshot").code == 200
    assert client.get(BASE + "/metrics").code == 401
    assert client.get(BASE + "/metrics", bearer(METRICS_TOKEN)).code == 200


def test_without_a_token_everything_is_served(monitor: Monitor) -> None:
    resource = guarded(monitor)
    assert not resource.protected
    client = Client(resource)
    assert client.get(BASE + "/api/v1/snapshot").code == 200
    assert client.get(BASE + "/metrics").code == 200
    assert client.get(BASE + f"/?token={TOKEN}").code == 200  # nothing to sign in to


def test_a_resource_tree_inside_is_walked(monitor: Monitor) -> None:
    class Leaf(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            return b"/".join(request.prepath) + b"|" + b"/".join(request.postpath)

    tree = Resource()
    leaf: Any = Leaf()  # type: ignore[no-untyped-call]
    tree.putChild(b"x", leaf)
    client = Client(GuardedResource(cast(IResource, tree), token=TOKEN))
    answer = client.get(BASE + "/x/y/z", bearer(TOKEN))
    assert (answer.code, answer.body) == (200, b"x|y/z")
    assert_safety_headers(answer)
    assert client.get(BASE + "/x/y/z").code == 401


# binding without a token ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("description", "exposed"),
    [
        ("tcp:8089:interface=127.0.0.1", None),
        ("tcp6:8089:interface=\\:\\:1", None),
        ("tcp:8089:interface=localhost", None),
        ("unix:/tmp/x.sock", None),
        ("tcp:8089", "0.0.0.0"),
        ("tcp6:8089", "::"),
        ("tcp:8089:interface=0.0.0.0", "0.0.0.0"),
        ("tcp6:8089:interface=\\:\\:", "::"),
        ("tcp:8089:interface=10.0.0.5", "10.0.0.5"),
    ],
)
def test_exposed_interface(description: str, exposed: str | None) -> None:
    assert exposed_interface(description) == exposed


def test_binding_elsewhere_without_a_token_warns_loudly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from twisted.logger import globalLogPublisher

    logged: list[dict[str, Any]] = []
    observer: Any = logged.append
    globalLogPublisher.addObserver(observer)
    try:
        warning = warn_if_exposed("tcp:0:interface=0.0.0.0", token_set=False)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert warning is not None and "WITHOUT a token" in warning and "0.0.0.0" in warning
    assert warning in capsys.readouterr().err
    levels = [str(e.get("log_level")) for e in logged if e.get("warning") == warning]
    assert levels and all("warn" in level for level in levels), levels
    assert warn_if_exposed("tcp:0:interface=0.0.0.0", token_set=True) is None
    assert warn_if_exposed("tcp:0:interface=127.0.0.1", token_set=False) is None
    assert capsys.readouterr().err == ""


# on real sockets: the limits and the stream ---------------------------------------------


def raw(port: int, head: bytes, read_limit: int = 1 << 16) -> tuple[int, dict[str, str], bytes]:
    """Send ``head`` as is; the status, the headers (lower-case, last value) and the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        data = b""
        while len(data) < read_limit and (chunk := sock.recv(65536)):
            data += chunk
            if b"\r\n\r\n" in data and b"text/event-stream" in data and b"retry:" in data:
                break  # a stream: its head and first bytes are enough
    headers_raw, _, body = data.partition(b"\r\n\r\n")
    lines = headers_raw.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


@pytest_twisted.async_yield_fixture
async def served() -> AsyncIterator[tuple[Monitor, int]]:
    reactor = global_reactor()
    monitor = Monitor(reactor, interval=0.2, history=20)
    monitor.start()
    port: Any = reactor.listenTCP(0, Site(guarded(monitor, token=TOKEN)), interface="127.0.0.1")
    try:
        yield monitor, port.getHost().port
    finally:
        await port.stopListening()
        monitor.stop()


def request_head(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.0", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest_twisted.ensureDeferred
async def test_over_long_urls_and_headers_and_two_hosts_are_refused_as_json(
    served: tuple[Monitor, int],
) -> None:
    monitor, port = served
    auth = f"Authorization: Bearer {TOKEN}"
    cases = [
        # Had the app seen it, the unknown parameter x would have been a 400.
        (request_head("/api/v1/snapshot?x=" + "a" * MAX_URI_BYTES, auth), 414, "uri_too_long"),
        (request_head("/api/v1/snapshot", auth, "X-Big: " + "b" * MAX_HEADER_BYTES), 431, None),
        (
            request_head("/api/v1/snapshot", auth, *[f"X-{i}: 1" for i in range(MAX_HEADERS)]),
            431,
            "too_many_headers",
        ),
        # Two Host headers: which would a proxy in front have checked? Neither is trusted.
        (request_head("/api/v1/snapshot", auth, "Host: evil.example"), 421, "host_not_allowed"),
        (request_head("/api/v1/snapshot", auth, "X-Fine: " + "c" * 4000), 200, None),
    ]
    for head, status, error in cases:
        code, headers, body = await threads.deferToThread(raw, port, head)
        assert code == status, (code, body[:200])
        assert headers["x-content-type-options"] == "nosniff"
        data = json.loads(body)
        if status != 200:
            assert data["status"] == status and data["message"]
            assert data["error"] == (error or "header_too_large")
    assert monitor.errors.as_json()["total"] == 0


@pytest_twisted.ensureDeferred
async def test_the_stream_carries_the_headers_and_takes_a_bearer_token(
    served: tuple[Monitor, int],
) -> None:
    _, port = served
    code, headers, body = await threads.deferToThread(
        raw, port, request_head("/api/v1/events", f"Authorization: Bearer {TOKEN}")
    )
    assert code == 200 and headers["content-type"] == "text/event-stream"
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY.decode()
    assert headers["x-frame-options"] == "DENY"
    code, headers, body = await threads.deferToThread(raw, port, request_head("/api/v1/events"))
    assert code == 401 and json.loads(body)["error"] == "unauthorized"


# the second round (issue 17): strict Host, methods, the sign-in's query, the status line -----


@pytest.mark.parametrize(
    "header",
    [
        "evil.com/.localhost",
        "evil.com@x.localhost",
        "evil.com#.localhost",
        "evil.com .localhost",
        "evil.com?.localhost",
        "evil.com\\.localhost",
        "evil.com%2F.localhost",
        "a..localhost",
        "-a.localhost",
        "a-.localhost",
        "a_b.localhost",
        "x" * 64 + ".localhost",
        ".".join(["a" * 63] * 4),  # 255 characters
        "localhost..",
        "127.1",  # a browser reads it as 127.0.0.1; a Host must say what it means
        "1.2.3.999",
        "0x7f.0.0.1",
        "example.0x7f",
        "01.2.3.4",
        "\u212a.localhost",  # the Kelvin sign lowercases to "k"
        "[fe80::1%25eth0]",
        "[fe80::1%eth0]",
        "[::1]:",
        "[not-an-address]",
        "localhost:0",
        "localhost:65536",
        "localhost:+80",
        "localhost:80:80",
        "localhost:\u0668\u0660",  # Arabic-Indic digits
    ],
)
def test_split_host_refuses_what_is_not_a_host_name_or_an_address(header: str) -> None:
    assert split_host(header) is None


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("a-b.c0.example:65535", "a-b.c0.example"),
        ("x" * 63 + ".localhost:1", "x" * 63 + ".localhost"),
        (".".join(["a" * 63] * 3 + ["a" * 61]), ".".join(["a" * 63] * 3 + ["a" * 61])),
        ("10.1.2.3:8089", "10.1.2.3"),
        ("[::ffff:127.0.0.1]:80", "::ffff:127.0.0.1"),
        ("[FD00::5]", "fd00::5"),
        ("Dash.localhost.", "dash.localhost"),
        ("1password.example", "1password.example"),
    ],
)
def test_split_host_keeps_host_names_and_addresses(header: str, host: str) -> None:
    assert split_host(header) == host


@pytest.mark.parametrize(
    ("origin", "host", "secure", "same"),
    [
        (b"http://127.0.0.1:8089", b"127.0.0.1:8089", False, True),
        (b"http://localhost", b"localhost:80", False, True),  # the scheme's default port
        (b"https://dash.example", b"Dash.Example:443", True, True),
        (b"http://[::1]:8089", b"[0:0::1]:8089", False, True),
        (b"http://127.0.0.1:8089", b"127.0.0.1:8090", False, False),  # cookies ignore ports
        (b"http://127.0.0.1:8089", b"127.0.0.1:8089", True, False),  # TLS here, not there
        (b"https://127.0.0.1:8089", b"127.0.0.1:8089", False, False),
        (b"http://127.0.0.1", b"127.0.0.1:8089", False, False),
        (b"http://evil.example:8089", b"127.0.0.1:8089", False, False),
        (b"null", b"127.0.0.1:8089", False, False),
        (b"http://127.0.0.1:8089/", b"127.0.0.1:8089", False, False),
        (b"http://u@127.0.0.1:8089", b"127.0.0.1:8089", False, False),
        (b"ftp://127.0.0.1:8089", b"127.0.0.1:8089", False, False),
        (b"http://127.0.0.1:8089", b"evil.com/.localhost", False, False),
    ],
)
def test_is_same_origin(origin: bytes, host: bytes, secure: bool, same: bool) -> None:
    assert is_same_origin(origin, host, secure=secure) is same


@pytest.mark.parametrize(
    "header",
    ["evil.com/.localhost", "evil.com@x.localhost", "evil.com#.localhost", "evil.com .localhost"],
)
def test_a_malformed_host_gets_400_json_even_on_an_open_dashboard(
    monitor: Monitor, header: str
) -> None:
    resource = guarded(monitor, allowed_hosts=["*"])
    answer = Client(resource).get(BASE + "/api/v1/snapshot", {"Host": [header]})
    assert answer.code == 400
    error = answer.json()
    assert error["error"] == "bad_host" and repr(header) in error["message"]
    assert "seq" not in error
    assert resource.refused == {"bad_host": 1}
    assert_safety_headers(answer)


def test_the_page_token_is_removed_however_the_query_was_separated(monitor: Monitor) -> None:
    from twisted.web.http import parse_qs

    client = Client(guarded(monitor, token=TOKEN))
    cases = {
        f"/?x=1;token={TOKEN}": "./?x=1",
        f"/?token={TOKEN};x=1": "./?x=1",
        f"/?a=1&b=2;token={TOKEN};c=3": "./?a=1&b=2&c=3",
        f"/?a=1;tok%65n={TOKEN}": "./?a=1",
        f"/?token={TOKEN}": "./",
        f"/?x=%3B&token={TOKEN}": "./?x=%3B",
    }
    for url, location in cases.items():
        answer = client.get(BASE + url)
        assert answer.code == 303, url
        assert answer.header("location") == location, url
        # Read back as Twisted reads it: no token, so no second sign-in (and no loop).
        query = location.partition("?")[2].encode()
        assert b"token" not in parse_qs(query, 1), url


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_the_method_is_checked_before_the_sign_in(monitor: Monitor, method: str) -> None:
    resource = guarded(monitor, token=TOKEN)
    answer = Client(resource).get(BASE + f"/?token={TOKEN}", method=method)
    assert answer.code == 405
    assert answer.header("set-cookie") is None
    assert answer.header("allow") == "GET, HEAD"
    error = answer.json()
    assert error["error"] == "method_not_allowed" and error["allowed"] == ["GET", "HEAD"]
    assert resource.refused == {"method_not_allowed": 1}


def test_a_form_posted_token_does_not_sign_in(monitor: Monitor) -> None:
    # Twisted reads a POSTed form into request.args: the method check keeps it out.
    stub: Any = StubTreq(guarded(monitor, token=TOKEN))
    d = stub.post(
        BASE + "/",
        data={"token": TOKEN},
        headers={"Content-Type": ["application/x-www-form-urlencoded"]},
        allow_redirects=False,
    )
    stub.flush()
    response = result_of(d)
    assert response.code == 405
    assert response.headers.getRawHeaders("set-cookie") is None


def raw_answer(port: int, head: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """Send ``head`` as is; the status line, the headers (lower-case, last value), the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        data = b""
        while len(data) < 1 << 16 and (chunk := sock.recv(65536)):
            data += chunk
    head_raw, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head_raw.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status_line, headers, body


def wire_head(line: str, *headers: str) -> str:
    return "\r\n".join([line, *headers, "Connection: close", "", ""])


AUTH = f"Authorization: Bearer {TOKEN}"
#: (request head, the status line's code and phrase, the JSON error) for the small things.
SMALL_THINGS = {
    # HTTP/1.1 needs a Host.
    "no_host": (
        wire_head("GET /api/v1/snapshot HTTP/1.1", AUTH),
        b"400 Bad Request",
        "host_missing",
    ),
    # A method is case-sensitive: "get" is not GET.
    "lowercase_method": (
        wire_head("get /api/v1/snapshot HTTP/1.1", "Host: 127.0.0.1", AUTH),
        b"405 Method Not Allowed",
        "method_not_allowed",
    ),
    "misdirected": (
        wire_head("GET /api/v1/snapshot HTTP/1.1", "Host: evil.example"),
        b"421 Misdirected Request",
        "host_not_allowed",
    ),
    "header_too_large": (
        wire_head(
            "GET /api/v1/snapshot HTTP/1.1", "Host: 127.0.0.1", "X-Big: " + "b" * MAX_HEADER_BYTES
        ),
        b"431 Request Header Fields Too Large",
        "header_too_large",
    ),
    "served": (
        wire_head("GET /api/v1/snapshot HTTP/1.1", "Host: 127.0.0.1", AUTH),
        b"200 OK",
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(SMALL_THINGS))
@pytest_twisted.ensureDeferred
async def test_small_things_on_the_wire(served: tuple[Monitor, int], case: str) -> None:
    """HTTP/1.1 without Host, a lowercase method, the 421 and 431 status lines, and the
    Server header of every answer: on a real socket, byte for byte."""
    _, port = served
    head, status, error = SMALL_THINGS[case]
    status_line, headers, body = await threads.deferToThread(raw_answer, port, head.encode())
    assert status_line.startswith(b"HTTP/1.1 " + status), (status_line, body[:200])
    assert headers["server"] == "reactor-dashboard"
    assert headers["x-content-type-options"] == "nosniff"
    if error is None:
        return
    data = json.loads(body)
    assert data["error"] == error and data["status"] == int(status[:3]), data
    if error == "method_not_allowed":
        assert headers["allow"] == "GET, HEAD"
        assert "case-sensitive" in data["message"] and "'get'" in data["message"]


@pytest_twisted.ensureDeferred
async def test_redirects_never_leave_the_site(served: tuple[Monitor, int]) -> None:
    """werkzeug builds its redirect URL from Host (``Host: x//evil.example`` made it
    ``//evil.example:port/api/v1/snapshot``); the dashboard's Location is built from the path
    alone and is always a path of this site. The app is tried bare too (no Host check in
    front), and behind the guard the same Hosts are refused outright."""
    from urllib.parse import urljoin, urlsplit

    monitor, guarded_port = served
    reactor = global_reactor()
    bare: Any = reactor.listenTCP(
        0, Site(DashboardApp(monitor).app.resource()), interface="127.0.0.1"
    )
    port = bare.getHost().port
    origin = f"http://127.0.0.1:{port}"
    locations = []
    try:
        for target in ["//api//v1/snapshot", "/api//v1/snapshot?a=1", "//static", "//\\x//static"]:
            for host in ["x//evil.example", "evil.com/.localhost", "a/b\\", "127.0.0.1"]:
                head = f"GET {target} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()
                status_line, headers, _ = await threads.deferToThread(raw_answer, port, head)
                location = headers.get("location")
                if location is None:
                    assert status_line.split(b" ")[1][:1] != b"3", (target, status_line)
                    continue
                locations.append(location)
                resolved = urlsplit(urljoin(origin + target.partition("?")[0], location))
                assert (resolved.scheme, resolved.netloc) == ("http", f"127.0.0.1:{port}"), (
                    target,
                    host,
                    location,
                )
                assert location.startswith("/") and not location.startswith("//"), location
                assert "\\" not in location and "evil" not in location, location
                # Behind the guard, such a Host never reaches the app.
                if host != "127.0.0.1":
                    status_line, _, _ = await threads.deferToThread(raw_answer, guarded_port, head)
                    assert status_line.endswith(b" 400 Bad Request"), (host, status_line)
    finally:
        await bare.stopListening()
    assert "/api/v1/snapshot" in locations and "/static/" in locations
    assert "/api/v1/snapshot?a=1" in locations  # the query is kept
    # The ordinary case still lands where it should, behind the guard too.
    ordinary = (
        f"GET /api//v1/snapshot?fresh=0 HTTP/1.0\r\nHost: 127.0.0.1:{guarded_port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\n\r\n"
    )
    status_line, headers, body = await threads.deferToThread(
        raw_answer, guarded_port, ordinary.encode()
    )
    assert status_line.endswith(b" 308 Permanent Redirect")
    assert headers["location"] == "/api/v1/snapshot?fresh=0"
    assert json.loads(body)["location"] == "/api/v1/snapshot?fresh=0"
