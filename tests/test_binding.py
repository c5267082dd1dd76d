"""The dashboard binds loopback unless told otherwise."""

from __future__ import annotations

import pytest

from dashboard.web.binding import is_loopback, loopback_endpoint


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (8089, "tcp:8089:interface=127.0.0.1"),
        ("8089", "tcp:8089:interface=127.0.0.1"),
        ("tcp:8089", "tcp:8089:interface=127.0.0.1"),
        ("tcp:port=0", "tcp:port=0:interface=127.0.0.1"),
        ("tcp:8089:interface=127.0.0.1", "tcp:8089:interface=127.0.0.1"),
        ("tcp6:8089", "tcp6:8089:interface=\\:\\:1"),
        ("tcp6:8089:interface=\\:\\:1", "tcp6:8089:interface=\\:\\:1"),
        ("unix:/tmp/dash.sock", "unix:/tmp/dash.sock"),
    ],
)
def test_loopback_by_default(given: str | int, expected: str) -> None:
    assert loopback_endpoint(given) == expected


@pytest.mark.parametrize("endpoint", ["tcp:8089:interface=0.0.0.0", "tcp6:80:interface=\\:\\:"])
def test_other_interfaces_need_allow_remote(endpoint: str) -> None:
    with pytest.raises(ValueError, match="allow_remote"):
        loopback_endpoint(endpoint)
    assert loopback_endpoint(endpoint, allow_remote=True) == endpoint


def test_port_range() -> None:
    with pytest.raises(ValueError, match="65535"):
        loopback_endpoint(70000)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("example", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
