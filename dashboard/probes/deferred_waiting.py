"""What waits on a pending Deferred: its first callbacks and, for an ``inlineCallbacks``
generator or a coroutine, where it is suspended. Computed for the Deferreds shown only
(``oldest``), at collect time; reactor thread."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from dashboard.probes.base import frame_site, qualname


def describe_waiting(d: defer.Deferred[Any], limit: int = 3) -> list[str]:
    """What waits on ``d``: its first callbacks' names and, for an ``inlineCallbacks``
    generator or a coroutine driven by it, the suspended function and line."""
    out: list[str] = []
    callbacks = getattr(d, "_callbacks", None) or []
    for (callback, args, _kw), _errback in callbacks[:limit]:
        out.append(qualname(callback))
        for arg in args or ():
            where = suspended_at(arg)
            if where is not None:
                out.append(f"suspended at {where}")
                break
    chained = getattr(d, "_chainedTo", None)
    if chained is not None:
        out.append("chained to another Deferred")
    return out


def suspended_at(obj: object) -> str | None:
    """For a generator or coroutine, ``"path.py:LINE in function"`` of the innermost
    suspended frame outside ``twisted.internet.defer`` (awaiting a Deferred suspends in its
    ``__iter__``, which says nothing); ``None`` for anything else."""
    found = None
    for _ in range(20):
        frame = getattr(obj, "gi_frame", None) or getattr(obj, "cr_frame", None)
        if frame is None:
            break
        if frame.f_code.co_filename != defer.__file__ or found is None:
            found = frame
        obj = getattr(obj, "gi_yieldfrom", None) or getattr(obj, "cr_await", None)
    if found is None:
        return None
    return frame_site(found.f_code.co_filename, found.f_lineno, found.f_code.co_qualname)
