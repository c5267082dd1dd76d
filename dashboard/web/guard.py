"""The dashboard's front door: size limits, a strict Host check, methods, tokens and sessions,
and safety headers.

:class:`GuardedResource` wraps the dashboard's resource (``Monitor.resource()``) and, for
every request, in this order:

1. sets the safety headers (:data:`SECURITY_HEADERS`: a Content-Security-Policy with no inline
   script and no other origin, ``frame-ancestors 'none'``, ``nosniff``, ``no-referrer``,
   ``X-Frame-Options: DENY``), so every answer carries them: errors, static files, the stream;
   and ``Server: reactor-dashboard`` in place of Twisted's name and version;
2. refuses a request target over :data:`MAX_URI_BYTES` (414) and more than
   :data:`MAX_HEADERS` header lines or one over :data:`MAX_HEADER_BYTES` (431), before
   anything else reads them (Twisted itself answers 400 past 16 KiB of request head);
3. checks ``Host``: required from HTTP/1.1 on (400 without), syntactically a host name
   (RFC 1123 labels), an IPv4 address or a bracketed IPv6 address, with an optional port
   (400 otherwise), and naming loopback, the address the request arrived on, or a name in
   ``allowed_hosts`` (421 otherwise): a DNS-rebinding page cannot read the dashboard;
4. checks the method, exactly as spelled (``get`` is not ``GET``): ``GET`` and ``HEAD``, and
   ``POST`` on the sign-out alone (405 with ``Allow`` otherwise), before any sign-in;
5. when a token is set, asks for it (401 with ``WWW-Authenticate: Bearer``): the API and the
   stream take ``Authorization: Bearer <token>``; the page takes ``?token=<token>`` once and
   answers with a redirect that drops it from the URL (however the query was separated, ``&``
   or ``;``) and sets an HttpOnly, SameSite=Strict cookie scoped to the dashboard's path,
   which the page's own requests (history, the EventSource) then carry. The cookie holds a
   session (:mod:`dashboard.web.session`): signed with a key of this process, expiring after
   ``session_max_age_s`` (``Max-Age``), ended by ``POST session/sign-out`` (from the page
   itself: ``Sec-Fetch-Site`` same-origin, or without it an ``Origin`` that is absent or this
   very scheme, host and port; 403 otherwise); ``GET session`` tells the page how it is
   signed in. A long request let in by the cookie (the event stream, a history body) ends
   with its session: signed out, or expired (:class:`~dashboard.web.session.OpenRequests`).
   ``/metrics`` also takes ``metrics_token`` (for scrapers). Comparisons are constant-time
   (:func:`hmac.compare_digest`).

Every refusal is a JSON error body. Everything here runs on the reactor thread, but for the
checks the stuck server (:mod:`dashboard.web.stuck_server`) shares while the reactor thread
cannot answer: :func:`limits_refusal`, :func:`host_refusal`, :func:`method_refusal` and
:meth:`GuardedResource.access_check` work out a :class:`Refusal` from a request's parts, in
any thread.
"""

from __future__ import annotations

import hmac
import re
import secrets
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote, unquote_to_bytes

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import resource
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET

from dashboard.web.binding import _split, is_loopback
from dashboard.web.host_check import HostAllowList, is_same_origin, split_host
from dashboard.web.json_api import json_error, json_unavailable
from dashboard.web.session import (
    DEFAULT_SESSION_MAX_AGE_S,
    OpenRequests,
    Session,
    Sessions,
    check_max_age,
)

if TYPE_CHECKING:
    from twisted.web.server import Request

#: Longest request target (path and query) served, bytes.
MAX_URI_BYTES = 4096
#: Most header lines in one request.
MAX_HEADERS = 100
#: Longest single header line (name, ": " and value), bytes.
MAX_HEADER_BYTES = 8192

#: The one Content-Security-Policy of every answer (page.PAGE_POLICY is this): scripts, styles
#: and connections from the dashboard's own origin only, no inline script, no framing.
CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

