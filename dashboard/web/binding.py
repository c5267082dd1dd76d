"""Where the dashboard listens: loopback unless the caller explicitly says otherwise."""

from __future__ import annotations

import ipaddress

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})


def is_loopback(host: str) -> bool:
    host = host.strip("[]").replace("\\:", ":")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_endpoint(endpoint: str | int, *, allow_remote: bool = False) -> str:
    """A server endpoint description for ``endpoint`` (a port number or a description).

    TCP without ``interface=`` gets ``interface=127.0.0.1`` (Twisted's own default is every
    interface). A non-loopback interface raises ``ValueError`` unless ``allow_remote``.
    """
    if isinstance(endpoint, int):
        if not 0 <= endpoint <= 65535:
            raise ValueError(f"port must be from 0 to 65535, got {endpoint}")
        return f"tcp:{endpoint}:interface=127.0.0.1"
    text = endpoint.strip()
    if text.isdigit():
        return loopback_endpoint(int(text), allow_remote=allow_remote)
    kind = text.split(":", 1)[0].lower()
    if kind not in ("tcp", "tcp6", "ssl"):
        return text  # unix sockets and the like are local by nature
    options = dict(part.split("=", 1) for part in _split(text)[1:] if "=" in part)
    interface = options.get("interface")
    if interface is None:
        default = "\\:\\:1" if kind == "tcp6" else "127.0.0.1"
        return f"{text}:interface={default}"
    if not is_loopback(interface) and not allow_remote:
        raise ValueError(
            f"refusing to serve the dashboard on {interface!r}: it shows the process's internals."
            " Bind a loopback address, or pass allow_remote=True (and set a token)."
        )
    return text


def _split(description: str) -> list[str]:
    """Split an endpoint description on unescaped colons."""
    parts: list[str] = []
    current = ""
    escaped = False
    for char in description:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            current += char
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts
