"""The dashboard as ``reactor-dashboard run`` attaches it to a reactor: a started
:class:`~dashboard.monitor.Monitor`, its port on 127.0.0.1, and the shield that keeps trial's
janitor off both (:mod:`dashboard.janitor_shield`). It can move, once, to the reactor the program
installs itself (see :mod:`dashboard.reactor_choice`).

Everything here runs on the main thread, before and around the program's ``reactor.run()``.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import attrs
from twisted.internet import main as internet_main
from twisted.python.failure import Failure

from dashboard.janitor_shield import JanitorShield, OwnWork

PROG = "reactor-dashboard run"


class RunUsageError(Exception):
    """Bad usage of ``run``: reported as one line on stderr, exit status 2. ``show_help``
    adds a pointer to ``--help`` (for mistakes on the command line itself)."""

    def __init__(self, message: str, *, show_help: bool = True) -> None:
        super().__init__(message)
        self.show_help = show_help


def serve_dashboard(reactor: Any, monitor: Any, port: int) -> Any:
    """Listen on 127.0.0.1:``port`` now (before the reactor runs); the listening port.

    TCP endpoints listen synchronously, so a port in use is known here, before the program
    starts, and becomes a :class:`RunUsageError`.
    """
    outcome: list[Any] = []
    monitor.listen(port).addBoth(outcome.append)
    if not outcome:
        raise RunUsageError(
            f"the dashboard did not start listening on 127.0.0.1:{port}", show_help=False
        )
    result = outcome[0]
    if isinstance(result, Failure):
        reason = getattr(result.value, "socketError", None)
        message = reason.strerror if isinstance(reason, OSError) else None
        raise RunUsageError(
            f"cannot serve the dashboard on 127.0.0.1:{port}:"
            f" {message or result.getErrorMessage()} (choose another with --port)",
            show_help=False,
        )
    return result


@attrs.define(eq=False)
class Attachment:
    """The monitor, its port and the janitor shield on one reactor; ``access`` holds the
    ``Monitor`` keyword arguments (tokens). Main thread only."""

    access: dict[str, Any] = attrs.field(factory=dict)
    reactor: Any = attrs.field(default=None, init=False)
    monitor: Any = attrs.field(default=None, init=False)
    listening: Any = attrs.field(default=None, init=False)
    _own: OwnWork = attrs.field(factory=OwnWork, init=False)
    _shield: JanitorShield | None = attrs.field(default=None, init=False)

    @property
    def owns(self) -> OwnWork:
        """What on the current reactor is the dashboard's own."""
        return self._own

    def start(self, reactor: Any) -> None:
        """Start a monitor on ``reactor`` (every probe installed) and shield it from trial."""
        from dashboard.monitor import Monitor

        self.reactor = reactor
        self._own = OwnWork()
        from dashboard.recorder.store import RecordingError, check_for_recording

        self.monitor = Monitor(reactor, **self.access)
        try:
            if self.access.get("record") is not None:  # damaged: one line, before the program
                check_for_recording(self.access["record"])
            self.monitor.start()
        except RecordingError as exc:
            self.monitor = None
            raise RunUsageError(f"--record: {exc}", show_help=False) from None
        self._shield = JanitorShield(reactor, self._own)
        self._shield.install()
        reactor.addSystemEventTrigger("after", "shutdown", self.stop)

    def serve(self, port: int) -> int:
        """Serve the dashboard on 127.0.0.1:``port``; the port number it got."""
        self.listening = serve_dashboard(self.reactor, self.monitor, port)
        self._own.ports.append(self.listening)
        number: int = self.listening.getHost().port
        return number

    def stop(self) -> None:
        """Stop the monitor and undo the shield's patches. Safe to call twice."""
        if self._shield is not None:
            self._shield.uninstall()
        if self.monitor is not None:
            self.monitor.stop()

    def move_to(self, reactor: Any, install: Any) -> None:
        """Leave the current reactor, which the program never used, for ``reactor``.

        The monitor stops (every patch undone), the dashboard's port closes now (the old
        reactor will never run to close it), the old reactor's descriptors are closed and it
        is uninstalled; ``install(reactor)`` (Twisted's own ``installReactor``) installs the
        program's; a new monitor starts on it and serves on the same port number. What the
        old monitor counted is not carried over.
        """
        number = self.listening.getHost().port if self.listening is not None else None
        old = self.reactor
        self.stop()
        if self.listening is not None:
            close_port_now(self.listening)
            self.listening = None
        uninstall_reactor(old)
        install(reactor)
        self.start(reactor)
        if number is not None:
            try:
                self.serve(number)
            except RunUsageError as exc:
                print(f"{PROG}: {exc}", file=sys.stderr, flush=True)


def close_port_now(port: Any) -> None:
    """Close a listening TCP port at once, without its reactor running (quietly: no
    "Port Closed" line in the program's log)."""
    with contextlib.suppress(Exception):
        port.stopReading()
        port._logConnectionLostMsg = lambda: None
        port.connectionLost(Failure(internet_main.CONNECTION_DONE))


def uninstall_reactor(reactor: Any) -> None:
    """Take ``reactor`` (installed, never run) out of ``twisted.internet`` and close its
    descriptors (waker, poller)."""
    import twisted.internet

    if sys.modules.get("twisted.internet.reactor") is reactor:
        del sys.modules["twisted.internet.reactor"]
    if getattr(twisted.internet, "reactor", None) is reactor:
        del twisted.internet.reactor
    waker = getattr(reactor, "waker", None)
    if waker is not None:
        with contextlib.suppress(Exception):
            reactor.removeReader(waker)
        with contextlib.suppress(Exception):
            waker.connectionLost(None)
    poller = getattr(reactor, "_poller", None)
    close = getattr(poller, "close", None)
    if callable(close):
        with contextlib.suppress(Exception):
            close()