#: Set on every answer, before the dashboard (or a refusal) writes anything.
SECURITY_HEADERS: dict[bytes, bytes] = {
    b"Content-Security-Policy": CONTENT_SECURITY_POLICY,
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
    b"X-Frame-Options": b"DENY",
    b"Cross-Origin-Resource-Policy": b"same-origin",
}
#: The ``Server`` header of every answer: the product, never Twisted's version.
SERVER_NAME = b"reactor-dashboard"

#: Shortest token accepted, characters (``secrets.token_urlsafe(32)`` gives 43).
MIN_TOKEN_LENGTH = 16
#: Characters a token may use: RFC 6750's ``b64token`` (safe in a header, a URL and a cookie).
TOKEN_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")
#: The query parameter the page takes the token from.
TOKEN_PARAMETER = b"token"
#: The methods every path answers (spelled exactly so).
READ_METHODS = (b"GET", b"HEAD")
#: Where the page asks how it is signed in (``GET``), relative to the dashboard.
SESSION_PATH = [b"session"]
#: Where the page signs out (``POST``), relative to the dashboard.
SIGN_OUT_PATH = [b"session", b"sign-out"]
#: The ``Retry-After`` of a 503 when too many long requests are open by cookie, seconds.
RETRY_AFTER_S = 5


#: The challenge of every 401.
BEARER_CHALLENGE = b'Bearer realm="reactor-dashboard"'


@attrs.frozen
class Refusal:
    """A refusal worked out from a request's parts (any thread): the status, the error's name
    and message, more fields of the JSON body, and headers to set with it."""

    status: int
    error: str
    message: str
    extra: dict[str, Any] = attrs.field(factory=dict)
    headers: tuple[tuple[bytes, bytes], ...] = ()


def limits_refusal(uri: bytes, headers: Iterable[tuple[bytes, Iterable[bytes]]]) -> Refusal | None:
    """414 for a request target over :data:`MAX_URI_BYTES`, 431 for a header line over
    :data:`MAX_HEADER_BYTES` or more than :data:`MAX_HEADERS` of them; ``headers``: raw
    ``(name, values)`` pairs. Any thread."""
    if len(uri) > MAX_URI_BYTES:
        return Refusal(414, "uri_too_long", f"the request target is over {MAX_URI_BYTES} bytes")
    count = 0
    for name, values in headers:
        for value in values:
            count += 1
            if len(name) + 2 + len(value) > MAX_HEADER_BYTES:
                header = name.decode("latin-1")[:40]
                return Refusal(
                    431, "header_too_large", f"header {header!r} is over {MAX_HEADER_BYTES} bytes"
                )
    if count > MAX_HEADERS:
        return Refusal(431, "too_many_headers", f"more than {MAX_HEADERS} header lines")
    return None


def host_refusal(
    hosts: Sequence[bytes], clientproto: bytes, arrived_on: str | None, allowed: HostAllowList
) -> Refusal | None:
    """The ``Host`` check: ``hosts`` are the request's ``Host`` header values, ``clientproto``
    its protocol (``HTTP/1.1``), ``arrived_on`` the local address it came to. Any thread."""
    if len(hosts) > 1:  # which one would a proxy have checked? Neither is trusted.
        return Refusal(421, "host_not_allowed", "more than one Host header")
    if not hosts:
        if clientproto.upper() in (b"HTTP/1.0", b"HTTP/0.9"):
            return None  # HTTP/1.0 may leave Host out: nothing to rebind
        return Refusal(400, "host_missing", "an HTTP/1.1 request needs a Host header")
    text = hosts[0].decode("latin-1")
    if split_host(text) is None:
        return Refusal(
            400,
            "bad_host",
            f"Host {text[:100]!r} is not a host name, an IPv4 address or a bracketed IPv6"
            " address (with an optional :port from 1 to 65535)",
        )
    if not allowed.allows(hosts[0], arrived_on):
        return Refusal(
            421,
            "host_not_allowed",
            f"this dashboard does not answer to Host {text[:100]!r}; add the name to"
            " allowed_hosts to serve it",
        )
    return None


