"""The Site that serves the dashboard on its own port: no access log in the host's log."""

from __future__ import annotations

from typing import Any

from twisted.web.server import Site


class QuietSite(Site):
    """A ``Site`` that writes no access-log line per request (a dashboard polled every second
    would flood the watched program's log) and never shows tracebacks."""

    noisy = False
    displayTracebacks = False

    def log(self, request: Any) -> None:
        return None
