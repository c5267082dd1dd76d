"""The page's sessions (dashboard/web/session.py and the guard's sign-in, session and sign-out):
a cookie value made per process and per sign-in, signed, carrying its expiry, refused when
expired, forged or signed out; ``Max-Age`` on the cookie; a bounded revocation list."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.cookies import Morsel, SimpleCookie
from typing import Any, cast

import pytest
from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock
from twisted.web.resource import IResource, Resource

from dashboard.monitor import Monitor
from dashboard.testing import result_of
from dashboard.web.app import DashboardApp
from dashboard.web.guard import GuardedResource
from dashboard.web.session import (
    DEFAULT_SESSION_MAX_AGE_S,
    LONGEST_SESSION_S,
    Sessions,
    check_max_age,
)
from tests.test_sse import StreamReader

TOKEN = "t0ken-for-tests-0123456789abcdef"
BASE = "http://127.0.0.1:8089"


class FakeClock:
    """A wall clock the test moves (unix seconds)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Answer:
    def __init__(self, code: int, headers: Any, body: bytes) -> None:
        self.code, self.headers, self.body = code, headers, body

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[-1] if values else None

    def json(self) -> Any:
        assert self.header("content-type") == "application/json; charset=utf-8"
        return json.loads(self.body)

    def cookie(self) -> Morsel[str]:
        jar: SimpleCookie = SimpleCookie()
        jar.load(self.header("set-cookie") or "")
        (morsel,) = jar.values()
        return morsel


def ask(resource: Any, url: str, method: str = "GET", **headers: str) -> Answer:
    stub: Any = StubTreq(resource)
    wanted = {name.replace("_", "-"): [value] for name, value in headers.items()}
    d = stub.request(method, BASE + url, headers=wanted, allow_redirects=False)
    stub.flush()
    response = result_of(d)
    return Answer(response.code, response.headers, result_of(stub.content(response)))


@pytest.fixture
def monitor() -> Iterator[Monitor]:
    m = Monitor(MemoryReactorClock(), interval=1.0, history=30)
    m.sample()
    yield m


def guarded(monitor: Monitor, **options: Any) -> GuardedResource:
    inner: Any = DashboardApp(monitor).app.resource()
    return GuardedResource(inner, token=TOKEN, **options)


def sign_in(resource: GuardedResource) -> Morsel[str]:
    answer = ask(resource, f"/?token={TOKEN}")
    assert answer.code == 303
    return answer.cookie()


def jar(morsel: Morsel[str]) -> str:
    return f"{morsel.key}={morsel.value}"


# Sessions alone ---------------------------------------------------------------------------


def test_a_value_carries_its_expiry_and_is_refused_after_it() -> None:
    clock = FakeClock()
    sessions = Sessions(60, clock)
    value = sessions.issue()
    expires, session_id, mac = value.split(b".")
    assert int(expires) == int(clock.now) + 60
    assert len(session_id) == 32 and len(mac) == 64
    session = sessions.check(value)
    assert session is not None and session.expires == int(clock.now) + 60
    clock.now += 59
    assert sessions.check(value) is not None and not sessions.expired(value)
    clock.now += 1
    assert sessions.check(value) is None and sessions.expired(value)


def test_values_are_new_per_sign_in_and_per_process() -> None:
    clock = FakeClock()
    first, second = Sessions(60, clock), Sessions(60, clock)
    values = {first.issue() for _ in range(20)}
    assert len(values) == 20  # a session id per sign-in, even within the same second
    other = second.issue()
    # Another key (another process, or this one restarted): each refuses the other's values.
    assert all(second.check(v) is None for v in values)
    assert first.check(other) is None
    assert not first.expired(other)  # not ours at all: not "expired"
    assert first.cookie_name != second.cookie_name
    assert first.cookie_name.startswith(b"rd_session_") and len(first.cookie_name) == 23


def test_a_forged_or_edited_value_is_refused() -> None:
    clock = FakeClock()
    sessions = Sessions(60, clock)
    value = sessions.issue()
    expires, session_id, mac = value.split(b".")
    later = b"%d" % (int(expires) + 86400)
    flipped = mac[:-1] + (b"0" if mac[-1:] != b"0" else b"1")
    for forged in [
        b".".join([later, session_id, mac]),  # a longer life, same MAC
        b".".join([expires, session_id, flipped]),
        b".".join([expires, b"0" * 32, mac]),
        value + b".",
        value.upper(),
        b"",
        b"0" * len(value),
        None,
    ]:
        assert sessions.check(forged) is None, forged


