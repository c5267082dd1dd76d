"""The I/O hooks of busy time by handler: a wrapper per reactor flavour around the method that
dispatches one I/O event, generated from one template (as :mod:`dashboard.probes.wait_hook`
is) so that each has the exact parameter list of the method it wraps and the accounting
inline: it runs on every read and write, and a second Python call per event cost about a
quarter of the hook (callgrind, 3.11).

Per event, on the reactor thread: the protocol the transport carries (before the call: a
connection that ends drops it; Twisted Web's ``_GenericHTTPChannelProtocol`` proxy by the
channel behind it, so the dashboard's own ``QuietChannel`` is told from the program's), the
reactor clock before and after, then the handler's entry (found by the protocol's class in
the kind's cache, else named by :meth:`HandlerTable.io_entry`) gets the call, its seconds, its
maximum and its histogram bucket. A read after which the transport carries no protocol ended
the connection: it is counted as ``connectionLost``. Nothing raises into the reactor: a
failure of the accounting is passed to ``record_error``; the event's own outcome is
untouched.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from dashboard.probes.handler_names import CHANNEL_PROXY
from dashboard.probes.handler_table import BOUNDS_WITH_INF, DURATION_BOUNDS_S, HandlerTable

#: Flavours: (parameters, arguments passed on, the event's kind: 0 read, 1 write, 2 lost).
FLAVOURS: dict[str, tuple[str, str, str]] = {
    # PosixReactorBase._PollLikeMixin (epoll, poll)
    "poll": (
        "selectable, fd, event",
        "selectable, fd, event",
        "0 if event & poll_in else (2 if event & poll_disconnected else 1)",
    ),
    # SelectReactor
    "select": ("selectable, method", "selectable, method", '0 if method == "doRead" else 1'),
    # AsyncioSelectorReactor._readOrWrite
    "asyncio": ("selectable, read", "selectable, read", "0 if read else 1"),
}

_TEMPLATE = """
def make(real, clock, caches, slow, record_error, poll_in, poll_disconnected):
    floor = DURATION_BOUNDS_S[0]
    bounds = BOUNDS_WITH_INF
    channel_proxy = CHANNEL_PROXY

    def io_hook({params}):
        try:
            protocol = selectable.protocol
            if type(protocol) is channel_proxy:
                protocol = protocol._channel
        except Exception:
            protocol = None
        t0 = clock()
        try:
            real({args})
        finally:
            d = clock() - t0
            try:
                kind = {kind}
                if protocol is not None:
                    if kind == 0:
                        try:
                            if selectable.protocol is None:
                                kind = 2
                        except Exception:
                            kind = 2
                    e = caches[kind].get(type(protocol))
                else:
                    e = caches[kind].get(type(selectable))
                if e is None:
                    e = slow(selectable, protocol, kind)
                e[0] += 1
                e[1] += d
                if d > e[2]:
                    e[2] = d
                if d > floor:
                    e[4][bisect_left(bounds, d)] += 1
            except Exception as exc:
                record_error(exc)

    return io_hook
"""

_Factory = Callable[..., Callable[..., None]]


def _compile(params: str, args: str, kind: str) -> _Factory:
    namespace: dict[str, Any] = {
        "CHANNEL_PROXY": CHANNEL_PROXY,
        "bisect_left": bisect_left,
        "BOUNDS_WITH_INF": BOUNDS_WITH_INF,
        "DURATION_BOUNDS_S": DURATION_BOUNDS_S,
    }
    source = _TEMPLATE.format(params=params, args=args, kind=kind)
    exec(compile(source, "<handler_io>", "exec"), namespace)
    factory: _Factory = namespace["make"]
    return factory


_FACTORIES: dict[str, _Factory] = {name: _compile(*flavour) for name, flavour in FLAVOURS.items()}


def io_hook(
    flavour: str,
    real: Callable[..., Any],
    table: HandlerTable,
    clock: Callable[[], float],
    record_error: Callable[[BaseException], None],
    *,
    poll_in: int = 0,
    poll_disconnected: int = 0,
) -> Callable[..., None]:
    """A wrapper of ``real`` (the reactor's dispatch of one I/O event) for ``flavour`` (a
    ``FLAVOURS`` key), counting into ``table``. ``poll_in`` / ``poll_disconnected``: the
    poll-like reactor's event bits (``_POLL_IN``, ``_POLL_DISCONNECTED``)."""
    return _FACTORIES[flavour](
        real, clock, table.io_caches, table.io_entry, record_error, poll_in, poll_disconnected
    )
