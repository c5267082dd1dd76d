"""Loopback test fixtures shared by several test modules."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def full_listener() -> Iterator[tuple[str, int]]:
    """A loopback listener whose accept queue is full: connects to it hang until they time
    out. Yields its ``(host, port)``; closes everything on exit."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        fillers.append(filler)
    try:
        yield listener.getsockname()
    finally:
        for s in [*fillers, listener]:
            s.close()