def test_a_sign_out_revokes_one_session_only() -> None:
    sessions = Sessions(60, FakeClock())
    kept, ended = sessions.issue(), sessions.issue()
    assert sessions.revoke(ended) is True
    assert sessions.check(ended) is None and sessions.check(kept) is not None
    assert sessions.revoke(ended) is False  # already ended
    assert sessions.revoke(b"forged") is False
    assert (sessions.revoked_total, sessions.revoked_count) == (1, 1)


def test_the_revocation_list_is_bounded() -> None:
    clock = FakeClock()
    sessions = Sessions(60, clock, max_revoked=8)
    for _ in range(8):
        assert sessions.revoke(sessions.issue())
    assert sessions.revoked_count == 8
    # Expired entries make room: they would be refused anyway.
    clock.now += 61
    assert sessions.revoke(sessions.issue())
    assert sessions.revoked_count == 1 and sessions.key_renewals == 0
    # Full of unexpired sessions: the key is renewed, ending every session (the safe side).
    for _ in range(7):
        sessions.revoke(sessions.issue())
    alive = sessions.issue()
    name = sessions.cookie_name
    assert sessions.revoke(sessions.issue())
    assert sessions.key_renewals == 1 and sessions.revoked_count == 0
    assert sessions.check(alive) is None and sessions.cookie_name != name
    assert sessions.check(sessions.issue()) is not None


@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), (LONGEST_SESSION_S + 1, ValueError), (1.5, TypeError), (True, TypeError)],
)
def test_bad_lifetimes_are_refused(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="session_max_age_s"):
        check_max_age(value)
    with pytest.raises(error, match="session_max_age_s"):
        GuardedResource(cast(IResource, Resource()), session_max_age_s=value)


# through the guard -----------------------------------------------------------------------


def test_the_cookie_has_a_max_age_of_a_day_by_default_and_as_configured(
    monitor: Monitor,
) -> None:
    assert DEFAULT_SESSION_MAX_AGE_S == 86400
    assert sign_in(guarded(monitor))["max-age"] == "86400"
    assert sign_in(guarded(monitor, session_max_age_s=600))["max-age"] == "600"


def test_each_sign_in_and_each_process_gets_its_own_value(monitor: Monitor) -> None:
    one, two = guarded(monitor), guarded(monitor)
    a, b, c = sign_in(one), sign_in(one), sign_in(two)
    assert a.key == b.key and a.value != b.value
    assert a.key != c.key  # another process's dashboard keeps its own cookie
    assert TOKEN not in a.value
    # The value of one process opens nothing in another, even under the right name.
    assert ask(two, "/api/v1/snapshot", Cookie=f"{c.key}={a.value}").code == 401
    assert ask(one, "/api/v1/snapshot", Cookie=jar(a)).code == 200
    assert ask(one, "/api/v1/snapshot", Cookie=jar(b)).code == 200


def test_an_expired_session_is_refused_and_says_so(monitor: Monitor) -> None:
    clock = FakeClock()
    resource = guarded(monitor, session_max_age_s=3600, clock=clock)
    morsel = sign_in(resource)
    assert ask(resource, "/api/v1/snapshot", Cookie=jar(morsel)).code == 200
    clock.now += 3600
    answer = ask(resource, "/api/v1/snapshot", Cookie=jar(morsel))
    assert answer.code == 401
    assert answer.header("www-authenticate") == 'Bearer realm="reactor-dashboard"'
    assert "expired" in answer.json()["message"]
    assert ask(resource, "/", Cookie=jar(morsel)).code == 401