def method_refusal(method: bytes, allowed: tuple[bytes, ...] = READ_METHODS) -> Refusal | None:
    """405 (with ``Allow``) for a method not in ``allowed``, spelled exactly (``get`` is
    refused). Any thread."""
    if method in allowed:
        return None
    names = [name.decode() for name in allowed]
    shown = method.decode("latin-1")[:20]
    if method.upper() in allowed:
        message = f"methods are case-sensitive: {shown!r} is not {shown.upper()!r}"
    else:
        message = f"{shown!r} is not allowed here (allowed: {', '.join(names)})"
    return Refusal(
        405,
        "method_not_allowed",
        message,
        {"allowed": names},
        ((b"Allow", ", ".join(names).encode()),),
    )


def generate_token() -> str:
    """A new random token (256 bits, URL-safe): what ``--token`` would be given."""
    return secrets.token_urlsafe(32)


def check_token(token: str | None, what: str = "token") -> bytes | None:
    """``token`` as bytes, or ``None``; ``ValueError`` naming the problem for a token that is
    too short or uses characters that do not survive a header, a URL and a cookie."""
    if token is None:
        return None
    if not isinstance(token, str):
        raise TypeError(f"{what} must be a str, got {type(token).__name__}")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(
            f"{what} must be at least {MIN_TOKEN_LENGTH} characters"
            " (generate one: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    bad = sorted(set(token) - TOKEN_ALPHABET)
    if bad:
        raise ValueError(
            f"{what} may use letters, digits and -._~+/= only; it has {''.join(bad)[:20]!r}"
        )
    return token.encode("ascii")


class GuardedResource(resource.Resource):
    """``inner`` (any resource: the Klein app's, leaf or not) behind the checks of this
    module. ``token``: required everywhere when set; ``metrics_token``: also accepted on
    ``/metrics`` (set alone, it guards ``/metrics`` only); ``allowed_hosts``: extra names for
    the ``Host`` check; ``session_max_age_s``: how long a page's sign-in lasts (seconds, a day
    by default); ``clock``: the wall clock sessions expire by (unix seconds); ``reactor``:
    where the timers ending long requests at their session's expiry run (the global reactor
    when ``None``). ``refused`` counts refusals by reason; ``open_requests`` holds the long
    requests let in by cookie. Reactor thread only."""

    isLeaf = True

    def __init__(
        self,
        inner: IResource,
        *,
        token: str | None = None,
        metrics_token: str | None = None,
        allowed_hosts: str | Iterable[str] = (),
        session_max_age_s: int = DEFAULT_SESSION_MAX_AGE_S,
        clock: Callable[[], float] = time.time,
        reactor: IReactorTime | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.inner = inner
        self._token = check_token(token, "token")
        self._metrics_token = check_token(metrics_token, "metrics_token")
        self.hosts = HostAllowList(allowed_hosts)
        self.refused: Counter[str] = Counter()
        max_age_s = check_max_age(session_max_age_s)
        self.open_requests = OpenRequests(reactor, clock)
        #: The page's sessions (a key made now, for this resource alone); None without token.
        self.sessions = (
            Sessions(max_age_s, clock, on_end=self.open_requests.end)
            if self._token is not None
            else None
        )

    @property
    def protected(self) -> bool:
        """Whether any token is set."""
        return self._token is not None or self._metrics_token is not None

    @property
    def cookie_name(self) -> bytes | None:
        """The session cookie's name (``rd_session_<12 hex>``, new in every process), or
        ``None`` without a token."""
        return self.sessions.cookie_name if self.sessions is not None else None

    # IResource -------------------------------------------------------------------------

    def getChildWithDefault(self, path: bytes, request: Any) -> IResource:
        return cast(IResource, self)  # a leaf: never asked, but the interface wants one

    def render(self, request: Request) -> Any:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        request.setHeader(b"Server", SERVER_NAME)
        refusal, session = self._refusal(request)
        if refusal is not None:
            return refusal
        if session is not None and not self.open_requests.has_room():
            self.refused["too_many_open_requests"] += 1
            return json_unavailable(
                request,
                "too_many_open_requests",
                f"{self.open_requests.max_open} requests signed in by cookie are open; retry in"
                f" {RETRY_AFTER_S} s",
                RETRY_AFTER_S,
            )
        target: Any = self.inner
        if not getattr(target, "isLeaf", False):
            target = resource.getChildForRequest(target, request)
        result = target.render(request)
        if session is not None and result is NOT_DONE_YET:
            # Still open (a stream, a streamed body): it must end with its session.
            self.open_requests.hold(session, request)
        return result

    # the checks ------------------------------------------------------------------------

    def _refusal(self, request: Request) -> tuple[bytes | None, Session | None]:
        """The answer refusing ``request`` (or answering it here: sign-in, session, sign-out),
        or ``None`` to serve it; and the session it was let in by, when by cookie."""
        refusal = self._limits_refusal(request)
        if refusal is None:
            refusal = self._host_refusal(request)
        if refusal is None:
            refusal = self._method_refusal(request)
        session = None
        if refusal is None and self.protected:
            refusal, session = self._access(request)
        if refusal is None and self._token is None and (request.postpath or []) == SESSION_PATH:
            refusal = self._session_answer(request, None)  # no sign-in here: the page is open
        return refusal, session

    def _limits_refusal(self, request: Request) -> bytes | None:
        headers = request.requestHeaders.getAllRawHeaders()
        return self._apply(request, limits_refusal(request.uri or b"", headers))

    def _host_refusal(self, request: Request) -> bytes | None:
        hosts = request.requestHeaders.getRawHeaders(b"host") or []
        refusal = host_refusal(
            hosts, request.clientproto or b"", _arrival_host(request), self.hosts
        )
        return self._apply(request, refusal)

    def _method_refusal(self, request: Request) -> bytes | None:
        """405 for a method this path does not take, spelled exactly (``get`` is refused)."""
        allowed = (b"POST",) if self._is_sign_out(request) else READ_METHODS
        return self._apply(request, method_refusal(request.method or b"", allowed))

    def _is_sign_out(self, request: Request) -> bool:
        return self._token is not None and (request.postpath or []) == SIGN_OUT_PATH

    def _access(self, request: Request) -> tuple[bytes | None, Session | None]:
        """The refusal (or the answer given here), or ``None`` to serve; and the session of
        the cookie the request was let in by (``None`` when let in otherwise)."""
        postpath = request.postpath or []
        if self._token is not None:
            if self._is_sign_out(request):
                return self._sign_out(request), None
            given = (request.args or {}).get(TOKEN_PARAMETER)
            if given is not None and postpath in ([], [b""]):
                return self._page_login(request, given), None
        cookie = self._cookie(request) if self.sessions is not None else None
        refusal, via, session = self.access_check(
            postpath, request.getHeader(b"authorization"), cookie
        )
        if refusal is not None or via is None:
            return self._apply(request, refusal), None
        if self.sessions is not None and postpath == SESSION_PATH:
            return self._session_answer(request, via), None
        return None, session

    def access_check(
        self, postpath: list[bytes], authorization: bytes | None, cookie: bytes | None
    ) -> tuple[Refusal | None, str | None, Session | None]:
        """The token check of a request for ``postpath`` (the path below the dashboard, as
        segments) with this ``Authorization`` header and session cookie value, but for the
        page's sign-in and sign-out (answered by the reactor thread alone): ``(refusal, via,
        session)``, ``via`` being ``"bearer"``, ``"cookie"`` (``session`` the cookie's), or
        ``None`` when no token guards the path. Any thread."""
        accepted: list[bytes] = []
        if postpath == [b"metrics"] and self._metrics_token is not None:
            accepted.append(self._metrics_token)
        if self._token is not None:
            accepted.append(self._token)
        elif not accepted:
            return None, None, None  # only /metrics is guarded
        if _bearer_matches(authorization, accepted):
            return None, "bearer", None
        if self.sessions is not None and (session := self.sessions.check(cookie)):
            return None, "cookie", session
        if self.sessions is not None and self.sessions.expired(cookie):
            where = "the session has expired: open the page with ?token= again"
        elif postpath in ([], [b""]):
            where = "a token is needed: the page takes ?token="
        else:
            where = "a token is needed: send Authorization: Bearer <token>"
        challenge = ((b"WWW-Authenticate", BEARER_CHALLENGE),)
        return Refusal(401, "unauthorized", where, headers=challenge), None, None

    def _cookie(self, request: Request) -> bytes | None:
        assert self.sessions is not None
        value: bytes | None = request.getCookie(self.sessions.cookie_name)
        return value

    def _page_login(self, request: Request, given: list[bytes]) -> bytes:
        """``?token=`` on the page: a redirect to the same URL without it, setting the cookie
        of a new session."""
        assert self._token is not None and self.sessions is not None
        if len(given) != 1 or not hmac.compare_digest(given[0], self._token):
            request.setHeader(b"WWW-Authenticate", BEARER_CHALLENGE)
            return self._refuse(request, 401, "unauthorized", "the token is wrong")
        self._set_cookie(request, self.sessions.issue(), self.sessions.max_age_s)
        request.setResponseCode(303)
        request.setHeader(b"Location", location_without_token(request))
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"signed in\n"

    def _session_answer(self, request: Request, via: str | None) -> bytes:
        """``GET session``: how this request was let in (``by``: ``"cookie"``, ``"bearer"``,
        or ``None`` when no token is needed), for the page's sign-out control."""
        from dashboard.web.json_api import json_answer

        sessions = self.sessions
        session = None
        if sessions is not None and via == "cookie":
            session = sessions.check(self._cookie(request))
        return json_answer(
            request,
            {
                "signed_in": via is not None,
                "by": via,
                "expires": session.expires if session is not None else None,
                "max_age_s": sessions.max_age_s if sessions is not None else None,
                "sign_out": "session/sign-out" if sessions is not None else None,
            },
        )

    def _sign_out(self, request: Request) -> bytes:
        """``POST session/sign-out``: end the cookie's session here (and the long requests
        open on it) and clear the cookie. From the dashboard's own page only: a browser's
        ``Sec-Fetch-Site`` must say so, or, without it, ``Origin`` must be absent or this
        request's own scheme, host and port."""
        from dashboard.web.json_api import json_answer

        assert self.sessions is not None
        fetch_site = request.getHeader(b"sec-fetch-site")
        if fetch_site is not None and fetch_site not in (b"same-origin", b"none"):
            return self._refuse(
                request, 403, "cross_site", "sign-out is taken from the dashboard's own page only"
            )
        origin = request.getHeader(b"origin")
        if fetch_site is None and origin is not None:
            host = request.getHeader(b"host")
            if host is None or not is_same_origin(origin, host, secure=request.isSecure()):
                shown = origin.decode("latin-1")[:100]
                return self._refuse(
                    request,
                    403,
                    "cross_site",
                    f"sign-out is taken from the dashboard's own page only, not from {shown!r}",
                )
        # The name the cookie came under: revoking may renew the key, and with it the name.
        name = self.sessions.cookie_name
        revoked = self.sessions.revoke(self._cookie(request))
        self._set_cookie(request, b"", 0, name=name)
        return json_answer(request, {"signed_out": True, "revoked": revoked})

    def _set_cookie(
        self, request: Request, value: bytes, max_age_s: int, *, name: bytes | None = None
    ) -> None:
        """Set (or, with ``max_age_s`` 0, clear) the session cookie (under ``name``, by
        default today's). ``Secure`` when the request came over TLS: on plain-HTTP loopback a
        Secure cookie would never be sent."""
        assert self.sessions is not None
        request.addCookie(
            name if name is not None else self.sessions.cookie_name,
            value,
            path=cookie_path(request.prepath or []),
            max_age=str(max_age_s),
            expires="Thu, 01 Jan 1970 00:00:00 GMT" if max_age_s == 0 else None,
            httpOnly=True,
            secure=request.isSecure(),
            sameSite="strict",
        )

    def _apply(self, request: Request, refusal: Refusal | None) -> bytes | None:
        """Answer ``request`` with ``refusal`` (its headers set); ``None`` for no refusal."""
        if refusal is None:
            return None
        for name, value in refusal.headers:
            request.setHeader(name, value)
        return self._refuse(
            request, refusal.status, refusal.error, refusal.message, **refusal.extra
        )

    def _refuse(
        self, request: Request, status: int, error: str, message: str, **extra: Any
    ) -> bytes:
        self.refused[error] += 1
        return json_error(request, status, error, message, **extra)


def _arrival_host(request: Request) -> str | None:
    """The local address the request arrived on (None for unix sockets and the like)."""
    try:
        host = getattr(request.getHost(), "host", None)
    except Exception:  # a transport already gone
        return None
    return host if isinstance(host, str) else None


def _bearer_matches(header: bytes | None, accepted: list[bytes]) -> bool:
    """Whether ``Authorization: Bearer <t>`` carries one of ``accepted``; every candidate is
    compared (in constant time each), so timing tells nothing about which one was close."""
    if header is None:
        return False
    scheme, _, credentials = header.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    credentials = credentials.strip()
    matched = False
    for token in accepted:
        matched |= hmac.compare_digest(credentials, token)
    return matched


def cookie_path(prepath: list[bytes]) -> bytes:
    """The cookie ``Path`` for a dashboard mounted at ``prepath`` (the segments before it):
    ``/`` at the root, ``/a/b/`` under ``/a/b``."""
    if not prepath:
        return b"/"
    return ("/" + "/".join(quote(segment, safe="") for segment in prepath) + "/").encode()


def query_without_token(query: bytes) -> bytes:
    """``query`` without any ``token`` parameter, read as Twisted reads it (``&`` and ``;``
    both separate parameters; names are %- and +-decoded); the others kept as sent, joined
    by ``&``."""
    kept = [
        item
        for item in re.split(rb"[&;]", query)
        if item and unquote_to_bytes(item.partition(b"=")[0].replace(b"+", b" ")) != b"token"
    ]
    return b"&".join(kept)


def location_without_token(request: Request) -> bytes:
    """A relative URL of the page itself, with the other query parameters kept."""
    path = request.path
    query = query_without_token(request.uri.partition(b"?")[2])
    tail = b"?" + query if query else b""
    if path.endswith(b"/"):
        return b"./" + tail
    # Mounted without the trailing slash: the page's relative URLs need it.
    return b"./" + path.rsplit(b"/", 1)[-1] + b"/" + tail


# binding without a token ------------------------------------------------------------------

_log = Logger(namespace="reactor-dashboard")


def exposed_interface(description: str) -> str | None:
    """The interface a server endpoint description binds when it is not loopback
    (``0.0.0.0``, ``::``, a LAN address...), else ``None`` (loopback, unix sockets)."""
    parts = _split(description.strip())
    if parts[0].lower() not in ("tcp", "tcp6", "ssl"):
        return None
    options = dict(part.split("=", 1) for part in parts[1:] if "=" in part)
    interface = options.get("interface")
    if interface is None:  # Twisted's own default: every interface
        return "::" if parts[0].lower() == "tcp6" else "0.0.0.0"
    return None if is_loopback(interface) else interface.replace("\\:", ":")


def warn_if_exposed(description: str, *, token_set: bool) -> str | None:
    """Warn loudly (twisted.logger and stderr) when ``description`` binds a non-loopback
    interface and no token guards the dashboard; returns the warning, or ``None``."""
    interface = exposed_interface(description)
    if interface is None or token_set:
        return None
    warning = (
        f"reactor-dashboard: WARNING: the dashboard listens on {interface} WITHOUT a token:"
        " anyone who can reach that address can read this process's internals (stacks,"
        " connections, request URLs). Set a token (Monitor(token=...), --token or"
        " REACTOR_DASHBOARD_TOKEN) or bind 127.0.0.1."
    )
    _log.warn("{warning}", warning=warning)
    print(warning, file=sys.stderr, flush=True)
    return warning
