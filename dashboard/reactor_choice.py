"""A program that installs its own reactor (Scrapy installs the asyncio one and refuses any
other), under ``reactor-dashboard run``.

``run`` installs the default reactor and starts the monitor before the program's first line.
While that reactor is unused, a program that installs another one would have succeeded in plain
``python``, so :class:`ReactorChoice` lets it: it wraps ``twisted.internet.main.installReactor``
(every reactor's ``install()`` goes through it) and, when the program installs a reactor, the
dashboard moves to it (:meth:`Attachment.move_to`) and says so in one line on stderr.

"Unused" means what plain ``python`` would show: nothing of the program's is on the reactor
(no delayed call, reader, writer or system event trigger beyond the dashboard's own), it never
ran, and no module the program imported holds it as a global (``from twisted.internet import
reactor`` at import time would have installed the default reactor in plain ``python`` too, and
the program's own install would fail there as well). Globals that held it before the program
ran (klein's, imported by the dashboard) are pointed at the program's reactor.

Otherwise, or when ``--reactor`` was given, the program's install fails as it would without
``run`` (``ReactorAlreadyInstalledError``) and one line on stderr says which ``--reactor`` to
pass, printed at once: some programs (Scrapy) swallow that error, report their own and exit 0.
The exit status stays the program's (2 from ``run`` when the error ends the program).

Main thread only. ``uninstall()`` puts ``installReactor`` back.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import main as internet_main

from dashboard.attachment import PROG, Attachment, uninstall_reactor
from dashboard.probes.base import Patcher

INSTALLED = "twisted.internet.reactor"
#: Errors of the dashboard's own kept in ``ReactorChoice.errors``.
MAX_ERRORS = 10


def reactor_short_name(reactor: Any) -> str | None:
    """The ``--reactor`` name of ``reactor``'s kind (``twisted.application.reactors``), if any."""
    try:
        from twisted.application.reactors import getReactorTypes

        module = type(reactor).__module__
        for kind in getReactorTypes():
            if kind.moduleName == module:
                name: str = kind.shortName
                return name
    except Exception:
        return None
    return None


def trigger_count(reactor: Any) -> int:
    """How many system event triggers ``reactor`` holds (every event, every phase)."""
    total = 0
    for event in getattr(reactor, "_eventTriggers", {}).values():
        total += len(event.before) + len(event.during) + len(event.after)
    return total


def reactor_globals(reactor: Any) -> set[tuple[str, str]]:
    """Every ``(module, name)`` whose global ``name`` is ``reactor`` (``twisted.internet``'s
    own excepted). One pass over ``sys.modules``: a few milliseconds, done twice at most."""
    found: set[tuple[str, str]] = set()
    for module_name, module in list(sys.modules.items()):
        if module_name in (INSTALLED, "twisted.internet"):
            continue
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for name, value in list(namespace.items()):
            if value is reactor:
                found.add((module_name, name))
    return found


def rebind_globals(where: set[tuple[str, str]], old: Any, new: Any) -> None:
    """Point each ``(module, name)`` global that still holds ``old`` at ``new``."""
    for module_name, name in where:
        module = sys.modules.get(module_name)
        if module is not None and getattr(module, name, None) is old:
            setattr(module, name, new)