def test_the_page_asks_how_it_is_signed_in(monitor: Monitor) -> None:
    clock = FakeClock()
    resource = guarded(monitor, clock=clock)
    morsel = sign_in(resource)
    by_cookie = ask(resource, "/session", Cookie=jar(morsel))
    assert by_cookie.code == 200
    assert by_cookie.json() == {
        "signed_in": True,
        "by": "cookie",
        "expires": int(clock.now) + 86400,
        "max_age_s": 86400,
        "sign_out": "session/sign-out",
    }
    assert by_cookie.header("cache-control") == "no-store"
    by_bearer = ask(resource, "/session", Authorization=f"Bearer {TOKEN}").json()
    assert (by_bearer["by"], by_bearer["expires"]) == ("bearer", None)
    assert ask(resource, "/session").code == 401
    # Without a token the page is open: nothing to sign out of.
    inner: Any = DashboardApp(monitor).app.resource()
    open_page = ask(GuardedResource(inner), "/session")
    assert open_page.code == 200
    assert open_page.json() == {
        "signed_in": False,
        "by": None,
        "expires": None,
        "max_age_s": None,
        "sign_out": None,
    }


def test_signing_out_clears_the_cookie_and_ends_the_session(monitor: Monitor) -> None:
    resource = guarded(monitor)
    morsel, other = sign_in(resource), sign_in(resource)
    answer = ask(resource, "/session/sign-out", "POST", Cookie=jar(morsel))
    assert answer.code == 200
    assert answer.json() == {"signed_out": True, "revoked": True}
    cleared = answer.cookie()
    assert (cleared.key, cleared.value, cleared["max-age"]) == (morsel.key, "", "0")
    assert cleared["path"] == "/" and cleared["httponly"] is True
    assert cleared["samesite"].lower() == "strict"
    # A copy of the old value (a replay) is refused from now on; another browser's is not.
    assert ask(resource, "/api/v1/snapshot", Cookie=jar(morsel)).code == 401
    assert ask(resource, "/", Cookie=jar(morsel)).code == 401
    assert ask(resource, "/api/v1/snapshot", Cookie=jar(other)).code == 200
    assert resource.sessions is not None and resource.sessions.revoked_total == 1
    # Signing out again, or without a cookie, still clears it and says nothing was ended.
    again = ask(resource, "/session/sign-out", "POST", Cookie=jar(morsel))
    assert (again.code, again.json()["revoked"]) == (200, False)


def test_the_sign_out_takes_post_from_the_page_only(monitor: Monitor) -> None:
    resource = guarded(monitor)
    morsel = sign_in(resource)
    answer = ask(resource, "/session/sign-out", Cookie=jar(morsel))
    assert answer.code == 405 and answer.header("allow") == "POST"
    assert answer.json()["allowed"] == ["POST"]
    cross = ask(
        resource, "/session/sign-out", "POST", Cookie=jar(morsel), Sec_Fetch_Site="cross-site"
    )
    assert cross.code == 403 and cross.json()["error"] == "cross_site"
    assert cross.header("set-cookie") is None
    assert ask(resource, "/api/v1/snapshot", Cookie=jar(morsel)).code == 200
    same = ask(
        resource, "/session/sign-out", "POST", Cookie=jar(morsel), Sec_Fetch_Site="same-origin"
    )
    assert same.code == 200 and same.json()["revoked"] is True
    # Only the sign-out takes POST.
    assert ask(resource, "/session", "POST", Cookie=jar(morsel)).code == 405


def test_under_a_prefix_the_sign_out_clears_the_prefixed_cookie(monitor: Monitor) -> None:
    root: Any = Resource()
    resource = guarded(monitor)
    root.putChild(b"_reactor", resource)
    answer = ask(root, f"/_reactor/?token={TOKEN}")
    morsel = answer.cookie()
    assert morsel["path"] == "/_reactor/"
    out = ask(root, "/_reactor/session/sign-out", "POST", Cookie=jar(morsel))
    assert out.code == 200 and out.cookie()["path"] == "/_reactor/"
    assert ask(root, "/_reactor/api/v1/snapshot", Cookie=jar(morsel)).code == 401


# the long requests of a session end with it ------------------------------------------------

EVENTS = BASE + "/api/v1/events"


@pytest.fixture
def running() -> Iterator[tuple[Monitor, MemoryReactorClock]]:
    reactor = MemoryReactorClock()
    m = Monitor(reactor, interval=1.0, history=30)
    m.start()
    try:
        yield m, reactor
    finally:
        m.stop()


class Stream:
    """An event stream opened through the guard by StubTreq; ``ended`` once it is over."""

    def __init__(self, resource: GuardedResource, **headers: str) -> None:
        self.stub: Any = cast(Any, StubTreq(resource))  # its methods are set per instance
        wanted = {name.replace("_", "-"): [value] for name, value in headers.items()}
        d = self.stub.request("GET", EVENTS, headers=wanted, unbuffered=True)
        self.stub.flush()
        self.response = result_of(d)
        self.reader = StreamReader()
        self.response.deliverBody(self.reader)
        self.stub.flush()

    @property
    def ended(self) -> bool:
        self.stub.flush()
        return self.reader.ended is not None


