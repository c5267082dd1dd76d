# mypy: allow-untyped-calls
"""Credentials never reach an output: ``dashboard.redact`` itself, then real requests in
flight on a real server, seen through the whole monitor (snapshot, history samples)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.web import server

from dashboard import accel
from dashboard.monitor import Monitor
from dashboard.probes.base import ProbeErrors
from dashboard.probes.connections import ConnectionsProbe
from dashboard.redact import (
    DEFAULT_SECRET_PARAMS,
    REDACTED,
    Redactor,
    is_secret_param,
    redact_netloc,
    redact_text,
    redact_uri,
)
from dashboard.testing import global_reactor
from tests.test_probe_connections import Hang, async_test, close, fake_server, until

# -- the module ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (
            "/sync?access_token=SECRET&x=1;sig=abc",
            "/sync?access_token=<redacted>&x=1;sig=<redacted>",
        ),
        ("http://user:pw@host/", "http://user:<redacted>@host/"),
        ("https://user:pw@host:8443/p?q=1", "https://user:<redacted>@host:8443/p?q=1"),
        # a lone user name in a URL is usually a token
        ("https://ghp_TOKEN@github.com/x.git", "https://<redacted>@github.com/x.git"),
        # an unencoded "@" in the password: everything up to the last one is user info
        ("http://u:p@ss@host/", "http://u:<redacted>@host/"),
        ("//u:p@host/", "//u:<redacted>@host/"),
        # percent-encoded and "+"-encoded names; suffixes; camelCase; brackets; indexes
        ("/?access%5Ftoken=S", "/?access%5Ftoken=<redacted>"),
        ("/?api+key=S", "/?api+key=<redacted>"),
        (
            "/?x_api_key=S&X-Api-Key=S&apiKey=S",
            "/?x_api_key=<redacted>&X-Api-Key=<redacted>&apiKey=<redacted>",
        ),
        (
            "/?user[password]=S&password[0]=S&token2=S",
            "/?user[password]=<redacted>&password[0]=<redacted>&token2=<redacted>",
        ),
        (
            "/?PASSWORD=S&Client_Secret=S&sessionID=S",
            "/?PASSWORD=<redacted>&Client_Secret=<redacted>&sessionID=<redacted>",
        ),
        (
            "/?X-Amz-Signature=S&X-Amz-Credential=S&X-Amz-Date=20260101",
            "/?X-Amz-Signature=<redacted>&X-Amz-Credential=<redacted>&X-Amz-Date=20260101",
        ),
        # names that only contain a secret word inside another word are not secret
        ("/?monkey=1&bypass=2&keyboard=3&since=s1", "/?monkey=1&bypass=2&keyboard=3&since=s1"),
        # empty values and bare names have nothing to hide
        ("/?token=&token&x=1", "/?token=&token&x=1"),
        # fragments (OAuth implicit flow) and ;path parameters
        ("/cb#access_token=S&state=st", "/cb#access_token=<redacted>&state=st"),
        ("/a;jsessionid=S/b?c=d", "/a;jsessionid=<redacted>/b?c=d"),
        # a value holding "=" is hidden whole
        ("/?sig=a=b==&n=1", "/?sig=<redacted>&n=1"),
        ("/plain/path", "/plain/path"),
        ('/search?q="><svg/onload=x;alert(6)>', '/search?q="><svg/onload=x;alert(6)>'),
    ],
)
def test_redact_uri(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown


# A URL, a query or user info inside a parameter value is redacted in turn; the rest stays.
@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("/cb?u=https://h/?access_token=SECRET", "/cb?u=https://h/?access_token=<redacted>"),
        ("/login?next=http://alice:pw@evil/", "/login?next=http://alice:<redacted>@evil/"),
        ("/login?next=https://TOKEN@evil/x", "/login?next=https://<redacted>@evil/x"),
        ("/login?next=alice:pw@evil/p", "/login?next=alice:<redacted>@evil/p"),
        # an e-mail address is not a credential
        ("/invite?email=bob@example.com&n=1", "/invite?email=bob@example.com&n=1"),
        # a query without a path, and one whose "?" was left out
        ("/cb?state=token=S", "/cb?state=token=<redacted>"),
        ("/cb?state=a/b?token=S", "/cb?state=a/b?token=<redacted>"),
        ("/cb?u=/p?token=S#x=1;sig=S", "/cb?u=/p?token=<redacted>#x=1;sig=<redacted>"),
        # no URL at the start: every name=value in it is looked at
        ("/cb?state=token=S?next=http://h/", "/cb?state=token=<redacted>?next=http://h/"),
        ("/cb?state=see+http://h/?sig=S", "/cb?state=see+http://h/?sig=<redacted>"),
        # percent-encoded: decoded, redacted, encoded again as it came
        (
            "/login?next=http%3A%2F%2Falice%3Apw%40evil%2F%3Ftoken%3DX",
            "/login?next=http%3A%2F%2Falice%3A<redacted>%40evil%2F%3Ftoken%3D<redacted>",
        ),
        ("/login?next=/p%3Ftoken%3DX%26n%3D1", "/login?next=/p%3Ftoken%3D<redacted>%26n%3D1"),
        ("/login?next=http://h/p%3Ftoken%3DX", "/login?next=http://h/p%3Ftoken%3D<redacted>"),
        ("/login?next=token%3dX", "/login?next=token%3D<redacted>"),
        # twice encoded
        (
            "/a?u=https%3A%2F%2Fh%2F%3Fv%3Dhttps%253A%252F%252Fu%253Apw%2540g",
            "/a?u=https%3A%2F%2Fh%2F%3Fv%3Dhttps%253A%252F%252Fu%253A<redacted>%2540g",
        ),
        # nothing secret inside: the value is left exactly as it came
        ("/r?filter=%7B%22a%22%3A1%7D&u=http%3A%2F%2Fh%2F%3Fx%3D1", None),
        ("/r?u=http://h/?x=1&email=a%40b.c&q=a%2Bb+c", None),
        # too deep to follow: the innermost value that still holds a query is hidden whole
        (
            "/0?a=/1?b=/2?c=/3?d=/4?e=/5?token=S",
            "/0?a=/1?b=/2?c=/3?d=/4?e=<redacted>",
        ),
    ],
)
def test_nested_urls_are_redacted(uri: str, shown: str | None) -> None:
    assert redact_uri(uri) == (uri if shown is None else shown)


def test_nested_redaction_in_free_text() -> None:
    assert redact_text("redirect to /cb?u=http://a:pw@h/?sig=1 refused") == (
        "redirect to /cb?u=http://a:<redacted>@h/?sig=<redacted> refused"
    )


def test_a_value_that_cannot_be_encoded_again_never_raises() -> None:
    # An error message may hold a lone surrogate (a file name read with surrogateescape).
    assert redact_text("in /p?u=\udcff%3Ftoken%3DX") == "in /p?u=%3F%3Ftoken%3D<redacted>"


JOINED_SECRETS = [
    "authtoken",
    "apitoken",
    "sessiontoken",
    "secretkey",
    "accesskey",
    "authkey",
    "privatetoken",
    "usertoken",
    "adminpassword",
    "dbpass",
    "apisecret",
    "sessionkey",
    "AUTHTOKEN",
    "awssecretaccesskey",
    "signingkey",
    "masterkey",
    "passkey",
    "userpasswd",
    "dbpwd",
    "adminpassphrase",
    "oauthsignature",
    "sessioncookie",
    "authticket",
    "oauthcode",
    "x_authtoken",
    "authtoken2",
    "AuthToken",
]
#: Words that end in a secret word's letters (or hold one) and are not secrets.
JOINED_HARMLESS = [
    "monkey",
    "keyboard",
    "bypass",
    "compass",
    "passenger",
    "passage",
    "turkey",
    "hockey",
    "donkey",
    "tokenizer",
    "encompass",
    "overpass",
    "underpass",
    "trespass",
    "surpass",
    "obsession",
    "possession",
    "encode",
    "decode",
    "unicode",
    "publickey",
    "hotkey",
    "secretary",
    "author",
    "authority",
    "keynote",
    "sessions",
    "since",
    "timeout",
]


def test_joined_words_ending_in_a_secret_word_are_secret() -> None:
    for name in JOINED_SECRETS:
        assert is_secret_param(name), name
        assert redact_uri(f"/?{name}=S&n=1") == f"/?{name}=<redacted>&n=1"
    for name in JOINED_HARMLESS:
        assert not is_secret_param(name), name
        assert redact_uri(f"/?{name}=v") == f"/?{name}=v"


def test_extra_names_of_four_letters_or_more_are_matched_at_the_end_too() -> None:
    redactor = Redactor(["nonce", "pin"])
    assert redactor.is_secret("oauthnonce")
    assert redactor.is_secret("pin") and redactor.is_secret("card_pin")
    assert not redactor.is_secret("spin")  # under four letters: whole words only


def test_a_long_joined_name_never_raises() -> None:
    # 3000 "key"s: each is looked behind in turn, never by recursion.
    assert not is_secret_param("key" * 3000 + "board")
    assert not is_secret_param("mon" + "key" * 3000)
    assert is_secret_param("auth" + "key" * 3000)


def test_the_name_cache_stays_bounded() -> None:
    redactor = Redactor()
    for i in range(5000):
        redactor.is_secret(f"name{i}x")
    assert 0 < len(redactor._cache) <= 1024


def test_every_named_default_is_secret() -> None:
    for name in DEFAULT_SECRET_PARAMS:
        assert is_secret_param(name), name
    named_in_the_issue = "token access_token password passwd secret key api_key signature sig"
    for name in [*named_in_the_issue.split(), "auth", "session", "code", "refresh_token"]:
        assert is_secret_param(name), name


def test_extra_names_are_added_and_matched_alike() -> None:
    redactor = Redactor(["my_thing"])
    assert redactor.params[: len(DEFAULT_SECRET_PARAMS)] == DEFAULT_SECRET_PARAMS
    assert redactor.uri("/?my_thing=1&myThing=2&x_my_thing=3&thing=4&token=5") == (
        "/?my_thing=<redacted>&myThing=<redacted>&x_my_thing=<redacted>&thing=4&token=<redacted>"
    )
    assert redact_uri("/?my_thing=1") == "/?my_thing=1"  # the default redactor is unchanged
    with pytest.raises(ValueError, match="letter or digit"):
        Redactor(["--"])


def test_netloc_and_free_text() -> None:
    assert redact_netloc("user:pw@host:80") == "user:<redacted>@host:80"
    assert redact_netloc("host:80") == "host:80"
    assert redact_text("GET http://a:b@h/x?token=1 failed; then 'key=v&x=2' and /p?sig=1") == (
        "GET http://a:<redacted>@h/x?token=<redacted> failed; then 'key=<redacted>&x=2'"
        " and /p?sig=<redacted>"
    )
    assert redact_text("nothing to hide: a == b") == "nothing to hide: a == b"


# -- the probe: a request that arrives, on a fake socket (the Clock drives it) -----------------


def test_uri_is_redacted_before_it_is_cut(errors: ProbeErrors, accelerate: bool) -> None:
    mreactor = MemoryReactorClock()
    probe = ConnectionsProbe(
        mreactor, errors, mreactor.seconds, accelerate=accelerate, kernel_counts=False
    )
    probe.install()
    try:
        hang = Hang()
        proto = server.Site(hang, reactor=mreactor).buildProtocol(None)
        assert proto is not None
        t = fake_server(mreactor, proto)
        # The secret straddles the 200-character cut (197 characters and "...").
        long_uri = b"/" + b"a" * 174 + b"?token=SECRETSECRETSECRET&n=1"
        t._dataReceived(b"GET " + long_uri + b" HTTP/1.1\r\nHost: x\r\n")  # headers arriving
        [req] = probe.collect()["items"][-1]["requests"]
        assert req["uri"] == "/" + "a" * 174 + "?token=<redacted>&n=1"
        t._dataReceived(b"\r\n")  # the request is whole: read from the request itself
        [req] = probe.collect()["items"][-1]["requests"]
        assert req["uri"] == "/" + "a" * 174 + "?token=<redacted>&n=1"
        hang.requests[0].finish()
        close(t)
    finally:
        probe.uninstall()
    assert errors.counts == {}


def test_redact_params_reach_the_connections_probe() -> None:
    monitor = Monitor(MemoryReactorClock(), redact_params=("my_thing",))
    assert "my_thing" in monitor.connections.redactor.params
    assert monitor.connections.redactor.uri("/?my_thing=1") == "/?my_thing=<redacted>"


# -- the whole monitor on the real reactor --------------------------------------------------------


@pytest.fixture
def monitor(accelerate: bool, monkeypatch: pytest.MonkeyPatch) -> Iterator[Monitor]:
    if not accelerate:
        monkeypatch.setenv(accel.ENV, "0")
    m = Monitor(global_reactor(), interval=3600)  # samples taken by the test only
    assert m.connections.accelerated is accelerate
    m.start()
    try:
        yield m
    finally:
        m.stop()


def requests_shown(data: dict[str, Any]) -> list[str]:
    return sorted(
        f"{r['method']} {r['uri']}"
        for item in data["connections"]["items"]
        for r in item.get("requests", [])
    )


SENT = [
    # a whole request, with credentials in headers that must never be read
    b"GET /sync?access_token=SECRET_A&x=1;sig=abc HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Authorization: Bearer SECRET_B\r\nCookie: session=SECRET_C\r\n\r\n",
    # a proxy-style absolute URI with a password
    b"GET http://user:pw@host/ HTTP/1.1\r\nHost: host\r\n\r\n",
    # headers still arriving: the URI comes from the request line the channel holds
    b"POST /upload?api_key=SECRET_D&n=2 HTTP/1.1\r\nHost: 127.0.0.1\r\n",
]
SHOWN = sorted(
    [
        "GET /sync?access_token=<redacted>&x=1;sig=<redacted>",
        "GET http://user:<redacted>@host/",
        "POST /upload?api_key=<redacted>&n=2",
    ]
)


@async_test
async def test_secrets_in_flight_never_reach_the_snapshot(monitor: Monitor) -> None:
    reactor = global_reactor()
    hang = Hang()
    port = reactor.listenTCP(0, server.Site(hang), interface="127.0.0.1")
    clients: list[socket.socket] = []
    try:
        for head in SENT:
            client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
            clients.append(client)
            client.sendall(head)
        await until(lambda: len(requests_shown(monitor.snapshot())) == 3)

        sample = monitor.sample()  # what the history, the stream and /metrics read
        assert requests_shown(json.loads(sample.encoded)) == SHOWN
        texts = [
            sample.encoded,
            json.dumps(monitor.snapshot()).encode(),
            *(s.encoded for s in monitor.samples()),
        ]
        for text in texts:
            for secret in (b"SECRET", b"user:pw", b"abc"):
                assert secret not in text
            assert text.count(REDACTED.encode()) == 4
    finally:
        for client in clients:
            client.close()
        await port.stopListening()
    assert monitor.errors.counts.get("connections", 0) == 0


def test_probe_error_messages_are_redacted() -> None:
    errors = ProbeErrors()
    errors.record("connections", ValueError("GET http://u:pw@h/x?access_token=SECRET failed"))
    assert errors.as_json()["last"] == {
        "connections": "ValueError: GET http://u:<redacted>@h/x?access_token=<redacted> failed"
    }