@attrs.define(eq=False)
class ReactorChoice:
    """Lets the program install its own reactor while the pre-installed one is unused.

    ``may_follow``: False when ``--reactor`` was given (the user chose; the program's own
    choice then fails as without ``run``).
    """

    attachment: Attachment
    may_follow: bool
    #: the one line printed when the program's reactor could not be installed
    refused: str | None = attrs.field(default=None, init=False)
    #: the reactor the dashboard moved to, if it did
    followed: Any = attrs.field(default=None, init=False)
    #: errors of the dashboard's own met while deciding or moving (one line each)
    errors: list[str] = attrs.field(factory=list, init=False)
    _patcher: Patcher = attrs.field(factory=Patcher, init=False)
    _triggers: int = attrs.field(default=0, init=False)
    #: globals bound to the reactor before the program ran (klein's ``reactor``: the
    #: dashboard imported it); they follow the dashboard when it moves
    _dashboard_globals: set[tuple[str, str]] = attrs.field(factory=set, init=False)

    def install(self) -> None:
        """Wrap ``installReactor`` until the reactor shuts down; the reactor's triggers now
        are the dashboard's."""
        if self._patcher.active:
            return
        reactor = self.attachment.reactor
        reactor.addSystemEventTrigger("after", "shutdown", self.uninstall)
        self._triggers = trigger_count(reactor)
        self._dashboard_globals = reactor_globals(self.attachment.reactor)
        original: Callable[[Any], None] = internet_main.installReactor

        @functools.wraps(original)  # the same name, qualified name and module as Twisted's
        def installReactor(reactor: Any) -> None:
            self._program_installs(reactor, original)

        self._patcher.patch(internet_main, "installReactor", installReactor)

    def uninstall(self) -> None:
        self._patcher.restore()

    def _program_installs(self, reactor: Any, install: Callable[[Any], None]) -> None:
        """The program calls ``installReactor(reactor)``. An error of the dashboard's, in
        deciding or in moving, never reaches the program: one line on stderr (kept in
        ``errors``), and the outcome plain ``python`` would have had."""
        current = sys.modules.get(INSTALLED)
        ours = self.attachment.reactor
        if current is None or current is not ours or self.followed is not None:
            install(reactor)  # not ours to decide: Twisted's own behaviour
            return
        try:
            why_not = self._why_not_follow(ours)
        except Exception as exc:
            self._note(exc)
            why_not = (
                f"the dashboard could not tell whether the program used it: {_error_text(exc)}"
            )
        if why_not is None:
            self._follow(reactor, ours, install)
            return
        self._refuse(reactor, ours, why_not)
        install(reactor)  # raises ReactorAlreadyInstalledError, as without run

    def _note(self, exc: Exception) -> None:
        """Keep one line for an error of the dashboard's (the last ``MAX_ERRORS``)."""
        self.errors.append(_error_text(exc))
        del self.errors[:-MAX_ERRORS]

    def _refuse(self, reactor: Any, ours: Any, why_not: str) -> None:
        """Say, in one line, which ``--reactor`` to pass."""
        try:
            name = reactor_short_name(reactor)
            fix = f"--reactor {name}" if name else "--reactor NAME"
            self.refused = (
                f"{PROG}: the program installs its own reactor ({type(reactor).__name__}), but"
                f" {type(ours).__name__} was installed before it ran ({why_not}):"
                f" run it with {fix}"
            )
            print(self.refused, file=sys.stderr, flush=True)
        except Exception as exc:  # a closed stderr: the program's error still tells
            self._note(exc)

    def _follow(self, reactor: Any, ours: Any, install: Callable[[Any], None]) -> None:
        """Move the dashboard to the program's ``reactor``. Twisted's own install failing
        raises as without ``run``; any other error leaves the program's reactor installed
        (as plain ``python`` would have) and the program without the dashboard."""
        steps = {"install": False, "installed": False}

        def tracked_install(new: Any) -> None:
            steps["install"] = True
            install(new)
            steps["installed"] = True

        try:
            self.uninstall()
            self.attachment.move_to(reactor, tracked_install)
            rebind_globals(self._dashboard_globals, ours, reactor)
            self.followed = reactor
            port = self.attachment.listening
            where = f" on http://127.0.0.1:{port.getHost().port}/" if port is not None else ""
            print(
                f"reactor-dashboard: the program installed {type(reactor).__name__}:"
                f" the dashboard moved to it{where}",
                file=sys.stderr,
                flush=True,
            )
        except Exception as exc:
            if steps["install"] and not steps["installed"]:
                raise  # Twisted's own install failed: the program sees it as without run
            self._could_not_follow(reactor, ours, install, exc, installed=steps["installed"])

    def _could_not_follow(
        self,
        reactor: Any,
        ours: Any,
        install: Callable[[Any], None],
        exc: Exception,
        *,
        installed: bool,
    ) -> None:
        """Moving failed on an error of the dashboard's: stop what is left of it, install the
        program's reactor if that is not done yet, and say so in one line."""
        self._note(exc)
        with contextlib.suppress(Exception):
            self.attachment.stop()
        with contextlib.suppress(Exception):
            rebind_globals(self._dashboard_globals, ours, reactor)
        with contextlib.suppress(Exception):
            print(
                f"{PROG}: the dashboard could not move to the program's reactor"
                f" ({type(reactor).__name__}): {_error_text(exc)}; the program runs without it",
                file=sys.stderr,
                flush=True,
            )
        if not installed:
            if sys.modules.get(INSTALLED) is ours:
                with contextlib.suppress(Exception):
                    uninstall_reactor(ours)
            install(reactor)  # what plain python does; Twisted's own error if it cannot

    def _why_not_follow(self, reactor: Any) -> str | None:
        """None when the program never used ``reactor``; else the reason, in a few words."""
        if not self.may_follow:
            return "given with --reactor"
        if getattr(reactor, "running", False) or getattr(reactor, "_startedBefore", False):
            return "it already ran"
        own = self.attachment.owns
        if any(not own.owns_call(c) for c in reactor.getDelayedCalls()):
            return "the program has timers on it"
        internal: set[Any] = getattr(reactor, "_internalReaders", set())
        selectables = [*reactor.getReaders(), *reactor.getWriters()]
        if any(s not in internal and not own.owns_selectable(s) for s in selectables):
            return "the program has connections on it"
        if trigger_count(reactor) != self._triggers:
            return "the program added system event triggers"
        held = sorted(reactor_globals(reactor) - self._dashboard_globals)
        if held:
            return f"module {held[0][0]} imported it"
        return None


def _error_text(exc: BaseException) -> str:
    """``Type: message`` of an error, on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