def expiry_timers(reactor: MemoryReactorClock, resource: GuardedResource) -> list[Any]:
    expire = resource.open_requests._expire
    return [c for c in reactor.getDelayedCalls() if getattr(c, "func", None) == expire]


def test_signing_out_ends_the_streams_open_on_that_session(
    running: tuple[Monitor, MemoryReactorClock],
) -> None:
    monitor, reactor = running
    clock = FakeClock()
    resource = guarded(monitor, clock=clock, reactor=reactor)
    mine, other = sign_in(resource), sign_in(resource)
    # A copy of my cookie (a replay) and my own page each hold a stream; another browser too.
    copy, own, elsewhere = (Stream(resource, Cookie=jar(m)) for m in (mine, mine, other))
    by_bearer = Stream(resource, Authorization=f"Bearer {TOKEN}")
    for stream in (copy, own, elsewhere, by_bearer):
        assert stream.response.code == 200 and not stream.ended
        assert bytes(stream.reader.data).startswith(b"retry: 2000\n\n")
    assert resource.open_requests.count == 3  # by cookie only: a Bearer caller has the token
    assert len(expiry_timers(reactor, resource)) == 2  # one per session
    # Short answers are not held.
    assert ask(resource, "/api/v1/snapshot", Cookie=jar(mine)).code == 200
    assert resource.open_requests.count == 3

    out = ask(resource, "/session/sign-out", "POST", Cookie=jar(mine))
    assert out.code == 200 and out.json()["revoked"] is True
    assert copy.ended and own.ended
    assert not elsewhere.ended and not by_bearer.ended
    assert resource.open_requests.ended_total == 2
    assert resource.open_requests.count == 1
    assert len(expiry_timers(reactor, resource)) == 1
    # The copy cannot open another one.
    assert Stream(resource, Cookie=jar(mine)).response.code == 401
    # The other stream, ended by its client, leaves nothing behind.
    elsewhere.reader.close()
    assert elsewhere.ended
    assert resource.open_requests.count == 0
    assert expiry_timers(reactor, resource) == []
    by_bearer.reader.close()


def test_a_stream_ends_when_its_session_expires(
    running: tuple[Monitor, MemoryReactorClock],
) -> None:
    monitor, reactor = running
    clock = FakeClock()
    resource = guarded(monitor, session_max_age_s=60, clock=clock, reactor=reactor)
    morsel = sign_in(resource)
    stream = Stream(resource, Cookie=jar(morsel))
    (timer,) = expiry_timers(reactor, resource)
    assert timer.getTime() == pytest.approx(reactor.seconds() + 60)
    for _ in range(59):
        clock.now += 1
        reactor.advance(1)
    assert not stream.ended
    frames = bytes(stream.reader.data).count(b"event: snapshot")
    assert frames >= 59
    clock.now += 1
    reactor.advance(1)
    assert stream.ended
    assert resource.open_requests.expired_total == 1
    assert resource.open_requests.count == 0
    assert expiry_timers(reactor, resource) == []
    again = Stream(resource, Cookie=jar(morsel))
    assert again.response.code == 401


def test_a_stream_ended_by_its_client_cancels_the_expiry_timer(
    running: tuple[Monitor, MemoryReactorClock],
) -> None:
    monitor, reactor = running
    resource = guarded(monitor, session_max_age_s=60, clock=FakeClock(), reactor=reactor)
    morsel = sign_in(resource)
    streams = [Stream(resource, Cookie=jar(morsel)) for _ in range(3)]
    assert len(expiry_timers(reactor, resource)) == 1  # one per session, not per request
    for stream in streams:
        stream.reader.close()
        assert stream.ended
    assert resource.open_requests.count == 0
    assert expiry_timers(reactor, resource) == []
    assert resource.open_requests.expired_total == resource.open_requests.ended_total == 0


