"""Per-connection detail, built in ``collect()`` for the connections shown only.

Everything here reads a live transport (reactor thread only) and never raises for a
transport in an odd state (half-connected, closing, socket gone): such fields become None.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import address as _address
from twisted.internet import tcp, unix
from twisted.internet.endpoints import _WrappingProtocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.web import http

from dashboard.probes.base import JSONDict, own_attribute, qualname
from dashboard.probes.connection_registry import ConnEntry

try:  # TLS needs pyOpenSSL; without it no transport can be TLS.
    from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
except ImportError:  # pragma: no cover - pyOpenSSL comes with twisted[tls] (via treq)
    TLSMemoryBIOFactory = TLSMemoryBIOProtocol = None  # type: ignore[assignment,misc]

__all__ = [
    "MAX_REQUESTS_PER_CONNECTION",
    "TLSMemoryBIOFactory",
    "TLSMemoryBIOProtocol",
    "describe",
    "describe_port",
    "format_address",
    "is_port",
    "pending_write_bytes",
    "text",
    "unwrap_protocol",
    "uri_text",
]

#: In-flight requests listed per HTTP connection (pipelined requests queue up).
MAX_REQUESTS_PER_CONNECTION = 10
#: Longest method / URI string kept, in characters.
MAX_TEXT = 200

#: Hides credentials in a URI (``dashboard.redact.Redactor.uri``).
Redact = Callable[[str], str]


def text(value: object, limit: int = MAX_TEXT) -> str:
    """Bytes or str as a bounded str (bytes decoded as UTF-8 with replacement)."""
    return _cut(_decoded(value, limit), limit)


def uri_text(value: object, redact: Redact, limit: int = MAX_TEXT) -> str:
    """A request URI as a bounded str, redacted before it is cut (a secret the cut would
    split is still hidden whole)."""
    return _cut(redact(_decoded(value, limit)), limit)


def _decoded(value: object, limit: int) -> str:
    # At most 4 bytes per character: enough to fill ``limit`` characters, never more.
    if isinstance(value, bytes | bytearray):
        return bytes(value[: limit * 4]).decode("utf-8", errors="replace")
    return str(value)[: limit * 4]


def _cut(out: str, limit: int) -> str:
    return out if len(out) <= limit else out[: limit - 3] + "..."


def format_address(addr: object) -> str | None:
    """``"127.0.0.1:8080"``, ``"[::1]:8080"``, a unix path (``"@name"`` for the abstract
    namespace), or None when there is no address (an unbound unix client)."""
    if isinstance(addr, _address.IPv6Address):
        return f"[{addr.host}]:{addr.port}"
    if isinstance(addr, _address.IPv4Address):
        return f"{addr.host}:{addr.port}"
    if isinstance(addr, _address.UNIXAddress):
        name = addr.name
        if not name:
            return None
        path = text(name)
        return "@" + path[1:] if path.startswith("\0") else path
    return None if addr is None else text(addr)


def _host(transport: Any) -> str | None:
    # getHost() is a getsockname() syscall, and fails once the socket is gone.
    if getattr(transport, "socket", None) is None:
        return None
    try:
        return format_address(transport.getHost())
    except Exception:  # closing / half-initialised transport: no address to show
        return None


def _peer(transport: Any) -> str | None:
    try:
        return format_address(transport.getPeer())
    except Exception:  # a client still resolving its address has no peer yet
        return None


def unwrap_protocol(protocol: object) -> tuple[object, bool]:
    """The application protocol under TLS, policy wrappers, endpoint wrappers and
    twisted.web's HTTP/1-or-2 switch; and whether a TLS layer was seen on the way."""
    tls = False
    for _ in range(6):  # wrappers nest a few deep at most; never loop forever
        if TLSMemoryBIOProtocol is not None and isinstance(protocol, TLSMemoryBIOProtocol):
            tls = True
            protocol = protocol.wrappedProtocol
        elif isinstance(protocol, ProtocolWrapper):
            protocol = protocol.wrappedProtocol
        elif isinstance(protocol, _WrappingProtocol):
            protocol = protocol._wrappedProtocol
        elif isinstance(protocol, http._GenericHTTPChannelProtocol):
            protocol = protocol._channel
        else:
            break
    return protocol, tls


def _requests(
    channel: http.HTTPChannel, age_s: float, redact: Redact
) -> tuple[list[JSONDict], int]:
    """In-flight requests of ``channel``; ``age_s`` is the time since bytes last came in on its
    connection (for HTTP/1.1, since its request arrived; pipelined requests share it). URIs
    pass through ``redact``; headers are never read (no Authorization, no Cookie)."""
    queue = channel.requests
    shown: list[JSONDict] = []
    last = queue[-1] if queue else None
    for request in queue[:MAX_REQUESTS_PER_CONNECTION]:
        # What the request itself holds (not its class's placeholder), read without touching
        # request.__dict__: that would take the object off the interpreter's fast path.
        method, uri = own_attribute(request, "method", None), own_attribute(request, "uri", None)
        if method is None and request is last:
            # Headers still arriving: the channel holds the parsed request line meanwhile.
            method = getattr(channel, "_command", None)
            uri = getattr(channel, "_path", None)
        shown.append(
            {
                "method": text(request.method if method is None else method),
                "uri": uri_text(request.uri if uri is None else uri, redact),
                "age_s": round(max(0.0, age_s), 3),
            }
        )
    return shown, len(queue)


def pending_write_bytes(transport: Any) -> int:
    """Bytes written by the protocol but not yet accepted by the kernel."""
    return int(len(transport.dataBuffer) - transport.offset + transport._tempDataLen)


def describe(entry: ConnEntry, transport: Any, now: float, redact: Redact) -> JSONDict:
    """The ``items`` element for one connection (costs one getsockname syscall); request
    URIs pass through ``redact``."""
    protocol = getattr(transport, "protocol", None)
    app, _ = unwrap_protocol(protocol)
    item: JSONDict = {
        "kind": entry.kind,
        "local": _host(transport),
        "peer": _peer(transport),
        "protocol": None if protocol is None else qualname(type(app)),
        "age_s": round(max(0.0, now - entry.created), 3),
        "pending_write_bytes": pending_write_bytes(transport),
        "bytes_in": entry.bytes_in,
        "bytes_out": entry.bytes_out,
        "tls": entry.tls,
        "producer_paused": bool(transport.producerPaused),
    }
    if isinstance(app, http.HTTPChannel):
        item["requests"], item["requests_in_flight"] = _requests(app, now - entry.last_in, redact)
    return item


def describe_port(port: Any) -> tuple[str, str, str, bool]:
    """``(address, factory, kind, tls)`` of a port that is listening (one syscall)."""
    kind = "unix" if isinstance(port, unix.Port) else "tcp"
    address = format_address(port.getHost()) or ""
    factory = port.factory
    tls = port._type == "TLS"
    if TLSMemoryBIOFactory is not None and isinstance(factory, TLSMemoryBIOFactory):
        tls = True
        factory = factory.wrappedFactory
    return address, qualname(type(factory)), kind, tls


def is_port(obj: object) -> bool:
    """A stream listening port (TCP, TLS or unix)."""
    return isinstance(obj, tcp.Port)
