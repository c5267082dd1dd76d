"""The dashboard's front door: size limits, a Host allow-list, tokens and safety headers.

:class:`GuardedResource` wraps the dashboard's resource (``Monitor.resource()``) and, for
every request, in this order:

1. sets the safety headers (:data:`SECURITY_HEADERS`: a Content-Security-Policy with no inline
   script and no other origin, ``frame-ancestors 'none'``, ``nosniff``, ``no-referrer``,
   ``X-Frame-Options: DENY``), so every answer carries them: errors, static files, the stream;
2. refuses a request target over :data:`MAX_URI_BYTES` (414) and more than
   :data:`MAX_HEADERS` header lines or one over :data:`MAX_HEADER_BYTES` (431), before
   anything else reads them (Twisted itself answers 400 past 16 KiB of request head);
3. refuses a ``Host`` header naming anything but loopback, the address the request arrived
   on, or a name in ``allowed_hosts`` (421): a DNS-rebinding page cannot read the dashboard;
4. when a token is set, asks for it (401 with ``WWW-Authenticate: Bearer``): the API and the
   stream take ``Authorization: Bearer <token>``; the page takes ``?token=<token>`` once and
   answers with a redirect that drops it from the URL and sets an HttpOnly, SameSite=Strict
   cookie scoped to the dashboard's path, which the page's own requests (history, the
   EventSource) then carry. ``/metrics`` also takes ``metrics_token`` (for scrapers).
   Comparisons are constant-time (:func:`hmac.compare_digest`).

Every refusal is a JSON error body. Everything here runs on the reactor thread.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sys
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote, unquote_to_bytes

from twisted.logger import Logger
from twisted.web import resource
from twisted.web.resource import IResource

from dashboard.web.binding import _split, is_loopback

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

#: Shortest token accepted, characters (``secrets.token_urlsafe(32)`` gives 43).
MIN_TOKEN_LENGTH = 16
#: Characters a token may use: RFC 6750's ``b64token`` (safe in a header, a URL and a cookie).
TOKEN_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")
#: The query parameter the page takes the token from.
TOKEN_PARAMETER = b"token"
#: Host names that always mean this machine (besides loopback addresses).
LOCAL_SUFFIX = ".localhost"


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


def split_host(header: str) -> str | None:
    """The host part of a ``Host`` header value, lowercased, brackets and trailing dot
    removed; ``None`` when it is malformed (empty, a bad port, an unbracketed IPv6)."""
    value = header.strip().lower()
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or not host:
            return None
    else:
        host, colon, rest = value.partition(":")
        rest = colon + rest
        if not host or ":" in rest[1:]:
            return None
    if rest and not (rest.startswith(":") and rest[1:].isdigit() and len(rest) <= 6):
        return None
    host = host.rstrip(".")
    return host or None


def host_names(names: str | Iterable[str]) -> tuple[str, ...]:
    """``allowed_hosts`` as a tuple: one name alone is one name, not its characters."""
    return (names,) if isinstance(names, str) else tuple(names)


class HostAllowList:
    """Which ``Host`` headers are served: loopback names and addresses (``localhost``,
    ``*.localhost``, 127.0.0.0/8, ::1) on any port, the address the request arrived on, and
    ``extra`` names (any port; ``"*"`` allows every host, which turns the check off)."""

    def __init__(self, extra: str | Iterable[str] = ()) -> None:
        names: set[str] = set()
        for name in host_names(extra):
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"allowed_hosts entries must be host names, got {name!r}")
            host = name.strip() if name.strip() == "*" else split_host(name)
            if host is None:
                raise ValueError(f"not a host name: {name!r}")
            names.add(host)
        self.any_host = "*" in names
        self.names = frozenset(names - {"*"})

    def allows(self, header: bytes | None, arrived_on: str | None) -> bool:
        """Whether a request with this ``Host`` header (``None``: none sent, as HTTP/1.0
        allows) that arrived on the local address ``arrived_on`` is served."""
        if self.any_host or header is None:
            return True
        host = split_host(header.decode("latin-1"))
        if host is None:
            return False
        if host in self.names or host.endswith(LOCAL_SUFFIX) or is_loopback(host):
            return True
        return arrived_on is not None and host == arrived_on.lower()


class GuardedResource(resource.Resource):
    """``inner`` (any resource: the Klein app's, leaf or not) behind the checks of this
    module. ``token``: required everywhere when set; ``metrics_token``: also accepted on
    ``/metrics`` (set alone, it guards ``/metrics`` only); ``allowed_hosts``: extra names for
    the ``Host`` check. ``refused`` counts refusals by reason. Reactor thread only."""

    isLeaf = True

    def __init__(
        self,
        inner: IResource,
        *,
        token: str | None = None,
        metrics_token: str | None = None,
        allowed_hosts: str | Iterable[str] = (),
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.inner = inner
        self._token = check_token(token, "token")
        self._metrics_token = check_token(metrics_token, "metrics_token")
        self.hosts = HostAllowList(allowed_hosts)
        self.refused: Counter[str] = Counter()
        if self._token is not None:
            digest = hmac.new(self._token, b"reactor-dashboard cookie v1", hashlib.sha256)
            # Named after the token, so dashboards on other ports of this host (cookies ignore
            # ports) keep their own; the value is a digest, never the token itself.
            self.cookie_name: bytes | None = b"rd_session_" + digest.hexdigest()[:12].encode()
            self._cookie_value: bytes | None = digest.hexdigest()[12:].encode()
        else:
            self.cookie_name = self._cookie_value = None

    @property
    def protected(self) -> bool:
        """Whether any token is set."""
        return self._token is not None or self._metrics_token is not None

    # IResource -------------------------------------------------------------------------

    def getChildWithDefault(self, path: bytes, request: Any) -> IResource:
        return cast(IResource, self)  # a leaf: never asked, but the interface wants one

    def render(self, request: Request) -> Any:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        target: Any = self.inner
        if not getattr(target, "isLeaf", False):
            target = resource.getChildForRequest(target, request)
        return target.render(request)

    # the checks ------------------------------------------------------------------------

    def _refusal(self, request: Request) -> bytes | None:
        """The answer refusing ``request``, or ``None`` to serve it."""
        uri = request.uri or b""
        if len(uri) > MAX_URI_BYTES:
            return self._refuse(
                request, 414, "uri_too_long", f"the request target is over {MAX_URI_BYTES} bytes"
            )
        count = 0
        for name, values in request.requestHeaders.getAllRawHeaders():
            for value in values:
                count += 1
                if len(name) + 2 + len(value) > MAX_HEADER_BYTES:
                    header = name.decode("latin-1")[:40]
                    return self._refuse(
                        request,
                        431,
                        "header_too_large",
                        f"header {header!r} is over {MAX_HEADER_BYTES} bytes",
                    )
        if count > MAX_HEADERS:
            return self._refuse(
                request, 431, "too_many_headers", f"more than {MAX_HEADERS} header lines"
            )
        hosts = request.requestHeaders.getRawHeaders(b"host") or []
        if len(hosts) > 1:  # which one would a proxy have checked? Neither is trusted.
            return self._refuse(request, 421, "host_not_allowed", "more than one Host header")
        if not self.hosts.allows(hosts[0] if hosts else None, _arrival_host(request)):
            host = hosts[0].decode("latin-1")[:100]
            return self._refuse(
                request,
                421,
                "host_not_allowed",
                f"this dashboard does not answer to Host {host!r}; add the name to"
                " allowed_hosts to serve it",
            )
        if self.protected:
            return self._access(request)
        return None

    def _access(self, request: Request) -> bytes | None:
        postpath = request.postpath or []
        is_page = postpath in ([], [b""])
        accepted: list[bytes] = []
        if postpath == [b"metrics"] and self._metrics_token is not None:
            accepted.append(self._metrics_token)
        if self._token is not None:
            accepted.append(self._token)
        elif not accepted:
            return None  # only /metrics is guarded
        if is_page and self._token is not None:
            given = (request.args or {}).get(TOKEN_PARAMETER)
            if given is not None:
                return self._page_login(request, given)
        if _bearer_matches(request.getHeader(b"authorization"), accepted):
            return None
        if self.cookie_name is not None and self._cookie_value is not None:
            cookie = request.getCookie(self.cookie_name)
            if cookie is not None and hmac.compare_digest(cookie, self._cookie_value):
                return None
        request.setHeader(b"WWW-Authenticate", b'Bearer realm="reactor-dashboard"')
        where = "the page takes ?token=" if is_page else "send Authorization: Bearer <token>"
        return self._refuse(request, 401, "unauthorized", f"a token is needed: {where}")

    def _page_login(self, request: Request, given: list[bytes]) -> bytes:
        """``?token=`` on the page: a redirect to the same URL without it, setting the cookie."""
        assert self._token is not None and self.cookie_name is not None
        assert self._cookie_value is not None
        if len(given) != 1 or not hmac.compare_digest(given[0], self._token):
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="reactor-dashboard"')
            return self._refuse(request, 401, "unauthorized", "the token is wrong")
        request.addCookie(
            self.cookie_name,
            self._cookie_value,
            path=cookie_path(request.prepath or []),
            httpOnly=True,
            secure=request.isSecure(),
            sameSite="strict",
        )
        request.setResponseCode(303)
        request.setHeader(b"Location", _location_without_token(request))
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"signed in\n"

    def _refuse(self, request: Request, status: int, error: str, message: str) -> bytes:
        from dashboard.web.json_api import json_error

        self.refused[error] += 1
        return json_error(request, status, error, message)


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


def _location_without_token(request: Request) -> bytes:
    """A relative URL of the page itself, with the other query parameters kept as sent."""
    path = request.path
    query = request.uri.partition(b"?")[2]
    kept = [
        pair
        for pair in query.split(b"&")
        if pair and unquote_to_bytes(pair.partition(b"=")[0].replace(b"+", b" ")) != b"token"
    ]
    tail = b"?" + b"&".join(kept) if kept else b""
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