def test_a_sign_out_that_renews_the_key_clears_the_cookie_it_came_with(
    monitor: Monitor,
) -> None:
    resource = guarded(monitor)
    assert resource.sessions is not None
    resource.sessions.max_revoked = 1
    first, second = sign_in(resource), sign_in(resource)
    assert ask(resource, "/session/sign-out", "POST", Cookie=jar(first)).code == 200
    old_name = resource.sessions.cookie_name
    # The revocation list is full: this sign-out renews the key (a new cookie name).
    out = ask(resource, "/session/sign-out", "POST", Cookie=jar(second))
    assert out.code == 200 and out.json()["revoked"] is True
    assert resource.sessions.key_renewals == 1
    assert resource.sessions.cookie_name != old_name
    # Cleared under the name the browser holds it by, or the old cookie would stay.
    cleared = out.cookie()
    assert (cleared.key, cleared.value, cleared["max-age"]) == (second.key, "", "0")
    assert cleared.key == old_name.decode()


def test_a_key_renewal_ends_every_open_stream(
    running: tuple[Monitor, MemoryReactorClock],
) -> None:
    monitor, reactor = running
    resource = guarded(monitor, clock=FakeClock(), reactor=reactor)
    assert resource.sessions is not None
    resource.sessions.max_revoked = 1
    first, second, third = sign_in(resource), sign_in(resource), sign_in(resource)
    assert ask(resource, "/session/sign-out", "POST", Cookie=jar(first)).code == 200
    streams = [Stream(resource, Cookie=jar(m)) for m in (second, third)]
    assert not any(stream.ended for stream in streams)
    assert ask(resource, "/session/sign-out", "POST", Cookie=jar(second)).code == 200
    assert resource.sessions.key_renewals == 1
    assert all(stream.ended for stream in streams)  # the third's too: every session ended
    assert resource.open_requests.ended_total == 2
    assert resource.open_requests.count == 0
    assert expiry_timers(reactor, resource) == []


def test_too_many_open_requests_by_cookie_get_503(
    running: tuple[Monitor, MemoryReactorClock],
) -> None:
    monitor, reactor = running
    resource = guarded(monitor, clock=FakeClock(), reactor=reactor)
    resource.open_requests.max_open = 2
    morsel = sign_in(resource)
    held = [Stream(resource, Cookie=jar(morsel)) for _ in range(2)]
    refused = ask(resource, "/api/v1/snapshot", Cookie=jar(morsel))
    assert refused.code == 503 and refused.header("retry-after") == "5"
    assert refused.json()["error"] == "too_many_open_requests"
    # With the token itself nothing is held, so nothing is refused.
    assert ask(resource, "/api/v1/snapshot", Authorization=f"Bearer {TOKEN}").code == 200
    held[0].reader.close()
    assert held[0].ended
    assert ask(resource, "/api/v1/snapshot", Cookie=jar(morsel)).code == 200
    held[1].reader.close()


@pytest.mark.parametrize(
    ("origin", "code"),
    [
        ("http://127.0.0.1:8089", 200),
        ("HTTP://127.0.0.1:8089", 200),
        ("http://127.0.0.1:9999", 403),  # another service on this host (cookies ignore ports)
        ("https://127.0.0.1:8089", 403),
        ("http://evil.example", 403),
        ("http://127.0.0.1", 403),  # port 80
        ("null", 403),
        ("http://127.0.0.1:8089/", 403),
        ("http://x@127.0.0.1:8089", 403),
        ("", 403),
    ],
)
def test_without_sec_fetch_site_the_sign_out_checks_origin(
    monitor: Monitor, origin: str, code: int
) -> None:
    resource = guarded(monitor)
    morsel = sign_in(resource)
    answer = ask(resource, "/session/sign-out", "POST", Cookie=jar(morsel), Origin=origin)
    assert answer.code == code
    if code == 403:
        assert answer.json()["error"] == "cross_site"
        assert answer.header("set-cookie") is None
        assert ask(resource, "/api/v1/snapshot", Cookie=jar(morsel)).code == 200
    else:
        assert answer.json()["revoked"] is True
        assert ask(resource, "/api/v1/snapshot", Cookie=jar(morsel)).code == 401


def test_without_sec_fetch_site_or_origin_the_sign_out_is_taken(monitor: Monitor) -> None:
    resource = guarded(monitor)
    morsel = sign_in(resource)
    answer = ask(resource, "/session/sign-out", "POST", Cookie=jar(morsel))
    assert answer.code == 200 and answer.json()["revoked"] is True
