"""What every probe shares: the probe protocol, reversible patching and error counting."""

from __future__ import annotations

import contextlib
import functools
import os
import types
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from dashboard.redact import redact_text

JSONDict = dict[str, Any]

#: A time source in seconds. Probes take ``reactor.seconds`` so tests can drive ages with a Clock.
TimeSource = Callable[[], float]

#: Code of probe hooks that stand in for Twisted's own Deferred methods (the timeouts probe's
#: ``Deferred.cancel``, registered when its module is imported): Deferred machinery, to be
#: walked past like Twisted's own when the Deferred probe looks for a creation site.
DEFERRED_MACHINERY: list[types.CodeType] = []

_MISSING = object()


class Probe(Protocol):
    """One family of instrumentation.

    ``install``/``uninstall``/``collect`` are called from the reactor thread only.
    ``collect`` returns the JSON-ready section of the snapshot this probe owns; it must
    cost what is *shown* (top N), not what *exists*.
    """

    name: str

    def install(self) -> None: ...

    def uninstall(self) -> None: ...

    def collect(self) -> Any: ...


@attrs.define
class ProbeErrors:
    """Counts failures inside probes, by probe name. A probe never raises into user code:
    its hooks catch everything and call :meth:`record` instead.

    A probe whose failures reach ``disable_after`` is reported as disabled; hooks check
    :meth:`enabled` only on their slow paths.
    """

    disable_after: int = 100
    counts: dict[str, int] = attrs.field(factory=dict)
    last: dict[str, str] = attrs.field(factory=dict)

    def record(self, probe: str, exc: BaseException) -> None:
        self.counts[probe] = self.counts.get(probe, 0) + 1
        # A message may quote a URL: hidden credentials first, then cut (errors are rare).
        self.last[probe] = redact_text(f"{type(exc).__name__}: {exc}"[:1200])[:300]

    def enabled(self, probe: str) -> bool:
        return self.counts.get(probe, 0) < self.disable_after

    def as_json(self) -> JSONDict:
        return {
            "total": sum(self.counts.values()),
            "by_probe": dict(self.counts),
            "last": dict(self.last),
            "disabled": sorted(p for p, n in self.counts.items() if n >= self.disable_after),
        }


@attrs.define
class Patcher:
    """Replaces attributes and puts the exact originals back.

    ``patch(owner, name, new)`` remembers what ``owner`` held under ``name`` itself (or that
    it held nothing, in which case ``restore`` deletes the attribute again), so after
    ``restore()`` every attribute is the very same object as before.

    For a class or a module that is its ``__dict__`` entry. A plain instance's ``__dict__`` is
    never touched: on CPython 3.11+ reading it turns the instance's inline attribute values
    into a real dict for good, and every later attribute access on it (the reactor's, on every
    request) falls off the interpreter's specialised fast path (measured: +15,000 instructions
    per Klein request). An instance holds the attribute itself when what it answers is not
    what its class answers.
    """

    _saved: list[tuple[Any, str, Any]] = attrs.field(factory=list)

    def patch(self, owner: Any, name: str, new: Any) -> Any:
        """Install ``new`` as ``owner.name``; returns the attribute as looked up before."""
        before = getattr(owner, name, None)
        self._saved.append((owner, name, own_attribute(owner, name)))
        setattr(owner, name, new)
        return before

    def restore(self) -> None:
        while self._saved:
            owner, name, old = self._saved.pop()
            if old is _MISSING:
                with contextlib.suppress(AttributeError):
                    delattr(owner, name)
            else:
                setattr(owner, name, old)

    @property
    def active(self) -> bool:
        return bool(self._saved)


def own_attribute(owner: Any, name: str, default: Any = _MISSING) -> Any:
    """What ``owner`` holds under ``name`` itself (not what its class answers), or
    ``default``; never reads a plain instance's ``__dict__`` (see :class:`Patcher`)."""
    if isinstance(owner, (type, types.ModuleType)):
        return vars(owner).get(name, default)
    value = getattr(owner, name, _MISSING)
    if value is _MISSING:
        return default
    from_class: Any = getattr(type(owner), name, _MISSING)
    if from_class is not _MISSING and hasattr(type(from_class), "__get__"):
        try:  # a method: the instance answers a new bound method each time
            from_class = from_class.__get__(owner, type(owner))
        except Exception:
            return value
    if value is from_class or (isinstance(value, types.MethodType) and value == from_class):
        return default
    return value


def frame_site(filename: str, lineno: int, function: str) -> str:
    """The ``"path.py:LINE in function"`` form used for every site and stack frame."""
    return f"{shorten_path(filename)}:{lineno} in {function}"


def shorten_path(filename: str) -> str:
    """Trim a path to start at its package: ``twisted/x.py``, not ``.../site-packages/...``."""
    for marker in ("/site-packages/", "/dist-packages/"):
        cut = filename.rfind(marker)
        if cut >= 0:
            return filename[cut + len(marker) :]
    return filename


def safe_repr(obj: object, limit: int = 120) -> str:
    """A repr that never raises and never runs long."""
    try:
        text = repr(obj)
    except Exception as exc:  # user reprs may raise anything
        text = f"<{type(obj).__name__} repr failed: {type(exc).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def qualname(obj: object) -> str:
    """``module.qualname`` of a callable (bound methods and partials included), never raising."""
    try:
        func = getattr(obj, "func", obj)  # functools.partial
        func = getattr(func, "__func__", func)  # bound method
        name = getattr(func, "__qualname__", None) or type(func).__qualname__
        module = getattr(func, "__module__", None)
        return f"{module}.{name}" if module else str(name)
    except Exception:
        return safe_repr(obj)


#: The dashboard's own package, and the modules in it that are programs like any other.
OWN_PACKAGE = "dashboard"
PROGRAM_MODULES = frozenset({"dashboard.demo"})
#: At most this many ``__wrapped__`` links are followed (a hook of a hook...).
_UNWRAP_LIMIT = 8


#: The dashboard package's directory, and the file in it that is a program like any other.
OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_FILE = os.path.join(OWN_DIR, "demo.py")


def is_own_file(filename: str) -> bool:
    """Whether code in ``filename`` is the dashboard's own (the package, not its demo)."""
    return filename.startswith(OWN_DIR + os.sep) and filename != DEMO_FILE


def is_own_module(module: object) -> bool:
    """Whether ``module`` (a module name) is the dashboard's own code, not its demo."""
    if not isinstance(module, str) or module in PROGRAM_MODULES:
        return False
    return module == OWN_PACKAGE or module.startswith(OWN_PACKAGE + ".")


def unwrapped(function: object) -> object:
    """What ``function`` runs: a ``functools.partial``'s function, a bound method's function,
    and through ``__wrapped__`` (a hook stands for the method it replaces, whoever patched
    it). Never raises; any thread."""
    try:
        for _ in range(_UNWRAP_LIMIT):
            inner = function.func if isinstance(function, functools.partial) else function
            inner = getattr(inner, "__func__", inner)  # a bound method
            inner = getattr(inner, "__wrapped__", inner)
            if inner is function:
                break
            function = inner
    except Exception:  # a program's __getattr__: take what was reached
        pass
    return function


def is_own_function(function: object) -> bool:
    """Whether ``function`` (as a delayed call holds it) is the dashboard's own code: the
    module of what it runs (see :func:`unwrapped`), so a hook the dashboard put on a
    program's or Twisted's method (``LoopingCall.start``) stays theirs. Never raises."""
    try:
        return is_own_module(getattr(unwrapped(function), "__module__", None))
    except Exception:
        return False
