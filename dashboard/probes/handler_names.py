"""How a handler (what the reactor calls) is named, and whether it is the dashboard's own.

* A timed call (``callLater``, ``callFromThread``): ``module.qualname`` of what it runs
  (``myapp.jobs.poll``); a ``LoopingCall`` by the function it loops, as the timeouts and
  Deferred probes name it (``myapp.jobs.poll (LoopingCall)``); a ``functools.partial`` by its
  function; a callable object by its class's ``__call__``.
* An I/O event, by the protocol a transport carries (a TLS or policies wrapper by the protocol
  it wraps): ``twisted.web.http.HTTPChannel.dataReceived`` (a read),
  ``....connectionLost`` (a read or hang-up that ended the connection),
  ``twisted.internet.tcp.Server.doWrite (HTTPChannel)`` (the transport writing what the
  protocol queued; a producer it resumes runs inside); a listening port's accept by its
  factory (``twisted.web.server.Site (accept)``); any other descriptor by its class and
  method (``twisted.internet.posixbase._UnixWaker.doRead``).

Own: the code named is the dashboard's (its package, not its demo): its sampler
(``dashboard.monitor.Monitor._tick``), its own port's channel (``QuietChannel``) and site.
Every function here runs on the reactor thread, on a handler's first call (the hot path caches
what it returns), and never raises.
"""

from __future__ import annotations

import functools
import types
from typing import Any

from twisted.internet import task

from dashboard.probes.base import is_own_module, qualname, unwrapped

READ = "read"
WRITE = "write"
LOST = "lost"

#: Wrappers followed to the protocol they carry (TLS, policies.ProtocolWrapper), at most.
_WRAP_LIMIT = 4


def _channel_proxy() -> type:
    try:
        from twisted.web.http import _GenericHTTPChannelProtocol
    except ImportError:  # pragma: no cover (another Twisted)
        return type("NoChannelProxy", (), {})
    proxy: type = _GenericHTTPChannelProtocol
    return proxy


#: Twisted Web's protocol for every HTTP connection: a proxy of the channel in ``_channel``
#: (an ``HTTPChannel``, or the dashboard's ``QuietChannel``), named by that channel.
CHANNEL_PROXY = _channel_proxy()


def _module_qualname(obj: Any) -> tuple[str, str]:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return (module if isinstance(module, str) else "", str(name))


def _joined(module: str, name: str) -> str:
    return f"{module}.{name}" if module else name


def call_name(func: object) -> tuple[str, bool]:
    """(name, own) of a timed call's function."""
    try:
        if isinstance(func, task.LoopingCall):
            inner = unwrapped(func.f)
            module, name = _module_qualname(inner)
            return (f"{_joined(module, name)} (LoopingCall)", is_own_module(module))
        inner = unwrapped(func)
        if isinstance(inner, (types.FunctionType, types.BuiltinFunctionType, type)):
            module, name = _module_qualname(inner)
        elif isinstance(inner, functools.partial):
            module, name = _module_qualname(inner.func)
        else:  # a callable object: its class's __call__
            module, name = _module_qualname(type(inner))
            name += ".__call__"
        return (_joined(module, name), is_own_module(module))
    except Exception:
        return (qualname(func), False)


def inner_protocol(protocol: object) -> object:
    """The protocol a wrapper carries (``wrappedProtocol``), followed a few levels."""
    for _ in range(_WRAP_LIMIT):
        try:
            if type(protocol) is CHANNEL_PROXY:
                protocol = protocol._channel  # type: ignore[attr-defined]
            inner = getattr(protocol, "wrappedProtocol", None)
        except Exception:
            return protocol
        if inner is None:
            break
        protocol = inner
    return protocol


def io_name(selectable: object, protocol: object, kind: str) -> tuple[str, bool]:
    """(name, own) of an I/O event of ``kind`` (READ, WRITE, LOST) on ``selectable``, which
    carried ``protocol`` (None: none, such as a listening port or a waker) when it began."""
    try:
        if protocol is not None:
            proto_type = type(inner_protocol(protocol))
            module, name = _module_qualname(proto_type)
            own = is_own_module(module)
            if kind == WRITE:
                t_module, t_name = _module_qualname(type(selectable))
                return (f"{_joined(t_module, t_name)}.doWrite ({name})", own)
            method = "connectionLost" if kind == LOST else "dataReceived"
            return (f"{_joined(module, name)}.{method}", own)
        factory = getattr(selectable, "factory", None)
        if factory is not None and kind == READ:
            module, name = _module_qualname(type(factory))
            return (f"{_joined(module, name)} (accept)", is_own_module(module))
        module, name = _module_qualname(type(selectable))
        method = {READ: "doRead", WRITE: "doWrite", LOST: "connectionLost"}.get(kind, kind)
        return (f"{_joined(module, name)}.{method}", is_own_module(module))
    except Exception:
        return (f"{qualname(type(selectable))} ({kind})", False)
