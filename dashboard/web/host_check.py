"""Which ``Host`` headers the dashboard answers to: strict syntax, then an allow-list.

A ``Host`` value is served only when it is syntactically a host name (RFC 1123 labels), an
IPv4 address or a bracketed IPv6 address, with an optional port (:func:`split_host`), and
names loopback, the address the request arrived on, or a name the user allowed
(:class:`HostAllowList`). So ``evil.com/.localhost``, ``evil.com@x.localhost``, ``a b`` and
``a#b`` are malformed, not loopback names, and a DNS-rebinding page cannot read the dashboard.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from dashboard.web.binding import is_loopback

#: Host names that always mean this machine (besides loopback addresses).
LOCAL_SUFFIX = ".localhost"
#: One RFC 1123 label: letters, digits and inner hyphens, 1 to 63 characters.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
#: A last label that a browser would read as part of an IPv4 address (WHATWG URL).
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
#: Longest host name, characters (without a trailing dot).
MAX_HOST_NAME = 253


def is_host_name(host: str) -> bool:
    """Whether ``host`` (lowercase, no trailing dot) is an RFC 1123 host name: dot-separated
    labels of letters, digits and inner hyphens, 1 to 63 characters each, 253 in all; a name
    whose last label reads as a number must be a whole IPv4 address instead."""
    if not host or len(host) > MAX_HOST_NAME or not host.isascii():
        return False
    labels = host.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return False
    return _NUMERIC_LABEL.fullmatch(labels[-1]) is None


def is_ipv4_literal(host: str) -> bool:
    """Whether ``host`` is a dotted-quad IPv4 address (four decimal parts, no leading zeros)."""
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def is_ipv6_literal(host: str) -> bool:
    """Whether ``host`` (what was inside the brackets) is an IPv6 address, without a zone."""
    if "%" in host or not host.isascii():
        return False
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 5 and 1 <= int(text) <= 65535


def split_host(header: str) -> str | None:
    """The host part of a ``Host`` header value, lowercased, brackets and one trailing dot
    removed; ``None`` unless the value is a host name (:func:`is_host_name`), an IPv4
    address or a bracketed IPv6 address, with an optional port from 1 to 65535. Anything
    else (``evil.com/.localhost``, ``a@b``, a space, a ``#``) is malformed."""
    split = split_host_port(header)
    return split[0] if split is not None else None


def split_host_port(header: str) -> tuple[str, int | None] | None:
    """The host (as :func:`split_host` gives it) and the port (``None`` when not given) of a
    ``Host`` header value, or ``None`` when it is malformed."""
    if not header.isascii():  # before lower(): "K" (the Kelvin sign) lowercases to "k"
        return None
    value = header.lower()
    if value.startswith("["):
        host, bracket, port = value[1:].partition("]")
        if not bracket or not is_ipv6_literal(host):
            return None
    else:
        host, colon, port = value.partition(":")
        port = colon + port
        if host.endswith("."):  # a fully qualified name; one dot only
            host = host[:-1]
        if not (is_ipv4_literal(host) or is_host_name(host)):
            return None
    if port and not (port.startswith(":") and _is_port(port[1:])):
        return None
    return host, int(port[1:]) if port else None


#: The port a URL of each scheme means when it names none.
DEFAULT_PORTS = {"http": 80, "https": 443}


def is_same_origin(origin: bytes, host: bytes, *, secure: bool) -> bool:
    """Whether an ``Origin`` header names the very origin a request was made to: its scheme
    (``https`` when the request came over TLS, else ``http``), the host of its ``Host``
    header and the port (each scheme's default when not written). ``null``, another scheme,
    a path or anything malformed is not."""
    text = origin.decode("latin-1")
    scheme, sep, authority = text.partition("://")
    wanted = "https" if secure else "http"
    if not sep or scheme.lower() != wanted:
        return False
    theirs = split_host_port(authority)
    ours = split_host_port(host.decode("latin-1"))
    if theirs is None or ours is None:
        return False
    default = DEFAULT_PORTS[wanted]
    return (_same_host(theirs[0]), theirs[1] or default) == (
        _same_host(ours[0]),
        ours[1] or default,
    )


def _same_host(host: str) -> str:
    """``host`` spelled one way: an IPv6 address compressed (``0:0::1`` is ``::1``)."""
    return str(ipaddress.IPv6Address(host)) if ":" in host else host


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
            host = name.strip() if name.strip() == "*" else split_host(name.strip())
            if host is None:
                raise ValueError(f"not a host name: {name!r}")
            names.add(host)
        self.any_host = "*" in names
        self.names = frozenset(names - {"*"})

    def allows(self, header: bytes | None, arrived_on: str | None) -> bool:
        """Whether a request with this ``Host`` header (``None``: none sent, as HTTP/1.0
        allows) that arrived on the local address ``arrived_on`` is served. A malformed
        header is refused, even with ``"*"``."""
        if header is None:
            return True
        host = split_host(header.decode("latin-1"))
        if host is None:
            return False
        if self.any_host:
            return True
        if host in self.names or host.endswith(LOCAL_SUFFIX) or is_loopback(host):
            return True
        return arrived_on is not None and host == arrived_on.lower()
