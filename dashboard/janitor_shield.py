"""Keep trial's janitor off the dashboard's own timers and port, under ``reactor-dashboard run``.

After each test, ``twisted.trial.util._Janitor`` cancels every pending delayed call of the
reactor, and after each ``TestCase`` class it removes every reader and writer, reporting each one
as a ``DirtyReactorAggregateError``. Under ``run -m twisted.trial`` that meant the monitor's
sampling timer and the dashboard's port: sampling stopped, the dashboard stopped answering and
every test class failed.

The shield wraps the janitor's two cleaning steps so that, while one runs, the janitor sees the
reactor without the dashboard's own work (:class:`ProgramView`): ``getDelayedCalls()`` leaves out
the dashboard's calls, and ``removeAll()`` keeps the dashboard's port and connections registered.
Everything the program left behind is still reported and cleaned exactly as without the monitor,
so trial's verdict stays the program's. The reactor itself is never patched.

``twisted.trial.util`` is patched when it is imported (a one-module import watch, so a program
that never imports trial does not import it either), or at once if it already was.
``uninstall()`` undoes both. Everything here runs on the main (reactor) thread.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import attrs

from dashboard.probes.base import Patcher, is_own_function

#: The module whose ``_Janitor`` is wrapped.
JANITOR_MODULE = "twisted.trial.util"
#: Where the global reactor is, which a janitor given no reactor cleans.
INSTALLED_REACTOR = "twisted.internet.reactor"


@attrs.define
class OwnWork:
    """Tells the dashboard's own delayed calls and selectables from the program's.

    ``ports``: the dashboard's listening ports (from ``Monitor.listen()``). Own selectables are
    those ports and the connections accepted on them; own delayed calls are those of a function
    in the ``dashboard`` package (judged by what it runs, see :func:`is_own_function`: the
    dashboard's hook on a program's ``LoopingCall.start`` stays the program's), of the
    dashboard's site (its log-date timer) or of a protocol on one of its connections (HTTP
    idle timeouts). Never raises.
    """

    ports: list[Any] = attrs.field(factory=list)

    def owns_selectable(self, selectable: object) -> bool:
        if any(selectable is port for port in self.ports):
            return True
        server = getattr(selectable, "server", None)  # tcp.Server: the Port that accepted it
        return server is not None and any(server is port for port in self.ports)

    def owns_call(self, call: Any) -> bool:
        try:
            func = call.func
            if is_own_function(func):  # what it runs: a hook on a program's method is not
                return True
            holder = getattr(func, "__self__", None)
            if holder is None:
                return False
            if any(holder is getattr(port, "factory", None) for port in self.ports):
                return True
            transport = getattr(holder, "transport", None)
            return transport is not None and self.owns_selectable(transport)
        except Exception:
            return False


class ProgramView:
    """The reactor as trial's janitor should see it: without the dashboard's own work.

    Only what the janitor's cleaning steps call is changed; any other attribute is the
    reactor's.
    """

    def __init__(self, reactor: Any, own: OwnWork) -> None:
        self._reactor = reactor
        self._own = own

    def getDelayedCalls(self) -> list[Any]:
        return [c for c in self._reactor.getDelayedCalls() if not self._own.owns_call(c)]

    def removeAll(self) -> list[Any]:
        """The reactor's ``removeAll()``, the dashboard's selectables kept: they are taken out
        just before and registered again just after, so the janitor neither closes nor lists
        them."""
        reactor = self._reactor
        readers = [s for s in reactor.getReaders() if self._own.owns_selectable(s)]
        writers = [s for s in reactor.getWriters() if self._own.owns_selectable(s)]
        for selectable in readers:
            reactor.removeReader(selectable)
        for selectable in writers:
            reactor.removeWriter(selectable)
        try:
            removed: list[Any] = reactor.removeAll()
        finally:
            for selectable in readers:
                reactor.addReader(selectable)
            for selectable in writers:
                reactor.addWriter(selectable)
        return removed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


@attrs.define(eq=False)
class JanitorShield:
    """Hides ``own`` work of ``reactor`` from trial's janitor while installed.

    A janitor given another reactor (trial's own tests make some) is left alone.
    """

    reactor: Any
    own: OwnWork
    _patcher: Patcher = attrs.field(factory=Patcher, init=False)
    _watch: _ImportWatch | None = attrs.field(default=None, init=False)

    def install(self) -> None:
        """Patch trial's janitor now if it is imported, else when it is."""
        if self._watch is not None or self._patcher.active:
            return
        module = sys.modules.get(JANITOR_MODULE)
        if module is not None:
            self._patch(module)
            return
        self._watch = _ImportWatch(JANITOR_MODULE, self._patch)
        sys.meta_path.insert(0, self._watch)

    def uninstall(self) -> None:
        """Undo every patch and stop watching imports. Safe to call twice."""
        if self._watch is not None:
            if self._watch in sys.meta_path:
                sys.meta_path.remove(self._watch)
            self._watch = None
        self._patcher.restore()

    @property
    def patched(self) -> bool:
        return self._patcher.active

    def _patch(self, module: ModuleType) -> None:
        janitor_class = getattr(module, "_Janitor", None)
        if janitor_class is None or self._patcher.active:
            return
        for name in ("_cleanPending", "_cleanReactor"):
            original = getattr(janitor_class, name, None)
            if callable(original):
                self._patcher.patch(janitor_class, name, self._seen_through_view(original))

    def _seen_through_view(self, step: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """``step`` run with the janitor's reactor replaced by a :class:`ProgramView` (the
        janitor reads its ``reactor`` attribute, the global reactor when None)."""
        shield = self

        @functools.wraps(step)
        def cleaning_step(janitor: Any) -> Any:
            given = janitor.reactor
            cleaned = sys.modules.get(INSTALLED_REACTOR) if given is None else given
            watched = cleaned is shield.reactor
            if not watched or not shield.patched:
                return step(janitor)
            janitor.reactor = ProgramView(shield.reactor, shield.own)
            try:
                return step(janitor)
            finally:
                janitor.reactor = given

        return cleaning_step


class _ImportWatch(importlib.abc.MetaPathFinder):
    """Calls ``then(module)`` right after the module ``name`` is executed by its own loader
    (found by the finders after this one). Other imports pass through untouched."""

    def __init__(self, name: str, then: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.then = then

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        found = _find_spec_after(self, fullname, path, target)
        loader = found.loader if found is not None else None
        if found is None or loader is None or not hasattr(loader, "exec_module"):
            return found
        execute = loader.exec_module
        then = self.then

        def exec_module(module: ModuleType) -> None:
            execute(module)
            with contextlib.suppress(Exception):  # never fail the program's import
                then(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return found


def _find_spec_after(
    watch: object, fullname: str, path: Sequence[str] | None, target: ModuleType | None
) -> importlib.machinery.ModuleSpec | None:
    """The spec the import system would find without ``watch``."""
    for finder in list(sys.meta_path):
        find_spec = getattr(finder, "find_spec", None)
        if finder is watch or find_spec is None:
            continue
        spec: importlib.machinery.ModuleSpec | None = find_spec(fullname, path, target)
        if spec is not None:
            return spec
    return None
